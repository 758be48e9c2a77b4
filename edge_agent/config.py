"""The agent's configuration (:class:`AgentConfig`), a msgspec Struct checked on creation.

Every field is a ``continuum-agent run`` option and may also be given as an environment
variable ``CONTINUUM_AGENT_<FIELD>`` (e.g. ``CONTINUUM_AGENT_BROKER``); see :mod:`edge_agent.cli`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msgspec import Struct, field

from continuum.tier import Tier
from edge_agent.protocol.session import (
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    BrokerAddress,
    parse_broker_url,
)

ENV_PREFIX = "CONTINUUM_AGENT_"
ENROLLMENT_FILE = "enrollment.json"
"""In the state directory: what ``continuum-agent enroll`` received (``commandKey``, ...)."""
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


_POSITIVE = ("telemetry_interval", "limit_cpu_seconds", "limit_address_space", "limit_open_files",
             "limit_processes", "max_cpu", "max_memory", "upload_deadline", "reconnect_min",
             "reconnect_max")
"""Fields that must be > 0 when given."""


class AgentConfig(Struct, kw_only=True):
    """What one ``continuum-agent`` needs. Units: seconds (s), cores, bytes.

    Checked when created (``__post_init__``); paths given as strings become
    :class:`~pathlib.Path`.

    Raises:
        ValueError: a field out of range or malformed; the message names the field.
    """

    broker: str = "mqtt://127.0.0.1:1883"
    """Broker URL, ``mqtt://host:port`` or ``mqtts://host:port`` (TLS)."""
    tls_ca: Path | None = None
    """CA bundle that signed the broker's certificate (PEM); implies TLS."""
    tls_insecure: bool = False
    """Skip the broker certificate's host-name check (testing only)."""
    server_ca: Path | None = None
    """CA bundle (PEM) that signed the control plane's API certificate, for the artifact
    transfers of runs over ``https``; ``None`` = the system's CAs."""
    username: str | None = None
    password: str | None = None
    device_id: str
    """This device's id: the ``{device_id}`` of its topics (letters, digits, ``_.-``)."""
    location: str = "unknown"
    """A location name known to the control plane's topology (e.g. ``lab-1``)."""
    tier: Tier = Tier.device
    labels: dict[str, str] = field(default_factory=dict)
    rtt_peers: list[str] = field(default_factory=list)
    """Peers whose round trip is measured with each telemetry: ``location=host:port``."""
    profile: str | None = None
    """A device profile (see :mod:`edge_agent.profiles`); ``None`` = this host's own figures."""
    state_dir: Path = Path("/var/lib/continuum-agent")
    """Working directories, the artifact cache and the outbox database live here."""
    telemetry_interval: float = 5.0
    """Seconds between telemetry messages (they double as the heartbeat)."""
    allow_command: list[str] = field(default_factory=list)
    """Command prefixes this device runs (shell-like tokens, e.g. ``python3`` or
    ``/usr/bin/env python3``); empty = any command. The first token is compared as the
    program it resolves to (``shutil.which`` on the runs' PATH, then every symlink
    followed), the rest token by token. Allowing an interpreter allows any code."""
    command_key: str | None = None
    """The control plane's command key (Ed25519 public key: base64 of its 32 raw bytes,
    PEM, or a file holding either); ``None`` = ``commandKey`` of
    ``<state_dir>/enrollment.json`` (written by ``continuum-agent enroll``)."""
    insecure_accept_unsigned: bool = False
    """Obey commands without checking their signature (no command key needed). Anyone who
    can publish on the device's commands topic then runs anything: testing only."""
    run_as: str | None = None
    """User that tasks run as. ``None``: ``continuum-run`` when the agent runs as root
    (created by the installer), else the agent's own user. ``root`` must be said
    explicitly."""
    limit_cpu_seconds: int | None = None
    """RLIMIT_CPU of each task process (CPU seconds); ``None`` = unlimited (the run's
    ``timeoutS`` bounds wall time)."""
    limit_address_space: int | None = None
    """RLIMIT_AS of each task process (bytes of virtual memory); ``None`` = unlimited,
    because address space counts reservations (JVMs, Go and CUDA reserve far more than
    they use) and a ceiling below them breaks such programs."""
    limit_open_files: int | None = 1024
    """RLIMIT_NOFILE of each task process (descriptors); 1024 is the usual default."""
    limit_processes: int | None = 512
    """RLIMIT_NPROC of each task process: processes/threads of the run user in all (not
    enforced for root); 512 stops a fork bomb and leaves room for parallel builds."""
    max_cpu: float | None = None
    """Largest cpu request (cores) accepted; ``None`` = the device's cpus."""
    max_memory: int | None = None
    """Largest memory request (bytes) accepted; ``None`` = the device's memory."""
    kill_grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL when a run is cancelled or times out."""
    upload_deadline: float = 300.0
    """Seconds an output upload keeps retrying (the control plane may be restarting)."""
    keepalive: int = 30
    """MQTT keep-alive (s)."""
    reconnect_min: float = RECONNECT_MIN_S
    reconnect_max: float = RECONNECT_MAX_S
    """Bounds (s) of the jittered exponential reconnect backoff (see
    :mod:`edge_agent.protocol.session` for why these defaults)."""

    def __post_init__(self) -> None:
        for name in ("tls_ca", "server_ca", "state_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        self.tier = Tier(self.tier)
        _check("device_id", self.device_id, _device_id)
        _check("broker", self.broker, parse_broker_url)
        _check("rtt_peers", self.rtt_peers, _peers)
        _check("command_key", self.command_key, _key)
        _check("allow_command", self.allow_command, _allow)
        for name in _POSITIVE:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: must be greater than 0, got {value!r}")
        if self.kill_grace < 0:
            raise ValueError(f"kill_grace: must be greater than or equal to 0, got {self.kill_grace!r}")
        if self.keepalive < 5:
            raise ValueError(f"keepalive: must be greater than or equal to 5, got {self.keepalive!r}")

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.broker)

    def command_public_key(self) -> bytes | None:
        """The key commands must be signed with, as its raw 32 bytes (what
        :func:`~edge_agent.protocol.signing.verify_signature` takes): ``command_key``, else
        ``commandKey`` of ``<state_dir>/enrollment.json``; ``None`` when neither is there.

        Raises:
            ValueError: the enrolment file is not JSON or its ``commandKey`` is no key.
        """
        from edge_agent.protocol.signing import public_key_bytes

        if self.command_key is not None:
            return public_key_bytes(self.command_key)
        path = self.state_dir / ENROLLMENT_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the enrolment: {e}") from e
        key = data.get("commandKey") if isinstance(data, dict) else None
        if not key:
            return None
        try:
            return public_key_bytes(str(key))
        except ValueError as e:
            raise ValueError(f"{path}: commandKey: {e}") from e


def _check(name: str, value: Any, check: Callable[[Any], object]) -> None:
    """Run ``check`` on ``value``; its ValueError is raised again with the field's name."""
    try:
        check(value)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e


def _device_id(v: str) -> None:
    if not _DEVICE_ID.match(v):
        raise ValueError(
            f"device id {v!r} must be 1-63 letters, digits, '_', '.' or '-' (no '/', '+', '#')"
        )


def _peers(v: list[str]) -> None:
    from edge_agent.telemetry import parse_peer

    for p in v:
        parse_peer(p)


def _key(v: str | None) -> None:
    if v is not None:
        from edge_agent.protocol.signing import public_key_bytes

        public_key_bytes(v)


def _allow(v: list[str]) -> None:
    for p in v:
        if not shlex.split(p):
            raise ValueError("an --allow-command prefix must not be empty")
