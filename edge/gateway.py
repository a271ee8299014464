"""The API gateway: API keys, a token bucket per key, body limits, routing to the API.

For every request under `/v1/`:

1. authenticate: `Authorization: Bearer <key>` or `X-API-Key: <key>` (401 if missing, unknown,
   revoked or wrong; `KeyCache` compares digests in constant time), then tell the API who the
   caller is: the key's id, tenant and admin flag in `x-sagalab-*` headers next to the stack's
   gateway secret (any `x-sagalab-*` header the client sent is dropped first);
2. rate-limit: one `TokenBucket` per key (the simulator's policy code) at the key's rate divided
   by `rate_share` (the number of gateway instances, so that the key's rate holds across all of
   them when the balancer spreads load evenly); 429 with `Retry-After` when empty;
3. limit the body (413; 408 when slower than `body_timeout`) and check that a body is JSON
   the API can take, by the one rule the API and the CLI use
   (`orchestrator.jsonsafe.loads_strict`: 422 for undecodable, malformed, non-finite or
   overflowing numbers, lone surrogates, nesting deeper than `MAX_DEPTH`; 413 above
   `MAX_BYTES`) before the API sees it;
4. pass `traceparent` on, creating one when it is absent or malformed, and forward to an
   orchestrator API instance through a `Pool`.

`/healthz` answers while the process lives; `/readyz` only while an API instance is healthy;
`/metrics` has requests by outcome, latency and refusals.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable

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
    retry_after,
)
from sagalab.edge.balancer import _lifespan, forward
from sagalab.edge.keys import (
    ADMIN_HEADER,
    GATEWAY_HEADER,
    INTERNAL_PREFIX,
    KEY_ID_HEADER,
    TENANT_HEADER,
    ApiKey,
    KeyCache,
    presented_key,
)
from sagalab.edge.metrics import CONTENT_TYPE, Metrics
from sagalab.edge.policies.token_bucket import KeyBuckets, TokenBucket
from sagalab.edge.pool import Pool
from sagalab.orchestrator.jsonsafe import PayloadTooLarge, UnsafeJson, loads_strict
from sagalab.orchestrator.tracing import Tracing

__all__ = ["GatewayApp", "ensure_traceparent"]

_TRACEPARENT = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_JSON = [(b"content-type", b"application/json")]
_NO_BODY = ("GET", "HEAD", "DELETE", "OPTIONS")


def ensure_traceparent(value: bytes | None) -> tuple[bytes, bool]:
    """A traceparent for the next hop: the caller's trace with a new span id, or a new trace.

    Returns the header value and whether the trace was created here.
    """
    span = secrets.token_hex(8).encode()
    if value is not None:
        match = _TRACEPARENT.match(value.strip().lower())
        if match and match.group(1) != b"0" * 32:
            return b"00-" + match.group(1) + b"-" + span + b"-" + match.group(3), False
    return b"00-" + secrets.token_hex(16).encode() + b"-" + span + b"-01", True


def _presented_key(scope: Scope) -> str | None:
    auth = header(scope, b"authorization")
    key = header(scope, b"x-api-key")
    return presented_key(
        auth.decode("latin-1") if auth is not None else None,
        key.decode("latin-1") if key is not None else None,
    )


class GatewayApp:
    """Authenticates, rate-limits and forwards to a `Pool` of orchestrator API instances."""

    def __init__(
        self,
        pool: Pool,
        keys: KeyCache,
        *,
        metrics: Metrics,
        max_body: int = 64 * 1024,
        rate_share: int = 1,
        clock: Callable[[], float] = time.monotonic,
        instance: str = "gateway",
        secret: str | None = None,
        body_timeout: float | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.pool = pool
        self.body_timeout = body_timeout
        #: Emits a span per forwarded request (`orchestrator.tracing`); None: no tracing.
        self.tracing = tracing
        # The stack's gateway secret: sent to the API with the caller's tenant, which the API
        # believes only next to it. Without one, the key itself goes on for the API to check.
        self.secret = secret
        self.keys = keys
        self.metrics = metrics
        self.max_body = max_body
        self.rate_share = max(1, rate_share)
        self.clock = clock
        self.instance = instance
        self._buckets = KeyBuckets(share=self.rate_share)

    def bucket(self, key_id: str, rate: float, burst: float) -> TokenBucket:
        return self._buckets.bucket(key_id, rate=rate, burst=burst, now=self.clock())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(self.pool, receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith("/v1/") and path != "/v1":
            await self._own(path, send)
            return
        timed = Timed(self.metrics, "gateway")
        key = self.keys.authenticate(_presented_key(scope))
        if key is None:
            await problem(
                send,
                401,
                "Unauthorized",
                "a valid API key is required: 'Authorization: Bearer <key>' or 'X-API-Key'",
                [(b"www-authenticate", b'Bearer realm="sagalab"')],
            )
            timed.done(401, "unauthenticated")
            return
        taken = self.bucket(key.id, key.rate, key.burst).take(self.clock())
        if not taken.allowed:
            await problem(
                send,
                429,
                "Too many requests",
                f"key {key.id} is over its rate of {key.rate:g} requests/s",
                [retry_after(taken.retry_after)],
            )
            timed.done(429, "rate_limited")
            return
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
        if body and scope["method"] not in _NO_BODY:
            try:
                loads_strict(body, what="request body")
            except PayloadTooLarge as exc:
                await problem(send, 413, "Payload too large", str(exc))
                timed.done(413, "too_large")
                return
            except UnsafeJson as exc:
                detail = f"the body is not JSON the API can take: {exc}"
                await problem(send, 422, "Malformed JSON", detail)
                timed.done(422, "malformed")
                return
        incoming = header(scope, b"traceparent")
        traceparent, _ = ensure_traceparent(incoming)
        headers = self._upstream_headers(scope, key)
        headers.append((b"traceparent", traceparent))
        started = time.time()
        status = await forward(self.pool, scope, body, send, headers)
        timed.done(status, "forwarded" if status < 502 else "unavailable")
        if self.tracing is not None:
            self.tracing.hop_span(
                f"gateway {scope['method']} {scope['path']}",
                incoming,
                traceparent,
                started,
                time.time(),
                **{"http.response.status_code": status, "sagalab.instance": self.instance},
            )

    def _upstream_headers(self, scope: Scope, key: ApiKey) -> list[tuple[bytes, bytes]]:
        """The client's headers minus any `x-sagalab-*` it sent (those are ours to set), plus
        who the caller is, vouched for by the secret."""
        dropped = {b"traceparent"}
        if self.secret is not None:
            dropped |= {b"authorization", b"x-api-key"}
        prefix = INTERNAL_PREFIX.encode()
        headers = [
            (k, v)
            for k, v in scope["headers"]
            if k not in dropped and not k.lower().startswith(prefix)
        ]
        if self.secret is not None:
            headers += [
                (GATEWAY_HEADER.encode(), self.secret.encode()),
                (TENANT_HEADER.encode(), key.tenant.encode()),
                (KEY_ID_HEADER.encode(), key.id.encode()),
            ]
            if key.admin:
                headers.append((ADMIN_HEADER.encode(), b"true"))
        return headers

    async def _own(self, path: str, send: Send) -> None:
        if path == "/healthz":
            await answer(
                send, 200, json.dumps({"status": "ok", "instance": self.instance}).encode(), _JSON
            )
        elif path == "/readyz":
            healthy = [b for b in self.pool.status() if b["healthy"]]
            if healthy:
                await answer(send, 200, b'{"status":"ready"}', _JSON)
            else:
                await problem(send, 503, "Not ready", "no orchestrator API instance is healthy")
        elif path == "/metrics":
            gauges: list[tuple[str, str, dict[str, str], float]] = [
                (
                    "upstream_healthy",
                    "1 if the API instance is in rotation.",
                    {"instance": str(b["instance"])},
                    1.0 if b["healthy"] else 0.0,
                )
                for b in self.pool.status()
            ]
            body = self.metrics.render(gauges).encode()
            await answer(send, 200, body, [(b"content-type", CONTENT_TYPE.encode())])
        else:
            await problem(send, 404, "Not found", f"no route {path}; the API lives under /v1/")


def describe(metrics: Metrics) -> Metrics:
    """HELP lines for the gateway's and balancer's own counters."""
    metrics.describe(
        "requests_total", "counter", "Requests by outcome and status.", ("outcome", "status")
    )
    metrics.describe("request_duration_seconds", "histogram", "Request latency.")
    metrics.describe(
        "firewall_blocked_total", "counter", "Requests the firewall refused.", ("reason",)
    )
    return metrics
