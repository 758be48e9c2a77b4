"""Takeover time of a follower replica after SIGKILL of the leader's ``continuum server``.

Starts a private PostgreSQL 15 on loopback (``deploy/dev/postgres.sh``), then ``--kills``
times: two ``continuum server`` replicas on one fresh database and one shared state
directory (the second started once the first leads), SIGKILL of the leader at a random
point (seeded) of the follower's step period, and the time until the follower's
``GET /leaderz`` says ``leader`` (polled every 20 ms). Prints
each time, the median and the max.

Reproduce (root, PostgreSQL 15 from the Debian packages; about 1 minute on 2 cores)::

    .venv/bin/python -m bench.control_plane.takeover --kills 5
    .venv/bin/python -m bench.control_plane.takeover --kills 5 --lease-s 3
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.control_plane.postgres import PrivatePostgres, private_postgres
from bench.control_plane.submit import free_port

REPO = Path(__file__).resolve().parents[2]


def role(port: int) -> str | None:
    try:
        return str(httpx.get(f"http://127.0.0.1:{port}/leaderz", timeout=1).json()["role"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def wait(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def one_kill(pg: PrivatePostgres, lease_s: float, work: Path, n: int,
             rng: random.Random) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "CONTINUUM_DATABASE_URL": pg.create_database(f"takeover_{n}"),
           "CONTINUUM_LEADER_LEASE_S": str(lease_s)}
    state = work / f"state-{n}"
    ports = [free_port(), free_port()]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            with (work / f"server-{n}-{i}.log").open("ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "control_plane.cli", "server", "--port", str(port),
                     "--state-dir", str(state)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
            wait(lambda p=port, i=i: role(p) == ("leader" if i == 0 else "follower"), 60,
                 f"replica {i} to come up")
        time.sleep(rng.uniform(0, lease_s))  # at a random point of the follower's step period
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        t0 = time.monotonic()
        wait(lambda: role(ports[1]) == "leader", 4 * lease_s, "the follower to lead")
        return time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--lease-s", type=float, default=6.0, help="leader_lease_s (s)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="continuum-takeover-") as tmp, \
            private_postgres() as pg:
        times = []
        for n in range(args.kills):
            took = one_kill(pg, args.lease_s, Path(tmp), n, rng)
            times.append(took)
            print(f"kill {n + 1}: takeover {took:.2f} s", flush=True)
    print(f"leader_lease_s={args.lease_s:g}: median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s over {len(times)} kills "
          f"(bound: leader_lease_s/3 = {args.lease_s / 3:.2f} s plus one step)")

if __name__ == "__main__":
    main()
