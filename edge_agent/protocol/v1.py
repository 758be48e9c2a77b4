"""Payload models and topics of protocol version 1 (see the package docstring)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from continuum.base import PowerProfile, Tier

PROTOCOL_VERSION = 1
TOPIC_PREFIX = "continuum/v1/devices"
DEVICE_PUBLISHES = ("hello", "status", "telemetry", "runs/+", "rejected")
"""The topic leaves (under ``{TOPIC_PREFIX}/{device_id}/``) a device publishes on; the
broker ACLs (Mosquitto's pattern ACL, the demo broker's) allow a device exactly these."""
DEVICE_SUBSCRIBES = ("commands",)
"""The topic leaves a device reads: its own commands only."""
MAX_PAYLOAD_BYTES = 256 * 1024
"""Largest payload accepted (bytes): output tails are capped well below it."""
OUTPUT_TAIL_BYTES = 8 * 1024
"""Largest output tail an agent sends in one update (bytes)."""

RunPhase = Literal["Accepted", "Running", "Succeeded", "Failed", "Cancelled"]


def _now() -> datetime:
    return datetime.now(UTC)


def topic(device_id: str, leaf: str) -> str:
    """``continuum/v1/devices/{device_id}/{leaf}``; ``leaf`` e.g. ``hello`` or ``runs/r-1``."""
    return f"{TOPIC_PREFIX}/{device_id}/{leaf}"


def device_id_from_topic(t: str) -> str:
    """The ``{device_id}`` segment of a protocol topic.

    Raises:
        ProtocolError: the topic is not under :data:`TOPIC_PREFIX`.
    """
    prefix = TOPIC_PREFIX + "/"
    if not t.startswith(prefix) or "/" not in t[len(prefix):]:
        raise ProtocolError(f"topic {t!r} is not under {prefix}{{device_id}}/")
    return t[len(prefix):].split("/", 1)[0]


class ProtocolError(ValueError):
    """A payload or topic that does not follow the protocol; the message says what."""


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1


class Hello(Payload):
    """A device's capabilities. ``memory`` in bytes; ``speed`` per-core, reference 1.0."""

    device_id: str
    hostname: str
    arch: str
    cpus: float
    memory: int
    gpus: int = 0
    tier: Tier = Tier.device
    labels: dict[str, str] = Field(default_factory=dict)
    location: str
    power: PowerProfile
    speed: float = 1.0
    runtimes: list[str] = Field(default_factory=lambda: ["process"])
    python_modules: list[str] | None = None
    """Top-level modules the device's ``python3`` can import (what runs see); ``None`` =
    not declared. Placement keeps tasks whose ``requires.python`` it lacks elsewhere."""
    profile: str | None = None
    emulated: bool = False
    """True when cpus/memory/power are a declared profile, not this host's own figures."""
    agent_version: str
    started_at: datetime = Field(default_factory=_now)
    known_runs: list[str] = Field(default_factory=list)
    """Run ids the agent still holds (running, or finished and not yet forgotten)."""
    telemetry_interval: float | None = Field(default=None, gt=0)
    """Seconds between this agent's telemetry messages, its heartbeat (``None``: not
    announced). The control plane declares a device that says it is online but has been
    silent longer than twice this ``lost`` (its node not ready). A control plane older
    than this field rejects a Hello carrying it: upgrade the control plane first."""


class DeviceStatus(Payload):
    device_id: str
    state: Literal["online", "offline"]
    at: datetime = Field(default_factory=_now)
    running: list[str] = Field(default_factory=list)


class Telemetry(Payload):
    """Measured at ``at``: CPU busy percent, memory bytes, 1-min load, power (W).

    ``power_source`` is ``model`` when watts come from the linear idle→max model.
    """

    device_id: str
    at: datetime = Field(default_factory=_now)
    cpu_percent: float
    memory_used: int
    memory_total: int
    load1: float
    power_watts: float
    power_source: Literal["model", "rapl", "ina219"] = "model"
    temperature_c: float | None = None
    running: int = 0
    rtt_ms: float | None = None
    """Round trip to the broker (ms), measured by the agent (TCP connect time)."""
    peer_rtt_ms: dict[str, float] = Field(default_factory=dict)
    """Location name → measured round trip (ms) to that peer (``--rtt-peer``)."""


class OutputDigest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    sha256: str
    size: int


class RunUpdate(Payload):
    """One state change of one run; ``seq`` increases by one per update of that run."""

    device_id: str
    run_id: str
    seq: int
    state: RunPhase
    at: datetime = Field(default_factory=_now)
    exit_code: int | None = None
    reason: str = ""
    output_tail: str = Field(default="", max_length=OUTPUT_TAIL_BYTES)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    outputs: list[OutputDigest] = Field(default_factory=list)


