"""`sagalab db`: copy a saga database between backends; the lab's own PostgreSQL server.

`db copy SRC DST` copies every saga (flow snapshots, journals, fork links, tenants,
idempotency keys), the shared breaker state and history, and the scaling decisions, from
SRC to DST: any store URLs `--db` takes (a SQLite path or sqlite:///…, postgresql://…).
The source is only read. The destination is written in one transaction: a copy stopped
halfway leaves it as it was, and the same command runs it again. Leases held by the
source's workers are dropped (orchestrator/dbcopy.py says why). API keys are copied when
asked: `--keys-from KEYS` (the key database the source's gateways read: the stack's keys.db,
or a postgresql:// URL) to `--keys-to KEYS` (by default DST itself when it is a PostgreSQL
database: the keys go beside the sagas). Both copies are checked before either writes
(a refusal writes nothing); the keys are written after the sagas, in one transaction of
their own, and count in the count check (`api_keys`).

`db up|status|down` run a throwaway PostgreSQL server from the machine's `initdb` and
`pg_ctl` in `--dir` (default .sagalab-pg), on 127.0.0.1.

Exit codes: 0 done; 1 the count check found a table whose rows did not all arrive; 2 SRC
and DST are one database (or the key databases are), or --keys-to missing for a SQLite DST;
4 the destination (or the key destination) is not empty (without --force), or with
--force a saga id, idempotency key, key id or active key name is in both: nothing
written; 5 a database that cannot be opened or read (missing, unreachable, not a saga
database, an older sagalab's source, not a key database), or no PostgreSQL server binaries
for `db up`.
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
from sagalab.edge.errors import KeyCopyRefused, KeyStoreError
from sagalab.edge.keys import KeyCount, KeyStore, copy_keys, open_key_store, same_key_database
from sagalab.orchestrator.dbcopy import (
    CopyReport,
    TableCount,
    check_source,
    copy_database,
    same_database,
)
from sagalab.orchestrator.errors import CopyRefused, StoreError
from sagalab.orchestrator.pg_cluster import ClusterError
from sagalab.orchestrator.pg_local import DEFAULT_DIR, LocalServer, local_server, start, stop
from sagalab.orchestrator.stores import open_store, postgres_url, shown

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
    keys_from: Annotated[
        str | None,
        typer.Option(
            "--keys-from",
            help="Also copy the API keys of this key database (the source's gateways': "
            "a SQLite path such as .sagalab/keys.db, or a postgresql:// URL).",
            show_default=False,
        ),
    ] = None,
    keys_to: Annotated[
        str | None,
        typer.Option(
            "--keys-to",
            help="Where the keys go (default: DESTINATION itself when it is a PostgreSQL "
            "database, beside the sagas; required for a SQLite DESTINATION).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Copy every saga, journal, breaker and scaling decision from SOURCE to DESTINATION,
    and with --keys-from the API keys (ids, hashes, tenants, limits, revoked state).

    The source is only read; the destination (created if missing) is written in one
    transaction, so a copy stopped halfway leaves it as it was: run the command again.
    A table count check ends the copy (exit 1 on a mismatch).
    """
    with handled():
        if same_database(source, destination):
            raise fail(f"{shown(source)} and {shown(destination)} are one database", EXIT_USAGE)
        keys_to = _keys_destination(keys_from, keys_to, destination)
        check_source(source)
        with (
            closing(open_store(source, readonly=True)) as src,
            closing(open_store(destination, create=True)) as dst,
            _KeyPair(keys_from, keys_to) as keys,
            Progress(
                TextColumn("{task.description:>10}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=render.err,
                disable=not render.err.is_terminal,
            ) as progress,
        ):
            keys.check(merge=force)  # a refused key copy is refused before the sagas move
            report = copy_database(src, dst, merge=force, progress=_Bar(progress))
            counted = keys.copy(merge=force)
        if counted is not None:
            report = CopyReport(
                [*report.tables, _key_table(counted)], report.leases_dropped, report.probes_dropped
            )
    _show(report, shown(source), shown(destination), as_json)
    if not report.ok:
        raise typer.Exit(EXIT_SAGA_FAILED)


def _keys_destination(keys_from: str | None, keys_to: str | None, destination: str) -> str | None:
    """Where `--keys-from`'s keys go (None: no key copy); one line and exit 2 if unclear."""
    if keys_from is None:
        if keys_to is not None:
            raise fail("--keys-to needs --keys-from (the key database to copy)", EXIT_USAGE)
        return None
    if keys_to is None:
        if postgres_url(destination) is None:
            raise fail(
                "a SQLite destination keeps no keys: pass --keys-to KEYS (the key database "
                "its gateways will read, such as .sagalab/keys.db)",
                EXIT_USAGE,
            )
        keys_to = destination  # keys beside the sagas
    if same_key_database(keys_from, keys_to):
        raise fail(f"{shown(keys_from)} and {shown(keys_to)} are one key database", EXIT_USAGE)
    return keys_to


class _KeyPair:
    """The key databases of a `db copy --keys-from`: both open, or neither (no key copy)."""

    def __init__(self, keys_from: str | None, keys_to: str | None) -> None:
        self.names = (keys_from, keys_to)
        self.source: KeyStore | None = None
        self.destination: KeyStore | None = None
        self.rows: list[dict[str, object]] = []

    def __enter__(self) -> _KeyPair:
        keys_from, keys_to = self.names
        if keys_from is not None and keys_to is not None:
            try:
                self.source = open_key_store(keys_from, readonly=True)
                self.destination = open_key_store(keys_to, create=True)
            except KeyStoreError as exc:
                self.__exit__()
                raise StoreError(str(exc)) from None
        return self

    def __exit__(self, *_: object) -> None:
        for store in (self.source, self.destination):
            if store is not None:
                store.close()

    def check(self, *, merge: bool) -> None:
        """CopyRefused (nothing written) if the key copy would be refused."""
        if self.source is None or self.destination is None:
            return
        try:
            self.rows = self.source.export()
            self.destination.check_import(self.rows, merge=merge)
        except KeyCopyRefused as exc:
            raise CopyRefused(str(exc)) from None
        except KeyStoreError as exc:
            raise StoreError(str(exc)) from None

    def copy(self, *, merge: bool) -> KeyCount | None:
        """Copy the keys read by `check`; StoreError saying what to do if it fails now."""
        if self.source is None or self.destination is None:
            return None
        try:
            return copy_keys(self.source, self.destination, merge=merge)
        except KeyStoreError as exc:
            raise StoreError(
                f"the sagas were copied, the keys were not: {exc}; copy them with `sagalab "
                f"keys copy {shown(self.names[0] or '')} {shown(self.names[1] or '')}`"
            ) from None


def _key_table(count: KeyCount) -> TableCount:
    return TableCount(
        "api_keys", count.source, count.source, count.before, count.copied, count.after
    )


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
