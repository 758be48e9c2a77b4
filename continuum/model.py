"""The domain model: what every package of Continuum speaks.

Documents users write (``Workflow``) look like Kubernetes objects: ``apiVersion``,
``kind``, ``metadata``, ``spec``, camelCase field names. Every model rejects unknown
fields, so a typo is a 422 naming the field rather than a silently ignored setting.

Units are explicit in field names or docstrings: cores, bytes, seconds (s),
milliseconds (ms), bits per second (bit/s), watts (W), joules (J).

Why one module of this size: it is the shared vocabulary — every domain model the packages
exchange — kept in one place so that each wire name and unit is defined once.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

# re-exported: Tier lives in a module without pydantic, for the edge agent (its lean import)
from continuum.tier import Tier as Tier
from continuum.units import Bytes, Cores, Seconds

API_VERSION = "continuum/v1"


class Model(BaseModel):
    """Base: camelCase aliases on the wire, snake_case in Python, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        use_enum_values=False,
    )

    def wire(self) -> dict[str, Any]:
        """JSON-ready dict with camelCase keys (what the API returns)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"name {value!r} is not a DNS-1123 label: use 1-63 lower-case letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'train-model')"
        )
    return value


Name = Annotated[str, AfterValidator(_dns_label)]
"""A DNS-1123 label (Kubernetes object-name rules), e.g. ``preprocess``."""


# ---------------------------------------------------------------- enumerations


class SiteKind(StrEnum):
    """The backend that runs a site's work."""

    sim = "sim"
    devices = "devices"
    kubernetes = "kubernetes"
    kubeedge = "kubeedge"
    slurm = "slurm"


class SiteHealth(StrEnum):
    """A site's health as the control plane sees it."""

    Ready = "Ready"
    Degraded = "Degraded"
    Unreachable = "Unreachable"
    Draining = "Draining"


class RunState(StrEnum):
    """The life of one attempt of a task on one node.

    Pending → Placed → Dispatched → Running → Succeeded | Failed | Cancelled;
    a migration ends a run as Migrated and starts the next.
    """

    Pending = "Pending"
    """Created; waiting for a placement."""
    Placed = "Placed"
    """A node was chosen; not yet handed to the backend."""
    Dispatched = "Dispatched"
    """The backend accepted it (it may be queued there)."""
    Running = "Running"
    """The backend reports it running."""
    Succeeded = "Succeeded"
    """Finished with exit code 0 and its outputs kept."""
    Failed = "Failed"
    """Finished unsuccessfully, or the backend lost it."""
    Cancelled = "Cancelled"
    """Stopped on request."""
    Migrated = "Migrated"
    """Stopped here because the work moved to another run."""

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_RUN_STATES

    @property
    def active(self) -> bool:
        return self in (RunState.Placed, RunState.Dispatched, RunState.Running)


TERMINAL_RUN_STATES = frozenset(
    {RunState.Succeeded, RunState.Failed, RunState.Cancelled, RunState.Migrated}
)


class TaskState(StrEnum):
    """A task's state within its workflow."""

    Waiting = "Waiting"
    """Some dependency has not succeeded yet."""
    Ready = "Ready"
    """Every dependency succeeded; waiting for a run (or a retry's backoff)."""
    Running = "Running"
    """A run is placed, dispatched or running."""
    Succeeded = "Succeeded"
    Failed = "Failed"
    """Every allowed attempt failed, or a dependency failed."""
    Cancelled = "Cancelled"


class WorkflowState(StrEnum):
    """A workflow's state."""

    Pending = "Pending"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"
    Cancelling = "Cancelling"
    Cancelled = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (WorkflowState.Succeeded, WorkflowState.Failed, WorkflowState.Cancelled)


# ---------------------------------------------------------------- resources and power


