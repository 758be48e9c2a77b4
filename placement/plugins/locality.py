"""DataLocality: the cost of bringing the request's inputs to the node (term ``data``).

Two measures (:attr:`DataLocality.cost`):

* ``"wan_bytes"`` (the default framework's, since issue 16): the input bytes that would
  cross the WAN, in GiB — :func:`placement.predict.wan_bytes` (zero on a node at a
  replica's location or caching it) — with a floor of 1 GiB. With the framework's ratio-
  to-best normalisation (:func:`placement.framework.normalize`, ``1 − (min + f) / (x +
  f)``) a node that moves ``x`` GiB more over the WAN than the best candidate (which
  moves none) costs ``x / (x + 1)`` of the term's weight: 1 GiB costs 0.5 — exactly what
  a node twice as slow as the best costs in the ``time`` term — 10 GiB 0.91. So **a data
  weight of 1 means: moving a GiB over the WAN is as bad as doubling the task's
  completion time** (a GiB is ≈ 86 s on a 100 Mbit/s site uplink). Bytes copied within a
  location count :data:`LAN_WEIGHT` each. The floor was chosen on scenario A of the
  bench (bench/RESULTS.md, "Data locality"): with 1 GiB the product's default data
  weight (1) cuts WAN bytes 11× for 7 % completion; with 10 GiB it needs a weight of 2,
  with the share of the request's input as the measure (floor = all of it) the front had
  a cliff (no weight between "nothing moves" and "+15 % completion"). Transfer *time* is
  already part of predicted completion (:mod:`placement.plugins.completion`); this term
  is the network traffic itself.
* ``"transfer_s"`` (the measure before issue 16, kept for comparison in the bench):
  transfer_s = bytes·8 / bandwidth + RTT/1000 from the nearest replica (least transfer
  time), zero on a node caching it, sources added up. On a fast WAN link it barely
  differs from a LAN copy (10 Gbit/s either way), so its weight hardly moved WAN bytes
  (bench/RESULTS.md).

Lower is better. Bytes moved (node-level, LAN included) and WAN bytes are recorded in
the prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from placement import fmt
from placement.framework import Term
from placement.predict import CycleState, predictions

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "DataLocality"
DataCost = Literal["wan_bytes", "transfer_s"]
GIB = float(2**30)
"""Bytes per GiB, the unit of the ``wan_bytes`` measure (its floor is one)."""
LAN_WEIGHT = 0.01
"""What a byte copied within its location (LAN) counts in the ``wan_bytes`` measure
next to one over the WAN: the bandwidth ratio of a 100 Mbit/s site uplink to 10 GbE
(:data:`placement.network.LAN_BANDWIDTH_BPS`). Non-zero so that a node caching the
input still beats its neighbours, which copy it over the LAN."""


class DataLocality:
    """Score: the input moved over the WAN in GiB (``cost="wan_bytes"``), or the
    predicted input transfer time in s (``cost="transfer_s"``, the constructor's default
    for compatibility); lower is better. Raises ``ValueError`` on another ``cost``."""

    name = NAME
    term: Term = "data"
    lower_is_better = True
    floor = 1.0
    """``wan_bytes``: one GiB over the WAN; ``transfer_s``: a second of transfer, the
    unit that matters next to runtimes (module docstring)."""

    def __init__(self, cost: DataCost = "transfer_s") -> None:
        if cost not in ("wan_bytes", "transfer_s"):
            raise ValueError(f"DataLocality cost must be 'wan_bytes' or 'transfer_s', "
                             f"got {cost!r}")
        self.cost = cost

    def score(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
              mask: np.ndarray) -> np.ndarray:
        p = predictions(req, snap, state)
        if self.cost == "transfer_s":
            return p.transfer_s
        lan = np.maximum(p.bytes_moved - p.wan_bytes, 0)
        out: np.ndarray = (p.wan_bytes + LAN_WEIGHT * lan) / GIB
        return out

    def describe(self, req: PlacementRequest, snap: Snapshot, state: CycleState,
                 raw: np.ndarray, chosen: int, mask: np.ndarray) -> str | None:
        if not req.sources:
            return None
        p = predictions(req, snap, state)
        moved = int(p.bytes_moved[chosen])
        if moved == 0:
            return "inputs already on the node (0 bytes moved)"
        wan = int(p.wan_bytes[chosen])
        where = "over the WAN" if wan else "within its location, none over the WAN"
        return (f"input transfer {fmt.seconds(float(p.transfer_s[chosen]))} "
                f"({fmt.mem(moved)} moved {where})")
