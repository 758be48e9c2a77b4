"""The two schema families of slurmrestd, in one place: paths, request bodies, answers.

slurmrestd serves one OpenAPI plugin per version under ``/slurm/v0.0.NN/``. Their
schemas fall into two families (verified on the specs served by Slurm 22.05.8, 24.11.5
and 26.05.5, kept in ``tests/adapters/slurm/data/``):

* **legacy** v0.0.36-v0.0.38 (``openapi/v0.0.3x`` plugins, Slurm 20.11-22.05): plain
  integers, ``job_state`` a string, ``exit_code`` a wait status, ``environment`` an
  object, ``script`` beside ``job`` in the submit body, errors with ``error_code`` or
  ``error_number``, HTTP 304 for an unchanged job table, no ``last_update``.
* **data_parser** v0.0.40-v0.0.45 (``openapi/slurmctld`` with ``data_parser/v0.0.4x``,
  Slurm 23.11-26.05): numbers as ``{"set": bool, "infinite": bool, "number": N}``,
  ``job_state`` and node ``state`` lists, ``exit_code`` an object (``return_code``,
  ``signal``), ``environment`` a list of ``"K=V"``, ``script`` inside ``job``,
  ``errors[]`` and ``warnings[]``, partitions nested (``maximums.time``,
  ``partition.state``, ``nodes.configured``), the job table's ``last_update`` (slurmctld's
  clock) and, for an unchanged table, an empty ``jobs`` with ``last_update`` 0 and a
  warning (never HTTP 304).

Everything else in the adapter reads the **legacy shape** (plain values, one
``job_state`` string) that :meth:`Dialect.job`, :meth:`Dialect.node` and
:meth:`Dialect.partition` return; unknown fields are kept as they come (SchedMD's client
guide: tolerate new fields). Paths are those of the served spec (the data_parser plugins
serve collections with a trailing slash: ``/slurm/v0.0.42/jobs/``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LEGACY = "v0.0.36-38"
DATA_PARSER = "data_parser"

FAMILIES: dict[str, tuple[str, ...]] = {
    DATA_PARSER: ("v0.0.45", "v0.0.44", "v0.0.43", "v0.0.42", "v0.0.41", "v0.0.40"),
    LEGACY: ("v0.0.38", "v0.0.37", "v0.0.36"),
}
"""Versions per family, most preferred first (v0.0.39, Slurm 23.02 only, is not spoken)."""

SUPPORTED_VERSIONS: tuple[str, ...] = FAMILIES[DATA_PARSER] + FAMILIES[LEGACY]
"""Every version Continuum speaks, most preferred first."""

NO_UPDATE_TIME = frozenset({"v0.0.36", "v0.0.40", "v0.0.41"})
"""Versions whose ``GET jobs`` cannot take ``update_time``: v0.0.36 has no such
parameter; the v0.0.40 and v0.0.41 plugins of Slurm 24.11.5 refuse every value with
HTTP 422 "Parsing of N for timestamp failed" (captured in tests/adapters/slurm/data).
They read the whole table at each poll."""

_VERSION = re.compile(r"^/slurm/(v\d+\.\d+\.\d+)/")

_FLAG_ORDER = ("COMPLETING", "CONFIGURING", "RESIZING", "RESV_DEL_HOLD", "REQUEUED",
               "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT", "STOPPED", "REVOKED",
               "SIGNALING", "STAGE_OUT", "POWER_UP_NODE", "UPDATE_DB")
"""Job state flags in the order slurmctld's ``job_state_string()`` reports one instead of
the base state (what the legacy plugins' ``job_state`` string holds)."""


def offered_versions(paths: Iterable[str]) -> list[str]:
    """The ``v0.0.NN`` versions a served spec's ``paths`` carry, newest first."""
    found = {m.group(1) for p in paths if (m := _VERSION.match(p))}
    return sorted(found, key=lambda v: tuple(int(x) for x in v[1:].split(".")), reverse=True)


def number(v: Any) -> int | None:
    """A data_parser number object (``{"set", "infinite", "number"}``) or a plain number
    → int; None when unset or infinite (or not a number)."""
    if isinstance(v, dict):
        if not v.get("set", True) or v.get("infinite"):
            return None
        v = v.get("number")
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return int(v)


def state_string(v: Any) -> str:
    """``job_state`` as the legacy plugins give it: a list's flag (``COMPLETING``, ...)
    before its base state, like slurmctld's ``job_state_string()``."""
    if not isinstance(v, list):
        return str(v or "")
    states = [str(s) for s in v]
    for flag in _FLAG_ORDER:
        if flag in states:
            return flag
    return states[0] if states else ""


def _wait_status(v: Any) -> Any:
    """data_parser ``exit_code`` (``return_code``, ``signal.id``) → a wait status."""
    if not isinstance(v, dict):
        return v
    sig = number((v.get("signal") or {}).get("id")) if isinstance(v.get("signal"), dict) else None
    if sig:
        return sig & 0x7F
    rc = number(v.get("return_code"))
    return None if rc is None else (rc & 0xFF) << 8


@dataclass(frozen=True)
class Dialect:
    """How to talk to one served version.

    Args:
        version: ``v0.0.NN``.
        served: the served spec's paths (to take each endpoint's path as served).
    """

    version: str
    served: frozenset[str] = field(default_factory=frozenset)

    @property
    def family(self) -> str:
        return LEGACY if self.version in FAMILIES[LEGACY] else DATA_PARSER

    @property
    def data_parser(self) -> bool:
        return self.family == DATA_PARSER

    # ------------------------------------------------------------ requests

    def path(self, endpoint: str) -> str:
        """``endpoint`` (``jobs``, ``job/submit``, ``job/123``, ...) → its served path."""
        base = f"/slurm/{self.version}/{endpoint.strip('/')}"
        if base not in self.served and f"{base}/" in self.served:
            return f"{base}/"
        if not self.served and self.data_parser and endpoint in (
                "ping", "diag", "jobs", "nodes", "partitions", "reservations"):
            return f"{base}/"
        return base

    def db_path(self, endpoint: str) -> str | None:
        """The served path of a slurmdbd ``endpoint`` (``accounts``, ``qos``), or None
        where the site serves no ``openapi/slurmdbd`` (no accounting, or Slurm 22.05's
        plugins, which Continuum does not read slurmdbd through)."""
        if not self.data_parser:
            return None
        base = f"/slurmdb/{self.version}/{endpoint.strip('/')}"
        return next((p for p in (f"{base}/", base) if p in self.served), None)

    def jobs_params(self, update_time: int) -> dict[str, Any]:
        """Query of ``GET jobs``: ``update_time`` where the version takes it (see
        :data:`NO_UPDATE_TIME`)."""
        return {} if self.version in NO_UPDATE_TIME else {"update_time": update_time}

    def submit_body(self, script: str, job: Mapping[str, Any]) -> dict[str, Any]:
        """The ``POST job/submit`` body for a legacy-shaped ``job`` (environment a dict,
        ``time_limit`` minutes, ``memory_per_node`` MiB as plain numbers)."""
        if not self.data_parser:
            legacy = dict(job)
            if self.version == "v0.0.36":  # no standard_output in v0.0.36
                legacy.pop("standard_output", None)
            return {"script": script, "job": legacy}
        out: dict[str, Any] = {}
        for k, v in job.items():
            if k == "environment" and isinstance(v, Mapping):
                out[k] = [f"{ek}={ev}" for ek, ev in v.items()]
            elif k in ("time_limit", "memory_per_node") and isinstance(v, int):
                out[k] = {"set": True, "infinite": False, "number": v}
            else:
                out[k] = v
        out["script"] = script
        return {"job": out}

    # ------------------------------------------------------------ answers

    def job(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A job record in the legacy shape (unknown fields kept)."""
        if not self.data_parser:
            return raw
        out = {k: (number(v) if isinstance(v, dict) and "number" in v else v)
               for k, v in raw.items()}
        out["job_state"] = state_string(raw.get("job_state"))
        out["exit_code"] = _wait_status(raw.get("exit_code"))
        return out

    def node(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A node record in the legacy shape: ``state`` the base state, ``state_flags``
        the rest, ``idle_cpus`` = cpus − alloc_cpus when not given."""
        if not self.data_parser:
            return raw
        out = {k: (number(v) if isinstance(v, dict) and "number" in v else v)
               for k, v in raw.items()}
        states = [str(s) for s in raw.get("state") or []] if isinstance(
            raw.get("state"), list) else [str(raw.get("state") or "")]
        out["state"] = states[0] if states else ""
        out["state_flags"] = states[1:]
        if out.get("idle_cpus") is None:
            out["idle_cpus"] = max(0, int(out.get("cpus") or 0) - int(out.get("alloc_cpus") or 0))
        for k in ("features", "active_features"):
            if isinstance(raw.get(k), list):
                out[k] = ",".join(str(f) for f in raw[k])
        return out

    def partition(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A partition in the legacy shape: ``name``, ``nodes`` (hostlist),
        ``max_time_limit`` (min, −1 infinite), ``state``."""
        if not self.data_parser:
            return raw
        nodes = raw.get("nodes")
        limit = ((raw.get("maximums") or {}).get("time"))
        states = (raw.get("partition") or {}).get("state") or []
        out = dict(raw)
        out["nodes"] = nodes.get("configured", "") if isinstance(nodes, dict) else nodes
        out["max_time_limit"] = -1 if number(limit) is None else number(limit)
        out["state"] = str(states[0]) if isinstance(states, list) and states else "UP"
        return out

    def pings(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The ping answers with ``ping`` "UP"/"DOWN" (v0.0.40 ``pinged``, v0.0.42+
        ``responding``)."""
        out = []
        for p in body.get("pings") or []:
            if not isinstance(p, dict):
                continue
            q = dict(p)
            if "ping" not in q:
                if "responding" in q:
                    q["ping"] = "UP" if q["responding"] else "DOWN"
                else:
                    q["ping"] = str(q.get("pinged") or "")
            out.append(q)
        return out

    def jobs_last_update(self, body: dict[str, Any]) -> int | None:
        """slurmctld's ``last_update`` of the job table (None when the answer has none:
        the legacy family, or an unchanged table)."""
        lu = number(body.get("last_update"))
        return lu if lu else None

    def jobs_unchanged(self, body: dict[str, Any]) -> bool:
        """True for the data_parser answer "no job changes since update_time": empty
        ``jobs`` and ``last_update`` 0 (slurmrestd adds a warning saying so)."""
        return (self.data_parser and not body.get("jobs")
                and number(body.get("last_update")) in (None, 0))


def release_of(body: dict[str, Any]) -> str:
    """The Slurm release in an answer's ``meta`` (legacy ``meta.Slurm.release``,
    data_parser ``meta.slurm.release``), or ""."""
    meta = body.get("meta") or {}
    slurm = meta.get("slurm") or meta.get("Slurm") or {}
    return str(slurm.get("release") or "") if isinstance(slurm, dict) else ""


def release_of_spec(spec: dict[str, Any]) -> str:
    """The release in a served spec's ``info.version`` (data_parser:
    ``Slurm-24.11.5&openapi/slurmctld``; legacy: just ``0.0.38``), or ""."""
    m = re.match(r"^Slurm-([0-9][0-9.]*)", str((spec.get("info") or {}).get("version") or ""))
    return m.group(1) if m else ""


def choose(paths: Iterable[str]) -> Dialect | None:
    """The dialect of the newest version both the server (its spec's ``paths``) and
    Continuum speak, or None."""
    served = frozenset(paths)
    offered = set(offered_versions(served))
    for v in SUPPORTED_VERSIONS:
        if v in offered and any(p.startswith(f"/slurm/{v}/job/submit") for p in served):
            return Dialect(v, served)
    return None
