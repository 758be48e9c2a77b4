"""The control plane's own Prometheus metrics (prometheus-client), on ``GET /metrics``.

One :class:`ControlPlaneMetrics` per control plane, on its own registry so tests and
several instances in one process do not collide. Names follow Prometheus naming
practice (https://prometheus.io/docs/practices/naming/): a ``continuum_`` prefix,
base units (seconds), ``_total`` for counters.
"""

from __future__ import annotations

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
        # -- learned placement and migration (issue 6)
        self.model_mape = Gauge(
            "continuum_model_mape_percent",
            "Held-out mean absolute percentage error per predictor target (%), learned vs "
            "the analytic fallback.", ["target", "model"], registry=r)
        self.model_version = Gauge(
            "continuum_model_version", "Version of the learned model set in use (0 = none).",
            registry=r)
        self.migrations = Counter(
            "continuum_migrations_total", "Runs migrated, by reason.", ["reason"], registry=r)

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
