"""Analytic predictors and the energy, completion and locality plugins on hand-computed numbers."""

import numpy as np
import pytest
from placement_factories import GI, node, request, snapshot, task

from placement import DataSource
from placement.plugins import completion, energy, locality
from placement.predict import (
    DEFAULT_WORK_CORE_S,
    AnalyticPredictor,
    CycleState,
    energy_j,
    predictions,
    runtime_s,
    transfer_time_s,
)


@pytest.mark.parametrize(
    ("work", "cpu", "speed", "cap", "expected"),
    [
        (100.0, 4, 1.0, 8, 25.0),
        (100.0, 4, 2.0, 8, 12.5),
        (100.0, 16, 1.0, 8, 12.5),   # request above capacity: only 8 cores help
        (60.0, 1, 0.5, 4, 120.0),
    ],
)
def test_runtime(work, cpu, speed, cap, expected):
    got = runtime_s(work, cpu, np.array([speed]), np.array([float(cap)]))
    assert got[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("runtime", "cpu", "cap", "idle", "max_w", "gpu", "gpu_w", "expected"),
    [
        # 100 s × (50·0.5 + 150·0.5) = 100 × 100 = 10 000 J
        (100.0, 4, 8, 50.0, 200.0, 0, 0.0, 10_000.0),
        # 10 s × (2·1 + 8·1) = 100 J: whole-node task pays max watts
        (10.0, 4, 4, 2.0, 10.0, 0, 0.0, 100.0),
        # 20 s × (100·0.25 + 300·0.25 + 2·250) = 20 × 600 = 12 000 J
        (20.0, 16, 64, 100.0, 400.0, 2, 250.0, 12_000.0),
    ],
)
def test_energy_formula(runtime, cpu, cap, idle, max_w, gpu, gpu_w, expected):
    got = energy_j(np.array([runtime]), cpu, np.array([float(cap)]), np.array([idle]),
                   np.array([max_w]), gpu, np.array([gpu_w]))
    assert got[0] == pytest.approx(expected)


def test_energy_plugin_end_to_end():
    # work 400 core-s, 4 cpu on 8-core 1.0-speed node: 100 s; 200 W max × 4/8 = 100 W → 10 kJ
    # 4-core 2 W/10 W pi: 100 s × 10 W = 1 kJ
    snap = snapshot([node("a/big", cpu=8, idle=50, max_w=200),
                     node("a/pi", cpu=4, idle=2, max_w=10)])
    raw = energy.Energy().score(request(task(cpu=4, work=400)), snap,
                                CycleState(AnalyticPredictor()), snap.ready)
    assert raw.tolist() == pytest.approx([10_000.0, 1_000.0])


def test_transfer_formula():
    # 1 GB at 1 Gbit/s = 8 s, plus 6 ms RTT
    got = transfer_time_s(1e9, np.array([1e9]), np.array([6.0]))
    assert got[0] == pytest.approx(8.006)


@pytest.mark.parametrize(
    ("sources", "expected_s", "expected_bytes"),
    [
        ([], [0.0, 0.0, 0.0], [0, 0, 0]),
        # replica in munich: mu LAN 8e9/10e9 + 0.0005; fr 8 + 0.006; cam 80 + 0.002
        ([DataSource(10**9, ["munich"])], [0.8005, 8.006, 80.002], [10**9] * 3),
        # replicas in munich and frankfurt: each node takes the nearest
        ([DataSource(10**9, ["munich", "frankfurt"])], [0.8005, 0.8005, 80.002], [10**9] * 3),
        # cached on the frankfurt node: zero there, and its location is a replica
        ([DataSource(10**9, [], nodes=["a/fr"])], [8.006, 0.0, 160.05], [10**9, 0, 10**9]),
        # two sources add up; a site name resolves to its nodes' location
        ([DataSource(10**9, ["munich"]), DataSource(10**8, ["a"])],
         [0.8005 + 0.0805, 8.006 + 0.806, 80.002 + 8.002], [11 * 10**8] * 3),
    ],
)
def test_locality(sources, expected_s, expected_bytes):
    nodes = [node("a/mu", loc="munich"), node("a/fr", loc="frankfurt"),
             node("b/cam", loc="camera-1")]
    snap = snapshot(nodes)
    state = CycleState(AnalyticPredictor())
    req = request(task(), sources=sources)
    raw = locality.DataLocality().score(req, snap, state, snap.ready)
    assert raw.tolist() == pytest.approx(expected_s)
    assert predictions(req, snap, state).bytes_moved.tolist() == expected_bytes


@pytest.mark.parametrize(
    ("work", "queue", "sources", "expected"),
    [
        (400.0, 0.0, [], 100.0),                       # 400 / (1 × 4)
        (400.0, 30.0, [], 130.0),                      # + queue wait
        (None, 0.0, [], DEFAULT_WORK_CORE_S / 4),      # default work
        (400.0, 30.0, [DataSource(10**9, ["frankfurt"])], 130.0 + 8.006),
    ],
)
def test_completion(work, queue, sources, expected):
    snap = snapshot([node("a/mu", cpu=8, loc="munich", queue_wait_s=queue)])
    state = CycleState(AnalyticPredictor())
    req = request(task(cpu=4, mem=GI, work=work), sources=sources)
    raw = completion.CompletionTime().score(req, snap, state, snap.ready)
    assert raw[0] == pytest.approx(expected)
    p = predictions(req, snap, state)
    assert p.completion_s[0] == pytest.approx(p.queue_wait_s[0] + p.transfer_s[0]
                                              + p.runtime_s[0])