class PowerProfile(Model):
    """A node's linear power model: ``idle_watts`` at 0 % and ``max_watts`` at 100 % CPU.

    The linear idle→max model is from Fan, Weber & Barroso, "Power provisioning for a
    warehouse-sized computer", ISCA 2007. ``gpu_watts`` is each GPU's board power
    (TDP) when busy. ``source`` cites where the figures come from.
    """

    idle_watts: float = Field(ge=0)
    max_watts: float = Field(ge=0)
    gpu_watts: float = Field(default=0.0, ge=0)
    source: str = ""

    @model_validator(mode="after")
    def _max_above_idle(self) -> PowerProfile:
        if self.max_watts < self.idle_watts:
            raise ValueError(
                f"maxWatts ({self.max_watts}) must be >= idleWatts ({self.idle_watts})"
            )
        return self


class Resources(Model):
    """Compute resources: ``cpu`` in cores, ``memory`` in bytes, ``gpu`` as a count."""

    cpu: Cores = 1.0
    memory: Bytes = 256 * 2**20
    gpu: int = Field(default=0, ge=0)


class Taint(Model):
    """A Kubernetes-style taint: work without a matching toleration is kept off."""

    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class Toleration(Model):
    """Tolerates taints with ``key`` (and ``value`` when operator is Equal)."""

    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Location(Model):
    """A named place. ``lat``/``lon`` in degrees let RTTs be modelled from distance."""

    name: str
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    zone: str | None = None


# ---------------------------------------------------------------- workflows


class Script(Model):
    """Inline source run by an interpreter, as in Argo Workflows' script template."""

    interpreter: list[str] = Field(default_factory=lambda: ["python3"], min_length=1)
    source: str = Field(min_length=1)


class InputRef(Model):
    """An artifact this task reads, placed at ``path`` in its working directory."""

    name: str = Field(description="artifact name, as declared in another task's outputs")
    path: str | None = Field(default=None, description="relative path; defaults to the name")


class OutputSpec(Model):
    """A file the task writes; kept by the control plane under ``name`` when the run succeeds."""

    name: str
    path: str = Field(description="path of the file, relative to the task's working directory")
    size: Bytes | None = Field(
        default=None, description="expected size (bytes); placement uses it before the file exists"
    )


class Dataset(Model):
    """A data set read in place by tasks (not moved by Continuum), for data locality.

    ``size`` in bytes; ``locations`` names the sites, devices or locations holding a
    replica. A task listing the dataset pays ``size / bandwidth + RTT`` from the
    nearest replica.
    """

    name: str
    size: Bytes
    locations: list[str] = Field(min_length=1)


class Constraints(Model):
    """Hard rules on where a task may run. Empty means anywhere."""

    tiers: list[Tier] = Field(default_factory=list)
    arch: list[str] = Field(default_factory=list, description="e.g. x86_64, aarch64")
    labels: dict[str, str] = Field(default_factory=dict, description="node labels that must match")
    sites: list[str] = Field(default_factory=list)
    tolerations: list[Toleration] = Field(default_factory=list)


class Slo(Model):
    """A latency objective: RTT from the node to ``target`` (a location or device) ≤ ``latency_ms``."""

    target: str
    latency_ms: float = Field(gt=0)


class ServicePort(Model):
    """A port a service task listens on; Kubernetes sites publish it with a Service."""

    port: int = Field(ge=1, le=65535)
    name: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _module_name(value: str) -> str:
    if not _MODULE.match(value):
        raise ValueError(
            f"{value!r} is not a Python module name: give the name you import (e.g. "
            "'sklearn' for scikit-learn, 'cv2' for opencv-python), not the package to install"
        )
    return value


ModuleName = Annotated[str, AfterValidator(_module_name)]
"""A Python import name, e.g. ``sklearn`` or ``sklearn.svm`` (its top level is checked)."""


class Requirements(Model):
    """Software a task needs on its node; placement keeps it off nodes that lack it.

    ``python``: modules the task imports, by import name (``sklearn``, not
    ``scikit-learn``). A node that declares its Python modules (a device agent reports
    what its ``python3`` can import) must offer the top level of each; a node that
    declares nothing (simulated, Kubernetes, Slurm) is assumed to provide them; a task
    with an ``image`` brings its own software and is not checked.
    """

    python: list[ModuleName] = Field(default_factory=list)


