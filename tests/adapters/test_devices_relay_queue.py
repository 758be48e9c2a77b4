"""What the devices adapter queues for the replicas' relay (adapters/devices.py), in
process: messages go through the session's ``on_message`` as paho delivers them; the
broker is a port where nothing listens (the session only retries in the background).

Aspects: one message per topic reaches the relay at a flush — the latest telemetry, the
run update of highest ``seq`` — with this adapter as origin and the receive time; a
write that fails is queued again unless a newer message came meanwhile; telemetry that
is malformed or names another device is rejected, counted and not relayed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from adapters.base import AdapterContext, RelayedMessage
from adapters.devices import DevicesAdapter
from continuum.model import SiteKind, SiteSpec
from edge_agent.protocol import RunUpdate, Telemetry, decode, encode, topic
from tests.conftest import free_port


class Relay:
    def __init__(self) -> None:
        self.puts: list[list[RelayedMessage]] = []
        self.fail = False

    def put(self, site: str, messages: Sequence[RelayedMessage]) -> None:
        if self.fail:
            raise OSError("database down")
        self.puts.append(list(messages))

    def since(self, site: str, after: float) -> tuple[list[RelayedMessage], float]:
        return [], 0.0


class _NoArtifacts:
    def put_bytes(self, *a: Any, **k: Any) -> Any:
        raise AssertionError("not used")

    def record(self, *a: Any, **k: Any) -> Any:
        return None


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[DevicesAdapter, Relay, list[float], Counter[str]]]:
    relay, now, dropped = Relay(), [1000.0], Counter[str]()
    ctx = AdapterContext(artifacts=_NoArtifacts(), state_dir=tmp_path, clock=lambda: now[0],
                         relay=relay, dropped=lambda site, reason: dropped.update([reason]))
    a = DevicesAdapter(SiteSpec(name="fleet", kind=SiteKind.devices,
                                config={"broker": f"mqtt://127.0.0.1:{free_port()}"}), ctx)
    a._stop.set()  # the test flushes the relay itself
    assert a._relay_thread is not None
    a._relay_thread.join(5)
    yield a, relay, now, dropped
    a.close()


def deliver(a: DevicesAdapter, t: str, payload: bytes) -> None:
    m = mqtt.MQTTMessage(topic=t.encode())
    m.payload = payload
    a._session._on_message(None, None, m)  # type: ignore[arg-type]


def tel(device_id: str, cpu: float) -> bytes:
    return encode(Telemetry(device_id=device_id, at=datetime.now(UTC), cpu_percent=cpu,
                            memory_used=1, memory_total=2, load1=0.1, power_watts=3.0))


def update(seq: int) -> bytes:
    return encode(RunUpdate(device_id="d1", run_id="r-1", seq=seq, state="Running"))


def test_the_relay_gets_the_latest_message_per_topic(setup) -> None:  # type: ignore[no-untyped-def]
    a, relay, now, _ = setup
    deliver(a, topic("d1", "telemetry"), tel("d1", 10))
    now[0] = 1001.0
    deliver(a, topic("d1", "telemetry"), tel("d1", 20))
    deliver(a, topic("d2", "telemetry"), tel("d2", 30))
    seq2 = update(2)
    deliver(a, topic("d1", "runs/r-1"), seq2)
    deliver(a, topic("d1", "runs/r-1"), update(1))  # late: seq 2 stays
    a._relay_flush()
    [batch] = relay.puts
    got = {m.topic: m for m in batch}
    assert set(got) == {topic("d1", "telemetry"), topic("d2", "telemetry"),
                        topic("d1", "runs/r-1")}
    d1 = got[topic("d1", "telemetry")]
    assert decode(Telemetry, d1.payload).cpu_percent == 20
    assert (d1.rank, d1.received_at) == (1001.0, 1001.0)
    assert got[topic("d1", "runs/r-1")].payload == seq2
    assert got[topic("d1", "runs/r-1")].rank == 2.0
    assert {m.origin for m in batch} == {a.origin}
    a._relay_flush()
    assert len(relay.puts) == 1  # nothing new: nothing written


def test_a_failed_write_is_queued_again_unless_newer_came(setup) -> None:  # type: ignore[no-untyped-def]
    a, relay, now, _ = setup
    deliver(a, topic("d1", "telemetry"), tel("d1", 10))
    deliver(a, topic("d2", "telemetry"), tel("d2", 10))
    relay.fail = True
    a._relay_flush()
    relay.fail = False
    now[0] = 1002.0
    deliver(a, topic("d2", "telemetry"), tel("d2", 50))
    a._relay_flush()
    [batch] = relay.puts
    got = {m.topic: decode(Telemetry, m.payload).cpu_percent for m in batch}
    assert got == {topic("d1", "telemetry"): 10, topic("d2", "telemetry"): 50}


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "payload is not UTF-8 JSON"),
    (b'{"v":1,"device_id":"d1","cpu_percent":"lots","memory_used":1,"memory_total":2,'
     b'"load1":0,"power_watts":1}', "invalid Telemetry: cpu_percent"),
    (b'{"v":2,"device_id":"d1"}', "protocol version 2 is not supported"),
])
def test_bad_telemetry_is_rejected_counted_and_not_relayed(  # type: ignore[no-untyped-def]
        setup, payload: bytes, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    a, relay, _, dropped = setup
    deliver(a, topic("d1", "telemetry"), payload)
    deliver(a, topic("d1", "telemetry"), tel("d2", 10))  # names another device
    a._relay_flush()
    assert relay.puts == [] and dropped["malformed"] == 2 and a.malformed == 2
    assert reason in caplog.text and "device id mismatch" in caplog.text
    assert a.telemetry() == []
