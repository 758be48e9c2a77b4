"""API identity: bearer tokens (JWT), roles, tenants, and the FastAPI dependencies that
check them.

Tokens this control plane issues are HS256 JWTs signed with ``<state_dir>/auth/jwt.key``
(0600, generated on first start; ``auth_key_file`` to supply one) and carry ``iss``,
``aud``, ``sub``, ``exp``, ``iat``, ``jti``, ``roles`` and ``tenants``. Every issued
token has a row in the ``tokens`` table (never the token itself); a token whose row is
missing or revoked is refused. Optionally an external OIDC issuer's tokens are accepted
too (``oidc_jwks_url``, ``oidc_issuer``, ``oidc_audience``; roles and tenants read from
configurable claims).

* :func:`authenticate` — FastAPI dependency → :class:`Principal`; 401 with
  ``WWW-Authenticate: Bearer`` when the token is missing, forged, expired, for another
  audience or issuer, unknown or revoked.
* :func:`require` ``(*roles)`` — a dependency returning the Principal, 403 naming the
  roles needed when it has none of them (``admin`` has every role).

Tenancy: workflows carry a ``tenant``; runs, events and artifacts reach theirs through
their workflow. Something outside the caller's tenants is a 404 with the body of a
missing object (:meth:`Principal.can_see`), never a 403.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from control_plane.keys import write_secret_once
from control_plane.settings import AuthSettings
from control_plane.store import Store, TokenRow, utcnow

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"
"""The bootstrap admin token's file name in the state directory."""


class Role(StrEnum):
    """What a principal may do: ``admin`` everything; ``hpc-admin`` Slurm sites;
    ``cluster-admin`` Kubernetes/KubeEdge sites and device fleets; ``user`` workflows in
    its tenants."""

    admin = "admin"
    hpc_admin = "hpc-admin"
    cluster_admin = "cluster-admin"
    user = "user"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's subject (``alice``, ``sa:ci``), roles and tenants."""

    subject: str
    roles: frozenset[Role]
    tenants: frozenset[str]
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return Role.admin in self.roles

    def has_any(self, *roles: Role) -> bool:
        """True when it holds one of ``roles`` (an admin holds every role)."""
        return self.is_admin or any(r in self.roles for r in roles)

    def can_see(self, tenant: str) -> bool:
        """True when ``tenant`` is one of its tenants (an admin sees every tenant)."""
        return self.is_admin or tenant in self.tenants


class Unauthorized(Exception):
    """The bearer token is missing or invalid; the message says why (never the token)."""


def _claim(claims: dict[str, Any], path: str) -> list[str]:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else []


def _roles(names: list[str]) -> frozenset[Role]:
    return frozenset(Role(n) for n in names if n in Role._value2member_map_)


