"""The artifact store: outputs of runs kept by the control plane, served to dependants.

Files live under ``<state_dir>/artifacts/<workflow_id>/<sha256>``; the
:class:`~control_plane.store.ArtifactRow` maps ``(workflow_id, name)`` to the current
digest and size. Writes go to a temporary file that is fsynced and renamed, so a crash
never leaves a half-written artifact behind a name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from adapters.base import ArtifactRecord
from control_plane.store import ArtifactRow, Store, utcnow

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,254}$")


def check_name(name: str) -> str:
    """Artifact names are relative paths of letters, digits, ``._-/`` with no ``..``.

    Raises:
        ValueError: the name could escape the artifact directory or is empty.
    """
    if not _SAFE_NAME.match(name) or ".." in name.split("/"):
        raise ValueError(
            f"artifact name {name!r} is not allowed: use letters, digits, '.', '_', '-' "
            "and '/' (no '..', at most 255 characters)"
        )
    return name


class LocalArtifactStore:
    """Implements :class:`adapters.base.ArtifactStore` on a local directory."""

    def __init__(self, root: Path, store: Store):
        self.root = root
        self.store = store
        root.mkdir(parents=True, exist_ok=True)

    def _blob(self, workflow_id: str, sha256: str) -> Path:
        return self.root / workflow_id / sha256

    def put_stream(self, workflow_id: str, name: str, chunks: Iterable[bytes], *,
                   simulated: bool = False, run_id: str | None = None,
                   node: str | None = None) -> ArtifactRecord:
        """Keep the bytes of ``chunks`` as artifact ``name`` of the workflow."""
        check_name(name)
        d = self.root / workflow_id
        d.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = h.hexdigest()
            os.replace(tmp, self._blob(workflow_id, digest))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self.store.session() as s:
            row = s.get(ArtifactRow, (workflow_id, name))
            if row is None:
                row = ArtifactRow(workflow_id=workflow_id, name=name)
                s.add(row)
            row.sha256, row.size, row.simulated = digest, size, simulated
            row.run_id, row.node, row.created_at = run_id, node, utcnow()
        return ArtifactRecord(name=name, sha256=digest, size=size, simulated=simulated)

    def put_bytes(self, workflow_id: str, name: str, data: bytes, *,
                  simulated: bool = False) -> ArtifactRecord:
        return self.put_stream(workflow_id, name, [data], simulated=simulated)

    def record(self, workflow_id: str, name: str) -> ArtifactRecord | None:
        with self.store.session() as s:
            row = s.get(ArtifactRow, (workflow_id, name))
            if row is None:
                return None
            return ArtifactRecord(name=row.name, sha256=row.sha256, size=row.size,
                                  simulated=row.simulated)

    def path(self, workflow_id: str, name: str) -> Path | None:
        """The file holding the artifact's current content, or None."""
        rec = self.record(workflow_id, name)
        if rec is None:
            return None
        p = self._blob(workflow_id, rec.sha256)
        return p if p.exists() else None
