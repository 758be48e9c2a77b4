"""The Python client of the REST API (httpx).

    >>> from control_plane.client import Client
    >>> c = Client("http://127.0.0.1:8080", token=open("state/admin.token").read().strip())
    >>> wf = c.submit_file("examples/workflows/edge-vision.yaml")
    >>> c.wait(wf["id"])["state"]
    'Succeeded'

Without ``token`` the client uses ``$CONTINUUM_TOKEN``, else the current context of
``~/.config/continuum/config.yaml`` (``$CONTINUUM_CONFIG`` to use another file)::

    current-context: lab
    contexts:
      lab: {server: "https://continuum.lab:8080", token: "eyJ...", ca: "/etc/continuum/ca.pem"}

A request only the leader replica carries out (site removal) that a follower answers
with a 307 is sent again to the leader's URL, with the token (:data:`MAX_LEADER_REDIRECTS`).
A 429 with ``Retry-After`` (a submit while the backlog is over its bound, a credential
endpoint's rate limit: nothing was done) is sent again after the time it names, at most
``busy_retries`` times and :data:`MAX_RETRY_AFTER_S` per wait; then its
:class:`ApiError` is raised.

Every method raises :class:`ApiError` (with the HTTP status and the server's
``detail``) on a non-2xx answer, and :class:`ConnectionFailed` when the control plane
cannot be reached.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

TERMINAL_WORKFLOW_STATES = ("Succeeded", "Failed", "Cancelled")
MAX_LEADER_REDIRECTS = 3
"""How many 307/308 answers (a follower replica pointing at the leader) one call follows."""
BUSY_RETRIES = 5
"""Default of ``busy_retries``: how many 429 answers with ``Retry-After`` one call waits
out before raising."""
MAX_RETRY_AFTER_S = 30.0
"""Longest wait honoured for one ``Retry-After`` (s): a larger value is waited this long."""
LIST_PAGE = 5000
"""Default ``page_size`` of :meth:`Client.nodes` and :meth:`Client.devices`: the server's
largest page, since a page of devices costs the server about as much as the whole list
(5,000 devices: 0.9 s in pages of 5,000, 3.5 s in pages of 500)."""


def retry_after_s(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of a 429 answer in seconds (capped at
    :data:`MAX_RETRY_AFTER_S`); None for another answer, or one without a usable
    delay-seconds value."""
    if response.status_code != 429:
        return None
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER_S) if value == value else None


class ApiError(Exception):
    """The API answered with an error. ``detail`` is a string or a list of problems."""

    def __init__(self, status: int, detail: Any):
        self.status, self.detail = status, detail
        if isinstance(detail, list):
            text = "\n".join(f"  {'.'.join(map(str, p.get('loc', [])))}: {p.get('msg')}"
                             for p in detail)
            super().__init__(f"HTTP {status}:\n{text}")
        else:
            super().__init__(f"HTTP {status}: {detail}")


class ConnectionFailed(Exception):
    """The control plane did not answer at all."""


def config_path() -> Path:
    """``$CONTINUUM_CONFIG``, else ``~/.config/continuum/config.yaml``."""
    return Path(os.environ.get("CONTINUUM_CONFIG")
                or Path.home() / ".config" / "continuum" / "config.yaml")


def load_config() -> dict[str, Any]:
    """The client configuration (``{}`` when the file is absent).

    Raises:
        ValueError: the file is not a YAML mapping.
    """
    path = config_path()
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'contexts' and 'current-context'")
    return data


def current_context() -> dict[str, Any]:
    """The current context's ``{server, token, ca}`` (``{}`` when none is set)."""
    cfg = load_config()
    ctx = (cfg.get("contexts") or {}).get(cfg.get("current-context") or "")
    return ctx if isinstance(ctx, dict) else {}


