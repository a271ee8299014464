"""The console's web application: pages, their JSON feeds and (opt-in) operator actions.

Reads go through the store port only (`open_store(db, readonly=True)`, one handle per
thread), on SQLite or PostgreSQL alike. Actions (`allow_actions`) call the operator library
(`orchestrator.operations`, what the CLI and the API call), queue the saga for the workers as
the API does, and answer with the API's statuses: unknown saga 404, refused 409, bad request
422. Without `allow_actions` every action route is 403 and no page shows a button.

Cross-site requests cannot act: every POST needs the per-process token the pages carry
(`X-CSRF-Token`), an `Origin` (when sent) naming this console, a `Sec-Fetch-Site` (when
sent) of same-origin, and a `Host` of 127.0.0.1 or localhost (a DNS-rebinding page names
its own host). Pages are served with a Content-Security-Policy that runs only this console's
own script, and everything from the database is escaped (ui.pages).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sagalab.cli.filters import FilterArgs
from sagalab.edge.asgi import BodyTooLarge, read_body
from sagalab.orchestrator import operations
from sagalab.orchestrator.errors import InputError, SagaError, SagaNotFoundError
from sagalab.orchestrator.http_status import http_status
from sagalab.orchestrator.jsonsafe import loads_strict
from sagalab.orchestrator.saga import Phase, SagaStatus
from sagalab.orchestrator.sagafilter import FilterError, SagaFilter
from sagalab.orchestrator.store import BreakerStore, SagaRecord, Store
from sagalab.orchestrator.stores import open_breaker_store, open_store
from sagalab.orchestrator.views import saga_summary, saga_view

from . import pages
from .simcharts import MAX_REPORT_BYTES, ReportError, render_report
from .timeline import build_timeline, summary
from .traces import check_trace_url, read_spans, trace_page, valid_trace_id

__all__ = ["PAGE_SIZE", "ListQuery", "create_app", "list_sagas", "status_for"]

PAGE_SIZE = 50
MAX_ID = 200
#: The largest operator action body (a reason and a step name; far more than either needs).
MAX_ACTION_BYTES = 64 * 1024
STATIC = Path(__file__).parent / "static"
_STATIC_TYPES = {"ui.js": "text/javascript", "ui.css": "text/css"}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class BadRequest(Exception):
    """A request the console cannot answer as asked (400 or the status given)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


#: The list's query fields: the CLI's filter options, by the same names without `--`.
TEXT_FIELDS = ("flow", "step", "error", "since", "until", "key", "tenant")
MAX_INPUTS = 20


@dataclass(frozen=True)
class ListQuery:
    """The list's filters as the page's query string gave them (shown back in the form,
    kept by the live updates and the paging links)."""

    texts: dict[str, str] = field(default_factory=dict)
    statuses: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    after: str = ""

    def params(self, *, after: str | None = None) -> list[tuple[str, str]]:
        """The query string's pairs (`after` replacing this page's when given)."""
        pairs = [("status", s) for s in self.statuses]
        pairs += [(k, v) for k, v in self.texts.items() if v]
        pairs += [("input", i) for i in self.inputs]
        last = self.after if after is None else after
        return pairs + ([("after", last)] if last else [])

    def to_filter(self, now: float) -> SagaFilter:
        """The SagaFilter the CLI would build from the same options (one page and one more
        row, to know whether an older page follows); FilterError as the CLI words it."""
        statuses = []
        for text in self.statuses:
            try:
                statuses.append(SagaStatus(text))
            except ValueError:
                known = ", ".join(s.value for s in SagaStatus)
                raise FilterError(f"--status {text!r} is not one of: {known}") from None
        args = FilterArgs(
            statuses=statuses,
            inputs=list(self.inputs),
            limit=PAGE_SIZE + 1,
            after=self.after or None,
            **{k: self.texts.get(k) or None for k in TEXT_FIELDS},
        )
        return args.build(default_limit=PAGE_SIZE + 1, now=now)


