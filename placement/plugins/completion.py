"""CompletionTime: predicted completion = queue wait + input transfer + runtime (term ``time``).

runtime_s = work / (speed × min(cpu request, capacity cpu)), work defaulting to
:data:`placement.predict.DEFAULT_WORK_CORE_S` core-seconds when the task gives none;
transfer_s as in :mod:`placement.plugins.locality`; queue wait from the node (e.g. a
Slurm partition's expected wait). Lower is better.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from placement import fmt
from placement.framework import Term
from placement.plugins.energy import compare
from placement.predict import CycleState, predictions

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "CompletionTime"


class CompletionTime:
    """Score: predicted completion time (s), lower is better."""

    name = NAME
    term: Term = "time"
    lower_is_better = True
    floor = 1.0
    """s: sub-second differences in completion do not matter."""

    def score(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
              mask: np.ndarray) -> np.ndarray:
        return predictions(req, snap, state).completion_s

    def describe(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
                 raw: np.ndarray, chosen: int, mask: np.ndarray) -> str | None:
        return compare(raw, chosen, mask, "predicted completion", fmt.seconds)
