"""Replicas on one PostgreSQL database: one leader, takeover bounds, fencing
(control_plane/leader.py). Real PostgreSQL 15 (the session's ``postgres`` fixture), a fresh
database per test.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from adapters.kubernetes.lease import LeaseLock
from continuum.model import RunState, TaskState, WorkflowState
from control_plane.actions import RemoveSite
from control_plane.client import Client
from control_plane.leader import (
    DatabaseElector,
    Fenced,
    KubernetesLeaseElector,
    Leadership,
    Lease,
    NotLeader,
    current_leader,
)
from control_plane.server import ControlPlane
from control_plane.settings import Settings
from control_plane.store import LeaseRow, RunRow, Store, TaskRow, WorkflowRow, utcnow
from tests.conftest import Postgres, free_port
from tests.control_plane.harness import artifact_url, federation, run_of, wait_state, workflow
from tests.helpers import admin_headers, admin_token, wait_for


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL (a SQLAlchemy URL)."""
    url = postgres.new_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    s = Store(pg_url)
    yield s
    s.close()


def elector(store: Store, ttl_s: float = 6.0, name: str = "") -> DatabaseElector:
    return DatabaseElector(store, f"http://{name or 'r'}.invalid", ttl_s,
                           identity=name or None)


def a_run(store: Store) -> str:
    """One workflow with one task and one Dispatched run; returns the run id."""
    with store.session() as s:
        s.add(WorkflowRow(id="wf-1", name="wf", state=WorkflowState.Running, document={}))
        s.flush()
        task = TaskRow(workflow_id="wf-1", name="a", state=TaskState.Running, spec={},
                       depends_on=[])
        s.add(task)
        s.flush()
        s.add(RunRow(id="run-1", workflow_id="wf-1", task_id=task.id, task_name="a",
                     attempt=1, state=RunState.Dispatched, site="s"))
    return "run-1"


# ------------------------------------------------------------------ electors


def test_two_electors_exactly_one_leads(store: Store) -> None:
    a, b = elector(store, name="a"), elector(store, name="b")
    try:
        for _ in range(3):
            leases = [a.step(), b.step()]
            assert [x is not None for x in leases] == [True, False]
        assert leases[0] is not None and leases[0].epoch == 1
        assert current_leader(store) == leases[0]
    finally:
        a.close()
        b.close()


def test_dead_leader_is_taken_over_at_once_with_the_next_epoch(store: Store) -> None:
    ttl = 30.0  # far above what the takeover may take: it must not wait for the TTL
    a, b = elector(store, ttl, name="a"), elector(store, ttl, name="b")
    try:
        first = a.step()
        assert first is not None and b.step() is None
        a.close()  # the process died: its connection, and so its advisory lock, are gone
        t0 = time.monotonic()
        lease = wait_for(b.step, timeout=5.0, interval=0.05, message="b to take over")
        took = time.monotonic() - t0
        assert lease.holder == "b" and lease.epoch == first.epoch + 1
        assert took < 5.0, f"took {took:.2f}s, not at once (the TTL is {ttl:g} s)"
    finally:
        b.close()


