"""The MQTT session of one device: :class:`Agent`.

On (re)connect the agent publishes a retained :class:`Hello` and a retained online
:class:`DeviceStatus` (its last will is the retained offline status), subscribes to its
``commands`` topic at QoS 1, re-publishes every unacknowledged outbox message in order
and the latest state of every run it still holds. Telemetry (the heartbeat) goes out
every ``telemetry_interval`` s at QoS 0; the Hello announces that interval, and the control
plane declares the device lost once it has been silent for two of them.

Commands are obeyed only when signed by the control plane's command key (the enrolled
``commandKey`` or ``--command-key``), addressed to this device, within their validity
window, and with a nonce not seen before (:mod:`edge_agent.protocol.signing`; nonces in
:class:`edge_agent.nonces.NonceStore`). A refused command is logged (WARNING, with the
reason), counted in :attr:`Agent.refused` and reported as a :class:`CommandRejected` on
the ``rejected`` topic; a refused RunCommand whose signature was good (expired, not yet
valid) and whose run this agent does not hold is also reported Failed ("command refused:
expired"), so that the run does not hang. Without a key the agent only starts when
``insecure_accept_unsigned`` says so, and then obeys anyone.

A signed :class:`RunCommand` outside the local policy (the resolved program against
``allow_command``, ``max_cpu``/``max_memory``, the run user) is answered with a Failed
update naming the policy; a
duplicate RunCommand (same run id) re-publishes the run's latest state and starts
nothing; :class:`CancelCommand` kills the run's process tree; :class:`ForgetCommand`
drops the run's record and clears its retained message. Malformed payloads are logged
(WARNING, with the reason) and counted in :attr:`Agent.rejected`.

The session (client, TLS, last will, reconnects with a jittered exponential backoff
between ``reconnect_min`` and ``reconnect_max`` seconds, the commands subscription
restored on each reconnect) is :class:`edge_agent.protocol.session.MqttSession`, the same
helper the ``devices`` adapter uses; a broker that is down at start or goes away later
is retried forever.

Threading: paho's loop thread runs the callbacks; each run executes in its own thread.
``_pub_lock`` serialises publishing (so a run's updates leave in order) and is never
taken in ``on_publish``, which paho calls while holding its own message lock.

Why one module of this size: the device's MQTT session, command checks, outbox replay and
run threads share one state and one lock; the wire models, signing, runtime and telemetry
are already their own modules.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import MQTTErrorCode

import edge_agent
from edge_agent.config import AgentConfig
from edge_agent.nonces import NonceStore
from edge_agent.outbox import Outbox
from edge_agent.profiles import DeviceProfile, get_profile
from edge_agent.protocol import (
    CancelCommand,
    Command,
    CommandRejected,
    DeviceStatus,
    ForgetCommand,
    Hello,
    ProtocolError,
    RunCommand,
    RunSpec,
    RunUpdate,
    decode,
    encode,
    topic,
)
from edge_agent.protocol.session import MqttSession, Will
from edge_agent.protocol.signing import CommandRefused, check_validity, verify_signature
from edge_agent.runtime import Limits, RunFailure, Runtime, kill_orphan_group
from edge_agent.telemetry import BROKER, RttProber, TelemetrySampler, parse_peer

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_REPORT_FAILED = frozenset({"expired", "not-yet-valid", "malformed"})
"""Refusals of a correctly signed RunCommand that end its run Failed (the control plane
sent it; it must not wait for it forever)."""


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return 0.0


@dataclass
class _Active:
    thread: threading.Thread
    cancel: threading.Event


class Agent:
    """One device's agent. :meth:`start` connects (in the background); :meth:`stop` ends it.

    Attributes:
        rejected: count of command payloads rejected as malformed.
        refused: commands refused (unsigned, bad signature, expired, replayed, ...), by
            reason.
        connected: set while the MQTT session is up.

    Raises:
        ValueError: no command key (neither ``command_key`` nor an enrolment) and
            ``insecure_accept_unsigned`` is not set, or the key cannot be read.
    """

    def __init__(self, config: AgentConfig, profile: DeviceProfile | None = None) -> None:
        self.config = config
        self.device_id = config.device_id
        self.profile = profile or get_profile(config.profile)
        self.log = logging.LoggerAdapter(log, {"device_id": self.device_id})
        self.command_key = config.command_public_key()
        if self.command_key is None and not config.insecure_accept_unsigned:
            raise ValueError("no command key: enrol this device (continuum-agent enroll) or "
                             "give --command-key; --insecure-accept-unsigned obeys anyone")
        if self.command_key is None:
            self.log.warning("device %s: no command key and --insecure-accept-unsigned: "
                             "obeying unsigned commands from anyone who can publish on the "
                             "broker", self.device_id)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.state_dir / "outbox.sqlite3")
        self.nonces = NonceStore(config.state_dir / "nonces.sqlite3")
        for p in config.state_dir.glob("*.sqlite3*"):
            p.chmod(0o600)  # run specs (their env) and nonces: not for the run user
        self.refused: Counter[str] = Counter()
        self.runtime = Runtime(
            config.state_dir, kill_grace=config.kill_grace,
            upload_deadline=config.upload_deadline, run_as=config.run_as,
            allow_command=config.allow_command, server_ca=config.server_ca,
            limits=Limits(cpu_seconds=config.limit_cpu_seconds,
                          address_space=config.limit_address_space,
                          open_files=config.limit_open_files,
                          processes=config.limit_processes))
        try:
            who = self.runtime.run_user()
            self.log.info("device %s: tasks run as %s", self.device_id,
                          who.name if who else f"the agent's user (uid {os.geteuid()})")
        except RunFailure as e:
            self.log.warning("device %s: tasks will be refused: %s", self.device_id, e)
        self.python_modules = self.runtime.python_modules()
        """What this device's python3 can import (announced in the Hello)."""
        self.sampler = TelemetrySampler(self.device_id, self.profile)
        a = config.address
        targets = {BROKER: (a.host, a.port)}
        for spec in config.rtt_peers:
            loc, host, port = parse_peer(spec)
            targets[loc] = (host, port)
        self.prober = RttProber(targets, interval_s=config.telemetry_interval)
        """RTTs to the broker and the ``--rtt-peer`` targets, measured on its own threads."""
        self.rejected = 0
        self._stop = threading.Event()
        self._stop_requested = False
        """Set by :meth:`request_stop` (a signal handler): a plain attribute, no lock."""
        self._stopping = False
        self._pub_lock = threading.Lock()
        self._mid_lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox id
        self._early_acks: set[int] = set()
        self._state_lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._telemetry_thread: threading.Thread | None = None
        self._session = self._make_session()
        self._client = self._session.client
        self.connected = self._session.connected
        self._recover()

    # ------------------------------------------------------------ setup

    def _make_session(self) -> MqttSession:
        cfg = self.config
        offline = DeviceStatus(device_id=self.device_id, state="offline")
        s = MqttSession(cfg.broker, client_id=f"continuum-agent-{self.device_id}",
                        label=f"device {self.device_id}", clean_session=False,
                        username=cfg.username, password=cfg.password,
                        tls_ca=str(cfg.tls_ca) if cfg.tls_ca else None,
                        tls_insecure=cfg.tls_insecure,
                        will=Will(topic(self.device_id, "status"), encode(offline)),
                        keepalive=cfg.keepalive, reconnect_min=cfg.reconnect_min,
                        reconnect_max=cfg.reconnect_max)
        s.subscribe(topic(self.device_id, "commands"), qos=1)
        s.on_connect = self._on_connect
        s.on_disconnect = self._on_disconnect
        s.on_message = self._on_message
        s.on_publish = self._on_publish
        return s

    def _recover(self) -> None:
        """Runs the database holds as active lost their process when the agent stopped."""
        for rec in self.outbox.runs():
            if not rec.terminal:
                proc = self.outbox.process_of(rec.run_id)
                if proc is not None and kill_orphan_group(*proc):
                    self.log.warning("run %s: killed its process group %d left from before "
                                     "the restart", rec.run_id, proc[0])
                self.log.warning("run %s: was active when the agent stopped; reporting it Failed",
                                 rec.run_id)
                self._report(rec.run_id, "Failed",
                             reason="the agent restarted while the run was active; its "
                                    "process was lost")

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background (retrying forever) and start telemetry."""
        self.log.info("device %s: connecting to %s (profile %s)", self.device_id,
                      self.config.broker, self.profile.name)
        self._session.start()
        self._telemetry_thread = threading.Thread(target=self._telemetry_loop,
                                                  name="telemetry", daemon=True)
        self._telemetry_thread.start()
        self.prober.start()

    def wait(self) -> None:
        """Block until :meth:`stop` or :meth:`request_stop` is called (from another thread
        or a signal handler); returns within 0.2 s of a request."""
        while not self._stop_requested and not self._stop.wait(0.2):
            pass

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return; safe in a signal handler because it takes no lock.
        (``Event.set`` takes the event's lock, which the interrupted main thread may hold
        inside ``Event.wait``: a handler calling it deadlocked an agent on SIGTERM.)"""
        self._stop_requested = True

    def stop(self) -> None:
        """Kill active runs (reported Failed), publish offline status, disconnect."""
        self._stopping = True
        self._stop.set()
        self.prober.stop()
        for act in list(self._active.values()):
            act.cancel.set()
        for act in list(self._active.values()):
            act.thread.join(timeout=self.config.kill_grace + 5)
        if self.connected.is_set():
            info = self._client.publish(
                topic(self.device_id, "status"),
                encode(DeviceStatus(device_id=self.device_id, state="offline")), qos=1,
                retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self._session.stop()
        self.outbox.close()
        self.nonces.close()
        self.log.info("device %s: stopped", self.device_id)

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: mqtt.Client) -> None:
        """(Re)connected, commands subscribed: announce, then re-publish what is held."""
        client.publish(topic(self.device_id, "hello"), encode(self.hello()), qos=1, retain=True)
        client.publish(topic(self.device_id, "status"), encode(self._status("online")), qos=1,
                       retain=True)
        # Held runs whose latest state is not already queued are re-published, so a
        # control plane with a fresh broker re-adopts them.
        queued = {p.run_id for p in self.outbox.pending() if p.run_id}
        for rec in self.outbox.runs():
            if rec.latest is not None and rec.run_id not in queued:
                self.outbox.enqueue(topic(self.device_id, f"runs/{rec.run_id}"),
                                    encode(rec.latest), run_id=rec.run_id)
        self._flush()

    def _on_disconnect(self) -> None:
        """The connection is gone, and with it every message id in flight (no flush
        publishes until the next connection, which re-publishes all that is pending)."""
        with self._mid_lock:
            self._inflight.clear()
            self._early_acks.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any,
                    properties: Any = None) -> None:
        with self._mid_lock:
            oid = self._inflight.pop(mid, None)
            if oid is None:
                if len(self._early_acks) > 4096:
                    self._early_acks.clear()
                self._early_acks.add(mid)
                return
            # Acked under the lock: a flush between the pop and the ack would see the
            # message neither in flight nor acked, and publish it a second time.
            self.outbox.ack(oid)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            cmd = decode(Command, msg.payload)
        except ProtocolError as e:
            self.rejected += 1
            self.log.warning("device %s: rejected command on %s: %s", self.device_id,
                             msg.topic, e)
            return
        try:
            self._verify(cmd, msg.payload)
        except CommandRefused as e:
            self._refuse(cmd, e)
            return
        try:
            if isinstance(cmd, RunCommand):
                self._handle_run(cmd)
            elif isinstance(cmd, CancelCommand):
                self._handle_cancel(cmd)
            elif isinstance(cmd, ForgetCommand):
                self._handle_forget(cmd)
        except Exception:  # a bug must not kill paho's loop thread
            self.log.exception("device %s: command %s failed", self.device_id, cmd.id)

    def _verify(self, cmd: RunCommand | CancelCommand | ForgetCommand,
                payload: bytes | bytearray) -> None:
        """Obey ``cmd`` only if signed by the command key, addressed here, within its
        validity window and not replayed (its nonce is then remembered).

        Raises:
            CommandRefused: the reason (see :mod:`edge_agent.protocol.signing`).
        """
        if self.command_key is None:  # --insecure-accept-unsigned, said at start
            return
        verify_signature(json.loads(payload), self.command_key)
        if (cmd.device_id is None or cmd.issued_at is None or cmd.expires_at is None
                or not cmd.nonce):
            raise CommandRefused("malformed", "a signed command needs device_id, issued_at, "
                                 "expires_at and nonce")
        now = datetime.now(UTC)
        check_validity(self.device_id, cmd.device_id, cmd.issued_at, cmd.expires_at, now)
        if not self.nonces.add(cmd.nonce, cmd.expires_at.timestamp(), time.time()):
            raise CommandRefused("replayed", f"nonce {cmd.nonce} was already obeyed")

    def _refuse(self, cmd: RunCommand | CancelCommand | ForgetCommand,
                why: CommandRefused) -> None:
        """Log, count and report a refused command (see the module docstring)."""
        run_id = cmd.spec.run_id if isinstance(cmd, RunCommand) else cmd.run_id
        self.refused[why.reason] += 1
        self.log.warning("device %s: refused %s command %s (run %s): %s", self.device_id,
                         cmd.type, cmd.id, run_id, why)
        rej = CommandRejected(device_id=self.device_id, reason=why.reason, detail=why.detail,
                              command_id=cmd.id, command_type=cmd.type, run_id=run_id)
        self.outbox.enqueue(topic(self.device_id, "rejected"), encode(rej), retain=False)
        if (isinstance(cmd, RunCommand) and why.reason in _REPORT_FAILED
                and _RUN_ID.match(run_id) and self.outbox.add_run(cmd.spec)):
            self._report(run_id, "Failed", reason=f"command refused: {why.reason}: "
                                                  f"{why.detail}")
        else:
            self._flush()

    # ------------------------------------------------------------ publishing

    def _flush(self) -> None:
        """Publish every pending outbox message not yet in flight, oldest first."""
        if not self.connected.is_set():
            return
        with self._pub_lock:
            with self._mid_lock:
                flying = set(self._inflight.values())
            for p in self.outbox.pending():
                if p.id in flying:
                    continue
                info = self._client.publish(p.topic, p.payload, qos=p.qos, retain=p.retain)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return  # disconnected; everything is re-published on reconnect
                with self._mid_lock:
                    if info.mid in self._early_acks:
                        self._early_acks.discard(info.mid)
                        acked = True
                    else:
                        self._inflight[info.mid] = p.id
                        acked = False
                if acked:
                    self.outbox.ack(p.id)

    def _report(self, run_id: str, state: str, **fields: Any) -> RunUpdate | None:
        """Record and queue the run's next update (seq + 1), then publish what is pending."""
        with self._state_lock:
            rec = self.outbox.get_run(run_id)
            if rec is None:
                return None  # forgotten meanwhile
            seq = (rec.latest.seq if rec.latest else 0) + 1
            update = RunUpdate(device_id=self.device_id, run_id=run_id, seq=seq,
                               state=state, **fields)  # type: ignore[arg-type]
            self.outbox.record_update(update, topic(self.device_id, f"runs/{run_id}"),
                                      encode(update))
        self.log.info("run %s: %s%s", run_id, state,
                      f" ({fields['reason']})" if fields.get("reason") else "")
        self._flush()
        return update

    def hello(self) -> Hello:
        """This device's Hello (capabilities from the profile; known runs from the outbox)."""
        p = self.profile
        labels = {**p.labels, **self.config.labels}
        if p.emulated:
            labels.setdefault("continuum.io/profile", p.name)
        return Hello(
            device_id=self.device_id, hostname=socket.gethostname(), arch=p.arch,
            cpus=p.cpus, memory=p.memory, gpus=p.gpus, tier=self.config.tier, labels=labels,
            location=self.config.location, power=p.power, speed=p.speed,
            profile=p.name if p.emulated else None, emulated=p.emulated,
            python_modules=self.python_modules, agent_version=edge_agent.__version__,
            known_runs=[r.run_id for r in self.outbox.runs()],
            telemetry_interval=self.config.telemetry_interval,
        )

    def _status(self, state: str) -> DeviceStatus:
        return DeviceStatus(device_id=self.device_id, state=state,  # type: ignore[arg-type]
                            running=sorted(self._active))

    def _telemetry_loop(self) -> None:
        """One telemetry message every ``telemetry_interval`` s, on a fixed schedule (the
        time a sample takes does not stretch the announced heartbeat); after a stall
        (e.g. the process was stopped) the schedule restarts from now, with no burst."""
        every = self.config.telemetry_interval
        next_at = time.monotonic() + every
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            now = time.monotonic()
            next_at = next_at + every if next_at + every > now else now + every
            if not self.connected.is_set():
                continue
            try:
                # the last RTTs the prober measured: probes never hold up a heartbeat
                peers = self.prober.latest()
                t = self.sampler.sample(running=len(self._active), rtt_ms=peers.pop(BROKER, None),
                                        peer_rtt_ms=peers)
                self._client.publish(topic(self.device_id, "telemetry"), encode(t), qos=0)
            except Exception:
                self.log.exception("device %s: telemetry failed", self.device_id)

    # ------------------------------------------------------------ commands

    def policy_violation(self, spec: RunSpec) -> str | None:
        """Why the local policy refuses ``spec``, or ``None`` when it is allowed."""
        cfg = self.config
        argv = spec.argv or spec.interpreter or ["python3"]
        if cfg.allow_command:
            try:
                self.runtime.program(argv, self.runtime.environment(spec),
                                     self.runtime.runs_dir / spec.run_id / "work")
            except RunFailure as e:
                return str(e)
        try:
            self.runtime.run_user()
        except RunFailure as e:
            return str(e)
        max_cpu = cfg.max_cpu if cfg.max_cpu is not None else self.profile.cpus
        if spec.cpu > max_cpu:
            return f"refused by local policy max-cpu: requests {spec.cpu:g} cores > {max_cpu:g}"
        max_mem = cfg.max_memory if cfg.max_memory is not None else self.profile.memory
        if spec.memory > max_mem:
            return (f"refused by local policy max-memory: requests {spec.memory} bytes > "
                    f"{max_mem}")
        return None

    def _handle_run(self, cmd: RunCommand) -> None:
        spec = cmd.spec
        if not _RUN_ID.match(spec.run_id):
            self.rejected += 1
            self.log.warning("device %s: rejected command %s: run id %r is not a safe name",
                             self.device_id, cmd.id, spec.run_id)
            return
        if not self.outbox.add_run(spec):
            rec = self.outbox.get_run(spec.run_id)
            self.log.info("run %s: duplicate RunCommand %s; re-publishing its latest state",
                          spec.run_id, cmd.id)
            if rec is not None and rec.latest is not None:
                self.outbox.enqueue(topic(self.device_id, f"runs/{spec.run_id}"),
                                    encode(rec.latest), run_id=spec.run_id)
                self._flush()
            return
        why = self.policy_violation(spec)
        if why:
            self.log.warning("run %s: %s", spec.run_id, why)
            self._report(spec.run_id, "Failed", reason=why)
            return
        self._report(spec.run_id, "Accepted")
        cancel = threading.Event()
        t = threading.Thread(target=self._execute, args=(spec, cancel),
                             name=f"run-{spec.run_id}", daemon=True)
        self._active[spec.run_id] = _Active(t, cancel)
        t.start()

    def _execute(self, spec: RunSpec, cancel: threading.Event) -> None:
        try:
            out = self.runtime.execute(
                spec, lambda state, **f: self._report(spec.run_id, state, **f), cancel,
                on_start=lambda pid: self.outbox.set_process(spec.run_id, pid,
                                                             _create_time(pid)))
            state, fields = out.state, out.fields()
            if self._stopping and state == "Cancelled":
                state = "Failed"
                fields["reason"] = "the agent shut down while the run was active"
            self._report(spec.run_id, state, **fields)
        finally:
            self._active.pop(spec.run_id, None)

    def _handle_cancel(self, cmd: CancelCommand) -> None:
        act = self._active.get(cmd.run_id)
        if act is not None:
            self.log.info("run %s: cancel requested (command %s)", cmd.run_id, cmd.id)
            act.cancel.set()
            return
        rec = self.outbox.get_run(cmd.run_id)
        if rec is not None and rec.latest is not None:
            # Already finished: say so again.
            self.outbox.enqueue(topic(self.device_id, f"runs/{cmd.run_id}"),
                                encode(rec.latest), run_id=cmd.run_id)
            self._flush()
        else:
            self.log.info("run %s: cancel for an unknown run ignored", cmd.run_id)

    def _handle_forget(self, cmd: ForgetCommand) -> None:
        act = self._active.get(cmd.run_id)
        if act is not None:
            self.log.warning("run %s: forget while active; cancelling it first", cmd.run_id)
            act.cancel.set()
            act.thread.join(timeout=self.config.kill_grace + 5)
        with self._state_lock:
            held = self.outbox.forget_run(cmd.run_id)
            # An empty retained payload clears the broker's retained message.
            self.outbox.enqueue(topic(self.device_id, f"runs/{cmd.run_id}"), b"",
                                run_id=cmd.run_id)
        self.log.info("run %s: forgotten%s", cmd.run_id, "" if held else " (was not held)")
        self._flush()
