"""Fake external services for sagalab: inventory, payments, shipping and notifications.

Real HTTP on 127.0.0.1 with idempotency keys, compensations keyed by order, a ledger of
everything applied, and run-time fault injection. Start them in a test with
:func:`run_in_thread`, or from a shell with ``sagalab services up``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagalab.fakeservices.app import create_app
    from sagalab.fakeservices.catalog import SERVICE_NAMES, SERVICES, ServiceSpec, get_service
    from sagalab.fakeservices.client import DEFAULT_URL, AdminClient
    from sagalab.fakeservices.errors import (
        AdminRequestRejected,
        FakeServicesError,
        PortInUseError,
        ServerStartError,
        ServicesUnreachable,
        UnknownServiceError,
    )
    from sagalab.fakeservices.faults import Fault, FaultDecision, FaultSpec, decide
    from sagalab.fakeservices.ledger import LedgerEntry, applied_twice
    from sagalab.fakeservices.server import (
        SERVICES_URL_ENV,
        RunningServices,
        run_in_thread,
        service_env,
        services_map,
    )
    from sagalab.fakeservices.state import LabState

# Each name is imported from its module when first used (PEP 562): the CLI imports this
# package for a constant or two, and importing the app (FastAPI, pydantic) and the server
# (uvicorn) up front cost every `sagalab` command ~0.5 s of start-up.
_WHERE = {
    "AdminClient": "sagalab.fakeservices.client",
    "AdminRequestRejected": "sagalab.fakeservices.errors",
    "DEFAULT_URL": "sagalab.fakeservices.client",
    "FakeServicesError": "sagalab.fakeservices.errors",
    "Fault": "sagalab.fakeservices.faults",
    "FaultDecision": "sagalab.fakeservices.faults",
    "FaultSpec": "sagalab.fakeservices.faults",
    "LabState": "sagalab.fakeservices.state",
    "LedgerEntry": "sagalab.fakeservices.ledger",
    "PortInUseError": "sagalab.fakeservices.errors",
    "RunningServices": "sagalab.fakeservices.server",
    "SERVICES": "sagalab.fakeservices.catalog",
    "SERVICES_URL_ENV": "sagalab.fakeservices.server",
    "SERVICE_NAMES": "sagalab.fakeservices.catalog",
    "ServerStartError": "sagalab.fakeservices.errors",
    "ServiceSpec": "sagalab.fakeservices.catalog",
    "ServicesUnreachable": "sagalab.fakeservices.errors",
    "UnknownServiceError": "sagalab.fakeservices.errors",
    "applied_twice": "sagalab.fakeservices.ledger",
    "create_app": "sagalab.fakeservices.app",
    "decide": "sagalab.fakeservices.faults",
    "get_service": "sagalab.fakeservices.catalog",
    "run_in_thread": "sagalab.fakeservices.server",
    "service_env": "sagalab.fakeservices.server",
    "services_map": "sagalab.fakeservices.server",
}


def __getattr__(name: str) -> Any:
    """The public name `name`, imported from its module on first use."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_URL",
    "SERVICES",
    "SERVICES_URL_ENV",
    "SERVICE_NAMES",
    "AdminClient",
    "AdminRequestRejected",
    "FakeServicesError",
    "Fault",
    "FaultDecision",
    "FaultSpec",
    "LabState",
    "LedgerEntry",
    "PortInUseError",
    "RunningServices",
    "ServerStartError",
    "ServiceSpec",
    "ServicesUnreachable",
    "UnknownServiceError",
    "applied_twice",
    "create_app",
    "decide",
    "get_service",
    "run_in_thread",
    "service_env",
    "services_map",
]
