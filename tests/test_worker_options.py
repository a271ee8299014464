"""Every numeric option of `sagalab worker` is bounded and refused with exit 2 naming the bound
before anything starts (issue 8, outside tester's round: `--lease inf` killed the lease keeper
with an OverflowError, `--poll 1e12` a thread, `--lease 1e7` left sagas stuck for 115 days)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.orchestrator.limits import MAX_LEASE, MAX_POLL, MAX_RUN_SECONDS

BAD = [
    ("--lease", "inf", "finite"),
    ("--lease", "nan", "finite"),
    ("--lease", "1e12", f"{MAX_LEASE:.12g}"),
    ("--lease", "1e7", f"{MAX_LEASE:.12g}"),
    ("--lease", "0.1", "minimum"),
    ("--poll", "1e12", f"{MAX_POLL:.12g}"),
    ("--poll", "nan", "finite"),
    ("--poll", "0", "minimum"),
    ("--exit-when-idle", "nan", "finite"),
    ("--exit-when-idle", "-1", "minimum of 0"),
    ("--exit-when-idle", "inf", "finite"),
    ("--max-seconds", "nan", "finite"),
    ("--max-seconds", "-1", "minimum of 0"),
    ("--max-seconds", "inf", "finite"),
    ("--max-seconds", "1e12", f"{MAX_RUN_SECONDS:.12g}"),
    ("--replicas", "-1", "minimum of 1"),
]


ROOT = Path(__file__).resolve().parent.parent


def worker(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`sagalab worker ARGS` in a subprocess: an option that is not refused runs a worker that
    may never stop, so a refusal must come within the timeout."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "sagalab.cli.main", "worker", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker {args} was not refused: still running after 15 s")


@pytest.mark.parametrize(("option", "value", "said"), BAD, ids=[f"{o}={v}" for o, v, _ in BAD])
def test_a_worker_option_out_of_bounds_is_refused_before_anything_starts(
    tmp_path: Path, option: str, value: str, said: str
) -> None:
    db = tmp_path / "s.db"
    result = worker(["--db", str(db), f"{option}={value}"])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert option in lines[0] and said in lines[0], lines[0]
    assert not db.exists()  # refused before the database was opened


def test_options_within_bounds_still_run(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    args = ["worker", "--db", str(db), "--lease", "60", "--poll", "0.05", "--exit-when-idle", "0.2"]
    result = CliRunner().invoke(app, [*args, "--max-seconds", "10"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "wrong"),
    [(["--replicas", "0"], "per CPU"), (["--replicas", "auto", "--min", "-1"], "per CPU")],
    ids=["replicas-0", "min-minus-1"],
)
def test_a_minimum_refusal_gives_no_per_cpu_reason(
    tmp_path: Path, args: list[str], wrong: str
) -> None:
    result = CliRunner().invoke(app, ["worker", "--db", str(tmp_path / "s.db"), *args])
    assert result.exit_code == 2, result.output
    assert "minimum" in result.stderr and wrong not in result.stderr, result.stderr
