"""A small slurmrestd client over httpx: version negotiation, JWT, typed errors.

slurmrestd serves one OpenAPI plugin per version under ``/slurm/v0.0.NN/``; which ones a
build serves is read from its spec (``GET /openapi/v3``, else ``/openapi.json``, else
``/openapi``: its ``paths``). This client speaks the newest version both sides know
(:data:`adapters.slurm.dialects.SUPPORTED_VERSIONS`: the data_parser family v0.0.45 ..
v0.0.40 of Slurm 23.11-26.05, then v0.0.38 .. v0.0.36 of Slurm 20.11-22.05); paths,
request bodies and answers go through its :class:`~adapters.slurm.dialects.Dialect`, so
every method here returns records in one shape whatever the version.

Authentication (``rest_auth/jwt``): every request carries ``X-SLURM-USER-NAME`` and
``X-SLURM-USER-TOKEN``. The token is either given (an admin ran ``scontrol token``)
or minted here from the cluster's JWT key (HS256, claims ``iat``, ``exp``, ``sun`` —
the claims ``auth/jwt`` checks, https://slurm.schedmd.com/jwt.html) and minted again
before it expires. Over a unix socket with ``rest_auth/local`` no token is needed.

Errors, as slurmrestd 22.05 reports them (verified against the real daemon):

* no or malformed auth headers → HTTP 401 → :class:`AuthError`;
* a token slurmctld rejects (wrong key, expired, unknown user) → HTTP 500 whose
  ``errors[]`` carry only ``error_number``/``errno`` -1 ("Unspecified error"); in 24.11
  and newer HTTP 511, with error 1007 "Protocol authentication error" where there are
  errors (and ``ping`` answers 200 with the controller "DOWN") →
  :class:`AuthError` (slurmctld logs "Protocol authentication error"). slurmrestd gives
  the very same answer when slurmctld is down; :meth:`SlurmRestClient._unspecified` says
  how the two are told apart;
* connection refused, timeouts → :class:`TransientError`;
* HTTP 5xx without ``errors[]`` (24.11: 502, 26.05: 500, or no answer in time) while
  slurmctld is down → :class:`TransientError`;
* other HTTP 4xx/5xx (26.05 refuses a job with HTTP 422) or ``errors[]`` →
  :class:`SlurmApiError` (a :class:`TransientError` carrying the Slurm error numbers,
  e.g. 2017 "Invalid job id specified"; 22.05 names them ``error_code`` in a refused
  submit, ``error_number`` elsewhere).
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

from adapters.slurm.dialects import (
    SUPPORTED_VERSIONS,
    Dialect,
    choose,
    offered_versions,
    release_of,
    release_of_spec,
)
from continuum.errors import AuthError, TransientError, UnsupportedError

log = logging.getLogger(__name__)

ESLURM_INVALID_JOB_ID = 2017
"""Slurm's error number for a job id slurmctld does not know (slurm_errno.h)."""
SLURM_PROTOCOL_AUTHENTICATION_ERROR = 1007
"""slurmctld refused the request's credentials (24.11+ answers HTTP 511 with it)."""
ESLURM_ALREADY_DONE = 2021
"""Slurm's error number for "job/step already completing or completed"."""


@dataclass
class SlurmApiError(TransientError):
    """slurmrestd answered with ``errors[]`` (or a 5xx) that is not an auth failure.

    ``numbers`` are the Slurm error numbers of ``errors[]``; ``status`` the HTTP status.
    """

    numbers: list[int] = field(default_factory=list)
    status: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    """slurmrestd's ``errors[]`` as answered."""


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
        n = e.get("error_number", e.get("error_code", e.get("errno")))
        if isinstance(n, int):
            out.append(n)
    return out


