"""The store conformance suite: what every backend of the store port must do.

Every test takes the backend from `store_factory`, parametrized by backend name. A backend
is a URL that `orchestrator.stores.open_store` and `open_breaker_store` accept, plus one
backend-specific hook: `older()`, a database at an older schema version holding what the
current one holds (migration). Today the one backend is "sqlite"; issue 10 adds "postgres"
to `BACKENDS` (and its fixture setup below), and the suite is its definition of done.
Tests use the protocols of orchestrator/store.py only, never a backend's internals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator.flow import FlowDefinition, flow_from_dict
from orchestrator.journal import JournalEntry
from orchestrator.saga import Event, EventType, Phase
from orchestrator.store import BreakerStore, Lease, SagaRecord, Store
from orchestrator.stores import open_breaker_store, open_store

BACKENDS = ["sqlite"]

FLOW_RAW = {
    "name": "order",
    "version": 1,
    "input": {"required": ["order_id"]},
    "steps": [
        {"name": "reserve", "handler": "reserve", "compensation_handler": "release"},
        {"name": "charge", "handler": "charge", "compensation_handler": "refund"},
    ],
}


def order_flow() -> FlowDefinition:
    """A two-step flow of in-process handlers (nothing is ever called)."""
    return flow_from_dict(FLOW_RAW)


@dataclass
class Backend:
    """One backend under test: a URL, the handles opened on it, and its migration hook."""

    name: str
    url: str
    older: Callable[[], str]
    _open: list[Any] = field(default_factory=list)

    def open(self, *, readonly: bool = False, create: bool = True) -> Store:
        """A new handle on the backend's database (closed after the test)."""
        store = open_store(self.url, readonly=readonly, create=create)
        self._open.append(store)
        return store

    def breakers(self, *, readonly: bool = False) -> BreakerStore:
        """A new breaker-state handle on the backend's database (closed after the test)."""
        states = open_breaker_store(self.url, readonly=readonly)
        self._open.append(states)
        return states

    def close_all(self) -> None:
        for handle in reversed(self._open):
            with contextlib.suppress(Exception):  # closed by the test already
                handle.close()


def _sqlite(tmp_path: Path) -> Backend:
    from test_store import strip_to_v1  # the migration tests' own older file, reused

    path = tmp_path / "conformance.db"

    def older() -> str:
        v1 = tmp_path / "older.db"
        strip_to_v1(path, v1)
        return f"sqlite://{v1}"

    return Backend("sqlite", f"sqlite://{path}", older)


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backend named by the parameter, on a fresh database."""
    if request.param == "sqlite":
        backend = _sqlite(tmp_path)
    else:  # pragma: no cover - a backend added to BACKENDS without its setup
        raise pytest.UsageError(f"no setup for store backend {request.param!r}")
    yield backend
    backend.close_all()


@pytest.fixture
def store(store_factory: Backend) -> Store:
    """One handle on the backend's fresh database."""
    return store_factory.open()


def create(
    store: Store,
    saga_id: str = "s1",
    key: str | None = None,
    *,
    now: float = 100.0,
    run_after: float | None = None,
    tenant: str = "default",
    **payload: Any,
) -> tuple[SagaRecord, bool]:
    """Store a saga of the order flow."""
    return store.create_saga(
        saga_id=saga_id,
        flow=order_flow(),
        payload=payload or {"order_id": "o-1"},
        trace_id="ab" * 16,
        idempotency_key=key,
        now=now,
        run_after=run_after,
        tenant=tenant,
    )


def reserve_ok(at: float = 101.0) -> list[Event]:
    """The first step's attempt, started and succeeded."""
    return [
        Event(EventType.ATTEMPT_STARTED, at, "reserve", Phase.ACTION, 1),
        Event(EventType.ATTEMPT_SUCCEEDED, at + 0.5, "reserve", Phase.ACTION, 1),
    ]


def advance(
    store: Store, saga_id: str, events: list[Event], *, lease: Lease | None = None, **extra: Any
) -> int:
    """Append `events` after the saga's current journal, with the state they lead to."""
    record, _, state = store.state(saga_id)
    for event in events:
        state.apply(event)
    return store.append(
        saga_id,
        [JournalEntry(e, **extra) for e in events],
        expected_seq=record.last_seq,
        state=state,
        now=events[-1].at,
        lease=lease,
    )
