"""`sagalab keys`: API keys for the gateway (shown once at creation, stored hashed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge.errors import EdgeError, UnknownKey
from edge.keys import DEFAULT_BURST, DEFAULT_RATE, KeyStore

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


def _store(path: Path) -> KeyStore:
    try:
        return KeyStore(path)
    except EdgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    rate: Annotated[float, typer.Option(min=0.001, help="Requests per second.")] = DEFAULT_RATE,
    burst: Annotated[float, typer.Option(min=1, help="Requests allowed at once.")] = DEFAULT_BURST,
    keys_db: KeysDb = DEFAULT_KEYS_DB,
    as_json: JsonOpt = False,
) -> None:
    """Create a key and print it (it cannot be shown again)."""
    record, key = _store(keys_db).create(name, rate=rate, burst=burst)
    if as_json:
        typer.echo(json.dumps({**record.to_dict(), "key": key}))
    else:
        typer.echo(key)
        typer.echo(f"key {record.id} ({name}): {rate:g}/s, burst {burst:g}; store it now", err=True)


@app.command("list")
def list_(keys_db: KeysDb = DEFAULT_KEYS_DB, as_json: JsonOpt = False) -> None:
    """Every key (never the secrets)."""
    keys = _store(keys_db).list()
    if as_json:
        typer.echo(json.dumps([k.to_dict() for k in keys], indent=2))
        return
    table = Table("id", "name", "rate/s", "burst", "active")
    for k in keys:
        table.add_row(k.id, k.name, f"{k.rate:g}", f"{k.burst:g}", "yes" if k.active else "revoked")
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
        record = _store(keys_db).revoke(key_id)
    except UnknownKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None  # an unknown id, as for sagas
    except EdgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(record.to_dict()))
    else:
        typer.echo(f"revoked {record.id} ({record.name})", err=True)
