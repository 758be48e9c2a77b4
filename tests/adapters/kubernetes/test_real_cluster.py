"""The kubernetes and kubeedge adapters against the real Kubernetes of the test bed.

The session ``kube_cluster`` (deploy/dev/kube.sh): kube-apiserver v1.37 with RBAC,
controller-manager, scheduler, kwok nodes. The adapters connect with the ServiceAccount
kubeconfig that deploy/kubernetes/rbac.yaml yields, as docs/kubernetes.md tells users.

Aspects: registration (version, the SelfSubjectAccessReview answers of the real RBAC, and a
copy of rbac.yaml missing one verb failing the check), inventory of kwok nodes
(allocatable, ``nvidia.com/gpu``, labels, taints, arch, tier), a Job to Succeeded and one
to Failed with its exit code (kwok ends them, deploy/dev/kube/kwok-stages.yaml), a service
Deployment + Service, cancellation, a run followed through a restart of the Kubernetes
control plane and re-adopted by a new adapter, and the KubeEdge edge semantics on tainted
edge-labelled kwok nodes (offline → NotReady, the run stays Running, nothing evicted).
The API-server stand-in (test_adapter.py, test_kubeedge.py) keeps the fault injection.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from adapters.base import Handle, TaskRun
from adapters.kubernetes import KubeEdgeAdapter, KubernetesAdapter
from adapters.kubernetes import manifests as mf
from adapters.kubernetes.kubeedge import DEVICE_LABEL_PREFIX
from continuum.errors import AuthError
from continuum.model import RunState, SiteHealth, Task, Tier
from control_plane.cli import app
from tests.adapters.kubernetes.cluster import KubeCluster, kwok_env
from tests.adapters.kubernetes.conftest import build_adapter
from tests.adapters.kubernetes.test_adapter import node_named, wait_state
from tests.conftest import REPO
from tests.control_plane.harness import served
from tests.helpers import wait_for

pytestmark = pytest.mark.kube

RBAC_YAML = REPO / "deploy" / "kubernetes" / "rbac.yaml"
runner = CliRunner()
KWOK_LOG = "kwok: a simulated container; no process ran"
"""The log of every kwok container (kube.sh's DIR/kwok/container.log)."""


def task_run(name: str = "train", **task: Any) -> TaskRun:
    task.setdefault("command", ["python3", "-c", "print('hi')"])
    task.setdefault("resources", {"cpu": 0.5, "memory": "256Mi"})
    return TaskRun(run_id=f"run-{uuid.uuid4().hex[:12]}", workflow_id="wf-real",
                   workflow_name="real", task=Task.model_validate({"name": name, **task}))


@pytest.fixture
def make(kube_cluster: KubeCluster, tmp_path: Path) -> Iterator[Any]:
    """``make(kind="kubernetes", name=..., **config)``: an adapter on the real cluster with
    the ServiceAccount kubeconfig (closed at teardown)."""
    made: list[KubernetesAdapter] = []

    def build(kind: str = "kubernetes", name: str = "real", **config: Any) -> KubernetesAdapter:
        config.setdefault("kubeconfig", kube_cluster.sa_kubeconfig())
        config.setdefault("watchTimeout", 5)
        a = build_adapter(kind, name, "lab", config, tmp_path / name)
        made.append(a)
        return a

    yield build
    for a in made:
        a.close()


# ---------------------------------------------------------------- registration


def test_registration_with_the_service_account_kubeconfig(kube_cluster: KubeCluster,
                                                          make: Any) -> None:
    a = make()
    nodes = {n.name for n in a.inventory()}  # the connectivity check runs first
    assert a.server_version == kube_cluster.version == "v1.37.2"
    assert {"kwok-node-1", "kwok-node-2", "kwok-node-3"} <= nodes
    assert a.health() == (SiteHealth.Ready, "")


@pytest.fixture
def limited_account(kube_cluster: KubeCluster) -> Iterator[dict[str, Any]]:
    """A copy of rbac.yaml for ServiceAccount ``continuum-limited`` whose role lacks
    ``delete`` on jobs; yields that account's kubeconfig, deletes it all afterwards."""
    text = RBAC_YAML.read_text().replace("continuum-adapter", "continuum-limited")
    docs = [d for d in yaml.safe_load_all(text) if d and d["kind"] != "Namespace"]
    role = next(d for d in docs if d["metadata"]["name"] == "continuum-limited-workloads")
    jobs = next(r for r in role["rules"] if r["resources"] == ["jobs"])
    jobs["verbs"].remove("delete")
    manifest = yaml.safe_dump_all(docs)
    kube_cluster.kubectl("apply", "-f", "-", stdin=manifest)
    token = wait_for(lambda: kube_cluster.kubectl(
        "-n", "continuum", "get", "secret", "continuum-limited-token",
        "-o", "jsonpath={.data.token}"), 30, message="the token controller fills the secret")
    kc = kube_cluster.sa_kubeconfig()
    kc["users"][0]["user"] = {"token": base64.b64decode(token).decode()}
    yield kc
    kube_cluster.kubectl("delete", "-f", "-", "--wait=false", "--ignore-not-found",
                         stdin=manifest)


def test_a_verb_missing_from_rbac_yaml_fails_the_check(make: Any,
                                                       limited_account: dict[str, Any]) -> None:
    a = make(name="limited", kubeconfig=limited_account)
    with pytest.raises(AuthError) as e:
        a.inventory()
    msg = str(e.value)
    assert "delete jobs.batch in namespace 'continuum'" in msg
    assert "deploy/kubernetes/rbac.yaml" in msg
    assert "create jobs.batch" not in msg  # only what is really missing is named


def test_cluster_add_through_the_api(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    """``continuum cluster add`` with the ServiceAccount kubeconfig, on a live control plane,
    as docs/kubernetes.md shows it; a token the API server rejects exits 1 naming the 401."""
    kc = tmp_path / "sa.kubeconfig"
    kc.write_text(yaml.safe_dump(kube_cluster.sa_kubeconfig()))
    bad = kube_cluster.sa_kubeconfig()
    bad["users"][0]["user"]["token"] = "not-a-token"
    bad_path = tmp_path / "bad.kubeconfig"
    bad_path.write_text(yaml.safe_dump(bad))
    with served(tmp_path / "state") as url:
        for name, kind in (("k8s-real", "kubernetes"), ("edge-real", "kubeedge")):
            r = runner.invoke(app, ["cluster", "add", name, str(kc), "--kind", kind,
                                    "--url", url, "-o", "json"])
            assert r.exit_code == 0, r.output
            site = json.loads(r.output)
            assert (site["kind"], site["health"]) == (kind, "Ready")
            assert site["nodes"] >= 3 and site["config"]["kubeconfig"] == "<redacted>"
        r = runner.invoke(app, ["cluster", "add", "stale", str(bad_path), "--url", url])
        assert r.exit_code == 1 and "401 Unauthorized" in r.output, r.output


# ---------------------------------------------------------------- inventory


def test_inventory_of_kwok_nodes(kube_cluster: KubeCluster, make: Any) -> None:
    name = f"edge-{uuid.uuid4().hex[:6]}"
    kube_cluster.add_node(name, "cpu=2", "memory=4Gi", "gpu=2", "arch=arm64",
                          "label:node-role.kubernetes.io/edge=",
                          "label:continuum.io/location=munich-floor",
                          "taint:dedicated=ml:NoSchedule")
    try:
        a = make()
        nodes = {n.name: n for n in a.inventory()}
        n1, n2, e = nodes["kwok-node-1"], nodes["kwok-node-2"], nodes[name]
        assert (n1.id, n1.site, n1.tier, n1.arch, n1.ready) == (
            "real/kwok-node-1", "real", Tier.cloud, "x86_64", True)
        assert (n1.allocatable.cpu, n1.allocatable.memory, n1.allocatable.gpu) == (
            8.0, 32 * 2**30, 0)
        assert n2.allocatable.gpu == 1 and n2.labels["nvidia.com/gpu.present"] == "true"
        conditions = {c.type: (c.status, c.reason) for c in n1.conditions}
        assert conditions["Ready"] == ("True", "KubeletReady")  # as kwok's kubelet posts them
        assert conditions["MemoryPressure"] == ("False", "KubeletHasSufficientMemory")
        assert (e.allocatable.cpu, e.allocatable.memory, e.allocatable.gpu) == (2.0, 4 * 2**30, 2)
        assert (e.tier, e.arch, e.location) == (Tier.edge, "aarch64", "munich-floor")
        assert e.labels["kubernetes.io/arch"] == "arm64"
        assert [(t.key, t.value, t.effect) for t in e.taints] == [("dedicated", "ml", "NoSchedule")]
    finally:
        kube_cluster.delete_node(name)


# ---------------------------------------------------------------- jobs and services


def test_job_runs_to_succeeded(kube_cluster: KubeCluster, make: Any) -> None:
    a = make()
    run = task_run(env=kwok_env("2s"))
    h = a.submit(run, node_named(a, "kwok-node-3"), run.run_id)
    st = wait_state(a, h, RunState.Running)
    assert st.started_at is not None
    pods = kube_cluster.objects("pods", f"{mf.LABEL_RUN}={run.run_id}")
    assert [p["spec"]["nodeName"] for p in pods] == ["kwok-node-3"]  # the scheduler bound it
    st = wait_state(a, h, RunState.Succeeded)
    assert st.exit_code == 0 and st.finished_at is not None
    # pods/log through kube-apiserver to kwok's kubelet API (the ServiceAccount's get pods/log)
    assert st.output_tail.rstrip("\n") == KWOK_LOG == a.logs(h, tail=5).rstrip("\n")
    a.release(h)
    wait_for(lambda: not kube_cluster.objects("jobs", f"{mf.LABEL_RUN}={run.run_id}"), 30,
             message="the released Job is deleted")


def test_job_fails_with_its_exit_code(make: Any) -> None:
    a = make()
    run = task_run(env=kwok_env("1s", exit_code=3))
    h = a.submit(run, node_named(a, "kwok-node-1"), run.run_id)
    st = wait_state(a, h, RunState.Failed)
    assert st.exit_code == 3
    assert "exit code 3" in st.reason


def test_gpu_job_lands_on_the_gpu_node(kube_cluster: KubeCluster, make: Any) -> None:
    a = make()
    run = task_run(env=kwok_env("1s"), resources={"cpu": 1, "memory": "1Gi", "gpu": 1})
    h = a.submit(run, node_named(a, "kwok-node-2"), run.run_id)
    wait_state(a, h, RunState.Succeeded)
    pod = kube_cluster.objects("pods", f"{mf.LABEL_RUN}={run.run_id}")[0]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_service_deployment_and_service_become_available(kube_cluster: KubeCluster,
                                                         make: Any) -> None:
    a = make()
    run = task_run("api", kind="service", command=["python3", "-m", "http.server", "8080"],
                   ports=[{"port": 8080, "name": "http"}])
    h = a.submit(run, node_named(a, "kwok-node-1"), run.run_id)
    wait_state(a, h, RunState.Running)
    sel = f"{mf.LABEL_RUN}={run.run_id}"
    dep = wait_for(lambda: next((d for d in kube_cluster.objects("deployments", sel)
                                 if d["status"].get("availableReplicas") == 1), None), 30,
                   message="the Deployment has one available replica")
    assert dep["spec"]["replicas"] == 1
    svc = kube_cluster.objects("services", sel)
    assert [p["port"] for p in svc[0]["spec"]["ports"]] == [8080]
    assert re.fullmatch(r"10\.96\.\d+\.\d+", svc[0]["spec"]["clusterIP"])
    a.cancel(h)
    wait_state(a, h, RunState.Cancelled)
    wait_for(lambda: not kube_cluster.objects("deployments", sel)
             and not kube_cluster.objects("services", sel), 30,
             message="the Deployment and Service are deleted")


def test_cancel_deletes_the_job_and_its_pod(kube_cluster: KubeCluster, make: Any) -> None:
    a = make()
    run = task_run(env=kwok_env("1h"))
    h = a.submit(run, node_named(a, "kwok-node-1"), run.run_id)
    wait_state(a, h, RunState.Running)
    a.cancel(h)
    assert wait_state(a, h, RunState.Cancelled).state == RunState.Cancelled
    sel = f"{mf.LABEL_RUN}={run.run_id}"
    wait_for(lambda: not kube_cluster.objects("jobs", sel)
             and not kube_cluster.objects("pods", sel), 30,
             message="the Job and its pod are deleted")


def test_a_run_survives_a_control_plane_restart_and_is_readopted(kube_cluster: KubeCluster,
                                                                 make: Any) -> None:
    a = make(name="restart")
    run = task_run(env=kwok_env("8s"))
    h = a.submit(run, node_named(a, "kwok-node-3"), run.run_id)
    wait_state(a, h, RunState.Running)
    kube_cluster.restart_control_plane()  # apiserver, controller-manager, scheduler, kwok
    b = make(name="restart")  # and a restarted Continuum, with the handle from its store
    b.inventory()
    restored = Handle.from_json(h.to_json())
    wait_for(lambda: (st := b.status([restored]).get(h.run_id)) is not None
             and st.state in {RunState.Running, RunState.Succeeded}, 30,
             message=lambda: f"the new adapter sees the run: {b.status([restored])}")
    again = b.submit(run, node_named(b, "kwok-node-3"), run.run_id)
    assert again.backend_id == h.backend_id
    assert len(kube_cluster.objects("jobs", f"{mf.LABEL_RUN}={run.run_id}")) == 1
    wait_state(b, restored, RunState.Succeeded, timeout=60)
    wait_state(a, h, RunState.Succeeded, timeout=60)  # the old watch resumed too


# ---------------------------------------------------------------- KubeEdge on kwok nodes

EDGE = ("label:node-role.kubernetes.io/edge=", "label:node-role.kubernetes.io/agent=",
        "taint:node-role.kubernetes.io/edge=:NoSchedule")


def test_kubeedge_offline_edge_node_keeps_its_run(kube_cluster: KubeCluster,
                                                  make: Any) -> None:
    name = f"edge-{uuid.uuid4().hex[:6]}"
    kube_cluster.add_node(name, "cpu=4", "memory=4Gi", "arch=arm64", *EDGE)
    try:
        a = make("kubeedge", name="edge-site")
        node = node_named(a, name)
        assert node.tier == Tier.edge and node.taints == []  # the edge taint is tolerated
        run = task_run("sense", env=kwok_env("1h"))
        h = a.submit(run, node, run.run_id)
        wait_state(a, h, RunState.Running)
        pod = kube_cluster.objects("pods", f"{mf.LABEL_RUN}={run.run_id}")[0]

        kube_cluster.offline(name)
        # the node lifecycle controller taints it not-ready:NoExecute; the forever
        # tolerations of the kubeedge adapter keep the pod
        wait_for(lambda: any(t["key"] == "node.kubernetes.io/not-ready"
                             and t["effect"] == "NoExecute" for t in yaml.safe_load(
                                 kube_cluster.kubectl("get", "node", name, "-o", "yaml"))[
                                     "spec"].get("taints", [])),
                 30, message="the NoExecute not-ready taint")
        off = node_named(a, name)
        assert not off.ready
        ready = next(c for c in off.conditions if c.type == "Ready")
        assert (ready.status, ready.reason) == ("False", "KubeletNotReady")
        health, why = a.health()
        assert health == SiteHealth.Degraded and name in why
        st = a.status([h])[h.run_id]
        assert st.state == RunState.Running
        assert st.reason.startswith(f"node {name} is not ready")
        still = kube_cluster.objects("pods", f"{mf.LABEL_RUN}={run.run_id}")
        assert [p["metadata"]["uid"] for p in still] == [pod["metadata"]["uid"]]
        assert "deletionTimestamp" not in still[0]["metadata"]  # not evicted

        kube_cluster.online(name)
        wait_for(lambda: node_named(a, name).ready, 30, message="the node is Ready again")
        wait_for(lambda: a.status([h])[h.run_id].reason == "", 30,
                 message=lambda: f"the reason clears: {a.status([h])[h.run_id]}")
        a.cancel(h)
        wait_state(a, h, RunState.Cancelled)
    finally:
        kube_cluster.delete_node(name)


def test_kubeedge_without_the_device_crd_has_no_data_sources(make: Any) -> None:
    a = make("kubeedge", name="edge-site")
    assert isinstance(a, KubeEdgeAdapter)
    assert a.inventory() and a.data_sources() == []


DEVICE_CRD = REPO / "deploy" / "dev" / "kube" / "device-crd.yaml"


@pytest.fixture
def device_crd(kube_cluster: KubeCluster) -> Iterator[None]:
    """The devices.kubeedge.io/v1beta1 CRD installed (and removed again afterwards)."""
    kube_cluster.kubectl("apply", "-f", str(DEVICE_CRD))
    kube_cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                         "crd/devices.devices.kubeedge.io")
    yield
    kube_cluster.kubectl("delete", "-f", str(DEVICE_CRD), "--wait=true", "--timeout=30s")


def test_kubeedge_devices_are_data_sources(kube_cluster: KubeCluster, make: Any,
                                           device_crd: None) -> None:
    kube_cluster.kubectl("create", "namespace", "factory")
    try:
        for name, node, model in (("thermo-01", "kwok-node-1", "thermometer"),
                                  ("cam-07", "kwok-node-3", "camera")):
            kube_cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
                "apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
                "metadata": {"name": name, "namespace": "factory"},
                "spec": {"deviceModelRef": {"name": model}, "nodeName": node,
                         "protocol": {"protocolName": "modbus", "modbus": {"slaveID": 1}}}}))
        a = make("kubeedge", name="edge-site")
        nodes = {n.name: n for n in a.inventory()}  # the ServiceAccount lists the Devices
        assert nodes["kwok-node-1"].labels[DEVICE_LABEL_PREFIX + "thermo-01"] == "true"
        sources = {d["name"]: d for d in a.data_sources()}
        assert sources["thermo-01"] == {
            "name": "thermo-01", "namespace": "factory", "model": "thermometer",
            "protocol": "modbus", "nodeName": "kwok-node-1", "node": "edge-site/kwok-node-1",
            "location": "lab", "online": True}
        assert sources["cam-07"]["node"] == "edge-site/kwok-node-3"
    finally:
        kube_cluster.kubectl("delete", "namespace", "factory", "--wait=false")
