"""The placement benchmark, one command: ``.venv/bin/python -m bench.placement.run``.

Runs, side by side in one process: scenario A (the continuum, :mod:`scenario_a`) with
every policy of :mod:`policies` plus the MILP optimum; scenario B (the Alibaba GPU
trace, :mod:`scenario_b`); decision throughput at 1k/10k/100k nodes against the naive
rescan (:mod:`throughput`). Prints the tables, rewrites the "Placement" section of
``bench/RESULTS.md`` and writes ``bench/placement/placement.png``.

Options: ``--quick`` (fewer instances and requests, for a smoke run), ``--no-write``,
``--throughput-only NODES`` and ``--gpu-only`` (one table only, printed, nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.placement import policies as P
from bench.placement import scenario_a as A
from bench.placement import scenario_b as B
from bench.placement import throughput as T
from continuum.model import Constraints, Objective
from placement import PlacementRequest, Snapshot
from placement.batch import BatchAssigner
from placement.framework import Framework, default_framework
from placement.learned import LearnedPredictor, ModelSet, train
from placement.milp import objective, solve
from placement.plan import Planner
from placement.plugins.fragmentation import GpuFragmentation
from placement.plugins.locality import DataLocality

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "RESULTS.md"
BEGIN, END = "<!-- placement:begin -->", "<!-- placement:end -->"


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ---------------------------------------------------------------- scenario A


def gap(h_nodes: np.ndarray, h_cost: float, opt_nodes: np.ndarray, opt_cost: float) -> float:
    """Optimality gap (%) on the score form: value = Σ over placed requests of (1 − cost)
    (the framework's total/100 summed; an unplaced request adds 0), gap = (OPT value −
    heuristic value) / OPT value — so leaving work unplaced counts against a policy."""
    opt = float((opt_nodes >= 0).sum()) - opt_cost
    h = float((h_nodes >= 0).sum()) - h_cost
    return 100.0 * (opt - h) / opt if opt > 0 else 0.0


TIME_ONLY = "continuum-learned, objective time only"
"""The same assigner asked only for completion time (latency and energy weights 0) — what
Continuum gives up in completion by weighing energy and latency equally."""


def time_only(reqs: Sequence[PlacementRequest]) -> list[PlacementRequest]:
    """``reqs`` with the objective ``time=1, latency=0, energy=0, data=0``."""
    obj = Objective(time=1.0, latency=0.0, energy=0.0, data=0.0)
    return [dataclasses.replace(r, objective=obj) for r in reqs]


def _no_fragmentation(fw: Framework) -> Framework:
    """``fw`` with the GPU-fragmentation term's weight at 0 (for the side-by-side rows)."""
    for plugin in fw.scores:
        if isinstance(plugin, GpuFragmentation):
            plugin.weight = 0.0
    return fw


def score_a(st: dict[str, list[float]], jobs: Sequence[A.Job], nodes_of: Sequence[int] | np.ndarray,
            base: Snapshot, types: list[str]) -> None:
    """Add one batch's ground truth (:func:`scenario_a.evaluate`) to ``st``: every placed
    job's completion (s) to ``completion``, every SLO job's RTT (ms) to ``latency``, and
    the batch's energy (J), WAN bytes, SLO violations and unplaced jobs as one entry each
    of ``energy``, ``wan``, ``slo``, ``unplaced``. ``nodes_of``: node index per job, -1 =
    unplaced."""
    energy = wan = slo = unplaced = 0.0
    for job, k in zip(jobs, nodes_of, strict=True):
        o = A.evaluate(job, int(k), base, types)
        if not o.placed:
            unplaced += 1
        else:
            assert o.completion_s is not None and o.energy_j is not None
            st["completion"].append(o.completion_s)
            energy += o.energy_j
            wan += o.wan_bytes
        if o.latency_ms is not None:
            st["latency"].append(o.latency_ms)
        slo += o.slo_violated
    st["energy"].append(energy)
    st["wan"].append(wan)
    st["slo"].append(slo)
    st["unplaced"].append(unplaced)


