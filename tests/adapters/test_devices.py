"""The devices adapter end to end: a real Mosquitto and a real agent subprocess.

Aspects: inventory (profile figures, readiness, telemetry, free resources), health,
submit → status through the one state table, cancel, logs, release (clears the retained
run message), re-adoption by a fresh adapter from retained messages, rogue payloads
(counted and ignored), typed errors (offline device, unreachable broker, bad config),
registration for site kind ``devices``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from adapters import devices as devices_adapter
from adapters import registry
from adapters.base import AdapterContext, ArtifactOut, Handle, TaskRun
from adapters.devices import RUN_STATE_TABLE, DevicesAdapter
from continuum.errors import PermanentError, TransientError
from continuum.model import Resources, RunState, SiteHealth, SiteKind, SiteSpec, Task
from edge_agent.protocol import Telemetry, encode, topic
from tests.conftest import free_port
from tests.helpers import (
    TEST_COMMAND_KEY,
    ArtifactServer,
    NoArtifacts,
    Wakes,
    gate_source,
    open_gate,
    wait_for,
)

PY = sys.executable


def make_adapter(url: str, tmp: Path, wake: Wakes | None = None, **config: Any) -> DevicesAdapter:
    site = SiteSpec(name="fleet", kind=SiteKind.devices, config={"broker": url, **config})
    ctx = AdapterContext(artifacts=NoArtifacts(), state_dir=tmp, wake=wake or Wakes(),
                         sign=TEST_COMMAND_KEY.sign)
    return DevicesAdapter(site, ctx)


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
def adapter(mosquitto, tmp_path, wakes) -> Iterator[DevicesAdapter]:  # type: ignore[no-untyped-def]
    a = make_adapter(mosquitto.url, tmp_path, wakes, offlineAfter=10)
    wait_for(lambda: a.connected, 10, message="adapter connected")
    yield a
    a.close()


@pytest.fixture
def device(agents, adapter):  # type: ignore[no-untyped-def]
    """A pi4-profile agent that the adapter sees as ready."""
    ag = agents.spawn(None, "--profile", "pi4", "--location", "lab-1")
    wait_for(lambda: any(n.name == ag.device_id and n.ready and n.utilisation is not None
                         for n in adapter.inventory()), 15,
             message=lambda: f"device ready in inventory; agent log:\n{ag.logs()}")
    return ag


def node_of(adapter: DevicesAdapter, device_id: str):  # type: ignore[no-untyped-def]
    return next(n for n in adapter.inventory() if n.name == device_id)


def task_run(run_id: str, **task: Any) -> TaskRun:
    return TaskRun(run_id=run_id, workflow_id="wf-1", workflow_name="wf", task=Task(**task))


def test_registered_for_devices_kind() -> None:
    assert registry._REGISTRY[SiteKind.devices] is not None


def test_state_table_covers_every_agent_phase() -> None:
    assert RUN_STATE_TABLE == {
        "Accepted": RunState.Dispatched, "Running": RunState.Running,
        "Succeeded": RunState.Succeeded, "Failed": RunState.Failed,
        "Cancelled": RunState.Cancelled,
    }


def test_inventory_and_health(adapter, device, wakes) -> None:  # type: ignore[no-untyped-def]
    n = node_of(adapter, device.device_id)
    assert n.id == f"fleet/{device.device_id}" and n.site == "fleet"
    assert n.site_kind == SiteKind.devices and n.tier.value == "device"
    assert (n.capacity.cpu, n.capacity.memory, n.arch) == (4, 4 * 2**30, "aarch64")
    assert n.allocatable == n.capacity and n.free is not None and n.free.cpu == 4
    assert (n.power.idle_watts, n.power.max_watts, n.speed) == (2.7, 6.4, 0.35)
    assert n.location == "lab-1" and n.labels["continuum.io/emulated"] == "true"
    assert n.ready and 0 <= (n.utilisation or 0) <= 1 and n.power_watts is not None
    assert n.observed_at is not None
    assert adapter.health() == (SiteHealth.Ready, "")
    assert wakes.count >= 1
    [d] = [d for d in adapter.devices() if d["deviceId"] == device.device_id]
    assert d["online"] and d["hello"]["profile"] == "pi4" and d["telemetry"]["cpu_percent"] >= 0


def test_submit_status_logs_release(adapter, device, mosquitto, observer, artifacts: ArtifactServer,  # type: ignore[no-untyped-def]
                                    tmp_path) -> None:
    gate = tmp_path / "gate.pid"
    node = node_of(adapter, device.device_id)
    run = task_run("run-ok-1", name="count", script={"interpreter": [PY], "source": (
        gate_source(gate) +
        "open('out.txt', 'w').write('42')\nprint('line1')\nprint('line2')\n")},
        resources=Resources(cpu=3, memory=2**30))
    run.outputs = [ArtifactOut(name="answer", path="out.txt", url=artifacts.url("up/answer"))]
    h = adapter.submit(run, node, "run-ok-1")
    assert (h.site, h.run_id, h.backend_id, h.node) == ("fleet", "run-ok-1", "run-ok-1", node.id)
    assert h.data == {"device": device.device_id}
    assert adapter.submit(run, node, "run-ok-1") == h  # idempotent by request id

    wait_for(lambda: adapter.status([h]).get("run-ok-1", None) and
             adapter.status([h])["run-ok-1"].state == RunState.Running, 10, message="Running")
    assert node_of(adapter, device.device_id).free.cpu == 1  # 4 - 3 cores dispatched
    open_gate(gate)
    st = wait_for(lambda: (s := adapter.status([h]).get("run-ok-1")) and s.state.terminal and s,
                  10, message="terminal status")
    assert st.state == RunState.Succeeded and st.exit_code == 0, st.reason
    assert [(o.name, o.size) for o in st.outputs] == [("answer", 2)] and st.bytes_out == 2
    assert artifacts.uploads["/up/answer"] == b"42"
    assert st.started_at is not None and st.finished_at is not None
    assert node_of(adapter, device.device_id).free.cpu == 4
    assert adapter.logs(h, tail=1) == "line2"

    # A fresh adapter (a restarted control plane) re-adopts the run from retained messages.
    other = make_adapter(mosquitto.url, tmp_path)
    try:
        wait_for(lambda: "run-ok-1" in other.status([Handle.from_json(h.to_json())]), 10,
                 message="re-adopted status")
    finally:
        other.close()

    adapter.release(h)
    wait_for(lambda: observer.latest(topic(device.device_id, "runs/run-ok-1")) == b"", 10,
             message="retained run message cleared")
    assert "run-ok-1" not in adapter.status([h])


def test_failure_and_cancel(adapter, device) -> None:  # type: ignore[no-untyped-def]
    node = node_of(adapter, device.device_id)
    hf = adapter.submit(task_run("run-fail", name="f", command=["sh", "-c", "exit 3"]), node,
                        "run-fail")
    hc = adapter.submit(task_run("run-cancel", name="c", command=["sleep", "60"]), node,
                        "run-cancel")
    wait_for(lambda: (s := adapter.status([hc]).get("run-cancel")) and
             s.state == RunState.Running, 10, message="run-cancel running")
    adapter.cancel(hc)
    got = wait_for(lambda: (s := adapter.status([hf, hc])) and len(s) == 2 and
                   all(x.state.terminal for x in s.values()) and s, 10, message="both terminal")
    assert (got["run-fail"].state, got["run-fail"].exit_code) == (RunState.Failed, 3)
    assert got["run-cancel"].state == RunState.Cancelled


ROGUE = [
    # id, topic device, payload, reason counted
    ("garbage", "rogue-1", b"\x00\xffnot json", "payload is not UTF-8 JSON"),
    ("wrong-version", "rogue-1", json.dumps({"v": 9}).encode(), "protocol version 9"),
    ("device-mismatch", "rogue-1", None, "device id mismatch"),
]


def test_commands_are_signed_and_a_refusal_ends_the_run(adapter, agents, observer) -> None:  # type: ignore[no-untyped-def]
    """Each command the adapter publishes is addressed, dated and signed; an agent that
    trusts another key refuses it, and the refusal it reports ends the run Failed."""
    other = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    ag = agents.spawn(None, "--profile", "pi4", command_key=other)
    wait_for(lambda: any(n.name == ag.device_id and n.ready for n in adapter.inventory()), 15,
             message=lambda: f"device ready; log:\n{ag.logs()}")
    h = adapter.submit(task_run("run-refused", name="x", command=["true"]),
                       node_of(adapter, ag.device_id), "run-refused")
    st = wait_for(lambda: adapter.status([h]).get("run-refused"), 10,
                  message=lambda: f"the refusal reported; log:\n{ag.logs()}")
    assert st.state == RunState.Failed and "refused the command: bad-signature" in st.reason
    assert adapter.refused["bad-signature"] == 1
    [raw] = observer.on(topic(ag.device_id, "commands"))
    sent = json.loads(raw)
    assert sent["device_id"] == ag.device_id and len(sent["nonce"]) == 32
    assert sent["signature"] and sent["expires_at"] > sent["issued_at"]


def test_rogue_payloads_are_counted_and_ignored(adapter, device, observer) -> None:  # type: ignore[no-untyped-def]
    before = adapter.malformed
    for _, dev, payload, _ in ROGUE:
        if payload is None:  # a well-formed telemetry claiming another device
            payload = encode(Telemetry(device_id=device.device_id, cpu_percent=1,
                                       memory_used=1, memory_total=2, load1=0,
                                       power_watts=1))
        observer.client.publish(topic(dev, "telemetry"), payload, qos=1).wait_for_publish(5)
    wait_for(lambda: adapter.malformed >= before + len(ROGUE), 5,
             message=lambda: f"rogue payloads counted ({adapter.malformed_by_reason})")
    for _, _, _, reason in ROGUE:
        assert any(reason in k for k in adapter.malformed_by_reason), reason
    assert [n.name for n in adapter.inventory()].count("rogue-1") == 0
    assert node_of(adapter, device.device_id).ready


def test_typed_errors(mosquitto, tmp_path, adapter, device) -> None:  # type: ignore[no-untyped-def]
    node = node_of(adapter, device.device_id)
    offline = node.model_copy(update={"name": "no-such-device", "id": "fleet/no-such-device"})
    with pytest.raises(TransientError, match="offline"):
        adapter.submit(task_run("r-x", name="x", command=["true"]), offline, "r-x")

    dead = make_adapter(f"mqtt://127.0.0.1:{free_port()}", tmp_path)
    try:
        health, reason = wait_for(lambda: dead.health(), 5, message="health")
        assert health == SiteHealth.Unreachable and "unreachable" in reason
        with pytest.raises(TransientError):
            dead.submit(task_run("r-y", name="y", command=["true"]), node, "r-y")
    finally:
        dead.close()

    with pytest.raises(PermanentError, match="broker"):
        make_adapter("http://nope", tmp_path)
    with pytest.raises(PermanentError, match="bogus"):
        make_adapter(mosquitto.url, tmp_path, bogus=1)


@contextmanager
def silent_after_a_restart(own_broker, tmp_path, config, **hello_kw):  # type: ignore[no-untyped-def]
    """Device d1 announces itself (retained hello and online status) to an adapter of
    ``config`` on a private broker and is seen ready, then falls silent; the broker is
    stopped, the adapter's clock moved on 60 s (past every silence limit) and the broker
    started again. Yields ``(now, ready)``: the adapter's clock (a one-item list, to move
    on) and whether d1's node is ready."""
    import paho.mqtt.client as mqtt

    from edge_agent.protocol import DevicePower, DeviceStatus, Hello

    now = [1_000.0]
    site = SiteSpec(name="fleet", kind=SiteKind.devices,
                    config={"broker": own_broker.url, **config})
    a = DevicesAdapter(site, AdapterContext(artifacts=NoArtifacts(), state_dir=tmp_path,
                                            wake=Wakes(), clock=lambda: now[0]))
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="d1")
    try:
        wait_for(lambda: a.connected, 10, message="adapter connected")
        dev.connect("127.0.0.1", own_broker.port)
        dev.loop_start()
        hello = Hello(device_id="d1", hostname="d1", arch="aarch64", cpus=4, memory=2**30,
                      location="lab-1", power=DevicePower(idle_watts=2.7, max_watts=6.4),
                      agent_version="test", **hello_kw)
        for leaf, payload in (("hello", hello), ("status", DeviceStatus(device_id="d1",
                                                                         state="online"))):
            dev.publish(topic("d1", leaf), encode(payload), qos=1).wait_for_publish(5)

        def ready() -> bool | None:
            return next((n.ready for n in a.inventory() if n.name == "d1"), None)

        wait_for(lambda: ready() is True, 10, message="device d1 ready")
        dev.loop_stop()  # the device stays silent from here on
        own_broker.stop()
        wait_for(lambda: not a.connected, 10, message="adapter sees the broker gone")
        now[0] += 60  # the outage outlasts every silence limit
        own_broker.start()
        wait_for(lambda: a.connected, 30, message="adapter reconnected")
        yield now, ready
    finally:
        a.close()


