"""SloLatency: SLO feasibility filter and RTT score; target resolution; no-SLO neutrality."""

import pytest
from placement_factories import node, request, snapshot, task

from placement.framework import normalize
from placement.plugins import latency
from placement.predict import AnalyticPredictor, CycleState

NODES = [node("a/mu", loc="munich"), node("a/fr", loc="frankfurt"), node("a/cam", loc="camera-1")]


@pytest.mark.parametrize(
    ("target", "slo_ms", "feasible"),
    [
        ("camera-1", 20.0, [True, False, True]),     # mu 2 ms, fr unknown 50 ms, cam local 0.5
        ("camera-1", 1.0, [False, False, True]),
        ("camera-1", 60.0, [True, True, True]),
        ("munich", 5.0, [True, False, True]),        # fr 6 ms > 5, cam 2 ms
        ("a/fr", 10.0, [True, True, False]),         # a node id resolves to its location
    ],
)
def test_filter(target, slo_ms, feasible):
    result = latency.SloLatency().filter(
        request(task(slo=(target, slo_ms))), snapshot(NODES), CycleState(AnalyticPredictor()))
    assert result.mask.tolist() == feasible
    assert [r.reason for r in result.rejections] == (
        [] if all(feasible) else [latency.REASON_SLO])


def test_no_slo_all_feasible_and_neutral():
    plugin = latency.SloLatency()
    snap = snapshot(NODES)
    state = CycleState(AnalyticPredictor())
    req = request(task())
    assert plugin.filter(req, snap, state).mask.all()
    raw = plugin.score(req, snap, state, snap.ready)
    assert normalize(raw, plugin.lower_is_better, plugin.floor).tolist() == [100.0] * 3


def test_score_prefers_lower_rtt():
    plugin = latency.SloLatency()
    snap = snapshot(NODES)
    state = CycleState(AnalyticPredictor())
    raw = plugin.score(request(task(slo=("camera-1", 100))), snap, state, snap.ready)
    assert raw.tolist() == [2.0, 50.0, 0.5]
    s = normalize(raw, True, plugin.floor)
    assert s[2] == 100.0 and s[0] > s[1]