class Task(Model):
    """One step of a workflow: a ``job`` runs to completion, a ``service`` keeps running."""

    name: Name
    kind: Literal["job", "service"] = "job"
    command: list[str] | None = Field(default=None, min_length=1)
    script: Script | None = None
    image: str | None = Field(default=None, description="container image; needs a container runtime")
    env: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    work: Seconds | None = Field(
        default=None,
        description="expected work in core-seconds on a reference core (speed 1.0); "
        "runtime on a node ≈ work / (speed × cpu)",
    )
    timeout: Seconds | None = None
    retries: int = Field(default=2, ge=0, le=20, description="attempts after the first one")
    depends_on: list[str] = Field(default_factory=list)
    inputs: list[InputRef] = Field(default_factory=list)
    outputs: list[OutputSpec] = Field(default_factory=list)
    datasets: list[str] = Field(default_factory=list, description="names of spec.datasets read in place")
    constraints: Constraints = Field(default_factory=Constraints)
    requires: Requirements = Field(default_factory=Requirements)
    slo: Slo | None = None
    ports: list[ServicePort] = Field(default_factory=list, description="ports a service listens on")

    @model_validator(mode="after")
    def _one_entrypoint(self) -> Task:
        if (self.command is None) == (self.script is None):
            raise ValueError("give exactly one of 'command' (argv list) or 'script' (interpreter + source)")
        if self.ports and self.kind != "service":
            raise ValueError("ports are for service tasks (kind: service); remove them from this job")
        return self


class Objective(Model):
    """Weights of the placement score terms (relative; 0 switches a term off)."""

    time: float = Field(default=1.0, ge=0, description="predicted completion time")
    latency: float = Field(default=1.0, ge=0, description="RTT to the task's SLO target")
    energy: float = Field(default=1.0, ge=0, description="predicted energy (J)")
    data: float = Field(default=1.0, ge=0, description="input bytes moved over the WAN")


class WorkflowSpec(Model):
    tasks: list[Task] = Field(min_length=1)
    datasets: list[Dataset] = Field(default_factory=list)
    objective: Objective = Field(default_factory=Objective)


class Metadata(Model):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)


class WorkflowMetadata(Metadata):
    tenant: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    """The tenant (project) the workflow belongs to; default: the submitter's only tenant."""


class WorkflowDocument(Model):
    """What users submit: ``apiVersion: continuum/v1``, ``kind: Workflow``."""

    api_version: Literal["continuum/v1"] = Field(alias="apiVersion")
    kind: Literal["Workflow"]
    metadata: WorkflowMetadata
    spec: WorkflowSpec


# ---------------------------------------------------------------- sites and nodes


class SiteMonitoring(Model):
    """How the collector reads a site's Prometheus (``SiteSpec.prometheus_url``).

    ``queries`` overrides the PromQL of catalog metrics by name (``""`` switches one
    off; ``{window}`` is replaced by ``window``); ``exporters`` limits the catalogs
    queried (default: all of them). A series is joined to a node by its join label
    (``instance`` for node-exporter, ``node`` for kube-state-metrics, ...): the value
    is looked up in ``instances`` (node name → label value), then the node's label
    ``continuum.io/prometheus-instance``, then the node name itself (with or without
    ``:port``). ``probes`` names the location of each blackbox probe target (its
    ``instance``), so probe RTTs from the site's location enter the topology.
    """

    exporters: list[str] | None = None
    queries: dict[str, str] = Field(default_factory=dict)
    instances: dict[str, str] = Field(default_factory=dict)
    probes: dict[str, str] = Field(default_factory=dict)
    stale_after: Seconds = Field(default=30.0, gt=0, description="a value older than this "
                                 "(s) is stale: used with a penalty, the site Degraded")
    timeout: Seconds = Field(default=2.0, gt=0, description="per-query HTTP timeout (s)")
    window: str = Field(default="1m", pattern=r"^[0-9]+(ms|s|m|h)$",
                        description="range of rate() in the catalog queries, e.g. 1m")


class SiteSpec(Model):
    """A federation member as registered. ``config`` is the kind's own settings."""

    name: Name
    kind: SiteKind
    tier: Tier | None = Field(default=None, description="default tier of its nodes")
    location: str | None = None
    prometheus_url: str | None = None
    monitoring: SiteMonitoring = Field(default_factory=SiteMonitoring)
    carbon_intensity: float | None = Field(default=None, ge=0, description="gCO2e per kWh")
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prometheus_url")
    @classmethod
    def _prometheus_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as e:
            raise ValueError(f"prometheusUrl {v!r} is not a URL: {e}") from e
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"prometheusUrl {v!r} must be http(s)://host:port of the "
                             "site's Prometheus, e.g. http://prometheus.example:9090")
        return v


