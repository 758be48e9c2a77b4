"""The agent against a real Mosquitto, as a subprocess (``python -m edge_agent.cli run``).

Aspects: Hello (retained, profile figures) and telemetry; runs to success/failure
(argv and script), timeout, inputs (sha256, cache) and outputs (PUT, retried), missing
output; cancel kills the whole process tree; duplicate RunCommand runs once; forget
clears the retained run message; a broker restart mid-run loses no update; malformed
commands are rejected with a logged reason; local policy refuses commands.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import msgspec
import psutil
import pytest

from edge_agent.protocol import (
    CancelCommand,
    DeviceStatus,
    ForgetCommand,
    Hello,
    RunCommand,
    RunSpec,
    Telemetry,
    decode,
    topic,
)
from edge_agent.protocol.v1 import MAX_PAYLOAD_BYTES
from tests.helpers import ArtifactServer, Observer, wait_for

PY = sys.executable


def _online(observer: Observer, device_id: str) -> bool:
    raw = observer.latest(topic(device_id, "status"))
    return raw is not None and decode(DeviceStatus, raw).state == "online"


@pytest.fixture
def agent(agents, observer):  # type: ignore[no-untyped-def]
    """A plain agent (pi4 profile), online."""
    a = agents.spawn(None, "--profile", "pi4", "--location", "lab-1", "--label", "room=a12")
    wait_for(lambda: _online(observer, a.device_id), 15,
             message=lambda: f"agent online; log:\n{a.logs()}")
    return a


def test_hello_is_retained_and_telemetry_arrives(agent, mosquitto):  # type: ignore[no-untyped-def]
    late = Observer(mosquitto.host, mosquitto.port)  # subscribes after the agent published
    try:
        raw = wait_for(lambda: late.latest(topic(agent.device_id, "hello")), 5,
                       message="retained hello delivered to a late subscriber")
        assert late.retained_flags[topic(agent.device_id, "hello")] is True
        hello = decode(Hello, raw)
        assert (hello.cpus, hello.memory, hello.arch) == (4, 4 * 2**30, "aarch64")
        assert (hello.power.idle_watts, hello.power.max_watts) == (2.7, 6.4)
        assert hello.emulated is True and hello.profile == "pi4" and hello.speed == 0.35
        assert hello.location == "lab-1" and hello.labels["room"] == "a12"
        tel = decode(Telemetry, wait_for(
            lambda: late.latest(topic(agent.device_id, "telemetry")), 5,
            message="telemetry"))
        assert tel.power_source == "model"
        assert 2.7 <= tel.power_watts <= 6.4
        assert tel.memory_total == 4 * 2**30
    finally:
        late.close()


RUN_CASES = [
    # id, spec fields, expected state, exit code, text in tail, text in reason
    ("argv-success", {"argv": [PY, "-c", "print('hello from the device')"]},
     "Succeeded", 0, "hello from the device", ""),
    ("argv-failure", {"argv": [PY, "-c", "import sys; print('oops'); sys.exit(3)"]},
     "Failed", 3, "oops", "exited with code 3"),
    ("script", {"interpreter": [PY], "script":
                "import os\nprint('run', os.environ['CONTINUUM_RUN_ID'], os.environ['X'])\n",
                "env": {"X": "42"}},
     "Succeeded", 0, "42", ""),
    ("stderr-captured", {"argv": ["sh", "-c", "echo to-stderr >&2; exit 1"]},
     "Failed", 1, "to-stderr", "exited with code 1"),
    ("timeout", {"argv": ["sleep", "30"], "timeout_s": 0.5},
     "Failed", None, "", "timed out after 0.5 s"),
    ("missing-binary", {"argv": ["/nonexistent/tool"]},
     "Failed", None, "", "cannot start '/nonexistent/tool'"),
]


@pytest.mark.parametrize(("spec", "state", "exit_code", "tail", "reason"),
                         [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_outcomes(agent, observer, spec, state, exit_code, tail, reason):  # type: ignore[no-untyped-def]
    run_id = observer.run(agent.device_id, **spec)
    final = observer.wait_run(agent.device_id, run_id)
    assert final.state == state, final.reason
    if exit_code is not None:
        assert final.exit_code == exit_code
    assert tail in final.output_tail
    assert reason in final.reason
    if "script" in spec:
        assert run_id in final.output_tail
    states = [u.state for u in observer.updates(agent.device_id, run_id)]
    if state == "Succeeded" or exit_code is not None:
        assert states[:2] == ["Accepted", "Running"]
    seqs = [u.seq for u in observer.updates(agent.device_id, run_id)]
    assert seqs == sorted(seqs) and seqs[0] == 1


def test_inputs_verified_cached_and_outputs_uploaded(agent, observer, artifacts: ArtifactServer):  # type: ignore[no-untyped-def]
    data = b"sensor,value\n" + b"1,2\n" * 1000
    get = artifacts.add("data.csv", data, name="raw", rel="in/data.csv")
    put = artifacts.put_target("result", "out.txt")
    artifacts.fail_puts = 2  # the control plane is "restarting": two 503s first
    script = "n = len(open('in/data.csv').read().splitlines())\nopen('out.txt','w').write(str(n))\n"
    run_id = observer.run(agent.device_id, interpreter=[PY], script=script,
                          inputs=[get], outputs=[put])
    final = observer.wait_run(agent.device_id, run_id)
    assert final.state == "Succeeded", final.reason
    assert artifacts.uploads["/upload/result"] == b"1001"
    assert final.bytes_in == len(data) and final.bytes_out == 4
    assert [(o.name, o.sha256, o.size) for o in final.outputs] == [
        ("result", hashlib.sha256(b"1001").hexdigest(), 4)]

    # Same input again: served from the device's cache, not downloaded.
    run2 = observer.run(agent.device_id, interpreter=[PY], script=script,
                        inputs=[get], outputs=[put])
    final2 = observer.wait_run(agent.device_id, run2)
    assert final2.state == "Succeeded" and final2.bytes_in == 0
    assert artifacts.gets["/data.csv"] == 1

    # An output this device produced is an input it need not download.
    produced = msgspec.structs.replace(get, url=artifacts.url("nowhere"), path="again.txt",
                                       sha256=hashlib.sha256(b"1001").hexdigest(), size=4)
    run3 = observer.run(agent.device_id, argv=["cat", "again.txt"], inputs=[produced])
    final3 = observer.wait_run(agent.device_id, run3)
    assert final3.state == "Succeeded" and final3.output_tail == "1001"
    assert final3.bytes_in == 0


def test_input_digest_mismatch_and_missing_output_fail(agent, observer, artifacts):  # type: ignore[no-untyped-def]
    get = artifacts.add("x.bin", b"payload")
    bad = msgspec.structs.replace(get, sha256="0" * 64)
    r1 = observer.run(agent.device_id, argv=["true"], inputs=[bad])
    f1 = observer.wait_run(agent.device_id, r1)
    assert f1.state == "Failed" and "sha256 mismatch" in f1.reason

    r2 = observer.run(agent.device_id, argv=["true"],
                      outputs=[artifacts.put_target("model", "model.bin")])
    f2 = observer.wait_run(agent.device_id, r2)
    assert f2.state == "Failed" and "'model.bin'" in f2.reason and "not written" in f2.reason


def test_cancel_kills_the_whole_process_tree(agent, observer, tmp_path: Path):  # type: ignore[no-untyped-def]
    pids = tmp_path / "pids"
    # A shell that starts a child sleep in the background and waits on it.
    script = f"sleep 60 & echo $$ $! > {pids}; wait"
    run_id = observer.run(agent.device_id, argv=["sh", "-c", script])
    observer.wait_run(agent.device_id, run_id, {"Running"})
    shell_pid, child_pid = map(int, wait_for(lambda: pids.exists() and pids.read_text().split(),
                                             5, message="pids written"))
    assert psutil.pid_exists(child_pid)
    observer.send(agent.device_id, CancelCommand(id="c1", run_id=run_id))
    final = observer.wait_run(agent.device_id, run_id)
    assert final.state == "Cancelled"

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: gone(shell_pid) and gone(child_pid), 5,
             message=f"shell {shell_pid} and child sleep {child_pid} gone")


def test_duplicate_run_command_runs_once_and_forget_clears(agent, observer, tmp_path):  # type: ignore[no-untyped-def]
    counter = tmp_path / "count"
    spec = RunSpec(run_id="dup-1", workflow_id="wf", task="t",
                   argv=["sh", "-c", f"echo ran >> {counter}"])
    observer.send(agent.device_id, RunCommand(id="a", spec=spec))
    first = observer.wait_run(agent.device_id, "dup-1")
    assert first.state == "Succeeded"
    n_before = len(observer.updates(agent.device_id, "dup-1"))
    observer.send(agent.device_id, RunCommand(id="b", spec=spec))  # a replay
    # The replay is answered by re-publishing the latest state, not by a second run.
    wait_for(lambda: len(observer.updates(agent.device_id, "dup-1")) > n_before, 5,
             message="latest state re-published for the duplicate")
    again = observer.updates(agent.device_id, "dup-1")[-1]
    assert (again.seq, again.state) == (first.seq, "Succeeded")
    assert counter.read_text() == "ran\n"

    observer.send(agent.device_id, ForgetCommand(id="f", run_id="dup-1"))
    wait_for(lambda: observer.latest(topic(agent.device_id, "runs/dup-1")) == b"", 5,
             message="retained run message cleared")


def test_broker_restart_mid_run_loses_no_update(agents, observer, mosquitto, tmp_path):  # type: ignore[no-untyped-def]
    a = agents.spawn(None)
    wait_for(lambda: _online(observer, a.device_id), 15, message=lambda: a.logs())
    done_before = observer.run(a.device_id, argv=["true"])
    observer.wait_run(a.device_id, done_before)
    go = tmp_path / "go"
    run_id = observer.run(a.device_id, argv=[
        "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; echo finished; exit 0"])
    observer.wait_run(a.device_id, run_id, {"Running"})
    mosquitto.stop()
    go.touch()  # the run finishes while the broker is down
    wait_for(lambda: "Succeeded" in a.logs(), 10, message="run finished while broker down")
    mosquitto.start()
    final = observer.wait_run(a.device_id, run_id, timeout=20)
    assert final.state == "Succeeded" and final.exit_code == 0
    assert "finished" in final.output_tail
    # The restarted broker (persistence false) lost every retained message; the agent
    # re-published the latest state of every run it holds, so a late subscriber (a fresh
    # control plane) re-adopts them.
    late = Observer(mosquitto.host, mosquitto.port)
    try:
        for rid in (done_before, run_id):
            wait_for(lambda r=rid: late.latest(topic(a.device_id, f"runs/{r}")), 10,
                     message=f"retained state of {rid} re-published after the restart")
        assert late.updates(a.device_id, run_id)[-1].state == "Succeeded"
    finally:
        late.close()
    # The agent keeps working after the restart.
    r2 = observer.run(a.device_id, argv=["true"])
    assert observer.wait_run(a.device_id, r2).state == "Succeeded"


def test_agent_down_at_start_connects_when_broker_appears(agents, observer, mosquitto):  # type: ignore[no-untyped-def]
    mosquitto.stop()
    try:
        a = agents.spawn(None)
        wait_for(lambda: "unreachable" in a.logs(), 10, message="agent retrying")
    finally:
        mosquitto.start()
    wait_for(lambda: _online(observer, a.device_id), 15, message=lambda: a.logs())


MALFORMED = [
    ("not-json", b"{not json", "not UTF-8 JSON"),
    ("not-an-object", b"[1, 2]", "must be a JSON object"),
    ("wrong-version", json.dumps({"v": 2, "id": "x", "type": "run"}).encode(),
     "protocol version 2 is not supported"),
    ("unknown-type", json.dumps({"v": 1, "id": "x", "type": "reboot"}).encode(),
     "invalid Command"),
    ("missing-field", json.dumps({"v": 1, "id": "x", "type": "cancel"}).encode(),
     "invalid Command"),
    ("oversized", b'{"v": 1, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}', "exceeds the"),
]


def test_malformed_commands_are_rejected_and_agent_keeps_working(agent, observer):  # type: ignore[no-untyped-def]
    for _, payload, _ in MALFORMED:
        observer.send(agent.device_id, payload)
    for case, _, reason in MALFORMED:
        wait_for(lambda r=reason: r in agent.logs(), 5,
                 message=lambda c=case: f"rejection of {c} logged; log:\n{agent.logs()}")
    assert agent.logs().count("WARNING edge_agent.agent: device") >= len(MALFORMED)
    run_id = observer.run(agent.device_id, argv=["echo", "still alive"])
    final = observer.wait_run(agent.device_id, run_id)
    assert final.state == "Succeeded" and "still alive" in final.output_tail
    assert agent.proc.poll() is None


POLICY = [
    # id, spec fields, text in the Failed reason
    ("allow-command", {"argv": ["rm", "-rf", "/tmp/nothing"]}, "allow-command"),
    ("allow-command-script", {"interpreter": ["bash"], "script": "echo hi"}, "allow-command"),
    ("max-cpu", {"argv": ["echo", "hi"], "cpu": 3}, "max-cpu"),
    ("max-memory", {"argv": ["echo", "hi"], "memory": 2 * 2**30}, "max-memory"),
]


def test_local_policy_refuses_commands(agents, observer):  # type: ignore[no-untyped-def]
    a = agents.spawn(None, "--allow-command", "echo", "--allow-command", PY,
                     "--max-cpu", "2", "--max-memory", str(2**30))
    wait_for(lambda: _online(observer, a.device_id), 15, message=lambda: a.logs())
    for case, spec, reason in POLICY:
        run_id = observer.run(a.device_id, **spec)
        final = observer.wait_run(a.device_id, run_id)
        assert final.state == "Failed", case
        assert "refused by local policy" in final.reason and reason in final.reason, case
        assert [u.state for u in observer.updates(a.device_id, run_id)] == ["Failed"], case
    ok = observer.run(a.device_id, argv=["echo", "allowed"], cpu=1)
    assert observer.wait_run(a.device_id, ok).state == "Succeeded"


def test_agent_restart_reports_lost_run_and_keeps_finished_ones(agents, observer, tmp_path):  # type: ignore[no-untyped-def]
    a = agents.spawn(None)
    wait_for(lambda: _online(observer, a.device_id), 15, message=lambda: a.logs())
    done = observer.run(a.device_id, argv=["true"])
    observer.wait_run(a.device_id, done)
    pidfile = tmp_path / "pid"
    lost = observer.run(a.device_id, argv=["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"])
    observer.wait_run(a.device_id, lost, {"Running"})
    orphan = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 5,
                          message="pid written"))
    a.proc.kill()  # the device loses power
    a.proc.wait(timeout=10)
    b = agents.spawn(a.device_id, state_dir=a.state_dir)
    final = observer.wait_run(a.device_id, lost, timeout=15)
    assert final.state == "Failed" and "agent restarted" in final.reason, b.logs()
    assert not psutil.pid_exists(orphan) or \
        psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE  # the orphan was killed
    hello = wait_for(lambda: (h := decode(Hello, observer.latest(topic(a.device_id, "hello"))))
                     and lost in h.known_runs and h, 10, message="hello lists known runs")
    assert done in hello.known_runs