def _describe(errs: list[dict[str, Any]]) -> str:
    parts = []
    for e in errs:
        text = e.get("error") or e.get("description") or "error"
        if e.get("description") and e.get("error") and e["description"] != e["error"]:
            text = f"{e['description']}: {e['error']}"
        src = e.get("source")
        num = e.get("error_number", e.get("error_code", e.get("errno")))
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
        self.dialect: Dialect | None = None
        """The served version's dialect (set by :meth:`negotiate`)."""
        self.served_paths: frozenset[str] = frozenset()
        """Every path of the served spec (set by :meth:`negotiate`), e.g. to learn whether
        slurmrestd serves the slurmdb endpoints (``-s openapi/slurmdbd``)."""
        self.slurm_release: str = ""
        """The Slurm release (``meta`` of ping, else the spec's ``info.version``)."""
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
            path = self._dialect().path(path)
        key = path.split("?")[0]
        self.requests += 1
        self.requests_by_path[key] = self.requests_by_path.get(key, 0) + 1
        try:
            r = self._http.request(method, path, params=params, json=json,
                                   headers=self._headers(tokens))
        except httpx.TimeoutException as e:
            raise TransientError(f"slurmrestd at {self.where} did not answer {method} {path} "
                                 f"in time ({e}): slurmrestd is overloaded, or slurmctld is not "
                                 "answering slurmrestd (26.05's slurmrestd waits for it longer "
                                 "than 'timeout')", site=self.site, retry_after=5.0) from e
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
        if r.status_code == 511 or SLURM_PROTOCOL_AUTHENTICATION_ERROR in nums:
            self._unspecified(r.status_code, errs)  # 24.11+: slurmctld refused the token
        if r.status_code >= 500 and not errs and versioned:  # 24.11: 502, 26.05: 500
            raise TransientError(f"slurmctld is not answering slurmrestd at {self.where} "
                                 f"(HTTP {r.status_code} without errors[] to {method} {path})",
                                 site=self.site, retry_after=5.0)
        if r.status_code >= 400 or (errs and r.status_code >= 300):
            detail = _describe(errs) if errs else "no Slurm errors[] in the answer"
            raise SlurmApiError(f"slurmrestd {method} {path} failed (HTTP {r.status_code}): "
                                f"{detail}", site=self.site, retry_after=5.0, numbers=nums,
                                status=r.status_code, errors=errs)
        if not isinstance(body, dict):
            raise SlurmApiError(f"slurmrestd {method} {path} answered HTTP {r.status_code} "
                                f"without a JSON object", site=self.site, status=r.status_code)
        if errs:  # 2xx with errors[] (e.g. DELETE of an unknown job in some versions)
            raise SlurmApiError(f"slurmrestd {method} {path}: {_describe(errs)}", site=self.site,
                                retry_after=5.0, numbers=nums, status=r.status_code,
                                errors=errs)
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
        seen = f"slurmrestd answered HTTP {status}" + (f": {_describe(errs)}" if errs else "")
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

    SPEC_PATHS = ("/openapi/v3", "/openapi.json", "/openapi")
    """Where slurmrestd serves its spec, tried in this order."""

    @property
    def version(self) -> str | None:
        """The OpenAPI version spoken (``v0.0.NN``), None before :meth:`negotiate`."""
        return self.dialect.version if self.dialect else None

    @property
    def data_parser(self) -> str:
        """What parses the answers: ``data_parser/v0.0.NN`` (Slurm 23.11+) or
        ``openapi/v0.0.NN`` (the legacy plugins); "" before :meth:`negotiate`."""
        if self.dialect is None:
            return ""
        return f"{'data_parser' if self.dialect.data_parser else 'openapi'}/{self.dialect.version}"

    def _dialect(self) -> Dialect:
        if self.dialect is None:
            self.negotiate()
        assert self.dialect is not None
        return self.dialect

    def spec(self) -> dict[str, Any]:
        """The served OpenAPI document (the first of :data:`SPEC_PATHS` that answers).

        Raises:
            UnsupportedError: none of them is an OpenAPI document.
            TransientError | AuthError: see :meth:`request`.
        """
        statuses = []
        for p in self.SPEC_PATHS:
            try:
                body = self.request("GET", p, versioned=False) or {}
            except SlurmApiError as e:  # not slurmrestd's errors[]: say only the status
                statuses.append(f"{p}: HTTP {e.status}")
                continue
            if isinstance(body.get("paths"), dict):
                return body
            statuses.append(f"{p}: no OpenAPI paths")
        raise UnsupportedError(f"{self.where} serves no OpenAPI document ({'; '.join(statuses)})"
                               ": is it a slurmrestd?", site=self.site)

    def negotiate(self) -> str:
        """Pick the newest version both the served spec and Continuum know.

        Raises:
            UnsupportedError: the server offers none of :data:`SUPPORTED_VERSIONS`
                (the message lists what it offers).
            TransientError | AuthError: see :meth:`request`.
        """
        spec = self.spec()
        paths = list(spec["paths"])
        offered = offered_versions(paths)
        dialect = choose(paths)
        if dialect is None:
            raise UnsupportedError(
                f"slurmrestd at {self.where} offers OpenAPI "
                f"{', '.join(offered) or 'no slurm plugin'}; Continuum speaks "
                f"{', '.join(SUPPORTED_VERSIONS)}. Start slurmrestd with -s openapi/slurmctld "
                "(Slurm 23.11 and newer) or -s openapi/v0.0.38 (Slurm 22.05)", site=self.site)
        self.dialect = dialect
        self.served_paths = frozenset(paths)
        self.slurm_release = self.slurm_release or release_of_spec(spec)
        log.info("site %s: slurmrestd at %s speaks %s (family %s; offers %s)", self.site,
                 self.where, dialect.version, dialect.family, ", ".join(offered))
        return dialect.version

    # ------------------------------------------------------------ endpoints

    def ping(self) -> dict[str, Any]:
        """``GET ping``; ``pings`` each carry ``ping`` "UP"/"DOWN" whatever the version.
        Records the Slurm release of ``meta``."""
        body = dict(self.request("GET", "ping") or {})
        release = release_of(body)
        if release:
            self.slurm_release = release
        body["pings"] = self._dialect().pings(body)
        return body

    def partitions(self) -> list[dict[str, Any]]:
        """Partitions in the legacy shape (:meth:`Dialect.partition`)."""
        raw = (self.request("GET", "partitions") or {}).get("partitions") or []
        return [self._dialect().partition(p) for p in raw if isinstance(p, dict)]

    def nodes(self) -> list[dict[str, Any]]:
        """Nodes in the legacy shape (:meth:`Dialect.node`)."""
        raw = (self.request("GET", "nodes") or {}).get("nodes") or []
        return [self._dialect().node(n) for n in raw if isinstance(n, dict)]

    def reservations(self) -> list[str] | None:
        """Names of the cluster's reservations; None where the version has no such
        endpoint (v0.0.36)."""
        d = self._dialect()
        if not any(p.startswith(f"/slurm/{d.version}/reservations") for p in d.served):
            return None
        raw = (self.request("GET", "reservations") or {}).get("reservations") or []
        return [str(r.get("name")) for r in raw if isinstance(r, dict)]

    def db_names(self, endpoint: str) -> list[str] | None:
        """``name`` of each record of slurmdbd's ``accounts`` or ``qos``; None where the
        site serves no slurmdbd endpoints (:meth:`Dialect.db_path`)."""
        path = self._dialect().db_path(endpoint)
        if path is None:
            return None
        raw = (self.request("GET", path, versioned=False) or {}).get(endpoint) or []
        return [str(r.get("name")) for r in raw if isinstance(r, dict)]

    def job_table(self, update_time: int = 0) -> tuple[list[dict[str, Any]] | None, int | None]:
        """Every job slurmctld holds (legacy shape) and slurmctld's ``last_update`` of the
        table (epoch s; None where the version reports none). The list is None when
        nothing changed since ``update_time`` (legacy: HTTP 304; data_parser: an empty
        table with ``last_update`` 0)."""
        d = self._dialect()
        body = self.request("GET", "jobs", params=d.jobs_params(update_time))
        if body is None or d.jobs_unchanged(body):
            return None, None
        return ([d.job(j) for j in body.get("jobs") or [] if isinstance(j, dict)],
                d.jobs_last_update(body))

    def jobs(self, update_time: int = 0) -> list[dict[str, Any]] | None:
        """:meth:`job_table` without ``last_update``."""
        return self.job_table(update_time)[0]

    def submit(self, script: str, job: dict[str, Any], *,
               tokens: TokenSource | None = None) -> int:
        """``POST job/submit`` as ``tokens``' user (the job's owner); returns the job id.

        ``job`` is in the legacy shape (see :meth:`Dialect.submit_body`)."""
        body = self.request("POST", "job/submit", json=self._dialect().submit_body(script, job),
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
