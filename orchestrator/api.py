"""The orchestrator HTTP API: submit, inspect, resume and roll back sagas over HTTP.

It never runs a saga itself. `POST /v1/sagas` stores the saga queued (`run_after` set) in the
same SQLite file the workers (`sagalab worker`) claim from, and answers 202 with a `Location`;
resume, rollback, retry and skip of a step are the CLI's operator actions
(`orchestrator.operations`): they append what the journal needs and put the saga back on the
queue.

Errors are RFC 7807 problem documents (`application/problem+json`): 404 unknown saga, 409 an
operator action that does not apply (a resume of a saga a live worker runs included) or an
idempotency key reused with other input, 413 a body over `MAX_BYTES` and 422 a body that is not
what the API takes (undecodable, malformed, NaN, nested too deep, or a value of the wrong
type or a field the route does not take: request models are strict and closed, so
`"force": "yes"` is not true and `"froce": true` is no field) on every route, or an
operator request naming a step the flow does not have. Nothing a client sends yields a 500.
The statuses of sagalab's own errors come from `orchestrator.http_status`, which the console
answers with too.

Every `/v1/` request names its caller, or gets 401: either a gateway vouches for it (the
stack's gateway secret in `x-sagalab-gateway`, compared in constant time, with the key's tenant
in `x-sagalab-tenant`), or the client presents an API key to the API itself (`keys_db`). Without
the secret, `x-sagalab-*` headers are ignored. A key presented directly gets what the gateway
would give it: its rate is enforced here by the same per-key token buckets (`KeyBuckets`), 429
with `Retry-After` when spent; a request a gateway vouches for was limited there and is not
limited again. With `direct_keys=False` (what a stack runs) only the gateways' requests are
taken: every client goes through the edge's firewall. A caller sees only its tenant's sagas:
another tenant's saga is 404, as if it did not exist; idempotency keys are per tenant; an admin
key sees every tenant. `/healthz`, `/readyz`, `/metrics` and the OpenAPI document stay open (load
balancers and scrapers call them without a key; they show counts, never a saga).

Store handles are per thread (a SQLite connection is not shareable), and the handlers are plain
`def` functions that Starlette runs in its thread pool, so a busy database blocks a worker
thread rather than the event loop.
"""

from __future__ import annotations

import hmac
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sagalab.edge.asgi import retry_after
from sagalab.edge.errors import KeyRequestError
from sagalab.edge.keys import (
    ADMIN_HEADER,
    GATEWAY_HEADER,
    KEY_ID_HEADER,
    TENANT_HEADER,
    KeyCache,
    check_tenant,
    open_key_store,
    presented_key,
)
from sagalab.edge.metrics import CONTENT_TYPE, GaugeSample, Metrics
from sagalab.edge.policies.token_bucket import KeyBuckets
from sagalab.orchestrator import operations
from sagalab.orchestrator.errors import (
    FlowNotFoundError,
    SagaError,
    SagaNotFoundError,
)
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.flowfile import example_flow_names, load_flow
from sagalab.orchestrator.http_status import HttpAnswer, http_status
from sagalab.orchestrator.jsonsafe import MAX_BYTES, PayloadTooLarge, UnsafeJson, loads_strict
from sagalab.orchestrator.limits import API_DB_TIMEOUT
from sagalab.orchestrator.runner import new_saga_id, new_trace_id, validate_input
from sagalab.orchestrator.saga import SagaStatus
from sagalab.orchestrator.store import SagaPage, Store
from sagalab.orchestrator.stores import open_store, postgres_url, shown
from sagalab.orchestrator.tracing import Tracing, run_span_id
from sagalab.orchestrator.views import saga_summary, saga_view
from sagalab.orchestrator.watchdog import DatabaseWatchdog

__all__ = [
    "Caller",
    "CancelBody",
    "ForkBody",
    "NoBody",
    "RollbackBody",
    "SagaCreate",
    "SkipBody",
    "StrictBody",
    "create_app",
]

