"""The load balancer in front of the gateway instances (an ASGI app; the firewall wraps it).

`GET /edge/status` shows the instances and their health; `GET /edge/metrics` its counters
(the path prefix `/edge/` never reaches a gateway). Everything else is forwarded through the
`Pool`: least connections or power of two choices over the healthy instances, ejection on
failed health checks or a refused connection, 503 when none is left, 502 when an instance broke
the exchange after the request reached it (the request is not sent twice).
"""

from __future__ import annotations

import json
from typing import Any

from edge.asgi import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    Timed,
    answer,
    problem,
    read_body,
    target_of,
)
from edge.metrics import Metrics
from edge.pool import NoHealthyInstance, Pool
from edge.upstream import Response, UpstreamError

__all__ = ["LoadBalancerApp", "forward"]

_JSON = [(b"content-type", b"application/json")]


async def forward(
    pool: Pool,
    scope: Scope,
    body: bytes,
    send: Send,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """Send the request to the pool and relay the answer; returns the status sent back."""
    try:
        _, response = await pool.send(
            scope["method"], target_of(scope), headers or scope["headers"], body
        )
    except NoHealthyInstance as exc:
        await problem(send, 503, "Service unavailable", str(exc), [(b"retry-after", b"1")])
        return 503
    except UpstreamError as exc:
        await problem(send, 502, "Bad gateway", str(exc))
        return 502
    await relay(send, response)
    return response.status


async def relay(send: Send, response: Response) -> None:
    await answer(send, response.status, response.body, response.headers)


class LoadBalancerApp:
    """Balances requests over a `Pool` of gateways."""

    def __init__(self, pool: Pool, *, metrics: Metrics, max_body: int = 1 << 20) -> None:
        self.pool = pool
        self.metrics = metrics
        self.max_body = max_body

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
            body = await read_body(scope, receive, self.max_body)
        except BodyTooLarge:
            await problem(
                send, 413, "Payload too large", f"bodies are limited to {self.max_body} bytes"
            )
            timed.done(413, "too_large")
            return
        status = await forward(self.pool, scope, body, send)
        timed.done(status, "forwarded" if status < 502 else "unavailable")

    async def _own(self, path: str, send: Send) -> None:
        if path == "/edge/status":
            await answer(send, 200, json.dumps({"instances": self.pool.status()}).encode(), _JSON)
        elif path == "/edge/metrics":
            gauges = [
                (
                    "instance_healthy",
                    "1 if the instance is in rotation.",
                    {"instance": b["instance"]},
                    1.0 if b["healthy"] else 0.0,
                )
                for b in self.pool.status()
            ]
            body = self.metrics.render(gauges).encode()
            await answer(send, 200, body, [(b"content-type", b"text/plain; version=0.0.4")])
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
