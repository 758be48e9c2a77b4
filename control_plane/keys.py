"""The control plane's Ed25519 command key (issue 12, trust design D).

``<state_dir>/auth/command.key`` holds the private key (PEM, PKCS#8, unencrypted, mode
0600, its directory 0700), generated on first use. Enrolment hands the public key to each
device as ``commandKey`` (base64 of the raw 32 bytes); the agent verifies signed commands
with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def command_key_path(state_dir: Path) -> Path:
    """``<state_dir>/auth/command.key``."""
    return Path(state_dir) / "auth" / "command.key"


def command_private_key(state_dir: Path) -> Ed25519PrivateKey:
    """The control plane's command signing key, generated (0600) if there is none yet.

    Raises:
        ValueError: the key file exists but is not a PEM Ed25519 private key.
        OSError: the state directory cannot be written.
    """
    path = command_key_path(state_dir)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        try:  # O_EXCL: of two processes generating at once, one key wins
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def command_public_key(state_dir: Path) -> bytes:
    """The raw 32-byte Ed25519 public key of :func:`command_private_key`."""
    return command_private_key(state_dir).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
