"""The server's CPU per device telemetry message, apart from any device simulator.

The fleet bench (``bench/control_plane/fleet.py``) measures the whole server while a
simulator shares the machine's cores with it; this one measures only the ingest path, in
one process, with prepared payloads:

* **in-process** (default): ``--messages`` telemetry messages of ``--devices`` devices
  (as ``continuum-agent`` sends them, round-robin over the fleet, built before timing) go
  through the devices adapter exactly as paho delivers them — the session's own
  ``on_message`` callback (:class:`edge_agent.protocol.session.MqttSession`) with a
  ``paho.mqtt.client.MQTTMessage`` — down to the stored reading; the replicas' relay
  (``--relay``: a :class:`control_plane.relay.StoreRelay` on a temporary SQLite store by
  default, ``memory`` for an in-memory one, ``none`` for none) is flushed every
  ``--rate`` × ``RELAY_INTERVAL_S`` messages, as the relay thread does at that rate; with
  ``--scrape`` the control plane's device readings are built and ``/metrics``' device
  families rendered (:class:`monitoring.metrics.DeviceTelemetryCollector`) every
  ``--rate`` messages (the fleet bench's once a second). Figures: CPU
  (``time.process_time``) per message, median over ``--repeat`` rounds, in total and
  for the handler, relay flushes and scrapes apart;
* **through Mosquitto** (``--broker``): a private Mosquitto (``deploy/dev/mosquitto.sh``)
  and the adapter's own MQTT session (paho's loop thread, MQTT 5, the shared
  subscription); a publisher subprocess (one paho client, QoS 0, pre-encoded payloads)
  announces the devices and then sends ``--messages`` telemetry messages as fast as it
  can. The figure is this process's CPU (every thread: paho's network loop, decoding, the
  handler, the relay thread) per telemetry message the adapter consumed, first to last.

The process runs with the server's garbage-collector settings
(:func:`control_plane.server.tune_gc`).

Both run against whichever tree is first on ``PYTHONPATH`` (the bench only drives the
adapter through paho's callback, ``_relay_flush`` and the public collector), so a base
checkout is measured by copying this file into it. ``--profile FILE`` writes a cProfile
(in-process: the timed rounds; ``--broker``: paho's loop thread, connection to close).

Reproduce::

    python -m bench.control_plane.telemetry_ingest --devices 1000 --messages 20000
    python -m bench.control_plane.telemetry_ingest --devices 1000 --messages 20000 --scrape
    python -m bench.control_plane.telemetry_ingest --devices 1000 --broker --messages 50000
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, cast

import paho.mqtt.client as mqtt

from adapters.base import AdapterContext, RelayedMessage
from adapters.devices import RELAY_INTERVAL_S, DevicesAdapter
from bench.control_plane.devices_adapter import (
    _NoArtifacts,
    hello,
    message,
    publish_and_time,
    telemetry,
)
from bench.control_plane.fleet import MOSQUITTO_SH
from bench.control_plane.submit import free_port
from continuum.model import SiteKind, SiteSpec
from edge_agent.protocol import DeviceStatus, encode, topic

_PAHO = cast(mqtt.Client, None)


class MemoryRelay:
    """A :class:`adapters.base.MessageRelay` in memory: the latest message per topic."""

    def __init__(self) -> None:
        self.rows: dict[str, RelayedMessage] = {}
        self.puts = 0

    def put(self, site: str, messages: Sequence[RelayedMessage]) -> None:
        self.puts += 1
        for m in messages:
            self.rows[m.topic] = m

    def since(self, site: str, after: float) -> tuple[list[RelayedMessage], float]:
        return [], time.time()


def make_relay(kind: str, state_dir: Path) -> Any:
    """``none`` → None, ``memory`` → :class:`MemoryRelay`, ``sqlite`` → a StoreRelay on a
    fresh SQLite database in ``state_dir``."""
    if kind == "none":
        return None
    if kind == "memory":
        return MemoryRelay()
    from control_plane.relay import StoreRelay
    from control_plane.store import Store
    return StoreRelay(Store(f"sqlite:///{state_dir / 'relay.db'}"))


def make_adapter(port: int, state_dir: Path, relay: Any) -> tuple[DevicesAdapter, Counter[str]]:
    """A devices adapter on ``port`` (MQTT 5, shared subscriptions: what is consumed is
    relayed) and the counter its ``ctx.dropped`` feeds."""
    dropped: Counter[str] = Counter()

    def drop(site: str, reason: str) -> None:
        dropped[reason] += 1

    site = SiteSpec(name="fleet", kind=SiteKind.devices,
                    config={"broker": f"mqtt://127.0.0.1:{port}"})
    ctx = AdapterContext(artifacts=_NoArtifacts(), state_dir=state_dir, relay=relay,
                         dropped=drop)
    return DevicesAdapter(site, ctx), dropped


def stop_relay_thread(a: DevicesAdapter) -> None:
    """Stop the adapter's relay thread: the bench flushes the relay itself."""
    a._stop.set()
    if a._relay_thread is not None:
        a._relay_thread.join(timeout=5)


def scraper(a: DevicesAdapter) -> Any:
    """A function that builds the control plane's device readings from ``a`` and renders
    ``/metrics``' device families, as one scrape does."""
    from control_plane.server import device_readings
    from monitoring.metrics import DeviceTelemetryCollector
    from monitoring.telemetry import DeviceReading

    previous: dict[Any, Any] = {}

    def readings() -> list[DeviceReading]:
        nonlocal previous  # as ControlPlane.device_readings keeps them between scrapes
        cache: dict[Any, Any] = {}
        out = device_readings("fleet", a.telemetry(), previous, cache)
        previous = cache
        return out

    collector = DeviceTelemetryCollector(readings)
    return lambda: collector.exposition()