def test_paused_leader_is_fenced_and_changes_nothing(store: Store) -> None:
    run_id = a_run(store)
    ttl = 1.0
    a_lead = Leadership(elector(store, ttl, "a"), store, on_lead=lambda _l: None,
                        on_lose=lambda _r: None)
    b = elector(store, ttl, "b")
    try:
        a_lead.step()
        first = a_lead.lease
        assert first is not None
        fenced = store.fenced(a_lead.check)
        with fenced.session() as s:  # the leader writes
            s.get(RunRow, run_id).reason = "seen by epoch 1"  # type: ignore[union-attr]
        # a pauses (no renewal, its connection and advisory lock kept); b waits out the TTL
        assert b.step() is None
        t0 = time.monotonic()
        lease = wait_for(b.step, timeout=ttl + 3.0, interval=0.1, message="b to take over")
        assert lease.epoch == first.epoch + 1 and lease.holder == "b"
        assert time.monotonic() - t0 <= ttl + 2.0
        # a wakes up and writes as if it still led: refused, nothing changed
        with pytest.raises(Fenced, match=f"fenced by epoch {lease.epoch} of b"):
            with fenced.session() as s:
                run = s.get(RunRow, run_id)
                assert run is not None
                run.state, run.reason = RunState.Failed, "written by a fenced leader"
        with pytest.raises(Fenced):
            fenced.check_fence()  # what the applier runs before a backend call
        with pytest.raises(Fenced):  # a bulk statement does not flush: fenced explicitly
            with fenced.session() as s:
                fenced.fence_in(s)
                s.execute(update(RunRow).where(RunRow.id == run_id)
                          .values(reason="bulk write by a fenced leader"))
        with store.session() as s:
            run = s.get(RunRow, run_id)
            assert run is not None
            assert (run.state, run.reason) == (RunState.Dispatched, "seen by epoch 1")
        # a's next step sees it lost and steps down, letting go of the advisory lock; its
        # next step (before b's) leaves the lock to b rather than taking the lease back
        a_lead.step()
        assert a_lead.lease is None
        a_lead.step()
        assert a_lead.lease is None
        assert b.step() == lease  # b keeps leading, same epoch (now holding the lock)
        assert a_lead.elector.step() is None
    finally:
        a_lead.elector.close()
        b.close()