class Authority:
    """Issues, verifies and revokes the API's tokens.

    ``settings``: the auth and store groups (the key file defaults to
    ``<state_dir>/auth/jwt.key``). Raises ``ValueError`` when a configured key file
    holds fewer than 32 bytes, or ``oidc_jwks_url`` comes without ``oidc_issuer`` and
    ``oidc_audience``.
    """

    def __init__(self, settings: Any, store: Store):
        self.settings: AuthSettings = settings
        self.state_dir: Path = Path(settings.state_dir)
        self.store = store
        path = settings.auth_key_file or self.state_dir / "auth" / "jwt.key"
        if settings.auth_key_file is None and not path.exists():
            if write_secret_once(path, secrets.token_hex(32).encode()):
                log.info("API token signing key generated in %s", path)
        self._key = Path(path).read_bytes().strip()
        if len(self._key) < 32:
            raise ValueError(f"auth_key_file {path}: the key has {len(self._key)} bytes; "
                             "at least 32 are needed")
        if settings.oidc_jwks_url and not (settings.oidc_issuer and settings.oidc_audience):
            raise ValueError("oidc_jwks_url needs oidc_issuer and oidc_audience too")
        self._jwks: jwt.PyJWKClient | None = None
        self._jwks_lock = threading.Lock()
        self._principals: dict[str, tuple[Principal, float]] = {}
        """token → its principal and expiry (s since the epoch), for :meth:`verified`."""
        self._valid_at: dict[str, float] = {}
        """jti → when (monotonic s) the tokens table last said it is known and not revoked;
        trusted for ``auth_revocation_cache_s`` (see :meth:`_check_row`)."""

    _VALID_CACHE_MAX = 10_000
    """Most token ids :attr:`_valid_at` holds; it is emptied when full (a bound on memory,
    not a limit on callers: a token not in it is read from the table)."""

    def _check_row(self, jti: str, must_exist: bool) -> None:
        """Refuse a token whose ``tokens`` row is revoked (or, ``must_exist``, missing).
        A token found valid is not read again for ``auth_revocation_cache_s`` seconds on
        this replica; :meth:`revoke` forgets it at once.

        Raises:
            Unauthorized: unknown (when ``must_exist``) or revoked.
        """
        ttl = self.settings.auth_revocation_cache_s
        now = time.monotonic()
        checked = self._valid_at.get(jti)
        if checked is not None and now - checked < ttl:
            return
        with self.store.session() as s:
            row = s.get(TokenRow, jti)
            if row is None and must_exist:
                raise Unauthorized("the token is unknown to this control plane")
            if row is not None and row.revoked_at is not None:
                raise Unauthorized("the token has been revoked")
        if ttl > 0:
            if len(self._valid_at) >= self._VALID_CACHE_MAX:
                self._valid_at.clear()
                self._principals.clear()
            self._valid_at[jti] = now

    def verified(self, token: str) -> Principal | None:
        """The principal of ``token`` when this replica verified it within
        ``auth_revocation_cache_s`` and it has not expired since: no signature check, no
        I/O (the API's event loop asks this before sending a request to a thread for
        :meth:`verify`). None otherwise."""
        entry = self._principals.get(token)
        if entry is None or entry[0].token_id is None:
            return None
        principal, exp = entry
        checked = self._valid_at.get(principal.token_id)  # type: ignore[arg-type]
        if (checked is None or time.monotonic() - checked >= self.settings.auth_revocation_cache_s
                or time.time() >= exp):
            return None
        return principal

    def _remember(self, token: str, principal: Principal, exp: Any) -> Principal:
        if self.settings.auth_revocation_cache_s > 0 and principal.token_id is not None:
            self._principals[token] = (principal, float(exp))
        return principal

    # ------------------------------------------------------------ issuing

    def mint(self, subject: str, roles: list[Role] | frozenset[Role],
             tenants: list[str] | frozenset[str], ttl_s: float | None = None,
             description: str = "", created_by: str = "") -> tuple[str, TokenRow]:
        """A new token and its stored row; ``ttl_s`` (s) defaults to ``auth_token_ttl_s``."""
        now = utcnow().replace(microsecond=0)
        exp = now + timedelta(seconds=ttl_s or self.settings.auth_token_ttl_s)
        jti = secrets.token_hex(12)
        role_names = sorted(Role(r).value for r in roles)
        tenant_names = sorted(tenants)
        token = jwt.encode({"iss": self.settings.auth_issuer, "aud": self.settings.auth_audience,
                            "sub": subject, "iat": int(now.timestamp()),
                            "exp": int(exp.timestamp()), "jti": jti, "roles": role_names,
                            "tenants": tenant_names}, self._key, algorithm="HS256")
        row = TokenRow(id=jti, subject=subject, roles=role_names, tenants=tenant_names,
                       description=description, created_by=created_by, created_at=now,
                       expires_at=exp)
        with self.store.session() as s:
            s.add(row)
        return token, row

    def bootstrap(self) -> Path:
        """Make sure ``<state_dir>/admin.token`` (0600) holds a valid admin token: written
        on first start, and again when the one there no longer verifies (a new database
        or key). Logs the path, never the token. Returns the path."""
        path = self.state_dir / ADMIN_TOKEN_FILE
        if path.exists():
            try:
                self.verify(path.read_text().strip())
                return path
            except Unauthorized as e:
                log.warning("bootstrap admin token in %s no longer valid (%s): writing a new "
                            "one", path, e)
                path.unlink()
        token, _ = self.mint("admin", [Role.admin], [],
                             ttl_s=self.settings.auth_bootstrap_token_ttl_s,
                             description="bootstrap admin token", created_by="bootstrap")
        write_secret_once(path, (token + "\n").encode(), private_dir=False)
        log.info("bootstrap admin token written to %s (export CONTINUUM_TOKEN=$(cat %s))",
                 path, path)
        return path

    # ------------------------------------------------------------ verifying

    def verify(self, token: str) -> Principal:
        """The principal of ``token``.

        Raises:
            Unauthorized: forged (bad signature), expired, wrong audience or issuer,
                malformed, unknown to this control plane, or revoked.
        """
        st = self.settings
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise Unauthorized(f"the bearer token is not a JWT: {e}") from e
        if st.oidc_jwks_url and st.oidc_issuer and unverified.get("iss") == st.oidc_issuer:
            return self._verify_oidc(token)
        try:
            claims = jwt.decode(token, self._key, algorithms=["HS256"],
                                audience=st.auth_audience, issuer=st.auth_issuer,
                                options={"require": ["exp", "iat", "sub", "jti", "aud",
                                                     "iss"]})
        except jwt.ExpiredSignatureError as e:
            raise Unauthorized("the token has expired") from e
        except jwt.InvalidAudienceError as e:
            raise Unauthorized(f"the token is not for this audience "
                               f"({st.auth_audience!r})") from e
        except jwt.InvalidIssuerError as e:
            raise Unauthorized(f"the token was not issued by {st.auth_issuer!r}") from e
        except jwt.InvalidSignatureError as e:
            raise Unauthorized("the token's signature is not valid") from e
        except jwt.PyJWTError as e:
            raise Unauthorized(f"the token is not valid: {e}") from e
        self._check_row(str(claims["jti"]), must_exist=True)
        return self._remember(token, Principal(
            subject=str(claims["sub"]), roles=_roles(list(claims.get("roles", []))),
            tenants=frozenset(map(str, claims.get("tenants", []))),
            token_id=str(claims["jti"])), claims["exp"])

    def _verify_oidc(self, token: str) -> Principal:
        st = self.settings
        with self._jwks_lock:
            if self._jwks is None:
                self._jwks = jwt.PyJWKClient(str(st.oidc_jwks_url), cache_keys=True)
        try:
            key = self._jwks.get_signing_key_from_jwt(token).key
            claims = jwt.decode(token, key, algorithms=["RS256", "RS384", "RS512", "ES256",
                                                         "ES384", "PS256", "EdDSA"],
                                audience=st.oidc_audience, issuer=st.oidc_issuer,
                                options={"require": ["exp", "sub", "aud", "iss"]})
        except jwt.PyJWKClientError as e:
            raise Unauthorized(f"the OIDC issuer's keys are unavailable: {e}") from e
        except jwt.PyJWTError as e:
            raise Unauthorized(f"the OIDC token is not valid: {e}") from e
        subject_max = TokenRow.subject.type.length
        if len(str(claims["sub"])) > subject_max:  # it names the tokens it mints, the audit
            raise Unauthorized(f"the OIDC token's sub claim is longer than {subject_max} "
                               "characters")
        jti = claims.get("jti")
        if jti:
            self._check_row(str(jti), must_exist=False)
        return self._remember(token, Principal(
            subject=str(claims["sub"]), roles=_roles(_claim(claims, st.oidc_roles_claim)),
            tenants=frozenset(_claim(claims, st.oidc_tenants_claim)),
            token_id=str(jti) if jti else None), claims["exp"])

    # ------------------------------------------------------------ managing

    def tokens(self, subject: str | None = None) -> list[TokenRow]:
        """Issued tokens, newest first; only ``subject``'s when given."""
        with self.store.session() as s:
            q = select(TokenRow).order_by(TokenRow.created_at.desc(), TokenRow.id)
            if subject is not None:
                q = q.where(TokenRow.subject == subject)
            return list(s.scalars(q))

    def revoke(self, token_id: str, subject: str | None = None) -> TokenRow | None:
        """Revoke a token (harmless when already revoked); ``subject``: only if it is
        theirs. Returns the row, or None when there is no such token (of theirs)."""
        with self.store.session() as s:
            row = s.get(TokenRow, token_id)
            if row is None or (subject is not None and row.subject != subject):
                return None
            if row.revoked_at is None:
                row.revoked_at = utcnow()
        self._valid_at.pop(token_id, None)  # refused here from now on
        return row


