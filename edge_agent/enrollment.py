"""``continuum-agent enroll``: exchange a one-time enrolment token for broker credentials.

:func:`enroll` calls the control plane's ``POST /v1/devices/enroll`` and stores the answer
as ``<state dir>/enrollment.json`` (mode 0600; it holds the broker password) and the
broker's CA as ``<state dir>/broker-ca.pem``. ``continuum-agent run`` then connects with
those credentials, over TLS verified against that CA (:func:`load`).
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

import msgspec

ENROLLMENT_FILE = "enrollment.json"
SERVER_CA_FILE = "server-ca.pem"
CA_FILE = "broker-ca.pem"


class EnrollmentError(Exception):
    """Enrolment failed; the message says why (the control plane's answer included)."""


class Enrollment(msgspec.Struct, kw_only=True, rename="camel"):
    """What enrolment gave this device (``enrollment.json``, camelCase keys; other keys
    are ignored)."""

    device_id: str
    site: str
    tenant: str
    broker_url: str
    username: str
    password: str
    ca_pem: str | None = None
    command_key: str
    """The control plane's Ed25519 public key (base64 of the raw 32 bytes)."""


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def enroll(server: str, token: str, device_id: str, state_dir: Path, *,
           server_ca: Path | None = None, timeout: float = 30.0) -> Enrollment:
    """Enrol this device with the control plane at ``server`` and store the result.

    Args:
        server: the control plane's API URL (``http(s)://host:port``).
        token: the one-time enrolment token (``POST /v1/devices/enrollment-tokens``).
        device_id: this device's id (its broker user name and topic level).
        state_dir: the agent's state directory (created, mode 0700).
        server_ca: CA bundle to verify an ``https`` API with (default: the system's).

    Raises:
        EnrollmentError: the control plane refused (the reason it gave) or was unreachable.
    """
    import httpx  # lazy: `continuum-agent run` reads the enrolment without it (lean agent)

    url = server.rstrip("/") + "/v1/devices/enroll"
    try:
        r = httpx.post(url, json={"token": token, "deviceId": device_id}, timeout=timeout,
                       verify=ssl.create_default_context(cafile=str(server_ca))
                       if server_ca else True)
    except httpx.HTTPError as e:
        raise EnrollmentError(f"could not reach {url}: {e}") from e
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise EnrollmentError(f"enrolment refused ({r.status_code}): {detail}")
    try:
        result = msgspec.json.decode(r.content, type=Enrollment)
    except msgspec.ValidationError as e:
        raise EnrollmentError(f"the control plane's answer is not an enrolment: {e}") from e
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if result.ca_pem:
        (state_dir / CA_FILE).write_text(result.ca_pem)
    if server_ca is not None:  # the runs' artifact transfers verify the API with it too
        (state_dir / SERVER_CA_FILE).write_bytes(Path(server_ca).read_bytes())
    _write_private(state_dir / ENROLLMENT_FILE,
                   json.dumps(msgspec.to_builtins(result), indent=2) + "\n")
    return result


def load(state_dir: Path) -> Enrollment | None:
    """The stored enrolment of ``state_dir``, or None if this device has not enrolled.

    Raises:
        EnrollmentError: the file exists but is unreadable or malformed.
    """
    path = state_dir / ENROLLMENT_FILE
    if not path.exists():
        return None
    try:
        return msgspec.json.decode(path.read_bytes(), type=Enrollment)
    except (OSError, msgspec.DecodeError) as e:
        raise EnrollmentError(f"{path} is not a valid enrolment: {e}") from e


def ca_path(state_dir: Path) -> Path | None:
    """``<state dir>/broker-ca.pem`` if enrolment stored a CA there."""
    p = state_dir / CA_FILE
    return p if p.exists() else None


def server_ca_path(state_dir: Path) -> Path | None:
    """``<state dir>/server-ca.pem`` if enrolment was given ``--server-ca`` (the CA of
    the control plane's API, for the runs' artifact transfers)."""
    p = state_dir / SERVER_CA_FILE
    return p if p.exists() else None
