"""The exact assignment: a MILP of the batch objective, solved by HiGHS (scipy.optimize.milp).

Variables: ``x[i, j] ∈ {0, 1}`` for every request ``i`` and every node ``j`` statically
feasible for it (its class's cost is finite), and ``u[i] ∈ {0, 1}`` = request ``i``
left unplaced. Minimise ``Σ c[i, class(j)] · x[i, j] + M · Σ u[i]`` subject to

* ``Σ_j x[i, j] + u[i] = 1`` for every request (placed once, or not at all);
* ``Σ_i cpu_i · x[i, j] ≤ free_cpu_j`` and likewise memory and gpu, for every node.

``c`` is the objective of :meth:`placement.batch.BatchAssigner.node_costs` — the
linear class cost, with the dynamic terms (measured load, GPU fragmentation) evaluated
at the batch's starting state (so the heuristic and the optimum are measured on the
same scale), and ``M`` (:data:`UNPLACED_PENALTY`) exceeds
any placement's cost, so the solver places as many requests as capacity allows before
it optimises cost. Solver: HiGHS via ``scipy.optimize.milp`` (Huangfu & Hall, "Parallelizing
the dual revised simplex method", Math. Prog. Comp. 2018).

Size: ``x`` has up to ``len(requests) × n`` columns, so this is for small batches (the
``quality`` mode and the benchmark's yardstick); :func:`solve` returns ``status`` other
than ``"optimal"`` when the time limit is hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from placement.assign import PlacementRequest
from placement.batch import BatchAssigner
from placement.snapshot import CPU_EPS

UNPLACED_PENALTY = 1e3
"""Cost of leaving a request unplaced; far above any placement's cost (0..1)."""


@dataclass(frozen=True)
class MilpResult:
    """``nodes``: node index per request (-1 = unplaced); ``objective``: Σ costs of the
    placed requests (without the unplaced penalty); ``status``: ``optimal``,
    ``time_limit`` (best found, not proven) or ``failed``; ``seconds``: solve time."""

    nodes: np.ndarray
    objective: float
    status: str
    seconds: float


def solve(requests: Sequence[PlacementRequest], assigner: BatchAssigner,
          time_limit_s: float = 30.0) -> MilpResult:
    """Optimal assignment of ``requests`` on ``assigner``'s snapshot (free arrays unchanged).

    Uses ``assigner`` only for its node classes and cached class costs. Raises nothing
    for infeasible pairs (they have no column); returns ``status="failed"`` when HiGHS
    finds no solution within ``time_limit_s``.
    """
    import time

    assert assigner.classes is not None
    snap = assigner.snap
    m = len(requests)
    cols_i: list[np.ndarray] = []
    cols_j: list[np.ndarray] = []
    cols_c: list[np.ndarray] = []
    for i, req in enumerate(requests):
        cost = assigner.node_costs(req)
        ok = np.isfinite(cost)
        j = np.flatnonzero(ok)
        cols_i.append(np.full(j.size, i))
        cols_j.append(j)
        cols_c.append(cost[j])
    xi = np.concatenate(cols_i) if cols_i else np.zeros(0, dtype=np.int64)
    xj = np.concatenate(cols_j) if cols_j else np.zeros(0, dtype=np.int64)
    xc = np.concatenate(cols_c) if cols_c else np.zeros(0)
    nx = xi.size
    nvar = nx + m
    c = np.concatenate([xc, np.full(m, UNPLACED_PENALTY)])

    # one placement per request: rows 0..m-1
    rows = [xi, np.arange(m)]
    cols = [np.arange(nx), nx + np.arange(m)]
    vals = [np.ones(nx), np.ones(m)]
    a_eq = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(m, nvar)).tocsr()
    constraints = [LinearConstraint(a_eq, 1.0, 1.0)]

    used = np.unique(xj)
    if used.size:
        node_row = {int(j): k for k, j in enumerate(used)}
        rk = np.array([node_row[int(j)] for j in xj], dtype=np.int64)
        for demand, free in (
            (np.array([requests[int(i)].task.resources.cpu for i in xi]), snap.free_cpu + CPU_EPS),
            (np.array([float(requests[int(i)].task.resources.memory) for i in xi]),
             snap.free_mem.astype(np.float64)),
            (np.array([float(requests[int(i)].task.resources.gpu) for i in xi]),
             snap.free_gpu.astype(np.float64)),
        ):
            if not demand.any():
                continue
            a = coo_matrix((demand, (rk, np.arange(nx))), shape=(used.size, nvar)).tocsr()
            constraints.append(LinearConstraint(a, -np.inf, free[used]))

    t0 = time.perf_counter()
    res = milp(c, constraints=constraints, integrality=np.ones(nvar),
               bounds=Bounds(0, 1), options={"time_limit": time_limit_s, "disp": False})
    seconds = time.perf_counter() - t0
    nodes = np.full(m, -1, dtype=np.int64)
    if res.x is None:
        return MilpResult(nodes, float("nan"), "failed", seconds)
    x = res.x[:nx] > 0.5
    nodes[xi[x]] = xj[x]
    status = "optimal" if res.status == 0 else ("time_limit" if res.status == 1 else "failed")
    return MilpResult(nodes, float(xc[x].sum()), status, seconds)


def objective(requests: Sequence[PlacementRequest], nodes: np.ndarray,
              assigner: BatchAssigner) -> float:
    """Σ cost of the placed requests of an assignment (``nodes[i] = -1`` = unplaced)."""
    return float(sum(assigner.cost_of(req, int(j)) for req, j in zip(requests, nodes, strict=True)
                     if j >= 0))


__all__ = ["MilpResult", "UNPLACED_PENALTY", "objective", "solve"]
