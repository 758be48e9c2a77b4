"""The Slurm adapter through the REST API, against a real single-node Slurm.

Aspects: registration (inventory, metrics) and each of its errors (wrong token, a token
minted with another key, unreachable slurmrestd, unknown partition, unreadable key, bad
config, unsupported API version); the v0.0.36 fallback; a unix socket with local auth; a
job run to COMPLETED with its output; a failing job with its exit code; a timeout beyond
the partition's limit; cancel mid-run (with live logs); a job that outlives a
control-plane restart is re-adopted, not resubmitted, and a second submit of a run finds
its job; slurmrestd down, then back; drain and remove (cancelling, or leaving, the
site's jobs; removal drains, cancels a job whose submit answer was lost and waits them
out); a prologue failure explained without a shared run directory; queue waits and
placement avoiding a queued partition; one job-table read per poll, never one call per job.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from adapters.slurm.client import SlurmRestClient
from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster
from tests.conftest import free_port
from tests.helpers import wait_for

pytestmark = pytest.mark.slurm


def slurm_task(name: str, command: list[str], **kw: object) -> dict[str, object]:
    return {"name": name, "command": command, "resources": {"cpu": 1, "memory": "64Mi"},
            "constraints": {"sites": ["hpc"]}, "retries": 0, **kw}


def gate_command(gate: Path, seconds: int = 60) -> list[str]:
    """A job that says it started, then waits (up to ``seconds``) for ``gate`` to exist."""
    return ["bash", "-c", f"echo started; for i in $(seq {seconds * 10}); do "
            f"[ -e {gate} ] && break; sleep 0.1; done; echo finished"]


# ---------------------------------------------------------------- registration


def test_register_shows_partitions_as_nodes_with_metrics(slurm: SlurmCluster,
                                                         live_cp: LiveFactory) -> None:
    lcp = live_cp()
    r = lcp.register("hpc", slurm.config(partitions=["debug", "short"]))
    assert r.status_code == 201, r.text
    assert r.json()["health"] == "Ready" and r.json()["nodes"] == 2
    nodes = {n["name"]: n for n in lcp.get("/v1/nodes", params={"site": "hpc"})["items"]}
    assert set(nodes) == {"debug", "short"}
    debug = nodes["debug"]
    assert debug["id"] == "hpc/debug" and debug["tier"] == "hpc" and debug["siteKind"] == "slurm"
    assert debug["capacity"]["cpu"] >= 1 and debug["allocatable"]["memory"] > 0
    assert debug["labels"]["slurm.schedmd.com/max-time"] == "infinite"
    assert nodes["short"]["labels"]["slurm.schedmd.com/max-time"] == "10m"
    assert "queueWaitS" in debug or debug.get("queueWaitS", 0.0) == 0.0
    metrics = lcp.http.get("/metrics").text
    assert f'slurm_partition_cpus_total{{partition="debug",site="hpc"}} {debug["capacity"]["cpu"]}' \
        in metrics
    assert 'slurm_partition_jobs_pending{partition="short",site="hpc"}' in metrics
    assert 'continuum_slurm_partition_expected_queue_wait_seconds{partition="debug",site="hpc"}' \
        in metrics


@pytest.mark.parametrize("case", ["wrong-token", "expired-token", "unreachable",
                                  "unknown-partition", "missing-key", "no-credentials",
                                  "relative-workdir"])
def test_registration_errors_say_what_is_wrong(case: str, slurm: SlurmCluster,
                                               live_cp: LiveFactory, tmp_path: Path) -> None:
    def minted(life: int) -> str:
        """A real HS256 token of the cluster's key, valid for ``life`` s (past if < 0)."""
        now = int(time.time())
        return jwt.encode({"iat": now - 120, "exp": now + life, "sun": slurm.user},
                          Path(slurm.key).read_bytes(), algorithm="HS256")

    config, kind, words = {
        "wrong-token": (slurm.config(jwtKey=None, token="not-a-jwt"), "AuthError",
                        ["the token is not a valid JWT", "scontrol token"]),
        "expired-token": (slurm.config(jwtKey=None, token=minted(-60)), "AuthError",
                          ["the token expired at", "jwtKey"]),
        "unreachable": (slurm.config(url=f"http://127.0.0.1:{free_port()}"), "TransientError",
                        ["unreachable", "Is slurmrestd running"]),
        "unknown-partition": (slurm.config(partitions=["debug", "gpu-a100"]), "PermanentError",
                              ["config.partitions", "'gpu-a100'", "it has debug, short"]),
        "missing-key": (slurm.config(jwtKey=str(tmp_path / "nope.key")), "PermanentError",
                        ["jwtKey", "not a path", "jwtKeyFile"]),
        "no-credentials": (slurm.config(jwtKey=None), "PermanentError",
                           ["needs credentials", "token", "jwtKey"]),
        "relative-workdir": (slurm.config(workdir="jobs"), "PermanentError",
                             ["workdir", "absolute path"]),
    }[case]
    lcp = live_cp()
    r = lcp.register("hpc", config)
    assert r.status_code == 422, r.text
    problem = r.json()["detail"][0]
    assert problem["type"] == kind, problem
    for w in words:
        assert w in problem["msg"], problem
    assert lcp.get("/v1/sites")["items"] == []


