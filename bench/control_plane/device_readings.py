"""CPU of building the control plane's device readings for one scrape
(``control_plane.server.device_readings``), 1,000s of devices, in one process: every
device with a new telemetry payload since the last call, and none.

    PYTHONPATH=. .venv/bin/python -m bench.control_plane.device_readings --devices 1000 10000
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from adapters.capabilities import DeviceTelemetry
from control_plane.server import device_readings
from edge_agent.protocol.v1 import Telemetry

AT = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def entries(n: int, step: int) -> list[DeviceTelemetry]:
    return [DeviceTelemetry(
        device_id=f"dev-{k:06d}", location=f"loc-{k % 20}", online=True,
        received_at=AT.timestamp() + step, telemetry=Telemetry(
            device_id=f"dev-{k:06d}", at=AT + timedelta(seconds=step), cpu_percent=k % 100,
            memory_used=2**30 + k, memory_total=2**32, load1=0.5, power_watts=3.5,
            rtt_ms=2.0, peer_rtt_ms={"loc-1": 4.0}, temperature_c=45.0))
        for k in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    print("| devices | every device new: ms CPU | none new: ms CPU |")
    print("|---:|---:|---:|")
    for n in args.devices:
        fresh, same = [], []
        steps = [entries(n, s) for s in range(2)]
        cache: dict = device_readings_cache(steps[0])
        for i in range(args.repeat):
            new: dict = {}
            t = time.process_time()
            device_readings("fleet", steps[(i + 1) % 2], cache, new)
            fresh.append(time.process_time() - t)
            # the adapter builds new entries around the same payloads every call
            again = [replace(e) for e in steps[(i + 1) % 2]]
            cache, new = new, {}
            t = time.process_time()
            device_readings("fleet", again, cache, new)
            same.append(time.process_time() - t)
            cache = new
        print(f"| {n:,} | {statistics.median(fresh) * 1000:.1f} | "
              f"{statistics.median(same) * 1000:.1f} |", flush=True)


def device_readings_cache(first: list[DeviceTelemetry]) -> dict:
    cache: dict = {}
    device_readings("fleet", first, {}, cache)
    return cache


if __name__ == "__main__":
    main()
