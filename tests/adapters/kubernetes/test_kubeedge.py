"""The kubeedge adapter against the API-server stand-in.

Aspects: edge nodes (tier, the edge taint tolerated and so not shown), the autonomy
tolerations in every pod, an edge node going offline (its pod is not evicted, the node
shows not ready with its condition, the site Degraded, the run stays Running and says
why; then the node comes back and the run finishes) — contrasted with the plain
kubernetes adapter, whose pod the taint manager evicts; KubeEdge Device objects as
data sources (node labels, ``data_sources()``), and RBAC on devices.
"""

from __future__ import annotations

import pytest

from adapters.kubernetes import KubeEdgeAdapter
from adapters.kubernetes.kubeedge import DEVICE_LABEL_PREFIX
from continuum.errors import AuthError
from continuum.model import RunState, SiteHealth, Tier
from tests.adapters.kubernetes.apiserver import ApiServer
from tests.adapters.kubernetes.conftest import AdapterFactory
from tests.adapters.kubernetes.test_adapter import node_named, task_run, wait_state

EDGE_LABELS = {"node-role.kubernetes.io/edge": "", "node-role.kubernetes.io/agent": ""}
EDGE_TAINT = {"key": "node-role.kubernetes.io/edge", "effect": "NoSchedule"}


@pytest.fixture
def edge(apiserver: ApiServer) -> ApiServer:
    apiserver.add_node("edge-1", cpu="4", memory="4Gi", arch="arm64", labels=EDGE_LABELS,
                       taints=[EDGE_TAINT])
    apiserver.add_node("edge-2", cpu="2", memory="2Gi", arch="arm64", labels=EDGE_LABELS,
                       taints=[EDGE_TAINT])
    return apiserver


def test_edge_nodes_tier_and_taint(edge: ApiServer, make_adapter: AdapterFactory) -> None:
    a = make_adapter("kubeedge", name="edge-site")
    nodes = {n.name: n for n in a.inventory()}
    assert nodes["edge-1"].tier == Tier.edge and nodes["cloud-1"].tier == Tier.cloud
    assert nodes["edge-1"].taints == []  # tolerated by every workload of the site
    plain = make_adapter("kubernetes", name="plain")
    shown = {n.name: n for n in plain.inventory()}["edge-1"].taints
    assert [(t.key, t.effect) for t in shown] == [("node-role.kubernetes.io/edge", "NoSchedule")]
    strict = make_adapter("kubeedge", name="strict", tolerateEdgeTaint=False)
    assert {n.name: n for n in strict.inventory()}["edge-1"].taints != []


def test_pods_tolerate_disconnection_forever(edge: ApiServer,
                                             make_adapter: AdapterFactory) -> None:
    a = make_adapter("kubeedge", name="edge-site")
    run = task_run("sense", constraints={"tolerations": [{"key": "dedicated", "value": "x"}]})
    h = a.submit(run, node_named(a, "edge-1"), run.run_id)
    tol = edge.objects["jobs"][("continuum", h.data["name"])]["spec"]["template"]["spec"][
        "tolerations"]
    assert tol == [
        {"key": "dedicated", "operator": "Equal", "value": "x"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
        {"key": "node-role.kubernetes.io/edge", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert all("tolerationSeconds" not in t for t in tol)
    wait_state(a, h, RunState.Dispatched)
    assert edge.pods(run.run_id)[0]["spec"]["nodeName"] == "edge-1"


def test_edge_node_offline_no_eviction_state_shown_then_back(
        edge: ApiServer, make_adapter: AdapterFactory) -> None:
    a = make_adapter("kubeedge", name="edge-site")
    run = task_run("sense")
    h = a.submit(run, node_named(a, "edge-1"), run.run_id)
    pod = edge.pod_of(run.run_id)
    edge.run_pod(pod)
    wait_state(a, h, RunState.Running)

    evicted = edge.set_node_ready("edge-1", False)
    assert evicted == []  # the forever tolerations kept the pod
    node = node_named(a, "edge-1")
    assert not node.ready
    assert [(c.type, c.status, c.reason) for c in node.conditions] == [
        ("Ready", "Unknown", "NodeStatusUnknown")]
    health, why = a.health()
    assert health == SiteHealth.Degraded
    assert "1 of 4 nodes not ready: edge-1 (Ready=Unknown NodeStatusUnknown)" in why
    st = a.status([h])[h.run_id]
    assert st.state == RunState.Running  # not declared failed
    assert st.reason.startswith("node edge-1 is not ready (NodeStatusUnknown")
    assert edge.pod_of(run.run_id) == pod
    devices = {d["name"]: d for d in a.data_sources()}
    assert devices == {}

    edge.set_node_ready("edge-1", True)
    assert node_named(a, "edge-1").ready
    assert a.health() == (SiteHealth.Ready, "")
    assert a.status([h])[h.run_id].reason == ""
    edge.finish_pod(pod)
    wait_state(a, h, RunState.Succeeded)


def test_without_edge_tolerations_the_pod_is_evicted_and_the_run_fails(
        edge: ApiServer, make_adapter: AdapterFactory) -> None:
    a = make_adapter("kubernetes", name="plain")
    run = task_run("sense", constraints={"tolerations": [
        {"key": "node-role.kubernetes.io/edge", "operator": "Exists"}]})
    h = a.submit(run, node_named(a, "edge-2"), run.run_id)
    edge.run_pod(edge.pod_of(run.run_id))
    wait_state(a, h, RunState.Running)
    assert edge.set_node_ready("edge-2", False) != []
    st = wait_state(a, h, RunState.Failed)
    assert "was deleted before it finished" in st.reason


def test_devices_are_data_sources(edge: ApiServer, make_adapter: AdapterFactory) -> None:
    edge.add_device("thermo-01", "edge-1", model="thermometer", namespace="factory")
    edge.add_device("cam-07", "edge-2", model="camera")
    a = make_adapter("kubeedge", name="edge-site")
    assert isinstance(a, KubeEdgeAdapter)
    nodes = {n.name: n for n in a.inventory()}
    assert nodes["edge-1"].labels[DEVICE_LABEL_PREFIX + "thermo-01"] == "true"
    assert DEVICE_LABEL_PREFIX + "thermo-01" not in nodes["edge-2"].labels
    sources = {d["name"]: d for d in a.data_sources()}
    assert sources["thermo-01"] == {
        "name": "thermo-01", "namespace": "factory", "model": "thermometer",
        "protocol": "modbus", "nodeName": "edge-1", "node": "edge-site/edge-1",
        "location": "frankfurt", "online": True}
    edge.set_node_ready("edge-2", False)
    a.inventory()
    assert {d["name"]: d["online"] for d in a.data_sources()} == {"thermo-01": True,
                                                                 "cam-07": False}


def test_rbac_on_devices_is_checked(edge: ApiServer, make_adapter: AdapterFactory) -> None:
    edge.deny.add(("list", "devices", "devices.kubeedge.io"))
    with pytest.raises(AuthError, match="list devices.devices.kubeedge.io cluster-wide"):
        make_adapter("kubeedge", name="edge-site").inventory()
    assert len(make_adapter("kubernetes", name="plain").inventory()) == 4


def test_cluster_without_the_device_crd_has_no_devices(edge: ApiServer,
                                                       make_adapter: AdapterFactory) -> None:
    edge.served_crds.discard("devices")
    a = make_adapter("kubeedge", name="edge-site")
    assert isinstance(a, KubeEdgeAdapter)
    assert len(a.inventory()) == 4 and a.data_sources() == []
