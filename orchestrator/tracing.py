"""OpenTelemetry traces of saga runs: one span per run, a child span per attempt.

Off by default: nothing here is imported by a worker unless `--trace-file` or an OTLP endpoint
asks for it, and no SDK provider is installed. The spans use the saga's own trace id (the one its
attempts send in `traceparent`) and the attempts' journal span ids (the parent the services saw),
so the spans the services, the edge and the gateways emit join the same tree.

Spans are built after the fact from what the journal holds (`ReadableSpan`), not opened around
the work: the runner's hot path is untouched (it only calls its `RunObserver`).

A run's span id is derived from the saga's trace id and its lease epoch (every claim increments
the epoch), so a later run links to the earlier one (`sagalab.link: previous_run`) without
storing anything new; a run that finds an attempt of a crashed worker (started, never finished)
emits the crashed run's span and that attempt's span on its behalf (the crashed process could not).

Exporters: `JsonLinesExporter` (`--trace-file`: one JSON object per line, appended with one
`write` on an `O_APPEND` descriptor, so several processes can share one file) and OTLP over HTTP
(`--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`, the optional extra `sagalab[otlp]`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.saga import EventType, SagaState
from sagalab.orchestrator.store import SagaRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

log = logging.getLogger(__name__)

#: The environment variables a worker's replicas inherit their tracing settings from.
TRACE_FILE_ENV = "SAGALAB_TRACE_FILE"
OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"

_OUTCOMES = {EventType.ATTEMPT_SUCCEEDED: "succeeded", EventType.ATTEMPT_FAILED: "failed"}


class TracingConfigError(Exception):
    """Tracing was asked for but cannot be set up (the OTLP extra missing, a bad file)."""


def run_span_id(trace_id: str, epoch: int) -> str:
    """The span id of the run that holds lease `epoch` of the saga with `trace_id`."""
    return hashlib.sha256(f"{trace_id}:run:{epoch}".encode()).hexdigest()[:16]


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """One span as the JSON object a `--trace-file` line holds (OTLP-like field names)."""
    ctx = span.context
    assert ctx is not None
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
        "status": {"code": span.status.status_code.name, "message": span.status.description},
        "resource": dict(span.resource.attributes) if span.resource else {},
    }


class JsonLinesExporter:
    """A `SpanExporter` writing one JSON line per span, appended with one `write` each.

    A span that cannot be written (a full disk, an I/O error) is dropped and counted in
    `dropped`; the first one is said in one warning line, never a traceback per span: tracing
    must not stop or flood a worker whose sagas still run.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        #: Spans not written (or written only in part) since the file was opened.
        self.dropped = 0
        self._lock = threading.Lock()
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise TracingConfigError(f"cannot open trace file {path}: {exc.strerror}") from None

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        result = SpanExportResult.SUCCESS
        for span in spans:
            line = (json.dumps(span_to_dict(span), default=str) + "\n").encode()
            try:
                written = os.write(self._fd, line)  # O_APPEND: whole lines, never interleaved
            except OSError as exc:
                written, why = 0, exc.strerror or str(exc)
            else:
                why = "the disk is full (a short write)"
            if written != len(line):
                self._drop(why)
                result = SpanExportResult.FAILURE
        return result

    def _drop(self, why: str) -> None:
        with self._lock:
            self.dropped += 1
            first = self.dropped == 1
        if first:
            log.warning(
                "tracing: cannot write spans to %s (%s); dropping them, the sagas go on",
                self.path,
                why,
            )

    def shutdown(self) -> None:
        os.close(self._fd)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Tracing:
    """Where spans go; `emit` hands a finished span to every processor."""

    service_name: str
    processors: list[SpanProcessor] = field(default_factory=list)
    #: The `--trace-file` exporters among them (their dropped spans are counted).
    files: list[JsonLinesExporter] = field(default_factory=list)

    def __post_init__(self) -> None:
        from opentelemetry.sdk.resources import Resource

        # The pid tells replicas sharing one trace file apart.
        self.resource = Resource.create(
            {"service.name": self.service_name, "process.pid": os.getpid()}
        )

    def emit(self, span: ReadableSpan) -> None:
        """Export `span`; an exporter's failure is logged, never raised."""
        for p in self.processors:
            try:
                p.on_end(span)
            except Exception:
                log.exception("tracing: cannot export span %s", span.name)

    @property
    def spans_dropped(self) -> int:
        """Spans the trace files could not take (a full disk): counted, not raised."""
        return sum(f.dropped for f in self.files)

    def shutdown(self) -> None:
        """Flush and close every exporter."""
        for p in self.processors:
            p.shutdown()

    def server_span(
        self,
        name: str,
        traceparent: str | None,
        trace_id: str,
        start: float,
        end: float,
        attributes: dict[str, Any],
        links: Sequence[tuple[str, str, dict[str, Any]]] = (),
        span_id: str | None = None,
    ) -> str:
        """Emit a SERVER span of `trace_id`, child of the caller's `traceparent` span (when it
        belongs to that trace), with `links` as (trace id, span id, attributes); its span id
        (`span_id`, or a new one)."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import Link, SpanKind

        span_id = span_id or secrets.token_hex(8)
        parent = None
        parts = (traceparent or "").strip().lower().split("-")
        if len(parts) == 4 and parts[1] == trace_id and len(parts[2]) == 16:
            with contextlib.suppress(ValueError):
                parent = _context(trace_id, parts[2])
        span = ReadableSpan(
            name=name,
            context=_context(trace_id, span_id),
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            links=[Link(_context(t, s), a) for t, s, a in links],
            kind=SpanKind.SERVER,
            start_time=_ns(start),
            end_time=_ns(max(start, end)),
        )
        self.emit(span)
        return span_id

    def hop_span(
        self,
        name: str,
        incoming: bytes | None,
        outgoing: bytes,
        start: float,
        end: float,
        **attrs: Any,
    ) -> None:
        """The span of a hop (edge, gateway) that forwarded a request with the `outgoing`
        traceparent (its own span id) after receiving `incoming` (its parent, if valid)."""
        parts = outgoing.decode("latin-1").split("-")
        if len(parts) != 4:
            return
        caller = incoming.decode("latin-1") if incoming is not None else None
        self.server_span(name, caller, parts[1], start, end, attrs, span_id=parts[2])


def _context(trace_id: str, span_id: str) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=TraceFlags(1)
    )


def setup_tracing(
    service_name: str, trace_file: str | Path | None, otlp_endpoint: str | None
) -> Tracing | None:
    """The tracing a process asked for, or None (the default: no SDK loaded at all)."""
    otlp_endpoint = otlp_endpoint or os.environ.get(OTLP_ENV) or None
    if trace_file is None and otlp_endpoint is None:
        return None
    try:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:  # pragma: no cover - a dependency of the package
        raise TracingConfigError("opentelemetry-sdk is not installed") from None
    tracing = Tracing(service_name)
    if trace_file is not None:
        tracing.files.append(JsonLinesExporter(trace_file))
        tracing.processors.append(SimpleSpanProcessor(tracing.files[-1]))  # type: ignore[arg-type]
    if otlp_endpoint is not None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingConfigError(
                "OTLP export needs the optional extra: pip install 'sagalab[otlp]' "
                "(opentelemetry-exporter-otlp-proto-http)"
            ) from None
        url = otlp_endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        tracing.processors.append(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return tracing


@dataclass
class _Run:
    span_id: str
    epoch: int
    start: float
    #: Attempts started in this run and not finished yet: span id -> ATTEMPT_STARTED entry.
    open: dict[str, JournalEntry] = field(default_factory=dict)
    record: SagaRecord | None = None
    #: Attempts a crashed worker started, closed by this run: key -> (started, crashed run).
    adopted: dict[str, tuple[JournalEntry, _Run]] = field(default_factory=dict)


class SagaTracer:
    """A runner's `RunObserver` (and the worker's lease hooks) emitting a saga's spans.

    The worker calls `claimed(lease epoch)` before a run and `ended(...)` after it; the runner's
    observer calls (`started`, `committed`) add the attempts in between.
    """

    def __init__(self, tracing: Tracing, clock: Any) -> None:
        self.tracing = tracing
        self.clock = clock
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._epochs: dict[str, int] = {}

    # -- the worker's ----------------------------------------------------------------
    def claimed(self, saga_id: str, epoch: int) -> None:
        """This thread is about to run `saga_id` under lease `epoch`."""
        with self._lock:
            self._epochs[saga_id] = epoch

    def ended(self, saga_id: str, outcome: str) -> None:
        """The run of `saga_id` returned (`outcome`: its status, "waiting", "lease_lost"...)."""
        with self._lock:
            run = self._runs.pop(saga_id, None)
            self._epochs.pop(saga_id, None)
        if run is None or run.record is None:
            return
        try:
            self._emit_run(run.record, run, self.clock(), outcome)
        except Exception:
            log.exception("tracing: cannot trace the run of saga %s", saga_id)

    # -- the runner's RunObserver ----------------------------------------------------
    def started(self, record: SagaRecord, entries: Sequence[JournalEntry]) -> None:
        """A run starts; never raises into the runner."""
        try:
            self._started(record, entries)
        except Exception:
            log.exception("tracing: cannot trace the start of saga %s", record.id)

    def committed(
        self, record: SagaRecord, state: SagaState, entries: Sequence[JournalEntry]
    ) -> None:
        """Entries are durable; emit the attempts they finish. Never raises."""
        try:
            self._committed(record, entries)
        except Exception:
            log.exception("tracing: cannot trace a commit of saga %s", record.id)

    def _started(self, record: SagaRecord, entries: Sequence[JournalEntry]) -> None:
        with self._lock:
            epoch = self._epochs.get(record.id, 0)
        now = self.clock()
        run = _Run(run_span_id(record.trace_id, epoch), epoch, now, record=record)
        with self._lock:
            self._runs[record.id] = run
        # An attempt started and never finished: the worker holding the previous lease died.
        pending: dict[str, JournalEntry] = {}
        for entry in entries:
            e = entry.event
            if e.type is EventType.ATTEMPT_STARTED and entry.span_id:
                pending[_key(entry)] = entry
            elif e.type in _OUTCOMES:
                pending.pop(_key(entry), None)
        if pending and epoch > 1:
            crashed = _Run(run_span_id(record.trace_id, epoch - 1), epoch - 1, 0.0)
            crashed.start = min(p.event.at for p in pending.values())
            for key, started in pending.items():
                run.adopted[key] = (started, crashed)
            self._emit_run(record, crashed, now, "worker_lost")

    def _committed(self, record: SagaRecord, entries: Sequence[JournalEntry]) -> None:
        with self._lock:
            run = self._runs.get(record.id)
        if run is None:
            return
        for entry in entries:
            e = entry.event
            if e.type is EventType.ATTEMPT_STARTED:
                run.open[_key(entry)] = entry
            elif e.type in _OUTCOMES:
                key = _key(entry)
                if key in run.adopted:  # the crashed run's attempt, closed by this one
                    started, crashed = run.adopted.pop(key)
                    self._emit_attempt(record, crashed, started, entry, e.at)
                else:
                    self._emit_attempt(record, run, run.open.pop(key, None), entry, e.at)

    # -- spans -----------------------------------------------------------------------
    def _emit_run(self, record: SagaRecord, run: _Run, end: float, outcome: str) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        links = []
        if run.epoch > 1:  # epoch 1 is the first claim
            prev = run_span_id(record.trace_id, run.epoch - 1)
            links.append(Link(_context(record.trace_id, prev), {"sagalab.link": "previous_run"}))
        failed = outcome in ("rolled_back", "failed", "worker_lost")
        span = ReadableSpan(
            name=f"saga {record.flow.name}",
            context=_context(record.trace_id, run.span_id),
            parent=None,
            resource=self.tracing.resource,
            attributes={
                "saga.id": record.id,
                "saga.flow": record.flow.name,
                "saga.outcome": outcome,
                "saga.lease_epoch": run.epoch,
            },
            links=links,
            kind=SpanKind.INTERNAL,
            status=Status(StatusCode.ERROR, outcome) if failed else Status(StatusCode.OK),
            start_time=_ns(run.start),
            end_time=_ns(max(end, run.start)),
        )
        self.tracing.emit(span)

    def _emit_attempt(
        self,
        record: SagaRecord,
        run: _Run,
        started: JournalEntry | None,
        finished: JournalEntry | None,
        end: float,
    ) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanKind, Status, StatusCode

        entry = finished if finished is not None else started
        assert entry is not None
        e = entry.event
        span_id = (started.span_id if started else None) or entry.span_id
        if not span_id or e.step is None or e.phase is None:
            return
        if started is not None:
            start = started.event.at
        elif finished is not None and finished.duration_ms is not None:
            start = end - finished.duration_ms / 1000
        else:
            start = end
        outcome = _OUTCOMES.get(e.type, "interrupted") if finished is not None else "interrupted"
        step = record.flow.step(e.step)
        attributes: dict[str, Any] = {
            "saga.id": record.id,
            "saga.step": e.step,
            "saga.phase": e.phase.value,
            "saga.attempt": e.attempt,
            "saga.outcome": outcome,
            "service.target": step.service or "-",
        }
        if finished is not None and finished.status_code is not None:
            attributes["http.response.status_code"] = finished.status_code
        if e.attempt > 1:
            attributes["http.request.resend_count"] = e.attempt - 1
        if finished is not None and finished.event.failure is not None:
            attributes["error.message"] = finished.event.failure.error
        elif finished is None:
            attributes["error.message"] = "interrupted: the worker running it was lost"
        span = ReadableSpan(
            name=f"{e.phase.value} {e.step}",
            context=_context(record.trace_id, span_id),
            parent=_context(record.trace_id, run.span_id),
            resource=self.tracing.resource,
            attributes=attributes,
            kind=SpanKind.CLIENT,
            status=Status(StatusCode.OK) if outcome == "succeeded" else Status(StatusCode.ERROR),
            start_time=_ns(start),
            end_time=_ns(max(end, start)),
        )
        self.tracing.emit(span)


def _key(entry: JournalEntry) -> str:
    e = entry.event
    return f"{e.step}:{e.phase}:{e.attempt}"


class Observers:
    """Several `RunObserver`s as one (a worker's metrics and its tracer)."""

    def __init__(self, *observers: Any) -> None:
        self.observers = [o for o in observers if o is not None]

    def started(self, record: SagaRecord, entries: Sequence[JournalEntry]) -> None:
        """Tell each observer a run starts."""
        for o in self.observers:
            o.started(record, entries)

    def committed(
        self, record: SagaRecord, state: SagaState, entries: Sequence[JournalEntry]
    ) -> None:
        """Tell each observer what was committed."""
        for o in self.observers:
            o.committed(record, state, entries)
