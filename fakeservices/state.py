"""The lab's mutable state and the rules that change it, behind one lock.

Theory of operation, per service:

* Idempotency keys are scoped to a service. The first request under a key that *applies*
  something stores its response under the key, together with a fingerprint of the endpoint
  and the exact JSON body. A later request with the same key and fingerprint gets that
  response back (``replayed``) and applies nothing; the same key with another endpoint or body
  is refused with 422. Refusals (402, 409) are not stored, so the key stays usable.
* Orders are the business ids compensations are keyed by. An action adds a resource to its
  order. The first compensation for an order undoes all of its resources and marks it
  compensated; if nothing was applied it still marks it (a tombstone) and answers
  ``noop: true``. A later compensation for that order is a no-op, and a later action is
  refused with 409 ``compensated``.
* Every action or compensation that takes effect, no-ops included, appends a ledger entry.

All public methods take the lock, so uvicorn's event loop and any other thread (a test
inspecting ``app.state.lab``) see consistent state. Nothing under the lock awaits or sleeps.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sagalab.fakeservices.catalog import SERVICES, ServiceSpec, normalize_endpoint
from sagalab.fakeservices.errors import UnknownServiceError
from sagalab.fakeservices.faults import FaultDecision, FaultSpec, FaultTable
from sagalab.fakeservices.ledger import Ledger, LedgerEntry

Clock = Callable[[], float]


@dataclass(frozen=True)
class Outcome:
    """The answer to one action or compensation."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class _Stored:
    fingerprint: str
    status: int
    body: dict[str, Any]


@dataclass
class _Order:
    resources: list[str] = field(default_factory=list)
    compensated: bool = False


@dataclass
class _ServiceState:
    responses: dict[str, _Stored] = field(default_factory=dict)
    orders: dict[str, _Order] = field(default_factory=dict)
    next_id: int = 1


def _fingerprint(endpoint: str, raw_body: Any) -> str:
    return endpoint + " " + json.dumps(raw_body, sort_keys=True, separators=(",", ":"))


def _error(status: int, error: str, message: str, **extra: Any) -> Outcome:
    return Outcome(status, {"error": error, "message": message, **extra})


