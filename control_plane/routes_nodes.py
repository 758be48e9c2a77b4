"""Inventory routes: nodes, devices and the network topology (``/v1/nodes``,
``/v1/devices``, ``/v1/topology``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from continuum.errors import NotFound
from continuum.model import Node, Tier
from control_plane.routes_common import DevicesDep, FederationDep, NetworkDep

router = APIRouter(tags=["nodes"])


def node_view(n: Node, now: float) -> dict[str, Any]:
    """A node as the API shows it, plus ``live``: utilisation, power and their age (s)."""
    view = n.wire()
    for name, m in view.get("metrics", {}).items():
        m["ageS"] = round(now - n.metrics[name].at.timestamp(), 3)
    cpu, power = n.metrics.get("cpu_utilisation"), n.metrics.get("power_watts")
    own = "twin" if n.simulated else "telemetry"  # values the adapter reported itself
    age = round(now - n.observed_at.timestamp(), 3) if n.observed_at is not None else None
    power_src = own
    if cpu is not None and cpu.source.startswith("prometheus:"):
        power_src = "model"  # measured load, no power meter: the node's linear power model
    view["live"] = {
        "utilisation": n.utilisation,
        "utilisationAgeS": age,
        "utilisationSource": cpu.source if cpu else (own if n.utilisation is not None else None),
        "memoryUtilisation": n.memory_utilisation,
        "powerWatts": n.power_watts,
        "powerAgeS": round(now - power.at.timestamp(), 3) if power else (
            age if n.power_watts is not None else None),
        "powerSource": power.source if power else (power_src if n.power_watts is not None
                                                   else None),
        "stale": n.metrics_stale,
    }
    return view


def _link_view(link: Any, observed_at: float | None) -> dict[str, Any]:
    view: dict[str, Any] = link.wire()
    if observed_at is not None:
        view["observedAt"] = datetime.fromtimestamp(observed_at, UTC).isoformat()
    return view


@router.get("/v1/nodes", summary="List nodes")
def list_nodes(federation: FederationDep, site: str | None = None,
               tier: Tier | None = None) -> dict[str, Any]:
    nodes = [n for n in federation.nodes()
             if (site is None or n.site == site) and (tier is None or n.tier == tier)]
    now = time.time()
    return {"items": [node_view(n, now) for n in nodes]}


@router.get("/v1/nodes/{node_id:path}", summary="One node")
def get_node(node_id: str, federation: FederationDep) -> dict[str, Any]:
    n = federation.node(node_id)
    if n is None:
        raise NotFound(f"node {node_id!r} is not in the inventory (ids are site/name)")
    return node_view(n, time.time())


@router.get("/v1/devices", summary="List devices (agents) of every fleet")
def list_devices(devices: DevicesDep) -> dict[str, Any]:
    return {"items": devices()}


@router.get("/v1/topology", summary="RTT and bandwidth between locations")
def topology(network: NetworkDep) -> dict[str, Any]:
    """Every pair of known locations: RTT (ms), bandwidth (bit/s) and ``source``
    (measured by agents or blackbox probes, configured, or modelled from distance);
    measured links also carry ``observedAt``."""
    return {"links": [_link_view(link, network.observed_at(link.a, link.b))
                      for link in network.links()]}


__all__ = ["node_view", "router"]
