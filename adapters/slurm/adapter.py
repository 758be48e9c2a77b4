"""The ``slurm`` adapter: an HPC cluster behind slurmrestd; each allowed partition is a node.

Site config (``SiteSpec.config``, camelCase, unknown keys rejected)::

    kind: slurm
    tier: hpc
    prometheusUrl: http://prometheus.hpc.example:9090   # optional (SiteSpec field)
    config:
      url: http://slurmrestd.hpc.example:6820   # or  socket: /run/slurmrestd/slurmrestd.socket
      user: continuum                           # Slurm user that reads the cluster (JWT sun)
      token: eyJhbGciOi...                      # a token from `scontrol token`, or
      jwtKey: 3q2+7w...                         # the cluster's jwt_key (base64): tokens minted here
      # jwtKeyFile: /etc/slurm/jwt.key          # ... or its path (federation file only)
      slurmUser: slurm                          # the cluster's SlurmUser: refused, like root
      userMap:                                  # tenant -> Slurm user; none: all run as `user`
        - {tenant: lab, user: alice, account: proj1, qos: normal, reservation: null}
      tokenLifetime: 3600                       # s, of minted tokens (minted again at 80 %)
      partitions: [debug, gpu]                  # allowed partitions (empty: all)
      workdir: /scratch/continuum               # shared directory, writable by `user`
      environment: {PATH: /usr/local/bin:/usr/bin:/bin}
      account: proj42                           # optional Slurm account (per tenant: userMap)
      qos: normal                               # optional Slurm QoS
      reservation: maint-window                 # optional Slurm reservation
      constraint: "avx512&ib"                   # optional node features (--constraint)
      defaultTimeLimit: 3600                    # s, for tasks without a timeout
      apptainer: true                           # tasks with an image run under Apptainer
      power: {idleWatts: 120, maxWatts: 450, source: "..."}   # per Slurm node
      queueFactor: 4                            # pending work allowed, x partition CPUs
      queueWaitWindow: 3600                     # s of job history for queue waits
      pollInterval: 1.0                         # s; the job table is read at most this often

**Inventory** (``GET partitions``, ``GET nodes``, and the cached job table): one
:class:`Node` per allowed partition, id ``<site>/<partition>``. ``capacity`` is the
partition's total CPUs, memory and GPUs (gres ``gpu``) over its usable nodes;
``allocatable`` the largest single Slurm node (what one job of one task can hold);
``free`` is what the partition can still take *including its queue*:
``queueFactor × total − pending`` plus idle resources (CPU: ``idle_cpus``; memory:
``real_memory − alloc_memory``; GPUs: gres minus gres_used), so placement can queue
work on a busy partition and weighs it by ``queue_wait_s``. ``utilisation`` is
allocated CPUs / total CPUs. Labels carry the partition's node states, time limit,
pending and running job counts.

**Queue wait** (``Node.queue_wait_s``): over jobs of the partition that started within
``queueWaitWindow``, the mean of ``start − max(submit, eligible)``; when jobs are pending
or no CPU is idle, the larger of that and the mean age of the pending jobs (the
``slurm_partition_pending_wait_seconds_avg`` of vpenso/prometheus-slurm-exporter);
otherwise (idle CPUs, empty queue) 0.

**Jobs**: ``POST job/submit`` with the batch script of :mod:`adapters.slurm.script`;
name ``continuum-<run_id>``, comment ``continuum run=<run_id> ...``, so a restarted
control plane finds its jobs and a second submit of the same run returns the job it
already has (idempotent by request id, never a second job). ``status`` reads the job
table with ONE ``GET jobs?update_time=T`` per poll interval per cluster, T on
slurmctld's clock (the table's ``last_update``; see :meth:`SlurmAdapter._next_update_time`),
"unchanged" when nothing changed, and maps ``job_state`` through :data:`JOB_STATE_TABLE`.
The job is submitted with the tenant's settings (:meth:`SlurmConfig.settings`: account,
QoS, reservation, constraint, allowed partitions, default time limit); one Slurm refuses
fails the run with the setting named (:data:`REJECTED_SETTING`). ``cancel`` is
``DELETE job/{id}``. Logs are the tail of the job's output file
(``<workdir>/continuum-<run_id>.out``) when the control plane can read it.

Why one module of this size: it is one class, the adapter contract for one backend
(inventory, submit, one job-table read per poll, cancel, logs, accounting of what it
submitted), whose parts share the job cache and its lock; what stands apart is already
apart (client.py, config.py, script.py).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from adapters import capabilities
from adapters.base import AdapterContext, ArtifactRecord, Handle, RunStatus, TaskRun
from adapters.capabilities import SupportsCheck, conforms
from adapters.registry import register
from adapters.slurm import accounting
from adapters.slurm import script as scripts
from adapters.slurm.client import SlurmApiError, SlurmRestClient, TokenSource
from adapters.slurm.config import (
    JobSettings,
    SlurmConfig,
    UserMapping,
    constraint_features,
    jwt_key_bytes,
)
from continuum.errors import (
    AdapterError,
    AuthError,
    PermanentError,
    TransientError,
    UnsupportedError,
)
from continuum.model import (
    Node,
    PowerProfile,
    Resources,
    RunState,
    SiteHealth,
    SiteKind,
    SiteSpec,
    Tier,
)

log = logging.getLogger(__name__)

JOB_STATE_TABLE: dict[str, RunState] = {
    # waiting
    "PENDING": RunState.Dispatched,
    "REQUEUED": RunState.Dispatched,
    "REQUEUE_HOLD": RunState.Dispatched,
    "REQUEUE_FED": RunState.Dispatched,
    "RESV_DEL_HOLD": RunState.Dispatched,
    "CONFIGURING": RunState.Dispatched,
    "POWER_UP_NODE": RunState.Dispatched,
    # running (suspended/stopped jobs hold their allocation and resume)
    "RUNNING": RunState.Running,
    "SUSPENDED": RunState.Running,
    "STOPPED": RunState.Running,
    "SIGNALING": RunState.Running,
    "RESIZING": RunState.Running,
    "STAGE_OUT": RunState.Running,
    "COMPLETING": RunState.Running,
    "UPDATE_DB": RunState.Running,
    # ended
    "COMPLETED": RunState.Succeeded,
    "FAILED": RunState.Failed,
    "TIMEOUT": RunState.Failed,
    "NODE_FAIL": RunState.Failed,
    "PREEMPTED": RunState.Failed,
    "BOOT_FAIL": RunState.Failed,
    "DEADLINE": RunState.Failed,
    "OUT_OF_MEMORY": RunState.Failed,
    "SPECIAL_EXIT": RunState.Failed,
    "CANCELLED": RunState.Cancelled,
    "REVOKED": RunState.Cancelled,
}
"""The one translation of Slurm job states (``job_state`` of slurmrestd v0.0.36-38, the
base states and state flags of ``squeue --states``) into :class:`RunState`. A job still
COMPLETING is Running: its final state is known once the flag clears."""

STATE_REASONS: dict[str, str] = {
    "TIMEOUT": "the job reached its time limit",
    "NODE_FAIL": "a node of the job failed",
    "PREEMPTED": "the job was preempted",
    "BOOT_FAIL": "the job's node failed to boot",
    "DEADLINE": "the job reached its deadline",
    "OUT_OF_MEMORY": "the job ran out of memory",
    "SPECIAL_EXIT": "the job ended with a special exit",
    "CANCELLED": "the Slurm job was cancelled",
    "REVOKED": "the job was revoked by its federation sibling",
}

REJECTED_SETTING: dict[int, str] = {
    2000: "partitions",    # ESLURM_INVALID_PARTITION_NAME
    2003: "partitions",    # ESLURM_JOB_MISSING_REQUIRED_PARTITION_GROUP
    2002: "user",          # ESLURM_ACCESS_DENIED
    2010: "user",          # ESLURM_USER_ID_MISSING ("Invalid user id")
    2029: "constraint",    # ESLURM_INVALID_FEATURE
    2031: "constraint",    # ESLURM_ACTIVE_FEATURE_NOT_SUBSET
    2045: "account",       # ESLURM_INVALID_ACCOUNT
    2050: "qos",           # ESLURM_ACCOUNTING_POLICY (job violates accounting/QOS policy)
    2066: "qos",           # ESLURM_INVALID_QOS
    2074: "qos",           # ESLURM_QOS_THRES (account breached the QOS usage threshold)
    2051: "time_limit_s",  # ESLURM_INVALID_TIME_LIMIT
    2052: "reservation",   # ESLURM_RESERVATION_ACCESS
    2053: "reservation",   # ESLURM_RESERVATION_INVALID
}
"""Slurm error numbers (slurm_errno.h) of a submit refused because of one of the
settings of :class:`~adapters.slurm.config.JobSettings`: the run's error names it."""

