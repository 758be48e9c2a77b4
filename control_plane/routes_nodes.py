"""Inventory routes: nodes, devices and the network topology (``/v1/nodes``,
``/v1/devices``, ``/v1/topology``).

The two lists are paginated with a keyset cursor, in id order (a node's ``site/name``,
a device's ``site/deviceId``): a page is ``{"items": [...], "next": token | null,
"total": n, "limit": n}``; ``next`` is the ``cursor`` of the following page (null on the
last one) and ``total`` counts every item that matches the filters at this request.
Items added or removed between pages do not shift the others: each item is on at most
one page, and one present throughout is on exactly one.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Query

from continuum.errors import NotFound, Problem, ValidationFailed
from continuum.model import Node, Tier
from control_plane.routes_common import DevicesDep, FederationDep, NetworkDep

router = APIRouter(tags=["nodes"])

DEFAULT_PAGE = 500
"""Default ``limit`` of ``GET /v1/nodes`` and ``GET /v1/devices`` (items per page)."""
MAX_PAGE = 5000
"""Largest ``limit`` of those lists: a larger one is a 422."""

T = TypeVar("T")


def encode_cursor(after: str) -> str:
    """The opaque ``next`` token of a page whose last item's key is ``after``
    (URL-safe base64 of ``{"after": key}``, unpadded)."""
    raw = json.dumps({"after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> str:
    """The key a ``cursor`` (an earlier page's ``next``) continues after.

    Raises:
        ValidationFailed: not a token this API gave (a 422 at ``query.cursor``).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        after = None
    if not isinstance(after, str):
        raise ValidationFailed([Problem(["query", "cursor"], "not a cursor of this list: "
                                        "pass the `next` of the previous page as is",
                                        "invalid_cursor")])
    return after


def keyset_page(items: Iterable[T], key: Callable[[T], str], cursor: str | None,
                limit: int) -> tuple[list[T], str | None, int]:
    """One page of ``items`` in ``key`` order: at most ``limit`` of those whose key is
    after ``cursor``'s; returns ``(page, next cursor or None, count of all items)``.

    Raises:
        ValidationFailed: ``cursor`` is not a token of :func:`encode_cursor`.
    """
    after = decode_cursor(cursor) if cursor is not None else None
    every = list(items)
    rest = every if after is None else [x for x in every if key(x) > after]
    page = heapq.nsmallest(limit + 1, rest, key=key)  # O(n log limit), no full sort
    if len(page) > limit:
        return page[:limit], encode_cursor(key(page[limit - 1])), len(every)
    return page, None, len(every)


_LIMIT = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="items per page (1–5000)")
_CURSOR = Query(None, max_length=2048,
                description="the `next` of the previous page; absent for the first")


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


@router.get("/v1/nodes", summary="List nodes, a page at a time, in id order")
def list_nodes(federation: FederationDep,
               site: str | None = Query(None, max_length=63, description="only this site"),
               tier: Tier | None = None,
               ready: bool | None = Query(None, description="only ready (or not ready) nodes"),
               prefix: str | None = Query(None, max_length=253,
                                          description="only names starting with this"),
               limit: int = _LIMIT, cursor: str | None = _CURSOR) -> dict[str, Any]:
    """``{"items": [node...], "next": cursor | null, "total": matches, "limit": n}``,
    ordered by id (``site/name``); a node is as in ``GET /v1/nodes/{site}/{name}``.
    Follow ``next`` (as ``cursor``, with the same filters) until it is null to list
    every node. 422 naming the field: ``limit`` outside 1–5000, a ``cursor`` this API
    did not give, a ``tier`` that is not device/edge/cloud/hpc."""
    nodes = (n for n in federation.nodes()
             if (site is None or n.site == site) and (tier is None or n.tier == tier)
             and (ready is None or n.ready == ready)
             and (not prefix or n.name.startswith(prefix)))
    page, after, total = keyset_page(nodes, lambda n: n.id, cursor, limit)
    now = time.time()
    return {"items": [node_view(n, now) for n in page], "next": after, "total": total,
            "limit": limit}


@router.get("/v1/nodes/{node_id:path}", summary="One node")
def get_node(node_id: str, federation: FederationDep) -> dict[str, Any]:
    n = federation.node(node_id)
    if n is None:
        raise NotFound(f"node {node_id!r} is not in the inventory (ids are site/name)")
    return node_view(n, time.time())


@router.get("/v1/devices", summary="List devices (agents) of every fleet, a page at a time")
def list_devices(devices: DevicesDep,
                 site: str | None = Query(None, max_length=63, description="only this site"),
                 state: Literal["online", "offline", "lost", "unknown"] | None = Query(
                     None, description="online; offline (said so); lost (says online, "
                     "silent too long); unknown (no status yet)"),
                 prefix: str | None = Query(None, max_length=253,
                                            description="only device ids starting with this"),
                 limit: int = _LIMIT, cursor: str | None = _CURSOR) -> dict[str, Any]:
    """``{"items": [device...], "next": cursor | null, "total": matches, "limit": n}``,
    ordered by ``site/deviceId``. A device is ``{site, deviceId, online, state,
    lastSeen, hello, telemetry, running}``. Follow ``next`` (as ``cursor``, with the
    same filters) until it is null to list every device. 422 naming the field:
    ``limit`` outside 1–5000, an unknown ``state``, a ``cursor`` this API did not give."""
    index = ((s, i) for s, i, st in devices.device_states()
             if (site is None or s == site) and (state is None or st == state)
             and (not prefix or i.startswith(prefix)))
    page, after, total = keyset_page(index, lambda k: f"{k[0]}/{k[1]}", cursor, limit)
    # only the page's devices are serialised (a fleet's payloads cost far more than its ids)
    items = sorted(devices.devices(page), key=lambda d: f"{d['site']}/{d['deviceId']}")
    return {"items": items, "next": after, "total": total, "limit": limit}


@router.get("/v1/topology", summary="RTT and bandwidth between locations")
def topology(network: NetworkDep) -> dict[str, Any]:
    """Every pair of known locations: RTT (ms), bandwidth (bit/s) and ``source``
    (measured by agents or blackbox probes, configured, or modelled from distance);
    measured links also carry ``observedAt``."""
    return {"links": [_link_view(link, network.observed_at(link.a, link.b))
                      for link in network.links()]}


__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "decode_cursor", "encode_cursor", "keyset_page",
           "node_view", "router"]
