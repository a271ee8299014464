"""What `--db` may be, read one way everywhere (orchestrator/stores.py), and what it shows.

- `file:` URIs (also inside `sqlite:`) are refused with the accepted forms named: SQLite
  would read their options (`mode=memory`) and skip every check made on the literal path;
- `sqlite://x` (a host part) is refused: through a `Path` it became `/x`, a file at `/`;
- messages show the URL as typed, never a password (orchestrator.redact, one rule);
- a saga database on a read-only filesystem (or in a directory without write permission)
  can still be read by the read-only commands (`sqlite_store.read_modes`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.cli.options import DbPath
from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.redact import redacted
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.stores import open_store, postgres_url, shown, sqlite_path, typed

ORDER = {"order_id": "o-1", "customer_id": "c-1", "sku": "A", "quantity": 1, "amount": 120}


def _invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env=env)
    return result.exit_code, result.stdout + result.stderr


def _other_app_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("prefix", ["file:", "sqlite:file:"])
def test_a_file_uri_to_another_apps_database_is_refused_and_left_alone(
    prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _other_app_db(tmp_path / "other.db")
    before = (tmp_path / "other.db").read_bytes()
    code, out = _invoke(
        [
            "orchestrate",
            "run",
            "checkout",
            "--db",
            f"{prefix}other.db",
            "--input",
            json.dumps(ORDER),
        ]
    )
    assert code == 5, out
    assert "file: URIs are not accepted" in out and "sqlite:///abs/path" in out
    assert (tmp_path / "other.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


@pytest.mark.parametrize(
    "db", ["file:y.db", "file:mem?mode=memory&cache=shared", "file:///tmp/x.db", "FILE:z.db"]
)
def test_file_uris_are_refused_before_anything_is_written(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = _invoke(
        ["orchestrate", "run", "checkout", "--db", db, "--input", json.dumps(ORDER)]
    )
    assert code == 5, out
    assert db in out  # as typed: not file://tmp/x.db
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["option", "env"])
def test_sqlite_with_a_host_part_is_refused_and_creates_nothing_at_the_root(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = f"sagalab-rel-{os.getpid()}.db"
    db = f"sqlite://{name}"
    args = ["orchestrate", "run", "checkout", "--input", json.dumps(ORDER)]
    if how == "option":
        code, out = _invoke([*args, "--db", db])
    else:
        code, out = _invoke(args, env={"SAGALAB_DB": db})
    assert code == 5, out
    assert db in out and "sqlite:///abs/path" in out and "sqlite:rel/path" in out
    assert not Path("/", name).exists()
    assert list(tmp_path.iterdir()) == []


def test_the_accepted_sqlite_forms_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for db in ["plain.db", "sqlite:sub/rel.db", f"sqlite://{tmp_path}/abs.db", "odd?name#x.db"]:
        code, out = _invoke(
            ["orchestrate", "run", "checkout", "--db", db, "--input", json.dumps(ORDER)]
        )
        assert code in (0, 1), (db, out)
        code, out = _invoke(["orchestrate", "list", "--db", db, "--json"])
        assert code == 0, (db, out)
        assert len(json.loads(out)) == 1
    names = {p.name for p in tmp_path.iterdir()} | {p.name for p in (tmp_path / "sub").iterdir()}
    assert {"plain.db", "rel.db", "abs.db", "odd?name#x.db"} <= names


# --- C: read-only filesystems -------------------------------------------------------------


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only: a tmpfs remounted ro as root (root ignores permissions), else chmod."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    yield


@pytest.fixture
def read_only_db(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A saga database (writers closed) in a directory this process cannot write."""
    folder = tmp_path / "snap"
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)])
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted = True
    try:
        db = folder / "sagas.db"
        store = open_store(db)
        record, _ = start_saga(store, load_flow("checkout"), ORDER, queue=True)
        store.close()
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            yield db, record.id
        else:
            with _read_only(folder):
                yield db, record.id
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize(
    "args",
    [
        ["orchestrate", "list", "--json"],
        ["orchestrate", "status", "{saga}", "--json"],
        ["orchestrate", "events", "{saga}", "--json"],
        ["breakers", "list", "--json"],
    ],
    ids=["list", "status", "events", "breakers-list"],
)
def test_read_only_commands_read_a_database_on_a_read_only_filesystem(
    args: list[str], read_only_db: tuple[Path, str]
) -> None:
    db, saga = read_only_db
    before = sorted(p.name for p in db.parent.iterdir())
    code, out = _invoke([a.replace("{saga}", saga) for a in args] + ["--db", str(db)])
    assert code == 0, out
    if "events" in args:
        assert "saga_created" in out
    elif "breakers" not in args:
        assert saga in out
    assert sorted(p.name for p in db.parent.iterdir()) == before


