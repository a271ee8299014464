"""Reading the services' ledgers, and `verify_store`: the shell around orchestrator/reconcile.py.

A service plugs into `sagalab verify` by keeping a ledger of what it applied and serving it:

    GET {service base URL}/ledger?since=EPOCH_SECONDS
    -> {"entries": [{"operation": "action" | "compensation",
                     "idempotency_key": "...",   # the Idempotency-Key header it was sent
                     "applied_at": "2026-11-25T18:00:00.123+00:00" | 1795000000.123,
                     "seq": 17,                  # optional: its position in this ledger
                     "noop": false,              # optional: nothing was there to undo
                     "order_id": "..."}, ...]}   # optional, shown in findings

one entry per operation that *took effect* (a replayed or refused request writes none), oldest
first. `since` is a hint: entries before it are filtered out here too. Our fake services serve
exactly this (fakeservices/app.py) and also implement `LedgerReader` in process
(`fakeservices.LabState.read_ledger`). Anything with a `read_ledger(service, since)` method
returning those JSON objects is a `LedgerReader`; `HttpLedgerReader` reads them over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from sagalab.orchestrator.errors import DamagedRecord, LedgerUnavailable, SagaNotFoundError
from sagalab.orchestrator.reconcile import (
    Finding,
    FindingKind,
    LedgerRecord,
    Reconciliation,
    SagaFacts,
    reconcile,
)
from sagalab.orchestrator.saga import Phase
from sagalab.orchestrator.store import SagaStore

__all__ = [
    "HttpLedgerReader",
    "LedgerReader",
    "collect_sagas",
    "read_ledgers",
    "records_from",
    "verify_store",
]

#: The largest ledger answer read (a month of a busy lab's entries is a few MB; `since`
#: narrows it): past it the ledger is reported unreadable rather than read into memory.
MAX_LEDGER_BYTES = 256 * 1024 * 1024


class LedgerReader(Protocol):
    """Reads one service's ledger."""

    def read_ledger(self, service: str, since: float | None = None) -> Sequence[Mapping[str, Any]]:
        """The entries `service` applied at or after `since` (epoch seconds; all if None),
        oldest first, as the JSON objects described in this module's docstring. Raises
        `LedgerUnavailable` (or anything else, reported the same way) if it cannot."""
        ...


class HttpLedgerReader:
    """`GET {base}/ledger?since=…` per service, with the base URLs the orchestrator calls
    (`urls`), else `{lab}/{service}` for a lab serving several services (our fakes)."""

    def __init__(
        self,
        urls: Mapping[str, str],
        *,
        lab: str | None = None,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        deadline: float = 120.0,
        max_bytes: int = MAX_LEDGER_BYTES,
    ) -> None:
        self.urls = dict(urls)
        self.lab = lab.rstrip("/") if lab else None
        self.client = client or httpx.Client(headers={"User-Agent": "sagalab verify"})
        self.timeout = timeout  # per network operation (connect, each read)
        self.deadline = deadline  # for the whole answer: a trickle resets `timeout` each byte
        self.max_bytes = max_bytes

    def close(self) -> None:
        """Release the HTTP client."""
        self.client.close()

    def url_for(self, service: str) -> str | None:
        """The ledger URL of `service` (None if no base URL is known)."""
        base = self.urls.get(service) or (f"{self.lab}/{service}" if self.lab else None)
        return None if base is None else base.rstrip("/") + "/ledger"

    def read_ledger(self, service: str, since: float | None = None) -> Sequence[Mapping[str, Any]]:
        """See `LedgerReader.read_ledger`."""
        url = self.url_for(service)
        if url is None:
            raise LedgerUnavailable(
                service,
                "no URL for it: pass --services FILE, NAME=URL, or the URL of a lab serving it",
            )
        params = {} if since is None else {"since": repr(since)}
        try:
            status, content = self._fetch(url, params)
        except httpx.HTTPError as exc:
            raise LedgerUnavailable(service, f"{type(exc).__name__}: {exc}", url=url) from None
        except _TooSlowOrLarge as exc:
            raise LedgerUnavailable(service, str(exc), url=url) from None
        if status != 200:
            shown = content[:200].decode("utf-8", "replace")
            raise LedgerUnavailable(service, f"answered {status} {shown!r}", url=url)
        try:
            body = json.loads(content)
        except (ValueError, RecursionError):
            raise LedgerUnavailable(service, "the answer is not JSON", url=url) from None
        entries = body.get("entries") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise LedgerUnavailable(service, 'the answer has no "entries" list', url=url)
        return entries

    def _fetch(self, url: str, params: Mapping[str, str]) -> tuple[int, bytes]:
        """The status and body of `GET url`, read within `deadline` seconds and `max_bytes`."""
        ends = time.monotonic() + self.deadline
        chunks: list[bytes] = []
        size = 0
        with self.client.stream("GET", url, params=params, timeout=self.timeout) as response:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise _TooSlowOrLarge(f"the answer is over {self.max_bytes} bytes")
                if time.monotonic() > ends:
                    raise _TooSlowOrLarge(f"the answer took over {self.deadline:g}s")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)


class _TooSlowOrLarge(Exception):
    """A ledger answer past the reader's deadline or size."""


