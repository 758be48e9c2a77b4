"""The ``kubernetes`` adapter: a cluster as a site, through the official ``kubernetes`` client.

* **registration** — :mod:`adapters.kubernetes.config` builds the client from an uploaded
  kubeconfig, a kubeconfig path (with a context) or the in-cluster service account.
  The first :meth:`KubernetesAdapter.inventory` runs the connectivity check, which fails
  precisely: the server unreachable (:class:`TransientError`), credentials rejected
  (401, :class:`AuthError`), a missing RBAC permission (a ``SelfSubjectAccessReview``
  per permission of :data:`REQUIRED_PERMISSIONS`; :class:`AuthError` naming verb,
  resource and namespace), a server older than :data:`MIN_SERVER_VERSION`
  (:class:`UnsupportedError`).
* **inventory** — one list of nodes and one list of non-terminated pods per refresh;
  each node's allocatable cpu/memory/``nvidia.com/gpu``, what the pods' requests leave
  free, labels, taints, conditions, arch and readiness, and its tier
  (``continuum.io/tier`` label, else ``edge`` for ``node-role.kubernetes.io/edge``,
  else the site's tier, else ``cloud``).
* **workloads** — :mod:`adapters.kubernetes.manifests` (Job / Deployment + Service,
  pinned by node affinity, labelled with the run ids).
* **status** — a watch thread per site (pods of this site, with ``resourceVersion``;
  started by the first successful connectivity check) feeds a cache that
  :meth:`status` reads without a network call. A ``410 Gone`` (resource version too
  old) makes the thread relist and watch again from the list's version; it also
  relists every ``resyncInterval`` seconds, as an informer resyncs. Pod phases and
  container states map to run states through
  :data:`adapters.kubernetes.states.POD_STATE_TABLE`.
* **cancel** deletes the workload with ``propagationPolicy: Foreground`` (its pods go
  first); **release** with ``Background``; **logs** read the pod log API.

Why one module of this size: it is one class, the adapter contract for one backend, whose
inventory, submission and status share one watch cache and its lock; what stands apart is
already apart (config.py, manifests.py, states.py, kubeedge.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from adapters.base import AdapterContext, Handle, RunStatus, TaskRun
from adapters.kubernetes import manifests as mf
from adapters.kubernetes.config import DEFAULT_POWER, KubernetesConfig, build_api_client, parse_config
from adapters.kubernetes.states import pod_run_status
from continuum.errors import (
    AdapterError,
    AuthError,
    PermanentError,
    TransientError,
    UnsupportedError,
)
from continuum.model import (
    Node,
    NodeCondition,
    PowerProfile,
    Resources,
    RunState,
    SiteHealth,
    SiteKind,
    SiteSpec,
    Taint,
    Tier,
)
from continuum.units import parse_bytes, parse_cpu

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_SERVER_VERSION = (1, 23)
"""Oldest Kubernetes minor the adapter accepts: ``ttlSecondsAfterFinished`` on Jobs went
GA in 1.23 (KEP-592), and every other field the manifests use is older."""

LABEL_TIER = "continuum.io/tier"
LABEL_LOCATION = "continuum.io/location"
LABEL_SPEED = "continuum.io/speed"
LABEL_IDLE_W = "continuum.io/idle-watts"
LABEL_MAX_W = "continuum.io/max-watts"
LABEL_GPU_W = "continuum.io/gpu-watts"
EDGE_ROLE = "node-role.kubernetes.io/edge"
ARCH_LABEL = "kubernetes.io/arch"

OUTPUT_TAIL_LINES = 50
"""Log lines of a finished pod kept as the run's output tail."""

GOARCH_TO_UNAME = {"amd64": "x86_64", "arm64": "aarch64", "arm": "armv7l", "386": "i686"}
"""Kubernetes reports Go's GOARCH names; Continuum speaks ``uname -m`` names."""


@dataclass(frozen=True)
class Permission:
    """One RBAC permission the adapter needs; ``namespaced`` checks it in the site's namespace."""

    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    namespaced: bool = True

    def describe(self, namespace: str) -> str:
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        res += f".{self.group}" if self.group else ""
        where = f"in namespace {namespace!r}" if self.namespaced else "cluster-wide"
        return f"{self.verb} {res} {where}"


