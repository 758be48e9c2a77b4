"""Live work vs the reconcile cycle: N tasks submitted at once, as workflows of 10 short
tasks, to one control plane on sim sites with 1,000 nodes; how fast they complete and
what the reconcile cycle, the server's memory and its database do as N grows.

For each size N (a multiple of 10) the bench starts a fresh ``continuum server``
(embedded SQLite, default settings: 1 s reconcile interval) with ``--sites`` sim sites
holding ``--nodes`` nodes between them (time scale 1000: a task of 1 core-second takes
1 ms of wall time), then submits N/10 workflows over REST from ``--clients`` concurrent
clients, as fast as they are accepted (a 429 waits its ``Retry-After``). Each workflow
is a fan-out/fan-in of 10 tasks: ``prep`` → ``w0``..``w7`` → ``merge``, 1 CPU and 1
core-second each. It measures, from the first submit until ``/metrics`` counts every
workflow finished:

* tasks completed/s — N / that time (submission included);
* the reconcile cycle, mean and p99 (nearest rank) and longest — from
  ``continuum_reconcile_cycle_seconds`` (its ``_sum`` and ``_count``), scraped every
  ``--scrape`` seconds: a scrape interval in which the count grew by one gives that
  cycle's exact time; one in which it grew by k > 1 counts k cycles at their mean;
* server RSS — the largest resident set sampled at each scrape;
* database — SQLite file + WAL + shm at the end;
* wall and server CPU — seconds from the first submit to the last workflow finished, and
  the user + system CPU seconds the server used meanwhile (on a shared machine, CPU well
  under wall says the server waited for a core).

Afterwards it checks over ``GET /v1/workflows`` that every workflow Succeeded and
every one of its 10 tasks did. A size that does not finish within ``--timeout`` seconds
is reported with what completed by then.

Reproduce::

    python -m bench.control_plane.live --sizes 100 1000 10000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.control_plane.server import Server, sim_federation
from bench.control_plane.submit import percentile

TASKS_PER_WORKFLOW = 10


def workflow(i: int) -> dict[str, Any]:
    """The i-th bench workflow: ``prep`` → 8 workers → ``merge`` (10 tasks)."""
    task = {"command": ["true"], "work": 1, "resources": {"cpu": 1, "memory": "256Mi"}}
    workers = [f"w{k}" for k in range(8)]
    return {"apiVersion": "continuum/v1", "kind": "Workflow",
            "metadata": {"name": f"live-{i}"},
            "spec": {"tasks": [{"name": "prep", **task},
                               *({"name": w, "dependsOn": ["prep"], **task} for w in workers),
                               {"name": "merge", "dependsOn": workers, **task}]}}


@dataclass
class LiveResult:
    """One size's figures; ``finished`` false when ``timeout`` cut it short."""

    tasks: int
    submitted_workflows: int
    seconds: float
    tasks_succeeded: int
    workflows_succeeded: int
    cycles_s: list[float]
    rss_peak_bytes: int
    database_bytes: int
    submit_seconds: float
    rejected_429: int
    server_cpu_s: float
    finished: bool
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Tasks completed per second (from the first submit)."""
        return self.tasks_succeeded / self.seconds if self.seconds else 0.0

    @property
    def cycle_mean(self) -> float:
        return sum(self.cycles_s) / len(self.cycles_s) if self.cycles_s else float("nan")

    @property
    def cycle_p99(self) -> float:
        return percentile(self.cycles_s, 99) if self.cycles_s else float("nan")

    @property
    def cycle_max(self) -> float:
        return max(self.cycles_s) if self.cycles_s else float("nan")


class Sampler(threading.Thread):
    """Scrapes ``/metrics`` and the server's RSS every ``interval`` s until stopped:
    per-cycle times (see the module docstring), finished workflows, peak RSS."""

    def __init__(self, server: Server, interval: float) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.stop_event = threading.Event()
        self.cycles: list[float] = []
        self.finished_workflows = 0
        self.rss_peak = 0
        self.recording = False
        self.error: str | None = None
        self._last: tuple[float, float] | None = None

    @property
    def scraped(self) -> bool:
        """Whether one scrape has succeeded (the server's families are there)."""
        return self._last is not None

    def run(self) -> None:
        with httpx.Client() as http:
            while not self.stop_event.is_set():
                try:
                    self.sample(http)
                except Exception as e:  # noqa: BLE001 — reported, the run goes on
                    self.error = f"{type(e).__name__}: {e}"
                self.stop_event.wait(self.interval)

    def sample(self, http: httpx.Client) -> None:
        self.rss_peak = max(self.rss_peak, self.server.rss_bytes())
        m = self.server.metrics(http)
        count = sum(m.get("continuum_reconcile_cycle_seconds_count", {}).values())
        total = sum(m.get("continuum_reconcile_cycle_seconds_sum", {}).values())
        wfs = m.get("continuum_workflows", {})
        self.finished_workflows = int(sum(v for k, v in wfs.items()
                                          if dict(k).get("state") in
                                          ("Succeeded", "Failed", "Cancelled")))
        if self._last is not None and self.recording:
            dn, ds = count - self._last[0], total - self._last[1]
            if dn > 0:
                self.cycles.extend([ds / dn] * int(dn))
        self._last = (count, total)


async def submit_all(url: str, headers: dict[str, str], n_workflows: int,
                     clients: int) -> tuple[int, int]:
    """POST ``n_workflows`` workflows from ``clients`` concurrent clients; a 429 waits its
    Retry-After (default 1 s) and tries again. Returns (accepted, 429s).

    Raises:
        RuntimeError: any answer other than 201 or 429 (with its status and body).
    """
    next_i = 0
    rejected = 0

    async def client() -> int:
        nonlocal next_i, rejected
        done = 0
        async with httpx.AsyncClient(headers=headers, timeout=120) as http:
            while next_i < n_workflows:
                i = next_i
                next_i += 1
                while True:
                    r = await http.post(f"{url}/v1/workflows", json=workflow(i))
                    if r.status_code == 201:
                        done += 1
                        break
                    if r.status_code == 429:
                        rejected += 1
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
        return done

    done = await asyncio.gather(*(client() for _ in range(clients)))
    return sum(done), rejected


def count_succeeded(server: Server) -> tuple[int, int]:
    """(workflows Succeeded, tasks Succeeded) over ``GET /v1/workflows`` (every page)."""
    wfs = tasks = 0
    offset = 0
    with httpx.Client(headers=server.headers, timeout=120) as http:
        while True:
            page = http.get(f"{server.url}/v1/workflows",
                            params={"limit": 500, "offset": offset}).json()
            for w in page["items"]:
                wfs += w["state"] == "Succeeded"
                tasks += int(w.get("tasks", {}).get("Succeeded", 0))
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return wfs, tasks


def run_size(tasks: int, work: Path, *, nodes: int = 1000, sites: int = 2,
             clients: int = 8, timeout: float = 900.0, scrape: float = 0.2) -> LiveResult:
    """Measure one size (``tasks`` a multiple of 10) on a fresh server in ``work``."""
    if tasks % TASKS_PER_WORKFLOW:
        raise ValueError(f"tasks must be a multiple of {TASKS_PER_WORKFLOW}, got {tasks}")
    n_wf = tasks // TASKS_PER_WORKFLOW
    server = Server(work, sim_federation(nodes, sites))
    sampler = Sampler(server, scrape)
    try:
        sampler.start()
        deadline = time.monotonic() + 60  # the sites' first inventory
        while not sampler.scraped and time.monotonic() < deadline:
            time.sleep(0.05)
        sampler.recording = True
        t0, cpu0 = time.monotonic(), server.cpu_seconds()
        accepted, rejected = asyncio.run(submit_all(server.url, server.headers, n_wf, clients))
        t_submit = time.monotonic() - t0
        finished = False
        while time.monotonic() - t0 < timeout:
            if sampler.finished_workflows >= accepted:
                finished = True
                break
            time.sleep(scrape / 2)
        seconds = time.monotonic() - t0
        cpu = server.cpu_seconds() - cpu0
        sampler.stop_event.set()
        sampler.join()
        problems = [f"scrape: {sampler.error}"] if sampler.error else []
        wf_ok, task_ok = count_succeeded(server)
        if not finished:
            problems.append(f"not finished within {timeout:.0f} s")
        if wf_ok != n_wf or task_ok != tasks:
            problems.append(f"{wf_ok}/{n_wf} workflows and {task_ok}/{tasks} tasks Succeeded")
        return LiveResult(tasks=tasks, submitted_workflows=accepted, seconds=seconds,
                          tasks_succeeded=task_ok, workflows_succeeded=wf_ok,
                          cycles_s=sampler.cycles, rss_peak_bytes=sampler.rss_peak,
                          database_bytes=server.database_bytes(), submit_seconds=t_submit,
                          rejected_429=rejected, server_cpu_s=cpu, finished=finished, problems=problems)
    finally:
        sampler.stop_event.set()
        server.stop()


# The previous design's figures (issue 16, medians of 3, same machine class).
PREVIOUS: dict[int, tuple[float, float, float, float]] = {
    # tasks: (tasks/s, mean cycle s, RSS MB, SQLite MB)
    100: (43, 0.15, 131, 4.6),
    1000: (134, 1.18, 151, 11.4),
    10000: (194, 13.7, 328, 97),
}


def _growth(results: list[LiveResult], i: int, value: float, get: Any) -> str:
    if i == 0 or results[i - 1].tasks * 10 != results[i].tasks:
        return ""
    prev = get(results[i - 1])
    return f" (×{value / prev:.1f})" if prev else ""


def table(results: list[LiveResult]) -> str:
    """The live-work table in markdown; ×k after a figure is its growth from the row 10×
    smaller."""
    rows = ["| live tasks | tasks completed/s | mean cycle (s) | p99 cycle (s) | longest (s) "
            "| cycles | server RSS (MB) | SQLite (MB) | wall (s) | server CPU (s) | all Succeeded |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for i, r in enumerate(results):
        ok = "yes" if not r.problems else "; ".join(r.problems)
        rows.append(
            f"| {r.tasks:,} | {r.rate:.0f}{_growth(results, i, r.rate, lambda x: x.rate)} "
            f"| {r.cycle_mean:.3f}{_growth(results, i, r.cycle_mean, lambda x: x.cycle_mean)} "
            f"| {r.cycle_p99:.3f} | {r.cycle_max:.3f} | {len(r.cycles_s)} "
            f"| {r.rss_peak_bytes / 1e6:.0f}"
            f"{_growth(results, i, r.rss_peak_bytes, lambda x: x.rss_peak_bytes)} "
            f"| {r.database_bytes / 1e6:.1f}"
            f"{_growth(results, i, r.database_bytes, lambda x: x.database_bytes)} "
            f"| {r.seconds:.1f} | {r.server_cpu_s:.1f} | {ok} |")
    return "\n".join(rows)


def comparison(results: list[LiveResult]) -> str:
    """Beside the previous design's figures: this / previous for each measured size."""
    rows = ["| live tasks | tasks/s (prev → now) | mean cycle (prev → now) | RSS MB (prev → now) "
            "| SQLite MB (prev → now) |", "|---:|---|---|---|---|"]
    for r in results:
        if r.tasks not in PREVIOUS:
            continue
        rate, cyc, rss, db = PREVIOUS[r.tasks]
        now = (r.rate, r.cycle_mean, r.rss_peak_bytes / 1e6, r.database_bytes / 1e6)
        cells = [f"{p:g} → {n:.3g} (×{n / p:.2f})" for p, n in zip((rate, cyc, rss, db), now, strict=True)]
        rows.append(f"| {r.tasks:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run(sizes: list[int], *, nodes: int = 1000, sites: int = 2, clients: int = 8,
        timeout: float = 900.0, scrape: float = 0.2) -> list[LiveResult]:
    """Every size in turn, each on a fresh server in a temporary directory; prints a line
    per size as it ends."""
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="continuum-live-") as tmp:
            r = run_size(n, Path(tmp), nodes=nodes, sites=sites, clients=clients,
                         timeout=timeout, scrape=scrape)
        print(f"live tasks={n}: {r.rate:.0f} tasks/s in {r.seconds:.1f} s "
              f"(submits took {r.submit_seconds:.1f} s, {r.rejected_429} × 429), "
              f"{len(r.cycles_s)} cycles, mean {r.cycle_mean:.3f} s"
              + (f"; {'; '.join(r.problems)}" if r.problems else ""), flush=True)
        out.append(r)
    return out


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000],
                    help="live tasks per row, multiples of 10 (default: 100 1000 10000)")
    ap.add_argument("--nodes", type=int, default=1000, help="sim nodes in all (default 1000)")
    ap.add_argument("--sites", type=int, default=2, help="sim sites sharing them (default 2)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent submitters (default 8)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds a size may take before it is cut short (default 900)")
    ap.add_argument("--scrape", type=float, default=0.2,
                    help="seconds between /metrics scrapes (default 0.2)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    results = run(args.sizes, nodes=args.nodes, sites=args.sites, clients=args.clients,
                  timeout=args.timeout, scrape=args.scrape)
    print(f"\n{args.nodes} sim nodes on {args.sites} sites, SQLite, "
          f"{args.clients} submitters\n")
    print(table(results))
    print("\nAgainst the previous design (issue 16):\n")
    print(comparison(results))
    return 0 if all(not r.problems for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