def scenario_a(instances: int, batch_size: int, learned: LearnedPredictor,
               milp_limit_s: float, load: float = 0.4
               ) -> tuple[str, dict[str, dict[str, float]]]:
    policies: dict[str, Callable[..., np.ndarray]] = {
        "random": P.random_policy(1),
        "round-robin": P.round_robin(),
        "kube-default": P.kube_default(1),
        "greedy-latency": P.greedy_latency(),
        "greedy-energy": P.greedy_energy(),
        "continuum-analytic": P.continuum(),
        "continuum-learned": P.continuum(learned),
        "continuum-learned, best order": P.continuum(learned, order="best"),
        "continuum-learned, fragmentation off": P.continuum(
            learned, framework=_no_fragmentation(default_framework(learned))),
        TIME_ONLY: P.continuum(learned),
    }
    stats: dict[str, dict[str, list[float]]] = {
        name: {k: [] for k in ("completion", "latency", "energy", "wan", "slo", "unplaced",
                               "gap", "decide")} for name in [*policies, "milp-optimum"]}
    gaps_analytic: list[float] = []
    bound_c: list[float] = []
    bound_e: list[float] = []
    milp_status: dict[str, int] = {}
    for inst in range(instances):
        it = A.instance(inst, load, batch_size)
        types, jobs, reqs, base = it.types, it.jobs, it.requests, it.snapshot
        for job in jobs:
            c, e = A.bounds(job, base, types)
            bound_c.append(c)
            bound_e.append(e)
        results: dict[str, np.ndarray] = {}
        for name, pol in policies.items():
            snap = base.copy()
            t0 = time.perf_counter()
            results[name] = pol(time_only(reqs) if name == TIME_ONLY else reqs, snap)
            stats[name]["decide"].append((time.perf_counter() - t0) / len(reqs))
        # the MILP of the learned objective, and of the analytic one (for the analytic gap)
        la = BatchAssigner(base.copy(), default_framework(learned))
        m = solve(reqs, la, milp_limit_s)
        milp_status[m.status] = milp_status.get(m.status, 0) + 1
        results["milp-optimum"] = m.nodes
        if m.status == "optimal":
            for name in ("continuum-learned", "continuum-learned, best order"):
                hl = results[name]
                stats[name]["gap"].append(gap(hl, objective(reqs, hl, la), m.nodes, m.objective))
            aa = BatchAssigner(base.copy())
            ma = solve(reqs, aa, milp_limit_s)
            if ma.status == "optimal":
                ha = results["continuum-analytic"]
                gaps_analytic.append(gap(ha, objective(reqs, ha, aa), ma.nodes, ma.objective))
        for name, nodes_of in results.items():
            score_a(stats[name], jobs, nodes_of, base, types)
    stats["continuum-analytic"]["gap"] = gaps_analytic
    rows, summary = [], {}
    for name, st in stats.items():
        s = {"mean_completion": float(np.mean(st["completion"])),
             "p95_completion": pct(st["completion"], 95),
             "mean_latency": float(np.mean(st["latency"])) if st["latency"] else float("nan"),
             "p95_latency": pct(st["latency"], 95),
             "energy": float(np.mean(st["energy"])),
             "wan": float(np.mean(st["wan"])),
             "slo": float(np.sum(st["slo"])),
             "unplaced": float(np.sum(st["unplaced"])),
             "gap_median": pct(st["gap"], 50), "gap_p95": pct(st["gap"], 95),
             "gap_n": float(len(st["gap"]))}
        summary[name] = s
        gap_s = "—" if not st["gap"] else f"{s['gap_median']:.2f} / {s['gap_p95']:.2f} (n={len(st['gap'])})"
        rows.append([name, f"{s['mean_completion']:.0f}", f"{s['p95_completion']:.0f}",
                     f"{s['mean_latency']:.1f}", f"{s['p95_latency']:.1f}",
                     f"{s['energy'] / 1e3:.0f}", f"{s['wan'] / 2**30:.1f}", f"{s['slo']:.0f}",
                     f"{s['unplaced']:.0f}", gap_s,
                     "—" if name == "milp-optimum" else f"{np.mean(st['decide']) * 1e6:.0f}"])
    kube = summary["kube-default"]
    learned_s = summary["continuum-learned"]
    # with work left unplaced (energy 0) the energy bound compares nothing: not shown
    all_placed = all(s["unplaced"] == 0 for s in summary.values())
    summary["bound"] = {"mean_completion": float(np.mean(bound_c)),
                        "energy": float(np.sum(bound_e)) / instances if all_placed
                        else float("nan")}
    rows.append(["lower bound (per job, no capacity limit)",
                 f"{summary['bound']['mean_completion']:.0f}", "—", "—", "—",
                 f"{summary['bound']['energy'] / 1e3:.0f}" if all_placed else "—",
                 "—", "—", "—", "—", "—"])
    text = table(["policy", "mean completion s", "p95 completion s", "mean SLO RTT ms",
                  "p95 SLO RTT ms", "energy kJ/batch", "WAN GiB/batch", "SLO violations",
                  "unplaced", "gap % vs MILP (median / p95)", "µs/decision"], rows)
    text += (f"\n\n{instances} instances × {batch_size} requests on {sum(A.COUNTS.values())} "
             f"nodes with 0–{load:.0%} background load; MILP status per instance: "
             f"{milp_status}. Continuum-learned vs "
             f"kube-default: mean completion "
             f"{100 * (1 - learned_s['mean_completion'] / kube['mean_completion']):.1f} % lower, "
             f"energy {100 * (1 - learned_s['energy'] / kube['energy']):.1f} % lower. "
             f"Lower bound row (ground truth, each job alone on its best node type: "
             f"completion over the nodes within its SLO, energy over all nodes, capacity "
             f"ignored) vs kube-default: completion "
             f"{100 * (1 - summary['bound']['mean_completion'] / kube['mean_completion']):.1f} %"
             + (f" lower, energy {100 * (1 - summary['bound']['energy'] / kube['energy']):.1f} %"
                " lower" if all_placed else " lower (energy bound not shown: some work stays "
                "unplaced, and unplaced work counts 0 J)")
             + " — no placement can do better.")
    return text, summary


# ---------------------------------------------------------------- data locality (A)

DATA_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
"""Data weights swept on scenario A (time, latency and energy at 1 each)."""


def _with_objective(reqs: Sequence[PlacementRequest], obj: Objective) -> list[PlacementRequest]:
    return [dataclasses.replace(r, objective=obj) for r in reqs]


def _old_data_term(predictor: LearnedPredictor) -> Framework:
    """The default framework with the data term measured as before issue 16 (transfer
    seconds, :class:`~placement.plugins.locality.DataLocality` ``cost="transfer_s"``)."""
    fw = default_framework(predictor)
    return dataclasses.replace(fw, scores=[DataLocality("transfer_s") if p.name == DataLocality.name
                                           else p for p in fw.scores])


def pareto(points: dict[str, tuple[float, float, float]]) -> set[str]:
    """The names whose (completion, energy, WAN bytes) no other point dominates (≤ in
    all three, < in one)."""
    out = set()
    for a, pa in points.items():
        if not any(all(x <= y for x, y in zip(pb, pa, strict=True)) and pb != pa
                   for b, pb in points.items() if b != a):
            out.add(a)
    return out


def data_front(instances: int, batch_size: int, learned: LearnedPredictor,
               load: float = 0.4) -> tuple[str, dict[str, dict[str, float]]]:
    """Scenario A's trade of completion, energy and WAN bytes over the data weight
    (:data:`DATA_WEIGHTS`, the other terms at 1) against kube-default, locality-first
    and greedy-energy, on the instances of :func:`scenario_a` (same seeds); plus the
    pre-issue-16 data term (transfer seconds) at weights 1 and 4."""
    base_obj = A.OBJECTIVE
    runs: dict[str, tuple[Callable[..., np.ndarray], Objective | None]] = {
        "kube-default": (P.kube_default(1), None),
        "locality-first": (P.locality_first(), None),
        "greedy-energy": (P.greedy_energy(), None),
    }
    for w in DATA_WEIGHTS:
        runs[f"continuum-learned, data weight {w:g}"] = (
            P.continuum(learned), base_obj.model_copy(update={"data": w}))
    for w in (1.0, 4.0):
        runs[f"continuum-learned, data weight {w:g}, old term (transfer s)"] = (
            P.continuum(learned, framework=_old_data_term(learned)),
            base_obj.model_copy(update={"data": w}))
    stats: dict[str, dict[str, list[float]]] = {
        name: {k: [] for k in ("completion", "latency", "energy", "wan", "slo", "unplaced")}
        for name in runs}
    for inst in range(instances):
        it = A.instance(inst, load, batch_size)
        for name, (pol, obj) in runs.items():
            reqs = it.requests if obj is None else _with_objective(it.requests, obj)
            score_a(stats[name], it.jobs, pol(reqs, it.snapshot.copy()), it.snapshot,
                    it.types)
    summary = {name: {"mean_completion": float(np.mean(st["completion"])),
                      "energy": float(np.mean(st["energy"])),
                      "wan": float(np.mean(st["wan"])), "slo": float(np.sum(st["slo"])),
                      "unplaced": float(np.sum(st["unplaced"]))}
               for name, st in stats.items()}
    ref = summary["continuum-learned, data weight 0"]
    front = pareto({n: (s["mean_completion"], s["energy"], s["wan"])
                    for n, s in summary.items() if s["unplaced"] == 0})
    rows = []
    for name, s in summary.items():
        cut = ref["wan"] / s["wan"] if s["wan"] > 0 else float("inf")
        rows.append([name, f"{s['mean_completion']:.0f}",
                     f"{100 * (s['mean_completion'] / ref['mean_completion'] - 1):+.1f} %",
                     f"{s['energy'] / 1e3:.0f}", f"{s['wan'] / 2**30:.1f}",
                     "∞" if cut == float("inf") else f"{cut:.1f}×", f"{s['slo']:.0f}",
                     f"{s['unplaced']:.0f}", "yes" if name in front else ""])
    text = table(["policy", "mean completion s", "vs data weight 0", "energy kJ/batch",
                  "WAN GiB/batch", "WAN cut vs data weight 0", "SLO violations", "unplaced",
                  "Pareto front"], rows)
    text += (f"\n\n{instances} instances × {batch_size} requests (scenario A's, same seeds), "
             "objective time = latency = energy = 1 and the data weight shown. WAN bytes: "
             "input bytes read from another location (ground truth, "
             "`scenario_a.evaluate`). Pareto front: no other row of the table (with "
             "nothing unplaced) is at least as good in completion, energy and WAN bytes "
             "and better in one.")
    return text, summary


