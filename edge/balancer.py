"""The load balancer in front of the gateway instances (an ASGI app; the firewall wraps it).

`GET /edge/status` shows the instances and their health; `GET /edge/metrics` its counters
(the path prefix `/edge/` never reaches a gateway). Everything else is forwarded through the
`Pool`: least connections or power of two choices over the healthy instances, ejection on
failed health checks or a refused connection, 503 when none is left.

At most one saga per client POST: a `POST /v1/sagas` that carries no Idempotency-Key gets one
here (`edge-` and 128 random bits), so that when a gateway dies holding it, it can be sent to
another gateway under the same key and the API answers with the saga the first one created.
When it cannot be sent again (no other gateway), the client gets 502 "the outcome is unknown:
retry with Idempotency-Key: K", with the key in an `Idempotency-Key` header: retrying with it
is safe, whatever happened; when no answer came in time, the same with 504.

The API honours keys nowhere else (`edge.pool.KEYED_ROUTES`): a rollback or resume is given no
key and is never sent twice. If its outcome is unknown, the client gets 502 (504 on a timeout)
saying so and to GET the saga to see whether it took effect.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from sagalab.edge.asgi import (
    BodySlow,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    Timed,
    answer,
    header,
    problem,
    read_body,
    target_of,
)
from sagalab.edge.metrics import CONTENT_TYPE, Metrics
from sagalab.edge.pool import SAFE_METHODS, NoHealthyInstance, Pool, honours_key
from sagalab.edge.upstream import Response, UpstreamError, UpstreamFailed, UpstreamTimeout
from sagalab.orchestrator.tracing import Tracing

__all__ = ["LoadBalancerApp", "forward", "with_idempotency_key"]

_JSON = [(b"content-type", b"application/json")]


async def forward(
    pool: Pool,
    scope: Scope,
    body: bytes,
    send: Send,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """Send the request to the pool and relay the answer; returns the status sent back."""
    out = headers or scope["headers"]
    method = scope["method"]
    target = target_of(scope)
    try:
        _, response = await pool.send(method, target, out, body)
    except NoHealthyInstance as exc:
        await problem(send, 503, "Service unavailable", str(exc), [(b"retry-after", b"1")])
        return 503
    except UpstreamFailed as exc:
        status = 504 if isinstance(exc, UpstreamTimeout) else 502
        if method in SAFE_METHODS:
            title = "Gateway timeout" if status == 504 else "Bad gateway"
            await problem(send, status, title, str(exc))
        elif honours_key(method, target):
            await unknown_outcome(send, status, exc, dict(out).get(b"idempotency-key"))
        else:
            await unknown_effect(send, status, exc, scope["path"])
        return status
    except UpstreamError as exc:
        await problem(send, 502, "Bad gateway", str(exc))
        return 502
    await relay(send, response)
    return response.status


async def unknown_outcome(send: Send, status: int, exc: UpstreamError, key: bytes | None) -> None:
    """`status` for a saga submission that may or may not have taken effect, saying how to
    retry safely."""
    if key is None:
        detail = (
            f"the outcome is unknown ({exc}): check whether it took effect before sending it "
            "again, or send an Idempotency-Key"
        )
        await problem(send, status, "Outcome unknown", detail)
        return
    text = key.decode("latin-1")
    detail = f"the outcome is unknown: retry with Idempotency-Key: {text} ({exc})"
    await problem(send, status, "Outcome unknown", detail, [(b"idempotency-key", key)])


_SAGA_PATH = re.compile(r"^(/v1/sagas/[^/]+)/")


async def unknown_effect(send: Send, status: int, exc: UpstreamError, path: str) -> None:
    """`status` for a request the API takes no key for (a rollback, a resume) that may or may
    not have taken effect: sending it again is not safe, looking is."""
    saga = _SAGA_PATH.match(path)
    look = f"GET {saga.group(1)}" if saga else "GET the saga"
    detail = (
        f"the outcome is unknown ({exc}): {look} to see whether it took effect before "
        "sending it again"
    )
    await problem(send, status, "Outcome unknown", detail)


def with_idempotency_key(
    method: str, target: str, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """`headers`, with an Idempotency-Key of the edge's own where the API honours one and the
    client sent none."""
    if not honours_key(method, target) or any(k == b"idempotency-key" for k, _ in headers):
        return headers
    return [*headers, (b"idempotency-key", b"edge-" + secrets.token_hex(16).encode())]


async def relay(send: Send, response: Response) -> None:
    await answer(send, response.status, response.body, response.headers)


class LoadBalancerApp:
    """Balances requests over a `Pool` of gateways."""

    def __init__(
        self,
        pool: Pool,
        *,
        metrics: Metrics,
        max_body: int = 1 << 20,
        body_timeout: float | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.max_body = max_body
        self.body_timeout = body_timeout
        #: Emits a span per forwarded request, starting the trace when the client sent none.
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(self.pool, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/edge/"):
            await self._own(path, send)
            return
        timed = Timed(self.metrics, "lb")
        try:
            body = await read_body(scope, receive, self.max_body, self.body_timeout)
        except BodyTooLarge:
            await problem(
                send, 413, "Payload too large", f"bodies are limited to {self.max_body} bytes"
            )
            timed.done(413, "too_large")
            return
        except BodySlow as exc:
            # The rest of the body may still come: the connection cannot be reused.
            await problem(send, 408, "Request timeout", str(exc), [(b"connection", b"close")])
            timed.done(408, "slow_body")
            return
        headers = with_idempotency_key(scope["method"], target_of(scope), scope["headers"])
        if self.tracing is None:
            status = await forward(self.pool, scope, body, send, headers)
            timed.done(status, "forwarded" if status < 502 else "unavailable")
            return
        from sagalab.edge.gateway import ensure_traceparent  # here: gateway imports this module

        incoming = header(scope, b"traceparent")
        traceparent, _ = ensure_traceparent(incoming)
        headers = [(k, v) for k, v in headers if k != b"traceparent"]
        headers.append((b"traceparent", traceparent))
        started = time.time()
        status = await forward(self.pool, scope, body, send, headers)
        timed.done(status, "forwarded" if status < 502 else "unavailable")
        self.tracing.hop_span(
            f"edge {scope['method']} {scope['path']}",
            incoming,
            traceparent,
            started,
            time.time(),
            **{"http.response.status_code": status},
        )

    async def _own(self, path: str, send: Send) -> None:
        if path == "/edge/status":
            await answer(send, 200, json.dumps({"instances": self.pool.status()}).encode(), _JSON)
        elif path == "/edge/metrics":
            gauges = [
                (
                    "instance_healthy",
                    "1 if the instance is in rotation.",
                    {"instance": str(b["instance"])},
                    1.0 if b["healthy"] else 0.0,
                )
                for b in self.pool.status()
            ]
            body = self.metrics.render(gauges).encode()
            await answer(send, 200, body, [(b"content-type", CONTENT_TYPE.encode())])
        elif path == "/edge/healthz":
            await answer(send, 200, b'{"status":"ok"}', _JSON)
        elif path == "/edge/readyz":
            if any(b["healthy"] for b in self.pool.status()):
                await answer(send, 200, b'{"status":"ready"}', _JSON)
            else:
                await problem(send, 503, "Not ready", "no gateway instance is healthy")
        else:
            await problem(send, 404, "Not found", f"no edge endpoint {path}")


async def _lifespan(pool: Pool, receive: Receive, send: Send) -> None:
    """Start health checks with the server and stop them with it."""
    while True:
        message: dict[str, Any] = await receive()
        if message["type"] == "lifespan.startup":
            pool.start()
            await pool.check_once()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await pool.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
