"""The audit trail: every mutating API call (POST, PUT, PATCH, DELETE) is recorded —
who (token subject and id, ``-`` without a valid token), tenant, method, path, HTTP
status, outcome (``ok``, ``denied``, ``failed``) and time — by :class:`AuditMiddleware`;
admins read it with ``GET /v1/audit`` and ``continuum audit``.

Reads (GET) are not recorded: the trail answers "who changed what", and a scraped
``/metrics`` would drown it.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.auth import AUDIT_SCOPE_KEY
from control_plane.store import AuditRow, Store, utcnow

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def outcome_of(status: int) -> str:
    """``ok`` (below 400), ``denied`` (401, 403) or ``failed`` (any other error)."""
    if status < 400:
        return "ok"
    return "denied" if status in (401, 403) else "failed"


class AuditMiddleware:
    """ASGI middleware writing one :class:`~control_plane.store.AuditRow` per mutating
    call, after the answer started (the route's dependencies fill in who called, see
    :func:`control_plane.auth.authenticate`). A failure to write is logged, never turned
    into an error of the call."""

    def __init__(self, app: ASGIApp, store: Store):
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        record: dict[str, Any] = {}
        scope[AUDIT_SCOPE_KEY] = record
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if not record.get(WRITTEN):
                row = audit_row(scope, status)
                try:
                    await run_in_threadpool(self._write, row)
                except Exception:
                    log.exception("audit record of %s %s (%s) not written", row.method,
                                  row.path, row.subject)

    def _write(self, row: AuditRow) -> None:
        with self.store.session() as s:
            s.add(row)


WRITTEN = "written"
"""Key a route sets (true) in the scope's audit record when it wrote the record itself,
in its own transaction (see :func:`audit_row`): the middleware then writes none."""


def audit_row(scope: Scope, status: int) -> AuditRow:
    """The audit record of the call in ``scope`` answered ``status``, from what
    :func:`control_plane.auth.authenticate` put in the scope. A route that writes it in
    its own transaction (the workflow submit: one commit instead of two) then sets
    ``scope[AUDIT_SCOPE_KEY][WRITTEN] = True``."""
    record: dict[str, Any] = scope.get(AUDIT_SCOPE_KEY) or {}
    token_id = record.get("token_id")
    return AuditRow(at=utcnow(), subject=record.get("subject", "-"),
                    # an external issuer's jti may be longer than the column
                    token_id=token_id[:AuditRow.token_id.type.length] if token_id else None,
                    tenant=record.get("tenant", ""),
                    method=scope["method"], path=scope["path"][:2000], status=status,
                    outcome=outcome_of(status))


def audit_view(row: AuditRow) -> dict[str, Any]:
    return {"id": row.id, "at": row.at.isoformat(), "subject": row.subject,
            "tokenId": row.token_id, "tenant": row.tenant, "method": row.method,
            "path": row.path, "status": row.status, "outcome": row.outcome}


__all__ = ["AuditMiddleware", "MUTATING", "WRITTEN", "audit_row", "audit_view", "outcome_of"]