def list_sagas(store: Store, query: ListQuery, now: float) -> tuple[list[SagaRecord], bool]:
    """A page of sagas (newest first) matching `query`, and whether an older page follows.
    The same query the CLI's `list` runs (`find_sagas` over a `SagaFilter`)."""
    criteria = query.to_filter(now)
    try:
        records = store.find_sagas(criteria)
    except SagaNotFoundError:
        raise BadRequest(
            f"--after {query.after!r} names no saga: start from the first page"
        ) from None
    return records[:PAGE_SIZE], len(records) > PAGE_SIZE


def _query(request: Request) -> ListQuery:
    q = request.query_params
    statuses = tuple(dict.fromkeys(v.strip() for v in q.getlist("status") if v.strip()))
    inputs = tuple(v.strip() for v in q.getlist("input") if v.strip())
    if len(statuses) > len(SagaStatus) or len(inputs) > MAX_INPUTS:
        raise BadRequest(f"at most {MAX_INPUTS} input matches and one of each status")
    texts = {k: q.get(k, "").strip() for k in TEXT_FIELDS}
    after = q.get("after", "").strip()
    return ListQuery(texts=texts, statuses=statuses, inputs=inputs, after=after)


def status_for(exc: Exception) -> int:
    """The HTTP status of an error: the console's own BadRequest, else the one mapping the
    API uses too (orchestrator.http_status); 500 for anything else (a bug)."""
    if isinstance(exc, BadRequest):
        return exc.status
    answer = http_status(exc)
    return answer.status if answer else 500


