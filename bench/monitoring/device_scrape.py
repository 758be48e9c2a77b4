"""CPU of one scrape of ``/metrics``' device families (``DeviceTelemetryCollector.
exposition``), in one process with no server around it, the readings built in advance.

For each fleet size: every device changed since the last scrape, 10 % changed, none
changed; process CPU per scrape, the median over ``--repeat`` scrapes. With ``--base``
(a ``monitoring/metrics.py`` of another tree, e.g. the base via ``git archive``), that
module's collector is measured too, in the same process, the two alternating scrape by
scrape so that a shared machine's noise falls on both alike::

    PYTHONPATH=. .venv/bin/python -m bench.monitoring.device_scrape --devices 1000 10000 \
        --base /tmp/base/monitoring/metrics.py
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import time
from typing import Any

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


def measure(n: int, changed: float, repeat: int,
            collectors: dict[str, type[Any]]) -> dict[str, tuple[float, int]]:
    """Per collector class: median ms CPU of a scrape with ``changed`` (0..1) of ``n``
    devices changed since the previous one, and the exposition's size (bytes)."""
    steps = [fleet(n, s) for s in range(2)]
    every = max(1, round(1 / changed)) if changed else 0
    views = []
    for s in range(2):  # the readings a scrape sees, alternating: changed devices differ
        views.append([steps[s][k] if every and k % every == 0 else steps[0][k]
                      for k in range(n)])
    current = [views[0]]
    colls = {name: cls(lambda: current[0], per_device_limit=max(n, 10_000),
                       clock=lambda: T0 + 5) for name, cls in collectors.items()}
    sizes = {name: len(c.exposition()) for name, c in colls.items()}
    texts = {c.exposition() for c in colls.values()}
    assert len(texts) == 1, "the collectors' expositions differ"
    gc.collect()
    gc.freeze()  # the readings are long-lived, as the server's are (cf. tune_gc)
    spent: dict[str, list[float]] = {name: [] for name in colls}
    for i in range(repeat):
        current[0] = views[(i + 1) % 2]
        for name, c in colls.items():
            c.exposition()  # a scrape in the previous state, not timed
            current[0] = views[i % 2]
            t = time.process_time()
            c.exposition()
            spent[name].append(time.process_time() - t)
            current[0] = views[(i + 1) % 2]
    gc.unfreeze()
    return {name: (statistics.median(v) * 1000, sizes[name]) for name, v in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--base", help="another tree's monitoring/metrics.py to measure too")
    args = ap.parse_args()
    collectors: dict[str, type[Any]] = {}
    if args.base:
        spec = importlib.util.spec_from_file_location("base_metrics", args.base)
        assert spec is not None and spec.loader is not None
        base = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(base)
        collectors["base"] = base.DeviceTelemetryCollector
    collectors["this tree"] = DeviceTelemetryCollector
    print("| devices | code | every device changed | 10 % changed | none changed | bytes |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in args.devices:
        rows: dict[str, list[str]] = {name: [] for name in collectors}
        sizes: dict[str, int] = {}
        for changed in (1.0, 0.1, 0.0):
            for name, (ms, size) in measure(n, changed, args.repeat, collectors).items():
                rows[name].append(f"{ms:.1f} ms")
                sizes[name] = size
        for name, cells in rows.items():
            print(f"| {n:,} | {name} | " + " | ".join(cells) + f" | {sizes[name]:,} |",
                  flush=True)


if __name__ == "__main__":
    main()
