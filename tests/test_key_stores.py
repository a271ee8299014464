"""The API key store on both backends (issue 10: `--keys-db postgresql://…`).

One suite, parametrized over SQLite (a file of its own) and PostgreSQL (a fresh database on
the session's cluster; never skipped): the key rules, reads that never write, databases that
are not key databases, and copies that keep keys working. Then `keys` and `db copy
--keys-from` through the CLI, and a copied key presented to a real API served from
PostgreSQL alone (sagas and keys in one database).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.edge.errors import KeyCopyRefused, KeyRequestError, KeyStoreError
from sagalab.edge.keys import KeyCache, copy_keys, open_key_store
from sagalab.edge.server import serve_in_thread
from sagalab.orchestrator.api import create_app
from sagalab.orchestrator.stores import open_store

MakeDb = Callable[[], str]


@pytest.fixture(params=["sqlite", "postgres"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> MakeDb:
    """A maker of new, empty key database names on the parametrized backend."""
    made = iter(range(100))
    if request.param == "sqlite":
        return lambda: str(tmp_path / f"keys{next(made)}.db")
    from pglab import new_database

    cluster = request.getfixturevalue("pg_cluster")
    return lambda: new_database(cluster)


def _tables(db: str) -> set[str]:
    if db.startswith("postgresql:"):
        with psycopg.connect(db) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            ).fetchall()
        return {r[0] for r in rows}
    if not Path(db).exists():
        return set()
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_the_key_rules_hold_on_both_backends(new_db: MakeDb) -> None:
    store = open_key_store(new_db())
    try:
        alice, key = store.create("alice", rate=5, burst=10, now=1.0)
        assert alice.tenant == "alice" and store.lookup(alice.id) is not None
        assert KeyCache(store, ttl=0).authenticate(key) == alice
        assert KeyCache(store, ttl=0).authenticate(key[:-2] + "xx") is None
        with pytest.raises(KeyRequestError, match="already named 'alice'"):
            store.create("alice", tenant="alice")
        store.create("shop-web", tenant="shop", now=1.5)
        with pytest.raises(KeyRequestError, match="tenant shop exists"):
            store.create("shop")  # joins a tenant only when told to
        web, _ = store.create("alice-web", tenant="alice", admin=True, now=2.0)
        assert web.admin and web.tenant == "alice"
        renewed, _ = store.create("alice", replace=True, now=3.0)
        assert renewed.tenant == "alice" and store.lookup(alice.id) is None
        assert KeyCache(store, ttl=0).authenticate(key) is None  # replaced: revoked
        assert store.revoke("alice-web").revoked_at is not None
        assert [(k.name, k.active) for k in store.list()] == [
            ("alice", False),
            ("shop-web", True),
            ("alice-web", False),
            ("alice", True),
        ]
    finally:
        store.close()


def test_an_overlong_or_unprintable_key_name_is_refused_on_both_backends(new_db: MakeDb) -> None:
    store = open_key_store(new_db())
    try:
        for name in ("a" * 100_000, "a" * 201, "ops\nteam", "ops\udcffteam", "", "   "):
            with pytest.raises(KeyRequestError, match="a key's name must be") as refused:
                store.create(name, tenant="ops")
            assert len(str(refused.value)) < 200  # the length, never the name
        assert store.list() == []
        assert store.create("a" * 200, tenant="ops")[0].name == "a" * 200
    finally:
        store.close()


def test_reads_never_write_and_other_databases_are_refused(new_db: MakeDb) -> None:
    empty = new_db()
    with pytest.raises(KeyStoreError):
        open_key_store(empty, readonly=True)
    with pytest.raises(KeyStoreError):
        open_key_store(empty, create=False)
    assert _tables(empty) == set()  # nothing was made by either
    made = new_db()
    open_key_store(made).close()
    reader = open_key_store(made, readonly=True)
    try:
        assert reader.list() == []
        with pytest.raises(KeyStoreError):
            reader.create("nobody")
    finally:
        reader.close()


def test_postgres_keys_live_beside_the_sagas_and_nowhere_foreign(pg_url: str) -> None:
    # Keys first in an empty database: it is still an empty saga database after.
    keys = open_key_store(pg_url)
    keys.create("ops", admin=True)
    keys.close()
    store = open_store(pg_url)
    assert store.table_counts()["sagas"] == 0
    store.close()
    reader = open_key_store(pg_url, readonly=True)
    assert len(reader.list()) == 1
    reader.close()
    # Another application's database is refused, and left as it was.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA other")
    other = pg_url + "?options=-csearch_path%3Dother"
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id INT)")
    with pytest.raises(KeyStoreError, match="another application"):
        open_key_store(other)
    with psycopg.connect(other) as conn:
        assert (
            conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname='other'").fetchone()[0]
            == 1
        )


def test_a_sqlite_saga_file_is_not_a_key_database(tmp_path: Path) -> None:
    open_store(tmp_path / "sagas.db").close()
    with pytest.raises(KeyStoreError, match="saga database"):
        open_key_store(tmp_path / "sagas.db")


def test_copies_keep_keys_working_and_refusals_write_nothing(new_db: MakeDb) -> None:
    source, destination = open_key_store(new_db()), open_key_store(new_db())
    try:
        live, key = source.create("live", rate=7, burst=9, tenant="t1")
        gone, old = source.create("gone", admin=True)
        source.revoke(gone.id)
        count = copy_keys(source, destination)
        assert count.ok and (count.source, count.copied, count.after) == (2, 2, 2)
        assert destination.export() == source.export()  # ids, digests, tenants, limits
        assert KeyCache(destination, ttl=0).authenticate(key) == live
        assert KeyCache(destination, ttl=0).authenticate(old) is None  # still revoked
        with pytest.raises(KeyCopyRefused, match="has 2 key"):
            copy_keys(source, destination)
        with pytest.raises(KeyCopyRefused, match="in both"):
            copy_keys(source, destination, merge=True)
        assert len(destination.list()) == 2  # nothing written by either refusal
        # A copy that fails halfway (a damaged row after a good one) leaves nothing behind.
        fresh = open_key_store(new_db())
        try:
            with pytest.raises(KeyStoreError, match="not a stored key"):
                fresh.import_keys([*source.export(), {"id": "bad"}])
            assert fresh.list() == []
        finally:
            fresh.close()
    finally:
        source.close()
        destination.close()


def test_keys_cli_takes_a_postgresql_url(pg_url: str) -> None:
    code, out, _ = _cli("keys", "create", "ci", "--keys-db", pg_url, "--json")
    assert code == 0
    made = json.loads(out)
    code, out, _ = _cli("keys", "list", "--keys-db", pg_url, "--json")
    assert code == 0 and [k["id"] for k in json.loads(out)] == [made["id"]]
    code, out, _ = _cli("keys", "revoke", "ci", "--keys-db", pg_url, "--json")
    assert code == 0 and json.loads(out)["active"] is False
    code, _, err = _cli("keys", "list", "--keys-db", pg_url.replace("/t", "/nothere_t"))
    assert code == 5 and "error:" in err


def test_db_copy_moves_keys_that_then_open_the_api(tmp_path: Path, pg_url: str) -> None:
    """A SQLite lab (sagas.db, keys.db) copied to one PostgreSQL database: its key works
    against an API that reads both sagas and keys from there, its revoked key does not."""
    sagas, keys_db = tmp_path / "sagas.db", tmp_path / "keys.db"
    open_store(sagas).close()
    keys = open_key_store(keys_db)
    _, key = keys.create("ops", admin=True, rate=1000, burst=1000)
    _, old = keys.create("old")
    keys.revoke("old")
    keys.close()
    code, _, err = _cli(
        "db", "copy", str(sagas), str(tmp_path / "b.db"), "--keys-from", str(keys_db)
    )
    assert code == 2 and "--keys-to" in err and not (tmp_path / "b.db").exists()
    code, out, err = _cli("db", "copy", str(sagas), pg_url, "--keys-from", str(keys_db), "--json")
    assert code == 0, err
    checked = {t["table"]: t for t in json.loads(out)["tables"]}
    assert checked["api_keys"] == {
        "table": "api_keys",
        "source": 2,
        "destination_before": 0,
        "copied": 2,
        "destination": 2,
        "ok": True,
    }
    served = create_app(pg_url, keys_db=pg_url)
    with serve_in_thread(served) as api:
        url = f"{api.url}/v1/sagas"
        assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(url, headers={"Authorization": f"Bearer {old}"}).status_code == 401
    served.state.authenticate.close()
    # Again: the key destination has keys, refused (4) before the sagas' copy writes.
    code, _, err = _cli("db", "copy", str(sagas), pg_url, "--keys-from", str(keys_db), "--force")
    assert code == 4 and "in both" in err


def test_a_gateway_reads_its_keys_from_postgresql(tmp_path: Path, pg_url: str) -> None:
    """A real gateway process with `--keys-db postgresql://…` before a real API: the copied
    key passes (200), a revoked one and none are refused (401), revoking at the database
    reaches the gateway within its cache time."""
    from edgelab import start_gateway
    from workerlab import wait_for

    source = open_key_store(tmp_path / "keys.db")
    _, key = source.create("ops", admin=True, rate=1000, burst=1000)
    _, old = source.create("old")
    source.revoke("old")
    destination = open_key_store(pg_url)
    assert copy_keys(source, destination).ok
    source.close()
    secret = "s" * 32
    (tmp_path / "gateway.secret").write_text(secret)
    served = create_app(pg_url, gateway_secret=secret)
    with serve_in_thread(served) as api:
        gateway = start_gateway(
            pg_url, api.url, "gw", ["--secret-file", str(tmp_path / "gateway.secret")]
        )
        try:
            url = f"{gateway.url}/v1/sagas"

            def status(presented: str) -> int:
                auth = {"Authorization": f"Bearer {presented}"}
                return httpx.get(url, headers=auth, timeout=10).status_code

            assert status(key) == 200
            assert status(old) == 401
            assert httpx.get(url, timeout=10).status_code == 401
            destination.revoke("ops")
            wait_for(lambda: status(key) == 401, 10, "the revoked key to be refused")
        finally:
            gateway.stop()
            destination.close()