def test_a_token_minted_with_another_key_is_an_auth_error(slurm: SlurmCluster,
                                                          live_cp: LiveFactory,
                                                          tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(b"k" * 32)
    r = live_cp().register("hpc", slurm.config(
        jwtKey=base64.b64encode(other.read_bytes()).decode()))
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "AuthError"
    assert "minted with another key" in r.json()["detail"][0]["msg"]


def test_a_token_from_scontrol_works(slurm: SlurmCluster, live_cp: LiveFactory) -> None:
    r = live_cp().register("hpc", slurm.config(jwtKey=None, token=slurm.token(600)))
    assert r.status_code == 201, r.text


# ---------------------------------------------------------------- jobs


def test_jobs_complete_and_fail_with_their_exit_codes(slurm: SlurmCluster,
                                                      live_cp: LiveFactory) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    wid = lcp.submit([
        slurm_task("ok", ["bash", "-c", "echo hello from $SLURM_JOB_ID on $(hostname)"]),
        # after "ok": a failed task fails the workflow, which would cancel "ok" if running
        slurm_task("bad", ["bash", "-c", "echo about to fail >&2; exit 3"], dependsOn=["ok"]),
    ])
    wf = lcp.wait_workflow(wid)
    assert wf["state"] == "Failed"
    ok = lcp.runs(wid, "ok")[0]
    bad = lcp.runs(wid, "bad")[0]
    assert ok["state"] == "Succeeded" and ok["exitCode"] == 0, ok
    assert ok["node"] == "hpc/debug" and ok["handle"]["data"]["partition"] == "debug"
    assert ok["startedAt"] and ok["finishedAt"]
    detail = lcp.get(f"/v1/runs/{ok['id']}")
    assert "hello from " + ok["handle"]["backendId"] in detail["outputTail"]
    assert bad["state"] == "Failed" and bad["exitCode"] == 3, bad
    assert bad["reason"] == "exited with code 3"
    assert "about to fail" in lcp.get(f"/v1/runs/{bad['id']}")["outputTail"]
    # name and comment carry the run id
    job = slurm.jobs_named(f"continuum-{ok['id']}")
    assert len(job) == 1 and f"run={ok['id']}" in job[0]["comment"]
    assert job[0]["job_state"] == "COMPLETED"


def test_cancel_mid_run_deletes_the_job(slurm: SlurmCluster, live_cp: LiveFactory,
                                        tmp_path: Path) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    wid = lcp.submit([slurm_task("long", gate_command(slurm.gate()))])
    run = lcp.wait_run(wid, "long", ("Running",))
    wait_for(lambda: "started" in lcp.get(f"/v1/runs/{run['id']}")["outputTail"], timeout=20,
             message="the running job's output file to be tailed as its live logs")
    r = lcp.http.delete(f"/v1/workflows/{wid}")
    assert r.status_code == 202
    assert lcp.wait_workflow(wid)["state"] == "Cancelled"
    assert lcp.runs(wid, "long")[0]["state"] == "Cancelled"
    wait_for(lambda: slurm.jobs_named(f"continuum-{run['id']}")[0]["job_state"] == "CANCELLED",
             timeout=30, message="slurmctld to report the job CANCELLED")


def test_a_job_outliving_a_restart_is_readopted_not_resubmitted(slurm: SlurmCluster,
                                                                live_cp: LiveFactory,
                                                                tmp_path: Path) -> None:
    gate = slurm.gate()
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    wid = lcp.submit([slurm_task("survivor", gate_command(gate))])
    before = lcp.wait_run(wid, "survivor", ("Running",))
    lcp.stop()
    lcp2 = live_cp()  # same state dir, new process state, new adapter
    assert lcp2.get("/v1/sites/hpc")["kind"] == "slurm"
    gate.touch()
    wf = lcp2.wait_workflow(wid)
    assert wf["state"] == "Succeeded", wf
    runs = lcp2.runs(wid, "survivor")
    assert len(runs) == 1 and runs[0]["id"] == before["id"]
    assert runs[0]["handle"]["backendId"] == before["handle"]["backendId"]
    assert len(slurm.jobs_named(f"continuum-{before['id']}")) == 1
    assert "finished" in lcp2.get(f"/v1/runs/{before['id']}")["outputTail"]


def test_slurmrestd_down_then_back(slurm: SlurmCluster, live_cp: LiveFactory,
                                   tmp_path: Path) -> None:
    gate = slurm.gate()
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    wid = lcp.submit([slurm_task("through-outage", gate_command(gate))])
    lcp.wait_run(wid, "through-outage", ("Running",))
    slurm.sh("stop-rest", str(slurm.dir))
    try:
        site = wait_for(lambda: (s := lcp.get("/v1/sites/hpc"))["health"] == "Unreachable" and s,
                        timeout=20, message="the site to show Unreachable")
        assert "unreachable" in site["message"]
        gate.touch()  # the job finishes while nobody can see it
        wid2 = lcp.submit([slurm_task("queued-meanwhile", ["true"])], name="wf2")
        assert lcp.workflow(wid2)["state"] == "Pending"
    finally:
        slurm.sh("start-rest", str(slurm.dir))
    wait_for(lambda: lcp.get("/v1/sites/hpc")["health"] == "Ready", timeout=20,
             message="the site to be Ready again")
    assert lcp.wait_workflow(wid)["state"] == "Succeeded"
    assert lcp.wait_workflow(wid2)["state"] == "Succeeded"


def test_slurmctld_down_then_back_is_not_mistaken_for_bad_credentials(
        slurm: SlurmCluster, live_cp: LiveFactory) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    slurm.sh("stop-ctld", str(slurm.dir))
    try:
        site = wait_for(lambda: (s := lcp.get("/v1/sites/hpc"))["health"] == "Unreachable" and s,
                        timeout=20, message="the site to show Unreachable")
        assert "slurmctld is not answering slurmrestd" in site["message"], site
        assert "credentials rejected" not in site["message"]
        wid = lcp.submit([slurm_task("after-outage", ["true"])])
    finally:
        slurm.sh("start-ctld", str(slurm.dir))
    wait_for(lambda: lcp.get("/v1/sites/hpc")["health"] == "Ready", timeout=30,
             message="the site to be Ready again")
    assert lcp.wait_workflow(wid)["state"] == "Succeeded"


def test_one_job_table_read_per_poll_never_one_call_per_job(slurm: SlurmCluster,
                                                            live_cp: LiveFactory) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config(pollInterval=0.5)).status_code == 201
    wid = lcp.submit([slurm_task(f"t{i}", ["sleep", "1"], resources={"cpu": "100m",
                                                                   "memory": "16Mi"})
                      for i in range(6)])
    assert lcp.wait_workflow(wid)["state"] == "Succeeded"
    adapter = lcp.cp.federation.get_adapter("hpc")
    paths = adapter.client.requests_by_path  # type: ignore[union-attr]
    dialect = adapter.client.dialect  # type: ignore[union-attr]
    per_job = [p for p in paths if p.startswith("/slurm/") and "/job/" in p
               and p != dialect.path("job/submit")]  # (slurmdb reads are accounting's)
    assert not per_job, paths
    assert paths[dialect.path("job/submit")] == 6
    assert paths[dialect.path("jobs")] <= lcp.cp.reconciler.cycles


