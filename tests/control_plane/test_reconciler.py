"""The reconciler: retries with backoff then failure with the reason, dependants
cancelled, unschedulable tasks waiting with a reason, a restart of the control plane
(same state directory) re-adopting runs instead of starting them again, and a run
placed but not yet dispatched before a crash being submitted exactly once, and a run
that moved on while it was submitted keeping its state, and a released run not polled
again."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from continuum.errors import AdapterError, TransientError
from continuum.model import RunState
from control_plane.reconciler import Reconciler, failure_backoff_s
from control_plane.store import RunRow
from tests.control_plane.harness import control_plane, wait_state, workflow
from tests.helpers import wait_for


def test_failing_task_is_retried_then_fails_the_workflow(tmp_path: Path, database_url: str) -> None:
    with control_plane(tmp_path, database_url=database_url, failure_rate=1.0) as (_, api):
        doc = workflow(tasks=[
            {"name": "flaky", "command": ["true"], "work": 10, "retries": 2},
            {"name": "after", "command": ["true"], "dependsOn": ["flaky"]},
        ])
        wid = api.post("/v1/workflows", json=doc).json()["id"]
        wf = wait_state(api, wid, ("Failed",))
    runs = [r for r in wf["runs"] if r["task"] == "flaky"]
    assert [r["attempt"] for r in runs] == [1, 2, 3]
    assert all(r["state"] == "Failed" and r["exitCode"] == 1 for r in runs)
    assert "task 'flaky' failed after 3 attempt(s)" in wf["reason"]
    assert "exit code 1" in wf["reason"]
    assert wf["reason"].count("code 1") == 1, wf["reason"]  # said once, not per layer
    tasks = {t["name"]: t for t in wf["tasks"]}
    assert tasks["flaky"]["state"] == "Failed"
    assert tasks["after"]["state"] == "Cancelled"
    assert not [r for r in wf["runs"] if r["task"] == "after"]
    retries = [e for e in wf["events"] if e["type"] == "TaskRetry"]
    assert len(retries) == 2 and "retrying in" in retries[0]["message"]


def test_unschedulable_task_waits_with_a_reason(tmp_path: Path, database_url: str) -> None:
    with control_plane(tmp_path, database_url=database_url) as (_, api):
        doc = workflow(tasks=[{"name": "gpu-only", "command": ["true"],
                               "constraints": {"tiers": ["hpc"]}}])
        wid = api.post("/v1/workflows", json=doc).json()["id"]

        def reason() -> str | None:
            t = api.get(f"/v1/workflows/{wid}").json()["tasks"][0]
            return t["reason"] if t["reason"].startswith("unschedulable") else None

        msg = wait_for(reason, timeout=10, message="an unschedulable reason")
        assert "wrong tier" in msg and "hpc" in msg
        wf = api.get(f"/v1/workflows/{wid}").json()
        assert wf["state"] == "Pending" and wf["runs"] == []
        events = [e for e in wf["events"] if e["type"] == "TaskUnschedulable"]
        assert len(events) == 1  # said once, not every cycle


def test_restart_readopts_running_runs(tmp_path: Path, database_url: str) -> None:
    # time scale 10: work 20 core-s on one core takes 2 s of wall time
    doc = workflow(tasks=[
        {"name": "a", "command": ["true"], "work": 20, "outputs": [{"name": "x", "path": "x"}]},
        {"name": "b", "command": ["true"], "work": 5, "inputs": [{"name": "x"}]},
    ])
    with control_plane(tmp_path, database_url=database_url, time_scale=10.0) as (_, api):
        wid = api.post("/v1/workflows", json=doc).json()["id"]
        wait_for(lambda: any(r["state"] == "Running" for r in
                             api.get(f"/v1/workflows/{wid}").json()["runs"]),
                 timeout=10, message="task a running")
    with control_plane(tmp_path, database_url=database_url, time_scale=10.0) as (_, api):
        wf = wait_state(api, wid, ("Succeeded", "Failed"), timeout=30)
    assert wf["state"] == "Succeeded", wf["reason"]
    assert sorted(r["task"] for r in wf["runs"]) == ["a", "b"]  # nothing ran twice


def test_run_placed_before_a_crash_is_submitted_once(tmp_path: Path, database_url: str) -> None:
    with control_plane(tmp_path, database_url=database_url, time_scale=10.0) as (cp, api):
        cp.stop()  # stop the loop; drive the cycle by hand
        wid = api.post("/v1/workflows", json=workflow(tasks=[
            {"name": "a", "command": ["true"], "work": 5}])).json()["id"]
        cp.reconciler._place(cp.reconciler.clock())  # placed, then "crash" before dispatch
        with cp.store.session() as s:
            (run,) = s.scalars(select(RunRow).where(RunRow.workflow_id == wid)).all()
            assert run.state == "Placed" and run.handle is None
    with control_plane(tmp_path, database_url=database_url, time_scale=10.0) as (_, api):
        wf = wait_state(api, wid, ("Succeeded", "Failed"), timeout=30)
    assert wf["state"] == "Succeeded"
    assert [r["id"] for r in wf["runs"]] == [run.id]


def test_a_run_is_submitted_in_the_cycle_that_places_it(tmp_path: Path,
                                                        database_url: str) -> None:
    """A cycle submits the runs its own placement made: a new task is Dispatched after
    one cycle (it used to wait Placed for the next cycle's decisions), with the events of
    both steps, and the next cycle tracks it."""
    with control_plane(tmp_path, database_url=database_url, time_scale=10.0) as (cp, api):
        cp.stop()  # drive the cycle by hand
        wid = api.post("/v1/workflows", json=workflow(tasks=[
            {"name": "a", "command": ["true"], "work": 100_000}])).json()["id"]
        cp.reconciler.cycle()
        with cp.store.session() as s:
            (run,) = s.scalars(select(RunRow).where(RunRow.workflow_id == wid)).all()
            assert run.state == RunState.Dispatched and run.handle is not None
        events = [e["type"] for e in api.get(f"/v1/workflows/{wid}").json()["events"]]
        assert events.index("RunPlaced") < events.index("RunDispatched")
        cp.reconciler.cycle()
        assert run.id in cp.reconciler._tracked


def test_a_refused_submit_right_after_placement_is_decided_next_cycle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A permanent refusal of the submit made in the placing cycle leaves the run Placed;
    the next cycle's decisions submit it again and fail it (its task is retried)."""
    with control_plane(tmp_path, time_scale=10.0) as (cp, api):
        cp.stop()  # drive the cycle by hand
        adapter = cp.federation.get_adapter("cloud")
        assert adapter is not None
        calls: list[str] = []

        def refuse(run, node, request_id):  # type: ignore[no-untyped-def]
            calls.append(request_id)
            raise AdapterError("no such partition", site="cloud")

        monkeypatch.setattr(adapter, "submit", refuse)
        wid = api.post("/v1/workflows", json=workflow(tasks=[
            {"name": "a", "command": ["true"], "work": 5}])).json()["id"]
        cp.reconciler.cycle()
        (run,) = api.get(f"/v1/workflows/{wid}").json()["runs"]
        assert run["state"] == "Placed" and calls == [run["id"]]
        cp.reconciler.cycle()
        runs = {r["id"]: r for r in api.get(f"/v1/workflows/{wid}").json()["runs"]}
        assert runs[run["id"]]["state"] == "Failed"
        assert "could not dispatch" in runs[run["id"]]["reason"]
        assert "no such partition" in runs[run["id"]]["reason"]
        assert calls[:2] == [run["id"], run["id"]]


def test_a_run_that_moved_on_while_it_was_submitted_is_not_set_back_to_dispatched(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dispatch writes the handles onto the rows it read before submitting, but only
    onto those still Placed: a run that another writer moved on meanwhile (a cancel, the
    loop of a later term) keeps its state."""
    with control_plane(tmp_path, database_url=database_url, time_scale=10.0) as (cp, api):
        cp.stop()  # drive the cycle by hand
        wid = api.post("/v1/workflows", json=workflow(tasks=[
            {"name": "a", "command": ["true"], "work": 5}])).json()["id"]
        cp.reconciler._place(cp.reconciler.clock())
        with cp.store.session() as s:
            (run_id,) = s.scalars(select(RunRow.id).where(RunRow.workflow_id == wid)).all()
            # SQL NULL, not the JSON text 'null', though the new run went in through Core
            assert s.scalar(select(RunRow.id).where(RunRow.handle.is_(None),
                                                    RunRow.accounting.is_(None))) == run_id
        adapter = cp.federation.get_adapter("cloud")
        assert adapter is not None
        submit = adapter.submit

        def moved_on_then_submit(run, node, request_id):  # type: ignore[no-untyped-def]
            with cp.store.session() as s:
                row = s.get(RunRow, run_id)
                assert row is not None
                row.state = RunState.Cancelled
            return submit(run, node, request_id=request_id)

        monkeypatch.setattr(adapter, "submit", moved_on_then_submit)
        cp.reconciler.applier._dispatch([run_id], None)
        with cp.store.session() as s:
            row = s.get(RunRow, run_id)
            assert row is not None and row.state == RunState.Cancelled and row.handle is None

def test_a_transient_submit_refusal_is_logged_once_per_reason_and_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with control_plane(tmp_path, time_scale=10.0) as (cp, api):
        cp.stop()  # drive the cycle by hand
        adapter = cp.federation.get_adapter("cloud")
        assert adapter is not None
        submit, refusals = adapter.submit, [0]

        def refuse_twice(run, node, request_id):  # type: ignore[no-untyped-def]
            if refusals[0] < 2:
                refusals[0] += 1
                raise TransientError("the queue is full", site="cloud")
            return submit(run, node, request_id=request_id)

        monkeypatch.setattr(adapter, "submit", refuse_twice)
        wid = api.post("/v1/workflows", json=workflow(tasks=[
            {"name": "a", "command": ["true"], "work": 5}])).json()["id"]
        with caplog.at_level(logging.WARNING, logger="control_plane.apply"):
            for _ in range(4):
                cp.reconciler.cycle()
        refused = [r.getMessage() for r in caplog.records if "refused the submit" in r.message]
        assert len(refused) == 1 and "site cloud" in refused[0], refused
        assert "the queue is full" in refused[0]
        runs = api.get(f"/v1/workflows/{wid}").json()["runs"]
        assert refusals[0] == 2 and [r["state"] for r in runs] in (
            ["Dispatched"], ["Running"], ["Succeeded"])


def test_a_failing_cycle_logs_one_traceback_then_backs_off(
        caplog: pytest.LogCaptureFixture) -> None:
    """A database that is down fails every cycle: one traceback, then one line at 2, 4, 8 …
    failures, waits doubling from the interval (at most max(interval, 5 s)), and a line
    when a cycle succeeds again."""
    calls: list[float] = []
    stop = threading.Event()

    def cycle() -> None:
        calls.append(time.monotonic())
        if len(calls) == 6:
            stop.set()
        elif len(calls) <= 4:
            raise RuntimeError("connection refused\nIs the server running?")

    loop = SimpleNamespace(cycle=cycle, _wake=threading.Event(), resync=lambda: None,
                           settings=SimpleNamespace(reconcile_interval_s=0.02))
    with caplog.at_level(logging.INFO, logger="control_plane.reconciler"):
        Reconciler.run_forever(loop, stop)  # type: ignore[arg-type]
    records = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records == [
        ("ERROR", "reconcile cycle failed; retrying next interval", True),
        ("WARNING", "reconcile cycle failed 2 times in a row: RuntimeError: connection refused",
         False),
        ("WARNING", "reconcile cycle failed 4 times in a row: RuntimeError: connection refused",
         False),
        ("INFO", "reconcile cycle succeeded again after 4 failed", False)]
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert [round(g, 2) >= w for g, w in zip(gaps, [0.02, 0.04, 0.08, 0.16, 0.02],
                                              strict=True)] == [True] * 5
    assert [failure_backoff_s(n, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert failure_backoff_s(3, 30.0) == 30.0


def test_a_cycle_reads_only_the_workflows_that_changed(tmp_path: Path,
                                                       database_url: str) -> None:
    """Edge-driven in steady state: once every run is dispatched and running, a cycle
    reads no workflow; a cancel makes the next cycle read that workflow alone; a full
    resync reads every live one (and a new leader starts with one)."""
    long_task = {"name": "a", "command": ["true"], "work": 100_000}  # ~3 h at time scale 10
    with control_plane(tmp_path, database_url=database_url, time_scale=10.0) as (cp, api):
        cp.stop()  # drive the cycle by hand
        rec = cp.reconciler
        ids = [api.post("/v1/workflows", json=workflow(f"wf{i}", tasks=[long_task])).json()["id"]
               for i in range(5)]
        rec.cycle()
        assert rec.observed_workflows == 5  # the first cycle is a full one

        def quiet() -> bool:
            rec.cycle()
            return rec.observed_workflows == 0

        wait_for(quiet, timeout=20, message="a cycle that reads nothing")
        assert {api.get(f"/v1/workflows/{w}").json()["state"] for w in ids} == {"Running"}
        assert api.delete(f"/v1/workflows/{ids[2]}").status_code == 202
        rec.cycle()
        assert rec.observed_workflows == 1
        assert api.get(f"/v1/workflows/{ids[2]}").json()["state"] == "Cancelled"
        rec.cycle()  # the cancel's own writes: that workflow once more, now finished
        wait_for(quiet, timeout=20, message="quiet again after the cancel")
        rec.resync()
        rec.cycle()
        assert rec.observed_workflows == 4  # the full resync: every live workflow


def test_a_burst_past_the_cycle_cap_is_taken_over_several_cycles(tmp_path: Path,
                                                                  database_url: str) -> None:
    """At most ``cycle_max_workflows`` workflows a cycle, oldest submissions first; a
    cycle that left some wakes the next, and every workflow finishes."""
    with control_plane(tmp_path, database_url=database_url, cycle_max_workflows=2) as (cp, api):
        cp.stop()
        rec = cp.reconciler
        ids = [api.post("/v1/workflows", json=workflow(f"wf{i}", tasks=[
            {"name": "a", "command": ["true"], "work": 1}])).json()["id"] for i in range(5)]
        rec.cycle()
        assert rec.observed_workflows == 2 and rec.backlogged
        states = lambda: [api.get(f"/v1/workflows/{w}").json()["state"] for w in ids]  # noqa: E731
        assert states()[:2] == ["Running", "Running"]  # the oldest two were placed
        assert states()[2:] == ["Pending"] * 3

        def finished() -> bool:
            rec.cycle()
            return rec.observed_workflows <= 2 and set(states()) == {"Succeeded"}

        wait_for(finished, timeout=30, message="every workflow Succeeded")


def test_a_released_run_is_polled_no_more(tmp_path: Path, database_url: str) -> None:
    """A run is released in the cycle it ends; the next cycles do not ask its backend
    about it again (the sim twin used to adopt the released run back, journal it again
    and keep it for good)."""
    with control_plane(tmp_path, database_url=database_url) as (cp, api):
        cp.stop()  # drive the cycle by hand
        rec = cp.reconciler
        adapter = cp.federation.get_adapter("cloud")
        assert adapter is not None
        wid = api.post("/v1/workflows", json=workflow()).json()["id"]

        def released() -> bool:
            rec.cycle()
            with cp.store.session() as s:
                runs = s.scalars(select(RunRow).where(RunRow.workflow_id == wid)).all()
            return len(runs) == 2 and all(r.released for r in runs)

        wait_for(released, timeout=20, message="both runs released")
        asked: list[str] = []
        status = adapter.status

        def recording(handles):  # type: ignore[no-untyped-def]
            asked.extend(h.run_id for h in handles)
            return status(handles)

        adapter.status = recording  # type: ignore[method-assign]
        for _ in range(3):
            rec.cycle()
        assert asked == []
        assert adapter._runs == {}  # type: ignore[attr-defined]
        assert api.get(f"/v1/workflows/{wid}").json()["state"] == "Succeeded"


def test_a_finished_workflows_tasks_are_not_read_and_their_cache_is_dropped(
        tmp_path: Path, database_url: str) -> None:
    """The cycle after a workflow ends reads its unreleased runs, not its tasks, and
    forgets the static columns (retries, dependencies, outputs) it kept of them."""
    with control_plane(tmp_path, database_url=database_url) as (cp, api):
        cp.stop()  # drive the cycle by hand
        rec = cp.reconciler
        wid = api.post("/v1/workflows", json=workflow()).json()["id"]
        rec.cycle()
        assert len(rec._static_by_wf.get(wid, ())) == 2 and len(rec._task_static) == 2

        def finished() -> bool:
            rec.cycle()
            return api.get(f"/v1/workflows/{wid}").json()["state"] == "Succeeded"

        wait_for(finished, timeout=20, message="the workflow Succeeded")
        rec._dirty.add(wid)
        obs = rec.observe(statuses=False)
        assert obs.workflows == () and obs.tasks == ()
        assert wid not in rec._static_by_wf and rec._task_static == {}
