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

**FGD's protocol** (Weng et al. §6.1 and their simulator, github.com/hkust-adsl/
kubernetes-scheduler-simulator: ``shuffle-pod`` and a workload inflated by sampling the
trace's pods): :func:`fgd_arrivals` shuffles the pods (seeded) and appends pods drawn
with replacement from the trace until the GPUs requested reach :data:`INFLATE` × the
cluster's, then all arrive one at a time and none leaves. ``openb_pod_list_gpuspec33``
is the same pods with a third constrained to GPU models (``gpu_spec``, e.g.
``P100|V100M16``): a node carries the label ``gpu-spec:<spec>`` = ``yes`` for every spec
its model satisfies, and such a pod requires that label (:func:`load_nodes`).

Energy (J) per pod = duration × (node cpu share × 250 W + GPU share × GPU TDP): a
2-socket host at ≈250 W full load (SPECpower_ssj2008) and TDPs from NVIDIA data sheets
(V100M16/V100M32 SXM2 300 W, P100 250 W, T4 70 W, A10 150 W); the anonymised models
(G2, G3) and unknown ones are taken as 250 W.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from continuum.model import Constraints, Node, Objective, PowerProfile, Resources, Task
from placement import PlacementRequest

DATA = Path(__file__).resolve().parents[1] / "data" / "alibaba-gpu-v2023"
"""The trace files, shipped with the repository (CC BY 4.0; see its README.md)."""
TDP_W = {"V100M16": 300.0, "V100M32": 300.0, "P100": 250.0, "T4": 70.0, "A10": 150.0}
DEFAULT_TDP_W = 250.0
HOST_MAX_W, HOST_IDLE_W = 250.0, 80.0
TIME_COMPRESSION = 1.0
INFLATE = 1.3
"""GPU demand as a multiple of the cluster's GPUs under FGD's protocol (the paper's
figures run arrivals up to 130 % of capacity)."""
POD_FILES = ("openb_pod_list_default.csv", "openb_pod_list_gpuspec33.csv")
"""The two public pod lists of the trace (the default one first)."""
MIB = 2**20
GPU_UNIT = 1000
"""Milli-GPUs per physical GPU."""


@dataclass
class Pod:
    """One trace pod as a request with its arrival and departure (s)."""

    request: PlacementRequest
    arrival: float
    departure: float


def _specs() -> list[str]:
    """Every ``gpu_spec`` of the pod lists (non-empty, sorted)."""
    found: set[str] = set()
    for name in POD_FILES:
        with (DATA / name).open() as f:
            found |= {row["gpu_spec"] for row in csv.DictReader(f) if row["gpu_spec"]}
    return sorted(found)


def load_nodes() -> list[Node]:
    """The 1,523 trace nodes as Continuum nodes (GPU capacity in milli-GPUs), labelled
    ``gpu-model`` and ``gpu-spec:<spec>`` = ``yes`` for each spec of the pod lists its
    model is one of."""
    out = []
    specs = _specs()
    with (DATA / "openb_node_list_all_node.csv").open() as f:
        for row in csv.DictReader(f):
            model = row["model"] or ""
            gpus = int(row["gpu"])
            cap = Resources(cpu=int(row["cpu_milli"]) / 1000, memory=int(row["memory_mib"]) * MIB,
                            gpu=gpus * 1000)
            out.append(Node(
                id=f"openb/{row['sn']}", name=row["sn"], site="openb", site_kind="kubernetes",
                tier="cloud", capacity=cap, allocatable=cap, labels={"gpu-model": model, **{
                    f"gpu-spec:{sp}": "yes" for sp in specs if model in sp.split("|")}},
                power=PowerProfile(idle_watts=HOST_IDLE_W, max_watts=HOST_MAX_W,
                                   gpu_watts=TDP_W.get(model, DEFAULT_TDP_W) / 1000.0,
                                   source="SPECpower_ssj2008; NVIDIA data sheets"),
                location="alibaba", runtimes=["container"]))
    return out


def load_pods(limit: int | None = None, file: str = POD_FILES[0]) -> list[Pod]:
    """The trace pods of ``file`` (one of :data:`POD_FILES`) in arrival order
    (``limit``: first pods only); a ``gpu_spec`` becomes a label constraint
    (module docstring)."""
    pods = []
    obj = Objective(time=1.0, latency=0.0, energy=1.0, data=0.0)
    shared: dict[str, Constraints] = {"": Constraints()}
    with (DATA / file).open() as f:
        for row in csv.DictReader(f):
            gpu = int(row["num_gpu"]) * int(row["gpu_milli"])
            spec = row["gpu_spec"] or ""
            if spec not in shared:
                shared[spec] = Constraints(labels={f"gpu-spec:{spec}": "yes"})
            t = Task(name="pod", command=["run"], work=60.0, resources=Resources(
                cpu=int(row["cpu_milli"]) / 1000, memory=int(row["memory_mib"]) * MIB, gpu=gpu),
                constraints=shared[spec])
            created = float(row["creation_time"])
            deleted = float(row["deletion_time"]) if row["deletion_time"] else created + 3600
            pods.append(Pod(PlacementRequest(row["name"], t, obj), created / TIME_COMPRESSION,
                            created / TIME_COMPRESSION + max(deleted - created, 1.0)))
    pods.sort(key=lambda p: p.arrival)
    return pods[:limit] if limit else pods


def fgd_arrivals(pods: list[Pod], nodes: list[Node], seed: int,
                 inflate: float = INFLATE) -> list[Pod]:
    """FGD's protocol (module docstring): ``pods`` shuffled with ``seed``, then pods drawn
    with replacement from them (keys suffixed ``~<k>``) until their GPU requests reach
    ``inflate`` × the GPUs of ``nodes``; arrival times are the positions (s)."""
    rng = np.random.default_rng(seed)
    cap = sum(nd.capacity.gpu for nd in nodes) * inflate
    order = [pods[int(i)] for i in rng.permutation(len(pods))]
    total = sum(p.request.task.resources.gpu for p in order)
    k = 0
    while total < cap:
        p = pods[int(rng.integers(len(pods)))]
        order.append(Pod(replace(p.request, key=f"{p.request.key}~{k}"), 0.0, 0.0))
        total += p.request.task.resources.gpu
        k += 1
    return [Pod(p.request, float(i), float(i) + 3600.0) for i, p in enumerate(order)]


def pod_energy(pod: Pod, node: Node) -> float:
    """Energy (J) of ``pod`` on ``node`` over its lifetime (module docstring)."""
    r = pod.request.task.resources
    dur = pod.departure - pod.arrival
    share = r.cpu / max(node.capacity.cpu, 1e-9)
    return dur * (HOST_MAX_W * share + r.gpu * node.power.gpu_watts)


def gpu_share(nodes: list[Node]) -> np.ndarray:
    return np.array([nd.capacity.gpu for nd in nodes])
