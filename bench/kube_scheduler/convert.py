"""Continuum nodes and placement requests as Kubernetes Node and Pod manifests (pure).

What kube-scheduler is given, and how it differs from what Continuum sees:

* **Nodes**: ``status.capacity`` and ``status.allocatable`` carry cpu (millicores),
  memory (bytes), pods (110, the kubelet default) and ``nvidia.com/gpu`` as *whole* GPUs
  (``ceil(capacity.gpu / gpu_unit)``: the trace counts milli-GPUs, a device plugin
  advertises devices). Labels: ``kubernetes.io/arch`` (``amd64`` / ``arm64`` from the
  node's arch), ``kubernetes.io/hostname``, and the node's own labels plus its tier, site
  and location under ``continuum.dev/`` (informational: no pod selects on them); taints
  from ``Node.taints``. A node's background load (``capacity − free``) is *not* folded
  into allocatable: it becomes one pod bound to the node (:func:`background_pod`), so
  kube-scheduler scores against the same allocatable and requested figures as the
  re-implementation in ``bench/placement/policies.py``.
* **Pods**: requests (= limits for ``nvidia.com/gpu``, as extended resources require)
  cpu in millicores, memory in bytes, and ``nvidia.com/gpu`` = ``ceil(gpu / gpu_unit)``.
  The default kube-scheduler cannot share a GPU between pods, so a *fractional* GPU pod
  (0 < gpu < one GPU) asks for one whole GPU — what it takes on a cluster with the NVIDIA
  device plugin and no sharing. The bench still scores its energy and GPU share with the
  trace's fraction (the pod uses what it uses; the rest of that GPU idles, unusable).
  ``Constraints.arch`` becomes a ``kubernetes.io/arch`` nodeSelector. SLOs, data sources,
  objectives: kube-scheduler has no notion of them (nothing is sent).
"""

from __future__ import annotations

import math
import re
from typing import Any

from continuum.model import Node, Resources

GPU_RESOURCE = "nvidia.com/gpu"
PODS_PER_NODE = 110
ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_NAME = re.compile(r"[^a-z0-9.-]+")


def k8s_name(text: str) -> str:
    """``text`` as a DNS-1123 subdomain (lower case, ``[a-z0-9.-]``, ≤ 253 characters,
    alphanumeric at both ends); raises ValueError when nothing is left."""
    out = _NAME.sub("-", text.lower()).strip(".-")[:253].strip(".-")
    if not out:
        raise ValueError(f"no Kubernetes name can be made from {text!r}")
    return out


def whole_gpus(gpu: float, gpu_unit: int = 1) -> int:
    """GPU devices for ``gpu`` units (``gpu_unit`` units per GPU): ``ceil``, so a fraction
    of a GPU takes a whole one; 0 stays 0."""
    if gpu <= 0:
        return 0
    return math.ceil(round(gpu / gpu_unit, 9))


def millicores(cpu: float) -> int:
    """Cores as integer millicores (rounded to the nearest)."""
    return int(round(cpu * 1000))


def requests(r: Resources, gpu_unit: int = 1) -> dict[str, str]:
    """The container resource requests for ``r``: cpu ``"<m>m"``, memory in bytes,
    ``nvidia.com/gpu`` (whole GPUs, omitted when 0)."""
    out = {"cpu": f"{millicores(r.cpu)}m", "memory": str(int(r.memory))}
    g = whole_gpus(r.gpu, gpu_unit)
    if g:
        out[GPU_RESOURCE] = str(g)
    return out


def node_manifest(node: Node, gpu_unit: int = 1, name: str | None = None,
                  allocatable: Resources | None = None) -> dict[str, Any]:
    """A kwok Node for ``node`` (module docstring): name ``name`` or the node's name made
    DNS-safe; ``allocatable`` (default ``node.allocatable``) sets status.allocatable,
    capacity is ``node.capacity``. Returns the manifest as a dict."""
    nm = name or k8s_name(node.name)
    arch = ARCH.get(node.arch or "x86_64", "amd64")
    labels = {k: str(v) for k, v in (node.labels or {}).items()
              if re.fullmatch(r"([a-z0-9.-]+/)?[A-Za-z0-9._-]{1,63}", k)
              and re.fullmatch(r"[A-Za-z0-9._-]{0,63}", str(v))}
    labels.update({"kubernetes.io/hostname": nm, "kubernetes.io/arch": arch,
                   "kubernetes.io/os": "linux", "type": "kwok"})
    for key, value in (("tier", node.tier), ("site", node.site), ("location", node.location)):
        if value:
            labels[f"continuum.dev/{key}"] = k8s_name(str(value))[:63].strip(".-")

    def res(r: Resources) -> dict[str, str]:
        out = {"cpu": f"{millicores(r.cpu)}m", "memory": str(int(r.memory)),
               "pods": str(PODS_PER_NODE)}
        g = whole_gpus(r.gpu, gpu_unit)
        if g:
            out[GPU_RESOURCE] = str(g)
        return out

    spec: dict[str, Any] = {}
    if node.taints:
        spec["taints"] = [{"key": t.key, "value": t.value or "", "effect": t.effect}
                          for t in node.taints]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": nm, "labels": labels,
                         "annotations": {"kwok.x-k8s.io/node": "fake",
                                         "node.alpha.kubernetes.io/ttl": "0"}},
            "spec": spec,
            "status": {"capacity": res(node.capacity),
                       "allocatable": res(allocatable or node.allocatable)}}


def pod_manifest(name: str, r: Resources, gpu_unit: int = 1, arch: list[str] | None = None,
                 scheduler: str = "default-scheduler", node_name: str | None = None,
                 labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A bare Pod asking for ``r`` (:func:`requests`; GPUs also as limits), with a
    ``kubernetes.io/arch`` nodeSelector when ``arch`` is given (one architecture: the
    first one that maps), for scheduler ``scheduler`` — or bound to ``node_name`` directly
    (no scheduler involved). Returns the manifest as a dict."""
    req = requests(r, gpu_unit)
    resources: dict[str, Any] = {"requests": req}
    if GPU_RESOURCE in req:
        resources["limits"] = {GPU_RESOURCE: req[GPU_RESOURCE]}
    spec: dict[str, Any] = {
        "schedulerName": scheduler, "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": "registry.invalid/bench:1",
                        "resources": resources}]}
    if arch:
        mapped = [ARCH[a] for a in arch if a in ARCH]
        if mapped:
            spec["nodeSelector"] = {"kubernetes.io/arch": mapped[0]}
    if node_name is not None:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": k8s_name(name), "labels": dict(labels or {})}, "spec": spec}


def background_pod(name: str, node: Node, node_name: str) -> dict[str, Any] | None:
    """A pod bound to ``node_name`` holding ``node``'s background load (capacity − free,
    cpu and memory; GPUs in use are not modelled by the scenarios), or None when the node
    is idle."""
    cpu = max(node.capacity.cpu - (node.free.cpu if node.free else node.capacity.cpu), 0.0)
    mem = max(int(node.capacity.memory) - int(node.free.memory if node.free
                                              else node.capacity.memory), 0)
    if millicores(cpu) == 0 and mem == 0:
        return None
    return pod_manifest(name, Resources(cpu=cpu, memory=mem), node_name=node_name,
                        labels={"continuum.dev/bench": "background"})
