"""The joint class walk (BatchAssigner._joint_walk): measured load beside GPU
fragmentation, the control plane's framework, bounded per node class together.

Aspects: on seeded random clusters with measured load on (measured utilisation per node,
some unknown, some stale, nodes of one class a little apart), runs released in between,
every request — the GPU ones too, so the learned workload has GPU task types and ``ΔF``
differs between nodes, which the walk's fragmentation half must bound right — goes to the
node the exhaustive evaluation of every fitting candidate picks, with the same ``keep``
best totals, and fewer nodes are evaluated (GPU requests take the capped evaluation, whose
cap of 1,024 never binds on these 10–40 nodes: exhaustive on both sides); the same with a
retry's nodes to avoid (``skip``), with measured load alone (no GPU), whole batches in
every order (``best`` restores capacity, which the per-node table must notice), two
load-like terms (their bounds summed), and the per-node table stays equal to one built
afresh. Hand-built cases: a class whose least-loaded member lacks memory while its next
member beats every other class, and the explanation of a choice when the walk prunes
every ``ΔF = 0`` node (the same text as the exhaustive evaluation's).
"""

from __future__ import annotations

import numpy as np
import pytest

from placement import Snapshot, default_framework
from placement.batch import BatchAssigner, _NodeTable
from placement.framework import Framework
from placement.plan import Planner
from placement.plugins.fragmentation import GpuFragmentation
from placement.plugins.load import NodeLoad, with_load
from tests.placement.placement_factories import GI, network, node, request, task
from tests.placement.test_fragmentation import U, _random_instance, _replay_side_by_side


def _with_load_measured(snap: Snapshot, seed: int) -> Snapshot:
    """``snap``'s nodes with measured utilisation: a few levels (so classes stay few),
    some nodes a little off their level (same class, different load), some unknown,
    some stale."""
    rng = np.random.default_rng(500 + seed)
    nodes = []
    for nd in snap.nodes:
        level = float(rng.choice([0.05, 0.3, 0.6, 0.9]))
        u: float | None = level
        if rng.uniform() < 0.3:
            u = None
        elif rng.uniform() < 0.3:
            u = level + float(rng.uniform(-0.004, 0.004))
        nodes.append(nd.model_copy(update={"utilisation": u,
                                           "metrics_stale": bool(rng.uniform() < 0.2)}))
    return Snapshot(nodes=nodes, network=snap.network, gpu_unit=snap.gpu_unit)


def _control_plane_framework(strand: float = 1.0) -> Framework:
    fw = with_load(default_framework())
    for p in fw.scores:
        if isinstance(p, GpuFragmentation):
            p.strand = strand
    return fw


def _sides(snap: Snapshot, keep: int, strand: float = 1.0) -> list[BatchAssigner]:
    """The product's setting (the walk, capped candidates for what it does not cover)
    and the exhaustive evaluation, on copies of ``snap``."""
    return [BatchAssigner(snap.copy(), _control_plane_framework(strand), keep=keep),
            BatchAssigner(snap.copy(), _control_plane_framework(strand), keep=keep,
                          prune_dynamic=False, dynamic_candidates=None)]


@pytest.mark.parametrize("unit", [1, U])
@pytest.mark.parametrize("keep", [1, 4])
@pytest.mark.parametrize("strand", [0.0, 1.0])
def test_joint_bound_places_as_the_exhaustive_evaluation(unit: int, keep: int,
                                                         strand: float) -> None:
    evaluated = {True: 0, False: 0}
    for seed in range(25):
        snap, reqs = _random_instance(seed, unit)
        sides = _sides(_with_load_measured(snap, seed), keep, strand)
        for side, n in zip((True, False),
                           _replay_side_by_side(sides, reqs, 6000 + seed, keep),
                           strict=True):
            evaluated[side] += n
    assert evaluated[True] < evaluated[False]


def test_joint_bound_with_nodes_to_avoid() -> None:
    """``choose(req, skip)`` (a retry avoiding nodes) picks as the exhaustive evaluation."""
    for seed in range(25):
        snap, reqs = _random_instance(seed, U)
        sides = _sides(_with_load_measured(snap, seed), 1)
        rng = np.random.default_rng(7000 + seed)
        for r in reqs:
            skip = rng.uniform(size=snap.n) < 0.3
            got = [a.choose(r, skip) for a in sides]
            assert got[0] == got[1], f"seed {seed}, request {r.key}: {got}"
            if got[0] >= 0:
                assert not skip[got[0]]
                for a in sides:
                    a.take(got[0], r)


