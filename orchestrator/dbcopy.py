"""Copy a saga database to another, on any backend (`sagalab db copy`).

Theory of operation. The source's `export` (orchestrator/store.py, `CopyStore`) reads every
table in one consistent snapshot; the destination's `import_rows` writes them in one
transaction. So a copy killed halfway leaves the destination as it was (empty, or as
before with `merge`), and running the same command again is all there is to do. Nothing
here names a backend: SQLite to PostgreSQL, back, or SQLite to SQLite are one code path.

What changes on the way, and why:

- a saga's lease (`lease_owner`, `lease_until`) is dropped: it was held by a worker of the
  source, which will never renew it at the destination; kept, it would hold the saga
  until it expired. `lease_epoch` is kept (fencing only ever compares with newer epochs),
  and so is `run_after`: a saga a worker was running is queued at the destination, and one
  nobody ran is listed by `resume --stuck` there as it was at the source;
- a breaker's half-open probe (`probe_until`) is dropped for the same reason.

Everything else (journals with their ids and sequence numbers, flow snapshots, fork links,
tenants, idempotency keys, breaker state and history, scaling decisions) arrives as stored.
The count check compares, per table, the rows the snapshot held with the rows the
destination gained and holds afterwards.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from sagalab.orchestrator.errors import CopyRefused, StoreError
from sagalab.orchestrator.store import COPY_TABLES, Access, Batches, Rows, Store, shown_counts
from sagalab.orchestrator.stores import (
    check_store,
    database_identity,
    latest_schema,
    shown,
)

__all__ = [
    "CopyProgress",
    "CopyReport",
    "TableCount",
    "check_source",
    "copy_database",
    "same_database",
]

#: Tables whose rows may already be at a destination a merge writes to, and are kept there:
#: a flow snapshot is named by its content's hash, and a breaker's live state is the
#: destination's own.
KEPT_IF_PRESENT = ("flow_snapshots", "breakers")


class CopyProgress(Protocol):
    """What a copy reports as it goes (the CLI's progress bar)."""

    def started(self, counts: dict[str, int]) -> None:
        """The source's rows per table, before the first is written."""
        ...

    def copied(self, table: str, rows: int) -> None:
        """`rows` more rows of `table` were read and handed to the destination."""
        ...


@dataclass(frozen=True)
class TableCount:
    """One table's count check."""

    table: str
    source: int  # rows in the source's snapshot
    read: int  # rows the export gave
    before: int  # rows at the destination before the copy
    copied: int  # rows the destination gained
    after: int  # rows at the destination after the copy

    @property
    def ok(self) -> bool:
        """Every row read arrived (a merge may keep a destination's own flow snapshot or
        breaker instead of the source's), and nothing else changed the destination."""
        arrived = (
            self.copied <= self.read
            if self.table in KEPT_IF_PRESENT
            else (self.copied == self.read)
        )
        return self.read == self.source and arrived and self.after == self.before + self.copied

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON (`--json`)."""
        return {
            "table": self.table,
            "source": self.source,
            "destination_before": self.before,
            "copied": self.copied,
            "destination": self.after,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class CopyReport:
    """What a copy did: the count check per table and the leases it dropped."""

    tables: list[TableCount]
    leases_dropped: int  # of active sagas (a finished saga's leftover lease goes silently)
    probes_dropped: int

    @property
    def ok(self) -> bool:
        """Whether every table's count check passed."""
        return all(t.ok for t in self.tables)


def same_database(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether `a` and `b` name one database (one file; one server's one database)."""
    return database_identity(a) == database_identity(b)


def check_source(url_or_path: str | os.PathLike[str]) -> None:
    """StoreError unless `url_or_path` is a saga database at this sagalab's schema: opened
    read-only, an older one would be upgraded, and a copy never changes its source."""
    version = check_store(url_or_path, Access.READ)
    if version < latest_schema(url_or_path):
        raise StoreError(
            f"{shown(url_or_path)} is a database of an older sagalab (schema {version}): "
            "a copy never changes its source; upgrade it first (the first sagalab command "
            "that opens it does, once: `sagalab orchestrate list --db ...`), then copy"
        )


def copy_database(
    source: Store,
    destination: Store,
    *,
    merge: bool = False,
    progress: CopyProgress | None = None,
    batch_size: int = 500,
) -> CopyReport:
    """Copy every saga, journal, breaker and scaling decision of `source` to `destination`.

    CopyRefused (nothing written) if `destination` is not empty and `merge` is False, or,
    with `merge`, if a saga id or a tenant's idempotency key of the source is there already.
    """
    before = destination.table_counts()
    if not merge and any(before.values()):
        raise CopyRefused(
            f"the destination is not empty ({shown_counts(before)}): copy into an empty "
            "database, or pass --force to add the source's sagas to these (refused, with "
            "nothing written, if a saga id or idempotency key is in both)"
        )
    read: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    with source.export(batch_size=batch_size) as exported:
        if progress is not None:
            progress.started(exported.counts)
        batches = _prepared(exported.batches, read, dropped, progress)
        copied = destination.import_rows(batches, merge=merge)
        counts = exported.counts
    after = destination.table_counts()
    tables = [
        TableCount(t, counts[t], read[t], before[t], copied[t], after[t]) for t in COPY_TABLES
    ]
    return CopyReport(tables, dropped["leases"], dropped["probes"])


def _prepared(
    batches: Batches, read: Counter[str], dropped: Counter[str], progress: CopyProgress | None
) -> Iterator[tuple[str, Rows]]:
    """The source's batches as the destination gets them (see the module doc), counted."""
    for table, rows in batches:
        if table == "sagas":
            rows = [_unleased(row, dropped) for row in rows]
        elif table == "breakers":
            rows = [_unprobed(row, dropped) for row in rows]
        read[table] += len(rows)
        yield table, rows
        if progress is not None:
            progress.copied(table, len(rows))


_ACTIVE = ("pending", "running", "compensating")


def _unleased(row: dict[str, Any], dropped: Counter[str]) -> dict[str, Any]:
    if row["lease_owner"] is None and row["lease_until"] is None:
        return row
    if row["status"] in _ACTIVE:  # what an operator must know: a saga its workers held
        dropped["leases"] += 1
    return {**row, "lease_owner": None, "lease_until": None}


def _unprobed(row: dict[str, Any], dropped: Counter[str]) -> dict[str, Any]:
    if row["probe_until"] is None:
        return row
    dropped["probes"] += 1
    return {**row, "probe_until": None}
