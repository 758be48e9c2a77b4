"""The ``kubeedge`` adapter: the Kubernetes adapter plus KubeEdge's edge semantics.

* **edge nodes** — nodes labelled ``node-role.kubernetes.io/edge`` are tier ``edge``
  (a ``continuum.io/tier`` label still overrides). KubeEdge's ``keadm join
  --with-edge-taint`` taints them ``node-role.kubernetes.io/edge:NoSchedule``; every
  workload of this site tolerates that taint (config ``tolerateEdgeTaint``, default
  true), so placement is not shown it.
* **edge autonomy** — every pod tolerates ``node.kubernetes.io/unreachable`` and
  ``node.kubernetes.io/not-ready`` (``NoExecute``) *without* ``tolerationSeconds``:
  when an edge node loses its cloud link, the node lifecycle controller taints it and
  evicts pods after 300 s (the admission default) unless they tolerate it forever. An
  evicted pod would be re-created elsewhere while the original keeps running on the
  disconnected node, which is what KubeEdge users complain about most. So the node
  shows not ready (with its condition) and the run stays Running, with the reason
  saying the node is offline. Edge nodes carry the label
  ``continuum.io/autonomous=true``, which tells the control plane's lost-work
  re-placement (control_plane/migration.py) not to move their runs elsewhere.
* **devices** — KubeEdge ``Device`` objects (``devices.kubeedge.io/v1beta1``, read with
  ``CustomObjectsApi``) are data sources: the node a device is bound to
  (``spec.nodeName``) gets the label ``device.continuum.io/<device>=true``, so a task
  that must run next to a device asks for it in ``constraints.labels``; and
  :meth:`KubeEdgeAdapter.data_sources` lists each device with its node and location,
  which a Dataset's ``locations`` may name for soft locality.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client as k8s

from adapters.base import AdapterContext
from adapters.kubernetes.adapter import (
    EDGE_ROLE,
    REQUIRED_PERMISSIONS,
    KubernetesAdapter,
    Permission,
)
from continuum.errors import PermanentError
from continuum.model import Node, SiteKind, SiteSpec, Taint

log = logging.getLogger(__name__)

DEVICE_GROUP = "devices.kubeedge.io"
DEVICE_VERSION = "v1beta1"
DEVICE_PLURAL = "devices"
DEVICE_LABEL_PREFIX = "device.continuum.io/"
AUTONOMOUS_LABEL = "continuum.io/autonomous"
"""Set to ``"true"`` on edge nodes: their pods go on while the node is disconnected, so
the control plane's lost-work re-placement leaves their runs where they are."""

EDGE_AUTONOMY_TOLERATIONS: list[dict[str, Any]] = [
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
]
"""Tolerate a disconnected node forever (no ``tolerationSeconds``): no eviction."""

EDGE_TAINT_TOLERATION: dict[str, Any] = {"key": EDGE_ROLE, "operator": "Exists",
                                         "effect": "NoSchedule"}


class KubeEdgeAdapter(KubernetesAdapter):
    """Adapter for a ``kubeedge`` site (see the module docstring); same config as kubernetes."""

    kind = SiteKind.kubeedge

    def __init__(self, site: SiteSpec, ctx: AdapterContext, *,
                 api_client: k8s.ApiClient | None = None) -> None:
        self._devices: list[dict[str, Any]] = []
        super().__init__(site, ctx, api_client=api_client)
        self.custom = k8s.CustomObjectsApi(self.api)

    def _extra_tolerations(self) -> list[dict[str, Any]]:
        extra = [dict(t) for t in EDGE_AUTONOMY_TOLERATIONS]
        if self.config.tolerate_edge_taint:
            extra.append(dict(EDGE_TAINT_TOLERATION))
        return extra

    def _permissions(self) -> tuple[Permission, ...]:
        return REQUIRED_PERMISSIONS + (Permission("list", DEVICE_PLURAL, DEVICE_GROUP,
                                                  namespaced=False),)

    def _visible_taints(self, taints: list[dict[str, Any]]) -> list[Taint]:
        tolerated = {(t["key"], t["effect"]) for t in self._extra_tolerations()}
        return [t for t in super()._visible_taints(taints)
                if (t.key, t.effect) not in tolerated]

    def _node_extras(self, nodes: list[Node]) -> list[Node]:
        try:
            listed = self._call("list KubeEdge devices (devices.kubeedge.io/v1beta1)",
                                lambda: self.custom.list_cluster_custom_object(
                                    DEVICE_GROUP, DEVICE_VERSION, DEVICE_PLURAL,
                                    _request_timeout=self._timeout))
        except PermanentError as e:
            if e.details.get("status") != 404:
                raise
            # the Device CRD is not installed: a KubeEdge cluster without device management
            log.info("site %s: no devices.kubeedge.io CRD: %s", self.site.name, e.message)
            listed = {"items": []}
        if not isinstance(listed, dict):
            listed = {"items": []}
        by_node: dict[str, list[str]] = {}
        devices = []
        for d in listed.get("items") or []:
            meta, spec = d.get("metadata") or {}, d.get("spec") or {}
            node = spec.get("nodeName") or spec.get("nodeSelector", {}).get("nodeName")
            devices.append({"name": meta.get("name"), "namespace": meta.get("namespace"),
                            "model": (spec.get("deviceModelRef") or {}).get("name"),
                            "protocol": (spec.get("protocol") or {}).get("protocolName"),
                            "nodeName": node})
            if node:
                by_node.setdefault(str(node), []).append(str(meta.get("name")))
        out = []
        for n in nodes:
            labels = dict(n.labels)
            labels.update({DEVICE_LABEL_PREFIX + d: "true" for d in by_node.get(n.name, [])})
            if EDGE_ROLE in labels:
                labels[AUTONOMOUS_LABEL] = "true"
            out.append(n.model_copy(update={"labels": labels}) if labels != n.labels else n)
        located = {n.name: n for n in out}
        for d in devices:
            node = located.get(str(d["nodeName"]))
            d["node"] = node.id if node else None
            d["location"] = node.location if node else None
            d["online"] = bool(node and node.ready)
        with self._lock:
            self._devices = devices
        return out

    def data_sources(self) -> list[dict[str, Any]]:
        """Every KubeEdge Device from the last inventory: ``name``, ``namespace``, ``model``,
        ``protocol``, ``nodeName``, ``node`` (Continuum node id), ``location``, ``online``."""
        with self._lock:
            return [dict(d) for d in self._devices]
