"""Signed commands: what the control plane signs and what the agent checks.

Every command (control plane → device) carries ``device_id`` (its addressee),
``issued_at``, ``expires_at`` (UTC), a random ``nonce`` and ``signature``: the base64
Ed25519 signature over :func:`canonical_json` of the payload's JSON object without its
``signature`` member. Both sides call this module, so there is one definition of the
signed bytes.

Canonical JSON: keys sorted, no whitespace (``separators=(",", ":")``), non-ASCII
characters as UTF-8 (``ensure_ascii=False``), numbers and strings as Python's ``json``
writes them. The agent verifies over the JSON object *as received* (parsed, then
canonicalised again), never over a re-serialised model, so a field the receiver's model
would normalise cannot change what was signed.

Why a command expires after :data:`COMMAND_TTL_S` (5 minutes) by default: long enough for
a QoS 1 command the broker queued for an agent that is reconnecting (agents keep a
persistent session) and for a modest clock skew between the two hosts; short enough that
a captured command is useless soon after, and that the nonces an agent must remember to
refuse replays stay few (it forgets a nonce once its command has expired). A command
queued longer than that (an agent offline for minutes) is refused as expired and
reported, so the control plane places the run again instead of it starting late.

Why the agent verifies with PyNaCl (libsodium) while the control plane signs with
``cryptography``: loading cryptography's Ed25519 (its own OpenSSL) costs a process about
8 MB of resident memory, PyNaCl about 2 MB (issue 16's lean agent,
``bench/agent_rss.sh``). An Ed25519 signature is the same bytes to both. Neither is
imported before it is needed: an idle agent holds its command key as the raw 32 bytes
(:func:`public_key_bytes`) and loads PyNaCl at the first command it verifies;
``cryptography`` only reads a PEM key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

COMMAND_TTL_S = 300.0
"""Default lifetime (s) of a signed command; see the module docstring for why."""
MAX_COMMAND_TTL_S = 3600.0
"""Longest lifetime (s) an agent accepts (``expires_at - issued_at``): it bounds how long
nonces are remembered."""
CLOCK_SKEW_S = 30.0
"""Tolerated clock difference (s): a command issued up to this far in the future is
accepted."""

Signer = Callable[[bytes], bytes]
"""``sign(message) -> raw 64-byte Ed25519 signature`` (e.g. ``Ed25519PrivateKey.sign``)."""


class CommandRefused(Exception):  # noqa: N818 - a refusal, named as the protocol says it
    """A command the agent does not obey. ``reason`` is one word (``unsigned``,
    ``bad-signature``, ``expired``, ``not-yet-valid``, ``misaddressed``, ``replayed``,
    ``malformed``); ``detail`` says more for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The signed bytes of a payload object: sorted keys, no whitespace, UTF-8; the
    ``signature`` member is left out."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def sign_command(cmd: msgspec.Struct, device_id: str, sign: Signer, *,
                 ttl_s: float = COMMAND_TTL_S, now: datetime | None = None) -> bytes:
    """Address, date, nonce and sign ``cmd``; returns the wire bytes (UTF-8 JSON).

    ``cmd`` is a command model (:class:`edge_agent.protocol.v1.SignedCommand`); it is not
    modified. ``ttl_s`` is the lifetime in seconds.
    """
    issued = now or datetime.now(UTC)
    obj: dict[str, Any] = msgspec.to_builtins(msgspec.structs.replace(
        cmd, device_id=device_id, issued_at=issued,
        expires_at=issued + timedelta(seconds=ttl_s), nonce=secrets.token_hex(16),
        signature=None))
    obj["signature"] = base64.b64encode(sign(canonical_json(obj))).decode()
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def verify_signature(obj: Mapping[str, Any], key: Ed25519PublicKey | bytes) -> None:
    """Check ``obj['signature']`` against :func:`canonical_json` of ``obj``; ``key`` is the
    public key, or its raw 32 bytes (:func:`public_key_bytes`).

    Raises:
        CommandRefused: ``unsigned`` (no signature) or ``bad-signature`` (not base64, or
            not made by the key's private half over these bytes).
    """
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    sig = obj.get("signature")
    if not sig:
        raise CommandRefused("unsigned", "the command carries no signature")
    try:
        raw = base64.b64decode(str(sig), validate=True)
        VerifyKey(key if isinstance(key, bytes) else key.public_bytes_raw()).verify(
            canonical_json(obj), raw)
    except (binascii.Error, ValueError, BadSignatureError) as e:
        raise CommandRefused("bad-signature", "the signature does not match the control "
                             "plane's command key (is this agent enrolled with this control "
                             "plane?)") from e


def check_validity(device_id: str, addressee: str, issued_at: datetime, expires_at: datetime,
                   now: datetime | None = None) -> None:
    """Check a verified command's addressee and validity window.

    Raises:
        CommandRefused: ``misaddressed``, ``expired``, ``not-yet-valid`` or ``malformed``
            (a lifetime longer than :data:`MAX_COMMAND_TTL_S` or negative).
    """
    now = now or datetime.now(UTC)
    if addressee != device_id:
        raise CommandRefused("misaddressed", f"addressed to device {addressee!r}, this is "
                             f"{device_id!r}")
    life = (expires_at - issued_at).total_seconds()
    if life <= 0 or life > MAX_COMMAND_TTL_S:
        raise CommandRefused("malformed", f"lifetime of {life:g} s is outside (0, "
                             f"{MAX_COMMAND_TTL_S:g}] s")
    if now > expires_at:
        raise CommandRefused("expired", f"expired at {expires_at.isoformat()} "
                             f"({(now - expires_at).total_seconds():.0f} s ago)")
    if issued_at > now + timedelta(seconds=CLOCK_SKEW_S):
        raise CommandRefused("not-yet-valid", f"issued at {issued_at.isoformat()}, more than "
                             f"{CLOCK_SKEW_S:g} s in this device's future (clocks out of sync?)")


def encode_public_key(key: Ed25519PublicKey) -> str:
    """Base64 of the raw 32-byte public key (what enrolment hands out as ``commandKey``)."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public_key(value: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from base64 of its raw 32 bytes, raw bytes, PEM text, or the
    path of a file holding any of those.

    Raises:
        ValueError: none of these, or not an Ed25519 key (the message says which).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(public_key_bytes(value))


def public_key_bytes(value: str | bytes) -> bytes:
    """The raw 32 bytes of an Ed25519 public key given as :func:`load_public_key` takes it;
    only PEM loads ``cryptography`` (any 32 bytes are a key to it: it checks the length).

    Raises:
        ValueError: none of these forms, or not an Ed25519 key (the message says which).
    """
    if isinstance(value, str) and value and os.path.isfile(value):
        value = Path(value).read_bytes()
    data = value.encode() if isinstance(value, str) else bytes(value)
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(text)
        except ValueError as e:
            raise ValueError(f"not a PEM public key: {e}") from e
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"the PEM key is {type(key).__name__}, not Ed25519")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if len(data) == 32:
        return data
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("a command key must be base64 of 32 raw bytes, PEM, or a file "
                         "holding one") from e
    if len(raw) != 32:
        raise ValueError(f"a command key is 32 raw bytes; this base64 decodes to {len(raw)}")
    return raw
