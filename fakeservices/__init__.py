"""Fake external services for sagalab: inventory, payments, shipping and notifications.

Real HTTP on 127.0.0.1 with idempotency keys, compensations keyed by order, a ledger of
everything applied, and run-time fault injection. Start them in a test with
:func:`run_in_thread`, or from a shell with ``sagalab services up``.
"""

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
