"""The placement benchmark against the real kube-scheduler, one command:
``.venv/bin/python -m bench.kube_scheduler.run``.

Starts its own Kubernetes (``deploy/dev/kube.sh start`` in a temp dir, no nodes; or
``--kube-dir`` a running one), loads the scenarios' nodes into it as kwok nodes
(:mod:`convert` says what kube-scheduler is given), submits the pods to kube.sh's
kube-scheduler (v1.37.2, default profile, flags as kube.sh starts it) and reads back its
bindings (``spec.nodeName``) or its Unschedulable verdicts from a watch; places the same
requests with Continuum (:func:`placement.plan` / its ``Planner``, as bench/placement does)
and with the re-implementation ``bench/placement/policies.py`` kube-default, and scores all
three with bench/placement's ground truth (:func:`bench.placement.run.score_a`,
:func:`bench.placement.run.score_b`).

* **Scenario A** (:mod:`bench.placement.scenario_a`): the 66 nodes as kwok nodes (arch
  label; scenario A has no taints), each instance's background load as one pod bound to
  its node; the 48-request batch created one pod at a time in the order bench/placement
  places it (largest first, :func:`placement.batch.size_order`), so kube-scheduler's FIFO
  queue decides in the same order. Difference: kube-scheduler decides each pod alone (no
  batch objective), which is also what the re-implementation does.
* **Scenario B** (:mod:`bench.placement.scenario_b`): the 1,523 trace nodes, the 8,152
  pods created one at a time in arrival order, none leaving (bench/placement's default
  replay). Difference: arrival *times* are not replayed (each pod is created when the
  previous one is accepted), which changes nothing without departures; and fractional GPU
  pods take a whole GPU (:mod:`convert`).
* **Throughput** at 1k and 5k kwok nodes (:func:`bench.placement.throughput.cluster` nodes,
  background load as reduced allocatable), the same :func:`~bench.placement.throughput.requests`
  pods: kube-scheduler's pods/s the way ``scheduler_perf`` counts (create N pods from
  ``--workers`` client threads, wait until all are bound, N / elapsed), for kube.sh's
  scheduler (client QPS 50, burst 100: its defaults) and a second kube-scheduler with the
  default plugins and QPS/burst 5000 (as scheduler_perf configures it); its scheduling
  algorithm time per pod from its own ``scheduler_scheduling_algorithm_duration_seconds``;
  beside Continuum's placements/s through ``Planner.place_one`` on the same nodes and pods.

Options: ``--kube-dir``, ``--instances``, ``--b-limit``, ``--nodes``, ``--pods``,
``--quick``, ``--no-write``. Writes the "kube-scheduler" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.kube_scheduler import convert as C
from bench.kube_scheduler.cluster import BenchError, Cluster, Outcome
from bench.placement import policies as P
from bench.placement import run as R
from bench.placement import scenario_a as A
from bench.placement import scenario_b as B
from bench.placement import throughput as T
from continuum.model import Node, Resources
from placement import PlacementRequest, Snapshot
from placement.batch import size_order
from placement.framework import default_framework
from placement.learned import LearnedPredictor, ModelSet, train
from placement.plan import Planner

log = logging.getLogger("bench.kube_scheduler")
BEGIN, END = "<!-- kube-scheduler:begin -->", "<!-- kube-scheduler:end -->"
REAL = "kube-scheduler v1.37.2 (real)"
REIMPL = "kube-default (re-implementation)"
REIMPL_137 = "kube-default (re-implementation, v1.37 balance)"
CONTINUUM = "continuum-learned (placement.plan)"
BENCH_SCHEDULER = "bench-scheduler"
"""The second kube-scheduler's profile name (default plugins, QPS/burst 5000)."""


def node_names(nodes: Sequence[Node]) -> list[str]:
    """The kwok node name of each node (DNS-safe, unique)."""
    names = [C.k8s_name(nd.name) for nd in nodes]
    if len(set(names)) != len(names):
        raise ValueError("node names collide once made DNS-safe")
    return names