class ArtifactGet(BaseModel):
    """Fetch ``url`` to ``path`` (relative); verify ``sha256``; ``size`` in bytes."""

    model_config = ConfigDict(extra="forbid")
    name: str
    path: str
    url: str
    sha256: str
    size: int


class ArtifactPut(BaseModel):
    """After exit 0, upload the file at ``path`` (relative) by HTTP PUT to ``url``."""

    model_config = ConfigDict(extra="forbid")
    name: str
    path: str
    url: str


class RunSpec(BaseModel):
    """What to run: ``argv`` (or ``script`` written to a file and run by ``interpreter``)."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    workflow_id: str
    task: str
    argv: list[str] | None = None
    interpreter: list[str] | None = None
    script: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = None
    cpu: float = 1.0
    memory: int = 256 * 2**20
    inputs: list[ArtifactGet] = Field(default_factory=list)
    outputs: list[ArtifactPut] = Field(default_factory=list)


class SignedCommand(Payload):
    """Fields every command carries (see :mod:`edge_agent.protocol.signing`).

    ``device_id`` is the addressee; ``issued_at``/``expires_at`` bound when the command
    may be obeyed; ``nonce`` (random, 32 hex digits) is refused a second time;
    ``signature`` is base64 Ed25519 over the canonical JSON of the rest. They are
    optional in the model so that an unsigned command is parsed and refused *as
    unsigned* (and reported) rather than as malformed.
    """

    device_id: str | None = None
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    nonce: str | None = Field(default=None, max_length=128)
    signature: str | None = None


class RunCommand(SignedCommand):
    id: str
    type: Literal["run"] = "run"
    spec: RunSpec


class CancelCommand(SignedCommand):
    id: str
    type: Literal["cancel"] = "cancel"
    run_id: str


class ForgetCommand(SignedCommand):
    """The control plane recorded the run's final state; the agent may drop it."""

    id: str
    type: Literal["forget"] = "forget"
    run_id: str


class CommandRejected(Payload):
    """The agent refused a command (topic ``rejected``, device → CP, QoS 1).

    ``reason`` is one word (:class:`edge_agent.protocol.signing.CommandRefused`);
    ``detail`` says more; ``command_id``/``command_type``/``run_id`` are what the refused
    payload claimed (unverified when the reason is ``unsigned`` or ``bad-signature``).
    """

    device_id: str
    at: datetime = Field(default_factory=_now)
    reason: str
    detail: str = ""
    command_id: str | None = None
    command_type: str | None = None
    run_id: str | None = None


Command = Annotated[RunCommand | CancelCommand | ForgetCommand, Field(discriminator="type")]
_COMMAND: TypeAdapter[RunCommand | CancelCommand | ForgetCommand] = TypeAdapter(Command)

M = TypeVar("M", bound=BaseModel)


def encode(payload: BaseModel) -> bytes:
    """Serialise a payload model to UTF-8 JSON bytes."""
    return payload.model_dump_json().encode()


@overload
def decode(model: type[M], data: bytes | bytearray) -> M: ...
@overload
def decode(model: object, data: bytes | bytearray) -> Any: ...
def decode(model: type[M] | object, data: bytes | bytearray) -> Any:
    """Parse ``data`` as ``model`` (a payload class, or :data:`Command`).

    Raises:
        ProtocolError: larger than :data:`MAX_PAYLOAD_BYTES`, not UTF-8 JSON, another
            protocol version, or not of the model (the message names the field).
    """
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    try:  # fast path: pydantic parses and validates the JSON in one pass (a valid payload);
        # the model's validator itself (what model_validate_json calls), once per message
        fast: BaseModel = (_COMMAND.validate_json(data) if model is Command
                           else model.__pydantic_validator__.validate_json(data))  # type: ignore[union-attr]
        if "v" in fast.__pydantic_fields_set__:  # a payload without "v" is refused below
            return fast
    except ValidationError:
        pass  # not valid: the checks below say why (or accept what json.loads reads, e.g. UTF-16)
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"payload is not UTF-8 JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ProtocolError(f"payload must be a JSON object, got {type(obj).__name__}")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {obj.get('v')!r} is not supported "
                            f"(this side speaks v{PROTOCOL_VERSION})")
    try:
        if model is Command:
            return _COMMAND.validate_python(obj)
        return model.model_validate(obj)  # type: ignore[union-attr]
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        name = "Command" if model is Command else getattr(model, "__name__", "payload")
        raise ProtocolError(f"invalid {name}: {where or '(root)'}: {first['msg']}") from e