# ---------------------------------------------------------------- drain and remove


def test_drain_stops_new_work_and_resume_restarts_it(slurm: SlurmCluster,
                                                     live_cp: LiveFactory) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    r = lcp.http.post("/v1/sites/hpc/drain")
    assert r.status_code == 200 and r.json()["health"] == "Draining"
    wid = lcp.submit([slurm_task("waits", ["true"])])
    wait_for(lambda: "unschedulable" in next(t for t in lcp.workflow(wid)["tasks"])["reason"],
             timeout=20, message="the task to be unschedulable while the site drains")
    assert lcp.runs(wid) == []
    assert lcp.http.post("/v1/sites/hpc/resume").json()["health"] == "Ready"
    assert lcp.wait_workflow(wid)["state"] == "Succeeded"
    assert lcp.http.post("/v1/sites/nowhere/drain").status_code == 404


@pytest.mark.parametrize("mode", ["cancel", "leave"])
def test_remove_cancels_or_leaves_the_jobs(mode: str, slurm: SlurmCluster, live_cp: LiveFactory,
                                           tmp_path: Path) -> None:
    gate = slurm.gate()
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    wid = lcp.submit([slurm_task("victim", gate_command(gate))])
    run = lcp.wait_run(wid, "victim", ("Running",))
    r = lcp.http.delete("/v1/sites/hpc", params={"runs": mode})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {"site": "hpc", "runs": mode,
                    "cancelled": [run["id"]] if mode == "cancel" else [],
                    "left": [run["id"]] if mode == "leave" else []}
    assert lcp.get("/v1/sites")["items"] == []
    assert not [line for line in lcp.http.get("/metrics").text.splitlines()
                if line.startswith("slurm_partition") and 'site="hpc"' in line]
    assert lcp.wait_workflow(wid)["state"] == "Failed"  # no other site to retry on
    assert "site 'hpc' was removed" in lcp.runs(wid, "victim")[0]["reason"]
    name = f"continuum-{run['id']}"
    if mode == "cancel":
        wait_for(lambda: slurm.jobs_named(name)[0]["job_state"] == "CANCELLED", timeout=30,
                 message="the job to be cancelled")
    else:
        assert slurm.jobs_named(name)[0]["job_state"] == "RUNNING"
        gate.touch()
        wait_for(lambda: slurm.jobs_named(name)[0]["job_state"] == "COMPLETED", timeout=30,
                 message="the job left running to complete")