def node_index(outcomes: dict[str, Outcome], pod_names: Sequence[str],
               names: Sequence[str]) -> np.ndarray:
    """Node index per pod from kube-scheduler's outcomes (-1 = not bound)."""
    at = {n: i for i, n in enumerate(names)}
    return np.array([at[o.node] if (o := outcomes[p]).node is not None else -1
                     for p in pod_names], dtype=np.int64)


@dataclass
class Agreement:
    """How two placements of the same pods compare: pods on the same node, on the same
    node type (``types``), and with the same verdict (placed vs not placed)."""

    pods: int = 0
    same_node: int = 0
    same_type: int = 0
    same_verdict: int = 0

    def add(self, a: np.ndarray, b: np.ndarray, types: Sequence[str] | None = None) -> None:
        self.pods += len(a)
        self.same_node += int((a == b).sum())
        self.same_verdict += int(((a >= 0) == (b >= 0)).sum())
        if types is not None:
            ta = np.array([types[k] if k >= 0 else "-" for k in a])
            tb = np.array([types[k] if k >= 0 else "-" for k in b])
            self.same_type += int((ta == tb).sum())

    def row(self, label: str, with_type: bool) -> list[str]:
        def p(x: int) -> str:
            return f"{100 * x / self.pods:.1f} %" if self.pods else "—"
        return [label, str(self.pods), p(self.same_node),
                p(self.same_type) if with_type else "—", p(self.same_verdict)]


@dataclass
class Stepwise:
    """The re-implementation's scores checked decision by decision against the real
    scheduler: for each pod in the real decision order, on the cluster state the real
    scheduler's earlier bindings made, is its node among the nodes the re-implementation
    scores best (``hits`` of ``decisions``; an unschedulable verdict counts as a hit when
    no node fits), and how many nodes share that best score (``ties``, mean)."""

    decisions: int = 0
    hits: int = 0
    ties: list[int] = field(default_factory=list)

    def add(self, reqs: Sequence[PlacementRequest], order: Sequence[int], snap: Snapshot,
            real: np.ndarray, balance: str) -> None:
        masks = P._static_masks(reqs, snap)
        for i in order:
            feas = np.flatnonzero(masks[i] & snap.fits(reqs[i].task.resources))
            k = int(real[i])
            self.decisions += 1
            if k < 0:
                self.hits += feas.size == 0
                continue
            if feas.size:
                total = P.kube_scores(reqs[i], snap, feas, balance)
                best = feas[total == total.max()]
                self.hits += k in best
                self.ties.append(int(best.size))
            snap.assume(k, reqs[i].task.resources)

    def row(self, label: str) -> list[str]:
        return [label, str(self.decisions),
                f"{100 * self.hits / max(self.decisions, 1):.1f} %",
                f"{np.mean(self.ties):.1f}" if self.ties else "—"]


STEP_HEAD = ["re-implementation scored on the real scheduler's state", "decisions",
             "real choice among its best-scored nodes", "mean nodes tied for best"]


def learned_predictor(samples: int) -> LearnedPredictor:
    """The learned predictor of bench/placement (scenario A's history, seed 7)."""
    models = train(A.history(np.random.default_rng(7), samples))
    return LearnedPredictor(ModelSet(1, time.time(), "scenario-a ground truth", models))


# ---------------------------------------------------------------- scenario A


