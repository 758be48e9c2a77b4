"""Issue 12, items 7 and 8: artifacts need the run's capability; bodies are bounded.

Attacks reproduced (each failed to do harm before these changes): an anonymous PUT
overwrote an output whose producer had succeeded (the stored digest followed it); a
run's capability opened another run's artifacts; a body nested 100,000 levels deep
(JSON or YAML) was a 500; a chunked body of hundreds of MB was buffered whole; the
enrolment endpoint could be hammered.
"""

from __future__ import annotations

import gc
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError

from continuum.model import RunState
from control_plane.artifact_access import ArtifactCapabilities, CapabilityRefused, Mode
from control_plane.settings import Settings
from control_plane.store import RunRow, TaskRow, new_id
from tests.control_plane.harness import (
    artifact_url,
    control_plane,
    run_of,
    served,
    wait_state,
    workflow,
)
from tests.helpers import admin_headers, wait_for

LONG = 10_000_000  # core-seconds: a task that stays Running for the whole test


def _pipeline() -> dict[str, Any]:
    """``a`` makes ``x`` (fast) → ``b`` reads it and runs on; ``c`` makes ``y`` and runs on."""
    return workflow("pipeline", [
        {"name": "a", "command": ["true"], "work": 100, "outputs": [{"name": "x", "path": "x"}]},
        {"name": "b", "command": ["true"], "work": LONG, "inputs": [{"name": "x"}]},
        {"name": "c", "command": ["true"], "work": LONG, "outputs": [{"name": "y", "path": "y"}]},
    ])


def _started(api: TestClient) -> tuple[str, dict[str, str]]:
    """Submit :func:`_pipeline`; wait until ``a`` succeeded and ``b``, ``c`` run."""
    wid = api.post("/v1/workflows", json=_pipeline()).json()["id"]

    def ready() -> dict[str, str] | None:
        runs = api.get("/v1/runs", params={"workflow": wid}).json()["items"]
        st = {r["task"]: r["state"] for r in runs}
        ok = st.get("a") == "Succeeded" and st.get("b") == st.get("c") == "Running"
        return {r["task"]: r["id"] for r in runs} if ok else None

    return wid, wait_for(ready, timeout=20, message="a Succeeded, b and c Running")


def _digest(api: TestClient, wid: str, name: str) -> str:
    r = api.get(f"/v1/artifacts/{wid}/{name}")
    assert r.status_code == 200, r.text
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-content-sha256"]
    return str(r.headers["x-content-sha256"])


def test_a_succeeded_output_cannot_be_overwritten(tmp_path: Path) -> None:
    with control_plane(tmp_path) as (cp, api):
        wid, runs = _started(api)
        before = _digest(api, wid, "x")
        forged = "9999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        attempts = {
            "anonymous": (f"/v1/artifacts/{wid}/x", 401, "write capability"),
            "a run id without a capability": (f"/v1/artifacts/{wid}/x?run={runs['a']}", 401,
                                              "write capability"),
            "a forged capability": (f"/v1/artifacts/{wid}/x?run={runs['a']}&cap={forged}", 403,
                                    "does not let run"),
            # c's real capability for its own output y, presented for x
            "another run's capability": (
                artifact_url(api, wid, runs["c"], "y").replace("/y?", "/x?"), 403,
                "does not let run"),
            # what only a consumer's read capability looks like, used to write
            "a read capability": (artifact_url(api, wid, runs["b"], "x", "read"), 403,
                                  "does not let run"),
            # a capability minted for b to write x: b does not declare x as an output
            "a run that does not declare it": (artifact_url(api, wid, runs["b"], "x"), 403,
                                               "not a declared output"),
            "its producer, after it succeeded": (artifact_url(api, wid, runs["a"], "x"), 409,
                                                 "already succeeded"),
        }
        for why, (url, status, needle) in attempts.items():
            r = api.put(url, content=b"forged output")
            assert r.status_code == status, (why, r.text)
            assert needle in r.json()["detail"], (why, r.text)
        # a live duplicate of a's task (as a stale retry or a move would be) may not
        # replace what a, which succeeded, produced
        with cp.store.session() as s:
            task = s.query(TaskRow).filter_by(workflow_id=wid, name="a").one()
            dup = RunRow(id=new_id("run"), workflow_id=wid, task_id=task.id, task_name="a",
                         attempt=task.attempts + 1, state=RunState.Running)
            s.add(dup)
        r = api.put(artifact_url(api, wid, dup.id, "x"), content=b"forged output")
        assert r.status_code == 409 and "immutable" in r.json()["detail"], r.text
        assert _digest(api, wid, "x") == before
        assert b"forged" not in api.get(f"/v1/artifacts/{wid}/x").content


