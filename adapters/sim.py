"""The digital twin: a site of kind ``sim`` whose nodes and runs are simulated.

The twin stands in for an edge cluster, a cloud region or an HPC centre in the embedded
demo, in benchmarks, in what-if previews and to bootstrap the predictors with training
data. Everything it reports is labelled simulated (``Node.simulated``,
``RunStatus.simulated``, artifacts stored with ``simulated=True``, log lines prefixed
``[simulated]``): it is never passed off as real work.

Configuration (the site's ``config``, camelCase, unknown fields rejected)::

    kind: sim
    tier: cloud
    location: frankfurt
    config:
      timeScale: 60              # virtual seconds per wall second: a 10-minute job
                                 # takes 10 wall seconds; 3600 makes an hour a second
      failureRate: 0.02          # 0..1, drawn per run from an RNG seeded by the run id
      ingressBandwidth: 1e9      # bit/s into the site, for input transfer (default 1 Gbit/s)
      nodes:
        - name: c5               # count > 1 names them c5-0, c5-1, ...
          count: 3
          cpu: 32                # cores ("500m" accepted)
          memory: 128Gi
          gpu: 0
          arch: x86_64
          speed: 1.0             # per-core speed relative to the reference core
          power: {idleWatts: 80, maxWatts: 250, gpuWatts: 0, source: "..."}
          labels: {instance-type: c5.9xlarge}
          taints: []
          runtimes: [process, container]
          queueWait: 0s          # expected wait before start (e.g. an HPC partition: 5m)

The model of a run (all in *virtual* seconds; wall seconds = virtual / ``timeScale``):

* ``queue wait`` — the node's ``queueWait``; the run is ``Dispatched`` meanwhile;
* ``transfer`` — (input artifact bytes + ``dataset_bytes``) × 8 / ``ingressBandwidth``;
* ``runtime`` — ``task.work / (node.speed × min(cpu request, node cpu))``, with
  ``work`` = 60 core-seconds when the task does not say;

the run is ``Running`` during transfer and runtime, then ``Succeeded``; or ``Failed``
with exit code 1 and reason ``simulated failure`` when the failure draw says so (at a
drawn point of its runtime), or reason ``timeout`` when ``task.timeout`` is shorter than
transfer + runtime (it fails when the timeout elapses). Services run until cancelled.

Energy (J) = compute seconds × attributed power, with the linear model of
:class:`~continuum.model.PowerProfile` shared by CPU fraction
``f = min(cpu, node cpu) / node cpu``: ``P_run = f·idle + f·(max − idle) + gpus·gpuWatts``
(the idle power is attributed in proportion to the cores a run holds, as Kepler does).
The node reports ``P = idle + (max − idle)·u + gpuWatts·busy GPUs`` with
``u`` = cores of running runs / capacity, so the runs' shares never exceed it.

Time is computed from ``ctx.clock()`` (wall epoch seconds) and the facts in
``Handle.data``, never from in-memory timers: no threads, and a new adapter instance
(after a control-plane restart) answers ``status`` for old handles and counts their
resources as busy. The twin also journals its handles to ``ctx.state_dir`` so a
resubmission with the same request id after a restart — or by another control-plane
replica sharing that directory, whose adapter started earlier — returns the same handle
(a submit looks the run id up in the journal when it does not hold it).

Besides that journal (compacted to the live runs at each start), the twin keeps an
append-only **record** of every run it started, ``<state_dir>/sim-<site>.record.jsonl``:
one line per new submission (``{"handle": <Handle JSON>}``), never rewritten, so what the
twin ran can be read from outside the control plane (:func:`read_record`, and
:func:`record_state` for a recorded run's state at a wall time) — e.g. a chaos test
checking that no run was started twice across control-plane crashes.

Why one module of this size: the digital twin is one adapter whose node groups, virtual
clock, journal and failure injection share one state; it has no backend of its own to
split along.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from adapters.base import (
    AdapterContext,
    ArtifactRecord,
    Handle,
    RunStatus,
    TaskRun,
)
from adapters.registry import register
from continuum.errors import PermanentError
from continuum.model import (
    Model,
    Name,
    Node,
    PowerProfile,
    Resources,
    RunState,
    SiteHealth,
    SiteKind,
    SiteSpec,
    Taint,
    Tier,
)
from continuum.units import Bytes, Cores, Seconds, format_bytes, format_duration

log = logging.getLogger(__name__)

DEFAULT_WORK_CORE_S = 60.0
"""Work (core-seconds on a reference core) assumed when a task does not give ``work``."""

_HANDLE_VERSION = 1


# ---------------------------------------------------------------- configuration


class SimNodeGroup(Model):
    """One group of identical simulated nodes (or one HPC partition)."""

    name: Name
    count: int = Field(default=1, ge=1, le=100_000)
    cpu: Cores = Field(description="cores per node; accepts 500m")
    memory: Bytes = Field(description="bytes per node; accepts 64Gi")
    gpu: int = Field(default=0, ge=0)
    arch: str = "x86_64"
    speed: float = Field(default=1.0, gt=0, description="per-core speed; reference core = 1.0")
    power: PowerProfile
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    runtimes: list[str] = Field(default_factory=lambda: ["process", "container"])
    queue_wait: Seconds = Field(default=0.0, description="expected wait before start (s)")

    @field_validator("cpu")
    @classmethod
    def _positive_cpu(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("cpu must be more than 0 cores (e.g. 16 or 500m)")
        return v


class SimConfig(Model):
    """The ``config`` of a ``sim`` site. See the module docstring for an example."""

    time_scale: float = Field(
        default=60.0, gt=0, description="virtual seconds per wall second (60: a minute per second)"
    )
    nodes: list[SimNodeGroup] = Field(min_length=1)
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    ingress_bandwidth: float = Field(default=1e9, gt=0, description="bit/s into the site")

    @field_validator("nodes")
    @classmethod
    def _unique_names(cls, groups: list[SimNodeGroup]) -> list[SimNodeGroup]:
        seen: set[str] = set()
        for g in groups:
            for n in _expand_names(g):
                if n in seen:
                    raise ValueError(f"node name {n!r} appears twice; give each group its own name")
                seen.add(n)
        return groups


class SimConfigError(PermanentError, ValueError):
    """A ``sim`` site's config is invalid; the message names the field (``config.nodes.0.cpu``)."""


