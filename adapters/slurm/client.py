"""A small slurmrestd client over httpx: version negotiation, JWT, typed errors.

slurmrestd serves one OpenAPI plugin per version under ``/slurm/v0.0.NN/``; which ones a
build serves is read from ``GET /openapi`` (its ``paths``). This client prefers
v0.0.38 and falls back to v0.0.37, then v0.0.36 (Slurm 21.08-22.05); the fields it
reads exist in all three.

Authentication (``rest_auth/jwt``): every request carries ``X-SLURM-USER-NAME`` and
``X-SLURM-USER-TOKEN``. The token is either given (an admin ran ``scontrol token``)
or minted here from the cluster's JWT key (HS256, claims ``iat``, ``exp``, ``sun`` —
the claims ``auth/jwt`` checks, https://slurm.schedmd.com/jwt.html) and minted again
before it expires. Over a unix socket with ``rest_auth/local`` no token is needed.

Errors, as slurmrestd 22.05 reports them (verified against the real daemon):

* no or malformed auth headers → HTTP 401 → :class:`AuthError`;
* a token slurmctld rejects (wrong key, expired, unknown user) → HTTP 500 whose
  ``errors[]`` carry only ``error_number``/``errno`` -1 ("Unspecified error") →
  :class:`AuthError` (slurmctld logs "Protocol authentication error"). slurmrestd gives
  the very same answer when slurmctld is down; :meth:`SlurmRestClient._unspecified` says
  how the two are told apart;
* connection refused, timeouts → :class:`TransientError`;
* other HTTP 5xx or ``errors[]`` → :class:`SlurmApiError` (a :class:`TransientError`
  carrying the Slurm error numbers, e.g. 2017 "Invalid job id specified").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from continuum.errors import AuthError, TransientError, UnsupportedError

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS: tuple[str, ...] = ("v0.0.38", "v0.0.37", "v0.0.36")
"""OpenAPI plugin versions this client speaks, most preferred first."""

ESLURM_INVALID_JOB_ID = 2017
"""Slurm's error number for a job id slurmctld does not know (slurm_errno.h)."""
ESLURM_ALREADY_DONE = 2021
"""Slurm's error number for "job/step already completing or completed"."""


@dataclass
class SlurmApiError(TransientError):
    """slurmrestd answered with ``errors[]`` (or a 5xx) that is not an auth failure.

    ``numbers`` are the Slurm error numbers of ``errors[]``; ``status`` the HTTP status.
    """

    numbers: list[int] = field(default_factory=list)
    status: int = 0


