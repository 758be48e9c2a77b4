"""A workflow spanning a device agent, a Kubernetes site and a KubeEdge site, through the
REST API of an in-process control plane.

Real: the control plane (store, reconciler, placement, FastAPI), Mosquitto and a
``continuum-agent`` subprocess, the official ``kubernetes`` client. Stand-in: the two
kube-apiservers (tests/adapters/kubernetes/apiserver.py), each playing its kubelets.

Aspects: clusters registered over ``POST /v1/sites`` with uploaded kubeconfigs (content
as YAML text and as a mapping, a context chosen), the registration refusing wrong
credentials and a missing RBAC permission with a 422 that says why, the kubeconfig never
echoed back, KubeEdge nodes and devices in ``/v1/nodes``, the workflow placed by
constraints (site; device label) and run to success on all three, its Kubernetes objects
pinned and labelled, released afterwards; a cancelled service deletes its objects; a
control plane restarted while a Job runs re-adopts it from the store (site and kubeconfig
persisted) and the pod's labels, and does not run it again; a KubeEdge edge node that
goes offline keeps its run (not evicted, not migrated) past the lost-work grace period.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from continuum.federation import FederationDocument
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from tests.adapters.kubernetes.apiserver import ApiServer
from tests.conftest import AgentFactory, Mosquitto
from tests.control_plane.harness import wait_state
from tests.helpers import admin_headers, wait_for

EDGE_LABELS = {"node-role.kubernetes.io/edge": "", "continuum.io/location": "factory"}


@pytest.fixture
def clusters() -> Iterator[tuple[ApiServer, ApiServer]]:
    cloud = ApiServer().start()
    cloud.add_node("cloud-1", cpu="16", memory="64Gi", gpu=2)
    edge = ApiServer().start()
    edge.add_node("master", cpu="4", memory="8Gi")
    edge.add_node("edge-1", cpu="4", memory="4Gi", arch="arm64", labels=EDGE_LABELS,
                  taints=[{"key": "node-role.kubernetes.io/edge", "effect": "NoSchedule"}])
    edge.add_node("edge-2", cpu="4", memory="4Gi", arch="arm64", labels=EDGE_LABELS)
    edge.add_device("thermo-01", "edge-1", namespace="factory")
    cloud.start_kubelet()
    edge.start_kubelet()
    yield cloud, edge
    cloud.stop()
    edge.stop()
    assert not cloud.rejected and not edge.rejected, (cloud.rejected, edge.rejected)


def federation(broker: str) -> FederationDocument:
    return FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "k8s-e2e"},
        "spec": {
            "controlPlane": {"location": "cloud-dc"},
            "locations": [{"name": "factory"}, {"name": "cloud-dc"}],
            "links": [{"a": "factory", "b": "cloud-dc", "rttMs": 20, "bandwidthBps": 1e8}],
            "sites": [{"name": "factory-devices", "kind": "devices", "tier": "device",
                       "location": "factory", "config": {"broker": broker}}],
        },
    })


def kube_site(name: str, kind: str, location: str, kubeconfig: Any,
              **config: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "location": location,
            "config": {"kubeconfig": kubeconfig, "watchTimeout": 5, **config}}


def test_workflow_across_agent_kubernetes_and_kubeedge(
        clusters: tuple[ApiServer, ApiServer], mosquitto: Mosquitto, agents: AgentFactory,
        tmp_path: Path) -> None:
    cloud, edge = clusters
    agents.trust(tmp_path / "cp")
    agents.spawn("pi-1", "--location", "factory")
    settings = Settings(state_dir=tmp_path / "cp", reconcile_interval_s=0.1,
                        inventory_interval_s=0.3, retry_backoff_s=0.1,
                        broker_url=mosquitto.url)
    cp = ControlPlane(settings, federation(mosquitto.url))
    cp.start()
    try:
        with TestClient(cp.app, headers=admin_headers(cp)) as client:
            # -- registration, refused precisely
            bad = client.post("/v1/sites", json=kube_site(
                "cloud", "kubernetes", "cloud-dc", cloud.kubeconfig(token="stale")))
            assert bad.status_code == 422
            assert "401 Unauthorized" in bad.json()["detail"][0]["msg"]
            edge.deny.add(("list", "devices", "devices.kubeedge.io"))
            denied = client.post("/v1/sites", json=kube_site(
                "edge", "kubeedge", "factory", edge.kubeconfig()))
            assert denied.status_code == 422
            assert "list devices.devices.kubeedge.io cluster-wide" in denied.json()["detail"][0]["msg"]
            edge.deny.clear()

            kc = cloud.kubeconfig(context="prod")
            r = client.post("/v1/sites", json=kube_site(
                "cloud", "kubernetes", "cloud-dc", yaml.safe_dump(kc), context="prod"))
            assert r.status_code == 201, r.text
            assert r.json()["config"]["kubeconfig"] == "<redacted>"
            r = client.post("/v1/sites", json=kube_site("edge", "kubeedge", "factory",
                                                        edge.kubeconfig()))
            assert r.status_code == 201, r.text
            sites = {s["name"]: s for s in client.get("/v1/sites").json()["items"]}
            assert sites["cloud"]["health"] == "Ready" and sites["edge"]["health"] == "Ready"
            assert cloud.token not in client.get("/v1/sites").text

            nodes = wait_for(lambda: (items := client.get("/v1/nodes").json()["items"])
                             and {n["site"] for n in items} >= {"factory-devices", "cloud",
                                                                "edge"} and items,
                             20, message="nodes of all three sites")
            by_id = {n["id"]: n for n in nodes}
            assert by_id["edge/edge-1"]["tier"] == "edge" and by_id["edge/master"]["tier"] == "cloud"
            assert by_id["edge/edge-1"]["labels"]["device.continuum.io/thermo-01"] == "true"
            assert by_id["cloud/cloud-1"]["allocatable"]["gpu"] == 2
            sources = client.get("/v1/data-sources").json()["items"]
            assert [(d["site"], d["name"], d["node"], d["location"], d["online"])
                    for d in sources] == [("edge", "thermo-01", "edge/edge-1", "factory", True)]

            # -- the workflow
            doc = {"apiVersion": "continuum/v1", "kind": "Workflow",
                   "metadata": {"name": "sense-filter-train"},
                   "spec": {"tasks": [
                       {"name": "sense", "command": ["python3", "-c", "print('sensed')"],
                        "constraints": {"sites": ["factory-devices"]}},
                       {"name": "filter", "dependsOn": ["sense"], "image": "busybox:1.36",
                        "command": ["sh", "-c", "echo filtered"],
                        "resources": {"cpu": 0.5, "memory": "128Mi"},
                        "constraints": {"labels": {"device.continuum.io/thermo-01": "true"}}},
                       {"name": "train", "dependsOn": ["filter"],
                        "command": ["python3", "-c", "print('trained')"],
                        "resources": {"cpu": 4, "memory": "8Gi", "gpu": 1},
                        "constraints": {"sites": ["cloud"]}},
                   ]}}
            r = client.post("/v1/workflows", json=doc)
            assert r.status_code == 201, r.text
            wf_id = r.json()["id"]
            wf = wait_state(client, wf_id, ("Succeeded", "Failed"), timeout=60)
            assert wf["state"] == "Succeeded", wf
            runs = {r["task"]: r for r in client.get(f"/v1/runs?workflow={wf_id}").json()["items"]}
            assert runs["sense"]["node"] == "factory-devices/pi-1"
            assert runs["filter"]["node"] == "edge/edge-1"
            assert runs["train"]["node"] == "cloud/cloud-1"
            filtered = client.get(f"/v1/runs/{runs['filter']['id']}").json()
            assert "on edge-1" in filtered["outputTail"]  # the pod log, kept with the state

            # the Jobs as the clusters received them: pinned, labelled, tolerating
            edge_job = next(o for o in edge.received if o.get("kind") == "Job")
            spec = edge_job["spec"]["template"]["spec"]
            assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["edge-1"]
            assert {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                    "effect": "NoExecute"} in spec["tolerations"]
            assert edge_job["metadata"]["labels"]["continuum.io/run-id"] == runs["filter"]["id"]
            assert edge_job["metadata"]["labels"]["continuum.io/workflow-id"] == wf_id
            cloud_job = next(o for o in cloud.received if o.get("kind") == "Job")
            c = cloud_job["spec"]["template"]["spec"]["containers"][0]
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
            # finished runs are released: their Jobs deleted in the background
            wait_for(lambda: not cloud.objects["jobs"] and not edge.objects["jobs"], 20,
                     message="released Jobs to be deleted")
            assert ("jobs", cloud_job["metadata"]["name"], "Background") in cloud.deletions

            # -- a service on the cluster, cancelled: Deployment and Service deleted
            svc_doc = {"apiVersion": "continuum/v1", "kind": "Workflow",
                       "metadata": {"name": "serve"},
                       "spec": {"tasks": [{"name": "api", "kind": "service",
                                           "image": "nginx:1.27", "command": ["nginx"],
                                           "ports": [{"port": 80, "name": "http"}],
                                           "constraints": {"sites": ["cloud"]}}]}}
            svc_id = client.post("/v1/workflows", json=svc_doc).json()["id"]
            wait_for(lambda: any(r["state"] == "Running" for r in client.get(
                f"/v1/runs?workflow={svc_id}").json()["items"]), 30,
                message="the service run to be Running")
            assert len(cloud.objects["deployments"]) == 1 and len(cloud.objects["services"]) == 1
            run = client.get(f"/v1/runs?workflow={svc_id}").json()["items"][0]
            assert client.delete(f"/v1/workflows/{svc_id}").status_code == 202
            wait_state(client, svc_id, ("Cancelled",), timeout=30)
            assert not cloud.objects["deployments"] and not cloud.objects["services"]
            assert not cloud.pods(run["id"])
    finally:
        cp.stop()


def test_restarted_control_plane_readopts_a_running_job(tmp_path: Path) -> None:
    cloud = ApiServer().start()
    cloud.add_node("cloud-1", cpu="8", memory="32Gi")
    settings = Settings(state_dir=tmp_path / "cp", reconcile_interval_s=0.1,
                        inventory_interval_s=0.3, retry_backoff_s=0.1)
    fed = FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "restart"},
        "spec": {"controlPlane": {"location": "cloud-dc"}, "locations": [{"name": "cloud-dc"}]}})
    doc = {"apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": "long"},
           "spec": {"tasks": [{"name": "train", "command": ["python3", "train.py"]}]}}
    try:
        cp = ControlPlane(settings, fed)
        cp.start()
        try:
            with TestClient(cp.app, headers=admin_headers(cp)) as client:
                r = client.post("/v1/sites", json=kube_site("cloud", "kubernetes", "cloud-dc",
                                                            cloud.kubeconfig()))
                assert r.status_code == 201, r.text
                wf_id = client.post("/v1/workflows", json=doc).json()["id"]
                wait_for(lambda: cloud.pods(), 20, message="the Job's pod")
                run_id = cloud.pods()[0]["metadata"]["labels"]["continuum.io/run-id"]
                cloud.run_pod(cloud.pod_of(run_id))
                wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["state"] == "Running",
                         20, message="the run to be Running")
        finally:
            cp.stop()
        cloud.finish_pod(cloud.pod_of(run_id))  # finishes while no control plane runs
        cp2 = ControlPlane(settings, fed)  # same state dir: the site and its kubeconfig persist
        cp2.start()
        try:
            with TestClient(cp2.app, headers=admin_headers(cp2)) as client:
                wf = wait_state(client, wf_id, ("Succeeded", "Failed"), timeout=30)
                assert wf["state"] == "Succeeded", wf
                runs = client.get(f"/v1/runs?workflow={wf_id}").json()["items"]
                assert [r["id"] for r in runs] == [run_id]  # re-adopted, not re-run
                assert len(cloud.received_of("Job")) == 1
        finally:
            cp2.stop()
    finally:
        cloud.stop()
    assert not cloud.rejected


def test_offline_edge_node_keeps_its_run_through_the_control_plane(tmp_path: Path) -> None:
    """The lost-work re-placement of the migration controller leaves a disconnected KubeEdge
    edge node's runs alone (its pods go on, by the autonomy tolerations); the node shows
    not ready in /v1/nodes, the site Degraded; when it is back, the run finishes there."""
    edge = ApiServer().start()
    edge.add_node("edge-1", cpu="4", memory="4Gi", labels=EDGE_LABELS)
    edge.add_node("edge-2", cpu="4", memory="4Gi", labels=EDGE_LABELS)
    settings = Settings(state_dir=tmp_path / "cp", reconcile_interval_s=0.05,
                        inventory_interval_s=0.1, retry_backoff_s=0.1,
                        migration_lost_grace_s=0.2)
    fed = FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "edge"},
        "spec": {"controlPlane": {"location": "factory"}, "locations": [{"name": "factory"}]}})
    doc = {"apiVersion": "continuum/v1", "kind": "Workflow", "metadata": {"name": "sense"},
           "spec": {"tasks": [{"name": "sense", "command": ["python3", "sense.py"],
                               "constraints": {"sites": ["edge"]}}]}}
    cp = ControlPlane(settings, fed)
    cp.start()
    try:
        with TestClient(cp.app, headers=admin_headers(cp)) as client:
            r = client.post("/v1/sites", json=kube_site("edge", "kubeedge", "factory",
                                                        edge.kubeconfig()))
            assert r.status_code == 201, r.text
            wf_id = client.post("/v1/workflows", json=doc).json()["id"]
            wait_for(lambda: edge.pods(), 20, message="the Job's pod")
            pod = edge.pods()[0]
            run_id, node = pod["metadata"]["labels"]["continuum.io/run-id"], pod["spec"]["nodeName"]
            edge.run_pod(pod["metadata"]["name"])
            wait_for(lambda: client.get(f"/v1/runs/{run_id}").json()["state"] == "Running", 20,
                     message="the run to be Running")

            assert edge.set_node_ready(node, False) == []  # tolerated: not evicted
            wait_for(lambda: not client.get(f"/v1/nodes/edge/{node}").json()["ready"], 20,
                     message=f"{node} to show not ready")
            view = client.get(f"/v1/nodes/edge/{node}").json()
            assert view["conditions"][0]["reason"] == "NodeStatusUnknown"
            assert client.get("/v1/sites/edge").json()["health"] == "Degraded"
            cycles = cp.reconciler.cycles
            # many cycles, well past the 0.2 s lost-work grace period
            wait_for(lambda: cp.reconciler.cycles >= cycles + 30, 30,
                     message="30 reconcile cycles with the node offline")
            run = client.get(f"/v1/runs/{run_id}").json()
            assert run["state"] == "Running", run
            assert not [e for e in run["events"] if e["type"] == "RunMigrated"]
            assert len(edge.received_of("Job")) == 1  # nothing re-created elsewhere

            edge.set_node_ready(node, True)
            edge.finish_pod(pod["metadata"]["name"])
            wf = wait_state(client, wf_id, ("Succeeded", "Failed"), timeout=30)
            assert wf["state"] == "Succeeded", wf
    finally:
        cp.stop()
        edge.stop()
    assert not edge.rejected
