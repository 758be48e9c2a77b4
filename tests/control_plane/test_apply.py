"""``apply`` against a real store (SQLite in a temporary directory, and PostgreSQL): each action re-checks
the row it changes, so applying one twice, or one about a run that moved on, is
harmless; a make-before-break move is a row whose ``replaces_run_id`` names the run it
replaces, and the decisions read the move from that column."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.base import AdapterContext, RunStatus
from continuum.model import RunState, TaskState, Topology, WorkflowState
from control_plane.apply import Applier
from control_plane.artifacts import LocalArtifactStore
from control_plane.decide import (
    MigrateRun,
    Policy,
    RetryTask,
    SetRunState,
    StartMove,
    StopWorkflow,
    decide,
)
from control_plane.federation import Federation
from control_plane.reconciler import Reconciler
from control_plane.settings import Settings
from control_plane.store import EventRow, RunRow, Store, TaskRow, WorkflowRow
from monitoring.metrics import ControlPlaneMetrics
from monitoring.topology import TopologyModel

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class World:
    store: Store
    applier: Applier
    reconciler: Reconciler

    def events(self, type_: str) -> list[str]:
        with self.store.session() as s:
            return [e.message for e in s.scalars(select(EventRow).where(EventRow.type == type_)
                                                 .order_by(EventRow.id))]

    def run(self, run_id: str) -> RunRow:
        with self.store.session() as s:
            row = s.get(RunRow, run_id)
            assert row is not None
            return row

    def task(self, task_id: int) -> TaskRow:
        with self.store.session() as s:
            row = s.get(TaskRow, task_id)
            assert row is not None
            return row


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    settings = Settings(state_dir=tmp_path, database_url=database_url)
    store = Store(settings.db_url)
    metrics = ControlPlaneMetrics()
    artifacts = LocalArtifactStore(settings.artifact_dir, store)
    federation = Federation(store, AdapterContext(artifacts=artifacts, state_dir=tmp_path),
                            settings, metrics)
    network = TopologyModel(Topology())
    reconciler = Reconciler(store, federation, settings, metrics, network)
    with store.session() as s:
        s.add(WorkflowRow(id="wf-1", name="wf", state=WorkflowState.Running,
                          document={"spec": {"tasks": []}}))
        s.flush()
        s.add(TaskRow(id=1, workflow_id="wf-1", name="svc", state=TaskState.Running,
                      spec={"name": "svc", "retries": 1}, depends_on=[], attempts=1))
        s.flush()
        s.add(RunRow(id="old", workflow_id="wf-1", task_id=1, task_name="svc", attempt=1,
                     state=RunState.Running, site="gone", node="gone/n1", created_at=T0,
                     placed_at=T0))
    yield World(store, reconciler.applier, reconciler)
    store.close()


def test_an_action_applied_twice_changes_the_row_once(world: World) -> None:
    failed = SetRunState("old", RunState.Failed, "failed on gone/n1: boom", reason="boom",
                         status=RunStatus(RunState.Failed, reason="boom", exit_code=2))
    retry = RetryTask(1, "old", T0.timestamp() + 4, "attempt 1 failed (boom); retrying in 4s")
    world.applier.apply([failed, retry])
    world.applier.apply([failed, retry])
    run = world.run("old")
    assert (run.state, run.reason, run.exit_code) == (RunState.Failed, "boom", 2)
    assert world.events("RunFailed") == ["failed on gone/n1: boom"]
    assert world.events("TaskRetry") == [retry.reason]
    task = world.task(1)
    assert task.state == TaskState.Ready and task.not_before == T0.replace(second=4)
    # a finished run is never moved back
    world.applier.apply([SetRunState("old", RunState.Running, "running again")])
    assert world.run("old").state == RunState.Failed


def test_a_run_that_fails_is_logged_at_info_one_that_succeeds_at_debug(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    """Every step is an event; the log says at INFO only a run's bad end (a succeeded run,
    the common case, is a DEBUG line: one line a task was a busy reconciler's CPU)."""
    with world.store.session() as s:
        s.add(RunRow(id="ok", workflow_id="wf-1", task_id=1, task_name="svc", attempt=1,
                     state=RunState.Running, site="gone", node="gone/n1", created_at=T0,
                     placed_at=T0))
    with caplog.at_level(logging.DEBUG, logger="control_plane.apply"):
        world.applier.apply([
            SetRunState("ok", RunState.Succeeded, "succeeded on gone/n1 in 1.0s",
                        status=RunStatus(RunState.Succeeded, exit_code=0), runtime_s=1.0),
            SetRunState("old", RunState.Failed, "failed on gone/n1: boom", reason="boom",
                        status=RunStatus(RunState.Failed, reason="boom", exit_code=2))])
    levels = {r.getMessage().split()[1]: r.levelno for r in caplog.records
              if r.getMessage().startswith("run ")}
    assert levels == {"ok": logging.DEBUG, "old": logging.INFO}
    assert world.events("RunSucceeded") == ["succeeded on gone/n1 in 1.0s"]
    assert world.events("RunFailed") == ["failed on gone/n1: boom"]


def test_a_stop_cancels_runs_ends_tasks_and_finishes_the_workflow_once(world: World) -> None:
    stop = StopWorkflow("wf-1", ("old",), "cancelled on request", WorkflowState.Cancelled,
                        "cancelled on request")
    world.applier.apply([stop])
    world.applier.apply([stop])
    assert world.run("old").state == RunState.Cancelled  # no handle: nothing to tell a backend
    assert world.task(1).state == TaskState.Cancelled
    with world.store.session() as s:
        wf = s.get(WorkflowRow, "wf-1")
        assert wf is not None and wf.state == WorkflowState.Cancelled
    assert world.events("WorkflowCancelled") == ["cancelled on request"]
    assert world.events("RunCancelled") == ["cancelled on request"]


def test_a_move_is_a_column_the_decisions_read(world: World) -> None:
    world.applier.apply([StartMove("old", "new", "gone", "gone/n2", {"node": "gone/n2"},
                                   "better-node: service moves to gone/n2 as run new",
                                   "placed on gone/n2 to replace run old")])
    new = world.run("new")
    assert (new.state, new.replaces_run_id, new.attempt) == (RunState.Placed, "old", 1)
    assert world.run("old").reason == "migrating to run new on gone/n2"
    # the new run fails: the decisions (from what observe reads) abort the move
    obs = world.reconciler.observe(statuses=False)
    obs = type(obs)(now=obs.now, workflows=obs.workflows, tasks=obs.tasks, runs=obs.runs,
                    statuses={"new": RunStatus(RunState.Failed, reason="refused")})
    actions = decide(obs, Policy())
    world.applier.apply(actions)
    assert world.run("new").state == RunState.Failed
    assert world.run("old").state == RunState.Running
    assert world.task(1).state == TaskState.Running  # the move cost the task nothing
    assert world.events("MigrationAborted") == [
        "run new did not start (refused); run old keeps serving on gone/n1"]


def test_a_migrated_run_requeues_its_task_without_counting_the_attempt(world: World) -> None:
    world.applier.apply([MigrateRun("old", "node-lost", "node gone/n1 left the inventory")])
    world.applier.apply([MigrateRun("old", "node-lost", "node gone/n1 left the inventory")])
    assert world.run("old").state == RunState.Migrated
    task = world.task(1)
    assert (task.state, task.attempts) == (TaskState.Ready, 0)
    assert world.events("RunMigrated") == ["node-lost: node gone/n1 left the inventory"]
