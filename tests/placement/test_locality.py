"""The data term as WAN bytes (issue 16 item 5a): what crosses the WAN, and the weight
moving a task to where its input lives — which the transfer-time measure did not."""

import numpy as np
import pytest
from placement_factories import GI, node, request, snapshot, task

from placement import DataSource, StaticNetwork, plan
from placement.batch import BatchAssigner
from placement.framework import default_framework
from placement.plugins import locality
from placement.predict import AnalyticPredictor, CycleState, predictions, wan_bytes


def test_wan_bytes_are_zero_at_a_replica_location_and_on_a_caching_node():
    nodes = [node("a/mu", loc="munich"), node("a/mu2", loc="munich"),
             node("a/fr", loc="frankfurt"), node("b/cam", loc="camera-1")]
    snap = snapshot(nodes)
    srcs = [DataSource(10**9, ["munich"]), DataSource(10**8, [], nodes=["a/fr"])]
    assert wan_bytes(srcs, snap).tolist() == [10**8, 10**8, 10**9, 11 * 10**8]
    # a LAN copy moves bytes but none over the WAN; the prediction carries both
    p = predictions(request(task(), sources=srcs), snap, CycleState(AnalyticPredictor()))
    assert p.bytes_moved.tolist() == [11 * 10**8] * 2 + [10**9, 11 * 10**8]
    assert p.wan_bytes.tolist() == [10**8, 10**8, 10**9, 11 * 10**8]
    assert wan_bytes([DataSource(10**9, [])], snap).tolist() == [0, 0, 0, 0]


def test_wan_measure_scores_gib_over_the_wan_and_a_hundredth_for_lan_copies():
    nodes = [node("a/mu", loc="munich"), node("a/mu2", loc="munich"),
             node("a/fr", loc="frankfurt")]
    snap = snapshot(nodes)
    src = [DataSource(2 * GI, ["munich"], nodes=["a/mu"])]
    raw = locality.DataLocality("wan_bytes").score(
        request(task(), sources=src), snap, CycleState(AnalyticPredictor()), snap.ready)
    assert raw.tolist() == pytest.approx([0.0, 2 * locality.LAN_WEIGHT, 2.0])
    with pytest.raises(ValueError, match="cost"):
        locality.DataLocality("seconds")  # type: ignore[arg-type]


def _hpc_and_lake() -> tuple[list, StaticNetwork]:
    """A fast HPC node and a slower node in the data lake's location, joined by a
    10 Gbit/s research link (as scenario A's cloud↔HPC): copying 20 GiB over it takes
    17 s, next to a runtime of hours."""
    net = StaticNetwork().add("lake", "hpc", 10.0, 10e9)
    nodes = [node("h/fast", 32, 128 * GI, loc="hpc", speed=1.3),
             node("c/slow", 32, 128 * GI, loc="lake", speed=1.1)]
    return nodes, net


@pytest.mark.parametrize("weight", [1.0, 2.0])
def test_the_data_weight_moves_a_task_to_its_inputs_site(weight):
    nodes, net = _hpc_and_lake()
    src = [DataSource(20 * GI, ["lake"])]
    t = task(cpu=8, mem=8 * GI, work=20000.0)
    kw = dict(time=1, latency=0, energy=0)
    (off,) = plan([request(t, sources=src, data=0, **kw)], snapshot(nodes, net))
    (on,) = plan([request(t, sources=src, data=weight, **kw)], snapshot(nodes, net))
    assert off.decision is not None and on.decision is not None
    assert off.decision.node == "h/fast"  # faster, and time is all that counts
    assert on.decision.node == "c/slow" and on.decision.predicted.bytes_moved == 20 * GI
    # the transfer-time measure saw 17 s next to a 1,900 s runtime: it stayed on HPC
    old = default_framework()
    old.scores[[p.name for p in old.scores].index(locality.NAME)] = locality.DataLocality()
    chosen = BatchAssigner(snapshot(nodes, net), old).assign(
        [request(t, sources=src, data=weight, **kw)])
    assert chosen.tolist() == [0]


def test_the_data_term_is_exact_per_node_class_in_the_assigner():
    """Node classes include the location, so the assigner's class costs see the same
    WAN bytes as the per-node evaluation: both place every request alike."""
    nodes, net = _hpc_and_lake()
    nodes = nodes + [node("c/slow2", 32, 128 * GI, loc="lake", speed=1.1)]
    reqs = [request(task(f"t{i}", 8, 8 * GI, work=20000.0), f"r{i}",
                    sources=[DataSource((i + 1) * GI, ["lake"])], data=1.0)
            for i in range(6)]
    out = plan(reqs, snapshot(nodes, net))
    got = np.array([o.decision.node if o.decision else "" for o in out])
    assert set(got.tolist()) <= {"c/slow", "c/slow2"}
