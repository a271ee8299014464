"""Step executors: perform one attempt and classify its outcome for the core.

`HttpExecutor` calls a service with httpx; `PythonExecutor` calls a registered handler.
Both return an `AttemptOutcome`; neither decides what happens next.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sagalab.orchestrator.errors import InputError, SagaError, ServiceConfigError, TemplateError
from sagalab.orchestrator.flow import StepDefinition
from sagalab.orchestrator.jsonsafe import check_json_value
from sagalab.orchestrator.outcomes import (
    SUCCESS,
    Transport,
    Verdict,
    classify_status,
    classify_transport,
    parse_retry_after,
)
from sagalab.orchestrator.records import direct_init
from sagalab.orchestrator.registry import (
    PermanentStepError,
    StepCall,
    TransientStepError,
    get_handler,
)
from sagalab.orchestrator.saga import Failure, Phase
from sagalab.orchestrator.templates import render

if TYPE_CHECKING:  # imported where a call is made: the CLI's start-up must not pay for httpx
    import httpx


@direct_init
@dataclass(frozen=True)
class AttemptContext:
    """Everything an executor needs for one attempt."""

    saga_id: str
    trace_id: str
    span_id: str
    step: StepDefinition
    phase: Phase
    attempt: int
    idempotency_key: str
    input: Mapping[str, Any]
    responses: Mapping[str, Any]

    @property
    def traceparent(self) -> str:
        """W3C trace context header value for this attempt."""
        return f"00-{self.trace_id}-{self.span_id}-01"

    def template_context(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "steps": {name: {"response": r} for name, r in self.responses.items()},
            "saga": {"id": self.saga_id, "trace_id": self.trace_id},
        }


@direct_init
@dataclass(frozen=True)
class AttemptOutcome:
    """What happened: a response, or a classified failure; plus what was sent."""

    response: Any = None
    failure: Failure | None = None
    request: Any = None
    status_code: int | None = None
    duration_ms: float | None = None
    # Counts against the service's breaker (`orchestrator.outcomes.Verdict.unwell`).
    unwell: bool = False

    @property
    def succeeded(self) -> bool:
        return self.failure is None


class StepExecutor(Protocol):
    """Performs attempts. Implementations must not raise for a failed call."""

    def execute(self, ctx: AttemptContext) -> AttemptOutcome: ...


def classify_response(response: httpx.Response) -> Verdict:
    """The shared verdict (`orchestrator.outcomes.classify_status`) for an HTTP answer."""
    code = response.status_code
    if 200 <= code < 300:
        return SUCCESS
    return classify_status(
        code,
        response.text[:300],
        parse_retry_after(response.headers.get("Retry-After"), now=time.time()),
    )


def classify_exception(exc: httpx.HTTPError) -> Verdict:
    """The shared verdict for an httpx error: which `Transport` case it is."""
    import httpx

    name = type(exc).__name__
    message = f"{name}: {exc}" if str(exc) else name
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return classify_transport(Transport.NOT_SENT, message)
    if isinstance(exc, httpx.TimeoutException):
        return classify_transport(Transport.TIMEOUT, message)
    if isinstance(exc, httpx.TransportError):
        return classify_transport(Transport.DROPPED, message)
    return classify_transport(Transport.PROTOCOL, message)


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"text": response.text[:1000]}


class HttpExecutor:
    """Calls services over HTTP with httpx. One instance per thread (it owns a Client)."""

    def __init__(self, services: Mapping[str, str], *, client: httpx.Client | None = None):
        import httpx

        self.services = dict(services)
        self.client = client or httpx.Client(headers={"User-Agent": "sagalab"})

    def close(self) -> None:
        self.client.close()

    def execute(self, ctx: AttemptContext) -> AttemptOutcome:
        step = ctx.step
        call = step.action if ctx.phase is Phase.ACTION else step.compensation
        if step.service is None or call is None:
            return PythonExecutor().execute(ctx)
        base = self.services.get(step.service)
        if base is None:
            raise ServiceConfigError(f"no base URL for service {step.service!r}")
        try:
            template_ctx = ctx.template_context()
            path = render(call.path, template_ctx)
            body = render(call.body, template_ctx)
        except TemplateError as exc:
            return AttemptOutcome(failure=Failure(f"template: {exc}", False, False))
        headers = {
            "Idempotency-Key": ctx.idempotency_key,
            "traceparent": ctx.traceparent,
            "X-Saga-Id": ctx.saga_id,
        }
        # Build the request before sending anything: a body JSON cannot carry (NaN from an
        # old database, a lone surrogate) or a URL that cannot be formed fails here, for good
        # and certainly not applied, instead of raising out of the worker's thread.
        try:
            check_json_value(body, what=f"{step.name} {ctx.phase.value} body")
            request = self.client.build_request(
                call.method, base + path, json=body, headers=headers, timeout=step.timeout
            )
        except Exception as exc:
            reason = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            return AttemptOutcome(failure=Failure(f"request not sent: {reason}", False, False))
        shown = {"method": call.method, "url": base + path, "body": body}
        import httpx  # loaded by __init__: a lookup in sys.modules

        started = time.perf_counter()
        try:
            response = self.client.send(request)
        except httpx.HTTPError as exc:
            elapsed = (time.perf_counter() - started) * 1000
            failure, unwell = classify_exception(exc)
            return AttemptOutcome(
                failure=failure, request=shown, duration_ms=elapsed, unwell=unwell
            )
        elapsed = (time.perf_counter() - started) * 1000
        failure, unwell = classify_response(response)
        return AttemptOutcome(
            response=_body(response),
            failure=failure,
            request=shown,
            status_code=response.status_code,
            duration_ms=elapsed,
            unwell=unwell,
        )


class PythonExecutor:
    """Calls registered Python handlers in this process."""

    def execute(self, ctx: AttemptContext) -> AttemptOutcome:
        step = ctx.step
        name = step.handler if ctx.phase is Phase.ACTION else step.compensation_handler
        if name is None:
            return AttemptOutcome(failure=Failure("step has no handler", False, False))
        # By position (saga id, step, phase, attempt, key, input, responses): a class
        # called with keywords first gathers them into a dict, once per attempt here.
        call = StepCall(
            ctx.saga_id,
            step.name,
            ctx.phase,
            ctx.attempt,
            ctx.idempotency_key,
            ctx.input,
            ctx.responses,
        )
        started = time.perf_counter()
        try:
            result = get_handler(name)(call)
        except TransientStepError as exc:
            failure = Failure(f"transient: {exc}", True, False)
        except PermanentStepError as exc:
            failure = Failure(f"refused: {exc}", False, False)
        except SagaError:
            raise
        except Exception as exc:  # a handler bug: conservatively possibly applied
            failure = Failure(f"{type(exc).__name__}: {exc}", False, True)
        else:  # (response, failure, request, status code, duration)
            return AttemptOutcome(result, None, None, None, (time.perf_counter() - started) * 1000)
        return AttemptOutcome(failure=failure, duration_ms=(time.perf_counter() - started) * 1000)
