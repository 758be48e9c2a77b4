"""never_fits: API validation of requests against allocatable capacity, ignoring usage."""

import pytest
from placement_factories import GI, node, task

from placement import never_fits

FEDERATION = [
    node("edge-munich/pi-1", cpu=4, mem=8 * GI, free=(0, 0, 0)),
    node("cloud-fra/m5", cpu=64, mem=256 * GI, gpu=0),
    node("hpc-garching/cpu-partition", cpu=128, mem=512 * GI),
    node("hpc-garching/gpu-partition", cpu=32, mem=128 * GI, gpu=4),
]


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        ((4, GI, 0), None),
        ((128, 512 * GI, 0), None),            # usage ignored: capacity could hold it
        ((32, 64 * GI, 4), None),
        ((512, GI, 0), "requests 512 cpu but the largest node of the federation has 128 "
                       "(hpc-garching/cpu-partition)"),
        ((1, 1024 * GI, 0), "requests 1Ti memory but the largest node of the federation has "
                            "512Gi (hpc-garching/cpu-partition)"),
        ((1, GI, 8), "requests 8 gpu but the largest node of the federation has 4 "
                     "(hpc-garching/gpu-partition)"),
    ],
)
def test_never_fits(req, expected):
    assert never_fits(task(cpu=req[0], mem=req[1], gpu=req[2]), FEDERATION) == expected


def test_each_fits_somewhere_but_not_together():
    msg = never_fits(task(cpu=64, mem=GI, gpu=4), FEDERATION)
    assert msg is not None and msg.startswith("no single node has 64 cpu")


def test_empty_federation_is_not_an_error():
    assert never_fits(task(cpu=1000), []) is None
