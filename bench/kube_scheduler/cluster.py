"""A real Kubernetes control plane for the benchmark: ``deploy/dev/kube.sh`` in a temp
directory (or one already running), kwok nodes created in bulk with the kubernetes
client, pods submitted to kube-scheduler and their outcome read back from a watch.

:class:`Cluster` owns what it starts (the kube.sh cluster when it made it, and the extra
kube-scheduler of :meth:`Cluster.start_scheduler`) and stops only that.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("bench.kube_scheduler")

REPO = Path(__file__).resolve().parents[2]
KUBE_SH = REPO / "deploy" / "dev" / "kube.sh"
NAMESPACE = "kbench"
CONDITION_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


class BenchError(RuntimeError):
    """The cluster did not do what the benchmark waited for (message says what)."""


@dataclass
class Outcome:
    """What kube-scheduler did with one pod: ``node`` (None: not bound), ``unschedulable``
    (PodScheduled=False, reason Unschedulable), ``bound_at`` (time.perf_counter() when the
    watch saw the binding), ``message`` (the scheduler's reason)."""

    node: str | None = None
    unschedulable: bool = False
    bound_at: float | None = None
    message: str = ""


@dataclass
class PodWatch:
    """A watch on the benchmark namespace's pods recording each pod's :class:`Outcome`."""

    api: client.CoreV1Api
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: bool = False
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> None:
        rv = self.api.list_namespaced_pod(NAMESPACE, limit=1).metadata.resource_version
        self._thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self._thread.start()

    def _run(self, rv: str) -> None:
        while not self._stop:
            try:
                resp = self.api.list_namespaced_pod(
                    NAMESPACE, watch=True, resource_version=rv, timeout_seconds=60,
                    allow_watch_bookmarks=True, _preload_content=False)
                for line in iter_resp_lines(resp):
                    ev = json.loads(line)
                    obj = ev["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._see(obj)
                    if self._stop:
                        break
                resp.close()
            except Exception as exc:  # noqa: BLE001 - reported to the waiter
                with self.cond:
                    self.error = exc
                    self.cond.notify_all()
                return

    def _see(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        node = pod.get("spec", {}).get("nodeName")
        now = time.perf_counter()
        with self.cond:
            o = self.outcomes.setdefault(name, Outcome())
            if node and o.node is None:
                o.node, o.bound_at, o.unschedulable = node, now, False
            elif not node:
                for c in pod.get("status", {}).get("conditions") or []:
                    if c.get("type") == "PodScheduled" and c.get("status") == "False" \
                            and c.get("reason") == "Unschedulable":
                        o.unschedulable, o.message = True, c.get("message", "")
            self.cond.notify_all()

    def wait(self, names: Iterable[str], timeout_s: float) -> dict[str, Outcome]:
        """Block until every pod of ``names`` is bound or unschedulable; returns their
        outcomes. Raises BenchError after ``timeout_s`` (naming how many are left)."""
        want = list(names)
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                if self.error is not None:
                    raise BenchError(f"pod watch failed: {self.error}")
                left = [n for n in want if n not in self.outcomes
                        or (self.outcomes[n].node is None and not self.outcomes[n].unschedulable)]
                if not left:
                    return {n: self.outcomes[n] for n in want}
                rest = deadline - time.monotonic()
                if rest <= 0:
                    raise BenchError(f"{len(left)} of {len(want)} pods neither bound nor "
                                     f"unschedulable after {timeout_s:.0f} s (e.g. {left[0]})")
                self.cond.wait(min(rest, 1.0))

    def stop(self) -> None:
        self._stop = True


class Cluster:
    """The benchmark's Kubernetes: ``start()`` runs ``kube.sh start`` in a temp dir (no
    nodes) unless ``kube_dir`` names a running one. Use as a context manager."""

    def __init__(self, kube_dir: str | None = None, workers: int = 16) -> None:
        self.owned = kube_dir is None
        self.dir = Path(kube_dir or tempfile.mkdtemp(prefix="continuum-kbench-"))
        self.workers = workers
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.api: client.CoreV1Api
        self.env: dict[str, str] = {}

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Cluster:
        if self.owned:
            t0 = time.monotonic()
            subprocess.run([str(KUBE_SH), "start", str(self.dir), "--nodes", "0"], check=True)
            log.info("kube.sh start took %.0f s (%s)", time.monotonic() - t0, self.dir)
        for line in (self.dir / "env").read_text().splitlines():
            k, _, v = line.partition("=")
            self.env[k] = v
        cfg = client.Configuration()
        config.load_kube_config(str(self.dir / "admin.kubeconfig"), client_configuration=cfg)
        cfg.connection_pool_maxsize = self.workers * 2
        self.api = client.CoreV1Api(client.ApiClient(cfg))
        self._namespace()
        return self

    def __exit__(self, *exc: object) -> None:
        for name in list(self._procs):
            self.stop_scheduler(name)
        if self.owned:
            subprocess.run([str(KUBE_SH), "stop", str(self.dir)], check=False)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _namespace(self) -> None:
        try:
            self.api.create_namespace({"metadata": {"name": NAMESPACE}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        # pods are admitted only once the namespace's default ServiceAccount exists
        self._until(60, "ServiceAccount kbench/default", lambda: self._sa_exists())

    def _sa_exists(self) -> bool:
        try:
            self.api.read_namespaced_service_account("default", NAMESPACE)
            return True
        except ApiException:
            return False

    @staticmethod
    def _until(timeout_s: float, what: str, pred: Any, every: float = 0.5) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not reached within {timeout_s:.0f} s")
            time.sleep(every)

    # ---------------------------------------------------------------- nodes

    def _parallel(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        with cf.ThreadPoolExecutor(self.workers) as ex:
            return list(ex.map(fn, items))

    def create_nodes(self, manifests: Sequence[dict[str, Any]], timeout_s: float = 600) -> float:
        """Create the kwok nodes (in parallel) and wait until all are Ready and untainted by
        the node lifecycle controller; returns the seconds it took."""
        t0 = time.monotonic()
        self._parallel(lambda m: self.api.create_node(m), manifests)
        names = {m["metadata"]["name"] for m in manifests}
        own = {m["metadata"]["name"]: m.get("spec", {}).get("taints") or [] for m in manifests}

        def ready() -> bool:
            ok, stale = 0, []
            for nd in self._list_nodes():
                name = nd["metadata"]["name"]
                if name not in names:
                    continue
                conds = nd.get("status", {}).get("conditions") or []
                taints = nd.get("spec", {}).get("taints") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                    if len(taints) == len(own[name]):
                        ok += 1
                    elif any(t["key"] in CONDITION_TAINTS for t in taints):
                        stale.append(name)
            # The TaintNodesByCondition admission plugin gives every new node the not-ready
            # taint; the node lifecycle controller lifts it once the node is Ready, at the
            # controller manager's 20 requests/s (over a minute for 1,500 nodes), and adds
            # unreachable when kwok's heartbeat is late on a loaded machine: lift them here
            # for the nodes kwok reports Ready again, as the controller would.
            self._parallel(lambda n: self.api.patch_node(n, {"spec": {"taints": own[n] or None}}),
                           stale)
            return ok == len(names)
        self._until(timeout_s, f"{len(names)} kwok nodes Ready", ready, every=2.0)
        return time.monotonic() - t0

    def _list_nodes(self) -> list[dict[str, Any]]:
        resp = self.api.list_node(_preload_content=False)
        items: list[dict[str, Any]] = json.loads(resp.data)["items"]
        return items

    def delete_nodes(self, names: Sequence[str]) -> None:
        """Delete the nodes (their pods must be gone first: :meth:`delete_pods`)."""
        def rm(n: str) -> None:
            try:
                self.api.delete_node(n)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        self._parallel(rm, names)
        left = set(names)
        self._until(300, f"{len(left)} nodes deleted",
                    lambda: not left & {n["metadata"]["name"] for n in self._list_nodes()})

    # ---------------------------------------------------------------- pods

    def watch(self) -> PodWatch:
        """A started :class:`PodWatch` on the benchmark namespace."""
        w = PodWatch(self.api)
        w.start()
        return w

    def create_pods(self, manifests: Sequence[dict[str, Any]], ordered: bool) -> float:
        """Create the pods: one after another in the given order (``ordered``: the
        scheduler's queue then sees them in that order) or with ``workers`` threads.
        Returns the seconds it took."""
        t0 = time.perf_counter()
        if ordered:
            for m in manifests:
                self.api.create_namespaced_pod(NAMESPACE, m)
        else:
            self._parallel(lambda m: self.api.create_namespaced_pod(NAMESPACE, m), manifests)
        return time.perf_counter() - t0

    def wait_running(self, names: Iterable[str], timeout_s: float = 300) -> None:
        """Wait until kwok reports the pods ``names`` Running (bound pods only)."""
        want = set(names)

        def running() -> bool:
            resp = self.api.list_namespaced_pod(NAMESPACE, _preload_content=False)
            got = {p["metadata"]["name"] for p in json.loads(resp.data)["items"]
                   if p.get("status", {}).get("phase") == "Running"}
            return want <= got
        self._until(timeout_s, f"{len(want)} pods Running", running)

    def delete_pods(self, timeout_s: float = 600) -> None:
        """Delete every pod of the benchmark namespace at once (grace 0) and wait."""
        asked = [0.0]

        def empty() -> bool:
            if not self.api.list_namespaced_pod(NAMESPACE, limit=1).items:
                return True
            if time.monotonic() - asked[0] > 60:  # (again: a large collection outlasts
                asked[0] = time.monotonic()       # the request, the server goes on)
                try:
                    self.api.delete_collection_namespaced_pod(
                        NAMESPACE, grace_period_seconds=0, _request_timeout=30)
                except Exception as exc:  # noqa: BLE001 - the wait decides
                    log.info("delete collection of pods: %s (waiting on)", exc)
            return False
        self._until(timeout_s, "benchmark pods deleted", empty, every=2.0)

    # ---------------------------------------------------------------- schedulers

    def start_scheduler(self, name: str, qps: int) -> str:
        """Start a second kube-scheduler (the same binary) whose one profile ``name`` has
        the default plugins, with client QPS/burst ``qps`` (kube.sh's runs with the
        defaults, 50/100); returns its metrics URL. Stopped on exit."""
        cfg = self.dir / f"bench-scheduler-{name}.yaml"
        cfg.write_text(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
            f"clientConnection:\n  kubeconfig: {self.dir / 'scheduler.kubeconfig'}\n"
            f"  qps: {qps}\n  burst: {qps}\n"
            "leaderElection:\n  leaderElect: false\n"
            f"profiles:\n- schedulerName: {name}\n")
        port = _free_port()
        kubeconfig = str(self.dir / "scheduler.kubeconfig")
        logf = (self.dir / "log" / f"bench-scheduler-{name}.log").open("ab")
        self._procs[name] = subprocess.Popen(
            [os.path.join(self.env["KUBE_BIN"], "kube-scheduler"), "--config", str(cfg),
             "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
             "--bind-address", "127.0.0.1", "--secure-port", str(port), "--profiling=false"],
            stdout=logf, stderr=subprocess.STDOUT)
        url = f"https://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(url + "/healthz", verify=False, timeout=2).text == "ok"
            except httpx.HTTPError:
                return False
        self._until(60, f"kube-scheduler {name} healthy", healthy)
        return url + "/metrics"

    def stop_scheduler(self, name: str) -> None:
        """Stop the kube-scheduler :meth:`start_scheduler` started as ``name``."""
        p = self._procs.pop(name, None)
        if p is None:
            return
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def stock_scheduler_metrics_url(self) -> str:
        """The metrics URL of kube.sh's kube-scheduler."""
        ports = dict(line.split("=", 1) for line in (self.dir / "ports").read_text().split())
        return f"https://127.0.0.1:{ports['SCHEDULER_PORT']}/metrics"

    def algorithm_seconds(self, metrics_url: str) -> tuple[float, int]:
        """(sum, count) of ``scheduler_scheduling_algorithm_duration_seconds`` (filter +
        score of one pod, binding excluded) from a scheduler's /metrics."""
        pki = self.dir / "pki"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its serving certificate is self-signed
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        text = httpx.get(metrics_url, verify=ctx, timeout=10).text
        total, count = 0.0, 0
        for line in text.splitlines():
            if line.startswith("scheduler_scheduling_algorithm_duration_seconds_sum"):
                total = float(line.split()[-1])
            elif line.startswith("scheduler_scheduling_algorithm_duration_seconds_count"):
                count = int(float(line.split()[-1]))
        return total, count


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
