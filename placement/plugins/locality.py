"""DataLocality: time to bring the request's inputs to the node (term ``data``).

For each :class:`~placement.assign.DataSource`: transfer_s = bytes·8 / bandwidth +
RTT/1000 from the nearest replica (least transfer time) among its locations and the
locations of nodes caching it; zero, and zero bytes moved, on a node caching it. Sources
add up. The raw score is transfer seconds (it weighs bytes by the path they cross);
bytes moved is recorded in the prediction. Lower is better.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from placement import fmt
from placement.framework import Term
from placement.predict import CycleState, predictions

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "DataLocality"


class DataLocality:
    """Score: predicted input transfer time (s), lower is better."""

    name = NAME
    term: Term = "data"
    lower_is_better = True
    floor = 1.0
    """s: a second of transfer is the unit that matters next to runtimes."""

    def score(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
              mask: np.ndarray) -> np.ndarray:
        return predictions(req, snap, state).transfer_s

    def describe(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
                 raw: np.ndarray, chosen: int, mask: np.ndarray) -> str | None:
        if not req.sources:
            return None
        p = predictions(req, snap, state)
        moved = int(p.bytes_moved[chosen])
        if moved == 0:
            return "inputs already on the node (0 bytes moved)"
        return f"input transfer {fmt.seconds(float(raw[chosen]))} ({fmt.mem(moved)} moved)"
