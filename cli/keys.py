"""`sagalab keys`: API keys for the gateway (shown once at creation, stored hashed).

Exit codes: 2 a rate, burst or tenant out of bounds (or a name several keys share), 3 an
unknown key, 5 a key database that is missing (for `list` and `revoke`, which never create
one) or is not a key database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge.errors import EdgeError, KeyRequestError, UnknownKey
from edge.keys import (
    DEFAULT_BURST,
    DEFAULT_RATE,
    MAX_BURST,
    MAX_RATE,
    KeyStore,
    check_request,
)

app = typer.Typer(help="Create, list and revoke gateway API keys.", no_args_is_help=True)

KeysDb = Annotated[
    Path,
    typer.Option(
        "--keys-db",
        envvar="SAGALAB_KEYS_DB",
        help="Key database the gateways read (a stack keeps it in its directory).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print pure JSON on stdout.")]
DEFAULT_KEYS_DB = Path(".sagalab/keys.db")


def _fail(exc: EdgeError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    if isinstance(exc, UnknownKey):
        return typer.Exit(3)  # an unknown id, as for sagas
    if isinstance(exc, KeyRequestError):
        return typer.Exit(2)
    return typer.Exit(5)  # the key database cannot be used


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
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
    keys_db: KeysDb = DEFAULT_KEYS_DB,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it (it cannot be shown again)."""
    try:
        check_request(name, rate=rate, burst=burst, tenant=tenant)  # before any file is made
        record, key = KeyStore(keys_db, create=True).create(
            name, rate=rate, burst=burst, tenant=tenant, admin=admin
        )
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
def list_(keys_db: KeysDb = DEFAULT_KEYS_DB, as_json: JsonOpt = False) -> None:
    """Every key (never the secrets)."""
    try:
        keys = KeyStore(keys_db, create=False).list()
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
    keys_db: KeysDb = DEFAULT_KEYS_DB,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key; gateways refuse it within a few seconds."""
    try:
        record = KeyStore(keys_db, create=False).revoke(key_id)
    except EdgeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(record.to_dict()))
    else:
        typer.echo(f"revoked {record.id} ({record.name})", err=True)
