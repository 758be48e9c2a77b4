"""Two control-plane replicas' devices adapters on one real Mosquitto and one database.

Aspects: MQTT 5 shared subscriptions deliver each run update and telemetry message to
exactly one replica; the relay through the database (``device_messages``) gets what
one replica consumed to the other, so the "leader" replica's ``status`` sees a final
state the other one consumed and both replicas' telemetry views hold every device; a
replica that leaves → the other one gets everything; the relay's upsert keeps the
highest rank, release leaves a tombstone, old rows expire; a broker without MQTT 5 (the
embedded amqtt of ``continuum demo``) gets MQTT 3.1.1 and plain subscriptions.
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from adapters.base import AdapterContext, Handle, RelayedMessage, TaskRun
from adapters.devices import DevicesAdapter
from continuum.errors import PermanentError
from continuum.model import RunState, SiteKind, SiteSpec, Task
from control_plane.broker import EmbeddedBroker
from control_plane.relay import RETENTION_S, StoreRelay
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from control_plane.store import Store
from edge_agent.protocol import TOPIC_PREFIX, topic
from edge_agent.protocol.session import MqttSession
from tests.helpers import TEST_COMMAND_KEY, NoArtifacts, Observer, Wakes, wait_for

PY = sys.executable


class RecordingSession(MqttSession):
    """The adapter's MQTT 5 session, recording each message the broker delivered to it."""

    def __init__(self, url: str, name: str) -> None:
        super().__init__(url, client_id=f"continuum-{name}-{uuid.uuid4().hex[:6]}",
                         label=f"replica {name}", mqtt5=True)
        self.got: list[tuple[str, bytes, bool]] = []
        self._got_lock = threading.Lock()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._got_lock:
            self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
        super()._on_message(client, userdata, msg)

    def live(self, t: str) -> list[bytes]:
        """Payloads received live (not as a retained message) on topic ``t``."""
        with self._got_lock:
            return [p for (tt, p, r) in self.got if tt == t and not r]


class Replica:
    """One replica's devices adapter: its own Store on the shared database file."""

    def __init__(self, name: str, url: str, db_url: str, tmp: Path) -> None:
        self.name = name
        self.store = Store(db_url)
        self.session = RecordingSession(url, name)
        ctx = AdapterContext(artifacts=NoArtifacts(), state_dir=tmp, wake=Wakes(),
                             sign=TEST_COMMAND_KEY.sign, relay=StoreRelay(self.store))
        site = SiteSpec(name="fleet", kind=SiteKind.devices,
                        config={"broker": url, "offlineAfter": 10})
        self.adapter = DevicesAdapter(site, ctx, session=self.session)
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.adapter.close()
            self.store.close()


@pytest.fixture
def replicas(mosquitto, tmp_path, database_url) -> Iterator[tuple[Replica, Replica]]:  # type: ignore[no-untyped-def]
    """Two replicas on one broker and one database (SQLite and PostgreSQL)."""
    db = database_url
    a = Replica("a", mosquitto.url, db, tmp_path)
    b = Replica("b", mosquitto.url, db, tmp_path)
    for r in (a, b):
        wait_for(lambda r=r: r.adapter.connected and r.session.shared  # type: ignore[misc]
                 and not r.session.catching_up, 10,
                 message=f"replica {r.name} connected with shared subscriptions")
    yield a, b
    a.close()
    b.close()


def ready_everywhere(reps: tuple[Replica, ...], device_ids: list[str]) -> None:
    for r in reps:
        wait_for(lambda r=r: {n.name for n in r.adapter.inventory() if n.ready}  # type: ignore[misc]
                 >= set(device_ids), 20, message=f"devices ready at replica {r.name}")


def run_on(leader: Replica, device_id: str, run_id: str) -> Handle:
    node = next(n for n in leader.adapter.inventory() if n.name == device_id)
    run = TaskRun(run_id=run_id, workflow_id="wf-1", workflow_name="wf",
                  task=Task(name="t", command=[PY, "-c", "print('hi')"]))
    return leader.adapter.submit(run, node, run_id)


def final_at(leader: Replica, h: Handle) -> RunState | None:
    def done() -> RunState | None:
        st = leader.adapter.status([h]).get(h.run_id)
        return st.state if st and st.state == RunState.Succeeded else None
    return wait_for(done, 30, message=f"leader sees run {h.run_id} succeed")


def test_each_run_update_consumed_once_and_the_leader_sees_what_the_other_consumed(
        replicas, agents, observer: Observer) -> None:  # type: ignore[no-untyped-def]
    leader, other = replicas
    ag = agents.spawn(None)
    ready_everywhere(replicas, [ag.device_id])
    via_other = None
    for i in range(8):  # round robin over the group: a final update lands at `other` soon
        h = run_on(leader, ag.device_id, f"run-rep-{i}")
        assert final_at(leader, h) == RunState.Succeeded
        t = topic(ag.device_id, f"runs/{h.run_id}")
        wait_for(lambda t=t: len(leader.session.live(t)) + len(other.session.live(t))  # type: ignore[misc]
                 == len(observer.on(t)), 10, message="every update consumed by one replica")
        published = sorted(observer.on(t))
        at_leader, at_other = leader.session.live(t), other.session.live(t)
        assert sorted(at_leader + at_other) == published  # each exactly once, none lost
        assert not set(at_leader) & set(at_other)
        final = observer.latest(t)
        if final in at_other and final not in at_leader:
            via_other = h.run_id
            break
    assert via_other is not None, "no final update reached the other replica in 8 runs"
    assert leader.adapter.relayed_in["runs"] >= 1
    assert other.adapter.consumed["runs"] >= 1 and leader.adapter.consumed["runs"] >= 1


