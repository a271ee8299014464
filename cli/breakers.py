"""`sagalab breakers`: the circuit breakers every worker shares through the database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sagalab.cli import render
from sagalab.cli.errors import EXIT_NOT_FOUND, fail, handled
from sagalab.cli.options import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    ReadDbOption,
    open_store,
    reads_from,
)
from sagalab.orchestrator.breaker_board import breaker_events, breaker_rows, reset_breaker

app = typer.Typer(
    help="Show and reset the per-service circuit breakers shared by all workers.",
    no_args_is_help=True,
)


def _checked(db: Path, *, read_only: bool = True) -> None:
    # A saga database at the current schema, or exit 5 before anything is written.
    open_store(db, read_only=read_only).close()


@app.command("list")
def list_(
    db: DbOption = DEFAULT_DB, read_db: ReadDbOption = None, as_json: JsonOption = False
) -> None:
    """Every breaker: state, consecutive failures, when it opened, transitions so far."""
    source = reads_from(db, read_db)
    with handled():
        _checked(source)
        rows = breaker_rows(source)
    if as_json:
        render.print_json(rows)
        return
    if not rows:
        render.err.print("no breakers yet: they appear once a service has been called")
        return
    table = Table(show_edge=False)
    for col in ("service", "state", "failures", "opened", "transitions"):
        table.add_column(col)
    for r in rows:
        if r["damaged"]:  # read as closed by the workers; `breakers reset` rewrites it
            table.add_row(r["name"], f"[yellow]{r['damaged']} (closed)[/]", "-", "-", "-")
            continue
        style = {"open": "bold red", "half-open": "yellow"}.get(r["state"], "green")
        table.add_row(
            r["name"],
            f"[{style}]{r['state']}[/]",
            str(r["fail_counter"]),
            render.when(r["opened_time"]),
            str(r["transitions"]),
        )
    render.out.print(table)


@app.command()
def events(
    name: Annotated[str | None, typer.Argument(help="Only this service's breaker.")] = None,
    db: DbOption = DEFAULT_DB,
    read_db: ReadDbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Breaker transitions over time, and which worker saw them."""
    source = reads_from(db, read_db)
    with handled():
        _checked(source)
        rows = breaker_events(source, name)
    if as_json:
        render.print_json(rows)
        return
    for r in rows:
        render.out.print(
            f"{render.when(r['at'])}  {r['name']:<14} {r['old']} -> {r['new']}  "
            f"[dim]{r['owner'] or ''}[/]"
        )


@app.command()
def reset(
    name: Annotated[str, typer.Argument(help="Service whose breaker to close.")],
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Close a breaker by hand (every worker sees it at once)."""
    with handled():
        _checked(db, read_only=False)
        found = reset_breaker(db, name)
    if not found:
        raise fail(f"no breaker named {name!r}; `sagalab breakers list` shows them", EXIT_NOT_FOUND)
    if as_json:
        render.print_json({"name": name, "state": "closed"})
    else:
        render.err.print(f"breaker {name} closed")