def test_only_a_consuming_run_reads_with_a_capability(tmp_path: Path) -> None:
    with control_plane(tmp_path) as (_, api):
        wid, runs = _started(api)
        ok = api.get(artifact_url(api, wid, runs["b"], "x", "read"))
        assert ok.status_code == 200 and ok.headers["x-content-sha256"]
        # c reads nothing: no capability it holds opens x
        for url in (artifact_url(api, wid, runs["c"], "y", "read").replace("/y?", "/x?"),
                    artifact_url(api, wid, runs["c"], "y").replace("/y?", "/x?"),
                    artifact_url(api, wid, runs["a"], "x")):  # a write capability
            r = api.get(url)
            assert r.status_code == 403 and "does not let run" in r.json()["detail"], r.text
        # a capability of this workflow opens nothing in another one
        other = api.post("/v1/workflows", json=workflow()).json()["id"]
        wait_state(api, other, ("Succeeded",))
        r = api.get(artifact_url(api, wid, runs["b"], "x", "read").replace(wid, other))
        assert r.status_code == 403
        # without a capability, an API token that sees the workflow's tenant reads it
        r = api.get(f"/v1/artifacts/{wid}/x", headers={"Authorization": ""})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        outsider = api.post("/v1/tokens", json={"subject": "eve", "roles": ["user"],
                                                "tenants": ["elsewhere"]}).json()["token"]
        r = api.get(f"/v1/artifacts/{wid}/x", headers={"Authorization": f"Bearer {outsider}"})
        assert r.status_code == 404 and r.json() == {"detail": f"workflow {wid!r} does not exist"}
        assert api.get(f"/v1/artifacts/{wid}/x").status_code == 200  # the admin sees all
        assert api.get(artifact_url(api, wid, runs["b"], "x", "read"),
                       headers={"Authorization": ""}).status_code == 200