def test_a_broker_restart_gives_devices_offline_after_to_come_back(  # type: ignore[no-untyped-def]
        own_broker, tmp_path) -> None:
    """After the adapter reconnects, a device's silence counts from the reconnection, so a
    device that was silent only because the broker was down is not declared offline (and
    its work migrated) before it had ``offlineAfter`` to reconnect itself."""
    with silent_after_a_restart(own_broker, tmp_path, {"offlineAfter": 5}) as (now, ready):
        assert ready() is True, "silent only since the reconnection: not offline yet"
        now[0] += 6  # offlineAfter after the reconnection, still silent
        assert ready() is False


def test_announcements_are_read_again_and_a_re_read_is_no_sign_of_life(
        mosquitto, tmp_path, agents) -> None:  # type: ignore[no-untyped-def]
    """A device whose announcement the adapter never got (as when Mosquitto drops it past
    max_queued_messages in a surge) appears at the next re-read of the retained hello and
    status; for a device already known the re-read changes nothing — a hung agent (process
    stopped, connection open) is not seen alive by it."""
    a = make_adapter(mosquitto.url, tmp_path, Wakes(), offlineAfter=30, announcementResync=0.5)
    try:
        wait_for(lambda: a.connected, 10, message="adapter connected")
        ag = agents.spawn(None, "--location", "lab-1")
        wait_for(lambda: any(n.name == ag.device_id and n.ready for n in a.inventory()), 15,
                 message=lambda: f"device ready; agent log:\n{ag.logs()}")
        os.kill(ag.proc.pid, signal.SIGSTOP)  # hung: silent, its connection stays open
        try:
            with a._lock:
                a._devices.pop(ag.device_id)  # its announcements lost
            def back() -> bool:  # its retained hello and status both read again
                listed = ag.device_id in {n.name for n in a.inventory()}
                with a._lock:
                    d = a._devices.get(ag.device_id)
                    return listed and d is not None and d.status is not None

            wait_for(back, 10,
                     message="the device back from the re-read of its retained hello")
            with a._lock:
                seen = a._devices[ag.device_id].last_seen
            ignored = a.rereads_ignored
            wait_for(lambda: (a.inventory(), a.rereads_ignored >= ignored + 2)[1], 10,
                     message="the next re-read (hello and status) ignored")
            with a._lock:
                assert a._devices[ag.device_id].last_seen == seen
        finally:
            os.kill(ag.proc.pid, signal.SIGCONT)
    finally:
        a.close()


