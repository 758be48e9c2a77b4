"""The reconciler's decisions as a pure function: plain observations in, plain actions
out (no store, no adapter, no clock)."""

from __future__ import annotations

from dataclasses import replace
from types import UnionType
from typing import Any

import pytest

from adapters.base import RunStatus
from continuum.model import RunState, TaskState, WorkflowState
from control_plane.decide import (
    AbortMove,
    CancelTask,
    Decider,
    Dispatch,
    DispatchRetry,
    FailTask,
    FinishWorkflow,
    MarkTaskReady,
    MigrateRun,
    Observed,
    PlaceTasks,
    Policy,
    Release,
    RetryTask,
    RunView,
    SetRunState,
    StopWorkflow,
    SucceedTask,
    TaskView,
    WorkflowView,
    decide,
    retry_delay,
)

NOW = 1_000_000.0
POLICY = Policy(retry_backoff_s=2.0, retry_backoff_max_s=60.0, dispatch_deadline_s=30.0)
WF = WorkflowView("wf-1", "wf", WorkflowState.Running)


def task(id_: int, name: str, state: TaskState, **kw: object) -> TaskView:
    return TaskView(id_, WF.id, name, state, **kw)  # type: ignore[arg-type]


def run(id_: str, task_id: int, state: RunState, **kw: object) -> RunView:
    kw.setdefault("node", "site/n1")
    kw.setdefault("site", "site")
    kw.setdefault("has_handle", True)
    return RunView(id_, WF.id, task_id, state, **kw)  # type: ignore[arg-type]


def observed(tasks: list[TaskView], runs: list[RunView] = (),  # type: ignore[assignment]
             statuses: dict[str, RunStatus] | None = None, wf: WorkflowView = WF,
             artifacts: frozenset[tuple[str, str]] = frozenset()) -> Observed:
    return Observed(now=NOW, workflows=(wf,), tasks=tuple(tasks), runs=tuple(runs),
                    statuses=statuses or {}, artifacts=artifacts)


def of(actions: list[Any], kind: type | UnionType) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


# ------------------------------------------------------------------ dependencies


@pytest.mark.parametrize("dep_state, expected", [
    (TaskState.Succeeded, MarkTaskReady(2)),
    (TaskState.Failed, CancelTask(2, "dependency 'a' failed")),
    (TaskState.Cancelled, CancelTask(2, "dependency 'a' cancelled")),
])
def test_a_waiting_task_follows_its_dependency(dep_state: TaskState, expected: object) -> None:
    obs = observed([task(1, "a", dep_state), task(2, "b", TaskState.Waiting, depends_on=("a",)),
                    task(3, "c", TaskState.Running)])
    actions = decide(obs, POLICY)
    assert expected in actions
    if isinstance(expected, MarkTaskReady):
        assert PlaceTasks((2,)) in actions  # ready and placed in the same cycle


def test_a_waiting_task_waits_while_its_dependency_runs() -> None:
    obs = observed([task(1, "a", TaskState.Running),
                    task(2, "b", TaskState.Waiting, depends_on=("a",))])
    assert not of(decide(obs, POLICY), MarkTaskReady | CancelTask)


def test_a_failure_cancels_a_whole_chain_in_one_cycle() -> None:
    obs = observed([task(1, "a", TaskState.Succeeded), task(4, "x", TaskState.Failed),
                    task(2, "b", TaskState.Waiting, depends_on=("x",)),
                    task(3, "c", TaskState.Waiting, depends_on=("b",))])
    actions = decide(obs, POLICY)
    assert of(actions, CancelTask) == [CancelTask(2, "dependency 'x' failed"),
                                       CancelTask(3, "dependency 'b' cancelled")]


# ------------------------------------------------------------------ a run's end


@pytest.mark.parametrize("attempts, retries, delay", [
    (1, 2, 2.0),    # first retry: the base
    (2, 2, 4.0),    # doubles per attempt
    (7, 9, 60.0),   # 2·2^6 = 128 → capped at 60
])
def test_a_failed_run_with_attempts_left_is_retried_after_backoff(
        attempts: int, retries: int, delay: float) -> None:
    obs = observed([task(1, "a", TaskState.Running, attempts=attempts, retries=retries)],
                   [run("r1", 1, RunState.Running)],
                   {"r1": RunStatus(RunState.Failed, reason="boom", exit_code=1)})
    actions = decide(obs, POLICY)
    assert SetRunState("r1", RunState.Failed, "failed on site/n1: boom (exit code 1)",
                       reason="boom", status=obs.statuses["r1"]) in actions
    (retry,) = of(actions, RetryTask)
    assert retry.not_before == NOW + delay
    assert retry.reason == f"attempt {attempts} failed (boom); retrying in {delay:.0f}s"
    assert retry_delay(POLICY, attempts) == delay
    assert not of(actions, PlaceTasks)  # the backoff has not passed
    assert Release("r1") in actions