def test_telemetry_of_every_device_reaches_both_replicas(replicas, agents) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas
    ids = [agents.spawn(None).device_id for _ in range(3)]
    ready_everywhere(replicas, ids)
    for r in replicas:
        wait_for(lambda r=r: {t.device_id for t in r.adapter.telemetry()} >= set(ids),  # type: ignore[misc]
                 10, message=f"telemetry of all devices at replica {r.name}")
        wait_for(lambda r=r: r.adapter.relayed_in["telemetry"] > 0, 10,  # type: ignore[misc]
                 message=f"replica {r.name} handled telemetry the other consumed")
    # each telemetry message went to one replica only
    for d in ids:
        t = topic(d, "telemetry")
        assert not set(a.session.live(t)) & set(b.session.live(t))
    # and the relayed readings keep both views current: every device is ready at both
    # after several telemetry intervals, though each replica received about half
    assert all(n.ready for r in replicas for n in r.adapter.inventory() if n.name in ids)


def test_a_replica_that_leaves_leaves_everything_to_the_other(
        replicas, agents, observer: Observer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    leader, other = replicas
    ag = agents.spawn(None)
    ready_everywhere(replicas, [ag.device_id])
    other.close()
    t_tel = topic(ag.device_id, "telemetry")
    before = len(leader.session.live(t_tel))
    h = run_on(leader, ag.device_id, "run-after-leave")
    assert final_at(leader, h) == RunState.Succeeded
    t = topic(ag.device_id, f"runs/{h.run_id}")
    wait_for(lambda: len(leader.session.live(t)) == len(observer.on(t)), 10,
             message="the leader consumed every update of the run")
    assert sorted(leader.session.live(t)) == sorted(observer.on(t))
    assert other.session.live(t) == []
    # telemetry: every message now reaches the one replica left
    wait_for(lambda: len(leader.session.live(t_tel)) >= before + 4, 10,
             message="telemetry keeps reaching the replica left")
    n = len(observer.on(t_tel))
    wait_for(lambda: set(observer.on(t_tel)[n - 3:n]) <= set(leader.session.live(t_tel)), 10,
             message="the last telemetry messages all reached the replica left")


def test_release_tombstone_makes_every_replica_forget_the_run(replicas, agents) -> None:  # type: ignore[no-untyped-def]
    leader, other = replicas
    ag = agents.spawn(None)
    ready_everywhere(replicas, [ag.device_id])
    h = run_on(leader, ag.device_id, "run-released")
    final_at(leader, h)
    wait_for(lambda: "run-released" in other.adapter._updates, 10,
             message="the other replica knows the run (relayed or consumed)")
    leader.adapter.release(h)

    def what_other_holds() -> str:  # what a failure needs (once seen under a loaded suite)
        t = topic(ag.device_id, "runs/run-released")

        def brief(payload: bytes) -> str:
            return "(cleared)" if not payload else "seq {seq} {state}".format(**json.loads(payload))

        rows = [(brief(m.payload), m.rank, m.origin, m.version)
                for m in StoreRelay(other.store).since("fleet", 0)[0] if m.topic == t]
        consumed = [(brief(p), "retained" if r else "live")
                    for tt, p, r in list(other.session.got) if tt == t]
        return (f"the other replica forgot the released run; it holds "
                f"{other.adapter._updates.get('run-released')!r}; its relay cursor "
                f"{other.adapter._relay_after}; the relay row {rows}; what it consumed on "
                f"that topic {consumed}")

    wait_for(lambda: "run-released" not in other.adapter._updates, 10,
             message=what_other_holds)


def test_store_relay_keeps_the_highest_rank_and_expires(database_url: str) -> None:
    store = Store(database_url)
    now = [1000.0]
    relay = StoreRelay(store, clock=lambda: now[0])
    t = f"{TOPIC_PREFIX}/d1/runs/r1"
    relay.put("s", [RelayedMessage(t, b"seq2", 2, 999.0, "x"),
                    RelayedMessage(t, b"seq1", 1, 998.0, "x")])
    relay.put("s", [RelayedMessage(t, b"seq1-late", 1, 999.5, "y")])
    [m], cursor = relay.since("s", 0)
    assert (m.payload, m.rank, m.origin, m.version) == (b"seq2", 2, "x", 1000.0)
    assert cursor == 1000.0
    assert relay.since("other-site", 0) == ([], 1000.0) and relay.since("s", 1000.5)[0] == []
    now[0] = 1001.0
    relay.put("s", [RelayedMessage(t, b"", 1e18, 1001.0, "y")])  # the tombstone wins
    [m], _ = relay.since("s", 1000.5)
    assert (m.payload, m.origin) == (b"", "y")
    # a batch of many topics: each row is upserted on its own rank
    many = [f"{TOPIC_PREFIX}/d{k}/telemetry" for k in range(300)]
    relay.put("s", [RelayedMessage(tk, b"old", 10.0, 1000.0, "x") for tk in many])
    relay.put("s", [RelayedMessage(tk, b"new" if k % 2 else b"stale", 11.0 if k % 2 else 9.0,
                                   1001.0, "y") for k, tk in enumerate(many)])
    rows = {m.topic: m.payload for m in relay.since("s", 0)[0]}
    assert [rows[tk] for tk in many] == [b"new" if k % 2 else b"old" for k in range(300)]
    now[0] = 1001.0 + RETENTION_S + 1
    relay.put("s", [])
    assert relay.since("s", 0)[0] == []
    store.close()


def test_broker_without_mqtt5_gets_plain_subscriptions(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The embedded amqtt broker refuses MQTT 5: the adapter falls back to 3.1.1."""
    broker = EmbeddedBroker()
    broker.start()
    try:
        store = Store(f"sqlite:///{tmp_path / 'c.db'}")
        ctx = AdapterContext(artifacts=NoArtifacts(), state_dir=tmp_path,
                             sign=TEST_COMMAND_KEY.sign, relay=StoreRelay(store))
        a = DevicesAdapter(SiteSpec(name="fleet", kind=SiteKind.devices,
                                    config={"broker": broker.url}), ctx)
        try:
            wait_for(lambda: a.connected, 15, message="adapter connected to amqtt")
            assert not a._session.mqtt5 and not a._session.shared
        finally:
            a.close()
            store.close()
    finally:
        broker.stop()


def test_plain_subscriptions_when_shared_subscriptions_are_off(mosquitto, agents, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``sharedSubscriptions: false``: MQTT 3.1.1, every replica gets every message."""
    adapters = []
    for _ in range(2):
        ctx = AdapterContext(artifacts=NoArtifacts(), state_dir=tmp_path,
                             sign=TEST_COMMAND_KEY.sign)
        adapters.append(DevicesAdapter(SiteSpec(
            name="fleet", kind=SiteKind.devices,
            config={"broker": mosquitto.url, "sharedSubscriptions": False}), ctx))
    try:
        for a in adapters:
            wait_for(lambda a=a: a.connected, 10, message="adapter connected")  # type: ignore[misc]
            assert not a._session.mqtt5 and not a._session.shared
        agents.spawn(None)
        wait_for(lambda: all(a.consumed["telemetry"] >= 6 for a in adapters), 15,
                 message="both adapters receive the telemetry")
        assert all(a.relayed_in["telemetry"] == 0 for a in adapters)
    finally:
        for a in adapters:
            a.close()


@pytest.mark.parametrize("group", ["a/b", "x+", "#", ""])
def test_share_group_is_checked(group: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ctx = AdapterContext(artifacts=NoArtifacts(), state_dir=tmp_path)
    with pytest.raises(PermanentError, match="shareGroup") as e:
        DevicesAdapter(SiteSpec(name="fleet", kind=SiteKind.devices,
                                config={"broker": "mqtt://127.0.0.1:1", "shareGroup": group}),
                       ctx)
    assert e.value.details == {"field": "shareGroup"}


def test_after_a_broker_restart_updates_are_still_consumed_once(
        replicas, agents, mosquitto, observer: Observer) -> None:  # type: ignore[no-untyped-def]
    leader, other = replicas
    ag = agents.spawn(None)
    ready_everywhere(replicas, [ag.device_id])
    mosquitto.restart()
    for r in replicas:
        # until its catch-up twins are gone a live message may reach both replicas
        wait_for(lambda r=r: r.adapter.connected and r.session.shared  # type: ignore[misc]
                 and not r.session.catching_up, 20, message=f"replica {r.name} reconnected")
    wait_for(observer.connected.is_set, 20, message="observer reconnected")
    ready_everywhere(replicas, [ag.device_id])
    h = run_on(leader, ag.device_id, "run-after-restart")
    assert final_at(leader, h) == RunState.Succeeded
    t = topic(ag.device_id, f"runs/{h.run_id}")
    wait_for(lambda: len(leader.session.live(t)) + len(other.session.live(t))
             == len(observer.on(t)), 10, message="every update consumed by one replica")
    assert sorted(leader.session.live(t) + other.session.live(t)) == sorted(observer.on(t))


def test_the_control_plane_relays_only_on_a_database_replicas_share(
        tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    """SQLite serves one replica: its devices adapters get no relay (no write per consumed
    message); on PostgreSQL they relay through the database."""
    cp = ControlPlane(Settings(state_dir=tmp_path / "state", database_url=database_url))
    try:
        assert (cp.ctx.relay is None) == database_url.startswith("sqlite")
        assert cp.ctx.relay is None or isinstance(cp.ctx.relay, StoreRelay)
    finally:
        cp.federation.close()
        cp.store.close()
