"""Signed commands and unprivileged runs (issue 12, item 5), against a real Mosquitto and
real agent subprocesses.

Attacks, each of which the agent obeyed before commands were signed: an unsigned command
published on the broker, a replayed signed command (also across an agent restart), an
expired one, one addressed to another device, one signed with another key. Then: an agent
without a command key does not start; tasks run as the unprivileged ``continuum-run``
user in a working directory it owns, under the configured rlimits; the local policy is
checked on the resolved program (``python3`` under another name still runs; a symlink
named like an allowed program is refused).
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.keys import command_public_key, command_signing_key
from edge_agent.nonces import NonceStore
from edge_agent.protocol import (
    CommandRejected,
    DeviceStatus,
    ForgetCommand,
    RunCommand,
    RunSpec,
    decode,
    encode,
    topic,
)
from edge_agent.protocol.signing import (
    CommandRefused,
    canonical_json,
    load_public_key,
    sign_command,
    verify_signature,
)
from edge_agent.runtime import DEFAULT_RUN_USER, RunFailure, Runtime
from tests.conftest import AgentFactory, AgentProcess, Mosquitto
from tests.helpers import TEST_COMMAND_KEY, Observer, wait_for


def _online(observer: Observer, device_id: str) -> bool:
    raw = observer.latest(topic(device_id, "status"))
    return raw is not None and decode(DeviceStatus, raw).state == "online"


def _up(agents: AgentFactory, observer: Observer, *args: str, **kw: object) -> AgentProcess:
    a = agents.spawn(None, *args, **kw)  # type: ignore[arg-type]
    wait_for(lambda: _online(observer, a.device_id), 15,
             message=lambda: f"agent online; log:\n{a.logs()}")
    return a


def _run_cmd(run_id: str, argv: list[str], **spec: object) -> RunCommand:
    return RunCommand(id=f"c-{run_id}", spec=RunSpec(run_id=run_id, workflow_id="wf",
                                                     task="t", argv=argv, **spec))  # type: ignore[arg-type]


def _rejection(observer: Observer, a: AgentProcess, command_id: str) -> CommandRejected:
    def found() -> CommandRejected | None:
        for raw in observer.on(topic(a.device_id, "rejected")):
            rej = decode(CommandRejected, raw)
            if rej.command_id == command_id:
                return rej
        return None

    rej = wait_for(found, 10, message=lambda: f"rejection of {command_id}; log:\n{a.logs()}")
    assert rej is not None
    return rej


@pytest.fixture
def agent(agents: AgentFactory, observer: Observer) -> AgentProcess:
    return _up(agents, observer)


@pytest.mark.parametrize("attack", ["unsigned", "bad-signature", "misaddressed", "expired"])
def test_forged_or_stale_commands_are_refused_and_reported(
        agent: AgentProcess, observer: Observer, tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "ran"
    cmd = _run_cmd(f"r-{attack}", ["sh", "-c", f"touch {marker}"])
    if attack == "unsigned":
        data = encode(msgspec.structs.replace(cmd, device_id=agent.device_id))
    elif attack == "bad-signature":
        data = sign_command(cmd, agent.device_id, Ed25519PrivateKey.generate().sign)
    elif attack == "misaddressed":
        data = sign_command(cmd, "some-other-device", TEST_COMMAND_KEY.sign)
    else:
        data = sign_command(cmd, agent.device_id, TEST_COMMAND_KEY.sign,
                            now=datetime.now(UTC) - timedelta(minutes=10))
    observer.send(agent.device_id, data)

    rej = _rejection(observer, agent, cmd.id)
    assert (rej.reason, rej.command_type, rej.run_id) == (attack, "run", cmd.spec.run_id)
    wait_for(lambda: f"refused run command {cmd.id}" in agent.logs(), 5,
             message="the refusal logged with its reason")
    assert attack in agent.logs()
    updates = observer.updates(agent.device_id, cmd.spec.run_id)
    if attack == "expired":
        # The control plane did send it: the run ends Failed instead of hanging.
        final = observer.wait_run(agent.device_id, cmd.spec.run_id)
        assert final.state == "Failed" and final.reason.startswith("command refused: expired")
        assert [u.state for u in observer.updates(agent.device_id, cmd.spec.run_id)] == ["Failed"]
    else:
        assert updates == []  # untrusted content creates no run state
    # A signed command afterwards runs; by then the refused one would have run too.
    ok = observer.run(agent.device_id, argv=["true"])
    assert observer.wait_run(agent.device_id, ok).state == "Succeeded"
    assert not marker.exists()


def test_a_replayed_command_is_refused_also_after_an_agent_restart(
        agents: AgentFactory, observer: Observer, tmp_path: Path) -> None:
    a = _up(agents, observer)
    counter = tmp_path / "count"
    cmd = _run_cmd("r-replay", ["sh", "-c", f"echo ran >> {counter}"])
    data = sign_command(cmd, a.device_id, TEST_COMMAND_KEY.sign)
    observer.send(a.device_id, data)
    assert observer.wait_run(a.device_id, "r-replay").state == "Succeeded"
    # The control plane forgets the run: a replay is no longer a mere duplicate run id.
    observer.send(a.device_id, ForgetCommand(id="f-1", run_id="r-replay"))
    wait_for(lambda: observer.latest(topic(a.device_id, "runs/r-replay")) == b"", 5,
             message="run forgotten")

    observer.send(a.device_id, data)  # the captured bytes, again
    assert _rejection(observer, a, cmd.id).reason == "replayed"

    a.terminate()
    b = agents.spawn(a.device_id, state_dir=a.state_dir)
    wait_for(lambda: "tasks run as" in b.logs() and _online(observer, b.device_id), 15,
             message=lambda: b.logs())
    n = len(observer.on(topic(a.device_id, "rejected")))
    observer.send(a.device_id, data)
    wait_for(lambda: len(observer.on(topic(a.device_id, "rejected"))) > n, 10,
             message=lambda: f"replay after restart refused; log:\n{b.logs()}")
    assert decode(CommandRejected, observer.on(topic(a.device_id, "rejected"))[-1]).reason \
        == "replayed"
    ok = observer.run(a.device_id, argv=["true"])
    assert observer.wait_run(a.device_id, ok).state == "Succeeded"
    assert counter.read_text() == "ran\n"


def test_an_agent_without_a_command_key_does_not_start(agents: AgentFactory,
                                                       observer: Observer,
                                                       mosquitto: Mosquitto) -> None:
    a = agents.spawn(None, command_key="")
    assert a.proc.wait(timeout=30) == 2
    assert "no command key" in a.logs() and "--command-key" in a.logs()
    # Said explicitly, it starts and obeys unsigned commands (testing only).
    b = _up(agents, observer, "--insecure-accept-unsigned", command_key="")
    assert "obeying unsigned commands" in b.logs()
    unsigned = Observer(mosquitto.host, mosquitto.port, sign=None)
    try:
        run_id = unsigned.run(b.device_id, argv=["true"])
        assert observer.wait_run(b.device_id, run_id).state == "Succeeded"
    finally:
        unsigned.close()


# ---------------------------------------------------------------- unprivileged runs



def test_tasks_run_as_the_unprivileged_user_within_rlimits(
        agents: AgentFactory, observer: Observer, run_user: pwd.struct_passwd,
        open_state_dir: Path) -> None:
    a = _up(agents, observer, "--limit-open-files", "64", "--limit-cpu-seconds", "30",
            state_dir=open_state_dir, run_as=None)  # the default: continuum-run
    assert f"tasks run as {DEFAULT_RUN_USER}" in a.logs()
    code = ("import json, os, resource\n"
            "json.dump({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(), "
            "'nofile': resource.getrlimit(resource.RLIMIT_NOFILE), "
            "'cpu': resource.getrlimit(resource.RLIMIT_CPU), "
            "'home': os.environ['HOME']}, open('who', 'w'))\n")
    run_id = observer.run(a.device_id, argv=["/usr/bin/python3", "-c", code])
    final = observer.wait_run(a.device_id, run_id)
    assert final.state == "Succeeded", final.reason + final.output_tail
    work = open_state_dir / "runs" / run_id / "work"
    who = json.loads((work / "who").read_text())
    assert who["uid"] == run_user.pw_uid != 0
    assert who["gid"] == run_user.pw_gid
    assert set(who["groups"]) <= {run_user.pw_gid}  # no supplementary groups
    assert who["nofile"] == [64, 64] and who["cpu"] == [30, 30]
    assert who["home"] == str(work)
    st = work.stat()
    assert st.st_uid == run_user.pw_uid and (st.st_mode & 0o777) == 0o700
    # What the run user must not read: the run specs (their env) and the nonces.
    for f in open_state_dir.glob("*.sqlite3"):
        assert f.stat().st_mode & 0o077 == 0, f


def test_a_root_agent_without_the_run_user_says_how_to_create_it(tmp_path: Path) -> None:
    rt = Runtime(tmp_path, run_as="no-such-user-continuum")
    with pytest.raises(RunFailure, match="no user 'no-such-user-continuum'"):
        rt.run_user()
    if os.geteuid() == 0:
        missing = Runtime(tmp_path, default_user="no-such-run-user")
        with pytest.raises(RunFailure, match="useradd --system .* no-such-run-user\\) or "
                                             "start the agent with --run-as root"):
            missing.run_user()
        assert Runtime(tmp_path, run_as="root").run_user() is None  # said explicitly


def test_policy_applies_to_the_resolved_program(agents: AgentFactory, observer: Observer,
                                                tmp_path: Path) -> None:
    python = os.path.realpath("/usr/bin/python3")
    a = _up(agents, observer, "--allow-command", "python3", "--allow-command", "echo",
            env={"PATH": "/usr/bin:/bin"})
    # Allowed under another name of the same program ...
    ok = observer.run(a.device_id, argv=[python, "-c", "print('same program')"])
    assert observer.wait_run(a.device_id, ok).state == "Succeeded"
    # ... and allowing an interpreter allows any code (docs/agent.md says so).
    marker = tmp_path / "any-code"
    anything = observer.run(a.device_id, argv=[
        "python3", "-c", f"import os; os.system('touch {marker}')"])
    assert observer.wait_run(a.device_id, anything).state == "Succeeded"
    assert marker.exists()

    # A program named like an allowed one (found first on the run's PATH) is refused.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "echo").symlink_to(shutil.which("sh") or "/bin/sh")
    evil = tmp_path / "evil"
    for argv in (["echo", "-c", f"touch {evil}"], [str(fake / "echo"), "-c", f"touch {evil}"]):
        run_id = observer.run(a.device_id, argv=argv, env={"PATH": f"{fake}:/usr/bin:/bin"})
        final = observer.wait_run(a.device_id, run_id)
        assert final.state == "Failed", argv
        assert "refused by local policy allow-command" in final.reason, final.reason
        assert os.path.realpath(fake / "echo") in final.reason
    assert not evil.exists()


# ---------------------------------------------------------------- the parts, without a broker

def test_control_plane_key_is_generated_once_and_private(tmp_path: Path) -> None:
    key = command_signing_key(tmp_path)
    path = tmp_path / "auth" / "command.key"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert command_public_key(tmp_path) == key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(command_public_key(tmp_path)) == 32  # the same key, loaded again
    pub = base64.b64encode(command_public_key(tmp_path)).decode()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "k.pem").write_bytes(pem)
    for form in (pub, pem.decode(), str(tmp_path / "k.pem")):
        assert load_public_key(form) == key.public_key()
    for bad in ("not a key", base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match="32 raw bytes"):
            load_public_key(bad)


def test_a_changed_byte_breaks_the_signature() -> None:
    data = sign_command(_run_cmd("r", ["true"]), "d1", TEST_COMMAND_KEY.sign)
    obj = json.loads(data)
    verify_signature(obj, TEST_COMMAND_KEY.public_key())
    assert canonical_json(obj) == canonical_json(dict(reversed(list(obj.items()))))
    for field, value in (("device_id", "d2"), ("nonce", "0" * 32)):
        with pytest.raises(CommandRefused, match="bad-signature"):
            verify_signature({**obj, field: value}, TEST_COMMAND_KEY.public_key())
    with pytest.raises(CommandRefused, match="bad-signature"):
        verify_signature({**obj, "spec": {**obj["spec"], "argv": ["sh"]}},
                         TEST_COMMAND_KEY.public_key())


def test_nonces_survive_a_restart_and_stay_bounded(tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "n.sqlite3", max_entries=3)
    assert store.add("a", expires=200.0, now=100.0) and not store.add("a", 200.0, 100.0)
    store.close()
    store = NonceStore(tmp_path / "n.sqlite3", max_entries=3)
    assert not store.add("a", 200.0, 150.0)  # remembered across a restart
    assert store.add("b", 300.0, 250.0) and len(store) == 1  # "a" expired and was dropped
    for n in "cdef":
        store.add(n, 400.0, 250.0)
    assert len(store) == 3
    store.close()
