"""One workflow across the whole continuum, through the REST API of a live control plane.

Sites, all real: a device fleet (a ``continuum-agent`` on the real Mosquitto), a
Kubernetes site and a KubeEdge site on the same real cluster (deploy/dev/kube.sh; the
KubeEdge site's task goes to a kwok node labelled and tainted as a KubeEdge edge node),
and the real Slurm (deploy/dev/slurm.sh). Both cluster sites are registered with the
ServiceAccount kubeconfig of deploy/kubernetes/rbac.yaml.

The DAG, each task pinned to its site (``constraints.sites``) and node (hostname label)::

    capture (device) ──readings──┬──> inspect (kubernetes, kwok-node-3)
                                 ├──> sieve   (kubeedge, the edge node)
                                 └──> crunch  (slurm; after sieve) ──summary──┐
                                      report  (device; after inspect) <───────┘ (+ readings)

kwok runs no containers: a pod on a kwok node "runs" for ``KWOK_DURATION`` and succeeds
without executing its command, so a task on Kubernetes/KubeEdge cannot really compute an
artifact (a declared output would be missing and fail the run). The cluster tasks
therefore only consume: their Jobs carry the input's capability URL and sha256 in the
artifact wrapper, and the test runs that wrapper itself, as the container of the default
image (python:3.12-slim: no curl) would, against the live control plane. Real bytes are
computed on the device and on Slurm.

Asserted from each backend's own side: the Jobs and pods as the API server's watch
delivered them (node, tolerations, phase, Job status), Slurm's job table, the agent's
run directories and MQTT run updates, and every artifact's bytes and sha256.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch

from adapters.kubernetes import manifests as mf
from adapters.kubernetes.adapter import EDGE_ROLE
from adapters.kubernetes.kubeedge import EDGE_AUTONOMY_TOLERATIONS, EDGE_TAINT_TOLERATION
from tests.adapters.kubernetes.cluster import KubeCluster, kwok_env
from tests.adapters.kubernetes.test_artifact_wrapper import image_path
from tests.adapters.kubernetes.test_real_cluster import EDGE
from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster, live_cp  # noqa: F401
from tests.conftest import SLURM_RELEASES, AgentFactory, Mosquitto
from tests.helpers import Observer, wait_for

pytestmark = [pytest.mark.kube, pytest.mark.slurm, pytest.mark.mosquitto]

NAMESPACE = "continuum"
K8S_NODE = "kwok-node-3"
READINGS = "".join(f"{t},{(t * 37) % 101}\n" for t in range(200))
TOTAL = sum((t * 37) % 101 for t in range(200))


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class ClusterRecord:
    """Every version of the Jobs and pods Continuum makes in ``namespace``, as the API
    server's watch delivers them. Each kind is listed first and watched from that list's
    resourceVersion, so nothing created after :meth:`start` returns is missed, however
    briefly it lives (the control plane deletes a finished run's Job at once)."""

    SELECTOR = f"{mf.MANAGED_BY}=continuum"

    def __init__(self, kubeconfig: dict[str, Any], namespace: str = NAMESPACE) -> None:
        self.api = k8s_config.new_client_from_config_dict(kubeconfig)
        self.namespace = namespace
        self.versions: list[tuple[str, str, dict[str, Any]]] = []
        """``(kind, event type, object)`` in arrival order; the list's items as ADDED."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> ClusterRecord:
        core, batch = k8s.CoreV1Api(self.api), k8s.BatchV1Api(self.api)
        for kind, lister in (("Pod", core.list_namespaced_pod),
                             ("Job", batch.list_namespaced_job)):
            resp: Any = lister(self.namespace, label_selector=self.SELECTOR,
                               _preload_content=False)
            listed = json.loads(resp.data)
            with self._lock:
                self.versions += [(kind, "ADDED", o) for o in listed["items"]]
            t = threading.Thread(target=self._watch, args=(kind, lister,
                                                           listed["metadata"]["resourceVersion"]),
                                 daemon=True, name=f"record-{kind}")
            t.start()
            self._threads.append(t)
        return self

    def _watch(self, kind: str, lister: Any, rv: str) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            for ev in w.stream(lister, self.namespace, label_selector=self.SELECTOR,
                               resource_version=rv, timeout_seconds=2):
                obj = ev["raw_object"]
                rv = obj["metadata"]["resourceVersion"]
                with self._lock:
                    self.versions.append((kind, ev["type"], obj))
                if self._stop.is_set():
                    w.stop()

    def until_deleted(self, kind: str, run_id: str, timeout: float = 30.0
                      ) -> list[tuple[str, dict[str, Any]]]:
        """:meth:`of`, once its last event is DELETED (a watch is ordered, so every
        earlier version has arrived by then).

        Raises:
            AssertionError: not deleted within ``timeout`` s.
        """
        def deleted() -> list[tuple[str, dict[str, Any]]]:
            got = self.of(kind, run_id)
            return got if got and got[-1][0] == "DELETED" else []
        return wait_for(deleted, timeout, message=lambda: f"the {kind} of run {run_id} to "
                        f"be deleted; seen: {[(t, o.get('status')) for t, o in self.of(kind, run_id)]}")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self.api.close()

    def of(self, kind: str, run_id: str) -> list[tuple[str, dict[str, Any]]]:
        """``(event type, object)`` of ``kind`` labelled with ``run_id``, in order."""
        with self._lock:
            return [(typ, o) for k, typ, o in self.versions if k == kind
                    and (o["metadata"].get("labels") or {}).get(mf.LABEL_RUN) == run_id]


@pytest.fixture
def edge_node(kube_cluster: KubeCluster) -> Iterator[str]:
    """A kwok node as ``keadm join --with-edge-taint`` leaves one (edge role labels, the
    edge NoSchedule taint), arm64; deleted afterwards."""
    name = f"edge-{uuid.uuid4().hex[:6]}"
    kube_cluster.add_node(name, "cpu=4", "memory=4Gi", "arch=arm64", *EDGE)
    yield name
    kube_cluster.delete_node(name)


@pytest.fixture
def record(kube_cluster: KubeCluster) -> Iterator[ClusterRecord]:
    rec = ClusterRecord(kube_cluster.admin_kubeconfig()).start()
    yield rec
    rec.stop()


def device(name: str, source: str, **task: Any) -> dict[str, Any]:
    return {"name": name, "command": [sys.executable, "-c", source], "retries": 0,
            "resources": {"cpu": "100m", "memory": "32Mi"},
            "constraints": {"sites": ["fleet"], "tiers": ["device"]}, **task}


def kube_task(name: str, site: str, hostname: str, tiers: list[str] | None = None
              ) -> dict[str, Any]:
    """A consumer of ``readings`` on a cluster site, pinned to node ``hostname``: kwok
    ends its pod after 2 s as Succeeded."""
    return {"name": name, "retries": 0, "env": kwok_env("2s"),
            "command": ["sh", "-c", "sha256sum in/readings.csv"],
            "resources": {"cpu": "250m", "memory": "64Mi"},
            "inputs": [{"name": "readings", "path": "in/readings.csv"}],
            "constraints": {"sites": [site], "tiers": tiers or [],
                            "labels": {mf.HOSTNAME_LABEL: hostname}}}


CAPTURE = "open('readings.csv', 'w').write(" + repr(READINGS) + ")"
CRUNCH = ("import json; rows = [l.split(',') for l in open('in/readings.csv').read().split()]; "
          "json.dump({'count': len(rows), 'total': sum(int(v) for _, v in rows)}, "
          "open('summary.json', 'w'), sort_keys=True); print('crunched', len(rows))")
REPORT = ("import json, hashlib; s = json.load(open('summary.json')); "
          "raw = open('readings.csv', 'rb').read(); "
          "assert s['count'] == len(raw.splitlines()), s; "
          "open('report.txt', 'w').write(f\"{s['count']} readings, total {s['total']}, "
          "sha256 {hashlib.sha256(raw).hexdigest()}\\n\")")


@pytest.mark.parametrize("slurm", [SLURM_RELEASES[-1]], ids=lambda r: f"slurm-{r}",
                         indirect=True)  # the newest release only: one whole-continuum run
def test_one_workflow_across_device_kubernetes_kubeedge_and_slurm(
        kube_cluster: KubeCluster, edge_node: str, record: ClusterRecord, slurm: SlurmCluster,
        mosquitto: Mosquitto, agents: AgentFactory, observer: Observer,
        live_cp: LiveFactory, tmp_path: Path) -> None:  # noqa: F811
    t0 = time.monotonic()
    lcp = live_cp()
    sa = kube_cluster.sa_kubeconfig()
    for body in ({"name": "fleet", "kind": "devices", "tier": "device",
                  "config": {"broker": mosquitto.url}},
                 {"name": "k8s", "kind": "kubernetes", "tier": "cloud",
                  "config": {"kubeconfig": sa, "watchTimeout": 5}},
                 {"name": "edge", "kind": "kubeedge",
                  "config": {"kubeconfig": sa, "watchTimeout": 5}}):
        r = lcp.http.post("/v1/sites", json=body)
        assert r.status_code == 201, r.text
    assert lcp.register("hpc", slurm.config()).status_code == 201
    agents.trust(lcp.settings.state_dir)
    agent = agents.spawn("pi-continuum")
    wait_for(lambda: any(n["ready"] for n in lcp.get("/v1/nodes", params={"site": "fleet"})["items"]),
             timeout=20, message="the agent to join the fleet")

    def views() -> dict[str, dict[str, Any]]:
        """The Kubernetes and the KubeEdge site's view of the edge node, by site."""
        return {site: n for site in ("k8s", "edge")
                for n in lcp.get("/v1/nodes", params={"site": site})["items"]
                if n["name"] == edge_node}

    def edge_taint_only() -> dict[str, dict[str, Any]]:
        # a new node carries node.kubernetes.io/not-ready:NoSchedule until the node
        # lifecycle controller has seen it Ready and lifted it
        got = views()
        return got if len(got) == 2 and got["edge"]["taints"] == [] and [
            t["key"] for t in got["k8s"]["taints"]] == [EDGE_ROLE] else {}

    # the KubeEdge site sees the whole cluster: its edge node as edge (the edge taint
    # tolerated), the others as cloud; the Kubernetes site sees the edge taint
    seen = wait_for(edge_taint_only, 30, message=lambda: f"only the edge taint: {views()}")
    assert seen["edge"]["tier"] == seen["k8s"]["tier"] == "edge" and seen["edge"]["ready"]
    assert {n["name"]: n["tier"] for n in lcp.get("/v1/nodes", params={"site": "edge"})[
        "items"]}[K8S_NODE] == "cloud"

    wid = lcp.submit([
        device("capture", CAPTURE, outputs=[{"name": "readings", "path": "readings.csv"}]),
        kube_task("inspect", "k8s", K8S_NODE),
        kube_task("sieve", "edge", edge_node, tiers=["edge"]),
        {"name": "crunch", "retries": 0, "dependsOn": ["sieve"],
         "command": ["python3", "-c", CRUNCH], "resources": {"cpu": 1, "memory": "64Mi"},
         "constraints": {"sites": ["hpc"]},
         "inputs": [{"name": "readings", "path": "in/readings.csv"}],
         "outputs": [{"name": "summary", "path": "summary.json"}]},
        device("report", REPORT, dependsOn=["inspect"],
               inputs=[{"name": "summary", "path": "summary.json"},
                       {"name": "readings", "path": "readings.csv"}],
               outputs=[{"name": "report", "path": "report.txt"}]),
    ], name="continuum")
    wf = lcp.wait_workflow(wid, timeout=180)
    wall = time.monotonic() - t0
    assert wf["state"] == "Succeeded", json.dumps(wf, indent=1)[-6000:]
    runs = {r["task"]: r for r in wf["runs"]}
    assert sorted(runs) == ["capture", "crunch", "inspect", "report", "sieve"]
    assert all(r["attempt"] == 1 for r in wf["runs"]), wf["runs"]  # nothing retried
    assert {t: (r["site"], r["node"]) for t, r in runs.items()} == {
        "capture": ("fleet", "fleet/pi-continuum"), "report": ("fleet", "fleet/pi-continuum"),
        "inspect": ("k8s", f"k8s/{K8S_NODE}"), "sieve": ("edge", f"edge/{edge_node}"),
        "crunch": ("hpc", "hpc/debug")}
    # the order the DAG demands, by the backends' own times (Kubernetes keeps whole seconds)
    start = {t: datetime.fromisoformat(r["startedAt"]) for t, r in runs.items()}
    end = {t: datetime.fromisoformat(r["finishedAt"]) for t, r in runs.items()}
    for before, after in (("capture", "inspect"), ("capture", "sieve"), ("sieve", "crunch"),
                          ("crunch", "report"), ("inspect", "report")):
        assert end[before].replace(microsecond=0) <= start[after], (before, after)

    # ---- the artifacts, as the control plane keeps them
    arts = {}
    for name in ("readings", "summary", "report"):
        got = lcp.http.get(f"/v1/artifacts/{wid}/{name}")
        assert got.status_code == 200, got.text
        assert got.headers["X-Content-SHA256"] == sha256(got.content)
        arts[name] = got.content
    summary = {"count": 200, "total": TOTAL}
    assert arts["readings"].decode() == READINGS
    assert json.loads(arts["summary"]) == summary
    assert arts["report"].decode() == f"200 readings, total {TOTAL}, sha256 {sha256(READINGS)}\n"

    # ---- the device: the agent's run directories and its MQTT run updates
    for task, out, content in (("capture", "readings", arts["readings"]),
                               ("report", "report", arts["report"])):
        final = observer.wait_run("pi-continuum", runs[task]["id"], {"Succeeded"})
        assert [(o.name, o.sha256, o.size) for o in final.outputs] == [
            (out, sha256(content), len(content))]
    work = agent.state_dir / "runs" / runs["report"]["id"] / "work"
    assert (work / "summary.json").read_bytes() == arts["summary"]  # fetched from Slurm's upload
    assert (work / "readings.csv").read_bytes() == arts["readings"]
    assert f"run {runs['capture']['id']}: started pid" in agent.logs()

    # ---- Slurm's job table
    crunch = runs["crunch"]
    job = slurm.jobs_named(f"continuum-{crunch['id']}")
    assert len(job) == 1 and job[0]["job_state"] == "COMPLETED", job
    assert job[0]["partition"] == "debug" and str(job[0]["job_id"]) == crunch["handle"]["backendId"]
    assert crunch["observed"]["bytesIn"] == len(READINGS)
    assert crunch["observed"]["bytesOut"] == len(arts["summary"])
    assert "crunched 200" in lcp.get(f"/v1/runs/{crunch['id']}")["outputTail"]

    # ---- the cluster: Jobs and pods as the API server's watch delivered them
    slim_path = image_path(tmp_path, curl=False, python=True)
    for task, site, node in (("inspect", "k8s", K8S_NODE), ("sieve", "edge", edge_node)):
        run = runs[task]
        # the run is released (its Job deleted, the pod collected) once it is recorded
        jobs = record.until_deleted("Job", run["id"])
        names = {o["metadata"]["name"] for _, o in jobs}
        assert names == {run["handle"]["data"]["name"]}
        assert run["handle"]["backendId"] == f"{NAMESPACE}/{names.pop()}"
        labels = jobs[0][1]["metadata"]["labels"]
        assert (labels[mf.LABEL_SITE], labels[mf.LABEL_WORKFLOW], labels[mf.LABEL_TASK]) == (
            site, wid, task)
        # the adapter follows the pod; the run is released (its Job deleted) as soon as
        # the pod Succeeded, usually before the Job controller's batched status update
        assert not any((o.get("status") or {}).get("failed") for _, o in jobs), jobs
        pods = record.until_deleted("Pod", run["id"])
        assert {o["spec"].get("nodeName") for _, o in pods} - {None} == {node}
        assert {o["metadata"]["name"] for _, o in pods} == {pods[0][1]["metadata"]["name"]}
        assert "Succeeded" in [(o.get("status") or {}).get("phase") for _, o in pods]
        tolerations = pods[0][1]["spec"].get("tolerations") or []
        edge_tolerations = [EDGE_TAINT_TOLERATION, *EDGE_AUTONOMY_TOLERATIONS]
        if site == "edge":  # the edge taint and a disconnected edge node are tolerated
            assert all(t in tolerations for t in edge_tolerations), tolerations
        else:
            assert not any(t in tolerations for t in edge_tolerations), tolerations

        # what the pod's container would have run, with the PATH of its image (the
        # default, python:3.12-slim: no curl): the artifact wrapper fetches the input by
        # its capability URL and checks its sha256 before the task's command
        c = jobs[0][1]["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == "python:3.12-slim" and c["workingDir"] == mf.WORK_DIR
        assert c["args"] == ["sh", "-c", "sha256sum in/readings.csv"]
        script = c["command"][2]
        assert f"{sha256(READINGS)}  in/readings.csv" in script
        assert f"{lcp.url}/v1/artifacts/{wid}/readings?run={run['id']}&cap=" in script
        pod_dir = tmp_path / f"pod-{task}"
        pod_dir.mkdir()
        ran = subprocess.run([*c["command"], *c["args"]], cwd=pod_dir, capture_output=True,
                             text=True, timeout=30, env={"PATH": slim_path, "HOME": str(pod_dir)})
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines() == ["in/readings.csv: OK",
                                           f"{sha256(READINGS)}  in/readings.csv"]
    print(f"\ncontinuum workflow: 4 sites registered and the workflow Succeeded in {wall:.1f} s")