def data_target(summary: dict[str, dict[str, float]]) -> tuple[str, bool, str]:
    """(measured text, met?, best row) for "a data weight that cuts WAN bytes ≥ 5× for
    ≤ 10 % completion" against data weight 0: the weight with the largest cut among those
    within 10 % completion (else the least completion cost among those cutting ≥ 5×)."""
    ref = summary["continuum-learned, data weight 0"]
    cands = []
    for w in DATA_WEIGHTS[1:]:
        s = summary[f"continuum-learned, data weight {w:g}"]
        cut = ref["wan"] / s["wan"] if s["wan"] > 0 else float("inf")
        cost = 100 * (s["mean_completion"] / ref["mean_completion"] - 1)
        cands.append((w, cut, cost))
    ok = [c for c in cands if c[1] >= 5 and c[2] <= 10]
    w, cut, cost = (max(ok, key=lambda c: (c[1], -c[2])) if ok
                    else min(cands, key=lambda c: (c[1] < 5, c[2])))
    cut_s = "∞" if cut == float("inf") else f"{cut:.1f}×"
    return f"data weight {w:g}: WAN {cut_s} less, completion {cost:+.1f} %", bool(ok), f"{w:g}"


# ---------------------------------------------------------------- scenario B


def score_b(pods: Sequence[B.Pod], base: Snapshot, chosen: Sequence[int],
            departures: bool = False) -> dict[str, float]:
    """Scenario B's ground truth for a replay: ``chosen[k]`` is the node index pod ``k``
    (arrival order) went to, -1 = not placed. Replays the placements on a copy of ``base``
    (pods leaving at their departure when ``departures``) and returns ``placed``,
    ``failed``, ``energy`` (J, :func:`scenario_b.pod_energy`) and ``peak_gpu_alloc``
    (highest fraction of the cluster's GPU units in use, in the trace's milli-GPUs)."""
    import heapq

    snap = base.copy()
    cap = float(base.free_gpu.sum())
    live: list[tuple[float, int, int]] = []
    placed = failed = 0
    energy = peak = 0.0
    for k, (pod, j) in enumerate(zip(pods, chosen, strict=True)):
        while departures and live and live[0][0] <= pod.arrival:
            _, node_i, pk = heapq.heappop(live)
            r = pods[pk].request.task.resources
            snap.free_gpu[node_i] += r.gpu
        if j < 0:
            failed += 1
            continue
        placed += 1
        energy += B.pod_energy(pod, base.nodes[j])
        snap.free_gpu[j] -= pod.request.task.resources.gpu
        if departures:
            heapq.heappush(live, (pod.departure, j, k))
        peak = max(peak, 1 - float(snap.free_gpu.sum()) / cap if cap else 0.0)
    return {"placed": float(placed), "failed": float(failed), "energy": energy,
            "peak_gpu_alloc": peak}


def replay_b(pods: Sequence[B.Pod], base: Snapshot,
             pol: Callable[..., np.ndarray] | Framework, departures: bool = False
             ) -> tuple[list[int], list[float]]:
    """Place ``pods`` one at a time in arrival order on a copy of ``base`` with ``pol`` (a
    policy of :mod:`policies`, or a framework placed through :class:`Planner`), capacity
    returned at each pod's departure when ``departures``; returns (node index per pod,
    -1 = not placed; seconds per decision)."""
    import heapq

    snap = base.copy()
    planner = Planner(snap, pol) if isinstance(pol, Framework) else None
    assigner = planner.assigner if planner is not None else None
    live: list[tuple[float, int, int]] = []
    lat = []
    chosen = []
    for k, pod in enumerate(pods):
        while live and live[0][0] <= pod.arrival:
            _, node_i, pk = heapq.heappop(live)
            r = pods[pk].request.task.resources
            if assigner is not None:
                assigner.release(node_i, r.cpu, r.memory, r.gpu)
            else:
                snap.free_cpu[node_i] += r.cpu
                snap.free_mem[node_i] += r.memory
                snap.free_gpu[node_i] += r.gpu
                snap.give_gpus(node_i, r.gpu)
        t0 = time.perf_counter()
        if planner is not None:
            dec = planner.place_one(pod.request, explain=False).decision
            j = -1 if dec is None else snap.index[dec.node]
        else:
            assert not isinstance(pol, Framework)
            j = int(pol([pod.request], snap)[0])
        lat.append(time.perf_counter() - t0)
        chosen.append(j)
        if j >= 0 and departures:
            heapq.heappush(live, (pod.departure, j, k))
    return chosen, lat


NO_STRAND = "continuum, fill-up measure in GPUs, weight 0.5 (before issue 16)"
STRAND_GPUS = "continuum, + stranding count, in GPUs, weight 0.5 (issue 16, first pass)"
GPU_CLUSTER = "continuum, fragmentation weight 5 (setting for a GPU-sharing cluster)"
DEFAULT_B = "continuum (with GpuFragmentation)"
UNCONSTRAINED_5 = ("continuum, weight 5, task types without their constraints "
                   "(issue 16, second pass)")


def _before_16(fw: Framework, strand: bool = False) -> Framework:
    """``fw`` with the fragmentation term as before issue 16: fragments in GPUs, weight
    0.5, without the CPU/memory stranding count (``strand``: with it, as issue 16's first
    pass)."""
    for plugin in fw.scores:
        if isinstance(plugin, GpuFragmentation):
            plugin.weight, plugin.pods, plugin.constrained = 0.5, False, False
            if not strand:
                plugin.strand = 0.0
    return fw


