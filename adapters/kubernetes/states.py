"""Pod phases and container states → :class:`~continuum.model.RunState`, through one table.

:data:`POD_STATE_TABLE` is the only place a Kubernetes condition becomes a run state.
Its keys are ``"<where>:<value>"``; :func:`pod_run_status` looks them up in this order
(the first hit wins), so the most specific signal decides:

1. ``reason:`` — ``status.reason`` of the pod (``DeadlineExceeded``, ``Evicted``);
2. ``terminated:`` — a container's terminated reason in a finished pod (``OOMKilled``);
3. ``waiting:`` — a container's waiting reason (``ImagePullBackOff``, ``CrashLoopBackOff``);
4. ``condition:`` — the reason of a ``PodScheduled=False`` condition (``Unschedulable``);
5. ``phase:`` — ``status.phase``.

A pod whose node stopped reporting (phase ``Unknown``, or Running on a NotReady node)
stays Running: on KubeEdge the edge node runs autonomously while disconnected, and
on Kubernetes the node lifecycle controller decides, not Continuum.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.base import RunStatus
from continuum.model import RunState

POD_STATE_TABLE: dict[str, RunState] = {
    # 1. pod-level reasons, set when the kubelet or a controller ends the pod
    "reason:DeadlineExceeded": RunState.Failed,      # activeDeadlineSeconds (task.timeout)
    "reason:Evicted": RunState.Failed,               # node pressure eviction
    "reason:OutOfcpu": RunState.Failed,              # kubelet admission refused the pod
    "reason:OutOfmemory": RunState.Failed,
    "reason:NodeAffinity": RunState.Failed,          # node labels changed under the pod
    # 2. container terminated reasons (in a Failed/Succeeded pod)
    "terminated:OOMKilled": RunState.Failed,
    "terminated:Error": RunState.Failed,
    "terminated:ContainerCannotRun": RunState.Failed,
    "terminated:Completed": RunState.Succeeded,
    # 3. container waiting reasons
    "waiting:ContainerCreating": RunState.Dispatched,
    "waiting:PodInitializing": RunState.Dispatched,
    "waiting:ErrImagePull": RunState.Dispatched,     # the kubelet retries; BackOff follows
    "waiting:ImagePullBackOff": RunState.Failed,
    "waiting:InvalidImageName": RunState.Failed,
    "waiting:CreateContainerConfigError": RunState.Failed,
    "waiting:CreateContainerError": RunState.Failed,
    "waiting:CrashLoopBackOff": RunState.Failed,
    # 4. scheduling
    "condition:Unschedulable": RunState.Failed,      # pinned node lacks room or tolerations
    # 5. phases
    "phase:Pending": RunState.Dispatched,
    "phase:Running": RunState.Running,
    "phase:Succeeded": RunState.Succeeded,
    "phase:Failed": RunState.Failed,
    "phase:Unknown": RunState.Running,               # node lost contact; see module docstring
}
"""The one translation of pod phases and container states into run states."""


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    st = pod.get("status") or {}
    return list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])


def _main(pod: dict[str, Any]) -> dict[str, Any]:
    for c in (pod.get("status") or {}).get("containerStatuses") or []:
        if c.get("name") == "main":
            main: dict[str, Any] = c
            return main
    return {}


def pod_run_status(pod: dict[str, Any]) -> RunStatus:
    """The run status a pod (a JSON dict as the API serves it) stands for.

    Returns:
        RunStatus with ``state`` from :data:`POD_STATE_TABLE`, ``reason`` naming the
        Kubernetes reason and message, ``exit_code`` of the main container when it
        terminated, ``started_at``/``finished_at`` from the pod and container times.
    """
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    main = _main(pod)
    term = (main.get("state") or {}).get("terminated") or {}
    last = (main.get("lastState") or {}).get("terminated") or {}
    exit_code = term.get("exitCode", last.get("exitCode") if phase == "Failed" else None)
    started = _time(status.get("startTime"))
    running_since = ((main.get("state") or {}).get("running") or {}).get("startedAt")
    started = _time(term.get("startedAt") or running_since) or started
    finished = _time(term.get("finishedAt"))

    def out(state: RunState, reason: str) -> RunStatus:
        return RunStatus(state=state, reason=reason,
                         exit_code=int(exit_code) if exit_code is not None else None,
                         started_at=started if state != RunState.Dispatched else None,
                         finished_at=finished if state.terminal else None)

    if status.get("reason") and f"reason:{status['reason']}" in POD_STATE_TABLE:
        r = status["reason"]
        return out(POD_STATE_TABLE[f"reason:{r}"], _say(r, status.get("message")))
    if phase == "Succeeded":
        return out(POD_STATE_TABLE["phase:Succeeded"], "")
    if phase == "Failed":
        for c in _containers(pod):
            t = (c.get("state") or {}).get("terminated") or {}
            if t and (t.get("exitCode") not in (0, None) or t.get("reason") == "OOMKilled"):
                exit_code = t.get("exitCode")
                key = f"terminated:{t.get('reason') or 'Error'}"
                return out(POD_STATE_TABLE.get(key, POD_STATE_TABLE["phase:Failed"]),
                           _say(str(t.get("reason") or "Error"), t.get("message"), exit_code))
        return out(POD_STATE_TABLE["phase:Failed"], _say("Failed", status.get("message")))
    for c in _containers(pod):
        w = (c.get("state") or {}).get("waiting") or {}
        key = f"waiting:{w.get('reason')}"
        if w and key in POD_STATE_TABLE:
            msg = w.get("message")
            prev = (c.get("lastState") or {}).get("terminated") or {}
            if prev:
                msg = (f"last exit: {prev.get('reason', 'Error')}, exit code "
                       f"{prev.get('exitCode')}" + (f"; {msg}" if msg else ""))
            return out(POD_STATE_TABLE[key], _say(str(w.get("reason")), msg))
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            key = f"condition:{cond.get('reason')}"
            if key in POD_STATE_TABLE:
                return out(POD_STATE_TABLE[key], _say(str(cond.get("reason")),
                                                      cond.get("message")))
    state = POD_STATE_TABLE.get(f"phase:{phase}", RunState.Dispatched)
    reason = "" if phase in ("Pending", "Running") else _say(phase, status.get("message"))
    return out(state, reason)


def _say(reason: str, message: Any = None, exit_code: Any = None) -> str:
    text = reason
    if exit_code is not None:
        text += f" (exit code {exit_code})"
    if message:
        text += f": {str(message).strip()}"
    return text
