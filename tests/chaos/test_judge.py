"""The chaos tests' judge (:func:`tests.chaos.harness.problems`) on made-up records: it
must name each way the API and the backends can disagree, or a chaos test that found
nothing would prove nothing."""

from __future__ import annotations

from typing import Any

from tests.chaos.harness import Backends, Execution, problems


def run(rid: str, task: str, state: str = "Succeeded", attempt: int = 1) -> dict[str, Any]:
    return {"id": rid, "task": task, "state": state, "attempt": attempt, "reason": ""}


def wf(*runs: dict[str, Any], state: str = "Succeeded") -> dict[str, dict[str, Any]]:
    return {"wf-1": {"state": state, "name": "chaos-0", "runs": list(runs)}}


def test_all_consistent_is_no_problem() -> None:
    # a run that failed before reaching a backend, then its retry: the task ran once
    flows = wf(run("r1", "a"), run("r2", "b", "Failed"), run("r3", "b", attempt=2))
    got = Backends([Execution("r1", "device d", "Succeeded"),
                    Execution("r3", "slurm job 7", "Succeeded")])
    assert problems(flows, got) == []


def test_a_run_executed_twice_is_named() -> None:
    got = problems(wf(run("r1", "a")), Backends([Execution("r1", "slurm job 7", "Succeeded"),
                                                 Execution("r1", "slurm job 8", "Succeeded")]))
    assert any("run r1" in p and "executed 2 times" in p for p in got), got
    assert any("task a executed 2 times" in p for p in got), got


def test_a_task_run_under_two_run_ids_is_named() -> None:
    flows = wf(run("r1", "a", "Failed", 1), run("r2", "a", "Succeeded", 2))
    got = problems(flows, Backends([Execution("r1", "sim twin", "Succeeded"),
                                    Execution("r2", "sim twin", "Succeeded")]))
    assert any("task a executed 2 times" in p for p in got), got
    assert any("r1" in p and "API says Failed" in p and "Succeeded" in p for p in got), got


def test_a_lost_update_and_a_phantom_success_are_named() -> None:
    flows = wf(run("r1", "a", "Failed"), run("r2", "b"), state="Failed")
    got = problems(flows, Backends([Execution("r1", "device d", "Succeeded")]))
    assert any("r1" in p and "API says Failed" in p for p in got), got
    assert any("r2" in p and "never executed" in p for p in got), got
    assert any("task b executed 0 times" in p for p in got), got
    assert any("workflow wf-1" in p and "ended Failed" in p for p in got), got
