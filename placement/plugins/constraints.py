"""NodeConstraints: the task's hard rules about *where* — not about how much.

Checks, in this order (a node is attributed to the first it fails): node ready; tier in
``constraints.tiers``; arch in ``constraints.arch``; every ``constraints.labels`` pair
present on the node; site in ``constraints.sites``; the node's site not draining (the
control plane shows a draining site's nodes with ``draining=True`` so the reason names
the site); every ``NoSchedule``/``NoExecute`` taint tolerated (Kubernetes toleration
semantics; ``PreferNoSchedule`` is not a filter and is ignored here); a task with an
``image`` needs ``"container"`` in the node's runtimes; a task without one needs every
module of ``requires.python`` on a node that declares its Python modules (a node that
declares none is assumed to provide them). Empty constraint lists mean "anywhere".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from continuum.model import Constraints, Taint, Tier, Toleration
from placement.framework import FilterResult, Rejection
from placement.predict import CycleState
from placement.snapshot import TIER_CODE, TIERS

if TYPE_CHECKING:
    from placement.assign import PlacementRequest
    from placement.snapshot import Snapshot

NAME = "NodeConstraints"
REASON_NOT_READY = "nodes not ready"
REASON_TIER = "wrong tier"
REASON_ARCH = "wrong arch"
REASON_LABELS = "labels do not match"
REASON_SITE = "site not allowed"
REASON_TAINT = "have untolerated taints"
REASON_NO_CONTAINER = "have no container runtime"
REASON_DRAINING = "on a draining site"
REASON_PYTHON = "lack required python modules"

FILTER_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


def tolerates(tol: Toleration, taint: Taint) -> bool:
    """Kubernetes ``Toleration.ToleratesTaint``: effect (empty = any), key, operator."""
    if tol.effect is not None and tol.effect != taint.effect:
        return False
    if tol.operator == "Exists" and tol.key == "":
        return True
    if tol.key != taint.key:
        return False
    return tol.operator == "Exists" or tol.value == taint.value


def untolerated(taints: tuple[Taint, ...], tolerations: list[Toleration]) -> list[Taint]:
    """The filtering taints (NoSchedule/NoExecute) no toleration matches."""
    return [t for t in taints if t.effect in FILTER_EFFECTS
            and not any(tolerates(tol, t) for tol in tolerations)]


StaticKey = tuple[tuple[tuple[str, str], ...], tuple[str, ...], tuple[str, ...],
                  tuple[str, ...]]
"""The fixed-property part of a task's constraints: (labels as sorted pairs, arch, tiers,
sites), each sorted (:func:`static_key`)."""


def tier_ok(tiers: list[Tier], snap: Snapshot) -> np.ndarray:
    """Boolean ``(n,)``: the node's tier is one of ``tiers`` (non-empty)."""
    return np.isin(snap.tier, [TIER_CODE[Tier(t)] for t in tiers])


def arch_ok(arch: list[str], snap: Snapshot) -> np.ndarray:
    """Boolean ``(n,)``: the node's arch is one of ``arch`` (non-empty)."""
    return np.isin(snap.arch, list(arch))


def sites_ok(sites: list[str], snap: Snapshot) -> np.ndarray:
    """Boolean ``(n,)``: the node's site is one of ``sites`` (non-empty)."""
    return np.isin(snap.site, list(sites))


def labels_ok(labels: dict[str, str], snap: Snapshot) -> np.ndarray:
    """Boolean ``(n,)``: the node carries every ``key=value`` of ``labels``."""
    ok = np.ones(snap.n, dtype=bool)
    for k, v in labels.items():
        ok &= snap.label_mask(k, v)
    return ok


def static_key(c: Constraints) -> StaticKey | None:
    """The constraints of ``c`` that read only a node's fixed properties (labels, arch,
    tier, site) as a hashable key; None when ``c`` has none. Readiness, draining and
    taints change while a node lives and are left out."""
    if not (c.labels or c.arch or c.tiers or c.sites):
        return None
    return (tuple(sorted(c.labels.items())), tuple(sorted(c.arch)),
            tuple(sorted(str(Tier(t)) for t in c.tiers)), tuple(sorted(c.sites)))


