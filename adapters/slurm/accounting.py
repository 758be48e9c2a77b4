"""Accounting read-back: a finished job's figures from slurmdbd, through slurmrestd.

Where a site runs slurmdbd, slurmrestd serves ``GET /slurmdb/{version}/job/{job_id}``
(openapi/slurmdbd plugin). This module reads one job there and maps the data_parser
schema of v0.0.40 and newer (verified on Slurm 24.11: v0.0.40, v0.0.41, v0.0.42 answer
the same shape for these fields; captured answers in tests/adapters/slurm/data/) into a
:class:`JobAccounting`:

* ``state``: ``state.current[0]`` (``COMPLETED``, ``FAILED``, ``CANCELLED``, ...);
* ``exit_code`` / ``signal``: ``exit_code.return_code`` / ``exit_code.signal.id`` (no-val
  structs ``{set, infinite, number}``);
* ``elapsed_s``: ``time.elapsed`` (s);
* ``cpu_user_s`` / ``cpu_system_s``: the job's ``time.user`` / ``time.system``
  (``{seconds, microseconds}``) or, when slurmdbd left those 0 (it does for batch jobs), the
  sum over ``steps[].time`` — what ``sacct``'s UserCPU/SystemCPU show;
* ``max_rss_bytes``: the largest ``steps[].tres.requested.max`` of type ``mem`` (bytes;
  ``sacct``'s MaxRSS), None when no step sampled it (``JobAcctGatherType=none``, or the
  job ended before its first sample);
* ``energy_j``: the sum of ``steps[].tres.consumed.total`` of type ``energy`` (J; ``sacct``'s
  ConsumedEnergy). Slurm reports 0 when no ``AcctGatherEnergyType`` plugin measures the
  nodes, so 0 (and Slurm's NO_VAL) read as None: unknown, never "no energy".

The caller passes the negotiated OpenAPI version (``v0.0.NN``) and a request function, so
this module depends on no particular client: ``request(path)`` GETs an absolute path and
returns the decoded JSON object (raising the client's errors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Request = Callable[[str], "dict[str, Any] | None"]
"""GET an absolute slurmrestd path; returns the JSON object (None: HTTP 304)."""

MIN_VERSION = 40
"""The first data_parser version (v0.0.40, Slurm 23.11) whose slurmdb job schema is mapped."""

_NO_VAL_FLOOR = 0xFFFFFFFE  # NO_VAL; NO_VAL64 and INFINITE are larger still
_VERSION = re.compile(r"^v0\.0\.(\d+)$")


def supported(version: str | None) -> bool:
    """Whether ``version`` (``v0.0.NN``) has the slurmdb job schema this module maps."""
    m = _VERSION.match(version or "")
    return m is not None and int(m.group(1)) >= MIN_VERSION


def served(paths: Iterable[str], version: str | None) -> bool:
    """Whether a served spec's ``paths`` include ``GET /slurmdb/{version}/job/{job_id}``:
    slurmrestd serves it only with ``-s openapi/slurmdbd``, on a cluster with slurmdbd."""
    prefix = f"/slurmdb/{version}/job/"
    return supported(version) and any(p.startswith(prefix) for p in paths)


@dataclass(frozen=True)
class JobAccounting:
    """One job as slurmdbd recorded it. Times in s, memory in bytes, energy in J; None:
    not recorded."""

    job_id: int
    state: str
    exit_code: int | None
    signal: int | None
    elapsed_s: float | None
    cpu_user_s: float
    cpu_system_s: float
    max_rss_bytes: int | None
    energy_j: float | None

    @property
    def cpu_time_s(self) -> float:
        """User + system CPU time (s) of the job's steps (``sacct`` TotalCPU), to the
        microsecond Slurm counts in."""
        return round(self.cpu_user_s + self.cpu_system_s, 6)

    @property
    def finished(self) -> bool:
        """slurmdbd holds the job's end (it is neither pending nor running there)."""
        return self.state not in ("", "PENDING", "RUNNING", "SUSPENDED", "REQUEUED",
                                  "CONFIGURING", "COMPLETING")

    def to_json(self) -> dict[str, Any]:
        """The run record's ``accounting`` object (camelCase)."""
        return {"source": "slurmdbd", "jobId": self.job_id, "state": self.state,
                "exitCode": self.exit_code, "signal": self.signal, "elapsedS": self.elapsed_s,
                "cpuUserS": round(self.cpu_user_s, 6), "cpuSystemS": round(self.cpu_system_s, 6),
                "cpuTimeS": self.cpu_time_s, "maxRssBytes": self.max_rss_bytes,
                "energyJ": self.energy_j}