def token_view(row: TokenRow) -> dict[str, Any]:
    """A token as the API lists it (never the token itself)."""
    def iso(d: datetime | None) -> str | None:
        return d.astimezone(UTC).isoformat() if d is not None else None
    return {"id": row.id, "subject": row.subject, "roles": row.roles, "tenants": row.tenants,
            "description": row.description, "createdBy": row.created_by,
            "createdAt": iso(row.created_at), "expiresAt": iso(row.expires_at),
            "revokedAt": iso(row.revoked_at)}


# ---------------------------------------------------------------- FastAPI dependencies

AUDIT_SCOPE_KEY = "continuum.audit"
"""Key of the dict in the ASGI scope where the audit middleware collects who called."""


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'
                                                if "no bearer" not in message else "Bearer"})


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("no bearer token: send 'Authorization: Bearer TOKEN' (the "
                            "bootstrap admin token is <state_dir>/admin.token; more with "
                            "`continuum tokens create`)")
    return token.strip()


def _authenticated(request: Request, principal: Principal) -> Principal:
    request.state.principal = principal
    record = request.scope.get(AUDIT_SCOPE_KEY)
    if isinstance(record, dict):
        record.update(subject=principal.subject, token_id=principal.token_id,
                      tenant=",".join(sorted(principal.tenants)))
    return principal


