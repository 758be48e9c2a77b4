"""The contract every backend adapter keeps (the registry of kinds is :mod:`adapters.registry`,
the optional capabilities :mod:`adapters.capabilities`).

The contract (after Ray autoscaler v2's node provider and Parsl's providers):

* **asynchronous** — ``submit`` hands work over and returns a :class:`Handle` at once;
  progress is learnt later through ``status``;
* **idempotent by request id** — ``submit`` called twice with the same ``request_id``
  (the run id) starts the work once and returns the same handle, so a control plane
  that crashed between "placed" and "dispatched" may simply submit again;
* **batched** — ``status`` takes every handle of the site and makes one backend call
  (or none: a push-fed cache), never one per run;
* **re-adoptable** — a :class:`Handle` is plain data the control plane persists; a new
  process given the same handles must be able to answer ``status`` for them;
* **failures are typed** — :mod:`continuum.errors` (transient with ``retry_after``,
  permanent, unsupported, auth), raised ``from`` the backend's own exception.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from continuum.model import Node, RunState, SiteHealth, SiteSpec, Task


@dataclass(frozen=True)
class ArtifactIn:
    """An input the run must find at ``path`` (relative to its working directory).

    ``url`` is where the control plane serves it (HTTP GET); ``size`` in bytes.
    """

    name: str
    path: str
    url: str
    sha256: str
    size: int
    simulated: bool = False


@dataclass(frozen=True)
class ArtifactOut:
    """An output the run must hand back: the file at ``path``, uploaded by HTTP PUT to ``url``."""

    name: str
    path: str
    url: str
    size_hint: int | None = None


@dataclass
class TaskRun:
    """Everything a backend needs to start one run of one task."""

    run_id: str
    workflow_id: str
    workflow_name: str
    task: Task
    attempt: int = 1
    inputs: list[ArtifactIn] = field(default_factory=list)
    outputs: list[ArtifactOut] = field(default_factory=list)
    dataset_bytes: int = 0
    """Bytes of ``spec.datasets`` the task reads in place (for the twin's transfer model)."""
    tenant: str = "default"
    """The tenant (project) the run belongs to, through its workflow; a Slurm site maps
    it to a Slurm user and account (``userMap``)."""


@dataclass
class Handle:
    """The backend's reference to a run; persisted by the control plane as JSON.

    ``backend_id`` is the backend's own id (Slurm job id, Kubernetes object name,
    device run id); ``data`` holds whatever else the adapter needs to re-adopt it.
    """

    site: str
    run_id: str
    backend_id: str
    node: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"site": self.site, "runId": self.run_id, "backendId": self.backend_id,
                "node": self.node, "data": self.data}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Handle:
        return cls(site=d["site"], run_id=d["runId"], backend_id=d["backendId"],
                   node=d["node"], data=dict(d.get("data") or {}))


@dataclass(frozen=True)
class ArtifactRecord:
    """A kept artifact: content digest (sha256 hex), size in bytes, and whether simulated."""

    name: str
    sha256: str
    size: int
    simulated: bool = False


@dataclass
class RunStatus:
    """What a backend says about one run now.

    Times are timezone-aware UTC datetimes; ``bytes_in``/``bytes_out`` count artifact
    bytes the run fetched and uploaded; ``energy_j`` is the backend's measured or
    modelled energy (J), ``None`` where unknown.
    """

    state: RunState
    reason: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output_tail: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    outputs: list[ArtifactRecord] = field(default_factory=list)
    energy_j: float | None = None
    runtime_s: float | None = None
    """The backend's own measure of the run's runtime (s), where it differs from the
    wall clock between ``started_at`` and ``finished_at`` (the twin reports virtual s)."""
    simulated: bool = False
    cpu_time_s: float | None = None
    """User + system CPU time (s) the backend accounted to the run (Slurm: slurmdbd)."""
    max_rss_bytes: int | None = None
    """The run's peak resident memory (bytes) as the backend accounted it."""
    accounting: dict[str, Any] | None = None
    """The backend's accounting record of the finished run, as the run view shows it
    (Slurm: :meth:`adapters.slurm.accounting.JobAccounting.to_json`)."""


class ArtifactStore(Protocol):
    """Where the control plane keeps artifacts; adapters that run work in-process use it."""

    def put_bytes(self, workflow_id: str, name: str, data: bytes, *,
                  simulated: bool = False) -> ArtifactRecord: ...

    def record(self, workflow_id: str, name: str) -> ArtifactRecord | None: ...


