"""Scenario B: the Alibaba GPU cluster trace (vendored in ``bench/data/alibaba-gpu-v2023``).

Data: ``openb_node_list_all_node.csv`` (1,523 nodes: cpu_milli, memory_mib, gpu, GPU
model) and ``openb_pod_list_default.csv`` (8,152 pods: cpu_milli, memory_mib, num_gpu,
gpu_milli, creation/deletion time), from Weng et al., "Beware of Fragmentation:
Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC 2023
(github.com/alibaba/clusterdata, cluster-trace-gpu-v2023), licensed CC BY 4.0.

Replay: pods arrive in ``creation_time`` order and leave at ``deletion_time``; each
policy places each pod on arrival (capacity deducted, returned on departure). GPU
demand is in milli-GPU units (``num_gpu × gpu_milli``; a node has ``gpu × 1000``) and
tracked per physical GPU (the snapshot's ``gpu_unit`` = :data:`GPU_UNIT`): a fractional
pod must fit on one GPU, a multi-GPU pod needs entirely free GPUs — as in the paper's
simulator. (An earlier version pooled the milli-GPUs per node, which let a 0.6-GPU pod
fit in two 0.3-GPU leftovers: unrealistic, and blind to the fragmentation FGD targets.)
To make the cluster contended, pod arrival times are compressed by
:data:`TIME_COMPRESSION` (durations unchanged), as the paper inflates load to study
fragmentation.

Energy (J) per pod = duration × (node cpu share × 250 W + GPU share × GPU TDP): a
2-socket host at ≈250 W full load (SPECpower_ssj2008) and TDPs from NVIDIA data sheets
(V100M16/V100M32 SXM2 300 W, P100 250 W, T4 70 W, A10 150 W); the anonymised models
(G2, G3) and unknown ones are taken as 250 W.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from continuum.model import Node, Objective, PowerProfile, Resources, Task
from placement import PlacementRequest

DATA = Path(__file__).resolve().parents[1] / "data" / "alibaba-gpu-v2023"
"""The trace files, shipped with the repository (CC BY 4.0; see its README.md)."""
TDP_W = {"V100M16": 300.0, "V100M32": 300.0, "P100": 250.0, "T4": 70.0, "A10": 150.0}
DEFAULT_TDP_W = 250.0
HOST_MAX_W, HOST_IDLE_W = 250.0, 80.0
TIME_COMPRESSION = 1.0
MIB = 2**20
GPU_UNIT = 1000
"""Milli-GPUs per physical GPU."""


@dataclass
class Pod:
    """One trace pod as a request with its arrival and departure (s)."""

    request: PlacementRequest
    arrival: float
    departure: float


def load_nodes() -> list[Node]:
    """The 1,523 trace nodes as Continuum nodes (GPU capacity in milli-GPUs)."""
    out = []
    with (DATA / "openb_node_list_all_node.csv").open() as f:
        for row in csv.DictReader(f):
            model = row["model"] or ""
            gpus = int(row["gpu"])
            cap = Resources(cpu=int(row["cpu_milli"]) / 1000, memory=int(row["memory_mib"]) * MIB,
                            gpu=gpus * 1000)
            out.append(Node(
                id=f"openb/{row['sn']}", name=row["sn"], site="openb", site_kind="kubernetes",
                tier="cloud", capacity=cap, allocatable=cap, labels={"gpu-model": model},
                power=PowerProfile(idle_watts=HOST_IDLE_W, max_watts=HOST_MAX_W,
                                   gpu_watts=TDP_W.get(model, DEFAULT_TDP_W) / 1000.0,
                                   source="SPECpower_ssj2008; NVIDIA data sheets"),
                location="alibaba", runtimes=["container"]))
    return out


def load_pods(limit: int | None = None) -> list[Pod]:
    """The trace pods in arrival order (``limit``: first pods only)."""
    pods = []
    obj = Objective(time=1.0, latency=0.0, energy=1.0, data=0.0)
    with (DATA / "openb_pod_list_default.csv").open() as f:
        for row in csv.DictReader(f):
            gpu = int(row["num_gpu"]) * int(row["gpu_milli"])
            t = Task(name="pod", command=["run"], work=60.0, resources=Resources(
                cpu=int(row["cpu_milli"]) / 1000, memory=int(row["memory_mib"]) * MIB, gpu=gpu))
            created = float(row["creation_time"])
            deleted = float(row["deletion_time"]) if row["deletion_time"] else created + 3600
            pods.append(Pod(PlacementRequest(row["name"], t, obj), created / TIME_COMPRESSION,
                            created / TIME_COMPRESSION + max(deleted - created, 1.0)))
    pods.sort(key=lambda p: p.arrival)
    return pods[:limit] if limit else pods


def pod_energy(pod: Pod, node: Node) -> float:
    """Energy (J) of ``pod`` on ``node`` over its lifetime (module docstring)."""
    r = pod.request.task.resources
    dur = pod.departure - pod.arrival
    share = r.cpu / max(node.capacity.cpu, 1e-9)
    return dur * (HOST_MAX_W * share + r.gpu * node.power.gpu_watts)


def gpu_share(nodes: list[Node]) -> np.ndarray:
    return np.array([nd.capacity.gpu for nd in nodes])