def _number(v: Any) -> int | None:
    """A plain integer or a no-val struct ``{set, infinite, number}`` → int, else None."""
    if isinstance(v, dict):
        if not v.get("set", True) or v.get("infinite"):
            return None
        v = v.get("number")
    if isinstance(v, bool) or not isinstance(v, int | float) or v >= _NO_VAL_FLOOR:
        return None
    return int(v)


def _seconds(v: Any) -> float:
    """``{seconds, microseconds}`` → s (0 when absent)."""
    if not isinstance(v, dict):
        return 0.0
    return float(v.get("seconds") or 0) + float(v.get("microseconds") or 0) / 1e6


def _tres(items: Any, kind: str) -> int | None:
    for t in items if isinstance(items, list) else []:
        if isinstance(t, dict) and t.get("type") == kind:
            return _number(t.get("count"))
    return None


def parse_job(job: dict[str, Any]) -> JobAccounting:
    """One element of a slurmdb ``jobs[]`` (data_parser v0.0.40+) → :class:`JobAccounting`.

    Unknown fields are ignored and missing ones read as not recorded.
    """
    st = job.get("state") or {}
    cur = st.get("current") if isinstance(st, dict) else st
    state = str((cur[0] if cur else "") if isinstance(cur, list) else (cur or ""))
    ex = job.get("exit_code") or {}
    code = _number(ex.get("return_code")) if isinstance(ex, dict) else None
    sig = _number((ex.get("signal") or {}).get("id")) if isinstance(ex, dict) else None
    t = job.get("time") or {}
    elapsed = _number(t.get("elapsed"))
    user, system = _seconds(t.get("user")), _seconds(t.get("system"))
    steps = [s for s in job.get("steps") or [] if isinstance(s, dict)]
    s_user = sum(_seconds((s.get("time") or {}).get("user")) for s in steps)
    s_system = sum(_seconds((s.get("time") or {}).get("system")) for s in steps)
    if user + system < s_user + s_system:
        user, system = s_user, s_system
    rss = [v for s in steps
           if (v := _tres((((s.get("tres") or {}).get("requested") or {}).get("max")), "mem"))]
    energy = [v for s in steps
              if (v := _tres((((s.get("tres") or {}).get("consumed") or {}).get("total")),
                             "energy")) and v > 0]
    return JobAccounting(
        job_id=int(job.get("job_id") or 0), state=state, exit_code=code,
        signal=sig if sig else None, elapsed_s=float(elapsed) if elapsed is not None else None,
        cpu_user_s=user, cpu_system_s=system, max_rss_bytes=max(rss) if rss else None,
        energy_j=float(sum(energy)) if energy else None)


class AccountingUnavailable(Exception):
    """slurmrestd answered, but the cluster keeps no job accounting (its answer names an
    accounting storage other than slurmdbd)."""


def read_job(request: Request, version: str, job_id: int) -> JobAccounting | None:
    """``GET /slurmdb/{version}/job/{job_id}`` → the job's record; None when slurmdbd does
    not hold it (yet: slurmctld sends it a moment after the job ends).

    Raises:
        ValueError: ``version`` is older than v0.0.40 (see :func:`supported`).
        AccountingUnavailable: the answer's ``meta.plugin.accounting_storage`` is not
            ``accounting_storage/slurmdbd``.
        whatever ``request`` raises (the client's TransientError, AuthError, ...).
    """
    if not supported(version):
        raise ValueError(f"slurmdb accounting is mapped from v0.0.{MIN_VERSION} on, "
                         f"not {version!r}")
    body = request(f"/slurmdb/{version}/job/{int(job_id)}") or {}
    storage = str(((body.get("meta") or {}).get("plugin") or {}).get("accounting_storage") or "")
    if storage and storage != "accounting_storage/slurmdbd":
        raise AccountingUnavailable(f"slurmrestd reports accounting storage {storage!r}")
    mine = [j for j in body.get("jobs") or []
            if isinstance(j, dict) and j.get("job_id") == job_id]
    return parse_job(mine[-1]) if mine else None


__all__ = ["AccountingUnavailable", "JobAccounting", "MIN_VERSION", "Request", "parse_job",
           "read_job", "supported"]
