"""Payload models and topics of protocol version 1 (see the package docstring).

The models are `msgspec <https://jcristharif.com/msgspec/>`_ Structs: they validate from
their annotations as pydantic models do, but cost the agent about 1 MB of resident
memory where pydantic and its schemas cost 12.6 MB (``bench/agent_rss.sh``, issue 16's
lean agent). The control plane decodes and builds the same messages with them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar, overload

import msgspec
from msgspec import Meta, Struct, field

from continuum.tier import Tier

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
NonNegative = Annotated[float, Meta(ge=0)]


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


class _Strict(Struct, kw_only=True, forbid_unknown_fields=True):
    """Keyword-only fields (each subclass says ``kw_only`` again: msgspec applies it to the
    fields a class defines); a payload with a field the model lacks is refused."""


class Payload(_Strict, kw_only=True):
    v: Literal[1] = 1


class DevicePower(_Strict, kw_only=True):
    """A device's linear power model, as its Hello carries it: ``idle_watts`` at 0 % and
    ``max_watts`` at 100 % CPU, ``gpu_watts`` per busy GPU, ``source`` cites the figures
    (the wire form of :class:`continuum.model.PowerProfile`; Fan, Weber & Barroso, ISCA 2007).

    Raises:
        ValueError: ``max_watts`` below ``idle_watts`` (a ``msgspec.ValidationError``
            when decoded).
    """

    idle_watts: NonNegative
    max_watts: NonNegative
    gpu_watts: NonNegative = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        if self.max_watts < self.idle_watts:
            raise ValueError(f"max_watts ({self.max_watts}) must be >= idle_watts "
                             f"({self.idle_watts})")


class Hello(Payload, kw_only=True):
    """A device's capabilities. ``memory`` in bytes; ``speed`` per-core, reference 1.0."""

    device_id: str
    hostname: str
    arch: str
    cpus: float
    memory: int
    gpus: int = 0
    tier: Tier = Tier.device
    labels: dict[str, str] = field(default_factory=dict)
    location: str
    power: DevicePower
    speed: float = 1.0
    runtimes: list[str] = field(default_factory=lambda: ["process"])
    python_modules: list[str] | None = None
    """Top-level modules the device's ``python3`` can import (what runs see); ``None`` =
    not declared. Placement keeps tasks whose ``requires.python`` it lacks elsewhere."""
    profile: str | None = None
    emulated: bool = False
    """True when cpus/memory/power are a declared profile, not this host's own figures."""
    agent_version: str
    started_at: datetime = field(default_factory=_now)
    known_runs: list[str] = field(default_factory=list)
    """Run ids the agent still holds (running, or finished and not yet forgotten)."""
    telemetry_interval: Annotated[float, Meta(gt=0)] | None = None
    """Seconds between this agent's telemetry messages, its heartbeat (``None``: not
    announced). The control plane declares a device that says it is online but has been
    silent longer than twice this ``lost`` (its node not ready). A control plane older
    than this field rejects a Hello carrying it: upgrade the control plane first."""


class DeviceStatus(Payload, kw_only=True):
    device_id: str
    state: Literal["online", "offline"]
    at: datetime = field(default_factory=_now)
    running: list[str] = field(default_factory=list)


class Telemetry(Payload, kw_only=True):
    """Measured at ``at``: CPU busy percent, memory bytes, 1-min load, power (W).

    ``power_source`` is ``model`` when watts come from the linear idle→max model.
    """

    device_id: str
    at: datetime = field(default_factory=_now)
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
    peer_rtt_ms: dict[str, float] = field(default_factory=dict)
    """Location name → measured round trip (ms) to that peer (``--rtt-peer``)."""


class OutputDigest(_Strict, kw_only=True):
    name: str
    sha256: str
    size: int


class RunUpdate(Payload, kw_only=True):
    """One state change of one run; ``seq`` increases by one per update of that run."""

    device_id: str
    run_id: str
    seq: int
    state: RunPhase
    at: datetime = field(default_factory=_now)
    exit_code: int | None = None
    reason: str = ""
    output_tail: Annotated[str, Meta(max_length=OUTPUT_TAIL_BYTES)] = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    outputs: list[OutputDigest] = field(default_factory=list)


class ArtifactGet(_Strict, kw_only=True):
    """Fetch ``url`` to ``path`` (relative); verify ``sha256``; ``size`` in bytes."""

    name: str
    path: str
    url: str
    sha256: str
    size: int


class ArtifactPut(_Strict, kw_only=True):
    """After exit 0, upload the file at ``path`` (relative) by HTTP PUT to ``url``."""

    name: str
    path: str
    url: str


class RunSpec(_Strict, kw_only=True):
    """What to run: ``argv`` (or ``script`` written to a file and run by ``interpreter``)."""

    run_id: str
    workflow_id: str
    task: str
    argv: list[str] | None = None
    interpreter: list[str] | None = None
    script: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    cpu: float = 1.0
    memory: int = 256 * 2**20
    inputs: list[ArtifactGet] = field(default_factory=list)
    outputs: list[ArtifactPut] = field(default_factory=list)