# Threads that write submitted sagas (POST /v1/sagas), per API process. A few are enough to
# keep the group writer's batches full (a caller waits for a COMMIT, not for CPU); each one
# more only adds a thread taking turns on the GIL with the event loop (4, 8 and 16 measured:
# 8 had the best p99 and throughput; benchmarks/README.md, "Group commit").
SUBMIT_THREADS = 8
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_FLOW_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_BODY_PARSE_FAILED = "There was an error parsing the body"  # FastAPI's words (routing.py)


class StrictBody(BaseModel):
    """Base of every request body: strict (a value of another JSON type is refused, 422,
    never coerced) and closed (a field the model does not name is refused, 422, naming it:
    a typo such as `"froce": true` must not quietly do the default)."""

    model_config = ConfigDict(strict=True, extra="forbid")


class SagaCreate(StrictBody):
    """Body of `POST /v1/sagas`."""

    flow: str = Field(pattern=_FLOW_NAME, description="Name of a flow the API serves.")
    input: dict[str, Any] = Field(description="The flow's input (a JSON object).")


class RollbackBody(StrictBody):
    """Optional body of `POST /v1/sagas/{id}/rollback`."""

    # Strict: only true or false is a `force` ("yes" or 1 once forced a rollback past the
    # pivot's fence).

    # Defaults passed as `default=`: the form type checkers read as "this field is optional"
    # (a positional default is pydantic-only, and mypy would require the argument).
    reason: str = Field(default="rollback requested over the API", max_length=operations.MAX_REASON)
    force: bool = Field(
        default=False,
        description="Compensate even past the pivot step, or while its call is in flight.",
    )


class CancelBody(StrictBody):
    """Optional body of `POST /v1/sagas/{id}/cancel`."""

    reason: str = Field(default="cancelled over the API", max_length=operations.MAX_REASON)


class ForkBody(StrictBody):
    """Body of `POST /v1/sagas/{id}/fork`."""

    from_step: str = Field(
        max_length=operations.MAX_STEP_NAME, description="First step the fork runs again."
    )
    input: dict[str, Any] | None = Field(
        default=None, description="The fork's input (default: the old saga's)."
    )
    set: list[str] = Field(
        default_factory=list,
        max_length=operations.MAX_SETS,
        description="`input.KEY=VALUE` edits, in order.",
    )
    force: bool = Field(default=False, description="Accept what the plan says --force allows.")
    dry_run: bool = Field(default=False, description="Answer the plan only; change nothing.")


class SkipBody(StrictBody):
    """Body of `POST /v1/sagas/{id}/steps/{step}/skip`."""

    reason: str = Field(max_length=operations.MAX_REASON, description="Why, for the journal.")


class NoBody(StrictBody):
    """Optional body of the routes that take no argument (resume, retry of a step): empty, or
    `{}`; any field is refused as on every other route."""


