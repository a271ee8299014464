"""Fixtures shared by the test modules; plain helpers live in workerlab, apilab, edgelab and
opslab.

A module may define a fixture of the same name for its own needs (pytest takes the nearest):
test_chaos.py and test_crash.py start their `services` with a seeded generator, and
test_breakers_shared.py creates its `db` file up front.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from workerlab import Workers

from sagalab.fakeservices import RunningServices, run_in_thread
from sagalab.orchestrator.pg_cluster import PgCluster
from sagalab.orchestrator.sqlite_store import SQLiteStore

# A shell starts a background job (`pytest &` in a script) with SIGINT ignored, and an ignored
# signal stays ignored across exec: every CLI the Ctrl-C tests start would then ignore the
# SIGINT they send. A handled signal is reset to the default at exec, so handling it here lets
# each child Python install its own KeyboardInterrupt, as it does when a user runs it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def lab() -> Iterator[RunningServices]:
    """The fake services over HTTP on 127.0.0.1, one set per test module."""
    with run_in_thread() as running:
        yield running


@pytest.fixture
def services(lab: RunningServices) -> Iterator[RunningServices]:
    """The module's fake services with faults, ledgers and idempotency records cleared; any
    call the test still holds (`lab.hold`) is let go after it, so the server can stop."""
    lab.lab.reset()
    yield lab
    lab.lab.release()


@pytest.fixture
def env(lab: RunningServices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI pointed at clean fake services and a fresh database (returned), by environment."""
    lab.lab.reset()
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    db = tmp_path / "sagas.db"
    monkeypatch.setenv("SAGALAB_DB", str(db))
    return db


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where a test's saga database goes (not created)."""
    return tmp_path / "sagas.db"


@pytest.fixture
def db_path(db: Path) -> Path:
    """The same path, under the name the store-level tests use."""
    return db


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    """An open store on `db_path`, closed after the test."""
    s = SQLiteStore(db_path)
    yield s
    s.close()


@pytest.fixture
def workers(db: Path, services: RunningServices, tmp_path: Path) -> Iterator[Workers]:
    """Starts `sagalab worker` processes on `db` against `services`; none outlives the test."""
    w = Workers(db, services.env, tmp_path / "logs")
    yield w
    w.stop_all()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session (never a skip: no server binaries
    is a failure that says how to install them).

    Not under pytest's tmp dir: every pytest run makes /tmp/pytest-of-USER private again,
    which would lock the server (running as `postgres` when we are root) out of its files.
    """
    directory = Path(tempfile.mkdtemp(prefix="sagalab-pg-"))
    directory.chmod(0o711)  # the server's user may pass through, not list
    cluster = PgCluster(directory / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's cluster (dropped after)."""
    from pglab import drop_database, new_database

    url = new_database(pg_cluster)
    yield url
    drop_database(pg_cluster, url)


# --- The longest tests start first (issue 9: the suite's wall time) -----------------------
# `--dist worksteal` hands each of the N workers one contiguous slice of the collection and
# later moves tests from the tail of the longest queue to an idle worker: a test near a
# slice's end starts late, and one of 60-150 s started late sets the suite's wall time.
# So each of these tests (seconds measured in a `-n 4` run at load ~12, for the weights)
# goes to the head of one slice, the longest first, each to the slice with the least so far;
# everything else keeps its order. Serial runs and other --dist modes are left as collected.
# tests/test_longest_first.py checks this against xdist's own scheduler. A renamed test only
# loses its place (it runs where it is collected), so keep the names here current.
LONGEST = {
    "tests/test_newcomer_chain.py::test_load_test_calibrate_validate_compare_explore": 112,
    "tests/test_types.py::test_mypy_reports_no_errors[packages]": 103,
    "tests/test_types.py::test_mypy_reports_no_errors[folders]": 82,
    "tests/test_chaos.py::test_chaos": 79,
    "tests/test_ui_browser.py::test_list_filters": 64,
    "tests/test_types.py::test_mypy_reports_no_errors[core-strict]": 63,
    "tests/test_pg_hosts_chaos.py::"
    "test_sagas_survive_kills_a_partition_and_database_restarts_across_hosts": 62,
    "tests/test_ui_routes.py::test_routes_on_postgresql": 62,
    "tests/test_stack.py::test_the_console_link_shows_a_saga_submitted_through_the_edge": 56,
    "tests/test_sim_scenarios.py::test_scenario_invariants_and_claims[retry-storm]": 55,
    "tests/test_sim_queueing.py::"
    "test_power_of_two_matches_the_supermarket_model_and_random_does_not": 54,
    "tests/test_stack.py::test_two_ups_started_together_run_one_stack_that_down_stops": 48,
}


class Collected(Protocol):
    """A collected test (pytest.Item), as far as the ordering reads it."""

    @property
    def nodeid(self) -> str: ...


ItemT = TypeVar("ItemT", bound=Collected)


def worksteal_slices(count: int, workers: int) -> list[int]:
    """The sizes of the slices worksteal first sends to `workers` idle workers
    (xdist/scheduler/worksteal.py, check_schedule: each gets len(pending) // workers left)."""
    sizes = []
    for left in range(workers, 0, -1):
        sizes.append(count // left)
        count -= sizes[-1]
    return sizes


def longest_first(items: list[ItemT], workers: int) -> list[ItemT]:
    """`items` reordered so that each LONGEST test heads one worker's first slice."""
    long = sorted((i for i in items if i.nodeid in LONGEST), key=lambda i: -LONGEST[i.nodeid])
    rest = iter([i for i in items if i.nodeid not in LONGEST])
    sizes = worksteal_slices(len(items), workers)
    heads: list[list[ItemT]] = [[] for _ in sizes]
    for item in long:
        slot = min(range(len(sizes)), key=lambda k: sum(LONGEST[i.nodeid] for i in heads[k]))
        heads[slot].append(item)
    if any(len(head) > size for size, head in zip(sizes, heads, strict=True)):
        return items  # a handful of tests selected: nothing to gain
    ordered: list[ItemT] = []
    for size, head in zip(sizes, heads, strict=True):
        ordered += head
        ordered += [next(rest) for _ in range(size - len(head))]
    return ordered


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, in the controller, per worker
def pytest_configure_node(node: Any) -> None:
    """Tell each worker the --dist mode: xdist sets a worker's own option to "no"."""
    node.workerinput["sagalab_dist"] = node.config.getoption("dist")


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the slices are cut from what runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worksteal worker, the LONGEST tests head the workers' first slices."""
    workerinput = getattr(config, "workerinput", {})  # only xdist's workers have one
    workers = int(workerinput.get("workercount", 0))
    if workers > 1 and workerinput.get("sagalab_dist") == "worksteal":
        items[:] = longest_first(items, workers)
