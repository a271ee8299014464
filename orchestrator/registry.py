"""Python steps and flows for library users and benchmarks.

    from sagalab.orchestrator.registry import step_handler, compensation_handler, register_flow

    @step_handler("reserve")
    def reserve(call: StepCall) -> dict: ...

A flow then names `handler: reserve` (and `compensation_handler: ...`) instead of a service.
A handler raises `TransientStepError` for a failure worth retrying that applied nothing, and
`PermanentStepError` for a refusal; any other exception counts as permanent but possibly applied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sagalab.orchestrator.errors import FlowNotFoundError, SagaError
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.records import direct_init
from sagalab.orchestrator.saga import Phase


@direct_init
@dataclass(frozen=True)
class StepCall:
    """What a Python step handler receives."""

    saga_id: str
    step: str
    phase: Phase
    attempt: int
    idempotency_key: str
    input: Mapping[str, Any]
    responses: Mapping[str, Any]


StepHandler = Callable[[StepCall], Any]


class TransientStepError(SagaError):
    """A Python step failed in a way worth retrying, having applied nothing."""


class PermanentStepError(SagaError):
    """A Python step refused the operation; retrying will not help."""


_HANDLERS: dict[str, StepHandler] = {}
_FLOWS: dict[str, FlowDefinition] = {}


def _register(name: str) -> Callable[[StepHandler], StepHandler]:
    def decorator(fn: StepHandler) -> StepHandler:
        _HANDLERS[name] = fn
        return fn

    return decorator


def step_handler(name: str) -> Callable[[StepHandler], StepHandler]:
    """Register `fn` as the Python action called `name`."""
    return _register(name)


def compensation_handler(name: str) -> Callable[[StepHandler], StepHandler]:
    """Register `fn` as the Python compensation called `name`."""
    return _register(name)


def get_handler(name: str) -> StepHandler:
    """The handler registered as `name`."""
    try:
        return _HANDLERS[name]
    except KeyError:
        raise SagaError(
            f"no Python step handler named {name!r} is registered in this process"
        ) from None


def register_flow(flow: FlowDefinition) -> FlowDefinition:
    """Make `flow` runnable by name in this process."""
    _FLOWS[flow.name] = flow
    return flow


def registered_flow(name: str) -> FlowDefinition:
    """A flow registered with `register_flow`."""
    try:
        return _FLOWS[name]
    except KeyError:
        raise FlowNotFoundError(f"no registered flow named {name!r}") from None