# ---------------------------------------------------------------- API versions


def test_falls_back_to_the_oldest_version_the_server_offers(slurm: SlurmCluster,
                                                            live_cp: LiveFactory) -> None:
    """A slurmrestd serving only its release's oldest version: v0.0.36 (22.05, the legacy
    family) or its oldest data_parser (v0.0.40 on 24.11, v0.0.42 on 26.05)."""
    oldest = slurm.env["SLURM_DATA_PARSERS"].split(",")[-1]
    legacy = slurm.api == "v0.0.38"
    version = "v0.0.36" if legacy else oldest
    port = free_port()
    slurm.sh("start-rest", str(slurm.dir), "old", str(port),
             "openapi/v0.0.36" if legacy else f"data_parser/{oldest}")
    try:
        lcp = live_cp()
        r = lcp.register("old-hpc", slurm.config(url=f"http://127.0.0.1:{port}"))
        assert r.status_code == 201, r.text
        adapter = lcp.cp.federation.get_adapter("old-hpc")
        assert adapter.client.version == version  # type: ignore[union-attr]
        wid = lcp.submit([{**slurm_task("old", ["bash", "-c", "exit 4"]),
                           "constraints": {"sites": ["old-hpc"]}}])
        assert lcp.wait_workflow(wid)["state"] == "Failed"
        run = lcp.runs(wid, "old")[0]
        assert run["exitCode"] == 4 and run["reason"] == "exited with code 4"
        assert all(f"/{version}/" in p or p in SlurmRestClient.SPEC_PATHS
                   for p in adapter.client.requests_by_path)  # type: ignore[union-attr]
    finally:
        slurm.sh("stop-rest", str(slurm.dir), "old")


