"""A kube-apiserver stand-in for the Kubernetes and KubeEdge adapter tests.

No real kube-apiserver can be installed on the test machines (see RECIPES), so this
serves the REST paths the official ``kubernetes`` client calls, on a free loopback port,
from a thread (``http.server``, HTTP/1.1, chunked watch streams):

* ``GET /version``; ``/api/v1/nodes``; ``/api/v1/pods`` (all namespaces);
  ``/api/v1/namespaces/{ns}/{pods|services}[/{name}[/log]]``;
  ``/apis/batch/v1/namespaces/{ns}/jobs``; ``/apis/apps/v1/namespaces/{ns}/deployments``;
  ``/apis/devices.kubeedge.io/v1beta1/devices`` (and namespaced);
  ``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews``;
* list (``labelSelector`` ``k=v``/``k``; ``fieldSelector`` ``f=v``/``f!=v`` on
  ``status.phase``, ``spec.nodeName``, ``metadata.name``), get, create, delete (with
  ``propagationPolicy``, recorded in :attr:`ApiServer.deletions`), watch
  (``?watch=1``: JSON lines from ``resourceVersion``; an ``ERROR`` event with a 410
  Status when the version was compacted away; ends after ``timeoutSeconds``);
* 404 NotFound, 409 AlreadyExists, 410 Gone Status objects like the real server's;
* bearer-token authentication (401 for any other token) and an RBAC deny list
  (:attr:`ApiServer.deny`, 403 Status naming verb, resource, group and namespace —
  the real server's wording); SelfSubjectAccessReviews answer from the same list;
* every object it receives (creates, SSARs, DeleteOptions) is validated with
  ``kubernetes_validate.validate(obj, "1.30.0", strict=True)``; an invalid one is a
  422 Invalid Status, and is recorded in :attr:`ApiServer.rejected` so the test fails.

It also plays the controllers and the kubelet, driven by the test: a Job or
Deployment gets one pod (owner references set), scheduled by the node affinity on
``kubernetes.io/hostname`` (Unschedulable when no such node or an untolerated
NoSchedule taint); :meth:`ApiServer.run_pod`, :meth:`finish_pod`, :meth:`wait_pod`,
:meth:`crash_pod` move pods; :meth:`set_node_ready` takes a node offline the way the
node lifecycle controller does (Ready=Unknown, ``unreachable`` NoExecute taint) and
evicts pods that do not tolerate it forever.
"""

from __future__ import annotations

import copy
import http.server
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import kubernetes_validate

K8S_VERSION = "1.30.0"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = {r.plural: r for r in (
    Resource("", "v1", "nodes", "Node", namespaced=False),
    Resource("", "v1", "pods", "Pod"),
    Resource("", "v1", "services", "Service"),
    Resource("batch", "v1", "jobs", "Job"),
    Resource("apps", "v1", "deployments", "Deployment"),
    Resource("devices.kubeedge.io", "v1beta1", "devices", "Device"),
)}


class HttpError(Exception):
    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def status_obj(code: int, reason: str, message: str,
               details: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code}
    if details:
        out["details"] = details
    return out


def _delete_options_schema() -> dict[str, Any]:
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return json.loads((base / f"v{K8S_VERSION}-local-strict" / "deleteoptions-meta-v1.json")
                      .read_text())


