"""The federation at run time: one adapter per site, their inventories and health.

Sites are persisted in the store; at start every stored site gets its adapter back,
so a restarted control plane sees the same federation. Inventories are refreshed per
site at most every ``inventory_interval_s``; a site whose inventory call fails keeps
its last nodes (marked not ready) and shows Unreachable with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from adapters import registry as adapters
from adapters.base import Adapter, AdapterContext
from adapters.capabilities import DescribesBackend, PartitionStats, SupportsCheck
from continuum.errors import AdapterError, AuthError, Conflict, NotFound
from continuum.model import Node, SiteHealth, SiteKind, SiteSpec
from control_plane.sealing import (
    Sealer,
    SealingError,
    load_sealer,
    redact_config,
    rotate_config,
    seal_config,
    unseal_config,
)
from control_plane.settings import Settings
from control_plane.store import SiteRow, Store
from monitoring.catalog import check_monitoring
from monitoring.collector import Collector
from monitoring.metrics import ControlPlaneMetrics

log = logging.getLogger(__name__)


@dataclass
class SiteRuntime:
    """A registered site and what the control plane knows of it now."""

    spec: SiteSpec
    adapter: Adapter
    draining: bool = False
    health: SiteHealth = SiteHealth.Ready
    message: str = ""
    nodes: list[Node] = field(default_factory=list)
    inventory_at: float = 0.0
    removed: bool = False

    def summary(self) -> dict[str, Any]:
        health = SiteHealth.Draining if self.draining else self.health
        wire = self.spec.wire()  # uploaded credentials are never echoed
        wire["config"] = redact_config(self.spec.kind.value, wire.get("config", {}))
        out = {**wire, "health": health.value, "message": self.message,
               "nodes": len(self.nodes),
               "simulated": bool(self.nodes) and all(n.simulated for n in self.nodes)}
        if isinstance(self.adapter, DescribesBackend):  # e.g. Slurm release, data_parser
            out["backend"] = self.adapter.backend_info()
        return out


class Federation:
    """Sites, adapters and the merged node inventory. Thread-safe."""

    def __init__(self, store: Store, ctx: AdapterContext, settings: Settings,
                 metrics: ControlPlaneMetrics, collector: Collector | None = None):
        self.store = store
        self.ctx = ctx
        self.settings = settings
        self.metrics = metrics
        self._sites: dict[str, SiteRuntime] = {}
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        """Held while the sites table and ``_sites`` are made to agree (register, remove,
        :meth:`sync`), so a resync never sees one without the other."""
        self._failed: dict[str, str] = {}
        self._generation = 0
        self.collector = collector
        """Joins live metrics onto each refreshed inventory (None: inventories as is)."""
        keys = settings.sealing_keys.get_secret_value() if settings.sealing_keys else None
        self.sealer = load_sealer(settings.state_dir, keys)
        """Seals the sites' secrets in the store (control_plane/sealing.py)."""

    # ------------------------------------------------------------ registration

    def _effective(self, spec: SiteSpec) -> SiteSpec:
        if spec.kind == SiteKind.devices and "broker" not in spec.config:
            return spec.model_copy(update={"config": {**spec.config,
                                                      "broker": self.settings.broker_url}})
        return spec

    def load(self) -> None:
        """Re-create the adapter of every stored site (at start)."""
        self.sync()
        n = reseal_sites(self.store, self.sealer, clear_only=True)
        if n:  # rows written before sealing existed held their secrets in clear
            self.store.vacuum(SiteRow.__tablename__)  # the old rows' bytes stay until then
            log.info("sealed %d site secret(s) that were stored in clear", n)

    def sync(self) -> tuple[list[str], list[str]]:
        """Match the adapters to the sites table: create those of stored sites this
        process lacks, close those whose row is gone, take each row's ``draining``.
        Every replica calls it every ``federation_resync_s``, so a site registered or
        removed through another replica appears or goes here. Returns (added, removed)
        site names. A row whose adapter cannot start is logged and tried again next time.
        """
        added: list[str] = []
        with self._sync_lock:
            with self.store.session() as s:
                stored = [(r.name, r.kind, r.spec, r.draining)
                          for r in s.scalars(select(SiteRow)).all()]
            names = {name for name, *_ in stored}
            for name, kind, wire, draining in stored:
                with self._lock:
                    rt = self._sites.get(name)
                if rt is not None:
                    if rt.draining != draining:
                        rt.draining = draining
                        self._changed()
                    continue
                try:
                    spec = SiteSpec.model_validate(
                        {**wire, "config": unseal_config(kind, wire.get("config") or {},
                                                         self.sealer)})
                except SealingError as e:
                    self._log_once(name, f"site {name}: cannot open its credentials: {e}")
                    continue
                try:
                    rt = SiteRuntime(spec=spec, adapter=adapters.create(self._effective(spec),
                                                                        self.ctx),
                                     draining=draining)
                except AdapterError as e:
                    self._log_once(name, f"site {spec.name}: cannot start its adapter: {e}")
                    continue
                self._failed.pop(name, None)
                with self._lock:
                    self._sites[spec.name] = rt
                added.append(name)
            with self._lock:
                gone = [self._sites.pop(n) for n in list(self._sites) if n not in names]
                for rt in gone:
                    rt.removed = True
        if added or gone:
            self._changed()
        for rt in gone:
            self._forget(rt)
        if added or gone:
            log.info("sites from the store: added %s, removed %s", added or "none",
                     [rt.spec.name for rt in gone] or "none")
        return added, [rt.spec.name for rt in gone]

    @property
    def inventory_generation(self) -> int:
        """A counter that grows after every change to what :meth:`placeable_nodes` returns:
        a site added or removed, its ``draining`` set, its inventory or health refreshed
        (every refresh counts, changed or not). Equal values read before two
        :meth:`placeable_nodes` calls mean equal node lists, so a caller may keep what it
        built from the first (the applier's :class:`~placement.snapshot.SnapshotCache`).
        Adapters hand out new :class:`Node` objects for a change, never edit one in place.
        """
        return self._generation

    def _changed(self) -> None:
        """Count one inventory change; called after the change is in place, so a reader
        that sees the new generation also sees the new state."""
        with self._lock:
            self._generation += 1

    def _log_once(self, name: str, message: str) -> None:
        if self._failed.get(name) != message:
            self._failed[name] = message
            log.error("%s", message)

    def register(self, spec: SiteSpec, *, exist_ok: bool = False) -> SiteRuntime:
        """Create the site's adapter, check it, persist it.

        Raises:
            Conflict: a site of that name exists (unless ``exist_ok``).
            AdapterError: the adapter could not be created or its first inventory failed.
        """
        with self._lock:
            if spec.name in self._sites:
                if exist_ok:
                    return self._sites[spec.name]
                raise Conflict(f"site {spec.name!r} is already registered; remove it first "
                               "or choose another name")
        check_monitoring(spec.monitoring, spec.name)
        adapter = adapters.create(self._effective(spec), self.ctx)
        if isinstance(adapter, SupportsCheck):  # adapters that can say precisely what is wrong
            try:
                adapter.check()
            except BaseException:
                adapter.close()
                raise
        rt = SiteRuntime(spec=spec, adapter=adapter)
        self._refresh_site(rt, time.time())
        if rt.health == SiteHealth.Unreachable and spec.kind != SiteKind.devices:
            adapter.close()
            raise AdapterError(rt.message, site=spec.name)
        with self._sync_lock:
            with self.store.session() as s:
                if s.get(SiteRow, spec.name) is None:
                    wire = spec.wire()
                    wire["config"] = seal_config(spec.kind.value, wire.get("config") or {},
                                                 self.sealer)
                    s.add(SiteRow(name=spec.name, kind=spec.kind.value, spec=wire))
            with self._lock:
                old = self._sites.get(spec.name)
                self._sites[spec.name] = rt
            self._changed()
        if old is not None:  # a resync started the stored site meanwhile: keep ours
            old.adapter.close()
        log.info("site %s (%s) registered: %s, %d nodes", spec.name, spec.kind.value,
                 rt.health.value, len(rt.nodes))
        return rt

    def drain(self, name: str, draining: bool = True) -> SiteRuntime:
        """Stop (or, with ``draining=False``, resume) placing new work on the site; persisted.

        Raises:
            NotFound: no such site.
        """
        rt = self.site(name)
        with self.store.session() as s:
            row = s.get(SiteRow, name)
            if row is not None:
                row.draining = draining
        rt.draining = draining
        self._changed()
        log.info("site %s: %s", name, "draining" if draining else "taking new work again")
        return rt

    def remove(self, name: str) -> SiteRuntime:
        """Forget the site: close its adapter, delete its row. Runs still recorded on it
        are failed by the reconciler's next sync ("site was removed") and retried elsewhere.

        Raises:
            NotFound: no such site.
        """
        with self._sync_lock:
            with self._lock:
                rt = self.site(name)
                del self._sites[name]
                rt.removed = True
            self._changed()
            with self.store.session() as s:
                row = s.get(SiteRow, name)
                if row is not None:
                    s.delete(row)
        self._forget(rt)
        log.info("site %s removed", name)
        return rt

    def _forget(self, rt: SiteRuntime) -> None:
        """Close a site's adapter and drop its metrics (it is no longer in ``_sites``)."""
        name = rt.spec.name
        try:
            rt.adapter.close()
        except Exception:
            log.exception("site %s: close failed", name)
        self.metrics.site_up.labels(name, rt.spec.kind.value).set(0)
        self.metrics.forget_slurm_site(name)

    # ------------------------------------------------------------ lookup

    def sites(self) -> list[SiteRuntime]:
        with self._lock:
            return list(self._sites.values())

    def site(self, name: str) -> SiteRuntime:
        with self._lock:
            try:
                return self._sites[name]
            except KeyError:
                raise NotFound(f"site {name!r} is not registered") from None

    def get_adapter(self, name: str) -> Adapter | None:
        with self._lock:
            rt = self._sites.get(name)
            return rt.adapter if rt else None

    def nodes(self) -> list[Node]:
        """Every known node of every site."""
        return [n for rt in self.sites() for n in rt.nodes]

    def placeable_nodes(self, *, draining: bool = False) -> list[Node]:
        """Ready nodes of sites that take new work (not draining, not unreachable).

        With ``draining=True`` the ready nodes of draining sites come too, as copies with
        ``draining=True``: placement keeps work off them and its reason says the site is
        draining (rather than that no node of the site exists).
        """
        return [n.model_copy(update={"draining": True}) if rt.draining else n
                for rt in self.sites()
                if (draining or not rt.draining) and rt.health != SiteHealth.Unreachable
                for n in rt.nodes if n.ready]

    def node(self, node_id: str) -> Node | None:
        site = node_id.split("/", 1)[0]
        with self._lock:
            rt = self._sites.get(site)
        return next((n for n in rt.nodes if n.id == node_id), None) if rt else None

    # ------------------------------------------------------------ refresh

    def refresh(self, now: float, *, force: bool = False) -> None:
        """Refresh inventories older than the interval (all of them with ``force``)."""
        for rt in self.sites():
            if force or now - rt.inventory_at >= self.settings.inventory_interval_s:
                self._refresh_site(rt, now)

    def _refresh_site(self, rt: SiteRuntime, now: float) -> None:
        try:
            nodes = rt.adapter.inventory()
            health, message = rt.adapter.health()
        except AuthError as e:
            health, message, nodes = SiteHealth.Unreachable, f"credentials rejected: {e.message}", None
        except AdapterError as e:
            health, message, nodes = SiteHealth.Unreachable, e.message, None
        except Exception as e:  # an adapter bug must not stop the loop
            log.exception("site %s: inventory failed", rt.spec.name)
            health, message, nodes = SiteHealth.Unreachable, f"inventory failed: {e!r}", None
        if nodes is None:
            nodes = [n.model_copy(update={"ready": False}) for n in rt.nodes]
        if self.collector is not None:  # live metrics; a Prometheus problem only degrades
            nodes, m_health, m_message = self.collector.apply(rt.spec, nodes, now)
            if m_health is not None and health == SiteHealth.Ready:
                health, message = m_health, m_message
            elif m_health is not None:
                message = f"{message}; {m_message}" if message else m_message
        if (health, message) != (rt.health, rt.message):
            log.info("site %s: %s %s", rt.spec.name, health.value, message)
        rt.nodes, rt.health, rt.message, rt.inventory_at = nodes, health, message, now
        self._changed()
        if rt.removed:
            return  # removed while its inventory was being taken: publish nothing
        self.metrics.site_up.labels(rt.spec.name, rt.spec.kind.value).set(
            0 if health == SiteHealth.Unreachable else 1)
        tiers: dict[str, int] = {}
        for n in nodes:
            tiers[n.tier.value] = tiers.get(n.tier.value, 0) + 1
        for tier, count in tiers.items():
            self.metrics.nodes.labels(rt.spec.name, tier).set(count)
        if isinstance(rt.adapter, PartitionStats):  # Slurm sites
            with self._lock:  # remove() marks the site removed under this lock, then forgets
                if not rt.removed:
                    self.metrics.observe_slurm_partitions(rt.spec.name,
                                                          rt.adapter.partition_stats())

    def close(self) -> None:
        for rt in self.sites():
            try:
                rt.adapter.close()
            except Exception:
                log.exception("site %s: close failed", rt.spec.name)


def reseal_sites(store: Store, sealer: Sealer, *, clear_only: bool = False) -> int:
    """Re-seal the secrets of every site row with ``sealer``'s primary key (with
    ``clear_only``: only seal those still in clear), in one transaction. Returns how
    many values were written.

    Raises:
        SealingError: a value cannot be opened with ``sealer``'s keys (nothing written).
    """
    n = 0
    with store.session() as s:
        for row in s.scalars(select(SiteRow)).all():
            config, k = rotate_config(row.kind, dict(row.spec.get("config") or {}), sealer,
                                      clear_only=clear_only)
            if k:
                row.spec = {**row.spec, "config": config}
                n += k
    return n
