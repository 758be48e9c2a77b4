"""The Python client of the REST API (httpx).

    >>> from control_plane.client import Client
    >>> c = Client("http://127.0.0.1:8080")
    >>> wf = c.submit_file("examples/workflows/edge-vision.yaml")
    >>> c.wait(wf["id"])["state"]
    'Succeeded'

Every method raises :class:`ApiError` (with the HTTP status and the server's
``detail``) on a non-2xx answer, and :class:`ConnectionFailed` when the control plane
cannot be reached.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

TERMINAL_WORKFLOW_STATES = ("Succeeded", "Failed", "Cancelled")


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


class Client:
    """A thin, typed wrapper over the ``/v1`` API. ``timeout`` in seconds."""

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 10.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ConnectionFailed(f"cannot reach the control plane at {self.url}: {e}. "
                                   "Is `continuum server` running? (set --url or CONTINUUM_URL)"
                                   ) from e
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ApiError(r.status_code, detail)
        return r.json() if r.content else None

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

    def nodes(self, site: str | None = None, tier: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in (("site", site), ("tier", tier)) if v}
        return self._call("GET", "/v1/nodes", params=params)  # type: ignore[no-any-return]

    def devices(self) -> dict[str, Any]:
        return self._call("GET", "/v1/devices")  # type: ignore[no-any-return]

    def topology(self) -> dict[str, Any]:
        return self._call("GET", "/v1/topology")  # type: ignore[no-any-return]

    def ready(self) -> bool:
        """True when ``/readyz`` answers 200."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False
