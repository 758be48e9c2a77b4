"""The batch script a run becomes, and the job description sent with it.

The script (bash) does what the device agent does around a run, with ``curl`` and
``sha256sum`` on the compute node:

1. makes the run's directory ``<workdir>/<run_id>`` and enters it;
2. **prologue** — fetches every input artifact from the control plane's HTTP artifact
   API (``GET /v1/artifacts/{workflow}/{name}``), checks its sha256, and puts it at its
   path; a failure writes the reason to ``.continuum/status``, appends it (without
   URLs, which carry capabilities) to the job's comment (:data:`COMMENT_MARK`, with
   ``scontrol update``, so the control plane learns it from slurmctld's job table even
   when it cannot read the run directory) and exits :data:`EXIT_INPUT`;
3. runs the task's command (argv), or its script through its interpreter, or — when the
   task names an ``image`` — the same under ``apptainer exec IMAGE`` (:func:`image_ref`:
   a local SIF path on the cluster, a URI, or ``docker://`` for a bare reference);
4. **epilogue** — when the command succeeded, uploads every declared output
   (``PUT /v1/artifacts/{workflow}/{name}?run={run_id}``); a failure writes the reason
   and exits :data:`EXIT_OUTPUT`;
5. exits with the command's exit code.

Every value that reaches the shell goes through :func:`shlex.quote`.
"""

from __future__ import annotations

import math
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.base import ArtifactIn, ArtifactOut, TaskRun

EXIT_INPUT = 97
"""Exit code of a job whose input artifact could not be fetched or failed its checksum."""
EXIT_OUTPUT = 98
"""Exit code of a job whose command succeeded but an output could not be uploaded."""

STATUS_FILE = ".continuum/status"
EXIT_FILE = ".continuum/exit"
"""The script's exit code, written on exit (a bash EXIT trap): how a job ended when
slurmctld no longer knows it (purged after MinJobAge while the control plane was down)."""
"""Relative to the run directory: one line saying why the prologue/epilogue failed."""

COMMENT_MARK = " | continuum: "
"""What the batch script appends to its job's comment, then the reason of a prologue or
epilogue failure: ``continuum run=<id> ... | continuum: input "x": sha256 mismatch``."""

NAME_PREFIX = "continuum-"
"""Job names are ``continuum-<run_id>``; the comment is ``continuum run=<run_id> ...``."""


def job_name(run_id: str) -> str:
    return f"{NAME_PREFIX}{run_id}"


def job_comment(run: TaskRun) -> str:
    return (f"continuum run={run.run_id} workflow={run.workflow_id} task={run.task.name} "
            f"attempt={run.attempt}")


def failure_of(job: dict[str, object]) -> str:
    """The prologue/epilogue failure the batch script put in its job's comment, or ""."""
    comment = str(job.get("comment") or "")
    return comment.partition(COMMENT_MARK)[2].strip()


def run_id_of(job: dict[str, object]) -> str | None:
    """The run id a Continuum job carries (comment first, then name), else None."""
    comment = str(job.get("comment") or "")
    for word in comment.split():
        if word.startswith("run="):
            return word[4:]
    name = str(job.get("name") or "")
    if name.startswith(NAME_PREFIX):
        return name[len(NAME_PREFIX):]
    return None


@dataclass(frozen=True)
class JobPaths:
    """Where a run lives on the cluster: its directory and its output file."""

    workdir: str
    run_dir: str
    output: str


def paths(workdir: str, run_id: str) -> JobPaths:
    base = workdir.rstrip("/") or "/"
    return JobPaths(workdir=base, run_dir=f"{base}/{run_id}",
                    output=f"{base}/{NAME_PREFIX}{run_id}.out")


def image_ref(image: str) -> str:
    """What ``apptainer exec`` gets for a task's ``image``: a URI (``docker://``,
    ``oras://``, ``library://``, ...) or an absolute path on the cluster — a SIF file or a
    sandbox directory built there, e.g. ``apptainer build /shared/img.sif rootfs/``, which
    needs no registry — as is; a bare reference (``python:3.11-slim``) is a Docker image."""
    return image if "://" in image or image.startswith("/") else f"docker://{image}"


def _command(run: TaskRun, *, apptainer: str | None, gpus: int) -> list[str]:
    """The argv of the task (a script is written to ``.continuum/script`` first)."""
    task = run.task
    if task.command is not None:
        argv = list(task.command)
    else:
        assert task.script is not None
        argv = [*task.script.interpreter, ".continuum/script"]
    if task.image and apptainer:
        return [apptainer, "exec", *(["--nv"] if gpus else []), image_ref(task.image), *argv]
    return argv


def _fetch(a: ArtifactIn) -> str:
    p, u, name = shlex.quote(a.path), shlex.quote(a.url), shlex.quote(a.name)
    return (
        f"mkdir -p \"$(dirname {p})\"\n"
        f"if ! curl -fsS --retry 3 --retry-delay 1 -o {p}.part {u}; then\n"
        f"  fail {EXIT_INPUT} \"input \"{name}\": download from \"{u}\" failed\" "
        f"\"input \"{name}\": download from the control plane failed\"\n"
        f"fi\n"
        f"if [ \"$(sha256sum < {p}.part | cut -d' ' -f1)\" != {shlex.quote(a.sha256.lower())} ]; then\n"
        f"  fail {EXIT_INPUT} \"input \"{name}\": sha256 mismatch (expected {a.sha256.lower()})\"\n"
        f"fi\n"
        f"mv -f {p}.part {p}\n"
    )


