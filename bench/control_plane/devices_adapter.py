"""The devices adapter in-process, without a broker: what ``inventory()`` costs at a fleet
size and how long it holds the lock every MQTT message needs, and the CPU one telemetry
message costs the adapter's message handler.

The adapter is built as the control plane builds it (its MQTT session points at a port
where nothing listens, so it only retries in the background); every device's retained
hello and online status, then one telemetry each, go through the adapter's own
``_on_message`` as paho would deliver them (``paho.mqtt.client.MQTTMessage``), with
payloads as ``continuum-agent`` sends them. Then:

* ``inventory()`` is called ``--calls`` times with a dispatched run on every tenth
  device: its wall time (median) and the longest the adapter's lock was held inside it
  (the lock is wrapped to time each hold);
* ``--messages`` telemetry messages are handled round-robin over the fleet: CPU
  (``time.process_time``) per message, median over ``--repeat`` rounds.

Reproduce::

    python -m bench.control_plane.devices_adapter --devices 5000
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from types import TracebackType
from typing import Any, cast

import paho.mqtt.client as mqtt

from adapters.base import AdapterContext
from adapters.devices import DevicesAdapter, _Dispatched
from bench.control_plane.submit import free_port
from continuum.model import PowerProfile, SiteKind, SiteSpec
from edge_agent.protocol import DeviceStatus, Hello, Telemetry, encode, topic

_PAHO = cast(mqtt.Client, None)
"""The client argument paho passes to ``on_message`` (the adapter does not use it)."""


class TimedLock:
    """A ``threading.Lock`` that records how long each hold lasted (s)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = 0.0
        self.holds: list[float] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self._since = time.perf_counter()
        return got

    def release(self) -> None:
        self.holds.append(time.perf_counter() - self._since)
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class _NoArtifacts:
    def put_bytes(self, *a: Any, **k: Any) -> Any:
        raise AssertionError("not used")

    def record(self, *a: Any, **k: Any) -> Any:
        return None


def message(t: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(topic=t.encode())
    m.payload = payload
    m.retain = retain
    return m


def telemetry(device_id: str) -> bytes:
    """A telemetry payload as the agent sends it (with RTTs to the broker and a peer)."""
    return encode(Telemetry(device_id=device_id, at=datetime.now(UTC), cpu_percent=12.5,
                            memory_used=2**30, memory_total=4 * 2**30, load1=0.31,
                            power_watts=3.52, temperature_c=48.2, running=1, rtt_ms=0.41,
                            peer_rtt_ms={"lab-2": 1.7}))


def fleet_adapter(devices: int, state_dir: Path) -> DevicesAdapter:
    site = SiteSpec(name="fleet", kind=SiteKind.devices,
                    config={"broker": f"mqtt://127.0.0.1:{free_port()}"})
    a = DevicesAdapter(site, AdapterContext(artifacts=_NoArtifacts(), state_dir=state_dir))
    for k in range(devices):
        d = f"dev-{k:06d}"
        hello = Hello(device_id=d, hostname=d, arch="aarch64", cpus=4, memory=4 * 2**30,
                      location="lab-1", power=PowerProfile(idle_watts=2.7, max_watts=6.4),
                      speed=0.35, labels={"rack": str(k % 40)}, profile="pi4", emulated=True,
                      agent_version="bench", telemetry_interval=5.0)
        a._on_message(_PAHO, None, message(topic(d, "hello"), encode(hello), retain=True))
        a._on_message(_PAHO, None, message(topic(d, "status"), encode(
            DeviceStatus(device_id=d, state="online")), retain=True))
        a._on_message(_PAHO, None, message(topic(d, "telemetry"), telemetry(d)))
        if k % 10 == 0:
            a._dispatched[f"run-{k}"] = _Dispatched(d, 1.0, 2**28)
    return a


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.control_plane.devices_adapter",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--calls", type=int, default=20, help="inventory() calls timed")
    ap.add_argument("--messages", type=int, default=20000, help="telemetry messages per round")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of telemetry")
    args = ap.parse_args(argv)
    with TemporaryDirectory() as tmp:
        a = fleet_adapter(args.devices, Path(tmp))
        try:
            lock = TimedLock()
            a._lock = lock  # type: ignore[assignment]
            walls: list[float] = []
            holds: list[float] = []
            for _ in range(args.calls):
                lock.holds.clear()
                t0 = time.perf_counter()
                nodes = a.inventory()
                walls.append(time.perf_counter() - t0)
                holds.append(max(lock.holds))
            assert len(nodes) == args.devices and all(n.ready for n in nodes)
            ids = [f"dev-{k:06d}" for k in range(args.devices)]
            msgs = [message(topic(d, "telemetry"), telemetry(d)) for d in ids]
            per_msg: list[float] = []
            for _ in range(args.repeat):
                t0 = time.process_time()
                for i in range(args.messages):
                    a._on_message(_PAHO, None, msgs[i % len(msgs)])
                per_msg.append((time.process_time() - t0) / args.messages)
        finally:
            a.close()
    print(f"devices: {args.devices}")
    print(f"inventory(): {statistics.median(walls) * 1e3:.1f} ms (median of {args.calls}), "
          f"lock held at most {statistics.median(holds) * 1e3:.2f} ms (median of the "
          f"longest hold per call; worst {max(holds) * 1e3:.2f} ms)")
    print(f"telemetry: {statistics.median(per_msg) * 1e6:.1f} µs CPU per message in "
          f"_on_message (median of {args.repeat} rounds of {args.messages})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
