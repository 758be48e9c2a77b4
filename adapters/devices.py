"""The ``devices`` adapter: a fleet of ``continuum-agent``s behind an MQTT broker.

Speaks the device wire protocol v1 (:mod:`edge_agent.protocol`). The adapter keeps one
paho-mqtt 2.x session (:class:`edge_agent.protocol.session.MqttSession`, shared with the
agent: its own loop thread, jittered exponential reconnect backoff, subscriptions restored
on reconnect), subscribes to every device's ``hello``, ``status``, ``telemetry`` and ``runs/+`` topics,
and answers from what arrived (a push-fed cache):

* ``inventory`` — one :class:`Node` per device that sent a Hello;
* ``status`` — the latest :class:`RunUpdate` per run (highest ``seq`` wins), mapped
  through :data:`RUN_STATE_TABLE`; no network call. Retained run messages make a new
  adapter (a restarted control plane) re-adopt runs, and agents re-publish the latest
  state of every run they hold on each reconnect;
* ``submit``/``cancel``/``release`` publish Run/Cancel/Forget commands (QoS 1) on the
  device's ``commands`` topic, each addressed to the device, dated, with a fresh nonce
  and signed with ``ctx.sign`` (:mod:`edge_agent.protocol.signing`); the agent is
  idempotent by run id. A command the agent refuses comes back as a
  :class:`CommandRejected` on its ``rejected`` topic: logged (WARNING), counted in
  :attr:`DevicesAdapter.refused`, and a refused RunCommand of a run submitted to that
  device and not yet heard of ends the run Failed with the agent's reason.

Malformed payloads are logged (WARNING, topic and reason), counted in
:attr:`DevicesAdapter.malformed` and otherwise ignored; a payload whose ``device_id``
disagrees with its topic is rejected the same way.

Updates are believed only from their source (issue 12): a run's updates count only when
they arrive on the topic of the device the run was submitted to (the handle's device),
and with ``requireEnrollment`` nothing from a device that is not enrolled in this site
(``AdapterContext.device_enrolled``) is believed — its hello never becomes a node. Each
such message is dropped, logged (WARNING the first time per device and reason) and
counted through ``AdapterContext.dropped`` (``continuum_device_messages_dropped_total``
on ``/metrics``, reasons ``malformed``, ``not_placed_here``, ``unenrolled``). With the
broker's ACL in place (control_plane/enrollment.py) a device cannot even publish on
another device's topics; this is the second layer.

Site config (``SiteSpec.config``, camelCase): ``broker`` (``mqtt://host:port`` or
``mqtts://``), ``username``, ``password``, ``tlsCa``, ``tlsInsecure``, ``offlineAfter``
(seconds without a message from a device before it is not ready, for every device;
default: per device, twice the telemetry (heartbeat) interval its hello announces —
``Hello.telemetry_interval`` — at least 2 s, or 30 s when it announces none; after a
broker restart a device last heard before it has ``RECONNECT_WINDOW_S`` more),
``forgetAfter`` (seconds a device may stay offline or silent before the adapter forgets
it, as :meth:`DevicesAdapter.forget` does; default: never), ``requireEnrollment``
(believe only devices enrolled in this site; default false), ``sharedSubscriptions`` and
``shareGroup`` (see "Replicas" below).

A device's ``state`` (``GET /v1/devices``) follows its liveness: ``online`` (its status
says so and it was heard within its silence limit, above), ``offline`` (it said goodbye,
or its last will did), ``lost`` (it says online but has been silent longer than that — a
hung agent whose connection the broker still holds open: lost after two heartbeats, its
node not ready, and the control plane re-places its work). The site is Degraded while
devices are known and none is online; a device that left for good is forgotten
(``DELETE /v1/devices/{site}/{device}``, or ``forgetAfter``) so that it no longer counts.

Replicas (issue 15): the adapter speaks MQTT 5 and takes ``telemetry`` and ``runs/+`` on
shared subscriptions ``$share/<shareGroup>/…`` (default group ``continuum``), so each such
message reaches one of the replicas' adapters on the broker; ``hello``, ``status`` and
``rejected`` stay plain subscriptions (retained or rare, and every replica needs them). What
a replica consumed on a shared subscription goes to the others through
``AdapterContext.relay`` (the control plane's database, control_plane/relay.py): a thread
writes, every :data:`RELAY_INTERVAL_S`, the latest message per topic it consumed and reads
the rows the other replicas wrote since, each of which goes through :meth:`_handle` like a
message from the broker (with the consuming replica's receive time); ``status`` reads
too, so the leader's answer includes what another replica consumed. ``release`` leaves a
tombstone (an empty payload) for the run's topic, so every replica forgets the run.
``sharedSubscriptions``: ``true`` (MQTT 5 required), ``false`` (MQTT 3.1.1, every
replica gets every message), unset (MQTT 5, falling back to 3.1.1 when the broker refuses
MQTT 5, as the embedded amqtt broker of ``continuum demo`` does).

Why one module of this size: it is one class, the adapter side of the device wire
protocol, whose message intake, inventory, submission and status share one device table
and its lock (the session itself is edge_agent/protocol/session.py).
"""

from __future__ import annotations

import logging
import ssl
import threading
import uuid
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from adapters.base import (
    AdapterContext,
    ArtifactRecord,
    Handle,
    RelayedMessage,
    RunStatus,
    TaskRun,
)
from adapters.capabilities import DeviceFleet, DeviceTelemetry, conforms
from adapters.registry import register
from continuum.errors import (
    AdapterError,
    Conflict,
    NotFound,
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
)
from edge_agent.protocol import (
    TOPIC_PREFIX,
    ArtifactGet,
    ArtifactPut,
    CancelCommand,
    CommandRejected,
    DeviceStatus,
    ForgetCommand,
    Hello,
    ProtocolError,
    RunCommand,
    RunSpec,
    RunUpdate,
    SignedCommand,
    Telemetry,
    decode,
    encode,
    to_dict,
    topic,
)
from edge_agent.protocol.session import RECONNECT_MAX_S, MqttSession, parse_broker_url
from edge_agent.protocol.signing import sign_command

log = logging.getLogger(__name__)

