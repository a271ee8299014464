"""`sagalab verify`: prove every saga done or undone against the services' own ledgers.

It reads the saga database read-only and each service's ledger (`GET {base}/ledger`, see
orchestrator/ledgers.py), reconciles them through the idempotency keys
(orchestrator/reconcile.py), and exits 0 when every saga is consistent, 1 with every finding
otherwise; 2 for bad input (a malformed --since or --services entry), 3 for an unknown saga id,
5 for a database that is not a saga database or a ledger that cannot be read (named).
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sagalab.cli import render
from sagalab.cli.errors import (
    EXIT_ENVIRONMENT,
    EXIT_OK,
    EXIT_SAGA_FAILED,
    EXIT_USAGE,
    fail,
    handled,
)
from sagalab.cli.options import (
    DEFAULT_DB,
    DbPath,
    JsonOption,
    ReadDbOption,
    open_store,
    reads_from,
)
from sagalab.edge.errors import StackError
from sagalab.orchestrator.errors import ServiceConfigError
from sagalab.orchestrator.flowfile import base_url, load_services

if TYPE_CHECKING:  # imported where used: `parse_since` (cli/filters.py) must stay cheap
    from sagalab.orchestrator.ledgers import HttpLedgerReader
    from sagalab.stack.processes import StackState

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAMED = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)=(?P<url>.+)$")


def parse_since(text: str, *, now: float) -> float:
    """`--since`: a duration back from `now` (`90s`, `15m`, `2h`, `1d`), a date and time
    (ISO 8601; UTC unless it names a zone), or epoch seconds. ValueError otherwise."""
    text = text.strip()
    match = _DURATION.match(text)
    try:
        if match:
            at = now - float(match["n"]) * _UNITS[match["unit"]]
        else:
            at = float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else _iso(text)
        # A time a datetime cannot hold (`99999999999h` back, 1e30 epoch seconds) is as
        # wrong as a misspelt one, and would otherwise fail where it is shown.
        datetime.fromtimestamp(at, UTC)
        return at
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"--since {text!r} is not a time: write a duration back from now (90s, 15m, 2h, 1d), "
            "a date and time (2026-11-25T18:00:00, UTC unless a zone is given) or epoch seconds"
        ) from None


def _iso(text: str) -> float:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def resolve_reader(sources: list[str], stack: Path | None) -> HttpLedgerReader:
    """Where each service's ledger is: `--services` entries (a services file, NAME=URL, or
    the URL of a lab serving /{name}/ledger for several services), else the stack's, else
    what the orchestrator itself uses (SAGALAB_SERVICE_*, SAGALAB_SERVICES_FILE,
    SAGALAB_SERVICES_URL). typer.Exit(2) for a malformed entry; ServiceConfigError (exit 5)
    for a services file that cannot be read."""
    from sagalab.fakeservices.server import SERVICES_URL_ENV, services_map
    from sagalab.orchestrator.ledgers import HttpLedgerReader

    urls: dict[str, str] = {}
    labs: list[str] = []
    for source in sources:
        named = _NAMED.match(source)
        try:
            if named:
                urls[named["name"]] = base_url(named["url"], f"--services {source}")
                continue
            if "://" in source:
                labs.append(base_url(source, f"--services {source}"))
                continue
        except ServiceConfigError as exc:  # typed on the command line: bad input
            raise fail(str(exc), EXIT_USAGE) from None
        if Path(source).is_file():
            urls.update(load_services(source))
        else:
            raise fail(
                f"--services {source!r} is neither a services file, NAME=URL, nor an http(s) URL",
                EXIT_USAGE,
            )
    if len(labs) > 1:
        raise fail(
            "--services: give one lab URL (serving every service at URL/NAME), "
            "or NAME=URL per service",
            EXIT_USAGE,
        )
    if not sources and stack is not None:
        state = _stack_state(stack)
        if state.services_url:
            urls.update(services_map(state.services_url))
        for component in state.components:
            for key, value in component.env.items():
                if key.startswith("SAGALAB_SERVICE_"):
                    urls.setdefault(key.removeprefix("SAGALAB_SERVICE_").lower(), value)
    if not sources and not urls:
        urls.update(load_services(None))
        if os.environ.get(SERVICES_URL_ENV):
            labs.append(base_url(os.environ[SERVICES_URL_ENV], SERVICES_URL_ENV))
    return HttpLedgerReader(urls, lab=labs[0] if labs else None)


def _stack_state(stack: Path) -> StackState:
    from sagalab.stack.processes import load_state

    try:
        return load_state(stack)
    except StackError as exc:
        raise fail(str(exc), EXIT_ENVIRONMENT) from None


def verify(
    saga_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Saga ids to verify (default: every saga, or those --since)."),
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            envvar="SAGALAB_DB",
            parser=DbPath.parse,
            help="Saga database (SQLite file path, sqlite:///path or a postgresql:// URL), read "
            f"only; default: the --stack's, else {DEFAULT_DB}.",
        ),
    ] = None,
    read_db: ReadDbOption = None,
    services: Annotated[
        list[str] | None,
        typer.Option(
            "--services",
            help="Where the ledgers are (repeatable): a services file, NAME=URL, or the URL of "
            "a lab serving URL/NAME/ledger. Default: the --stack's, else SAGALAB_SERVICE_*, "
            "SAGALAB_SERVICES_FILE or SAGALAB_SERVICES_URL.",
        ),
    ] = None,
    stack: Annotated[
        Path | None,
        typer.Option("--stack", help="A local stack's directory: its database and services."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only sagas created (and ledger entries applied) since then: 15m, 2h, 1d, a "
            "date and time (UTC unless zoned) or epoch seconds.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Reconcile every saga's journal with the services' ledgers: exit 0 when each is done or
    undone, 1 with every finding otherwise."""
    try:
        now = time.time()
        after = None if since is None else parse_since(since, now=now)
        if after is not None and after > now:
            raise ValueError(
                f"--since {since!r} is in the future: nothing would be checked "
                "(give a time before now)"
            )
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    from sagalab.orchestrator.ledgers import verify_store

    with handled():
        reader = resolve_reader(list(services or ()), stack)
        path = db or (Path(_stack_state(stack).db) if stack is not None else DEFAULT_DB)
        try:
            store = open_store(reads_from(path, read_db), read_only=True)
            try:
                result = verify_store(store, reader, since=after, saga_ids=saga_ids or ())
            finally:
                store.close()
        finally:
            reader.close()
    if as_json:
        render.print_json(render.reconciliation_dict(result))
    else:
        render.reconciliation(result)
    raise typer.Exit(EXIT_OK if result.consistent else EXIT_SAGA_FAILED)
