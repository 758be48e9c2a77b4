"""Workflow submits per second over the REST API, with 1 or more control-plane replicas.

Starts ``--replicas`` ``continuum server`` processes on one database (``--database
sqlite``: the embedded file, one replica only; ``postgresql``: a private PostgreSQL 15
started with ``deploy/dev/postgres.sh`` on loopback) and one shared state directory (the
replicas' keys and artifacts), with one simulated site. Then, for each client count in
``--clients``, that many concurrent clients (asyncio + httpx, one process) submit
one-task workflows for ``--seconds``, each to the replicas in turn, and the bench reports
accepted submits per second and latency percentiles (nearest-rank). Only 201 answers
count; any other answer is reported as an error.

The clients share the machine with the servers (2 cores here), so the figures are what one
machine does end to end, not the server alone. Two columns say where the CPU went, less
disturbed by other load than the rates: the replicas' CPU time over the row (their API,
and their reconcilers placing, dispatching and finishing what was accepted) and the
clients' (this process's), each in ms per accepted submit.

Reproduce::

    .venv/bin/python -m bench.control_plane.submit --database postgresql --replicas 1 2
    .venv/bin/python -m bench.control_plane.submit --database sqlite --clients 1 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from bench.control_plane.postgres import private_postgres

REPO = Path(__file__).resolve().parents[2]

FEDERATION: dict[str, Any] = {
    "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "bench"},
    "spec": {"controlPlane": {"location": "dc"},
             "locations": [{"name": "dc", "lat": 50.1, "lon": 8.7}],
             "sites": [{"name": "cloud", "kind": "sim", "tier": "cloud", "location": "dc",
                        "config": {"timeScale": 1000, "nodes": [
                            {"name": "vm", "count": 8, "cpu": 32, "memory": "128Gi",
                             "power": {"idleWatts": 50, "maxWatts": 200,
                                       "source": "bench figure"}}]}}]}}

WORKFLOW = {"apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": "bench"},
            "spec": {"tasks": [{"name": "a", "command": ["true"], "work": 1}]}}


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0–100) of ``xs`` (non-empty)."""
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))]


@dataclass
class Result:
    replicas: int
    clients: int
    accepted: int
    errors: int
    seconds: float
    latencies_s: list[float]
    server_cpu_s: float
    """CPU time of every replica process over the row (user + system), seconds."""
    client_cpu_s: float
    """CPU time of the clients' process over the row, seconds."""

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds


class Replicas:
    """``n`` ``continuum server`` subprocesses sharing ``state_dir`` and ``database_url``."""

    def __init__(self, n: int, work: Path, database_url: str | None):
        self.work = work
        self.state_dir = work / "state"
        fed = work / "federation.yaml"
        fed.write_text(yaml.safe_dump(FEDERATION))
        self.ports = [free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if database_url:
            env["CONTINUUM_DATABASE_URL"] = database_url
        for i, port in enumerate(self.ports):
            log = (work / f"server-{i}.log").open("ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "control_plane.cli", "server", "--port", str(port),
                 "--state-dir", str(self.state_dir), "--federation", str(fed)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 90
        for port in self.ports:
            while not self._answers(port):
                if time.monotonic() > deadline:
                    i = self.ports.index(port)
                    tail = (work / f"server-{i}.log").read_text()[-2000:]
                    raise RuntimeError(f"replica {i} on port {port} did not start:\n{tail}")
                time.sleep(0.2)

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    @property
    def headers(self) -> dict[str, str]:
        token = (self.state_dir / "admin.token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def cpu_s(self) -> float:
        """CPU time (user + system) the replica processes have used so far, seconds."""
        total = 0.0
        for p in self.procs:
            t = psutil.Process(p.pid).cpu_times()
            total += t.user + t.system
        return total

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


async def _client(i: int, urls: list[str], headers: dict[str, str], until: float,
                  latencies: list[float], counts: list[int]) -> None:
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        k = i
        while time.monotonic() < until:
            url = urls[k % len(urls)]
            k += 1
            t0 = time.perf_counter()
            r = await http.post(f"{url}/v1/workflows", json=WORKFLOW)
            if r.status_code == 201:
                latencies.append(time.perf_counter() - t0)
                counts[0] += 1
            else:
                counts[1] += 1


def measure(replicas: Replicas, clients: int, seconds: float) -> Result:
    latencies: list[float] = []
    counts = [0, 0]

    async def main() -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(_client(i, replicas.urls, replicas.headers, t0 + seconds,
                                       latencies, counts) for i in range(clients)))
        return time.monotonic() - t0

    server0, client0 = replicas.cpu_s(), time.process_time()
    took = asyncio.run(main())
    return Result(len(replicas.ports), clients, counts[0], counts[1], took, latencies,
                  replicas.cpu_s() - server0, time.process_time() - client0)


def table(results: list[Result]) -> str:
    rows = ["| replicas | clients | accepted | submits/s | p50 (ms) | p99 (ms) | errors "
            "| server CPU ms/submit | client CPU ms/submit |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lat = r.latencies_s or [float("nan")]
        per = 1e3 / r.accepted if r.accepted else float("nan")
        rows.append(f"| {r.replicas} | {r.clients} | {r.accepted} | {r.rate:.0f} | "
                    f"{percentile(lat, 50) * 1e3:.0f} | {percentile(lat, 99) * 1e3:.0f} | "
                    f"{r.errors} | {r.server_cpu_s * per:.2f} | {r.client_cpu_s * per:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="postgresql")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2],
                    help="replica counts to measure, one after the other (default: 1 2)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32],
                    help="concurrent clients (default: 1 8 32)")
    ap.add_argument("--seconds", type=float, default=10.0,
                    help="length of each measurement (default: 10)")
    args = ap.parse_args(argv)
    if args.database == "sqlite" and max(args.replicas) > 1:
        ap.error("--database sqlite supports one replica only")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="continuum-bench-") as tmp, ExitStack() as stack:
        pg = (stack.enter_context(private_postgres())
              if args.database == "postgresql" else None)
        for n in args.replicas:
            work = Path(tmp) / f"r{n}"
            work.mkdir()
            url = pg.create_database(f"bench_r{n}") if pg is not None else None
            reps = Replicas(n, work, url)
            try:
                for c in args.clients:
                    r = measure(reps, c, args.seconds)
                    print(f"replicas={n} clients={c}: {r.rate:.0f} submits/s "
                          f"({r.accepted} accepted, {r.errors} errors)", flush=True)
                    results.append(r)
            finally:
                reps.stop()
    print(f"\n{args.database}, {args.seconds:.0f} s per row\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
