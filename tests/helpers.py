"""Test helpers: waiting on conditions, an MQTT observer, an HTTP artifact server.

No test sleeps for a fixed time: :func:`wait_for` polls a predicate until a deadline.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.protocol import (
    TOPIC_PREFIX,
    ArtifactGet,
    ArtifactPut,
    RunCommand,
    RunSpec,
    RunUpdate,
    decode,
    encode,
    topic,
)
from edge_agent.protocol.signing import Signer, encode_public_key, sign_command

T = TypeVar("T")

TEST_COMMAND_KEY = Ed25519PrivateKey.generate()
"""The command key of tests without a control plane: the ``agents`` fixture's agents
trust it (unless told another) and :class:`Observer` signs the commands it sends with it."""
TEST_COMMAND_PUBLIC = encode_public_key(TEST_COMMAND_KEY.public_key())
"""Its public half, base64 (what ``--command-key`` takes)."""


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` s pass.

    Raises:
        AssertionError: the deadline passed; ``message`` (or its result) says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g} s waiting for: {text}")
        time.sleep(interval)


class MqttProbe:
    """One paho client as a given broker user (``username`` None: anonymous; ``ca``: TLS
    verified against it), recording its CONNACK, what it receives and its SUBACKs; for
    checking a broker's authentication and ACL from the client's side."""

    def __init__(self, host: str, port: int, username: str | None, password: str | None,
                 ca: Path | None = None) -> None:
        self.connack: list[str] = []
        self.received: list[tuple[str, bytes]] = []
        self.granted: list[list[str]] = []
        self.subscribed = threading.Event()
        self.disconnected = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        if ca is not None:
            self.c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda c, u, f, rc, p=None: self.connack.append(str(rc))
        self.c.on_disconnect = lambda *a: self.disconnected.set()
        self.c.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))

        def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: list[mqtt.ReasonCode],
                         p: object = None) -> None:
            self.granted.append([str(rc) for rc in rcs])
            self.subscribed.set()
        self.c.on_subscribe = on_subscribe
        self.c.connect(host, port)
        self.c.loop_start()
        wait_for(lambda: self.connack, 10, message="a CONNACK")

    @property
    def accepted(self) -> bool:
        return self.connack[0] == "Success"

    def topics(self) -> list[str]:
        return [t for t, _ in self.received]

    def subscribe(self, filter_: str) -> list[str]:
        """Subscribe to ``filter_``; returns the broker's SUBACK reason codes."""
        self.subscribed.clear()
        self.c.subscribe(filter_, qos=1)
        wait_for(self.subscribed.is_set, 10, message=f"SUBACK for {filter_}")
        return self.granted[-1]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Observer:
    """An MQTT client that records every protocol message (and can send commands).

    Reconnects by itself (e.g. across a broker restart) and re-subscribes on connect.
    ``messages`` is every ``(topic, payload)`` received, in order; ``retained`` the
    topics whose latest message had the retain flag.
    """

    def __init__(self, host: str, port: int, sign: Signer | None = TEST_COMMAND_KEY.sign) -> None:
        self.sign = sign
        """Signs the command models :meth:`send` publishes (``None``: sent unsigned)."""
        self.messages: list[tuple[str, bytes]] = []
        self.retained_flags: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"observer-{uuid.uuid4().hex[:8]}")
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.3)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()
        wait_for(self.connected.is_set, 10, message="observer connected to the broker")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        client.subscribe(f"{TOPIC_PREFIX}/#", qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.retained_flags[msg.topic] = bool(msg.retain)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, t: str) -> list[bytes]:
        """Payloads received on topic ``t``, oldest first."""
        with self._lock:
            return [p for (tt, p) in self.messages if tt == t]

    def latest(self, t: str) -> bytes | None:
        got = self.on(t)
        return got[-1] if got else None

    def updates(self, device_id: str, run_id: str) -> list[RunUpdate]:
        """Every RunUpdate received for the run, oldest first (empty payloads skipped)."""
        return [decode(RunUpdate, p) for p in self.on(topic(device_id, f"runs/{run_id}")) if p]

    def wait_run(self, device_id: str, run_id: str, states: set[str] | None = None,
                 timeout: float = 15.0) -> RunUpdate:
        """The first update of the run whose state is in ``states`` (default: terminal)."""
        want = states or {"Succeeded", "Failed", "Cancelled"}

        def found() -> RunUpdate | None:
            return next((u for u in self.updates(device_id, run_id) if u.state in want), None)

        return wait_for(found, timeout, message=lambda: (
            f"run {run_id} on {device_id} reaching {sorted(want)}; got "
            f"{[(u.seq, u.state, u.reason) for u in self.updates(device_id, run_id)]}"))

    def send(self, device_id: str, payload: bytes | Any) -> None:
        """Publish a command to the device's commands topic, QoS 1: raw bytes as they are,
        a command model addressed to ``device_id`` and signed with :attr:`sign`."""
        if isinstance(payload, bytes):
            data = payload
        elif self.sign is not None:
            data = sign_command(payload, device_id, self.sign)
        else:
            data = encode(payload)
        info = self.client.publish(topic(device_id, "commands"), data, qos=1)
        info.wait_for_publish(timeout=5)

    def run(self, device_id: str, run_id: str | None = None, **spec: Any) -> str:
        """Send a RunCommand built from ``spec`` (RunSpec fields); returns the run id."""
        run_id = run_id or f"r-{uuid.uuid4().hex[:10]}"
        spec.setdefault("workflow_id", "wf-test")
        spec.setdefault("task", "t")
        self.send(device_id, RunCommand(id=f"c-{uuid.uuid4().hex[:8]}",
                                        spec=RunSpec(run_id=run_id, **spec)))
        return run_id


