"""Sealed secrets: site credentials are stored encrypted, opened only to build an adapter.

A :class:`Sealer` wraps cryptography's ``MultiFernet`` (AES-128-CBC + HMAC-SHA256,
https://cryptography.io/en/latest/fernet/): :meth:`Sealer.seal` encrypts with the first
(primary) key, :meth:`Sealer.unseal` tries every key, :meth:`Sealer.rotate` re-encrypts
with the primary. The keys come from ``CONTINUUM_SEALING_KEYS`` (comma-separated Fernet
keys, primary first) or ``<state_dir>/sealing.key`` (one key per line, primary first;
generated with mode 0600 on first use).

Which config keys of a site are secrets is :data:`SITE_SECRET_FIELDS`. In the store
(``sites.spec``) each such value is ``{"$sealed": "<Fernet token>"}``; in memory the
adapter gets the value itself; API answers show ``"<redacted>"``.

Rotation (docs/security.md "Sites and secrets")::

    continuum secrets new-key                       # prints a new Fernet key
    CONTINUUM_SEALING_KEYS=NEW,OLD continuum secrets rotate   # re-seal with NEW
    # then run the control plane with CONTINUUM_SEALING_KEYS=NEW
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeGuard

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from control_plane.keys import write_secret_once

log = logging.getLogger(__name__)

SEALED = "$sealed"
"""Key of the one-entry mapping a sealed value is stored as."""

REDACTED = "<redacted>"
"""What API answers show in place of a secret."""

SITE_SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "slurm": ("token", "jwtKey"),
    "kubernetes": ("kubeconfig",),
    "kubeedge": ("kubeconfig",),
    "devices": ("password",),
}
"""Per site kind, the ``config`` keys holding credentials: sealed at rest, never returned."""


class SealingError(ValueError):
    """A sealed value cannot be opened (no key of this control plane sealed it) or a key
    is not a Fernet key. The message never contains the value."""


class Sealer:
    """Seal and unseal byte strings with ``keys`` (urlsafe-base64 Fernet keys; the first
    one seals).

    Raises:
        SealingError: no key, or a key that is not 32 urlsafe-base64-encoded bytes.
    """

    def __init__(self, keys: Iterable[bytes]) -> None:
        ks = [k.strip() for k in keys if k.strip()]
        if not ks:
            raise SealingError("no sealing key given")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in ks])
        except ValueError as e:
            raise SealingError(f"a sealing key is not a Fernet key (32 url-safe base64 bytes; "
                               f"make one with `continuum secrets new-key`): {e}") from None
        self.key_count = len(ks)

    def seal(self, data: bytes) -> str:
        """Encrypt ``data`` with the primary key; a Fernet token (ASCII)."""
        return self._fernet.encrypt(data).decode()

    def unseal(self, token: str) -> bytes:
        """The plaintext of ``token``.

        Raises:
            SealingError: no key of this sealer opens it (sealed elsewhere, or tampered).
        """
        try:
            return self._fernet.decrypt(token.encode())
        except InvalidToken:
            raise SealingError("a sealed secret cannot be opened with the configured sealing "
                               "keys (CONTINUUM_SEALING_KEYS or <state_dir>/sealing.key): "
                               "was it sealed with a key that was dropped?") from None

    def rotate(self, token: str) -> str:
        """``token`` re-encrypted with the primary key.

        Raises:
            SealingError: as :meth:`unseal`.
        """
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise SealingError("a sealed secret cannot be opened with the configured sealing "
                               "keys; add the key it was sealed with after the new one") from None


def load_sealer(state_dir: Path, keys: str | None = None) -> Sealer:
    """The control plane's sealer: ``keys`` (comma-separated, the value of
    ``CONTINUUM_SEALING_KEYS``) or ``<state_dir>/sealing.key``, created with one new key
    (mode 0600) when missing.

    Raises:
        SealingError: a key is malformed.
    """
    if keys:
        return Sealer(k.encode() for k in keys.split(","))
    path = state_dir / "sealing.key"
    if not path.exists() and write_secret_once(path, Fernet.generate_key() + b"\n",
                                               private_dir=False):
        # atomic: replicas starting together on one state directory get the same key
        log.info("generated the sealing key for site secrets: %s (0600; back it up, losing "
                 "it loses the sealed credentials)", path)
    return Sealer(path.read_bytes().splitlines())


def is_sealed(value: Any) -> TypeGuard[dict[str, Any]]:
    """Whether ``value`` is a sealed secret as stored (``{"$sealed": token}``)."""
    return isinstance(value, dict) and set(value) == {SEALED}


def seal_config(kind: str, config: dict[str, Any], sealer: Sealer) -> dict[str, Any]:
    """A copy of a site ``config`` with its secrets (:data:`SITE_SECRET_FIELDS`) sealed,
    for the store. A mapping value (a parsed kubeconfig) is sealed as its JSON."""

    out = dict(config)
    for key in SITE_SECRET_FIELDS.get(kind, ()):
        v = out.get(key)
        if v is None or is_sealed(v):
            continue
        text = v if isinstance(v, str) else json.dumps(v)
        out[key] = {SEALED: sealer.seal(text.encode())}
    return out


def unseal_config(kind: str, config: dict[str, Any], sealer: Sealer) -> dict[str, Any]:
    """The inverse of :func:`seal_config` (a sealed mapping comes back as its JSON text,
    which YAML parsers read as well).

    Raises:
        SealingError: a value cannot be opened.
    """
    out = dict(config)
    for key in SITE_SECRET_FIELDS.get(kind, ()):
        v = out.get(key)
        if is_sealed(v):
            out[key] = sealer.unseal(str(v[SEALED])).decode()
    return out


def rotate_config(kind: str, config: dict[str, Any], sealer: Sealer, *,
                  clear_only: bool = False) -> tuple[dict[str, Any], int]:
    """``config`` with every sealed value re-sealed by the primary key (with
    ``clear_only``: left as is) and any secret still in clear sealed; returns it and how
    many values were written."""
    out = dict(config)
    n = 0
    for key in SITE_SECRET_FIELDS.get(kind, ()):
        v = out.get(key)
        if is_sealed(v):
            if clear_only:
                continue
            out[key] = {SEALED: sealer.rotate(str(v[SEALED]))}
            n += 1
        elif v is not None:
            out[key] = seal_config(kind, {key: v}, sealer)[key]
            n += 1
    return out, n


def redact_config(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` fit for an API answer or a log line: secrets → ``<redacted>``."""
    secret = set(SITE_SECRET_FIELDS.get(kind, ()))
    return {k: (REDACTED if k in secret and v else v) for k, v in config.items()}


__all__ = ["REDACTED", "SEALED", "SITE_SECRET_FIELDS", "Sealer", "SealingError", "is_sealed",
           "load_sealer", "redact_config", "rotate_config", "seal_config", "unseal_config"]