DEFAULT_POWER = PowerProfile(
    idle_watts=100.0, max_watts=350.0,
    source="Continuum default for a two-socket x86 server when the site gives none "
           "(the range of SPECpower_ssj2008 results); set config.power for real figures")

_GRES_GPU = re.compile(r"(?:^|,)gpu(?::[^:,()]+)?:(\d+)")
_USABLE = frozenset({"IDLE", "MIXED", "ALLOCATED", "COMPLETING"})
_UNUSABLE_FLAGS = frozenset({"DRAIN", "DRAINING", "DRAINED", "DOWN", "FAIL", "NOT_RESPONDING",
                             "MAINTENANCE", "POWERED_DOWN", "POWERING_DOWN", "REBOOT_ISSUED",
                             "RESERVED"})


@dataclass
class PartitionStats:
    """What the inventory learnt of one partition (for placement and /metrics)."""

    name: str
    cpus_total: int = 0
    cpus_alloc: int = 0
    cpus_idle: int = 0
    cpus_other: int = 0
    jobs_pending: int = 0
    jobs_running: int = 0
    pending_wait_avg_s: float = 0.0
    recent_wait_avg_s: float = 0.0
    queue_wait_s: float = 0.0
    utilisation: float = 0.0


def decode_exit(raw: Any) -> tuple[int | None, str]:
    """Slurm's ``exit_code`` (a wait status) → (exit code, reason).

    A job killed by signal N gets 128 + N, the shell's convention.
    """
    if isinstance(raw, dict):  # newer plugins: {"status": ..., "return_code": ...}
        rc = raw.get("return_code")
        return (int(rc) if isinstance(rc, int) else None), ""
    if not isinstance(raw, int):
        return None, ""
    sig = raw & 0x7F
    if sig:
        return 128 + sig, f"killed by signal {sig}"
    return (raw >> 8) & 0xFF, ""


def _ts(v: Any) -> datetime | None:
    if isinstance(v, int | float) and v > 0:
        return datetime.fromtimestamp(float(v), UTC)
    return None


def _gpus(gres: Any) -> int:
    return sum(int(m.group(1)) for m in _GRES_GPU.finditer(str(gres or "")))


def _node_usable(n: dict[str, Any]) -> bool:
    state = str(n.get("state") or "").upper()
    flags = {str(f).upper() for f in (n.get("state_flags") or [])}
    base = {s for s in re.split(r"[+ ]", state) if s}
    return bool(base & _USABLE) and not (base | flags) & _UNUSABLE_FLAGS


