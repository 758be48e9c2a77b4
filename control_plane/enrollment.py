"""Device enrolment and the broker's password file and ACL (issue 12, items 4 and 6).

* :meth:`Enrollment.create_token` — a one-time, expiring enrolment token bound to a
  ``devices`` site and a tenant; only its SHA-256 is stored.
* :meth:`Enrollment.enroll` — exchanges a token for the device's broker credentials (user
  name = device id, a random password whose Mosquitto ``$7$`` hash alone is stored), the
  broker's CA and the control plane's command key. A device belongs to exactly one site.
* :meth:`Enrollment.revoke` — the device's password line leaves the password file and the
  broker is reloaded (SIGHUP): Mosquitto 2.0 then disconnects a connected client whose user
  is gone, and refuses its reconnects (tests/adapters/test_devices_trust.py).
* :meth:`Enrollment.sync_broker` — writes the password file (lines of users the control
  plane does not manage, e.g. its own, are kept) and the pattern ACL, then reloads.

Settings: :class:`control_plane.settings.DeviceSettings`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from continuum.errors import Conflict, NotFound, TransientError
from continuum.model import SiteKind
from control_plane.keys import command_public_key
from control_plane.settings import DeviceSettings, StoreSettings
from control_plane.store import DeviceCredentialRow, EnrollmentTokenRow, Store
from edge_agent.protocol import DEVICE_PUBLISHES, DEVICE_SUBSCRIBES, TOPIC_PREFIX

log = logging.getLogger(__name__)

MOSQUITTO_ITERATIONS = 101
"""PBKDF2 iterations of Mosquitto 2.0's ``$7$`` hashes (what ``mosquitto_passwd`` uses)."""
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
"""A device id: also its broker user name and a topic level (no ``/``, ``+``, ``#``)."""
TENANT = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class EnrollmentRefused(Exception):
    """An enrolment token was not accepted; ``status`` is the HTTP status to answer
    (401 unknown, 409 already used, 410 expired)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def mosquitto_hash(password: str, *, salt: bytes | None = None,
                   iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>``, the password hash
    format of Mosquitto 2.0's ``password_file`` (12-byte random salt by default)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def acl_text(control_user: str) -> str:
    """The pattern ACL: each device (user name = device id) publishes only on its own
    :data:`~edge_agent.protocol.DEVICE_PUBLISHES` topics and reads only its own
    :data:`~edge_agent.protocol.DEVICE_SUBSCRIBES`; ``control_user`` reads and writes
    every protocol topic."""
    dev = f"{TOPIC_PREFIX}/%u"
    return "\n".join([
        "# Written by the Continuum control plane (control_plane/enrollment.py);",
        "# it is rewritten on every enrolment and revocation.",
        f"user {control_user}",
        f"topic readwrite {TOPIC_PREFIX}/#",
        "",
        *(f"pattern write {dev}/{leaf}" for leaf in DEVICE_PUBLISHES),
        *(f"pattern read {dev}/{leaf}" for leaf in DEVICE_SUBSCRIBES),
        "",
    ])


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping its mode (0600 when new) and group."""
    try:
        st = path.stat()
        mode, gid = st.st_mode & 0o777, st.st_gid
    except FileNotFoundError:
        mode, gid = 0o600, -1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        if gid != -1 and os.geteuid() == 0:
            os.chown(tmp, -1, gid)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Enrollment:
    """Enrolment tokens, device credentials and the broker files of one control plane.

    Args:
        store: where tokens and credentials are kept.
        settings: the device settings (files, control user, default token lifetime) and
            the state directory (the command key).
        site_config: ``name -> (kind, config)`` of a registered site; raises NotFound.
        clock: wall-clock seconds (tests may substitute it).
    """

    def __init__(self, store: Store, settings: Any,
                 site_config: Callable[[str], tuple[SiteKind, dict[str, Any]]],
                 clock: Callable[[], float] | None = None) -> None:
        self.store = store
        self.settings: DeviceSettings = settings
        store_settings: StoreSettings = settings
        self._command_key = base64.b64encode(command_public_key(store_settings.state_dir)).decode()
        """What enrolment hands out as ``commandKey`` (read once: it never changes)."""
        self._site_config = site_config
        self._clock = clock
        self._lock = threading.Lock()
        with store.session() as s:
            self._enrolled = {(r.site, r.device_id) for r in s.scalars(
                select(DeviceCredentialRow).where(DeviceCredentialRow.revoked_at.is_(None)))}

    def _now(self) -> datetime:
        return (datetime.fromtimestamp(self._clock(), UTC) if self._clock
                else datetime.now(UTC))

    def is_enrolled(self, site: str, device_id: str) -> bool:
        """Whether ``device_id`` is enrolled in ``site`` and not revoked (in memory)."""
        with self._lock:
            return (site, device_id) in self._enrolled

    def _devices_site(self, site: str) -> dict[str, Any]:
        kind, config = self._site_config(site)
        if kind != SiteKind.devices:
            raise NotFound(f"site {site!r} is a {kind.value} site; devices enrol only in "
                           "devices sites")
        return config

    # ------------------------------------------------------------ tokens

    def create_token(self, site: str, tenant: str, ttl_s: float | None = None
                     ) -> dict[str, Any]:
        """A one-time enrolment token for ``site`` and ``tenant``.

        Returns ``{"token": str, "site", "tenant", "expiresAt": ISO 8601 UTC}``; the token
        is shown only here (the store keeps its SHA-256).

        Raises:
            NotFound: no such site, or not a devices site.
        """
        self._devices_site(site)
        ttl = ttl_s if ttl_s is not None else self.settings.enrollment_token_ttl_s
        token = "cet_" + secrets.token_urlsafe(32)
        expires = self._now() + timedelta(seconds=ttl)
        with self.store.session() as s:
            s.add(EnrollmentTokenRow(token_sha256=_sha256(token), site=site, tenant=tenant,
                                     expires_at=expires, created_at=self._now()))
        log.info("enrolment token for site %s (tenant %s) created, expires %s", site, tenant,
                 expires.isoformat())
        return {"token": token, "site": site, "tenant": tenant,
                "expiresAt": expires.isoformat()}

    # ------------------------------------------------------------ enrol / revoke

    def enroll(self, token: str, device_id: str) -> dict[str, Any]:
        """Exchange ``token`` for ``device_id``'s broker credentials.

        Returns ``{"deviceId", "site", "tenant", "brokerUrl", "username", "password",
        "caPem" (str | None), "commandKey" (base64 of the raw 32-byte Ed25519 key)}``.
        The password is shown only here.

        Raises:
            EnrollmentRefused: the token is unknown (401), already used (409) or expired
                (410).
            Conflict: the device is enrolled in another site, or its id is a broker user
                the control plane does not manage (e.g. its own).
            TransientError: the broker could not be reloaded (the credentials are stored;
                the device connects once the broker reloads).
        """
        digest = _sha256(token)
        now = self._now()
        password = secrets.token_urlsafe(24)
        pw_hash = mosquitto_hash(password)
        if device_id == self.settings.broker_control_user or device_id in self._foreign_users():
            raise Conflict(f"device id {device_id!r} is a broker user the control plane does "
                           "not manage; choose another deviceId")
        with self.store.session() as s:
            row = s.get(EnrollmentTokenRow, digest)
            if row is None:
                raise EnrollmentRefused(401, "enrolment token is not valid (unknown)")
            if row.used_at is not None:
                raise EnrollmentRefused(409, "enrolment token was already used at "
                                        f"{row.used_at.isoformat()}; ask for a new one")
            if row.expires_at <= now:
                raise EnrollmentRefused(410, "enrolment token expired at "
                                        f"{row.expires_at.isoformat()}; ask for a new one")
            existing = s.get(DeviceCredentialRow, device_id)
            if existing is not None and existing.site != row.site and existing.revoked_at is None:
                raise Conflict(f"device {device_id!r} is enrolled in site {existing.site!r}; "
                               "a device belongs to exactly one site (revoke it there first)")
            # one-time: only the first of two concurrent exchanges marks it used
            claimed = cast(CursorResult[Any], s.execute(update(EnrollmentTokenRow)
                                .where(EnrollmentTokenRow.token_sha256 == digest,
                                       EnrollmentTokenRow.used_at.is_(None))
                                .values(used_at=now, used_by=device_id))).rowcount
            if claimed != 1:
                raise EnrollmentRefused(409, "enrolment token was already used; ask for a "
                                        "new one")
            site, tenant = row.site, row.tenant
            if existing is None:
                s.add(DeviceCredentialRow(device_id=device_id, site=site, tenant=tenant,
                                          password_hash=pw_hash, enrolled_at=now))
            else:
                existing.site, existing.tenant, existing.password_hash = site, tenant, pw_hash
                existing.enrolled_at, existing.revoked_at = now, None
        with self._lock:
            self._enrolled = {e for e in self._enrolled if e[1] != device_id}
            self._enrolled.add((site, device_id))
        log.info("device %s enrolled in site %s (tenant %s)", device_id, site, tenant)
        config = self._devices_site(site)
        ca = config.get("tlsCa")
        ca_pem = (None if not ca else ca if ca.lstrip().startswith("-----BEGIN")
                  else Path(ca).read_text())  # the site's CA: a PEM file path, or PEM
        self.sync_broker()
        return {"deviceId": device_id, "site": site, "tenant": tenant,
                "brokerUrl": config.get("broker"), "username": device_id,
                "password": password, "caPem": ca_pem,
                "commandKey": self._command_key}

    def revoke(self, site: str, device_id: str) -> dict[str, Any]:
        """Revoke ``device_id``'s broker credentials: its password line is removed and the
        broker reloaded, which disconnects it and refuses it from then on.

        Returns ``{"site", "deviceId", "revoked": true, "revokedAt"}``.

        Raises:
            NotFound: the device is not enrolled in ``site`` (or already revoked).
            TransientError: the broker could not be reloaded.
        """
        now = self._now()
        with self.store.session() as s:
            row = s.get(DeviceCredentialRow, device_id)
            if row is None or row.site != site or row.revoked_at is not None:
                raise NotFound(f"device {device_id!r} has no credentials in site {site!r}")
            row.revoked_at = now
        with self._lock:
            self._enrolled.discard((site, device_id))
        log.info("device %s of site %s: broker credentials revoked", device_id, site)
        self.sync_broker()
        return {"site": site, "deviceId": device_id, "revoked": True,
                "revokedAt": now.isoformat()}

    # ------------------------------------------------------------ broker files

    def _foreign_users(self) -> set[str]:
        """Users of the password file the control plane does not manage."""
        path = self.settings.broker_password_file
        if path is None or not path.exists():
            return set()
        with self.store.session() as s:
            managed = set(s.scalars(select(DeviceCredentialRow.device_id)))
        users = {line.split(":", 1)[0] for line in path.read_text().splitlines()
                 if ":" in line and not line.startswith("#")}
        return users - managed

    def sync_broker(self, *, reload: bool = True) -> None:
        """Write the password file and the ACL (those configured) and reload the broker.

        Raises:
            TransientError: the broker's pid file cannot be read or the signal failed.
        """
        pw_path, acl_path = self.settings.broker_password_file, self.settings.broker_acl_file
        if pw_path is None and acl_path is None:
            return
        with self._lock:  # one writer of the files at a time
            if pw_path is not None:
                with self.store.session() as s:
                    rows = list(s.scalars(select(DeviceCredentialRow)))
                managed = {r.device_id for r in rows}
                kept = [line for line in (pw_path.read_text().splitlines()
                                          if pw_path.exists() else [])
                        if line.strip() and line.split(":", 1)[0] not in managed]
                lines = kept + [f"{r.device_id}:{r.password_hash}" for r in
                                sorted(rows, key=lambda r: r.device_id) if r.revoked_at is None]
                _atomic_write(pw_path, "\n".join(lines) + "\n")
                control = self.settings.broker_control_user
                if not any(line.startswith(f"{control}:") for line in kept):
                    log.warning("%s has no line for the control plane's broker user %r; add "
                                "it with: mosquitto_passwd %s %s", pw_path, control, pw_path,
                                control)
            if acl_path is not None:
                _atomic_write(acl_path, acl_text(self.settings.broker_control_user))
        if reload:
            self.reload_broker()

    def reload_broker(self) -> None:
        """SIGHUP the broker named by ``broker_pid_file`` (nothing if none is configured).

        Raises:
            TransientError: the pid file cannot be read or no such process.
        """
        pid_file = self.settings.broker_pid_file
        if pid_file is None:
            return
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as e:
            raise TransientError(f"could not reload the broker (pid file {pid_file}): {e}; "
                                 "the credentials are stored, reload it by hand "
                                 "(kill -HUP <pid>)", retry_after=5.0) from e
        log.info("broker (pid %d) reloaded its password file and ACL", pid)
