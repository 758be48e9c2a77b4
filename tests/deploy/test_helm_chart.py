"""The Helm chart deploy/helm/continuum (issue 15 item 4): ``helm lint`` passes; what
``helm template`` renders validates against the Kubernetes schemas with
kubernetes-validate in strict mode (unknown fields are errors) for the default values and
for other value sets; values that cannot work are refused at render time (the templates'
checks and values.schema.json); and the chart
installs into the real test cluster (``kube_cluster``: kube-apiserver with RBAC, kwok
nodes), where the Deployment's pods run (per kwok: no container runs), the PodDisruptionBudget
and the Lease RBAC exist, and the chart's ServiceAccount may update Leases in its
namespace and nothing else, then uninstalls cleanly.

helm is built from its Go module by ``deploy/dev/helm.sh build`` (``make test-deps``).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import wait_for

HELM_SH = REPO / "deploy" / "dev" / "helm.sh"
CHART = REPO / "deploy" / "helm" / "continuum"
KUBE_VERSIONS = ("1.30.0", "1.37.0")
"""The oldest Kubernetes the chart is validated for and the test bed's."""

THREE_REPLICAS: dict[str, Any] = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.org/hpc/continuum", "tag": "0.1.0-rc1"},
    "persistence": {"enabled": False},
    "auth": {"existingSecret": "continuum-auth"},
    "api": {"tls": {"existingSecret": "continuum-tls"}, "publicUrl": "https://continuum.example.org"},
    "federation": {"configMap": "continuum-federation"},
    "brokerUrl": "mqtts://mosquitto.mqtt:8883",
    "env": {"CONTINUUM_PLACEMENT_MODE": "quality"},
    "metrics": {"serviceMonitor": {"enabled": False}},
    "podDisruptionBudget": {"minAvailable": 2},
}
"""A second value set: three replicas, every optional Secret and ConfigMap, no PVC."""


@pytest.fixture(scope="module")
def helm() -> str:
    """The path of the helm binary (fails with the reason when it is not built)."""
    r = subprocess.run([str(HELM_SH), "path"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.fail(f"helm is not built: {r.stderr.strip()}")
    return r.stdout.strip()


def run_helm(helm: str, *args: str, home: Path | None = None, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:  # helm's cache, config and data (repositories, plugins) stay here
        env.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                   HELM_DATA_HOME=str(home / "data"))
    r = subprocess.run([helm, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(helm: str, tmp_path: Path, values: dict[str, Any] | None = None,
           namespace: str = "hpc") -> list[dict[str, Any]]:
    """The objects ``helm template`` renders, hooks included."""
    args = ["template", "rel", str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values_file(tmp_path, values))]
    out = run_helm(helm, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def validate_all(objs: list[dict[str, Any]]) -> None:
    for version in KUBE_VERSIONS:
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} is not a valid "
                                     f"{version} object: {e.message} at {list(e.path)}") from None


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_helm_lint(helm: str, tmp_path: Path) -> None:
    r = run_helm(helm, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout
    r = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, THREE_REPLICAS)))
    assert "0 chart(s) failed" in r.stdout


def test_default_values_render_valid_objects(helm: str, tmp_path: Path) -> None:
    objs = render(helm, tmp_path)
    assert sorted(o["kind"] for o in objs) == [
        "Deployment", "Job", "PersistentVolumeClaim", "PodDisruptionBudget", "Role",
        "RoleBinding", "Service", "ServiceAccount"]
    validate_all(objs)

    (dep,) = by_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert pod["spec"]["serviceAccountName"] == "rel-continuum"
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "localhost/continuum:0.1.0"
    assert c["args"][0] == "server"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    env = env_of(c)
    assert env["CONTINUUM_DATABASE_URL"] == {
        "secretKeyRef": {"name": "continuum-database", "key": "url"}}
    assert env["CONTINUUM_SEALING_KEYS"] == {
        "secretKeyRef": {"name": "continuum-sealing", "key": "keys"}}
    assert env["CONTINUUM_STATE_DIR"] == "/var/lib/continuum"
    assert env["CONTINUUM_LEADER_ELECTION"] == "kubernetes"
    assert env["CONTINUUM_LEADER_LEASE_NAME"] == "rel-continuum-leader"
    assert env["CONTINUUM_LEADER_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/var/lib/continuum": "state", "/tmp": "tmp"}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["state"]["persistentVolumeClaim"]["claimName"] == "rel-continuum-state"

    (pvc,) = by_kind(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    (role,) = by_kind(objs, "Role")
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "list", "watch", "create", "update", "patch"]}]
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-continuum",
                                    "namespace": "hpc"}]
    (job,) = by_kind(objs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]