def scenario_a(cl: Cluster, instances: int, learned: LearnedPredictor,
               batch_size: int = 48, load: float = 0.4) -> tuple[str, str, Agreement]:
    first, types = A.nodes(np.random.default_rng(100), load)
    names = node_names(first)
    t = cl.create_nodes([C.node_manifest(nd, name=nm) for nd, nm in zip(first, names, strict=True)])
    log.info("scenario A: %d nodes Ready in %.0f s", len(names), t)
    pols = {REIMPL: P.kube_default(1), REIMPL_137: P.kube_default(1, balance="v1.37"),
            CONTINUUM: P.continuum(learned)}
    keys = ("completion", "latency", "energy", "wan", "slo", "unplaced", "gpus")
    stats: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys}
                                                for name in (REAL, *pols)}
    agree, agree_137 = Agreement(), Agreement()
    steps = {b: Stepwise() for b in ("v1.30", "v1.37")}
    total_gpus = sum(nd.capacity.gpu for nd in first)
    watch = cl.watch()
    try:
        for inst in range(instances):
            it = A.instance(inst, load, batch_size)
            nodes, types, jobs, reqs, base = (it.nodes, it.types, it.jobs, it.requests,
                                              it.snapshot)
            bg = [m for k, nd in enumerate(nodes)
                  if (m := C.background_pod(f"bg-{inst}-{names[k]}", nd, names[k])) is not None]
            cl.create_pods(bg, ordered=False)
            cl.wait_running([m["metadata"]["name"] for m in bg])
            order = size_order(reqs)
            pods = [C.pod_manifest(reqs[i].key, reqs[i].task.resources,
                                   arch=reqs[i].task.constraints.arch or None) for i in order]
            cl.create_pods(pods, ordered=True)
            pod_names = [C.k8s_name(r.key) for r in reqs]
            out = watch.wait(pod_names, 300)
            results = {REAL: node_index(out, pod_names, names)}
            for name, pol in pols.items():
                results[name] = pol(reqs, base.copy())
            for name, chosen in results.items():
                R.score_a(stats[name], jobs, chosen, base, types)
                stats[name]["gpus"].append(sum(r.task.resources.gpu for r, k
                                               in zip(reqs, chosen, strict=True) if k >= 0))
            agree.add(results[REAL], results[REIMPL], types)
            agree_137.add(results[REAL], results[REIMPL_137], types)
            for b, st in steps.items():
                st.add(reqs, order, base.copy(), results[REAL], b)
            cl.delete_pods()
            log.info("scenario A instance %d: real kube-scheduler left %d unplaced", inst,
                     int((results[REAL] < 0).sum()))
    finally:
        watch.stop()
    cl.delete_nodes(names)
    rows = []
    for name, st in stats.items():
        rows.append([name, f"{np.mean(st['completion']):.0f}", f"{R.pct(st['completion'], 95):.0f}",
                     f"{np.mean(st['latency']):.1f}", f"{np.mean(st['energy']) / 1e3:.0f}",
                     f"{np.mean(st['wan']) / 2**30:.1f}", f"{np.sum(st['slo']):.0f}",
                     f"{np.sum(st['unplaced']):.0f}",
                     f"{100 * np.mean(st['gpus']) / total_gpus:.1f}"])
    text = R.table(["policy", "mean completion s", "p95 completion s", "mean SLO RTT ms",
                    "energy kJ/batch", "WAN GiB/batch", "SLO violations", "unplaced",
                    f"GPUs allocated % (of {total_gpus:.0f})"], rows)
    real, mine = stats[REAL], stats[CONTINUUM]
    text += (f"\n\n{instances} instances × {batch_size} requests on {len(names)} kwok nodes "
             f"(bench/placement's instances 0–{instances - 1}, seeds 100+i; 0–{load:.0%} "
             "background load as one bound pod per node). Continuum vs the real "
             "kube-scheduler: mean completion "
             f"{100 * (1 - np.mean(mine['completion']) / np.mean(real['completion'])):.1f} % "
             f"lower, energy {100 * (1 - np.mean(mine['energy']) / np.mean(real['energy'])):.1f} %"
             f" lower, SLO violations {np.sum(mine['slo']):.0f} vs {np.sum(real['slo']):.0f}.")
    agr = R.table(["kube-scheduler (real) vs re-implementation", "pods", "same node",
                   "same node type", "same verdict (placed / not)"],
                  [agree.row(f"scenario A, {REIMPL}", True),
                   agree_137.row(f"scenario A, {REIMPL_137}", True)])
    agr += "\n\n" + R.table(STEP_HEAD, [steps[b].row(f"scenario A, balance {b}") for b in steps])
    return text, agr, agree_137


