"""sagalab: run business flows as sagas across services that fail, and see every flow end done
or fully undone; simulate the whole path first.

The library API (the CLI is `sagalab --help`)::

    from sagalab import step_handler, compensation_handler, register_flow, open_store, SagaRunner

    @step_handler("reserve")
    def reserve(call): ...

The names below load on first use, so importing one part of sagalab (the saga core, the
simulator) never loads the runtime around it. The packages under this name are the
repository's folders: `sagalab.orchestrator` (the core and the real runtime),
`sagalab.simulator`, `sagalab.edge`, `sagalab.stack`, `sagalab.fakeservices`,
`sagalab.loadtests` and `sagalab.cli`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagalab.orchestrator.errors import SagaError
    from sagalab.orchestrator.executors import HttpExecutor, PythonExecutor
    from sagalab.orchestrator.flow import FlowDefinition
    from sagalab.orchestrator.flowfile import load_flow
    from sagalab.orchestrator.registry import (
        PermanentStepError,
        StepCall,
        TransientStepError,
        compensation_handler,
        register_flow,
        step_handler,
    )
    from sagalab.orchestrator.runner import RunResult, SagaRunner, start_saga
    from sagalab.orchestrator.saga import SagaStatus
    from sagalab.orchestrator.store import Store
    from sagalab.orchestrator.stores import open_store

#: Public name -> the module that defines it.
_WHERE = {
    "step_handler": "sagalab.orchestrator.registry",
    "compensation_handler": "sagalab.orchestrator.registry",
    "register_flow": "sagalab.orchestrator.registry",
    "StepCall": "sagalab.orchestrator.registry",
    "TransientStepError": "sagalab.orchestrator.registry",
    "PermanentStepError": "sagalab.orchestrator.registry",
    "SagaRunner": "sagalab.orchestrator.runner",
    "RunResult": "sagalab.orchestrator.runner",
    "start_saga": "sagalab.orchestrator.runner",
    "PythonExecutor": "sagalab.orchestrator.executors",
    "HttpExecutor": "sagalab.orchestrator.executors",
    "open_store": "sagalab.orchestrator.stores",
    "Store": "sagalab.orchestrator.store",
    "load_flow": "sagalab.orchestrator.flowfile",
    "FlowDefinition": "sagalab.orchestrator.flow",
    "SagaStatus": "sagalab.orchestrator.saga",
    "SagaError": "sagalab.orchestrator.errors",
}

__all__ = [
    "FlowDefinition",
    "HttpExecutor",
    "PermanentStepError",
    "PythonExecutor",
    "RunResult",
    "SagaError",
    "SagaRunner",
    "SagaStatus",
    "StepCall",
    "Store",
    "TransientStepError",
    "compensation_handler",
    "load_flow",
    "open_store",
    "register_flow",
    "start_saga",
    "step_handler",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'sagalab' has no attribute {name!r}")
    value = getattr(import_module(where), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
