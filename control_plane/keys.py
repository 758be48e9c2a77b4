"""The control plane's keys: the command-signing key (Ed25519) and symmetric secret keys
(:func:`secret_key`, e.g. the artifact-capability key ``<state_dir>/auth/artifact.key``).

The private key lives in ``<state_dir>/auth/command.key`` (PEM, PKCS#8, mode 0600 in a
0700 directory), generated on first use; whoever reads it can make every enrolled agent
run anything, so it is among the files an operator must protect (docs/security.md). Its
public half is what enrolment hands a device (``commandKey``, base64 of the raw 32 bytes)
and what ``continuum-agent run --command-key`` takes; ``python -m control_plane.keys
STATE_DIR`` prints it.
"""

from __future__ import annotations

import base64
import logging
import os
import sys
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

_LOCK = threading.Lock()


def write_secret_once(path: Path, data: bytes, *, private_dir: bool = True) -> bool:
    """Write ``data`` to ``path`` with mode 0600 unless the file exists; atomic, and never
    replaces a file another process just wrote. ``private_dir``: also make its directory
    0700 (a keys directory; not the state directory itself).

    Returns True when this call wrote it.

    Raises:
        OSError: the directory cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if private_dir:
        os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def secret_key(path: Path, size: int = 32) -> bytes:
    """A random symmetric key of ``size`` bytes kept in ``path`` (raw bytes, 0600 in a
    0700 directory), generated on first use; e.g. the artifact-capability HMAC key
    ``<state_dir>/auth/artifact.key``.

    Raises:
        ValueError: the file exists but holds fewer than 16 bytes.
        OSError: the directory cannot be written.
    """
    path = Path(path)
    with _LOCK:
        if not path.exists() and write_secret_once(path, os.urandom(size)):
            log.info("secret key generated in %s", path)
        key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path} holds {len(key)} bytes; a key needs at least 16")
    return key


def command_key_path(state_dir: Path) -> Path:
    """``<state_dir>/auth/command.key``."""
    return Path(state_dir) / "auth" / "command.key"


def command_signing_key(state_dir: Path) -> Ed25519PrivateKey:
    """The control plane's Ed25519 command-signing key, generated into
    ``<state_dir>/auth/command.key`` (0600) when absent.

    Raises:
        ValueError: the file exists but is not a PEM Ed25519 private key.
        OSError: the state directory cannot be written.
    """
    path = command_key_path(state_dir)
    with _LOCK:
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            if write_secret_once(path, key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption())):
                log.info("command-signing key generated in %s", path)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not an Ed25519 private key")
    return loaded


def command_public_key(state_dir: Path) -> bytes:
    """The raw 32-byte public half of :func:`command_signing_key` (generating it if absent)."""
    return command_signing_key(state_dir).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m control_plane.keys STATE_DIR  (prints the base64 command "
                 "key agents verify with; generates it if absent)")
    print(base64.b64encode(command_public_key(Path(sys.argv[1]))).decode())