def test_strict_validation_catches_an_unknown_field(helm: str, tmp_path: Path) -> None:
    """The check above can fail: a misspelt field in the Deployment is an error."""
    (dep,) = by_kind(render(helm, tmp_path), "Deployment")
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(AssertionError, match="readinesProbe"):
        validate_all([bad])


def test_three_replicas_with_every_secret_render_valid_objects(helm: str, tmp_path: Path) -> None:
    objs = render(helm, tmp_path, THREE_REPLICAS)
    assert "PersistentVolumeClaim" not in {o["kind"] for o in objs}
    assert not by_kind(objs, "ServiceMonitor")
    validate_all(objs)
    (dep,) = by_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example.org/hpc/continuum:0.1.0-rc1"
    env = env_of(c)
    assert env["CONTINUUM_AUTH_KEY_FILE"] == "/etc/continuum/auth/jwt.key"
    assert env["CONTINUUM_TLS_CERT_FILE"] == "/etc/continuum/tls/tls.crt"
    assert env["CONTINUUM_FEDERATION"] == "/etc/continuum/federation/federation.yaml"
    assert env["CONTINUUM_BROKER_URL"] == "mqtts://mosquitto.mqtt:8883"
    assert env["CONTINUUM_PUBLIC_URL"] == "https://continuum.example.org"
    assert env["CONTINUUM_PLACEMENT_MODE"] == "quality"
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols["state"]
    assert vols["auth"]["secret"]["secretName"] == "continuum-auth"
    assert vols["tls"]["secret"]["secretName"] == "continuum-tls"
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2


def test_service_monitor_behind_a_value(helm: str, tmp_path: Path) -> None:
    objs = render(helm, tmp_path, {"metrics": {"serviceMonitor": {
        "enabled": True, "labels": {"release": "kube-prometheus"}}, "podAnnotations": False}})
    (sm,) = by_kind(objs, "ServiceMonitor")
    (svc,) = by_kind(objs, "Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s",
                                        "scheme": "http"}]
    (dep,) = by_kind(objs, "Deployment")
    assert "annotations" not in dep["spec"]["template"]["metadata"]
    # the ServiceMonitor is a CRD kubernetes-validate has no schema for; the rest validates
    validate_all([o for o in objs if o["kind"] != "ServiceMonitor"])


def test_one_replica_on_sqlite_has_no_pdb_and_no_migration_job(helm: str, tmp_path: Path) -> None:
    objs = render(helm, tmp_path, {"replicaCount": 1, "database": {"existingSecret": ""},
                                   "leaderElection": {"enabled": False}})
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"PodDisruptionBudget", "Job", "Role", "RoleBinding"}
    validate_all(objs)
    (dep,) = by_kind(objs, "Deployment")
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    assert "CONTINUUM_DATABASE_URL" not in env and "CONTINUUM_LEADER_ELECTION" not in env
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("values", "needle"), [
    ({"replicaCount": 2, "database": {"existingSecret": ""}}, "database.existingSecret"),
    ({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}},
     "podDisruptionBudget.minAvailable"),
    # values.schema.json: misspelt keys, wrong types, settings not named CONTINUUM_*
    ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"env": {"PLACEMENT_MODE": "quality"}}, "invalid propertyName 'PLACEMENT_MODE'"),
])
def test_values_that_cannot_work_are_refused(helm: str, tmp_path: Path, values: dict[str, Any],
                                             needle: str) -> None:
    r = run_helm(helm, "template", "rel", str(CHART), "-f", str(values_file(tmp_path, values)),
                 check=False)
    assert r.returncode != 0
    assert needle in r.stderr


