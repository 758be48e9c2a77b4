"""NodeConstraints: ready, tiers, arch, labels, sites, taints vs tolerations, container runtime."""

import pytest
from placement_factories import node, request, snapshot, task

from continuum.model import Taint, Toleration
from placement.plugins import constraints as c
from placement.predict import AnalyticPredictor, CycleState

NS = Taint(key="dedicated", value="gpu", effect="NoSchedule")
NE = Taint(key="node.kubernetes.io/unreachable", effect="NoExecute")
PREFER = Taint(key="spot", value="true", effect="PreferNoSchedule")


@pytest.mark.parametrize(
    ("node_kw", "task_kw", "fits", "reason"),
    [
        ({}, {}, True, None),
        ({"ready": False}, {}, False, c.REASON_NOT_READY),
        ({"tier": "edge"}, {"tiers": ["edge", "device"]}, True, None),
        ({"tier": "cloud"}, {"tiers": ["edge"]}, False, c.REASON_TIER),
        ({"arch": "aarch64"}, {"arch": ["aarch64"]}, True, None),
        ({"arch": "x86_64"}, {"arch": ["aarch64"]}, False, c.REASON_ARCH),
        ({"labels": {"disk": "ssd", "x": "y"}}, {"labels": {"disk": "ssd"}}, True, None),
        ({"labels": {"disk": "hdd"}}, {"labels": {"disk": "ssd"}}, False, c.REASON_LABELS),
        ({}, {"labels": {"disk": "ssd"}}, False, c.REASON_LABELS),
        ({}, {"sites": ["site-a"]}, True, None),
        ({}, {"sites": ["site-b"]}, False, c.REASON_SITE),
        ({"taints": [NS]}, {}, False, c.REASON_TAINT),
        ({"taints": [NE]}, {}, False, c.REASON_TAINT),
        ({"taints": [PREFER]}, {}, True, None),  # PreferNoSchedule never filters
        ({"taints": [NS]}, {"tolerations": [Toleration(key="dedicated", value="gpu")]}, True,
         None),
        ({"taints": [NS]}, {"tolerations": [Toleration(key="dedicated", value="cpu")]}, False,
         c.REASON_TAINT),
        ({"taints": [NS]}, {"tolerations": [Toleration(key="dedicated", operator="Exists")]},
         True, None),
        ({"taints": [NS]}, {"tolerations": [Toleration(key="", operator="Exists")]}, True, None),
        ({"taints": [NS]},
         {"tolerations": [Toleration(key="dedicated", value="gpu", effect="NoExecute")]},
         False, c.REASON_TAINT),
        ({"taints": [NS, NE]},
         {"tolerations": [Toleration(key="dedicated", value="gpu")]}, False, c.REASON_TAINT),
        ({"runtimes": ["process", "container"]}, {"image": "python:3.11"}, True, None),
        ({}, {"image": "python:3.11"}, False, c.REASON_NO_CONTAINER),
    ],
)
def test_filter(node_kw, task_kw, fits, reason):
    image = task_kw.pop("image", None)
    snap = snapshot([node(**node_kw)])
    result = c.NodeConstraints().filter(
        request(task(image=image, **task_kw)), snap, CycleState(AnalyticPredictor()))
    assert bool(result.mask[0]) is fits
    assert [r.reason for r in result.rejections] == ([] if fits else [reason])


def test_vectorised_over_mixed_nodes():
    nodes = [node("a/e1", tier="edge"), node("a/c1", tier="cloud"),
             node("a/e2", tier="edge", taints=[NS]), node("a/e3", tier="edge", ready=False)]
    result = c.NodeConstraints().filter(
        request(task(tiers=["edge"])), snapshot(nodes), CycleState(AnalyticPredictor()))
    assert result.mask.tolist() == [True, False, False, False]
    assert {r.reason for r in result.rejections} == {
        c.REASON_NOT_READY, c.REASON_TIER, c.REASON_TAINT}