# --- D: one masking rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://user:p/ss@localhost:1/db", "p/ss"),
        ("postgresql://user:p@ss@localhost:1/db", "p@ss"),
        ("postgresql://user@localhost:1/db?password=s3cret", "s3cret"),
        ("postgres://user:pa:ss@localhost:1/db?sslmode=disable", "pa:ss"),
    ],
)
def test_no_message_shows_a_database_password(url: str, secret: str) -> None:
    for args in (["orchestrate", "list"], ["breakers", "list"]):
        code, out = _invoke([*args, "--db", url])
        assert code == 5, out
        assert secret not in out and "***" in out
    assert secret not in shown(url)
    with pytest.raises(StoreError) as caught:
        open_store(url)
    assert secret not in str(caught.value)


_SECRET = st.text(alphabet="QZXJKqzxjk0123456789/@:?#%&=!$", min_size=6, max_size=20).filter(
    lambda s: any(c.isalpha() for c in s)
)


@settings(max_examples=200, deadline=None)
@given(
    user=st.sampled_from(["u", "app", "saga_user"]),
    secret=_SECRET,
    in_query=st.booleans(),
    scheme=st.sampled_from(["postgresql", "postgres", "postgresql+psycopg"]),
)
def test_generated_urls_never_show_their_secret(
    user: str, secret: str, in_query: bool, scheme: str
) -> None:
    if in_query:
        secret = secret.replace("&", "").replace("#", "")
        url = f"{scheme}://{user}@db.example:5432/sagas?password={secret}&sslmode=require"
    else:
        url = f"{scheme}://{user}:{secret}@db.example:5432/sagas"
    message = f"cannot connect to PostgreSQL at {url}: refused; error at {url}"
    for text in (redacted(url), redacted(message), shown(url), str(StoreError(message))):
        assert secret not in text, text


LEAKY = [
    ("postgresql://user:p/ss@127.0.0.1:1/db", "p/ss"),
    ("postgresql://user:p@ss@127.0.0.1:1/db", "p@ss"),
    ("postgresql://user@127.0.0.1:1/db?password=s3cret", "s3cret"),
]
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("url", "secret"), LEAKY)
@pytest.mark.parametrize(
    "command",
    [
        ["-m", "sagalab.cli.main", "worker", "--exit-when-idle", "1", "--db"],
        ["-m", "sagalab.edge.apps", "api", "--fd", "0", "--db"],
        ["-m", "sagalab.cli.main", "demo", "--db"],
    ],
    ids=["worker", "api", "demo"],
)
def test_no_process_prints_the_password(command: list[str], url: str, secret: str) -> None:
    done = subprocess.run(
        [sys.executable, *command, url],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 5, out
    assert secret not in out and "***" in out, out


def test_a_url_as_typed_keeps_its_empty_host_a_collapsed_one_is_restored() -> None:
    assert postgres_url(DbPath.parse("postgresql:///sagas")) == "postgresql:///sagas"
    assert postgres_url(DbPath.parse("postgres://h:5/db")) == "postgresql://h:5/db"
    assert postgres_url(Path("postgresql://h/db")) == "postgresql://h/db"
    assert typed(DbPath.parse("sqlite:///abs.db")) == "sqlite:///abs.db"
    assert sqlite_path(DbPath.parse("sqlite:///abs.db")) == Path("/abs.db")


@settings(max_examples=30, deadline=None)
@example(secret="0000J%", in_query=False, command="orchestrate")  # quoted by psycopg's parser
@example(secret="00J%80", in_query=False, command="orchestrate")  # not UTF-8: was a traceback
@given(secret=_SECRET, in_query=st.booleans(), command=st.sampled_from(["orchestrate", "breakers"]))
def test_generated_urls_never_show_their_secret_on_the_command_line(
    secret: str, in_query: bool, command: str
) -> None:
    if in_query:
        secret = secret.replace("&", "").replace("#", "")
        url = f"postgresql://app@127.0.0.1:1/sagas?password={secret}&connect_timeout=2"
    else:
        url = f"postgresql://app:{secret}@127.0.0.1:1/sagas"
    code, out = _invoke([command, "list", "--db", url])
    assert code == 5, out
    assert secret not in out, out


def test_a_sqlite_scheme_in_capitals_is_the_same_url(tmp_path: Path) -> None:
    for scheme in ("SQLITE", "Sqlite"):
        assert sqlite_path(DbPath.parse(f"{scheme}://{tmp_path}/a.db")) == tmp_path / "a.db"
        assert sqlite_path(DbPath.parse(f"{scheme}:rel.db")) == Path("rel.db")
    out = CliRunner().invoke(app, ["orchestrate", "list", "--db", f"SQLITE:///{tmp_path}/none.db"])
    assert out.exit_code == 5 and "none.db" in out.output, out.output