RUN_STATE_TABLE: dict[str, RunState] = {
    "Accepted": RunState.Dispatched,
    "Running": RunState.Running,
    "Succeeded": RunState.Succeeded,
    "Failed": RunState.Failed,
    "Cancelled": RunState.Cancelled,
}
"""The one translation of the agent's run phases into :class:`RunState`."""

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
_PUBACK_TIMEOUT_S = 5.0
_SHARED_LEAVES = ("telemetry", "runs/+")
"""Topic leaves taken on shared subscriptions (and relayed); the others are plain."""
RELAY_INTERVAL_S = 0.3
"""How often (s) the relay thread writes what this replica consumed and reads the others'."""
RELAY_LOOKBACK_S = 5.0
"""Each read of the relay asks again for rows written this long (s) before the previous
read began (the relay's clock): covers writes that committed late."""
_TOMBSTONE_RANK = 1e18
"""The rank of a run's cleared message: higher than any update's ``seq``."""
RESYNC_QUIET_S = 10.0
"""Seconds without a retained message before the announcements are read again (at most
half of ``announcementResync``): :meth:`DevicesAdapter._resync_announcements`."""

class DevicesConfig(BaseModel):
    """``SiteSpec.config`` of a ``devices`` site (camelCase keys, unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    broker: str = Field(description="mqtt://host:port or mqtts://host:port")
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = Field(default=None, description="CA certificate: its PEM text, or a "
                               "PEM file path (federation file only; the API refuses paths)")
    tls_insecure: bool = False
    offline_after: float | None = Field(
        default=None, gt=0,
        description="seconds without any message from a device before it is not ready "
        "(lost), for every device; unset: twice the telemetry (heartbeat) interval each "
        "device announces in its hello, at least 2 s, or 30 s for a device that announces "
        "none")
    forget_after: float | None = Field(
        default=None, gt=0,
        description="seconds a device may be offline or silent before it is forgotten "
        "(its retained hello and status cleared); default: never")
    client_id: str | None = None
    require_enrollment: bool = Field(
        default=False,
        description="believe only devices enrolled in this site (POST /v1/devices/enroll); "
        "messages of any other device are dropped and counted")
    shared_subscriptions: bool | None = Field(
        default=None,
        description="MQTT 5 shared subscriptions for telemetry and run updates: true "
        "(MQTT 5 required), false (MQTT 3.1.1, every replica gets every message), unset "
        "(MQTT 5, falling back to 3.1.1 when the broker refuses it)")
    announcement_resync: float | None = Field(
        default=300.0, gt=0,
        description="seconds between re-reads of every device's retained hello and status "
        "(a new SUBSCRIBE makes the broker send them again): devices whose announcement "
        "the broker dropped during a connection surge appear at the latest then; unset: "
        "only at (re)connection")
    share_group: str = Field(
        default="continuum", min_length=1, max_length=64, pattern=r"^[^/+#]+$",
        description="the share group of the shared subscriptions ($share/<group>/...)")

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        parse_broker_url(v)  # the session's own check (ValueError naming the URL)
        return v

    @field_validator("tls_ca")
    @classmethod
    def _tls_ca(cls, v: str | None) -> str | None:
        if v is None:
            return v
        pem = v.lstrip().startswith("-----BEGIN")
        try:
            if pem:
                ssl.create_default_context(cadata=v)
            else:
                ssl.create_default_context().load_verify_locations(cafile=v)
        except OSError as e:  # ssl.SSLError is an OSError: not PEM, no certificate in it
            why = e.strerror or getattr(e, "reason", None) or str(e)
            if pem:
                raise ValueError(f"tlsCa is not a PEM CA certificate ({why})") from e
            raise ValueError(f"{v!r} is not a readable PEM CA certificate on the control "
                             f"plane's host ({why})") from e
        return v


DEFAULT_OFFLINE_AFTER_S = 30.0
"""Silence (s) after which a device that announces no heartbeat interval is lost."""
LOST_AFTER_HEARTBEATS = 2
"""A device silent for longer than this many of its announced heartbeat (telemetry)
intervals is lost (issue 16: a hung agent, connection open, is declared lost in two)."""
LOST_AFTER_MIN_S = 2.0
"""The shortest silence (s) that makes a device lost, whatever interval it announces (a
sub-second heartbeat would otherwise flap on a scheduling hiccup)."""
RECONNECT_WINDOW_S = RECONNECT_MAX_S
"""After this side's (re)connection to the broker, how much longer (s) than its silence
limit a device that announces its heartbeat and was last heard before it has to be heard
again: after a broker restart agents reconnect within their reconnect backoff's ceiling
(``RECONNECT_MAX_S``, jittered), and are not lost — their work not moved — meanwhile. A
device heard since then has the plain limit."""


class _View(NamedTuple):
    """What :meth:`DevicesAdapter.inventory` needs of one device, replaced whole (under
    the lock) by every message that changes it, so a snapshot of the fleet is a list of
    references taken under the lock and read after releasing it."""

    device_id: str
    node: Node | None
    telemetry: Telemetry | None
    says_online: bool
    last_seen: float
    silence_limit: float
    reconnect_window: float


def _ready(says_online: bool, last_seen: float, limit: float, window: float, since: float,
           now: float) -> bool:
    """Ready: the device's status says online and it was heard within ``limit`` s of
    ``now``, or — not heard since this side (re)connected to the broker at ``since`` —
    that (re)connection was within ``window`` s."""
    return says_online and (now - last_seen <= limit
                            or (last_seen < since and now - since <= window))


@dataclass
class _Device:
    device_id: str
    hello: Hello | None = None
    hello_at: float = 0.0
    node: Node | None = None
    """The device's node as far as its hello says (built once per hello; ``inventory``
    copies it with the current readiness, free resources and telemetry)."""
    silence_limit: float = DEFAULT_OFFLINE_AFTER_S
    """Seconds of silence after which the device is lost (from its hello and the config)."""
    reconnect_window: float = DEFAULT_OFFLINE_AFTER_S
    """Seconds after this side's (re)connection during which it is not lost unless heard
    since (:func:`_ready`)."""
    status: DeviceStatus | None = None
    telemetry: Telemetry | None = None
    telemetry_at: float = 0.0
    last_seen: float = 0.0
    announced: dict[str, int] = field(default_factory=dict)
    """Leaf (``hello``, ``status``) → hash of the payload last handled: the same retained
    announcement sent again (a re-read) changes nothing, not even ``last_seen``."""
    view: _View | None = None
    """The fields above as :meth:`DevicesAdapter.inventory` reads them (:meth:`seen`)."""

    def seen(self) -> None:
        """Refresh :attr:`view` after changing the fields (call with the adapter's lock)."""
        self.view = _View(self.device_id, self.node, self.telemetry,
                          self.status is not None and self.status.state == "online",
                          self.last_seen, self.silence_limit, self.reconnect_window)


@dataclass
class _Dispatched:
    device_id: str
    cpu: float
    memory: int
    spec: RunSpec | None = None
    """What was sent (to send it again while the device says nothing of the run)."""
    sent_at: float = 0.0


RESEND_AFTER_S = 10.0
"""A run the device has said nothing about this long after its RunCommand was sent gets the
command again (a broker without persistence loses a command it acknowledged when it
restarts before delivering it; the agent answers a duplicate with the run's latest state
and never runs it twice)."""


class DevicesAdapter:
    """Adapter for a ``devices`` site. See the module docstring.

    Args:
        site: the site; ``site.config`` is a :class:`DevicesConfig`.
        ctx: the control plane's context (``wake`` is called on each Hello/RunUpdate).
        session: a not yet started MQTT session to the site's broker (tests pass an
            instrumented one); by default one is built from ``site.config``. The adapter
            sets its hooks and subscriptions on it and starts it.

    Raises:
        PermanentError: the site config is invalid (the message names the field).
    """

    def __init__(self, site: SiteSpec, ctx: AdapterContext, *,
                 session: MqttSession | None = None) -> None:
        self.site = site
        self.ctx = ctx
        try:
            self.config = DevicesConfig.model_validate(site.config)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise PermanentError(f"invalid devices config: {where}: {first['msg']}",
                                 site=site.name, details={"field": where}) from e
        if self.config.require_enrollment and ctx.device_enrolled is None:
            raise PermanentError("invalid devices config: requireEnrollment: this control "
                                 "plane has no enrolment registry", site=site.name,
                                 details={"field": "requireEnrollment"})
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._updates: dict[str, dict[str, RunUpdate]] = {}
        """run id → device id (of the topic it came on) → latest update."""
        self._drops_logged: set[tuple[str, str]] = set()
        self._dispatched: dict[str, _Dispatched] = {}
        self._built: dict[str, tuple[tuple[Any, ...], Node]] = {}
        """device id → (what its node was last built from, that node): ``inventory``
        returns the same node again while none of it changed."""
        self.malformed_by_reason: Counter[str] = Counter()
        """Payloads rejected (malformed, wrong version, device id mismatch), by reason."""
        self.refused: Counter[str] = Counter()
        """Commands the agents refused, by reason (``expired``, ``bad-signature``, ...)."""
        if ctx.sign is None:
            log.warning("site %s: no command-signing key in the adapter context; commands "
                        "go unsigned and only agents started with --insecure-accept-unsigned "
                        "obey them", site.name)
        self._connected = threading.Event()
        """Set while connected, once ``_connected_at`` is updated for this connection."""
        self._connected_at = 0.0
        self._resynced_at = 0.0
        """When the retained announcements were last (re)read: connection or resync."""
        self._retained_at = 0.0
        """When the last retained message arrived (the burst of a (re)read drains)."""
        self.rereads_ignored = 0
        """Retained announcements ignored as identical to the one last handled."""
        """ctx.clock() of the last (re)connection to the broker: a device's silence counts
        from no earlier than this, so devices are not declared offline merely because the
        broker (or this side's connection) was down while they were reconnecting."""
        self.origin = f"{site.name}-{uuid.uuid4().hex[:12]}"
        """This adapter instance in the relay (its own rows are not read back)."""
        self.consumed: Counter[str] = Counter()
        """Messages this adapter received from the broker, by topic leaf (``runs`` for
        ``runs/<id>``); written by paho's loop thread alone (read it by key)."""
        self.relayed_in: Counter[str] = Counter()
        """Messages another replica consumed that this adapter handled from the relay."""
        self._relay_pending: dict[str, tuple[bytes, float, float]] = {}
        """topic → (payload, rank, received_at) of the latest message consumed on it and
        not yet written to the relay (a :class:`RelayedMessage` is made per topic at the
        flush, not per message)."""
        self._relay_lock = threading.Lock()
        """Serialises reads of the relay (the relay thread's and ``status``'s)."""
        self._relay_after = 0.0
        self._relay_seen: dict[str, float] = {}
        """topic → version of the relay row last handled (rows are read more than once)."""
        self._relay_failing = False
        self._stop = threading.Event()
        self._session = session if session is not None else self._make_session()
        share = self.config.share_group if self.config.shared_subscriptions is not False else None
        for leaf in ("hello", "status", "telemetry", "runs/+", "rejected"):
            self._session.subscribe(f"{TOPIC_PREFIX}/+/{leaf}", qos=1,
                                    share=share if leaf in _SHARED_LEAVES else None)
        self._session.on_connect = self._on_connect
        self._session.on_disconnect = self._connected.clear
        self._session.on_message = self._on_message
        self._session.start()
        self._relay_thread: threading.Thread | None = None
        if ctx.relay is not None:
            self._relay_thread = threading.Thread(target=self._relay_loop, daemon=True,
                                                  name=f"relay-{site.name}")
            self._relay_thread.start()

    # ------------------------------------------------------------ MQTT session

    def _make_session(self) -> MqttSession:
        c = self.config
        return MqttSession(
            c.broker, client_id=c.client_id or f"continuum-{self.site.name}-{uuid.uuid4().hex[:8]}",
            label=f"site {self.site.name}", clean_session=True, username=c.username,
            password=c.password, tls_ca=c.tls_ca, tls_insecure=c.tls_insecure,
            mqtt5=c.shared_subscriptions is not False,
            fallback_311=c.shared_subscriptions is None)

    def _on_connect(self, client: mqtt.Client) -> None:
        """(Re)connected and subscribed: devices' silence counts from now at the earliest."""
        self._connected_at = self._resynced_at = self.ctx.clock()
        self._connected.set()

    @property
    def malformed(self) -> int:
        """Payloads rejected, all reasons together."""
        return sum(self.malformed_by_reason.values())

    def _reject(self, t: str, reason: str) -> None:
        with self._lock:
            self.malformed_by_reason[reason.split(":", 1)[0]] += 1
        self.ctx.dropped(self.site.name, "malformed")
        log.warning("site %s: rejected payload on %s: %s", self.site.name, t, reason)

    def _drop(self, t: str, device_id: str, reason: str, detail: str) -> None:
        """Drop a well-formed message not believed from its source; counted per ``reason``
        and logged at WARNING the first time per (device, reason), DEBUG after."""
        self.ctx.dropped(self.site.name, reason)
        key = (device_id, reason)
        with self._lock:
            first = key not in self._drops_logged
            self._drops_logged.add(key)
        log.log(logging.WARNING if first else logging.DEBUG,
                "site %s: dropped message on %s (%s): %s", self.site.name, t, reason, detail)

    def _enrolled(self, device_id: str) -> bool:
        """Believed: enrolment not required, or the device is enrolled in this site."""
        if not self.config.require_enrollment:
            return True
        assert self.ctx.device_enrolled is not None  # checked in __init__
        return self.ctx.device_enrolled(self.site.name, device_id)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = "?"
        try:
            t = msg.topic  # paho decodes the topic at every read of it: once
            rest = t[len(TOPIC_PREFIX) + 1:].split("/")
            # paho's loop thread is the only writer of ``consumed``: no lock per message
            self.consumed[rest[1] if len(rest) > 1 else "?"] += 1
            if msg.retain:
                self._retained_at = self.ctx.clock()
            self._handle(t, msg.payload, retained=bool(msg.retain), rest=rest)
        except Exception:  # never let a payload kill the loop thread
            log.exception("site %s: error handling a message on %s", self.site.name, t)

    def _handle(self, t: str, payload: bytes | bytearray, *, at: float | None = None,
                relayed: bool = False, retained: bool = False,
                rest: list[str] | None = None) -> None:
        """Handle one message on topic ``t``: from the broker, or (``relayed``) one that
        another replica received at ``at`` (s since the epoch) and relayed. A telemetry or
        run update from the broker that is believed is relayed (when shared
        subscriptions are in effect). A ``retained`` hello or status identical to the one
        last handled for the device is a re-read (:meth:`_resync_announcements`) and is
        ignored: it says nothing about the device being alive now. ``rest``: the topic's
        segments after the prefix, when the caller split it already."""
        if rest is None:
            rest = t[len(TOPIC_PREFIX) + 1:].split("/")
        if not t.startswith(TOPIC_PREFIX + "/") or len(rest) < 2:
            self._reject(t, "topic is not a protocol topic")
            return
        device_id, leaf = rest[0], rest[1]
        if payload and not self._enrolled(device_id):
            self._drop(t, device_id, "unenrolled",
                       f"device {device_id!r} is not enrolled in site {self.site.name!r}")
            return
        now = self.ctx.clock() if at is None else at
        relay_rank: float | None = None
        wake = False
        try:
            if leaf == "runs" and len(rest) == 3:
                run_id = rest[2]
                if not payload:  # the agent cleared its retained message (forgotten)
                    with self._lock:
                        by_device = self._updates.get(run_id, {})
                        by_device.pop(device_id, None)
                        if not by_device:
                            self._updates.pop(run_id, None)
                    if not relayed:
                        self._relay_out(t, b"", _TOMBSTONE_RANK, now)
                    return
                upd = decode(RunUpdate, payload)
                self._check_device(upd.device_id, device_id)
                if upd.run_id != run_id:
                    raise ProtocolError(f"run id mismatch: payload says {upd.run_id!r}, "
                                        f"topic says {run_id!r}")
                with self._lock:
                    disp = self._dispatched.get(run_id)
                if disp is not None and disp.device_id != device_id:
                    self._drop(t, device_id, "not_placed_here",
                               f"run {run_id} was submitted to device {disp.device_id!r}, "
                               f"not {device_id!r}")
                    return
                with self._lock:
                    by_device = self._updates.setdefault(run_id, {})
                    old = by_device.get(device_id)
                    if old is None or upd.seq > old.seq:
                        by_device[device_id] = upd
                        wake = True
                    d = self._device(device_id)
                    d.last_seen = max(d.last_seen, now)
                    d.seen()
                relay_rank = float(upd.seq)
            elif leaf == "hello" and len(rest) == 2:
                if not payload:  # cleared: the device was forgotten (here or elsewhere)
                    with self._lock:
                        self._devices.pop(device_id, None)
                    return
                if retained and self._announced(device_id, leaf, payload):
                    self.rereads_ignored += 1
                    return
                hello = decode(Hello, payload)
                self._check_device(hello.device_id, device_id)
                node, (limit, window) = self._node_of(hello), self._silence_limits(hello)
                with self._lock:
                    d = self._device(device_id)
                    d.hello, d.hello_at, d.last_seen = hello, now, now
                    d.node, d.silence_limit, d.reconnect_window = node, limit, window
                    d.seen()
                    d.announced[leaf] = hash(bytes(payload))
                wake = True
            elif leaf == "status" and len(rest) == 2:
                if not payload:
                    return
                if retained and self._announced(device_id, leaf, payload):
                    self.rereads_ignored += 1
                    return
                st = decode(DeviceStatus, payload)
                self._check_device(st.device_id, device_id)
                with self._lock:
                    d = self._device(device_id)
                    d.status = st
                    d.announced[leaf] = hash(bytes(payload))
                    if st.state == "online":
                        d.last_seen = now
                    d.seen()
                wake = True
            elif leaf == "rejected" and len(rest) == 2:
                wake = self._on_rejected(device_id, decode(CommandRejected, payload))
            elif leaf == "telemetry" and len(rest) == 2:
                tel = decode(Telemetry, payload)
                self._check_device(tel.device_id, device_id)
                with self._lock:
                    d = self._device(device_id)
                    if now >= d.telemetry_at:  # a relayed one may be older than ours
                        d.telemetry, d.telemetry_at = tel, now
                    d.last_seen = max(d.last_seen, now)
                    d.seen()
                relay_rank = now
            else:
                self._reject(t, "unknown topic leaf")
                return
        except ProtocolError as e:
            self._reject(t, str(e))
            return
        if relay_rank is not None and not relayed:
            self._relay_out(t, bytes(payload), relay_rank, now)
        if wake:
            self.ctx.wake()

    # ------------------------------------------------------------ relay between replicas

    def _relay_out(self, t: str, payload: bytes, rank: float, received_at: float) -> None:
        """Queue a consumed message for the relay (the latest per topic), when there is a
        relay and this message may have reached this replica alone."""
        if self.ctx.relay is None or not self._session.shared:
            return
        with self._lock:
            old = self._relay_pending.get(t)
            if old is None or rank >= old[1]:
                self._relay_pending[t] = (payload, rank, received_at)

    def _relay_loop(self) -> None:
        while not self._stop.wait(RELAY_INTERVAL_S):
            self._relay_flush()
            self._relay_pull()

    def _relay_flush(self) -> None:
        """Write the queued messages; on failure they are queued again (unless newer ones
        came meanwhile) and the next tick retries."""
        relay = self.ctx.relay
        with self._lock:
            batch, self._relay_pending = self._relay_pending, {}
        if relay is None or not batch:
            return
        try:
            relay.put(self.site.name, [
                RelayedMessage(topic=t, payload=payload, rank=rank, received_at=received_at,
                               origin=self.origin)
                for t, (payload, rank, received_at) in batch.items()])
        except Exception as e:  # the database's own errors: keep them, retry
            with self._lock:
                for t, m in batch.items():
                    self._relay_pending.setdefault(t, m)
            self._relay_failed("write to", e)
            return
        self._relay_recovered()

    def _relay_pull(self) -> None:
        """Handle the relay rows other replicas wrote since the last read (a row once per
        version; this replica's own rows are skipped)."""
        relay = self.ctx.relay
        if relay is None or not self._session.shared:
            return
        with self._relay_lock:
            try:
                rows, started = relay.since(self.site.name, self._relay_after)
            except Exception as e:  # the database's own errors: the next read retries
                self._relay_failed("read from", e)
                return
            self._relay_recovered()
            for m in rows:
                if m.origin == self.origin or self._relay_seen.get(m.topic) == m.version:
                    continue
                self._relay_seen[m.topic] = m.version
                with self._lock:
                    self.relayed_in[m.topic[len(TOPIC_PREFIX) + 1:].split("/")[1]] += 1
                try:
                    self._handle(m.topic, m.payload, at=m.received_at, relayed=True)
                except Exception:
                    log.exception("site %s: error handling a relayed message on %s",
                                  self.site.name, m.topic)
            self._relay_after = started - RELAY_LOOKBACK_S
            self._relay_seen = {t: v for t, v in self._relay_seen.items()
                                if v >= self._relay_after}

    def _relay_failed(self, what: str, e: Exception) -> None:
        log.log(logging.DEBUG if self._relay_failing else logging.WARNING,
                "site %s: cannot %s the replicas' message relay: %s; retrying every %.1f s",
                self.site.name, what, e, RELAY_INTERVAL_S)
        self._relay_failing = True

    def _relay_recovered(self) -> None:
        if self._relay_failing:
            self._relay_failing = False
            log.info("site %s: the replicas' message relay works again", self.site.name)

    def _on_rejected(self, device_id: str, rej: CommandRejected) -> bool:
        """A device refused a command: log and count it; a refused RunCommand of a run
        submitted to that device with no update yet ends Failed (True: wake the loop)."""
        self._check_device(rej.device_id, device_id)
        log.warning("site %s: device %s refused command %s (%s%s): %s: %s", self.site.name,
                    device_id, rej.command_id, rej.command_type,
                    f", run {rej.run_id}" if rej.run_id else "", rej.reason, rej.detail)
        with self._lock:
            self.refused[rej.reason] += 1
            run_id = rej.run_id
            disp = self._dispatched.get(run_id) if run_id else None
            if (rej.command_type != "run" or run_id is None or disp is None
                    or disp.device_id != device_id or run_id in self._updates):
                return False
            self._updates[run_id] = {device_id: RunUpdate(
                device_id=device_id, run_id=run_id, seq=0, state="Failed",
                reason=f"device {device_id} refused the command: {rej.reason}: {rej.detail}")}
        return True

    def _announced(self, device_id: str, leaf: str, payload: bytes | bytearray) -> bool:
        """Whether ``payload`` is the ``leaf`` announcement last handled for the device."""
        with self._lock:
            d = self._devices.get(device_id)
            return d is not None and d.announced.get(leaf) == hash(bytes(payload))

    def _resync_announcements(self, now: float) -> None:
        """Every ``announcementResync`` seconds subscribe to ``hello`` and ``status`` again:
        the broker sends every retained announcement anew, so a device whose announcement
        was dropped (e.g. past Mosquitto's ``max_queued_messages`` in a connection surge)
        appears; the ones already known are ignored (:meth:`_handle`).

        Only once the previous burst drained (no retained message for ``min(10 s,
        announcementResync / 2)``): re-subscribing while the broker still sends the last
        one adds a whole fleet's announcements to what it queues for this client, and
        past ``max_queued_messages`` it drops some — the loss the re-read exists to
        repair (seen at 100,000 devices with a control plane slower than the surge)."""
        every = self.config.announcement_resync
        if every is None or not self.connected or now - self._resynced_at < every:
            return
        if now - self._retained_at < min(RESYNC_QUIET_S, every / 2):
            return
        self._resynced_at = now
        for leaf in ("hello", "status"):
            self._session.subscribe(f"{TOPIC_PREFIX}/+/{leaf}", qos=1)

    @staticmethod
    def _check_device(in_payload: str, in_topic: str) -> None:
        if in_payload != in_topic:
            raise ProtocolError(f"device id mismatch: payload says {in_payload!r}, topic "
                                f"says {in_topic!r}")

    def _device(self, device_id: str) -> _Device:
        d = self._devices.get(device_id)
        if d is None:  # no hello yet: the silence limits of a device that announces none
            limit, window = self._silence_limits(None)
            d = self._devices[device_id] = _Device(device_id, silence_limit=limit,
                                                   reconnect_window=window)
        return d

    def _state(self, d: _Device, now: float) -> str:
        """``online``, ``offline`` (said so), ``lost`` (says online, silent too long) or
        ``unknown`` (no status yet)."""
        if self._online(d, now):
            return "online"
        if d.status is None:
            return "unknown"
        return "offline" if d.status.state == "offline" else "lost"

    def _active_runs(self, device_id: str) -> list[str]:
        """Runs submitted to ``device_id`` with no final update yet (call with the lock)."""
        return sorted(r for r, disp in self._dispatched.items() if disp.device_id == device_id
                      and ((u := self._update(r, device_id)) is None
                           or u.state not in _TERMINAL_PHASES))

    def _update(self, run_id: str, device_id: str) -> RunUpdate | None:
        """The latest update of ``run_id`` from ``device_id``'s topic (call with the lock)."""
        return self._updates.get(run_id, {}).get(device_id)

    def forget(self, device_id: str) -> None:
        """Forget a device that left: clear its retained ``hello`` and ``status`` on the
        broker (so no adapter re-learns it) and drop it from the inventory. An agent that
        comes back simply enrols again.

        Raises:
            NotFound: no such device.
            Conflict: it is online (stop its agent first), or runs submitted to it have
                not ended (cancel them first).
            TransientError: the broker is not connected.
        """
        now = self.ctx.clock()
        with self._lock:
            d = self._devices.get(device_id)
            if d is None:
                raise NotFound(f"device {device_id!r} is not known to site {self.site.name!r}")
            if self._online(d, now):
                raise Conflict(f"device {device_id!r} is online; stop its agent first (an "
                               "online agent announces itself again)")
            active = self._active_runs(device_id)
        if active:
            raise Conflict(f"device {device_id!r} still has runs that have not ended "
                           f"({', '.join(active)}); cancel them first")
        self._clear_retained(device_id)
        with self._lock:
            self._devices.pop(device_id, None)
        log.info("site %s: device %s forgotten (its retained hello and status cleared)",
                 self.site.name, device_id)

    def _clear_retained(self, device_id: str) -> None:
        if not self._connected.is_set():
            raise TransientError(f"broker {self.config.broker} is not connected "
                                 f"({self._session.last_error}); cannot forget device {device_id!r}",
                                 site=self.site.name, retry_after=2.0)
        for leaf in ("hello", "status"):
            info = self._session.publish(topic(device_id, leaf), b"", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=_PUBACK_TIMEOUT_S)
            except (RuntimeError, ValueError) as e:
                raise TransientError(f"clearing {leaf} of {device_id} failed: {e}",
                                     site=self.site.name, retry_after=2.0) from e

    def _forget_expired(self, now: float) -> None:
        """Forget the devices offline or silent longer than ``forgetAfter`` (if set)."""
        limit = self.config.forget_after
        if limit is None or not self._connected.is_set():
            return
        with self._lock:
            expired = [d.device_id for d in self._devices.values()
                       if not self._online(d, now)
                       and now - max(d.last_seen, self._connected_at) > limit
                       and not self._active_runs(d.device_id)]
        for device_id in expired:
            try:
                self.forget(device_id)
            except (NotFound, Conflict, TransientError) as e:
                log.info("site %s: device %s not forgotten yet: %s", self.site.name,
                         device_id, e)

    def _online(self, d: _Device, now: float) -> bool:
        """Online: its last status said so and it was heard within its silence limit of
        ``now`` — or, not heard since this side's last (re)connection to the broker, that
        was within its reconnect window (:meth:`_silence_limits`: after a broker restart
        each agent gets that long to reconnect before it counts offline)."""
        return _ready(d.status is not None and d.status.state == "online", d.last_seen,
                      d.silence_limit, d.reconnect_window, self._connected_at, now)

    def _silence_limits(self, hello: Hello | None) -> tuple[float, float]:
        """``(limit, window)``: seconds without a message before a device saying it is
        online is lost, and seconds after this side's (re)connection during which it is
        not. ``offlineAfter`` for both when set; else, when its hello announces its
        heartbeat interval, :data:`LOST_AFTER_HEARTBEATS` of it (at least
        :data:`LOST_AFTER_MIN_S`) and that plus :data:`RECONNECT_WINDOW_S`; else
        :data:`DEFAULT_OFFLINE_AFTER_S` for both."""
        if self.config.offline_after is not None:
            return self.config.offline_after, self.config.offline_after
        if hello is not None and hello.telemetry_interval is not None:
            limit = max(LOST_AFTER_MIN_S, LOST_AFTER_HEARTBEATS * hello.telemetry_interval)
            return limit, limit + RECONNECT_WINDOW_S
        return DEFAULT_OFFLINE_AFTER_S, DEFAULT_OFFLINE_AFTER_S

    def _node_of(self, hello: Hello) -> Node:
        """The device's node as its hello describes it (``free`` = capacity, ready, no
        telemetry yet); :meth:`inventory` copies it with the live fields.

        Raises:
            ProtocolError: the hello's figures make no valid node (e.g. ``speed`` ≤ 0).
        """
        labels = dict(hello.labels)
        if hello.emulated:
            labels["continuum.io/emulated"] = "true"
        try:
            cap = Resources(cpu=hello.cpus, memory=hello.memory, gpu=hello.gpus)
            return Node(
                id=f"{self.site.name}/{hello.device_id}", name=hello.device_id,
                site=self.site.name, site_kind=SiteKind.devices, tier=hello.tier,
                arch=hello.arch, capacity=cap, allocatable=cap.model_copy(),
                free=cap.model_copy(), labels=labels, speed=hello.speed,
                power=PowerProfile(**msgspec.structs.asdict(hello.power)),
                location=hello.location, runtimes=list(hello.runtimes),
                python_modules=hello.python_modules)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ProtocolError(f"invalid Hello: {where}: {first['msg']}") from e

    def _publish(self, device_id: str, payload: SignedCommand, what: str) -> None:
        """Sign ``payload`` for ``device_id`` (when ``ctx.sign`` is set) and publish it on
        the device's ``commands`` topic, waiting for the broker's PUBACK.

        Raises:
            TransientError: not connected, or the broker did not acknowledge in time.
        """
        if not self._connected.is_set():
            raise TransientError(f"broker {self.config.broker} is not connected "
                                 f"({self._session.last_error}); cannot {what}", site=self.site.name,
                                 retry_after=2.0)
        sign = self.ctx.sign
        data = (sign_command(payload, device_id, sign) if sign is not None
                else encode(msgspec.structs.replace(payload, device_id=device_id)))
        info = self._session.publish(topic(device_id, "commands"), data, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransientError(f"publish to {device_id} failed ({mqtt.error_string(info.rc)})"
                                 f"; cannot {what}", site=self.site.name, retry_after=2.0)
        try:
            info.wait_for_publish(timeout=_PUBACK_TIMEOUT_S)
        except (RuntimeError, ValueError) as e:
            raise TransientError(f"publish to {device_id} failed: {e}; cannot {what}",
                                 site=self.site.name, retry_after=2.0) from e
        if not info.is_published():
            raise TransientError(f"broker did not acknowledge the command to {device_id} "
                                 f"within {_PUBACK_TIMEOUT_S:g} s; cannot {what}",
                                 site=self.site.name, retry_after=2.0)

    # ------------------------------------------------------------ Adapter

    def inventory(self) -> list[Node]:
        """One Node per device that sent a Hello, sorted by device id (offline and lost
        ones with ``ready=False``); first forgets the devices past ``forgetAfter``.

        Built incrementally: each device's node is made once per hello (:meth:`_node_of`)
        and every message replaces the device's :class:`_View`; under the lock this takes
        only the list of views and the resources of runs dispatched per device, and it
        copies the nodes with their readiness, free resources and telemetry after
        releasing it (the previous call's node again where none of that changed), so MQTT
        messages wait at most for that list (about 1 ms at 5,000 devices:
        ``python -m bench.control_plane.devices_adapter``)."""
        now = self.ctx.clock()
        self._forget_expired(now)
        self._resync_announcements(now)
        with self._lock:
            used: dict[str, list[float]] = {}
            for run_id, disp in self._dispatched.items():
                upd = self._update(run_id, disp.device_id)
                if upd is not None and upd.state in _TERMINAL_PHASES:
                    continue
                u = used.setdefault(disp.device_id, [0.0, 0.0])
                u[0] += disp.cpu
                u[1] += disp.memory
            views = [d.view for d in self._devices.values()]
        since = self._connected_at  # silence counts from the last (re)connection at the earliest
        snap = sorted((v for v in views if v is not None and v.node is not None),
                      key=lambda v: v.device_id)
        nodes: list[Node] = []
        built: dict[str, tuple[tuple[Any, ...], Node]] = {}
        previous = self._built
        for device_id, base, tel, says_online, last_seen, limit, window in snap:
            assert base is not None  # filtered above
            if not self._enrolled(device_id):  # e.g. revoked
                continue
            ready = _ready(says_online, last_seen, limit, window, since, now)
            busy = used.get(device_id)
            source = (base, tel, ready, None if busy is None else (busy[0], busy[1]))
            last = previous.get(device_id)
            if (last is not None and last[0][0] is base and last[0][1] is tel
                    and last[0][2:] == source[2:]):  # the models by identity: replaced, not changed
                node = last[1]  # nothing changed: nodes are never mutated, share it
            else:
                node = self._live_node(base, tel, ready, busy)
            built[device_id] = (source, node)
            nodes.append(node)
        self._built = built
        return nodes

    @staticmethod
    def _live_node(base: Node, tel: Telemetry | None, ready: bool,
                   used: list[float] | None) -> Node:
        """``base`` (a device's node from its hello) with its readiness, free resources
        (capacity minus ``used`` = [cpu, memory] of runs dispatched there) and telemetry;
        the parts of ``base`` (capacity, labels, ...) are shared, never mutated."""
        update: dict[str, Any] = {"ready": ready}
        if used is not None:
            cap = base.capacity
            update["free"] = Resources(cpu=max(0.0, cap.cpu - used[0]),
                                       memory=max(0, cap.memory - int(used[1])), gpu=cap.gpu)
        if tel is not None:
            update["utilisation"] = min(1.0, max(0.0, tel.cpu_percent / 100.0))
            update["power_watts"] = tel.power_watts
            update["observed_at"] = tel.at
        return base.model_copy(update=update)

    def submit(self, run: TaskRun, node: Node, request_id: str) -> Handle:
        """Publish a RunCommand to the node's device; idempotent by ``request_id``.

        Raises:
            TransientError: the broker is not connected or the device is offline.
            UnsupportedError: the task needs a container image and the device has no
                container runtime.
        """
        device_id = node.name
        now = self.ctx.clock()
        with self._lock:
            d = self._devices.get(device_id)
            online = d is not None and self._online(d, now)
            runtimes = list(d.hello.runtimes) if d and d.hello else []
        if not online:
            raise TransientError(f"device {device_id!r} is offline", site=self.site.name,
                                 retry_after=5.0)
        task = run.task
        if task.image and not any(r in runtimes for r in ("docker", "podman", "containerd")):
            raise UnsupportedError(f"task {task.name!r} needs container image {task.image!r} "
                                   f"but device {device_id!r} only runs {runtimes}",
                                   site=self.site.name)
        spec = RunSpec(
            run_id=request_id, workflow_id=run.workflow_id, task=task.name,
            argv=list(task.command) if task.command else None,
            interpreter=list(task.script.interpreter) if task.script else None,
            script=task.script.source if task.script else None,
            env=dict(task.env), timeout_s=task.timeout, cpu=task.resources.cpu,
            memory=task.resources.memory,
            inputs=[ArtifactGet(name=a.name, path=a.path, url=a.url, sha256=a.sha256,
                                size=a.size) for a in run.inputs],
            outputs=[ArtifactPut(name=o.name, path=o.path, url=o.url) for o in run.outputs],
        )
        cmd = RunCommand(id=f"run-{request_id}-{uuid.uuid4().hex[:8]}", spec=spec)
        self._publish(device_id, cmd, f"submit run {request_id}")
        with self._lock:
            self._dispatched[request_id] = _Dispatched(device_id, task.resources.cpu,
                                                       task.resources.memory, spec, now)
        log.info("site %s: run %s submitted to device %s", self.site.name, request_id, device_id)
        return Handle(site=self.site.name, run_id=request_id, backend_id=request_id,
                      node=node.id, data={"device": device_id})

    def status(self, handles: Sequence[Handle]) -> dict[str, RunStatus]:
        """From the cache: runs without any update yet are omitted. No network call.

        Only updates that came on the topic of the handle's device count; any other
        device's update for the run is dropped here (counted ``not_placed_here``). First
        reads the relay: updates another replica consumed count too."""
        self._relay_pull()
        out: dict[str, RunStatus] = {}
        strays: list[tuple[str, str]] = []
        resend: list[tuple[str, RunSpec]] = []
        now = self.ctx.clock()
        with self._lock:
            for h in handles:
                device_id = self._device_of(h)
                by_device = self._updates.get(h.run_id, {})
                for other in [d for d in by_device if d != device_id]:
                    del by_device[other]
                    strays.append((h.run_id, other))
                upd = by_device.get(device_id)
                if upd is None:
                    disp = self._dispatched.get(h.run_id)
                    if (disp is not None and disp.spec is not None
                            and now - disp.sent_at >= RESEND_AFTER_S):
                        disp.sent_at = now
                        resend.append((disp.device_id, disp.spec))
                    continue
                out[h.run_id] = RunStatus(
                    state=RUN_STATE_TABLE[upd.state], reason=upd.reason,
                    exit_code=upd.exit_code, started_at=upd.started_at,
                    finished_at=upd.finished_at, output_tail=upd.output_tail,
                    bytes_in=upd.bytes_in, bytes_out=upd.bytes_out,
                    outputs=[ArtifactRecord(name=o.name, sha256=o.sha256, size=o.size)
                             for o in upd.outputs],
                )
        for run_id, other in strays:
            self._drop(topic(other, f"runs/{run_id}"), other, "not_placed_here",
                       f"run {run_id} is not placed on device {other!r}")
        for device_id, spec in resend:
            log.info("site %s: device %s said nothing of run %s for %.0f s: sending its "
                     "RunCommand again", self.site.name, device_id, spec.run_id, RESEND_AFTER_S)
            try:
                self._publish(device_id, RunCommand(
                    id=f"run-{spec.run_id}-{uuid.uuid4().hex[:8]}", spec=spec),
                    f"resend run {spec.run_id}")
            except AdapterError as e:  # broker down: the next status() tries again
                log.info("site %s: resend of run %s: %s", self.site.name, spec.run_id, e)
        return out

    def _device_of(self, handle: Handle) -> str:
        return str(handle.data.get("device") or handle.node.split("/", 1)[-1])

    def cancel(self, handle: Handle) -> None:
        """Publish a CancelCommand (the agent kills the run's process tree). Idempotent.

        Raises:
            TransientError: the broker is not connected.
        """
        self._publish(self._device_of(handle),
                      CancelCommand(id=f"cancel-{uuid.uuid4().hex[:12]}", run_id=handle.run_id),
                      f"cancel run {handle.run_id}")

    def release(self, handle: Handle) -> None:
        """Publish a ForgetCommand; the agent drops the run and clears its retained message.

        Raises:
            TransientError: the broker is not connected.
        """
        device_id = self._device_of(handle)
        self._publish(device_id,
                      ForgetCommand(id=f"forget-{uuid.uuid4().hex[:12]}", run_id=handle.run_id),
                      f"release run {handle.run_id}")
        with self._lock:
            self._dispatched.pop(handle.run_id, None)
            self._updates.pop(handle.run_id, None)
        # every replica forgets the run (its relay row becomes a tombstone)
        self._relay_out(topic(device_id, f"runs/{handle.run_id}"), b"", _TOMBSTONE_RANK,
                        self.ctx.clock())

    def logs(self, handle: Handle, tail: int = 50) -> str:
        """The last ``tail`` lines of the latest output tail the device reported."""
        with self._lock:
            upd = self._update(handle.run_id, self._device_of(handle))
        if upd is None:
            return f"no update from device {self._device_of(handle)!r} for run {handle.run_id} yet"
        lines = upd.output_tail.splitlines()
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    def health(self) -> tuple[SiteHealth, str]:
        """Ready when connected with ≥1 device online, or no device known yet (nothing is
        wrong); Degraded when devices are known and none is online; Unreachable when the
        broker is not connected."""
        if not self._connected.is_set():
            return SiteHealth.Unreachable, (f"broker {self.config.broker} unreachable: "
                                            f"{self._session.last_error}")
        now = self.ctx.clock()
        with self._lock:
            known = len(self._devices)
            online = sum(1 for d in self._devices.values() if self._online(d, now))
        if known == 0:
            return SiteHealth.Ready, "no device enrolled yet"
        if online == 0:
            return SiteHealth.Degraded, (
                f"no device online ({known} known; forget those that left for good: "
                f"DELETE /v1/devices/{self.site.name}/<device>)")
        return SiteHealth.Ready, ""

    def close(self) -> None:
        """Disconnect, stop the loop thread and the relay thread (writing what is queued)."""
        self._stop.set()
        if self._relay_thread is not None:
            self._relay_thread.join(timeout=5)
            self._relay_flush()
        self._session.stop()

    # ------------------------------------------------------------ extras

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def telemetry(self) -> list[DeviceTelemetry]:
        """The latest telemetry of every device that sent a Hello and telemetry."""
        now = self.ctx.clock()
        with self._lock:
            out = [DeviceTelemetry(d.device_id, d.hello.location, self._online(d, now),
                                   d.telemetry_at, d.telemetry)
                   for d in self._devices.values()
                   if d.hello is not None and d.telemetry is not None]
        out.sort(key=lambda t: t.device_id)  # after releasing the lock
        return out

    def device_states(self) -> list[tuple[str, str]]:
        """``(device id, state)`` of every known device (state as in :meth:`devices`): the
        light index a page of ``GET /v1/devices`` is chosen from before any device is
        serialised."""
        now = self.ctx.clock()
        with self._lock:
            return [(d.device_id, self._state(d, now)) for d in self._devices.values()]

    def devices(self, ids: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The known devices (those of ``ids``; None: every one) for ``GET /v1/devices``
        (JSON-ready dicts, camelCase keys), in device id order."""
        now = self.ctx.clock()
        with self._lock:  # the payload models are replaced, never changed: dump them after
            chosen = (self._devices.values() if ids is None
                      else [d for i in ids if (d := self._devices.get(i)) is not None])
            rows = [(d.device_id, self._state(d, now), d.last_seen, d.hello, d.telemetry,
                     d.status) for d in chosen]
        rows.sort(key=lambda row: row[0])
        return [{
            "site": self.site.name,
            "deviceId": device_id,
            "online": state == "online",
            "state": state,
            "lastSeen": (datetime.fromtimestamp(last_seen, UTC).isoformat()
                         if last_seen else None),
            "hello": to_dict(hello) if hello else None,
            "telemetry": to_dict(tel) if tel else None,
            "running": list(status.running) if status else [],
        } for device_id, state, last_seen, hello, tel, status in rows]


def _factory(site: SiteSpec, ctx: AdapterContext) -> DevicesAdapter:
    return DevicesAdapter(site, ctx)


register(SiteKind.devices, _factory)

# Declared capability (adapters.capabilities): mypy checks the signatures, conforms the names.
_DECLARED: type[DeviceFleet] = DevicesAdapter
conforms(DevicesAdapter, DeviceFleet)