def _unconstrained(fw: Framework) -> Framework:
    """``fw`` with the fragmentation term's task types keyed by (cpu, memory, gpu) alone,
    as in issue 16's second pass (:attr:`GpuFragmentation.constrained` off)."""
    for plugin in fw.scores:
        if isinstance(plugin, GpuFragmentation):
            plugin.constrained = False
    return fw


def _gpu_pods_failed(pods: Sequence[B.Pod], chosen: Sequence[int]) -> tuple[int, int]:
    """(fractional-GPU pods failed, whole-GPU pods failed)."""
    frac = whole = 0
    for pod, j in zip(pods, chosen, strict=True):
        g = pod.request.task.resources.gpu
        if j < 0 and g > 0:
            frac += g < B.GPU_UNIT
            whole += g >= B.GPU_UNIT
    return frac, whole


def scenario_b_fgd(seeds: Sequence[int]) -> tuple[str, list[list[str]]]:
    """Both pod lists of the trace, in trace order and under FGD's protocol
    (:func:`scenario_b.fgd_arrivals`: shuffled, inflated to 1.3× the GPUs, none leaving)
    with each of ``seeds``: pods failed (fractional / whole GPU) and GPU allocation for
    kube-default, Continuum as before issue 16 ("today"), as after its first pass (the
    stranding count), as now (fragments in pods, task types keyed by their constraints) and
    as now with the weight a GPU-sharing cluster sets (5) — on a pod list with constraints
    also that setting with types keyed by (cpu, memory, gpu) alone. Returns the table
    and the target rows ("fewer failed pods than kube-default at ≥ the GPU allocation of
    today", today = the term before issue 16)."""
    nodes = B.load_nodes()
    base = Snapshot(nodes=nodes, network=A.network(), gpu_unit=B.GPU_UNIT)
    rows, targets_ = [], []
    for file in B.POD_FILES:
        pods = B.load_pods(None, file)
        names = ("kube-default", NO_STRAND, STRAND_GPUS, DEFAULT_B) \
            + ((UNCONSTRAINED_5,) if any(p.request.task.constraints != Constraints()
                                         for p in pods) else ()) + (GPU_CLUSTER,)
        for protocol in ("trace order", "FGD: shuffled, 1.3× GPUs"):
            runs = [None] if protocol == "trace order" else list(seeds)
            got: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in names}
            for seed in runs:
                arr = pods if seed is None else B.fgd_arrivals(pods, nodes, seed)
                for name in names:
                    pol: Callable[..., np.ndarray] | Framework = (
                        P.kube_default(2) if name == "kube-default"
                        else _before_16(default_framework()) if name == NO_STRAND
                        else _before_16(default_framework(), strand=True)
                        if name == STRAND_GPUS
                        else default_framework(fragmentation_weight=5.0) if name == GPU_CLUSTER
                        else _unconstrained(default_framework(fragmentation_weight=5.0))
                        if name == UNCONSTRAINED_5
                        else default_framework())
                    chosen, _ = replay_b(arr, base, pol)
                    sc = score_b(arr, base, chosen)
                    fr, wh = _gpu_pods_failed(arr, chosen)
                    got[name].append((sc["failed"], fr, wh, sc["peak_gpu_alloc"]))
            n_pods = len(pods) if protocol == "trace order" else "~" + str(len(arr))
            for name in names:
                a = np.array(got[name])
                rows.append([file.removeprefix("openb_pod_list_").removesuffix(".csv"),
                             protocol + ("" if runs == [None] else f" ({len(runs)} seeds)"),
                             str(n_pods), name, f"{a[:, 0].mean():.0f}",
                             f"{a[:, 1].mean():.0f}", f"{a[:, 2].mean():.0f}",
                             f"{100 * a[:, 3].mean():.2f}"])
            k, today, new, gpu5 = (np.array(got[n]).mean(axis=0)
                                   for n in ("kube-default", NO_STRAND, DEFAULT_B, GPU_CLUSTER))
            for label, mine in (("", new), (", weight 5", gpu5)):
                ok = mine[0] < k[0] and mine[3] >= today[3]
                targets_.append([
                    f"fewer failed pods than kube-default at ≥ today's GPU allocation "
                    f"({file.removeprefix('openb_pod_list_').removesuffix('.csv')}, "
                    f"{protocol}{label})",
                    f"{mine[0]:.0f} vs {k[0]:.0f} failed; GPU allocation {100 * mine[3]:.2f} % "
                    f"vs {100 * today[3]:.2f} % today", "met" if ok else "MISSED"])
    text = table(["pod list", "arrival", "pods", "policy", "pods failed",
                  "fractional-GPU pods failed", "whole-GPU pods failed",
                  "GPU allocation %"], rows)
    text += ("\n\nPods failed and GPU allocation (allocated share of the cluster's GPUs, in "
             "milli-GPUs, at the end: none leaves) are means over the seeds. FGD's "
             "protocol as in `scenario_b.fgd_arrivals`; seeds " + ", ".join(map(str, seeds))
             + ". `gpuspec33`: a third of the pods constrained to GPU models (node labels). "
             "\"today\" is the term before issue 16 (fill-up measure in GPUs, no stranding "
             "count, weight 0.5); \"continuum (with GpuFragmentation)\" is the default now "
             "(fragments in pods, stranding count, task types keyed by their constraints, "
             "weight 1; 0.5 before), the last row of each group the same with "
             "`placement_fragmentation_weight` = 5 and, on `gpuspec33` (the list whose pods "
             "carry constraints), the row before it that setting with task types keyed by "
             "(cpu, memory, gpu) alone as before.")
    return text, targets_


def weight_sweep(weights: Sequence[float]) -> str:
    """Both pod lists in trace order at each fragmentation weight of ``weights`` (the rest
    of the default framework as it is), beside kube-default: pods failed and GPU
    allocation at the end. Returns the table."""
    nodes = B.load_nodes()
    base = Snapshot(nodes=nodes, network=A.network(), gpu_unit=B.GPU_UNIT)
    rows = []
    for file in B.POD_FILES:
        pods = B.load_pods(None, file)
        for w in [None, *weights]:
            pol = P.kube_default(2) if w is None else default_framework(fragmentation_weight=w)
            chosen, _ = replay_b(pods, base, pol)
            sc = score_b(pods, base, chosen)
            rows.append([file.removeprefix("openb_pod_list_").removesuffix(".csv"),
                         "kube-default" if w is None else f"continuum, weight {w:g}",
                         f"{sc['failed']:.0f}", f"{100 * sc['peak_gpu_alloc']:.2f}"])
    return table(["pod list (trace order)", "policy", "pods failed", "GPU allocation %"],
                 rows)


