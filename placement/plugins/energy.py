"""Energy: predicted joules attributed to the task on each node (term ``energy``).

E = runtime_s × [ idle_watts·u + (max_watts − idle_watts)·u + gpu_request·gpu_watts ],
u = cpu request / capacity cpu — the linear power model of Fan, Weber & Barroso,
"Power provisioning for a warehouse-sized computer", ISCA 2007, with the task charged
its dynamic share and its proportional share of idle power (see
:mod:`placement.predict`). Lower is better.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from placement import fmt
from placement.framework import Term
from placement.predict import CycleState, predictions

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "Energy"


class Energy:
    """Score: predicted energy (J), lower is better."""

    name = NAME
    term: Term = "energy"
    lower_is_better = True
    floor = 1.0
    """J: differences of a joule or so do not matter."""

    def score(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
              mask: np.ndarray) -> np.ndarray:
        return predictions(req, snap, state).energy_j

    def describe(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
                 raw: np.ndarray, chosen: int, mask: np.ndarray) -> str | None:
        return compare(raw, chosen, mask, "predicted energy", fmt.joules)


def compare(raw: np.ndarray, chosen: int, mask: np.ndarray, what: str,
            render: Callable[[float], str]) -> str:
    """'lowest {what} 41 J vs 310 J next best' or '{what} 41 J (best 30 J elsewhere)'."""
    mine = float(raw[chosen])
    others = raw[mask & (np.arange(raw.size) != chosen)]
    if others.size == 0:
        return f"{what} {render(mine)} (only feasible node)"
    best_other = float(others.min())
    if mine <= best_other:
        return f"lowest {what} {render(mine)} vs {render(best_other)} next best"
    return f"{what} {render(mine)} (best elsewhere {render(best_other)})"
