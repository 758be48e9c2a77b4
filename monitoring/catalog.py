"""The PromQL catalog: what the collector asks each site's Prometheus, per exporter.

Every :class:`CatalogEntry` is ONE instant query per site per refresh that returns one
series per node (aggregated ``by`` the entry's join label), never a query per node.
The join label names the node in the exporter's own terms: ``instance`` for
node-exporter, Kepler and the IPMI exporter (the scrape target), ``node`` for
kube-state-metrics and cAdvisor (as scraped through the kubelet with the usual
``node`` relabelling), ``partition`` for the Slurm exporter, ``instance`` (the probe
target) for the blackbox exporter.

Sources of the metric names:

* node-exporter 1.5 (``node_cpu_seconds_total``, ``node_memory_MemAvailable_bytes``,
  ``node_memory_MemTotal_bytes``, RAPL ``node_rapl_package_joules_total``);
* cAdvisor (``container_cpu_usage_seconds_total``,
  ``container_memory_working_set_bytes``) and kube-state-metrics 2.x
  (``kube_pod_info``, ``kube_pod_container_resource_requests``);
* Kepler 0.7 (``kepler_node_platform_joules_total``: whole-node energy, J);
* prometheus-community ipmi_exporter (``ipmi_dcmi_power_consumption_watts``);
* blackbox_exporter (``probe_duration_seconds``, ``probe_success``);
* vpenso/prometheus-slurm-exporter (``slurm_partition_cpus_allocated``,
  ``slurm_partition_cpus_total``, ``slurm_partition_jobs_pending``).

Entries that *feed* a node field (``utilisation``, ``memory_utilisation``,
``power_watts``) are ranked by :attr:`CatalogEntry.priority`: a node with Kepler and
RAPL figures shows Kepler's (whole platform) rather than RAPL's (CPU packages only).
Sites override any entry's PromQL (``SiteSpec.monitoring.queries``), switch one off
with ``""``, or limit the exporters queried (``SiteSpec.monitoring.exporters``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from continuum.errors import PermanentError
from continuum.model import SiteMonitoring

Field = Literal["utilisation", "memory_utilisation", "power_watts"]


@dataclass(frozen=True)
class CatalogEntry:
    """One metric: its PromQL (``{window}`` = rate range), unit and how it joins nodes.

    ``target`` is ``"node"`` (joined to a node through ``join``) or ``"probe"`` (a
    blackbox RTT, joined to a location through ``SiteMonitoring.probes``).
    """

    name: str
    exporter: str
    promql: str
    unit: str
    join: str
    feeds: Field | None = None
    priority: int = 0
    """Lower wins when several entries feed the same node field."""
    target: Literal["node", "probe"] = "node"
    help: str = ""

    def query(self, window: str) -> str:
        """The PromQL with ``{window}`` replaced (e.g. ``1m``)."""
        return self.promql.replace("{window}", window)


CATALOG: tuple[CatalogEntry, ...] = (
    # ---- node-exporter
    CatalogEntry("cpu_utilisation", "node-exporter",
                 '1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[{window}]))',
                 "ratio", "instance", "utilisation", 0,
                 help="CPU busy fraction: 1 − idle share of all CPUs over the window"),
    CatalogEntry("memory_utilisation", "node-exporter",
                 "1 - sum by (instance) (node_memory_MemAvailable_bytes)"
                 " / sum by (instance) (node_memory_MemTotal_bytes)",
                 "ratio", "instance", "memory_utilisation", 0,
                 help="memory in use: 1 − MemAvailable / MemTotal"),
    CatalogEntry("rapl_power_watts", "node-exporter",
                 "sum by (instance) (rate(node_rapl_package_joules_total[{window}]))",
                 "W", "instance", "power_watts", 2,
                 help="CPU package power from RAPL energy counters (J/s = W)"),
    # ---- Kepler
    CatalogEntry("kepler_power_watts", "kepler",
                 "sum by (instance) (rate(kepler_node_platform_joules_total[{window}]))",
                 "W", "instance", "power_watts", 0,
                 help="whole-node platform power from Kepler's energy counter (W)"),
    # ---- IPMI exporter
    CatalogEntry("ipmi_power_watts", "ipmi",
                 "max by (instance) (ipmi_dcmi_power_consumption_watts)",
                 "W", "instance", "power_watts", 1,
                 help="DCMI power reading of the BMC (W)"),
    # ---- cAdvisor
    CatalogEntry("container_cpu_cores", "cadvisor",
                 'sum by (node) (rate(container_cpu_usage_seconds_total{container!="",'
                 'container!="POD"}[{window}]))',
                 "cores", "node", help="CPU used by the node's containers (cores)"),
    CatalogEntry("container_memory_bytes", "cadvisor",
                 'sum by (node) (container_memory_working_set_bytes{container!="",'
                 'container!="POD"})',
                 "bytes", "node", help="working-set memory of the node's containers"),
    # ---- kube-state-metrics
    CatalogEntry("pods", "kube-state-metrics", "count by (node) (kube_pod_info)",
                 "count", "node", help="pods bound to the node"),
    CatalogEntry("pod_cpu_requests_cores", "kube-state-metrics",
                 'sum by (node) (kube_pod_container_resource_requests{resource="cpu"})',
                 "cores", "node", help="CPU requested by the node's pods (cores)"),
    # ---- Slurm exporter (a partition is a node to Continuum)
    CatalogEntry("slurm_cpu_utilisation", "slurm",
                 "sum by (partition) (slurm_partition_cpus_allocated)"
                 " / sum by (partition) (slurm_partition_cpus_total)",
                 "ratio", "partition", "utilisation", 1,
                 help="allocated share of the partition's CPUs"),
    CatalogEntry("slurm_jobs_pending", "slurm",
                 "sum by (partition) (slurm_partition_jobs_pending)",
                 "count", "partition", help="jobs waiting in the partition's queue"),
    # ---- blackbox exporter
    CatalogEntry("probe_rtt_ms", "blackbox",
                 "1000 * max by (instance) (probe_duration_seconds and probe_success == 1)",
                 "ms", "instance", target="probe",
                 help="round trip of a successful probe from the site to the target (ms)"),
)
"""The built-in catalog, in priority order within each exporter."""

EXPORTERS: tuple[str, ...] = tuple(dict.fromkeys(e.exporter for e in CATALOG))
BY_NAME: dict[str, CatalogEntry] = {e.name: e for e in CATALOG}


def site_catalog(monitoring: SiteMonitoring, site: str = "") -> list[CatalogEntry]:
    """The entries to query for one site: exporters selected, overrides applied.

    Raises:
        PermanentError: an unknown exporter or metric name in ``monitoring`` (the message
            names the field and lists the valid names).
    """
    check_monitoring(monitoring, site)
    wanted = set(monitoring.exporters) if monitoring.exporters is not None else set(EXPORTERS)
    out = []
    for e in CATALOG:
        if e.exporter not in wanted:
            continue
        promql = monitoring.queries.get(e.name, e.promql)
        if not promql.strip():
            continue
        out.append(replace(e, promql=promql) if promql != e.promql else e)
    return out


def monitoring_problems(monitoring: SiteMonitoring) -> list[tuple[list[str | int], str]]:
    """Every unknown name a site's ``monitoring`` refers to, as ``(loc, message)``,
    e.g. ``(["monitoring", "queries", "cpu_utilization"], "unknown metric ...")``."""
    out: list[tuple[list[str | int], str]] = []
    for i, ex in enumerate(monitoring.exporters or []):
        if ex not in EXPORTERS:
            out.append((["monitoring", "exporters", str(i)],
                        f"unknown exporter {ex!r}; use one of {', '.join(EXPORTERS)}"))
    for name in monitoring.queries:
        if name not in BY_NAME:
            out.append((["monitoring", "queries", name],
                        f"unknown metric {name!r}; the catalog has {', '.join(BY_NAME)}"))
    return out


def check_monitoring(monitoring: SiteMonitoring, site: str = "") -> None:
    """Validate the names a site's ``monitoring`` refers to.

    Raises:
        PermanentError: ``monitoring.exporters.N`` or ``monitoring.queries.NAME`` unknown
            (the message starts with that path and lists the valid names).
    """
    problems = monitoring_problems(monitoring)
    if problems:
        loc, msg = problems[0]
        raise PermanentError(f"{'.'.join(map(str, loc))}: {msg}", site=site)
