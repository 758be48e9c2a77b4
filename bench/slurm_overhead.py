"""Per-job overhead of running short jobs through Continuum vs. directly on the same Slurm.

Starts a private single-node Slurm of ``--release`` 22.05, 24.11 or 26.05 with
``deploy/dev/slurm.sh`` (or uses ``--slurm-dir`` of one already started), then runs N short
jobs (``true``, 1 CPU, 16 MiB) three ways (``--paths``), one after the other on the same
cluster, each waiting until every job is COMPLETED:

* ``sbatch``      — N ``sbatch --wrap true`` calls (the CLI, over munge; in the release's
  root, through ``chroot``, for 24.11/26.05), then polling ``squeue`` until the queue is empty;
* ``slurmrestd``  — N ``POST /slurm/<newest API>/job/submit`` over HTTP with a JWT (what
  Continuum sends, without Continuum), then polling ``squeue``;
* ``continuum``   — one workflow of N independent tasks through the REST API of a real
  control plane (default settings: 1 s reconcile interval, 2 s inventory, 1 s job-table
  poll) whose Slurm site allows the whole batch to queue (``queueFactor``).

Per-job figures are makespan / N. The ratio compares each path with ``sbatch``. A fresh
slurmctld runs its first few hundred jobs markedly slower (the first path measured took up
to twice as long as the same path later), so the benchmark runs warm-up jobs first and
repeats the three paths in rotated orders, reporting means.

Reproduce (root, Slurm packages installed; about 6 minutes on 2 cores)::

    .venv/bin/python bench/slurm_overhead.py --jobs 200 --rounds 2
    .venv/bin/python bench/slurm_overhead.py --release 24.11 --paths sbatch,slurmrestd

(``continuum`` on 24.11/26.05 needs the adapter's data_parser mapping, v0.0.40+.)
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
sys.path[0] = str(REPO)  # not bench/: bench/kubernetes would shadow the kubernetes client

from control_plane.server import ControlPlane  # noqa: E402
from control_plane.settings import Settings  # noqa: E402

SLURM_SH = REPO / "deploy" / "dev" / "slurm.sh"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(d: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (d / "env").read_text().splitlines())


def _inside(env: dict[str, str]) -> list[str]:
    """The prefix that runs a Slurm command where the daemons run (the release's root)."""
    return ["chroot", env["SLURM_ROOT"]] if env.get("SLURM_ROOT") else []


def _api(env: dict[str, str]) -> str:
    """The newest API version slurmrestd serves (slurm.sh's SLURM_DATA_PARSERS)."""
    return env.get("SLURM_DATA_PARSERS", "v0.0.38").split(",")[0]


def _token(d: Path, user: str) -> str:
    return subprocess.run([str(SLURM_SH), "token", str(d), user, "3600"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _wait_queue_empty(env: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([*_inside(env), "squeue", "-h", "-o", "%i"],
                             capture_output=True, text=True,
                             env={**os.environ, "SLURM_CONF": env["SLURM_CONF"]}).stdout
        if not out.strip():
            return
        time.sleep(0.2)
    raise TimeoutError("the Slurm queue did not drain")


def run_sbatch(env: dict[str, str], n: int) -> dict[str, float]:
    senv = {**os.environ, "SLURM_CONF": env["SLURM_CONF"]}
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run([*_inside(env), "sbatch", "--parsable", "-p", "debug", "-c", "1", "--mem=16M",
                        "-o", "/dev/null", "--wrap", "true"], check=True, capture_output=True,
                       env=senv)
    submitted = time.perf_counter() - t0
    _wait_queue_empty(env, 900)
    return {"submit_s": submitted, "makespan_s": time.perf_counter() - t0}


def run_rest(d: Path, env: dict[str, str], n: int) -> dict[str, float]:
    user = env["SLURM_JOB_USER"]
    headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": _token(d, user)}
    api, script = _api(env), "#!/bin/bash\ntrue\n"
    job: dict[str, object] = {
        "partition": "debug", "tasks": 1, "cpus_per_task": 1, "memory_per_node": 16,
        "current_working_directory": env["SLURM_WORKDIR"], "standard_output": "/dev/null",
        "environment": {"PATH": "/usr/bin:/bin"}}
    if api >= "v0.0.40":  # data_parser schema: script in the job, lists and {set, number}
        job.update(script=script, environment=["PATH=/usr/bin:/bin"],
                   memory_per_node={"set": True, "number": 16})
    with httpx.Client(base_url=env["SLURMRESTD_URL"], headers=headers, timeout=30) as c:
        t0 = time.perf_counter()
        for i in range(n):
            body = ({"job": {**job, "name": f"rest-{i}"}} if api >= "v0.0.40" else
                    {"script": script, "job": {**job, "name": f"rest-{i}"}})
            r = c.post(f"/slurm/{api}/job/submit", json=body)
            if r.status_code != 200 or r.json().get("errors"):
                raise RuntimeError(f"POST /slurm/{api}/job/submit: {r.status_code} {r.text[:500]}")
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
            if r.status_code != 201:
                raise RuntimeError(f"registering Slurm {env.get('SLURM_RELEASE')}: {r.text}")
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
            client = adapter.client  # type: ignore[union-attr]
            jobs_path = client.dialect.path("jobs")
            return {"submit_s": submitted or makespan, "makespan_s": makespan,
                    "jobs_reads": float(client.requests_by_path.get(jobs_path, 0)),
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
    ap.add_argument("--release", default="22.05", choices=["22.05", "24.11", "26.05"],
                    help="the Slurm release slurm.sh starts (ignored with --slurm-dir)")
    ap.add_argument("--paths", default="sbatch,slurmrestd,continuum",
                    help="comma list of the paths measured (sbatch, slurmrestd, continuum)")
    ap.add_argument("--slurm-dir", type=Path, help="a Slurm started by deploy/dev/slurm.sh")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    n = args.jobs
    own = args.slurm_dir is None
    d = args.slurm_dir or Path(tempfile.mkdtemp(prefix="continuum-bench-slurm-"))
    if own:
        subprocess.run([str(SLURM_SH), "start", str(d), "--release", args.release], check=True)
    names = [p for p in ["sbatch", "slurmrestd", "continuum"] if p in args.paths.split(",")]
    if not names:
        ap.error("--paths names none of sbatch, slurmrestd, continuum")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    orders: list[list[str]] = []
    try:
        env = _env(d)
        if args.warmup:
            run_sbatch(env, args.warmup)
        for rnd in range(args.rounds):
            k = rnd % len(names)
            order = names[k:] + names[:k]
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

    ref = "sbatch" if "sbatch" in names else names[0]
    base = mean(ref, "makespan_s") / n
    print(f"\n{n} jobs (`true`, 1 CPU, 16 MiB) per path on one single-node Slurm "
          f"{env.get('SLURM_RELEASE', '22.05')} (REST {_api(env)}) "
          f"({os.cpu_count()} CPUs); {args.warmup} warm-up jobs, then {args.rounds} round(s) "
          f"in the orders {'; '.join(', '.join(o) for o in orders)}; means over rounds\n")
    print(f"| path | submit all (s) | makespan (s) | per job (ms) | ratio vs {ref} |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        per = mean(name, "makespan_s") / n
        runs = ", ".join(f"{r['makespan_s']:.1f}" for r in results[name])
        print(f"| {name} | {mean(name, 'submit_s'):.1f} | {mean(name, 'makespan_s'):.1f} "
              f"({runs}) | {per * 1000:.0f} | {per / base:.2f} |")
    if "continuum" in names and "sbatch" in names:
        over = (mean("continuum", "makespan_s") - mean("sbatch", "makespan_s")) / n
        print(f"\nContinuum overhead per job over sbatch: {over * 1000:.0f} ms; job-table reads: "
              f"{mean('continuum', 'jobs_reads'):.0f} in {mean('continuum', 'cycles'):.0f} "
              f"reconcile cycles per round (one per poll, never one per job)")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