@dataclass
class ArtifactServer:
    """A tiny HTTP server on loopback: GET serves ``files``, PUT stores into ``uploads``.

    ``gets`` counts GET requests per path; ``fail_puts`` answers that many PUTs with 503.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, bytes] = field(default_factory=dict)
    gets: dict[str, int] = field(default_factory=dict)
    fail_puts: int = 0
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def add(self, path: str, data: bytes, name: str | None = None,
            rel: str | None = None) -> ArtifactGet:
        """Serve ``data`` at ``/path``; returns the ArtifactGet describing it."""
        self.files["/" + path.lstrip("/")] = data
        return ArtifactGet(name=name or path, path=rel or path, url=self.url(path),
                           sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    def put_target(self, name: str, rel: str) -> ArtifactPut:
        return ArtifactPut(name=name, path=rel, url=self.url(f"upload/{name}"))

    def start(self) -> ArtifactServer:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                outer.gets[path] = outer.gets.get(path, 0) + 1
                data = outer.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                if outer.fail_puts > 0:
                    outer.fail_puts -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                outer.uploads[urlsplit(self.path).path] = body
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def gate_source(pid_file: Path, timeout: float = 60.0) -> str:
    """Python source for a task that holds until :func:`open_gate` (or ``timeout`` s).

    The task blocks SIGUSR1, publishes its pid in ``pid_file`` (atomically) and waits for
    the signal with ``sigtimedwait`` — a wait on the condition, with a deadline, no polling.
    """
    return (
        "import os, signal\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
        f"_tmp = {str(pid_file)!r} + '.tmp'\n"
        "open(_tmp, 'w').write(str(os.getpid()))\n"
        f"os.replace(_tmp, {str(pid_file)!r})\n"
        f"signal.sigtimedwait({{signal.SIGUSR1}}, {timeout!r})\n"
    )


def open_gate(pid_file: Path, timeout: float = 30.0) -> None:
    """Let the task waiting in :func:`gate_source` go on (waits for its pid first)."""
    wait_for(pid_file.exists, timeout=timeout, message=f"the gated task to write {pid_file}")
    os.kill(int(pid_file.read_text()), signal.SIGUSR1)


class Wakes:
    """Counts ``ctx.wake()`` calls (adapters wake the reconciler on backend events)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


class NoArtifacts:
    """An artifact store for adapters that must never store artifacts in-process (devices,
    Kubernetes: their runs move artifacts over the HTTP API themselves)."""

    def put_bytes(self, *a: Any, **k: Any) -> Any:
        raise AssertionError("this adapter must not store artifacts in-process")

    def record(self, *a: Any, **k: Any) -> Any:
        return None


def admin_token(cp_or_state_dir: Any) -> str:
    """The bootstrap admin token of a control plane (a ``ControlPlane`` or its state
    directory): ``<state_dir>/admin.token``, written on its first start."""
    settings = getattr(cp_or_state_dir, "settings", None)
    state_dir = settings.state_dir if settings is not None else cp_or_state_dir
    return (Path(state_dir) / "admin.token").read_text().strip()


def admin_headers(cp_or_state_dir: Any) -> dict[str, str]:
    """``{"Authorization": "Bearer <admin token>"}`` (see :func:`admin_token`)."""
    return {"Authorization": f"Bearer {admin_token(cp_or_state_dir)}"}