def authenticate(request: Request) -> Principal:
    """The caller's :class:`Principal` (computed once per request; may read the
    database: call it from a thread, or use :func:`authenticate_async`).

    Raises:
        HTTPException 401 (``WWW-Authenticate: Bearer``): no ``Authorization: Bearer``
            header, or the token is invalid (see :meth:`Authority.verify`).
    """
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    authority: Authority = request.app.state.services.auth
    try:
        principal = authority.verify(_bearer(request))
    except Unauthorized as e:
        raise _unauthorized(str(e)) from e
    return _authenticated(request, principal)


async def authenticate_async(request: Request) -> Principal:
    """FastAPI dependency: :func:`authenticate` without leaving the event loop when the
    token was verified within ``auth_revocation_cache_s`` (:meth:`Authority.verified`),
    else in a worker thread.

    Raises:
        HTTPException 401: see :func:`authenticate`.
    """
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    authority: Authority = request.app.state.services.auth
    principal = authority.verified(_bearer(request))
    if principal is not None:
        return _authenticated(request, principal)
    return await run_in_threadpool(authenticate, request)


def check_roles(principal: Principal, roles: tuple[Role, ...]) -> Principal:
    """``principal`` when it holds one of ``roles`` (any when empty; admin holds all).

    Raises:
        HTTPException 403: it holds none of them (the detail names them).
    """
    if roles and not principal.has_any(*roles):
        raise HTTPException(403, "this needs the role "
                            + " or ".join(sorted({Role.admin.value, *(r.value for r in roles)}))
                            + f"; {principal.subject} has "
                            + (", ".join(sorted(principal.roles)) or "no role"))
    return principal


def require(*roles: Role) -> Any:
    """A FastAPI dependency returning the caller's :class:`Principal` when it holds one of
    ``roles`` (an admin holds all).

    Raises:
        HTTPException 401: see :func:`authenticate`.
        HTTPException 403: it holds none of ``roles`` (the detail names them).
    """
    async def dependency(request: Request) -> Principal:
        return check_roles(await authenticate_async(request), roles)
    return dependency


def audit_tenant(request: Request, tenant: str) -> None:
    """Name the tenant a mutating call acted in, for its audit record."""
    record = request.scope.get(AUDIT_SCOPE_KEY)
    if isinstance(record, dict):
        record["tenant"] = tenant


__all__ = ["ADMIN_TOKEN_FILE", "Authority", "Principal", "Role", "Unauthorized",
           "audit_tenant", "authenticate", "authenticate_async", "check_roles", "require",
           "token_view"]
