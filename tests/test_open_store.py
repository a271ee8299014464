"""`open_store` is the one place that maps a database URL or path to a backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.pg_cluster import PgCluster
from sagalab.orchestrator.stores import (
    check_store,
    open_breaker_store,
    open_store,
    postgres_url,
    sqlite_path,
)

#: A server nobody runs (nothing listens on port 1): refused at once, never a hang.
POSTGRES = "postgresql://sagalab:s3cret@127.0.0.1:1/sagas"


@pytest.mark.parametrize(
    ("given", "path"),
    [
        pytest.param("sagas.db", "sagas.db", id="relative-path"),
        pytest.param("/var/lib/sagas.db", "/var/lib/sagas.db", id="absolute-path"),
        pytest.param(Path("/var/lib/sagas.db"), "/var/lib/sagas.db", id="path-object"),
        pytest.param("sqlite:///var/lib/sagas.db", "/var/lib/sagas.db", id="sqlite-url"),
        # What `--db sqlite:///var/lib/sagas.db` becomes as a Path: the same file.
        pytest.param(Path("sqlite:///var/lib/sagas.db"), "/var/lib/sagas.db", id="collapsed"),
        pytest.param("sqlite:sagas.db", "sagas.db", id="sqlite-relative"),
    ],
)
def test_a_path_or_sqlite_url_names_a_sqlite_file(given: str | Path, path: str) -> None:
    assert sqlite_path(given) == Path(path)


def test_a_sqlite_url_opens_the_file_it_names(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "sagas.db"
    store = open_store(f"sqlite://{db}")
    store.close()
    assert db.is_file()
    reader = open_store(f"sqlite://{db}", readonly=True)
    try:
        assert reader.list_sagas() == []
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("given", "url"),
    [
        pytest.param(POSTGRES, POSTGRES, id="postgresql"),
        pytest.param("postgres://h/db", "postgresql://h/db", id="postgres"),
        pytest.param("postgresql+psycopg://h/db", "postgresql://h/db", id="with-driver"),
        # What `--db postgresql://h/db` becomes as a Path: the same URL.
        pytest.param(Path("postgresql://h/db"), "postgresql://h/db", id="collapsed"),
        pytest.param("sagas.db", None, id="a-path"),
        pytest.param("sqlite:///x.db", None, id="sqlite"),
    ],
)
def test_a_postgresql_url_is_recognised_in_every_spelling(given: str | Path, url: str) -> None:
    assert postgres_url(given) == url


@pytest.mark.parametrize(
    "url",
    [POSTGRES, "postgres://sagalab:s3cret@127.0.0.1:1/db", Path(POSTGRES)],
    ids=["postgresql", "postgres", "collapsed"],
)
def test_an_unreachable_server_is_a_store_error_without_the_password(url: str | Path) -> None:
    for opening in (
        lambda: open_store(url),
        lambda: open_store(url, readonly=True),
        lambda: open_breaker_store(url),
        lambda: check_store(url),
    ):
        with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as info:
            opening()
        assert "s3cret" not in str(info.value) and "sagalab:***@127.0.0.1" in str(info.value)
        assert "\n" not in str(info.value)


def test_without_psycopg_a_postgresql_url_says_how_to_install_it(tmp_path: Path) -> None:
    # A process where `import psycopg` fails, as on an install without the extra.
    code = (
        "import sys; sys.modules['psycopg'] = None; "
        "sys.argv = ['sagalab', 'orchestrate', 'list', '--db', sys.argv[1]]; "
        "from sagalab.cli.main import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, POSTGRES], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 5, done.stderr
    assert "pip install 'sagalab[postgres]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "s3cret" not in done.stderr


def test_another_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store for mysql: URLs"):
        open_store("mysql://h/db")
    with pytest.raises(StoreError, match="needs a file path"):
        open_store("sqlite://")


@pytest.mark.parametrize(
    "args",
    [
        ["orchestrate", "list"],
        ["orchestrate", "status", "0123"],
        ["orchestrate", "run", "checkout"],
        ["breakers", "list"],
        ["worker", "--exit-when-idle", "0"],
    ],
    ids=["list", "status", "run", "breakers-list", "worker"],
)
def test_the_cli_refuses_an_unreachable_server_in_one_line_with_exit_5(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*args, "--db", POSTGRES])
    assert result.exit_code == 5, (result.stdout, result.stderr)
    assert "cannot connect to PostgreSQL" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "s3cret" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created, not even a `postgresql:` folder


def test_the_api_refuses_an_unreachable_server(tmp_path: Path) -> None:
    from sagalab.orchestrator.api import create_app

    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        create_app(POSTGRES)


@pytest.mark.parametrize(
    "args", [["orchestrate", "list"], ["orchestrate", "status", "x"]], ids=["list", "status"]
)
def test_a_missing_database_on_a_running_server_says_how_to_create_it(
    args: list[str], pg_cluster: PgCluster
) -> None:
    url = pg_cluster.url_for("no_such_sagas")
    result = CliRunner().invoke(app, [*args, "--db", url])
    assert result.exit_code == 5, (result.stdout, result.stderr)
    err = result.stderr
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert '"no_such_sagas" does not exist' in err, err
    assert "start the server" not in err, err  # it runs: only the database is missing
    assert "createdb" in err or "CREATE DATABASE" in err, err
    with psycopg.connect(pg_cluster.url) as conn:  # a reader created nothing
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'no_such_sagas'")
        assert found.fetchone() is None
