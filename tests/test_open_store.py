"""`open_store` is the one place that maps a database URL or path to a backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from orchestrator.errors import StoreError
from orchestrator.stores import check_store, open_breaker_store, open_store, sqlite_path

POSTGRES = "postgresql://sagalab:s3cret@db.example:5432/sagas"


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
    "url",
    [POSTGRES, "postgres://h/db", "postgresql+psycopg://h/db", Path("postgresql://h/db")],
    ids=["postgresql", "postgres", "with-driver", "collapsed"],
)
def test_postgresql_is_refused_until_its_backend_exists(url: str | Path) -> None:
    for opening in (
        lambda: open_store(url),
        lambda: open_store(url, readonly=True),
        lambda: open_breaker_store(url),
        lambda: check_store(url),
    ):
        with pytest.raises(StoreError, match=r"PostgreSQL store is not available yet \(issue 10\)"):
            opening()


def test_the_refusal_never_shows_the_password() -> None:
    with pytest.raises(StoreError) as info:
        open_store(POSTGRES)
    assert "s3cret" not in str(info.value) and "sagalab:***@db.example" in str(info.value)


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
def test_the_cli_refuses_postgresql_in_one_line_with_exit_5(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*args, "--db", POSTGRES])
    assert result.exit_code == 5, (result.stdout, result.stderr)
    assert "issue 10" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "s3cret" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created, not even a `postgresql:` folder


def test_the_api_refuses_postgresql(tmp_path: Path) -> None:
    from orchestrator.api import create_app

    with pytest.raises(StoreError, match="issue 10"):
        create_app(POSTGRES)
