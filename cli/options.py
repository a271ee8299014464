"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_DB = Path("sagalab.db")

DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        envvar="SAGALAB_DB",
        help="SQLite database file holding sagas and their journals (created if missing).",
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
