"""The two schema families (adapters/slurm/dialects.py) against what real slurmrestd
daemons served: the OpenAPI documents of Slurm 22.05.8, 24.11.5 and 26.05.5
(``data/openapi-slurm-*.json.gz``, as ``GET /openapi/v3`` returned them) and their
answers to ping, partitions, nodes, jobs and refused submits (``data/answers-v0.0.NN.json``,
captured from real single-node clusters; nothing here is written by hand)."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterContext, TaskRun
from adapters.slurm import SlurmAdapter
from adapters.slurm import script as scripts
from adapters.slurm.adapter import DEFAULT_POWER, JOB_STATE_TABLE, REJECTED_SETTING, _node_usable, decode_exit
from adapters.slurm.client import _errors, _numbers
from adapters.slurm.dialects import (
    DATA_PARSER,
    LEGACY,
    NO_UPDATE_TIME,
    SUPPORTED_VERSIONS,
    Dialect,
    choose,
    number,
    offered_versions,
    release_of,
    release_of_spec,
    state_string,
)
from continuum.errors import PermanentError
from continuum.model import Node, Resources, SiteKind, SiteSpec, Task, Tier

DATA = Path(__file__).parent / "data"
RELEASES = {"22.05.8": "v0.0.38", "24.11.5": "v0.0.42", "26.05.5": "v0.0.45"}
"""Each captured release and the version Continuum picks from its served spec."""
ANSWERS = sorted(p.stem.removeprefix("answers-") for p in DATA.glob("answers-v*.json"))


@cache
def spec(release: str) -> dict[str, Any]:
    return json.loads(gzip.decompress((DATA / f"openapi-slurm-{release}.json.gz").read_bytes()))


@cache
def answers(version: str) -> dict[str, Any]:
    return json.loads((DATA / f"answers-{version}.json").read_text())


def _schema(doc: dict[str, Any], ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    return doc["components"]["schemas"][ref.split("/")[-1]] if ref else ref_or_schema


def _run() -> TaskRun:
    task = Task.model_validate({"name": "t", "command": ["true"], "timeout": 300,
                                "env": {"A": "1"}, "resources": {"cpu": 2, "memory": "64Mi"}})
    return TaskRun(run_id="run-1", workflow_id="wf-1", workflow_name="w", task=task)


def test_every_capture_is_there() -> None:
    assert set(ANSWERS) == {"v0.0.36", "v0.0.38", "v0.0.40", "v0.0.42", "v0.0.44", "v0.0.45"}


@pytest.mark.parametrize("release", RELEASES)
def test_negotiation_picks_the_newest_version_both_sides_know(release: str) -> None:
    doc = spec(release)
    d = choose(doc["paths"])
    assert d is not None and d.version == RELEASES[release]
    assert d.family == (LEGACY if release.startswith("22.") else DATA_PARSER)
    # 22.05's spec says only "0.0.38"; the release comes from ping's meta there
    assert release_of_spec(doc) == ("" if release.startswith("22.") else release)
    assert offered_versions(doc["paths"])[0] in SUPPORTED_VERSIONS


def _served_pairs() -> list[tuple[str, str]]:
    return [(r, v) for r in RELEASES for v in offered_versions(spec(r)["paths"])
            if v in SUPPORTED_VERSIONS]


@pytest.mark.parametrize(("release", "version"), _served_pairs())
def test_every_path_and_field_sent_is_in_the_served_spec(release: str, version: str) -> None:
    """For each version a release serves: each path the dialect builds is served, and
    each field of the submit body is a property of the served request schema, with the
    served type (numbers as plain integers or {set, infinite, number} objects,
    environment as object or list of "K=V")."""
    doc = spec(release)
    d = Dialect(version, frozenset(doc["paths"]))
    for endpoint in ("ping", "jobs", "nodes", "partitions", "job/submit"):
        assert d.path(endpoint) in doc["paths"], (endpoint, d.path(endpoint))
    assert d.path("job/{job_id}") in doc["paths"]
    jobs_params = {p["name"] for p in doc["paths"][d.path("jobs")]["get"].get("parameters", [])}
    # declared by all but v0.0.36 (v0.0.40/41 declare it, yet refuse it: NO_UPDATE_TIME)
    assert ("update_time" in jobs_params) == (version != "v0.0.36")
    run = _run()
    job = scripts.job_description(run, scripts.paths("/w", run.run_id), partition="debug",
                                  base_env={"PATH": "/bin"}, account="a", qos="q",
                                  reservation="r", constraint="avx&ib", time_limit_min=5)
    body = d.submit_body("#!/bin/bash\ntrue\n", job)
    post = doc["paths"][d.path("job/submit")]["post"]
    req = _schema(doc, post["requestBody"]["content"]["application/json"]["schema"])
    assert set(body) <= set(req["properties"]), set(body) - set(req["properties"])
    props = _schema(doc, req["properties"]["job"])["properties"]
    unknown = set(body["job"]) - set(props)
    # v0.0.38 (and 36/37) have no tres_per_node: slurmrestd 22.05 ignores it (no GPUs here)
    assert unknown <= ({"tres_per_node"} if d.family == LEGACY else set()), unknown
    for k, v in body["job"].items():
        if k not in props:
            continue
        s = _schema(doc, props[k])
        kind = s.get("type")
        if isinstance(v, dict) and k != "environment":
            assert kind == "object" and {"set", "infinite", "number"} <= set(s["properties"]), k
        elif isinstance(v, list):
            assert kind == "array" and _schema(doc, s["items"]).get("type") == "string", k
        elif isinstance(v, dict):
            assert kind == "object", k
        elif isinstance(v, bool) or not isinstance(v, int):
            assert kind == "string", k
        else:
            assert kind == "integer", k
    if d.data_parser:
        assert "script" in body["job"] and "script" not in body
        assert body["job"]["environment"][0] == "PATH=/bin"
        assert "CONTINUUM_RUN_ID=run-1" in body["job"]["environment"]
    else:
        assert body["script"].startswith("#!") and body["job"]["environment"]["A"] == "1"


@pytest.mark.parametrize("version", ANSWERS)
def test_answers_read_in_one_shape(version: str) -> None:
    a = answers(version)
    d = Dialect(version, frozenset(spec(a["release"])["paths"]))
    assert release_of(a["ping"]["body"]) == a["release"]
    assert [p["ping"] for p in d.pings(a["ping"]["body"])] == ["UP"]
    parts = {p["name"]: d.partition(p) for p in a["partitions"]["body"]["partitions"]}
    assert parts["debug"]["max_time_limit"] == -1  # MaxTime=INFINITE
    assert parts["short"]["max_time_limit"] == 10
    assert parts["debug"]["nodes"] == "localhost"
    assert all(p.get("state") in ("UP", None) for p in parts.values())  # v0.0.36: no state
    node = d.node(a["nodes"]["body"]["nodes"][0])
    assert node["name"] == "localhost" and _node_usable(node)
    assert isinstance(node["cpus"], int) and node["cpus"] >= 1
    assert node["real_memory"] > 0
    if version != "v0.0.36":  # v0.0.36 reports no allocation
        assert 0 <= node["idle_cpus"] <= node["cpus"]
    jobs = [d.job(j) for j in a["jobs_done"]["body"]["jobs"]]
    (job,) = jobs  # the captured job ran `sleep 1; exit 3`
    assert job["job_id"] == a["submit_ok"]["body"]["job_id"]
    assert job["job_state"] == "FAILED" and JOB_STATE_TABLE[job["job_state"]].terminal
    assert decode_exit(job["exit_code"]) == (3, "")
    assert job["state_reason"] == "NonZeroExitCode"
    assert job["comment"] == "continuum run=r-cap" and scripts.run_id_of(job) == "r-cap"
    for k in ("submit_time", "start_time", "end_time", "eligible_time"):
        assert isinstance(job[k], int) and job[k] > 1_600_000_000, k
    assert job["end_time"] >= job["start_time"] >= job["submit_time"]
    assert job["cpus"] == 1 and job["partition"] == "debug"


@pytest.mark.parametrize("version", ANSWERS)
def test_the_job_table_says_when_it_is_unchanged(version: str) -> None:
    a = answers(version)
    d = Dialect(version)
    done = a["jobs_done"]["body"]
    assert not d.jobs_unchanged(done)
    if not d.data_parser:  # legacy: HTTP 304, and no last_update in the table
        assert d.jobs_last_update(done) is None
        return
    assert d.jobs_last_update(done) == done["last_update"]["number"] > 0
    empty = a["jobs_empty"]["body"]  # nothing left (purged): a table, not "unchanged"
    assert empty["jobs"] == [] and not d.jobs_unchanged(empty)
    assert d.jobs_last_update(empty) == empty["last_update"]["number"]
    unchanged = a["jobs_unchanged"]
    if version in NO_UPDATE_TIME:  # v0.0.40/41 of 24.11 refuse update_time: never sent
        assert unchanged["status"] == 422 and "update_time" not in d.jobs_params(5)
        assert "timestamp failed" in unchanged["body"]["errors"][0]["description"]
        return
    assert d.jobs_params(unchanged["update_time"]) == {"update_time": unchanged["update_time"]}
    assert unchanged["status"] == 200 and d.jobs_unchanged(unchanged["body"])
    assert "No job changes" in unchanged["body"]["warnings"][0]["description"]


@pytest.mark.parametrize("version", ANSWERS)
@pytest.mark.parametrize(("capture", "errno", "setting"), [
    ("submit_bad_partition", 2000, "partitions"),
    ("submit_bad_reservation", 2053, "reservation"),
    ("submit_bad_constraint", 2029, "constraint"),
])
def test_refused_submits_carry_the_number_that_names_the_setting(
        version: str, capture: str, errno: int, setting: str) -> None:
    r = answers(version)[capture]
    assert r["status"] in (422, 500)  # 26.05 answers 422, older releases 500
    nums = _numbers(_errors(r["body"]))  # v0.0.38 says error_code, newer error_number
    assert nums == [errno] and REJECTED_SETTING[errno] == setting


@pytest.mark.parametrize("version", ANSWERS)
def test_account_and_qos_are_not_checked_without_accounting(version: str) -> None:
    """These clusters run no slurmdbd: Slurm takes any account or QoS (what the docs say)."""
    a = answers(version)
    for capture in ("submit_bad_account", "submit_bad_qos"):
        assert a[capture]["status"] == 200 and isinstance(a[capture]["body"]["job_id"], int)


@pytest.mark.parametrize(("raw", "expected"), [
    ({"set": True, "infinite": False, "number": 5}, 5),
    ({"set": False, "infinite": False, "number": 0}, None),
    ({"set": False, "infinite": True, "number": 0}, None),
    (7, 7), (None, None), (True, None), (2.0, 2),
])
def test_numbers(raw: object, expected: int | None) -> None:
    assert number(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (["RUNNING"], "RUNNING"), (["COMPLETED", "COMPLETING"], "COMPLETING"),
    (["PENDING", "REQUEUED"], "REQUEUED"), (["FAILED", "SPECIAL_EXIT"], "SPECIAL_EXIT"),
    ("COMPLETED", "COMPLETED"), ([], ""),
])
def test_state_lists_read_like_the_legacy_string(raw: object, expected: str) -> None:
    assert state_string(raw) == expected


def test_a_signal_becomes_a_wait_status() -> None:
    d = Dialect("v0.0.45")
    job = d.job({"job_id": 1, "job_state": ["CANCELLED"], "exit_code": {
        "status": ["SIGNALED"], "return_code": {"set": False, "infinite": False, "number": 0},
        "signal": {"id": {"set": True, "infinite": False, "number": 9}, "name": "KILL"}}})
    assert decode_exit(job["exit_code"]) == (137, "killed by signal 9")


class _Replay(http.server.BaseHTTPRequestHandler):
    """A slurmrestd stand-in replaying captured answers: the 24.11.5 spec, and for
    ``POST job/submit`` the answer captured for the body's account or QoS."""

    answers: dict[str, Any] = {}

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, spec("24.11.5")) if self.path == "/openapi/v3" else self._send(404, {})

    def do_POST(self) -> None:
        job = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["job"]
        key = ("submit_bad_account" if job.get("account") == "nosuchaccount" else
               "submit_bad_qos" if job.get("qos") == "nosuchqos" else "submit_ok")
        self._send(self.answers[key]["status"], self.answers[key]["body"])

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("config", "words"), [
    ({"account": "nosuchaccount"}, "Slurm refused account 'nosuchaccount' (config.account) "
     "for run run-1: Invalid account or account/partition combination specified"),
    ({"userMap": [{"tenant": "*", "user": "svc", "qos": "nosuchqos"}]},
     "Slurm refused QoS 'nosuchqos' (config.userMap.0.qos) for run run-1: "
     "Invalid qos specification"),
])
def test_account_and_qos_refusals_with_accounting_name_the_setting(
        config: dict[str, Any], words: str, tmp_path: Path) -> None:
    """The refusals a cluster with slurmdbd and AccountingStorageEnforce gave (captured
    from Slurm 24.11.5, ``answers-accounting-v0.0.42.json``), through the one HTTP seam."""
    _Replay.answers = json.loads((DATA / "answers-accounting-v0.0.42.json").read_text())
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    key = "a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleSE="
    site = SiteSpec.model_validate({"name": "hpc", "kind": "slurm", "config": {
        "url": f"http://127.0.0.1:{srv.server_address[1]}", "user": "svc", "jwtKey": key,
        "workdir": str(tmp_path), **config}})
    a = SlurmAdapter(site, AdapterContext(artifacts=None, state_dir=tmp_path))  # type: ignore[arg-type]
    node = Node(id="hpc/debug", name="debug", site="hpc", site_kind=SiteKind.slurm,
                tier=Tier.hpc, capacity=Resources(cpu=2), allocatable=Resources(cpu=2),
                free=Resources(cpu=2), power=DEFAULT_POWER, location="hpc")
    try:
        with pytest.raises(PermanentError) as e:
            a.submit(_run(), node, "run-1")
        assert words in e.value.message, e.value.message
        ok = SlurmAdapter(site.model_copy(update={"config": {**site.config, "account": "continuum",
                                                             "userMap": []}}),
                          AdapterContext(artifacts=None, state_dir=tmp_path))  # type: ignore[arg-type]
        assert ok.submit(_run(), node, "run-1").backend_id == str(
            _Replay.answers["submit_ok"]["body"]["job_id"])
        ok.close()
    finally:
        a.close()
        srv.shutdown()
        srv.server_close()
