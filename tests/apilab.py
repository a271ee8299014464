"""The operator's two doors for tests that are not about keys: a real API on 127.0.0.1 with an
admin key presented directly, and the CLI in this process through Typer's runner.

Not a test module (pytest does not collect it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.edge.keys import MAX_BURST, MAX_RATE, open_key_store
from sagalab.edge.server import serve_in_thread
from sagalab.orchestrator.api import create_app
from sagalab.orchestrator.tracing import Tracing


@contextmanager
def admin_api(
    db: Path | str,
    *,
    timeout: float = 10.0,
    keys_db: Path | None = None,
    read_db: str | None = None,
    tracing: Tracing | None = None,
) -> Iterator[httpx.Client]:
    """A client of a real API over `db` that presents an admin key (it sees every tenant);
    its key database is `keys_db` (by default beside a SQLite `db`); its GETs read `read_db`
    when given (a replica)."""
    if keys_db is None:
        keys_db = Path(db).with_name(Path(db).stem + "-keys.db")
    keys = open_key_store(keys_db)
    try:
        # The API limits a key presented to it as a gateway would: this one's rate is the
        # most a key may have, so that no test's polling is refused (429).
        _, key = keys.create(
            "tests-admin", admin=True, rate=MAX_RATE, burst=MAX_BURST, replace=True
        )
    finally:
        keys.close()
    with (
        serve_in_thread(create_app(db, keys_db=keys_db, read_db=read_db, tracing=tracing)) as api,
        httpx.Client(
            base_url=api.url, timeout=timeout, headers={"Authorization": f"Bearer {key}"}
        ) as client,
    ):
        yield client


_runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    """`sagalab ARGS` in this process: exit code, stdout, stderr."""
    result = _runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def order_json(n: str, amount: int = 100) -> str:
    """A checkout input as JSON text (what `-i` takes), order id `n`."""
    return json.dumps(
        {"order_id": n, "customer_id": "c1", "sku": "A", "quantity": 1, "amount": amount}
    )
