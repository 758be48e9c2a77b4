"""The devices adapter in-process, without a broker: what ``inventory()`` costs at a fleet
size and how long it holds the lock every MQTT message needs, and the CPU one telemetry
message costs the adapter's message handler.

The adapter is built as the control plane builds it (its MQTT session points at a port
where nothing listens, so it only retries in the background); every device's retained
hello and online status, then one telemetry each, go through the adapter's own
``_on_message`` as paho would deliver them (``paho.mqtt.client.MQTTMessage``), with
payloads as ``continuum-agent`` sends them. Then:

* ``inventory()`` is called ``--calls`` times with a dispatched run on every tenth
  device, a ``--changed`` share of the devices sending telemetry before each call: its
  wall time (median) and the longest the adapter's lock was held inside it (the lock is
  wrapped to time each hold);
* ``--messages`` telemetry messages are handled round-robin over the fleet: CPU
  (``time.process_time``) per message, median over ``--repeat`` rounds.

With ``--broker`` the telemetry goes through a private Mosquitto
(``deploy/dev/mosquitto.sh``) and the adapter's own MQTT session (paho's loop thread, the
shared subscription) instead: a publisher subprocess announces ``--devices`` devices and
sends ``--messages`` telemetry messages as fast as it can (QoS 0); the figure is this
process's CPU (every thread: paho's network loop, decoding, the handler) per telemetry
message the adapter consumed, from its first to its last.

Reproduce::

    python -m bench.control_plane.devices_adapter --devices 5000
    python -m bench.control_plane.devices_adapter --devices 1000 --broker --messages 50000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
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
from bench.control_plane.fleet import MOSQUITTO_SH
from bench.control_plane.server import REPO
from bench.control_plane.submit import free_port
from continuum.model import SiteKind, SiteSpec
from edge_agent.protocol import DevicePower, DeviceStatus, Hello, Telemetry, encode, topic

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


def hello(k: int) -> Hello:
    d = f"dev-{k:06d}"
    return Hello(device_id=d, hostname=d, arch="aarch64", cpus=4, memory=4 * 2**30,
                 location="lab-1", power=DevicePower(idle_watts=2.7, max_watts=6.4),
                 speed=0.35, labels={"rack": str(k % 40)}, profile="pi4", emulated=True,
                 agent_version="bench", telemetry_interval=5.0)


def fleet_adapter(devices: int, state_dir: Path, port: int | None = None) -> DevicesAdapter:
    """A devices adapter on ``port`` (default: a port where nothing listens) that has
    handled every device's hello, online status and one telemetry."""
    site = SiteSpec(name="fleet", kind=SiteKind.devices,
                    config={"broker": f"mqtt://127.0.0.1:{port or free_port()}"})
    a = DevicesAdapter(site, AdapterContext(artifacts=_NoArtifacts(), state_dir=state_dir))
    if port is not None:
        return a
    for k in range(devices):
        d = f"dev-{k:06d}"
        a._on_message(_PAHO, None, message(topic(d, "hello"), encode(hello(k)), retain=True))
        a._on_message(_PAHO, None, message(topic(d, "status"), encode(
            DeviceStatus(device_id=d, state="online")), retain=True))
        a._on_message(_PAHO, None, message(topic(d, "telemetry"), telemetry(d)))
        if k % 10 == 0:
            a._dispatched[f"run-{k}"] = _Dispatched(d, 1.0, 2**28)
    return a


