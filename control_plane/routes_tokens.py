"""API tokens and service accounts (``/v1/tokens``).

* ``POST /v1/tokens`` ``{subject?, roles, tenants?, ttlS?, description?}`` → ``{token,
  id, subject, roles, tenants, expiresAt, ...}``: the token is shown only in this answer.
  An admin makes tokens for anyone with any roles and tenants — service accounts are
  subjects ``sa:NAME``. Anyone else makes tokens only for itself (``subject`` omitted or
  its own), with a subset of its own roles and tenants (403 naming the field otherwise).
* ``GET /v1/tokens`` — admin: every token (``?subject=``); others: their own.
  Never the tokens themselves.
* ``DELETE /v1/tokens/{token_id}`` — revoke (admin: any; others: their own; 404 else).
  Revocation takes effect at the next request.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from continuum.errors import NotFound
from control_plane import deps
from control_plane.auth import Authority, Principal, Role, authenticate, token_view
from control_plane.enrollment import TENANT
from control_plane.input_limits import auth_rate_limit

router = APIRouter(tags=["tokens"])
AuthorityDep = Annotated[Authority, Depends(deps.get_auth)]
PrincipalDep = Annotated[Principal, Depends(authenticate)]
SUBJECT = r"^(sa:)?[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$"


class TokenRequest(BaseModel):
    """Body of ``POST /v1/tokens``."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    subject: str | None = Field(default=None, pattern=SUBJECT,
                                description="who the token is for (``sa:NAME``: a service "
                                "account); default: the caller")
    roles: list[Role] = Field(min_length=1, max_length=4)
    tenants: list[Annotated[str, Field(pattern=TENANT.pattern)]] = Field(
        default_factory=list, max_length=64)
    ttl_s: float | None = Field(default=None, gt=0, le=3650 * 86400,
                                description="lifetime (s); default auth_token_ttl_s")
    description: str = Field(default="", max_length=500)


@router.post("/v1/tokens", status_code=201, dependencies=[Depends(auth_rate_limit)],
             summary="Create an API token (shown only once)")
async def create_token(body: TokenRequest, principal: PrincipalDep,
                       authority: AuthorityDep) -> dict[str, Any]:
    subject = body.subject or principal.subject
    if not principal.is_admin:
        if subject != principal.subject:
            raise HTTPException(403, f"subject: only an admin makes tokens for others "
                                     f"({principal.subject} asked for {subject})")
        if roles := sorted(set(body.roles) - principal.roles):
            raise HTTPException(403, f"roles: {', '.join(roles)} not among your roles")
        if tenants := sorted(set(body.tenants) - principal.tenants):
            raise HTTPException(403, f"tenants: {', '.join(tenants)} not among your tenants")
    token, row = await run_in_threadpool(
        authority.mint, subject, body.roles, body.tenants, body.ttl_s, body.description,
        principal.subject)
    return {"token": token, **token_view(row)}


@router.get("/v1/tokens", summary="List API tokens (never the tokens themselves)")
def list_tokens(principal: PrincipalDep, authority: AuthorityDep,
                subject: str | None = Query(None, max_length=128)) -> dict[str, Any]:
    if not principal.is_admin:
        subject = principal.subject
    return {"items": [token_view(r) for r in authority.tokens(subject)]}


@router.delete("/v1/tokens/{token_id}", summary="Revoke an API token")
def revoke_token(token_id: str, principal: PrincipalDep,
                 authority: AuthorityDep) -> dict[str, Any]:
    row = authority.revoke(token_id, None if principal.is_admin else principal.subject)
    if row is None:
        raise NotFound(f"token {token_id!r} does not exist")
    return token_view(row)


__all__ = ["router"]