def scenario_b(limit: int | None, departures: bool = False
               ) -> tuple[str, dict[str, dict[str, float]]]:
    """Replay the trace; without ``departures`` every pod stays (the paper's setup: the
    default pod list asks for ≈98 % of the cluster's GPUs, so fragmentation decides how
    many fit)."""

    nodes = B.load_nodes()
    pods = B.load_pods(limit)
    base = Snapshot(nodes=nodes, network=A.network(), gpu_unit=B.GPU_UNIT)
    no_fgd = _no_fragmentation(default_framework())
    pols: dict[str, Callable[..., np.ndarray] | Framework] = {
        "random": P.random_policy(2), "round-robin": P.round_robin(),
        "kube-default": P.kube_default(2), "greedy-energy": P.greedy_energy(),
        "continuum, no fragmentation term": no_fgd,
        NO_STRAND: _before_16(default_framework()),
        STRAND_GPUS: _before_16(default_framework(), strand=True),
        DEFAULT_B: default_framework(),
        GPU_CLUSTER: default_framework(fragmentation_weight=5.0),
    }
    rows, summary = [], {}
    for name, pol in pols.items():
        chosen, lat = replay_b(pods, base, pol, departures)
        s = score_b(pods, base, chosen, departures)
        s.update({"mean_us": float(np.mean(lat)) * 1e6, "p99_us": pct(lat, 99) * 1e6})
        summary[name] = s
        rows.append([name, f"{s['placed']:.0f}", f"{s['failed']:.0f}",
                     f"{s['energy'] / 3.6e9:.1f}", f"{100 * s['peak_gpu_alloc']:.1f}",
                     f"{s['mean_us']:.0f}", f"{s['p99_us']:.0f}"])
    text = table(["policy", "pods placed", "pods failed (no fit)", "energy MWh",
                  "GPU allocation %", "mean µs/decision", "p99 µs/decision"], rows)
    text += (f"\n\n{len(pods)} pods submitted in trace order to {len(nodes)} nodes, "
             + ("leaving at their deletion time" if departures else
                "none leaving (together they request 98 % of the cluster's GPUs)")
             + "; GPU demand in milli-GPUs per physical GPU: a fractional pod must fit on one "
             "GPU (every policy puts it on the fullest GPU that holds it), a multi-GPU pod "
             "needs entirely free GPUs. MILP: not "
             "applicable (pods are placed one at a time on arrival). Energy: pod lifetime × "
             "(cpu share × 250 W + GPU share × TDP).")
    return text, summary


# ---------------------------------------------------------------- throughput


def throughput(quick: bool, sizes: Sequence[int] = (1000, 10000, 100000)
               ) -> tuple[str, list[T.Row]]:
    rows: list[T.Row] = []
    full = {1000: (5000, 1000), 10000: (10000, 1000), 100000: (10000, 100)}
    short = {1000: (2000, 200), 10000: (2000, 100), 100000: (2000, 20)}
    plan = [(n, *(short if quick else full)[n]) for n in sizes]
    for n, fast, naive in plan:
        rows += T.measure(n, fast, naive)
    out = []
    naive_rate = {r.nodes: r.per_s for r in rows if r.policy.startswith("naive")}
    for r in rows:
        out.append([f"{r.nodes:,}", str(r.classes), r.policy, str(r.requests), str(r.placed),
                    f"{r.per_s:,.0f}", f"{r.p99_ms:.3f}",
                    f"{r.per_s / naive_rate[r.nodes]:.1f}×", f"{r.build_s * 1e3:.0f}"])
    return table(["nodes", "node classes", "assigner", "requests", "placed", "placements/s",
                  "p99 ms", "vs naive", "class build ms"], out), rows


# ---------------------------------------------------------------- targets

