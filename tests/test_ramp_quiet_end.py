"""A ramp whose run has nothing left to drain at its last level's end (a low load) still
reports every level (issue 13, outside attacker's round: `simulate ramp baseline --levels 1,2
--hold 5 --settle 1` died with an IndexError traceback, exit 1: SimPy stops ahead of the
counters' mark due at the run's end, so the last level had no closing mark)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sagalab.simulator.ramp import ramp

REPO = Path(__file__).resolve().parent.parent


def test_a_quiet_ramp_reports_every_level() -> None:
    result = ramp("baseline", [1, 2], hold=5, settle=1, seed=1)
    assert [(s["direction"], s["rate"]) for s in result["stages"]] == [
        ("up", 1.0),
        ("up", 2.0),
        ("down", 1.0),
    ]
    for stage in result["stages"]:
        assert stage["amplification_payments"] >= 0


def test_the_cli_ramp_at_a_low_load_exits_0(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "simulate",
            "ramp",
            "baseline",
            "--levels",
            "1,2",
            "--hold",
            "2",
            "--settle",
            "1",
            "--out",
            str(tmp_path),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "ramp-baseline.csv").is_file()
