"""The values placement works on: requests, their data sources and outcomes.

:class:`PlacementRequest` (one run to place), :class:`DataSource`, :class:`Outcome`,
:func:`never_fits` (API validation) and :func:`place`, the older name of the one
placement entry point :func:`placement.plan.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from continuum.model import Node, Objective, PlacementDecision, Task
from placement import fmt
from placement.framework import Framework
from placement.snapshot import Snapshot

ALTERNATIVES = 3
"""How many runner-up nodes a decision lists."""


@dataclass
class DataSource:
    """Where one input's bytes can be fetched from.

    ``bytes``: size; ``locations``: location (or site / node) names holding a copy;
    ``nodes``: node ids holding a cached copy (zero transfer there).
    """

    bytes: int
    locations: list[str]
    nodes: list[str] = field(default_factory=list)


@dataclass
class PlacementRequest:
    """One run to place: ``key`` is the run id.

    ``avoid``: node ids where earlier attempts of this task failed; another feasible
    node is preferred (see :mod:`placement.plan`).
    """

    key: str
    task: Task
    objective: Objective
    sources: list[DataSource] = field(default_factory=list)
    avoid: frozenset[str] = frozenset()


@dataclass
class Outcome:
    """The result for one request: a decision, or None with ``reason`` saying why and how to fix."""

    key: str
    decision: PlacementDecision | None
    reason: str = ""


def place(
    requests: list[PlacementRequest], snapshot: Snapshot, framework: Framework | None = None
) -> list[Outcome]:
    """:func:`placement.plan.plan` with explanations, in size order (the one placement
    path; kept for callers of the older name). Mutates ``snapshot``'s free arrays."""
    from placement.plan import plan

    return plan(requests, snapshot, framework)


def never_fits(task: Task, nodes: list[Node]) -> str | None:
    """Whether ``task``'s resources exceed every node's allocatable capacity, for API validation.

    Ignores current usage, readiness, tiers, labels and taints: only cpu, memory and gpu
    against each node's ``allocatable`` (what work may ever use; ≤ capacity). Returns
    None when some node could hold all three at once, or when ``nodes`` is empty (the
    federation may still grow); otherwise a message such as ``"requests 512 cpu but the
    largest node of the federation has 128 (hpc-garching/cpu-partition)"``.
    """
    if not nodes:
        return None
    r = task.resources
    cpu = np.array([nd.allocatable.cpu for nd in nodes])
    mem = np.array([nd.allocatable.memory for nd in nodes], dtype=np.int64)
    gpu = np.array([nd.allocatable.gpu for nd in nodes], dtype=np.int64)
    fits = (cpu >= r.cpu) & (mem >= r.memory) & (gpu >= r.gpu)
    if fits.any():
        return None
    for what, need, have, render in (
        ("cpu", r.cpu, cpu, fmt.cpu),
        ("memory", r.memory, mem, fmt.mem),
        ("gpu", r.gpu, gpu, str),
    ):
        k = int(np.argmax(have))
        if have[k] < need:
            return (f"requests {render(need)} {what} but the largest node of the federation "
                    f"has {render(have[k])} ({nodes[k].id})")
    k = int(np.argmax(cpu))
    return (f"no single node has {fmt.cpu(r.cpu)} cpu, {fmt.mem(r.memory)} memory and "
            f"{r.gpu} gpu together; e.g. the largest by cpu, {nodes[k].id}, has "
            f"{fmt.cpu(cpu[k])} cpu, {fmt.mem(mem[k])} memory, {gpu[k]} gpu")


__all__ = ["DataSource", "Outcome", "PlacementRequest", "never_fits", "place"]