def in_process(args: argparse.Namespace) -> dict[str, float]:
    """µs CPU per message: total, handler, relay, scrape (medians over the rounds)."""
    with TemporaryDirectory() as tmp:
        relay = make_relay(args.relay, Path(tmp))
        a, dropped = make_adapter(free_port(), Path(tmp), relay)
        try:
            stop_relay_thread(a)
            deliver = a._session._on_message  # what paho's loop calls for every PUBLISH
            ids = [f"dev-{k:06d}" for k in range(args.devices)]
            for k, d in enumerate(ids):
                deliver(_PAHO, None, message(topic(d, "hello"), encode(hello(k)), retain=True))
                deliver(_PAHO, None, message(topic(d, "status"), encode(
                    DeviceStatus(device_id=d, state="online")), retain=True))
            msgs = [message(topic(d, "telemetry"), telemetry(d)) for d in ids]
            flush_every = max(1, int(args.rate * RELAY_INTERVAL_S))
            scrape = scraper(a) if args.scrape else None
            for m in msgs:  # warm: every device has a reading, the scrape cache is built
                deliver(_PAHO, None, m)
            a._relay_flush()
            if scrape is not None:
                scrape()
            rounds: dict[str, list[float]] = {"total": [], "handler": [], "relay": [],
                                              "scrape": []}
            prof = cProfile.Profile() if args.profile else None
            n, nmsgs = args.messages, len(msgs)
            for _ in range(args.repeat):
                spent = {"relay": 0.0, "scrape": 0.0}
                if prof is not None:
                    prof.enable()
                t0 = time.process_time()
                for i in range(n):
                    deliver(_PAHO, None, msgs[i % nmsgs])
                    if (i + 1) % flush_every == 0:
                        c = time.process_time()
                        a._relay_flush()
                        spent["relay"] += time.process_time() - c
                    if scrape is not None and (i + 1) % args.rate == 0:
                        c = time.process_time()
                        scrape()
                        spent["scrape"] += time.process_time() - c
                c = time.process_time()
                a._relay_flush()
                spent["relay"] += time.process_time() - c
                total = time.process_time() - t0
                if prof is not None:
                    prof.disable()
                rounds["total"].append(total / n)
                rounds["relay"].append(spent["relay"] / n)
                rounds["scrape"].append(spent["scrape"] / n)
                rounds["handler"].append((total - spent["relay"] - spent["scrape"]) / n)
            if prof is not None:
                prof.dump_stats(args.profile)
            assert not dropped and a.malformed == 0, (dropped, a.malformed_by_reason)
            assert a.consumed["telemetry"] == nmsgs + args.repeat * n
            if isinstance(relay, MemoryRelay):
                assert len(relay.rows) == nmsgs
        finally:
            a.close()
    return {k: statistics.median(v) * 1e6 for k, v in rounds.items()}


def through_broker(args: argparse.Namespace) -> tuple[float, int]:
    """µs CPU of this process per telemetry message consumed through Mosquitto, and how
    many were consumed."""
    with TemporaryDirectory() as tmp:
        port = free_port()
        broker_dir = Path(tmp) / "mosquitto"
        subprocess.run(["bash", str(MOSQUITTO_SH), "start", str(broker_dir), str(port)],
                       check=True, stdout=subprocess.DEVNULL)
        relay = make_relay(args.relay, Path(tmp))
        prof = cProfile.Profile() if args.profile else None
        if prof is not None:  # paho's loop thread runs under the profiler, start to end
            run = mqtt.Client._thread_main

            def profiled(client: mqtt.Client) -> None:
                prof.runcall(run, client)
            mqtt.Client._thread_main = profiled  # type: ignore[method-assign, assignment]
        a, dropped = make_adapter(port, Path(tmp), relay)
        try:
            per_msg, _, consumed = publish_and_time(a, port, args.devices, args.messages)
            assert not dropped and a.malformed == 0, (dropped, a.malformed_by_reason)
            return per_msg * 1e6, consumed
        finally:
            a.close()
            if prof is not None:
                prof.dump_stats(args.profile)
            subprocess.run(["bash", str(MOSQUITTO_SH), "stop", str(broker_dir)], check=False,
                           stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.control_plane.telemetry_ingest",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20000, help="telemetry messages per round")
    ap.add_argument("--repeat", type=int, default=5, help="rounds (in-process)")
    ap.add_argument("--rate", type=int, default=5000,
                    help="msgs/s the flushes and scrapes are spaced for (in-process; "
                    "default 5000: a relay flush every 1,500 messages, a scrape every 5,000)")
    ap.add_argument("--relay", choices=("sqlite", "memory", "none"), default="sqlite")
    ap.add_argument("--scrape", action="store_true",
                    help="build the readings and render /metrics' device families once per "
                    "--rate messages (in-process)")
    ap.add_argument("--broker", action="store_true",
                    help="through a private Mosquitto and the adapter's own MQTT session")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile of the timed part")
    args = ap.parse_args(argv)
    from control_plane.server import tune_gc
    tune_gc()  # the server's collector settings (continuum server runs with them)
    if args.broker:
        per, got = through_broker(args)
        print(f"devices {args.devices}, relay {args.relay}: {got} of {args.messages} consumed "
              f"through Mosquitto; {per:.1f} µs CPU of this process per message")
        return 0
    r = in_process(args)
    print(f"devices {args.devices}, relay {args.relay}, {args.messages} msgs x {args.repeat}: "
          f"{r['total']:.1f} µs CPU per message (handler {r['handler']:.1f}, relay "
          f"{r['relay']:.1f}, scrape {r['scrape']:.1f}; medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