class SlurmAdapter:
    """Adapter for a ``slurm`` site. See the module docstring.

    Args:
        site: the site; ``site.config`` is a :class:`SlurmConfig`.
        ctx: the control plane's context.
        client: the slurmrestd client to use (tests pass an instrumented one); by default
            built from ``site.config`` (URL or socket, JWT key or token, timeout). The
            config is validated either way; the adapter closes the client on :meth:`close`.

    Raises:
        PermanentError: the config is invalid (the message names the field) or the JWT
            key file cannot be read.
    """

    def __init__(self, site: SiteSpec, ctx: AdapterContext, *,
                 client: SlurmRestClient | None = None) -> None:
        self.site = site
        self.ctx = ctx
        try:
            self.config = SlurmConfig.model_validate(site.config)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"]))
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise PermanentError(f"invalid slurm config: {where + ': ' if where else ''}{msg}",
                                 site=site.name, details={"field": where}) from e
        refused = self.config.user_problem() or self.config.settings_problem()
        if refused is not None:
            raise PermanentError(f"config.{refused[1]}", site=site.name,
                                 details={"field": refused[0]})
        self._jwt_key = self._key()
        """The cluster's JWT key, minting tokens for mapped users (also with a given client)."""
        if client is None:
            client = self._make_client()
        self.client = client
        self.tokens = client.tokens
        self._user_tokens: dict[str, TokenSource] = {}
        self._lock = threading.RLock()
        self._jobs: dict[int, dict[str, Any]] = {}
        self._jobs_fetched = False
        self._jobs_at = -1e18  # monotonic time of the last fetch
        self._jobs_wall = 0.0  # wall time the last fetch started
        self._update_time = 0
        """``update_time`` of the next job-table read: slurmctld's clock, never ours."""
        self._last_update: tuple[int, float] | None = None
        """slurmctld's ``last_update`` of the table held and the monotonic time the read
        that first reported it ended (see :meth:`_next_update_time`)."""
        self._by_run: dict[str, int] = {}
        self._uncertain: set[str] = set()
        """Runs whose submit failed transiently: slurmctld may have taken the job anyway (a
        timeout after it accepted), so their next submit first re-reads the job table."""
        self._stats: dict[str, PartitionStats] = {}
        self._health: tuple[SiteHealth, str] = (SiteHealth.Ready, "")
        self._partition_limits: dict[str, int | None] = {}
        self._partition_max_node: dict[str, Resources] = {}
        self._acct_waiting: dict[int, float] = {}
        """Finished jobs whose slurmdbd record is awaited: job id → monotonic first ask."""
        self._acct_off_until = 0.0
        """Monotonic time until which accounting is not asked (the cluster keeps none)."""

    def _key(self) -> bytes | None:
        """The cluster's JWT key: ``jwtKey`` (uploaded) or the ``jwtKeyFile`` it names.

        Raises:
            PermanentError: the key file cannot be read or is empty.
        """
        if self.config.jwt_key is not None:
            return jwt_key_bytes(self.config.jwt_key)
        path = self.config.jwt_key_file
        if path is None:
            return None
        try:
            key = Path(path).read_bytes()
        except OSError as e:
            raise PermanentError(f"config.jwtKeyFile: cannot read the JWT key file {path!r}: "
                                 f"{e.strerror}; give the path of the cluster's jwt_key "
                                 "(AuthAltParameters) readable by the control plane",
                                 site=self.site.name, details={"field": "jwtKeyFile"}) from e
        if not key:
            raise PermanentError(f"config.jwtKeyFile: {path!r} is empty",
                                 site=self.site.name, details={"field": "jwtKeyFile"})
        return key

    def _make_client(self) -> SlurmRestClient:
        """The slurmrestd client ``site.config`` describes (it reads as ``user``).

        Raises:
            PermanentError: the JWT key file cannot be read or is empty.
        """
        tokens = TokenSource(self.config.user, token=self.config.token, key=self._jwt_key,
                             lifetime_s=self.config.token_lifetime, clock=self.ctx.clock)
        return SlurmRestClient(url=self.config.url, socket=self.config.socket,
                               tokens=tokens, timeout_s=self.config.timeout, site=self.site.name)

    def tokens_for(self, user: str) -> TokenSource:
        """The token source of Slurm user ``user`` (a mapped user, or ``config.user``):
        tokens are minted only for users of this site's config, never for root or the
        SlurmUser, and sent only to this site's slurmrestd.

        Raises:
            PermanentError: ``user`` is not one this site may act as.
        """
        allowed = {self.config.user} | {m.user for m in self.config.user_map}
        if user not in allowed or user in self.config.refused_users():
            raise PermanentError(f"no token is minted for Slurm user {user!r} on this site",
                                 site=self.site.name)
        if user == self.tokens.user:
            return self.tokens
        with self._lock:
            src = self._user_tokens.get(user)
            if src is None:
                src = self._user_tokens[user] = TokenSource(
                    user, key=self._jwt_key, lifetime_s=self.config.token_lifetime,
                    clock=self.ctx.clock)
            return src

    # ------------------------------------------------------------ registration check

    def check(self) -> dict[str, str]:
        """What registration asks of a cluster: version, ping, the allowed partitions, the
        reservations and node features the settings name.

        Returns:
            :meth:`backend_info` (Slurm release, data_parser).

        Raises:
            TransientError: slurmrestd unreachable, or slurmctld not answering its ping.
            AuthError: the credentials were rejected.
            UnsupportedError: slurmrestd offers no OpenAPI version Continuum speaks.
            PermanentError: an allowed partition, a reservation or a node feature the
                config names does not exist (``details["field"]`` names the field).
        """
        self.client.negotiate()
        partitions = self.client.partitions()  # before ping: 24.11+ pings "DOWN" on a bad token
        known = [str(p.get("name")) for p in partitions]
        body = self.client.ping()  # answers "DOWN" (not an auth error) to a refused token
        pings = body.get("pings") or []
        if pings and not any(str(p.get("ping", "")).upper() == "UP" for p in pings):
            raise TransientError(f"slurmctld does not answer slurmrestd's ping: {pings}",
                                 site=self.site.name)
        unknown = [p for p in self.config.partitions if p not in known]
        if unknown:
            raise PermanentError(
                f"config.partitions: {', '.join(repr(p) for p in unknown)} "
                f"{'is' if len(unknown) == 1 else 'are'} not a partition of this cluster "
                f"(it has {', '.join(known) or 'none'}); fix the name or ask the cluster's "
                "admins", site=self.site.name, details={"field": "partitions"})
        self._check_settings(partitions)
        return self.backend_info()

    def _check_settings(self, partitions: list[dict[str, Any]]) -> None:
        """Each tenant's reservation and constraint features exist on the cluster, and its
        account and QoS in slurmdbd where the site serves its endpoints. ``partitions``:
        the cluster's, as :meth:`check` read them (legacy shape).

        Raises:
            PermanentError: one does not (``details["field"]``: e.g. ``userMap.0.reservation``).
        """
        every = [s for s in (self.config.settings(m.tenant) for m in self.config.user_map) if s]
        reservations = self.client.reservations() if any(s.reservation for s in every) else None
        known = {k: self.client.db_names(k) if any(getattr(s, attr) for s in every) else None
                 for k, attr in (("accounts", "account"), ("qos", "qos"))}
        nodes = self.client.nodes() if any(s.constraint for s in every) else []
        parts = {str(p.get("name")): str(p.get("nodes") or "") for p in partitions}
        by_name = {str(n.get("name")): n for n in nodes}
        for st in every:
            for k, attr in (("accounts", "account"), ("qos", "qos")):
                names, value = known[k], getattr(st, attr)
                if value and names is not None and value not in names:
                    f = st.field_of(attr)
                    raise PermanentError(
                        f"config.{f}: {'QoS' if attr == 'qos' else attr} {value!r} is not in "
                        f"the cluster's slurmdbd (it has {', '.join(names) or 'none'})",
                        site=self.site.name, details={"field": f})
            if st.reservation and reservations is not None and st.reservation not in reservations:
                f = st.field_of("reservation")
                raise PermanentError(
                    f"config.{f}: reservation {st.reservation!r} does not exist on the cluster "
                    f"(it has {', '.join(reservations) or 'none'})", site=self.site.name,
                    details={"field": f})
            if st.constraint:
                usable = set(st.partitions or parts)
                members = {n for p in usable for n in _expand(parts.get(p, ""), by_name)}
                have = {feat for n in members for feat in
                        str(by_name[n].get("active_features") or by_name[n].get("features") or "")
                        .split(",") if feat}
                missing = [f for f in constraint_features(st.constraint) if f not in have]
                if missing:
                    f = st.field_of("constraint")
                    raise PermanentError(
                        f"config.{f}: no node of partition(s) {', '.join(sorted(usable))} has "
                        f"feature(s) {', '.join(missing)} (they have "
                        f"{', '.join(sorted(have)) or 'no features'})", site=self.site.name,
                        details={"field": f})

    def backend_info(self) -> dict[str, str]:
        """What the site runs, for the site's status: ``slurmRelease`` (e.g. ``24.11.5``),
        ``dataParser`` (``data_parser/v0.0.42``, or ``openapi/v0.0.38`` on Slurm 22.05)
        and ``family`` (``data_parser`` or ``v0.0.36-38``); empty before the first call."""
        d = self.client.dialect
        return {"slurmRelease": self.client.slurm_release,
                "dataParser": self.client.data_parser,
                "family": d.family if d else ""}

    # ------------------------------------------------------------ job table

    def _refresh_jobs(self, force: bool = False) -> None:
        """Read the job table at most every ``pollInterval`` s (HTTP 304: unchanged)."""
        with self._lock:
            now = time.monotonic()
            if not force and self._jobs_fetched and now - self._jobs_at < self.config.poll_interval:
                return
            wall = self.ctx.clock()
            jobs, last_update = self.client.job_table(
                self._update_time if self._jobs_fetched else 0)
            if jobs is not None:
                self._jobs = {int(j["job_id"]): j for j in jobs if "job_id" in j}
                for jid, j in self._jobs.items():
                    rid = scripts.run_id_of(j)
                    if rid:
                        self._by_run.setdefault(rid, jid)
                self._update_time = self._next_update_time(jobs, last_update, now)
            self._jobs_fetched, self._jobs_at, self._jobs_wall = True, now, wall

    def _next_update_time(self, jobs: list[dict[str, Any]], last_update: int | None,
                          started: float) -> int:
        """``update_time`` for the read after one that returned ``jobs``, on slurmctld's
        clock: slurmctld answers "unchanged" when ``update_time >= last_update`` (whole
        seconds), so a change in the very second of a read would be missed if the table's
        own ``last_update`` L were sent at once. L is sent once a read that *started* a
        second after the read that first reported L still reports L (slurmctld's clock is
        then past L); until then L − 1 (a full read). The legacy plugins report no
        ``last_update``: the newest past time slurmctld wrote into the table stands for it
        (never later than the real one, so never a missed change): submit and last
        scheduling times, the start of a started job, the end of an ended one (a running
        job's ``end_time`` is its projected end, in the future)."""
        if last_update is None:
            stamps: list[int] = []
            for j in jobs:
                state = JOB_STATE_TABLE.get(str(j.get("job_state")))
                keys = ["submit_time", "last_sched_evaluation"]
                keys += [] if state in (None, RunState.Dispatched) else ["start_time"]
                keys += ["end_time"] if state is not None and state.terminal else []
                stamps += [v for k in keys if isinstance(v := j.get(k), int) and v > 0]
            last_update = max(stamps, default=0)
        if not last_update:
            return 0
        ended = time.monotonic()
        if self._last_update is None or self._last_update[0] != last_update:
            self._last_update = (last_update, ended)
            return max(0, last_update - 1)
        return last_update if started >= self._last_update[1] + 1.0 else max(0, last_update - 1)

    def job(self, job_id: int) -> dict[str, Any] | None:
        """The cached record of a job (after a refresh), or None."""
        with self._lock:
            return self._jobs.get(job_id)

    # ------------------------------------------------------------ inventory

    def _partition_nodes(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        parts = self.client.partitions()
        nodes = self.client.nodes()
        return parts, nodes

    def inventory(self) -> list[Node]:
        """One Node per allowed partition (see the module docstring).

        Raises:
            TransientError | AuthError: slurmrestd could not be asked.
        """
        parts, snodes = self._partition_nodes()
        self._refresh_jobs()
        now = self.ctx.clock()
        by_name = {str(n.get("name")): n for n in snodes}
        allowed = self.config.partitions or [str(p.get("name")) for p in parts]
        known = {str(p.get("name")): p for p in parts}
        with self._lock:
            jobs = list(self._jobs.values())
        power = self.config.power or DEFAULT_POWER
        out: list[Node] = []
        stats: dict[str, PartitionStats] = {}
        missing: list[str] = []
        for pname in allowed:
            p = known.get(pname)
            if p is None:
                missing.append(pname)
                continue
            members = [by_name[n] for n in _expand(str(p.get("nodes") or ""), by_name)]
            usable = [n for n in members if _node_usable(n)]
            st = PartitionStats(name=pname)
            mem_total = mem_free = gpu_total = gpu_free = 0
            max_cpu, max_mem, max_gpu = 0.0, 0, 0
            states: dict[str, int] = {}
            for n in members:
                s = str(n.get("state") or "unknown").lower()
                states[s] = states.get(s, 0) + 1
                cpus = int(n.get("cpus") or 0)
                st.cpus_total += cpus
                if n in usable:
                    st.cpus_alloc += int(n.get("alloc_cpus") or 0)
                    st.cpus_idle += int(n.get("idle_cpus") or 0)
                    real = int(n.get("real_memory") or 0) * 2**20
                    mem_total += real
                    mem_free += max(0, real - int(n.get("alloc_memory") or 0) * 2**20)
                    g = _gpus(n.get("gres"))
                    gpu_total += g
                    gpu_free += max(0, g - _gpus(n.get("gres_used")))
                    max_cpu, max_mem, max_gpu = max(max_cpu, cpus), max(max_mem, real), max(max_gpu, g)
                else:
                    st.cpus_other += cpus
            usable_cpus = sum(int(n.get("cpus") or 0) for n in usable)
            pj = [j for j in jobs if str(j.get("partition")) == pname]
            pending = [j for j in pj if str(j.get("job_state")) == "PENDING"]
            running = [j for j in pj if JOB_STATE_TABLE.get(str(j.get("job_state"))) == RunState.Running]
            st.jobs_pending, st.jobs_running = len(pending), len(running)
            pend_cpus = sum(int(j.get("cpus") or 1) for j in pending)
            pend_mem = sum(int(j.get("memory_per_node") or 0) * 2**20 for j in pending)
            ages = [max(0.0, now - float(j.get("submit_time") or now)) for j in pending]
            st.pending_wait_avg_s = sum(ages) / len(ages) if ages else 0.0
            waits = []
            for j in pj:
                start = float(j.get("start_time") or 0)
                if (start <= 0 or str(j.get("job_state")) == "PENDING"
                        or now - start > self.config.queue_wait_window):
                    continue
                ready = max(float(j.get("submit_time") or start), float(j.get("eligible_time") or 0))
                waits.append(max(0.0, start - ready))
            st.recent_wait_avg_s = sum(waits) / len(waits) if waits else 0.0
            if pending or st.cpus_idle == 0:
                st.queue_wait_s = max(st.recent_wait_avg_s, st.pending_wait_avg_s)
            st.utilisation = (st.cpus_alloc / usable_cpus) if usable_cpus else 0.0
            stats[pname] = st
            q = self.config.queue_factor
            free = Resources(
                cpu=max(0.0, st.cpus_idle + q * usable_cpus - pend_cpus),
                memory=max(0, int(mem_free + q * mem_total - pend_mem)),
                gpu=max(0, gpu_free + int(q * gpu_total)))
            limit = p.get("max_time_limit")
            limit_min = int(limit) if isinstance(limit, int) and limit >= 0 else None
            with self._lock:
                self._partition_limits[pname] = limit_min
                self._partition_max_node[pname] = Resources(cpu=max_cpu, memory=max_mem, gpu=max_gpu)
            pstate = str(p.get("state") or "UP").upper()  # v0.0.36 has no partition state
            node_states = ",".join(f"{k}={v}" for k, v in sorted(states.items()))
            labels = {**self.config.labels,
                      "slurm.schedmd.com/partition": pname,
                      "slurm.schedmd.com/state": pstate.lower(),
                      "slurm.schedmd.com/max-time": "infinite" if limit_min is None else f"{limit_min}m",
                      "slurm.schedmd.com/nodes": str(len(members)),
                      "slurm.schedmd.com/nodes-usable": str(len(usable)),
                      "slurm.schedmd.com/node-states": node_states,
                      "slurm.schedmd.com/jobs-pending": str(st.jobs_pending),
                      "slurm.schedmd.com/jobs-running": str(st.jobs_running)}
            scale = max(1, len(usable))
            out.append(Node(
                id=f"{self.site.name}/{pname}", name=pname, site=self.site.name,
                site_kind=SiteKind.slurm, tier=self.site.tier or Tier.hpc,
                arch=str((usable or members or [{}])[0].get("architecture") or "x86_64"),
                capacity=Resources(cpu=float(usable_cpus), memory=mem_total, gpu=gpu_total),
                allocatable=Resources(cpu=max_cpu, memory=max_mem, gpu=max_gpu),
                free=free, labels=labels, speed=self.config.speed,
                power=PowerProfile(idle_watts=power.idle_watts * scale,
                                   max_watts=power.max_watts * scale,
                                   gpu_watts=power.gpu_watts, source=power.source),
                location=self.site.location or self.site.name,
                runtimes=["process", "apptainer", "container"] if self.config.apptainer else ["process"],
                ready=bool(usable) and pstate == "UP",
                utilisation=min(1.0, st.utilisation), observed_at=datetime.fromtimestamp(now, UTC),
                queue_wait_s=st.queue_wait_s,
            ))
        with self._lock:
            self._stats = stats
            if missing:
                self._health = (SiteHealth.Degraded, f"partition(s) {', '.join(missing)} no longer "
                                f"exist on the cluster")
            elif out and not any(n.ready for n in out):
                self._health = (SiteHealth.Degraded, "no allowed partition is UP with a usable node")
            else:
                self._health = (SiteHealth.Ready, "")
        return out

    def partition_stats(self) -> list[PartitionStats]:
        """Per allowed partition, as of the last inventory (for the /metrics block)."""
        with self._lock:
            return list(self._stats.values())

    # ------------------------------------------------------------ jobs

    def submit(self, run: TaskRun, node: Node, request_id: str) -> Handle:
        """Submit the run's batch script to the node's partition; idempotent by request id.

        Raises:
            TransientError: slurmrestd or slurmctld unreachable (safe to call again).
            UnsupportedError: the task needs a container image and the site declares no
                Apptainer.
            PermanentError: the partition is not allowed, the task's timeout exceeds the
                partition's time limit, or slurmctld rejected the job (message says why).
        """
        partition = node.name
        settings = self.config.settings(run.tenant)
        if settings is None:
            raise PermanentError(
                f"tenant {run.tenant!r} has no Slurm user on site {self.site.name!r}: an "
                "hpc-admin adds it to the site's config.userMap (tenant, user, account, qos, "
                "reservation)", site=self.site.name, details={"field": "userMap"})
        if settings.partitions and partition not in settings.partitions:
            f = settings.field_of("partitions")
            raise PermanentError(f"partition {partition!r} is not allowed for tenant "
                                 f"{run.tenant!r} on this site (config.{f}: "
                                 f"{', '.join(settings.partitions)})", site=self.site.name,
                                 details={"field": f})
        task = run.task
        if task.image and not self.config.apptainer:
            raise UnsupportedError(f"task {task.name!r} names image {task.image!r} but this "
                                   "site does not declare Apptainer (config.apptainer: true)",
                                   site=self.site.name)
        tl = scripts.time_limit_minutes(task.timeout if task.timeout is not None
                                        else settings.time_limit_s)
        with self._lock:
            uncertain = request_id in self._uncertain
        if uncertain:
            self._refresh_jobs(force=True)  # finds the job by its name if it was taken
        with self._lock:
            limit = self._partition_limits.get(partition)
            existing = self._by_run.get(request_id)
        if tl is not None and limit is not None and tl > limit:
            raise PermanentError(f"task {task.name!r} needs {tl} min but partition {partition!r} "
                                 f"allows at most {limit} min", site=self.site.name)
        jp = scripts.paths(self.config.workdir, request_id)
        if existing is not None:
            log.info("site %s: run %s already is job %d; not submitting again", self.site.name,
                     request_id, existing)
            return self._handle(run, node, existing, jp)
        body = scripts.batch_script(run, jp, apptainer=self.config.apptainer_binary
                                    if task.image else None)
        job = scripts.job_description(run, jp, partition=partition,
                                      base_env=self.config.environment,
                                      account=settings.account, time_limit_min=tl,
                                      qos=settings.qos, reservation=settings.reservation,
                                      constraint=settings.constraint)
        try:
            job_id = self.client.submit(body, job, tokens=self.tokens_for(settings.user))
        except TransientError as e:
            if isinstance(e, SlurmApiError) and e.numbers and all(
                    n >= 2000 for n in e.numbers if n > 0) and any(n >= 2000 for n in e.numbers):
                raise self._rejected(request_id, e, settings, partition, tl) from e
            with self._lock:
                self._uncertain.add(request_id)
            raise
        with self._lock:
            self._by_run[request_id] = job_id
            self._uncertain.discard(request_id)
        log.info("site %s: run %s (tenant %s) submitted as job %d of user %s to partition %s",
                 self.site.name, request_id, run.tenant, job_id, settings.user, partition)
        return self._handle(run, node, job_id, jp, user=settings.user)

    def _rejected(self, request_id: str, e: SlurmApiError, settings: JobSettings,
                  partition: str, time_limit_min: int | None) -> PermanentError:
        """The permanent error of a job slurmctld refused: it names the setting Slurm
        refused (``Slurm refused account 'x' (config.account): Invalid account ...``)
        when the error number says which (:data:`REJECTED_SETTING`)."""
        why = "; ".join(dict.fromkeys(t for x in e.errors
                                      if (t := str(x.get("error") or x.get("description") or "")))
                        ) or e.message
        setting = next((REJECTED_SETTING[n] for n in e.numbers if n in REJECTED_SETTING), None)
        if setting is None:
            return PermanentError(f"slurmctld rejected the job of run {request_id}: {e.message}",
                                  site=self.site.name)
        value: object = {"partitions": partition, "user": settings.user,
                         "time_limit_s": f"{time_limit_min} min"}.get(
                             setting, getattr(settings, setting, None))
        label = {"partitions": "partition", "time_limit_s": "time limit", "qos": "QoS",
                 "constraint": "constraint"}.get(setting, setting)
        where = f"config.{settings.field_of(setting)}"
        if setting == "time_limit_s":
            where += " or the task's timeout"
        what = (f"{label} {value!r} ({where})" if value is not None
                else f"the user's default {label} ({where} is not set)")
        return PermanentError(f"Slurm refused {what} for run {request_id}: {why}",
                              site=self.site.name,
                              details={"field": settings.field_of(setting),
                                       "slurmErrors": e.numbers})

    def _handle(self, run: TaskRun, node: Node, job_id: int, jp: scripts.JobPaths,
                user: str | None = None) -> Handle:
        return Handle(site=self.site.name, run_id=run.run_id, backend_id=str(job_id),
                      node=node.id, data={
                          "jobId": job_id, "user": user or self.config.user,
                          "partition": node.name, "output": jp.output,
                          "runDir": jp.run_dir, "workflowId": run.workflow_id,
                          "submittedAt": self.ctx.clock(),
                          "inputBytes": sum(a.size for a in run.inputs),
                          "outputs": [o.name for o in run.outputs]})

    def status(self, handles: Sequence[Handle]) -> dict[str, RunStatus]:
        """One job-table read (at most every ``pollInterval`` s) for every handle.

        A job missing from the table is omitted while it may simply be newer than the
        table; once the table is newer than the submission, slurmctld forgot the job
        (purged after MinJobAge, or its state was lost): the batch script's exit file
        (``scripts.EXIT_FILE``) then says how it ended, and without it the run is Failed
        with that reason.

        Raises:
            TransientError | AuthError: slurmrestd could not be asked.
        """
        if not handles:
            return {}
        self._refresh_jobs()
        out: dict[str, RunStatus] = {}
        for h in handles:
            try:
                job_id = int(h.backend_id)
            except ValueError:
                out[h.run_id] = RunStatus(RunState.Failed, reason=f"bad Slurm job id {h.backend_id!r}")
                continue
            with self._lock:
                job = self._jobs.get(job_id)
                table_at = self._jobs_wall
                self._by_run.setdefault(h.run_id, job_id)
            if job is None:
                if table_at < float(h.data.get("submittedAt") or 0) + 1.0:
                    continue
                code = self._read_exit_file(h)
                if code is not None:  # the batch script's EXIT trap says how it ended
                    st = self._job_status(h, {"job_state": "COMPLETED" if code == 0 else "FAILED",
                                              "exit_code": code << 8})
                    if st is not None:
                        out[h.run_id] = st
                    continue
                out[h.run_id] = RunStatus(
                    RunState.Failed,
                    reason=f"Slurm job {job_id} is no longer known to slurmctld (purged after "
                           "MinJobAge or lost) and its exit file cannot be read; its end state "
                           "is unknown",
                    output_tail=self._read_tail(h, 50)[1])
                continue
            st = self._job_status(h, job)
            if st is not None:
                out[h.run_id] = st
        return out

    def _job_status(self, h: Handle, job: dict[str, Any]) -> RunStatus | None:
        raw_state = str(job.get("job_state") or "")
        state = JOB_STATE_TABLE.get(raw_state)
        if state is None:
            log.warning("site %s: job %s has unknown state %r; keeping the run's last state",
                        self.site.name, h.backend_id, raw_state)
            return None
        started = _ts(job.get("start_time")) if state != RunState.Dispatched else None
        if not state.terminal:
            reason = "" if state == RunState.Running else str(job.get("state_reason") or "")
            if raw_state not in ("RUNNING", "PENDING"):
                reason = f"Slurm job state {raw_state}"
            return RunStatus(state=state, reason=reason if reason != "None" else "",
                             started_at=started)
        code, sig_reason = decode_exit(job.get("exit_code"))
        acct_ready, acct = self._accounting(h)
        if not acct_ready:
            return None  # keep the run's state until slurmdbd has the job (accountingWait)
        ok, tail = self._read_tail(h, 50)
        note = self._read_status_note(h) or scripts.failure_of(job)
        if state == RunState.Succeeded:
            reason = ""
        elif note:
            reason = note
        elif raw_state == "FAILED":
            reason = sig_reason or (f"exited with code {code}" if code is not None else "job failed")
            sr = str(job.get("state_reason") or "")
            if sr and sr not in ("None", "NonZeroExitCode"):
                reason += f" ({sr})"
        else:
            reason = STATE_REASONS.get(raw_state, raw_state.lower())
            sr = str(job.get("state_reason") or "")
            if sr and sr != "None":
                reason += f" ({sr})"
        outputs: list[ArtifactRecord] = []
        bytes_out = 0
        wf = str(h.data.get("workflowId") or "")
        if state == RunState.Succeeded and wf:
            for name in h.data.get("outputs") or []:
                rec = self.ctx.artifacts.record(wf, str(name))
                if rec is not None:
                    outputs.append(rec)
                    bytes_out += rec.size
        fetched_inputs = code != scripts.EXIT_INPUT or not note
        return RunStatus(
            state=state, reason=reason, exit_code=code, started_at=started,
            finished_at=_ts(job.get("end_time")),
            output_tail=tail if ok else "",
            bytes_in=int(h.data.get("inputBytes") or 0) if fetched_inputs else 0,
            bytes_out=bytes_out, outputs=outputs,
            **(self._observed(acct) if acct is not None else {}))

    @staticmethod
    def _observed(acct: accounting.JobAccounting) -> dict[str, Any]:
        """The :class:`RunStatus` fields a slurmdbd record fills."""
        return {"runtime_s": acct.elapsed_s, "energy_j": acct.energy_j,
                "cpu_time_s": acct.cpu_time_s, "max_rss_bytes": acct.max_rss_bytes,
                "accounting": acct.to_json()}

    def _accounting(self, h: Handle) -> tuple[bool, accounting.JobAccounting | None]:
        """(ready, record) of a job slurmctld says has ended: its slurmdbd record read
        through slurmrestd's slurmdb endpoint (:mod:`adapters.slurm.accounting`).

        Not ready while slurmdbd does not yet hold the job's end, for at most
        ``accountingWait`` s from the first ask; ready without a record when accounting
        is off (``accounting: false``), slurmrestd does not serve the slurmdb job endpoint
        of the negotiated version (v0.0.40+, ``-s openapi/slurmdbd``), or reading it failed
        (then not asked again for 5 min).
        """
        version = self.client.version
        if not self.config.accounting or not accounting.served(self.client.served_paths,
                                                               version):
            return True, None
        job_id = int(h.backend_id)
        now = time.monotonic()
        with self._lock:
            if now < self._acct_off_until:
                return True, None
            first = self._acct_waiting.setdefault(job_id, now)
        rec = None
        try:
            rec = accounting.read_job(
                lambda path: self.client.request("GET", path, versioned=False),
                str(version), job_id)
        except (SlurmApiError, accounting.AccountingUnavailable) as e:
            log.warning("site %s: no job accounting through slurmrestd (%s); finished jobs "
                        "are reported without slurmdbd's figures, asked again in 5 min",
                        self.site.name, e)
            with self._lock:
                self._acct_off_until = now + 300.0
                self._acct_waiting.pop(job_id, None)
            return True, None
        except (TransientError, AuthError) as e:  # the job-table read worked: retry
            log.info("site %s: accounting of job %d not read yet: %s", self.site.name,
                     job_id, e)
        if (rec is None or not rec.finished) and now - first < self.config.accounting_wait:
            return False, None
        with self._lock:
            self._acct_waiting.pop(job_id, None)
        if rec is None or not rec.finished:
            log.warning("site %s: slurmdbd had no finished record of job %d after %.0f s; "
                        "reporting run %s without it", self.site.name, job_id,
                        self.config.accounting_wait, h.run_id)
            return True, None
        return True, rec

    def _read_exit_file(self, h: Handle) -> int | None:
        """The exit code the batch script recorded (``scripts.EXIT_FILE``), or None when the
        control plane cannot read it (no shared file system) or the job never ended."""
        run_dir = str(h.data.get("runDir") or "") if self.config.shared_workdir else ""
        try:
            text = Path(run_dir, scripts.EXIT_FILE).read_text().strip() if run_dir else ""
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    def _read_status_note(self, h: Handle) -> str:
        run_dir = str(h.data.get("runDir") or "")
        if not run_dir or not self.config.shared_workdir:
            return ""
        try:
            return Path(run_dir, scripts.STATUS_FILE).read_text(errors="replace").strip()
        except OSError:
            return ""

    def _read_tail(self, h: Handle, tail: int) -> tuple[bool, str]:
        path = str(h.data.get("output") or "")
        if not path:
            return False, "this run's handle names no output file"
        if not self.config.shared_workdir:
            return False, (f"the job's output file {path} is on the cluster's file system "
                           "(config.sharedWorkdir: false)")
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError as e:
            return False, (f"the job's output file {path} is not readable from the control "
                           f"plane ({e.strerror}); it is on the cluster's file system")
        return True, scripts.tail_lines(text, tail)

    def find(self, run_id: str) -> Handle | None:
        """The job of run ``run_id`` in slurmctld's job table (read now, found by the job's
        name/comment), as a handle that :meth:`cancel` and :meth:`status` take; None when
        slurmctld holds none. For a submit whose answer was lost (:class:`FindsWork`).

        Raises:
            TransientError | AuthError: slurmrestd could not be asked.
        """
        self._refresh_jobs(force=True)
        with self._lock:
            job_id = self._by_run.get(run_id)
            job = self._jobs.get(job_id) if job_id is not None else None
        if job_id is None or job is None:
            return None
        jp = scripts.paths(self.config.workdir, run_id)
        return Handle(site=self.site.name, run_id=run_id, backend_id=str(job_id),
                      node=f"{self.site.name}/{job.get('partition') or ''}", data={
                          "jobId": job_id, "user": str(job.get("user_name") or self.config.user),
                          "partition": job.get("partition"), "output": jp.output,
                          "runDir": jp.run_dir, "submittedAt": self.ctx.clock()})

    def cancel(self, handle: Handle) -> None:
        """``DELETE job/{id}`` (Slurm signals the job, then kills it after KillWait). Idempotent.

        Raises:
            TransientError | AuthError: slurmrestd could not be asked.
        """
        try:
            job_id = int(handle.backend_id)
        except ValueError:
            return
        user = str(handle.data.get("user") or self.config.user)
        try:
            tokens = self.tokens_for(user)
        except PermanentError:
            tokens = self.tokens
        self.client.cancel(job_id, tokens=tokens)
        log.info("site %s: job %d of run %s cancelled", self.site.name, job_id, handle.run_id)

    def logs(self, handle: Handle, tail: int = 50) -> str:
        """The last ``tail`` lines of the job's output file, or why it cannot be read."""
        return self._read_tail(handle, tail)[1]

    def release(self, handle: Handle) -> None:
        """Forget the run; Slurm keeps the job record for MinJobAge, the files stay."""
        with self._lock:
            self._by_run.pop(handle.run_id, None)

    def health(self) -> tuple[SiteHealth, str]:
        """Ready; Degraded when an allowed partition vanished or none is usable."""
        with self._lock:
            return self._health

    def close(self) -> None:
        self.client.close()


def _expand(hostlist: str, known: dict[str, Any]) -> list[str]:
    """Slurm hostlist expression → node names (``n[01-03,07],gpu1``), kept to known nodes."""
    names: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", hostlist):
        m = re.match(r"^(.*)\[([^\]]*)\](.*)$", part)
        if not m:
            names.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                a, b = r.split("-", 1)
                width = len(a)
                names += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(a), int(b) + 1)]
            else:
                names.append(f"{prefix}{r}{suffix}")
    return [n for n in names if n in known]


def _factory(site: SiteSpec, ctx: AdapterContext) -> SlurmAdapter:
    return SlurmAdapter(site, ctx)


register(SiteKind.slurm, _factory)

# Declared capabilities (adapters.capabilities): mypy checks the signatures, conforms the names.
_DECLARED: tuple[type[SupportsCheck], type[capabilities.PartitionStats],
                 type[capabilities.FindsWork], type[capabilities.DescribesBackend]] = (
    SlurmAdapter, SlurmAdapter, SlurmAdapter, SlurmAdapter)
conforms(SlurmAdapter, SupportsCheck, capabilities.PartitionStats, capabilities.FindsWork,
         capabilities.DescribesBackend)

__all__ = ["SlurmAdapter", "SlurmConfig", "UserMapping", "JOB_STATE_TABLE", "PartitionStats",
           "decode_exit", "jwt_key_bytes",
           "AdapterError"]
