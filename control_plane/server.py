"""Wiring: one :class:`ControlPlane` builds the store, artifacts, federation, models,
migration controller, reconciler and the FastAPI app, each given what it uses through
its constructor (nothing is wired after construction, and none of them gets the
ControlPlane itself); :meth:`ControlPlane.serve` runs it under uvicorn.

One ControlPlane is one **replica** (:mod:`control_plane.leader`): every replica serves
the API and re-reads the sites table every ``federation_resync_s``; only the replica that
holds the lease runs the reconcile loop (with the migration controller as its proposer,
model retraining and retention as its hooks), writing through the fenced store view. It
starts the loop when it becomes leader and stops it when it loses the lease."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import uvicorn

from adapters.base import AdapterContext
from adapters.capabilities import DeviceFleet, DeviceTelemetry
from continuum.errors import AdapterError, Conflict, TransientError
from continuum.federation import FederationDocument, load_federation
from continuum.model import SiteKind, Topology, WorkflowDocument
from control_plane import listen
from control_plane.api import create_app
from control_plane.artifacts import LocalArtifactStore
from control_plane.auth import Authority
from control_plane.deps import Services
from control_plane.enrollment import Enrollment
from control_plane.federation import Federation
from control_plane.keys import command_signing_key
from control_plane.leader import (
    DatabaseElector,
    Elector,
    Fenced,
    KubernetesLeaseElector,
    LeaderLoop,
    Leadership,
    Lease,
    NotLeader,
    current_leader,
    listen_for_wakes,
    notify_wake,
)
from control_plane.migration import MigrationController
from control_plane.models import ModelService
from control_plane.reconciler import Reconciler
from control_plane.relay import StoreRelay
from control_plane.retention import Retention
from control_plane.settings import Settings
from control_plane.store import Store, WorkflowRow
from control_plane.workflows import Admission, WorkflowService
from monitoring.collector import Collector
from monitoring.metrics import ControlPlaneMetrics
from monitoring.telemetry import DeviceReading
from monitoring.topology import TopologyModel

log = logging.getLogger(__name__)


class ControlPlane:
    """Everything one control-plane process runs.

    ``federation_doc`` (or ``settings.federation``) registers its sites at start, once:
    sites already in the store are kept as stored.
    """

    def __init__(self, settings: Settings, federation_doc: FederationDocument | None = None):
        self.settings = settings
        if federation_doc is None and settings.federation is not None:
            federation_doc = load_federation(settings.federation)
        self.federation_doc = federation_doc
        if federation_doc is not None:
            self.settings = settings = settings.model_copy(
                update={"control_plane_location": federation_doc.spec.control_plane.location})
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        # every collaborator gets what it uses through its constructor, in dependency
        # order; the device readings are read lazily (at scrape or collection time)
        self.store = Store(settings.db_url)
        self.auth = Authority(settings, self.store)
        self.admin_token_path = self.auth.bootstrap()
        """``<state_dir>/admin.token``: the bootstrap admin token (0600)."""
        self._readings: dict[tuple[str, str], tuple[DeviceTelemetry, DeviceReading]] = {}
        """(site, device id) → the telemetry read and the reading built, at the last
        :meth:`device_readings`."""
        self.metrics = ControlPlaneMetrics(devices=self.device_readings,
                                           per_device_limit=settings.device_series_limit)
        self.artifacts = LocalArtifactStore(settings.artifact_dir, self.store)
        topo = (Topology(locations=federation_doc.spec.locations, links=federation_doc.spec.links)
                if federation_doc else Topology())
        self.network = TopologyModel(topo)
        self._wake = threading.Event()
        """The reconciler's wake-up: adapters and the API set it to run the next cycle now."""
        self.enrollment = Enrollment(self.store, settings, self._site_config)
        self.ctx = AdapterContext(
            artifacts=self.artifacts, state_dir=settings.state_dir, wake=self._wake.set,
            sign=command_signing_key(settings.state_dir).sign,
            device_enrolled=self.enrollment.is_enrolled, relay=self._relay(),
            dropped=lambda site, reason:
                self.metrics.device_messages_dropped.labels(site, reason).inc())
        self.collector = Collector(self.metrics, topology=self.network,
                                   control_plane_location=settings.control_plane_location,
                                   devices=self.device_readings)
        self.federation = Federation(self.store, self.ctx, settings, self.metrics,
                                     collector=self.collector)
        self.leadership = Leadership(self._elector(), self.store, on_lead=self._lead,
                                     on_lose=self._follow, on_role=self._role)
        leader_store = self.store.fenced(self.leadership.check)
        """The store the leader-only components write through: each write carries the
        lease's epoch (control_plane/leader.py)."""
        self.models = ModelService(settings, self.store, self.federation.nodes, self.metrics)
        self.migration = MigrationController(settings, leader_store, self.federation,
                                             self.network, lambda: self.models.framework)
        self.retention = Retention(leader_store, settings.artifact_dir, self.metrics,
                                   workflow_retention_s=settings.workflow_retention_s,
                                   audit_retention_s=settings.audit_retention_s)
        self.reconciler = Reconciler(leader_store, self.federation, settings,
                                     self.metrics, self.network,
                                     framework=lambda: self.models.framework,
                                     hooks=[self.models.on_cycle, self.retention.on_cycle],
                                     proposers=[self.migration.on_cycle],
                                     wake_event=self._wake)
        self.loop = LeaderLoop(self.reconciler, self.leadership,
                               notify=lambda: notify_wake(self.store))
        """The loop as the API sees it: a follower's ``wake`` NOTIFYs the leader."""
        self.workflows = WorkflowService(
            self.store, self.federation, self.loop.wake,
            Admission(self.store, settings.submit_max_backlog_tasks,
                      settings.submit_backlog_retry_after_s,
                      observe=self.metrics.submit_backlog.set),
            wake_local=self.reconciler.wake)
        self.app = create_app(Services(
            settings=settings, store=self.store, federation=self.federation,
            artifacts=self.artifacts, collector=self.collector, network=self.network,
            metrics=self.metrics, models=self.models, workflows=self.workflows,
            loop=self.loop, devices=self, enrollment=self.enrollment,
            auth=self.auth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leader_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._collector_thread: threading.Thread | None = None

    def _elector(self) -> Elector:
        s = self.settings
        if s.leader_election == "kubernetes":
            from adapters.kubernetes.lease import LeaseLock

            return KubernetesLeaseElector(self.store,
                                          LeaseLock.in_cluster(s.leader_lease_namespace),
                                          s.api_url, s.leader_lease_s)
        return DatabaseElector(self.store, s.api_url, s.leader_lease_s)

    # ------------------------------------------------------------ leadership

    def _lead(self, lease: Lease) -> None:
        """Became leader: start the reconcile loop (after the previous term's ended)."""
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._leader_stop = stop = threading.Event()
        self.federation.sync()  # the sites as stored now, before the first cycle
        self._thread = threading.Thread(target=self._run_loop, args=(stop, lease),
                                        name=f"reconciler-epoch-{lease.epoch}", daemon=True)
        self._thread.start()

    def _run_loop(self, stop: threading.Event, lease: Lease) -> None:
        self.leadership.bind(lease)  # this loop writes for its own term only
        try:
            self.reconciler.run_forever(stop)
        except Fenced as e:
            self.leadership.lost(str(e))
        finally:  # a request queued for this loop goes to the new leader (307) or waits (503)
            try:
                leader = current_leader(self.store)
            except Exception:  # the database is why the loop stopped
                leader = None
            self.reconciler.abandon_requests(NotLeader(leader))

    def _follow(self, reason: str) -> None:
        """Lost the lease: stop the loop (it ends after its current step; its writes
        are refused by the fence meanwhile). The API keeps serving."""
        self._leader_stop.set()
        self.reconciler.wake()

    def _role(self, leading: bool) -> None:
        self.metrics.leader.set(1 if leading else 0)
        lease = self.leadership.lease
        self.metrics.leader_epoch.set(lease.epoch if leading and lease else 0)

    def _resync(self, stop: threading.Event) -> None:
        """Every replica: the sites table → adapters; a follower also refreshes the
        inventories (the leader's loop does it on the leader)."""
        while not stop.wait(self.settings.federation_resync_s):
            try:
                self.federation.sync()
                if not self.leadership.leading:
                    self.federation.refresh(time.time())
            except Exception:
                log.exception("federation resync failed; retrying next period")

    def _relay(self) -> StoreRelay | None:
        """The device-message relay through the database, where replicas can share it
        (PostgreSQL); None on SQLite, which serves one replica: there every message is
        consumed by this process and nothing needs relaying (the write per consumed
        message would only cost CPU: the control-plane fleet bench measured 22 % of the
        server's samples in the relay at 1,000 telemetry msgs/s)."""
        return StoreRelay(self.store) if self.store.engine.dialect.name != "sqlite" else None

    def _site_config(self, name: str) -> tuple[SiteKind, dict[str, Any]]:
        spec = self.federation.site(name).spec
        return spec.kind, dict(spec.config)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Write the broker's password file and ACL from the store, load stored sites,
        register the federation file's new sites, start the loop."""
        try:
            self.enrollment.sync_broker()
        except TransientError as e:
            log.warning("broker files written but the broker was not reloaded: %s", e)
        self.federation.load()
        if self.federation_doc is not None:
            for spec in self.federation_doc.spec.sites:
                try:
                    self.federation.register(spec, exist_ok=True)
                except AdapterError as e:
                    log.error("site %s from the federation file not registered: %s", spec.name, e)
        self.federation.refresh(time.time(), force=True)
        self.leadership.step()  # a lone replica leads from here on
        self._threads = [threading.Thread(target=target, args=(self._stop,), name=name,
                                          daemon=True)
                         for name, target in (("leader-election", self.leadership.run_forever),
                                              ("federation-resync", self._resync))]
        if self.store.engine.dialect.name == "postgresql":
            self._threads.append(threading.Thread(
                target=listen_for_wakes, args=(self.store, self._wake.set, self._stop),
                name="wake-listener", daemon=True))
        for t in self._threads:
            t.start()
        self._collector_thread = threading.Thread(
            target=self.collector.run_forever, name="metrics-collector", daemon=True,
            args=(self._stop, self.settings.metrics_interval_s,
                  lambda: [rt.spec for rt in self.federation.sites()]))
        self._collector_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.leadership.wake()
        self.collector.wake()
        for t in self._threads:
            t.join(timeout=10)
        self._leader_stop.set()  # also when the election thread never ran
        self.reconciler.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._collector_thread is not None:
            self._collector_thread.join(timeout=10)
        self.federation.close()
        self.store.close()

    def serve(self, sock: socket.socket | None = None) -> None:
        """Start, serve the API until interrupted, stop. ``sock``: an already bound socket to
        serve on (see :func:`control_plane.listen.bind`); default: bind host:port here."""
        self.start()
        try:
            tls = self.settings
            config = uvicorn.Config(self.app, host=self.settings.host, port=self.settings.port,
                                    log_level="warning", lifespan="off",
                                    ssl_certfile=tls.tls_cert_file, ssl_keyfile=tls.tls_key_file)
            uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
        finally:
            self.stop()

    # ------------------------------------------------------------ operations the API calls

    def submit(self, doc: WorkflowDocument) -> WorkflowRow:
        """See :meth:`control_plane.workflows.WorkflowService.submit`."""
        return self.workflows.submit(doc, doc.metadata.tenant
                                     or self.settings.auth_default_tenant)

    def _fleets(self) -> list[tuple[str, DeviceFleet]]:
        return [(rt.spec.name, rt.adapter) for rt in self.federation.sites()
                if rt.spec.kind == SiteKind.devices and isinstance(rt.adapter, DeviceFleet)]

    def device_states(self) -> list[tuple[str, str, str]]:
        """``(site, device id, state)`` of every device of every fleet."""
        return [(site, device_id, state) for site, fleet in self._fleets()
                for device_id, state in fleet.device_states()]

    def devices(self, wanted: Collection[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """The devices ``(site, device id)`` of ``wanted`` (None: every device of every
        fleet), JSON-ready for ``GET /v1/devices``; only those are serialised."""
        by_site: dict[str, list[str]] | None = None
        if wanted is not None:
            by_site = {}
            for site, device_id in wanted:
                by_site.setdefault(site, []).append(device_id)
        out: list[dict[str, Any]] = []
        for site, fleet in self._fleets():
            if by_site is not None and site not in by_site:
                continue
            for d in fleet.devices(None if by_site is None else by_site[site]):
                out.append({"site": site, **d})
        return out


    def device_readings(self) -> list[DeviceReading]:
        """Every device's latest telemetry (monitoring's view of the devices adapters); a
        device whose telemetry, state and location are as at the previous call keeps
        its :class:`DeviceReading` object (see :func:`device_readings`)."""
        out: list[DeviceReading] = []
        cache: dict[tuple[str, str], tuple[DeviceTelemetry, DeviceReading]] = {}
        previous = self._readings
        for rt in self.federation.sites():
            if rt.spec.kind != SiteKind.devices or not isinstance(rt.adapter, DeviceFleet):
                continue
            out += device_readings(rt.spec.name, rt.adapter.telemetry(), previous, cache)
        self._readings = cache  # concurrent scrapes: each builds its own; the last is kept
        return out


def device_readings(site: str, telemetry: list[DeviceTelemetry],
                    previous: dict[tuple[str, str], tuple[DeviceTelemetry, DeviceReading]],
                    cache: dict[tuple[str, str], tuple[DeviceTelemetry, DeviceReading]],
                    ) -> list[DeviceReading]:
    """One devices site's :class:`DeviceReading` per ``telemetry`` entry, in its order.

    ``previous`` maps ``(site, device id)`` to what an earlier call read and built;
    where the entry holds the same ``Telemetry`` object (payload models are replaced,
    never changed) with the same ``online``, ``received_at`` and ``location``, its
    reading is reused, so an unchanged device costs a lookup and the metrics
    collector sees the same object. Every entry read is put in ``cache``."""
    out: list[DeviceReading] = []
    for d in telemetry:
        key = (site, d.device_id)
        hit = previous.get(key)
        t = d.telemetry
        if hit is not None:
            was = hit[0]
            if (was.telemetry is t and was.online == d.online
                    and was.received_at == d.received_at and was.location == d.location):
                cache[key] = hit
                out.append(hit[1])
                continue
        r = DeviceReading(
            site=site, device=d.device_id, location=d.location,
            online=d.online, at=t.at.timestamp(), received_at=d.received_at,
            cpu_utilisation=min(1.0, max(0.0, t.cpu_percent / 100.0)),
            memory_used=t.memory_used, memory_total=t.memory_total, load1=t.load1,
            power_watts=t.power_watts, power_source=t.power_source,
            running=t.running, rtt_ms=t.rtt_ms, peer_rtt_ms=dict(t.peer_rtt_ms),
            temperature_c=t.temperature_c)
        cache[key] = (d, r)
        out.append(r)
    return out


GC_THRESHOLD0 = 50_000
"""Allocations (less deallocations) between two collections of the youngest generation in
the server process (Python's default: 700). Nearly all of the server's garbage is freed
by reference counting; at the default, the cyclic collector ran over the live heap often
enough to take about a fifth of the server's CPU in the live bench (``python -m
bench.control_plane.live --sizes 10000``: 6.0 s of 26.7, 5.0 s of it in 24 full
collections of the oldest generation). The older generations keep Python's factors."""


def tune_gc(threshold0: int = GC_THRESHOLD0) -> None:
    """Make the cyclic garbage collector cheaper for a long-running server: collect once,
    move every object alive now (modules, schemas, settings: what startup made, kept for
    the process's life) to the permanent generation (:func:`gc.freeze`), so no later
    collection scans them, and collect the youngest generation every ``threshold0``
    allocations instead of Python's 700 (:data:`GC_THRESHOLD0`)."""
    gc.collect()
    gc.freeze()
    _, t1, t2 = gc.get_threshold()
    gc.set_threshold(threshold0, t1, t2)


def run_server(settings: Settings) -> None:
    """Entry point of ``continuum server``: binds the port first, then starts and serves.

    Raises:
        control_plane.listen.PortInUse: the port is taken (nothing was started).
        OSError: the address cannot be bound for another reason.
    """
    sock = listen.bind(settings.host, settings.port)
    try:
        cp = ControlPlane(settings)
    except BaseException:
        sock.close()
        raise
    log.info("Continuum API listening on %s://%s:%d (state %s)",
             "https" if settings.tls_cert_file else "http", settings.host,
             sock.getsockname()[1], Path(settings.state_dir).resolve())
    tune_gc()  # the process's own collector: here, not in ControlPlane (tests embed many)
    cp.serve(sock)


__all__ = ["GC_THRESHOLD0", "ControlPlane", "run_server", "Conflict", "tune_gc"]
