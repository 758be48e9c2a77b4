"""The kubernetes adapter against the API-server stand-in (real client, real HTTP).

Aspects: registration (uploaded kubeconfig, a path with a context, bad config), the
connectivity check (unreachable, 401, RBAC denial naming verb/resource via
SelfSubjectAccessReview and via a 403 Status, unsupported version), inventory (allocatable,
free, GPUs, labels, taints, conditions, arch, tier), a job to success and to failure
(OOMKilled, ImagePullBackOff, Unschedulable, DeadlineExceeded), a service with its Service
deployed and deleted, submit idempotency and re-adoption by a new adapter, watch resume
after 410 Gone, cancel with Foreground propagation, logs, a workload deleted behind our back.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.base import Handle, TaskRun
from adapters.kubernetes import KubernetesAdapter
from adapters.kubernetes import manifests as mf
from adapters.kubernetes.states import POD_STATE_TABLE
from continuum.errors import AuthError, PermanentError, TransientError, UnsupportedError
from continuum.model import Node, RunState, SiteHealth, Task, Tier
from tests.adapters.kubernetes.apiserver import ApiServer
from tests.adapters.kubernetes.conftest import AdapterFactory
from tests.conftest import free_port
from tests.helpers import Wakes, wait_for


def task_run(name: str = "train", **task: Any) -> TaskRun:
    task.setdefault("command", ["python3", "-c", "print('hi')"])
    return TaskRun(run_id=f"run-{uuid.uuid4().hex[:12]}", workflow_id="wf-123abc",
                   workflow_name="demo", task=Task.model_validate({"name": name, **task}))


def node_named(adapter: KubernetesAdapter, name: str) -> Node:
    return next(n for n in adapter.inventory() if n.name == name)


def wait_state(adapter: KubernetesAdapter, h: Handle, state: RunState,
               timeout: float = 30.0) -> Any:
    def check() -> Any:
        st = adapter.status([h]).get(h.run_id)
        return st if st is not None and st.state == state else None
    return wait_for(check, timeout, message=lambda: f"run {h.run_id} to be {state}; now "
                    f"{adapter.status([h]).get(h.run_id)}")


# ---------------------------------------------------------------- registration and check


def test_inventory_nodes_resources_labels_taints_conditions(apiserver: ApiServer,
                                                             make_adapter: AdapterFactory) -> None:
    apiserver.add_node("edge-1", cpu="2", memory="4Gi", arch="arm64",
                       labels={"node-role.kubernetes.io/edge": "",
                               "continuum.io/location": "munich-floor",
                               "continuum.io/idle-watts": "3", "continuum.io/max-watts": "7"},
                       taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}])
    apiserver.add_node("big", cpu="64", memory="256Gi", labels={"continuum.io/tier": "hpc"})
    a = make_adapter()
    nodes = {n.name: n for n in a.inventory()}
    assert a.server_version == "v1.30.0"
    assert set(nodes) == {"cloud-1", "cloud-2", "edge-1", "big"}
    c1 = nodes["cloud-1"]
    assert (c1.id, c1.site, c1.tier, c1.arch) == ("k8s/cloud-1", "k8s", Tier.cloud, "x86_64")
    assert (c1.allocatable.cpu, c1.allocatable.memory, c1.allocatable.gpu) == (8.0, 32 * 2**30, 1)
    assert c1.ready and c1.runtimes == ["container"] and c1.location == "frankfurt"
    assert c1.labels["node.kubernetes.io/instance-type"] == "g4dn.2xlarge"
    assert [(c.type, c.status, c.reason) for c in c1.conditions] == [("Ready", "True", "KubeletReady")]
    e1 = nodes["edge-1"]
    assert (e1.tier, e1.arch, e1.location) == (Tier.edge, "aarch64", "munich-floor")
    assert (e1.power.idle_watts, e1.power.max_watts) == (3.0, 7.0)
    assert [(t.key, t.value, t.effect) for t in e1.taints] == [("dedicated", "ml", "NoSchedule")]
    assert nodes["big"].tier == Tier.hpc  # the continuum.io/tier label overrides
    assert a.health() == (SiteHealth.Ready, "")


def test_free_capacity_counts_running_pods_requests(apiserver: ApiServer,
                                                    make_adapter: AdapterFactory) -> None:
    a = make_adapter()
    node = node_named(a, "cloud-1")
    a.submit(task_run(resources={"cpu": 1.5, "memory": "2Gi", "gpu": 1}), node, "run-aaa111")
    free = node_named(a, "cloud-1").free
    assert free is not None
    assert (free.cpu, free.memory, free.gpu) == (6.5, 30 * 2**30, 0)


def test_kubeconfig_path_with_context(apiserver: ApiServer, make_adapter: AdapterFactory,
                                      tmp_path: Path) -> None:
    kc = apiserver.kubeconfig(context="prod")
    kc["contexts"].append({"name": "other", "context": {"cluster": "stand-in", "user": "x"}})
    kc["users"].append({"name": "x", "user": {"token": "wrong"}})
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(kc))
    a = make_adapter(kubeconfig=None, kubeconfigPath=str(path), context="prod")
    assert len(a.inventory()) == 2
    b = make_adapter(kubeconfig=None, kubeconfigPath=str(path), context="other")
    with pytest.raises(AuthError, match="401"):
        b.inventory()


@pytest.mark.parametrize(("config", "needle"), [
    ({"kubeconfig": None}, "give exactly one of kubeconfig"),
    ({"kubeconfigPath": "/nope"}, "give exactly one of kubeconfig"),
    ({"kubeconfig": None, "kubeconfigPath": "/nonexistent/kubeconfig"}, "is not a readable file"),
    ({"kubeconfig": "just: text"}, "is not a kubeconfig"),
    ({"kubeconfig": "a: [b"}, "not valid YAML"),
    ({"context": "missing"}, "config.context 'missing' is not in the kubeconfig (it has: stand-in)"),
    ({"namespace": "Bad_NS"}, "namespace"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_config_is_a_clear_permanent_error(make_adapter: AdapterFactory,
                                               config: dict[str, Any], needle: str) -> None:
    with pytest.raises(PermanentError) as e:
        make_adapter(**config)
    assert needle in str(e.value)


def test_unreachable_server_is_transient_and_names_the_url(make_adapter: AdapterFactory,
                                                           apiserver: ApiServer) -> None:
    kc = apiserver.kubeconfig()
    port = free_port()
    kc["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    a = make_adapter(kubeconfig=kc)
    with pytest.raises(TransientError) as e:
        a.inventory()
    assert f"127.0.0.1:{port}" in str(e.value) and "cannot reach the API server" in str(e.value)


def test_wrong_credentials_is_auth_error_401(apiserver: ApiServer,
                                             make_adapter: AdapterFactory) -> None:
    a = make_adapter(kubeconfig=apiserver.kubeconfig(token="not-the-token"))
    with pytest.raises(AuthError) as e:
        a.inventory()
    assert "401 Unauthorized" in str(e.value) and "make a new kubeconfig" in str(e.value)


def test_rbac_denial_names_verb_and_resource(apiserver: ApiServer,
                                             make_adapter: AdapterFactory) -> None:
    apiserver.deny |= {("create", "jobs", "batch"), ("get", "pods/log", "")}
    a = make_adapter()
    with pytest.raises(AuthError) as e:
        a.inventory()
    msg = str(e.value)
    assert "create jobs.batch in namespace 'continuum'" in msg
    assert "get pods/log in namespace 'continuum'" in msg
    assert "deploy/kubernetes/rbac.yaml" in msg
    assert any(p == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
               for _, p in apiserver.requests)


def test_403_status_from_a_call_names_verb_and_resource(apiserver: ApiServer,
                                                        make_adapter: AdapterFactory) -> None:
    a = make_adapter()
    node = node_named(a, "cloud-2")
    apiserver.deny.add(("create", "deployments", "apps"))  # revoked after the check
    with pytest.raises(AuthError) as e:
        a.submit(task_run(kind="service"), node, "run-svc403")
    assert ('cannot create resource "deployments" in API group "apps" in the namespace '
            '"continuum"') in str(e.value)


def test_unsupported_server_version(make_adapter: AdapterFactory) -> None:
    old = ApiServer(version=(1, 19)).start()
    try:
        a = make_adapter(kubeconfig=old.kubeconfig())
        with pytest.raises(UnsupportedError, match=r"v1\.19\.0.*1\.23 or newer"):
            a.inventory()
    finally:
        old.stop()


# ---------------------------------------------------------------- jobs


def test_job_runs_to_success(apiserver: ApiServer, make_adapter: AdapterFactory) -> None:
    wakes = Wakes()
    a = make_adapter(wake=wakes)
    node = node_named(a, "cloud-2")
    run = task_run(env={"MODE": "fast"}, timeout=600,
                   resources={"cpu": 0.5, "memory": "512Mi"})
    h = a.submit(run, node, run.run_id)
    assert h.data["kind"] == "Job" and h.backend_id.startswith("continuum/train-run-")
    job = apiserver.objects["jobs"][("continuum", h.data["name"])]
    pod_spec = job["spec"]["template"]["spec"]
    c = pod_spec["containers"][0]
    assert c["command"] == ["python3", "-c", "print('hi')"] and c["image"] == "python:3.12-slim"
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": str(512 * 2**20)},
                              "limits": {"memory": str(512 * 2**20)}}
    assert {"name": "MODE", "value": "fast"} in c["env"]
    expr = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"][0]
    assert expr == {"key": "kubernetes.io/hostname", "operator": "In", "values": ["cloud-2"]}
    assert pod_spec["activeDeadlineSeconds"] == 600 and job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["labels"][mf.LABEL_RUN] == run.run_id
    assert job["metadata"]["labels"][mf.LABEL_WORKFLOW] == "wf-123abc"
    assert job["metadata"]["annotations"][mf.ANN_WORKFLOW_NAME] == "demo"

    wait_state(a, h, RunState.Dispatched)
    pod = apiserver.pod_of(run.run_id)
    assert apiserver.pods(run.run_id)[0]["spec"]["nodeName"] == "cloud-2"
    apiserver.run_pod(pod)
    st = wait_state(a, h, RunState.Running)
    assert st.started_at is not None
    apiserver.logs[pod] = "\n".join(f"line {i}" for i in range(10))
    apiserver.finish_pod(pod, exit_code=0)
    st = wait_state(a, h, RunState.Succeeded)
    assert st.exit_code == 0 and st.finished_at is not None
    assert st.output_tail.endswith("line 8\nline 9")  # kept with the final state
    assert a.logs(h, tail=2) == "line 8\nline 9"
    assert wakes.count >= 3
    a.release(h)
    assert ("jobs", h.data["name"], "Background") in apiserver.deletions
    assert not apiserver.pods(run.run_id)


@pytest.mark.parametrize(("drive", "state", "needle"), [
    (lambda s, p: s.finish_pod(p, exit_code=137, reason="OOMKilled"), RunState.Failed,
     "OOMKilled (exit code 137)"),
    (lambda s, p: s.finish_pod(p, exit_code=2, message="boom"), RunState.Failed,
     "Error (exit code 2): boom"),
    (lambda s, p: s.wait_pod(p, "ImagePullBackOff", 'Back-off pulling image "nope:1"'),
     RunState.Failed, 'ImagePullBackOff: Back-off pulling image "nope:1"'),
    (lambda s, p: s.wait_pod(p, "ErrImagePull", "registry timeout"), RunState.Dispatched,
     "ErrImagePull: registry timeout"),
])
def test_job_failures_map_through_the_table(apiserver: ApiServer, make_adapter: AdapterFactory,
                                            drive: Any, state: RunState, needle: str) -> None:
    a = make_adapter()
    run = task_run()
    h = a.submit(run, node_named(a, "cloud-1"), run.run_id)
    wait_state(a, h, RunState.Dispatched)
    drive(apiserver, apiserver.pod_of(run.run_id))
    st = wait_for(lambda: (s := a.status([h]).get(h.run_id)) and needle in s.reason and s,
                  10, message=lambda: f"reason {needle!r}; got {a.status([h]).get(h.run_id)}")
    assert st.state == state


def test_unschedulable_pod_fails_the_run(apiserver: ApiServer,
                                         make_adapter: AdapterFactory) -> None:
    apiserver.add_node("tainted", labels={}, taints=[{"key": "gpu-only", "effect": "NoSchedule"}])
    a = make_adapter()
    h = a.submit(task_run(), node_named(a, "tainted"), "run-unsched1")
    st = wait_state(a, h, RunState.Failed)
    assert st.reason.startswith("Unschedulable: 0/3 nodes are available")


def test_deadline_exceeded_and_deleted_workload(apiserver: ApiServer,
                                                make_adapter: AdapterFactory) -> None:
    a = make_adapter()
    run = task_run(timeout=1)
    h = a.submit(run, node_named(a, "cloud-1"), run.run_id)
    wait_state(a, h, RunState.Dispatched)
    pod = apiserver.pod_of(run.run_id)
    apiserver.run_pod(pod)

    def deadline(p: dict[str, Any]) -> None:
        p["status"].update(phase="Failed", reason="DeadlineExceeded",
                           message="Pod was active on the node longer than the specified deadline")
    apiserver._update_pod(pod, deadline)
    st = wait_state(a, h, RunState.Failed)
    assert st.reason.startswith("DeadlineExceeded: Pod was active")

    # a job whose objects vanish behind Continuum's back is reported lost after a relist
    other = task_run()
    h2 = a.submit(other, node_named(a, "cloud-1"), other.run_id)
    wait_state(a, h2, RunState.Dispatched)
    apiserver.delete("jobs", "continuum", h2.data["name"], "Background")
    st2 = wait_state(a, h2, RunState.Failed)
    assert "deleted" in st2.reason


def test_submit_is_idempotent_and_a_new_adapter_readopts(apiserver: ApiServer,
                                                         make_adapter: AdapterFactory) -> None:
    a = make_adapter()
    node = node_named(a, "cloud-1")
    run = task_run()
    h1 = a.submit(run, node, run.run_id)
    h2 = a.submit(run, node, run.run_id)
    assert h1.backend_id == h2.backend_id and len(apiserver.objects["jobs"]) == 1
    apiserver.run_pod(apiserver.pod_of(run.run_id))
    wait_state(a, h1, RunState.Running)
    a.close()
    b = make_adapter()  # a restarted control plane, same handle
    b.inventory()  # as the reconciler's first cycle does: the check starts the watch
    restored = Handle.from_json(h1.to_json())
    wait_state(b, restored, RunState.Running)
    apiserver.finish_pod(apiserver.pod_of(run.run_id))
    wait_state(b, restored, RunState.Succeeded)


def test_name_clash_with_another_run_is_permanent(apiserver: ApiServer,
                                                  make_adapter: AdapterFactory) -> None:
    a = make_adapter()
    node = node_named(a, "cloud-1")
    run = task_run()
    a.submit(run, node, run.run_id)
    job = apiserver.objects["jobs"][("continuum", mf.object_name("train", run.run_id))]
    job["metadata"]["labels"][mf.LABEL_RUN] = "someone-else"
    with pytest.raises(PermanentError, match="belongs to run 'someone-else'"):
        a.submit(run, node, run.run_id)


def test_cancel_deletes_with_foreground_propagation(apiserver: ApiServer,
                                                    make_adapter: AdapterFactory) -> None:
    a = make_adapter()
    run = task_run()
    h = a.submit(run, node_named(a, "cloud-1"), run.run_id)
    apiserver.run_pod(apiserver.pod_of(run.run_id))
    wait_state(a, h, RunState.Running)
    a.cancel(h)
    a.cancel(h)  # idempotent: the second delete is a 404, which is fine
    assert apiserver.deletions == [("jobs", h.data["name"], "Foreground")]
    assert not apiserver.pods(run.run_id)


# ---------------------------------------------------------------- services


def test_service_deployment_and_service_deployed_then_deleted(
        apiserver: ApiServer, make_adapter: AdapterFactory) -> None:
    a = make_adapter()
    run = task_run("api", kind="service", image="nginx:1.27",
                   command=["nginx", "-g", "daemon off;"],
                   ports=[{"port": 8080, "name": "http"}, {"port": 5353, "protocol": "UDP"}])
    h = a.submit(run, node_named(a, "cloud-1"), run.run_id)
    assert h.data["kind"] == "Deployment" and h.data["service"] is True
    dep = apiserver.objects["deployments"][("continuum", h.data["name"])]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "nginx:1.27"
    assert c["ports"] == [{"containerPort": 8080, "protocol": "TCP", "name": "http"},
                          {"containerPort": 5353, "protocol": "UDP"}]
    svc = apiserver.objects["services"][("continuum", h.data["name"])]
    assert svc["spec"]["selector"] == {mf.LABEL_RUN: run.run_id, mf.LABEL_SITE: "k8s"}
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http", "udp-5353"]
    pod = apiserver.pod_of(run.run_id)
    apiserver.run_pod(pod)
    wait_state(a, h, RunState.Running)
    apiserver.crash_pod(pod, last_reason="OOMKilled", exit_code=137)
    st = wait_state(a, h, RunState.Failed)
    assert st.reason.startswith("CrashLoopBackOff: last exit: OOMKilled, exit code 137")
    a.cancel(h)
    assert ("deployments", h.data["name"], "Foreground") in apiserver.deletions
    assert ("services", h.data["name"], "Foreground") in apiserver.deletions
    assert not apiserver.objects["deployments"] and not apiserver.objects["services"]
    assert not apiserver.pods(run.run_id)


def test_service_without_ports_has_no_service(apiserver: ApiServer,
                                              make_adapter: AdapterFactory) -> None:
    a = make_adapter()
    run = task_run("worker", kind="service")
    h = a.submit(run, node_named(a, "cloud-2"), run.run_id)
    assert h.data["service"] is False and not apiserver.objects["services"]


# ---------------------------------------------------------------- watch


def test_watch_resumes_after_410_gone_by_relisting(apiserver: ApiServer,
                                                   make_adapter: AdapterFactory) -> None:
    a = make_adapter(watchTimeout=30)
    run = task_run()
    h = a.submit(run, node_named(a, "cloud-1"), run.run_id)
    wait_state(a, h, RunState.Dispatched)
    relists = a.relists
    apiserver.expire_watches()  # open watches get ERROR 410; the history is compacted
    wait_for(lambda: a.gone_count >= 1 and a.relists > relists, 10,
             message="the adapter to see 410 Gone and relist")
    opened = apiserver.watches_opened
    wait_for(lambda: apiserver.watches_opened > opened, 10, message="a new watch")
    pod = apiserver.pod_of(run.run_id)
    apiserver.run_pod(pod)  # delivered by the new watch, from the relist's version
    wait_state(a, h, RunState.Running)
    apiserver.finish_pod(pod)
    wait_state(a, h, RunState.Succeeded)
    assert a.health() == (SiteHealth.Ready, "")


def test_state_table_covers_the_reasons_the_issue_names() -> None:
    for key in ("waiting:ImagePullBackOff", "waiting:CrashLoopBackOff", "terminated:OOMKilled",
                "condition:Unschedulable", "phase:Pending", "phase:Running",
                "phase:Succeeded", "phase:Failed"):
        assert key in POD_STATE_TABLE


# ---------------------------------------------------------------- TLS and in-cluster


@pytest.fixture
def tls_server(tmp_path: Path) -> Any:
    server = ApiServer(tls_dir=tmp_path / "tls").start()
    server.add_node("tls-1")
    yield server
    server.stop()
    assert not server.rejected


def test_kubeconfig_with_cluster_ca_over_https(tls_server: ApiServer,
                                               make_adapter: AdapterFactory) -> None:
    a = make_adapter(kubeconfig=tls_server.kubeconfig())
    assert [n.name for n in a.inventory()] == ["tls-1"]
    assert a.where.startswith("https://127.0.0.1:")
    run = task_run()
    h = a.submit(run, node_named(a, "tls-1"), run.run_id)
    tls_server.run_pod(tls_server.pod_of(run.run_id))
    wait_state(a, h, RunState.Running)  # the watch streams over TLS too
    kc = tls_server.kubeconfig()
    del kc["clusters"][0]["cluster"]["certificate-authority-data"]
    with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
        make_adapter(kubeconfig=kc).inventory()


def test_in_cluster_service_account(tls_server: ApiServer, make_adapter: AdapterFactory,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.config import incluster_config

    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(tls_server.token)
    (sa / "ca.crt").write_bytes(tls_server.ca_file.read_bytes())
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    with pytest.raises(PermanentError, match="Service host/port is not set"):
        make_adapter(kubeconfig=None, inCluster=True)
    port = tls_server.url.rsplit(":", 1)[1]
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    a = make_adapter(kubeconfig=None, inCluster=True)
    assert a.where == f"https://127.0.0.1:{port} (in-cluster service account)"
    assert [n.name for n in a.inventory()] == ["tls-1"]
