"""Input limits of the API: request bodies counted while they stream in, and a rate limit
for the credential endpoints.

:class:`BodyLimit` is an ASGI middleware: a body declared (``Content-Length``) or
received (chunked too) beyond its route's limit is answered 413 at once, without reading
the rest, so a server's memory never holds more than one chunk of it. Artifact uploads
(``PUT /v1/artifacts/...``) get ``artifact_max_bytes``, every other route
``max_body_bytes``. The answer has the API's 422 shape: ``{"detail": [{"loc": ["body"],
"msg": "...", "type": "body_too_large"}]}``.

:func:`auth_rate_limit` is a FastAPI dependency: at most ``auth_rate_limit`` requests
(e.g. ``10/minute``, a moving window of the ``limits`` library, in memory) per client
address and route; beyond, 429 with ``Retry-After`` (s).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from fastapi import HTTPException, Request
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.settings import LimitSettings


class BodyTooLarge(HTTPException):
    """Raised into the route reading a body past its limit (answered 413)."""

    def __init__(self, limit: int, setting: str) -> None:
        self.limit, self.setting = limit, setting
        # "Connection: close" makes the server drop the connection once this is sent,
        # instead of reading (and discarding) the rest of the body first
        super().__init__(413, self.problem(), headers={"Connection": "close"})

    def problem(self) -> list[dict[str, Any]]:
        return [{"loc": ["body"], "msg": f"the body is over {self.limit} bytes, the limit "
                 f"of this route ({self.setting})", "type": "body_too_large"}]


class BodyLimit:
    """ASGI middleware counting each request's body against its route's limit."""

    def __init__(self, app: ASGIApp, settings: LimitSettings) -> None:
        self.app = app
        self.settings = settings

    def limit_of(self, scope: Scope) -> tuple[int, str]:
        """The body limit (bytes) of a request and the setting it comes from."""
        if scope.get("method") == "PUT" and scope.get("path", "").startswith("/v1/artifacts/"):
            return self.settings.artifact_max_bytes, "artifact_max_bytes"
        return self.settings.max_body_bytes, "max_body_bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_of(scope)
        too_large = BodyTooLarge(limit, setting)
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await self._answer(send, too_large)
                    return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge as e:  # raised where no handler answered it
            if not started:
                await self._answer(send, e)

    @staticmethod
    async def _answer(send: Send, e: BodyTooLarge) -> None:
        body = json.dumps({"detail": e.problem()}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def auth_rate_limit(request: Request) -> None:
    """FastAPI dependency limiting a credential endpoint (enrolment, tokens) to the
    ``auth_rate_limit`` setting per client address and route.

    Raises:
        HTTPException 429: over the limit; ``Retry-After`` says when to try again (s).
    """
    settings = request.app.state.services.settings
    item = parse(settings.auth_rate_limit)
    client = request.client.host if request.client else "unknown"
    route = request.scope.get("route")
    key = (getattr(route, "path", request.url.path), client)
    limiter: MovingWindowRateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:  # one per app, in memory: a restart forgets the counts
        limiter = request.app.state.rate_limiter = MovingWindowRateLimiter(MemoryStorage())
    if not limiter.hit(item, *key):
        reset, _ = limiter.get_window_stats(item, *key)
        wait = max(1, math.ceil(reset - time.time()))
        raise HTTPException(429, f"too many requests from {client} to this endpoint (limit "
                                 f"{settings.auth_rate_limit}, auth_rate_limit); retry in "
                                 f"{wait} s", headers={"Retry-After": str(wait)})


__all__ = ["BodyLimit", "BodyTooLarge", "auth_rate_limit"]
