"""The node-class batch assigner and the exact MILP.

Aspects: node classes group identical nodes, and a snapshot that has them is freed as
soon as it is dropped (no reference cycle left to the cyclic collector); the assigner never overcommits a node
(hypothesis property test); it agrees with the naive full rescan on the objective;
the MILP and the heuristic agree on tiny hand-checked instances, and the MILP beats
the greedy order where greedy is provably suboptimal; the class-cached predictor
equals the direct one.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from placement import Snapshot, default_framework, place
from placement.batch import (
    BatchAssigner,
    ClassCachedPredictor,
    NodeClasses,
    naive_assign,
    node_classes,
)
from placement.milp import objective, solve
from placement.predict import AnalyticPredictor
from tests.placement.placement_factories import GI, network, node, request, task


def test_node_classes_group_identical_nodes() -> None:
    nodes = [node("a/n1", 8), node("a/n2", 8, free=(1, GI, 0)), node("a/n3", 16),
             node("b/n4", 8)]
    cl = NodeClasses(Snapshot(nodes=nodes, network=network()))
    # n1 and n2 differ only in free capacity; n3 in capacity; n4 in site
    assert cl.count == 3
    assert cl.of[0] == cl.of[1] != cl.of[2]
    assert cl.of[3] not in (cl.of[0], cl.of[2])


def test_a_snapshot_with_node_classes_is_freed_when_dropped() -> None:
    # the reconciler builds a snapshot per inventory change: one kept alive until the
    # cyclic collector runs holds its nodes and n-sized arrays for that long
    snap = Snapshot(nodes=[node("a/n1", 8), node("a/n2", 16)], network=network())
    classes = node_classes(snap)
    assert node_classes(snap) is classes  # kept in the snapshot's memo
    place([request(task("t", cpu=1))], snap.copy())  # a placement on a copy sharing it
    ref = weakref.ref(snap)
    was = gc.isenabled()
    gc.disable()
    try:
        del snap
        assert ref() is None, "a reference cycle keeps the snapshot"
    finally:
        if was:
            gc.enable()


node_spec = st.tuples(st.sampled_from([1.0, 2.0, 4.0, 8.0]), st.sampled_from([1, 2, 4, 8]),
                      st.sampled_from([0, 1, 2]), st.sampled_from(["munich", "frankfurt"]),
                      st.sampled_from([0.5, 1.0, 2.0]))
task_spec = st.tuples(st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 5.0]),
                      st.sampled_from([1, 2, 3]), st.sampled_from([0, 0, 1]),
                      st.sampled_from([10.0, 100.0, 1000.0]))


@settings(max_examples=150, deadline=None)
@given(st.lists(node_spec, min_size=1, max_size=12), st.lists(task_spec, min_size=1, max_size=40),
       st.sampled_from(["size", "regret", "best"]))
def test_assigner_never_overcommits(nodes_in: list, tasks_in: list, order: str) -> None:
    nodes = [node(f"s/n{i}", cpu, mem * GI, gpu, loc=loc, speed=sp,
                  free=(cpu / 2, mem * GI, gpu) if i % 3 == 0 else None)
             for i, (cpu, mem, gpu, loc, sp) in enumerate(nodes_in)]
    reqs = [request(task(f"t{k}", cpu, mem * GI, gpu, work=w), key=f"r{k}")
            for k, (cpu, mem, gpu, w) in enumerate(tasks_in)]
    snap = Snapshot(nodes=nodes, network=network())
    free0 = (snap.free_cpu.copy(), snap.free_mem.copy(), snap.free_gpu.copy())
    assigner = BatchAssigner(snap.copy())
    chosen = assigner.assign(reqs, order)
    if order == "best":  # the better of the two orders by value
        v = assigner.value(reqs, chosen)
        for other in ("size", "regret"):
            assert v >= BatchAssigner(snap.copy()).value(
                reqs, BatchAssigner(snap.copy()).assign(reqs, other)) - 1e-9
    used_cpu, used_mem, used_gpu = np.zeros(len(nodes)), np.zeros(len(nodes)), np.zeros(len(nodes))
    for req, j in zip(reqs, chosen, strict=True):
        if j >= 0:
            r = req.task.resources
            used_cpu[j] += r.cpu
            used_mem[j] += r.memory
            used_gpu[j] += r.gpu
    assert (used_cpu <= free0[0] + 1e-6).all()
    assert (used_mem <= free0[1]).all()
    assert (used_gpu <= free0[2]).all()
    # and nothing left unplaced that fitted somewhere on its own in the end state
    rest = Snapshot(nodes=nodes, network=network())
    rest.free_cpu, rest.free_mem, rest.free_gpu = (free0[0] - used_cpu, free0[1] - used_mem,
                                                   free0[2] - used_gpu)
    for req, j in zip(reqs, chosen, strict=True):
        if j < 0:
            r = req.task.resources
            assert not ((rest.free_cpu + 1e-9 >= r.cpu) & (rest.free_mem >= r.memory)
                        & (rest.free_gpu >= r.gpu)).any()


def test_assigner_matches_naive_objective() -> None:
    rng = np.random.default_rng(3)
    nodes = [node(f"s/n{i}", float(rng.choice([4, 8, 16])), 32 * GI,
                  loc=str(rng.choice(["munich", "frankfurt", "camera-1"])),
                  speed=float(rng.choice([0.5, 1.0, 1.5])), max_w=float(rng.choice([100, 250])))
             for i in range(30)]
    reqs = [request(task(f"t{k}", float(rng.choice([1, 2])), GI, work=float(rng.choice([60, 600]))),
                    key=f"r{k}") for k in range(40)]
    snap = Snapshot(nodes=nodes, network=network())
    fast = BatchAssigner(snap.copy())
    a = fast.assign(reqs)
    b = naive_assign(reqs, snap.copy())
    assert (a >= 0).all() and (b >= 0).all()
    assert objective(reqs, a, fast) == objective(reqs, b, fast)


def test_milp_and_heuristic_agree_on_tiny_instances() -> None:
    # two nodes: a fast one with room for one task, a slow one with room for both
    nodes = [node("s/fast", 2, speed=2.0), node("s/slow", 4, speed=1.0)]
    reqs = [request(task("a", 2, GI, work=100.0), key="a"),
            request(task("b", 2, GI, work=100.0), key="b")]
    snap = Snapshot(nodes=nodes, network=network())
    h = BatchAssigner(snap.copy())
    greedy = h.assign(reqs)
    m = solve(reqs, BatchAssigner(snap.copy()))
    assert m.status == "optimal"
    # hand-checked: one task on each node (either way round) is optimal
    assert sorted(greedy.tolist()) == sorted(m.nodes.tolist()) == [0, 1]
    assert abs(objective(reqs, greedy, h) - m.objective) < 1e-9


def test_milp_beats_greedy_where_greedy_is_suboptimal() -> None:
    # Largest-first greedy puts the big task on the best node, which then cannot host the
    # two small ones; hand-checked optimum: big → slow node, both small → fast node.
    nodes = [node("s/fast", 4, speed=4.0), node("s/slow", 4, speed=1.0)]
    reqs = [request(task("big", 3, GI, work=10.0), key="big", energy=0, latency=0, data=0),
            request(task("s1", 2, GI, work=1000.0), key="s1", energy=0, latency=0, data=0),
            request(task("s2", 2, GI, work=1000.0), key="s2", energy=0, latency=0, data=0)]
    snap = Snapshot(nodes=nodes, network=network())
    h = BatchAssigner(snap.copy())
    greedy = h.assign(reqs)
    m = solve(reqs, BatchAssigner(snap.copy()))
    assert greedy.tolist() == [0, 1, 1]
    assert m.nodes.tolist() == [1, 0, 0]
    assert m.objective < objective(reqs, greedy, h)


def test_class_cached_predictor_equals_direct() -> None:
    nodes = [node(f"s/n{i}", 4 + 4 * (i % 3), speed=1.0 + 0.5 * (i % 2)) for i in range(12)]
    snap = Snapshot(nodes=nodes, network=network())
    t = task("t", 2, GI, work=500.0)
    direct, cached = AnalyticPredictor(), ClassCachedPredictor(AnalyticPredictor())
    rt = direct.runtime_s(t, snap)
    assert np.allclose(cached.runtime_s(t, snap), rt)
    assert np.allclose(cached.energy_j(t, snap, rt), direct.energy_j(t, snap, rt))
    fw = default_framework(cached)
    assert fw.predictor.version == "analytic-v1"


def test_quality_mode_places_as_the_milp_and_says_so() -> None:
    nodes = [node("s/fast", 4, speed=4.0), node("s/slow", 4, speed=1.0)]
    reqs = [request(task("big", 3, GI, work=10.0), key="big", energy=0, latency=0, data=0),
            request(task("s1", 2, GI, work=1000.0), key="s1", energy=0, latency=0, data=0),
            request(task("s2", 2, GI, work=1000.0), key="s2", energy=0, latency=0, data=0)]
    fast = place(reqs, Snapshot(nodes=nodes, network=network()))
    assert [o.decision.node for o in fast if o.decision] == ["s/fast", "s/slow", "s/slow"]
    fw = default_framework()
    fw.mode = "quality"
    quality = place(reqs, Snapshot(nodes=nodes, network=network()), fw)
    assert [o.decision.node for o in quality if o.decision] == ["s/slow", "s/fast", "s/fast"]
    assert all(any("exact MILP" in r for r in o.decision.reasons) for o in quality if o.decision)
    # too large a batch for the MILP: the greedy answer, no MILP note
    fw.quality_max_pairs = 2
    capped = place(reqs, Snapshot(nodes=nodes, network=network()), fw)
    assert [o.decision.node for o in capped if o.decision] == ["s/fast", "s/slow", "s/slow"]
    assert not any("exact MILP" in r for o in capped if o.decision for r in o.decision.reasons)
