"""Per-run artifact capabilities: who may upload an output or download an input.

When a run is dispatched the control plane hands it artifact URLs that carry a
capability in their query, ``…/v1/artifacts/{workflow}/{name}?run={run}&cap={token}``
(the agent, the Slurm batch script and the Kubernetes pod use the URLs as given). The
token is ``<expiry>.<mac>``: ``expiry`` in Unix seconds, ``mac`` the URL-safe base64
(unpadded) of HMAC-SHA256 with the control plane's key (``<state_dir>/auth/artifact.key``,
0600, generated on first use) over ``continuum-artifact-v1``, the workflow id, run id,
artifact name, mode (``read`` | ``write``) and the expiry. It is minted only for the
run's declared outputs (write) and inputs (read), so it opens nothing else.

``python -m control_plane.artifact_access STATE_DIR WORKFLOW RUN NAME read|write
[API_URL]`` prints such a URL (valid an hour) for an operator who holds the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

from control_plane.keys import secret_key


class Mode(StrEnum):
    read = "read"
    write = "write"


class CapabilityRefused(Exception):
    """A capability that does not open what it was presented for; ``str()`` says why."""


def artifact_key_path(state_dir: Path) -> Path:
    """``<state_dir>/auth/artifact.key``."""
    return Path(state_dir) / "auth" / "artifact.key"


class ArtifactCapabilities:
    """Mints and checks capabilities with ``key`` (bytes); ``ttl_s``: their lifetime (s)."""

    def __init__(self, key: bytes, ttl_s: float) -> None:
        self._key = key
        self.ttl_s = ttl_s

    @classmethod
    def for_state_dir(cls, state_dir: Path, ttl_s: float) -> ArtifactCapabilities:
        """With the key of ``state_dir`` (generated if absent). Raises OSError, ValueError
        (see :func:`control_plane.keys.secret_key`)."""
        return cls(secret_key(artifact_key_path(state_dir)), ttl_s)

    def _mac(self, workflow_id: str, run_id: str, name: str, mode: Mode, expiry: int) -> str:
        msg = "\n".join(("continuum-artifact-v1", workflow_id, run_id, name, mode.value,
                         str(expiry))).encode()
        digest = hmac.new(self._key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, workflow_id: str, run_id: str, name: str, mode: Mode,
              now: float | None = None) -> str:
        """The token letting run ``run_id`` ``mode`` artifact ``name`` of the workflow
        until ``now + ttl_s`` (``now``: Unix seconds, default the current time)."""
        expiry = int((time.time() if now is None else now) + self.ttl_s)
        return f"{expiry}.{self._mac(workflow_id, run_id, name, mode, expiry)}"

    def url(self, api_url: str, workflow_id: str, run_id: str, name: str, mode: Mode,
            now: float | None = None) -> str:
        """The artifact's URL on ``api_url`` carrying ``run`` and its capability."""
        token = self.issue(workflow_id, run_id, name, mode, now)
        return (f"{api_url}/v1/artifacts/{workflow_id}/{quote(name)}"
                f"?run={quote(run_id)}&cap={token}")

    def check(self, token: str, workflow_id: str, run_id: str, name: str, mode: Mode,
              now: float | None = None) -> None:
        """Check ``token`` lets ``run_id`` ``mode`` this artifact now.

        Raises:
            CapabilityRefused: malformed, not minted for this workflow, run, artifact and
                mode (a forged one is indistinguishable), or expired.
        """
        exp, _, mac = token.partition(".")
        if not exp.isdigit() or not mac:
            raise CapabilityRefused("the capability is malformed (expected EXPIRY.MAC as "
                                    "handed to the run)")
        expiry = int(exp)
        want = self._mac(workflow_id, run_id, name, mode, expiry)
        if not hmac.compare_digest(want.encode(), mac.encode()):
            raise CapabilityRefused(f"the capability does not let run {run_id} {mode.value} "
                                    f"artifact {name!r} of workflow {workflow_id}")
        if expiry < (time.time() if now is None else now):
            raise CapabilityRefused(f"the capability expired at {expiry} (Unix time); runs "
                                    "get a new one when dispatched")


__all__ = ["ArtifactCapabilities", "CapabilityRefused", "Mode", "artifact_key_path"]


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (6, 7) or sys.argv[5] not in ("read", "write"):
        sys.exit("usage: python -m control_plane.artifact_access STATE_DIR WORKFLOW RUN NAME "
                 "read|write [API_URL]  (prints the artifact URL with the capability dispatch "
                 "would hand that run; needs read access to STATE_DIR/auth/artifact.key)")
    _, state, wf, run_id, art, mode = sys.argv[:6]
    api = sys.argv[6] if len(sys.argv) == 7 else "http://127.0.0.1:8080"
    print(ArtifactCapabilities.for_state_dir(Path(state), 3600).url(
        api.rstrip("/"), wf, run_id, art, Mode(mode)))