def save_config(cfg: dict[str, Any]) -> Path:
    """Write the client configuration (mode 0600: it holds tokens); returns its path."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=True)
    os.chmod(path, 0o600)
    return path


class Client:
    """A thin, typed wrapper over the ``/v1`` API. ``timeout`` in seconds.

    ``url``: default ``$CONTINUUM_URL``, the current context's ``server``, else
    http://127.0.0.1:8080. ``token``: default ``$CONTINUUM_TOKEN``, else the current
    context's; sent as ``Authorization: Bearer``. ``ca``: a CA bundle file to verify an
    https server with (default: the context's, else the system's). ``busy_retries``: how
    many 429 answers with ``Retry-After`` one call waits out (0: raise at the first).
    """

    def __init__(self, url: str | None = None, timeout: float = 10.0, *,
                 token: str | None = None, ca: str | None = None,
                 busy_retries: int = BUSY_RETRIES):
        self.busy_retries = busy_retries
        ctx = current_context()
        self.url = (url or os.environ.get("CONTINUUM_URL") or ctx.get("server")
                    or "http://127.0.0.1:8080").rstrip("/")
        token = token or os.environ.get("CONTINUUM_TOKEN") or ctx.get("token")
        headers = {"Authorization": f"Bearer {token.strip()}"} if token else {}
        cafile = ca or ctx.get("ca")
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cafile) if cafile else True
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers,
                                  verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._send(method, path, **kw)
        for _ in range(self.busy_retries):
            wait = retry_after_s(r)
            if wait is None:
                break
            time.sleep(wait)  # a 429: nothing was done, so sending it again is safe
            r = self._send(method, path, **kw)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ApiError(r.status_code, detail)
        return r.json() if r.content else None

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
            # a follower replica sends a request that needs the leader there (307): sent
            # again as is, with the token (httpx drops it on a redirect to another host)
            for _ in range(MAX_LEADER_REDIRECTS):
                if r.status_code not in (307, 308) or "location" not in r.headers:
                    break
                kw.pop("params", None)  # the Location carries the query
                r = self._http.request(method, r.headers["location"], **kw)
        except httpx.TransportError as e:
            raise ConnectionFailed(f"cannot reach the control plane at {self.url}: {e}. "
                                   "Is `continuum server` running? (set --url or CONTINUUM_URL)"
                                   ) from e
        return r

    # ------------------------------------------------------------ workflows

    def submit(self, document: str | bytes | dict[str, Any]) -> dict[str, Any]:
        """Submit a workflow: a dict (sent as JSON) or YAML/JSON text."""
        if isinstance(document, dict):
            return self._call("POST", "/v1/workflows", json=document)  # type: ignore[no-any-return]
        return self._call("POST", "/v1/workflows", content=document,  # type: ignore[no-any-return]
                          headers={"Content-Type": "application/yaml"})

    def submit_file(self, path: str | Path) -> dict[str, Any]:
        """Submit a YAML or JSON workflow file."""
        return self.submit(Path(path).read_bytes())

    def workflows(self, state: str | None = None, limit: int = 50,
                  offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state:
            params["state"] = state
        return self._call("GET", "/v1/workflows", params=params)  # type: ignore[no-any-return]

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/workflows/{workflow_id}")  # type: ignore[no-any-return]

    def cancel(self, workflow_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/workflows/{workflow_id}")  # type: ignore[no-any-return]

    def wait(self, workflow_id: str, timeout: float = 600.0, interval: float = 0.5,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the workflow is Succeeded, Failed or Cancelled; returns it.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            wf = self.workflow(workflow_id)
            if on_update:
                on_update(wf)
            if wf["state"] in TERMINAL_WORKFLOW_STATES:
                return wf
            if time.monotonic() > deadline:
                raise TimeoutError(f"workflow {workflow_id} still {wf['state']} after {timeout}s")
            time.sleep(interval)

    # ------------------------------------------------------------ runs, sites, nodes

    def runs(self, workflow: str | None = None, state: str | None = None,
             limit: int = 100) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if workflow:
            params["workflow"] = workflow
        if state:
            params["state"] = state
        return self._call("GET", "/v1/runs", params=params)  # type: ignore[no-any-return]

    def run(self, run_id: str, tail: int = 50) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{run_id}", params={"tail": tail})  # type: ignore[no-any-return]

    def sites(self) -> dict[str, Any]:
        return self._call("GET", "/v1/sites")  # type: ignore[no-any-return]

    def register_site(self, spec: dict[str, Any] | str | bytes) -> dict[str, Any]:
        if isinstance(spec, dict):
            return self._call("POST", "/v1/sites", json=spec)  # type: ignore[no-any-return]
        return self._call("POST", "/v1/sites", content=spec,  # type: ignore[no-any-return]
                          headers={"Content-Type": "application/yaml"})

    def remove_site(self, name: str, runs: str = "cancel") -> dict[str, Any]:
        """``DELETE /v1/sites/{name}?runs=cancel|leave`` (carried out by the leader: a
        follower's 307 is followed)."""
        return self._call("DELETE", f"/v1/sites/{name}",  # type: ignore[no-any-return]
                          params={"runs": runs})

    def _all_pages(self, path: str, params: dict[str, Any], limit: int | None,
                   page_size: int) -> dict[str, Any]:
        """Every item of a keyset-paginated list (``GET /v1/nodes``, ``/v1/devices``),
        following ``next``; at most ``limit`` items when given. Returns
        ``{"items", "next", "total"}``: ``next`` is null when everything was fetched,
        else the cursor to continue from; ``total`` is the server's count of matches."""
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        items: list[Any] = []
        cursor: str | None = None
        total = 0
        while True:
            want = page_size if limit is None else min(page_size, limit - len(items))
            page = self._call("GET", path, params={**params, "limit": want,
                                                  **({"cursor": cursor} if cursor else {})})
            items.extend(page["items"])
            cursor, total = page.get("next"), page.get("total", len(items))
            if cursor is None or (limit is not None and len(items) >= limit):
                return {"items": items, "next": cursor, "total": total}

    def nodes(self, site: str | None = None, tier: str | None = None, *,
              ready: bool | None = None, prefix: str | None = None,
              limit: int | None = None, page_size: int = LIST_PAGE) -> dict[str, Any]:
        """``GET /v1/nodes``, every page: ``{"items": [node...], "next", "total"}`` in id
        order; at most ``limit`` nodes (``next`` then continues). ``page_size``: nodes per
        request (1–5000, default :data:`LIST_PAGE`). Filters: ``site``, ``tier``,
        ``ready``, ``prefix`` (of the name).

        Raises:
            ApiError: 422 for a bad filter or ``page_size``.
            ValueError: ``limit`` below 1.
        """
        params = {k: v for k, v in (("site", site), ("tier", tier), ("prefix", prefix)) if v}
        if ready is not None:
            params["ready"] = str(ready).lower()
        return self._all_pages("/v1/nodes", params, limit, page_size)

    def devices(self, site: str | None = None, state: str | None = None, *,
                prefix: str | None = None, limit: int | None = None,
                page_size: int = LIST_PAGE) -> dict[str, Any]:
        """``GET /v1/devices``, every page: ``{"items": [device...], "next", "total"}`` in
        ``site/deviceId`` order; at most ``limit`` devices (``next`` then continues).
        ``page_size``: devices per request (1–5000, default :data:`LIST_PAGE`). Filters:
        ``site``, ``state`` (online, offline, lost, unknown), ``prefix`` (of the device id).

        Raises:
            ApiError: 422 for a bad filter or ``page_size``.
            ValueError: ``limit`` below 1.
        """
        params = {k: v for k, v in (("site", site), ("state", state), ("prefix", prefix)) if v}
        return self._all_pages("/v1/devices", params, limit, page_size)

    def topology(self) -> dict[str, Any]:
        return self._call("GET", "/v1/topology")  # type: ignore[no-any-return]

    # ------------------------------------------------------------ tokens, audit

    def create_token(self, roles: list[str], tenants: list[str] | None = None,
                     subject: str | None = None, ttl_s: float | None = None,
                     description: str = "") -> dict[str, Any]:
        """A new token (``token`` is in the answer only this once)."""
        body: dict[str, Any] = {"roles": roles, "tenants": tenants or [],
                                "description": description}
        if subject:
            body["subject"] = subject
        if ttl_s:
            body["ttlS"] = ttl_s
        return self._call("POST", "/v1/tokens", json=body)  # type: ignore[no-any-return]

    def tokens(self, subject: str | None = None) -> dict[str, Any]:
        params = {"subject": subject} if subject else {}
        return self._call("GET", "/v1/tokens", params=params)  # type: ignore[no-any-return]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/tokens/{token_id}")  # type: ignore[no-any-return]

    def audit(self, **filters: Any) -> dict[str, Any]:
        """``GET /v1/audit``; filters: subject, tenant, method, outcome, path, since,
        limit, offset."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/v1/audit", params=params)  # type: ignore[no-any-return]

    def ready(self) -> bool:
        """True when ``/readyz`` answers 200."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False