@pytest.mark.kube
def test_chart_installs_into_the_cluster(helm: str, kube_cluster: Any, tmp_path: Path) -> None:
    ns = f"cont-{uuid.uuid4().hex[:6]}"
    kubeconfig = kube_cluster.env["KUBECONFIG"]
    kube_cluster.kubectl("create", "namespace", ns)
    kube_cluster.kubectl("-n", ns, "create", "secret", "generic", "continuum-database",
                         "--from-literal=url=postgresql+psycopg://continuum:pw@postgres/continuum")
    kube_cluster.kubectl("-n", ns, "create", "secret", "generic", "continuum-sealing",
                         "--from-literal=keys=" + "A" * 43 + "=")
    # kube.sh's controller-manager runs no PersistentVolume binder, so a claim would stay
    # Pending and the pods unscheduled: the state is an emptyDir here
    values = values_file(tmp_path, {"persistence": {"enabled": False}})
    home = tmp_path / "helm"
    run_helm(helm, "install", "continuum", str(CHART), "--kubeconfig", kubeconfig, "--namespace", ns,
             "-f", str(values), "--wait", "--timeout", "120s", home=home, timeout=180)
    try:
        # the db-upgrade hook Job ran (kwok ends its pod Succeeded) and was deleted after
        assert not kube_cluster.objects("jobs", "app.kubernetes.io/component=db-upgrade", ns)
        dep = json.loads(kube_cluster.kubectl("-n", ns, "get", "deployment", "continuum", "-o", "json"))
        assert dep["spec"]["replicas"] == 2
        assert dep["status"].get("readyReplicas") == 2

        def running() -> list[dict[str, Any]]:
            pods = kube_cluster.objects(
                "pods", "app.kubernetes.io/instance=continuum,app.kubernetes.io/component=control-plane", ns)
            return [p for p in pods if p["status"].get("phase") == "Running"]
        wait_for(lambda: len(running()) == 2, 60, message=lambda: f"running pods: {running()}")
        pods = running()
        assert len({p["spec"]["nodeName"] for p in pods}) == 2  # anti-affinity spreads them
        assert {p["spec"]["serviceAccountName"] for p in pods} == {"continuum"}

        pdb = json.loads(kube_cluster.kubectl("-n", ns, "get", "pdb", "continuum", "-o", "json"))
        assert pdb["spec"]["minAvailable"] == 1
        wait_for(lambda: json.loads(kube_cluster.kubectl("-n", ns, "get", "pdb", "continuum", "-o", "json"))
                 ["status"].get("disruptionsAllowed") == 1, 60,
                 message="the PDB allows one disruption of two running pods")
        role = json.loads(kube_cluster.kubectl("-n", ns, "get", "role", "continuum-leader-election",
                                               "-o", "json"))
        assert role["rules"][0]["resources"] == ["leases"]
        kube_cluster.kubectl("-n", ns, "get", "rolebinding", "continuum-leader-election")
        kube_cluster.kubectl("-n", ns, "get", "service", "continuum")

        sa = f"system:serviceaccount:{ns}:continuum"

        def can_i(*args: str) -> str:
            r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "auth", "can-i", *args,
                                "--as", sa], capture_output=True, text=True, timeout=30)
            return r.stdout.strip()
        for verb in ("get", "list", "watch", "create", "update", "patch"):
            assert can_i(verb, "leases.coordination.k8s.io", "-n", ns) == "yes", verb
        assert can_i("delete", "leases.coordination.k8s.io", "-n", ns) == "no"
        assert can_i("update", "leases.coordination.k8s.io", "-n", "default") == "no"
        assert can_i("get", "secrets", "-n", ns) == "no"
    finally:
        run_helm(helm, "uninstall", "continuum", "--kubeconfig", kubeconfig, "--namespace", ns,
                 "--wait", "--timeout", "60s", home=home, timeout=120)
    assert not kube_cluster.objects("deployments", "app.kubernetes.io/instance=continuum", ns)
    assert "continuum" not in kube_cluster.kubectl("-n", ns, "get", "roles,rolebindings,pdb,sa",
                                              "-o", "name")
    kube_cluster.kubectl("delete", "namespace", ns, "--wait=false")
