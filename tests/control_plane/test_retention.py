"""Retention (control_plane/retention.py): finished workflows and old audit rows deleted
after their stated age, live work and unreleased runs never."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from continuum.model import RunState, TaskState, WorkflowState
from control_plane import retention
from control_plane.retention import Retention
from control_plane.store import (
    ArtifactRow,
    AuditRow,
    EventRow,
    RunRow,
    Store,
    TaskRow,
    WorkflowRow,
)
from monitoring.metrics import ControlPlaneMetrics
from tests.control_plane.harness import control_plane, workflow
from tests.helpers import wait_for

DAY = 86400.0


def _ago(now: float, s: float) -> datetime:
    return datetime.fromtimestamp(now - s, UTC)


def _workflow(s, wf: str, state: WorkflowState, finished: datetime | None, *,  # type: ignore[no-untyped-def]
              released: bool = True) -> None:
    """A workflow row with one task, one run, one event and one artifact row."""
    s.add(WorkflowRow(id=wf, name=wf, state=state, document={}, finished_at=finished))
    s.flush()
    task = TaskRow(workflow_id=wf, name="a", state=TaskState.Succeeded, spec={}, depends_on=[])
    s.add(task)
    s.flush()
    s.add(RunRow(id=f"{wf}-r", workflow_id=wf, task_id=task.id, task_name="a", attempt=1,
                 state=RunState.Succeeded, released=released))
    s.add(EventRow(workflow_id=wf, run_id=f"{wf}-r", type="RunSucceeded", message="done"))
    s.add(ArtifactRow(workflow_id=wf, name="x", sha256="0" * 64, size=3))


def _counts(store: Store, wf: str) -> dict[str, int]:
    with store.session() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)
                                          .where(t.workflow_id == wf)) or 0
                for t in (TaskRow, RunRow, EventRow, ArtifactRow)}


def test_a_finished_workflow_past_retention_goes_with_everything_it_owns(
        database_url: str, tmp_path: Path) -> None:
    store = Store(database_url)
    now = time.time()
    with store.session() as s:
        _workflow(s, "old", WorkflowState.Succeeded, _ago(now, 8 * DAY))
        _workflow(s, "old-failed", WorkflowState.Failed, _ago(now, 9 * DAY))
        _workflow(s, "recent", WorkflowState.Succeeded, _ago(now, 6 * DAY))
        _workflow(s, "live", WorkflowState.Running, None)
        _workflow(s, "unreleased", WorkflowState.Cancelled, _ago(now, 30 * DAY), released=False)
        s.add(AuditRow(at=_ago(now, 400 * DAY), subject="a", tenant="t", method="POST",
                       path="/v1/workflows", status=201, outcome="ok"))
        s.add(AuditRow(at=_ago(now, 10 * DAY), subject="b", tenant="t", method="POST",
                       path="/v1/workflows", status=201, outcome="ok"))
    (tmp_path / "artifacts" / "old").mkdir(parents=True)
    (tmp_path / "artifacts" / "old" / ("0" * 64)).write_bytes(b"abc")
    (tmp_path / "artifacts" / "recent").mkdir()
    metrics = ControlPlaneMetrics()
    r = Retention(store, tmp_path / "artifacts", metrics, workflow_retention_s=7 * DAY,
                  audit_retention_s=365 * DAY)
    try:
        assert r.sweep(now) is False  # nothing left over
        with store.session() as s:
            left = set(s.scalars(select(WorkflowRow.id)))
            subjects = set(s.scalars(select(AuditRow.subject)))
        assert left == {"recent", "live", "unreleased"}
        assert subjects == {"b"}
        for wf in ("old", "old-failed"):
            assert _counts(store, wf) == {"tasks": 0, "runs": 0, "events": 0, "artifacts": 0}
        for wf in ("recent", "live", "unreleased"):
            assert _counts(store, wf) == {"tasks": 1, "runs": 1, "events": 1, "artifacts": 1}
        assert not (tmp_path / "artifacts" / "old").exists()
        assert (tmp_path / "artifacts" / "recent").exists()
        assert metrics.retention_deleted.labels("workflows")._value.get() == 2
        assert metrics.retention_deleted.labels("audit")._value.get() == 1

        # the run's backend resources cleaned up: now it goes too
        with store.session() as s:
            s.execute(update(RunRow).where(RunRow.id == "unreleased-r").values(released=True))
        r.sweep(now)
        with store.session() as s:
            assert set(s.scalars(select(WorkflowRow.id))) == {"recent", "live"}
    finally:
        store.close()


def test_retention_zero_keeps_everything(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    now = time.time()
    with store.session() as s:
        _workflow(s, "old", WorkflowState.Succeeded, _ago(now, 1000 * DAY))
        s.add(AuditRow(at=_ago(now, 1000 * DAY), subject="a", tenant="t", method="POST",
                       path="/", status=201, outcome="ok"))
    r = Retention(store, tmp_path / "artifacts", ControlPlaneMetrics(),
                  workflow_retention_s=0, audit_retention_s=0)
    try:
        r.on_cycle(now)
        with store.session() as s:
            assert s.scalar(select(func.count()).select_from(WorkflowRow)) == 1
            assert s.scalar(select(func.count()).select_from(AuditRow)) == 1
    finally:
        store.close()


def _finished_a_day_ago(tmp_path: Path, n: int, now: float) -> tuple[Store, Retention]:
    """A SQLite store holding ``n`` workflows finished a day before ``now`` (one task
    each, the oldest last) and a Retention of 60 s for workflows, none for audit rows."""
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    with store.session() as s:
        for i in range(n):
            _workflow(s, f"wf{i}", WorkflowState.Succeeded, _ago(now, DAY + i))
    return store, Retention(store, tmp_path / "artifacts", ControlPlaneMetrics(),
                            workflow_retention_s=60, audit_retention_s=0)


def _workflows_left(store: Store) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(WorkflowRow)) or 0


def test_a_backlog_is_deleted_a_batch_per_cycle_then_once_a_sweep_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    now = time.time()
    store, r = _finished_a_day_ago(tmp_path, 5, now)

    try:
        seen = []
        for _ in range(4):  # cycles 0.1 s apart: a full batch makes the next cycle sweep
            r.on_cycle(now)
            seen.append(_workflows_left(store))
            now += 0.1
        assert seen == [3, 1, 0, 0]
        with store.session() as s:
            _workflow(s, "late", WorkflowState.Succeeded, _ago(now, DAY))
        r.on_cycle(now)  # the last sweep was not full: not due before SWEEP_INTERVAL_S
        assert _workflows_left(store) == 1
        r.on_cycle(now + retention.SWEEP_INTERVAL_S)
        assert _workflows_left(store) == 0
    finally:
        store.close()


def test_a_batch_of_big_workflows_is_cut_at_the_task_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "TASK_BUDGET", 1)  # each workflow here has one task
    now = time.time()
    store, r = _finished_a_day_ago(tmp_path, 3, now)
    try:
        for left in (2, 1):
            assert r.sweep(now) is True  # cut short: more are due
            assert _workflows_left(store) == left
    finally:
        store.close()


def test_a_workflow_past_retention_is_gone_from_the_api_and_its_bytes_from_the_quota(
        tmp_path: Path) -> None:
    with control_plane(tmp_path, workflow_retention_s=7 * DAY) as (cp, client):
        ids = [client.post("/v1/workflows", json=workflow(f"wf{i}")).json()["id"]
               for i in range(2)]
        for wf in ids:
            wait_for(lambda wf=wf: client.get(f"/v1/workflows/{wf}").json()["state"]
                     == "Succeeded", timeout=30, message=f"{wf} succeeds")
        old, kept = ids
        cp.artifacts.put_bytes(old, "report.txt", b"x" * 1000)
        assert cp.artifacts.tenant_usage(kept)[1] >= 1000

        def released() -> bool:
            with cp.store.session() as s:
                return all(s.scalars(select(RunRow.released).where(RunRow.workflow_id == old)))

        wait_for(released, timeout=30, message="the old workflow's runs released")
        with cp.store.session() as s:
            s.execute(update(WorkflowRow).where(WorkflowRow.id == old)
                      .values(finished_at=datetime.now(UTC) - timedelta(days=8)))
        cp.retention.sweep(time.time())
        assert client.get(f"/v1/workflows/{old}").status_code == 404
        assert client.get(f"/v1/workflows/{kept}").json()["state"] == "Succeeded"
        assert not (cp.settings.artifact_dir / old).exists()
        assert cp.artifacts.tenant_usage(kept)[1] < 1000
        assert _counts(cp.store, old) == {"tasks": 0, "runs": 0, "events": 0, "artifacts": 0}
