"""Builders for placement tests: nodes, tasks and snapshots with terse defaults."""

from __future__ import annotations

from continuum.model import (
    Constraints,
    Node,
    Objective,
    PowerProfile,
    Resources,
    Slo,
    Taint,
    Task,
)
from placement import DataSource, PlacementRequest, Snapshot, StaticNetwork

GI = 2**30


def node(
    nid: str = "site-a/n1",
    cpu: float = 8,
    mem: int = 32 * GI,
    gpu: int = 0,
    *,
    free: tuple[float, int, int] | None = None,
    tier: str = "cloud",
    arch: str = "x86_64",
    loc: str = "munich",
    speed: float = 1.0,
    idle: float = 50.0,
    max_w: float = 200.0,
    gpu_w: float = 0.0,
    labels: dict[str, str] | None = None,
    taints: list[Taint] | None = None,
    runtimes: list[str] | None = None,
    ready: bool = True,
    queue_wait_s: float = 0.0,
) -> Node:
    site, name = nid.split("/")
    cap = Resources(cpu=cpu, memory=mem, gpu=gpu)
    return Node(
        id=nid, name=name, site=site, site_kind="sim", tier=tier, arch=arch,
        capacity=cap, allocatable=cap,
        free=None if free is None else Resources(cpu=free[0], memory=free[1], gpu=free[2]),
        labels=labels or {}, taints=taints or [], speed=speed,
        power=PowerProfile(idle_watts=idle, max_watts=max_w, gpu_watts=gpu_w),
        location=loc, runtimes=runtimes or ["process"], ready=ready,
        queue_wait_s=queue_wait_s,
    )


def task(
    name: str = "t",
    cpu: float = 1,
    mem: int = GI,
    gpu: int = 0,
    *,
    work: float | None = None,
    image: str | None = None,
    slo: tuple[str, float] | None = None,
    **constraints,
) -> Task:
    return Task(
        name=name, command=["true"], image=image, work=work,
        resources=Resources(cpu=cpu, memory=mem, gpu=gpu),
        constraints=Constraints(**constraints),
        slo=None if slo is None else Slo(target=slo[0], latency_ms=slo[1]),
    )


def request(t: Task, key: str = "run-1", sources: list[DataSource] | None = None,
            **weights: float) -> PlacementRequest:
    return PlacementRequest(key=key, task=t, objective=Objective(**weights),
                            sources=sources or [])


def network() -> StaticNetwork:
    """munich–frankfurt 6 ms, 1 Gbit/s; munich–camera-1 2 ms, 100 Mbit/s; else 50 ms, 50 Mbit/s."""
    return (StaticNetwork()
            .add("munich", "frankfurt", 6.0, 1e9)
            .add("munich", "camera-1", 2.0, 100e6))


def snapshot(nodes: list[Node], net: StaticNetwork | None = None) -> Snapshot:
    return Snapshot(nodes=nodes, network=net or network(), now=0.0)