NOTE = """\
What limits the missed targets (analysis of this benchmark, not measured by it):

- **One path.** Every `continuum` row places through `placement.plan` (its `Planner`), the
  entry point the control plane's reconciler, preview and migration use; the throughput
  table's `explanation included` row times it with the decision's explanation built, as
  the reconciler does, and checks that it places exactly as the row without.
- **Optimality gap under contention.** The assigner is greedy: requests largest first, each
  to its best class that still has room, no look-ahead. At 0–40 % background load nothing
  competes and it matches the MILP. At 0–85 % the few good classes (HPC and the factory's
  edge/devices for SLO-bound work) fill up, later requests fall to costlier classes or stay
  unplaced, and the MILP — which trades placements between requests — does better. The regret
  order (`order="best"`: the better of largest-first and regret-first, by the same value) brings
  the median under 3 % but leaves more requests for the next cycle (see its "unplaced"
  column). `CONTINUUM_PLACEMENT_MODE=quality` solves batches of up to 20,000 (request, node)
  pairs exactly (the MILP row).
- **Completion and energy against kube-default on scenario A: both targets are out of
  reach of any placement here.** The `lower bound` row puts every job alone on its best
  node type under the ground truth (completion over the nodes within its SLO, energy over
  all nodes, capacity ignored); no policy can beat it, and it is only about 20 % below
  kube-default in completion and about 17 % in energy (figures under the table). Energy:
  with the fragmentation term off (the `fragmentation off` row; weight 0.5, the default
  before, placed the same) Continuum is within about 1 % of the bound (training on A100s
  dominates, and is where every sensible policy puts it); at the default weight 1 it
  spends about 7 % more than the bound, keeping GPU hosts whole for GPU work this scenario
  never sends ("costs elsewhere", below). Completion: part of the gap to the bound is the
  trade the objective makes on purpose — services on Jetsons rather than the 2× faster
  edge servers (3× less energy per service), pre-processing on the HPC nodes despite their
  Slurm queue (3× less energy than the edge): asked for completion alone (`objective time
  only`) the same assigner comes about 15 % under kube-default — still short of 25 % — at
  about 12 % more energy than with the default objective. The rest is capacity: the bound
  gives every job its best node type, while the fast SLO-compatible nodes (6 edge
  servers) and the HPC nodes are few.
  The MILP row places as `continuum-learned, fragmentation off` (same completion, energy
  and WAN bytes; it was `continuum-learned` too at weight 0.5): it reads the fragmentation
  term once, on the snapshot before the batch (`BatchAssigner.node_costs`), where the
  assigner re-reads it after each placement. Measured on the MILP's objective the
  assigner's median gap is 0.00 % (p95 1.16 %): there is no placement error left to fix
  there. The kube-default baseline was checked against
  kube-scheduler v1.30's source (policies.py docstring); the one difference found (zero
  requests count as 100 millicores / 200 MiB in LeastAllocated) is fixed and touches no
  scenario-A request. Tried and dropped: an SLO-relative latency floor and a 30 kJ
  energy floor (services stayed on the Jetsons; ≤ 1 % change in mean completion).
- **Learned vs analytic.** The learned predictors are far more accurate on the ground truth
  (MAPE table). Cost per decision: `placement.plan` hands all task classes of a
  batch not yet cached to `LearnedPredictor.prefetch` — one scikit-learn `predict` per
  target over (task classes × node-class representatives) rows, memoised on the snapshot —
  so a decision no longer pays three `predict` calls of its own (each scenario-A request is
  its own task class; compare the µs/decision columns of the analytic and learned rows).
  Placements: where accuracy matters for the ranking, they differ. Ground truth
  (`scenario_a.true_runtime`, defined by the scenario, independent of both models): an
  A100 trains 2× as fast as a V100 per GPU (NVIDIA A100 whitepaper, 2020). The analytic
  model counts a GPU as a GPU, so with the fragmentation term, which prefers keeping the
  4-GPU A100 hosts whole, `continuum-analytic` sends 1-GPU training to the 1-GPU V100
  hosts; the learned model, trained on past runs drawn from that ground truth, predicts
  the speed-up and keeps most of it on A100s — `continuum-learned` finishes sooner and
  spends less energy than `continuum-analytic` in the table. Of the 68 one-GPU training
  jobs of the 30 batches the analytic predictor sends 60 to V100 hosts at the default
  weight 1 (40 at 0.5), the learned one 19 (3 at 0.5; a side script, not committed).
- **Scenario B and the GPU-fragmentation term.** `continuum, no fragmentation term` is the
  objective before the `GpuFragmentation` plugin (placement/plugins/fragmentation.py, after
  Weng et al., FGD, USENIX ATC'23): CPU-only pods went to the GPU hosts with the lowest
  watts per core share and stranded their GPUs. With the term (fill-up measure, scaled by
  GPU pressure; default weight 1, 0.5 until the `gpuspec33` list showed it too light, below)
  Continuum leaves fewer pods unplaced than kube-default in trace order on both pod lists.
  FGD's own one-pod measure was tried first and left 431 pods unplaced (a 96-core host that
  loses 10 cores still fits one GPU pod, so FGD sees nothing until its last cores go).
  The term costs energy in this model: CPU-only pods now run on smaller CPU hosts, which
  the linear power model charges a larger share of 250 W.
- **Data locality (issue 16 item 5a).** Before, the data term was input transfer *time*;
  scenario A's ETL inputs sit in the cloud, whose 10 Gbit/s link to the HPC site moves
  20 GB in 16 s — about what a LAN copy in the cloud takes — so no data weight told the
  sites apart (the `old term` rows: WAN bytes hardly move while completion grows, since
  the weight dilutes time and energy). The term is now the input bytes crossing the
  WAN, in GiB with a floor of 1 GiB (`DataLocality`, placement/plugins/locality.py):
  weight 1 = moving a GiB over the WAN costs as much as doubling completion. What the
  data weight trades is mostly energy: in this model an ETL job on a 64-core HPC host
  is charged half the watts per core of a 32-core cloud node, so keeping it by its data
  costs energy as well as the HPC's 1.3× speed; pre-processing kept in the factory runs
  on the Jetsons and pushes services to the slower Pis. Locality-first (every task
  where its input lives, kube-default among those nodes) moves the least (what is left
  does not fit where its input lives) but finishes later, and spends more energy, than
  Continuum at data weight 4, which moves as little.
- **GPU packing (issue 16 item 5b).** Measured (default pod list, FGD seed 1 unless
  said): Continuum puts every CPU-only pod on a GPU host (lower watts per core), but
  that is not what fails pods: pinning them to the CPU-only hosts first (a side
  experiment with the first pass's term; they fill those hosts, 384 of 1,443 are left
  for GPU hosts) changed 2,366 failed to 2,360 under FGD's protocol and nothing in trace
  order. The measure is FGD's
  (a CPU-only type sees every free GPU as a fragment) plus the fill-up and stranding
  extensions. Two things changed. (1) Fragments are counted in the pods of each type
  they could have held, not in GPUs (`fragmentation.type_weights`): FGD's unit lets a
  rare 8-GPU type's idle host outweigh room for several fractional pods. At weight 0.5
  (the default then) this fails 113 pods in trace order (123 before, kube-default 156) and 1,348 on
  `gpuspec33` (1,442), and changes nothing under FGD's protocol. (2) The weight: the
  term's normalised cost is below 1, so at weight `w` it decides at most `w / (w + 2)` of
  a node's total (a fifth at 0.5, a third at 1) and the other terms can outweigh any
  fragmentation. At weight 5 (before the constrained task types below; 2 → 796, 10 → 729,
  20 → 737 failed on `gpuspec33` in trace order) Continuum beat kube-default in trace
  order on both lists (73 vs 156, 752 vs 788) at a higher GPU allocation (95.69 % and
  86.91 % vs today's 95.50 % and 77.98 %). It costs energy: 9.0 MWh vs 8.1 at weight 0.5
  (8.4 at 1) in scenario B, and on scenario A (30 batches, where no GPU work follows) 9 % completion
  and 25 % energy for the learned predictor's placements (1,467 s and 12,753 kJ per batch
  vs 1,343 s and 10,207 kJ at 0.5; kube-default 1,495 s and 12,177 kJ). So 5 is the
  documented setting for a GPU-sharing cluster (`placement_fragmentation_weight`). At
  0.5, the default then, the `gpuspec33` trace-order target was missed (1,348 vs 788;
  1,326 with the constrained task types below); the default is now 1 (below). A
  knee on the GPU pressure (the term off below 50 % or 80 % allocation) was worse (301 and
  465 failed in trace order): the early placements decide. Under FGD's protocol
  (shuffled, 1.3× the GPUs) the targets are missed at every weight measured (0.5, 1, 5;
  weight 5: 2,304 vs 2,111 and 2,342 vs 2,219 failed, 3 seeds). The gap is which big pods get in: with
  1.3× the GPUs requested about a quarter of the demand must fail, and kube-default,
  which spreads, fails 43 of the 54 8-GPU pods; Continuum packs (with the term off too:
  22 failed; 28 at weight 5) and admits most of them, each taking the GPUs of about 16
  fractional pods. At the end (first pass's term) 249 of Continuum's 253 free GPUs are
  in slivers under 0.25 GPU: little fragmentation is left to remove. Refusing the 54 8-GPU pods
  outright (a side experiment, weight 5) fails 2,093 pods vs kube-default's 2,129 at
  95.62 % GPU allocation — so the pod count under overload rewards turning big pods
  away, an admission choice rather than a placement one; not done. The pod count keeps
  the class bound exact (`unchanged`; `least_positive` is one pod's popularity with the
  stranding count off; the throughput bench's exhaustive check says "all the same").
  The stranding count is exact under the class bound (`unchanged` compares it too) but
  continuous in cpu, so `least_positive` gives no gap while it is on: CPU-only requests
  may evaluate more nodes per class on GPU clusters. Measured side by side at 10k nodes
  (`--quick`-sized, 2,000 requests, on a loaded machine) it did not cost throughput: 443
  decisions/s with the count vs 345/s without (the `before` row 299/s and 255/s in the
  same processes).
- **Constrained task types (issue 16 item 5b, second pass).** A third of the `gpuspec33`
  pods require GPU models; most of what Continuum failed there were T4-only pods (trace
  order, weight 0.5: 1,067 of 1,348 failed; kube-default 649 of 788): the 842 T4s
  (of 6,212 GPUs) cannot hold the T4-only demand under any policy, and at 70 W they are the
  energy term's favourite, so pods that could run anywhere took them. The term's task
  types are now keyed by their static constraints too (`constraints.static_key`: labels,
  arch, tier, site), a node that does not admit a type has every free GPU as that type's
  fragment (FGD's "does not fit" case), and each type's weight is divided by its reach,
  the share of the cluster's GPUs on the nodes that admit it (`fragmentation.reach`): a
  pod that may use only that share meets each of those GPUs proportionally more often.
  Keying alone, without the reach, changed little (1,372 at weight 0.5, 750 at 5; a side
  experiment). With it, in trace order at weight 5: 656 failed vs 752 (the row keyed by
  (cpu, memory, gpu) alone, same run; T4-only pods 364 vs 412 when first measured, at 658
  failed) at 88.18 % GPU allocation vs 86.91 %; under FGD's protocol 2,342 vs 2,368. At
  weight 0.5 1,326 vs 1,348 (T4-only pods as before: the energy term outweighs the term
  there) and 2,421 vs 2,444 (FGD). The default list carries no constraints and does not change. The weight,
  measured again on `gpuspec33` in trace order (`--gpu-only --weights`, table below): 1 → 776
  failed (below kube-default's 788, at 86.61 % GPU allocation; the default list 113),
  1.5 → 726, 2 → 677, 5 → 656, 10 → 657, 20 → 663. On scenario A (30 batches × 48, load
  0.4, the learned predictor) weight 1 costs 2.1 % completion and 5.6 % energy against
  0.5 (1,371 s and 10,782 kJ per batch, the tables below, vs 1,343 s and 10,207 kJ, where
  0.5 placed as the `fragmentation off` row; weight 5, a side script: 1,467 s and 12,753
  kJ; kube-default 1,495 s and 12,177 kJ; contended A 0.5 % and 1.9 %). So the default is now
  1 (it was 0.5): it meets both trace-order targets (targets table) at a small cost where
  no GPU work follows, and this file's tables are at weight 1. Under FGD's protocol
  weight 1 still misses (2,345 vs 2,111 and 2,355 vs 2,219 failed, 3 seeds). Seeded tests
  with labelled nodes found that a constrained request's band may hold no node at
  `ΔF = 0`, and the class walk then left nodes whose growth bound was above the tie band
  uncomputed on totals that assumed a minimum of 0 — it could rank differently from the
  exhaustive evaluation; while no `ΔF = 0` is known such nodes are now computed.
- **The fragmentation term's costs elsewhere.** It protects GPUs for *future* GPU work;
  scenario A measures one batch with no future. With the learned predictor it changed
  nothing there at weight 0.5 (`continuum-learned` placed as `continuum-learned,
  fragmentation off`): the model knows an A100 trains 2× faster than a V100, so keeping
  4-GPU A100 hosts whole was not worth it at that weight. At the default weight 1 it is:
  `continuum-learned` takes 2.1 % longer and spends 5.6 % more energy than
  `continuum-learned, fragmentation off` (contended A: 0.5 % and 2.0 %), the price of
  packing the GPU trace better than kube-default: at weight 1 (up to a third of a node's
  total) the term outweighs the A100's speed-up for some 1-GPU training jobs, which go to
  V100 hosts (19 of 68, "Learned vs analytic" above). The analytic predictor does not know
  the A100's speed-up, and `continuum-analytic` sends 1-GPU training to the 1-GPU V100
  hosts (worse time and energy than before the term).
  It also reads free capacity, so it cannot be cached per (task class, node class). Since
  issue 16 it is bounded per node class for a CPU-only request (`BatchAssigner._frag_walk`,
  docs/placement.md): classes are walked in cost order in groups of equal cost and stop
  where their best reachable total (`ΔF = 0`) cannot rank; within a group nodes are taken
  least free cpu first and `ΔF` is computed only ahead of the first nodes provably at 0
  (`GpuFragmentation.unchanged`). With measured load beside it (the control plane's
  framework) both terms are bounded per class together (`BatchAssigner._joint_walk`). The
  bench checks every CPU-only choice of the product row, and of the control plane's
  framework row, against the exhaustive evaluation in the same state. Nodes whose `ΔF` is provably
  beyond the tie band (`GpuFragmentation.growth_bound`) are left uncomputed once enough
  `ΔF = 0` ones rank before them, and a group's fitting nodes come from an index sorted by
  free cpu. The `before` row is the path before those two and the lean explanations
  (`bound_growth`, `index_groups`, `Planner.lean_explanations` off), timed in the same run.
  A GPU request keeps the capped evaluation of up to 1,024 fitting nodes (its `ΔF` can be
  negative, so the bound does not apply), and what is left per CPU-only decision is numpy
  call overhead — mostly the zero test over the GPU nodes ahead, which every decision runs
  since the workload mix changes with every request key — plus the explanation (a new
  (static key, request shape) builds its filter-count table in one `O(n)` pass).
"""