def parse_config(site: SiteSpec) -> SimConfig:
    """Validate ``site.config``.

    Raises:
        SimConfigError: naming each bad field as ``config.<path>`` and how to fix it.
    """
    try:
        return SimConfig.model_validate(site.config)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in ("config", *err["loc"]))
            parts.append(f"{loc}: {err['msg']}")
        raise SimConfigError(
            "invalid sim config: " + "; ".join(parts), site=site.name,
            details={"errors": [{"loc": ["config", *err["loc"]], "msg": err["msg"]}
                                for err in e.errors()]},
        ) from e


def _expand_names(group: SimNodeGroup) -> list[str]:
    if group.count == 1:
        return [group.name]
    return [f"{group.name}-{i}" for i in range(group.count)]


# ---------------------------------------------------------------- the adapter


class SimAdapter:
    """A simulated site; see the module docstring for the model and ``timeScale``."""

    def __init__(self, site: SiteSpec, ctx: AdapterContext):
        self.site = site
        self.ctx = ctx
        self.config = parse_config(site)
        self.tier = site.tier or Tier.cloud
        self.location = site.location or site.name
        self._nodes: dict[str, SimNodeGroup] = {}
        for g in self.config.nodes:
            for n in _expand_names(g):
                self._nodes[n] = g
        self._runs: dict[str, Handle] = {}
        self._journal = Path(ctx.state_dir) / f"sim-{site.name}.jsonl" if ctx.state_dir else None
        self._record = record_path(Path(ctx.state_dir), site.name) if ctx.state_dir else None
        self._journal_inode, self._journal_pos = -1, 0
        self._journal_runs: dict[str, dict[str, Any]] = {}
        """What :meth:`_journaled` has read of the journal: run id → the handle of each
        run not released, up to byte ``_journal_pos`` of the file with inode
        ``_journal_inode``."""
        self._templates: dict[str, Node] = {}
        """Node name → its fixed fields as validated once (:meth:`_node_template`)."""
        self._made_dirs: set[Path] = set()
        """The folders :meth:`_append` has made (or found) already."""
        self._load_journal()

    # -------------------------------------------------------- journal

    def _load_journal(self) -> None:
        """Replay the append-only journal (one JSON line per put / delete), then compact it."""
        if self._journal is None or not self._journal.exists():
            return
        lines = 0
        try:
            with self._journal.open() as f:
                for line in f:
                    if not line.strip():
                        continue
                    lines += 1
                    try:
                        ev = json.loads(line)
                        if ev["op"] == "put":
                            h = Handle.from_json(ev["handle"])
                            self._runs[h.run_id] = h
                        else:
                            self._runs.pop(ev["runId"], None)
                    except (ValueError, KeyError, TypeError) as e:
                        log.warning("sim site %s: skipping bad journal line in %s: %s",
                                    self.site.name, self._journal, e)
        except OSError as e:
            log.warning("sim site %s: cannot read journal %s: %s", self.site.name, self._journal, e)
            return
        if lines > len(self._runs):
            self._compact_journal()

    def _compact_journal(self) -> None:
        assert self._journal is not None
        try:
            tmp = self._journal.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps({"op": "put", "handle": h.to_json()}) + "\n"
                                   for h in self._runs.values()))
            os.replace(tmp, self._journal)
        except OSError as e:
            log.warning("sim site %s: cannot compact journal %s: %s",
                        self.site.name, self._journal, e)

    def _journaled(self, run_id: str) -> Handle | None:
        """The live handle of ``run_id`` another instance of this site journaled since
        this one started (another control-plane replica sharing the state directory),
        taken over; None when the journal holds none.

        The journal is read from where the previous call stopped (from the start again
        when it was compacted meanwhile), so each line is parsed once, not once per
        submit."""
        if self._journal is None:
            return None
        try:
            st = os.stat(self._journal)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("sim site %s: cannot read journal %s: %s", self.site.name, self._journal, e)
            return None
        if st.st_ino != self._journal_inode or st.st_size != self._journal_pos:
            self._read_journal()  # not at its end: another instance wrote (or compacted)
        data = self._journal_runs.get(run_id)
        if data is None:
            return None
        found = Handle.from_json(json.loads(json.dumps(data)))  # a copy we own
        self._runs[run_id] = found
        return found

    def _read_journal(self) -> None:
        """Read the journal from where :meth:`_journaled` stopped into ``_journal_runs``."""
        assert self._journal is not None
        try:
            with self._journal.open("rb") as f:
                ident = os.fstat(f.fileno()).st_ino
                if ident != self._journal_inode or os.fstat(f.fileno()).st_size < self._journal_pos:
                    self._journal_inode, self._journal_pos, self._journal_runs = ident, 0, {}
                f.seek(self._journal_pos)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # a line still being written: read it next time
                    self._journal_pos += len(raw)
                    try:
                        self._journal_read(json.loads(raw))
                    except (ValueError, KeyError, TypeError):
                        continue
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("sim site %s: cannot read journal %s: %s", self.site.name, self._journal, e)

    def _journal_read(self, ev: dict[str, Any]) -> None:
        """Take one journal line (parsed) into ``_journal_runs``.

        Raises:
            KeyError, TypeError: not a journal line.
        """
        if ev["op"] == "put":  # a copy of the handle's data: the live handle changes it
            self._journal_runs[ev["handle"]["runId"]] = {**ev["handle"],
                                                         "data": dict(ev["handle"].get("data") or {})}
        else:  # released: kept no longer (the index holds live runs only)
            self._journal_runs.pop(ev["runId"], None)

    def _journal_put(self, h: Handle) -> None:
        self._append({"op": "put", "handle": h.to_json()})

    def _journal_del(self, run_id: str) -> None:
        self._append({"op": "del", "runId": run_id})

    def _append(self, event: dict[str, Any], path: Path | None = None,
                text: str | None = None) -> None:
        """Append ``event`` as one JSON line to ``path`` (the journal by default), its
        folder made at the first write; ``text``: ``json.dumps(event)`` when the caller
        has it. A journal line that directly follows what :meth:`_journaled` has read (no
        other instance wrote in between) is counted as read: this instance's own lines
        are not parsed again at its next submit."""
        path = path or self._journal
        if path is None:
            return
        line = ((json.dumps(event) if text is None else text) + "\n").encode()
        try:
            if path.parent not in self._made_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._made_dirs.add(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write of a whole line: appended as a unit
                if path == self._journal:
                    end = os.lseek(fd, 0, os.SEEK_CUR)
                    if (os.fstat(fd).st_ino == self._journal_inode
                            and end - len(line) == self._journal_pos):
                        self._journal_pos = end
                        self._journal_read(event)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("sim site %s: cannot write %s: %s", self.site.name, path, e)

    # -------------------------------------------------------- protocol

    def inventory(self) -> list[Node]:
        now = self.ctx.clock()
        reserved: dict[str, list[float]] = {n: [0.0, 0.0, 0.0] for n in self._nodes}
        running: dict[str, list[float]] = {n: [0.0, 0.0] for n in self._nodes}
        for h in self._runs.values():
            d = h.data
            if h.node not in reserved:
                continue
            state = self._timeline(d, now)[0]
            if state.terminal:
                continue
            reserved[h.node][0] += d["cpu"]
            reserved[h.node][1] += d["memory"]
            reserved[h.node][2] += d["gpu"]
            if state is RunState.Running:
                running[h.node][0] += d["cpuEff"]
                running[h.node][1] += d["gpu"]
        observed = datetime.fromtimestamp(now, UTC)
        out = []
        for name, g in self._nodes.items():
            cpu_r, mem_r, gpu_r = reserved[name]
            busy_cpu = min(running[name][0], g.cpu)
            busy_gpu = min(int(running[name][1]), g.gpu)
            u = busy_cpu / g.cpu
            watts = (g.power.idle_watts + (g.power.max_watts - g.power.idle_watts) * u
                     + g.power.gpu_watts * busy_gpu)
            free = Resources(cpu=max(0.0, g.cpu - cpu_r), memory=max(0, g.memory - int(mem_r)),
                             gpu=max(0, g.gpu - int(gpu_r)))
            # the node's fixed fields validated once (its template), the measured ones set
            # on a shallow copy: validating a whole Node was ~70 µs, 35 ms an inventory of 500
            out.append(self._node_template(name, g).model_copy(update={
                "free": free, "utilisation": u, "power_watts": watts, "observed_at": observed}))
        return out

    def _node_template(self, name: str, g: SimNodeGroup) -> Node:
        """Node ``name`` of group ``g`` as an inventory reports it, without what is
        measured (free resources, utilisation, power, time): validated at the first
        inventory, then copied. Its nested values are shared by every copy; nothing
        changes a reported node in place (a changed node is a ``model_copy``)."""
        node = self._templates.get(name)
        if node is None:
            cap = Resources(cpu=g.cpu, memory=g.memory, gpu=g.gpu)
            node = self._templates[name] = Node(
                id=f"{self.site.name}/{name}", name=name, site=self.site.name,
                site_kind=SiteKind.sim, tier=self.tier, arch=g.arch,
                capacity=cap, allocatable=cap.model_copy(), free=cap.model_copy(),
                labels={**g.labels, "continuum.io/simulated": "true"},
                taints=list(g.taints), speed=g.speed, power=g.power,
                location=self.location, runtimes=list(g.runtimes), ready=True,
                simulated=True, utilisation=0.0, power_watts=g.power.idle_watts,
                queue_wait_s=g.queue_wait,
            )
        return node

    def submit(self, run: TaskRun, node: Node, request_id: str) -> Handle:
        known = self._runs.get(request_id) or self._journaled(request_id)
        if known is not None:
            return known
        name = node.name if node.name in self._nodes else node.id.rsplit("/", 1)[-1]
        group = self._nodes.get(name)
        if group is None:
            raise PermanentError(
                f"node {node.id!r} is not part of sim site {self.site.name!r} "
                f"(nodes: {', '.join(sorted(self._nodes))})", site=self.site.name)
        task = run.task
        res = task.resources
        if res.memory > group.memory or res.gpu > group.gpu:
            raise PermanentError(
                f"task {task.name!r} asks for memory {format_bytes(res.memory)}, gpu {res.gpu}; "
                f"node {name} has {format_bytes(group.memory)}, gpu {group.gpu}",
                site=self.site.name)
        # a task asking for 0 cores still runs somewhere: model it on one core
        cpu_eff = min(res.cpu, group.cpu) if res.cpu > 0 else min(1.0, group.cpu)
        work = task.work if task.work is not None else DEFAULT_WORK_CORE_S
        bytes_in = sum(a.size for a in run.inputs)
        transfer_v = (bytes_in + run.dataset_bytes) * 8.0 / self.config.ingress_bandwidth
        service = task.kind == "service"
        runtime_v = None if service else work / (group.speed * cpu_eff)
        rng = random.Random(f"{self.site.name}/{request_id}")
        draw, fail_point = rng.random(), rng.random()
        outcome, end_v, reason = "succeeded", None, ""
        if not service:
            assert runtime_v is not None
            exec_v = transfer_v + runtime_v
            end_v = group.queue_wait + exec_v
            if self.config.failure_rate > 0 and draw < self.config.failure_rate:
                outcome, reason = "failed", "simulated failure"
                end_v = group.queue_wait + transfer_v + runtime_v * fail_point
            if task.timeout is not None and task.timeout < end_v - group.queue_wait:
                outcome, reason = "failed", "timeout"
                end_v = group.queue_wait + task.timeout
        outputs = ([{"name": o.name, "path": o.path, "size": o.size_hint} for o in run.outputs]
                   if run.outputs else
                   [{"name": o.name, "path": o.path, "size": o.size} for o in task.outputs])
        pw = group.power
        frac = cpu_eff / group.cpu
        run_watts = frac * pw.idle_watts + frac * (pw.max_watts - pw.idle_watts) \
            + res.gpu * pw.gpu_watts
        data: dict[str, Any] = {
            "v": _HANDLE_VERSION,
            "simulated": True,
            "submittedAt": self.ctx.clock(),
            "timeScale": self.config.time_scale,
            "queueWaitV": group.queue_wait,
            "transferV": transfer_v,
            "runtimeV": runtime_v,
            "endV": end_v,
            "outcome": outcome,
            "reason": reason,
            "node": name,
            "cpu": res.cpu,
            "cpuEff": cpu_eff,
            "memory": res.memory,
            "gpu": res.gpu,
            "speed": group.speed,
            "work": work,
            "watts": run_watts,
            "bytesIn": bytes_in,
            "datasetBytes": run.dataset_bytes,
            "bandwidth": self.config.ingress_bandwidth,
            "workflowId": run.workflow_id,
            "task": task.name,
            "attempt": run.attempt,
            "outputs": outputs,
            "cancelledAt": None,
        }
        h = Handle(site=self.site.name, run_id=request_id, backend_id=f"sim-{request_id}",
                   node=name, data=data)
        self._runs[request_id] = h
        wire = h.to_json()
        text = json.dumps(wire)  # encoded once for the journal and the record
        self._append({"op": "put", "handle": wire}, text=f'{{"op": "put", "handle": {text}}}')
        self._record_started(wire, text)
        return h

    def _record_started(self, wire: dict[str, Any], text: str) -> None:
        """Append the new run (its handle as JSON: ``wire``, encoded ``text``) to the
        never-compacted record (see the module docstring)."""
        if self._record is not None:
            self._append({"handle": wire}, self._record, text=f'{{"handle": {text}}}')

    def status(self, handles: Sequence[Handle]) -> dict[str, RunStatus]:
        now = self.ctx.clock()
        out: dict[str, RunStatus] = {}
        for given in handles:
            h = self._runs.get(given.run_id) or self._adopt(given)
            if h is not None:
                out[h.run_id] = self._status(h, now)
        return out

    def _adopt(self, given: Handle) -> Handle | None:
        """Take over a handle another instance of this site issued (after a restart)."""
        if given.site != self.site.name or not _is_sim_handle(given):
            return None  # not ours: unknown right now
        h = Handle.from_json(json.loads(json.dumps(given.to_json())))  # a copy we own
        self._runs[h.run_id] = h
        self._journal_put(h)
        return h

    def cancel(self, handle: Handle) -> None:
        h = self._runs.get(handle.run_id) or self._adopt(handle)
        if h is None:
            return
        now = self.ctx.clock()
        if h.data.get("cancelledAt") is None and not self._timeline(h.data, now)[0].terminal:
            h.data["cancelledAt"] = now
            handle.data["cancelledAt"] = now  # so a persisted copy re-adopts as Cancelled
            self._journal_put(h)

    def logs(self, handle: Handle, tail: int = 50) -> str:
        h = self._runs.get(handle.run_id) or (
            handle if handle.site == self.site.name and _is_sim_handle(handle) else None)
        if h is None:
            return f"[simulated] run {handle.run_id} is unknown to sim site {self.site.name}"
        lines = self._status(h, self.ctx.clock()).output_tail.splitlines()
        return "\n".join(lines[-tail:] if tail > 0 else [])

    def release(self, handle: Handle) -> None:
        if self._runs.pop(handle.run_id, None) is not None:
            self._journal_del(handle.run_id)

    def health(self) -> tuple[SiteHealth, str]:
        return SiteHealth.Ready, ""

    def close(self) -> None:
        return None

    # -------------------------------------------------------- the model

    @staticmethod
    def _timeline(d: dict[str, Any], now: float) -> tuple[RunState, float]:
        """State and virtual elapsed seconds at wall time ``now``."""
        elapsed_v = max(0.0, now - d["submittedAt"]) * d["timeScale"]
        cancelled = d.get("cancelledAt")
        if cancelled is not None:
            c_v = max(0.0, cancelled - d["submittedAt"]) * d["timeScale"]
            if d["endV"] is None or c_v < d["endV"]:
                if elapsed_v >= c_v:
                    return RunState.Cancelled, c_v
        if d["endV"] is not None and elapsed_v >= d["endV"]:
            st = RunState.Succeeded if d["outcome"] == "succeeded" else RunState.Failed
            return st, d["endV"]
        if elapsed_v < d["queueWaitV"]:
            return RunState.Dispatched, elapsed_v
        return RunState.Running, elapsed_v

    def _status(self, h: Handle, now: float) -> RunStatus:
        d = h.data
        state, at_v = self._timeline(d, now)
        ts = d["timeScale"]
        t0 = d["submittedAt"]

        def wall(v: float) -> datetime:
            return datetime.fromtimestamp(t0 + v / ts, UTC)

        started = wall(d["queueWaitV"]) if at_v >= d["queueWaitV"] else None
        compute_v = max(0.0, at_v - d["queueWaitV"] - d["transferV"])
        if d["runtimeV"] is not None:
            compute_v = min(compute_v, d["runtimeV"])
        energy = compute_v * d["watts"]
        st = RunStatus(state=state, simulated=True, started_at=started, energy_j=energy,
                       bytes_in=d["bytesIn"] if started else 0)
        if state.terminal:
            st.finished_at = wall(at_v)
            st.runtime_s = compute_v  # virtual seconds of compute, comparable to predictions
        if state is RunState.Succeeded:
            st.exit_code = 0
            st.outputs = self._produce_outputs(h)
            st.bytes_out = sum(r.size if o["size"] is None else o["size"]
                               for o, r in zip(d["outputs"], st.outputs, strict=True))
        elif state is RunState.Failed:
            st.exit_code = 1
            st.reason = d["reason"]
        elif state is RunState.Cancelled:
            st.reason = "cancelled on request"
        st.output_tail = self._tail(h, state, at_v, energy, st)
        return st

    def _produce_outputs(self, h: Handle) -> list[ArtifactRecord]:
        d = h.data
        recs = []
        for o in d["outputs"]:
            body = {
                "simulated": True,
                "note": "produced by the Continuum digital twin; no real computation ran",
                "site": h.site, "node": h.node, "task": d["task"], "runId": h.run_id,
                "workflowId": d["workflowId"], "artifact": o["name"], "path": o["path"],
                "declaredSize": o["size"],
            }
            blob = json.dumps(body, sort_keys=True).encode()
            prev = self.ctx.artifacts.record(d["workflowId"], o["name"])
            if prev is not None and prev.simulated and prev.size == len(blob):
                recs.append(prev)  # already stored by us (or a previous instance)
            else:
                recs.append(self.ctx.artifacts.put_bytes(d["workflowId"], o["name"], blob,
                                                         simulated=True))
        return recs

    def _tail(self, h: Handle, state: RunState, at_v: float, energy: float,
              st: RunStatus) -> str:
        d = h.data
        moved = d["bytesIn"] + d["datasetBytes"]
        lines = [
            f"[simulated] node {h.site}/{h.node} (digital twin, time scale "
            f"{d['timeScale']:g} virtual s per wall s); task {d['task']} run {h.run_id}",
            f"[simulated] queue wait {format_duration(d['queueWaitV'])}, input transfer "
            f"{format_duration(d['transferV'])} ({format_bytes(moved)}B at "
            f"{d['bandwidth'] / 1e9:g} Gbit/s)",
        ]
        if d["runtimeV"] is None:
            lines.append(f"[simulated] service on {d['cpuEff']:g} cores × speed {d['speed']:g}; "
                         "runs until cancelled")
        else:
            lines.append(
                f"[simulated] virtual runtime {format_duration(d['runtimeV'])} "
                f"(work {d['work']:g} core-s on {d['cpuEff']:g} cores × speed {d['speed']:g})")
        lines.append(f"[simulated] state {state.value} at virtual "
                     f"{format_duration(at_v)}; energy {energy:.4g} J at "
                     f"{d['watts']:.4g} W attributed")
        if state is RunState.Succeeded:
            lines.append(f"[simulated] exit 0; {len(st.outputs)} simulated output(s), "
                         f"{format_bytes(st.bytes_out)}B declared")
        elif state is RunState.Failed:
            lines.append(f"[simulated] exit 1: {d['reason']}")
        elif state is RunState.Cancelled:
            lines.append("[simulated] cancelled on request")
        return "\n".join(lines)


def record_path(state_dir: Path, site: str) -> Path:
    """Where the twin of site ``site`` records every run it started under ``state_dir``."""
    return state_dir / f"sim-{site}.record.jsonl"


def read_record(state_dir: Path, site: str) -> list[Handle]:
    """Every run the twin of ``site`` started under ``state_dir`` (the control plane's
    state directory), oldest first; one entry per submission, so a run id listed twice was
    started twice. Empty when nothing was recorded. A torn last line (the control plane
    killed mid-write) is skipped.

    Raises:
        OSError: the record exists but cannot be read.
    """
    path = record_path(state_dir, site)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(Handle.from_json(json.loads(line)["handle"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def record_state(h: Handle, now: float) -> RunState:
    """The state of recorded run ``h`` at wall time ``now`` (epoch s), by the twin's own
    model: what its ``status`` answers, cancellations made after the record aside."""
    return SimAdapter._timeline(h.data, now)[0]


def _is_sim_handle(h: Handle) -> bool:
    d = h.data or {}
    need = ("submittedAt", "timeScale", "queueWaitV", "transferV", "runtimeV", "endV",
            "outcome", "cpu", "cpuEff", "memory", "gpu", "watts", "outputs")
    return bool(d.get("simulated")) and all(k in d for k in need)


def factory(site: SiteSpec, ctx: AdapterContext) -> SimAdapter:
    """Build a :class:`SimAdapter` (registered for :attr:`SiteKind.sim`)."""
    return SimAdapter(site, ctx)


register(SiteKind.sim, factory)

__all__ = ["SimAdapter", "SimConfig", "SimConfigError", "SimNodeGroup", "factory",
           "parse_config", "read_record", "record_path", "record_state", "DEFAULT_WORK_CORE_S"]