def test_an_unsupported_api_version_is_refused_by_name(live_cp: LiveFactory) -> None:
    """A stand-in for a slurmrestd of Slurm 23.02 (v0.0.39 only, a data_parser version
    Continuum does not speak): the one HTTP seam."""
    body = json.dumps({"paths": {"/slurm/v0.0.39/ping": {}, "/slurm/v0.0.39/jobs": {},
                                 "/slurm/v0.0.39/job/submit": {}}}).encode()

    class Newer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/openapi" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Newer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = live_cp().register("new-hpc", {"url": f"http://127.0.0.1:{srv.server_address[1]}",
                                           "user": "u", "token": "t", "workdir": "/tmp"})
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.status_code == 422
    problem = r.json()["detail"][0]
    assert problem["type"] == "UnsupportedError"
    assert "offers OpenAPI v0.0.39" in problem["msg"] and "v0.0.38" in problem["msg"]
    assert "v0.0.40" in problem["msg"]  # what it speaks, newest first


# ---------------------------------------------------------------- queue waits


def test_a_queued_partition_reports_its_wait_and_placement_avoids_it(
        slurm: SlurmCluster, live_cp: LiveFactory) -> None:
    gate = slurm.gate()
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config(partitions=["debug", "short"])).status_code == 201
    cpus = int(lcp.get("/v1/nodes/hpc/debug")["capacity"]["cpu"])
    on_debug = {"labels": {"slurm.schedmd.com/partition": "debug"}}
    wid = lcp.submit([{**slurm_task(f"block{i}", gate_command(gate)), "constraints": on_debug}
                      for i in range(cpus + 1)], name="blockers")
    try:
        def queued() -> dict[str, object] | None:
            n = lcp.get("/v1/nodes/hpc/debug")
            lab = n["labels"]
            return n if (lab["slurm.schedmd.com/jobs-running"] == str(cpus)
                         and lab["slurm.schedmd.com/jobs-pending"] == "1"
                         and n["queueWaitS"] > 0.5) else None

        node = wait_for(queued, timeout=30, message=lambda: f"debug to run {cpus} jobs, queue 1 "
                        f"and show its wait: {lcp.get('/v1/nodes/hpc/debug')}")
        assert node["utilisation"] == 1.0
        metrics = lcp.http.get("/metrics").text
        assert 'slurm_partition_jobs_pending{partition="debug",site="hpc"} 1.0' in metrics
        assert f'slurm_partition_cpus_allocated{{partition="debug",site="hpc"}} {float(cpus)}' \
            in metrics
        wid2 = lcp.submit([slurm_task("next", ["true"])], name="next")
        run = lcp.wait_run(wid2, "next", ("Dispatched", "Running", "Succeeded"))
        assert run["node"] == "hpc/short", run["placement"]
        assert run["placement"]["predicted"]["queueWaitS"] < node["queueWaitS"]
    finally:
        gate.touch()
    assert lcp.wait_workflow(wid)["state"] == "Succeeded"
    assert lcp.wait_workflow(wid2)["state"] == "Succeeded"