# ---------------------------------------------------------------- scenario B


def whole_gpu_snapshot(nodes: Sequence[Node], pods: Sequence[B.Pod]
                       ) -> tuple[Snapshot, list[B.Pod]]:
    """What kube-scheduler is given for scenario B, as a snapshot for the
    re-implementation: GPUs counted whole (``gpu_unit`` 1), each pod asking for
    ``ceil(milli-GPUs / 1000)`` GPUs."""
    whole = [nd.model_copy(update={
        "capacity": nd.capacity.model_copy(update={"gpu": C.whole_gpus(nd.capacity.gpu, B.GPU_UNIT)}),
        "allocatable": nd.allocatable.model_copy(
            update={"gpu": C.whole_gpus(nd.allocatable.gpu, B.GPU_UNIT)})}) for nd in nodes]
    wpods = []
    for p in pods:
        r = p.request.task.resources
        task = p.request.task.model_copy(update={"resources": Resources(
            cpu=r.cpu, memory=r.memory, gpu=C.whole_gpus(r.gpu, B.GPU_UNIT))})
        wpods.append(B.Pod(PlacementRequest(p.request.key, task, p.request.objective),
                           p.arrival, p.departure))
    return Snapshot(nodes=whole, network=A.network()), wpods


def scenario_b(cl: Cluster, limit: int | None) -> tuple[str, str, list[Agreement]]:
    nodes = B.load_nodes()
    pods = B.load_pods(limit)
    names = node_names(nodes)
    t = cl.create_nodes([C.node_manifest(nd, B.GPU_UNIT, name=nm)
                         for nd, nm in zip(nodes, names, strict=True)])
    log.info("scenario B: %d nodes Ready in %.0f s", len(names), t)
    base = Snapshot(nodes=nodes, network=A.network(), gpu_unit=B.GPU_UNIT)
    manifests = [C.pod_manifest(p.request.key, p.request.task.resources, B.GPU_UNIT)
                 for p in pods]
    pod_names = [m["metadata"]["name"] for m in manifests]
    watch = cl.watch()
    t0 = time.perf_counter()
    try:
        cl.create_pods(manifests, ordered=True)
        out = watch.wait(pod_names, 1800)
    finally:
        watch.stop()
    elapsed = time.perf_counter() - t0
    log.info("scenario B: %d pods decided by kube-scheduler in %.0f s", len(pods), elapsed)
    chosen: dict[str, list[int]] = {REAL: list(node_index(out, pod_names, names))}
    wsnap, wpods = whole_gpu_snapshot(nodes, pods)
    chosen[REIMPL + ", whole GPUs"], _ = R.replay_b(wpods, wsnap, P.kube_default(2))
    chosen[REIMPL_137 + ", whole GPUs"], _ = R.replay_b(
        wpods, wsnap, P.kube_default(2, balance="v1.37"))
    chosen[REIMPL + ", milli-GPUs (bench/placement's row)"], _ = R.replay_b(
        pods, base, P.kube_default(2))
    chosen["continuum (placement.plan, GpuFragmentation)"], _ = R.replay_b(
        pods, base, default_framework())
    total_gpus = sum(C.whole_gpus(nd.capacity.gpu, B.GPU_UNIT) for nd in nodes)
    rows, scores = [], {}
    for name, ch in chosen.items():
        s = scores[name] = R.score_b(pods, base, ch)
        reserved = sum(C.whole_gpus(p.request.task.resources.gpu, B.GPU_UNIT)
                       for p, k in zip(pods, ch, strict=True) if k >= 0)
        whole = "— (fractions share a GPU)" if "milli" in name or "continuum" in name \
            else f"{100 * reserved / total_gpus:.1f}"
        rows.append([name, f"{s['placed']:.0f}", f"{s['failed']:.0f}", f"{s['energy'] / 3.6e9:.1f}",
                     f"{100 * s['peak_gpu_alloc']:.1f}", whole])
    text = R.table(["policy", "pods placed", "pods failed (no fit)", "energy MWh",
                    "GPU allocation % (trace milli-GPUs in use)",
                    "whole GPUs reserved %"], rows)
    text += (f"\n\n{len(pods)} pods created one at a time in trace order on {len(nodes)} kwok "
             f"nodes ({total_gpus} GPUs), none leaving; kube-scheduler took {elapsed:.0f} s "
             "to decide them all. Energy and GPU allocation count each pod's trace GPU "
             "share (a fractional pod holding a whole GPU uses only its fraction of it). "
             f"The real kube-scheduler leaves {scores[REAL]['failed']:.0f} pods unplaced: "
             "its whole GPUs run out while part of each fractional pod's GPU idles; "
             "Continuum, which packs fractions onto shared GPUs, leaves "
             f"{scores['continuum (placement.plan, GpuFragmentation)']['failed']:.0f}.")
    real = np.array(chosen[REAL])
    agrees = []
    for label, key in (("scenario B, same input (whole GPUs)", REIMPL + ", whole GPUs"),
                       ("scenario B, same input, v1.37 balance", REIMPL_137 + ", whole GPUs"),
                       ("scenario B, bench/placement's input (milli-GPUs)",
                        REIMPL + ", milli-GPUs (bench/placement's row)")):
        a = Agreement()
        a.add(real, np.array(chosen[key]))
        agrees.append((label, a))
    agr = R.table(["kube-scheduler (real) vs re-implementation", "pods", "same node",
                   "same node type", "same verdict (placed / not)"],
                  [a.row(label, False) for label, a in agrees])
    wreqs = [p.request for p in wpods]
    step_rows = []
    for b in ("v1.30", "v1.37"):
        st = Stepwise()
        st.add(wreqs, range(len(wreqs)), wsnap.copy(), real, b)
        step_rows.append(st.row(f"scenario B (whole GPUs), balance {b}"))
    agr += "\n\n" + R.table(STEP_HEAD, step_rows)
    print(text + "\n\n" + agr, flush=True)
    cl.delete_pods(900)
    cl.delete_nodes(names)
    return text, agr, [a for _, a in agrees]