def test_announcements_are_read_again_only_once_the_last_burst_drained(
        mosquitto, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Re-subscribing while the broker still sends the previous burst of retained
    announcements would queue a second fleet's worth for the control plane's client (and
    past max_queued_messages lose some): the re-read waits for a quiet moment."""
    a = make_adapter(mosquitto.url, tmp_path, Wakes(), announcementResync=2)
    try:
        wait_for(lambda: a.connected, 10, message="adapter connected")
        due = a.ctx.clock() - 3  # the re-read is due
        a._resynced_at = due
        a._retained_at = a.ctx.clock()  # a retained message just arrived
        a.inventory()
        assert a._resynced_at == due, "re-read while the last burst was still arriving"
        a._retained_at = a.ctx.clock() - 1.5  # quiet for more than half the interval
        a.inventory()
        assert a._resynced_at > due
    finally:
        a.close()

def test_a_run_command_the_device_never_got_is_sent_again(
        adapter, device, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A broker without persistence loses a RunCommand it acknowledged if it restarts
    before delivering it (seen in the Mosquitto chaos test: the run stayed Dispatched).
    While the device says nothing of the run, status() sends the command again after
    RESEND_AFTER_S; the run then executes, once."""
    node = node_of(adapter, device.device_id)
    real_publish = adapter._publish
    monkeypatch.setattr(adapter, "_publish", lambda *a, **k: None)  # acknowledged, lost
    h = adapter.submit(task_run("run-lost", name="l", command=["true"]), node, "run-lost")
    monkeypatch.setattr(adapter, "_publish", real_publish)
    assert adapter.status([h]) == {}  # the device knows nothing of it
    with adapter._lock:
        adapter._dispatched["run-lost"].sent_at -= devices_adapter.RESEND_AFTER_S
    got = wait_for(lambda: (s := adapter.status([h]).get("run-lost")) and s.state.terminal
                   and s, 15, message=lambda: f"run-lost done; agent log:\n{device.logs()}")
    assert got.state == RunState.Succeeded
    assert device.logs().count("run run-lost: started pid") == 1


def test_a_hung_agent_is_lost_within_two_heartbeats_and_back_when_it_resumes(
        mosquitto, tmp_path, agents) -> None:  # type: ignore[no-untyped-def]
    """A hung agent (process stopped: silent, its connection open, so no last will) is
    ``lost`` — its node not ready — once silent longer than two of the heartbeat intervals
    its hello announces (no ``offlineAfter`` set), and online again when it resumes."""
    heartbeat = 1.0
    a = make_adapter(mosquitto.url, tmp_path, Wakes())
    try:
        wait_for(lambda: a.connected, 10, message="adapter connected")
        ag = agents.spawn(None, "--location", "lab-1", telemetry_interval=heartbeat)

        def node() -> Any:
            return next((n for n in a.inventory() if n.name == ag.device_id), None)

        def state() -> str | None:
            return next((d["state"] for d in a.devices() if d["deviceId"] == ag.device_id),
                        None)

        wait_for(lambda: (n := node()) is not None and n.ready and n.utilisation is not None,
                 15, message=lambda: f"device ready with telemetry; agent log:\n{ag.logs()}")
        [d] = [d for d in a.devices() if d["deviceId"] == ag.device_id]
        assert d["hello"]["telemetry_interval"] == heartbeat
        limit = devices_adapter.LOST_AFTER_HEARTBEATS * heartbeat
        os.kill(ag.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            # the last heartbeat came before the stop: lost at most `limit` after it, seen
            # at the next check (wait_for polls every 0.05 s; 0.5 s of margin for a busy host)
            wait_for(lambda: state() == "lost" and not node().ready, limit + 0.5,
                     message=lambda: f"device lost within {limit:g} s (+0.5 s) of the stop: "
                     f"{state()}")
            print(f"lost {time.monotonic() - stopped_at:.2f} s after the stop")
            assert a.health()[0] == SiteHealth.Degraded
        finally:
            os.kill(ag.proc.pid, signal.SIGCONT)
        wait_for(lambda: state() == "online" and node().ready, 10,
                 message=lambda: f"device online again after SIGCONT: {state()}")
    finally:
        a.close()


def test_a_hello_that_makes_no_valid_node_is_rejected(adapter, observer, caplog) -> None:  # type: ignore[no-untyped-def]
    """Each node is built once, from its hello: a hello whose figures make no valid node
    (speed 0) is rejected as malformed with the field named, and no node appears."""
    from edge_agent.protocol import DevicePower, Hello

    before = adapter.malformed
    bad = Hello(device_id="slow-1", hostname="slow-1", arch="aarch64", cpus=4, memory=2**30,
                location="lab-1", power=DevicePower(idle_watts=2.7, max_watts=6.4), speed=0,
                agent_version="test")
    observer.client.publish(topic("slow-1", "hello"), encode(bad), qos=1).wait_for_publish(5)
    wait_for(lambda: adapter.malformed > before, 5,
             message=lambda: f"the hello rejected ({adapter.malformed_by_reason})")
    assert adapter.malformed_by_reason["invalid Hello"] >= 1, adapter.malformed_by_reason
    assert "rejected payload on continuum/v1/devices/slow-1/hello: invalid Hello: speed" \
        in caplog.text
    assert "slow-1" not in {n.name for n in adapter.inventory()}


def test_a_device_heard_before_its_hello_has_the_sites_silence_limit(
        mosquitto, tmp_path, observer) -> None:  # type: ignore[no-untyped-def]
    """``offlineAfter`` is every device's silence limit, also for a device whose status
    came before (or without) its hello."""
    from edge_agent.protocol import DeviceStatus

    now = [1_000.0]
    site = SiteSpec(name="fleet", kind=SiteKind.devices,
                    config={"broker": mosquitto.url, "offlineAfter": 5})
    a = DevicesAdapter(site, AdapterContext(artifacts=NoArtifacts(), state_dir=tmp_path,
                                            wake=Wakes(), clock=lambda: now[0]))
    try:
        wait_for(lambda: a.connected, 10, message="adapter connected")
        observer.client.publish(topic("early-1", "status"), encode(
            DeviceStatus(device_id="early-1", state="online")), qos=1).wait_for_publish(5)

        def state() -> str | None:
            return next((d["state"] for d in a.devices() if d["deviceId"] == "early-1"), None)

        wait_for(lambda: state() == "online", 10, message="the status handled")
        now[0] += 6  # silent for longer than offlineAfter
        assert state() == "lost"
    finally:
        a.close()


def test_after_a_broker_restart_devices_have_their_reconnect_window(  # type: ignore[no-untyped-def]
        own_broker, tmp_path) -> None:
    """A device that announces a short heartbeat is not lost merely because the broker
    restarted: last heard before this side's reconnection, it has its silence limit plus
    the agents' reconnect backoff ceiling (RECONNECT_WINDOW_S) to be heard again — its
    work is not moved while agents reconnect — and is lost after that."""
    with silent_after_a_restart(own_broker, tmp_path, {},
                                telemetry_interval=1.0) as (now, ready):
        limit = devices_adapter.LOST_AFTER_HEARTBEATS * 1.0
        now[0] += limit + 1  # past its silence limit, within its reconnect window
        assert ready() is True, "agents get their reconnect window after a broker restart"
        now[0] += devices_adapter.RECONNECT_WINDOW_S  # the window is over, still silent
        assert ready() is False