def test_unix_socket_with_local_auth_needs_no_token(slurm: SlurmCluster,
                                                    live_cp: LiveFactory, tmp_path: Path) -> None:
    """A socket is a path on the control plane's host: the operator's federation file may
    name it, the API may not (in rest_auth/local the jobs' user is not the userMap's)."""
    sock = slurm.dir / "rest-local" / "slurmrestd.sock"
    slurm.sh("start-rest", str(slurm.dir), "local", f"unix:{sock}",
             "openapi/v0.0.38" if slurm.api == "v0.0.38" else "")  # "": every version served
    config = {"socket": str(sock), "user": slurm.user, "slurmUser": "root",
              "partitions": ["debug"], "workdir": slurm.workdir, "pollInterval": 0.2}
    fed = tmp_path / "federation.yaml"
    fed.write_text(json.dumps({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "ops"},
        "spec": {"controlPlane": {"location": "dc"}, "locations": [{"name": "dc"}],
                 "sites": [{"name": "sock-hpc", "kind": "slurm", "config": config}]}}))
    try:
        lcp = live_cp(federation=fed)
        r = lcp.register("sock-api", config)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["config", "socket"]
        assert lcp.get("/v1/sites/sock-hpc")["health"] == "Ready"
        wid = lcp.submit([{**slurm_task("local", ["bash", "-c", "echo via socket"]),
                           "constraints": {"sites": ["sock-hpc"]}}])
        assert lcp.wait_workflow(wid)["state"] == "Succeeded"
        run = lcp.runs(wid, "local")[0]
        assert "via socket" in lcp.get(f"/v1/runs/{run['id']}")["outputTail"]
        assert slurm.jobs_named(f"continuum-{run['id']}")[0]["user_name"] == slurm.user
    finally:
        slurm.sh("stop-rest", str(slurm.dir), "local")


def test_a_timeout_beyond_the_partitions_time_limit_fails_the_run_saying_so(
        slurm: SlurmCluster, live_cp: LiveFactory) -> None:
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config(partitions=["short"])).status_code == 201
    wid = lcp.submit([slurm_task("too-long", ["true"], timeout="20m")])
    assert lcp.wait_workflow(wid)["state"] == "Failed"
    run = lcp.runs(wid, "too-long")[0]
    assert "needs 20 min but partition 'short' allows at most 10 min" in run["reason"], run
    assert slurm.jobs_named(f"continuum-{run['id']}") == []


def test_a_second_submit_by_a_new_adapter_finds_the_job_instead_of_submitting(
        slurm: SlurmCluster, tmp_path: Path) -> None:
    """The control plane died between submitting and recording the handle: the next
    process submits the same run again and must get the job that already exists."""
    from adapters.base import AdapterContext, TaskRun
    from adapters.slurm import SlurmAdapter
    from continuum.model import SiteSpec, Task

    site = SiteSpec.model_validate({"name": "hpc", "kind": "slurm", "config": slurm.config()})
    task = Task.model_validate({"name": "once", "command": ["true"]})
    run = TaskRun(run_id=f"run-{uuid.uuid4().hex[:12]}", workflow_id="wf-x",
                  workflow_name="x", task=task)
    first = SlurmAdapter(site, AdapterContext(artifacts=None, state_dir=tmp_path))  # type: ignore[arg-type]
    node = first.inventory()[0]
    h1 = first.submit(run, node, run.run_id)
    first.close()
    second = SlurmAdapter(site, AdapterContext(artifacts=None, state_dir=tmp_path))  # type: ignore[arg-type]
    node = second.inventory()[0]  # a new process reads the job table first
    h2 = second.submit(run, node, run.run_id)
    assert h2.backend_id == h1.backend_id
    assert second.client.requests_by_path.get(second.client.dialect.path("job/submit")) is None  # type: ignore[union-attr]
    assert len(slurm.jobs_named(f"continuum-{run.run_id}")) == 1
    second.close()


