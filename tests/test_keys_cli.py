"""`sagalab keys`: tenants, admin keys, bounds, and reads that never write."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.edge.keys import KeyCache, open_key_store
from sagalab.orchestrator.sqlite_store import SQLiteStore


def keys(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["keys", *args])
    return result.exit_code, result.stdout, result.stderr


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def test_a_key_belongs_to_a_tenant_named_after_it_unless_told(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    code, out, _ = keys("create", "alice-ci", "--keys-db", db, "--json")
    assert code == 0
    assert json.loads(out)["tenant"] == "alice-ci" and json.loads(out)["admin"] is False
    code, out, _ = keys("create", "alice-web", "--tenant", "alice", "--keys-db", db, "--json")
    assert code == 0 and json.loads(out)["tenant"] == "alice"
    code, out, _ = keys("create", "ops", "--admin", "--keys-db", db, "--json")
    assert code == 0 and json.loads(out)["admin"] is True
    code, out, _ = keys("list", "--keys-db", db, "--json")
    listed = {k["name"]: (k["tenant"], k["admin"]) for k in json.loads(out)}
    assert listed == {
        "alice-ci": ("alice-ci", False),
        "alice-web": ("alice", False),
        "ops": ("ops", True),
    }
    code, out, _ = keys("list", "--keys-db", db)
    assert code == 0 and "alice" in out and "(admin)" in out
    # What the gateway learns about a key carries its tenant.
    key = json.loads(keys("create", "bob", "--tenant", "b", "--keys-db", db, "--json")[1])["key"]
    found = KeyCache(open_key_store(db), ttl=0).authenticate(key)
    assert found is not None and found.tenant == "b"


@pytest.mark.parametrize(
    ("args", "bound"),
    [
        (["--rate", "0"], "between 0.001 and 100000 requests/s"),
        (["--rate", "1e9"], "between 0.001 and 100000 requests/s"),
        (["--rate", "nan"], "rate must be between"),
        (["--rate", "inf"], "rate must be between"),
        (["--burst", "0.5"], "between 1 and 100000 requests"),
        (["--burst", "1e12"], "between 1 and 100000 requests"),
        (["--tenant", "a b"], "not a valid tenant name"),
        (["--tenant", "x" * 65], "not a valid tenant name"),
    ],
    ids=["rate-zero", "rate-huge", "rate-nan", "rate-inf", "burst-small", "burst-huge",
         "tenant-space", "tenant-long"],
)  # fmt: skip
def test_out_of_bounds_key_settings_are_refused_naming_the_bound(
    tmp_path: Path, args: list[str], bound: str
) -> None:
    db = tmp_path / "keys.db"
    code, out, err = keys("create", "k", *args, "--keys-db", str(db))
    assert code == 2, err
    assert bound in err and out == ""
    assert len(err.strip().splitlines()) == 1
    assert not db.exists()


def test_a_name_that_cannot_be_a_tenant_needs_one(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    code, _, err = keys("create", "ops team", "--keys-db", db)
    assert code == 2 and "--tenant" in err
    assert keys("create", "ops team", "--tenant", "ops", "--keys-db", db)[0] == 0


@pytest.mark.parametrize("tenant", [[], ["--tenant", "ops"]], ids=["own-tenant", "tenant"])
def test_a_100000_character_key_name_is_refused_in_one_short_line(
    tmp_path: Path, tenant: list[str]
) -> None:
    db = tmp_path / "keys.db"
    code, out, err = keys("create", "a" * 100_000, *tenant, "--keys-db", str(db))
    assert code == 2 and out == ""
    assert err.strip() == "error: a key's name must be 1 to 200 characters (got 100000)"
    assert not db.exists()


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["revoke", "x" * 100_000], 3, "'" + "x" * 60 + "'…"),
        # A whole key of an unknown id: named by its id, its secret never echoed.
        (["revoke", "sgl_abcdef12_" + "s" * 100_000], 3, "no key with id or name 'abcdef12'"),
        (["create", "ops", "--tenant", "t" * 100_000], 2, "'" + "t" * 60 + "'…"),
    ],
    ids=["revoke-unknown-name", "revoke-whole-key", "create-huge-tenant"],
)
def test_a_huge_typed_name_is_echoed_cut_short(
    tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    db = str(tmp_path / "keys.db")
    assert keys("create", "alice", "--keys-db", db)[0] == 0
    got, out, err = keys(*args, "--keys-db", db)
    assert got == code and out == "", err
    assert len(err.strip().splitlines()) == 1 and len(err) < 400, err[:400]
    assert says in err, err


def test_revoking_a_duplicate_200_character_name_echoes_it_cut_short(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    name = "n" * 200
    store = open_key_store(db)
    try:
        store.create(name, rate=1, burst=1, tenant="a")
        conn = sqlite3.connect(db)  # a second active key of that name, as an old file may hold
        conn.execute(
            "INSERT INTO api_keys (id, name, digest, rate, burst, created_at, tenant, admin) "
            "SELECT 'ffffffff', name, 'x', rate, burst, created_at, tenant, admin FROM api_keys"
        )
        conn.commit()
        conn.close()
    finally:
        store.close()
    got, out, err = keys("revoke", name, "--keys-db", db)
    assert got == 2 and "2 active keys" in err and "…" in err and name not in err, err


@pytest.mark.parametrize("command", [["list"], ["revoke", "ops"]], ids=["list", "revoke"])
def test_reads_of_a_missing_key_database_create_no_file(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "typo" / "keys.db"
    code, _, err = keys(*command, "--keys-db", str(db))
    assert code == 5
    assert "no key database" in err and len(err.strip().splitlines()) == 1
    assert not db.exists() and not db.parent.exists()


@pytest.mark.parametrize(
    "command", [["list"], ["revoke", "ops"], ["create", "ops"]], ids=["list", "revoke", "create"]
)
def test_a_saga_database_is_not_a_key_database(tmp_path: Path, command: list[str]) -> None:
    sagas = tmp_path / "sagas.db"
    SQLiteStore(sagas).close()
    before = tables(sagas)
    code, _, err = keys(*command, "--keys-db", str(sagas))
    assert code == 5
    assert "not a key database" in err and len(err.strip().splitlines()) == 1
    assert tables(sagas) == before


@pytest.mark.parametrize(
    "command", [["list"], ["revoke", "ops"], ["create", "ops"]], ids=["list", "revoke", "create"]
)
@pytest.mark.parametrize("kind", ["directory", "text-file", "empty-file", "proc-file"])
def test_a_directory_or_a_text_file_gets_one_line_and_exit_5(
    tmp_path: Path, command: list[str], kind: str
) -> None:
    target = tmp_path / "notes"
    if kind == "directory":
        target.mkdir()
    elif kind == "text-file":
        target.write_text("not a database\n" * 50)
    elif kind == "empty-file":
        target.touch()
    else:
        target = Path("/proc/self/status")
    code, _, err = keys(*command, "--keys-db", str(target))
    if kind == "empty-file" and command[0] == "create":
        assert code == 0, err  # an empty file is an empty database: a new key file
        return
    assert code == 5, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    if kind == "text-file":
        assert target.read_text() == "not a database\n" * 50
    if kind == "empty-file" and command[0] != "create":
        assert target.stat().st_size == 0


def test_a_key_file_from_before_tenants_is_read_as_default_and_upgraded_on_write(
    tmp_path: Path,
) -> None:
    db = tmp_path / "keys.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT NULL, "
        "rate REAL NOT NULL, burst REAL NOT NULL, created_at REAL NOT NULL, revoked_at REAL)"
    )
    conn.execute("INSERT INTO api_keys VALUES ('0123abcd', 'old', 'x', 5, 10, 1.0, NULL)")
    conn.commit()
    conn.close()
    code, out, _ = keys("list", "--keys-db", str(db), "--json")
    assert code == 0 and json.loads(out)[0]["tenant"] == "default"
    conn = sqlite3.connect(db)
    assert "tenant" not in {r[1] for r in conn.execute("PRAGMA table_info(api_keys)")}
    conn.close()
    assert keys("create", "new", "--keys-db", str(db))[0] == 0
    assert [k.tenant for k in open_key_store(db).list()] == ["default", "new"]


def _open_together(db: Path, barrier: threading.Barrier, errors: list[Exception]) -> None:
    barrier.wait()
    try:
        open_key_store(db).close()
    except Exception as exc:  # collected: the caller's assertion names it
        errors.append(exc)


def test_an_older_key_file_opened_by_many_at_once_is_upgraded_once(tmp_path: Path) -> None:
    # What `stack up` does on a directory kept from before tenants: API and gateways open the
    # key file together, each ready to add the new columns. Switching the file to WAL lost
    # that race about one time in thirty ("database is locked", seen in a parallel CI run):
    # sixty rounds.
    for round_ in range(60):
        db = tmp_path / f"keys-{round_}.db"
        conn = sqlite3.connect(db)
        conn.execute(
            "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT "
            "NULL, rate REAL NOT NULL, burst REAL NOT NULL, created_at REAL NOT NULL, "
            "revoked_at REAL)"
        )
        conn.commit()
        conn.close()
        barrier = threading.Barrier(6)
        errors: list[Exception] = []
        threads = [
            threading.Thread(target=_open_together, args=(db, barrier, errors)) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == [], f"round {round_}"
        conn = sqlite3.connect(db)
        columns = {r[1] for r in conn.execute("PRAGMA table_info(api_keys)")}
        assert {"tenant", "admin"} <= columns
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


def test_a_key_without_tenant_never_joins_an_existing_one(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    assert keys("create", "alice-ci", "--tenant", "alice", "--keys-db", db)[0] == 0
    code, out, err = keys("create", "alice", "--keys-db", db)
    assert code == 2
    assert "tenant alice exists: pass --tenant alice to add a key to it" in err
    assert out == ""
    # Told so, the key joins it.
    code, out, _ = keys("create", "alice", "--tenant", "alice", "--keys-db", db, "--json")
    assert code == 0 and json.loads(out)["tenant"] == "alice"
    listed = json.loads(keys("list", "--keys-db", db, "--json")[1])
    assert sorted(k["name"] for k in listed) == ["alice", "alice-ci"]


def test_two_active_keys_never_share_a_name(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    assert keys("create", "ci", "--tenant", "team", "--keys-db", db)[0] == 0
    code, _, err = keys("create", "ci", "--tenant", "team", "--keys-db", db)
    assert code == 2
    assert "an active key is already named 'ci'" in err
    assert len(json.loads(keys("list", "--keys-db", db, "--json")[1])) == 1
    # Revoked by name (one active key has it), the name is free again.
    assert keys("revoke", "ci", "--keys-db", db)[0] == 0
    assert keys("create", "ci", "--tenant", "team", "--keys-db", db)[0] == 0


def test_keys_find_the_stack_directory_as_the_stack_commands_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack_dir = tmp_path / "stack"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAGALAB_KEYS_DB", raising=False)
    monkeypatch.setenv("SAGALAB_STACK_DIR", str(stack_dir))
    assert keys("create", "newbie")[0] == 0
    assert (stack_dir / "keys.db").is_file()
    assert not (tmp_path / ".sagalab").exists()
    monkeypatch.delenv("SAGALAB_STACK_DIR")
    other = tmp_path / "other"
    assert keys("create", "second", "--dir", str(other))[0] == 0
    names = {k["name"] for k in json.loads(keys("list", "--dir", str(other), "--json")[1])}
    assert names == {"second"}
    # --keys-db still names the file itself.
    assert keys("create", "third", "--dir", str(other), "--keys-db", str(tmp_path / "k.db"))[0] == 0
    assert (tmp_path / "k.db").is_file()


def test_a_stack_key_made_again_replaces_the_old_one(tmp_path: Path) -> None:
    store = open_key_store(tmp_path / "keys.db")
    try:
        first, _ = store.create("stack", replace=True)
        second, _ = store.create("stack", replace=True)
        listed = {k.id: k for k in store.list()}
    finally:
        store.close()
    assert not listed[first.id].active and listed[second.id].active
    assert second.tenant == first.tenant == "stack"


def test_a_key_named_default_never_joins_the_clis_tenant_unasked(tmp_path: Path) -> None:
    """`default` holds every saga `orchestrate run` made: joining it must be asked for."""
    db = str(tmp_path / "keys.db")
    code, _, err = keys("create", "default", "--keys-db", db)
    assert code == 2 and "--tenant default" in err, err
    code, out, _ = keys("create", "default", "--tenant", "default", "--keys-db", db, "--json")
    assert code == 0 and json.loads(out)["tenant"] == "default"


def test_keys_list_reads_a_key_database_on_a_read_only_mount(tmp_path: Path) -> None:
    """A WAL-mode key database where nothing can write (a read-only mount, a snapshot) has
    no `-shm` and cannot get one: `keys list` said "unable to open database file". It is
    read as the saga store reads such a file (`immutable=1`)."""
    import os
    import subprocess

    where = tmp_path / "snapshot"
    where.mkdir()
    root = os.geteuid() == 0
    if root:  # root writes through file modes: a tmpfs, filled, then remounted read-only
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        assert keys("create", "ops", "--keys-db", str(where / "keys.db"))[0] == 0
        assert not (where / "keys.db-wal").exists()  # closed: its log checkpointed away
        if root:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        else:
            where.chmod(0o555)
        code, out, err = keys("list", "--keys-db", str(where / "keys.db"))
        assert code == 0, err
        assert "ops" in out
    finally:
        if root:
            subprocess.run(["umount", str(where)], check=True)
        else:
            where.chmod(0o755)