def _timestamp(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return float(value)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise ValueError(f"{value!r} is not a time")


def records_from(service: str, rows: Iterable[Any]) -> list[LedgerRecord]:
    """The JSON entries of one service's ledger as `LedgerRecord`s; LedgerUnavailable naming
    the first malformed one."""
    records = []
    for position, row in enumerate(rows, 1):
        try:
            if not isinstance(row, Mapping):
                raise ValueError("not an object")
            key = row["idempotency_key"]
            if not isinstance(key, str) or not key:
                raise ValueError("idempotency_key must be a non-empty string")
            seq = row.get("seq", position)
            if isinstance(seq, bool) or not isinstance(seq, int):
                raise ValueError("seq must be an integer")
            order_id = row.get("order_id")
            records.append(
                LedgerRecord(
                    service=service,
                    operation=Phase(row["operation"]),
                    idempotency_key=key,
                    seq=seq,
                    at=_timestamp(row["applied_at"]),
                    noop=bool(row.get("noop", False)),
                    order_id=None if order_id is None else str(order_id),
                )
            )
        except (KeyError, ValueError, TypeError) as exc:
            why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise LedgerUnavailable(service, f"entry {position} is malformed: {why}") from None
    return records


def read_ledgers(
    reader: LedgerReader, services: Iterable[str], *, since: float | None = None
) -> list[LedgerRecord]:
    """Every entry of `services`' ledgers at or after `since`."""
    records: list[LedgerRecord] = []
    for service in sorted(set(services)):
        try:
            rows = reader.read_ledger(service, since)
        except LedgerUnavailable:
            raise
        except Exception as exc:  # a plugged-in reader's own failure: still one clear line
            raise LedgerUnavailable(service, f"{type(exc).__name__}: {exc}") from None
        found = records_from(service, rows)
        records.extend(r for r in found if since is None or r.at >= since)
    return records


def collect_sagas(
    store: SagaStore, *, since: float | None = None, saga_ids: Collection[str] = ()
) -> tuple[list[SagaFacts], list[Finding]]:
    """The sagas to check (those named, else every saga created at or after `since`), and a
    finding for each one whose rows cannot be read. Unknown ids raise SagaNotFoundError.

    Composed from the store port (`count_by_status`, `list_sagas`, `state`): listing every
    saga is `list_sagas` with a limit above the count.
    """
    if saga_ids:
        ids = list(dict.fromkeys(saga_ids))
        for saga_id in ids:
            store.load(saga_id)  # SagaNotFoundError before anything is read
    else:
        total = sum(store.count_by_status().values())
        listed = store.list_sagas(limit=2 * total + 100)  # sagas created meanwhile: room
        ids = [r.id for r in reversed(listed) if since is None or r.created_at >= since]
    facts, unreadable = [], []
    for saga_id in ids:
        try:
            record, journal, state = store.state(saga_id)
            handed = _handed_over(store, record.forked_from)
        except (DamagedRecord, ValueError, KeyError, TypeError) as exc:
            # Neither done nor undone can be shown for it: a finding, not a failure of all.
            # The SQLite store lets some damaged journal rows through as the decoding error
            # itself (an unknown event type is a ValueError), hence more than DamagedRecord.
            unreadable.append(
                Finding(
                    saga_id,
                    FindingKind.NOT_TERMINAL,
                    f"its rows cannot be read, so neither done nor undone is shown: {exc}",
                )
            )
            continue
        forks = store.forks(saga_id) if state.kept else []
        facts.append(
            SagaFacts(
                record.id,
                record.status,
                record.flow,
                tuple(e.event for e in journal),
                kept=state.kept,
                fork=forks[0] if forks else None,
                forked_from=record.forked_from,
                reused=handed,
            )
        )
    return facts, unreadable


def _handed_over(store: SagaStore, forked_from: str | None) -> frozenset[str]:
    """The steps a fork took over from the saga it was forked from: those that saga's rollback
    from the fork's step kept (`SagaState.kept`); none for a saga that is not a fork."""
    if forked_from is None:
        return frozenset()
    try:
        return store.state(forked_from)[2].kept
    except (SagaNotFoundError, DamagedRecord, ValueError, KeyError, TypeError):
        # The saga it came from is gone or unreadable: the fork's reused steps then show as
        # missing under its own keys (a finding on the fork), never as a failure of the run.
        return frozenset()


def services_of(sagas: Iterable[SagaFacts]) -> set[str]:
    """Every service a step of these sagas' flows calls."""
    return {s.service for saga in sagas for s in saga.flow.steps if s.service is not None}


def _ledger_since(
    store: SagaStore, sagas: Iterable[SagaFacts], since: float | None
) -> float | None:
    """Where the ledgers are read from: `since`, or earlier when a fork checked here reuses
    steps its origin applied before then (those entries are the fork's to find)."""
    if since is None:
        return None
    for saga in sagas:
        if saga.reused and saga.forked_from is not None:
            # Gone since: its reused steps show as missing on the fork (`_handed_over`).
            with contextlib.suppress(SagaNotFoundError):
                since = min(since, store.load(saga.forked_from).created_at)
    return since


def verify_store(
    store: SagaStore,
    reader: LedgerReader,
    *,
    since: float | None = None,
    saga_ids: Collection[str] = (),
) -> Reconciliation:
    """Reconcile the store's sagas (see `collect_sagas`) with the ledgers of every service
    their flows call. LedgerUnavailable names the first ledger that cannot be read."""
    sagas, unreadable = collect_sagas(store, since=since, saga_ids=saga_ids)
    services = services_of(sagas)
    ledger = read_ledgers(reader, services, since=_ledger_since(store, sagas, since))
    result = reconcile(sagas, ledger, services=services)
    if not unreadable:
        return result
    return Reconciliation(
        findings=(*unreadable, *result.findings),
        sagas=result.sagas + len(unreadable),
        entries=result.entries,
        matched=result.matched,
        unchecked=result.unchecked,
        services=result.services,
    )