def throughput_targets(rows: list[T.Row]) -> list[list[str]]:
    """The decision-throughput targets of issue 16 item 4 against ``rows``: (target,
    measured, met/MISSED) rows."""
    by = {(r.nodes, r.policy): r for r in rows}
    out: list[list[str]] = []

    def line(target: str, measured: str, ok: bool) -> None:
        out.append([target, measured, "met" if ok else "MISSED"])

    for label in (T.PRODUCT + ", explanation included",
                  T.LOAD + ", explanation included",
                  "continuum (distinct), explanation included",
                  T.BEFORE + ", explanation included",
                  T.PRODUCT + ", fragmentation off, explanation included"):
        r10, r100 = by.get((10000, label)), by.get((100000, label))
        naive10 = by.get((10000, "naive full rescan"))
        if r10 is None or naive10 is None:
            continue
        line(f"≥ 10,000 placements/s, p99 ≤ 2 ms at 10k nodes — {label}",
             f"{r10.per_s:,.0f}/s, p99 {r10.p99_ms:.3f} ms", r10.per_s >= 1e4 and r10.p99_ms <= 2)
        line(f"≥ 3× naive at 10k nodes — {label}", f"{r10.per_s / naive10.per_s:.1f}×",
             r10.per_s >= 3 * naive10.per_s)
        if r100 is not None:
            line(f"≥ 2,000 placements/s at 100k nodes — {label}", f"{r100.per_s:,.0f}/s",
                 r100.per_s >= 2000)
    return out


