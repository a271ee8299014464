"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.sqlite_store import SCHEMA_VERSION, Access, SQLiteStore, check_database

DEFAULT_DB = Path("sagalab.db")

DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        envvar="SAGALAB_DB",
        help="SQLite database file holding sagas and their journals (`run` and `worker` "
        "create it if missing).",
        show_default=True,
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


def open_store(db: Path, *, create: bool = False, read_only: bool = False) -> SQLiteStore:
    """The store at `db`, after `check_database` refused anything that is not a saga
    database (StoreError, exit 5) before a byte is written.

    Only commands that store new sagas pass `create`, so a mistyped --db leaves no file
    behind. `read_only` commands open with SQLite's `mode=ro`: they never take the write
    lock; a file of an older sagalab is upgraded once first (a sagalab database is never
    left unreadable by an upgrade).
    """
    if read_only:
        if check_database(db, Access.READ) < SCHEMA_VERSION:
            SQLiteStore(db, create=False).close()
        return SQLiteStore(db, read_only=True)
    return SQLiteStore(db, create=create)