def validate(obj: dict[str, Any]) -> None:
    """Strict 1.30 schema validation; DeleteOptions (no apiVersion in the client's body) by file."""
    if obj.get("kind") == "DeleteOptions" or ("propagationPolicy" in obj and "kind" not in obj):
        jsonschema.validate({**obj, "apiVersion": "v1", "kind": "DeleteOptions"},
                            _delete_options_schema())
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _match_labels(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if labels.get(k.rstrip("=")) != v:
                return False
        elif labels.get(term) is None:
            return False
    return True


def _field(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = (cur or {}).get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _match_fields(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if _field(obj, k) == v:
                return False
        else:
            k, v = term.split("=", 1)
            if _field(obj, k.rstrip("=")) != v:
                return False
    return True


class ApiServer:
    """The stand-in; see the module docstring. ``start()`` / ``stop()``; ``url``, ``token``."""

    def __init__(self, version: tuple[int, int] = (1, 30), tls_dir: Path | None = None) -> None:
        self.version = version
        self.tls_dir = tls_dir
        """With a directory: serve HTTPS with a self-signed certificate (``ca.crt`` there)."""
        self.token = secrets.token_hex(16)
        self.tokens = {self.token}
        self.deny: set[tuple[str, str, str]] = set()
        """(verb, resource[/subresource], group) triples RBAC refuses."""
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            p: {} for p in RESOURCES}
        self.logs: dict[str, str] = {}
        self.rv = 1
        self.oldest_rv = 1
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.expired = 0
        self.cond = threading.Condition()
        self.requests: list[tuple[str, str]] = []
        self.rejected: list[tuple[dict[str, Any], str]] = []
        self.received: list[dict[str, Any]] = []
        self.deletions: list[tuple[str, str, str]] = []
        """(resource, name, propagationPolicy) of every DELETE."""
        self.watches_opened = 0
        self.served_crds = {"devices"}
        """Custom resources whose CRD is installed; discard "devices" for a cluster without it."""
        self.stopping = False
        self.server: http.server.ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"{'https' if self.tls_dir else 'http'}://{host}:{port}"

    @property
    def ca_file(self) -> Path:
        assert self.tls_dir is not None
        return self.tls_dir / "ca.crt"

    def _wrap_tls(self, d: Path) -> None:
        """A self-signed certificate for 127.0.0.1 (openssl), as a cluster CA would issue."""
        import ssl
        import subprocess

        d.mkdir(parents=True, exist_ok=True)
        key, crt = d / "server.key", d / "ca.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(key), "-out", str(crt), "-subj", "/CN=kube-apiserver",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       check=True, capture_output=True, timeout=60)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(crt), str(key))
        assert self.server is not None
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)

    def start(self) -> ApiServer:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers+body writes wait for delayed ACKs

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                try:
                    outer._dispatch(self, method)
                except HttpError as e:
                    self._json(e.code, status_obj(e.code, e.reason, e.message, e.details))
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _json(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client closing its watch mid-stream is normal, not an error

        self.server = Server(("127.0.0.1", 0), Handler)
        if self.tls_dir is not None:
            self._wrap_tls(self.tls_dir)
        threading.Thread(target=self.server.serve_forever, daemon=True,
                         name="apiserver-stand-in").start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def kubeconfig(self, token: str | None = None, context: str = "stand-in",
                   namespace: str = "continuum") -> dict[str, Any]:
        """A kubeconfig (as a mapping) for this server with a bearer token."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.tls_dir is not None:
            import base64
            cluster["certificate-authority-data"] = base64.b64encode(
                self.ca_file.read_bytes()).decode()
        return {"apiVersion": "v1", "kind": "Config", "current-context": context,
                "clusters": [{"name": "stand-in", "cluster": cluster}],
                "users": [{"name": "continuum", "user": {"token": token or self.token}}],
                "contexts": [{"name": context, "context": {
                    "cluster": "stand-in", "user": "continuum", "namespace": namespace}}]}

    # ------------------------------------------------------------ HTTP

    def _dispatch(self, h: Any, method: str) -> None:
        parts = urlsplit(h.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        path = parts.path.rstrip("/")
        self.requests.append((method, path))
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length) or b"null") if length else None
        if path == "/version":
            self._auth(h)
            return h._json(200, {
                "major": str(self.version[0]), "minor": str(self.version[1]),
                "gitVersion": f"v{self.version[0]}.{self.version[1]}.0",
                "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2024-04-17T17:27:03Z", "goVersion": "go1.22.2",
                "compiler": "gc", "platform": "linux/amd64"})
        self._auth(h)
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" and method == "POST":
            self._validate(body)
            attrs = body["spec"].get("resourceAttributes") or {}
            res = attrs.get("resource", "") + (f"/{attrs['subresource']}"
                                               if attrs.get("subresource") else "")
            allowed = (attrs.get("verb"), res, attrs.get("group", "")) not in self.deny
            return h._json(201, {**body, "status": {"allowed": allowed}})
        seg = path.strip("/").split("/")
        if seg[0] == "api" and len(seg) >= 3:
            group, rest = "", seg[2:]
        elif seg[0] == "apis" and len(seg) >= 4:
            group, rest = seg[1], seg[3:]
        else:
            raise HttpError(404, "NotFound", f"the server could not find the requested resource ({path})")
        ns = None
        if rest and rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        r = RESOURCES.get(plural)
        if r is not None and "." in r.group and plural not in self.served_crds:
            r = None
        if r is None or r.group != group:
            raise HttpError(404, "NotFound", f"the server could not find the requested resource ({path})")
        watch = q.get("watch") in ("1", "true")
        verb = {"GET": "watch" if watch else ("get" if name else "list"),
                "POST": "create", "DELETE": "delete"}[method]
        self._authorize(verb, plural + (f"/{sub}" if sub else ""), group, ns)
        if method == "GET" and watch:
            return self._watch(h, r, ns, q)
        if method == "GET" and name is None:
            return h._json(200, self._list(r, ns, q))
        if method == "GET" and sub == "log":
            pod = self._get(r, ns, name)
            text = self.logs.get(pod["metadata"]["name"], "")
            tail = q.get("tailLines")
            if tail is not None:
                lines = text.splitlines()
                text = "\n".join(lines[-int(tail):] if int(tail) else [])
            data = text.encode()
            h.send_response(200)
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return None
        if method == "GET":
            return h._json(200, self._get(r, ns, name))
        if method == "POST":
            self._validate(body)
            return h._json(201, self.create(plural, body, ns))
        if method == "DELETE":
            if body:
                self._validate(body)
            policy = (body or {}).get("propagationPolicy") or q.get("propagationPolicy") or "Background"
            assert name is not None
            obj = self.delete(plural, ns or "", name, policy)
            return h._json(200, obj)
        raise HttpError(405, "MethodNotAllowed", f"{method} not allowed on {path}")

    def _auth(self, h: Any) -> None:
        auth = h.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:  # the scheme is case-insensitive
            raise HttpError(401, "Unauthorized", "Unauthorized")

    def _authorize(self, verb: str, resource: str, group: str, ns: str | None) -> None:
        if (verb, resource, group) in self.deny:
            res, _, sub = resource.partition("/")
            what = f'resource "{res}"' + (f' with subresource "{sub}"' if sub else "")
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            raise HttpError(403, "Forbidden",
                            f'{res}{"." + group if group else ""} is forbidden: User '
                            f'"system:serviceaccount:continuum:continuum-adapter" cannot {verb} '
                            f'{what} in API group "{group}"{where}',
                            {"group": group, "kind": res})

    def _validate(self, obj: Any) -> None:
        self.received.append(copy.deepcopy(obj))
        try:
            validate(obj)
        except Exception as e:  # kubernetes_validate / jsonschema errors
            msg = getattr(e, "message", None) or str(e).splitlines()[0]
            self.rejected.append((obj, msg))
            raise HttpError(422, "Invalid", f"{(obj or {}).get('kind')} is invalid: {msg}") from e

    # ------------------------------------------------------------ store

    def _bump(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        """Record an event; caller holds ``cond``."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, plural, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def _list(self, r: Resource, ns: str | None, q: dict[str, str]) -> dict[str, Any]:
        with self.cond:
            items = [copy.deepcopy(o) for (ons, _), o in sorted(self.objects[r.plural].items())
                     if (ns is None or ons == ns)
                     and _match_labels(o, q.get("labelSelector", ""))
                     and _match_fields(o, q.get("fieldSelector", ""))]
            rv = str(self.rv)
        return {"apiVersion": r.api_version, "kind": f"{r.kind}List",
                "metadata": {"resourceVersion": rv}, "items": items}

    def _get(self, r: Resource, ns: str | None, name: str | None) -> dict[str, Any]:
        with self.cond:
            obj = self.objects[r.plural].get((ns or "", name or ""))
            if obj is None:
                raise HttpError(404, "NotFound", f'{r.plural} "{name}" not found',
                                {"name": name, "group": r.group, "kind": r.plural})
            return copy.deepcopy(obj)

    def create(self, plural: str, obj: dict[str, Any], ns: str | None = None) -> dict[str, Any]:
        """Create like the API server does (defaults metadata), then run the controllers."""
        r = RESOURCES[plural]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if r.namespaced:
            meta["namespace"] = ns or meta.get("namespace") or "default"
        key = (meta.get("namespace", ""), meta["name"])
        with self.cond:
            if key in self.objects[plural]:
                raise HttpError(409, "AlreadyExists", f'{plural}{"." + r.group if r.group else ""} '
                                f'"{meta["name"]}" already exists',
                                {"name": meta["name"], "group": r.group, "kind": plural})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_iso())
            meta["generation"] = 1
            obj.setdefault("apiVersion", r.api_version)
            obj.setdefault("kind", r.kind)
            obj.setdefault("status", {})
            self.objects[plural][key] = obj
            self._bump(plural, "ADDED", obj)
            if plural == "jobs":
                self._make_pod(obj, "Job", obj["spec"]["template"], f"{meta['name']}-")
            elif plural == "deployments":
                rs = f"{meta['name']}-{secrets.token_hex(5)[:10]}"
                self._make_pod(obj, "ReplicaSet", obj["spec"]["template"], f"{rs}-",
                               owner_name=rs)
            return copy.deepcopy(obj)

    def _make_pod(self, owner: dict[str, Any], owner_kind: str, template: dict[str, Any],
                  prefix: str, owner_name: str | None = None) -> None:
        """Job/ReplicaSet controller + scheduler: one pod from the template. Holds ``cond``."""
        om = owner["metadata"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**copy.deepcopy(template.get("metadata") or {}),
                            "name": prefix + secrets.token_hex(3)[:5],
                            "namespace": om["namespace"], "uid": str(uuid.uuid4()),
                            "creationTimestamp": now_iso(),
                            "ownerReferences": [{"apiVersion": "apps/v1" if owner_kind ==
                                                 "ReplicaSet" else "batch/v1",
                                                 "kind": owner_kind,
                                                 "name": owner_name or om["name"],
                                                 "uid": om["uid"], "controller": True}]},
               "spec": copy.deepcopy(template["spec"]),
               "status": {"phase": "Pending"}}
        if owner_kind == "Job":
            pod["metadata"].setdefault("labels", {})["job-name"] = om["name"]
        node, why = self._schedule(pod)
        if node:
            pod["spec"]["nodeName"] = node
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
            pod["status"]["containerStatuses"] = [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                 "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
                for c in pod["spec"]["containers"]]
        else:
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False",
                                            "reason": "Unschedulable", "message": why}]
        self.objects["pods"][(om["namespace"], pod["metadata"]["name"])] = pod
        self._bump("pods", "ADDED", pod)

    def _schedule(self, pod: dict[str, Any]) -> tuple[str | None, str]:
        terms = (((pod["spec"].get("affinity") or {}).get("nodeAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
                     "nodeSelectorTerms") or []
        wanted = None
        for t in terms:
            for e in t.get("matchExpressions") or []:
                if e["key"] == "kubernetes.io/hostname" and e["operator"] == "In":
                    wanted = e["values"]
        nodes = list(self.objects["nodes"].values())
        for n in nodes:
            host = n["metadata"].get("labels", {}).get("kubernetes.io/hostname")
            if wanted is not None and host not in wanted:
                continue
            tol = pod["spec"].get("tolerations") or []
            bad = [t for t in n["spec"].get("taints") or []
                   if t["effect"] in ("NoSchedule", "NoExecute")
                   and not any(x.get("key") == t["key"] and x.get("effect") in (None, t["effect"])
                               for x in tol)]
            if bad:
                return None, (f"0/{len(nodes)} nodes are available: 1 node(s) had untolerated "
                              f"taint {{{bad[0]['key']}: {bad[0].get('value', '')}}}")
            return n["metadata"]["name"], ""
        return None, (f"0/{len(nodes)} nodes are available: {len(nodes)} node(s) didn't match "
                      "Pod's node affinity/selector")

    def delete(self, plural: str, ns: str, name: str, policy: str = "Background") -> dict[str, Any]:
        """Delete with dependents (pods owned by the Job/Deployment), as garbage collection does."""
        r = RESOURCES[plural]
        with self.cond:
            obj = self.objects[plural].get((ns, name))
            if obj is None:
                raise HttpError(404, "NotFound", f'{plural}{"." + r.group if r.group else ""} '
                                f'"{name}" not found', {"name": name, "group": r.group,
                                                         "kind": plural})
            self.deletions.append((plural, name, policy))
            dependents = [k for k, p in self.objects["pods"].items()
                          if any(o.get("uid") == obj["metadata"]["uid"]
                                 or (plural == "deployments" and o.get("kind") == "ReplicaSet"
                                     and o.get("name", "").startswith(name + "-"))
                                 for o in p["metadata"].get("ownerReferences") or [])]
            if policy == "Foreground":  # dependents first, then the owner
                for k in dependents:
                    self._bump("pods", "DELETED", self.objects["pods"].pop(k))
            self.objects[plural].pop((ns, name))
            self._bump(plural, "DELETED", obj)
            if policy != "Foreground" and policy != "Orphan":
                for k in dependents:
                    self._bump("pods", "DELETED", self.objects["pods"].pop(k))
            if plural == "services" or policy == "Foreground":
                return copy.deepcopy(obj)  # the real server answers these with the object
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": r.group, "kind": plural,
                                "uid": obj["metadata"]["uid"]}}

    # ------------------------------------------------------------ watch

    def _watch(self, h: Any, r: Resource, ns: str | None, q: dict[str, str]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        def matches(obj: dict[str, Any]) -> bool:
            return ((ns is None or obj["metadata"].get("namespace") == ns)
                    and _match_labels(obj, q.get("labelSelector", ""))
                    and _match_fields(obj, q.get("fieldSelector", "")))

        timeout = float(q.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        raw_rv = q.get("resourceVersion") or "0"
        self.watches_opened += 1
        try:
            with self.cond:
                expired_at_start = self.expired
                if raw_rv == "0":
                    last = self.rv
                    initial = [copy.deepcopy(o) for o in self.objects[r.plural].values()
                               if matches(o)]
                else:
                    last = int(raw_rv)
                    initial = []
                    if last < self.oldest_rv:
                        gone = True
                    else:
                        gone = False
            if raw_rv != "0" and gone:
                send({"type": "ERROR", "object": status_obj(
                    410, "Expired", f"too old resource version: {last} ({self.oldest_rv})")})
                return
            for o in initial:
                send({"type": "ADDED", "object": o})
            while True:
                with self.cond:
                    while True:
                        if self.stopping:
                            return
                        if self.expired != expired_at_start:
                            break
                        pending = [e for e in self.history if e[0] > last]
                        if pending:
                            break
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return
                        self.cond.wait(min(left, 0.5))
                    expired = self.expired != expired_at_start
                    pending = [e for e in self.history if e[0] > last] if not expired else []
                if expired:
                    send({"type": "ERROR", "object": status_obj(
                        410, "Expired", f"too old resource version: {last} ({self.oldest_rv})")})
                    return
                for ev_rv, plural, kind, obj in pending:
                    last = ev_rv
                    if plural == r.plural and matches(obj):
                        send({"type": kind, "object": obj})
        finally:
            try:
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
            except OSError:
                pass

    def expire_watches(self) -> None:
        """Compact the history and end every open watch with a 410 ERROR event, as a real
        server does when its watch cache can no longer serve the clients' versions."""
        with self.cond:
            self.history.clear()
            self.oldest_rv = self.rv + 1
            self.expired += 1
            self.cond.notify_all()

    # ------------------------------------------------------------ test-driven transitions

    def add_node(self, name: str, cpu: str = "4", memory: str = "16Gi", gpu: int = 0,
                 labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None,
                 arch: str = "amd64", ready: bool = True) -> dict[str, Any]:
        alloc = {"cpu": cpu, "memory": memory, "pods": "110"}
        if gpu:
            alloc["nvidia.com/gpu"] = str(gpu)
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "uid": str(uuid.uuid4()),
                             "creationTimestamp": now_iso(),
                             "labels": {"kubernetes.io/hostname": name,
                                        "kubernetes.io/arch": arch, "kubernetes.io/os": "linux",
                                        **(labels or {})}},
                "spec": {"taints": list(taints or [])},
                "status": {"capacity": dict(alloc), "allocatable": dict(alloc),
                           "nodeInfo": {"architecture": arch},
                           "conditions": [self._ready_condition(ready)]}}
        with self.cond:
            self.objects["nodes"][("", name)] = node
            self._bump("nodes", "ADDED", node)
        return node

    @staticmethod
    def _ready_condition(ready: bool) -> dict[str, Any]:
        if ready:
            return {"type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastTransitionTime": now_iso()}
        return {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastTransitionTime": now_iso()}

    def set_node_ready(self, name: str, ready: bool) -> list[str]:
        """Node lifecycle controller: offline → Ready=Unknown + unreachable NoExecute taint,
        then the taint manager evicts (deletes) pods without a forever toleration.
        Returns the names of evicted pods."""
        evicted = []
        with self.cond:
            node = self.objects["nodes"][("", name)]
            node["status"]["conditions"] = [self._ready_condition(ready)]
            taints = [t for t in node["spec"].get("taints") or []
                      if t["key"] != "node.kubernetes.io/unreachable"]
            if not ready:
                taints.append({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                               "timeAdded": now_iso()})
            node["spec"]["taints"] = taints
            self._bump("nodes", "MODIFIED", node)
            if not ready:
                for key, pod in list(self.objects["pods"].items()):
                    if pod["spec"].get("nodeName") != name:
                        continue
                    forever = any(t.get("key") in ("node.kubernetes.io/unreachable", None)
                                  and t.get("effect") in ("NoExecute", None)
                                  and t.get("tolerationSeconds") is None
                                  and (t.get("operator") == "Exists" or t.get("key") is None)
                                  for t in pod["spec"].get("tolerations") or [])
                    if not forever:
                        self._bump("pods", "DELETED", self.objects["pods"].pop(key))
                        evicted.append(key[1])
        return evicted

    def received_of(self, kind: str) -> list[dict[str, Any]]:
        """Every object of ``kind`` the server received (creates, reviews, options)."""
        return [o for o in self.received if isinstance(o, dict) and o.get("kind") == kind]

    def pods(self, run_id: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return [copy.deepcopy(p) for p in self.objects["pods"].values()
                    if run_id is None
                    or p["metadata"].get("labels", {}).get("continuum.io/run-id") == run_id]

    def pod_of(self, run_id: str) -> str:
        pods = self.pods(run_id)
        if len(pods) != 1:
            raise AssertionError(f"expected one pod of run {run_id}, found {len(pods)}")
        return str(pods[0]["metadata"]["name"])

    def _update_pod(self, name: str, fn: Any) -> None:
        with self.cond:
            key = next(k for k in self.objects["pods"] if k[1] == name)
            pod = self.objects["pods"][key]
            fn(pod)
            self._bump("pods", "MODIFIED", pod)

    def run_pod(self, name: str) -> None:
        """Kubelet: the pod's containers are running."""
        def fn(pod: dict[str, Any]) -> None:
            t = now_iso()
            pod["status"].update(phase="Running", startTime=t)
            pod["status"]["containerStatuses"] = [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
                 "restartCount": 0, "state": {"running": {"startedAt": t}}}
                for c in pod["spec"]["containers"]]
        self._update_pod(name, fn)

    def finish_pod(self, name: str, exit_code: int = 0, reason: str | None = None,
                   message: str = "") -> None:
        """Kubelet: the main container terminated (Succeeded on exit 0, else Failed)."""
        def fn(pod: dict[str, Any]) -> None:
            t = now_iso()
            pod["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            term = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0
                                                                 else "Error"),
                    "startedAt": pod["status"].get("startTime") or t, "finishedAt": t}
            if message:
                term["message"] = message
            pod["status"]["containerStatuses"] = [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                 "restartCount": 0, "state": {"terminated": term}}
                for c in pod["spec"]["containers"]]
        self._update_pod(name, fn)

    def wait_pod(self, name: str, reason: str, message: str = "") -> None:
        """Kubelet: the main container is waiting (ImagePullBackOff, ...); pod Pending."""
        def fn(pod: dict[str, Any]) -> None:
            pod["status"]["phase"] = "Pending"
            pod["status"]["containerStatuses"] = [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                 "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}
                for c in pod["spec"]["containers"]]
        self._update_pod(name, fn)

    def crash_pod(self, name: str, last_reason: str = "Error", exit_code: int = 1) -> None:
        """Kubelet: a restarting container in CrashLoopBackOff after ``last_reason``."""
        def fn(pod: dict[str, Any]) -> None:
            pod["status"]["phase"] = "Running"
            pod["status"]["containerStatuses"] = [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                 "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": "back-off 40s restarting failed container"}},
                 "lastState": {"terminated": {"exitCode": exit_code, "reason": last_reason}}}
                for c in pod["spec"]["containers"]]
        self._update_pod(name, fn)

    def start_kubelet(self, job_exit_code: int = 0) -> None:
        """Play every node's kubelet from a thread: a scheduled pod starts running, a Job's
        pod then exits with ``job_exit_code`` (log ``ran <pod> on <node>``); a Deployment's
        pod keeps running. Stops with :meth:`stop`."""
        def loop() -> None:
            seen: set[str] = set()
            while True:
                with self.cond:
                    if self.stopping:
                        return
                    todo = [p["metadata"]["name"] for p in self.objects["pods"].values()
                            if p["spec"].get("nodeName") and p["metadata"]["name"] not in seen
                            and p["status"].get("phase") == "Pending"]
                    if not todo:
                        self.cond.wait(0.5)
                        continue
                for name in todo:
                    seen.add(name)
                    pod = next((p for p in self.pods() if p["metadata"]["name"] == name), None)
                    if pod is None:
                        continue
                    self.run_pod(name)
                    owner = (pod["metadata"].get("ownerReferences") or [{}])[0].get("kind")
                    if owner == "Job":
                        self.logs[name] = f"ran {name} on {pod['spec']['nodeName']}"
                        self.finish_pod(name, exit_code=job_exit_code)

        threading.Thread(target=loop, daemon=True, name="stand-in-kubelet").start()

    def add_device(self, name: str, node: str, model: str = "thermometer",
                   namespace: str = "default") -> None:
        dev = {"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
               "metadata": {"name": name, "namespace": namespace},
               "spec": {"deviceModelRef": {"name": model}, "nodeName": node,
                        "protocol": {"protocolName": "modbus"}}}
        self.create("devices", dev, namespace)


