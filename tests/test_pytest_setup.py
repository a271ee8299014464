"""The suite's own pytest set-up (pyproject addopts `-n auto --dist worksteal`, conftest.py's
worker count): a user's `pytest tests/test_x.py -x`, and `-p no:xdist`, keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = "tests/test_policies_token_bucket.py"


def pytest_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def test_one_file_runs_in_one_process() -> None:
    r = pytest_run("-q", "-x", SMALL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "bringing up nodes" not in r.stdout + r.stderr  # no xdist workers started
    assert " passed" in r.stdout


def test_without_xdist_its_options_in_addopts_are_ignored() -> None:
    """`-p no:xdist` (or pytest without pytest-xdist): addopts' `-n auto --dist worksteal`
    failed as "unrecognized arguments" before conftest.py accepted them."""
    r = pytest_run("-q", "-p", "no:xdist", SMALL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert " passed" in r.stdout


def test_trace_and_no_capture_run_in_one_process() -> None:
    """`--trace` over two files once ran on four workers, never stopped, and reported a
    failing test as passed; `-s` printed nothing. Both need the terminal: one process."""
    two = [SMALL, "tests/test_pytest_setup.py::test_one_file_runs_in_one_process"]
    r = pytest_run("-q", "-s", "--collect-only", *two)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "bringing up nodes" not in r.stdout + r.stderr
    # --trace stops at the first test's first line; with no terminal, pdb reads EOF and the
    # run ends there: what matters is that it stopped here rather than in a worker.
    r = pytest_run("-q", "--trace", *two)
    assert "bringing up nodes" not in r.stdout + r.stderr
    assert "(Pdb)" in r.stdout or "PDB" in r.stdout, r.stdout[-2000:]
