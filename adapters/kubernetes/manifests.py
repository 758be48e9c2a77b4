"""The Kubernetes objects a run becomes, as plain JSON-ready dicts.

* a ``job`` task → a ``batch/v1`` Job (``backoffLimit: 0``: Continuum does the retries,
  elsewhere if need be; ``activeDeadlineSeconds`` on the pod from ``task.timeout``);
* a ``service`` task → an ``apps/v1`` Deployment (one replica, ``Recreate``), plus a
  ``v1`` Service when the task declares ``ports``.

Every pod is pinned to the placed node by a *required* node affinity on
``kubernetes.io/hostname`` (the scheduler still checks resources and taints, which
``spec.nodeName`` would bypass), carries the task's requests/limits, env, command and
image, and every object carries the run's ids as labels (selectable) and annotations
(free text), so a restarted control plane finds and re-adopts its work:

====================================  =========================================
``app.kubernetes.io/managed-by``      ``continuum``
``continuum.io/site``                 the site name
``continuum.io/run-id``               the run id (the submit request id)
``continuum.io/workflow-id``          the workflow id
``continuum.io/task``                 the task name
====================================  =========================================

The builders are pure functions so the manifests can be written to files and checked
with ``kubernetes-validate`` (the tests do, against the 1.30 schemas).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from adapters.base import ArtifactIn, ArtifactOut, TaskRun
from continuum.model import Task, Toleration

MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SITE = "continuum.io/site"
LABEL_RUN = "continuum.io/run-id"
LABEL_WORKFLOW = "continuum.io/workflow-id"
LABEL_TASK = "continuum.io/task"
ANN_WORKFLOW_NAME = "continuum.io/workflow-name"
ANN_ATTEMPT = "continuum.io/attempt"
ANN_NODE = "continuum.io/node"
HOSTNAME_LABEL = "kubernetes.io/hostname"
GPU_RESOURCE = "nvidia.com/gpu"
CONTAINER = "main"
WORK_DIR = "/work"
JOB_TTL_S = 86_400
"""Seconds a finished Job is kept if the control plane never releases it (a day)."""

SCRIPT_RUNNER = 'printf "%s" "$CONTINUUM_SCRIPT" > /tmp/continuum-script && exec "$@" /tmp/continuum-script'
"""Runs ``task.script``: the source travels in env ``CONTINUUM_SCRIPT``; argv is the interpreter."""


@dataclass(frozen=True)
class PodOptions:
    """Site-wide additions to every pod: extra tolerations (KubeEdge), default image."""

    default_image: str
    tolerations: list[dict[str, Any]] = field(default_factory=list)


def object_name(task: str, run_id: str) -> str:
    """A DNS-1035 label (≤ 63 chars) unique per run: ``{task}-{run id}``, task cut first."""
    rid = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")[:50] or "run"
    head = re.sub(r"[^a-z0-9-]+", "-", task.lower()).strip("-")[: 62 - len(rid)].rstrip("-")
    name = f"{head}-{rid}" if head else rid
    if not name[0].isalpha():
        name = ("r" + name)[:63]
    return name.rstrip("-")


def run_labels(site: str, run: TaskRun) -> dict[str, str]:
    return {MANAGED_BY: "continuum", LABEL_SITE: site, LABEL_RUN: run.run_id,
            LABEL_WORKFLOW: run.workflow_id, LABEL_TASK: run.task.name}


def run_annotations(run: TaskRun, node_id: str) -> dict[str, str]:
    return {ANN_WORKFLOW_NAME: run.workflow_name, ANN_ATTEMPT: str(run.attempt),
            ANN_NODE: node_id}


def quantity_cpu(cores: float) -> str:
    """Cores as a Kubernetes quantity in millicores, e.g. 0.5 → ``"500m"`` (at least 1m)."""
    return f"{max(1, round(cores * 1000))}m"


def _resources(task: Task) -> dict[str, Any]:
    r = task.resources
    requests: dict[str, str] = {"cpu": quantity_cpu(r.cpu), "memory": str(int(r.memory))}
    limits: dict[str, str] = {"memory": str(int(r.memory))}
    if r.gpu:
        # extended resources must be set in limits; requests, if given, must equal them
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(r.gpu)
    return {"requests": requests, "limits": limits}


def _toleration(t: Toleration) -> dict[str, Any]:
    out: dict[str, Any] = {"key": t.key, "operator": t.operator}
    if t.operator == "Equal":
        out["value"] = t.value
    if t.effect:
        out["effect"] = t.effect
    return out


PY_TRANSFER = """\
import os, shutil, sys, time, urllib.error, urllib.request
mode, url, path = sys.argv[1:4]
for attempt in range(4):
    try:
        if mode == "get":
            with urllib.request.urlopen(url, timeout=300) as r, open(path, "wb") as f:
                shutil.copyfileobj(r, f)
        else:
            with open(path, "rb") as f:
                size = str(os.fstat(f.fileno()).st_size)
                urllib.request.urlopen(urllib.request.Request(
                    url, data=f, method="PUT", headers={"Content-Length": size}), timeout=300).close()
        break
    except urllib.error.HTTPError as e:
        if attempt == 3 or (e.code < 500 and e.code not in (408, 429)):
            sys.exit(f"continuum-artifacts: {mode} {path}: {e}")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        if attempt == 3:
            sys.exit(f"continuum-artifacts: {mode} {path}: {e}")
    except OSError as e:
        sys.exit(f"continuum-artifacts: {mode} {path}: {e}")
    time.sleep(1)
