"""The control plane's own Prometheus metrics (prometheus-client), on ``GET /metrics``.

One :class:`ControlPlaneMetrics` per control plane, on its own registry so tests and
several instances in one process do not collide. Names follow Prometheus naming
practice (https://prometheus.io/docs/practices/naming/): a ``continuum_`` prefix,
base units (seconds), ``_total`` for counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ControlPlaneMetrics:
    """The metric families; the reconciler and the API update them."""

    def __init__(self) -> None:
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
