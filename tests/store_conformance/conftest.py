"""The store conformance suite: what every backend of the store port must do.

Every test takes the backend from `store_factory`, parametrized by backend name. A backend
is a URL that `orchestrator.stores.open_store` and `open_breaker_store` accept, plus one
backend-specific hook: `older()`, a database at an older schema version holding what the
current one holds (migration). The backends are "sqlite" (a file in the test's tmp dir) and
"postgres" (a fresh database on the session's throwaway cluster, tests/pglab.py).
Tests use the protocols of orchestrator/store.py only, never a backend's internals.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conformancelab import Backend

from sagalab.orchestrator.store import Store

#: The backends every conformance test runs against.
BACKENDS = ["sqlite", "postgres"]


def _sqlite(tmp_path: Path) -> Backend:
    from test_store import strip_to_v1  # the migration tests' own older file, reused

    path = tmp_path / "conformance.db"

    def older() -> str:
        v1 = tmp_path / "older.db"
        strip_to_v1(path, v1)
        return f"sqlite://{v1}"

    fresh = iter(range(1, 1000))
    return Backend(
        "sqlite", f"sqlite://{path}", older, lambda: f"sqlite://{tmp_path}/fresh{next(fresh)}.db"
    )


def _postgres(request: pytest.FixtureRequest) -> Backend:
    from pglab import copy_at_v1, new_database

    cluster = request.getfixturevalue("pg_cluster")
    url = request.getfixturevalue("pg_url")  # a fresh, empty database
    return Backend("postgres", url, lambda: copy_at_v1(cluster, url), lambda: new_database(cluster))


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backend named by the parameter, on a fresh database."""
    if request.param == "sqlite":
        backend = _sqlite(tmp_path)
    elif request.param == "postgres":
        backend = _postgres(request)
    else:  # pragma: no cover - a backend added to BACKENDS without its setup
        raise pytest.UsageError(f"no setup for store backend {request.param!r}")
    yield backend
    backend.close_all()


@pytest.fixture
def store(store_factory: Backend) -> Store:
    """One handle on the backend's fresh database."""
    return store_factory.open()
