"""NodeResourcesFit: cpu, memory and gpu against free capacity (free, else allocatable)."""

import numpy as np
import pytest
from placement_factories import GI, node, request, snapshot, task

from placement.plugins import resources
from placement.predict import AnalyticPredictor, CycleState


@pytest.mark.parametrize(
    ("req", "free", "fits", "reason"),
    [
        ((4, GI, 0), None, True, None),                    # allocatable 8 cpu used
        ((8, GI, 0), None, True, None),                    # exactly full
        ((9, GI, 0), None, False, resources.REASON_CPU),
        ((4, GI, 0), (2, 32 * GI, 0), False, resources.REASON_CPU),  # free, not allocatable
        ((0.3, GI, 0), (0.1 + 0.2, 32 * GI, 0), True, None),        # float slack
        ((1, 33 * GI, 0), None, False, resources.REASON_MEMORY),
        ((1, GI, 1), None, False, resources.REASON_GPU),
    ],
)
def test_fit(req, free, fits, reason):
    snap = snapshot([node(cpu=8, mem=32 * GI, gpu=0, free=free)])
    result = resources.NodeResourcesFit().filter(
        request(task(cpu=req[0], mem=req[1], gpu=req[2])), snap, CycleState(AnalyticPredictor()))
    assert bool(result.mask[0]) is fits
    assert [r.reason for r in result.rejections] == ([] if fits else [reason])


def test_gpu_fits_on_gpu_node_only():
    snap = snapshot([node("a/cpu"), node("a/gpu", gpu=2)])
    result = resources.NodeResourcesFit().filter(
        request(task(gpu=2)), snap, CycleState(AnalyticPredictor()))
    assert result.mask.tolist() == [False, True]


def test_describe_names_need_and_largest_free():
    snap = snapshot([node("a/n1", cpu=8), node("a/n2", cpu=32)])
    result = resources.NodeResourcesFit().filter(
        request(task(cpu=64)), snap, CycleState(AnalyticPredictor()))
    (rej,) = result.rejections
    assert rej.describe(np.array([True, True])) == "need 64, largest free 32"
