"""Unit tests of the agent's parts without a broker.

Aspects: the linear power model, profiles, config validation and broker URLs, the
reconnect backoff bounds, the outbox (order, ack, persistence across reopen, forget),
local policy decisions, the runtime's path safety and environment, kill_tree, an ack racing
a flush (no message published twice).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from paho.mqtt.enums import MQTTErrorCode

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, parse_broker_url
from edge_agent.outbox import Outbox
from edge_agent.profiles import PROFILES, get_profile
from edge_agent.protocol import DevicePower, RunSpec, RunUpdate, encode
from edge_agent.protocol.session import jittered_backoff
from edge_agent.runtime import RunFailure, Runtime, kill_tree, safe_join
from edge_agent.telemetry import model_power
from tests.helpers import TEST_COMMAND_PUBLIC


@pytest.mark.parametrize(("u", "watts"), [(0.0, 2.7), (0.5, 4.55), (1.0, 6.4), (1.7, 6.4),
                                          (-1, 2.7)])
def test_linear_power_model(u: float, watts: float) -> None:
    p = DevicePower(idle_watts=2.7, max_watts=6.4)
    assert model_power(p, u) == pytest.approx(watts)


def test_profiles() -> None:
    assert set(PROFILES) >= {"pi4", "jetson-nano"}
    nano = get_profile("jetson-nano")
    assert (nano.cpus, nano.arch, nano.power.idle_watts, nano.power.max_watts) == (
        4, "aarch64", 5.0, 10.0)
    assert nano.labels["accelerator"] == "nvidia-maxwell" and nano.emulated
    host = get_profile(None)
    assert not host.emulated and host.cpus >= 1 and "default" in host.power.source
    with pytest.raises(ValueError, match="known profiles: host, jetson-nano, pi4"):
        get_profile("cray-1")


@pytest.mark.parametrize(("url", "host", "port", "tls"), [
    ("mqtt://127.0.0.1:1884", "127.0.0.1", 1884, False),
    ("mqtt://broker", "broker", 1883, False),
    ("mqtts://broker.example.org", "broker.example.org", 8883, True),
])
def test_broker_urls(url: str, host: str, port: int, tls: bool) -> None:
    a = parse_broker_url(url)
    assert (a.host, a.port, a.tls) == (host, port, tls)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("broker", "http://x", "mqtt://host:port"),
    ("device_id", "a/b", "device id"),
    ("device_id", "+", "device id"),
    ("telemetry_interval", 0, "greater than 0"),
])
def test_config_rejects(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AgentConfig(**{"device_id": "d1", field: value})  # type: ignore[arg-type]


def test_backoff_is_bounded_and_jittered() -> None:
    for attempt in range(40):
        d = jittered_backoff(attempt, 0.5, 30.0)
        assert 0.5 <= d <= 30.0
    assert len({round(jittered_backoff(8, 0.5, 30.0), 6) for _ in range(20)}) > 1


def test_outbox_order_ack_persistence_and_forget(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    ob = Outbox(path)
    spec = RunSpec(run_id="r1", workflow_id="w", task="t", argv=["true"])
    assert ob.add_run(spec) is True and ob.add_run(spec) is False
    ids = []
    for seq, state in enumerate(["Accepted", "Running", "Succeeded"], 1):
        u = RunUpdate(device_id="d", run_id="r1", seq=seq, state=state)  # type: ignore[arg-type]
        ids.append(ob.record_update(u, "t/r1", encode(u)))
    ob.ack(ids[0])
    ob.close()

    ob = Outbox(path)  # an agent restart
    assert [p.id for p in ob.pending()] == ids[1:]
    [rec] = ob.runs()
    assert rec.terminal and rec.latest is not None and rec.latest.seq == 3
    assert ob.forget_run("r1") is True and ob.get_run("r1") is None
    assert ob.pending() == [] and ob.forget_run("r1") is False
    ob.close()


def _agent(tmp_path: Path, **cfg: object) -> Agent:
    cfg.setdefault("command_key", TEST_COMMAND_PUBLIC)
    cfg.setdefault("run_as", "root" if os.geteuid() == 0 else None)
    return Agent(AgentConfig(device_id="d1", state_dir=tmp_path, profile="pi4", **cfg))  # type: ignore[arg-type]



def test_an_ack_racing_a_flush_does_not_publish_the_message_twice(tmp_path: Path) -> None:
    """paho's thread acks a message while another thread flushes the outbox: the flush
    must see it either in flight or acked, never neither (it was then published twice,
    and two control-plane replicas each consumed one copy)."""
    agent = _agent(tmp_path)
    published: list[bytes] = []

    class Client:
        def publish(self, topic: str, payload: bytes, qos: int = 0,
                    retain: bool = False) -> SimpleNamespace:
            published.append(payload)
            return SimpleNamespace(rc=MQTTErrorCode.MQTT_ERR_SUCCESS, mid=len(published))

    agent._client = Client()  # type: ignore[assignment]
    agent.connected.set()
    agent.outbox.enqueue("continuum/d1/runs/r1", b"update-1", run_id="r1")
    agent._flush()
    assert published == [b"update-1"]
    acking, release = threading.Event(), threading.Event()
    ack = agent.outbox.ack

    def slow_ack(outbox_id: int) -> None:
        acking.set()
        release.wait(5)
        ack(outbox_id)

    agent.outbox.ack = slow_ack  # type: ignore[method-assign]
    acker = threading.Thread(target=agent._on_publish, args=(None, None, 1, 0))
    acker.start()
    assert acking.wait(5)
    flusher = threading.Thread(target=agent._flush)
    flusher.start()
    flusher.join(0.3)  # a racing flush had published again by now
    release.set()
    acker.join(5)
    flusher.join(5)
    assert published == [b"update-1"] and agent.outbox.pending() == []
    agent.outbox.close()

POLICY = [
    # allow prefixes, spec fields, refused by (None = allowed)
    ([], {"argv": ["anything"]}, None),
    (["python3"], {"argv": ["python3", "x.py"]}, None),
    (["python3"], {"argv": ["python3evil"]}, "allow-command"),
    (["/usr/bin/env python3"], {"argv": ["/usr/bin/env", "python3", "-c", "1"]}, None),
    (["/usr/bin/env python3"], {"argv": ["/usr/bin/env", "bash"]}, "allow-command"),
    (["python3"], {"script": "print(1)"}, None),  # interpreter defaults to python3
    (["python3"], {"script": "echo", "interpreter": ["sh"]}, "allow-command"),
    ([], {"argv": ["x"], "cpu": 5}, "max-cpu"),  # the pi4 has 4 cores
    ([], {"argv": ["x"], "memory": 5 * 2**30}, "max-memory"),
]


@pytest.mark.parametrize(("allow", "spec", "refused"), POLICY)
def test_policy(tmp_path: Path, allow: list[str], spec: dict[str, object],
                refused: str | None) -> None:
    agent = _agent(tmp_path, allow_command=allow)
    try:
        why = agent.policy_violation(RunSpec(run_id="r", workflow_id="w", task="t", **spec))  # type: ignore[arg-type]
        assert (why is None) if refused is None else (why is not None and refused in why)
    finally:
        agent.outbox.close()


@pytest.mark.parametrize("rel", ["/etc/passwd", "../escape", "a/../../b"])
def test_paths_may_not_leave_the_working_dir(tmp_path: Path, rel: str) -> None:
    with pytest.raises(RunFailure, match="outside"):
        safe_join(tmp_path, rel)


def test_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "x")
    env = Runtime(tmp_path).environment(
        RunSpec(run_id="r1", workflow_id="w1", task="t", argv=["x"], env={"A": "1"}))
    assert "SECRET_TOKEN" not in env
    assert env["A"] == "1" and env["CONTINUUM_RUN_ID"] == "r1"
    assert env["CONTINUUM_WORKFLOW_ID"] == "w1" and "PATH" in env


def test_kill_tree_escalates_to_sigkill(tmp_path: Path) -> None:
    # A parent that ignores SIGTERM, with a child that ignores it too.
    code = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import signal,time;"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); signal.pause()'],"
            " stdout=subprocess.PIPE)\n"
            "c.stdout.readline(); print(c.pid, flush=True); signal.pause()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    kill_tree(proc, grace=0.3)
    assert proc.returncode is not None and proc.returncode < 0
    try:
        assert psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass


def test_an_upload_retrying_against_a_dead_server_stops_when_the_run_is_cancelled(
        tmp_path: Path) -> None:
    """An agent that stops (its control plane gone) cancels its runs; an upload stuck in its
    retry loop must end then, not after the upload deadline (300 s by default)."""
    import socket
    import threading
    import time

    with socket.socket() as s:  # a port nothing listens on: every PUT is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.bin"
    out.write_bytes(b"x" * 100)
    rt = Runtime(tmp_path / "state", upload_deadline=300.0, http_timeout=1.0)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(RunFailure, match="upload cancelled"):
        rt.upload(f"http://127.0.0.1:{port}/v1/artifacts/wf/out", out, "out", cancel)
    assert time.monotonic() - t0 < 15


DECODED = [
    # payload, what decode() says (the one-pass path must refuse what the checks refuse)
    (b'{"device_id": "d", "cpu_percent": 1, "memory_used": 1, "memory_total": 2, '
     b'"load1": 0, "power_watts": 1}', "protocol version None is not supported"),
    (b'{"v": 2}', "protocol version 2 is not supported"),
    (b"[1]", "must be a JSON object, got list"),
    (b"\xff", "not UTF-8 JSON"),
    (b'{"v": 1, "device_id": "d"}', "invalid Telemetry: cpu_percent: Field required"),
    (b'{"v": 1, "device_id": "d", "cpu_percent": 1, "memory_used": 1, "memory_total": 2, '
     b'"load1": 0, "power_watts": 1, "bogus": 1}', "invalid Telemetry: bogus"),
]


@pytest.mark.parametrize("payload,match", DECODED)
def test_decode_refuses_what_the_protocol_refuses(payload: bytes, match: str) -> None:
    from edge_agent.protocol import ProtocolError, Telemetry, decode

    with pytest.raises(ProtocolError, match=match):
        decode(Telemetry, payload)


def test_decode_reads_a_valid_payload_and_utf16_json() -> None:
    from edge_agent.protocol import Telemetry, decode

    text = ('{"v": 1, "device_id": "d", "cpu_percent": 12.5, "memory_used": 1, '
            '"memory_total": 2, "load1": 0.5, "power_watts": 3, "at": "2026-01-01T00:00:00Z"}')
    for data in (text.encode(), text.encode("utf-16")):  # json.loads reads UTF-16 too
        t = decode(Telemetry, data)
        assert (t.device_id, t.cpu_percent, t.at.year) == ("d", 12.5, 2026)


def test_payloads_round_trip_and_a_bad_nested_field_is_named() -> None:
    """What encode() writes, decode() reads back equal (commands through the union, told
    apart by ``type``); a bad field deep in a payload is named by its path."""
    from edge_agent.protocol import (
        ArtifactGet,
        CancelCommand,
        Command,
        Hello,
        ProtocolError,
        RunCommand,
        decode,
    )

    hello = Hello(device_id="d", hostname="d", arch="aarch64", cpus=4.0, memory=2**30,
                  location="lab-1", power=DevicePower(idle_watts=2.7, max_watts=6.4),
                  agent_version="t", telemetry_interval=5.0)
    assert decode(Hello, encode(hello)) == hello
    run = RunCommand(id="c1", spec=RunSpec(run_id="r1", workflow_id="w", task="t",
                                           argv=["true"], inputs=[ArtifactGet(
                                               name="x", path="x", url="http://h/x",
                                               sha256="0" * 64, size=1)]))
    cancel = CancelCommand(id="c2", run_id="r1")
    for cmd in (run, cancel):
        data = encode(cmd)
        assert f'"type":"{cmd.type}"'.encode() in data and decode(Command, data) == cmd
    bad = encode(run).replace(b'"size":1', b'"size":"big"')
    with pytest.raises(ProtocolError, match=r"invalid Command: spec\.inputs\.0\.size: "
                                            r"Expected `int`, got `str`"):
        decode(Command, bad)
    weak = encode(hello).replace(b'"max_watts":6.4', b'"max_watts":1.0')
    with pytest.raises(ProtocolError, match=r"invalid Hello: power: max_watts \(1\.0\) "
                                            r"must be >= idle_watts"):
        decode(Hello, weak)
    silent = encode(hello).replace(b'"telemetry_interval":5.0', b'"telemetry_interval":0')
    with pytest.raises(ProtocolError, match="invalid Hello: telemetry_interval: Expected "
                                            "`float` > 0.0"):
        decode(Hello, silent)