class NodeCondition(Model):
    """A backend's condition of a node (Kubernetes ``NodeCondition``): ``status`` True/False/Unknown."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    since: datetime | None = None


class MetricSample(Model):
    """One live value: ``value`` in ``unit`` (ratio 0..1, W, bytes, cores, ms, count),
    sampled at ``at``; ``source`` names where it came from (``prometheus:node-exporter``,
    ``telemetry``, ``twin``)."""

    value: float
    unit: str
    at: datetime
    source: str
    stale: bool = False


class Node(Model):
    """The unit placement chooses: a Kubernetes node, a Slurm partition, a device, ...

    ``id`` is ``{site}/{name}``. ``capacity`` is the whole node; ``allocatable`` what
    work may use; ``free`` what is left after running work. ``speed`` is per-core speed
    relative to the reference core (1.0). ``utilisation`` is CPU busy fraction 0..1
    observed at ``observed_at``; ``metrics`` holds every live value (monitoring's
    catalog names) with its own time, and ``metrics_stale`` says the utilisation is
    older than the site's bound (placement then applies a penalty).
    """

    id: str
    name: str
    site: str
    site_kind: SiteKind
    tier: Tier
    arch: str = "x86_64"
    capacity: Resources
    allocatable: Resources
    free: Resources | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    speed: float = Field(default=1.0, gt=0)
    power: PowerProfile
    location: str
    runtimes: list[str] = Field(default_factory=lambda: ["process"])
    python_modules: list[str] | None = Field(
        default=None, description="top-level Python modules its python3 can import (a "
        "device agent reports them); None = not declared, assumed to provide any")
    ready: bool = True
    draining: bool = Field(
        default=False, description="its site is draining: no new work is placed here")
    conditions: list[NodeCondition] = Field(default_factory=list)
    simulated: bool = False
    utilisation: float | None = Field(default=None, ge=0, le=1)
    power_watts: float | None = None
    observed_at: datetime | None = None
    memory_utilisation: float | None = Field(default=None, ge=0, le=1)
    metrics: dict[str, MetricSample] = Field(
        default_factory=dict, description="live metrics by catalog name, each with its time")
    metrics_stale: bool = Field(
        default=False, description="the utilisation is older than the site's staleAfter")
    queue_wait_s: float = Field(default=0.0, ge=0, description="expected wait before start (s)")


# ---------------------------------------------------------------- topology


class Link(Model):
    """Network between two locations: ``rtt_ms`` round-trip, ``bandwidth_bps`` in bit/s."""

    a: str
    b: str
    rtt_ms: float = Field(ge=0)
    bandwidth_bps: float = Field(gt=0)
    source: Literal["measured", "configured", "modelled"] = "configured"


class Topology(Model):
    """Locations and the links between them, as placement sees them."""

    locations: list[Location] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)


# ---------------------------------------------------------------- placement and runs


class Prediction(Model):
    """What placement expects of a run on its chosen node.

    completion_s = queue_wait_s + transfer_s + runtime_s.
    """

    runtime_s: float
    queue_wait_s: float = 0.0
    transfer_s: float = 0.0
    completion_s: float
    latency_ms: float | None = None
    energy_j: float
    bytes_moved: int = 0


class PlacementDecision(Model):
    """The decision for a run, explainable: per-plugin scores (0..100), weights, predictions."""

    node: str
    site: str
    tier: Tier
    scores: dict[str, float]
    weights: dict[str, float]
    total: float
    predicted: Prediction
    reasons: list[str] = Field(default_factory=list)
    filtered: dict[str, int] = Field(
        default_factory=dict, description="nodes rejected, by filter reason"
    )
    alternatives: list[dict[str, Any]] = Field(default_factory=list)
    model_version: str = "analytic-v1"
    feasible_nodes: int = 0