def publish(port: int, devices: int, messages: int) -> None:
    """The publisher subprocess: every device's retained hello and online status (QoS 1),
    then ``messages`` telemetry round-robin (QoS 0) as fast as paho sends them."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher",
                    protocol=mqtt.MQTTv311)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for k in range(devices):
        d = f"dev-{k:06d}"
        c.publish(topic(d, "hello"), encode(hello(k)), qos=1, retain=True)
        info = c.publish(topic(d, "status"), encode(DeviceStatus(device_id=d, state="online")),
                         qos=1, retain=True)
    info.wait_for_publish(30)
    sys.stdout.write("announced\n")
    sys.stdout.flush()
    sys.stdin.readline()  # the adapter has seen every device: go
    payloads = [(topic(f"dev-{k:06d}", "telemetry"), telemetry(f"dev-{k:06d}"))
                for k in range(devices)]
    for i in range(messages):
        t, p = payloads[i % devices]
        c.publish(t, p, qos=0)
    c.publish("bench/done", b"", qos=1).wait_for_publish(60)
    c.loop_stop()
    c.disconnect()


def publish_and_time(a: DevicesAdapter, port: int, devices: int,
                     messages: int) -> tuple[float, int, int]:
    """Once ``a`` is connected, start this module's ``--publish`` client against the broker
    on ``port``, wait until ``a`` lists all ``devices``, let it send ``messages``
    telemetry messages and time this process while ``a`` consumes them (until none
    arrived for 1 s). Returns (CPU s of this process per message consumed after the
    first, messages consumed after the first, messages consumed in all)."""
    deadline = time.monotonic() + 30
    while not a.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    pub = subprocess.Popen(
        [sys.executable, "-m", "bench.control_plane.devices_adapter", "--publish",
         str(port), "--devices", str(devices), "--messages", str(messages)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert pub.stdout is not None and pub.stdin is not None
        assert pub.stdout.readline().strip() == "announced"
        deadline = time.monotonic() + 60
        while len(a.device_states()) < devices and time.monotonic() < deadline:
            time.sleep(0.05)
        base = a.consumed["telemetry"]
        pub.stdin.write("go\n")
        pub.stdin.flush()
        while a.consumed["telemetry"] == base:
            time.sleep(0.001)
        c0, n0 = time.process_time(), a.consumed["telemetry"]
        c1 = c0
        last, still = n0, time.monotonic()
        while time.monotonic() - still < 1.0:  # until nothing arrived for 1 s
            time.sleep(0.01)
            if a.consumed["telemetry"] != last:
                last, still = a.consumed["telemetry"], time.monotonic()
                c1 = time.process_time()
        pub.wait(timeout=60)
        got = last - n0
        return (c1 - c0) / got, got, last - base
    finally:
        if pub.poll() is None:
            pub.kill()


def through_broker(devices: int, messages: int) -> float:
    """CPU (s) of this process per telemetry message consumed through Mosquitto."""
    with TemporaryDirectory() as tmp:
        port = free_port()
        broker_dir = Path(tmp) / "mosquitto"
        subprocess.run(["bash", str(MOSQUITTO_SH), "start", str(broker_dir), str(port)],
                       check=True)
        a = fleet_adapter(devices, Path(tmp), port)
        try:
            per_msg, got, _ = publish_and_time(a, port, devices, messages)
            print(f"telemetry consumed: {got + 1} of {messages} sent")
            return per_msg
        finally:
            a.close()
            subprocess.run(["bash", str(MOSQUITTO_SH), "stop", str(broker_dir)], check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.control_plane.devices_adapter",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--calls", type=int, default=20, help="inventory() calls timed")
    ap.add_argument("--changed", type=float, default=0.4,
                    help="share of the devices that send telemetry between two inventory() "
                    "calls (default 0.4: a 5 s heartbeat, an inventory every 2 s)")
    ap.add_argument("--messages", type=int, default=20000, help="telemetry messages per round")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of telemetry")
    ap.add_argument("--broker", action="store_true",
                    help="telemetry through a private Mosquitto and the adapter's session")
    ap.add_argument("--publish", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publish:
        publish(args.publish, args.devices, args.messages)
        return 0
    if args.broker:
        per = through_broker(args.devices, args.messages)
        print(f"devices: {args.devices}")
        print(f"telemetry through Mosquitto: {per * 1e6:.1f} µs CPU of this process per "
              f"message consumed")
        return 0
    with TemporaryDirectory() as tmp:
        a = fleet_adapter(args.devices, Path(tmp))
        try:
            lock = TimedLock()
            a._lock = lock  # type: ignore[assignment]
            ids = [f"dev-{k:06d}" for k in range(args.devices)]
            msgs = [message(topic(d, "telemetry"), telemetry(d)) for d in ids]
            walls: list[float] = []
            holds: list[float] = []
            count = int(args.changed * args.devices)
            for call in range(args.calls):
                for j in range(count):  # telemetry from a share of the fleet, in turn
                    a._on_message(_PAHO, None, msgs[(call * count + j) % args.devices])
                lock.holds.clear()
                t0 = time.perf_counter()
                nodes = a.inventory()
                walls.append(time.perf_counter() - t0)
                holds.append(max(lock.holds))
            assert len(nodes) == args.devices and all(n.ready for n in nodes)
            per_msg: list[float] = []
            for _ in range(args.repeat):
                t0 = time.process_time()
                for i in range(args.messages):
                    a._on_message(_PAHO, None, msgs[i % len(msgs)])
                per_msg.append((time.process_time() - t0) / args.messages)
        finally:
            a.close()
    print(f"devices: {args.devices}")
    print(f"inventory(), {args.changed:.0%} of the devices heard since the previous call: "
          f"{statistics.median(walls) * 1e3:.1f} ms (median of {args.calls}), "
          f"lock held at most {statistics.median(holds) * 1e3:.2f} ms (median of the "
          f"longest hold per call; worst {max(holds) * 1e3:.2f} ms)")
    print(f"telemetry: {statistics.median(per_msg) * 1e6:.1f} µs CPU per message in "
          f"_on_message (median of {args.repeat} rounds of {args.messages})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
