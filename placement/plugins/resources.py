"""NodeResourcesFit: the request's cpu, memory and gpu must fit in the node's free capacity.

GPUs fit per physical GPU when the snapshot counts GPU shares
(:meth:`placement.snapshot.Snapshot.gpu_fit`).

Free capacity is ``node.free`` (or ``allocatable``) minus what this cycle already
assumed onto the node (:meth:`placement.snapshot.Snapshot.assume`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from placement import fmt
from placement.framework import FilterResult, Rejection
from placement.predict import CycleState
from placement.snapshot import CPU_EPS

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "NodeResourcesFit"
REASON_CPU = "nodes lack cpu"
REASON_MEMORY = "nodes lack memory"
REASON_GPU = "nodes lack gpu"


class NodeResourcesFit:
    """Filter: ``request ≤ free`` for cpu (cores, with :data:`CPU_EPS` slack), memory, gpu."""

    name = NAME

    def filter(self, req: PlacementRequest, snap: Snapshot, state: CycleState) -> FilterResult:
        r = req.task.resources

        rejections = [
            Rejection(
                REASON_CPU, snap.free_cpu + CPU_EPS < r.cpu,
                lambda att: f"need {fmt.cpu(r.cpu)}, largest free "
                            f"{fmt.cpu(max(float(snap.free_cpu[att].max()), 0.0))}",
                f"request less cpu than {fmt.cpu(r.cpu)} or wait for running work to finish",
            ),
            Rejection(
                REASON_MEMORY, snap.free_mem < r.memory,
                lambda att: f"need {fmt.mem(r.memory)}, largest free "
                            f"{fmt.mem(max(int(snap.free_mem[att].max()), 0))}",
                f"request less memory than {fmt.mem(r.memory)} or wait for capacity",
            ),
            Rejection(
                REASON_GPU, ~snap.gpu_fit(r.gpu),
                lambda att: f"need {r.gpu}, largest free "
                            f"{max(int(snap.free_gpu[att].max()), 0)}",
                "request fewer gpus or add a site with gpus",
            ),
        ]
        return FilterResult.from_rejections(snap.n, rejections)