def test_a_submit_whose_answer_was_lost_is_not_submitted_twice(slurm: SlurmCluster,
                                                               tmp_path: Path) -> None:
    """slurmctld took the job but the answer never arrived (a timeout): the reconciler's
    retry within the same process, before any scheduled job-table read, must find that job
    instead of submitting a second one."""
    from adapters.base import AdapterContext, TaskRun
    from adapters.slurm import SlurmAdapter
    from continuum.errors import TransientError
    from continuum.model import SiteSpec, Task

    site = SiteSpec.model_validate({"name": "hpc", "kind": "slurm",
                                    "config": slurm.config(pollInterval=3600)})
    task = Task.model_validate({"name": "once", "command": ["true"]})
    run = TaskRun(run_id=f"run-{uuid.uuid4().hex[:12]}", workflow_id="wf-x",
                  workflow_name="x", task=task)
    a = SlurmAdapter(site, AdapterContext(artifacts=None, state_dir=tmp_path))  # type: ignore[arg-type]
    node = a.inventory()[0]
    real_submit = a.client.submit
    taken: list[int] = []

    def submit_then_lose_the_answer(*args: Any, **kw: Any) -> int:
        taken.append(real_submit(*args, **kw))
        raise TransientError("slurmrestd did not answer POST job/submit within 10 s")

    a.client.submit = submit_then_lose_the_answer  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        a.submit(run, node, run.run_id)
    a.client.submit = real_submit  # type: ignore[method-assign]
    h = a.submit(run, node, run.run_id)
    assert h.backend_id == str(taken[0])
    assert len(slurm.jobs_named(f"continuum-{run.run_id}")) == 1
    a.close()


def test_a_job_slurmctld_forgot_ends_as_its_exit_file_says(slurm: SlurmCluster,
                                                           tmp_path: Path) -> None:
    """slurmctld purges finished jobs after MinJobAge; a control plane that was down that
    long finds them gone. The batch script's exit file then tells success from failure
    (instead of failing — and re-running — every such job)."""
    from adapters.base import AdapterContext, TaskRun
    from adapters.slurm import SlurmAdapter
    from continuum.model import RunState, SiteSpec, Task

    site = SiteSpec.model_validate({"name": "hpc", "kind": "slurm", "config": slurm.config()})
    a = SlurmAdapter(site, AdapterContext(artifacts=None, state_dir=tmp_path))  # type: ignore[arg-type]
    node = a.inventory()[0]
    handles = {}
    for name, command in (("ok", ["true"]), ("bad", ["sh", "-c", "exit 3"])):
        run = TaskRun(run_id=f"run-{uuid.uuid4().hex[:12]}", workflow_id="wf-x",
                      workflow_name="x", task=Task.model_validate({"name": name,
                                                                   "command": command}))
        handles[name] = a.submit(run, node, run.run_id)
    wait_for(lambda: all(s.state.terminal for s in a.status(list(handles.values())).values())
             and len(a.status(list(handles.values()))) == 2, 60, message="both jobs ended")
    ours = {int(h.backend_id) for h in handles.values()}
    real_table = a.client.job_table
    a.client.job_table = lambda *args, **kw: ([  # type: ignore[method-assign]
        j for j in (real_table(0)[0] or []) if int(j["job_id"]) not in ours], None)  # purged
    a._refresh_jobs(force=True)  # the next status() reads the purged table
    # (a job missing from a table read within 1 s of its submission may just be new)
    st = wait_for(lambda: (r := a.status(list(handles.values()))) and len(r) == 2 and r, 10,
                  message="both runs' end states from their exit files")
    assert st[handles["ok"].run_id].state == RunState.Succeeded
    bad = st[handles["bad"].run_id]
    assert (bad.state, bad.exit_code, bad.reason) == (RunState.Failed, 3, "exited with code 3")
    a.close()


