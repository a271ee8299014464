"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path, PosixPath
from typing import Annotated

import typer

from sagalab.orchestrator.store import Store
from sagalab.orchestrator.stores import open_store as _open_store


class DbPath(PosixPath):
    """A `--db` value: a Path that keeps what was typed in `raw`.

    A `Path` collapses `//` (`sqlite:///abs` becomes `sqlite:/abs`, `file:///x` becomes
    `file:/x`); orchestrator.stores reads `raw` (`stores.typed`) to tell `sqlite:///abs`
    from `sqlite://host` and to show URLs as the user wrote them.
    """

    raw: str

    @classmethod
    def parse(cls, value: str | Path) -> Path:
        """The option's parser: `value` as a DbPath remembering the string."""
        if isinstance(value, DbPath):
            return value
        path = cls(value)
        path.raw = value if isinstance(value, str) else str(value)
        return path


DEFAULT_DB = Path("sagalab.db")

DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        parser=DbPath.parse,
        envvar="SAGALAB_DB",
        help="Saga database: a SQLite file path (or sqlite:///path), or a PostgreSQL URL "
        "(postgresql://user:pass@host/db), holding sagas and their journals (`run` and "
        "`worker` create it if missing).",
        show_default=True,
    ),
]
ReadDbOption = Annotated[
    Path | None,
    typer.Option(
        "--read-db",
        parser=DbPath.parse,
        envvar="SAGALAB_READ_DB",
        help="Read from this database instead of --db: a streaming replica of it (a "
        "postgresql:// URL). It may lag the primary by a moment: a saga just submitted may "
        "not be there yet, and a status may be a step behind.",
        show_default=False,
    ),
]
#: The local stack's directory (state file, logs, databases, keys.db): every command that
#: finds a stack's files takes it the same way.
DEFAULT_STACK_DIR = Path(".sagalab")
StackDirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        envvar="SAGALAB_STACK_DIR",
        help="Stack directory: state file, logs, databases.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print pure JSON on stdout (messages go to stderr).")
]
ServicesOption = Annotated[
    Path | None,
    typer.Option(
        "--services",
        envvar="SAGALAB_SERVICES_FILE",
        help="YAML file mapping service names to base URLs ('services: {name: url}'); "
        "SAGALAB_SERVICE_<NAME> variables override it.",
    ),
]
SagaIdArg = Annotated[str, typer.Argument(help="Saga id, as printed by `run` or `list`.")]


def reads_from(db: Path, read_db: Path | None) -> Path:
    """The database read-only commands read from: `--read-db` (a replica) if given, else
    `--db`; they open it with `open_store(..., read_only=True)`."""
    return read_db if read_db is not None else db


def open_store(db: Path, *, create: bool = False, read_only: bool = False) -> Store:
    """The store `--db` names (`orchestrator.stores.open_store`): anything that is not a
    saga database is refused (StoreError, exit 5) before a byte is written.

    Only commands that store new sagas pass `create`, so a mistyped --db leaves no file
    behind. `read_only` commands never create, write or lock the database (a file of an
    older sagalab is upgraded once first: a sagalab database is never left unreadable by an
    upgrade). Close it when done: a read-only store leaves no `-wal` or `-shm` file behind
    once it is closed.
    """
    return _open_store(db, readonly=read_only, create=create)
