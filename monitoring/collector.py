"""The collector: live node metrics from each site's Prometheus, joined onto nodes.

**Refresh** (:meth:`Collector.refresh`, on its own thread — never on the reconcile
path): for every site with a ``prometheusUrl``, ONE instant query per catalog entry
(:mod:`monitoring.catalog`) through ``prometheus-api-client``
(``PrometheusConnect(url, disable_ssl=True).custom_query``), each returning one series
per node. Every value keeps the sample timestamp Prometheus returns (the evaluation
time of the instant query; Prometheus only returns series whose samples are within
its lookback, and drops a series at once when its target stops answering). A
connection failure or timeout (``SiteMonitoring.timeout``, no retries) ends that
site's refresh — the remaining queries would fail the same way — and becomes data:
the site's error and when it began. A query Prometheus rejects (bad PromQL in an
override) is recorded for that metric only. The collector also reads the devices'
latest telemetry and puts their measured RTTs into the topology (agent → broker as
agent → control plane; agent → configured peers), and blackbox probe RTTs from the
site's location to each probe target's location (``SiteMonitoring.probes``).

**Apply** (:meth:`Collector.apply`, called when a site's inventory is refreshed; pure
memory, never blocks): joins the latest values onto the site's nodes. A series names
its node by its join label (``instance``, ``node`` or ``partition``); a node answers to
``monitoring.instances[node.name]``, its label :data:`INSTANCE_LABEL`, its name and
its id, and a label value also matches without its ``:port``. Fields fed by several
exporters take the highest-priority one present (e.g. Kepler's power over RAPL's).
Values the adapter reported itself (device telemetry, the twin) stay in the node's
fields where Prometheus has none (``metrics`` holds Prometheus's values only); a node
with a measured utilisation but no power meter gets the linear power model of its
profile at that utilisation, ``P = idle + (max − idle)·u`` (Fan, Weber & Barroso,
ISCA 2007; the API shows source ``model``). A utilisation older than
``staleAfter`` marks the node ``metricsStale`` (placement keeps the last value with a
penalty, see ``placement.plugins.load``) and the site Degraded with the reason; an unreachable
Prometheus makes the site Degraded too. Neither stops scheduling.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from continuum.errors import PermanentError
from continuum.model import MetricSample, Node, SiteHealth, SiteSpec
from monitoring.catalog import CatalogEntry, site_catalog
from monitoring.metrics import ControlPlaneMetrics
from monitoring.telemetry import DeviceReading
from monitoring.topology import TopologyModel

log = logging.getLogger(__name__)

INSTANCE_LABEL = "continuum.io/prometheus-instance"
"""Node label naming the value of the node's join label in Prometheus (e.g. host:9100)."""
FORGET_AFTER_S = 3600.0
"""Values older than this (s) are dropped from memory, stale or not."""
PARALLEL_SITES = 8
"""Sites whose Prometheus is queried at the same time."""


class QueryError(Exception):
    """Prometheus rejected one query (HTTP 4xx/5xx); the site itself answers."""


class Unreachable(Exception):
    """Prometheus did not answer (connection refused, timeout, DNS)."""


class PromClient(Protocol):
    """The seam to Prometheus: one instant query → the API's ``result`` list."""

    def query(self, promql: str) -> list[dict[str, Any]]: ...


class HttpPromClient:
    """:class:`PromClient` over ``prometheus-api-client`` (no retries, a timeout).

    Raises (from :meth:`query`):
        Unreachable: the server did not answer within ``timeout_s``.
        QueryError: it answered with an error (e.g. a PromQL parse error).
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._prom = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0),
                                       timeout=timeout_s)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the HTTP session (its pooled connections)."""
        self._prom.close()

    def query(self, promql: str) -> list[dict[str, Any]]:
        try:
            return list(self._prom.custom_query(promql, timeout=self.timeout_s))  # type: ignore[arg-type]
        except PrometheusApiClientException as e:
            raise QueryError(str(e)[:300]) from e
        except requests.RequestException as e:
            raise Unreachable(_short(e)) from e


def _short(e: Exception) -> str:
    text = str(e)
    for marker in ("Connection refused", "Read timed out", "timed out",
                   "Name or service not known", "Max retries exceeded"):
        if marker in text:
            return f"{type(e).__name__}: {marker}"
    return f"{type(e).__name__}: {text[:200]}"


