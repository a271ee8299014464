"""`sagalab keys`: API keys for the gateway (shown once at creation, stored hashed).

The key database is `--keys-db` (or SAGALAB_KEYS_DB) if given, else `keys.db` in the stack
directory (`--dir`, or SAGALAB_STACK_DIR, as for `sagalab stack`): the database a stack's
gateways read. A SQLite path (or sqlite:///path), or a postgresql:// URL: keys in that
database's `api_keys` table, which may be the saga database itself (edge/postgres_keys.py).

`keys copy FROM TO` copies every key as stored (ids, hashes, tenants, limits, revoked
state): a key made at FROM authenticates at TO (`db copy --keys-from/--keys-to` does the
same beside a saga copy).

Exit codes: 2 a rate, burst or tenant out of bounds, a name an active key has, a tenant that
exists already for a key created without `--tenant` (or, for `revoke`, a name several keys
share; for `copy`, one database twice), 3 an unknown key, 4 a copy refused (the destination
has keys, or with --force an id or active name in both: nothing written), 5 a key database
that is missing (for `list` and `revoke`, which never create one), cannot be reached or is
not a key database.
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sagalab.cli.options import DEFAULT_STACK_DIR, DbPath, StackDirOption
from sagalab.edge.errors import EdgeError, KeyCopyRefused, KeyRequestError, UnknownKey
from sagalab.edge.keys import (
    DEFAULT_BURST,
    DEFAULT_RATE,
    MAX_BURST,
    MAX_NAME,
    MAX_RATE,
    check_request,
    copy_keys,
    open_key_store,
    same_key_database,
)
from sagalab.orchestrator.stores import shown

app = typer.Typer(help="Create, list and revoke gateway API keys.", no_args_is_help=True)

KeysDb = Annotated[
    Path | None,
    typer.Option(
        "--keys-db",
        parser=DbPath.parse,  # keeps a postgresql:// URL as typed
        envvar="SAGALAB_KEYS_DB",
        help="Key database the gateways read: a SQLite path or a postgresql:// URL "
        "(default: keys.db in the stack directory).",
        show_default=False,
    ),
]
KeysUrl = Annotated[
    Path,
    typer.Argument(
        parser=DbPath.parse, help="A key database: a SQLite path or a postgresql:// URL."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print pure JSON on stdout.")]
KEYS_FILE = "keys.db"


def _keys_db(keys_db: Path | None, directory: Path) -> Path:
    """The key database: the one named, else the stack directory's (where its gateways look)."""
    return keys_db if keys_db is not None else directory / KEYS_FILE


def _fail(exc: EdgeError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    if isinstance(exc, UnknownKey):
        return typer.Exit(3)  # an unknown id, as for sagas
    if isinstance(exc, KeyRequestError):
        return typer.Exit(2)
    if isinstance(exc, KeyCopyRefused):
        return typer.Exit(4)  # an operator action refused, nothing written
    return typer.Exit(5)  # the key database cannot be used


@app.command()
def create(
    name: Annotated[
        str,
        typer.Argument(help=f"Who or what the key is for (1 to {MAX_NAME} printable characters)."),
    ],
    rate: Annotated[
        float, typer.Option(help=f"Requests per second (0.001 to {MAX_RATE:g}).")
    ] = DEFAULT_RATE,
    burst: Annotated[
        float, typer.Option(help=f"Requests allowed at once (1 to {MAX_BURST:g}).")
    ] = DEFAULT_BURST,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Tenant whose sagas the key creates and sees (default: the key's own tenant, "
            "named after it). Keys of one tenant share its sagas."
        ),
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="The key sees and operates every tenant's sagas.")
    ] = False,
    keys_db: KeysDb = None,
    directory: StackDirOption = DEFAULT_STACK_DIR,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it (it cannot be shown again)."""
    try:
        check_request(name, rate=rate, burst=burst, tenant=tenant)  # before any file is made
        with closing(open_key_store(_keys_db(keys_db, directory), create=True)) as store:
            record, key = store.create(name, rate=rate, burst=burst, tenant=tenant, admin=admin)
    except EdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({**record.to_dict(), "key": key}))
    else:
        typer.echo(key)
        role = ", admin of every tenant" if record.admin else ""
        typer.echo(
            f"key {record.id} ({name}) of tenant {record.tenant}{role}: {rate:g}/s, "
            f"burst {burst:g}; store it now",
            err=True,
        )


@app.command("list")
def list_(
    keys_db: KeysDb = None, directory: StackDirOption = DEFAULT_STACK_DIR, as_json: JsonOpt = False
) -> None:
    """Every key (never the secrets)."""
    try:
        with closing(open_key_store(_keys_db(keys_db, directory), readonly=True)) as store:
            keys = store.list()
    except EdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps([k.to_dict() for k in keys], indent=2))
        return
    table = Table("id", "name", "tenant", "rate/s", "burst", "active")
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            f"{k.tenant} (admin)" if k.admin else k.tenant,
            f"{k.rate:g}",
            f"{k.burst:g}",
            "yes" if k.active else "revoked",
        )
    Console(highlight=False).print(table)


@app.command()
def revoke(
    key_id: Annotated[
        str, typer.Argument(help="Key id, the whole key, or the name of one active key.")
    ],
    keys_db: KeysDb = None,
    directory: StackDirOption = DEFAULT_STACK_DIR,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key; gateways refuse it within a few seconds."""
    try:
        with closing(open_key_store(_keys_db(keys_db, directory), create=False)) as store:
            record = store.revoke(key_id)
    except EdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(record.to_dict()))
    else:
        typer.echo(f"revoked {record.id} ({record.name})", err=True)


@app.command()
def copy(
    source: KeysUrl,
    destination: KeysUrl,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Copy into a key database that has keys already, adding the source's "
            "(refused, nothing written, if a key id or an active key's name is in both).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy every key from SOURCE to DESTINATION as stored: ids, hashes, tenants, limits,
    revoked state. Keys made at SOURCE authenticate at DESTINATION. One transaction."""
    if same_key_database(source, destination):
        typer.echo(
            f"error: {shown(source)} and {shown(destination)} are one key database", err=True
        )
        raise typer.Exit(2)
    try:
        with (
            closing(open_key_store(source, readonly=True)) as src,
            closing(open_key_store(destination, create=True)) as dst,
        ):
            count = copy_keys(src, dst, merge=force)
    except EdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps({**count.to_dict(), "ok": count.ok}))
    else:
        typer.echo(f"copied {count.copied} key(s); the destination has {count.after}", err=True)
    if not count.ok:
        raise typer.Exit(1)
