"""How the kubernetes adapter learns run states: watch cache vs one list vs one call per run.

Run: ``.venv/bin/python -m bench.kubernetes.status [N ...]`` (default N = 10 100 500).

Against the API-server stand-in (tests/adapters/kubernetes/apiserver.py; no real
kube-apiserver can be installed here, so absolute times are the stand-in's, not a real
server's — the ratios and the request counts are the point). For each N, N Jobs are
submitted through the adapter and their pods set Running; then, side by side in one run:

* **watch cache** — ``adapter.status(handles)`` (what the reconciler calls each cycle):
  no request; the watch thread keeps the cache;
* **one list per cycle** — one ``list pods`` with the site's label selector, mapped
  through the same state table (a poll-based adapter);
* **one call per run** — one ``list pods`` per run with its run-id selector (what
  "status per handle" would cost).

Times are medians of 5 rounds (3 for the per-run column).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from adapters.base import AdapterContext, Handle, TaskRun
from adapters.kubernetes import KubernetesAdapter
from adapters.kubernetes import manifests as mf
from adapters.kubernetes.states import pod_run_status
from continuum.model import RunState, SiteKind, SiteSpec, Task
from tests.adapters.kubernetes.apiserver import ApiServer


class _NoArtifacts:
    def put_bytes(self, *a: Any, **k: Any) -> Any:
        raise NotImplementedError

    def record(self, *a: Any, **k: Any) -> Any:
        return None


def _median_ms(fn: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(n: int) -> dict[str, float]:
    server = ApiServer().start()
    server.add_node("node-1", cpu="10000", memory="100000Gi")
    site = SiteSpec(name="bench", kind=SiteKind.kubernetes,
                    config={"kubeconfig": server.kubeconfig(), "watchTimeout": 30})
    a = KubernetesAdapter(site, AdapterContext(artifacts=_NoArtifacts(), state_dir=Path("/tmp")))
    try:
        node = a.inventory()[0]
        task = Task.model_validate({"name": "job", "command": ["true"],
                                    "resources": {"cpu": "10m", "memory": "16Mi"}})
        handles: list[Handle] = []
        for i in range(n):
            run = TaskRun(run_id=f"run-{i:06d}", workflow_id="wf-bench", workflow_name="b",
                          task=task)
            handles.append(a.submit(run, node, run.run_id))
        for p in server.pods():
            server.run_pod(p["metadata"]["name"])
        deadline = time.monotonic() + 120
        while sum(1 for s in a.status(handles).values() if s.state == RunState.Running) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("the watch did not deliver every pod")
            time.sleep(0.05)

        def cache() -> None:
            assert len(a.status(handles)) == n

        def one_list() -> None:
            resp = a.core.list_namespaced_pod(a.namespace, label_selector=a.selector,
                                              _preload_content=False)
            states = [pod_run_status(p) for p in json.loads(resp.data)["items"]]
            assert len(states) == n

        def per_run() -> None:
            for h in handles:
                resp = a.core.list_namespaced_pod(
                    a.namespace, label_selector=f"{mf.LABEL_RUN}={h.run_id}",
                    _preload_content=False)
                pod_run_status(json.loads(resp.data)["items"][0])

        before = len(server.requests)
        t_cache = _median_ms(cache, 5)
        req_cache = (len(server.requests) - before) / 5
        return {"n": n, "cache": t_cache, "cache_req": req_cache,
                "list": _median_ms(one_list, 5), "per_run": _median_ms(per_run, 3)}
    finally:
        a.close()
        server.stop()


def main(argv: list[str]) -> None:
    sizes = [int(x) for x in argv] or [10, 100, 500]
    print("| runs | requests/cycle (cache / list / per run) | watch cache | one list | "
          "one call per run | list ÷ cache | per run ÷ list |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        r = measure(n)
        print(f"| {n} | {r['cache_req']:.0f} / 1 / {n} | {r['cache']:.2f} ms | "
              f"{r['list']:.1f} ms | {r['per_run']:.0f} ms | {r['list'] / r['cache']:.0f}× | "
              f"{r['per_run'] / r['list']:.1f}× |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