class LabState:
    """Ledger, orders, stored responses and faults of all four services."""

    def __init__(self, *, clock: Clock, rng: random.Random) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._rng = rng
        self._services = {name: _ServiceState() for name in SERVICES}
        self._ledger = Ledger()
        self._faults = FaultTable()
        self._in_flight: set[tuple[str, str]] = set()
        self._held: set[tuple[str, str]] = set()

    # -- operations ---------------------------------------------------------------------

    def begin(self, service: str, key: str) -> bool:
        """Claim `key` for a request being processed; False if one under it already is."""
        with self._lock:
            if (service, key) in self._in_flight:
                return False
            self._in_flight.add((service, key))
            return True

    def end(self, service: str, key: str) -> None:
        """Release a key claimed with `begin`."""
        with self._lock:
            self._in_flight.discard((service, key))

    def in_flight(self, service: str, key: str) -> bool:
        """Whether a request under `key` is being processed now."""
        with self._lock:
            return (service, key) in self._in_flight

    def perform(
        self,
        spec: ServiceSpec,
        endpoint: str,
        *,
        key: str,
        raw_body: Any,
        body: Any,
        traceparent: str | None,
    ) -> Outcome:
        """Apply (or replay, or refuse) one validated action or compensation."""
        with self._lock:
            svc = self._services[spec.name]
            fingerprint = _fingerprint(endpoint, raw_body)
            stored = svc.responses.get(key)
            if stored is not None:
                if stored.fingerprint == fingerprint:
                    return Outcome(stored.status, stored.body, replayed=True)
                return _error(
                    422,
                    "idempotency_key_reused",
                    f"Idempotency-Key {key!r} was first used with a different request to "
                    f"{spec.name}; use a new key for a different request",
                )
            is_action = endpoint == spec.action_path
            outcome = self._act(spec, svc, body) if is_action else self._compensate(spec, svc, body)
            if outcome.status < 300:
                svc.responses[key] = _Stored(fingerprint, outcome.status, outcome.body)
                self._ledger.append(
                    service=spec.name,
                    operation="action" if is_action else "compensation",
                    endpoint=endpoint,
                    order_id=body.order_id,
                    idempotency_key=key,
                    traceparent=traceparent,
                    applied_at=datetime.fromtimestamp(self._clock(), UTC).isoformat(),
                    noop=bool(outcome.body.get("noop", False)),
                )
            return outcome

    def _act(self, spec: ServiceSpec, svc: _ServiceState, body: Any) -> Outcome:
        order = svc.orders.get(body.order_id)
        if order is not None and order.compensated:
            return _error(
                409,
                "compensated",
                f"order {body.order_id!r} was already compensated at {spec.name}; "
                "an action arriving after its compensation is refused",
                order_id=body.order_id,
            )
        refusal = spec.refuse(body)
        if refusal is not None:
            return _error(refusal.status, refusal.error, refusal.message, order_id=body.order_id)
        resource_id = f"{spec.id_prefix}_{svc.next_id:06d}"
        svc.next_id += 1
        svc.orders.setdefault(body.order_id, _Order()).resources.append(resource_id)
        return Outcome(201, {spec.id_field: resource_id, **body.model_dump()})

    def _compensate(self, spec: ServiceSpec, svc: _ServiceState, body: Any) -> Outcome:
        order = svc.orders.setdefault(body.order_id, _Order())
        if order.compensated or not order.resources:
            # Never applied (leave a tombstone) or already undone: nothing to undo.
            order.compensated = True
            return Outcome(200, {"order_id": body.order_id, "noop": True, "undone": []})
        order.compensated = True
        undone = list(order.resources)
        return Outcome(200, {"order_id": body.order_id, "noop": False, "undone": undone})

    # -- faults -------------------------------------------------------------------------

    def decide_faults(self, service: str, endpoint: str) -> FaultDecision:
        """Decide what the faults do to one request arriving now."""
        with self._lock:
            return self._faults.decide(service, endpoint, now=self._clock(), rng=self._rng)

    def add_fault(self, spec: FaultSpec) -> dict[str, Any]:
        """Store a fault and return its JSON form."""
        with self._lock:
            now = self._clock()
            return self._faults.add(spec, now=now).to_dict(now)

    def faults(self) -> list[dict[str, Any]]:
        """Return the JSON form of every stored fault."""
        with self._lock:
            now = self._clock()
            return [f.to_dict(now) for f in self._faults.faults()]

    def clear_faults(self, service: str | None = None) -> int:
        """Remove all faults, or one service's; return how many were removed."""
        with self._lock:
            return self._faults.clear(service)

    # -- holds (in-process only: a test keeps a call in flight until it lets it go) ------

    def hold(self, service: str, endpoint: str = "*") -> None:
        """Make requests to `endpoint` of `service` (``"*"``: all of its endpoints) wait,
        before any fault, until :meth:`release`: a test decides when a call ends, however slow
        the machine, instead of guessing a latency long enough."""
        endpoint = normalize_endpoint(service, endpoint)
        with self._lock:
            self._held.add((service, endpoint))

    def release(self, service: str | None = None) -> None:
        """Let held requests go on: every hold, or those on `service`."""
        with self._lock:
            self._held = {h for h in self._held if service is not None and h[0] != service}

    def held(self, service: str, endpoint: str) -> bool:
        """Whether a request to `endpoint` of `service` must wait now."""
        with self._lock:
            return (service, endpoint) in self._held or (service, "*") in self._held

    # -- ledger and reset ---------------------------------------------------------------

    def ledger(self, service: str | None = None) -> list[LedgerEntry]:
        """Return the ledger entries, optionally of one service."""
        with self._lock:
            return self._ledger.entries(service)

    def read_ledger(self, service: str | None, since: float | None = None) -> list[dict[str, Any]]:
        """The entries of `service` (every service's if None) applied at or after `since`
        (epoch seconds; all if None), as the JSON objects ``GET /{service}/ledger`` serves:
        the ledger-reader interface `sagalab verify` reads (orchestrator/ledgers.py)."""
        if service is not None and service not in self._services:
            raise UnknownServiceError(service, tuple(self._services))
        return [e.to_dict() for e in _since(self.ledger(service), since)]

    def plant(self, **fields: Any) -> LedgerEntry:
        """Append a ledger entry by hand, bypassing every rule (a test plants what the rules
        never let happen: a double apply, an action after its compensation). `fields` are
        :meth:`Ledger.append`'s; `applied_at` defaults to now, `traceparent` to None."""
        with self._lock:
            fields.setdefault("applied_at", datetime.fromtimestamp(self._clock(), UTC).isoformat())
            fields.setdefault("traceparent", None)
            return self._ledger.append(**fields)

    def reset(self) -> None:
        """Forget the ledger, orders, stored responses, id counters and faults; release
        every hold."""
        with self._lock:
            self._held = set()
            self._services = {name: _ServiceState() for name in SERVICES}
            self._ledger.clear()
            self._faults.reset()


def _since(entries: list[LedgerEntry], since: float | None) -> list[LedgerEntry]:
    """The entries applied at or after `since` (epoch seconds; all if None)."""
    if since is None:
        return entries
    return [e for e in entries if datetime.fromisoformat(e.applied_at).timestamp() >= since]
