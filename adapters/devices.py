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
  device's ``commands`` topic; the agent is idempotent by run id.

Malformed payloads are logged (WARNING, topic and reason), counted in
:attr:`DevicesAdapter.malformed` and otherwise ignored; a payload whose ``device_id``
disagrees with its topic is rejected the same way.

Site config (``SiteSpec.config``, camelCase): ``broker`` (``mqtt://host:port`` or
``mqtts://``), ``username``, ``password``, ``tlsCa``, ``tlsInsecure``, ``offlineAfter``
(seconds without a message from a device before it is not ready; default 30 s, about
3× the telemetry interval of agents started with ``--telemetry-interval 10``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from adapters.base import (
    AdapterContext,
    ArtifactRecord,
    Handle,
    RunStatus,
    TaskRun,
)
from adapters.capabilities import DeviceFleet, DeviceTelemetry, conforms
from adapters.registry import register
from continuum.errors import PermanentError, TransientError, UnsupportedError
from continuum.model import Node, Resources, RunState, SiteHealth, SiteKind, SiteSpec
from edge_agent.protocol import (
    TOPIC_PREFIX,
    ArtifactGet,
    ArtifactPut,
    CancelCommand,
    DeviceStatus,
    ForgetCommand,
    Hello,
    ProtocolError,
    RunCommand,
    RunSpec,
    RunUpdate,
    Telemetry,
    decode,
    encode,
    topic,
)
from edge_agent.protocol.session import MqttSession

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


class DevicesConfig(BaseModel):
    """``SiteSpec.config`` of a ``devices`` site (camelCase keys, unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)

    broker: str = Field(description="mqtt://host:port or mqtts://host:port")
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = Field(default=None, description="CA certificate (PEM file path)")
    tls_insecure: bool = False
    offline_after: float = Field(
        default=30.0, gt=0,
        description="seconds without any message from a device before it is not ready "
        "(about 3x the agents' telemetry interval)")
    client_id: str | None = None

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        p = urlsplit(v)
        if p.scheme not in ("mqtt", "mqtts") or not p.hostname:
            raise ValueError(f"broker {v!r} must be mqtt://host:port or mqtts://host:port")
        return v


@dataclass
class _Device:
    device_id: str
    hello: Hello | None = None
    hello_at: float = 0.0
    status: DeviceStatus | None = None
    telemetry: Telemetry | None = None
    telemetry_at: float = 0.0
    last_seen: float = 0.0


@dataclass(frozen=True)
class _Dispatched:
    device_id: str
    cpu: float
    memory: int


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
            raise PermanentError(
                f"invalid devices config: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                site=site.name) from e
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._updates: dict[str, RunUpdate] = {}
        self._dispatched: dict[str, _Dispatched] = {}
        self.malformed = 0
        """Payloads rejected (malformed, wrong version, device id mismatch)."""
        self.malformed_by_reason: Counter[str] = Counter()
        self._connected = threading.Event()
        """Set while connected, once ``_connected_at`` is updated for this connection."""
        self._connected_at = 0.0
        """ctx.clock() of the last (re)connection to the broker: a device's silence counts
        from no earlier than this, so devices are not declared offline merely because the
        broker (or this side's connection) was down while they were reconnecting."""
        self._session = session if session is not None else self._make_session()
        for leaf in ("hello", "status", "telemetry", "runs/+"):
            self._session.subscribe(f"{TOPIC_PREFIX}/+/{leaf}", qos=1)
        self._session.on_connect = self._on_connect
        self._session.on_disconnect = self._connected.clear
        self._session.on_message = self._on_message
        self._session.start()

    # ------------------------------------------------------------ MQTT session

    def _make_session(self) -> MqttSession:
        c = self.config
        return MqttSession(
            c.broker, client_id=c.client_id or f"continuum-{self.site.name}-{uuid.uuid4().hex[:8]}",
            label=f"site {self.site.name}", clean_session=True, username=c.username,
            password=c.password, tls_ca=c.tls_ca, tls_insecure=c.tls_insecure)

    def _on_connect(self, client: mqtt.Client) -> None:
        """(Re)connected and subscribed: devices' silence counts from now at the earliest."""
        self._connected_at = self.ctx.clock()
        self._connected.set()

    def _reject(self, t: str, reason: str) -> None:
        with self._lock:
            self.malformed += 1
            self.malformed_by_reason[reason.split(":", 1)[0]] += 1
        log.warning("site %s: rejected payload on %s: %s", self.site.name, t, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._handle(msg.topic, msg.payload)
        except Exception:  # never let a payload kill the loop thread
            log.exception("site %s: error handling a message on %s", self.site.name, msg.topic)

    def _handle(self, t: str, payload: bytes | bytearray) -> None:
        rest = t[len(TOPIC_PREFIX) + 1:].split("/")
        if not t.startswith(TOPIC_PREFIX + "/") or len(rest) < 2:
            self._reject(t, "topic is not a protocol topic")
            return
        device_id, leaf = rest[0], rest[1]
        now = self.ctx.clock()
        wake = False
        try:
            if leaf == "runs" and len(rest) == 3:
                run_id = rest[2]
                if not payload:  # the agent cleared its retained message (forgotten)
                    with self._lock:
                        self._updates.pop(run_id, None)
                    return
                upd = decode(RunUpdate, payload)
                self._check_device(upd.device_id, device_id)
                if upd.run_id != run_id:
                    raise ProtocolError(f"run id mismatch: payload says {upd.run_id!r}, "
                                        f"topic says {run_id!r}")
                with self._lock:
                    old = self._updates.get(run_id)
                    if old is None or upd.seq > old.seq:
                        self._updates[run_id] = upd
                        wake = True
                    self._device(device_id).last_seen = now
            elif leaf == "hello" and len(rest) == 2:
                if not payload:
                    return
                hello = decode(Hello, payload)
                self._check_device(hello.device_id, device_id)
                with self._lock:
                    d = self._device(device_id)
                    d.hello, d.hello_at, d.last_seen = hello, now, now
                wake = True
            elif leaf == "status" and len(rest) == 2:
                if not payload:
                    return
                st = decode(DeviceStatus, payload)
                self._check_device(st.device_id, device_id)
                with self._lock:
                    d = self._device(device_id)
                    d.status = st
                    if st.state == "online":
                        d.last_seen = now
                wake = True
            elif leaf == "telemetry" and len(rest) == 2:
                tel = decode(Telemetry, payload)
                self._check_device(tel.device_id, device_id)
                with self._lock:
                    d = self._device(device_id)
                    d.telemetry, d.telemetry_at, d.last_seen = tel, now, now
            else:
                self._reject(t, "unknown topic leaf")
                return
        except ProtocolError as e:
            self._reject(t, str(e))
            return
        if wake:
            self.ctx.wake()

    @staticmethod
    def _check_device(in_payload: str, in_topic: str) -> None:
        if in_payload != in_topic:
            raise ProtocolError(f"device id mismatch: payload says {in_payload!r}, topic "
                                f"says {in_topic!r}")

    def _device(self, device_id: str) -> _Device:
        d = self._devices.get(device_id)
        if d is None:
            d = self._devices[device_id] = _Device(device_id)
        return d

    def _online(self, d: _Device, now: float) -> bool:
        """Online: its last status said so and it was heard within ``offline_after`` of
        ``now`` — or of this side's last (re)connection, whichever is later (after a broker
        restart each agent gets ``offline_after`` to reconnect before it counts offline)."""
        return (d.status is not None and d.status.state == "online"
                and now - max(d.last_seen, self._connected_at) <= self.config.offline_after)

    def _publish(self, device_id: str, payload: BaseModel, what: str) -> None:
        if not self._connected.is_set():
            raise TransientError(f"broker {self.config.broker} is not connected "
                                 f"({self._session.last_error}); cannot {what}", site=self.site.name,
                                 retry_after=2.0)
        info = self._session.publish(topic(device_id, "commands"), encode(payload), qos=1)
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
        """One Node per device that sent a Hello (offline ones with ``ready=False``)."""
        now = self.ctx.clock()
        nodes: list[Node] = []
        with self._lock:
            used: dict[str, list[float]] = {}
            for run_id, disp in self._dispatched.items():
                upd = self._updates.get(run_id)
                if upd is not None and upd.state in _TERMINAL_PHASES:
                    continue
                u = used.setdefault(disp.device_id, [0.0, 0.0])
                u[0] += disp.cpu
                u[1] += disp.memory
            for d in sorted(self._devices.values(), key=lambda d: d.device_id):
                h = d.hello
                if h is None:
                    continue
                cap = Resources(cpu=h.cpus, memory=h.memory, gpu=h.gpus)
                cpu_used, mem_used = used.get(d.device_id, [0.0, 0.0])
                free = Resources(cpu=max(0.0, h.cpus - cpu_used),
                                 memory=max(0, h.memory - int(mem_used)), gpu=h.gpus)
                labels = dict(h.labels)
                if h.emulated:
                    labels["continuum.io/emulated"] = "true"
                tel = d.telemetry
                nodes.append(Node(
                    id=f"{self.site.name}/{d.device_id}", name=d.device_id, site=self.site.name,
                    site_kind=SiteKind.devices, tier=h.tier, arch=h.arch, capacity=cap,
                    allocatable=cap.model_copy(), free=free, labels=labels, speed=h.speed,
                    power=h.power, location=h.location, runtimes=list(h.runtimes),
                    ready=self._online(d, now),
                    utilisation=(min(1.0, max(0.0, tel.cpu_percent / 100.0)) if tel else None),
                    power_watts=tel.power_watts if tel else None,
                    observed_at=tel.at if tel else None,
                ))
        return nodes

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
                                                       task.resources.memory)
        log.info("site %s: run %s submitted to device %s", self.site.name, request_id, device_id)
        return Handle(site=self.site.name, run_id=request_id, backend_id=request_id,
                      node=node.id, data={"device": device_id})

    def status(self, handles: Sequence[Handle]) -> dict[str, RunStatus]:
        """From the cache: runs without any update yet are omitted. No network call."""
        out: dict[str, RunStatus] = {}
        with self._lock:
            for h in handles:
                upd = self._updates.get(h.run_id)
                if upd is None:
                    continue
                out[h.run_id] = RunStatus(
                    state=RUN_STATE_TABLE[upd.state], reason=upd.reason,
                    exit_code=upd.exit_code, started_at=upd.started_at,
                    finished_at=upd.finished_at, output_tail=upd.output_tail,
                    bytes_in=upd.bytes_in, bytes_out=upd.bytes_out,
                    outputs=[ArtifactRecord(name=o.name, sha256=o.sha256, size=o.size)
                             for o in upd.outputs],
                )
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
        self._publish(self._device_of(handle),
                      ForgetCommand(id=f"forget-{uuid.uuid4().hex[:12]}", run_id=handle.run_id),
                      f"release run {handle.run_id}")
        with self._lock:
            self._dispatched.pop(handle.run_id, None)
            self._updates.pop(handle.run_id, None)

    def logs(self, handle: Handle, tail: int = 50) -> str:
        """The last ``tail`` lines of the latest output tail the device reported."""
        with self._lock:
            upd = self._updates.get(handle.run_id)
        if upd is None:
            return f"no update from device {self._device_of(handle)!r} for run {handle.run_id} yet"
        lines = upd.output_tail.splitlines()
        return "\n".join(lines[-tail:]) if tail > 0 else ""

    def health(self) -> tuple[SiteHealth, str]:
        """Ready when connected with ≥1 device online; Unreachable when the broker is not."""
        if not self._connected.is_set():
            return SiteHealth.Unreachable, (f"broker {self.config.broker} unreachable: "
                                            f"{self._session.last_error}")
        now = self.ctx.clock()
        with self._lock:
            known = len(self._devices)
            online = sum(1 for d in self._devices.values() if self._online(d, now))
        if online == 0:
            return SiteHealth.Degraded, f"no device online ({known} known)"
        return SiteHealth.Ready, ""

    def close(self) -> None:
        """Disconnect and stop the loop thread."""
        self._session.stop()

    # ------------------------------------------------------------ extras

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def telemetry(self) -> list[DeviceTelemetry]:
        """The latest telemetry of every device that sent a Hello and telemetry."""
        now = self.ctx.clock()
        with self._lock:
            return [DeviceTelemetry(d.device_id, d.hello.location, self._online(d, now),
                                    d.telemetry_at, d.telemetry)
                    for d in sorted(self._devices.values(), key=lambda d: d.device_id)
                    if d.hello is not None and d.telemetry is not None]

    def devices(self) -> list[dict[str, Any]]:
        """Every known device for ``GET /v1/devices`` (JSON-ready dicts, camelCase keys)."""
        now = self.ctx.clock()
        out: list[dict[str, Any]] = []
        with self._lock:
            for d in sorted(self._devices.values(), key=lambda d: d.device_id):
                out.append({
                    "site": self.site.name,
                    "deviceId": d.device_id,
                    "online": self._online(d, now),
                    "state": d.status.state if d.status else "unknown",
                    "lastSeen": (datetime.fromtimestamp(d.last_seen, UTC).isoformat()
                                 if d.last_seen else None),
                    "hello": d.hello.model_dump(mode="json") if d.hello else None,
                    "telemetry": d.telemetry.model_dump(mode="json") if d.telemetry else None,
                    "running": list(d.status.running) if d.status else [],
                })
        return out


def _factory(site: SiteSpec, ctx: AdapterContext) -> DevicesAdapter:
    return DevicesAdapter(site, ctx)


register(SiteKind.devices, _factory)

# Declared capability (adapters.capabilities): mypy checks the signatures, conforms the names.
_DECLARED: type[DeviceFleet] = DevicesAdapter
conforms(DevicesAdapter, DeviceFleet)