class ScriptedElector:
    """An elector whose answers the test sets (``lease``), writing them to the lease row."""

    identity, ttl_s = "a", 6.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lease: Lease | None = None

    def step(self) -> Lease | None:
        if self.lease is not None:
            with self.store.session() as s:
                s.merge(LeaseRow(name=self.lease.name, holder=self.lease.holder,
                                 epoch=self.lease.epoch, expires_at=utcnow()))
        return self.lease

    def resign(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_loop_of_an_ended_term_is_fenced_when_the_replica_leads_again(tmp_path: Path) -> None:
    """Lost, then led again under a new epoch: a thread still working for the old term
    (bound to it) is refused, though the replica leads and the row names it."""
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    run_id = a_run(store)
    el = ScriptedElector(store)
    lead = Leadership(el, store, on_lead=lambda _l: None, on_lose=lambda _r: None)
    fenced = store.fenced(lead.check)
    try:
        el.lease = Lease("reconciler", "a", 1)
        lead.step()
        first = lead.lease
        assert first is not None and first.epoch == 1
        el.lease = Lease("reconciler", "a", 2)  # the same replica, a new term
        lead.step()
        assert lead.lease is not None and lead.lease.epoch == 2
        outcome: dict[int, str] = {}

        def write_as(term: Lease, reason: str) -> None:
            lead.bind(term)
            try:
                with fenced.session() as s:
                    s.get(RunRow, run_id).reason = reason  # type: ignore[union-attr]
                outcome[term.epoch] = "written"
            except Fenced as e:
                outcome[term.epoch] = str(e)

        for term, reason in ((first, "by the old term"), (lead.lease, "by the new term")):
            t = threading.Thread(target=write_as, args=(term, reason))
            t.start()
            t.join()
        assert outcome[2] == "written"
        assert "term of epoch 1 ended" in outcome[1]
        with store.session() as s:
            assert s.get(RunRow, run_id).reason == "by the new term"  # type: ignore[union-attr]
        with fenced.session() as s:  # an unbound thread writes under the current term
            s.get(RunRow, run_id).reason = "unbound"  # type: ignore[union-attr]
    finally:
        store.close()


def test_expired_lease_of_a_live_leader_is_renewed_not_taken(store: Store) -> None:
    """A leader whose row expired while nobody else wanted it simply renews."""
    a = elector(store, 1.0, "a")
    try:
        first = a.step()
        with store.session() as s:
            row = s.get(LeaseRow, "reconciler")
            assert row is not None
            row.expires_at = utcnow() - timedelta(seconds=5)
        assert a.step() == first
    finally:
        a.close()


def test_kubernetes_lease_elector(kube_cluster: Any, store: Store) -> None:
    """A coordination.k8s.io/v1 Lease on the real apiserver decides; its transitions are
    the epoch in the lease row, so the old holder's writes are fenced the same way."""
    lock = LeaseLock.from_kubeconfig(kube_cluster.admin_kubeconfig(), "continuum",
                                     f"continuum-test-{secrets.token_hex(3)}")

    def kube(name: str) -> KubernetesLeaseElector:
        return KubernetesLeaseElector(store, lock, f"http://{name}.invalid", 2.0,
                                      identity=name)

    a_lead = Leadership(kube("a"), store, on_lead=lambda _l: None, on_lose=lambda _r: None)
    b = kube("b")
    try:
        a_lead.step()
        first = a_lead.lease
        assert first is not None and first.epoch == 1 and b.step() is None
        assert current_leader(store) == first
        # a pauses; b takes the Lease once its duration passed
        lease = wait_for(b.step, timeout=2.0 + 3.0, interval=0.2, message="b takes the Lease")
        assert lease.holder == "b" and lease.epoch == 2
        assert lock.read() == ("b", 2)
        with pytest.raises(Fenced, match="fenced by epoch 2 of b"):
            store.fenced(a_lead.check).check_fence()
        a_lead.step()  # a wakes: the Lease is b's, a steps down
        assert a_lead.lease is None and b.step() == lease
    finally:
        lock.delete()


# ------------------------------------------------------------------ replicas


def replica(pg_url: str, state_dir: Path, name: str, **kw: Any) -> ControlPlane:
    settings = Settings(state_dir=state_dir, database_url=pg_url,
                        public_url=f"http://{name}.invalid:8080",
                        reconcile_interval_s=kw.pop("reconcile_interval_s", 0.05),
                        inventory_interval_s=0.05, retry_backoff_s=0.05,
                        federation_resync_s=0.2, **kw)
    cp = ControlPlane(settings, federation(time_scale=100.0))
    cp.start()
    return cp


@pytest.fixture
def two(pg_url: str, tmp_path: Path) -> Iterator[tuple[ControlPlane, ControlPlane]]:
    """Replicas a (the leader: started first) and b, sharing one state directory (keys,
    artifacts) and one database."""
    with ExitStack() as stack:
        a = replica(pg_url, tmp_path, "a", leader_lease_s=1.5)
        stack.callback(a.stop)
        b = replica(pg_url, tmp_path, "b", leader_lease_s=1.5)
        stack.callback(b.stop)
        yield a, b


def test_follower_serves_the_api_and_the_leader_runs_its_work(
        two: tuple[ControlPlane, ControlPlane]) -> None:
    a, b = two
    with TestClient(a.app, headers=admin_headers(a)) as ca, \
            TestClient(b.app, headers=admin_headers(b)) as cb:
        assert ca.get("/leaderz").json()["role"] == "leader"
        state = cb.get("/leaderz").json()
        assert state["role"] == "follower" and state["leader"]["apiUrl"] == a.settings.api_url
        assert cb.get("/readyz").status_code == 200  # a follower serving the API is ready
        assert "continuum_leader 0.0" in cb.get("/metrics").text
        assert "continuum_leader 1.0" in ca.get("/metrics").text
        wid = cb.post("/v1/workflows", json=workflow()).json()["id"]
        wf = wait_state(cb, wid, ("Succeeded", "Failed"))
        assert wf["state"] == "Succeeded"
        assert b.reconciler.cycles == 0  # only the leader's loop ran
        # a site registered through the follower is seen by the leader
        site = {**federation().spec.sites[0].wire(), "name": "sim-2"}
        assert cb.post("/v1/sites", json=site).status_code == 201, "register on b"
        wait_for(lambda: a.federation.get_adapter("sim-2"), timeout=5, message="a sees sim-2")
        # removal needs the leader's loop: the follower redirects there
        r = cb.delete("/v1/sites/sim-2", params={"runs": "leave"}, follow_redirects=False)
        assert r.status_code == 307
        assert r.headers["location"] == f"{a.settings.api_url}/v1/sites/sim-2?runs=leave"
        assert ca.delete("/v1/sites/sim-2").status_code == 200
        wait_for(lambda: b.federation.get_adapter("sim-2") is None, timeout=5,
                 message="b forgets sim-2")


def test_an_artifact_written_through_one_replica_is_read_through_the_other(
        two: tuple[ControlPlane, ControlPlane]) -> None:
    """Artifacts live in the state directory the replicas share (the supported way; no
    S3-compatible store): an upload to the follower is served by the leader."""
    a, b = two
    long = workflow("long", [{"name": "forever", "command": ["true"], "work": 10_000_000,
                              "outputs": [{"name": "data/readings.csv", "path": "r.csv"}]}])
    with TestClient(a.app, headers=admin_headers(a)) as ca, \
            TestClient(b.app, headers=admin_headers(b)) as cb:
        wid = cb.post("/v1/workflows", json=long).json()["id"]
        wait_state(cb, wid, ("Running",))
        r = cb.put(artifact_url(cb, wid, run_of(cb, wid, "forever"), "data/readings.csv"),
                   content=b"t,v\n1,2\n")
        assert r.status_code == 201, r.text
        got = ca.get(f"/v1/artifacts/{wid}/data/readings.csv")
        assert got.status_code == 200 and got.content == b"t,v\n1,2\n"
        assert got.headers["x-content-sha256"] == r.json()["sha256"]


def test_a_submit_on_the_follower_wakes_the_leader(pg_url: str, tmp_path: Path) -> None:
    """The leader's interval is 60 s: only the follower's NOTIFY gets the work placed."""
    with ExitStack() as stack:
        a = replica(pg_url, tmp_path, "a", reconcile_interval_s=60.0)
        stack.callback(a.stop)
        b = replica(pg_url, tmp_path, "b")
        stack.callback(b.stop)
        wait_for(lambda: a.reconciler.cycles >= 1, message="a's first cycle")
        with TestClient(b.app, headers=admin_headers(b)) as cb:
            wid = cb.post("/v1/workflows", json=workflow()).json()["id"]
            wait_state(cb, wid, ("Running", "Succeeded"), timeout=10)


def test_a_fenced_write_makes_the_leader_a_follower(pg_url: str, tmp_path: Path) -> None:
    """Another holder takes the lease behind a's back (its election step is 20 s away):
    a's loop's next write is refused, a becomes a follower at once and keeps serving the
    API, and the refused write changed nothing."""
    a = replica(pg_url, tmp_path, "a", leader_lease_s=60.0)
    try:
        assert a.leadership.leading
        wait_for(lambda: a.reconciler.cycles >= 1, message="a's first cycle")
        with a.store.session() as s:
            row = s.get(LeaseRow, "reconciler")
            assert row is not None
            row.holder, row.epoch = "elsewhere", row.epoch + 1
            row.expires_at = utcnow() + timedelta(minutes=5)
        with TestClient(a.app, headers=admin_headers(a)) as ca:
            wid = ca.post("/v1/workflows", json=workflow()).json()["id"]  # the API serves
            wait_for(lambda: not a.leadership.leading, timeout=5, message="a to step down")
            assert ca.get("/leaderz").json()["role"] == "follower"
            assert "continuum_leader 0.0" in ca.get("/metrics").text
            wf = ca.get(f"/v1/workflows/{wid}").json()
            assert wf["state"] == "Pending" and wf["runs"] == []  # nothing was placed
        assert a._thread is not None
        a._thread.join(timeout=5)
        assert not a._thread.is_alive()  # the loop ended
    finally:
        a.stop()


def test_follower_takes_over_and_finishes_the_work(
        two: tuple[ControlPlane, ControlPlane]) -> None:
    a, b = two
    with TestClient(b.app, headers=admin_headers(b)) as cb:
        doc = workflow(tasks=[
            {"name": "slow", "command": ["true"], "work": 600,
             "outputs": [{"name": "x", "path": "x"}]},
            {"name": "after", "command": ["true"], "work": 10, "inputs": [{"name": "x"}]}])
        wid = cb.post("/v1/workflows", json=doc).json()["id"]
        wait_for(lambda: any(r["state"] in ("Dispatched", "Running")
                             for r in cb.get("/v1/runs", params={"workflow": wid}).json()["items"]),
                 message="the slow run dispatched by a")
        epoch = a.leadership.lease.epoch  # type: ignore[union-attr]
        a.stop()  # a dies: its connection, and its advisory lock, end
        lease = wait_for(lambda: b.leadership.lease, timeout=1.5 / 3 + 2.0,
                         message="b to lead")
        assert lease.epoch == epoch + 1
        wf = wait_state(cb, wid, ("Succeeded", "Failed"), timeout=30)
    assert wf["state"] == "Succeeded"
    runs = wf["runs"]
    assert sorted(r["task"] for r in runs) == ["after", "slow"]  # nothing ran twice


# ------------------------------------------------------------------ processes


def serve(pg_url: str, state_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CONTINUUM_DATABASE_URL": pg_url, "CONTINUUM_LEADER_LEASE_S": "3",
           "CONTINUUM_RECONCILE_INTERVAL_S": "0.1", "CONTINUUM_FEDERATION_RESYNC_S": "0.5"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", "server", "--port", str(port),
             "--state-dir", str(state_dir)], env=env, stdout=out, stderr=subprocess.STDOUT)