def test_a_retry_without_backoff_is_placed_in_the_same_cycle() -> None:
    obs = observed([task(1, "a", TaskState.Running, attempts=1, retries=1)],
                   [run("r1", 1, RunState.Running)], {"r1": RunStatus(RunState.Failed)})
    actions = decide(obs, replace(POLICY, retry_backoff_s=0.0))
    assert of(actions, RetryTask) and PlaceTasks((1,)) in actions


def test_no_attempts_left_fails_the_task_then_the_workflow_and_cancels_its_other_runs() -> None:
    obs = observed([task(1, "a", TaskState.Running, attempts=3, retries=2),
                    task(2, "b", TaskState.Running), task(3, "c", TaskState.Waiting,
                                                           depends_on=("a",))],
                   [run("r1", 1, RunState.Running), run("r2", 2, RunState.Running)],
                   {"r1": RunStatus(RunState.Failed, reason="exit code 1", exit_code=1)})
    actions = decide(obs, POLICY)
    why = "failed after 3 attempt(s); last: exit code 1"  # the code said once
    assert FailTask(1, "r1", why) in actions
    assert CancelTask(3, "dependency 'a' failed") in actions
    (stop,) = of(actions, StopWorkflow)
    assert stop == StopWorkflow(WF.id, ("r2",), f"workflow failed: task 'a' {why}",
                                WorkflowState.Failed, f"task 'a' {why}")
    assert not of(actions, PlaceTasks | RetryTask)


def test_a_succeeded_run_succeeds_its_task_and_the_workflow() -> None:
    obs = observed([task(1, "a", TaskState.Succeeded), task(2, "b", TaskState.Running,
                                                            outputs=("x",))],
                   [run("r2", 2, RunState.Running, started_at=NOW - 10)],
                   {"r2": RunStatus(RunState.Succeeded)}, artifacts=frozenset({(WF.id, "x")}))
    actions = decide(obs, POLICY)
    (done,) = of(actions, SetRunState)
    assert done.state == RunState.Succeeded and done.runtime_s == 10.0
    assert done.message == "succeeded on site/n1 in 10.0s"
    assert SucceedTask(2) in actions
    assert FinishWorkflow(WF.id, WorkflowState.Succeeded) in actions


def test_a_success_whose_outputs_were_not_kept_is_a_failure() -> None:
    obs = observed([task(1, "a", TaskState.Running, outputs=("x", "y"), attempts=1)],
                   [run("r1", 1, RunState.Running)], {"r1": RunStatus(RunState.Succeeded)},
                   artifacts=frozenset({(WF.id, "x")}))
    actions = decide(obs, POLICY)
    (st,) = of(actions, SetRunState)
    assert (st.state, st.reason) == (RunState.Failed, "output(s) y were not kept")
    assert not of(actions, SucceedTask | FinishWorkflow)
    assert of(actions, FailTask)  # retries=0


def test_a_site_whose_status_call_failed_changes_nothing_of_its_runs() -> None:
    obs = replace(observed([task(1, "a", TaskState.Running)], [run("r1", 1, RunState.Running)]),
                  status_errors={"site": "connection refused"})
    assert decide(obs, POLICY) == []


def test_running_is_recorded_once() -> None:
    st = RunStatus(RunState.Running)
    dispatched = observed([task(1, "a", TaskState.Running)], [run("r1", 1, RunState.Dispatched)],
                          {"r1": st})
    assert decide(dispatched, POLICY) == [SetRunState("r1", RunState.Running,
                                                      "running on site/n1", status=st)]
    running = observed([task(1, "a", TaskState.Running)], [run("r1", 1, RunState.Running)],
                       {"r1": st})
    assert decide(running, POLICY) == []


# ------------------------------------------------------------------ cancel


def test_a_cancelling_workflow_cancels_its_active_runs_and_ends() -> None:
    wf = replace(WF, state=WorkflowState.Cancelling)
    obs = observed([task(1, "a", TaskState.Running), task(2, "b", TaskState.Ready),
                    task(3, "c", TaskState.Succeeded)],
                   [run("r1", 1, RunState.Running), run("r0", 3, RunState.Succeeded,
                                                        released=True),
                    run("r2", 2, RunState.Placed)], wf=wf)
    actions = decide(obs, POLICY)
    assert of(actions, StopWorkflow) == [StopWorkflow(
        WF.id, ("r1", "r2"), "cancelled on request", WorkflowState.Cancelled,
        "cancelled on request")]
    assert not of(actions, PlaceTasks | Dispatch)  # nothing new for a cancelled workflow
    assert of(actions, Release) == [Release("r1"), Release("r2")]


