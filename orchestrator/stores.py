"""Which backend serves a database URL: the one place that knows.

`open_store(url_or_path)` and `open_breaker_store(url_or_path)` take what `--db` or
`SAGALAB_DB` gives:

- a plain path, or a `sqlite:` URL read as a `file:` URL is (`sqlite:///var/lib/sagas.db` is
  /var/lib/sagas.db, `sqlite:sagas.db` is relative): SQLite (orchestrator/sqlite_store.py);
- `postgresql://...` (or `postgres://`, `postgresql+driver://`): refused with StoreError
  (exit 5 in the CLI) until issue 10 adds that backend;
- any other `scheme://`: refused with StoreError.

Nothing else in the runtime, the API or the CLI names a backend: they get a `Store` or a
`BreakerStore` (orchestrator/store.py) from here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from orchestrator.errors import StoreError
from orchestrator.sqlite_store import DRIVER_ERRORS as _SQLITE_ERRORS
from orchestrator.sqlite_store import check_database, open_sqlite_store
from orchestrator.store import Access, BreakerStore, Guard, Store

__all__ = [
    "DRIVER_ERRORS",
    "STORE_FAILURES",
    "check_store",
    "open_breaker_store",
    "open_store",
    "sqlite_path",
]

#: Errors a backend's driver may raise past a store method (damage found mid-read, a full
#: disk): what a caller that must survive any database failure catches besides StoreError.
DRIVER_ERRORS: tuple[type[Exception], ...] = (*_SQLITE_ERRORS,)
#: Every way a database can fail a store call: StoreError and the drivers' own errors.
STORE_FAILURES: tuple[type[Exception], ...] = (StoreError, *DRIVER_ERRORS)

# A URL scheme then ':/'. A `--db` typed as a Path arrives with its '//' collapsed to '/'.
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>/.*)?$", re.DOTALL)
_POSTGRES = ("postgresql", "postgres")


def sqlite_path(url_or_path: str | os.PathLike[str]) -> Path:
    """The SQLite file `url_or_path` names; StoreError for a URL of another backend."""
    text = os.fspath(url_or_path)
    if text.startswith("sqlite:"):
        rest = text[len("sqlite:") :]
        if rest.startswith("//"):  # the empty authority of `sqlite:///path`
            rest = rest[2:]
        if not rest:
            raise StoreError(f"{text}: a sqlite: URL needs a file path (sqlite:///path/to.db)")
        return Path(rest)
    match = _SCHEME.match(text)
    if match is not None and match["rest"] is not None:
        scheme = match["scheme"].lower()
        # As typed (a Path collapses '//'), and never with a password.
        shown = _redacted(f"{match['scheme']}://{match['rest'].lstrip('/')}")
        if scheme.split("+")[0] in _POSTGRES:
            raise StoreError(
                f"{shown}: the PostgreSQL store is not available yet (issue 10); "
                "use a SQLite file path for --db or SAGALAB_DB"
            )
        raise StoreError(
            f"{shown}: no store for {scheme}: URLs; pass a SQLite file path "
            "(or sqlite:///path) with --db or SAGALAB_DB"
        )
    return Path(text)


def _redacted(url: str) -> str:
    # A URL may carry a password: never print it.
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", url)


def open_store(
    url_or_path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    create: bool = True,
    timeout: float = 30.0,
    guard: Guard | None = None,
) -> Store:
    """The saga store at `url_or_path`, refusing anything that is not a saga database
    (StoreError) before anything is written.

    `readonly`: nothing is created or written (a missing database is refused), except that
    a database of an older sagalab is upgraded once. Otherwise a missing database is created
    unless `create` is False, and an older one migrated. `guard` is called before every
    write (a database watchdog). One handle per thread.
    """
    path = sqlite_path(url_or_path)
    return open_sqlite_store(path, readonly=readonly, create=create, timeout=timeout, guard=guard)


def open_breaker_store(
    url_or_path: str | os.PathLike[str], *, readonly: bool = False, guard: Guard | None = None
) -> BreakerStore:
    """The shared breaker state on the saga database at `url_or_path`.

    `readonly` never writes or creates anything; callers check the database first
    (`open_store` or `check_store`). One handle per thread.
    """
    from orchestrator.sqlite_breakers import SQLiteBreakerStore  # imports breakers: not at top

    return SQLiteBreakerStore(sqlite_path(url_or_path), readonly=readonly, guard=guard)


def check_store(url_or_path: str | os.PathLike[str], access: Access = Access.READ) -> int:
    """Refuse (StoreError) what could not serve as a saga database for `access`, without
    creating or writing anything; the schema version found (0: to be created)."""
    return check_database(sqlite_path(url_or_path), access)
