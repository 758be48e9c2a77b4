"""The API's own cost of a workflow submit: the FastAPI app called in-process (ASGI, no
socket, no HTTP client, no reconcile loop), ``--concurrency`` submits in flight.

``bench/control_plane/submit.py`` times submits end to end over HTTP with the clients and
the reconciler on the same machine; on a loaded 2-core machine that figure is mostly the
neighbours'. This one reports the server's CPU time per submit (process CPU over the run,
so other processes do not count) and the submits/s one core would give at that cost.

Reproduce (``PYTHONPATH`` chooses the code measured, e.g. an older checkout)::

    .venv/bin/python -m bench.control_plane.submit_inprocess --submits 2000 --concurrency 1 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

WORKFLOW = {"apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": "bench"},
            "spec": {"tasks": [{"name": "a", "command": ["true"], "work": 1}]}}


async def _submit(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    done = asyncio.Event()
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/workflows",
             "raw_path": b"/v1/workflows", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    return status


def measure(submits: int, concurrency: int) -> dict[str, float]:
    """Submit ``submits`` one-task workflows, ``concurrency`` at a time, to a fresh
    control plane (SQLite, not started: no reconcile loop); returns accepted, s, CPU s."""
    from control_plane.server import ControlPlane
    from control_plane.settings import Settings

    with tempfile.TemporaryDirectory(prefix="continuum-inproc-") as tmp:
        cp = ControlPlane(Settings(state_dir=Path(tmp) / "state"))
        token = cp.admin_token_path.read_text().strip().encode()
        body = json.dumps(WORKFLOW).encode()
        headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
                   (b"authorization", b"Bearer " + token),
                   (b"content-length", str(len(body)).encode())]
        accepted = 0

        async def worker(n: int) -> None:
            nonlocal accepted
            for _ in range(n):
                if await _submit(cp.app, headers, body) == 201:
                    accepted += 1

        async def main() -> None:
            await worker(20)  # warm up: imports, caches, the first connection
            share = [submits // concurrency + (i < submits % concurrency)
                     for i in range(concurrency)]
            await asyncio.gather(*(worker(n) for n in share))

        t0, c0 = time.perf_counter(), time.process_time()
        asyncio.run(main())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        cp.store.close()
        return {"accepted": accepted - 20, "wall_s": wall, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--submits", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = ap.parse_args(argv)
    print("| concurrency | accepted | submits/s (wall) | CPU ms per submit | submits/s per core |")
    print("|---:|---:|---:|---:|---:|")
    for c in args.concurrency:
        r = measure(args.submits, c)
        per = r["cpu_s"] / max(1, r["accepted"] + 20)
        print(f"| {c} | {r['accepted']:.0f} | {r['accepted'] / r['wall_s']:.0f} | "
              f"{per * 1e3:.2f} | {1 / per:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
