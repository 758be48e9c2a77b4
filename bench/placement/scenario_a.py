"""Scenario A: a device / edge / cloud / HPC continuum with mixed workflows.

Hardware and power (each figure's source next to it):

* Raspberry Pi 4 B — 4 cores, 4 GiB, 2.7 W idle → 6.4 W at 400 % CPU
  (pidramble.com/wiki/benchmarks/power-consumption, Raspberry Pi 4 B row). Per-core
  speed 0.35 of a server core (Cortex-A72 @1.5 GHz vs. a Xeon core in SPECrate-style
  integer throughput; an estimate). Sustained load throttles it (Raspberry Pi docs,
  "Frequency management and thermal control": the SoC throttles at 80–85 °C): the
  ground truth runs long jobs 1.6× slower — the analytic model does not know this.
* NVIDIA Jetson Xavier NX — 6 cores, 8 GiB, 5 W idle → 15 W (NVIDIA Jetson Xavier NX
  Module Data Sheet, 10 W / 15 W power modes; ~5 W idle). Speed 0.5.
* Edge server (1-socket, 16 cores, 64 GiB) — ≈100 W idle → 240 W (SPECpower_ssj2008
  published results for 1-socket Xeon servers: roughly 40–45 % of full-load power at
  idle). Speed 1.0.
* Cloud node (2-socket, 32 cores, 128 GiB) — ≈80 W idle → 250 W (SPECpower_ssj2008,
  2-socket results of recent generations). Speed 1.1. Four of them carry one NVIDIA
  V100 (300 W TDP, V100 SXM2 data sheet).
* HPC node (64 cores, 256 GiB) — 80 → 250 W plus 4× NVIDIA A100 at 400 W TDP (A100
  SXM4 data sheet). Speed 1.3; Slurm partition, estimated queue wait 120 s.

WAN (RTT, bandwidth): factory↔factory-edge 2 ms, 1 Gbit/s (on-premises LAN/5G);
factory↔cloud 25 ms, 100 Mbit/s; factory↔HPC 30 ms, 100 Mbit/s (a site uplink);
edge↔cloud 20 ms, 1 Gbit/s; cloud↔HPC 10 ms, 10 Gbit/s (research network) — intra-
European RTTs as listed e.g. in Microsoft's "Azure network round-trip latency
statistics" (learn.microsoft.com/azure/networking/azure-network-latency).

Workflows per batch (mixed): device-bound video-analytics services (1 core, SLO 10 ms
RTT to the factory cameras), edge pre-processing of 0.5–2 GB camera data produced in
the factory, data-heavy ETL jobs reading 2–20 GB from the cloud data lake, and HPC
training jobs (16 cores, 1–4 GPUs, 20–50 GB at the HPC site).

**Ground truth** (what "really" happens, unknown to the analytic model; the learned
model sees it only through past runs): Amdahl's law with a serial fraction per
workload (services 0.02, pre-processing 0.1, ETL 0.15, training 0.05), GPUs speeding
training up per GPU by the board's relative throughput (V100 1×, A100 2×, with the
per-core CPU rate as the reference), Pi throttling, a queue wait that grows with the
GPUs requested, and ±10 % log-normal noise. Energy = true runtime × the node's linear
power share (Fan, Weber & Barroso, ISCA 2007) + GPU TDP × GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from continuum.model import Constraints, Node, Objective, PowerProfile, Resources, Slo, Task
from placement import DataSource, PlacementRequest, Snapshot, StaticNetwork
from placement.learned import Sample
from placement.predict import MIN_CORES
from placement.snapshot import TIERS

GI = 2**30
FACTORY, EDGE, CLOUD, HPC = "factory", "factory-edge", "cloud-fra", "hpc-garching"

NODE_TYPES = {
    # name: (tier, site kind, location, cpu, mem GiB, gpu, speed, idle W, max W, gpu W, queue s)
    "pi4": ("device", "devices", FACTORY, 4, 4, 0, 0.35, 2.7, 6.4, 0.0, 0.0),
    "jetson": ("device", "devices", FACTORY, 6, 8, 0, 0.5, 5.0, 15.0, 0.0, 0.0),
    "edge": ("edge", "kubeedge", EDGE, 16, 64, 0, 1.0, 100.0, 240.0, 0.0, 0.0),
    "cloud": ("cloud", "kubernetes", CLOUD, 32, 128, 0, 1.1, 80.0, 250.0, 0.0, 0.0),
    "cloud-v100": ("cloud", "kubernetes", CLOUD, 32, 128, 1, 1.1, 80.0, 250.0, 300.0, 0.0),
    "hpc-a100": ("hpc", "slurm", HPC, 64, 256, 4, 1.3, 80.0, 250.0, 400.0, 120.0),
}
COUNTS = {"pi4": 24, "jetson": 8, "edge": 6, "cloud": 16, "cloud-v100": 4, "hpc-a100": 8}
GPU_SPEEDUP = {"cloud-v100": 1.0, "hpc-a100": 2.0}
"""Per-GPU throughput relative to a V100 (A100 ≈ 2× V100 on mixed-precision training,
NVIDIA A100 Tensor Core GPU Architecture whitepaper, 2020)."""
SERIAL = {"service": 0.02, "prep": 0.1, "etl": 0.15, "train": 0.05}
GPU_CORE_EQUIV = 40.0
"""Reference cores one V100 is worth on the training kernel (assumption of the twin)."""


OBJECTIVE = Objective(time=1.0, latency=1.0, energy=1.0, data=0.0)
"""The workflows' objective: completion, SLO latency and energy weighted equally; the
data term off because input transfer time is already part of predicted completion
(WAN bytes are reported, not optimised, in this scenario)."""


def network() -> StaticNetwork:
    """The WAN of the module docstring."""
    net = StaticNetwork()
    net.add(FACTORY, EDGE, 2.0, 1e9).add(FACTORY, CLOUD, 25.0, 100e6)
    net.add(FACTORY, HPC, 30.0, 100e6).add(EDGE, CLOUD, 20.0, 1e9)
    net.add(EDGE, HPC, 25.0, 1e9).add(CLOUD, HPC, 10.0, 10e9)
    return net


def nodes(rng: np.random.Generator, load: float = 0.4) -> tuple[list[Node], list[str]]:
    """The continuum's nodes, each with random background load (0..``load`` of cpu/mem);
    returns (nodes, node type per node)."""
    out, types = [], []
    for t, count in COUNTS.items():
        tier, kind, loc, cpu, mem, gpu, speed, idle, mx, gw, qw = NODE_TYPES[t]
        for k in range(count):
            cap = Resources(cpu=cpu, memory=mem * GI, gpu=gpu)
            used = rng.uniform(0, load)
            free = Resources(cpu=round(cpu * (1 - used), 2), memory=int(mem * GI * (1 - used)),
                             gpu=gpu)
            out.append(Node(
                id=f"{t}-site/{t}-{k}", name=f"{t}-{k}", site=f"{t}-site", site_kind=kind,
                tier=tier, arch="aarch64" if t in ("pi4", "jetson") else "x86_64",
                capacity=cap, allocatable=cap, free=free, speed=speed,
                power=PowerProfile(idle_watts=idle, max_watts=mx, gpu_watts=gw),
                location=loc, runtimes=["process", "container"], queue_wait_s=qw))
            types.append(t)
    return out, types


@dataclass
class Job:
    """A request plus its workload kind (for the ground truth)."""

    kind: str
    request: PlacementRequest


def batch(rng: np.random.Generator, size: int = 48, prefix: str = "r") -> list[Job]:
    """A mixed batch: 35 % services, 25 % pre-processing, 25 % ETL, 15 % training."""
    jobs = []
    obj = OBJECTIVE
    for k in range(size):
        u = rng.uniform()
        key = f"{prefix}{k}"
        if u < 0.35:
            t = Task(name="detect", kind="job", command=["run"], work=float(rng.uniform(60, 600)),
                     resources=Resources(cpu=1, memory=512 * 2**20),
                     slo=Slo(target=FACTORY, latency_ms=10.0))
            jobs.append(Job("service", PlacementRequest(key, t, obj)))
        elif u < 0.6:
            t = Task(name="prep", command=["run"], work=float(rng.uniform(200, 2000)),
                     resources=Resources(cpu=float(rng.choice([2, 4])), memory=2 * GI))
            src = DataSource(bytes=int(rng.uniform(0.5, 2) * GI), locations=[FACTORY])
            jobs.append(Job("prep", PlacementRequest(key, t, obj, [src])))
        elif u < 0.85:
            t = Task(name="etl", command=["run"], work=float(rng.uniform(2000, 20000)),
                     resources=Resources(cpu=float(rng.choice([4, 8])), memory=8 * GI),
                     constraints=Constraints(arch=["x86_64"]))
            src = DataSource(bytes=int(rng.uniform(2, 20) * GI), locations=[CLOUD])
            jobs.append(Job("etl", PlacementRequest(key, t, obj, [src])))
        else:
            g = int(rng.choice([1, 2, 4]))
            t = Task(name="train", command=["run"], work=float(rng.uniform(1e5, 5e5)),
                     resources=Resources(cpu=16, memory=64 * GI, gpu=g),
                     constraints=Constraints(arch=["x86_64"]))
            src = DataSource(bytes=int(rng.uniform(20, 50) * GI), locations=[HPC])
            jobs.append(Job("train", PlacementRequest(key, t, obj, [src])))
    return jobs


def true_runtime(kind: str, work: float, cpu: float, gpu: int, ntype: str,
                 noise: float = 1.0) -> float:
    """Ground-truth runtime (s) of a workload on a node type (module docstring)."""
    _, _, _, cap, _, _, speed, *_ = NODE_TYPES[ntype]
    cores = float(np.clip(cpu, MIN_CORES, cap))
    s = SERIAL[kind]
    eff = 1.0 / (s + (1 - s) / cores)
    if kind == "train" and gpu > 0:
        eff += GPU_CORE_EQUIV * gpu * GPU_SPEEDUP.get(ntype, 1.0)
    rt = work / (speed * eff)
    if ntype == "pi4" and rt > 60:
        rt *= 1.6
    return rt * noise


def true_queue_wait(ntype: str, gpu: int, noise: float = 1.0) -> float:
    """Ground-truth queue wait (s): the partition estimate × (1 + GPUs requested)."""
    qw = NODE_TYPES[ntype][10]
    return qw * (1 + gpu) * noise


def true_energy(rt: float, cpu: float, gpu: int, ntype: str) -> float:
    """Ground-truth energy (J): runtime × (max_watts × cpu share) + GPU TDP × GPUs."""
    _, _, _, cap, _, _, _, idle, mx, gw, _ = NODE_TYPES[ntype]
    share = float(np.clip(cpu, MIN_CORES, cap)) / cap
    return rt * (idle * share + (mx - idle) * share + gpu * gw)


def history(rng: np.random.Generator, n: int = 3000) -> list[Sample]:
    """Past runs (as the store would have recorded them) drawn from the ground truth."""
    types = list(NODE_TYPES)
    out = []
    while len(out) < n:
        job = batch(rng, 1)[0]
        t = job.request.task
        r = t.resources
        ntype = types[int(rng.integers(len(types)))]
        tier, kind, loc, cap, mem, gpu, speed, idle, mx, gw, qw = NODE_TYPES[ntype]
        if r.gpu > gpu or r.cpu > cap or (t.constraints.arch and ntype in ("pi4", "jetson")):
            continue
        rt = true_runtime(job.kind, t.work or 60.0, r.cpu, r.gpu, ntype,
                          float(rng.lognormal(0, 0.1)))
        out.append(Sample(work=t.work or 60.0, cpu=r.cpu, memory=r.memory, gpu=r.gpu,
                          speed=speed, cap_cpu=cap, tier=tier, idle_watts=idle, max_watts=mx,
                          gpu_watts=gw, node_queue_wait_s=qw, runtime_s=rt,
                          energy_j=true_energy(rt, r.cpu, r.gpu, ntype),
                          queue_wait_s=true_queue_wait(ntype, r.gpu,
                                                       float(rng.lognormal(0, 0.1))),
                          slurm=kind == "slurm"))
    return out



@dataclass
class Instance:
    """One scenario-A instance: the nodes (and their type names), a batch of jobs, their
    requests and the snapshot they are placed on."""

    nodes: list[Node]
    types: list[str]
    jobs: list[Job]
    requests: list[PlacementRequest]
    snapshot: Snapshot


def instance(index: int, load: float, batch_size: int) -> Instance:
    """Instance ``index`` (seed ``100 + index``, job keys ``i<index>-<k>``): the same for
    every bench that places scenario A, so their figures compare."""
    rng = np.random.default_rng(100 + index)
    nodes_, types = nodes(rng, load)
    jobs = batch(rng, batch_size, prefix=f"i{index}-")
    return Instance(nodes_, types, jobs, [j.request for j in jobs],
                    Snapshot(nodes=nodes_, network=network()))

@dataclass
class Outcome:
    """Ground-truth figures of one placement of one job (None fields: unplaced)."""

    completion_s: float | None
    latency_ms: float | None
    energy_j: float | None
    wan_bytes: int
    slo_violated: bool
    placed: bool


def evaluate(job: Job, node_index: int, snap: Snapshot, types: list[str]) -> Outcome:
    """Ground truth for ``job`` placed on node ``node_index`` (-1 = unplaced)."""
    req = job.request
    t = req.task
    if node_index < 0:
        return Outcome(None, None, None, 0, t.slo is not None, False)
    nd = snap.nodes[node_index]
    ntype = types[node_index]
    rt = true_runtime(job.kind, t.work or 60.0, t.resources.cpu, t.resources.gpu, ntype)
    qw = true_queue_wait(ntype, t.resources.gpu)
    transfer, wan = 0.0, 0
    net = snap.network
    for src in req.sources:
        loc = src.locations[0]
        if loc != nd.location:
            transfer += src.bytes * 8 / net.bandwidth_bps(loc, nd.location) \
                + net.rtt_ms(loc, nd.location) / 1000
            wan += src.bytes
    latency = None
    violated = False
    if t.slo is not None:
        latency = net.rtt_ms(t.slo.target, nd.location)
        violated = latency > t.slo.latency_ms
    return Outcome(qw + transfer + rt, latency,
                   true_energy(rt, t.resources.cpu, t.resources.gpu, ntype), wan, violated, True)


def bounds(job: Job, snap: Snapshot, types: list[str]) -> tuple[float, float]:
    """Per-job lower bounds under the ground truth, capacity ignored: (least completion
    over the nodes that meet the job's arch and SLO, least energy over the nodes that meet
    its arch and have its GPUs). Placing each job alone on its best node type beats any
    placement of the batch, so the batch means of these bound every policy."""
    t = job.request.task
    best_c, best_e = float("inf"), float("inf")
    seen: set[str] = set()
    for k, nd in enumerate(snap.nodes):
        if types[k] in seen:
            continue
        if (t.constraints.arch and nd.arch not in t.constraints.arch) \
                or nd.capacity.gpu < t.resources.gpu or nd.capacity.cpu < t.resources.cpu:
            continue
        seen.add(types[k])
        o = evaluate(job, k, snap, types)
        assert o.completion_s is not None and o.energy_j is not None
        best_e = min(best_e, o.energy_j)
        if not o.slo_violated:
            best_c = min(best_c, o.completion_s)
    return best_c, best_e


TIER_NAMES = [str(t) for t in TIERS]