"""
"""``python3 -c PY_TRANSFER get|put URL PATH``: the artifact transfer of an image without
``curl`` (``python:3.12-slim``, the default image, has none): GET ``URL`` into ``PATH`` or
PUT ``PATH`` to ``URL``, retried like ``curl --retry 3`` (connection errors, 408, 429,
5xx); exit status 1 with the reason (never the URL: it carries the capability)."""

TRANSFER_FN = (
    "xfer() { if command -v curl >/dev/null 2>&1; then "
    'if [ "$1" = get ]; then curl -fsSL --retry 3 -o "$3" "$2"; '
    'else curl -fsS --retry 3 -T "$3" "$2"; fi; '
    "elif command -v python3 >/dev/null 2>&1; then "
    f'python3 -c {shlex.quote(PY_TRANSFER)} "$@"; '
    "else echo 'continuum-artifacts: the image has neither curl nor python3 to move the "
    "task'\\''s input and output artifacts; use an image with one of them' >&2; return 127; fi; }"
)
"""Shell function ``xfer get URL PATH`` / ``xfer put URL PATH``: ``curl`` where the image
has it, else ``python3`` (:data:`PY_TRANSFER`), else exit status 127 with the reason."""


def _artifact_script(inputs: list[ArtifactIn], outputs: list[ArtifactOut]) -> str:
    """Shell that fetches inputs (checking sha256), runs ``"$@"``, uploads outputs on success;
    transfers with ``curl`` or, in an image without it, ``python3`` (:data:`TRANSFER_FN`)."""
    lines = ["set -e", TRANSFER_FN]
    for a in inputs:
        path = shlex.quote(a.path)
        lines.append(f'mkdir -p "$(dirname {path})"')
        lines.append(f"xfer get {shlex.quote(a.url)} {path}")
        lines.append(f"echo {shlex.quote(a.sha256 + '  ' + a.path)} | sha256sum -c -")
    lines.append('set +e; "$@"; rc=$?; set -e')
    for o in outputs:
        lines.append(f'[ "$rc" -ne 0 ] || xfer put {shlex.quote(o.url)} {shlex.quote(o.path)}')
    lines.append('exit "$rc"')
    return "; ".join(lines)


def container(run: TaskRun, opts: PodOptions) -> dict[str, Any]:
    """The run's one container: image, command (+ script and artifact wrappers), env, resources."""
    task = run.task
    env = [{"name": k, "value": v} for k, v in sorted(task.env.items())]
    env += [{"name": "CONTINUUM_RUN_ID", "value": run.run_id},
            {"name": "CONTINUUM_WORKFLOW_ID", "value": run.workflow_id},
            {"name": "CONTINUUM_TASK", "value": task.name}]
    if task.script is not None:
        argv = ["/bin/sh", "-c", SCRIPT_RUNNER, "continuum-script", *task.script.interpreter]
        env.append({"name": "CONTINUUM_SCRIPT", "value": task.script.source})
    else:
        assert task.command is not None
        argv = list(task.command)
    c: dict[str, Any] = {"name": CONTAINER, "image": task.image or opts.default_image,
                         "env": env, "resources": _resources(task)}
    if run.inputs or run.outputs:
        c["command"] = ["/bin/sh", "-c", _artifact_script(run.inputs, run.outputs),
                        "continuum-artifacts"]
        c["args"] = argv
        c["workingDir"] = WORK_DIR
        c["volumeMounts"] = [{"name": "work", "mountPath": WORK_DIR}]
    else:
        c["command"] = argv
    if task.ports:
        c["ports"] = [{"containerPort": p.port, "protocol": p.protocol,
                       **({"name": p.name} if p.name else {})} for p in task.ports]
    return c


