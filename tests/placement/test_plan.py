"""The one placement entry point, placement.plan: the node-class assigner's placements,
explained from its class tables (the totals are the objective the MILP and the bench
score), a cached input's node exact, and measured load re-evaluated within a batch."""

import numpy as np
import pytest
from placement_factories import GI, node, request, snapshot, task

from placement import DataSource, Planner, default_framework, place, plan
from placement.batch import BatchAssigner
from placement.plugins.load import with_load


def _mixed_nodes():  # type: ignore[no-untyped-def]
    return [node(f"s{k % 3}/n{k}", cpu=4 + 4 * (k % 3), loc=("munich", "frankfurt",
                                                           "camera-1")[k % 3],
                 speed=1.0 + 0.5 * (k % 2), idle=40 + 10 * (k % 4))
            for k in range(12)]


def _requests():  # type: ignore[no-untyped-def]
    return [request(task(f"t{i}", cpu=1 + i % 3, mem=GI, work=100.0 * (1 + i % 5),
                         slo=("munich", 20.0) if i % 4 == 0 else None), f"r{i}",
                    sources=[DataSource(10**8, ["frankfurt"])] if i % 3 == 0 else None,
                    energy=float(i % 2))
            for i in range(20)]


@pytest.mark.parametrize("order", ["size", "regret", "best"])
@pytest.mark.parametrize("tight", [False, True])
def test_plan_places_as_the_assigner_the_bench_times(order: str, tight: bool):
    """plan (the reconciler's and preview's path) and BatchAssigner.assign (the MILP's
    and the bench's) choose the same node for every request of a batch, also when
    capacity runs out (``tight``: half the nodes, some requests stay unplaced)."""
    nodes, reqs = _mixed_nodes()[:4 if tight else 12], _requests()
    fw = with_load(default_framework())
    outs = plan(reqs, snapshot(nodes), fw, order=order)
    snap = snapshot(nodes)
    chosen = BatchAssigner(snap, fw).assign(reqs, order)
    assert [o.decision.node if o.decision else None for o in outs] == [
        snap.ids[int(j)] if j >= 0 else None for j in chosen]
    assert (None in [o.decision for o in outs]) == tight
    if order == "size":
        assert [o.decision for o in place(reqs, snapshot(nodes), fw)] == [
            o.decision for o in outs]


def test_the_decision_total_is_the_shared_objective():
    nodes, reqs = _mixed_nodes(), _requests()
    snap = snapshot(nodes)
    planner = Planner(snap, default_framework(), reqs)
    for r in reqs:
        before = BatchAssigner(snap.copy(), default_framework())
        d = planner.place_one(r).decision
        assert d is not None
        cost = before.cost_of(r, snap.index[d.node])
        assert abs(d.total - round(100 * (1 - cost), 2)) < 1e-9
        assert d.reasons[-1].endswith(f"of {snap.n} nodes feasible")
        alts = [a["total"] for a in d.alternatives]
        assert alts == sorted(alts, reverse=True) and len(alts) <= 3
        assert d.node not in {a["node"] for a in d.alternatives}
        assert all(t <= d.total + 1e-9 for t in alts)


def test_without_explanation_the_same_node_and_predictions():
    nodes, reqs = _mixed_nodes(), _requests()
    full = plan(reqs, snapshot(nodes))
    bare = plan(reqs, snapshot(nodes), explain=False)
    for f, b in zip(full, bare, strict=True):
        assert f.decision is not None and b.decision is not None
        assert (b.decision.node, b.decision.predicted, b.decision.total) == (
            f.decision.node, f.decision.predicted, f.decision.total)
        assert b.decision.reasons == [] and b.decision.alternatives == []


def test_a_node_holding_a_cached_input_is_its_own_class():
    """Two identical nodes, the input cached on the second: it moves no bytes there,
    which a class represented by the first node would not see."""
    snap = snapshot([node("a/n1"), node("a/n2")])
    src = DataSource(10**9, ["frankfurt"], nodes=["a/n2"])
    (out,) = plan([request(task(work=10.0), sources=[src])], snap)
    assert out.decision is not None and out.decision.node == "a/n2"
    assert out.decision.predicted.bytes_moved == 0
    assert "inputs already on the node (0 bytes moved)" in out.decision.reasons


def test_measured_load_is_reevaluated_within_a_batch_by_the_assigner_too():
    """NodeLoad reads free capacity, so the assigner re-scores it per request: the
    MILP's and the bench's path spreads a batch as the reconciler's does."""
    nodes = [node("s/a", 8).model_copy(update={"utilisation": 0.30}),
             node("s/b", 8).model_copy(update={"utilisation": 0.35})]
    snap = snapshot(nodes)
    reqs = [request(task(f"t{i}", 1, GI, work=60.0), f"r{i}") for i in range(8)]
    chosen = BatchAssigner(snap, with_load(default_framework())).assign(reqs)
    assert sorted(np.bincount(chosen, minlength=2).tolist()) == [4, 4]


def test_filter_counts_kept_per_shape_match_a_full_pass_of_the_filters():
    """The explanation's filter counts (kept per static key and request shape, refreshed
    on the nodes placements changed) equal a pass of every filter over the snapshot as it
    stands, decision after decision, until capacity runs out (SLO rejections and cpu
    shortage on the same nodes: attributed to the filter first in plugin order)."""
    nodes, reqs = _mixed_nodes()[:6], _requests() * 3
    snap = snapshot(nodes)
    fw = default_framework()
    planner = Planner(snap, fw, reqs)
    full = 0
    for r in reqs:
        want = fw.run_filters(r, snap, fw.new_state())
        d = planner.place_one(r).decision
        if d is None:
            continue
        assert d.filtered == want.filtered
        assert d.feasible_nodes == int(want.mask.sum())
        full += any(k == "nodes lack cpu" for k in want.filtered)
    assert full  # capacity did run out on some nodes