def targets(a: dict[str, dict[str, float]], c: dict[str, dict[str, float]],
            rows: list[T.Row], data: dict[str, dict[str, float]] | None = None,
            gpu: list[list[str]] | None = None) -> str:
    """The issue's targets with the measured figures, side by side."""
    kube, mine = a["kube-default"], a["continuum-learned"]
    completion = 100 * (1 - mine["mean_completion"] / kube["mean_completion"])
    energy = 100 * (1 - mine["energy"] / kube["energy"])
    gaps = [(c_or_a[name]["gap_median"], f"{label}, {name}")
            for c_or_a, label in ((a, "scenario A"), (c, "contended A"))
            for name in ("continuum-learned", "continuum-learned, best order")]
    out = []

    def line(target: str, measured: str, ok: bool) -> None:
        out.append([target, measured, "met" if ok else "MISSED"])

    for g, label in gaps:
        line("median optimality gap ≤ 3 %", f"{g:.2f} % ({label})", g <= 3.0)
    line("≥ 25 % lower mean completion than kube-default (A)", f"{completion:.1f} %",
         completion >= 25)
    line("≥ 20 % less energy than kube-default (A)", f"{energy:.1f} %", energy >= 20)
    if data is not None:
        measured, ok, _ = data_target(data)
        line("a data weight that cuts WAN bytes ≥ 5× for ≤ 10 % completion (A, vs data "
             "weight 0)", measured, ok)
    out += gpu or []
    out += throughput_targets(rows)
    return table(["target", "measured", ""], out)


# ---------------------------------------------------------------- chart


def chart(summary_a: dict[str, dict[str, float]], rows: list[T.Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary_a if n != "milp-optimum"] + ["milp-optimum"]
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    ax[0].barh(names, [summary_a[n]["mean_completion"] for n in names], color="tab:blue")
    ax[0].set_xlabel("mean completion (s), scenario A")
    ax[1].barh(names, [summary_a[n]["energy"] / 1e3 for n in names], color="tab:green")
    ax[1].set_xlabel("energy per batch (kJ), scenario A")
    for label in sorted({r.policy for r in rows}):
        pts = sorted((r.nodes, r.per_s) for r in rows if r.policy == label)
        ax[2].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax[2].set_xscale("log")
    ax[2].set_yscale("log")
    ax[2].set_xlabel("nodes")
    ax[2].set_ylabel("placements/s")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_results(section: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``section`` between the markers ``begin`` and ``end`` of bench/RESULTS.md
    (replacing what was there; appended with the markers when they are missing)."""
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{begin}\n{section}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--throughput-only", metavar="NODES",
                    help="only the decision-throughput table at these node counts "
                         "(e.g. 10000,100000), printed with its targets; writes nothing")
    ap.add_argument("--gpu-only", action="store_true",
                    help="only the table of scenario B's both pod lists, trace order and "
                         "FGD's protocol (seeds 1, 2, 3; seed 1 with --quick), printed with "
                         "its targets; writes nothing")
    ap.add_argument("--weights", metavar="W,W,...",
                    help="with --gpu-only: instead, both pod lists in trace order at these "
                         "fragmentation weights (e.g. 0.5,1,2,5), beside kube-default")
    args = ap.parse_args()
    if args.gpu_only and args.weights:
        print(weight_sweep([float(x) for x in args.weights.split(",")]))
        return
    if args.gpu_only:
        f_text, f_targets = scenario_b_fgd((1,) if args.quick else (1, 2, 3))
        print(f_text + "\n\n" + table(["target", "measured", ""], f_targets))
        return
    if args.throughput_only:
        sizes = [int(x) for x in args.throughput_only.split(",")]
        t_text, t_rows = throughput(args.quick, sizes)
        print(t_text + "\n\n" + table(["target", "measured", ""], throughput_targets(t_rows)))
        return
    t0 = time.time()
    rng = np.random.default_rng(7)
    hist = A.history(rng, 1500 if args.quick else 4000)
    models = train(hist)
    learned = LearnedPredictor(ModelSet(1, time.time(), "scenario-a ground truth", models))
    unit = {"mape_percent": "MAPE %", "mae_seconds": "MAE s"}
    mape_rows = [[t, str(m.samples), unit[m.metric], f"{m.error:.1f}", f"{m.analytic_error:.1f}"]
                 for t, m in sorted(models.items())]
    mape_text = table(["target", "samples", "error", "learned", "analytic"], mape_rows)
    print(mape_text, flush=True)
    a_text, a_sum = scenario_a(6 if args.quick else 30, 48, learned, 20.0)
    print(a_text, flush=True)
    c_text, c_sum = scenario_a(4 if args.quick else 20, 96, learned, 20.0, load=0.85)
    print(c_text, flush=True)
    b_text, _ = scenario_b(1500 if args.quick else None)
    print(b_text, flush=True)
    d_text, d_sum = data_front(6 if args.quick else 30, 48, learned)
    print(d_text, flush=True)
    f_text, f_targets = scenario_b_fgd((1,) if args.quick else (1, 2, 3))
    print(f_text, flush=True)
    t_text, t_rows = throughput(args.quick)
    print(t_text, flush=True)
    png = HERE / "placement.png"
    chart(a_sum, t_rows, png)
    import os
    import platform

    section = (
        "## Placement (issue 6)\n\n"
        f"Command: `.venv/bin/python -m bench.placement.run{' --quick' if args.quick else ''}` "
        f"({time.time() - t0:.0f} s on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs shared). Chart: `bench/placement/placement.png`.\n\n"
        "### Predictors (scenario A ground truth, held-out 20 %)\n\n" + mape_text +
        "\n\n### Targets\n\n" + targets(a_sum, c_sum, t_rows, d_sum, f_targets) + "\n\n"
        + NOTE +
        "\n\n### Scenario A — continuum (devices, edge, cloud, HPC)\n\n" + a_text +
        "\n\n### Scenario A, contended (0–85 % background load, 96 requests per batch)\n\n"
        + c_text +
        "\n\n### Scenario B — Alibaba GPU trace (Weng et al., USENIX ATC'23; CC BY 4.0)\n\n"
        + b_text +
        "\n\n### Scenario B, both pod lists, trace order and FGD's protocol (issue 16)\n\n"
        + f_text +
        "\n\n### Data locality — completion, energy and WAN bytes over the data weight "
        "(scenario A, issue 16)\n\n" + d_text +
        "\n\n### Decision throughput\n\n" + t_text + "\n")
    if not args.no_write:
        write_results(section)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
