"""Plain ASGI plumbing shared by the edge apps: bodies with a size limit, answers, forwarding.

The edge apps are bare ASGI callables (no framework): they run once per request on every hop,
and a framework's routing and request objects would cost more than the work they do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sagalab.edge.metrics import Metrics

__all__ = [
    "BodyDeadline",
    "BodySlow",
    "BodyTooLarge",
    "answer",
    "header",
    "problem",
    "read_body",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body is over the limit."""


class BodySlow(Exception):
    """The request body did not arrive within the body timeout (answer 408, close)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the request body did not arrive within {timeout:g}s")
        self.timeout = timeout


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), if present."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def read_body(
    scope: Scope, receive: Receive, limit: int, timeout: float | None = None
) -> bytes:
    """The whole request body; BodyTooLarge as soon as it is known to exceed `limit`, and
    BodySlow if it has not all come within `timeout` seconds (None: no limit)."""
    if timeout is None:
        return await _read_body(scope, receive, limit)
    try:
        async with asyncio.timeout(timeout):
            return await _read_body(scope, receive, limit)
    except TimeoutError:
        raise BodySlow(timeout) from None


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
        except ValueError:
            pass  # the server has already refused a malformed length
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a whole response."""
    out = list(headers or [])
    out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def problem(
    send: Send,
    status: int,
    title: str,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An RFC 7807 problem document."""
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    out = [(b"content-type", b"application/problem+json")] + list(headers or [])
    await answer(send, status, body, out)


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    """A Retry-After header in whole seconds (at least 1)."""
    whole = 1 if seconds != seconds or seconds == float("inf") else max(1, int(seconds + 0.999))
    return (b"retry-after", str(whole).encode())


def target_of(scope: Scope) -> str:
    """The request target (raw path and query) to send upstream."""
    path = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    target = path.decode("latin-1")
    return f"{target}?{query.decode('latin-1')}" if query else target


class BodyDeadline:
    """An ASGI wrapper giving an app that reads its own body (the orchestrator API) the edge's
    body timeout: the whole body is read first, within `timeout` seconds of the headers (408
    and the connection closed after it) and up to `max_body` bytes (413), then handed to the
    app as one message."""

    def __init__(self, app: Any, *, timeout: float, max_body: int) -> None:
        self.app = app
        self.timeout = timeout
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.max_body, self.timeout)
        except BodyTooLarge:
            detail = f"bodies are limited to {self.max_body} bytes"
            await problem(send, 413, "Payload too large", detail, [(b"connection", b"close")])
            return
        except BodySlow as exc:
            # The rest of the body may still come: the connection cannot be reused.
            await problem(send, 408, "Request timeout", str(exc), [(b"connection", b"close")])
            return
        given = False

        async def replay() -> dict[str, Any]:
            nonlocal given
            if given:
                return await receive()  # after the body: only a disconnect comes
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class Timed:
    """Records one request's status and latency in `metrics` when it ends."""

    __slots__ = ("metrics", "started", "name")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.metrics = metrics
        self.name = name
        self.started = time.perf_counter()

    def done(self, status: int, outcome: str) -> None:
        self.metrics.inc("requests_total", (("outcome", outcome), ("status", str(status))))
        self.metrics.observe("request_duration_seconds", time.perf_counter() - self.started)
