"""The agent's configuration (:class:`AgentConfig`), validated with pydantic.

Every field is a ``continuum-agent run`` option and may also be given as an environment
variable ``CONTINUUM_AGENT_<FIELD>`` (e.g. ``CONTINUUM_AGENT_BROKER``); see :mod:`edge_agent.cli`.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from continuum.base import Tier
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


class AgentConfig(BaseModel):
    """What one ``continuum-agent`` needs. Units: seconds (s), cores, bytes."""

    model_config = ConfigDict(extra="forbid")

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
    labels: dict[str, str] = Field(default_factory=dict)
    rtt_peers: list[str] = Field(default_factory=list)
    """Peers whose round trip is measured with each telemetry: ``location=host:port``."""
    profile: str | None = None
    """A device profile (see :mod:`edge_agent.profiles`); ``None`` = this host's own figures."""
    state_dir: Path = Path("/var/lib/continuum-agent")
    """Working directories, the artifact cache and the outbox database live here."""
    telemetry_interval: float = Field(default=5.0, gt=0)
    """Seconds between telemetry messages (they double as the heartbeat)."""
    allow_command: list[str] = Field(default_factory=list)
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
    limit_cpu_seconds: int | None = Field(default=None, gt=0)
    """RLIMIT_CPU of each task process (CPU seconds); ``None`` = unlimited (the run's
    ``timeoutS`` bounds wall time)."""
    limit_address_space: int | None = Field(default=None, gt=0)
    """RLIMIT_AS of each task process (bytes of virtual memory); ``None`` = unlimited,
    because address space counts reservations (JVMs, Go and CUDA reserve far more than
    they use) and a ceiling below them breaks such programs."""
    limit_open_files: int | None = Field(default=1024, gt=0)
    """RLIMIT_NOFILE of each task process (descriptors); 1024 is the usual default."""
    limit_processes: int | None = Field(default=512, gt=0)
    """RLIMIT_NPROC of each task process: processes/threads of the run user in all (not
    enforced for root); 512 stops a fork bomb and leaves room for parallel builds."""
    max_cpu: float | None = Field(default=None, gt=0)
    """Largest cpu request (cores) accepted; ``None`` = the device's cpus."""
    max_memory: int | None = Field(default=None, gt=0)
    """Largest memory request (bytes) accepted; ``None`` = the device's memory."""
    kill_grace: float = Field(default=5.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when a run is cancelled or times out."""
    upload_deadline: float = Field(default=300.0, gt=0)
    """Seconds an output upload keeps retrying (the control plane may be restarting)."""
    keepalive: int = Field(default=30, ge=5)
    """MQTT keep-alive (s)."""
    reconnect_min: float = Field(default=RECONNECT_MIN_S, gt=0)
    reconnect_max: float = Field(default=RECONNECT_MAX_S, gt=0)
    """Bounds (s) of the jittered exponential reconnect backoff (see
    :mod:`edge_agent.protocol.session` for why these defaults)."""

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        if not _DEVICE_ID.match(v):
            raise ValueError(
                f"device id {v!r} must be 1-63 letters, digits, '_', '.' or '-' (no '/', '+', '#')"
            )
        return v

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        parse_broker_url(v)
        return v

    @field_validator("rtt_peers")
    @classmethod
    def _peers(cls, v: list[str]) -> list[str]:
        from edge_agent.telemetry import parse_peer

        for p in v:
            parse_peer(p)
        return v

    @field_validator("command_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None:
            from edge_agent.protocol.signing import public_key_bytes

            public_key_bytes(v)
        return v

    @field_validator("allow_command")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        for p in v:
            if not shlex.split(p):
                raise ValueError("an --allow-command prefix must not be empty")
        return v

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
