"""Benchmark: the collector's one-query-per-metric design against per-node queries.

Run: ``.venv/bin/python -m bench.monitoring.collector`` (starts its own Prometheus and
node-exporter with deploy/dev/prometheus.sh, on free loopback ports, and stops them).

Part 1, real Prometheus: one node-exporter is scraped as N distinct targets (file_sd
target groups with their own ``instance`` label), so Prometheus holds N nodes' series.
Side by side in one run, for each N: the catalog's node-exporter queries once per site
(what the collector does: one query per metric, ``by (instance)``) versus the same
PromQL once per node (``{instance="..."}`` added), timed over several rounds; the
table gives queries per refresh, median refresh time and the ratio.

Part 2, in memory: :meth:`Collector.apply` (joining the latest values onto nodes, run
on every inventory refresh) at 1k, 10k and 100k nodes, with and without Prometheus
values for every node.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from continuum.model import Node, PowerProfile, Resources, SiteKind, SiteSpec, Tier
from monitoring.catalog import CATALOG
from monitoring.collector import Collector, HttpPromClient

REPO = Path(__file__).resolve().parents[2]
SH = REPO / "deploy" / "dev" / "prometheus.sh"
ROUNDS = 5


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def per_node(promql: str, instance: str) -> str:
    """The catalog PromQL restricted to one node: every selector gets the instance matcher."""
    q = promql
    for metric in ("node_cpu_seconds_total{", "node_memory_MemAvailable_bytes",
                   "node_memory_MemTotal_bytes", "node_rapl_package_joules_total"):
        if metric.endswith("{"):
            q = q.replace(metric, f'{metric}instance="{instance}",')
        else:
            q = q.replace(metric, f'{metric}{{instance="{instance}"}}')
    return q


def wait_series(client: HttpPromClient, n: int, timeout: float = 90) -> None:
    q = CATALOG[0].query("10s")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(client.query(q)) >= n:
            return
        time.sleep(0.5)
    raise SystemExit(f"Prometheus did not return {n} nodes' CPU series within {timeout} s")


def part1() -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-prom-"))
    pport, eport = free_port(), free_port()
    subprocess.run([str(SH), "start", str(tmp), str(pport), str(eport), "1s"], check=True)
    rows = ["| nodes | queries/refresh (catalog) | queries/refresh (per node) | refresh (catalog) | "
            "refresh (per node) | per node ÷ catalog |", "|---:|---:|---:|---:|---:|---:|"]
    try:
        client = HttpPromClient(f"http://127.0.0.1:{pport}", timeout_s=10)
        entries = [e for e in CATALOG if e.exporter == "node-exporter"]
        for n in (10, 50, 200):
            groups = [{"targets": [f"127.0.0.1:{eport}"], "labels": {"instance": f"node-{i}"}}
                      for i in range(n)]
            (tmp / "targets" / "continuum.json").write_text(json.dumps(groups))
            wait_series(client, n)
            cat, per = [], []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                for e in entries:
                    assert len(client.query(e.query("10s"))) >= 0
                cat.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for e in entries:
                    for i in range(n):
                        client.query(per_node(e.query("10s"), f"node-{i}"))
                per.append(time.perf_counter() - t0)
            c, p = statistics.median(cat), statistics.median(per)
            rows.append(f"| {n} | {len(entries)} | {len(entries) * n} | {c * 1000:.1f} ms | "
                        f"{p * 1000:.1f} ms | {p / c:.1f}× |")
    finally:
        subprocess.run([str(SH), "stop", str(tmp)], check=False)
    return rows


def part2() -> list[str]:
    rows = ["| nodes | apply, adapter values only | apply, Prometheus values on every node |",
            "|---:|---:|---:|"]
    cap = Resources(cpu=4, memory=2**30)
    now = time.time()
    at = datetime.fromtimestamp(now, UTC)

    class Prom:
        def __init__(self, n: int) -> None:
            self.n = n

        def query(self, promql: str) -> list[dict[str, Any]]:
            if promql != CATALOG[0].query("1m"):
                return []
            return [{"metric": {"instance": f"n{i}"}, "value": [now, "0.5"]}
                    for i in range(self.n)]

    for n in (1_000, 10_000, 100_000):
        nodes = [Node(id=f"s/n{i}", name=f"n{i}", site="s", site_kind=SiteKind.sim,
                      tier=Tier.edge, capacity=cap, allocatable=cap,
                      power=PowerProfile(idle_watts=10, max_watts=50), location="x",
                      utilisation=0.3, power_watts=22.0, observed_at=at) for i in range(n)]
        plain = Collector()
        t0 = time.perf_counter()
        plain.apply(SiteSpec(name="s", kind=SiteKind.sim), nodes, now)
        t_plain = time.perf_counter() - t0
        spec = SiteSpec(name="s", kind=SiteKind.sim, prometheus_url="http://bench.invalid")
        live = Collector(client=lambda url, timeout, n=n: Prom(n))  # type: ignore[misc]
        live.refresh([spec])
        t0 = time.perf_counter()
        live.apply(spec, nodes, now)
        t_live = time.perf_counter() - t0
        rows.append(f"| {n:,} | {t_plain * 1000:.0f} ms | {t_live * 1000:.0f} ms |")
    return rows


def main() -> None:
    print("## Part 1: one query per metric vs one per node (real Prometheus 2.42)\n")
    print("\n".join(part1()))
    print("\n## Part 2: joining values onto nodes (Collector.apply)\n")
    print("\n".join(part2()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