@dataclass(frozen=True)
class Sample:
    """One value of one catalog metric for one join key, with its timestamp (Unix s).

    ``metric`` is the same value as the node shows it, built once per refresh.
    """

    value: float
    at: float
    entry: CatalogEntry
    metric: MetricSample


@dataclass
class SiteState:
    """What the collector knows of one site's Prometheus."""

    url: str
    samples: dict[str, dict[str, Sample]] = field(default_factory=dict)
    """metric name → join-label value → latest sample."""
    last_ok_at: float | None = None
    error: str | None = None
    error_since: float | None = None
    query_errors: dict[str, str] = field(default_factory=dict)
    series: int = 0
    """Series returned by the last successful refresh."""


def _host(key: str) -> str:
    """``host:port`` → ``host`` (IPv6 ``[::1]:9100`` → ``[::1]``); else unchanged."""
    head, sep, tail = key.rpartition(":")
    return head if sep and tail.isdigit() and head else key


def _iso(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _sample(value: float, unit: str, at: datetime, source: str) -> MetricSample:
    # built from checked values: skip pydantic validation (this runs per node per refresh)
    return MetricSample.model_construct(value=value, unit=unit, at=at, source=source,
                                        stale=False)


class Collector:
    """Keeps the latest node metrics of every site with a Prometheus; see module docstring.

    Args:
        metrics: the control plane's metrics (query durations, Prometheus up, ages).
        topology: receives measured RTTs (devices, blackbox probes); optional.
        control_plane_location: the location devices' broker RTTs are attributed to.
        devices: returns the devices' latest telemetry; optional.
        client: makes the :class:`PromClient` of a URL with a timeout (s); tests and
            other transports can replace it.
        clock: Unix seconds.
    """

    def __init__(self, metrics: ControlPlaneMetrics | None = None, *,
                 topology: TopologyModel | None = None,
                 control_plane_location: str = "control-plane",
                 devices: Callable[[], list[DeviceReading]] | None = None,
                 client: Callable[[str, float], PromClient] = HttpPromClient,
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.topology = topology
        self.control_plane_location = control_plane_location
        self.devices = devices
        self.client = client
        self.clock = clock
        self._sites: dict[str, SiteState] = {}
        self._clients: dict[tuple[str, str, float], PromClient] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.refreshes = 0

    # ------------------------------------------------------------ refresh

    def refresh(self, sites: Sequence[SiteSpec]) -> None:
        """Query every site with a ``prometheus_url`` once; read device telemetry once.

        Sites are refreshed in parallel (up to :data:`PARALLEL_SITES`), so a hung
        Prometheus delays only its own site, by at most its ``timeout``.
        """
        monitored = [s for s in sites if s.prometheus_url]
        names = {s.name for s in monitored}
        if len(monitored) == 1:
            self._refresh_site(monitored[0])
        elif monitored:
            with ThreadPoolExecutor(max_workers=min(PARALLEL_SITES, len(monitored)),
                                    thread_name_prefix="prometheus") as pool:
                list(pool.map(self._refresh_site, monitored))
        wanted = {(s.name, s.prometheus_url or "", s.monitoring.timeout) for s in monitored}
        with self._lock:
            for gone in set(self._sites) - names:
                del self._sites[gone]
            # a site removed, or whose URL or timeout changed: its old session goes
            stale = [self._clients.pop(k) for k in set(self._clients) - wanted]
        for c in stale:
            close = getattr(c, "close", None)
            if close is not None:
                close()
        self._refresh_devices()
        self.refreshes += 1

    def _client(self, site: str, url: str, timeout: float) -> PromClient:
        key = (site, url, timeout)  # one HTTP session per site: sites refresh in parallel
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                c = self._clients[key] = self.client(url, timeout)
        return c

    def _refresh_site(self, spec: SiteSpec) -> None:
        url = spec.prometheus_url or ""
        mon = spec.monitoring
        bad: str | None = None
        try:
            entries = site_catalog(mon, spec.name)
        except PermanentError as pe:  # registered before validation existed
            entries, bad = [], pe.message
        with self._lock:
            st = self._sites.get(spec.name)
            if st is None or st.url != url:
                st = self._sites[spec.name] = SiteState(url=url)
        client = self._client(spec.name, url, mon.timeout)
        fresh: dict[str, dict[str, Sample]] = {}
        query_errors: dict[str, str] = {"catalog": bad} if bad else {}
        error: str | None = None
        series = 0
        for e in entries:
            t0 = time.perf_counter()
            try:
                result = client.query(e.query(mon.window))
            except Unreachable as ex:
                error = f"Prometheus at {url} unreachable ({ex})"
                break
            except QueryError as ex:
                query_errors[e.name] = str(ex)
                continue
            finally:
                if self.metrics is not None:
                    self.metrics.prometheus_query.labels(spec.name).observe(
                        time.perf_counter() - t0)
            got: dict[str, Sample] = {}
            for item in result:
                labels = item.get("metric", {})
                key = labels.get(e.join)
                try:
                    ts, raw = item["value"]
                    value = float(raw)
                except (KeyError, TypeError, ValueError):
                    continue
                if key is None or not math.isfinite(value):
                    continue
                got[str(key)] = Sample(value, float(ts), e, _sample(
                    value, e.unit, _iso(float(ts)), f"prometheus:{e.exporter}"))
            series += len(got)
            fresh[e.name] = got
        now = self.clock()
        with self._lock:
            for name, got in fresh.items():
                merged = st.samples.setdefault(name, {})
                merged.update(got)
                for key in [k for k, s in merged.items() if now - s.at > FORGET_AFTER_S]:
                    del merged[key]
            st.query_errors = query_errors
            if error is None:
                st.last_ok_at, st.error, st.error_since, st.series = now, None, None, series
            else:
                if st.error is None:
                    st.error_since = now
                    log.warning("site %s: %s", spec.name, error)
                st.error = error
        if self.metrics is not None:
            self.metrics.prometheus_up.labels(spec.name).set(0 if error else 1)
        if error is None and self.topology is not None and spec.location:
            for key, s in fresh.get("probe_rtt_ms", {}).items():
                target = mon.probes.get(key) or mon.probes.get(_host(key))
                if target and s.value >= 0:
                    self.topology.observe(spec.location, target, s.value, at=s.at)

    def _refresh_devices(self) -> None:
        if self.devices is None or self.topology is None:
            return
        try:
            readings = self.devices()
        except Exception:  # a broken source must not stop the collector
            log.exception("reading device telemetry failed")
            return
        for r in readings:
            if r.rtt_ms is not None and r.rtt_ms >= 0:
                self.topology.observe(r.location, self.control_plane_location, r.rtt_ms,
                                      at=r.at)
            for peer, ms in r.peer_rtt_ms.items():
                if ms >= 0:
                    self.topology.observe(r.location, peer, ms, at=r.at)

    # ------------------------------------------------------------ apply

    def apply(self, spec: SiteSpec, nodes: Sequence[Node],
              now: float) -> tuple[list[Node], SiteHealth | None, str]:
        """The site's nodes with live metrics joined; plus a health override and reason.

        Returns ``(nodes, SiteHealth.Degraded, reason)`` when the site's Prometheus is
        unreachable, its values are stale, or none of its series matched a node, else
        ``(nodes, None, "")``. Never raises, never does I/O.
        """
        mon = spec.monitoring
        bound = mon.stale_after
        with self._lock:
            st = self._sites.get(spec.name) if spec.prometheus_url else None
            samples = {m: dict(v) for m, v in st.samples.items()} if st else {}
            error, since = (st.error, st.error_since) if st else (None, None)
            last_ok, series = (st.last_ok_at, st.series) if st else (None, 0)
            query_errors = dict(st.query_errors) if st else {}
        index = {m: self._index(v) for m, v in samples.items()}
        out: list[Node] = []
        stale: list[tuple[str, float]] = []
        matched_any = False
        for node in nodes:
            keys = [k for k in (mon.instances.get(node.name), node.labels.get(INSTANCE_LABEL),
                                node.name, node.id) if k]
            live: dict[str, Sample] = {}
            for metric, idx in index.items():
                for k in keys:
                    s = idx.get(k)
                    if s is not None:
                        live[metric] = s
                        break
            matched_any = matched_any or bool(live)
            node = self._join(node, live, now, bound)
            if node.metrics_stale and node.observed_at is not None:
                stale.append((node.name, now - node.observed_at.timestamp()))
            out.append(node)
        reasons = []
        if error is not None:
            age = f"{now - last_ok:.0f} s ago" if last_ok else "never"
            reasons.append(f"{error} for {now - (since or now):.0f} s (last answer {age}); "
                           "placement uses the last values")
        if stale:
            worst, oldest = max(stale, key=lambda x: x[1])
            reasons.append(f"metrics stale on {len(stale)}/{len(out)} nodes ({worst}: "
                           f"utilisation {oldest:.0f} s old, bound {bound:g} s)")
        if error is None and last_ok is not None and series and not matched_any and out:
            reasons.append(f"Prometheus returned {series} series but none matched a node; "
                           f"map nodes with monitoring.instances or the label {INSTANCE_LABEL}")
        if query_errors:
            metric, msg = next(iter(query_errors.items()))
            reasons.append(f"{len(query_errors)} quer{'y' if len(query_errors) == 1 else 'ies'}"
                           f" rejected ({metric}: {msg})")
        if self.metrics is not None and last_ok is not None:
            self.metrics.metrics_age.labels(spec.name).set(max(0.0, now - last_ok))
        if reasons:
            return out, SiteHealth.Degraded, "; ".join(reasons)
        return out, None, ""

    @staticmethod
    def _index(by_key: dict[str, Sample]) -> dict[str, Sample]:
        idx = dict(by_key)
        for k, s in by_key.items():
            h = _host(k)
            if h != k and h not in by_key:
                old = idx.get(h)
                if old is None or s.at > old.at:
                    idx[h] = s
        return idx

    @staticmethod
    def _join(node: Node, live: dict[str, Sample], now: float, bound: float) -> Node:
        if not live:  # fast path: only the adapter's own values (telemetry, twin)
            stale = bool(node.utilisation is not None and node.observed_at is not None
                         and now - node.observed_at.timestamp() > bound)
            return node if stale == node.metrics_stale else node.model_copy(
                update={"metrics_stale": stale})
        metrics = dict(node.metrics)
        for name, s in live.items():
            metrics[name] = s.metric
        update: dict[str, Any] = {}
        best: dict[str, Sample] = {}
        for s in live.values():
            f = s.entry.feeds
            if f is not None and (f not in best or s.entry.priority < best[f].entry.priority):
                best[f] = s
        if "utilisation" in best:
            s = best["utilisation"]
            update["utilisation"] = min(1.0, max(0.0, s.value))
            update["observed_at"] = _iso(s.at)
            metrics["cpu_utilisation"] = metrics[s.entry.name]
        if "memory_utilisation" in best:
            update["memory_utilisation"] = min(1.0, max(0.0, best["memory_utilisation"].value))
        if "power_watts" in best:
            s = best["power_watts"]
            update["power_watts"] = max(0.0, s.value)
            metrics["power_watts"] = s.metric
        elif "utilisation" in best:  # measured load, no power meter: the node's power model
            s = best["utilisation"]
            p = node.power
            watts = p.idle_watts + (p.max_watts - p.idle_watts) * update["utilisation"]
            update["power_watts"] = watts  # no metrics entry: the API shows source "model"
        for name, m in metrics.items():
            is_stale = now - m.at.timestamp() > bound
            if is_stale != m.stale:
                metrics[name] = m.model_copy(update={"stale": is_stale})
        observed = update.get("observed_at", node.observed_at)
        util = update.get("utilisation", node.utilisation)
        update["metrics"] = metrics
        update["metrics_stale"] = bool(util is not None and observed is not None
                                       and now - observed.timestamp() > bound)
        return node.model_copy(update=update)

    # ------------------------------------------------------------ views and loop

    def status(self, site: str) -> dict[str, Any] | None:
        """The site's Prometheus state for the API (None if it has no Prometheus)."""
        with self._lock:
            st = self._sites.get(site)
            if st is None:
                return None
            return {"url": st.url, "lastAnswerAt": _iso(st.last_ok_at).isoformat()
                    if st.last_ok_at else None, "error": st.error,
                    "queryErrors": dict(st.query_errors), "series": st.series}

    def wake(self) -> None:
        """Refresh now instead of at the end of the interval (e.g. a site was registered)."""
        self._wake.set()

    def run_forever(self, stop: threading.Event, interval_s: float,
                    sites: Callable[[], Sequence[SiteSpec]]) -> None:
        """Refresh every ``interval_s`` until ``stop`` is set; failures are logged, not raised."""
        while not stop.is_set():
            try:
                self.refresh(sites())
            except Exception:
                log.exception("metrics refresh failed; retrying next interval")
            self._wake.wait(interval_s)
            self._wake.clear()
