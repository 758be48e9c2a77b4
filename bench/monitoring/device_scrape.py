"""CPU of one scrape of ``/metrics``' device families (``DeviceTelemetryCollector.
exposition``), in one process with no server around it, the readings built in advance.

For each fleet size: every device changed since the last scrape, 10 % changed, none
changed; process CPU per scrape, the median over ``--repeat`` scrapes. Run it under
``PYTHONPATH=<tree>`` to measure that tree's code (the base via ``git archive``)::

    PYTHONPATH=. .venv/bin/python -m bench.monitoring.device_scrape --devices 1000 10000
"""

from __future__ import annotations

import argparse
import statistics
import time

from monitoring.metrics import DeviceTelemetryCollector
from monitoring.telemetry import DeviceReading

T0 = 1_764_633_600.0


def fleet(n: int, step: int) -> list[DeviceReading]:
    """``n`` devices' readings, varied as the agents send them (``step`` shifts every
    measured value and the timestamp, so two steps differ in every device)."""
    return [DeviceReading(
        site="fleet", device=f"dev-{k:06d}", location=f"loc-{k % 20}", online=k % 50 != 0,
        at=T0 + step + k / 1000.0, received_at=T0 + step + k / 1000.0 + 0.01,
        cpu_utilisation=((k * 7 + step) % 100) / 100.0, memory_used=2**30 + k * 4096 + step,
        memory_total=4 * 2**30, load1=((k + step) % 400) / 100.0,
        power_watts=3.2 + ((k + step) % 17) / 10.0, power_source="model",
        running=(k + step) % 3, rtt_ms=1.5 + ((k + step) % 13) / 4.0,
        peer_rtt_ms={f"loc-{(k + 1) % 20}": 2.0 + step % 5},
        temperature_c=40.0 + ((k + step) % 90) / 10.0) for k in range(n)]


def measure(n: int, changed: float, repeat: int) -> tuple[float, int]:
    """Median ms CPU of a scrape with ``changed`` (0..1) of ``n`` devices changed since the
    previous one, and the exposition's size (bytes)."""
    steps = [fleet(n, s) for s in range(2)]
    every = max(1, round(1 / changed)) if changed else 0
    views = []
    for s in range(2):  # the readings a scrape sees, alternating: changed devices differ
        views.append([steps[s][k] if every and k % every == 0 else steps[0][k]
                      for k in range(n)])
    current = [views[0]]
    coll = DeviceTelemetryCollector(lambda: current[0], per_device_limit=max(n, 10_000),
                                    clock=lambda: T0 + 5)
    size = len(coll.exposition())
    spent = []
    for i in range(repeat):
        current[0] = views[(i + 1) % 2]
        t = time.process_time()
        coll.exposition()
        spent.append(time.process_time() - t)
    return statistics.median(spent) * 1000, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    for n in args.devices:
        row = [f"{n:,}"]
        for changed in (1.0, 0.1, 0.0):
            ms, size = measure(n, changed, args.repeat)
            row.append(f"{ms:.1f} ms")
        print(" | ".join(row), f"| {size:,} bytes", flush=True)


if __name__ == "__main__":
    main()