REQUIRED_PERMISSIONS: tuple[Permission, ...] = (
    Permission("list", "nodes", namespaced=False),
    Permission("list", "pods", namespaced=False),
    Permission("list", "pods"),
    Permission("watch", "pods"),
    Permission("get", "pods", subresource="log"),
    Permission("create", "jobs", "batch"),
    Permission("get", "jobs", "batch"),
    Permission("list", "jobs", "batch"),
    Permission("delete", "jobs", "batch"),
    Permission("create", "deployments", "apps"),
    Permission("get", "deployments", "apps"),
    Permission("list", "deployments", "apps"),
    Permission("delete", "deployments", "apps"),
    Permission("create", "services"),
    Permission("get", "services"),
    Permission("delete", "services"),
)
"""What ``deploy/kubernetes/rbac.yaml`` grants, and what the connectivity check verifies."""

_RBAC_FIX = "grant it with deploy/kubernetes/rbac.yaml (see docs/kubernetes.md)"


class _RawWatch(k8s_watch.Watch):
    """A watch that yields the events' JSON as is (``raw_object``), without building the
    client's models: the cache keeps the API's own dicts, and a field the models do not
    know (a newer server) cannot break the stream."""

    def get_return_type(self, func: Any) -> Any:
        return None


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


def _status_message(e: ApiException) -> str:
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or e.reason or "").strip()


def _retry_after(e: ApiException, default: float) -> float:
    value = (e.headers or {}).get("Retry-After") if e.headers else None
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return default


