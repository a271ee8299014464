"""`sagalab loadtest`: bad options and paths are refused in one line before anything starts,
and a stack it started is stopped whatever happens (a failing Locust run, Ctrl-C)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from workerlab import processes_mentioning, wait_for

from sagalab.orchestrator.limits import MAX_LOAD_PROCESSES

HAS_LOCUST = importlib.util.find_spec("locust") is not None
IDLE_LOCUSTFILE = """\
from locust import User, constant, task


class Idle(User):
    wait_time = constant(1)

    @task
    def nothing(self):
        pass
"""


def command(tmp_path: Path, *args: str) -> list[str]:
    base = [sys.executable, "-m", "sagalab.cli.main", "loadtest", "--duration", "5"]
    base += ["--dir", str(tmp_path / "stack"), "--reports", str(tmp_path / "reports")]
    return [*base, *args]  # later options win


def stack_down(directory: Path) -> None:
    """Clean up after a failed test: stop a stack left running from `directory`."""
    down = [sys.executable, "-m", "sagalab.cli.main", "stack", "down", "--dir", str(directory)]
    subprocess.run(down, capture_output=True, timeout=60, check=False)


def stack_gone(directory: Path) -> bool:
    return not (directory / "stack.json").exists() and processes_mentioning(str(directory)) == []


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--users", "0"], 2, "--users 0 is under the minimum of 1"),
        (["--users", "99999"], 2, "--users 99999 is over the limit of 2000"),
        (["--duration", "1e9"], 2, "--duration 1000000000 is over the limit of 3600"),
        (["--spawn-rate", "0"], 2, "--spawn-rate 0 is under the minimum"),
        (["--processes", str(MAX_LOAD_PROCESSES + 1)], 2, "--processes"),
        (["--workers", "0"], 2, "--workers 0 is under the minimum of 1"),
        (["--profile", "nope"], 2, "no profile 'nope'"),
        (["--locustfile", "MISSING"], 2, "no locustfile at"),
        (["--locustfile", "A_TEXT_FILE"], 2, "is not a Python file (*.py)"),
        (["--locustfile", "BAD_PY"], 2, "is not valid Python"),
        (["--reports", "UNDER_A_FILE"], 5, "cannot write the load-test reports"),
        (["--dir", "/proc/sagalab-loadtest"], 5, "cannot use /proc/sagalab-loadtest"),
        (["--db", "A_DIRECTORY"], 5, "is a directory"),
        (["--db", "A_TEXT_FILE"], 5, "is not a SQLite database"),
    ],
    ids=[
        "no-users", "too-many-users", "duration", "spawn-rate", "processes", "workers",
        "profile", "locustfile", "locustfile-not-py", "locustfile-syntax",
        "reports-unwritable", "dir-unwritable", "db-directory", "db-text-file",
    ],
)  # fmt: skip
def test_bad_options_and_paths_are_refused_before_anything_starts(
    args: list[str], code: int, fragment: str, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "bad.py").write_text("def broken(:\n")
    paths = {
        "BAD_PY": str(tmp_path / "bad.py"),
        "MISSING": str(tmp_path / "missing.py"),
        "UNDER_A_FILE": str(tmp_path / "a-file" / "reports"),
        "A_DIRECTORY": str(tmp_path),
        "A_TEXT_FILE": str(tmp_path / "a-file"),
    }
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = command(tmp_path, *(paths.get(a, a) for a in args))
    if "--reports" not in args:  # the default, reports/loadtest under the working directory
        at = argv.index("--reports")
        del argv[at : at + 2]
    r = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    directory = tmp_path / "stack"
    try:
        assert r.returncode == code, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines
        assert stack_gone(directory)
        assert not (directory / "logs").exists(), "no stack was started"
        # A refusal writes nothing: no stack directory, no reports, no database.
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        assert list(cwd.iterdir()) == []
    finally:
        if (directory / "stack.json").exists():
            stack_down(directory)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LOCUST, reason="needs locust")
def test_a_failing_locust_run_still_stops_the_stack_it_started(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('this locustfile cannot load')\n")
    r = subprocess.run(
        command(tmp_path, "--workers", "1", "--locustfile", str(broken)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 1, r.stderr
    assert "starting one for this run" in r.stderr
    assert "stopped the stack started for this run" in r.stderr
    assert stack_gone(tmp_path / "stack")


@contextlib.contextmanager
def running_loadtest(tmp_path: Path, *, own_group: bool) -> Iterator[subprocess.Popen[str]]:
    """A 120 s `loadtest` of an idle locustfile whose stack is up and whose Locust runs
    (Locust's own command line, `-f FILE`, not this CLI's `--locustfile FILE`: a signal
    before Locust runs would test the start-up path instead). On the way out, whatever a
    failure left is stopped: the CLI, its stack and Locust."""
    idle = tmp_path / "idle.py"
    idle.write_text(IDLE_LOCUSTFILE)
    directory = tmp_path / "stack"
    proc = subprocess.Popen(
        command(tmp_path, "--workers", "1", "--duration", "120", "--locustfile", str(idle)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_group,  # its own process group, as a terminal's foreground job
    )
    try:
        wait_for(lambda: (directory / "stack.json").exists(), 60, "the stack to start")
        wait_for(lambda: processes_mentioning(f"-f {idle}"), 60, "locust to run")
        yield proc
    finally:
        leave_nothing_running(proc, directory, idle, own_group=own_group)


def leave_nothing_running(
    proc: subprocess.Popen[str], directory: Path, idle: Path, *, own_group: bool = False
) -> None:
    """Stop whatever a test's `loadtest` left: the CLI (its group if it had its own), its
    stack and Locust; and close the CLI's stderr pipe."""
    if proc.poll() is None:
        if own_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()  # not communicate(): a Locust still running would hold the pipe open
    stack_down(directory)
    for pid in processes_mentioning(f"-f {idle}"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.stderr is not None:
        # Closed here, also when a test's own communicate() timed out after the CLI had
        # exited: left to the GC, the pipe failed the worker's next test (ResourceWarning).
        proc.stderr.close()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LOCUST, reason="needs locust")