class ApiError(Exception):
    """An answer other than success, rendered as a problem document."""

    def __init__(
        self, status: int, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        super().__init__(detail)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the tenant its key belongs to, and whether it sees every tenant."""

    tenant: str
    admin: bool = False
    key_id: str | None = None

    @property
    def scope(self) -> str | None:
        """The tenant the caller's reads are limited to (None: every tenant)."""
        return None if self.admin else self.tenant


async def _caller(request: Request) -> Caller:
    authenticate: _Authenticator = request.app.state.authenticate
    # A gateway's word is checked here, on the event loop (a comparison, no I/O): a thread
    # hop less per request, which a sync dependency would cost. A key presented directly
    # may need the key store, so it is looked up in the thread pool.
    caller = authenticate.vouched(request)
    if caller is not None:
        return caller
    return await run_in_threadpool(authenticate, request)


Who = Annotated[Caller, Depends(_caller)]


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "Unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="sagalab"'})


class _Authenticator:
    """Names the caller of a request from the gateway's word or from a key it presents.

    A key presented directly is rate-limited here as a gateway would limit it (429); with
    `direct_keys` off, only the gateways' requests are taken (401 for any other).
    """

    def __init__(
        self,
        secret: str | None,
        keys: KeyCache | None,
        *,
        direct_keys: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = secret.encode() if secret is not None else None
        self._keys = keys
        self._direct_keys = direct_keys
        self._buckets = KeyBuckets()
        self._clock = clock
        # Starlette runs sync dependencies in its thread pool and KeyCache is not thread-safe:
        # one lock serialises key look-ups (a cache hit holds it for a dictionary read).
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the key store (at shutdown: a PostgreSQL one holds a connection)."""
        if self._keys is not None:
            self._keys.store.close()

    def __call__(self, request: Request) -> Caller:
        with self._lock:
            return self._caller(request)

    def vouched(self, request: Request) -> Caller | None:
        """The caller a gateway vouches for (ApiError 401 if its secret or tenant is wrong),
        or None when no gateway spoke. No I/O and no shared state: safe on the event loop."""
        headers = request.headers
        vouched = headers.get(GATEWAY_HEADER)
        if vouched is None:
            return None
        if self._secret is None or not hmac.compare_digest(vouched.encode("latin-1"), self._secret):
            raise _unauthorized("the gateway secret does not match this API's")
        try:
            tenant = check_tenant(headers.get(TENANT_HEADER, ""))
        except KeyRequestError:
            raise _unauthorized("the gateway named no valid tenant") from None
        return Caller(tenant, headers.get(ADMIN_HEADER) == "true", headers.get(KEY_ID_HEADER))

    def _caller(self, request: Request) -> Caller:
        caller = self.vouched(request)
        if caller is not None:
            return caller
        headers = request.headers
        if not self._direct_keys:
            raise _unauthorized(
                "this API takes requests only through the stack's gateways: send them to the "
                "edge (`sagalab stack status` shows its URL)"
            )
        key = None
        presented = presented_key(headers.get("authorization"), headers.get("x-api-key"))
        if presented and self._keys is not None:
            key = self._keys.authenticate(presented)
        if key is None:
            raise _unauthorized(
                "a valid API key is required: 'Authorization: Bearer <key>' or 'X-API-Key'"
            )
        taken = self._buckets.take(key.id, rate=key.rate, burst=key.burst, now=self._clock())
        if not taken.allowed:
            raise ApiError(
                429,
                "Too many requests",
                f"key {key.id} is over its rate of {key.rate:g} requests/s",
                {"Retry-After": _retry_after(taken.retry_after)},
            )
        return Caller(key.tenant, key.admin, key.id)


def _retry_after(seconds: float) -> str:
    """Whole seconds (at least 1) for a Retry-After header; the gateway's rounding."""
    return retry_after(seconds)[1].decode()


def _saga_json(content: dict[str, Any]) -> JSONResponse:
    """`content` as JSON. A row stored before the door refused non-finite numbers (or
    planted by hand) may hold NaN or Infinity, which JSON cannot carry: those read as null,
    as FastAPI's own encoder writes them, never a 500."""
    try:
        return JSONResponse(content)
    except ValueError:  # only such a row pays for the walk
        return JSONResponse(_finite(content))


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _problem(status: int, title: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers or None,
    )


async def saga_create_body(request: Request) -> SagaCreate:
    """The `POST /v1/sagas` body, parsed by the strict JSON reader (`orchestrator.jsonsafe`).

    FastAPI's own reader is Python's `json`, which takes NaN and Infinity (stored, they fail
    the saga later) and raises RecursionError on a deeply nested body; here every such body
    is a 422 (413 when too large) before anything is stored.
    """
    try:
        raw = loads_strict(await request.body(), what="request body")
    except PayloadTooLarge as exc:
        raise ApiError(413, "Request body too large", str(exc)) from None
    except UnsafeJson as exc:
        raise ApiError(422, "Unprocessable request", str(exc)) from None
    try:
        return SagaCreate.model_validate(raw)
    except ValidationError as exc:
        issues = "; ".join(
            f"{'.'.join(str(p) for p in ('body', *e.get('loc', ())))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        raise ApiError(422, "Unprocessable request", issues or "the body is invalid") from None


def trace_id_from(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C `traceparent` header, else None."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


class _Stores:
    """One store per thread on one database (read-only ones never take the write lock)."""

    def __init__(
        self,
        path: str | Path,
        watchdog: DatabaseWatchdog,
        *,
        read_only: bool = False,
        timeout: float = API_DB_TIMEOUT,
    ) -> None:
        self.path = path
        self.watchdog = watchdog
        self.read_only = read_only
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Store] = []

    def get(self) -> Store:
        # A file deleted or replaced since start: never read or write what the path no
        # longer names (DatabaseGone, 503); the process exits and its restart opens the path.
        self.watchdog.check()
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            # The schema was set up once by create_app: a thread's open takes no write lock,
            # and never creates a file that went away.
            store = self._local.store = open_store(
                self.path, readonly=self.read_only, create=False, timeout=self.timeout
            )
            with self._lock:
                self._all.append(store)
        return store

    def close(self) -> None:
        # Only safe at shutdown: close() from another thread is refused by the driver, so ignore.
        with self._lock:
            self._all.clear()


class _FlowCatalog:
    """The flows the API serves, by name: the shipped examples plus configured files."""

    def __init__(self, extra: Mapping[str, str | Path]) -> None:
        self._refs: dict[str, str | Path] = {n: n for n in example_flow_names()}
        self._refs.update(extra)
        self._loaded: dict[str, FlowDefinition] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self._refs)

    def get(self, name: str) -> FlowDefinition:
        flow = self._loaded.get(name)
        if flow is not None:
            return flow
        ref = self._refs.get(name)
        if ref is None:
            raise FlowNotFoundError(
                f"no flow named {name!r} here; available: {', '.join(self.names())}"
            )
        with self._lock:
            flow = self._loaded[name] = load_flow(ref)
        return flow


class _BodyGuard:
    """Reads every request's body first: 413 over `max_bytes`, 422 unless it is JSON that
    `loads_strict` takes (UTF-8, not too deep, no NaN); then hands it on to the routes.

    One door for every route, so a route that reads its body through FastAPI (the rollback's)
    or not at all (resume) refuses what `POST /v1/sagas` refuses. An empty body passes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = _declared_too_large(scope, self.max_bytes)
        chunks: list[bytes] = []
        size = 0
        while refusal is None:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                refusal = (413, "Request body too large", _too_large(self.max_bytes))
                break
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if refusal is None and body:
            try:
                loads_strict(body, what="request body")
            except PayloadTooLarge as exc:
                refusal = (413, "Request body too large", str(exc))
            except UnsafeJson as exc:
                refusal = (422, "Unprocessable request", str(exc))
        if refusal is not None:
            await _problem(*refusal)(scope, receive, send)
            return
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())  # after the body: only a disconnect comes

        await self.app(scope, replay, send)


def _too_large(limit: int) -> str:
    return f"request body is over {limit} bytes; at most {limit} are accepted"


def _declared_too_large(scope: Scope, limit: int) -> tuple[int, str, str] | None:
    """A 413 for a Content-Length over `limit` (refused before reading a byte)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                return None  # the server refuses a malformed length before we see it
            if declared > limit:
                return (413, "Request body too large", _too_large(limit))
    return None


class _MetricsMiddleware:
    """Counts requests and records latency by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            labels = (("method", scope["method"]), ("route", path), ("status", str(status)))
            self.metrics.inc("http_requests_total", labels)
            self.metrics.observe(
                "http_request_duration_seconds",
                self.clock() - started,
                (("method", scope["method"]), ("route", path)),
            )


def create_app(
    db: str | Path,
    *,
    flows: Mapping[str, str | Path] | None = None,
    clock: Callable[[], float] = time.time,
    breaker_states: Callable[[], Mapping[str, str]] | None = None,
    instance: str = "api",
    keys_db: str | Path | None = None,
    gateway_secret: str | None = None,
    direct_keys: bool = True,
    read_db: str | Path | None = None,
    tracing: Tracing | None = None,
    db_timeout: float = API_DB_TIMEOUT,
) -> FastAPI:
    """The API over the saga database `db` (created if missing).

    `read_db` (a streaming replica of `db`) serves the GET routes, `/readyz` and `/metrics`,
    opened read-only; writes go to `db`. A replica may lag: a saga it does not have yet is
    looked up on `db` before a 404 (a client's GET right after its POST finds the saga); a
    list or a status it serves may be a moment behind.

    `flows` adds flow files by name to the shipped examples. `breaker_states` (name -> state)
    feeds the breaker gauges of `/metrics` when the runtime has shared breakers. Callers are
    the gateways holding `gateway_secret` and clients presenting a key from `keys_db` (rate
    limited as at a gateway); with neither, every `/v1/` request is refused (401).
    `direct_keys=False` refuses keys presented here (401): only the gateways are heard.
    With `tracing`, each saga submitted emits a span in the saga's trace, linked to the run
    span of the worker that will claim it first (`orchestrator.tracing`). `db_timeout`: the
    seconds a request waits for the database before its 503 (`API_DB_TIMEOUT`).
    """
    path = Path(db)
    open_store(path).close()  # create and migrate once, up front: fail fast on a bad path
    watchdog = DatabaseWatchdog(path, restart="restart the API")
    stores = _Stores(path, watchdog, timeout=db_timeout)
    split = read_db is not None
    if read_db is not None:
        open_store(read_db, readonly=True, create=False).close()  # fail fast here too
    # Reads, health checks and metrics: on the replica when there is one.
    readers = _Stores(
        read_db if read_db is not None else path, watchdog, read_only=True, timeout=db_timeout
    )
    catalog = _FlowCatalog(flows or {})
    keys = KeyCache(open_key_store(keys_db)) if keys_db is not None else None
    metrics = Metrics("sagalab_api_")
    metrics.describe(
        "http_requests_total",
        "counter",
        "HTTP requests by method, route, status.",
        ("method", "route", "status"),
    )
    metrics.describe(
        "http_request_duration_seconds", "histogram", "HTTP request latency.", ("method", "route")
    )
    metrics.describe(
        "sagas_submitted_total", "counter", "Sagas created through the API.", ("flow",)
    )

    app = FastAPI(
        # A redirect would name the API's own port, behind the edge: a wrong path is a 404.
        redirect_slashes=False,
        title="sagalab orchestrator API",
        version="1",
        description="Submit sagas for the workers and operate on them.",
    )
    app.state.metrics = metrics
    app.state.instance = instance
    app.state.watchdog = watchdog  # `python -m sagalab.edge.apps api` exits once it fires
    app.state.authenticate = _Authenticator(gateway_secret, keys, direct_keys=direct_keys)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _problem(exc.status, exc.title, exc.detail, **exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        issues = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _problem(422, "Unprocessable request", issues or "the request is invalid")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers 400 when its JSON reader raises anything but a decode error (a body
        # nested deep enough for RecursionError): that is a body we cannot process, a 422.
        if exc.status_code == 400 and exc.detail == _BODY_PARSE_FAILED:
            return _problem(422, "Unprocessable request", "the body is not JSON this API can read")
        return await http_exception_handler(request, exc)

    @app.exception_handler(SagaError)
    async def _saga_error(_: Request, exc: SagaError) -> JSONResponse:
        # One mapping for the API and the console (orchestrator.http_status).
        answer = http_status(exc) or HttpAnswer(503, "Store unavailable", retry_after=True)
        headers = {"Retry-After": "1"} if answer.retry_after else {}
        return _problem(answer.status, answer.title, str(exc), **headers)

    def _links(saga_id: str) -> dict[str, str]:
        base = f"/v1/sagas/{saga_id}"
        return {"self": base, "resume": base + "/resume", "rollback": base + "/rollback"}

    submit_limiter = anyio.CapacityLimiter(SUBMIT_THREADS)

    @app.post(
        "/v1/sagas",
        status_code=202,
        summary="Submit a saga for the workers",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SagaCreate"}}
                },
            }
        },
    )
    async def submit(
        request: Request,
        who: Who,
        body: Annotated[SagaCreate, Depends(saga_create_body)],
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
        traceparent: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Queue a saga of `flow`; a reused `Idempotency-Key` returns the saga it named."""
        if len(request.headers.getlist("idempotency-key")) > 1:
            # Proxies may pick either copy: the key a client would retry with is ambiguous.
            raise ApiError(422, "Invalid request", "send one Idempotency-Key header, not several")
        # The write runs in a thread (it may wait for the database) but in a pool of
        # SUBMIT_THREADS, not the 40 of the default one: with group commit a handful of
        # writers fill every COMMIT, and 32 threads taking turns on the GIL were the tail.
        return await anyio.to_thread.run_sync(
            create, who, body, idempotency_key, traceparent, limiter=submit_limiter
        )

    def create(
        who: Caller,
        body: SagaCreate,
        idempotency_key: str | None,
        traceparent: str | None,
    ) -> JSONResponse:
        flow = catalog.get(body.flow)
        payload = validate_input(flow, body.input)
        now = clock()
        record, created = stores.get().create_saga(
            saga_id=new_saga_id(),
            flow=flow,
            payload=payload,
            trace_id=trace_id_from(traceparent) or new_trace_id(),
            idempotency_key=idempotency_key,
            now=now,
            run_after=now,
            tenant=who.tenant,
        )
        if created:
            metrics.inc("sagas_submitted_total", {"flow": flow.name})
            if tracing is not None:
                trace = record.trace_id
                tracing.server_span(
                    "POST /v1/sagas",
                    traceparent,
                    trace,
                    now,
                    clock(),
                    {"saga.id": record.id, "saga.flow": flow.name, "http.route": "/v1/sagas"},
                    # The first claim holds lease epoch 1: the run a worker traces under it.
                    [(trace, run_span_id(trace, 1), {"sagalab.link": "run"})],
                )
        content = {**saga_summary(record), "created": created, "links": _links(record.id)}
        headers = {"Location": f"/v1/sagas/{record.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(content, status_code=202 if created else 200, headers=headers)

    def read_page(saga_id: str, tenant: str | None) -> SagaPage:
        # One statement on the read-only connection (its steps from the same snapshot).
        try:
            return readers.get().page(saga_id, tenant=tenant)
        except SagaNotFoundError:
            if not split:
                raise
            # The replica may not have replayed a saga just submitted: the primary decides.
            return stores.get().page(saga_id, tenant=tenant)

    # A saga's page from a SQLite file is read on the event loop: one indexed statement of
    # about 20 µs on a read-only WAL connection, which never waits for a writer, where a
    # hop to the thread pool and back costs several times that and queues behind the GIL
    # (GET a saga: about 1.35x the requests/s). Reads that cross the network (PostgreSQL,
    # or a replica) go to the thread pool, so a slow answer never stalls the loop.
    local_reads = postgres_url(db) is None and (read_db is None or postgres_url(read_db) is None)

    @app.get("/v1/sagas/{saga_id}", summary="A saga with its steps")
    async def get_saga(who: Who, saga_id: str) -> JSONResponse:
        """The saga, its input and one row per step."""
        if local_reads:
            page = read_page(saga_id, who.scope)
        else:
            page = await run_in_threadpool(read_page, saga_id, who.scope)
        view = saga_view(page.record, page.steps, forks=page.forks)
        # The view is JSON's own types already (the store's rows, JSON-decoded input):
        # FastAPI's jsonable_encoder would walk it again, ~10x what json.dumps costs.
        return _saga_json({**view, "links": _links(saga_id)})

    @app.get("/v1/sagas", summary="Recent sagas, newest first")
    def list_sagas(
        who: Who,
        status: SagaStatus | None = None,
        flow: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        tenant: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """The caller's tenant's sagas (an admin's: every tenant's, or `tenant`'s)."""
        if not who.admin and tenant not in (None, who.tenant):
            raise ApiError(
                403, "Forbidden", f"a key of tenant {who.tenant} lists only that tenant's sagas"
            )
        scope = tenant if who.admin else who.tenant
        records = readers.get().list_sagas(status=status, flow=flow, limit=limit, tenant=scope)
        return {"items": [saga_summary(r) for r in records], "count": len(records)}

    def _accepted(result: operations.OperationResult) -> JSONResponse:
        """202: the action is recorded and the saga queued for the workers."""
        content = {**saga_summary(result.record), "queued": True, "links": _links(result.saga_id)}
        if result.message is not None:
            content["message"] = result.message
        return JSONResponse(
            content, status_code=202, headers={"Location": f"/v1/sagas/{result.saga_id}"}
        )

    @app.post("/v1/sagas/{saga_id}/resume", status_code=202, summary="Queue a saga again")
    def resume(who: Who, saga_id: str, body: NoBody | None = None) -> JSONResponse:
        """Put an unfinished saga back on the queue; a worker continues it from its journal."""
        # Failed, completed or rolled back, or run by a live worker: 409, as the CLI refuses.
        return _accepted(operations.resume(stores.get(), saga_id, tenant=who.scope, clock=clock))

    @app.post("/v1/sagas/{saga_id}/rollback", status_code=202, summary="Roll a saga back")
    def rollback(who: Who, saga_id: str, body: RollbackBody | None = None) -> JSONResponse:
        """Journal a rollback request and queue the saga: a worker compensates its steps."""
        request = body or RollbackBody()
        result = operations.rollback(
            stores.get(),
            saga_id,
            tenant=who.scope,
            force=request.force,
            reason=request.reason,
            clock=clock,
        )
        return _accepted(result)

    @app.post("/v1/sagas/{saga_id}/cancel", status_code=202, summary="Cancel a saga")
    def cancel(who: Who, saga_id: str, body: CancelBody | None = None) -> JSONResponse:
        """Journal a cancel (a rollback that never crosses the pivot) and queue the saga; a
        worker that holds it meets the request at its next commit."""
        request = body or CancelBody()
        result = operations.cancel(
            stores.get(), saga_id, tenant=who.scope, reason=request.reason, clock=clock
        )
        return _accepted(result)

    @app.post("/v1/sagas/{saga_id}/fork", status_code=202, summary="Fork a stopped saga")
    def fork(who: Who, saga_id: str, body: ForkBody) -> JSONResponse:
        """Plan a fork (`dry_run`: 200 with the plan), or carry it out: the old saga is closed
        and the fork queued for the workers (202). A fork that must compensate first is
        refused here (409): the API runs no saga; the CLI does it."""
        store = stores.get()
        if body.dry_run:
            plan, _ = operations.fork_plan(
                store,
                saga_id,
                body.from_step,
                payload=body.input,
                sets=body.set,
                tenant=who.scope,
                force=body.force,
            )
            return JSONResponse({"plan": plan.to_dict()})
        plan, result = operations.fork(
            store,
            saga_id,
            body.from_step,
            payload=body.input,
            sets=body.set,
            tenant=who.scope,
            force=body.force,
            clock=clock,
        )
        content = {
            **saga_summary(result.record),
            "queued": True,
            "plan": plan.to_dict(),
            "links": _links(result.saga_id),
        }
        if result.message is not None:
            content["message"] = result.message
        return JSONResponse(
            content, status_code=202, headers={"Location": f"/v1/sagas/{result.saga_id}"}
        )

    @app.post(
        "/v1/sagas/{saga_id}/steps/{step}/retry",
        status_code=202,
        summary="Retry the step a failed saga waits on",
    )
    def retry_step(who: Who, saga_id: str, step: str, body: NoBody | None = None) -> JSONResponse:
        """Give the step that holds a failed saga a fresh retry budget and queue the saga."""
        return _accepted(
            operations.retry_step(stores.get(), saga_id, step, tenant=who.scope, clock=clock)
        )

    @app.post(
        "/v1/sagas/{saga_id}/steps/{step}/skip",
        status_code=202,
        summary="Skip the step a failed saga waits on",
    )
    def skip_step(who: Who, saga_id: str, step: str, body: SkipBody) -> JSONResponse:
        """Mark the step that holds a failed saga as handled by hand and queue the saga."""
        result = operations.skip_step(
            stores.get(), saga_id, step, reason=body.reason, tenant=who.scope, clock=clock
        )
        return _accepted(result)

    @app.get("/v1/flows", summary="Flows this API serves")
    def list_flows(who: Who) -> dict[str, list[str]]:
        """Names accepted in `POST /v1/sagas`."""
        return {"flows": catalog.names()}

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok", "instance": instance}

    @app.get("/readyz", summary="Readiness")
    def readyz() -> JSONResponse:
        """The database answers: the API can take sagas. A read-only connection: a long
        write elsewhere never makes the API look down. The path must still name the file
        opened (watchdog) and hold a saga database: bytes written over it in place are not
        seen by a connection that has its pages cached, so the file is probed afresh."""
        try:
            watchdog.check()
            readers.get().ping()
            if split:
                stores.get().ping()  # the replica alone cannot take sagas
        except Exception as exc:  # any database failure means "not ready", never a 500
            return _problem(503, "Not ready", f"database {shown(path)}: {exc}")
        return JSONResponse({"status": "ready", "instance": instance})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics_endpoint() -> PlainTextResponse:
        """Requests, latencies, sagas by status, queue depth and breaker states."""
        store = readers.get()
        gauges: list[GaugeSample] = []
        counts = store.count_by_status()
        for s in SagaStatus:
            gauges.append(("sagas", "Sagas by status.", {"status": s.value}, counts.get(s, 0)))
        queue = store.queue_stats(clock())
        gauges.append(("queue_depth", "Queued sagas no worker holds.", {}, queue["depth"]))
        gauges.append(("queue_leased", "Sagas under a live worker lease.", {}, queue["leased"]))
        gauges.append(
            ("queue_oldest_age_seconds", "Age of the oldest due saga.", {}, queue["oldest_age"])
        )
        if breaker_states is not None:
            for name, state in breaker_states().items():
                for candidate in ("closed", "open", "half-open"):
                    gauges.append(
                        (
                            "breaker_state",
                            "1 for the state each service's circuit breaker is in.",
                            {"service": name, "state": candidate},
                            1.0 if state == candidate else 0.0,
                        )
                    )
        return PlainTextResponse(metrics.render(gauges), media_type=CONTENT_TYPE)

    def openapi() -> dict[str, Any]:
        # The saga body is read by `saga_create_body`, not by FastAPI: document it by hand.
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas["SagaCreate"] = SagaCreate.model_json_schema()
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_BodyGuard)
    app.add_middleware(_MetricsMiddleware, metrics=metrics, clock=time.perf_counter)
    return app
