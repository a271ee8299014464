"""The FastAPI app hosting the four fake services and the ``/_admin`` API.

Each action or compensation request goes through the same pipeline, in this order:

0. a request whose ``Idempotency-Key`` is held by a request still being processed answers 409
   ``in_progress`` at once (as the IETF Idempotency-Key draft and Stripe do): the caller
   retries later and then gets the first request's stored answer;
1. faults decide (:func:`fakeservices.faults.decide`); a request a test holds
   (:meth:`LabState.hold`, in-process only) waits until released; matching latency is awaited;
2. an active outage answers its status (503) at once;
3. a missing or blank ``Idempotency-Key`` header answers 400;
4. a body that is not valid JSON or does not match the endpoint's model answers 422;
5. an error fault that fires before applying answers its status; nothing is applied;
6. the lab state applies, replays or refuses the request (:class:`fakeservices.state.LabState`);
7. an error fault with ``after_apply`` now answers its status instead of the real answer.

Ledgers (``GET /{service}/ledger``, ``GET /_admin/ledger``) and the admin API are never
subject to faults, so a test can always inspect what happened.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from sagalab.fakeservices.catalog import SERVICE_NAMES, SERVICES, OrderRef, ServiceSpec
from sagalab.fakeservices.faults import Fault, FaultDecision, FaultSpec
from sagalab.fakeservices.state import Clock, LabState

HOLD_POLL = 0.01  # seconds between looks at a hold: a released call goes on at once

MAX_KEY_LENGTH = 255

Perform = Callable[[Request, ServiceSpec, str], Awaitable[JSONResponse]]


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; accepting them would only fail later, when echoed.
    raise ValueError(f"{name} is not valid JSON")


def _summarize(errors: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def _invalid(errors: Sequence[Mapping[str, Any]]) -> JSONResponse:
    clean = [{k: v for k, v in err.items() if k not in ("ctx", "url", "input")} for err in errors]
    return JSONResponse(
        {
            "error": "invalid_request",
            "message": _summarize(clean),
            "detail": jsonable_encoder(clean),
        },
        status_code=422,
    )


def _fault_response(fault: Fault, service: str) -> JSONResponse:
    # The body is the same whether the fault fired before or after applying: a caller must
    # not be able to tell, exactly as with a real lost response.
    return JSONResponse(
        {
            "error": "injected_fault",
            "message": f"{service} failed with an injected {fault.status} (fault {fault.id})",
            "fault_id": fault.id,
        },
        status_code=fault.status,
    )


def _outage_response(fault: Fault, service: str, now: float) -> JSONResponse:
    assert fault.outage_seconds is not None
    remaining = max(0.0, fault.created_at + fault.outage_seconds - now)
    return JSONResponse(
        {
            "error": "outage",
            "message": f"{service} is down for another {remaining:.1f}s (fault {fault.id})",
            "fault_id": fault.id,
            "retry_after_seconds": round(remaining, 3),
        },
        status_code=fault.status,
        headers={"Retry-After": str(max(1, math.ceil(remaining)))},
    )


def create_app(
    *,
    clock: Clock = time.time,
    rng: random.Random | None = None,
) -> FastAPI:
    """Build the app. `clock` returns epoch seconds (outages and ``applied_at`` read it);
    `rng` decides partial error rates (seed it for reproducible runs).

    The state is reachable as ``app.state.lab`` (a :class:`~fakeservices.state.LabState`).
    """
    lab = LabState(clock=clock, rng=rng if rng is not None else random.Random())
    app = FastAPI(title="sagalab fake services", docs_url=None, redoc_url=None)
    app.state.lab = lab

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _invalid(exc.errors())

    async def perform(request: Request, spec: ServiceSpec, endpoint: str) -> JSONResponse:
        decision = lab.decide_faults(spec.name, endpoint)
        # Read the whole request before any injected delay: like a real service, the
        # operation then goes ahead even if the caller has gone (a crashed orchestrator), which
        # is the case idempotency keys exist for.
        try:
            payload = await request.body()
        except ClientDisconnect:
            return JSONResponse({"error": "client_disconnected"}, status_code=499)
        claimed = request.headers.get("idempotency-key", "").strip()
        if claimed and len(claimed) <= MAX_KEY_LENGTH:
            if not lab.begin(spec.name, claimed):
                return JSONResponse(
                    {
                        "error": "in_progress",
                        "message": f"a request under this Idempotency-Key is still being "
                        f"processed by {spec.name}; retry later for its answer",
                    },
                    status_code=409,
                    headers={"Retry-After": "1"},
                )
            try:
                return await process(request, spec, endpoint, decision, payload)
            finally:
                lab.end(spec.name, claimed)
        return await process(request, spec, endpoint, decision, payload)

    async def process(
        request: Request, spec: ServiceSpec, endpoint: str, decision: FaultDecision, payload: bytes
    ) -> JSONResponse:
        while lab.held(spec.name, endpoint):
            await asyncio.sleep(HOLD_POLL)
        if decision.latency_ms:
            await asyncio.sleep(decision.latency_ms / 1000)
        if decision.outage is not None:
            return _outage_response(decision.outage, spec.name, clock())
        key = request.headers.get("idempotency-key", "").strip()
        if not key or len(key) > MAX_KEY_LENGTH:
            return JSONResponse(
                {
                    "error": "missing_idempotency_key",
                    "message": f"POST /{spec.name}{endpoint} needs an Idempotency-Key header "
                    f"(1 to {MAX_KEY_LENGTH} characters): one unique key per operation, "
                    "reused on every retry of it",
                },
                status_code=400,
            )
        try:
            raw = json.loads(payload, parse_constant=_reject_constant)
        except ValueError:
            return JSONResponse(
                {"error": "invalid_request", "message": "the body is not valid JSON"},
                status_code=422,
            )
        model = spec.action_model if endpoint == spec.action_path else OrderRef
        try:
            body = model.model_validate(raw)
        except ValidationError as exc:
            return _invalid(exc.errors())
        if decision.before_apply is not None:
            return _fault_response(decision.before_apply, spec.name)
        outcome = lab.perform(
            spec,
            endpoint,
            key=key,
            raw_body=raw,
            body=body,
            traceparent=request.headers.get("traceparent"),
        )
        if decision.after_apply is not None:
            return _fault_response(decision.after_apply, spec.name)
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
        return JSONResponse(outcome.body, status_code=outcome.status, headers=headers)

    for spec in SERVICES.values():
        _add_service_routes(app, lab, spec, perform)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "services": list(SERVICE_NAMES)}

    @app.get("/_admin/ledger")
    async def all_ledgers(service: str | None = None, since: float | None = None) -> Any:
        if service is not None and service not in SERVICES:
            return _unknown_service(service)
        return {"entries": lab.read_ledger(service, since)}

    @app.post("/_admin/faults", status_code=201)
    async def add_fault(spec: FaultSpec) -> dict[str, Any]:
        return lab.add_fault(spec)

    @app.get("/_admin/faults")
    async def list_faults() -> dict[str, Any]:
        return {"faults": lab.faults()}

    @app.delete("/_admin/faults")
    async def clear_faults(service: str | None = None) -> Any:
        if service is not None and service not in SERVICES:
            return _unknown_service(service)
        return {"removed": lab.clear_faults(service)}

    @app.post("/_admin/reset")
    async def reset() -> dict[str, Any]:
        lab.reset()
        return {"reset": True}

    return app


def _unknown_service(service: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": "unknown_service",
            "message": f"unknown service {service!r}; choose one of: {', '.join(SERVICE_NAMES)}",
        },
        status_code=422,
    )


def _add_service_routes(app: FastAPI, lab: LabState, spec: ServiceSpec, perform: Perform) -> None:
    """Register one service's action, compensation and ledger routes."""

    def make_route(endpoint: str) -> Any:
        async def route(request: Request) -> JSONResponse:
            return await perform(request, spec, endpoint)

        return route

    for endpoint in spec.endpoints:
        app.add_api_route(
            f"/{spec.name}{endpoint}",
            make_route(endpoint),
            methods=["POST"],
            name=f"{spec.name}{endpoint}",
        )

    async def ledger(since: float | None = None) -> dict[str, Any]:
        # `since` (epoch seconds): what `sagalab verify` asks for (orchestrator/ledgers.py).
        return {"entries": lab.read_ledger(spec.name, since)}

    app.add_api_route(f"/{spec.name}/ledger", ledger, methods=["GET"], name=f"{spec.name}-ledger")
