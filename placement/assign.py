"""The public entry point: place a batch of requests on a snapshot, explainably.

:func:`place` is a greedy batch assigner with assume-and-deduct: requests are taken
largest first (gpu, then cpu, then memory, descending; ties keep their input order),
each is filtered and scored against the snapshot's *current* free capacity, the best
node (highest weighted total; ties → lowest node index) is chosen, and the request's
cpu/memory/gpu are deducted from that node's free arrays before the next request is
considered — so one cycle never overcommits a node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np

from continuum.model import Node, Objective, PlacementDecision, Prediction, Task
from placement import fmt
from placement.framework import Framework, default_framework
from placement.predict import ExplainsFallback, predictions, provides
from placement.snapshot import TIERS, Snapshot

ALTERNATIVES = 3
"""How many runner-up nodes a decision lists."""


@dataclass
class DataSource:
    """Where one input's bytes can be fetched from.

    ``bytes``: size; ``locations``: location (or site / node) names holding a copy;
    ``nodes``: node ids holding a cached copy (zero transfer there).
    """

    bytes: int
    locations: list[str]
    nodes: list[str] = field(default_factory=list)


@dataclass
class PlacementRequest:
    """One run to place: ``key`` is the run id."""

    key: str
    task: Task
    objective: Objective
    sources: list[DataSource] = field(default_factory=list)


@dataclass
class Outcome:
    """The result for one request: a decision, or None with ``reason`` saying why and how to fix."""

    key: str
    decision: PlacementDecision | None
    reason: str = ""


def _size_key(req: PlacementRequest) -> tuple[float, float, float]:
    r = req.task.resources
    return (-float(r.gpu), -float(r.cpu), -float(r.memory))


def place(
    requests: list[PlacementRequest], snapshot: Snapshot, framework: Framework | None = None
) -> list[Outcome]:
    """Place ``requests`` on ``snapshot``; one :class:`Outcome` per request, in input order.

    Mutates ``snapshot``'s free arrays (assume-and-deduct); pass ``snapshot.copy()``
    for a what-if preview. Never raises for "does not fit": that is an Outcome with
    ``decision=None`` and a reason such as
    ``"no node fits: 0/15 nodes available: 12 nodes lack cpu (need 64, largest free 32);
    3 wrong tier (allowed: edge; these are cloud). To fix: ..."``.
    """
    fw = framework or default_framework()
    outcomes: dict[int, Outcome] = {}
    order = sorted(range(len(requests)), key=lambda i: _size_key(requests[i]))
    pins, note = _quality_pins(requests, snapshot, fw)
    for i in order:
        outcomes[i] = _place_one(requests[i], snapshot, fw, pins.get(i), note)
    return [outcomes[i] for i in range(len(requests))]


def _quality_pins(requests: list[PlacementRequest], snap: Snapshot, fw: Framework
                  ) -> tuple[dict[int, int], str]:
    """In ``quality`` mode, the MILP's node per request (empty when not used)."""
    if fw.mode != "quality" or not requests or len(requests) * snap.n > fw.quality_max_pairs:
        return {}, ""
    from placement.batch import BatchAssigner
    from placement.milp import solve

    result = solve(requests, BatchAssigner(snap.copy(), fw), fw.quality_time_limit_s)
    if result.status == "failed":
        return {}, ""
    pins = {i: int(j) for i, j in enumerate(result.nodes) if j >= 0}
    proof = "optimal" if result.status == "optimal" else "best found within the time limit"
    return pins, (f"chosen by the exact MILP over the batch of {len(requests)} "
                  f"(HiGHS, {proof}, {result.seconds * 1e3:.0f} ms)")