@dataclass(frozen=True)
class RelayedMessage:
    """One broker message a replica consumed, as the message relay carries it: the raw
    ``topic`` and ``payload`` (bytes; empty: a cleared retained message), so that every
    replica handles it as if the broker had delivered it.

    ``rank`` orders the messages of one topic (the relay keeps only the highest: a run
    update's ``seq``, a telemetry's receive time); ``received_at`` is when the consuming
    replica received it (s since the epoch); ``origin`` names the consuming adapter;
    ``version`` (set by the relay on read) is when the relay stored it (s since the epoch,
    the relay's clock) and changes whenever the topic's message is replaced.
    """

    topic: str
    payload: bytes
    rank: float
    received_at: float
    origin: str = ""
    version: float = 0.0


class MessageRelay(Protocol):
    """Where replicas share the broker messages each consumed alone (MQTT 5 shared
    subscriptions): the latest message per (site, topic). Implemented by the control plane
    over its database (control_plane/relay.py)."""

    def put(self, site: str, messages: Sequence[RelayedMessage]) -> None:
        """Store each message unless the topic holds one of higher ``rank``.

        Raises:
            Exception: the store's own (e.g. the database is unreachable); nothing stored.
        """
        ...

    def since(self, site: str, after: float) -> tuple[list[RelayedMessage], float]:
        """The messages of ``site`` stored at or after ``after`` (s since the epoch, the
        relay's clock), oldest first, with ``origin`` and ``version`` set; and the relay's
        clock when the read began (the next read's ``after``, less a margin for writes
        that commit late).

        Raises:
            Exception: the store's own (e.g. the database is unreachable).
        """
        ...


@dataclass
class AdapterContext:
    """What the control plane gives an adapter when it creates one."""

    artifacts: ArtifactStore
    state_dir: Path
    wake: Callable[[], None] = lambda: None
    """Ask the reconciler for a cycle now (e.g. a device reported a state change)."""
    clock: Callable[[], float] = time.time
    """Wall-clock seconds since the epoch; tests may substitute it."""
    device_enrolled: Callable[[str, str], bool] | None = None
    """``(site, device_id) -> bool``: whether the device is enrolled in that site and not
    revoked (the control plane's enrolment registry); None where there is no registry."""
    dropped: Callable[[str, str], None] = lambda site, reason: None
    """Count one device message dropped by ``site``'s adapter for ``reason`` (a short
    fixed word, a metrics label)."""
    sign: Callable[[bytes], bytes] | None = None
    """Sign bytes with the control plane's command key (raw 64-byte Ed25519 signature);
    the devices adapter signs every command with it. ``None``: commands go unsigned and
    only agents started with ``--insecure-accept-unsigned`` obey them."""
    relay: MessageRelay | None = None
    """The replicas' message relay (the devices adapter shares what its shared
    subscriptions consumed through it); ``None``: this process is alone."""


@runtime_checkable
class Adapter(Protocol):
    """One backend. See the module docstring for the contract."""

    site: SiteSpec

    def inventory(self) -> list[Node]:
        """The nodes placement may choose, with ``free`` resources where known.

        Raises:
            TransientError | AuthError: the backend could not be asked.
        """
        ...

    def submit(self, run: TaskRun, node: Node, request_id: str) -> Handle:
        """Start ``run`` on ``node``; idempotent by ``request_id`` (the run id).

        Raises:
            TransientError: try again later (the work may or may not have started;
                submitting again with the same request id is safe).
            PermanentError | UnsupportedError: this run cannot go here.
        """
        ...

    def status(self, handles: Sequence[Handle]) -> dict[str, RunStatus]:
        """Current status of each handle, keyed by run id, in one backend call.

        A run missing from the answer is unknown right now (e.g. its device is offline);
        the caller keeps its last known state.
        """
        ...

    def cancel(self, handle: Handle) -> None:
        """Stop the run (kill its process tree / delete its job). Idempotent."""
        ...

    def logs(self, handle: Handle, tail: int = 50) -> str:
        """The last ``tail`` lines of the run's output, or a sentence saying why not."""
        ...

    def release(self, handle: Handle) -> None:
        """The control plane has recorded the run's final state; the backend may forget it."""
        ...

    def health(self) -> tuple[SiteHealth, str]:
        """The site's health and a reason (empty when Ready)."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