def _upload(o: ArtifactOut) -> str:
    p, u, name = shlex.quote(o.path), shlex.quote(o.url), shlex.quote(o.name)
    return (
        f"if [ ! -f {p} ]; then\n"
        f"  fail {EXIT_OUTPUT} \"output \"{name}\": the task did not write \"{p}\"\"\n"
        f"fi\n"
        f"if ! curl -fsS --retry 3 --retry-delay 1 -o /dev/null -T {p} {u}; then\n"
        f"  fail {EXIT_OUTPUT} \"output \"{name}\": upload to \"{u}\" failed\" "
        f"\"output \"{name}\": upload to the control plane failed\"\n"
        f"fi\n"
    )


def batch_script(run: TaskRun, jp: JobPaths, *, apptainer: str | None = None) -> str:
    """The bash batch script of ``run`` (see the module docstring).

    ``apptainer`` is the Apptainer binary when the task names an image (else None).
    """
    task = run.task
    lines = [
        "#!/bin/bash",
        f"# Continuum run {run.run_id}: workflow {run.workflow_id} ({run.workflow_name}), "
        f"task {task.name}, attempt {run.attempt}",
        "set -u",
        f"mkdir -p {shlex.quote(jp.run_dir)}/.continuum || exit {EXIT_INPUT}",
        f"cd {shlex.quote(jp.run_dir)} || exit {EXIT_INPUT}",
        f"rm -f {STATUS_FILE} {EXIT_FILE}",
        "trap 'printf \"%s\\n\" \"$?\" > " + EXIT_FILE + "' EXIT",
        # fail CODE REASON [PUBLIC_REASON]: the public one (no URL) goes to the comment
        "fail() { echo \"continuum: $2\" >&2; printf '%s\\n' \"$2\" > " + STATUS_FILE + "; "
        "if [ -n \"${SLURM_JOB_ID:-}\" ] && command -v scontrol >/dev/null; then "
        "timeout 10 scontrol update JobId=\"$SLURM_JOB_ID\" Comment="
        + shlex.quote(job_comment(run) + COMMENT_MARK) + "\"${3:-$2}\" >/dev/null 2>&1; fi; "
        "exit \"$1\"; }",
    ]
    if run.inputs:
        lines.append("# prologue: inputs from the control plane")
        lines += [_fetch(a) for a in run.inputs]
    if task.script is not None:
        tag = f"CONTINUUM_EOF_{secrets.token_hex(6)}"
        lines += [f"cat > .continuum/script <<'{tag}'", task.script.source.rstrip("\n"), tag]
    argv = _command(run, apptainer=apptainer, gpus=task.resources.gpu)
    lines += [" ".join(shlex.quote(a) for a in argv), "rc=$?"]
    if run.outputs:
        lines.append("# epilogue: outputs to the control plane")
        lines.append("if [ \"$rc\" -eq 0 ]; then")
        lines += ["  " + line for o in run.outputs for line in _upload(o).splitlines()]
        lines.append("fi")
    lines.append("exit \"$rc\"")
    return "\n".join(lines) + "\n"


def job_description(run: TaskRun, jp: JobPaths, *, partition: str, base_env: dict[str, str],
                    account: str | None = None, time_limit_min: int | None = None,
                    qos: str | None = None, reservation: str | None = None,
                    constraint: str | None = None) -> dict[str, object]:
    """The ``job`` object of ``POST job/submit`` in the legacy shape (v0.0.36-38 field
    names; :meth:`adapters.slurm.dialects.Dialect.submit_body` turns it into the served
    version's body).

    ``memory_per_node`` in MiB (rounded up), ``time_limit`` in minutes (rounded up from
    the task's ``timeout``), one task with ``ceil(cpu)`` CPUs; GPUs as
    ``tres_per_node: gres:gpu:N``. ``account``, ``qos``, ``reservation``, ``constraint``
    (``constraints``, sbatch's ``--constraint``): the run's settings (sent only when set).
    """
    task = run.task
    env = {**base_env, **task.env, "CONTINUUM_RUN_ID": run.run_id,
           "CONTINUUM_WORKFLOW_ID": run.workflow_id, "CONTINUUM_TASK": task.name}
    job: dict[str, object] = {
        "name": job_name(run.run_id),
        "comment": job_comment(run),
        "partition": partition,
        "tasks": 1,
        "cpus_per_task": max(1, math.ceil(task.resources.cpu - 1e-9)),
        "memory_per_node": max(1, math.ceil(task.resources.memory / 2**20)),
        "current_working_directory": jp.workdir,
        "standard_output": jp.output,
        "environment": env,
    }
    if time_limit_min is not None:
        job["time_limit"] = time_limit_min
    if task.resources.gpu:
        job["tres_per_node"] = f"gres:gpu:{task.resources.gpu}"
    if account:
        job["account"] = account
    if qos:
        job["qos"] = qos
    if reservation:
        job["reservation"] = reservation
    if constraint:
        job["constraints"] = constraint
    return job


def time_limit_minutes(timeout_s: float | None) -> int | None:
    return None if timeout_s is None else max(1, math.ceil(timeout_s / 60.0))


def tail_lines(text: str, n: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[-n:]) if n > 0 else ""


__all__: Sequence[str] = ("batch_script", "job_description", "paths", "run_id_of", "job_name",
                          "EXIT_INPUT", "EXIT_OUTPUT")
