"""The ledger: an append-only record of every operation the fake services applied.

An entry is written when an action or compensation takes effect, including compensations
that were no-ops (``noop=True``). Replays of a stored idempotent response, refusals and
injected faults that fire before applying write nothing. So a ledger in which some
(service, operation, order) appears twice with ``noop=False`` proves a double apply; see
:func:`applied_twice`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

Operation = Literal["action", "compensation"]


@dataclass(frozen=True)
class LedgerEntry:
    """One applied operation."""

    seq: int
    service: str
    operation: Operation
    endpoint: str
    order_id: str
    idempotency_key: str
    traceparent: str | None
    applied_at: str
    noop: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as the JSON object the HTTP API serves."""
        return asdict(self)


class Ledger:
    """An in-memory ledger. Not locked itself: :class:`fakeservices.state.LabState` is."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []

    def append(
        self,
        *,
        service: str,
        operation: Operation,
        endpoint: str,
        order_id: str,
        idempotency_key: str,
        traceparent: str | None,
        applied_at: str,
        noop: bool,
    ) -> LedgerEntry:
        """Append an entry with the next sequence number (1-based) and return it."""
        entry = LedgerEntry(
            seq=len(self._entries) + 1,
            service=service,
            operation=operation,
            endpoint=endpoint,
            order_id=order_id,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
            applied_at=applied_at,
            noop=noop,
        )
        self._entries.append(entry)
        return entry

    def entries(self, service: str | None = None) -> list[LedgerEntry]:
        """Return the entries in order, optionally only those of one service."""
        return [e for e in self._entries if service is None or e.service == service]

    def clear(self) -> None:
        """Forget every entry and restart the sequence."""
        self._entries.clear()


def applied_twice(
    entries: Iterable[LedgerEntry | Mapping[str, Any]],
) -> list[tuple[str, str, str]]:
    """Return the (service, operation, order_id) triples applied more than once.

    No-op compensations do not count. Accepts :class:`LedgerEntry` objects or the dicts
    served by ``GET /_admin/ledger``, so an orchestrator test can assert
    ``applied_twice(resp.json()["entries"]) == []``.
    """
    counts: Counter[tuple[str, str, str]] = Counter()
    for entry in entries:
        row = entry.to_dict() if isinstance(entry, LedgerEntry) else entry
        if not row["noop"]:
            counts[(row["service"], row["operation"], row["order_id"])] += 1
    return sorted(triple for triple, n in counts.items() if n > 1)