class TokenSource:
    """Supplies the ``X-SLURM-USER-TOKEN`` value.

    Args:
        user: the Slurm user name (claim ``sun``).
        token: a fixed token, used as given (an expired one is rejected by slurmctld).
        key: the cluster's JWT key bytes (``AuthAltParameters=jwt_key=``); with it a
            token is minted and minted again once less than ``refresh_fraction`` of
            ``lifetime_s`` is left.
        lifetime_s: lifetime of minted tokens (s).
        clock: seconds since the epoch.
    """

    def __init__(self, user: str, *, token: str | None = None, key: bytes | None = None,
                 lifetime_s: float = 3600.0, refresh_fraction: float = 0.2,
                 clock: Callable[[], float] = time.time) -> None:
        self.user = user
        self._fixed = token
        self._key = key
        self.lifetime_s = lifetime_s
        self.refresh_fraction = refresh_fraction
        self._clock = clock
        self._token: str | None = None
        self._exp = 0.0
        self.minted = 0
        """How many tokens were minted (for tests and logs)."""
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._fixed is not None or self._key is not None

    def local_problem(self) -> str:
        """What is wrong with a fixed token that can be seen without the cluster's key:
        not a JWT or expired (``exp``); "" otherwise."""
        if self._fixed is None:
            return ""
        try:
            claims = jwt.decode(self._fixed, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            return f"the token is not a valid JWT ({e}); get one with `scontrol token`"
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp <= self._clock():
            return (f"the token expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}"
                    "; get a new one with `scontrol token`, or give 'jwtKey' so Continuum "
                    "mints and renews tokens itself")
        return ""  # a token of another user (sun) may be valid: SlurmUser/root impersonate

    def token(self) -> str | None:
        """The token to send now (minting a fresh one when due), or None without auth."""
        if self._fixed is not None:
            return self._fixed
        if self._key is None:
            return None
        with self._lock:
            now = self._clock()
            if self._token is None or self._exp - now < self.refresh_fraction * self.lifetime_s:
                iat = int(now)
                exp = iat + max(1, int(math.ceil(self.lifetime_s)))
                self._token = jwt.encode({"iat": iat, "exp": exp, "sun": self.user}, self._key,
                                         algorithm="HS256")
                self._exp = float(exp)
                self.minted += 1
                log.debug("minted a Slurm JWT for %s valid until %d", self.user, exp)
            return self._token


def _errors(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return [e for e in body["errors"] if isinstance(e, dict)]
    return []


def _numbers(errs: list[dict[str, Any]]) -> list[int]:
    out = []
    for e in errs:
        n = e.get("error_number", e.get("errno"))
        if isinstance(n, int):
            out.append(n)
    return out


def _describe(errs: list[dict[str, Any]]) -> str:
    parts = []
    for e in errs:
        text = e.get("description") or e.get("error") or "error"
        src = e.get("source")
        num = e.get("error_number", e.get("errno"))
        parts.append(f"{text} ({src}, error {num})" if src else f"{text} (error {num})")
    return "; ".join(parts)


class SlurmRestClient:
    """slurmrestd over TCP (``url``) or a unix socket (``socket``).

    Args:
        url: ``http://host:port`` of slurmrestd (exclusive with ``socket``).
        socket: path of slurmrestd's unix socket.
        tokens: where the JWT comes from.
        timeout_s: per-request timeout (s).
        site: the site name, for error messages.

    Call :meth:`negotiate` once before anything else (it is called lazily otherwise).
    """

    def __init__(self, *, url: str | None, socket: str | None, tokens: TokenSource,
                 timeout_s: float = 10.0, site: str = "") -> None:
        if (url is None) == (socket is None):
            raise ValueError("give exactly one of url and socket")
        self.site = site
        self.tokens = tokens
        self.where = url if url is not None else f"unix:{socket}"
        transport = httpx.HTTPTransport(uds=socket) if socket else None
        self._http = httpx.Client(base_url=url or "http://slurmrestd", timeout=timeout_s,
                                  transport=transport, follow_redirects=False)
        self.version: str | None = None
        self.slurm_release: str = ""
        self.authenticated_ok = False
        """True once slurmctld answered a request with these credentials."""
        self.requests = 0
        """HTTP requests sent (tests and the benchmark count them)."""
        self.requests_by_path: dict[str, int] = {}

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------ transport

    def _headers(self, tokens: TokenSource | None = None) -> dict[str, str]:
        src = tokens or self.tokens
        tok = src.token()
        if tok is None:
            return {}
        return {"X-SLURM-USER-NAME": src.user, "X-SLURM-USER-TOKEN": tok}

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, versioned: bool = True,
                tokens: TokenSource | None = None) -> dict[str, Any] | None:
        """One call (as ``tokens``' user, default the client's); returns the decoded JSON
        body, or None on HTTP 304 (no change). Redirects are not followed; error messages
        never quote a body that is not slurmrestd's ``errors[]``.

        Raises:
            TransientError: slurmrestd unreachable or timed out.
            AuthError: the credentials were refused (HTTP 401, or HTTP 500 with -1 errors).
            SlurmApiError: any other error slurmrestd reported.
        """
        if versioned:
            if self.version is None:
                self.negotiate()
            path = f"/slurm/{self.version}/{path.lstrip('/')}"
        key = path.split("?")[0]
        self.requests += 1
        self.requests_by_path[key] = self.requests_by_path.get(key, 0) + 1
        try:
            r = self._http.request(method, path, params=params, json=json,
                                   headers=self._headers(tokens))
        except httpx.TimeoutException as e:
            raise TransientError(f"slurmrestd at {self.where} did not answer {method} {path} "
                                 f"in time: {e}", site=self.site, retry_after=5.0) from e
        except httpx.TransportError as e:
            raise TransientError(f"slurmrestd at {self.where} is unreachable: {e}. Is slurmrestd "
                                 "running and listening there?", site=self.site,
                                 retry_after=5.0) from e
        if r.status_code == 304:
            return None
        if r.status_code == 401:
            raise AuthError(f"slurmrestd at {self.where} refused the request (HTTP 401): "
                            "it runs with rest_auth/jwt and needs "
                            "a user name and token (set 'token' or 'jwtKey')", site=self.site)
        try:
            body = r.json()
        except ValueError:
            body = None
        errs = _errors(body)
        nums = _numbers(errs)
        if r.status_code >= 500 and errs and all(n == -1 for n in nums) and len(nums) == len(errs):
            self._unspecified(r.status_code, errs)
        if r.status_code >= 400 or (errs and r.status_code >= 300):
            detail = _describe(errs) if errs else "no Slurm errors[] in the answer"
            raise SlurmApiError(f"slurmrestd {method} {path} failed (HTTP {r.status_code}): "
                                f"{detail}", site=self.site, retry_after=5.0, numbers=nums,
                                status=r.status_code)
        if not isinstance(body, dict):
            raise SlurmApiError(f"slurmrestd {method} {path} answered HTTP {r.status_code} "
                                f"without a JSON object", site=self.site, status=r.status_code)
        if errs:  # 2xx with errors[] (e.g. DELETE of an unknown job in some versions)
            raise SlurmApiError(f"slurmrestd {method} {path}: {_describe(errs)}", site=self.site,
                                retry_after=5.0, numbers=nums, status=r.status_code)
        if versioned:
            self.authenticated_ok = True  # slurmctld accepted these credentials
        return body

    def _unspecified(self, status: int, errs: list[dict[str, Any]]) -> None:
        """HTTP 5xx whose errors are all -1 "Unspecified error".

        slurmrestd 22.05 answers this way both when slurmctld rejects the credentials and
        when slurmctld cannot be reached (verified: same body for a bad token and for a
        stopped slurmctld). What can be told apart is: a fixed token that is not a JWT,
        or has expired (checked here, without the key); and
        credentials that worked before in this process (then slurmctld is not answering,
        a :class:`TransientError`). Otherwise it is an :class:`AuthError` whose message
        names both causes.

        Raises:
            AuthError | TransientError: always.
        """
        seen = f"slurmrestd answered HTTP {status}: {_describe(errs)}"
        local = self.tokens.local_problem()
        if local:
            raise AuthError(f"{local} ({seen})", site=self.site)
        if self.authenticated_ok:
            raise TransientError(
                f"slurmctld is not answering slurmrestd at {self.where} ({seen}); the same "
                "credentials worked before, so slurmctld is down or unreachable from slurmrestd",
                site=self.site, retry_after=5.0)
        if not self.tokens.enabled:
            raise AuthError(
                f"slurmctld rejected the authentication of slurmrestd at {self.where} ({seen})"
                "; in rest_auth/local mode slurmrestd signs requests with munge: check that "
                "munged runs and its socket is reachable by slurmrestd's user (or slurmctld "
                "is down)", site=self.site)
        raise AuthError(
            f"slurmctld rejected the credentials of user {self.tokens.user!r} ({seen}): the "
            "token is wrong, expired, or was minted with another key than the cluster's "
            "jwt_key (slurmrestd answers the same when slurmctld itself is down)",
            site=self.site)

    # ------------------------------------------------------------ version

    def negotiate(self) -> str:
        """Pick the newest supported OpenAPI version the server offers (``GET /openapi``).

        Raises:
            UnsupportedError: the server offers none of :data:`SUPPORTED_VERSIONS`
                (the message lists what it offers).
            TransientError | AuthError: see :meth:`request`.
        """
        try:
            body = self.request("GET", "/openapi", versioned=False) or {}
        except SlurmApiError as e:  # not slurmrestd's errors[]: say only the status
            raise UnsupportedError(f"slurmrestd at {self.where} answered HTTP {e.status} to "
                                   "GET /openapi: is it a slurmrestd?", site=self.site) from None
        paths = body.get("paths")
        if not isinstance(paths, dict):
            raise UnsupportedError(f"{self.where} is not a slurmrestd (no OpenAPI document at "
                                   "/openapi)", site=self.site)
        offered = sorted({p.split("/")[2] for p in paths
                          if p.startswith("/slurm/") and len(p.split("/")) > 3}, reverse=True)
        for v in SUPPORTED_VERSIONS:
            if v in offered:
                self.version = v
                log.info("site %s: slurmrestd at %s speaks %s (offers %s)", self.site, self.where,
                         v, ", ".join(offered))
                return v
        raise UnsupportedError(
            f"slurmrestd at {self.where} offers OpenAPI {', '.join(offered) or 'no slurm plugin'}"
            f"; Continuum speaks {', '.join(SUPPORTED_VERSIONS)}. Start slurmrestd with "
            "-s openapi/v0.0.38 (Slurm 22.05) or openapi/v0.0.37 (21.08)", site=self.site)

    # ------------------------------------------------------------ endpoints

    def ping(self) -> dict[str, Any]:
        body = self.request("GET", "ping") or {}
        release = ((body.get("meta") or {}).get("Slurm") or {}).get("release")
        if release:
            self.slurm_release = str(release)
        return body

    def partitions(self) -> list[dict[str, Any]]:
        return list((self.request("GET", "partitions") or {}).get("partitions") or [])

    def nodes(self) -> list[dict[str, Any]]:
        return list((self.request("GET", "nodes") or {}).get("nodes") or [])

    def jobs(self, update_time: int = 0) -> list[dict[str, Any]] | None:
        """Every job slurmctld holds; None when nothing changed since ``update_time`` (304)."""
        body = self.request("GET", "jobs", params={"update_time": update_time})
        return None if body is None else list(body.get("jobs") or [])

    def submit(self, script: str, job: dict[str, Any], *,
               tokens: TokenSource | None = None) -> int:
        """``POST job/submit`` as ``tokens``' user (the job's owner); returns the job id."""
        body = self.request("POST", "job/submit", json={"script": script, "job": job},
                            tokens=tokens) or {}
        job_id = body.get("job_id")
        if not isinstance(job_id, int):
            raise SlurmApiError(f"slurmrestd accepted the job but returned no job id: {body}",
                                site=self.site)
        return job_id

    def cancel(self, job_id: int, *, tokens: TokenSource | None = None) -> None:
        """``DELETE job/{id}`` as ``tokens``' user; a job slurmctld no longer knows or that
        already ended is fine."""
        try:
            self.request("DELETE", f"job/{job_id}", tokens=tokens)
        except SlurmApiError as e:
            if set(e.numbers) & {ESLURM_INVALID_JOB_ID, ESLURM_ALREADY_DONE}:
                return
            raise