def _place_one(req: PlacementRequest, snap: Snapshot, fw: Framework, pin: int | None = None,
               note: str = "") -> Outcome:
    state = fw.new_state()
    feas = fw.run_filters(req, snap, state)
    if not feas.mask.any():
        return Outcome(req.key, None, feas.explain(snap.n))
    table = fw.run_scores(req, snap, state, feas.mask)
    best_k = int(np.argmax(table.total))
    if pin is not None and feas.mask[pin]:
        best_k = int(np.searchsorted(table.idx, pin))
    else:
        note = ""
    chosen = int(table.idx[best_k])
    node = snap.nodes[chosen]
    p = predictions(req, snap, state)

    reasons: list[str] = []
    for plugin in fw.scores:
        if table.weights[plugin.name] <= 0:
            continue
        full = np.zeros(snap.n)
        full[table.idx] = table.raw[plugin.name]
        line = plugin.describe(req, snap, state, full, chosen, feas.mask)
        if line:
            reasons.append(line)
    reasons.append(f"{table.idx.size} of {snap.n} nodes feasible")
    if note:
        reasons.append(note)
    version = fw.predictor.version
    if provides(fw.predictor, ExplainsFallback) and version != "analytic-v1":
        why = cast(ExplainsFallback, fw.predictor).fallback(req.task, snap, chosen)
        if why:
            reasons.append(why)
            version = "analytic-v1"

    ranked = np.argsort(-table.total, kind="stable")
    alternatives = [
        {"node": snap.ids[int(table.idx[k])], "total": round(float(table.total[k]), 2)}
        for k in ranked if k != best_k
    ][:ALTERNATIVES]

    predicted = Prediction(
        runtime_s=float(p.runtime_s[chosen]),
        queue_wait_s=float(p.queue_wait_s[chosen]),
        transfer_s=float(p.transfer_s[chosen]),
        completion_s=float(p.completion_s[chosen]),
        latency_ms=None if p.rtt_ms is None else float(p.rtt_ms[chosen]),
        energy_j=float(p.energy_j[chosen]),
        bytes_moved=int(p.bytes_moved[chosen]),
    )
    decision = PlacementDecision(
        node=node.id,
        site=node.site,
        tier=TIERS[int(snap.tier[chosen])],
        scores={name: round(float(v[best_k]), 2) for name, v in table.normalized.items()},
        weights=table.weights,
        total=round(float(table.total[best_k]), 2),
        predicted=predicted,
        reasons=reasons,
        filtered=feas.filtered,
        alternatives=alternatives,
        model_version=version,
        feasible_nodes=int(table.idx.size),
    )
    snap.assume(chosen, req.task.resources)
    return Outcome(req.key, decision)


def never_fits(task: Task, nodes: list[Node]) -> str | None:
    """Whether ``task``'s resources exceed every node's allocatable capacity, for API validation.

    Ignores current usage, readiness, tiers, labels and taints: only cpu, memory and gpu
    against each node's ``allocatable`` (what work may ever use; ≤ capacity). Returns
    None when some node could hold all three at once, or when ``nodes`` is empty (the
    federation may still grow); otherwise a message such as ``"requests 512 cpu but the
    largest node of the federation has 128 (hpc-garching/cpu-partition)"``.
    """
    if not nodes:
        return None
    r = task.resources
    cpu = np.array([nd.allocatable.cpu for nd in nodes])
    mem = np.array([nd.allocatable.memory for nd in nodes], dtype=np.int64)
    gpu = np.array([nd.allocatable.gpu for nd in nodes], dtype=np.int64)
    fits = (cpu >= r.cpu) & (mem >= r.memory) & (gpu >= r.gpu)
    if fits.any():
        return None
    for what, need, have, render in (
        ("cpu", r.cpu, cpu, fmt.cpu),
        ("memory", r.memory, mem, fmt.mem),
        ("gpu", r.gpu, gpu, str),
    ):
        k = int(np.argmax(have))
        if have[k] < need:
            return (f"requests {render(need)} {what} but the largest node of the federation "
                    f"has {render(have[k])} ({nodes[k].id})")
    k = int(np.argmax(cpu))
    return (f"no single node has {fmt.cpu(r.cpu)} cpu, {fmt.mem(r.memory)} memory and "
            f"{r.gpu} gpu together; e.g. the largest by cpu, {nodes[k].id}, has "
            f"{fmt.cpu(cpu[k])} cpu, {fmt.mem(mem[k])} memory, {gpu[k]} gpu")


__all__ = ["DataSource", "Outcome", "PlacementRequest", "never_fits", "place"]
