"""The control plane's own Prometheus metrics (prometheus-client), on ``GET /metrics``.

One :class:`ControlPlaneMetrics` per control plane, on its own registry so tests and
several instances in one process do not collide. Names follow Prometheus naming
practice (https://prometheus.io/docs/practices/naming/): a ``continuum_`` prefix,
base units (seconds), ``_total`` for counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring.telemetry import DeviceReading


class ControlPlaneMetrics:
    """The metric families; the reconciler and the API update them."""

    def __init__(self, devices: Callable[[], list[DeviceReading]] | None = None) -> None:
        """``devices``: every device's latest telemetry, read at scrape time (re-exported
        by :class:`DeviceTelemetryCollector`); None exports no device families."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.placements = Counter(
            "continuum_placements_total", "Runs placed, by site and tier.", ["site", "tier"],
            registry=r)
        self.unschedulable = Counter(
            "continuum_unschedulable_total", "Placement attempts that found no node.",
            registry=r)
        self.placement_cycle = Histogram(
            "continuum_placement_cycle_seconds", "Time to place one batch of ready tasks (s).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r)
        self.reconcile_cycle = Histogram(
            "continuum_reconcile_cycle_seconds", "Time of one reconcile cycle (s).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r)
        self.reconcile_lag = Gauge(
            "continuum_reconcile_lag_seconds", "Seconds since the last completed reconcile cycle.",
            registry=r)
        self.leader = Gauge(
            "continuum_leader", "1 on the replica that leads (runs the reconcile loop), "
            "0 on a follower.", registry=r)
        self.leader_epoch = Gauge(
            "continuum_leader_epoch", "Fencing epoch of this replica's lease (0: follower).",
            registry=r)
        self.runs = Gauge("continuum_runs", "Runs by state.", ["state"], registry=r)
        self.workflows = Gauge("continuum_workflows", "Workflows by state.", ["state"], registry=r)
        self.run_transitions = Counter(
            "continuum_run_transitions_total", "Run state changes, by new state.", ["state"],
            registry=r)
        self.site_up = Gauge(
            "continuum_site_up", "1 when the site is Ready or Degraded, 0 otherwise.",
            ["site", "kind"], registry=r)
        self.nodes = Gauge("continuum_nodes", "Nodes known, by site and tier.", ["site", "tier"],
                           registry=r)
        self.bytes_moved = Counter(
            "continuum_artifact_bytes_total", "Artifact bytes moved by runs, by direction.",
            ["direction"], registry=r)
        # -- learned placement and migration (issue 6)
        self.model_mape = Gauge(
            "continuum_model_mape_percent",
            "Held-out mean absolute percentage error per predictor target (%), learned vs "
            "the analytic fallback (runtime, energy).", ["target", "model"], registry=r)
        self.model_mae = Gauge(
            "continuum_model_mae_seconds",
            "Held-out mean absolute error per predictor target (s), learned vs the analytic "
            "fallback (queue_wait: mostly 0 s waits, where a percentage is undefined).",
            ["target", "model"], registry=r)
        self.model_version = Gauge(
            "continuum_model_version", "Version of the learned model set in use (0 = none).",
            registry=r)
        self.migrations = Counter(
            "continuum_migrations_total", "Runs migrated, by reason.", ["reason"], registry=r)
        self.device_messages_dropped = Counter(
            "continuum_device_messages_dropped_total", "Device messages a devices adapter "
            "dropped, by site and reason: malformed, not_placed_here (a run update on the "
            "topic of a device the run is not placed on), unenrolled.", ["site", "reason"],
            registry=r)

        # ---- monitoring (issue 5): queues, prediction error, SLOs, Prometheus, devices
        self.queue_depth = Gauge(
            "continuum_queue_depth", "Work waiting: queue=ready (tasks awaiting placement), "
            "placed (runs awaiting dispatch).", ["queue"], registry=r)
        self.submit_backlog = Gauge(
            "continuum_submit_backlog_tasks", "Tasks waiting to be placed (Waiting or "
            "Ready) as this replica's admission control last estimated them.", registry=r)
        self.submits_refused = Counter(
            "continuum_submits_refused_total", "Workflow submits answered 429, by reason "
            "(backlog: over submit_max_backlog_tasks).", ["reason"], registry=r)
        self.site_queue_depth = Gauge(
            "continuum_site_queue_depth", "Runs dispatched to a site and not yet running "
            "(queued in its backend).", ["site"], registry=r)
        self.prediction_error = Histogram(
            "continuum_prediction_relative_error",
            "|predicted − observed| / observed of a finished run, by quantity (runtime, "
            "energy) and site.", ["quantity", "site"],
            buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10), registry=r)
        self.slo_latency_ratio = Gauge(
            "continuum_slo_latency_ratio", "Current RTT from a running task's node to its SLO "
            "target over the SLO's latency (> 1 = violated).", ["workflow", "task", "target"],
            registry=r)
        self.prometheus_up = Gauge(
            "continuum_prometheus_up", "1 when the site's Prometheus answered the last refresh.",
            ["site"], registry=r)
        self.prometheus_query = Histogram(
            "continuum_prometheus_query_seconds", "Duration of one catalog query (s).", ["site"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.metrics_age = Gauge(
            "continuum_site_metrics_age_seconds", "Seconds since the site's Prometheus last "
            "answered.", ["site"], registry=r)
        self.devices = DeviceTelemetryCollector(devices)
        r.register(self.devices)

        # ---- Slurm partitions (issue-slurm). Names of vpenso/prometheus-slurm-exporter
        # (partitions.go, partition_wait.go) with a ``site`` label added, so one Prometheus
        # scraping the control plane sees every cluster; continuum_slurm_* are our own.
        _sp = ["site", "partition"]
        self.slurm_cpus_allocated = Gauge(
            "slurm_partition_cpus_allocated", "Allocated CPUs for partition.", _sp, registry=r)
        self.slurm_cpus_idle = Gauge(
            "slurm_partition_cpus_idle", "Idle CPUs for partition.", _sp, registry=r)
        self.slurm_cpus_other = Gauge(
            "slurm_partition_cpus_other", "Other (down, drained) CPUs for partition.", _sp,
            registry=r)
        self.slurm_cpus_total = Gauge(
            "slurm_partition_cpus_total", "Total CPUs for partition.", _sp, registry=r)
        self.slurm_jobs_pending = Gauge(
            "slurm_partition_jobs_pending", "Pending jobs for partition.", _sp, registry=r)
        self.slurm_jobs_running = Gauge(
            "slurm_partition_jobs_running", "Running jobs for partition.", _sp, registry=r)
        self.slurm_pending_wait = Gauge(
            "slurm_partition_pending_wait_seconds_avg",
            "Average wait (seconds) of currently PENDING jobs, by partition.", _sp, registry=r)
        self.slurm_recent_wait = Gauge(
            "continuum_slurm_partition_queue_wait_seconds_avg",
            "Mean queue wait (s) of the partition's jobs that started within the window.", _sp,
            registry=r)
        self.slurm_expected_wait = Gauge(
            "continuum_slurm_partition_expected_queue_wait_seconds",
            "Queue wait (s) placement expects for a new job on the partition.", _sp, registry=r)
        self._slurm_partitions: dict[str, set[str]] = {}
        self.slurm_utilisation = Gauge(
            "continuum_slurm_partition_utilisation",
            "Allocated CPUs / CPUs of usable nodes of the partition (0..1).", _sp, registry=r)

    def observe_prediction(self, site: str, placement: dict[str, Any] | None,
                           runtime_s: float | None, energy_j: float | None) -> None:
        """Record the relative error of a finished run's predicted runtime and energy.

        ``placement`` is the stored PlacementDecision (wire form, ``predicted.runtimeS``,
        ``predicted.energyJ``); observed figures that are missing or not positive are
        skipped (a relative error needs a positive denominator).
        """
        pred = (placement or {}).get("predicted") or {}
        for quantity, key, observed in (("runtime", "runtimeS", runtime_s),
                                        ("energy", "energyJ", energy_j)):
            p = pred.get(key)
            if p is None or observed is None or observed <= 0:
                continue
            self.prediction_error.labels(quantity, site).observe(abs(float(p) - observed)
                                                                 / observed)
        # ---- end of the monitoring block

    def _slurm_gauges(self) -> list[Gauge]:
        return [self.slurm_cpus_allocated, self.slurm_cpus_idle, self.slurm_cpus_other,
                self.slurm_cpus_total, self.slurm_jobs_pending, self.slurm_jobs_running,
                self.slurm_pending_wait, self.slurm_recent_wait, self.slurm_expected_wait,
                self.slurm_utilisation]

    def forget_slurm_site(self, site: str) -> None:
        """Drop every Slurm partition series of ``site`` (it was removed)."""
        for partition in self._slurm_partitions.pop(site, set()):
            for g in self._slurm_gauges():
                try:
                    g.remove(site, partition)
                except KeyError:
                    pass

    def observe_slurm_partitions(self, site: str, stats: Iterable[SlurmPartitionStats]) -> None:
        """Set the Slurm partition gauges of ``site`` from an inventory's statistics."""
        stats = list(stats)
        seen = {st.name for st in stats}
        gone = self._slurm_partitions.get(site, set()) - seen
        for partition in gone:
            for g in self._slurm_gauges():
                try:
                    g.remove(site, partition)
                except KeyError:
                    pass
        self._slurm_partitions[site] = seen
        for st in stats:
            labels = (site, st.name)
            self.slurm_cpus_allocated.labels(*labels).set(st.cpus_alloc)
            self.slurm_cpus_idle.labels(*labels).set(st.cpus_idle)
            self.slurm_cpus_other.labels(*labels).set(st.cpus_other)
            self.slurm_cpus_total.labels(*labels).set(st.cpus_total)
            self.slurm_jobs_pending.labels(*labels).set(st.jobs_pending)
            self.slurm_jobs_running.labels(*labels).set(st.jobs_running)
            self.slurm_pending_wait.labels(*labels).set(st.pending_wait_avg_s)
            self.slurm_recent_wait.labels(*labels).set(st.recent_wait_avg_s)
            self.slurm_expected_wait.labels(*labels).set(st.queue_wait_s)
            self.slurm_utilisation.labels(*labels).set(st.utilisation)

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)


# ---- monitoring (issue 5): the devices' telemetry, re-exported with device labels


class DeviceTelemetryCollector(Collector):
    """Re-exports every device's latest telemetry at scrape time, labelled
    ``site``, ``device`` and ``location`` (so one Prometheus sees the devices too).

    Families (base units, Prometheus naming practice): ``continuum_device_up`` (1 online,
    0 offline), ``continuum_device_cpu_utilisation_ratio`` (0..1),
    ``continuum_device_memory_used_bytes``, ``continuum_device_memory_total_bytes``,
    ``continuum_device_load1``, ``continuum_device_power_watts`` (extra label
    ``source``: model, rapl, ina219), ``continuum_device_running_runs``,
    ``continuum_device_rtt_seconds`` (agent → broker), ``continuum_device_peer_rtt_seconds``
    (extra label ``peer``), ``continuum_device_temperature_celsius`` and
    ``continuum_device_telemetry_timestamp_seconds`` (when the device measured).
    ``source`` is given by the control plane; without it nothing is exported.
    """

    def __init__(self, source: Callable[[], list[DeviceReading]] | None = None) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # families depend on the fleet; skip the registry's name check

    def collect(self) -> Iterator[Metric]:
        readings = self.source() if self.source is not None else []
        lab = ["site", "device", "location"]

        def fam(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*lab, *extra])

        up = fam("continuum_device_up", "1 when the device is online, 0 when offline.")
        cpu = fam("continuum_device_cpu_utilisation_ratio", "CPU busy fraction (0..1).")
        mem = fam("continuum_device_memory_used_bytes", "Memory in use (bytes).")
        memt = fam("continuum_device_memory_total_bytes", "Memory of the device (bytes).")
        load = fam("continuum_device_load1", "One-minute load average.")
        power = fam("continuum_device_power_watts", "Power draw (W).", ("source",))
        running = fam("continuum_device_running_runs", "Runs executing on the device.")
        rtt = fam("continuum_device_rtt_seconds", "Measured round trip to the broker (s).")
        peer = fam("continuum_device_peer_rtt_seconds", "Measured round trip to a peer (s).",
                   ("peer",))
        temp = fam("continuum_device_temperature_celsius", "Device temperature (°C).")
        ts = fam("continuum_device_telemetry_timestamp_seconds",
                 "When the device took its latest telemetry (Unix s).")
        for d in readings:
            v = [d.site, d.device, d.location]
            up.add_metric(v, 1.0 if d.online else 0.0)
            cpu.add_metric(v, d.cpu_utilisation)
            mem.add_metric(v, float(d.memory_used))
            memt.add_metric(v, float(d.memory_total))
            load.add_metric(v, d.load1)
            power.add_metric([*v, d.power_source], d.power_watts)
            running.add_metric(v, float(d.running))
            if d.rtt_ms is not None:
                rtt.add_metric(v, d.rtt_ms / 1000.0)
            for p, ms in sorted(d.peer_rtt_ms.items()):
                peer.add_metric([*v, p], ms / 1000.0)
            if d.temperature_c is not None:
                temp.add_metric(v, d.temperature_c)
            ts.add_metric(v, d.at)
        yield from (up, cpu, mem, memt, load, power, running, rtt, peer, temp, ts)


class SlurmPartitionStats(Protocol):
    """What :meth:`ControlPlaneMetrics.observe_slurm_partitions` reads (the Slurm
    adapter's ``PartitionStats``); CPUs are counts, waits in seconds, utilisation 0..1."""

    name: str
    cpus_total: int
    cpus_alloc: int
    cpus_idle: int
    cpus_other: int
    jobs_pending: int
    jobs_running: int
    pending_wait_avg_s: float
    recent_wait_avg_s: float
    queue_wait_s: float
    utilisation: float
