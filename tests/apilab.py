"""A real API on 127.0.0.1 for tests that are not about keys: an admin key, presented directly.

Not a test module (pytest does not collect it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from edge.keys import MAX_BURST, MAX_RATE, KeyStore
from edge.server import serve_in_thread
from orchestrator.api import create_app


@contextmanager
def admin_api(db: Path, *, timeout: float = 10.0) -> Iterator[httpx.Client]:
    """A client of a real API over `db` that presents an admin key (it sees every tenant)."""
    keys_db = db.with_name(db.stem + "-keys.db")
    keys = KeyStore(keys_db)
    try:
        # The API limits a key presented to it as a gateway would: this one's rate is the
        # most a key may have, so that no test's polling is refused (429).
        _, key = keys.create(
            "tests-admin", admin=True, rate=MAX_RATE, burst=MAX_BURST, replace=True
        )
    finally:
        keys.close()
    with (
        serve_in_thread(create_app(db, keys_db=keys_db)) as api,
        httpx.Client(
            base_url=api.url, timeout=timeout, headers={"Authorization": f"Bearer {key}"}
        ) as client,
    ):
        yield client
