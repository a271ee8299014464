"""Fault injection: what can go wrong in front of a fake service, and when it does.

A fault targets one service and either all of its endpoints (``"*"``) or one of them. Three
kinds combine freely except where noted:

* **latency** (``latency_ms``): every matching request waits this long first. Latencies of
  several matching faults add up.
* **error** (``error_rate``, ``status``): a matching request fails with ``status`` with
  probability ``error_rate``. By default it fails *before* the operation is applied (nothing
  happens, nothing is stored under the idempotency key, a retry may succeed). With
  ``after_apply`` it fails *after*: the operation is applied and its success response stored
  under the key, but the caller sees ``status`` - a lost response, an unknown outcome. A retry
  with the same key then gets the stored success as a replay.
* **outage** (``outage_seconds``): for that many seconds from creation every matching request
  gets ``status`` (503 by default); afterwards the fault is inactive. An outage cannot be
  combined with ``error_rate`` or ``after_apply``.

``error_rate`` defaults to 1.0 for a plain error fault and to 0.0 when the fault has a latency
or an outage, so ``{"service": "payments", "latency_ms": 50}`` only slows payments down.

:func:`decide` is pure: time and randomness are arguments. It draws one number from ``rng``
per matching error fault whose rate is strictly between 0 and 1, in creation order, and stops
at the first fault that fires.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sagalab.fakeservices.catalog import SERVICE_NAMES, normalize_endpoint

MAX_LATENCY_MS = 60_000
MAX_OUTAGE_SECONDS = 86_400.0


class FaultSpec(BaseModel):
    """The body of ``POST /_admin/faults``, validated (unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    service: str
    endpoint: str = "*"
    error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    status: int = Field(default=503, ge=400, le=599, strict=True)
    latency_ms: int = Field(default=0, ge=0, le=MAX_LATENCY_MS, strict=True)
    outage_seconds: float | None = Field(default=None, gt=0.0, le=MAX_OUTAGE_SECONDS)
    after_apply: bool = Field(default=False, strict=True)

    @field_validator("service")
    @classmethod
    def _known_service(cls, value: str) -> str:
        if value not in SERVICE_NAMES:
            raise ValueError(
                f"unknown service {value!r}; choose one of: {', '.join(SERVICE_NAMES)}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FaultSpec:
        self.endpoint = normalize_endpoint(self.service, self.endpoint)
        if self.outage_seconds is not None and (self.after_apply or self.error_rate is not None):
            raise ValueError(
                "an outage fails every request and applies nothing; drop error_rate and "
                "after_apply, or post them as a separate fault"
            )
        return self


@dataclass(frozen=True)
class Fault:
    """A stored fault. ``created_at`` is a reading of the app's clock (seconds)."""

    id: str
    service: str
    endpoint: str
    error_rate: float
    status: int
    latency_ms: int
    outage_seconds: float | None
    after_apply: bool
    created_at: float

    @property
    def kind(self) -> str:
        """``outage``, ``error``, ``latency`` or ``error+latency``."""
        if self.outage_seconds is not None:
            return "outage"
        parts = [
            name
            for name, on in (("error", self.error_rate > 0), ("latency", self.latency_ms > 0))
            if on
        ]
        return "+".join(parts) or "inert"

    def matches(self, service: str, endpoint: str) -> bool:
        """Whether the fault targets this service endpoint."""
        return self.service == service and self.endpoint in ("*", endpoint)

    def active(self, now: float) -> bool:
        """Whether the fault still acts at `now`; only outages expire."""
        if self.outage_seconds is None:
            return True
        return self.created_at <= now < self.created_at + self.outage_seconds

    def to_dict(self, now: float) -> dict[str, Any]:
        """The JSON form served by the admin API, with derived ``kind`` and ``active``."""
        data = asdict(self)
        data["kind"] = self.kind
        data["active"] = self.active(now)
        if self.outage_seconds is not None:
            remaining = self.created_at + self.outage_seconds - now
            data["outage_remaining_seconds"] = round(max(0.0, remaining), 3)
        return data


@dataclass(frozen=True)
class FaultDecision:
    """What the faults decided for one request."""

    latency_ms: int = 0
    outage: Fault | None = None
    before_apply: Fault | None = None
    after_apply: Fault | None = None


def decide(
    faults: Sequence[Fault],
    service: str,
    endpoint: str,
    *,
    now: float,
    rng: random.Random,
) -> FaultDecision:
    """Decide latency and failure for one request to `service` `endpoint` at `now`."""
    latency = 0
    outage: Fault | None = None
    fired: Fault | None = None
    for fault in faults:
        if not fault.matches(service, endpoint) or not fault.active(now):
            continue
        latency += fault.latency_ms
        if fault.outage_seconds is not None:
            outage = outage or fault
        elif (
            fired is None
            and fault.error_rate > 0
            and (fault.error_rate >= 1.0 or rng.random() < fault.error_rate)
        ):
            fired = fault
    if fired is None:
        return FaultDecision(latency, outage)
    if fired.after_apply:
        return FaultDecision(latency, outage, after_apply=fired)
    return FaultDecision(latency, outage, before_apply=fired)


class FaultTable:
    """The faults in force, in creation order. Not locked itself: the lab state is."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, spec: FaultSpec, *, now: float) -> Fault:
        """Store a validated spec as a new fault and return it."""
        error_rate = spec.error_rate
        if error_rate is None:
            plain = spec.latency_ms == 0 and spec.outage_seconds is None
            error_rate = 1.0 if plain else 0.0
        fault = Fault(
            id=f"flt-{self._next_id}",
            service=spec.service,
            endpoint=spec.endpoint,
            error_rate=error_rate,
            status=spec.status,
            latency_ms=spec.latency_ms,
            outage_seconds=spec.outage_seconds,
            after_apply=spec.after_apply,
            created_at=now,
        )
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def faults(self) -> list[Fault]:
        """Return the stored faults in creation order."""
        return list(self._faults)

    def clear(self, service: str | None = None) -> int:
        """Remove all faults, or those of one service; return how many were removed."""
        keep = [f for f in self._faults if service is not None and f.service != service]
        removed = len(self._faults) - len(keep)
        self._faults = keep
        return removed

    def reset(self) -> None:
        """Remove every fault and restart the ids."""
        self._faults.clear()
        self._next_id = 1

    def decide(
        self, service: str, endpoint: str, *, now: float, rng: random.Random
    ) -> FaultDecision:
        """Apply :func:`decide` to the stored faults."""
        return decide(self._faults, service, endpoint, now=now, rng=rng)
