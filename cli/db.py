"""`sagalab db`: copy a saga database between backends; the lab's own PostgreSQL server.

`db copy SRC DST` copies every saga (flow snapshots, journals, fork links, tenants,
idempotency keys), the shared breaker state and history, and the scaling decisions, from
SRC to DST: any store URLs `--db` takes (a SQLite path or sqlite:///…, postgresql://…).
The source is only read. The destination is written in one transaction: a copy stopped
halfway leaves it as it was, and the same command runs it again. Leases held by the
source's workers are dropped (orchestrator/dbcopy.py says why). API keys are not in a saga
database (they live in the stack's keys.db, which every backend's stack reads): copy that
file as it is.

`db up|status|down` run a throwaway PostgreSQL server from the machine's `initdb` and
`pg_ctl` in `--dir` (default .sagalab-pg), on 127.0.0.1.

Exit codes: 0 done; 1 the count check found a table whose rows did not all arrive; 2 SRC
and DST are one database; 4 the destination is not empty (without --force), or with
--force a saga id or idempotency key is in both: nothing written; 5 a database that cannot
be opened or read (missing, unreachable, not a saga database, an older sagalab's source),
or no PostgreSQL server binaries for `db up`.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from sagalab.cli import render
from sagalab.cli.errors import EXIT_ENVIRONMENT, EXIT_SAGA_FAILED, EXIT_USAGE, fail, handled
from sagalab.cli.options import JsonOption
from sagalab.orchestrator.dbcopy import CopyReport, check_source, copy_database, same_database
from sagalab.orchestrator.pg_cluster import ClusterError
from sagalab.orchestrator.pg_local import DEFAULT_DIR, LocalServer, local_server, start, stop
from sagalab.orchestrator.stores import open_store, shown

app = typer.Typer(
    help="Copy saga databases between SQLite and PostgreSQL; run a lab PostgreSQL server.",
    no_args_is_help=True,
)

Url = Annotated[str, typer.Argument(help="A SQLite path (or sqlite:///path) or postgresql:// URL.")]
DirOption = Annotated[
    Path,
    typer.Option("--dir", envvar="SAGALAB_PG_DIR", help="Directory of the lab server's files."),
]


class _Bar:
    """The copy's progress on stderr: sagas, journal events, and the other rows."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def started(self, counts: dict[str, int]) -> None:
        other = sum(n for t, n in counts.items() if t not in ("sagas", "events"))
        for name, total in (("sagas", counts["sagas"]), ("events", counts["events"])):
            self.tasks[name] = self.progress.add_task(name, total=total)
        self.tasks["other"] = self.progress.add_task("other rows", total=other)

    def copied(self, table: str, rows: int) -> None:
        self.progress.advance(self.tasks[table if table in self.tasks else "other"], rows)


@app.command()
def copy(
    source: Url,
    destination: Url,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Copy into a destination that has sagas already, adding the source's to "
            "them (never replacing any): refused, with nothing written, if a saga id or a "
            "tenant's idempotency key is in both.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Copy every saga, journal, breaker and scaling decision from SOURCE to DESTINATION.

    The source is only read; the destination (created if missing) is written in one
    transaction, so a copy stopped halfway leaves it as it was: run the command again.
    A table count check ends the copy (exit 1 on a mismatch).
    """
    with handled():
        if same_database(source, destination):
            raise fail(f"{shown(source)} and {shown(destination)} are one database", EXIT_USAGE)
        check_source(source)
        with (
            closing(open_store(source, readonly=True)) as src,
            closing(open_store(destination, create=True)) as dst,
            Progress(
                TextColumn("{task.description:>10}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=render.err,
                disable=not render.err.is_terminal,
            ) as progress,
        ):
            report = copy_database(src, dst, merge=force, progress=_Bar(progress))
    _show(report, shown(source), shown(destination), as_json)
    if not report.ok:
        raise typer.Exit(EXIT_SAGA_FAILED)


def _show(report: CopyReport, source: str, destination: str, as_json: bool) -> None:
    if as_json:
        render.print_json(
            {
                "source": source,
                "destination": destination,
                "ok": report.ok,
                "leases_dropped": report.leases_dropped,
                "probes_dropped": report.probes_dropped,
                "tables": [t.to_dict() for t in report.tables],
            }
        )
        return
    table = Table(show_edge=False, title=escape(f"{source} → {destination}"))
    for col in ("table", "source", "destination before", "copied", "destination", "check"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for t in report.tables:
        mark = "[green]ok[/]" if t.ok else "[bold red]MISMATCH[/]"
        table.add_row(t.table, str(t.source), str(t.before), str(t.copied), str(t.after), mark)
    render.out.print(table)
    if report.leases_dropped:
        render.err.print(
            f"{report.leases_dropped} saga lease(s) of the source's workers were dropped: "
            "those sagas are queued for the destination's workers (stop the source's "
            "workers first, or both sides run them)"
        )
    if not report.ok:
        render.err.print("[bold red]count check failed[/]: see the table above")


def _say(found: LocalServer, as_json: bool, message: str, **done: bool) -> None:
    if as_json:
        render.print_json({**found.to_dict(), **done})
        return
    render.err.print(message)
    if found.running and found.url:
        render.out.print(found.url, soft_wrap=True, highlight=False)
        render.err.print(f"use it with: export SAGALAB_DB={found.url}", soft_wrap=True)


@app.command()
def up(
    directory: DirOption = DEFAULT_DIR,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port on 127.0.0.1 (default: last one, or free)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Start a throwaway PostgreSQL server in DIR (created on first use), print its URL.

    Needs the machine's PostgreSQL server binaries (`apt-get install postgresql` on
    Debian/Ubuntu). Idempotent: a server already up is left as it is and its URL printed.
    """
    try:
        found, started = start(directory, port=port)
    except ClusterError as exc:
        raise fail(str(exc), EXIT_ENVIRONMENT) from None
    message = "started" if started else "already up"
    _say(found, as_json, f"PostgreSQL in {found.directory}: {message}", started=started)


@app.command()
def status(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Whether the lab server in DIR runs, and its URL."""
    found = local_server(directory)
    state = "running" if found.running else "not running"
    _say(found, as_json, f"PostgreSQL in {found.directory}: {state}")


@app.command()
def down(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Stop the lab server in DIR (a clean, fast shutdown: its data stays for the next up)."""
    try:
        stopped = stop(directory)
    except ClusterError as exc:
        raise fail(str(exc), EXIT_ENVIRONMENT) from None
    found = local_server(directory)
    message = "stopped" if stopped else "not running"
    _say(found, as_json, f"PostgreSQL in {found.directory}: {message}", stopped=bool(stopped))
