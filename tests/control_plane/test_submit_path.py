"""The submission path (issue 16 item 2): backlog admission (429 with ``Retry-After``),
the client waiting out a 429, concurrent submits sharing a commit with their audit
records, and the bounded cache of the token revocation look-up."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.auth import Authority, Role, Unauthorized
from control_plane.client import ApiError, Client
from control_plane.settings import Settings
from control_plane.store import (
    AuditRow,
    GroupCommit,
    Store,
    TaskRow,
    TokenRow,
    WorkflowRow,
    utcnow,
)
from tests.control_plane.harness import control_plane, served, wait_state, workflow
from tests.helpers import wait_for

# a stays running for ~1,000 s of wall time (work 1e6 at 1000× virtual time), so b waits
# in the backlog until the workflow is cancelled
BLOCKER = workflow("blocker", [
    {"name": "a", "command": ["true"], "work": 1_000_000},
    {"name": "b", "command": ["true"], "work": 1, "dependsOn": ["a"]}])
SMALL = workflow("small", [{"name": "only", "command": ["true"], "work": 1}])


def refused_total(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('continuum_submits_refused_total{reason="backlog"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_past_the_backlog_bound_a_submit_is_429_with_retry_after_until_it_drains(
        tmp_path: Path) -> None:
    with control_plane(tmp_path / "state", submit_max_backlog_tasks=1,
                       submit_backlog_retry_after_s=3) as (_, client):
        blocker = client.post("/v1/workflows", json=BLOCKER)
        assert blocker.status_code == 201, blocker.text  # an empty backlog takes any size
        r = client.post("/v1/workflows", json=SMALL)
        assert r.status_code == 429, r.text
        assert r.headers["Retry-After"] == "3"
        body = r.json()
        assert body["reason"] == "backlog" and body["maxBacklogTasks"] == 1
        assert body["backlogTasks"] >= 1
        assert "submit_max_backlog_tasks" in body["detail"]
        assert refused_total(client.get("/metrics").text) >= 1
        # the refused call is audited as failed; nothing of it was stored
        assert client.get("/v1/workflows", params={"limit": 500}).json()["total"] == 1
        audit = client.get("/v1/audit", params={"path": "/v1/workflows"}).json()["items"]
        assert {(a["status"], a["outcome"]) for a in audit} >= {(201, "ok"), (429, "failed")}
        # still refused while b waits; accepted again once the blocker is cancelled
        client.delete(f"/v1/workflows/{blocker.json()['id']}")
        wait_state(client, blocker.json()["id"], ("Cancelled",))
        again = wait_for(lambda: (a := client.post("/v1/workflows", json=SMALL))
                         .status_code == 201 and a, timeout=20,
                         message="a submit accepted after the backlog drained")
        wait_state(client, again.json()["id"], ("Succeeded",))


def test_the_client_waits_out_a_429_and_gives_up_after_busy_retries(tmp_path: Path) -> None:
    with served(tmp_path / "state", submit_max_backlog_tasks=1,
                submit_backlog_retry_after_s=1) as url:
        c = Client(url)
        blocker = c.submit(BLOCKER)
        impatient = Client(url, busy_retries=1)
        t0 = time.monotonic()
        with pytest.raises(ApiError) as e:
            impatient.submit(SMALL)
        assert e.value.status == 429 and "backlog" in str(e.value.detail)
        assert time.monotonic() - t0 >= 1.0  # it waited one Retry-After before giving up
        # a patient client is accepted once the backlog drains while it waits
        threading.Timer(1.5, c.cancel, args=(blocker["id"],)).start()
        patient = Client(url, busy_retries=30)
        wf = patient.submit(SMALL)
        assert wf["state"] == "Pending"
        assert patient.wait(wf["id"], timeout=30)["state"] == "Succeeded"


def test_concurrent_submits_share_commits_each_with_its_audit_record(tmp_path: Path) -> None:
    with control_plane(tmp_path / "state") as (cp, client):
        answers: list[Any] = []

        def submit(i: int) -> None:
            answers.append(client.post("/v1/workflows", json=workflow(f"c{i}")))

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [201] * 24
        ids = {a.json()["id"] for a in answers}
        with cp.store.session() as s:
            assert set(s.scalars(select(WorkflowRow.id))) == ids
            assert s.scalar(select(func.count()).select_from(TaskRow)) == 48
            assert s.scalar(select(func.count()).select_from(AuditRow)
                            .where(AuditRow.path == "/v1/workflows",
                                   AuditRow.status == 201)) == 24
        for wid in ids:
            wait_state(client, wid, ("Succeeded",))


def test_a_failing_write_in_a_group_fails_alone(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    writes = GroupCommit(store)
    first_in, release = threading.Event(), threading.Event()

    def token(jti: str, hold: bool = False) -> Any:
        def fn(s: Session) -> str:
            if hold and not first_in.is_set():
                first_in.set()
                release.wait(10)  # the group behind it gathers meanwhile
            s.add(TokenRow(id=jti, subject="t", roles=[], tenants=[], created_at=utcnow(),
                           expires_at=utcnow()))
            return jti
        return fn

    outcome: dict[str, Any] = {}

    def run(name: str, fn: Any) -> None:
        try:
            outcome[name] = writes.write(fn)
        except Exception as e:  # the one that fails
            outcome[name] = e

    first = threading.Thread(target=run, args=("first", token("t0", hold=True)))
    first.start()
    first_in.wait(10)
    others = [threading.Thread(target=run, args=(f"t{i}", token(f"t{i}"))) for i in (1, 2)]
    # a duplicate primary key: its group's transaction fails, then it alone
    others.append(threading.Thread(target=run, args=("dup", token("t0"))))
    for t in others:
        t.start()
    wait_for(lambda: len(writes._pending) == 3, message="the second group to gather")
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert outcome["first"] == "t0" and outcome["t1"] == "t1" and outcome["t2"] == "t2"
    assert isinstance(outcome["dup"], Exception)
    with store.session() as s:
        assert sorted(s.scalars(select(TokenRow.id))) == ["t0", "t1", "t2"]
    store.close()


def test_a_revoked_token_is_refused_at_once_here_and_within_the_cache_bound_elsewhere(
        tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", auth_revocation_cache_s=0.5)
    settings.state_dir.mkdir(parents=True)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    here, elsewhere = Authority(settings, store), Authority(settings, store)  # 2 replicas
    token, row = here.mint("alice", [Role.user], ["a"])
    assert here.verify(token).subject == "alice"
    assert elsewhere.verify(token).subject == "alice"  # now trusted there for 0.5 s
    revoked_at = time.monotonic()
    here.revoke(row.id)
    with pytest.raises(Unauthorized, match="revoked"):
        here.verify(token)  # the replica that revoked it forgot it at once

    def refused() -> bool:
        try:
            elsewhere.verify(token)
        except Unauthorized:
            return True
        return False

    wait_for(refused, timeout=5, message="the other replica to refuse the revoked token")
    assert time.monotonic() - revoked_at <= 0.5 + 0.5  # the bound, plus scheduling slack
    # with the cache off, every request reads the table
    uncached = Authority(settings.model_copy(update={"auth_revocation_cache_s": 0}), store)
    token2, row2 = here.mint("bob", [Role.user], ["b"])
    assert uncached.verify(token2).subject == "bob"
    here.revoke(row2.id)
    with pytest.raises(Unauthorized, match="revoked"):
        uncached.verify(token2)
    store.close()


def test_every_accepted_submit_survives_sigkill_amid_concurrent_submits(tmp_path: Path) -> None:
    """Group commit keeps the promise of a 201: the server killed with SIGKILL while 16
    clients submit, every workflow it answered 201 for is there after the restart."""
    import os
    import signal
    import subprocess
    import sys

    import httpx
    import yaml

    from tests.conftest import free_port
    from tests.control_plane.harness import federation
    from tests.helpers import admin_headers

    repo = Path(__file__).resolve().parents[2]
    fed = tmp_path / "federation.yaml"
    fed.write_text(yaml.safe_dump(federation().model_dump(mode="json", by_alias=True,
                                                          exclude_none=True)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "control_plane.cli", "server", "--port", str(port),
            "--state-dir", str(tmp_path / "state"), "--federation", str(fed)]
    log = tmp_path / "server.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                                    stdout=out, stderr=subprocess.STDOUT)

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(ready, timeout=60, message=lambda: "server ready; log:\n" + log.read_text()[-2000:])
        return proc

    proc = start()
    headers = admin_headers(tmp_path / "state")
    accepted: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers=headers, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{url}/v1/workflows", json=SMALL)
                except httpx.TransportError:
                    return  # killed mid-request: not accepted
                if r.status_code == 201:
                    accepted.append(r.json()["id"])

    threads = [threading.Thread(target=client) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(accepted) >= 60, timeout=60, message="60 submits accepted")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(30)
        got = list(accepted)
        proc = start()
        missing = [wid for wid in got
                   if httpx.get(f"{url}/v1/workflows/{wid}", headers=headers,
                                timeout=10).status_code != 200]
        assert not missing, f"{len(missing)} of {len(got)} accepted workflows lost: {missing[:5]}"
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


def test_parsed_documents_are_remembered_per_body_and_failures_are_not() -> None:
    import json

    from continuum.errors import ValidationFailed
    from control_plane import validation

    body = json.dumps(workflow("remembered")).encode()
    first = validation.parse_document_cached(body, "application/json")
    assert validation.parse_document_cached(body, "application/json") is first
    other = validation.parse_document_cached(body.replace(b"remembered", b"other"),
                                             "application/json")
    assert other.metadata.name == "other"
    bad = json.dumps(workflow("bad", [{"name": "a", "command": ["true"], "wrk": 1}])).encode()
    for _ in range(2):  # each time the 422, never a remembered document
        with pytest.raises(ValidationFailed) as e:
            validation.parse_document_cached(bad, "application/json")
        assert e.value.problems[0].loc[-1] == "wrk"
    assert (bad, "application/json") not in validation._parsed
    big = json.dumps(workflow("big", [{"name": f"t{i}", "command": ["true"], "work": 1}
                                      for i in range(2000)])).encode()
    assert len(big) > validation.CACHED_BODY_BYTES
    assert validation.parse_document_cached(big, None) is not validation.parse_document_cached(
        big, None)