def test_measured_load_alone_is_walked_exactly() -> None:
    """No GPU in the cluster: measured load is the only dynamic term, still walked per
    class, still the exhaustive choice."""
    rng = np.random.default_rng(3)
    nodes = []
    for i in range(60):
        cpu = float(rng.choice([4, 8, 16]))
        u = float(rng.choice([0.1, 0.5])) if rng.uniform() < 0.7 else None
        used = float(rng.uniform(0, 0.8))
        nodes.append(node(f"s{i % 3}/n{i}", cpu, 32 * GI,
                          free=(round(cpu * (1 - used), 1), int(32 * GI * (1 - used)), 0))
                     .model_copy(update={"utilisation": u}))
    snap = Snapshot(nodes=nodes, network=network())
    sides = _sides(snap, 4)
    for k in range(150):
        r = request(task(f"t{k % 5}", float(rng.choice([0.5, 1, 2])), GI), key=f"r{k}")
        got = [a.assign_one(r) for a in sides]
        assert got[0] == got[1], f"request {k}: {got}"
        dyn = [a.last_dynamic for a in sides]
        assert dyn[0] is not None and dyn[1] is not None
        assert [p.name for p in dyn[0].plugins] == [NodeLoad.name]
        assert np.allclose(np.sort(dyn[0].total)[:4], np.sort(dyn[1].total)[:4],
                           rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", ["size", "regret", "best"])
def test_joint_bound_same_batches(order: str) -> None:
    """Whole batches of requests come out as the exhaustive evaluation's, and the
    per-node table the walk kept equals one built afresh on the final state."""
    for seed in range(15):
        snap, reqs = _random_instance(seed, U)
        loaded = _with_load_measured(snap, seed)
        sides = _sides(loaded, 1)
        got = [a.assign(reqs, order) for a in sides]
        assert np.array_equal(got[0], got[1]), f"seed {seed}"
        a = sides[0]
        assert a.classes is not None
        plugin = next(p for p in a.framework.scores if isinstance(p, NodeLoad))
        table = a._node_table(plugin)
        fresh = _NodeTable(plugin, a.snap, a.classes, len(a.changed))
        assert np.array_equal(table.x, fresh.x)
        assert np.array_equal(table.low, fresh.low)
        assert np.array_equal(table.arg, fresh.arg)
        for c in range(a.classes.count):  # each class's members in order, ties by index
            assert np.array_equal(table.sv[c], fresh.sv[c])
            assert np.array_equal(table.sn[c], fresh.sn[c])


class _OtherLoad(NodeLoad):
    """A second load-like term (another name and floor): the walk's several-term path."""

    name = "OtherLoad"
    floor = 0.25


@pytest.mark.parametrize("keep", [1, 4])
def test_two_load_terms_sum_their_bounds(keep: int) -> None:
    """Two :class:`~placement.framework.NodeDelta` terms beside GPU fragmentation: the class
    bound is the sum of both terms' own bounds, and every request still goes to
    the exhaustive evaluation's node with the same ``keep`` best totals."""
    from dataclasses import replace

    for seed in range(20):
        snap, reqs = _random_instance(seed, U)
        loaded = _with_load_measured(snap, seed)
        sides = []
        for prune in (True, False):
            fw = _control_plane_framework()
            fw = replace(fw, scores=[*fw.scores, _OtherLoad()])
            sides.append(BatchAssigner(loaded.copy(), fw, keep=keep, prune_dynamic=prune,
                                       dynamic_candidates=None if not prune else 1024))
        _replay_side_by_side(sides, reqs, 8000 + seed, keep)
        dyn = sides[0].last_dynamic
        assert dyn is not None and {p.name for p in dyn.plugins} >= {NodeLoad.name, "OtherLoad"}


def _loaded_cpu_and_partly_used_gpu_nodes() -> Snapshot:
    """GPU-less nodes heavily loaded (``ΔF = 0`` there, never the choice at fragmentation
    weight 0.5) beside lightly loaded GPU nodes with part of their GPUs in use (``ΔF > 0``
    for a CPU-only request): the walk prunes every ``ΔF = 0`` node by load."""
    nodes = [node(f"s0/c{i}", 16, 64 * GI, free=(4.0, 16 * GI, 0))
             .model_copy(update={"utilisation": 0.9}) for i in range(4)]
    nodes += [node(f"s0/g{i}", 16, 64 * GI, 4 * U, free=(float(6 + i), 40 * GI, 2 * U + 300))
              .model_copy(update={"utilisation": 0.05}) for i in range(6)]
    return Snapshot(nodes=nodes, network=network(), gpu_unit=U)


def _pruned_and_exhaustive(snap: Snapshot, weight: float | None = None) -> list[Planner]:
    """Two planners of the control plane's framework on copies of ``snap``: the walk
    (pruned) and the exhaustive evaluation; ``weight``: the fragmentation term's, if not
    the default."""
    planners = []
    for prune in (True, False):
        fw = _control_plane_framework()
        if weight is not None:
            for plugin in fw.scores:
                if isinstance(plugin, GpuFragmentation):
                    plugin.weight = weight
        p = Planner(snap.copy(), fw)
        p.assigner.prune_dynamic = prune
        if not prune:
            p.assigner.dynamic_candidates = None
        planners.append(p)
    return planners


def test_walk_explains_fragmentation_as_the_exhaustive_evaluation() -> None:
    """When the walk prunes every node at ``ΔF = 0``, the planner's explanation still
    measures growth from 0 (the exhaustive evaluation's minimum): the same reasons,
    runners-up and scores as the exhaustive path, request after request."""
    snap = _loaded_cpu_and_partly_used_gpu_nodes()
    # at weight 0.5 the GPU-less nodes' load outweighs the fragmentation a GPU node takes
    # on, so no ΔF = 0 node is the choice; at 1 (the default) the load term, which cannot
    # exceed its weight, no longer does and the request goes to a loaded GPU-less node
    planners = _pruned_and_exhaustive(snap, weight=0.5)
    mix = [request(task(f"w{k}", 4.0, 8 * GI, U // 2 if k % 2 else U), key=f"w{k}")
           for k in range(6)]  # a workload with GPU tasks: fragmentation matters
    for p in planners:
        for m in mix:
            p.assigner.observe(m)
    pruned = 0
    for k in range(4):
        r = request(task(f"c{k}", 2.0, 4 * GI), key=f"c{k}")
        outs = [p.place_one(r) for p in planners]
        got = [o.decision for o in outs]
        assert got[0].node == got[1].node, f"request {k}"
        assert got[0].reasons == got[1].reasons, f"request {k}"
        assert got[0].alternatives == got[1].alternatives, f"request {k}"
        assert got[0].scores == got[1].scores, f"request {k}"
        assert any("GPU fragmentation grows" in x for x in got[0].reasons), got[0].reasons
        dyn = [p.assigner.last_dynamic for p in planners]
        assert dyn[0] is not None and dyn[1] is not None
        pruned += dyn[1].idx.size - dyn[0].idx.size
    assert pruned > 0  # the walk did leave out nodes at ΔF = 0


@pytest.mark.parametrize("keep", [1, 4])
def test_least_loaded_member_without_room(keep: int) -> None:
    """A class whose least-loaded member lacks memory (so its least value is only a
    bound) while its next member beats every other class: the walk scans it, and picks
    as the exhaustive evaluation with the same ``keep`` best totals."""
    nodes = [
        node("s0/a", 16, 64 * GI, free=(15.0, 0, 0)),  # least loaded, no memory
        node("s0/b", 16, 64 * GI, free=(14.0, 32 * GI, 0)),
        node("s0/c", 16, 64 * GI, free=(8.0, 32 * GI, 0)),
        node("s0/y", 16, 64 * GI, free=(15.0, 32 * GI, 0)),
        node("s0/z", 16, 64 * GI, free=(12.0, 32 * GI, 0)),
    ]
    util = [0.05, 0.05, 0.05, 0.3, 0.3]
    nodes = [nd.model_copy(update={"utilisation": u}) for nd, u in zip(nodes, util,
                                                                       strict=True)]
    snap = Snapshot(nodes=nodes, network=network())
    sides = _sides(snap, keep)
    r = request(task("t", 1.0, GI), key="r0")
    got = [a.choose(r) for a in sides]
    assert got[0] == got[1] == snap.ids.index("s0/b"), got
    dyn = [a.last_dynamic for a in sides]
    assert dyn[0] is not None and dyn[1] is not None
    assert np.allclose(np.sort(dyn[0].total)[:keep], np.sort(dyn[1].total)[:keep],
                       rtol=0, atol=1e-12)


class _BrokenLoad(NodeLoad):
    """A load-like term that breaks its contract: not finite on one node."""

    def node_delta(self, snap: Snapshot, idx: np.ndarray) -> np.ndarray:
        out = super().node_delta(snap, idx)
        return np.where(idx == 1, np.nan, out)


def test_node_table_refuses_values_that_are_not_finite() -> None:
    """The per-node table behind the class bound refuses a ``node_delta`` that is not
    finite, naming the plugin and the node, rather than sorting a NaN and pruning."""
    snap, _ = _random_instance(0, U)
    a = BatchAssigner(snap.copy(), _control_plane_framework())
    assert a.classes is not None
    with pytest.raises(ValueError, match=rf"_BrokenLoad\.node_delta is nan at node '{snap.ids[1]}'"):
        _NodeTable(_BrokenLoad(), a.snap, a.classes, 0)


def test_no_node_known_at_zero_growth_takes_the_capped_evaluation() -> None:
    """Every node has a free GPU and the request grows fragmentation on each: no node of
    the band is known at ``ΔF = 0``, so the walk leaves the request to the capped
    evaluation — at most ``dynamic_candidates`` nodes (here 2), not every fitting one —
    which, with the cap not binding, still picks as the exhaustive evaluation."""
    snap = Snapshot(nodes=_loaded_cpu_and_partly_used_gpu_nodes().nodes[4:], network=network(),
                    gpu_unit=U)
    mix = [request(task(f"w{k}", 4.0, 8 * GI, U // 2 if k % 2 else U), key=f"w{k}")
           for k in range(6)]
    sides = [*_sides(snap, 1), BatchAssigner(snap.copy(), _control_plane_framework(), keep=1,
                                             dynamic_candidates=2)]
    for a in sides:
        for m in mix:
            a.observe(m)
    r = request(task("c", 2.0, 4 * GI), key="c")
    got = [a.choose(r) for a in sides]
    assert got[0] == got[1]
    dyn = [a.last_dynamic for a in sides]
    assert dyn[0] is not None and dyn[1] is not None and dyn[2] is not None
    raw = dyn[1].raw[GpuFragmentation.name]
    assert (raw > 0).all()  # no node at ΔF = 0
    assert dyn[0].idx.size == dyn[1].idx.size == snap.n
    assert dyn[2].idx.size <= 2


def test_joint_bound_more_seeds_near_the_cut() -> None:
    """More seeded clusters at ``keep`` 4 with every request replayed: among them (seed
    113) a node whose fragmentation-bounded total lies within 1e-3 of the ``keep``-th
    best and still ranks — a growth-bound cut with any slack prunes it."""
    for seed in range(100, 125):
        snap, reqs = _random_instance(seed, U)
        _replay_side_by_side(_sides(_with_load_measured(snap, seed), 4), reqs, 6000 + seed, 4)


def test_tied_members_of_an_idle_class_explained_as_the_exhaustive_evaluation() -> None:
    """An idle site of identical nodes (most of a class at the same load, as the control
    plane's sim sites): of each run of tied members without a free GPU the walk evaluates
    only the ``keep`` first by (free cpu, node index) (``_ranking_ties``), and still
    places, explains and lists runners-up as the exhaustive evaluation, whose candidates
    are every tied node. Free cpu differs within a run (the measured load, not the
    accounting, sets the value), and a few GPU nodes sit in the band."""
    rng = np.random.default_rng(11)
    nodes = []
    for i in range(120):
        gpu = 1 if i % 30 == 0 else 0
        free = float(rng.choice([8.0, 10.0, 12.0, 16.0]))
        nodes.append(node(f"s{i % 2}/n{i}", 16, 64 * GI, gpu, gpu_w=0.0,
                          free=(free, 64 * GI, gpu))
                     .model_copy(update={"utilisation": 0.5}))
    snap = Snapshot(nodes=nodes, network=network())
    planners = _pruned_and_exhaustive(snap)
    evaluated = [0, 0]
    for k in range(150):
        r = request(task(f"t{k % 3}", float(rng.choice([0.5, 1.0, 2.0])), GI), key=f"r{k}")
        got = [p.place_one(r).decision for p in planners]
        assert got[0] is not None and got[1] is not None
        assert got[0].node == got[1].node, f"request {k}"
        assert got[0].reasons == got[1].reasons, f"request {k}"
        assert got[0].alternatives == got[1].alternatives, f"request {k}"
        assert got[0].scores == got[1].scores, f"request {k}"
        for i, p in enumerate(planners):
            dyn = p.assigner.last_dynamic
            assert dyn is not None
            evaluated[i] += dyn.idx.size
    assert evaluated[0] * 4 < evaluated[1]
