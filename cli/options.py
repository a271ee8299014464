"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.errors import StoreError
from orchestrator.sqlite_store import SQLiteStore

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


def open_store(db: Path, *, create: bool = False) -> SQLiteStore:
    """The store at `db`; only commands that write sagas create one, so a mistyped --db
    leaves no file behind (StoreError, exit 5, otherwise)."""
    if not create and not db.exists():
        raise StoreError(
            f"no saga database at {db}: nothing has run with this --db (or SAGALAB_DB) yet"
        )
    return SQLiteStore(db)
