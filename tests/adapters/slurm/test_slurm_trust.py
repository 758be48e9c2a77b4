"""Issue 12 items 2 and 3 on the real Slurm: jobs run as the mapped user, an unmapped
tenant is refused, root and SlurmUser are refused, and no site secret appears in an API
answer, a log line or the database file.

The mapped user is ``continuum-test``, a system user created here and in the cluster's
root filesystem (as an hpc-admin would create a cluster account); slurmd runs its jobs
under that uid.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from continuum.federation import FederationDocument
from continuum.model import SiteHealth
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from tests.adapters.slurm.conftest import LiveFactory, SlurmCluster
from tests.adapters.slurm.test_slurm_live import slurm_task
from tests.conftest import free_port

TEST_USER = "continuum-test"


@pytest.fixture
def test_user(slurm: SlurmCluster) -> str:
    """The ``continuum-test`` system user, created if missing (the tests run as root) here
    and, with the same uid, in the root filesystem of the cluster's release
    (``slurm.sh user``), where slurmd looks its jobs' users up."""
    slurm.sh("user", str(slurm.dir), TEST_USER)
    return TEST_USER


def test_jobs_run_as_the_mapped_user_and_unmapped_tenants_are_refused(
        slurm: SlurmCluster, live_cp: LiveFactory, test_user: str) -> None:
    lcp = live_cp()
    r = lcp.register("hpc", slurm.config(userMap=[{"tenant": "default", "user": test_user}]))
    assert r.status_code == 201, r.text
    assert r.json()["config"]["userMap"][0]["user"] == test_user
    wid = lcp.submit([slurm_task("who", ["bash", "-c", "id -un"])])
    assert lcp.wait_workflow(wid)["state"] == "Succeeded"
    run = lcp.runs(wid, "who")[0]
    job = slurm.jobs_named(f"continuum-{run['id']}")[0]
    assert job["user_name"] == test_user, job
    assert test_user in lcp.get(f"/v1/runs/{run['id']}")["outputTail"]

    r = lcp.register("hpc-lab", slurm.config(userMap=[{"tenant": "lab", "user": test_user,
                                                       "account": None}]))
    assert r.status_code == 201, r.text
    wid = lcp.submit([{**slurm_task("nobody", ["true"]),
                       "constraints": {"sites": ["hpc-lab"]}}], name="unmapped")
    assert lcp.wait_workflow(wid)["state"] == "Failed"
    run = lcp.runs(wid, "nobody")[0]
    assert "tenant 'default' has no Slurm user on site 'hpc-lab'" in run["reason"], run
    assert "userMap" in run["reason"]
    assert slurm.jobs_named(f"continuum-{run['id']}") == []


@pytest.mark.parametrize("config,loc", [
    ({"user": "root"}, ["config", "user"]),
    ({"userMap": [{"tenant": "default", "user": "root"}]}, ["config", "userMap", "0", "user"]),
    ({"slurmUser": "slurm"}, ["config", "user"]),  # the job user would be the SlurmUser
])
def test_root_and_the_slurm_user_are_refused(slurm: SlurmCluster, live_cp: LiveFactory,
                                             config: dict[str, object], loc: list[str]) -> None:
    lcp = live_cp()
    r = lcp.register("hpc", slurm.config(**config))
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc
    assert "refused" in r.json()["detail"][0]["msg"]
    assert lcp.get("/v1/sites")["items"] == []


def test_no_site_secret_in_answers_logs_or_the_database(
        slurm: SlurmCluster, live_cp: LiveFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = slurm.token(600)
    password = f"broker-pw-{uuid.uuid4().hex}"
    k8s_token = f"k8s-token-{uuid.uuid4().hex}"
    kubeconfig = (
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{free_port()}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        f"users: [{{name: u, user: {{token: {k8s_token}}}}}]\n")
    secrets = [slurm.key_b64, token, password, k8s_token]
    bodies: list[str] = []

    lcp = live_cp()
    for name, body in [
            ("hpc", {"kind": "slurm", "config": slurm.config()}),
            ("hpc-token", {"kind": "slurm", "config": slurm.config(jwtKey=None, token=token)}),
            ("fleet", {"kind": "devices", "config": {
                "broker": f"mqtt://127.0.0.1:{free_port()}", "username": "continuum",
                "password": password}}),
            ("k8s", {"kind": "kubernetes", "config": {"kubeconfig": kubeconfig}})]:
        r = lcp.http.post("/v1/sites", json={"name": name, **body})
        bodies.append(r.text)
        assert r.status_code == (422 if name == "k8s" else 201), r.text  # k8s: unreachable
    bodies.append(lcp.http.get("/v1/sites").text)
    for name in ("hpc", "hpc-token", "fleet"):
        bodies.append(lcp.http.get(f"/v1/sites/{name}").text)
    wid = lcp.submit([slurm_task("t", ["true"])])
    assert lcp.wait_workflow(wid)["state"] == "Succeeded"
    lcp.stop()

    lcp = live_cp()  # restarted: the sealed credentials open again
    assert {s["name"]: s["health"] for s in lcp.get("/v1/sites")["items"]
            if s["kind"] == "slurm"} == {"hpc": "Ready", "hpc-token": "Ready"}
    bodies.append(lcp.http.get("/v1/sites").text)
    lcp.stop()

    state = lcp.settings.state_dir
    raw = b"".join(p.read_bytes() for p in state.iterdir() if p.name.startswith("continuum.db"))
    assert b"$sealed" in raw
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        for where, text in [("an API answer", "\n".join(bodies)), ("the log", logs)]:
            assert secret not in text, f"a secret appears in {where}"
        assert secret.encode() not in raw, "a secret appears in the database file"
    assert Path(slurm.key).read_bytes() not in raw
    assert (state / "sealing.key").stat().st_mode & 0o777 == 0o600


def test_the_federation_file_may_name_the_key_file(slurm: SlurmCluster, tmp_path: Path) -> None:
    """The operator's federation file (read at start, not over the API) may give the
    jwt_key as a path on the control plane's host; the API may not (test_site_trust)."""
    config = {**slurm.config(jwtKey=None), "jwtKeyFile": slurm.key}
    doc = FederationDocument.model_validate({
        "apiVersion": "continuum/v1", "kind": "Federation", "metadata": {"name": "ops"},
        "spec": {"controlPlane": {"location": "dc"}, "locations": [{"name": "dc"}],
                 "sites": [{"name": "hpc", "kind": "slurm", "location": "dc",
                            "config": config}]}})
    cp = ControlPlane(Settings(state_dir=tmp_path / "state"), doc)
    cp.start()
    try:
        rt = cp.federation.site("hpc")
        assert rt.health == SiteHealth.Ready, rt.message
        assert rt.summary()["config"]["jwtKeyFile"] == slurm.key
    finally:
        cp.stop()
