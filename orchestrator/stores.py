"""Which backend serves a database URL: the one place that knows.

`open_store(url_or_path)` and `open_breaker_store(url_or_path)` take what `--db` or
`SAGALAB_DB` gives:

- a plain path, or a `sqlite:` URL read as a `file:` URL is (`sqlite:///var/lib/sagas.db` is
  /var/lib/sagas.db, `sqlite:sagas.db` is relative): SQLite (orchestrator/sqlite_store.py);
- `postgresql://...` (or `postgres://`, `postgresql+driver://`): PostgreSQL
  (orchestrator/postgres_store.py, with psycopg 3: `pip install 'sagalab[postgres]'`);
  without psycopg, or with a server that cannot be reached, a one-line StoreError (exit 5
  in the CLI) with the password masked;
- any other `scheme://`: refused with StoreError.

Nothing else in the runtime, the API or the CLI names a backend: they get a `Store` or a
`BreakerStore` (orchestrator/store.py) from here.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from types import ModuleType

from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.redact import redacted as _redacted
from sagalab.orchestrator.sqlite_store import DRIVER_ERRORS as _SQLITE_ERRORS
from sagalab.orchestrator.sqlite_store import SCHEMA_VERSION as _SQLITE_SCHEMA
from sagalab.orchestrator.sqlite_store import check_database, open_sqlite_store, release_wal
from sagalab.orchestrator.sqlite_writer import ENV as GROUP_COMMIT_ENV
from sagalab.orchestrator.store import Access, BreakerStore, Guard, Store
from sagalab.orchestrator.wake import Waker, sqlite_waker
from sagalab.orchestrator.wake import enabled as wake_enabled

__all__ = [
    "GROUP_COMMIT_ENV",
    "check_store",
    "database_identity",
    "driver_errors",
    "latest_schema",
    "open_breaker_store",
    "open_store",
    "postgres_url",
    "release_files",
    "shown",
    "sqlite_path",
    "store_failures",
    "typed",
]

_POSTGRES_MODULE = "sagalab.orchestrator.postgres_store"


def driver_errors() -> tuple[type[Exception], ...]:
    """Errors a backend's driver may raise past a store method (damage found mid-read, a full
    disk): what a caller that must survive any database failure catches besides StoreError.

    A function, not a constant, so that psycopg is imported only when a postgresql:// URL
    needs it (`_postgres`): every command would otherwise pay for importing it at start-up.
    psycopg's errors can only come from orchestrator.postgres_store, so they are included
    once that module is loaded; evaluate it where the exception is caught (`except
    driver_errors():`), never once at import.
    """
    postgres = sys.modules.get(_POSTGRES_MODULE)
    if postgres is None:
        return _SQLITE_ERRORS
    errors: tuple[type[Exception], ...] = (*_SQLITE_ERRORS, *postgres.DRIVER_ERRORS)
    return errors


def store_failures() -> tuple[type[Exception], ...]:
    """Every way a database can fail a store call: StoreError and the drivers' own errors
    (`driver_errors`: evaluate it where the exception is caught)."""
    return (StoreError, *driver_errors())


# A URL scheme then ':/'. A `--db` typed as a Path arrives with its '//' collapsed to '/'.
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):(?P<rest>/.*)?$", re.DOTALL)
_POSTGRES = ("postgresql", "postgres")


def typed(url_or_path: str | os.PathLike[str]) -> str:
    """What the user typed for `url_or_path`: a `DbPath` (cli/options.py) keeps the string
    a `Path` would have mangled (`sqlite:///x` collapsed to `sqlite:/x`)."""
    raw = getattr(url_or_path, "raw", None)
    return raw if isinstance(raw, str) else os.fspath(url_or_path)


_SQLITE_FORMS = "a plain path, sqlite:///abs/path or sqlite:rel/path"


def sqlite_path(url_or_path: str | os.PathLike[str]) -> Path:
    """The SQLite file `url_or_path` names; StoreError for a URL of another backend.

    The rule, in this one place: a plain path, `sqlite:///abs/path` or `sqlite:rel/path` (the
    scheme in any case, as URL schemes are).
    Refused (StoreError naming the accepted forms), because SQLite or a `Path` would read them
    as something else than the file checked: a `file:` URI (SQLite's URI syntax: options such
    as `mode=memory` would bypass every check), `sqlite://host/...` (two slashes: a host, and
    through a `Path` it became `/...` at the filesystem root) and an empty path.
    """
    text = typed(url_or_path)
    if text[: len("sqlite:")].lower() == "sqlite:":  # a scheme is case-insensitive (RFC 3986)
        rest = text[len("sqlite:") :]
        if not rest.strip("/"):
            raise StoreError(f"{text}: a sqlite: URL needs a file path; pass {_SQLITE_FORMS}")
        if rest.startswith("///"):  # the empty authority of `sqlite:///path`
            rest = rest[2:]
        elif rest.startswith("//"):
            raise StoreError(
                f"{_redacted(text)}: a sqlite:// URL with a host part is not a file; "
                f"pass {_SQLITE_FORMS}"
            )
        if rest.lower().startswith("file:"):
            raise StoreError(f"{text}: file: URIs are not accepted; pass {_SQLITE_FORMS}")
        return Path(rest)
    if text.lower().startswith("file:"):
        raise StoreError(f"{_redacted(text)}: file: URIs are not accepted; pass {_SQLITE_FORMS}")
    match = _SCHEME.match(text)
    if match is not None and match["rest"] is not None:
        scheme = match["scheme"].lower()
        if scheme.split("+")[0] in _POSTGRES:
            raise StoreError(f"{_redacted(text)} is a PostgreSQL URL, not a SQLite file")
        raise StoreError(
            f"{_redacted(text)}: no store for {scheme}: URLs; pass {_SQLITE_FORMS} "
            "(or a postgresql:// URL) with --db or SAGALAB_DB"
        )
    if not text:
        raise StoreError(f"an empty --db names no database; pass {_SQLITE_FORMS}")
    return Path(text)


def postgres_url(url_or_path: str | os.PathLike[str]) -> str | None:
    """The psycopg URL `url_or_path` names if it is a PostgreSQL one (None otherwise).

    `postgres://` and `postgresql+driver://` become `postgresql://`; a URL that went through
    a `Path` (which collapses `//` to `/`) is restored. An empty host (`postgresql:///db`, the
    default socket) is kept when the string is as typed (`typed`: a `cli.options.DbPath`);
    a plain `Path` cannot tell it from a collapsed `postgresql://db`: write `localhost` (or
    `?host=/socket/dir`) where a URL goes through one.
    """
    match = _SCHEME.match(typed(url_or_path))
    if match is None or match["rest"] is None:
        return None
    if match["scheme"].lower().split("+")[0] not in _POSTGRES:
        return None
    rest = match["rest"]
    if rest.startswith("//"):  # as typed (a DbPath's raw string): `postgresql:///db` kept
        return "postgresql:" + rest
    return "postgresql://" + rest.lstrip("/")


def _postgres() -> ModuleType:
    """orchestrator.postgres_store, or StoreError saying how to install psycopg."""
    try:
        import sagalab.orchestrator.postgres_store as module
    except ImportError:
        raise StoreError(
            "a postgresql:// database needs psycopg 3: pip install 'sagalab[postgres]' "
            "(or pip install 'psycopg[binary]' psycopg_pool)"
        ) from None
    return module


def shown(url_or_path: str | os.PathLike[str]) -> str:
    """`url_or_path` as messages may show it: as typed (a PostgreSQL URL restored), with
    any password masked (orchestrator.redact, the one masking rule)."""
    url = postgres_url(url_or_path)
    return _redacted(url if url is not None else typed(url_or_path))


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
    url = postgres_url(url_or_path)
    if url is not None:
        store: Store = _postgres().open_postgres_store(
            url, readonly=readonly, create=create, guard=guard
        )
        return store
    path = sqlite_path(url_or_path)
    return open_sqlite_store(path, readonly=readonly, create=create, timeout=timeout, guard=guard)


def open_waker(url_or_path: str | os.PathLike[str]) -> Waker | None:
    """The wake-up channel idle workers of `url_or_path` wait on (orchestrator/wake.py), or
    None where there is none (SAGALAB_NO_WAKE, a read-only directory): polling only."""
    if not wake_enabled():
        return None
    url = postgres_url(url_or_path)
    if url is not None:
        waker: Waker = _postgres().postgres_waker(url)
        return waker
    return sqlite_waker(sqlite_path(url_or_path))


def open_breaker_store(
    url_or_path: str | os.PathLike[str], *, readonly: bool = False, guard: Guard | None = None
) -> BreakerStore:
    """The shared breaker state on the saga database at `url_or_path`.

    `readonly` never writes or creates anything; callers check the database first
    (`open_store` or `check_store`). One handle per thread.
    """
    url = postgres_url(url_or_path)
    if url is not None:
        _postgres()  # psycopg is there, or one clear line
        from sagalab.orchestrator.postgres_breakers import PostgresBreakerStore

        return PostgresBreakerStore(url, readonly=readonly, guard=guard)
    from sagalab.orchestrator.sqlite_breakers import (
        SQLiteBreakerStore,  # imports breakers: not at top
    )

    return SQLiteBreakerStore(sqlite_path(url_or_path), readonly=readonly, guard=guard)


def release_files(url_or_path: str | os.PathLike[str]) -> None:
    """Remove what a backend leaves beside the database once nobody uses it (a SQLite
    file's `-wal` and `-shm`: `sqlite_store.release_wal`); nothing for PostgreSQL. Never
    raises: a database still in use, or not there, is simply left as it is."""
    if postgres_url(url_or_path) is not None:
        return
    with contextlib.suppress(StoreError, OSError):
        release_wal(sqlite_path(url_or_path))


def check_store(url_or_path: str | os.PathLike[str], access: Access = Access.READ) -> int:
    """Refuse (StoreError) what could not serve as a saga database for `access`, without
    creating or writing anything; the schema version found (0: to be created)."""
    url = postgres_url(url_or_path)
    if url is not None:
        version: int = _postgres().check_postgres(url, access)
        return version
    return check_database(sqlite_path(url_or_path), access)


def latest_schema(url_or_path: str | os.PathLike[str]) -> int:
    """The schema version this sagalab writes on the backend `url_or_path` names."""
    if postgres_url(url_or_path) is not None:
        return int(_postgres().SCHEMA_VERSION)
    return _SQLITE_SCHEMA


def database_identity(url_or_path: str | os.PathLike[str]) -> tuple[str, ...]:
    """What tells two databases apart: ("sqlite", the file's device and inode) for a file
    that exists (a hard link or a symlink to it is the same file), ("sqlite", its resolved
    path) for one that does not yet, or ("postgresql", host, port, database) with libpq's
    defaults filled in."""
    url = postgres_url(url_or_path)
    if url is not None:
        key: tuple[str, ...] = _postgres().database_identity(url)
        return key
    path = sqlite_path(url_or_path)
    try:
        facts = path.stat()
    except OSError:  # not there (yet): its name is all there is to compare
        return ("sqlite", str(path.resolve()))
    return ("sqlite", f"inode {facts.st_dev}:{facts.st_ino}")