# ---------------------------------------------------------------- throughput


@dataclass
class Rate:
    nodes: int
    who: str
    pods: int
    placed: int
    per_s: float
    note: str


def kube_rate(cl: Cluster, n: int, scheduler: str, metrics_url: str,
              reqs: Sequence[PlacementRequest]) -> Rate:
    """Create ``reqs`` as pods for ``scheduler`` from ``cl.workers`` threads and time
    creation → last binding (scheduler_perf's count)."""
    manifests = [C.pod_manifest(f"{scheduler}-{n}-{r.key}", r.task.resources,
                                scheduler=scheduler) for r in reqs]
    names = [m["metadata"]["name"] for m in manifests]
    s0, c0 = cl.algorithm_seconds(metrics_url)
    watch = cl.watch()
    t0 = time.perf_counter()
    try:
        create_s = cl.create_pods(manifests, ordered=False)
        out = watch.wait(names, 1200)
    finally:
        watch.stop()
    bound = [o.bound_at for o in out.values() if o.bound_at is not None]
    elapsed = (max(bound) if bound else time.perf_counter()) - t0
    s1, c1 = cl.algorithm_seconds(metrics_url)
    algo_ms = 1e3 * (s1 - s0) / max(c1 - c0, 1)
    cl.delete_pods()
    return Rate(n, scheduler, len(reqs), len(bound), len(reqs) / elapsed,
                f"creation alone {len(reqs) / create_s:,.0f} pods/s; scheduling algorithm "
                f"{algo_ms:.2f} ms/pod (≈ {1e3 / algo_ms:,.0f} pods/s without binding)")


