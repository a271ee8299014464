"""The orchestrator HTTP API: submit, inspect, resume and roll back sagas over HTTP.

It never runs a saga itself. `POST /v1/sagas` stores the saga queued (`run_after` set) in the
same SQLite file the workers (`sagalab worker`) claim from, and answers 202 with a `Location`;
resume and rollback append what the journal needs and put the saga back on the queue.

Errors are RFC 7807 problem documents (`application/problem+json`): 404 unknown saga, 409 an
operator action that does not apply or an idempotency key reused with other input, 422 a body
that is not what the API takes (malformed JSON included). Nothing a client sends yields a 500.

SQLite connections are per thread (`SQLiteStore` is not shareable), and the handlers are plain
`def` functions that Starlette runs in its thread pool, so a busy database blocks a worker
thread rather than the event loop.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.metrics import Metrics
from orchestrator.errors import (
    ConcurrentUpdate,
    FlowNotFoundError,
    FlowValidationError,
    IdempotencyConflict,
    InputError,
    OperatorActionRefused,
    SagaError,
    SagaNotFoundError,
)
from orchestrator.flow import FlowDefinition
from orchestrator.flowfile import example_flow_names, load_flow
from orchestrator.journal import JournalEntry
from orchestrator.runner import new_saga_id, new_trace_id, validate_input
from orchestrator.saga import SagaStatus, rollback_request
from orchestrator.sqlite_store import SQLiteStore
from orchestrator.views import saga_summary, saga_view

__all__ = ["SagaCreate", "RollbackBody", "create_app"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_FLOW_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ACTIVE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


class SagaCreate(BaseModel):
    """Body of `POST /v1/sagas`."""

    flow: str = Field(pattern=_FLOW_NAME, description="Name of a flow the API serves.")
    input: dict[str, Any] = Field(description="The flow's input (a JSON object).")


class RollbackBody(BaseModel):
    """Optional body of `POST /v1/sagas/{id}/rollback`."""

    reason: str = Field("rollback requested over the API", max_length=500)
    force: bool = Field(False, description="Compensate even past the pivot step.")


class ApiError(Exception):
    """An answer other than success, rendered as a problem document."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        super().__init__(detail)


def _problem(status: int, title: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers or None,
    )