class KubernetesAdapter:
    """Adapter for a ``kubernetes`` site. See the module docstring.

    Args:
        site: the site; ``site.config`` is a :class:`KubernetesConfig`.
        ctx: the control plane's context; ``ctx.wake`` is called on every pod event.
        api_client: the ``kubernetes.client.ApiClient`` to use (tests pass an
            instrumented one); by default built from ``site.config`` by
            :func:`~adapters.kubernetes.config.build_api_client`. The config is still
            validated either way; the adapter closes the client on :meth:`close`.

    Raises:
        PermanentError: the config or the kubeconfig is invalid (the message says which
            field and how to fix it). No network call is made here.
    """

    kind = SiteKind.kubernetes

    def __init__(self, site: SiteSpec, ctx: AdapterContext, *,
                 api_client: k8s.ApiClient | None = None) -> None:
        self.site = site
        self.ctx = ctx
        self.config: KubernetesConfig = parse_config(site)
        if api_client is None:
            self.api, self.where = build_api_client(self.config, site.name)
        else:
            self.api, self.where = api_client, f"{api_client.configuration.host} (given client)"
        self.core = k8s.CoreV1Api(self.api)
        self.batch = k8s.BatchV1Api(self.api)
        self.apps = k8s.AppsV1Api(self.api)
        self.authz = k8s.AuthorizationV1Api(self.api)
        self.version_api = k8s.VersionApi(self.api)
        self.namespace = self.config.namespace
        self.selector = f"{mf.MANAGED_BY}=continuum,{mf.LABEL_SITE}={site.name}"
        self.opts = mf.PodOptions(default_image=self.config.default_image,
                                  tolerations=self._extra_tolerations())
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, dict[str, Any]]] = {}
        self._gone: dict[str, str] = {}
        self._cancelled: set[str] = set()
        """Runs cancelled through this adapter: once their pods are gone they are
        Cancelled (not "deleted before it finished")."""
        self._tails: dict[str, tuple[str, str]] = {}
        self._workloads: set[str] = set()
        self._relisted_at = 0.0
        self._nodes: dict[str, Node] = {}
        self._checked = False
        self.server_version = ""
        self.watch_error = ""
        self.relists = 0
        """Full relists done by the watch thread (the first one included)."""
        self.gone_count = 0
        """Times a watch was answered 410 Gone and resumed by relisting."""
        self.events = 0
        """Watch events applied to the cache."""
        self._stop = threading.Event()
        self._watch: _RawWatch | None = None
        self._thread = threading.Thread(target=self._watch_loop, daemon=True,
                                        name=f"k8s-watch-{site.name}")

    # ------------------------------------------------------------ hooks for kubeedge

    def _extra_tolerations(self) -> list[dict[str, Any]]:
        return []

    def _tier(self, labels: dict[str, str]) -> Tier:
        raw = labels.get(LABEL_TIER)
        if raw:
            try:
                return Tier(raw)
            except ValueError:
                log.warning("site %s: node label %s=%r is not a tier (%s); ignored",
                            self.site.name, LABEL_TIER, raw, ", ".join(t.value for t in Tier))
        if EDGE_ROLE in labels:
            return Tier.edge
        return self.site.tier or Tier.cloud

    def _visible_taints(self, taints: list[dict[str, Any]]) -> list[Taint]:
        return [Taint(key=t["key"], value=t.get("value") or "", effect=t["effect"])
                for t in taints if t.get("effect") in ("NoSchedule", "PreferNoSchedule",
                                                        "NoExecute")]

    def _node_extras(self, nodes: list[Node]) -> list[Node]:
        return nodes

    # ------------------------------------------------------------ errors

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one API call, mapping failures to the typed errors (``from`` the cause)."""
        try:
            return fn()
        except ApiException as e:
            raise self._api_error(e, what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self._checked = False
            raise TransientError(f"cannot reach the API server at {self.where} to {what}: "
                                 f"{_reason(e)}", site=self.site.name, retry_after=5.0) from e

    def _api_error(self, e: ApiException, what: str) -> AdapterError:
        msg = _status_message(e)
        if e.status == 401:
            self._checked = False
            return AuthError(f"the API server at {self.where} rejected the credentials "
                             f"(401 Unauthorized) when asked to {what}: the token or client "
                             "certificate is wrong or expired; make a new kubeconfig as "
                             "docs/kubernetes.md shows", site=self.site.name)
        if e.status == 403:
            self._checked = False
            return AuthError(f"RBAC denied the request to {what} (403 Forbidden: {msg}); "
                             f"{_RBAC_FIX}", site=self.site.name, details={"status": 403})
        if e.status in (400, 422):
            return PermanentError(f"the API server refused to {what} ({e.status}): {msg}",
                                  site=self.site.name, details={"status": e.status})
        if e.status == 404:
            return PermanentError(f"not found when asked to {what}: {msg}",
                                  site=self.site.name, details={"status": 404})
        return TransientError(f"the API server failed to {what} ({e.status} {e.reason}): {msg}",
                              site=self.site.name, retry_after=_retry_after(e, 5.0),
                              details={"status": e.status})

    @property
    def _timeout(self) -> tuple[float, float]:
        t = self.config.request_timeout
        return (t, t)

    # ------------------------------------------------------------ connectivity check

    def check(self) -> str:
        """Reach the server, check its version and every permission; returns the version.

        Raises:
            TransientError: unreachable (the message names the URL and the socket error).
            AuthError: 401 (credentials) or a missing permission (names verb, resource,
                namespace and the fix).
            UnsupportedError: the server is older than :data:`MIN_SERVER_VERSION`.
        """
        info = self._call("read the server version (GET /version)",
                          lambda: self.version_api.get_code(_request_timeout=self._timeout))
        major = int("".join(ch for ch in str(info.major) if ch.isdigit()) or 0)
        minor = int("".join(ch for ch in str(info.minor) if ch.isdigit()) or 0)
        if (major, minor) < MIN_SERVER_VERSION:
            raise UnsupportedError(
                f"the API server at {self.where} runs Kubernetes {info.git_version}; the "
                f"adapter needs {MIN_SERVER_VERSION[0]}.{MIN_SERVER_VERSION[1]} or newer "
                "(Job ttlSecondsAfterFinished is GA from 1.23); upgrade the cluster",
                site=self.site.name)
        missing = []
        for p in self._permissions():
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": {
                          "verb": p.verb, "group": p.group, "resource": p.resource,
                          **({"subresource": p.subresource} if p.subresource else {}),
                          **({"namespace": self.namespace} if p.namespaced else {})}}}
            res = self._call(f"check permission to {p.describe(self.namespace)}",
                             lambda r=review: self.authz.create_self_subject_access_review(  # type: ignore[misc]
                                 r, _request_timeout=self._timeout))
            if not (res.status and res.status.allowed):
                missing.append(p.describe(self.namespace))
        if missing:
            raise AuthError(f"the credentials ({self.where}) lack RBAC permission to "
                            f"{'; '.join(missing)}; {_RBAC_FIX}", site=self.site.name,
                            details={"missing": missing})
        self.server_version = str(info.git_version)
        self._checked = True
        if self._thread.ident is None and not self._stop.is_set():
            self._thread.start()  # watch once the server is known to answer
        return self.server_version

    def _permissions(self) -> tuple[Permission, ...]:
        return REQUIRED_PERMISSIONS

    # ------------------------------------------------------------ inventory

    def inventory(self) -> list[Node]:
        """Every node, with allocatable, free (after running pods' requests) and conditions.

        Raises:
            TransientError | AuthError | UnsupportedError: see :meth:`check` (run until it
                first succeeds, and again after a 401/403 or a connection failure).
        """
        if not self._checked:
            self.check()
        raw_nodes = self._list_json("list nodes",
                                    lambda: self.core.list_node(
                                        _preload_content=False,
                                        _request_timeout=self._timeout))["items"]
        pods = self._list_json("list pods cluster-wide (for free capacity)",
                               lambda: self.core.list_pod_for_all_namespaces(
                                   field_selector="status.phase!=Succeeded,status.phase!=Failed",
                                   _preload_content=False,
                                   _request_timeout=self._timeout))["items"]
        used: dict[str, list[float]] = {}
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if not node:
                continue
            u = used.setdefault(node, [0.0, 0.0, 0.0])
            for c in (pod.get("spec") or {}).get("containers") or []:
                req = (c.get("resources") or {}).get("requests") or {}
                lim = (c.get("resources") or {}).get("limits") or {}
                u[0] += parse_cpu(req["cpu"]) if "cpu" in req else 0.0
                u[1] += parse_bytes(req["memory"]) if "memory" in req else 0
                u[2] += int(req.get(mf.GPU_RESOURCE, lim.get(mf.GPU_RESOURCE, 0)))
        now = datetime.fromtimestamp(self.ctx.clock(), UTC)
        nodes = [self._node(n, used.get(n["metadata"]["name"], [0.0, 0.0, 0.0]), now)
                 for n in raw_nodes]
        nodes = self._node_extras(nodes)
        with self._lock:
            self._nodes = {n.name: n for n in nodes}
        return nodes

    def _list_json(self, what: str, fn: Callable[[], Any]) -> dict[str, Any]:
        resp = self._call(what, fn)
        return json.loads(resp.data)  # type: ignore[no-any-return]

    def _node(self, raw: dict[str, Any], used: list[float], now: datetime) -> Node:
        meta, spec, status = raw["metadata"], raw.get("spec") or {}, raw.get("status") or {}
        name = meta["name"]
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        alloc_raw = status.get("allocatable") or status.get("capacity") or {}
        cap_raw = status.get("capacity") or alloc_raw
        alloc = _resources(alloc_raw)
        cap = _resources(cap_raw)
        free = Resources(cpu=max(0.0, alloc.cpu - used[0]),
                         memory=max(0, alloc.memory - int(used[1])),
                         gpu=max(0, alloc.gpu - int(used[2])))
        conditions = [NodeCondition(type=c.get("type", ""), status=c.get("status", "Unknown"),
                                    reason=c.get("reason") or "", message=c.get("message") or "",
                                    since=_ts(c.get("lastTransitionTime")))
                      for c in status.get("conditions") or []]
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        if spec.get("unschedulable"):
            ready = False
            conditions.append(NodeCondition(type="Schedulable", status="False",
                                            reason="Cordoned",
                                            message="spec.unschedulable is true (kubectl cordon)"))
        arch = labels.get(ARCH_LABEL) or (status.get("nodeInfo") or {}).get("architecture") or "amd64"
        return Node(
            id=f"{self.site.name}/{name}", name=name, site=self.site.name, site_kind=self.kind,
            tier=self._tier(labels), arch=GOARCH_TO_UNAME.get(arch, arch), capacity=cap,
            allocatable=alloc, free=free, labels=labels,
            taints=self._visible_taints(spec.get("taints") or []),
            speed=_float_label(labels, LABEL_SPEED, 1.0, positive=True),
            power=self._power(labels), location=labels.get(LABEL_LOCATION)
            or self.site.location or self.site.name,
            runtimes=["container"], ready=ready, conditions=conditions, observed_at=now,
        )  # utilisation (CPU busy) is measured by the site's Prometheus, not guessed here

    def _power(self, labels: dict[str, str]) -> PowerProfile:
        base = self.config.power or DEFAULT_POWER
        if LABEL_IDLE_W not in labels and LABEL_MAX_W not in labels:
            return base
        idle = _float_label(labels, LABEL_IDLE_W, base.idle_watts)
        peak = max(idle, _float_label(labels, LABEL_MAX_W, base.max_watts))
        return PowerProfile(idle_watts=idle, max_watts=peak,
                            gpu_watts=_float_label(labels, LABEL_GPU_W, base.gpu_watts),
                            source="node labels continuum.io/idle-watts, max-watts")

    # ------------------------------------------------------------ submit

    def submit(self, run: TaskRun, node: Node, request_id: str) -> Handle:
        """Create the run's Job, or Deployment (+ Service); idempotent by ``request_id``.

        An object that already exists with this run id is adopted (409 → read it back).

        Raises:
            TransientError: the server is unreachable or busy (retry is safe).
            AuthError: RBAC denies creating the object (names verb and resource).
            PermanentError: the server rejected the manifest (422) or an object of that
                name belongs to another run.
        """
        if request_id != run.run_id:
            run = TaskRun(run_id=request_id, workflow_id=run.workflow_id,
                          workflow_name=run.workflow_name, task=run.task, attempt=run.attempt,
                          inputs=run.inputs, outputs=run.outputs, dataset_bytes=run.dataset_bytes)
        hostname = node.labels.get(mf.HOSTNAME_LABEL, node.name)
        objs = mf.workloads(self.site.name, run, hostname, node.id, self.namespace, self.opts)
        for obj in objs:
            self._create(obj, request_id)
        with self._lock:
            self._workloads.add(request_id)
            self._gone.pop(request_id, None)
            self._cancelled.discard(request_id)
        first = objs[0]
        log.info("site %s: run %s → %s %s/%s on node %s", self.site.name, request_id,
                 first["kind"], self.namespace, first["metadata"]["name"], node.name)
        return Handle(site=self.site.name, run_id=request_id,
                      backend_id=f"{self.namespace}/{first['metadata']['name']}", node=node.id,
                      data={"kind": first["kind"], "name": first["metadata"]["name"],
                            "namespace": self.namespace, "hostname": hostname,
                            "service": len(objs) > 1, "submittedAt": self.ctx.clock()})

    def _create(self, obj: dict[str, Any], run_id: str) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        create, read = self._verbs(kind)
        what = f"create {kind} {self.namespace}/{name}"
        try:
            create(self.namespace, obj, _preload_content=False, _request_timeout=self._timeout)
            return
        except ApiException as e:
            if e.status != 409:
                raise self._api_error(e, what) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientError(f"cannot reach the API server at {self.where} to {what}: "
                                 f"{_reason(e)}", site=self.site.name) from e
        existing = self._call(f"read {kind} {self.namespace}/{name}",
                              lambda: read(name, self.namespace, _preload_content=False,
                                           _request_timeout=self._timeout))
        labels = (json.loads(existing.data).get("metadata") or {}).get("labels") or {}
        if labels.get(mf.LABEL_RUN) != run_id:
            raise PermanentError(f"{kind} {self.namespace}/{name} exists but belongs to run "
                                 f"{labels.get(mf.LABEL_RUN)!r}, not {run_id!r}; delete it or "
                                 "use another namespace", site=self.site.name)

    def _verbs(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        if kind == "Job":
            return self.batch.create_namespaced_job, self.batch.read_namespaced_job
        if kind == "Deployment":
            return self.apps.create_namespaced_deployment, self.apps.read_namespaced_deployment
        if kind == "Service":
            return self.core.create_namespaced_service, self.core.read_namespaced_service
        raise UnsupportedError(f"no verbs for kind {kind!r}", site=self.site.name)

    # ------------------------------------------------------------ watch

    def _watch_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                rv = self._relist()
                backoff = 0.5
                self.watch_error = ""
                deadline = time.monotonic() + self.config.resync_interval
                while not self._stop.is_set() and time.monotonic() < deadline:
                    rv = self._watch_once(rv)
            except _Gone as e:
                self.gone_count += 1
                log.info("site %s: watch from resourceVersion %s is too old (410 Gone); "
                         "relisting", self.site.name, e)
                continue
            except AdapterError as e:
                self.watch_error = e.message
                log.warning("site %s: watch failed, retrying in %.1f s: %s", self.site.name,
                            backoff, e.message)
            except Exception as e:  # never let the thread die
                self.watch_error = repr(e)
                log.exception("site %s: watch thread error", self.site.name)
            self._stop.wait(backoff)
            backoff = min(30.0, backoff * 2)

    def _relist(self) -> str:
        started = self.ctx.clock()
        pods = self._list_json("list this site's pods",
                               lambda: self.core.list_namespaced_pod(
                                   self.namespace, label_selector=self.selector,
                                   _preload_content=False, _request_timeout=self._timeout))
        jobs = self._list_json("list this site's Jobs",
                               lambda: self.batch.list_namespaced_job(
                                   self.namespace, label_selector=self.selector,
                                   _preload_content=False, _request_timeout=self._timeout))
        deps = self._list_json("list this site's Deployments",
                               lambda: self.apps.list_namespaced_deployment(
                                   self.namespace, label_selector=self.selector,
                                   _preload_content=False, _request_timeout=self._timeout))
        by_run: dict[str, dict[str, dict[str, Any]]] = {}
        for pod in pods["items"]:
            run_id = ((pod.get("metadata") or {}).get("labels") or {}).get(mf.LABEL_RUN)
            if run_id:
                by_run.setdefault(run_id, {})[pod["metadata"]["name"]] = pod
        workloads = {((o.get("metadata") or {}).get("labels") or {}).get(mf.LABEL_RUN, "")
                     for o in jobs["items"] + deps["items"]}
        for run_id, run_pods in by_run.items():
            for pod in run_pods.values():
                self._keep_tail(run_id, pod)
        with self._lock:
            self._pods = by_run
            self._workloads = workloads
            self._relisted_at = started
        self.relists += 1
        self.ctx.wake()
        return str(pods["metadata"].get("resourceVersion") or "")

    def _watch_once(self, rv: str) -> str:
        w = _RawWatch()
        self._watch = w
        try:
            stream = w.stream(self.core.list_namespaced_pod, self.namespace,
                              label_selector=self.selector, resource_version=rv,
                              allow_watch_bookmarks=True,
                              timeout_seconds=self.config.watch_timeout,
                              _request_timeout=(self.config.request_timeout,
                                                self.config.watch_timeout + 10))
            for ev in stream:
                if self._stop.is_set():
                    break
                obj = ev["raw_object"]
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if new_rv:
                    rv = str(new_rv)
                if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply_event(ev["type"], obj)
        except ApiException as e:
            if e.status == 410:
                raise _Gone(rv) from e
            raise self._api_error(e, "watch this site's pods") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if self._stop.is_set():
                return rv
            raise TransientError(f"watch of {self.where} broke: {_reason(e)}",
                                 site=self.site.name) from e
        finally:
            self._watch = None
        return rv

    def _keep_tail(self, run_id: str, pod: dict[str, Any]) -> None:
        """Read a finished pod's log tail once, before its state enters the cache, so the
        control plane records the output with the final state (the pod goes on release)."""
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            return
        name = pod["metadata"]["name"]
        with self._lock:
            if self._tails.get(run_id, ("", ""))[0] == name:
                return
        try:
            text = self._call(f"read the log of pod {self.namespace}/{name}",
                              lambda: self.core.read_namespaced_pod_log(
                                  name, self.namespace, container=mf.CONTAINER,
                                  tail_lines=OUTPUT_TAIL_LINES, _request_timeout=self._timeout))
        except AdapterError as e:
            text = f"(log unavailable: {e.message})"
        with self._lock:
            self._tails[run_id] = (name, str(text))

    def _apply_event(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        run_id = (meta.get("labels") or {}).get(mf.LABEL_RUN)
        if not run_id:
            return
        if kind != "DELETED":
            self._keep_tail(run_id, pod)
        with self._lock:
            pods = self._pods.setdefault(run_id, {})
            if kind == "DELETED":
                pods.pop(str(meta.get("name")), None)
                phase = (pod.get("status") or {}).get("phase")
                owner = [o.get("kind") for o in meta.get("ownerReferences") or []]
                if (not pods and phase not in ("Succeeded", "Failed") and "Job" in owner
                        and run_id not in self._cancelled):
                    self._gone[run_id] = (f"pod {meta.get('name')} was deleted before it "
                                          "finished (evicted or deleted by hand)")
            else:
                pods[meta["name"]] = pod
                self._gone.pop(run_id, None)
            self.events += 1
        self.ctx.wake()

    # ------------------------------------------------------------ status

    def status(self, handles: Sequence[Handle]) -> dict[str, RunStatus]:
        """From the watch-fed cache; no network call. Unknown runs are omitted.

        A run with no pod is Cancelled when this adapter cancelled it; Failed when its
        workload was deleted behind Continuum's back (absent from a relist made after it
        was submitted), or when its Job's pod was deleted before finishing.
        """
        out: dict[str, RunStatus] = {}
        with self._lock:
            for h in handles:
                pods = list((self._pods.get(h.run_id) or {}).values())
                if pods:
                    pod = max(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                                                   p["metadata"]["name"]))
                    st = self._annotate(pod_run_status(pod), pod)
                    tail = self._tails.get(h.run_id)
                    if tail is not None and tail[0] == pod["metadata"]["name"]:
                        st.output_tail = tail[1]
                    out[h.run_id] = st
                elif h.run_id in self._cancelled:
                    out[h.run_id] = RunStatus(RunState.Cancelled, reason=(
                        f"cancelled: {h.data.get('kind', 'workload')} {h.backend_id} deleted"))
                elif h.run_id in self._gone:
                    out[h.run_id] = RunStatus(RunState.Failed, reason=self._gone[h.run_id])
                elif (self._relisted_at > float(h.data.get("submittedAt") or 0)
                      and h.run_id not in self._workloads):
                    out[h.run_id] = RunStatus(
                        RunState.Failed, reason=f"{h.data.get('kind', 'workload')} "
                        f"{h.backend_id} no longer exists (deleted outside Continuum)")
        return out

    def _annotate(self, st: RunStatus, pod: dict[str, Any]) -> RunStatus:
        node = self._nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is not None and not node.ready and not st.state.terminal:
            cond = next((c for c in node.conditions if c.type == "Ready"), None)
            st.reason = (f"node {node.name} is not ready"
                         + (f" ({cond.reason}: {cond.message})" if cond and cond.reason else "")
                         + (f"; {st.reason}" if st.reason else ""))
        return st

    # ------------------------------------------------------------ cancel, release, logs

    def _delete(self, handle: Handle, policy: str) -> None:
        name = str(handle.data.get("name") or handle.backend_id.split("/", 1)[-1])
        ns = str(handle.data.get("namespace") or self.namespace)
        kind = str(handle.data.get("kind") or "Job")
        body = k8s.V1DeleteOptions(propagation_policy=policy)
        calls: list[tuple[str, Callable[[], Any]]] = []
        if kind == "Deployment":
            calls.append(("Deployment", lambda: self.apps.delete_namespaced_deployment(
                name, ns, body=body, _preload_content=False,
                _request_timeout=self._timeout)))
            if handle.data.get("service"):
                calls.append(("Service", lambda: self.core.delete_namespaced_service(
                    name, ns, body=body, _preload_content=False,
                _request_timeout=self._timeout)))
        else:
            calls.append(("Job", lambda: self.batch.delete_namespaced_job(
                name, ns, body=body, _preload_content=False,
                _request_timeout=self._timeout)))
        for what, fn in calls:
            try:
                self._call(f"delete {what} {ns}/{name}", fn)
            except PermanentError as e:
                if e.details.get("status") != 404:  # already gone: fine
                    raise
        with self._lock:
            self._workloads.discard(handle.run_id)

    def cancel(self, handle: Handle) -> None:
        """Delete the run's workload with ``propagationPolicy: Foreground``. Idempotent.

        Once its pods are gone, :meth:`status` reports the run Cancelled.

        Raises:
            TransientError | AuthError: the delete could not be made (retried later).
        """
        self._delete(handle, "Foreground")
        with self._lock:
            self._gone.pop(handle.run_id, None)
            self._cancelled.add(handle.run_id)

    def release(self, handle: Handle) -> None:
        """Delete the finished run's objects (``Background``) and forget its cache entry."""
        self._delete(handle, "Background")
        with self._lock:
            self._pods.pop(handle.run_id, None)
            self._gone.pop(handle.run_id, None)
            self._cancelled.discard(handle.run_id)
            self._tails.pop(handle.run_id, None)

    def logs(self, handle: Handle, tail: int = 50) -> str:
        """The last ``tail`` lines of the run's newest pod (pod log API, container ``main``)."""
        with self._lock:
            pods = list((self._pods.get(handle.run_id) or {}).values())
        if not pods:
            return f"no pod of run {handle.run_id} is known on site {self.site.name} (yet)"
        pod = max(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "",
                                       p["metadata"]["name"]))
        name = pod["metadata"]["name"]
        try:
            text = self._call(f"read the log of pod {self.namespace}/{name}",
                              lambda: self.core.read_namespaced_pod_log(
                                  name, self.namespace, container=mf.CONTAINER,
                                  tail_lines=max(tail, 0), _request_timeout=self._timeout))
        except AdapterError as e:
            return f"cannot read the log of pod {name}: {e.message}"
        return str(text)

    # ------------------------------------------------------------ health, close

    def health(self) -> tuple[SiteHealth, str]:
        """Ready when checked and every node is ready; Degraded names the nodes that are not."""
        if not self._checked:
            return SiteHealth.Unreachable, f"not checked yet ({self.where})"
        with self._lock:
            nodes = list(self._nodes.values())
        bad = [n for n in nodes if not n.ready]
        problems = []
        if bad:
            def why(n: Node) -> str:
                c = next((c for c in n.conditions if c.status != "True" and c.type in
                          ("Ready", "Schedulable")), None)
                return f"{n.name} ({c.type}={c.status} {c.reason})" if c else n.name
            problems.append(f"{len(bad)} of {len(nodes)} nodes not ready: "
                            + ", ".join(why(n) for n in bad[:5]))
        if not nodes:
            problems.append("the cluster has no nodes")
        if self.watch_error:
            problems.append(f"pod watch failing: {self.watch_error}")
        return (SiteHealth.Degraded, "; ".join(problems)) if problems else (SiteHealth.Ready, "")

    def close(self) -> None:
        """Stop the watch thread and close the connection pool."""
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.api.close()


def _reason(e: BaseException) -> str:
    inner = getattr(e, "reason", None)
    return str(inner or e)


def _ts(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _resources(raw: dict[str, Any]) -> Resources:
    return Resources(cpu=parse_cpu(raw.get("cpu", "0")), memory=parse_bytes(raw.get("memory", "0")),
                     gpu=int(parse_cpu(raw.get(mf.GPU_RESOURCE, "0"))))


def _float_label(labels: dict[str, str], key: str, default: float, *,
                 positive: bool = False) -> float:
    raw = labels.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    if value < 0 or (positive and value == 0):
        return default
    return value
