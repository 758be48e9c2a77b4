"""Per-job overhead of running short jobs through Continuum vs. directly on the same Slurm.

Starts a private single-node Slurm with ``deploy/dev/slurm.sh`` (or uses ``--slurm-dir``
of one already started), then runs N short jobs (``true``, 1 CPU, 16 MiB) three ways,
one after the other on the same cluster, each waiting until every job is COMPLETED:

* ``sbatch``      — N ``sbatch --wrap true`` calls (the CLI, over munge), then polling
  ``squeue`` until the queue is empty;
* ``slurmrestd``  — N ``POST job/submit`` over HTTP with a JWT (what Continuum sends,
  without Continuum), then polling ``GET jobs``;
* ``continuum``   — one workflow of N independent tasks through the REST API of a real
  control plane (default settings: 1 s reconcile interval, 2 s inventory, 1 s job-table
  poll) whose Slurm site allows the whole batch to queue (``queueFactor``).

Per-job figures are makespan / N. The ratio compares each path with ``sbatch``. A fresh
slurmctld runs its first few hundred jobs markedly slower (the first path measured took up
to twice as long as the same path later), so the benchmark runs warm-up jobs first and
repeats the three paths in rotated orders, reporting means.

Reproduce (root, Slurm packages installed; about 6 minutes on 2 cores)::

    .venv/bin/python bench/slurm_overhead.py --jobs 200 --rounds 2
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from control_plane.server import ControlPlane  # noqa: E402
from control_plane.settings import Settings  # noqa: E402

SLURM_SH = REPO / "deploy" / "dev" / "slurm.sh"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(d: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (d / "env").read_text().split())


def _token(d: Path, user: str) -> str:
    return subprocess.run([str(SLURM_SH), "token", str(d), user, "3600"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _wait_queue_empty(env: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                             env={**os.environ, "SLURM_CONF": env["SLURM_CONF"]}).stdout
        if not out.strip():
            return
        time.sleep(0.2)
    raise TimeoutError("the Slurm queue did not drain")


def run_sbatch(env: dict[str, str], n: int) -> dict[str, float]:
    senv = {**os.environ, "SLURM_CONF": env["SLURM_CONF"]}
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["sbatch", "--parsable", "-p", "debug", "-c", "1", "--mem=16M",
                        "-o", "/dev/null", "--wrap", "true"], check=True, capture_output=True,
                       env=senv)
    submitted = time.perf_counter() - t0
    _wait_queue_empty(env, 900)
    return {"submit_s": submitted, "makespan_s": time.perf_counter() - t0}


def run_rest(d: Path, env: dict[str, str], n: int) -> dict[str, float]:
    user = env["SLURM_JOB_USER"]
    headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": _token(d, user)}
    job = {"partition": "debug", "tasks": 1, "cpus_per_task": 1, "memory_per_node": 16,
           "current_working_directory": env["SLURM_WORKDIR"], "standard_output": "/dev/null",
           "environment": {"PATH": "/usr/bin:/bin"}}
    with httpx.Client(base_url=env["SLURMRESTD_URL"], headers=headers, timeout=30) as c:
        t0 = time.perf_counter()
        for i in range(n):
            r = c.post("/slurm/v0.0.38/job/submit",
                       json={"script": "#!/bin/bash\ntrue\n", "job": {**job, "name": f"rest-{i}"}})
            r.raise_for_status()
        submitted = time.perf_counter() - t0
        _wait_queue_empty(env, 900)
        return {"submit_s": submitted, "makespan_s": time.perf_counter() - t0}


def run_continuum(d: Path, env: dict[str, str], n: int, state: Path) -> dict[str, float]:
    port = _free_port()
    settings = Settings(state_dir=state, host="127.0.0.1", port=port,
                        public_url=f"http://127.0.0.1:{port}")
    cp = ControlPlane(settings)
    cp.start()
    server = uvicorn.Server(uvicorn.Config(cp.app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)
    try:
        token = cp.admin_token_path.read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            site = {"name": "hpc", "kind": "slurm", "tier": "hpc", "config": {
                "url": env["SLURMRESTD_URL"], "user": env["SLURM_JOB_USER"],
                "jwtKey": base64.b64encode(Path(env["SLURM_JWT_KEY"]).read_bytes()).decode(),
                "slurmUser": "root", "partitions": ["debug"],
                "workdir": env["SLURM_WORKDIR"], "queueFactor": float(n)}}
            r = c.post("/v1/sites", json=site)
            r.raise_for_status()
            doc = {"apiVersion": "continuum/v1", "kind": "Workflow",
                   "metadata": {"name": "bench"}, "spec": {"tasks": [
                       {"name": f"t{i}", "command": ["true"], "retries": 0,
                        "resources": {"cpu": 1, "memory": "16Mi"}} for i in range(n)]}}
            t0 = time.perf_counter()
            r = c.post("/v1/workflows", json=doc)
            r.raise_for_status()
            wid = r.json()["id"]
            submitted = None
            while True:
                wf = c.get(f"/v1/workflows/{wid}").json()
                if submitted is None and sum(1 for x in wf["runs"] if x["handle"]) >= n:
                    submitted = time.perf_counter() - t0
                if wf["state"] in ("Succeeded", "Failed", "Cancelled"):
                    break
                time.sleep(0.1)
            makespan = time.perf_counter() - t0
            if wf["state"] != "Succeeded":
                raise RuntimeError(f"workflow ended {wf['state']}: {wf['reason']}")
            adapter = cp.federation.get_adapter("hpc")
            reqs = dict(adapter.client.requests_by_path)  # type: ignore[union-attr]
            return {"submit_s": submitted or makespan, "makespan_s": makespan,
                    "jobs_reads": float(reqs.get("/slurm/v0.0.38/jobs", 0)),
                    "cycles": float(cp.reconciler.cycles)}
    finally:
        server.should_exit = True
        th.join(timeout=10)
        cp.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of all three paths; each round rotates their order")
    ap.add_argument("--warmup", type=int, default=50,
                    help="sbatch jobs run (and discarded) first: a fresh slurmctld is slower")
    ap.add_argument("--slurm-dir", type=Path, help="a Slurm started by deploy/dev/slurm.sh")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    n = args.jobs
    own = args.slurm_dir is None
    d = args.slurm_dir or Path(tempfile.mkdtemp(prefix="continuum-bench-slurm-"))
    if own:
        subprocess.run([str(SLURM_SH), "start", str(d)], check=True)
    names = ["sbatch", "slurmrestd", "continuum"]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    orders: list[list[str]] = []
    try:
        env = _env(d)
        if args.warmup:
            run_sbatch(env, args.warmup)
        for rnd in range(args.rounds):
            order = names[rnd % 3:] + names[:rnd % 3]
            orders.append(order)
            for name in order:
                state = Path(tempfile.mkdtemp(prefix="continuum-bench-state-"))
                try:
                    r = (run_sbatch(env, n) if name == "sbatch" else
                         run_rest(d, env, n) if name == "slurmrestd" else
                         run_continuum(d, env, n, state))
                finally:
                    shutil.rmtree(state, ignore_errors=True)
                results[name].append(r)
                print(f"round {rnd + 1}: {name:<10} makespan {r['makespan_s']:.1f} s",
                      file=sys.stderr)
    finally:
        if own:
            subprocess.run([str(SLURM_SH), "stop", str(d)], check=False)
            shutil.rmtree(d, ignore_errors=True)

    def mean(name: str, key: str) -> float:
        return sum(r[key] for r in results[name]) / len(results[name])

    base = mean("sbatch", "makespan_s") / n
    print(f"\n{n} jobs (`true`, 1 CPU, 16 MiB) per path on one single-node Slurm 22.05 "
          f"({os.cpu_count()} CPUs); {args.warmup} warm-up jobs, then {args.rounds} round(s) "
          f"in the orders {'; '.join(', '.join(o) for o in orders)}; means over rounds\n")
    print("| path | submit all (s) | makespan (s) | per job (ms) | ratio vs sbatch |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        per = mean(name, "makespan_s") / n
        runs = ", ".join(f"{r['makespan_s']:.1f}" for r in results[name])
        print(f"| {name} | {mean(name, 'submit_s'):.1f} | {mean(name, 'makespan_s'):.1f} "
              f"({runs}) | {per * 1000:.0f} | {per / base:.2f} |")
    over = (mean("continuum", "makespan_s") - mean("sbatch", "makespan_s")) / n
    print(f"\nContinuum overhead per job over sbatch: {over * 1000:.0f} ms; job-table reads: "
          f"{mean('continuum', 'jobs_reads'):.0f} in {mean('continuum', 'cycles'):.0f} reconcile "
          f"cycles per round (one per poll, never one per job)")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
