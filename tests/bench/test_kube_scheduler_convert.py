"""The pure helpers of bench/kube_scheduler: what kube-scheduler is given for the
benchmark's nodes and pods, and the re-implementation's v1.37 balance scoring."""

from __future__ import annotations

import numpy as np
import pytest

from bench.kube_scheduler import convert as C
from bench.placement import policies as P
from bench.placement import scenario_b as B
from continuum.model import Node, Objective, PowerProfile, Resources, Taint, Task
from placement import PlacementRequest, Snapshot, StaticNetwork

GI = 2**30


def _node(name: str = "openb-node-0007", cpu: float = 96, mem: int = 256 * GI, gpu: int = 8000,
          free: Resources | None = None, **kw: object) -> Node:
    cap = Resources(cpu=cpu, memory=mem, gpu=gpu)
    return Node(id=f"s/{name}", name=name, site="s", site_kind="kubernetes", tier="cloud",
                location="here", power=PowerProfile(idle_watts=80, max_watts=250),
                capacity=cap, allocatable=cap, free=free, **kw)  # type: ignore[arg-type]


def test_whole_gpus_rounds_fractions_up() -> None:
    assert C.whole_gpus(0, 1000) == 0
    assert C.whole_gpus(460, 1000) == 1
    assert C.whole_gpus(1000, 1000) == 1
    assert C.whole_gpus(2000, 1000) == 2
    assert C.whole_gpus(2, 1) == 2


def test_node_manifest_whole_gpus_arch_labels_taints() -> None:
    nd = _node(arch="aarch64", labels={"gpu-model": "V100M32"},
               taints=[Taint(key="edge", value="true", effect="NoSchedule")])
    m = C.node_manifest(nd, B.GPU_UNIT)
    assert m["metadata"]["name"] == "openb-node-0007"
    assert m["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    labels = m["metadata"]["labels"]
    assert labels["kubernetes.io/arch"] == "arm64"
    assert labels["gpu-model"] == "V100M32"
    assert labels["kubernetes.io/hostname"] == "openb-node-0007"
    cap = m["status"]["capacity"]
    assert cap == {"cpu": "96000m", "memory": str(256 * GI), "pods": "110", "nvidia.com/gpu": "8"}
    assert m["spec"]["taints"] == [{"key": "edge", "value": "true", "effect": "NoSchedule"}]


def test_node_manifest_allocatable_override_and_no_gpu() -> None:
    nd = _node(gpu=0)
    m = C.node_manifest(nd, allocatable=Resources(cpu=10.5, memory=GI))
    assert m["status"]["allocatable"] == {"cpu": "10500m", "memory": str(GI), "pods": "110"}
    assert "nvidia.com/gpu" not in m["status"]["capacity"]


def test_fractional_gpu_pod_requests_one_whole_gpu_with_limit() -> None:
    m = C.pod_manifest("openb-pod-0001", Resources(cpu=6, memory=12288 * 2**20, gpu=460),
                       B.GPU_UNIT, arch=["x86_64"])
    res = m["spec"]["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "6000m", "memory": str(12288 * 2**20), "nvidia.com/gpu": "1"}
    assert res["limits"] == {"nvidia.com/gpu": "1"}
    assert m["spec"]["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert m["spec"]["schedulerName"] == "default-scheduler"
    assert "nodeName" not in m["spec"]


def test_background_pod_holds_capacity_minus_free() -> None:
    busy = _node(cpu=16, mem=64 * GI, gpu=0, free=Resources(cpu=12.25, memory=48 * GI))
    m = C.background_pod("bg-1", busy, "edge-0")
    assert m is not None
    assert m["spec"]["nodeName"] == "edge-0"
    assert m["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "3750m", "memory": str(16 * GI)}
    idle = _node(cpu=16, mem=64 * GI, gpu=0, free=Resources(cpu=16, memory=64 * GI))
    assert C.background_pod("bg-2", idle, "edge-1") is None


def test_k8s_name() -> None:
    assert C.k8s_name("Pi4_Site/Pi4-0") == "pi4-site-pi4-0"
    with pytest.raises(ValueError, match="no Kubernetes name"):
        C.k8s_name("___")


def test_v137_balance_scores_the_change_of_balance() -> None:
    # node 0: cpu-heavy already (5 of 10 cores, no memory); node 1: empty. A memory-heavy
    # pod restores node 0's balance: v1.37 rewards that change, v1.30 only the end state
    a = _node("a", cpu=10, mem=10 * GI, gpu=0, free=Resources(cpu=5, memory=10 * GI))
    b = _node("b", cpu=10, mem=10 * GI, gpu=0, free=Resources(cpu=10, memory=10 * GI))
    snap = Snapshot(nodes=[a, b], network=StaticNetwork())
    req = PlacementRequest("r", Task(name="t", command=["x"],
                                     resources=Resources(cpu=0.5, memory=5 * GI)), Objective())
    feas = np.array([0, 1])
    v130 = P.kube_scores(req, snap, feas, "v1.30")
    v137 = P.kube_scores(req, snap, feas, "v1.37")
    # LeastAllocated: (45 + 50) // 2 = 47 and (95 + 50) // 2 = 72
    # v1.30 balance: fractions (0.55, 0.5) → 97; (0.05, 0.5) → 77
    assert list(v130) == [47 + 97, 72 + 77]
    # v1.37: without the pod (0.5, 0) → 75 and (0, 0) → 100:
    # 50 + (50 + 97 − 75) // 2 = 86; 50 + (50 + 77 − 100) // 2 = 63
    assert list(v137) == [47 + 86, 72 + 63]
    with pytest.raises(ValueError, match="balance"):
        P.kube_default(0, balance="v2")