# ------------------------------------------------------------------ place and dispatch


def test_ready_tasks_are_placed_in_one_batch_once_their_backoff_passed() -> None:
    obs = observed([task(1, "a", TaskState.Ready), task(2, "b", TaskState.Ready,
                                                        not_before=NOW + 1),
                    task(3, "c", TaskState.Ready, not_before=NOW - 1)])
    assert of(decide(obs, POLICY), PlaceTasks) == [PlaceTasks((1, 3))]


def test_a_placement_batch_past_its_cap_defers_the_rest_to_the_next_cycle() -> None:
    other = WorkflowView("wf-2", "other", WorkflowState.Running)
    obs = Observed(now=NOW, workflows=(WF, other), tasks=(
        task(1, "a", TaskState.Ready), task(2, "b", TaskState.Ready),
        TaskView(3, other.id, "c", TaskState.Ready)))
    decider = Decider(obs, Policy(max_placements=2))
    assert of(decider.decide(), PlaceTasks) == [PlaceTasks((1, 2))]
    assert decider.deferred == {"wf-2"}


def test_placed_runs_are_dispatched() -> None:
    obs = observed([task(1, "a", TaskState.Running)], [run("r1", 1, RunState.Placed,
                                                           has_handle=False)])
    assert decide(obs, POLICY) == [Dispatch("r1")]


@pytest.mark.parametrize("waited, transient, expected", [
    (5.0, True, "retry"),       # transient, within the deadline: stays Placed
    (31.0, True, "fail"),       # transient past dispatch_deadline_s: the run fails
    (0.0, False, "fail"),       # permanent: fails at once
])
def test_a_failed_submit(waited: float, transient: bool, expected: str) -> None:
    obs = observed([task(1, "a", TaskState.Running, attempts=1, retries=1)],
                   [run("r1", 1, RunState.Placed, placed_at=NOW - waited, has_handle=False)])
    decider = Decider(obs, POLICY)
    decider.decide()
    actions = decider.submit_failed("r1", "queue full", transient)
    if expected == "retry":
        assert actions == [DispatchRetry("r1", "queue full")]
        assert decider.submit_failed("r1", "queue full", transient) == []  # said once
    else:
        reason = "could not dispatch: queue full"
        assert actions[0] == SetRunState("r1", RunState.Failed, reason, reason=reason)
        (retry,) = of(actions, RetryTask)
        assert retry.reason.startswith(f"attempt 1 failed ({reason})")


# ------------------------------------------------------------------ make-before-break moves


def test_a_failed_make_before_break_move_does_not_fail_the_task() -> None:
    obs = observed([task(1, "svc", TaskState.Running, attempts=1, retries=0)],
                   [run("old", 1, RunState.Running),
                    run("new", 1, RunState.Dispatched, node="site/n2", replaces_run_id="old")],
                   {"new": RunStatus(RunState.Failed, reason="refused", exit_code=3),
                    "old": RunStatus(RunState.Running)})
    actions = decide(obs, POLICY)
    assert of(actions, AbortMove) == [AbortMove(
        "old", "new", "run new did not start (refused); run old keeps serving on site/n1")]
    assert not of(actions, FailTask | RetryTask | StopWorkflow | MigrateRun)
    assert Release("new") in actions and Release("old") not in actions


def test_a_replacing_run_that_runs_completes_the_move() -> None:
    obs = observed([task(1, "svc", TaskState.Running, attempts=1)],
                   [run("old", 1, RunState.Running),
                    run("new", 1, RunState.Dispatched, node="site/n2", replaces_run_id="old")],
                   {"new": RunStatus(RunState.Running), "old": RunStatus(RunState.Running)})
    actions = decide(obs, POLICY)
    assert MigrateRun("old", "better-node", "replaced by run new now running on site/n2") in actions


def test_a_replacement_whose_original_ended_is_an_ordinary_run() -> None:
    obs = observed([task(1, "svc", TaskState.Running, attempts=1, retries=1)],
                   [run("old", 1, RunState.Migrated, released=True),
                    run("new", 1, RunState.Running, replaces_run_id="old")],
                   {"new": RunStatus(RunState.Failed, reason="oom")})
    actions = decide(obs, POLICY)
    assert of(actions, RetryTask) and not of(actions, AbortMove | MigrateRun)
