"""Wiring: one :class:`ControlPlane` owns the store, artifacts, federation, reconciler
and the FastAPI app; :meth:`ControlPlane.serve` runs it under uvicorn."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from adapters.base import AdapterContext, Handle
from adapters.capabilities import DeviceFleet
from continuum.errors import AdapterError, Conflict, NotFound
from continuum.federation import FederationDocument, load_federation
from continuum.model import RunState, SiteKind, TaskState, Topology, WorkflowDocument, WorkflowState
from control_plane.api import create_app
from control_plane.artifacts import LocalArtifactStore
from control_plane.federation import Federation
from control_plane.keys import command_signing_key
from control_plane.reconciler import Reconciler
from control_plane.settings import Settings
from control_plane.store import RunRow, Store, TaskRow, WorkflowRow, add_event, new_id
from control_plane.validation import check_workflow, effective_dependencies
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
        self.store = Store(settings.db_url)
        self.metrics = ControlPlaneMetrics()
        self.artifacts = LocalArtifactStore(settings.artifact_dir, self.store)
        topo = (Topology(locations=federation_doc.spec.locations, links=federation_doc.spec.links)
                if federation_doc else Topology())
        self.network = TopologyModel(topo)
        self.ctx = AdapterContext(artifacts=self.artifacts, state_dir=settings.state_dir,
                                  wake=lambda: self.reconciler.wake(),
                                  sign=command_signing_key(settings.state_dir).sign)
        self.federation = Federation(self.store, self.ctx, settings, self.metrics)
        self.reconciler = Reconciler(self.store, self.federation, self.artifacts, settings,
                                     self.metrics, self.network)
        self.collector = Collector(self.metrics, topology=self.network,
                                   control_plane_location=settings.control_plane_location,
                                   devices=self.device_readings)
        self.federation.collector = self.collector
        self.metrics.devices.source = self.device_readings
        from control_plane.migration import MigrationController
        from control_plane.models import ModelService

        self.models = ModelService(self)
        self.migration = MigrationController(self)
        self.reconciler.framework = self.models.framework
        self.reconciler.hooks += [self.models.on_cycle, self.migration.on_cycle]
        self.app = create_app(self)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._collector_thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load stored sites, register the federation file's new sites, start the loop."""
        self.federation.load()
        if self.federation_doc is not None:
            for spec in self.federation_doc.spec.sites:
                try:
                    self.federation.register(spec, exist_ok=True)
                except AdapterError as e:
                    log.error("site %s from the federation file not registered: %s", spec.name, e)
        self.federation.refresh(time.time(), force=True)
        self._thread = threading.Thread(target=self.reconciler.run_forever, args=(self._stop,),
                                        name="reconciler", daemon=True)
        self._thread.start()
        self._collector_thread = threading.Thread(
            target=self.collector.run_forever, name="metrics-collector", daemon=True,
            args=(self._stop, self.settings.metrics_interval_s,
                  lambda: [rt.spec for rt in self.federation.sites()]))
        self._collector_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.reconciler.wake()
        self.collector.wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._collector_thread is not None:
            self._collector_thread.join(timeout=10)
        self.federation.close()
        self.store.close()

    def serve(self) -> None:
        """Start, serve the API until interrupted, stop."""
        self.start()
        try:
            config = uvicorn.Config(self.app, host=self.settings.host, port=self.settings.port,
                                    log_level="warning", lifespan="off")
            uvicorn.Server(config).run()
        finally:
            self.stop()

    # ------------------------------------------------------------ operations the API calls

    def submit(self, doc: WorkflowDocument) -> WorkflowRow:
        """Check and store a workflow with its tasks in one transaction; returns its row.

        Raises:
            ValidationFailed: see :func:`control_plane.validation.check_workflow`.
        """
        check_workflow(doc, self.federation.nodes())
        deps = effective_dependencies(doc)
        wf = WorkflowRow(id=new_id("wf"), name=doc.metadata.name,
                         state=WorkflowState.Pending.value, document=doc.wire())
        with self.store.session() as s:
            s.add(wf)
            s.flush()
            for t in doc.spec.tasks:
                s.add(TaskRow(workflow_id=wf.id, name=t.name, spec=t.wire(),
                              depends_on=deps[t.name],
                              state=(TaskState.Waiting if deps[t.name] else TaskState.Ready).value))
            add_event(s, "WorkflowAccepted", f"{len(doc.spec.tasks)} tasks", workflow_id=wf.id)
        log.info("workflow %s (%s) accepted with %d tasks", wf.id, wf.name, len(doc.spec.tasks))
        self.reconciler.wake()
        return wf

    def check_upload(self, workflow_id: str, name: str, run_id: str | None) -> str | None:
        """Check an upload may go ahead; returns the producing run's node.

        Raises:
            NotFound: no such workflow or run.
            Conflict: the run already finished, or is not of this workflow.
        """
        with self.store.session() as s:
            wf = s.get(WorkflowRow, workflow_id)
            if wf is None:
                raise NotFound(f"workflow {workflow_id!r} does not exist")
            if WorkflowState(wf.state).terminal:
                raise Conflict(f"workflow {workflow_id} already {wf.state.lower()}; "
                               "its artifacts can no longer change")
            if run_id is None:
                return None
            run = s.get(RunRow, run_id)
            if run is None or run.workflow_id != workflow_id:
                raise NotFound(f"run {run_id!r} is not a run of workflow {workflow_id}")
            if RunState(run.state).terminal:
                raise Conflict(f"run {run_id} already {run.state.lower()}; its outputs are closed")
            return run.node

    def live_logs(self, run: RunRow, tail: int) -> str:
        adapter = self.federation.get_adapter(run.site or "")
        if adapter is None or not run.handle:
            return ""
        try:
            return adapter.logs(Handle.from_json(run.handle), tail)
        except AdapterError as e:
            return f"(logs unavailable: {e})"

    def devices(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rt in self.federation.sites():
            if rt.spec.kind == SiteKind.devices and isinstance(rt.adapter, DeviceFleet):
                for d in rt.adapter.devices():
                    item = d if isinstance(d, dict) else d.model_dump(mode="json", by_alias=True)
                    out.append({"site": rt.spec.name, **item})
        return out


    def device_readings(self) -> list[DeviceReading]:
        """Every device's latest telemetry (monitoring's view of the devices adapters)."""
        out: list[DeviceReading] = []
        for rt in self.federation.sites():
            if rt.spec.kind != SiteKind.devices or not isinstance(rt.adapter, DeviceFleet):
                continue
            for d in rt.adapter.telemetry():
                t = d.telemetry
                out.append(DeviceReading(
                    site=rt.spec.name, device=d.device_id, location=d.location,
                    online=d.online, at=t.at.timestamp(), received_at=d.received_at,
                    cpu_utilisation=min(1.0, max(0.0, t.cpu_percent / 100.0)),
                    memory_used=t.memory_used, memory_total=t.memory_total, load1=t.load1,
                    power_watts=t.power_watts, power_source=t.power_source,
                    running=t.running, rtt_ms=t.rtt_ms, peer_rtt_ms=dict(t.peer_rtt_ms),
                    temperature_c=t.temperature_c))
        return out


def run_server(settings: Settings) -> None:
    """Entry point of ``continuum server``."""
    cp = ControlPlane(settings)
    log.info("Continuum %s listening on http://%s:%d (state %s)", "API", settings.host,
             settings.port, Path(settings.state_dir).resolve())
    cp.serve()


__all__ = ["ControlPlane", "run_server", "Conflict"]
