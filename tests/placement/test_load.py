"""NodeLoad (placement/plugins/load.py).

Aspects, table-driven: the utilisation placement believes per node — measured, stale
(penalised), unknown (accounting), and measured but below what Continuum itself has
assumed on the node since (placements of this batch), and capacity the accounting cannot
bound (free or allocatable infinite, allocatable 0) gives a finite value in 0..MAX_LOAD;
and the herd case: one batch of one-core tasks on two lightly loaded nodes spreads
across both instead of piling onto the one measured least busy.
"""

from __future__ import annotations

import numpy as np
import pytest

from continuum.model import Resources
from placement import Snapshot, default_framework, place
from placement.plugins.load import MAX_LOAD, STALE_PENALTY, effective_load, with_load
from tests.placement.placement_factories import GI, network, node, request, task


def loaded(nid: str, cpu: float, utilisation: float | None, stale: bool = False):  # type: ignore[no-untyped-def]
    return node(nid, cpu).model_copy(update={"utilisation": utilisation,
                                             "metrics_stale": stale})


# (case, cpu, measured utilisation, stale, cores assumed in this batch, expected load)
CASES = [
    ("measured", 8, 0.30, False, 0, 0.30),
    ("stale measured is penalised", 8, 0.30, True, 0, 0.30 + STALE_PENALTY * 0.70),
    ("unknown: accounting", 8, None, False, 2, 0.25),
    ("unknown, nothing assumed", 8, None, False, 0, 0.0),
    ("measured plus this batch's placements", 8, 0.30, False, 2, 0.30 + 2 / 8),
    ("saturated is capped", 8, 0.90, False, 4, MAX_LOAD),
]


@pytest.mark.parametrize(("case", "cpu", "u", "stale", "assumed", "want"), CASES,
                         ids=[c[0] for c in CASES])
def test_effective_load(case: str, cpu: float, u: float | None, stale: bool, assumed: float,
                        want: float) -> None:
    snap = Snapshot(nodes=[loaded("s/a", cpu, u, stale)], network=network())
    if assumed:
        snap.assume(0, Resources(cpu=assumed, memory=GI))
    assert effective_load(snap)[0] == pytest.approx(want)


def test_measured_load_never_below_the_accounted_share() -> None:
    """A node measured idle but with work Continuum placed earlier (not yet running)."""
    nd = loaded("s/a", 8, 0.05).model_copy(update={"free": Resources(cpu=2, memory=GI)})
    snap = Snapshot(nodes=[nd], network=network())
    assert effective_load(snap)[0] == pytest.approx(0.75)


@pytest.mark.parametrize(("free", "alloc"), [(np.inf, 8.0), (np.inf, np.inf), (8.0, 0.0)],
                         ids=["free inf", "free and allocatable inf", "allocatable 0"])
@pytest.mark.parametrize("u", [None, 0.4], ids=["unknown", "measured"])
def test_unbounded_accounting_is_finite(free: float, alloc: float, u: float | None) -> None:
    snap = Snapshot(nodes=[loaded("s/a", 8, u)], network=network())
    snap.free_cpu[:] = free  # e.g. the class representatives of placement.batch
    snap.alloc_cpu[:] = alloc
    got = effective_load(snap)
    assert np.isfinite(got).all() and 0.0 <= got[0] <= MAX_LOAD
    assert got[0] == pytest.approx(0.0 if u is None else u)


def test_a_batch_spreads_instead_of_herding_onto_the_least_loaded_node() -> None:
    nodes = [loaded("s/a", 8, 0.30), loaded("s/b", 8, 0.35)]
    snap = Snapshot(nodes=nodes, network=network())
    fw = with_load(default_framework())
    reqs = [request(task(f"t{i}", 1, GI, work=60.0)) for i in range(8)]
    chosen = [o.decision.node for o in place(reqs, snap, fw) if o.decision]
    assert len(chosen) == 8
    assert sorted(chosen.count(n) for n in ("s/a", "s/b")) == [4, 4]


@pytest.mark.parametrize("mode", ["fast", "quality"])
def test_measured_load_splits_node_classes(mode: str) -> None:
    """Two nodes equal but for their measured load: the idle one wins in the batch and
    MILP (quality) paths too — the busy one must not be scored with the idle one's load
    because they shared a node class."""
    from dataclasses import replace

    busy, idle = loaded("s/busy", 8, 0.90), loaded("s/idle", 8, 0.0)
    fw = replace(with_load(default_framework()), mode=mode)
    for nodes in ([busy, idle], [idle, busy]):  # whichever is the class's first member
        [out] = place([request(task("t", cpu=1))], Snapshot(nodes=nodes, network=network()), fw)
        assert out.decision is not None and out.decision.node == "s/idle", out
