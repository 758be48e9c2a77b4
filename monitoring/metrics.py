"""The control plane's own Prometheus metrics (prometheus-client), on ``GET /metrics``.

One :class:`ControlPlaneMetrics` per control plane, on its own registry so tests and
several instances in one process do not collide. Names follow Prometheus naming
practice (https://prometheus.io/docs/practices/naming/): a ``continuum_`` prefix,
base units (seconds), ``_total`` for counters.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from monitoring.telemetry import DeviceReading

PER_DEVICE_SERIES_LIMIT = 10_000
"""Largest fleet (devices with telemetry, all sites) whose per-device series ``/metrics``
exports (about 11 samples a device); a larger one gets only the fleet-wide families."""


class ControlPlaneMetrics:
    """The metric families; the reconciler and the API update them."""

    def __init__(self, devices: Callable[[], list[DeviceReading]] | None = None, *,
                 per_device_limit: int | None = None) -> None:
        """``devices``: every device's latest telemetry, read at scrape time (re-exported
        by :class:`DeviceTelemetryCollector`); None exports no device families.
        ``per_device_limit``: largest fleet exported per device (None:
        :data:`PER_DEVICE_SERIES_LIMIT`)."""
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
        self.retention_deleted = Counter(
            "continuum_retention_deleted_total", "Rows deleted past their retention, by "
            "kind (workflows: each with its tasks, runs, events and artifacts; audit).",
            ["kind"], registry=r)
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
        # not on the registry: exposition() appends its text, rendered with a per-device cache
        self.devices = DeviceTelemetryCollector(
            devices, per_device_limit=PER_DEVICE_SERIES_LIMIT if per_device_limit is None
            else per_device_limit)

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
        return generate_latest(self.registry) + self.devices.exposition()


# ---- monitoring (issue 5): the devices' telemetry, re-exported with device labels


class DeviceTelemetryCollector(Collector):
    """Re-exports every device's latest telemetry at scrape time, labelled
    ``site``, ``device`` and ``location`` (so one Prometheus sees the devices too).

    Per-device families (base units, Prometheus naming practice): ``continuum_device_up``
    (1 online, 0 offline), ``continuum_device_cpu_utilisation_ratio`` (0..1),
    ``continuum_device_memory_used_bytes``, ``continuum_device_memory_total_bytes``,
    ``continuum_device_load1``, ``continuum_device_power_watts`` (extra label
    ``source``: model, rapl, ina219), ``continuum_device_running_runs``,
    ``continuum_device_rtt_seconds`` (agent → broker), ``continuum_device_peer_rtt_seconds``
    (extra label ``peer``), ``continuum_device_temperature_celsius`` and
    ``continuum_device_telemetry_timestamp_seconds`` (when the device measured). They are
    exported only while the fleet (every site's devices with telemetry together) has at
    most ``per_device_limit`` devices; above it only the fleet-wide families are.

    Fleet-wide families, always exported (labelled ``site``): ``continuum_devices``
    (devices with telemetry, extra label ``state``: online, offline) and
    ``continuum_device_telemetry_age_seconds`` (now − each device's latest ``at``, extra
    label ``quantile``: 0.5, 0.9, 0.99 and 1 — the oldest).

    :meth:`exposition` renders these in the text format and keeps each device's lines
    from one scrape to the next, re-rendering only the devices whose reading changed, so
    a scrape of an unchanged fleet costs a join, not a formatting of every sample.
    ``source`` is given by the control plane; without it nothing is exported.
    """

    QUANTILES = (0.5, 0.9, 0.99, 1.0)

    def __init__(self, source: Callable[[], list[DeviceReading]] | None = None, *,
                 per_device_limit: int = PER_DEVICE_SERIES_LIMIT,
                 clock: Callable[[], float] = time.time) -> None:
        """``per_device_limit``: largest fleet (devices) exported per device; ``clock``:
        Unix s, for the telemetry ages."""
        self.source = source
        self.per_device_limit = per_device_limit
        self.clock = clock
        # (site, device) → (the reading rendered, its lines per per-device family)
        self._lines: dict[tuple[str, str], tuple[DeviceReading, tuple[str, ...]]] = {}
        self._lock = threading.Lock()  # scrapes may come concurrently
        self.rendered = 0  # devices whose lines were (re)rendered, over all scrapes

    def describe(self) -> list[Metric]:
        return []  # families depend on the fleet; skip the registry's name check

    @staticmethod
    def _samples(d: DeviceReading) -> Iterator[tuple[int, tuple[str, ...], float]]:
        """(index in :data:`_DEVICE_FAMILIES`, label values, value) of one device."""
        v = (d.site, d.device, d.location)
        yield 0, v, 1.0 if d.online else 0.0
        yield 1, v, d.cpu_utilisation
        yield 2, v, float(d.memory_used)
        yield 3, v, float(d.memory_total)
        yield 4, v, d.load1
        yield 5, (*v, d.power_source), d.power_watts
        yield 6, v, float(d.running)
        if d.rtt_ms is not None:
            yield 7, v, d.rtt_ms / 1000.0
        for p, ms in sorted(d.peer_rtt_ms.items()):
            yield 8, (*v, p), ms / 1000.0
        if d.temperature_c is not None:
            yield 9, v, d.temperature_c
        yield 10, v, d.at

    def _fleet(self, readings: list[DeviceReading]) -> Iterator[GaugeMetricFamily]:
        """The fleet-wide families of ``readings``."""
        count = GaugeMetricFamily("continuum_devices", "Devices with telemetry, by site and "
                                  "state (online, offline).", labels=["site", "state"])
        age = GaugeMetricFamily(
            "continuum_device_telemetry_age_seconds", "Quantiles over a site's devices of "
            "the age of each device's latest telemetry (s; quantile 1: the oldest).",
            labels=["site", "quantile"])
        by_site: dict[str, list[DeviceReading]] = {}
        for d in readings:
            by_site.setdefault(d.site, []).append(d)
        now = self.clock()
        for site, ds in sorted(by_site.items()):
            online = sum(1 for d in ds if d.online)
            count.add_metric([site, "online"], float(online))
            count.add_metric([site, "offline"], float(len(ds) - online))
            ages = sorted(now - d.at for d in ds)
            for q in self.QUANTILES:
                age.add_metric([site, floatToGoString(q)],
                               ages[max(0, math.ceil(q * len(ages)) - 1)])  # nearest rank
        yield count
        yield age

    def collect(self) -> Iterator[Metric]:
        readings = self.source() if self.source is not None else []
        yield from self._fleet(readings)
        if len(readings) > self.per_device_limit:
            return
        fams = [GaugeMetricFamily(name, doc, labels=["site", "device", "location", *extra])
                for name, doc, extra in _DEVICE_FAMILIES]
        for d in readings:
            for i, labels, value in self._samples(d):
                fams[i].add_metric(list(labels), value)
        yield from fams

    def exposition(self) -> bytes:
        """The device families in the text exposition format (as ``generate_latest``
        writes them; UTF-8), per-device lines re-rendered only for changed readings."""
        readings = self.source() if self.source is not None else []
        out = [generate_latest(_Families(list(self._fleet(readings))))]
        with self._lock:
            if len(readings) > self.per_device_limit:
                self._lines.clear()
                return b"".join(out)
            old, new = self._lines, {}
            for d in readings:
                key = (d.site, d.device)
                hit = old.get(key)
                if hit is None or (hit[0] is not d and hit[0] != d):
                    hit = (d, self._render(d))
                    self.rendered += 1
                new[key] = hit
            self._lines = new
            rows = [lines for _, lines in new.values()]
        columns = zip(*rows, strict=True) if rows else ((),) * len(_DEVICE_FAMILIES)
        for (name, doc, _), column in zip(_DEVICE_FAMILIES, columns, strict=True):
            text = "".join(column)
            out.append(f"# HELP {name} {_escape_help(doc)}\n# TYPE {name} gauge\n{text}"
                       .encode())
        return b"".join(out)

    def _render(self, d: DeviceReading) -> tuple[str, ...]:
        """One device's sample lines, per family of :data:`_DEVICE_FAMILIES` (the
        device's labels escaped once for all of them); each line as ``generate_latest``
        writes it from :meth:`_samples` (values formatted by :func:`_go`)."""
        lab = (f'site="{_escape_label(d.site)}",device="{_escape_label(d.device)}",'
               f'location="{_escape_label(d.location)}"')
        go = _go
        rtt = d.rtt_ms
        temp = d.temperature_c
        peers = d.peer_rtt_ms
        return (
            f"{_P_UP}{lab}}} {'1.0' if d.online else '0.0'}\n",
            f"{_P_CPU}{lab}}} {go(d.cpu_utilisation)}\n",
            f"{_P_MEM_USED}{lab}}} {go(d.memory_used)}\n",
            f"{_P_MEM_TOTAL}{lab}}} {go(d.memory_total)}\n",
            f"{_P_LOAD1}{lab}}} {go(d.load1)}\n",
            f'{_P_POWER}{lab},source="{_escape_label(d.power_source)}"}} '
            f"{go(d.power_watts)}\n",
            f"{_P_RUNNING}{lab}}} {go(d.running)}\n",
            "" if rtt is None else f"{_P_RTT}{lab}}} {go(rtt / 1000.0)}\n",
            "".join([f'{_P_PEER}{lab},peer="{_escape_label(p)}"}} {go(ms / 1000.0)}\n'
                     for p, ms in sorted(peers.items())]) if peers else "",
            "" if temp is None else f"{_P_TEMP}{lab}}} {go(temp)}\n",
            f"{_P_AT}{lab}}} {go(d.at)}\n",
        )


# name, help, labels after site/device/location; the order of the exposition
_DEVICE_FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("continuum_device_up", "1 when the device is online, 0 when offline.", ()),
    ("continuum_device_cpu_utilisation_ratio", "CPU busy fraction (0..1).", ()),
    ("continuum_device_memory_used_bytes", "Memory in use (bytes).", ()),
    ("continuum_device_memory_total_bytes", "Memory of the device (bytes).", ()),
    ("continuum_device_load1", "One-minute load average.", ()),
    ("continuum_device_power_watts", "Power draw (W).", ("source",)),
    ("continuum_device_running_runs", "Runs executing on the device.", ()),
    ("continuum_device_rtt_seconds", "Measured round trip to the broker (s).", ()),
    ("continuum_device_peer_rtt_seconds", "Measured round trip to a peer (s).", ("peer",)),
    ("continuum_device_temperature_celsius", "Device temperature (°C).", ()),
    ("continuum_device_telemetry_timestamp_seconds",
     "When the device took its latest telemetry (Unix s).", ()),
)


# each per-device family's name and ``{``, in the order of _DEVICE_FAMILIES (_render)
(_P_UP, _P_CPU, _P_MEM_USED, _P_MEM_TOTAL, _P_LOAD1, _P_POWER, _P_RUNNING, _P_RTT, _P_PEER,
 _P_TEMP, _P_AT) = (f"{name}{{" for name, _, _ in _DEVICE_FAMILIES)


def _go(d: float) -> str:
    """``d`` (a float, an int or a bool) as prometheus-client's ``floatToGoString``
    writes it (``"+Inf"``, ``"-Inf"``, ``"NaN"``, ``"1.0"``, ``"1.5e+06"``, ``"1e+21"``),
    byte for byte, with fewer steps for a finite value. Raises what ``float(d)`` raises.

    Why it is the same: ``repr`` of a finite float ends in a digit, of infinities and NaN
    in a letter, and only a repr of 9 or more characters can have its dot past index 6
    (where Go, and ``floatToGoString`` for a positive value, switches to an exponent).
    Then the digits without the dot, trailing zeros stripped, are the mantissa's digits:
    ``floatToGoString`` strips ``"0."`` from ``d.ddd`` and stops at the first digit,
    which is not 0."""
    s = repr(float(d))
    if len(s) < 9:
        c = s[-1]
        if c > "9":  # inf, -inf or nan
            return "NaN" if c == "n" else ("-Inf" if s[0] == "-" else "+Inf")
        return s
    dot = s.find(".")
    if dot > 6 and s[0] != "-":
        m = (s[:dot] + s[dot + 1:]).rstrip("0")
        return f"{m[0]}.{m[1:]}e+{dot - 1:02d}" if len(m) > 1 else f"{m}e+{dot - 1:02d}"
    return s


def _escape_label(v: str) -> str:
    """``v`` escaped as a label value of the text format (``\\``, newline, ``"``)."""
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


def _escape_help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


class _Families:
    """Ready-made metric families as something ``generate_latest`` can collect."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


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