def test_ctrl_c_stops_locust_and_the_stack_it_started(tmp_path: Path) -> None:
    with running_loadtest(tmp_path, own_group=True) as proc:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "stopped the stack started for this run" in stderr
        assert stack_gone(tmp_path / "stack")
        assert processes_mentioning(str(tmp_path / "idle.py")) == []


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LOCUST, reason="needs locust")
def test_sigterm_stops_locust_and_the_stack_it_started(tmp_path: Path) -> None:
    """`timeout`, a CI job's cancel or systemd send SIGTERM to the command alone: it ended
    the CLI at once and left the whole stack it had started (and Locust) running."""
    with running_loadtest(tmp_path, own_group=False) as proc:
        proc.send_signal(signal.SIGTERM)  # to this process only, not its group
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert "stopped the stack started for this run" in stderr
        assert stack_gone(tmp_path / "stack")
        assert processes_mentioning(str(tmp_path / "idle.py")) == []


#: Loaded first by the CLI (sitecustomize on PYTHONPATH): SIGTERM to itself once Locust has
#: been exec'd but before `subprocess.Popen()` has returned, the moment a signal sent right
#: after Locust shows up lands in on a busy machine.
TERM_AT_LOCUST_START = """\
import os, signal, subprocess

_execute_child = subprocess.Popen._execute_child


def _term_once_locust_runs(self, args, *rest, **kwargs):
    _execute_child(self, args, *rest, **kwargs)
    if "locust" in list(args) and os.environ.pop("SAGALAB_TEST_TERM_AT_LOCUST_START", None):
        os.kill(os.getpid(), signal.SIGTERM)


subprocess.Popen._execute_child = _term_once_locust_runs
"""


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LOCUST, reason="needs locust")
def test_sigterm_while_locust_starts_leaves_no_locust_holding_stderr(tmp_path: Path) -> None:
    """A SIGTERM inside `subprocess.Popen()` (Locust exec'd, the Popen not yet returned)
    raised out of it: nothing stopped Locust, which ran its whole --duration after the CLI
    had exited 130, holding the caller's stderr pipe open (a flake under `pytest -n 4`)."""
    idle = tmp_path / "idle.py"
    idle.write_text(IDLE_LOCUSTFILE)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(TERM_AT_LOCUST_START)
    paths = [str(shim), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "SAGALAB_TEST_TERM_AT_LOCUST_START": "1",
    }
    directory = tmp_path / "stack"
    proc = subprocess.Popen(
        command(tmp_path, "--workers", "1", "--duration", "120", "--locustfile", str(idle)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.wait(timeout=90) == 130
        # Checked before reading stderr: a Locust left running holds it open for 120 s.
        assert processes_mentioning(f"-f {idle}") == [], "locust outlived the CLI"
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        assert "locust:" in stderr, stderr  # the signal came as Locust started, not before
        assert "stopped the stack started for this run" in stderr
        assert stack_gone(directory)
    finally:
        leave_nothing_running(proc, directory, idle)