class SignedCommand(Payload, tag_field="type", kw_only=True):
    """Fields every command carries (see :mod:`edge_agent.protocol.signing`).

    ``device_id`` is the addressee; ``issued_at``/``expires_at`` bound when the command
    may be obeyed; ``nonce`` (random, 32 hex digits) is refused a second time;
    ``signature`` is base64 Ed25519 over the canonical JSON of the rest. They are
    optional in the model so that an unsigned command is parsed and refused *as
    unsigned* (and reported) rather than as malformed. On the wire ``type`` names the
    command (``run``, ``cancel``, ``forget``); in Python it is the class's :attr:`type`.
    """

    type: ClassVar[str]
    device_id: str | None = None
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    nonce: Annotated[str, Meta(max_length=128)] | None = None
    signature: str | None = None


class RunCommand(SignedCommand, tag="run", kw_only=True):
    type: ClassVar[str] = "run"
    id: str
    spec: RunSpec


class CancelCommand(SignedCommand, tag="cancel", kw_only=True):
    type: ClassVar[str] = "cancel"
    id: str
    run_id: str


class ForgetCommand(SignedCommand, tag="forget", kw_only=True):
    """The control plane recorded the run's final state; the agent may drop it."""

    type: ClassVar[str] = "forget"
    id: str
    run_id: str


class CommandRejected(Payload, kw_only=True):
    """The agent refused a command (topic ``rejected``, device → CP, QoS 1).

    ``reason`` is one word (:class:`edge_agent.protocol.signing.CommandRefused`);
    ``detail`` says more; ``command_id``/``command_type``/``run_id`` are what the refused
    payload claimed (unverified when the reason is ``unsigned`` or ``bad-signature``).
    """

    device_id: str
    at: datetime = field(default_factory=_now)
    reason: str
    detail: str = ""
    command_id: str | None = None
    command_type: str | None = None
    run_id: str | None = None


Command = RunCommand | CancelCommand | ForgetCommand
"""A command, told apart by its ``type`` member (a tagged union)."""

M = TypeVar("M", bound=Struct)


class _Head(Struct):
    """What :func:`decode` reads first: the version, any other member skipped."""

    v: Any = None


_HEAD = msgspec.json.Decoder(_Head)
_ENCODER = msgspec.json.Encoder()
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def encode(payload: Struct) -> bytes:
    """Serialise a payload model to UTF-8 JSON bytes (every field, defaults included)."""
    return _ENCODER.encode(payload)


def to_dict(payload: Struct) -> dict[str, Any]:
    """A payload as the JSON-ready dict :func:`encode` serialises (datetimes as RFC 3339
    strings, enums as their values)."""
    out: dict[str, Any] = msgspec.to_builtins(payload)
    return out


def _where(e: msgspec.ValidationError) -> tuple[str, str]:
    """(field path like ``spec.inputs.0.name``, what is wrong) of a msgspec error, whose
    text reads ``Expected `int`, got `str` - at `$.spec.inputs[0].size```."""
    text = str(e)
    what, sep, at = text.rpartition(" - at `")
    if not sep:
        what, at = text, "$`"
    path = (at.rstrip("`").removeprefix("$").replace("[...]", "")  # a dict value: the dict
            .lstrip(".").replace("[", ".").replace("]", ""))
    if what.startswith("Object missing required field `"):
        path = ".".join(p for p in (path, what.split("`")[1]) if p)
        what = "Field required"
    elif what.startswith("Object contains unknown field `"):
        path = ".".join(p for p in (path, what.split("`")[1]) if p)
        what = "Extra inputs are not permitted"
    return path, what


@overload
def decode(model: type[M], data: bytes | bytearray) -> M: ...
@overload
def decode(model: object, data: bytes | bytearray) -> Any: ...
def decode(model: type[M] | object, data: bytes | bytearray) -> Any:
    """Parse ``data`` as ``model`` (a payload class, or :data:`Command`).

    Raises:
        ProtocolError: larger than :data:`MAX_PAYLOAD_BYTES`, not JSON (UTF-8, or UTF-16/32
            as :func:`json.loads` reads it), not an object, another protocol version, or
            not of the model (the message names the field).
    """
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    try:
        head = _HEAD.decode(data)
    except msgspec.ValidationError:  # JSON, but not an object
        obj = msgspec.json.decode(data)
        raise ProtocolError(f"payload must be a JSON object, got {type(obj).__name__}") from None
    except msgspec.DecodeError as e:  # not UTF-8 JSON: json.loads also reads UTF-16 and -32
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e2:
            raise ProtocolError(f"payload is not UTF-8 JSON: {e2}") from e
        return decode(model, json.dumps(obj, ensure_ascii=False).encode())
    if head.v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {head.v!r} is not supported "
                            f"(this side speaks v{PROTOCOL_VERSION})")
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS.setdefault(model, msgspec.json.Decoder(model))  # type: ignore[arg-type]
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as e:
        where, what = _where(e)
        name = "Command" if model is Command else getattr(model, "__name__", "payload")
        raise ProtocolError(f"invalid {name}: {where or '(root)'}: {what}") from e