def static_mask(key: StaticKey, snap: Snapshot) -> np.ndarray:
    """Boolean ``(n,)``: the nodes a task with the static constraints ``key``
    (:func:`static_key`) may ever run on, by the same rules as :class:`NodeConstraints`."""
    labels, arch, tiers, sites = key
    ok = labels_ok(dict(labels), snap)
    if arch:
        ok &= arch_ok(list(arch), snap)
    if tiers:
        ok &= tier_ok([Tier(t) for t in tiers], snap)
    if sites:
        ok &= sites_ok(list(sites), snap)
    return ok


class NodeConstraints:
    """Filter: readiness, tiers, arch, labels, sites, draining sites, taints/tolerations,
    container runtime, required Python modules."""

    name = NAME

    def filter(self, req: PlacementRequest, snap: Snapshot, state: CycleState) -> FilterResult:
        task = req.task
        c = task.constraints
        n = snap.n
        none = np.zeros(n, dtype=bool)
        rejections = [Rejection(REASON_NOT_READY, ~snap.ready,
                                fix="wait for nodes to become ready")]

        if c.tiers:
            names = ", ".join(str(Tier(t)) for t in c.tiers)
            rejections.append(Rejection(
                REASON_TIER, ~tier_ok(c.tiers, snap),
                lambda att: f"allowed: {names}; these are "
                            + ", ".join(sorted({str(TIERS[i]) for i in snap.tier[att]})),
                f"widen constraints.tiers beyond {names}",
            ))
        if c.arch:
            archs = ", ".join(c.arch)
            rejections.append(Rejection(
                REASON_ARCH, ~arch_ok(c.arch, snap),
                lambda att: f"allowed: {archs}", f"build for more than {archs}",
            ))
        if c.labels:
            ok = labels_ok(c.labels, snap)
            want = ", ".join(f"{k}={v}" for k, v in c.labels.items())
            rejections.append(Rejection(REASON_LABELS, ~ok, lambda att: f"need {want}",
                                        f"relax constraints.labels ({want})"))
        if c.sites:
            sites = ", ".join(c.sites)
            rejections.append(Rejection(
                REASON_SITE, ~sites_ok(c.sites, snap),
                lambda att: f"allowed: {sites}", f"widen constraints.sites beyond {sites}",
            ))
        if snap.draining.any():
            drained = sorted(set(snap.site[snap.draining]))
            rejections.append(Rejection(
                REASON_DRAINING, snap.draining.copy(),
                lambda att: "; ".join(f"site {site} is draining"
                                      for site in sorted(set(snap.site[att]))),
                "wait until " + " and ".join(drained)
                + (" take" if len(drained) > 1 else " takes") + " work again ("
                + ", ".join(f"POST /v1/sites/{site}/resume" for site in drained) + ")",
            ))
        if snap.taint_sets:
            bad_groups = [untolerated(ts, c.tolerations) for ts in snap.taint_sets]
            group_bad = np.array([bool(b) for b in bad_groups], dtype=bool)
            mask = group_bad[snap.taint_group] if n else none

            def describe(att: np.ndarray) -> str:
                keys = sorted({f"{t.key}:{t.effect}" for g in np.unique(snap.taint_group[att])
                               for t in bad_groups[g]})
                return "taints " + ", ".join(keys)

            rejections.append(Rejection(REASON_TAINT, mask, describe,
                                        "add constraints.tolerations for the taints"))
        if task.image is not None:
            rejections.append(Rejection(
                REASON_NO_CONTAINER, ~snap.container,
                lambda att: f"image {task.image} needs a container runtime",
                "use command/script instead of image, or target container-capable nodes",
            ))
        if task.image is None and task.requires.python:
            missing = {m: ~snap.python_mask(m) for m in task.requires.python}
            lacks = np.zeros(n, dtype=bool)
            for m in missing.values():
                lacks |= m

            def describe_modules(att: np.ndarray) -> str:
                total = int(att.sum())
                parts = [m if k == total else f"{m} ({k} of {total})"
                         for m, mm in missing.items() if (k := int((mm & att).sum()))]
                return f"lacks python module{'s' if len(parts) > 1 else ''} " + ", ".join(parts)

            rejections.append(Rejection(
                REASON_PYTHON, lacks, describe_modules,
                "install the modules into the python3 the device agent runs tasks with "
                "(e.g. pip install scikit-learn for sklearn) and restart the agent",
            ))
        return FilterResult.from_rejections(n, rejections)