class _PerThread:
    """One handle per thread (the store port's rule), opened on first use."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._local = threading.local()

    def get(self) -> Any:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = self._opener()
        return handle


def _calls(entries: list[Any]) -> dict[str, dict[str, str | None]]:
    """Per step: the request and response of its last action call."""
    calls: dict[str, dict[str, str | None]] = {}
    for entry in entries:
        e = entry.event
        if e.step and e.phase is Phase.ACTION and (entry.request or entry.response):
            calls[e.step] = {"request": summary(entry.request), "response": summary(entry.response)}
    return calls


def create_app(
    db: str | Path,
    *,
    allow_actions: bool = False,
    clock: Callable[[], float] = time.time,
    trace_file: str | Path | None = None,
    trace_url: str | None = None,
) -> FastAPI:
    """The console over the saga database `db` (a SQLite path or a PostgreSQL URL). With
    `trace_file` (a `--trace-file` the processes append spans to) it serves each trace's span
    tree at /traces/{trace_id}; with `trace_url` (a template holding `{trace_id}`: Jaeger's
    `http://127.0.0.1:16686/trace/{trace_id}`) a saga's trace id links there too."""
    if trace_url is not None:
        check_trace_url(trace_url)
    app = FastAPI(title="sagalab console", docs_url=None, redoc_url=None, openapi_url=None)
    token = secrets.token_urlsafe(32)
    readers = _PerThread(lambda: open_store(db, readonly=True, create=False))
    writers = _PerThread(lambda: open_store(db, create=False))
    breakers = _PerThread(lambda: open_breaker_store(db, readonly=True))

    def page(html: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": _CSP})

    def problem(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"status": status, "detail": message}, status_code=status)
        return page(pages.error_page(status, message, csrf=token, actions=allow_actions), status)

    async def _answer(request: Request, exc: Exception) -> Response:
        status = status_for(exc)
        if status == 500:  # a bug, not an answer: say so without the details
            return problem(request, 500, f"the console failed: {type(exc).__name__}")
        return problem(request, status, str(exc))

    # SagaError and BadRequest are answers (4xx, 503); anything else is a bug (500, logged).
    app.add_exception_handler(SagaError, _answer)
    app.add_exception_handler(BadRequest, _answer)
    app.add_exception_handler(FilterError, _answer)
    app.add_exception_handler(Exception, _answer)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return problem(request, exc.status_code, str(exc.detail))

    def guard_post(request: Request) -> None:
        """Refuse a POST that another site could have sent (see the module docstring)."""
        host = request.headers.get("host", "")
        if urlsplit(f"//{host}").hostname not in ("127.0.0.1", "localhost", "::1"):
            raise BadRequest(f"this console answers on 127.0.0.1, not {host!r}", 403)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{host}":
            raise BadRequest("cross-site request refused (Origin)", 403)
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            raise BadRequest("cross-site request refused (Sec-Fetch-Site)", 403)
        sent = request.headers.get("x-csrf-token", "")
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise BadRequest("missing or wrong console token: reload the page", 403)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        query = _query(request)
        records, more = list_sagas(readers.get(), query, clock())
        items = [saga_summary(r) for r in records]
        return page(
            pages.list_page(
                items,
                query=query,
                has_more=more,
                csrf=token,
                actions=allow_actions,
            )
        )

    @app.get("/api/sagas")
    def api_sagas(request: Request) -> dict[str, Any]:
        records, more = list_sagas(readers.get(), _query(request), clock())
        after = records[-1].id if more else None
        return {"items": [saga_summary(r) for r in records], "more": more, "next_after": after}

    def _saga(saga_id: str) -> tuple[dict[str, Any], list[Any], SagaRecord]:
        if len(saga_id) > MAX_ID:
            raise SagaNotFoundError(saga_id[:MAX_ID] + "…")
        store = readers.get()
        record, entries, _ = store.state(saga_id)
        view = saga_view(record, store.steps(saga_id), entries, forks=store.forks(saga_id))
        return view, entries, record

    def trace_links(trace_id: str) -> list[tuple[str, str]]:
        valid = valid_trace_id(trace_id)
        links = []
        if valid and trace_file is not None:
            links.append(("the trace's spans", f"/traces/{valid}"))
        if valid and trace_url is not None:
            links.append(("open in the tracing UI", trace_url.replace("{trace_id}", valid)))
        return links

    @app.get("/sagas/{saga_id}", response_class=HTMLResponse)
    def saga(saga_id: str) -> HTMLResponse:
        view, entries, _ = _saga(saga_id)
        links = trace_links(view["trace_id"])
        html = pages.saga_page(
            view, _calls(entries), csrf=token, actions=allow_actions, trace_links=links
        )
        return page(html)

    @app.get("/traces/{trace_id}", response_class=HTMLResponse)
    def trace(trace_id: str) -> HTMLResponse:
        valid = valid_trace_id(trace_id)
        if valid is None:
            raise BadRequest(f"{trace_id[:MAX_ID]!r} is not a trace id (32 hex digits)")
        if trace_file is None:
            raise BadRequest(
                "this console reads no spans: start it with --trace-file PATH "
                "(`stack up --trace-file` passes its file to the console)",
                404,
            )
        try:
            read = read_spans(trace_file, valid)
        except OSError as exc:
            reason = exc.strerror or exc
            raise BadRequest(f"cannot read the trace file {trace_file}: {reason}", 503) from None
        if not read.spans:
            yet = " (the file does not exist yet)" if read.missing else ""
            raise BadRequest(f"no spans for this trace in {trace_file}{yet}", 404)
        return page(trace_page(valid, read, str(trace_file), csrf=token, actions=allow_actions))

    @app.get("/api/sagas/{saga_id}/timeline")
    def timeline(saga_id: str) -> dict[str, Any]:
        view, entries, record = _saga(saga_id)
        board: BreakerStore = breakers.get()
        drawn = build_timeline(record, entries, now=clock(), breaker_transitions=board.events())
        return {
            **drawn,
            "reason": view["reason"],
            "updated": pages.when(view["updated_at"]),
            "steps": [{"name": s["name"], "status": s["status"]} for s in view["steps"]],
        }

    @app.get("/breakers", response_class=HTMLResponse)
    def breakers_page() -> HTMLResponse:
        store, board = readers.get(), breakers.get()
        html = pages.breakers_page(
            board.rows(),
            board.events(),
            store.queue_stats(clock()),
            store.count_by_status(),
            csrf=token,
            actions=allow_actions,
        )
        return page(html)

    @app.get("/simulations", response_class=HTMLResponse)
    def simulations() -> HTMLResponse:
        return page(pages.simulations_page(csrf=token, actions=allow_actions))

    @app.post("/api/simulations")
    async def simulation_charts(request: Request) -> dict[str, str]:
        guard_post(request)
        body = await _body(request, MAX_REPORT_BYTES, "the file is too large to chart")
        try:
            return {"html": render_report(body.decode("utf-8"))}
        except (ReportError, UnicodeDecodeError) as exc:
            raise BadRequest(f"cannot chart this file: {exc}", 422) from None

    @app.post("/api/sagas/{saga_id}/actions/{action}")
    async def act(saga_id: str, action: str, request: Request) -> dict[str, Any]:
        if not allow_actions:
            raise BadRequest("actions are off: start the console with --allow-actions", 403)
        guard_post(request)
        if action not in pages.ACTIONS:
            raise BadRequest(f"unknown action {action!r}", 404)
        try:  # the check every door uses: a lone surrogate, NaN, ... are 422, not a 500
            raw = await _body(request, MAX_ACTION_BYTES, "an action's body is too large")
            body = loads_strict(raw or b"{}", what="the body")
        except InputError as exc:
            raise BadRequest(str(exc), 422) from None
        if not isinstance(body, dict):
            raise BadRequest("the body is a JSON object", 422)
        return _carry_out(writers.get(), saga_id[:MAX_ID], action, body, clock)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in _STATIC_TYPES:
            raise BadRequest(f"no such file {name!r}", 404)
        return Response((STATIC / name).read_bytes(), media_type=_STATIC_TYPES[name])

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _body(request: Request, limit: int, refusal: str) -> bytes:
    """The request's body, at most `limit` bytes, else BadRequest 413 (`refusal`).

    A Content-Length over the limit is refused before a byte is read, and a body without one
    (chunked) is read only up to the limit: `request.body()` kept the whole of it in memory
    first, however large.
    """

    async def receive() -> dict[str, Any]:
        return dict(await request.receive())

    try:
        return await read_body(dict(request.scope), receive, limit)
    except BodyTooLarge:
        raise BadRequest(f"{refusal} (at most {limit} bytes)", 413) from None