def trace_id_from(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C `traceparent` header, else None."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


class _Stores:
    """One SQLiteStore per thread on one file (read-only ones never take the write lock)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[SQLiteStore] = []

    def get(self) -> SQLiteStore:
        store: SQLiteStore | None = getattr(self._local, "store", None)
        if store is None:
            # The schema was set up once by create_app: a thread's open takes no write lock,
            # and never creates a file that went away.
            store = self._local.store = SQLiteStore(
                self.path, read_only=self.read_only, create=False
            )
            with self._lock:
                self._all.append(store)
        return store

    def close(self) -> None:
        # Only safe at shutdown: close() from another thread is refused by sqlite3, so ignore.
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

        async def send_wrapper(message: dict[str, Any]) -> None:
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
) -> FastAPI:
    """The API over the saga database `db` (created if missing).

    `flows` adds flow files by name to the shipped examples. `breaker_states` (name -> state)
    feeds the breaker gauges of `/metrics` when the runtime has shared breakers.
    """
    path = Path(db)
    SQLiteStore(path).close()  # create and migrate once, up front: fail fast on a bad path
    stores = _Stores(path)
    readers = _Stores(path, read_only=True)  # health checks only read
    catalog = _FlowCatalog(flows or {})
    metrics = Metrics("sagalab_api_")
    metrics.describe("http_requests_total", "counter", "HTTP requests by method, route, status.")
    metrics.describe("http_request_duration_seconds", "histogram", "HTTP request latency.")
    metrics.describe("sagas_submitted_total", "counter", "Sagas created through the API.")

    app = FastAPI(
        title="sagalab orchestrator API",
        version="1",
        description="Submit sagas for the workers and operate on them.",
    )
    app.state.metrics = metrics
    app.state.instance = instance

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _problem(exc.status, exc.title, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        issues = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _problem(422, "Unprocessable request", issues or "the request is invalid")

    @app.exception_handler(SagaError)
    async def _saga_error(_: Request, exc: SagaError) -> JSONResponse:
        if isinstance(exc, SagaNotFoundError):
            return _problem(404, "Saga not found", str(exc))
        if isinstance(exc, IdempotencyConflict):
            return _problem(409, "Idempotency key reused", str(exc))
        if isinstance(exc, OperatorActionRefused | ConcurrentUpdate):
            return _problem(409, "Action refused", str(exc))
        if isinstance(exc, InputError | FlowNotFoundError | FlowValidationError):
            return _problem(422, "Invalid saga request", str(exc))
        return _problem(503, "Store unavailable", str(exc), **{"Retry-After": "1"})

    def _links(saga_id: str) -> dict[str, str]:
        base = f"/v1/sagas/{saga_id}"
        return {"self": base, "resume": base + "/resume", "rollback": base + "/rollback"}

    @app.post("/v1/sagas", status_code=202, summary="Submit a saga for the workers")
    def submit(
        body: SagaCreate,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        traceparent: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Queue a saga of `flow`; a reused `Idempotency-Key` returns the saga it named."""
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
        )
        if created:
            metrics.inc("sagas_submitted_total", {"flow": flow.name})
        content = {**saga_summary(record), "created": created, "links": _links(record.id)}
        headers = {"Location": f"/v1/sagas/{record.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(content, status_code=202 if created else 200, headers=headers)

    @app.get("/v1/sagas/{saga_id}", summary="A saga with its steps")
    def get_saga(saga_id: str) -> dict[str, Any]:
        """The saga, its input and one row per step."""
        store = stores.get()
        record = store.load(saga_id)
        return {**saga_view(record, store.steps(saga_id)), "links": _links(saga_id)}

    @app.get("/v1/sagas", summary="Recent sagas, newest first")
    def list_sagas(
        status: SagaStatus | None = None,
        flow: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Sagas filtered by status and flow."""
        records = stores.get().list_sagas(status=status, flow=flow, limit=limit)
        return {"items": [saga_summary(r) for r in records], "count": len(records)}

    @app.post("/v1/sagas/{saga_id}/resume", status_code=202, summary="Queue a saga again")
    def resume(saga_id: str) -> JSONResponse:
        """Put an unfinished saga back on the queue; a worker continues it from its journal."""
        store = stores.get()
        record = store.load(saga_id)
        if record.status not in _ACTIVE:
            hint = (
                "retry or skip the failed step (`sagalab orchestrate retry-step`)"
                if record.status is SagaStatus.FAILED
                else "nothing is left to do"
            )
            raise OperatorActionRefused(f"saga {saga_id} is {record.status.value}; {hint}")
        store.requeue(saga_id, clock())
        return JSONResponse(
            {**saga_summary(store.load(saga_id)), "queued": True, "links": _links(saga_id)},
            status_code=202,
            headers={"Location": f"/v1/sagas/{saga_id}"},
        )

    @app.post("/v1/sagas/{saga_id}/rollback", status_code=202, summary="Roll a saga back")
    def rollback(saga_id: str, body: RollbackBody | None = None) -> JSONResponse:
        """Journal a rollback request and queue the saga: a worker compensates its steps."""
        request = body or RollbackBody()
        store = stores.get()
        for _ in range(5):  # a worker may append between our read and our write
            record, _, state = store.state(saga_id)
            now = clock()
            event = rollback_request(state, now=now, reason=request.reason, force=request.force)
            state.apply(event)
            try:
                store.append(
                    saga_id,
                    [JournalEntry(event)],
                    expected_seq=record.last_seq,
                    state=state,
                    now=now,
                )
            except ConcurrentUpdate:
                continue
            break
        else:
            raise ConcurrentUpdate(f"saga {saga_id} kept changing; try the rollback again")
        store.requeue(saga_id, now)
        return JSONResponse(
            {**saga_summary(store.load(saga_id)), "queued": True, "links": _links(saga_id)},
            status_code=202,
            headers={"Location": f"/v1/sagas/{saga_id}"},
        )

    @app.get("/v1/flows", summary="Flows this API serves")
    def list_flows() -> dict[str, list[str]]:
        """Names accepted in `POST /v1/sagas`."""
        return {"flows": catalog.names()}

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok", "instance": instance}

    @app.get("/readyz", summary="Readiness")
    def readyz() -> JSONResponse:
        """The database answers: the API can take sagas. A read-only connection: a long
        write elsewhere never makes the API look down."""
        try:
            readers.get().conn.execute("SELECT 1 FROM sagas LIMIT 1").fetchall()
        except Exception as exc:  # any database failure means "not ready", never a 500
            return _problem(503, "Not ready", f"database {path}: {exc}")
        return JSONResponse({"status": "ready", "instance": instance})

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics_endpoint() -> PlainTextResponse:
        """Requests, latencies, sagas by status, queue depth and breaker states."""
        store = stores.get()
        gauges: list[tuple[str, str, Mapping[str, str], float]] = []
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
        return PlainTextResponse(
            metrics.render(gauges), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    app.add_middleware(_MetricsMiddleware, metrics=metrics, clock=time.perf_counter)
    return app