def _chunks(total: int, size: int = 1000) -> Iterator[bytes]:
    for _ in range(total // size):
        yield b"z" * size


def test_artifact_and_tenant_quotas(tmp_path: Path) -> None:
    with control_plane(tmp_path, artifact_max_bytes=1000,
                       tenant_artifact_quota_bytes=1500) as (cp, api):
        wf = workflow("quota", [{"name": "t", "command": ["true"], "work": LONG, "outputs": [
            {"name": "p", "path": "p"}, {"name": "q", "path": "q"}]}])
        wid = api.post("/v1/workflows", json=wf).json()["id"]
        wait_state(api, wid, ("Running",))
        run = run_of(api, wid, "t")
        p, q = artifact_url(api, wid, run, "p"), artifact_url(api, wid, run, "q")
        # over the per-artifact limit, declared or streamed (chunked): refused, nothing kept
        r = api.put(p, content=b"z" * 1001)
        assert r.status_code == 413 and "artifact_max_bytes" in r.json()["detail"][0]["msg"]
        r = api.put(p, content=_chunks(2000))
        assert r.status_code == 413 and "artifact_max_bytes" in r.text, r.text
        assert api.get(f"/v1/artifacts/{wid}/p").status_code == 404
        assert api.put(p, content=b"z" * 900).status_code == 201
        # the tenant keeps 900 of 1500 bytes: 700 more is over, 600 fits
        r = api.put(q, content=_chunks(700, 100))
        assert r.status_code == 413, r.text
        assert "tenant_artifact_quota_bytes" in r.json()["detail"], r.text
        assert api.get(f"/v1/artifacts/{wid}/q").status_code == 404
        assert api.put(q, content=b"z" * 600).status_code == 201
        # replacing p (900 → 900) counts p once
        assert api.put(p, content=b"y" * 900).status_code == 201
        assert api.put(p, content=b"y" * 901).status_code == 413
        assert not list(cp.settings.artifact_dir.rglob(".upload-*"))  # nothing left behind


def _nested_json(levels: int) -> bytes:
    return b'{"a": ' * levels + b"1" + b"}" * levels


@pytest.mark.parametrize(("body", "ctype"), [
    (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    (_nested_json(100_000), "application/json"),
    (b"[" * 100_000 + b"]" * 100_000, "application/yaml"),
    (b"{a: " * 100_000 + b"1" + b"}" * 100_000, "application/yaml"),
    ("a:\n" + "".join("  " * (i + 1) + "- \n" for i in range(600)), "application/yaml"),
    # each anchor one level deeper than the last: shallow text, a 2,000-level value
    ("a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 2000)),
     "application/yaml"),
    # "billion laughs": ten to the tenth nodes from a few hundred bytes
    ("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10)),
     "application/yaml"),
])
@pytest.mark.parametrize("route", ["/v1/workflows", "/v1/placements:preview", "/v1/sites"])
def test_deeply_nested_bodies_are_422(tmp_path: Path, body: bytes | str, ctype: str,
                                      route: str) -> None:
    with control_plane(tmp_path) as (_, api):
        r = api.post(route, content=body, headers={"Content-Type": ctype})
        assert r.status_code == 422, r.text
        problem = r.json()["detail"][0]
        assert problem["loc"] == ["body"] and problem["type"] == "body_too_deep", problem


def test_a_deep_body_of_a_typed_route_is_a_4xx(tmp_path: Path) -> None:
    with control_plane(tmp_path) as (_, api):
        r = api.post("/v1/devices/enroll", content=_nested_json(100_000),
                     headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, r.text  # FastAPI's own answer, never a 500


def test_an_ordinary_yaml_document_with_anchors_still_parses(tmp_path: Path) -> None:
    doc = yaml.safe_dump(workflow("anchors"))
    doc = doc.replace("command:\n    - 'true'", "command: &cmd\n    - 'true'", 1)
    with control_plane(tmp_path) as (_, api):
        r = api.post("/v1/workflows", content=doc, headers={"Content-Type": "application/yaml"})
        assert r.status_code == 201, r.text


def test_chunked_bodies_are_refused_early_with_bounded_memory(tmp_path: Path) -> None:
    """Three 300 MB chunked bodies (a workflow, a preview, an artifact) once took the
    server to 1.4 GB; now each is a 413 after a few MB, and the (in-process) server's
    memory hardly moves."""
    total = 300 << 20
    chunk = b"\0" * (1 << 20)
    with served(tmp_path, artifact_max_bytes=4 << 20) as url:
        api = httpx.Client(base_url=url, timeout=30, headers=admin_headers(tmp_path))
        wf = workflow("big", [{"name": "t", "command": ["true"], "work": LONG,
                               "outputs": [{"name": "blob", "path": "blob"}]}])
        wid = api.post("/v1/workflows", json=wf).json()["id"]

        def running() -> str | None:
            runs = api.get("/v1/runs", params={"workflow": wid}).json()["items"]
            return runs[0]["id"] if runs and runs[0]["state"] == "Running" else None

        run: str = wait_for(running, timeout=20, message="the task to run")
        caps = ArtifactCapabilities.for_state_dir(tmp_path, 3600)  # the server's key
        blob_url = caps.url("", wid, run, "blob", Mode.write)
        gc.collect()
        me = psutil.Process()
        rss0 = peak = me.memory_info().rss
        done = threading.Event()

        def sample() -> None:  # the peak, not the end: a freed buffer leaves no trace
            nonlocal peak
            while not done.wait(0.005):
                peak = max(peak, me.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for route, limit in (("/v1/workflows", 1 << 20), ("/v1/placements:preview", 1 << 20),
                             (blob_url, 4 << 20)):
            sent = 0

            def body() -> Iterator[bytes]:
                nonlocal sent
                while sent < total:
                    sent += len(chunk)
                    yield chunk

            method = "PUT" if route is blob_url else "POST"
            r = api.request(method, route, content=body(),
                            headers={"Content-Type": "application/octet-stream"
                                     if method == "PUT" else "application/json"})
            assert r.status_code == 413, (route, r.text)
            assert r.json()["detail"][0]["type"] == "body_too_large"
            assert sent < 64 << 20, f"{route}: {sent} bytes sent before the 413 (limit {limit})"
        done.set()
        sampler.join()
        grown = peak - rss0
        assert grown < 50 << 20, f"the server grew by {grown >> 20} MiB"
        assert api.get(f"/v1/artifacts/{wid}/blob").status_code == 404


def test_enrolment_endpoints_are_rate_limited(tmp_path: Path) -> None:
    with control_plane(tmp_path, auth_rate_limit="2/minute") as (_, api):
        body = {"token": "not-a-token", "deviceId": "dev-1"}
        assert [api.post("/v1/devices/enroll", json=body).status_code for _ in range(2)] \
            == [401, 401]
        r = api.post("/v1/devices/enroll", json=body)
        assert r.status_code == 429, r.text
        assert 0 < int(r.headers["retry-after"]) <= 60
        assert "auth_rate_limit" in r.json()["detail"]
        # counted per route: token creation has its own budget
        tokens = [api.post("/v1/devices/enrollment-tokens",
                           json={"site": "nope", "tenant": "t"}).status_code for _ in range(3)]
        assert tokens == [404, 404, 429]


def test_capabilities_expire_and_are_bound_to_everything_they_name(tmp_path: Path) -> None:
    caps = ArtifactCapabilities.for_state_dir(tmp_path, ttl_s=60)
    key = tmp_path / "auth" / "artifact.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.parent.stat().st_mode & 0o777 == 0o700
    assert ArtifactCapabilities.for_state_dir(tmp_path, 60).issue("wf", "r", "x", Mode.read,
                                                                  now=0) \
        == caps.issue("wf", "r", "x", Mode.read, now=0)  # the key is kept, not regenerated
    token = caps.issue("wf", "r", "x", Mode.write, now=1000)
    caps.check(token, "wf", "r", "x", Mode.write, now=1059)
    with pytest.raises(CapabilityRefused, match="expired"):
        caps.check(token, "wf", "r", "x", Mode.write, now=1061)
    for other in (("wf2", "r", "x", Mode.write), ("wf", "r2", "x", Mode.write),
                  ("wf", "r", "x2", Mode.write), ("wf", "r", "x", Mode.read)):
        with pytest.raises(CapabilityRefused, match="does not let"):
            caps.check(token, *other, now=1000)
    with pytest.raises(CapabilityRefused, match="malformed"):
        caps.check("nonsense", "wf", "r", "x", Mode.write, now=1000)
    other_key = ArtifactCapabilities(b"k" * 32, 60)
    with pytest.raises(CapabilityRefused):
        other_key.check(token, "wf", "r", "x", Mode.write, now=1000)


def test_the_settings_reject_a_nonsense_rate() -> None:
    with pytest.raises(ValidationError, match="auth_rate_limit"):
        Settings(auth_rate_limit="lots")