def backlog_rate(cl: Cluster, n: int, reqs: Sequence[PlacementRequest]) -> Rate:
    """The scheduler alone: create ``reqs`` as pods for a scheduler that is not running
    yet, start it (default plugins, QPS/burst 5000) and count N / (first → last binding):
    pod creation and the scheduler's start-up (informer sync) are outside the span."""
    name = f"bench-backlog-{n}"
    manifests = [C.pod_manifest(f"{name}-{r.key}", r.task.resources, scheduler=name)
                 for r in reqs]
    names = [m["metadata"]["name"] for m in manifests]
    watch = cl.watch()
    try:
        cl.create_pods(manifests, ordered=False)
        url = cl.start_scheduler(name, 5000)
        out = watch.wait(names, 1200)
        s1, c1 = cl.algorithm_seconds(url)
    finally:
        watch.stop()
        cl.stop_scheduler(name)
    bound = sorted(o.bound_at for o in out.values() if o.bound_at is not None)
    span = bound[-1] - bound[0] if len(bound) > 1 else float("nan")
    cl.delete_pods()
    return Rate(n, "backlog", len(reqs), len(bound), len(bound) / span,
                f"first → last binding {span:.1f} s; scheduling algorithm "
                f"{1e3 * s1 / max(c1, 1):.2f} ms/pod (≈ {c1 / s1 if s1 else 0:,.0f} pods/s "
                "without binding)")


def continuum_rate(nodes: Sequence[Node], net: object, reqs: Sequence[PlacementRequest]) -> Rate:
    snap = Snapshot(nodes=list(nodes), network=net)  # type: ignore[arg-type]
    planner = Planner(snap, default_framework())
    lat = np.empty(len(reqs))
    placed = 0
    for k, r in enumerate(reqs):
        s = time.perf_counter()
        placed += planner.place_one(r, explain=False).decision is not None
        lat[k] = time.perf_counter() - s
    return Rate(len(nodes), "continuum (Planner.place_one)", len(reqs), placed,
                len(reqs) / lat.sum(), f"p99 {np.percentile(lat, 99) * 1e3:.2f} ms/decision, "
                "in process (no API calls)")


