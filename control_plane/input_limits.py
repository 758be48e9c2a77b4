"""Input limits of the API: request bodies counted while they stream in, and a rate limit
for the credential endpoints.

:class:`BodyLimit` is an ASGI middleware: a body declared (``Content-Length``) or
received (chunked too) beyond its route's limit is answered 413 at once and the
connection closed (after dropping at most half a second or 8 MiB more of the body, so the
answer is not lost to a connection reset), so a server's memory never holds more than one
chunk of it; every other 413 (an artifact quota) ends the connection the same way. Artifact uploads
(``PUT /v1/artifacts/...``) get ``artifact_max_bytes``, every other route
``max_body_bytes``. The answer has the API's 422 shape: ``{"detail": [{"loc": ["body"],
"msg": "...", "type": "body_too_large"}]}``.

:func:`auth_rate_limit` is a FastAPI dependency: at most ``auth_rate_limit`` requests
(e.g. ``10/minute``, a moving window of the ``limits`` library, in memory) per client
address and route; beyond, 429 with ``Retry-After`` (s).
"""

from __future__ import annotations

import asyncio
import contextlib
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

_LINGER_S = 0.5
_LINGER_BYTES = 8 << 20
"""After a 413, the body is read and dropped for at most this long / this much (s, bytes)."""


class BodyTooLarge(HTTPException):
    """Raised into the route reading a body past its limit (answered 413)."""

    def __init__(self, limit: int, setting: str) -> None:
        self.limit, self.setting = limit, setting
        super().__init__(413, self.problem())

    def problem(self) -> list[dict[str, Any]]:
        return [{"loc": ["body"], "msg": f"the body is over {self.limit} bytes, the limit "
                 f"of this route ({self.setting})", "type": "body_too_large"}]

    def messages(self) -> list[Message]:
        """The ASGI messages of its answer."""
        body = json.dumps({"detail": self.problem()}).encode()
        return [{"type": "http.response.start", "status": 413,
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())]},
                {"type": "http.response.body", "body": body}]


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
        headers = dict(scope.get("headers", []))
        received = 0
        body_done = exceeded = started = linger = reading = False

        async def counted() -> Message:
            nonlocal received, body_done, exceeded, reading
            reading = True  # (a "100 Continue" the client expects is sent now)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    exceeded = True
                    raise too_large  # the route stops reading; its answer is replaced
            else:
                body_done = True
            return message

        async def forward(message: Message) -> None:
            """Send; a 413 while the body still streams in closes the connection, after
            reading and dropping the body for a moment (closing a socket with unread bytes
            makes the kernel reset it, which can lose a 413 not yet sent)."""
            nonlocal started, linger
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 413 and not body_done:
                    # reading the body unasked would send a late "100 Continue"
                    linger = reading or b"100-continue" not in headers.get(b"expect", b"")
                    message = {**message, "headers": [
                        *[(k, v) for k, v in message.get("headers", [])
                          if k.lower() != b"connection"], (b"connection", b"close")]}
            elif message["type"] == "http.response.body" and linger \
                    and not message.get("more_body"):
                await send({**message, "more_body": True})
                await _drain(receive)
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        async def watch(message: Message) -> None:
            if not exceeded:  # else the app answers the exception: the 413 goes out instead
                await forward(message)

        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            for message in too_large.messages():
                await forward(message)
            return
        try:
            await self.app(scope, counted, watch)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            for message in too_large.messages():
                await forward(message)


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a body for at most ``_LINGER_S`` / ``_LINGER_BYTES``."""
    dropped, deadline = 0, time.monotonic() + _LINGER_S
    with contextlib.suppress(TimeoutError):
        while dropped < _LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
            message = await asyncio.wait_for(receive(), left)
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            dropped += len(message.get("body", b""))


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
