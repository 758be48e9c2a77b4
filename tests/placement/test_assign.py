"""The batch assigner: decision fields, assume-and-deduct, unschedulable reasons,
objective weights steering the choice, ordering, and the never-overcommit property."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_factories import GI, node, request, snapshot, task

from continuum.model import PlacementDecision
from placement import DataSource, place
from placement.plugins import constraints, resources
from placement.plugins.fragmentation import DEFAULT_WEIGHT


def test_decision_fields_filled():
    nodes = [node("a/n1", cpu=8), node("a/n2", cpu=8, loc="frankfurt"),
             node("b/n3", cpu=4, tier="edge"), node("b/n4", cpu=2)]
    snap = snapshot(nodes)
    (out,) = place([request(task(cpu=4, work=400, slo=("munich", 20.0)),
                            sources=[DataSource(10**9, ["munich"])])], snap)
    d = out.decision
    assert isinstance(d, PlacementDecision) and out.reason == ""
    assert d.node in {"a/n1", "b/n3"} and d.site in {"a", "b"}
    assert set(d.scores) == {"CompletionTime", "SloLatency", "Energy", "DataLocality",
                             "GpuFragmentation"}
    assert all(0 <= v <= 100 for v in d.scores.values())
    assert d.weights == {**dict.fromkeys(d.scores, 1.0), "GpuFragmentation": DEFAULT_WEIGHT}
    assert 0 < d.total <= 100
    assert d.feasible_nodes == 3 and d.filtered == {resources.REASON_CPU: 1}
    assert d.model_version == "analytic-v1"
    assert len(d.alternatives) == 2 and all({"node", "total"} == set(a) for a in d.alternatives)
    assert d.alternatives[0]["total"] >= d.alternatives[1]["total"]
    p = d.predicted
    assert p.completion_s == p.queue_wait_s + p.transfer_s + p.runtime_s
    assert p.latency_ms == 0.5 and p.bytes_moved == 10**9 and p.energy_j > 0
    assert any("RTT 0.5 ms to munich within SLO 20 ms" == r for r in d.reasons)
    assert any("predicted energy" in r for r in d.reasons)
    assert d.reasons[-1] == "3 of 4 nodes feasible"


def test_capacity_deducted_within_a_cycle():
    snap = snapshot([node("a/n1", cpu=8), node("a/n2", cpu=8)])
    a, b = place([request(task("a", cpu=6), "r1"), request(task("b", cpu=6), "r2")], snap)
    assert {a.decision.node, b.decision.node} == {"a/n1", "a/n2"}
    assert sorted(snap.free_cpu.tolist()) == [2.0, 2.0]


def test_second_request_unschedulable_when_capacity_used():
    snap = snapshot([node("a/n1", cpu=8)])
    a, b = place([request(task("a", cpu=6), "r1"), request(task("b", cpu=6), "r2")], snap)
    assert a.decision is not None and b.decision is None
    assert b.reason.startswith("no node fits: 0/1 nodes available: 1 nodes lack cpu "
                               "(need 6, largest free 2)")


def test_largest_request_placed_first():
    # the small task would take n1 first in input order and strand the big one
    snap = snapshot([node("a/n1", cpu=8), node("a/n2", cpu=2, loc="frankfurt")])
    small, big = place([request(task("s", cpu=2), "small"), request(task("b", cpu=8), "big")],
                       snap)
    assert big.decision.node == "a/n1" and small.decision.node == "a/n2"
    assert [small.key, big.key] == ["small", "big"]  # outcomes in input order


def test_unschedulable_reason_counts_and_fix():
    nodes = [node(f"a/c{i}", cpu=32) for i in range(12)]
    nodes += [node(f"b/e{i}", cpu=128, tier="edge") for i in range(3)]
    (out,) = place([request(task(cpu=64, tiers=["cloud"]))], snapshot(nodes))
    assert out.decision is None
    assert "0/15 nodes available" in out.reason
    assert "12 nodes lack cpu (need 64, largest free 32)" in out.reason
    assert "3 wrong tier (allowed: cloud; these are edge)" in out.reason
    assert "To fix:" in out.reason and "widen constraints.tiers" in out.reason


def test_no_nodes():
    (out,) = place([request(task())], snapshot([]))
    assert out.decision is None and "no nodes" in out.reason


def test_filtered_counts_attribute_each_node_once():
    nodes = [node("a/n1", ready=False, cpu=1), node("a/n2", tier="edge", cpu=1), node("a/n3")]
    (out,) = place([request(task(cpu=4, tiers=["cloud"]))], snapshot(nodes))
    assert out.decision.node == "a/n3"
    assert out.decision.filtered == {constraints.REASON_NOT_READY: 1, constraints.REASON_TIER: 1}


NODES_FAST_VS_FRUGAL = [
    # fast and hungry: 32 cores at speed 2, 600 W max
    ("a/fast", dict(cpu=32, speed=2.0, idle=150, max_w=600)),
    # slow and frugal: 4-core board at speed 0.5, 2..8 W
    ("a/pi", dict(cpu=4, speed=0.5, idle=2, max_w=8, tier="edge")),
]


def test_objective_weights_change_the_choice():
    nodes = [node(nid, **kw) for nid, kw in NODES_FAST_VS_FRUGAL]
    t = task(cpu=4, work=4000)
    (energy_only,) = place([request(t, time=0, latency=0, energy=1, data=0)], snapshot(nodes))
    (time_only,) = place([request(t, time=1, latency=0, energy=0, data=0)], snapshot(nodes))
    assert energy_only.decision.node == "a/pi"
    assert time_only.decision.node == "a/fast"
    assert energy_only.decision.weights["CompletionTime"] == 0
    # energy: pi 2000 s × 8 W = 16 kJ; fast 500 s × 600 × 4/32 = 37.5 kJ
    assert energy_only.decision.predicted.energy_j == 16_000
    assert any(r.startswith("lowest predicted energy 16 kJ vs 37.5 kJ") for r in
               energy_only.decision.reasons)


def test_data_weight_prefers_cached_node():
    nodes = [node("a/n1"), node("a/n2")]
    src = [DataSource(50 * 10**9, ["frankfurt"], nodes=["a/n2"])]
    (out,) = place([request(task(), sources=src, time=0, energy=0, latency=0)], snapshot(nodes))
    assert out.decision.node == "a/n2" and out.decision.predicted.bytes_moved == 0
    assert "inputs already on the node (0 bytes moved)" in out.decision.reasons


resources_st = st.tuples(
    st.sampled_from([0.5, 1, 2, 3, 4, 8]),
    st.sampled_from([GI // 2, GI, 4 * GI, 16 * GI]),
    st.integers(0, 2),
)


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.lists(
        st.tuples(st.sampled_from([1, 2, 4, 8, 16]), st.sampled_from([2, 8, 32]),
                  st.integers(0, 4), st.sampled_from(["munich", "frankfurt"])),
        min_size=1, max_size=8),
    reqs=st.lists(resources_st, min_size=1, max_size=25),
)
def test_place_never_overcommits(nodes, reqs):
    ns = [node(f"s/n{i}", cpu=c, mem=m * GI, gpu=g, loc=loc)
          for i, (c, m, g, loc) in enumerate(nodes)]
    snap = snapshot(ns)
    rs = [request(task(f"t{j}", cpu=c, mem=m, gpu=g), f"r{j}")
          for j, (c, m, g) in enumerate(reqs)]
    outs = place(rs, snap)
    used = {nd.id: np.zeros(3) for nd in ns}
    for r, o in zip(rs, outs, strict=True):
        assert o.key == r.key
        if o.decision is None:
            assert o.reason.startswith("no node fits")
            continue
        res = r.task.resources
        used[o.decision.node] += (res.cpu, res.memory, res.gpu)
    for nd in ns:
        cap = nd.allocatable
        assert used[nd.id][0] <= cap.cpu + 1e-9
        assert used[nd.id][1] <= cap.memory
        assert used[nd.id][2] <= cap.gpu