def pod_template(site: str, run: TaskRun, hostname: str, node_id: str, opts: PodOptions,
                 *, restart_policy: str) -> dict[str, Any]:
    """The pod template shared by Jobs and Deployments, pinned to ``hostname``."""
    task = run.task
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME_LABEL, "operator": "In", "values": [hostname]}]}]}}},
        "containers": [container(run, opts)],
    }
    tolerations = [_toleration(t) for t in task.constraints.tolerations] + list(opts.tolerations)
    if tolerations:
        spec["tolerations"] = tolerations
    if run.inputs or run.outputs:
        spec["volumes"] = [{"name": "work", "emptyDir": {}}]
    if task.kind == "job" and task.timeout is not None:
        spec["activeDeadlineSeconds"] = max(1, int(round(task.timeout)))
    return {"metadata": {"labels": run_labels(site, run),
                         "annotations": run_annotations(run, node_id)},
            "spec": spec}


def _metadata(site: str, run: TaskRun, node_id: str, namespace: str) -> dict[str, Any]:
    return {"name": object_name(run.task.name, run.run_id), "namespace": namespace,
            "labels": run_labels(site, run), "annotations": run_annotations(run, node_id)}


def job(site: str, run: TaskRun, hostname: str, node_id: str, namespace: str,
        opts: PodOptions) -> dict[str, Any]:
    """A ``batch/v1`` Job for a job task."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _metadata(site, run, node_id, namespace),
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": JOB_TTL_S,
                 "template": pod_template(site, run, hostname, node_id, opts,
                                          restart_policy="Never")},
    }


def deployment(site: str, run: TaskRun, hostname: str, node_id: str, namespace: str,
               opts: PodOptions) -> dict[str, Any]:
    """An ``apps/v1`` Deployment (one replica, Recreate) for a service task."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _metadata(site, run, node_id, namespace),
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": {LABEL_RUN: run.run_id, LABEL_SITE: site}},
                 "template": pod_template(site, run, hostname, node_id, opts,
                                          restart_policy="Always")},
    }


def service(site: str, run: TaskRun, node_id: str, namespace: str) -> dict[str, Any] | None:
    """A ``v1`` Service (ClusterIP) for a service task's ``ports``; None without ports."""
    if not run.task.ports:
        return None
    ports = []
    for p in run.task.ports:
        port: dict[str, Any] = {"port": p.port, "targetPort": p.port, "protocol": p.protocol}
        port["name"] = p.name or f"{p.protocol.lower()}-{p.port}"
        ports.append(port)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _metadata(site, run, node_id, namespace),
        "spec": {"type": "ClusterIP", "selector": {LABEL_RUN: run.run_id, LABEL_SITE: site},
                 "ports": ports},
    }


def workloads(site: str, run: TaskRun, hostname: str, node_id: str, namespace: str,
              opts: PodOptions) -> list[dict[str, Any]]:
    """Every object the run needs, in creation order."""
    if run.task.kind == "job":
        return [job(site, run, hostname, node_id, namespace, opts)]
    objs = [deployment(site, run, hostname, node_id, namespace, opts)]
    svc = service(site, run, node_id, namespace)
    if svc is not None:
        objs.append(svc)
    return objs