def throughput(cl: Cluster, sizes: Sequence[int], npods: int) -> tuple[str, list[Rate]]:
    url_bench = cl.start_scheduler(BENCH_SCHEDULER, 5000)
    url_stock = cl.stock_scheduler_metrics_url()
    all_nodes, net = T.cluster(max(sizes))
    names = node_names(all_nodes)
    made = 0
    rates: list[Rate] = []
    for n in sorted(sizes):
        new = [C.node_manifest(nd, name=nm,
                               allocatable=nd.free.model_copy(update={"gpu": nd.capacity.gpu})
                               if nd.free else None)
               for nd, nm in zip(all_nodes[made:n], names[made:n], strict=True)]
        try:
            t = cl.create_nodes(new, timeout_s=900)
        except Exception as exc:
            rates.append(Rate(n, "kwok nodes", 0, 0, float("nan"),
                              f"FAILED creating {len(new)} more nodes: {exc}"))
            log.error("%d nodes: %s", n, exc)
            break
        made = n
        log.info("throughput: %d nodes Ready (%d new in %.0f s)", n, len(new), t)
        reqs = T.requests(npods)
        for sched, url in (("default-scheduler", url_stock), (BENCH_SCHEDULER, url_bench)):
            try:
                rates.append(kube_rate(cl, n, sched, url, reqs))
            except BenchError as exc:
                rates.append(Rate(n, sched, npods, 0, float("nan"), f"FAILED: {exc}"))
                log.error("%d nodes, %s: %s", n, sched, exc)
            log.info("throughput: %s", rates[-1])
        try:
            rates.append(backlog_rate(cl, n, reqs))
        except BenchError as exc:
            rates.append(Rate(n, "backlog", npods, 0, float("nan"), f"FAILED: {exc}"))
        log.info("throughput: %s", rates[-1])
        rates.append(continuum_rate(all_nodes[:n], net, reqs))
        log.info("throughput: %s", rates[-1])
    label = {"default-scheduler": "kube-scheduler, kube.sh's (QPS 50, burst 100)",
             BENCH_SCHEDULER: "kube-scheduler, default plugins, QPS/burst 5000",
             "backlog": "the same, pods created before it starts (scheduler alone)"}
    rows = [[f"{r.nodes:,}", label.get(r.who, r.who), str(r.pods), str(r.placed),
             "—" if r.per_s != r.per_s else f"{r.per_s:,.0f}", r.note] for r in rates]
    return R.table(["nodes", "scheduler", "pods", "placed", "pods/s", "notes"], rows), rates


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kube-dir", help="a running deploy/dev/kube.sh cluster's DIR (default: "
                    "start one in a temp dir and stop it at the end)")
    ap.add_argument("--instances", type=int, default=10, help="scenario A instances (10)")
    ap.add_argument("--b-limit", type=int, default=0, help="scenario B: first N pods (all)")
    ap.add_argument("--nodes", default="1000,5000", help="throughput node counts (1000,5000)")
    ap.add_argument("--pods", type=int, default=1000, help="throughput pods per run (1000)")
    ap.add_argument("--workers", type=int, default=16, help="client threads creating pods")
    ap.add_argument("--quick", action="store_true", help="2 instances, 1,000 B pods, 1k nodes")
    ap.add_argument("--parts", default="a,b,t", help="a (scenario A), b (scenario B), "
                    "t (throughput); default all")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.quick:
        args.instances, args.b_limit, args.nodes, args.pods = 2, 1000, "1000", 500
    sizes = [int(x) for x in args.nodes.split(",") if x]
    t0 = time.time()
    learned = learned_predictor(4000)
    parts = set(args.parts.split(","))
    a_text = a_agr = b_text = b_agr = t_text = "(not run)"
    with Cluster(args.kube_dir, workers=args.workers) as cl:
        if "a" in parts:
            a_text, a_agr, _ = scenario_a(cl, args.instances, learned)
            print(a_text + "\n\n" + a_agr, flush=True)
        if "b" in parts:
            b_text, b_agr, _ = scenario_b(cl, args.b_limit or None)
        if "t" in parts:
            t_text, _ = throughput(cl, sizes, args.pods)
            print(t_text, flush=True)
    wall = time.time() - t0
    load = os.getloadavg()
    cmd = ".venv/bin/python -m bench.kube_scheduler.run" + (" --quick" if args.quick else "")
    if args.no_write or parts != {"a", "b", "t"}:
        print(f"done in {wall:.0f} s (RESULTS.md not written)")
        return
    section = (
        "## Placement against the real kube-scheduler (issue 14)\n\n"
        f"Command: `{cmd}` ({wall:.0f} s wall on {platform.machine()}, {os.cpu_count()} CPUs "
        f"shared with other jobs, load average {load[1]:.1f} over the last 5 min at the end; "
        "it starts its own `deploy/dev/kube.sh` cluster: Kubernetes v1.37.2, "
        "kwok v0.8.0). Code: `bench/kube_scheduler/`.\n\n"
        + NOTE + "\n\n### Scenario A — the real kube-scheduler beside Continuum\n\n" + a_text
        + "\n\n### Scenario B — Alibaba GPU trace\n\n" + b_text
        + "\n\n### Re-implementation check\n\n" + a_agr + "\n\n" + b_agr + "\n\n" + AGREE_NOTE
        + "\n\n### Throughput\n\n" + t_text + "\n\n" + T_NOTE + "\n")
    R.write_results(section, BEGIN, END)
    print(f"done in {wall:.0f} s")