def _text(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str):
        raise BadRequest(f"{key} is a string", 422)
    return value


def _carry_out(
    store: Store, saga_id: str, action: str, body: dict[str, Any], clock: Callable[[], float]
) -> dict[str, Any]:
    """Run one operator action as the API does (queued for the workers); its answer."""
    reason = _text(body, "reason", f"operator {action}, from the console")
    step = _text(body, "step", "")
    if action == "fork":
        if body.get("dry_run", False) is True:
            plan, _ = operations.fork_plan(store, saga_id, step)
            return {"action": action, "saga_id": saga_id, "plan": plan.to_dict()}
        plan, result = operations.fork(store, saga_id, step, clock=clock)
    elif action == "resume":
        result = operations.resume(store, saga_id, clock=clock)
    elif action == "rollback":
        force = body.get("force", False) is True
        result = operations.rollback(store, saga_id, reason=reason, force=force, clock=clock)
    elif action == "cancel":
        result = operations.cancel(store, saga_id, reason=reason, clock=clock)
    else:
        result = operations.retry_step(store, saga_id, step, clock=clock)
    return {
        "action": action,
        "saga_id": result.saga_id,
        "status": result.status.value,
        "carried": result.carried.value,
        "message": result.message
        or f"{action} recorded; saga {result.saga_id} is queued for the workers",
    }
