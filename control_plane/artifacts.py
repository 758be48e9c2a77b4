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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from adapters.base import ArtifactRecord
from control_plane.store import ArtifactRow, Store, WorkflowRow, utcnow

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


@dataclass(frozen=True)
class Quota:
    """Size limits of one upload (bytes): ``artifact_max_bytes`` for the artifact,
    ``tenant_quota_bytes`` for everything its workflow's tenant keeps."""

    artifact_max_bytes: int
    tenant_quota_bytes: int


class QuotaExceeded(Exception):
    """An upload passed a size limit; ``str()`` names the limit and its setting."""


class Upload:
    """One artifact arriving: bytes are hashed, counted against the limit and written to a
    temporary file next to the blobs; :meth:`commit` or :meth:`abort` ends it."""

    def __init__(self, store: LocalArtifactStore, workflow_id: str, name: str,
                 limit: int | None, why: str) -> None:
        self.store, self.workflow_id, self.name = store, workflow_id, name
        self.limit, self.why = limit, why
        self.size = 0
        self._hash = hashlib.sha256()
        d = store.root / workflow_id
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".upload-")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        """Add ``chunk``. Raises QuotaExceeded (and drops the upload) past the limit."""
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            self.abort()
            raise QuotaExceeded(f"artifact {self.name!r} is over {self.limit} bytes: {self.why}")
        self._hash.update(chunk)
        self._file.write(chunk)

    def abort(self) -> None:
        """Drop the bytes received so far (harmless twice)."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def commit(self, *, simulated: bool = False, run_id: str | None = None,
               node: str | None = None,
               check: Callable[[], object] | None = None) -> ArtifactRecord:
        """Make the artifact's name point at the bytes received (see
        :meth:`LocalArtifactStore.put_stream`)."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if check is not None:
                check()
            digest = self._hash.hexdigest()
            os.replace(self._tmp, self.store._blob(self.workflow_id, digest))
        except BaseException:
            self.abort()
            raise
        return self.store._commit(self, digest, simulated=simulated, run_id=run_id, node=node)


class LocalArtifactStore:
    """Implements :class:`adapters.base.ArtifactStore` on a local directory."""

    def __init__(self, root: Path, store: Store):
        self.root = root
        self.store = store
        root.mkdir(parents=True, exist_ok=True)

    def _blob(self, workflow_id: str, sha256: str) -> Path:
        return self.root / workflow_id / sha256

    def tenant_usage(self, workflow_id: str, *, excluding: str | None = None) -> tuple[str, int]:
        """The workflow's tenant and the artifact bytes that tenant keeps, without artifact
        ``excluding`` of this workflow (the one an upload would replace).

        The one place that says whose bytes are whose: a workflow's artifacts are its
        tenant's."""
        with self.store.session() as s:
            tenant = s.scalar(select(WorkflowRow.tenant).where(WorkflowRow.id == workflow_id)) or ""
            q = (select(func.coalesce(func.sum(ArtifactRow.size), 0))
                 .join(WorkflowRow, WorkflowRow.id == ArtifactRow.workflow_id)
                 .where(WorkflowRow.tenant == tenant))
            if excluding is not None:
                q = q.where(~((ArtifactRow.workflow_id == workflow_id)
                              & (ArtifactRow.name == excluding)))
            return tenant, int(s.scalar(q) or 0)

    def put_stream(self, workflow_id: str, name: str, chunks: Iterable[bytes], *,
                   simulated: bool = False, run_id: str | None = None,
                   node: str | None = None, quota: Quota | None = None,
                   check: Callable[[], object] | None = None) -> ArtifactRecord:
        """Keep the bytes of ``chunks`` as artifact ``name`` of the workflow.

        ``quota``: the limits counted while the bytes arrive (none: unlimited);
        ``check``: called once the bytes are on disk, just before the name points at
        them (its exception abandons the upload).

        Raises:
            QuotaExceeded: the artifact grew past ``quota`` (nothing is kept).
        """
        upload = self.begin(workflow_id, name, quota)
        try:
            for chunk in chunks:
                upload.write(chunk)
        except BaseException:
            upload.abort()
            raise
        return upload.commit(simulated=simulated, run_id=run_id, node=node, check=check)

    def begin(self, workflow_id: str, name: str, quota: Quota | None = None) -> Upload:
        """Start an upload whose bytes arrive with :meth:`Upload.write`; see
        :meth:`put_stream`. The tenant's usage is taken now."""
        check_name(name)
        limit, why = None, ""
        if quota is not None:
            tenant, used = self.tenant_usage(workflow_id, excluding=name)
            limit, why = quota.artifact_max_bytes, (
                f"the artifact limit (artifact_max_bytes) is {quota.artifact_max_bytes} bytes")
            room = quota.tenant_quota_bytes - used
            if room < limit:
                limit, why = room, (
                    f"tenant {tenant!r} keeps {used} artifact bytes of its quota "
                    f"(tenant_artifact_quota_bytes) of {quota.tenant_quota_bytes}")
        return Upload(self, workflow_id, name, limit, why)

    def _commit(self, up: Upload, digest: str, *, simulated: bool, run_id: str | None,
                node: str | None) -> ArtifactRecord:
        with self.store.session() as s:
            row = s.get(ArtifactRow, (up.workflow_id, up.name))
            if row is None:
                row = ArtifactRow(workflow_id=up.workflow_id, name=up.name)
                s.add(row)
            row.sha256, row.size, row.simulated = digest, up.size, simulated
            row.run_id, row.node, row.created_at = run_id, node, utcnow()
        return ArtifactRecord(name=up.name, sha256=digest, size=up.size, simulated=simulated)

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