def role(port: int) -> str | None:
    try:
        return str(httpx.get(f"http://127.0.0.1:{port}/leaderz", timeout=1).json()["role"])
    except (httpx.HTTPError, ValueError):
        return None


def test_sigkill_of_the_leader_process(pg_url: str, tmp_path: Path) -> None:
    """Two ``continuum server`` processes; SIGKILL the leader; the other leads within
    ``leader_lease_s / 3`` plus a step (measured and printed)."""
    ports = [free_port(), free_port()]
    # one after the other: the schema and the shared state directory's keys are made by
    # the first (concurrent first starts are the migrations' business, not this test's)
    procs = [serve(pg_url, tmp_path, ports[0], tmp_path / "server-0.log")]
    try:
        wait_for(lambda: role(ports[0]) == "leader", timeout=60, message="the first leads")
        procs.append(serve(pg_url, tmp_path, ports[1], tmp_path / "server-1.log"))
        wait_for(lambda: role(ports[1]) == "follower", timeout=60, message="the second follows")
        # the CLI's client on the follower: a site removal is redirected to the leader
        token = admin_token(tmp_path)
        with Client(f"http://127.0.0.1:{ports[1]}", token=token) as follower:
            site = {**federation().spec.sites[0].wire(), "name": "sim-2"}
            follower.register_site(site)
            out = follower.remove_site("sim-2", runs="leave")
            assert out == {"site": "sim-2", "runs": "leave", "cancelled": [], "left": []}
            wait_for(lambda: "sim-2" not in {s["name"] for s in follower.sites()["items"]},
                     timeout=5, message="the follower forgets sim-2")
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=10)
        t0 = time.monotonic()
        wait_for(lambda: role(ports[1]) == "leader", timeout=10, interval=0.02,
                 message="the second to lead")
        took = time.monotonic() - t0
        print(f"takeover after SIGKILL: {took:.2f}s (leader_lease_s=3)")
        assert took < 3 / 3 + 1.5
        s = Store(pg_url)
        try:
            lease = current_leader(s)
        finally:
            s.close()
        assert lease is not None and lease.epoch == 2
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_a_request_queued_when_the_loop_stops_is_answered_not_leader(tmp_path: Path) -> None:
    """The loop ended (this replica stepped down) with a site removal still queued: the
    waiting call gets NotLeader at once (307 to the new leader, or 503), not a timeout."""
    cp = ControlPlane(Settings(state_dir=tmp_path / "state"), federation())
    try:
        fut = cp.reconciler.request(RemoveSite("cloud", cancel_runs=False))
        stopped = threading.Event()
        stopped.set()
        cp._run_loop(stopped, Lease("reconciler", "r", 1))  # the loop's term ends at once
        error = fut.exception(timeout=1)
        assert isinstance(error, NotLeader) and error.leader is None
    finally:
        cp.federation.close()
        cp.store.close()
