"""Framework pieces: normalisation, snapshot arrays and caches, assume/copy, network defaults."""

import numpy as np
import pytest
from placement_factories import GI, node, snapshot

from continuum.model import Resources
from placement import StaticNetwork, normalize
from placement.network import LAN_BANDWIDTH_BPS, LOCAL_RTT_MS, UNKNOWN_RTT_MS


@pytest.mark.parametrize(
    ("raw", "lower", "floor", "expected"),
    [
        ([10.0, 20.0, 40.0], True, 0.0, [100.0, 50.0, 25.0]),
        ([0.0, 1.0], True, 1.0, [100.0, 50.0]),
        ([5.0, 5.0], True, 1.0, [100.0, 100.0]),
        ([0.5, 0.6], True, 1.0, [100.0, 1.5 / 1.6 * 100]),  # negligible difference stays small
        ([10.0, 20.0], False, 0.0, [50.0, 100.0]),
        ([], True, 1.0, []),
    ],
)
def test_normalize(raw, lower, floor, expected):
    assert normalize(np.array(raw), lower, floor).tolist() == pytest.approx(expected)


def test_snapshot_arrays_and_free_fallback():
    snap = snapshot([node("a/n1", cpu=8, free=(3, GI, 0)), node("a/n2", cpu=4, tier="edge")])
    assert snap.free_cpu.tolist() == [3.0, 4.0]
    assert snap.free_mem.tolist() == [GI, 32 * GI]
    assert snap.cap_cpu.tolist() == [8.0, 4.0]
    assert snap.tier.tolist() == [2, 1]
    assert snap.resolve_location("a/n2") == "munich" and snap.resolve_location("x") == "x"


def test_assume_and_copy():
    snap = snapshot([node("a/n1", cpu=8)])
    preview = snap.copy()
    preview.assume(0, Resources(cpu=2, memory=GI, gpu=0))
    assert preview.free_cpu[0] == 6 and snap.free_cpu[0] == 8


class CountingNetwork(StaticNetwork):
    calls: int = 0

    def rtt_ms(self, a, b):
        CountingNetwork.calls += 1
        return super().rtt_ms(a, b)


def test_rtt_looked_up_once_per_location_pair():
    nodes = [node(f"a/n{i}", loc="munich" if i % 2 else "frankfurt") for i in range(100)]
    snap = snapshot(nodes, CountingNetwork())
    for _ in range(3):
        snap.rtt_from("camera-1")
    assert CountingNetwork.calls == 2


def test_static_network_defaults():
    net = StaticNetwork().add("a", "b", 3.0, 1e9)
    assert net.rtt_ms("b", "a") == 3.0 and net.bandwidth_bps("a", "b") == 1e9
    assert net.rtt_ms("a", "a") == LOCAL_RTT_MS and net.bandwidth_bps("a", "a") == LAN_BANDWIDTH_BPS
    assert net.rtt_ms("a", "zz") == UNKNOWN_RTT_MS