def main() -> None:
    """``python -m tests.adapters.kubernetes.apiserver KUBECONFIG [--edge]``: run the stand-in
    (two cloud nodes; with ``--edge`` also two KubeEdge edge nodes and a Device) with its
    kubelet, write a kubeconfig for it, and serve until interrupted. For trying the
    adapter and the docs' commands on a machine without a cluster."""
    import argparse

    import yaml

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("kubeconfig", type=Path)
    p.add_argument("--edge", action="store_true")
    args = p.parse_args()
    server = ApiServer().start()
    server.add_node("cloud-1", cpu="8", memory="32Gi", gpu=1)
    server.add_node("cloud-2", cpu="4", memory="16Gi")
    if args.edge:
        labels = {"node-role.kubernetes.io/edge": ""}
        taint = [{"key": "node-role.kubernetes.io/edge", "effect": "NoSchedule"}]
        server.add_node("edge-1", cpu="4", memory="4Gi", arch="arm64", labels=labels,
                        taints=taint)
        server.add_node("edge-2", cpu="4", memory="4Gi", arch="arm64", labels=labels,
                        taints=taint)
        server.add_device("thermo-01", "edge-1", namespace="factory")
    server.start_kubelet()
    args.kubeconfig.write_text(yaml.safe_dump(server.kubeconfig(context="stand-in")))
    print(f"kube-apiserver stand-in on {server.url}; kubeconfig in {args.kubeconfig}",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
