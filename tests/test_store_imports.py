"""Only a backend's own modules know its driver: the store port stays the one seam.

The runtime, the API and the CLI get a `Store` or `BreakerStore` (orchestrator/store.py) from
`orchestrator.stores`, the one place that maps a database URL to a backend. This test reads
every module of the repository's packages with `ast` and fails when one outside the allowed
sets imports `sqlite3`, names `SQLiteStore`, or imports the SQLite store modules themselves;
and likewise for PostgreSQL: `psycopg` (and `psycopg_pool`), `PostgresStore` and the
PostgreSQL store modules.

Allowed, and why:

* `SQLITE_MODULES`: the SQLite backend (saga store, migrations, breaker state, the process's
  group writer `orchestrator/sqlite_writer.py`, its hot-path INSERT texts
  `orchestrator/sqlite_rows.py`);
* `POSTGRES_MODULES`: the PostgreSQL backend (saga store, migrations, breaker state, and the
  API key table `edge/postgres_keys.py`), the only modules importing psycopg; the factory
  opens it (and names no `psycopg`), and `edge/keys.py`'s `open_key_store` (the key
  database's factory, which reads URLs with `orchestrator.stores`' rule) opens the key one;
* `orchestrator/stores.py`: the factory, which opens the SQLite backend (and names no
  `sqlite3`);
* `edge/sqlite_keys.py` may import `sqlite3`: the API key database on SQLite (`keys.db`,
  `--keys-db`) is a separate component of the edge, not the saga database: its own file in
  the stack directory, read by every gateway (which never opens the saga database) and
  written by `sagalab keys`. It has its own port (`edge.keys.KeyStore`), opened only by
  `edge.keys.open_key_store`;
* `benchmarks/bench_orchestrator.py` and `bench_workers.py` may import `sqlite3`: they
  measure the SQLite backend (DBOS's file set to WAL, results read from a second
  connection), and `bench_orchestrator.py` may name `SQLiteStore`: it counts the SQLite
  store's commits with the connection's trace callback. Their other stores come from
  `open_store`.
* `benchmarks/bench_postgres.py` may import `psycopg` and name `PostgresStore`, likewise: it
  measures the PostgreSQL backend against DBOS on one server (libpq's protocol trace of the
  store's own connection, `pg_stat_statements`, and each step's commit checked from a second
  connection).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "orchestrator", "edge", "simulator", "fakeservices", "loadtests", "benchmarks")

SQLITE_MODULES = frozenset(
    {
        "orchestrator/sqlite_store.py",
        "orchestrator/sqlite_breakers.py",
        "orchestrator/sqlite_writer.py",
        "orchestrator/sqlite_rows.py",
    }
)
FACTORY = "orchestrator/stores.py"
#: Modules allowed to import sqlite3 besides the SQLite backend (reasons in the docstring).
SQLITE3_ALSO = frozenset(
    {"edge/sqlite_keys.py", "benchmarks/bench_orchestrator.py", "benchmarks/bench_workers.py"}
)
#: Modules allowed to open the SQLite store directly besides the factory (see the docstring).
BACKEND_ALSO = frozenset({"benchmarks/bench_orchestrator.py"})
BACKEND_MODULES = (
    "sagalab.orchestrator.sqlite_store",
    "sagalab.orchestrator.sqlite_breakers",
    "sagalab.orchestrator.sqlite_writer",
    "sagalab.orchestrator.sqlite_rows",
)
POSTGRES_MODULES = frozenset(
    {"orchestrator/postgres_store.py", "orchestrator/postgres_breakers.py", "edge/postgres_keys.py"}
)
POSTGRES_BACKEND_MODULES = (
    "sagalab.orchestrator.postgres_store",
    "sagalab.orchestrator.postgres_breakers",
    "sagalab.edge.postgres_keys",
)
#: The key database's factory: opens either key backend (never names a driver).
KEY_FACTORY = "edge/keys.py"
KEY_BACKEND_MODULES = ("sagalab.edge.sqlite_keys", "sagalab.edge.postgres_keys")
POSTGRES_DRIVERS = ("psycopg", "psycopg_pool")
#: Modules allowed psycopg and the PostgreSQL store besides its backend (see the docstring).
POSTGRES_ALSO = frozenset({"benchmarks/bench_postgres.py"})


def _modules() -> list[str]:
    found = [
        str(p.relative_to(ROOT)) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
    ]
    return [m for m in found if "/tests/" not in m]


def violations(source: str, module: str) -> list[str]:
    """What `module` (its path from the root) may not do with SQLite, one line each."""
    may_import_sqlite3 = module in SQLITE_MODULES or module in SQLITE3_ALSO
    may_use_backend = module in SQLITE_MODULES or module == FACTORY or module in BACKEND_ALSO
    may_use_postgres = module in POSTGRES_MODULES or module == FACTORY or module in POSTGRES_ALSO
    may_open_keys = module == KEY_FACTORY
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            if name.split(".")[0] == "sqlite3" and not may_import_sqlite3:
                found.append(f"line {node.lineno}: imports {name}")
            if name.startswith(BACKEND_MODULES) and not may_use_backend:
                found.append(f"line {node.lineno}: imports {name} (use orchestrator.stores)")
            if name.split(".")[0] in POSTGRES_DRIVERS and not (
                module in POSTGRES_MODULES or module in POSTGRES_ALSO
            ):
                found.append(f"line {node.lineno}: imports {name}")
            if name.startswith(KEY_BACKEND_MODULES):
                if not may_open_keys:
                    found.append(f"line {node.lineno}: imports {name} (use open_key_store)")
            elif name.startswith(POSTGRES_BACKEND_MODULES) and not may_use_postgres:
                found.append(f"line {node.lineno}: imports {name} (use orchestrator.stores)")
        if isinstance(node, ast.Name | ast.Attribute):
            named = node.id if isinstance(node, ast.Name) else node.attr
            if named == "SQLiteStore" and not may_use_backend:
                found.append(f"line {node.lineno}: names SQLiteStore")
            if named == "PostgresStore" and not may_use_postgres:
                found.append(f"line {node.lineno}: names PostgresStore")
    return sorted(set(found))


@pytest.mark.parametrize("module", _modules())
def test_module_does_not_reach_past_the_store_port(module: str) -> None:
    assert violations((ROOT / module).read_text(), module) == []


def test_the_rule_catches_each_way_round_the_port() -> None:
    """The check itself: each kind of import it exists to refuse is reported."""
    assert violations("import sqlite3\n", "orchestrator/worker.py") == ["line 1: imports sqlite3"]
    assert violations("from sqlite3 import Error\n", "cli/errors.py") != []
    assert (
        violations("from sagalab.orchestrator.sqlite_store import SQLiteStore\n", "cli/x.py") != []
    )
    assert violations("import sagalab.orchestrator.sqlite_breakers\n", "orchestrator/api.py") != []
    assert violations("x = mod.SQLiteStore(path)\n", "orchestrator/api.py") != []
    # What is allowed where, by the same function.
    assert violations("import sqlite3\n", "orchestrator/sqlite_store.py") == []
    assert violations("import sqlite3\n", "edge/sqlite_keys.py") == []
    assert violations("import sqlite3\n", KEY_FACTORY) != []
    assert violations("import psycopg\n", "edge/postgres_keys.py") == []
    assert violations("import psycopg\n", "benchmarks/bench_postgres.py") == []
    assert violations("import psycopg\n", "benchmarks/bench_workers.py") != []
    assert violations("from sagalab.edge.postgres_keys import X\n", KEY_FACTORY) == []
    assert violations("from sagalab.edge.postgres_keys import X\n", "orchestrator/api.py") != []
    assert violations("from sagalab.edge.sqlite_keys import X\n", "cli/keys.py") != []
    assert (
        violations("from sagalab.orchestrator.sqlite_store import open_sqlite_store\n", FACTORY)
        == []
    )
    assert violations("import sqlite3\n", FACTORY) != []
    assert violations("import psycopg\n", "orchestrator/worker.py") == ["line 1: imports psycopg"]
    assert violations("from psycopg_pool import ConnectionPool\n", "cli/x.py") != []
    assert violations("import psycopg\n", FACTORY) != []
    assert violations("from sagalab.orchestrator.postgres_store import connect\n", "cli/x.py") != []
    assert violations("x = mod.PostgresStore(url)\n", "orchestrator/api.py") != []
    assert violations("import psycopg\n", "orchestrator/postgres_breakers.py") == []
    assert violations("import sagalab.orchestrator.postgres_breakers\n", FACTORY) == []


def test_every_package_module_is_checked() -> None:
    modules = _modules()
    assert {"orchestrator/api.py", "cli/orchestrate.py", "orchestrator/worker.py"} <= set(modules)
    assert set(modules) >= SQLITE_MODULES | POSTGRES_MODULES and FACTORY in modules
