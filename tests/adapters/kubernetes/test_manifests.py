"""Every kind of manifest the adapters produce, written to files and checked with the
``kubernetes-validate`` CLI (strict, Kubernetes 1.30) — plus the shipped RBAC.

Aspects: Job (command; script with inputs/outputs, GPU, timeout, tolerations), Deployment
with and without ports, Service, the KubeEdge variants (autonomy tolerations); the CLI
rejects a broken manifest (so the check can fail); ``deploy/kubernetes/rbac.yaml`` is valid
and grants exactly what the connectivity check verifies; object names.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from adapters.base import ArtifactIn, ArtifactOut, TaskRun
from adapters.kubernetes import manifests as mf
from adapters.kubernetes.adapter import REQUIRED_PERMISSIONS
from adapters.kubernetes.kubeedge import (
    DEVICE_GROUP,
    DEVICE_PLURAL,
    EDGE_AUTONOMY_TOLERATIONS,
    EDGE_TAINT_TOLERATION,
)
from continuum.model import Task
from tests.conftest import REPO

CLI = Path(sys.executable).parent / "kubernetes-validate"
RBAC = REPO / "deploy" / "kubernetes" / "rbac.yaml"


def _run(task: dict[str, Any], **kw: Any) -> TaskRun:
    return TaskRun(run_id="run-0123456789ab", workflow_id="wf-abcdef012345",
                   workflow_name="factory-analytics", task=Task.model_validate(task), **kw)


def every_manifest() -> dict[str, dict[str, Any]]:
    cloud = mf.PodOptions(default_image="python:3.12-slim")
    edge = mf.PodOptions(default_image="python:3.12-slim",
                         tolerations=[*EDGE_AUTONOMY_TOLERATIONS, EDGE_TAINT_TOLERATION])
    plain_job = _run({"name": "preprocess", "command": ["python3", "prep.py"],
                      "env": {"LEVEL": "3"}})
    rich_job = _run({"name": "train", "script": {"interpreter": ["python3"],
                                                 "source": "print('train')\n"},
                     "image": "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
                     "resources": {"cpu": 2.5, "memory": "8Gi", "gpu": 1}, "timeout": "2h",
                     "constraints": {"tolerations": [
                         {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}},
                    inputs=[ArtifactIn(name="features", path="data/features.parquet",
                                       url="http://cp:8080/v1/artifacts/wf/features",
                                       sha256="a" * 64, size=1024)],
                    outputs=[ArtifactOut(name="model", path="model.pt",
                                         url="http://cp:8080/v1/artifacts/wf/model?run=r")])
    svc_ports = _run({"name": "inference", "kind": "service", "image": "nginx:1.27",
                      "command": ["nginx", "-g", "daemon off;"],
                      "ports": [{"port": 8080, "name": "http"}, {"port": 9000}]})
    svc_plain = _run({"name": "collector", "kind": "service", "command": ["python3", "c.py"]})
    svc = mf.service("k8s", svc_ports, "k8s/cloud-1", "continuum")
    assert svc is not None
    return {
        "job-command": mf.job("k8s", plain_job, "cloud-1", "k8s/cloud-1", "continuum", cloud),
        "job-script-artifacts-gpu": mf.job("k8s", rich_job, "gpu-1", "k8s/gpu-1", "continuum",
                                           cloud),
        "deployment-ports": mf.deployment("k8s", svc_ports, "cloud-1", "k8s/cloud-1",
                                          "continuum", cloud),
        "service": svc,
        "deployment-no-ports": mf.deployment("k8s", svc_plain, "cloud-1", "k8s/cloud-1",
                                             "continuum", cloud),
        "kubeedge-job": mf.job("edge", plain_job, "edge-1", "edge/edge-1", "continuum", edge),
        "kubeedge-deployment": mf.deployment("edge", svc_ports, "edge-1", "edge/edge-1",
                                             "continuum", edge),
    }


def validate_cli(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "--strict", "-k", "1.30.0", *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def test_every_manifest_passes_kubernetes_validate_cli(tmp_path: Path) -> None:
    files = []
    for name, obj in every_manifest().items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        files.append(path)
    r = validate_cli(*files)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    for path in files:
        assert f"{path} passed" in out, out
    assert "against version 1.30" in out


def test_the_cli_rejects_an_invalid_manifest(tmp_path: Path) -> None:
    job = every_manifest()["job-command"]
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["request"] = {"cpu": "1"}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(job))
    r = validate_cli(path)
    assert r.returncode != 0 and "request" in r.stdout + r.stderr


def test_rbac_manifest_is_valid_and_grants_what_the_check_verifies() -> None:
    r = validate_cli(RBAC)
    assert r.returncode == 0, r.stdout + r.stderr
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    cluster = roles["continuum-adapter-cluster"]["rules"]
    workloads = roles["continuum-adapter-workloads"]["rules"]

    def grants(rules: list[dict[str, Any]], verb: str, group: str, resource: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   for r in rules)

    needed = [*REQUIRED_PERMISSIONS]
    granted = 0
    for p in needed:
        res = p.resource + (f"/{p.subresource}" if p.subresource else "")
        rules = cluster if not p.namespaced else workloads
        assert grants(rules, p.verb, p.group, res), f"rbac.yaml lacks {p.describe('continuum')}"
        granted += 1
    assert grants(cluster, "list", DEVICE_GROUP, DEVICE_PLURAL)
    n_rules = sum(len(r["verbs"]) * len(r["resources"]) for r in cluster + workloads)
    assert n_rules == granted + 1, "rbac.yaml grants more than the adapter checks for"
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["metadata"]["namespace"] == "continuum"


@pytest.mark.parametrize(("task", "run_id", "expected"), [
    ("train", "run-3f9a1c2b7d4e", "train-run-3f9a1c2b7d4e"),
    ("9lives", "run-1", "r9lives-run-1"),
    ("a" * 63, "run-3f9a1c2b7d4e", "a" * 46 + "-run-3f9a1c2b7d4e"),
    ("x", "Run_ID.With/Odd", "x-run-id-with-odd"),
])
def test_object_names_are_dns_1035_labels(task: str, run_id: str, expected: str) -> None:
    name = mf.object_name(task, run_id)
    assert name == expected and len(name) <= 63


@pytest.mark.parametrize(("task", "needle"), [
    ({"kind": "job", "ports": [{"port": 80}]}, "ports are for service tasks"),
    ({"kind": "service", "ports": [{"port": 0}]}, "greater than or equal to 1"),
    ({"kind": "service", "ports": [{"port": 70000}]}, "less than or equal to 65535"),
    ({"kind": "service", "ports": [{"port": 80, "name": "much-too-long-name"}]}, "pattern"),
    ({"kind": "service", "ports": [{"port": 80, "protocol": "HTTP"}]}, "'TCP', 'UDP' or 'SCTP'"),
])
def test_bad_ports_are_rejected_with_the_reason(task: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError) as e:
        Task.model_validate({"name": "api", "command": ["serve"], **task})
    assert needle in str(e.value)