def test_remove_drains_cancels_and_waits_out_even_a_job_whose_submit_answer_was_lost(
        slurm: SlurmCluster, live_cp: LiveFactory) -> None:
    """DELETE arrives while a submit is in flight and slurmctld takes that job but its
    answer is lost: the removal drains the site, cancels the running jobs and that one (the
    run has no handle yet), and waits them out — slurmctld holds none of them pending or
    running once the DELETE has answered."""
    from continuum.errors import TransientError

    gate = slurm.gate()
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config()).status_code == 201
    wid = lcp.submit([slurm_task("long1", gate_command(gate)),
                      slurm_task("long2", gate_command(gate))])
    for name in ("long1", "long2"):
        lcp.wait_run(wid, name, ("Dispatched", "Running"))
    adapter = lcp.cp.federation.get_adapter("hpc")
    real_submit = adapter.client.submit  # type: ignore[attr-defined]
    answer: dict[str, Any] = {}

    def submit_while_the_site_is_removed(*args: Any, **kw: Any) -> int:
        real_submit(*args, **kw)  # slurmctld takes the job ...
        threading.Thread(target=lambda: answer.update(
            r=lcp.http.delete("/v1/sites/hpc", timeout=90)), daemon=True).start()
        wait_for(lambda: lcp.cp.reconciler._requests, timeout=10,
                 message="the DELETE to reach the reconciler")
        raise TransientError("slurmrestd did not answer POST job/submit in time")  # ... lost

    adapter.client.submit = submit_while_the_site_is_removed  # type: ignore[attr-defined]
    late_wid = lcp.submit([slurm_task("late", ["sleep", "300"])], name="late")
    wait_for(lambda: "r" in answer, timeout=90, message="the DELETE to answer")
    r = answer["r"]
    assert r.status_code == 200, r.text
    ids = {lcp.runs(wid, "long1")[0]["id"], lcp.runs(wid, "long2")[0]["id"],
           lcp.runs(late_wid, "late")[0]["id"]}
    assert set(r.json()["cancelled"]) == ids
    names = {f"continuum-{i}" for i in ids}
    ours = [j for j in slurm.jobs() if j.get("name") in names]
    assert len(ours) == 3, ours
    assert [(j["name"], j["job_state"]) for j in ours
            if j["job_state"] not in ("CANCELLED", "COMPLETED", "FAILED")] == []
    assert lcp.get("/v1/sites")["items"] == []


def test_a_failed_input_is_explained_when_the_run_directory_is_not_shared(
        slurm: SlurmCluster, live_cp: LiveFactory) -> None:
    """sharedWorkdir: false — the control plane never reads the run directory; the batch
    script puts the prologue's reason in its job's comment, without the input's URL (it
    carries a capability)."""
    gate = slurm.gate()
    lcp = live_cp()
    assert lcp.register("hpc", slurm.config(sharedWorkdir=False)).status_code == 201
    wid = lcp.submit([
        slurm_task("produce", [*gate_command(gate)[:2], gate_command(gate)[2] + "; echo data > d.txt"],
                   outputs=[{"name": "d", "path": "d.txt"}]),
        slurm_task("consume", ["cat", "in.txt"], dependsOn=["produce"],
                   inputs=[{"name": "d", "path": "in.txt"}]),
    ])
    lcp.wait_run(wid, "produce", ("Running",))
    assert lcp.http.post("/v1/sites/hpc/drain").status_code == 200  # consume waits for us
    gate.touch()
    lcp.wait_run(wid, "produce", ("Succeeded",))
    stored = lcp.cp.artifacts.path(wid, "d")
    assert stored is not None
    stored.write_bytes(b"tampered\n")  # the input no longer matches its recorded sha256
    assert lcp.http.post("/v1/sites/hpc/resume").status_code == 200
    wf = lcp.wait_workflow(wid)
    assert wf["state"] == "Failed"
    run = lcp.get(f"/v1/runs/{lcp.runs(wid, 'consume')[0]['id']}")
    assert run["exitCode"] == 97
    assert run["reason"].startswith("input d: sha256 mismatch (expected "), run["reason"]
    assert "cap=" not in run["reason"]
    job = slurm.jobs_named(f"continuum-{run['id']}")[0]
    assert job["comment"].endswith(' | continuum: ' + run["reason"])
