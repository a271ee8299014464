"""Fixtures shared by the test modules; plain helpers live in workerlab, apilab, edgelab and
opslab.

A module may define a fixture of the same name for its own needs (pytest takes the nearest):
test_chaos.py and test_crash.py start their `services` with a seeded generator, and
test_breakers_shared.py creates its `db` file up front.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slowfirst import longest_first
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

#: Workers per usable core for `-n auto` (pyproject's addopts), and at most this many: the
#: tests mostly wait on real processes (stacks, servers, CLIs), so two per core keep both
#: cores busy; 4 is what was measured on 2 cores (benchmarks/README.md, session 22).
WORKERS_PER_CORE, MAX_WORKERS = 2, 4


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; absent with `-p no:xdist`
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """How many processes `-n auto` starts: two per usable core, at most MAX_WORKERS (so 2
    on one core). 0 (one process) with `--trace` or `-s`, and when the command line names
    one test file or tests of one file (`pytest tests/test_x.py -x`): starting four
    interpreters would cost more than it saves, and the output stays in order.
    PYTEST_XDIST_AUTO_NUM_WORKERS, and `-n N` on the command line, still decide."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist's own hook reads it
    if config.getoption("trace", False) or config.getoption("capture", None) == "no":
        # `--trace` and `-s` need the terminal: under workers `--trace` never stopped and a
        # failing test was reported passed, and `-s` printed nothing. (`--pdb` xdist handles.)
        return 0
    if config.args_source is pytest.Config.ArgsSource.ARGS:
        paths = {Path(arg.split("::", 1)[0]) for arg in config.args}
        if len(paths) == 1 and next(iter(paths)).suffix == ".py":
            return 0
    return min(MAX_WORKERS, WORKERS_PER_CORE * len(os.sched_getaffinity(0)))


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Without pytest-xdist (`-p no:xdist`, or a plain `pip install pytest`), accept and
    ignore its options so pyproject's `-n auto --dist worksteal` runs the tests in one
    process instead of failing with "unrecognized arguments"."""
    if pluginmanager.has_plugin("xdist"):
        return
    group = parser.getgroup("xdist", "pytest-xdist absent: its options are ignored")
    # `_addoption`, as pytest-xdist does: `addoption` reserves lowercase short options.
    group._addoption("-n", "--numprocesses", dest="numprocesses", default=None)
    group.addoption("--dist", dest="dist", default="no")


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
# worksteal gives each worker one contiguous slice of the collection: tests/slowfirst.py puts
# each LONGEST test at the head of one slice, so none of 60-150 s starts late.


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
