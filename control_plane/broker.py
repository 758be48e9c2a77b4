"""The embedded MQTT broker (amqtt) for the one-command default.

Production deployments use Mosquitto or any MQTT 3.1.1/5 broker; this one exists so
``continuum demo`` needs nothing installed. It runs its own asyncio loop in a daemon
thread and listens on loopback only.

Given a :class:`BrokerAuth` (the demo's: :func:`demo_auth`) it makes the same identity
checks as the production Mosquitto (docs/security.md "Devices and the broker"): no
anonymous clients, one user and password per device and one for the control plane
(amqtt's ``FileAuthPlugin`` over an Argon2 password file), each device publishing only
under ``continuum/v1/devices/<its id>/`` and subscribing only to its own ``commands``,
the control plane reading and writing ``continuum/v1/devices/#`` (amqtt's
``TopicAccessControlListPlugin``). The users are fixed when it starts: no reload, no
revocation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.protocol import DEVICE_PUBLISHES, DEVICE_SUBSCRIBES, TOPIC_PREFIX, topic

log = logging.getLogger(__name__)


class ProbeConnectionFilter(logging.Filter):
    """Demotes amqtt's ERROR + WARNING for a TCP connection that closes before sending a
    byte — what every agent's broker RTT probe (TCP connect time) does — to DEBUG; such a
    record is dropped unless this module's logger is enabled for DEBUG."""

    MARK = "No data to decode MQTT packet fixed header"

    def filter(self, record: logging.LogRecord) -> bool:
        if self.MARK not in record.getMessage():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return log.isEnabledFor(logging.DEBUG)


PROBE_FILTER = ProbeConnectionFilter()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class BrokerUser:
    """One broker user: its password (clear; only its Argon2 hash reaches the broker's
    password file) and the topic filters it may publish on and subscribe to (MQTT
    filters; ``+`` and a final ``#`` match as in MQTT, a subscription's own wildcards
    must be matched level by level)."""

    password: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True)
class BrokerAuth:
    """The users of an :class:`EmbeddedBroker`, by user name."""

    users: dict[str, BrokerUser] = field(default_factory=dict)

    def write_password_file(self, path: Path) -> Path:
        """Write amqtt's password file (``user:$argon2id$...`` lines) to ``path``, mode
        0600 from its creation; returns ``path``. Raises OSError if it cannot be written."""
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher

        hasher = PasswordHash((Argon2Hasher(),))
        lines = [f"{name}:{hasher.hash(u.password)}\n" for name, u in self.users.items()]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
        return path

    def plugins(self, password_file: Path) -> dict[str, Any]:
        """amqtt's ``plugins`` section: the password file (:meth:`write_password_file`)
        and the per-user publish and subscribe ACLs; nothing else (no anonymous plugin)."""
        return {
            "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(password_file)},
            "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                # amqtt 0.12's Config dataclass knows ``acl`` (subscribe), not ``subscribe_acl``
                "acl": {name: list(u.subscribe) for name, u in self.users.items()},
                "publish_acl": {name: list(u.publish) for name, u in self.users.items()},
            },
        }


def demo_auth(device_ids: Iterable[str], control_user: str) -> BrokerAuth:
    """The demo's broker users, each with a fresh random password (``secrets``, 32
    URL-safe characters): ``control_user`` reads and writes ``continuum/v1/devices/#``;
    each device publishes on its own protocol topics and subscribes to its
    ``continuum/v1/devices/<id>/commands`` only — the topics of
    :data:`~edge_agent.protocol.DEVICE_PUBLISHES` and ``DEVICE_SUBSCRIBES``, as Mosquitto's
    ACL (:func:`control_plane.enrollment.acl_text`)."""
    def pw() -> str:
        return secrets.token_urlsafe(24)
    everything = (f"{TOPIC_PREFIX}/#",)
    users = {control_user: BrokerUser(pw(), everything, everything)}
    for d in device_ids:
        users[d] = BrokerUser(pw(), tuple(topic(d, leaf) for leaf in DEVICE_PUBLISHES),
                              tuple(topic(d, leaf) for leaf in DEVICE_SUBSCRIBES))
    return BrokerAuth(users)


class EmbeddedBroker:
    """amqtt listening on ``host:port`` (loopback), in a background thread: anonymous
    without ``auth``; with it, only ``auth``'s users, each within its ACL (its password
    file is written to ``password_file``, default ``<a fresh temp dir>/broker.passwd``)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *,
                 auth: BrokerAuth | None = None, password_file: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.auth = auth
        self.password_file = password_file
        self._loop = asyncio.new_event_loop()
        self._broker: Any = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="mqtt-broker",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start listening; raises RuntimeError if the broker does not come up in time."""
        from amqtt.broker import Broker

        for name in ("amqtt", "transitions"):
            if logging.getLogger(name).level == logging.NOTSET:  # the CLI may have set it
                logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("amqtt.broker").addFilter(PROBE_FILTER)  # a set: added once
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        if self.auth is not None:
            if self.password_file is None:
                self.password_file = Path(tempfile.mkdtemp(prefix="continuum-broker-")) / "broker.passwd"
            plugins = self.auth.plugins(self.auth.write_password_file(self.password_file))
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": plugins,
        }
        self._thread.start()

        # amqtt 0.12 reads the subscribe ACL from ``acl`` only, and warns that it is deprecated
        warnings.filterwarnings("ignore", message="The 'acl' option is deprecated",
                                category=DeprecationWarning)

        async def _start() -> None:
            self._broker = Broker(config)
            await self._broker.start()

        fut = asyncio.run_coroutine_threadsafe(_start(), self._loop)
        try:
            fut.result(timeout)
        except Exception as e:
            raise RuntimeError(f"embedded MQTT broker did not start on {self.url}: {e}") from e
        log.info("embedded MQTT broker listening on %s", self.url)

    def stop(self, timeout: float = 10.0) -> None:
        if self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                fut.result(timeout)
            except Exception:
                log.warning("embedded MQTT broker did not shut down cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
