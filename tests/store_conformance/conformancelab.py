"""Helpers of the store conformance suite: the `Backend` under test, a flow, saga helpers.

Plain functions (not fixtures), importable by the suite's modules and by the processes
they spawn; the fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.journal import JournalEntry
from sagalab.orchestrator.saga import Event, EventType, Phase
from sagalab.orchestrator.store import BreakerStore, Lease, SagaRecord, Store
from sagalab.orchestrator.stores import open_breaker_store, open_store

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
    #: Another fresh, empty database of the same backend (a copy's destination).
    fresh: Callable[[], str] = lambda: ""
    _open: list[Any] = field(default_factory=list)

    def open_url(self, url: str, *, readonly: bool = False) -> Store:
        """A new handle on another database `url` of this backend (closed after the test)."""
        store = open_store(url, readonly=readonly)
        self._open.append(store)
        return store

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