NOTE = """\
What kube-scheduler is given (`bench/kube_scheduler/convert.py`): nodes with cpu, memory,
pods (110) and `nvidia.com/gpu` as whole GPUs, arch labels; pods with cpu/memory requests,
`nvidia.com/gpu` requests = limits, and a `kubernetes.io/arch` nodeSelector where the
task has an arch constraint. **Fractional GPU pods** (scenario B: 0 < GPU < 1) **request one
whole GPU**: the default scheduler and the NVIDIA device plugin cannot share a GPU, so
that is what such a pod costs on a stock cluster; their energy and GPU share are still
scored with the trace's fraction. SLOs, data locations and objectives are not
expressible to kube-scheduler and are not sent; all scenario-A nodes (including the Slurm
HPC nodes) are one pool, as for the re-implementation."""

AGREE_NOTE = """\
"Same node" compares whole replays (one different choice changes the state every later
pod sees); the second and fourth tables check the scores decision by decision instead:
each pod on the cluster state the real scheduler's own earlier bindings made.

Why they differ: (0) **the re-implementation follows kube-scheduler v1.30**, and v1.37
changed `NodeResourcesBalancedAllocation`: it now scores the *change* of the node's
balance, `50 + (50 + score_with_pod − score_without_pod) / 2`, where v1.30 scored the
balance with the pod (`balanced_allocation.go`, `balancedResourceScorer`). With the v1.37
formula (`policies.kube_default(balance="v1.37")`) the real scheduler's choice is among
the re-implementation's best-scored nodes in 100 % of scenario A's decisions in the run
recorded here (60 % with v1.30's); the remaining differences are (1) **ties are broken at
random** by both (`selectHost` reservoir sampling vs `rng.choice`; about 2 nodes tie for
best per decision in A, about 60 in B), and after the first tie broken differently every
later pod sees another cluster state, so "same node" over a whole replay stays far below
the per-decision agreement; (2) **which nodes are scored**: with more than
100 nodes kube-scheduler scores only the first `percentageOfNodesToScore` feasible ones
(38 % of 1,523 in B), starting where the previous pod's search stopped, in the order of
its node tree (zones round-robin, then insertion order); the re-implementation emulates
the adaptive percentage and the rotating start over the snapshot's node order, which is
not the scheduler's order, so in B the two score different subsets — the real choice is
the best of its subset, not always of all feasible nodes (94 % with the v1.37 formula in
the run recorded here); (3) the GPU
accounting in the milli-GPU row (a fractional pod shares a GPU there), which the
whole-GPU row removes. The other default score plugins (TaintToleration, NodeAffinity,
PodTopologySpread, InterPodAffinity, ImageLocality) give every node the same score for
these pods."""

T_NOTE = """\
pods/s = N / (first pod creation → last binding seen by a watch), N pods created by the
benchmark's client threads — the way scheduler_perf counts; on these 2 cores the
kube-apiserver, etcd and kwok (which heartbeats every node) share the CPUs with the
scheduler, so the figures are this machine's, not kube-scheduler's ceiling. kube.sh's
scheduler runs with the default client rate limit (QPS 50, burst 100): every binding is one
API call, so it cannot exceed ~50 pods/s sustained whatever its algorithm costs. The
second scheduler (same binary, profile with the default plugins, QPS/burst 5000 as in
scheduler_perf) is limited by pod creation and the API server instead. The "scheduler
alone" row takes creation out: the pods exist before a fresh scheduler of that kind
starts, and the span is its first to its last binding. "Scheduling algorithm" is each
scheduler's own histogram (filter + score per pod, binding excluded) — the figure
comparable to Continuum's in-process decision, which makes no API call."""


if __name__ == "__main__":
    main()
