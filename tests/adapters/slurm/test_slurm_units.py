"""Slurm adapter pieces that need no cluster: the state table, exit codes, hostlists,
config errors, JWT minting and refresh, and the batch script run by bash against a real
HTTP artifact server (prologue fetch + sha256 check, epilogue upload, their failures).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import jwt
import pytest

from adapters.base import AdapterContext, ArtifactIn, ArtifactOut, TaskRun
from adapters.slurm.adapter import (
    JOB_STATE_TABLE,
    SlurmAdapter,
    SlurmConfig,
    UserMapping,
    _expand,
    _gpus,
    decode_exit,
)
from adapters.slurm.client import TokenSource
from adapters.slurm.script import (
    EXIT_INPUT,
    EXIT_OUTPUT,
    STATUS_FILE,
    batch_script,
    job_description,
    paths,
    run_id_of,
)
from continuum.errors import PermanentError
from continuum.model import RunState, SiteSpec, Task
from tests.helpers import ArtifactServer

# The job state codes of `squeue --help` / squeue(1) "JOB STATE CODES" (Slurm 22.05),
# base states and the state flags job_state_string() may return instead.
SLURM_22_05_JOB_STATES = [
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "CONFIGURING", "COMPLETING", "DEADLINE", "FAILED",
    "NODE_FAIL", "OUT_OF_MEMORY", "PENDING", "PREEMPTED", "RUNNING", "RESV_DEL_HOLD",
    "REQUEUE_FED", "REQUEUE_HOLD", "REQUEUED", "RESIZING", "REVOKED", "SIGNALING",
    "SPECIAL_EXIT", "STAGE_OUT", "STOPPED", "SUSPENDED", "TIMEOUT",
]


def test_every_slurm_job_state_has_a_run_state() -> None:
    missing = [s for s in SLURM_22_05_JOB_STATES if s not in JOB_STATE_TABLE]
    assert missing == []


@pytest.mark.parametrize("state,run_state", [
    ("PENDING", RunState.Dispatched), ("RUNNING", RunState.Running),
    ("COMPLETING", RunState.Running), ("COMPLETED", RunState.Succeeded),
    ("FAILED", RunState.Failed), ("TIMEOUT", RunState.Failed),
    ("OUT_OF_MEMORY", RunState.Failed), ("CANCELLED", RunState.Cancelled),
    ("SUSPENDED", RunState.Running), ("REQUEUED", RunState.Dispatched),
])
def test_state_table(state: str, run_state: RunState) -> None:
    assert JOB_STATE_TABLE[state] == run_state


@pytest.mark.parametrize("raw,code,reason", [
    (0, 0, ""), (768, 3, ""), (256 * 255, 255, ""), (9, 137, "killed by signal 9"),
    (15, 143, "killed by signal 15"), (None, None, ""),
    ({"status": "FAILED", "return_code": 2}, 2, ""),
])
def test_decode_exit(raw: object, code: int | None, reason: str) -> None:
    assert decode_exit(raw) == (code, reason)


def test_hostlists_and_gres() -> None:
    known = {f"n{i:02d}": {} for i in range(1, 11)} | {"gpu1": {}}
    assert _expand("n[01-03,07],gpu1", known) == ["n01", "n02", "n03", "n07", "gpu1"]
    assert _expand("localhost", {"localhost": {}}) == ["localhost"]
    assert _gpus("gpu:a100:4(S:0-1),mps:100") == 4
    assert _gpus("gpu:2") == 2 and _gpus("") == 0


def test_run_id_from_comment_or_name() -> None:
    assert run_id_of({"comment": "continuum run=run-1 workflow=wf", "name": "x"}) == "run-1"
    assert run_id_of({"comment": "", "name": "continuum-run-2"}) == "run-2"
    assert run_id_of({"comment": "someone else's", "name": "sim"}) is None


@pytest.mark.parametrize("config,words", [
    ({"user": "u", "workdir": "/w"}, ["exactly one of 'url'", "'socket'"]),
    ({"url": "ftp://x", "user": "u", "workdir": "/w", "token": "t"}, ["url", "http://host:port"]),
    ({"url": "http://x:1", "user": "u", "workdir": "/w", "token": "t",
      "jwtKey": "a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleSE="},
     ["at most one of 'token' and 'jwtKey'"]),
    ({"url": "http://x:1", "user": "u", "workdir": "/w", "token": "t", "partition": ["a"]},
     ["partition", "Extra inputs"]),
    ({"url": "http://x:1", "workdir": "/w", "token": "t"}, ["user", "Field required"]),
])
def test_config_errors_name_the_field(config: dict[str, object], words: list[str],
                                      tmp_path: Path) -> None:
    site = SiteSpec.model_validate({"name": "hpc", "kind": "slurm", "config": config})
    with pytest.raises(PermanentError) as e:
        SlurmAdapter(site, AdapterContext(artifacts=None, state_dir=tmp_path))  # type: ignore[arg-type]
    for w in words:
        assert w in str(e.value)


def test_minted_tokens_carry_the_claims_and_are_refreshed_before_expiry() -> None:
    now = [1_000_000.0]
    key = b"k" * 32
    src = TokenSource("alice", key=key, lifetime_s=100, clock=lambda: now[0])
    t1 = src.token()
    claims = jwt.decode(t1, key, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"iat": 1_000_000, "exp": 1_000_100, "sun": "alice"}
    now[0] += 70  # 30 s left: still above the 20 % refresh margin
    assert src.token() == t1 and src.minted == 1
    now[0] += 15  # 15 s left: below 20 s, minted again
    t2 = src.token()
    assert t2 != t1 and src.minted == 2
    assert jwt.decode(t2, key, algorithms=["HS256"], options={"verify_exp": False})["exp"] == 1_000_185
    assert TokenSource("bob", token="fixed").token() == "fixed"


# ---------------------------------------------------------------- the batch script


def _run(tmp_path: Path, task: dict[str, object], inputs: list[ArtifactIn],
         outputs: list[ArtifactOut]) -> tuple[int, Path, str]:
    run = TaskRun(run_id="run-x1", workflow_id="wf-1", workflow_name="w",
                  task=Task.model_validate({"name": "t", **task}), inputs=inputs, outputs=outputs)
    jp = paths(str(tmp_path), run.run_id)
    script = tmp_path / "job.sh"
    script.write_text(batch_script(run, jp))
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    return p.returncode, Path(jp.run_dir), p.stdout + p.stderr


@pytest.fixture
def server() -> ArtifactServer:
    s = ArtifactServer().start()
    yield s  # type: ignore[misc]
    s.stop()


def test_script_fetches_runs_and_uploads(tmp_path: Path, server: ArtifactServer) -> None:
    data = b"hello it's 'quoted' $HOME\n"
    get = server.add("a/data", data)
    rc, run_dir, out = _run(
        tmp_path,
        {"script": {"interpreter": ["bash"], "source": "tr a-z A-Z < in/d > out.txt\necho ran"}},
        [ArtifactIn(name="data", path="in/d", url=get.url, sha256=get.sha256, size=len(data))],
        [ArtifactOut(name="up", path="out.txt", url=server.url("upload/up?run=run-x1"))])
    assert rc == 0, out
    assert "ran" in out
    assert server.uploads["/upload/up"] == data.upper()
    assert not (run_dir / STATUS_FILE).exists()


def test_script_rejects_an_input_with_the_wrong_digest(tmp_path: Path,
                                                       server: ArtifactServer) -> None:
    get = server.add("d", b"tampered")
    rc, run_dir, _ = _run(tmp_path, {"command": ["true"]},
                          [ArtifactIn(name="d", path="d", url=get.url,
                                      sha256=hashlib.sha256(b"original").hexdigest(), size=8)], [])
    assert rc == EXIT_INPUT
    assert "sha256 mismatch" in (run_dir / STATUS_FILE).read_text()
    assert not (run_dir / "d").exists()


def test_script_reports_a_missing_output_and_a_failed_upload(tmp_path: Path,
                                                             server: ArtifactServer) -> None:
    rc, run_dir, _ = _run(tmp_path, {"command": ["true"]}, [],
                          [ArtifactOut(name="o", path="nothing.txt", url=server.url("upload/o"))])
    assert rc == EXIT_OUTPUT
    assert "did not write" in (run_dir / STATUS_FILE).read_text()
    server.fail_puts = 10
    rc, run_dir, _ = _run(tmp_path, {"command": ["touch", "x"]}, [],
                          [ArtifactOut(name="o", path="x", url=server.url("upload/o"))])
    assert rc == EXIT_OUTPUT
    assert "upload to" in (run_dir / STATUS_FILE).read_text()


def test_script_keeps_the_commands_exit_code_and_skips_uploads(tmp_path: Path,
                                                               server: ArtifactServer) -> None:
    rc, _, _ = _run(tmp_path, {"command": ["bash", "-c", "touch x; exit 5"]}, [],
                    [ArtifactOut(name="o", path="x", url=server.url("upload/o"))])
    assert rc == 5 and server.uploads == {}


def test_job_description_units() -> None:
    task = Task.model_validate({"name": "t", "command": ["true"], "timeout": "90s",
                                "resources": {"cpu": "1500m", "memory": "100Mi", "gpu": 2},
                                "env": {"A": "1"}})
    run = TaskRun(run_id="run-9", workflow_id="wf-9", workflow_name="w", task=task)
    job = job_description(run, paths("/scratch", "run-9"), partition="gpu",
                          base_env={"PATH": "/bin"}, time_limit_min=2)
    assert job["cpus_per_task"] == 2 and job["memory_per_node"] == 100
    assert job["time_limit"] == 2 and job["tres_per_node"] == "gres:gpu:2"
    assert job["name"] == "continuum-run-9" and "run=run-9" in str(job["comment"])
    assert job["standard_output"] == "/scratch/continuum-run-9.out"
    assert job["environment"] == {"PATH": "/bin", "A": "1", "CONTINUUM_RUN_ID": "run-9",
                                  "CONTINUUM_WORKFLOW_ID": "wf-9", "CONTINUUM_TASK": "t"}


def test_user_mapping_account_qos_reservation() -> None:
    key = "a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleSE="
    base = {"url": "http://x:1", "user": "svc", "workdir": "/w", "jwtKey": key}
    cfg = SlurmConfig.model_validate({**base, "account": "shared"})
    assert cfg.mapping("anyone") == UserMapping(tenant="*", user="svc", account="shared")
    cfg = SlurmConfig.model_validate({**base, "userMap": [
        {"tenant": "lab", "user": "alice", "account": "proj1", "qos": "normal",
         "reservation": "maint"}]})
    m = cfg.mapping("lab")
    assert m is not None and (m.user, m.account, m.qos, m.reservation) == (
        "alice", "proj1", "normal", "maint")
    assert cfg.mapping("other") is None  # no "*" entry: other tenants are refused
    task = Task.model_validate({"name": "t", "command": ["true"]})
    run = TaskRun(run_id="r", workflow_id="w", workflow_name="w", task=task, tenant="lab")
    job = job_description(run, paths("/w", "r"), partition="p", base_env={},
                          account=m.account, qos=m.qos, reservation=m.reservation)
    assert (job["account"], job["qos"], job["reservation"]) == ("proj1", "normal", "maint")
    with pytest.raises(ValueError, match="a fixed 'token' acts as 'user' only"):
        SlurmConfig.model_validate({**base, "jwtKey": None, "token": "t",
                                    "userMap": [{"tenant": "lab", "user": "alice"}]})
    with pytest.raises(ValueError, match="more than once"):
        SlurmConfig.model_validate({**base, "userMap": [{"tenant": "a", "user": "x"},
                                                        {"tenant": "a", "user": "y"}]})


def test_apptainer_wraps_the_command(tmp_path: Path) -> None:
    task = Task.model_validate({"name": "t", "command": ["python3", "-V"],
                                "image": "python:3.11-slim", "resources": {"gpu": 1}})
    run = TaskRun(run_id="r", workflow_id="w", workflow_name="w", task=task)
    text = batch_script(run, paths("/s", "r"), apptainer="apptainer")
    assert "apptainer exec --nv docker://python:3.11-slim python3 -V" in text


@pytest.mark.parametrize("image,ref", [
    ("/shared/images/tiny.sif", "/shared/images/tiny.sif"),  # built locally, no registry
    ("/shared/images/tiny-sandbox", "/shared/images/tiny-sandbox"),
    ("oras://registry.example/tiny:1", "oras://registry.example/tiny:1"),
    ("busybox", "docker://busybox"),
])
def test_a_local_image_path_is_run_as_is(image: str, ref: str) -> None:
    task = Task.model_validate({"name": "t", "command": ["cat", "/etc/os-release"],
                                "image": image})
    run = TaskRun(run_id="r", workflow_id="w", workflow_name="w", task=task)
    text = batch_script(run, paths("/s", "r"), apptainer="/usr/bin/apptainer")
    assert f"/usr/bin/apptainer exec {ref} cat /etc/os-release" in text


# ---------------------------------------------------------------- job records → run status

# Trimmed from real `GET /slurm/v0.0.38/jobs` answers of Slurm 22.05.8.
_JOB = {"job_id": 7, "name": "continuum-run-7", "comment": "continuum run=run-7",
        "partition": "debug", "submit_time": 1795315580, "eligible_time": 1795315580,
        "start_time": 1795315581, "end_time": 1795315641, "state_reason": "None",
        "exit_code": 0}


@pytest.mark.parametrize("fields,state,code,reason", [
    ({"job_state": "PENDING", "state_reason": "Resources", "start_time": 0}, RunState.Dispatched,
     None, "Resources"),
    ({"job_state": "RUNNING"}, RunState.Running, None, ""),
    ({"job_state": "COMPLETED"}, RunState.Succeeded, 0, ""),
    ({"job_state": "FAILED", "state_reason": "NonZeroExitCode", "exit_code": 768},
     RunState.Failed, 3, "exited with code 3"),
    ({"job_state": "TIMEOUT", "state_reason": "TimeLimit", "exit_code": 15}, RunState.Failed, 143,
     "the job reached its time limit (TimeLimit)"),
    ({"job_state": "OUT_OF_MEMORY", "state_reason": "OutOfMemory", "exit_code": 9},
     RunState.Failed, 137, "the job ran out of memory (OutOfMemory)"),
    ({"job_state": "CANCELLED", "exit_code": 15}, RunState.Cancelled, 143,
     "the Slurm job was cancelled"),
    ({"job_state": "NODE_FAIL", "state_reason": "NodeDown"}, RunState.Failed, 0,
     "a node of the job failed (NodeDown)"),
])
def test_job_records_become_run_statuses(fields: dict[str, object], state: RunState,
                                         code: int | None, reason: str, tmp_path: Path) -> None:
    from adapters.base import Handle

    site = SiteSpec.model_validate({"name": "hpc", "kind": "slurm", "config": {
        "url": "http://127.0.0.1:1", "user": "u", "token": "t", "workdir": str(tmp_path)}})
    a = SlurmAdapter(site, AdapterContext(artifacts=None, state_dir=tmp_path))  # type: ignore[arg-type]
    h = Handle(site="hpc", run_id="run-7", backend_id="7", node="hpc/debug",
               data={"output": str(tmp_path / "continuum-run-7.out"),
                     "runDir": str(tmp_path / "run-7")})
    st = a._job_status(h, {**_JOB, **fields})
    assert st is not None
    assert (st.state, st.exit_code, st.reason) == (state, code, reason)
    assert st.started_at is None if state == RunState.Dispatched else st.started_at is not None
    assert "not readable from the control plane" in a.logs(h)
    a.close()
