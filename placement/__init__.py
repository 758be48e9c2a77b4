"""Placement: deciding which node runs each run, and explaining why.

What belongs here: the per-cycle :class:`Snapshot` (nodes as numpy arrays plus the
:class:`Network`), the kube-scheduler-style filter/score :class:`Framework` and its
plugins (``placement/plugins/``, one per file), the predictors of runtime, energy and
transfer (:mod:`placement.predict`, analytic now, learned later behind the same
:class:`Predictor` protocol), and the one placement entry point :func:`plan` (node classes, assume-and-deduct,
explanations; :func:`place` is its older name). Placement is pure
computation over values: it imports only ``continuum`` (plus numpy/scipy), never a
backend, the store or the API — the control plane builds the snapshot and acts on the
decisions. What does not belong here: talking to sites, Prometheus or the database.
"""

from placement.assign import DataSource, Outcome, PlacementRequest, never_fits, place
from placement.framework import (
    Feasibility,
    FilterPlugin,
    FilterResult,
    Framework,
    Rejection,
    ScorePlugin,
    default_framework,
    normalize,
)
from placement.network import Network, StaticNetwork
from placement.plan import Planner, plan
from placement.predict import AnalyticPredictor, CycleState, NodePredictions, Predictor
from placement.snapshot import Snapshot, SnapshotCache

__all__ = [
    "AnalyticPredictor",
    "CycleState",
    "DataSource",
    "Feasibility",
    "FilterPlugin",
    "FilterResult",
    "Framework",
    "Network",
    "NodePredictions",
    "Outcome",
    "Planner",
    "PlacementRequest",
    "Predictor",
    "Rejection",
    "ScorePlugin",
    "Snapshot",
    "SnapshotCache",
    "StaticNetwork",
    "default_framework",
    "never_fits",
    "normalize",
    "place",
    "plan",
]
