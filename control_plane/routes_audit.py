"""The audit trail (admin): ``GET /v1/audit``, newest first, filtered and paginated."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from continuum.errors import Problem, ValidationFailed
from control_plane.audit import audit_view
from control_plane.routes_common import MAX_OFFSET, StoreDep
from control_plane.store import AuditRow

router = APIRouter(tags=["audit"])


@router.get("/v1/audit", summary="Mutating API calls: who, tenant, what, when, outcome")
def list_audit(store: StoreDep, subject: str | None = Query(None, max_length=128),
               tenant: str | None = Query(None, max_length=63),
               method: Literal["POST", "PUT", "PATCH", "DELETE"] | None = None,
               outcome: Literal["ok", "denied", "failed"] | None = None,
               path: str | None = Query(None, max_length=500,
                                        description="only paths starting with this"),
               since: Annotated[datetime | None,
                                Query(description="ISO 8601, with a zone")] = None,
               limit: int = Query(100, ge=1, le=1000),
               offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> dict[str, Any]:
    """Items ``{id, at, subject, tokenId, tenant, method, path, status, outcome}``;
    ``subject`` is ``-`` for a call without a valid token."""
    q = select(AuditRow)
    if subject is not None:
        q = q.where(AuditRow.subject == subject)
    if tenant is not None:
        q = q.where(AuditRow.tenant == tenant)
    if method is not None:
        q = q.where(AuditRow.method == method)
    if outcome is not None:
        q = q.where(AuditRow.outcome == outcome)
    if path:
        q = q.where(AuditRow.path.startswith(path, autoescape=True))
    if since is not None:
        if since.tzinfo is None:
            raise ValidationFailed([Problem(["query", "since"], "give a time zone, e.g. "
                                            "2026-01-01T00:00:00Z", "naive_datetime")])
        q = q.where(AuditRow.at >= since)
    with store.session() as s:
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.order_by(AuditRow.id.desc()).limit(limit).offset(offset)).all()
        return {"items": [audit_view(r) for r in rows], "total": total, "limit": limit,
                "offset": offset}


__all__ = ["router"]
