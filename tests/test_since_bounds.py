"""`--since` past what a date can hold is bad input, exit 2 in one line (issue 13, outside
attacker's round: `simulate calibrate --since 99999999999h` found its sagas, then died with
"ValueError: year -11405919 is out of range", a traceback and exit 1, when it printed the
window)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from workerlab import enqueue, order

from sagalab.cli.verify import parse_since

REPO = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0


@pytest.mark.parametrize("text", ["99999999999h", "9" * 400 + "d", "1" + "0" * 30, "9" * 400])
def test_parse_since_refuses_a_time_no_date_holds(text: str) -> None:
    with pytest.raises(ValueError, match="is not a time"):
        parse_since(text, now=NOW)


@pytest.mark.parametrize("text", ["90s", "2h", "1d", "0", "2026-11-25T18:00:00"])
def test_parse_since_keeps_ordinary_times(text: str) -> None:
    assert parse_since(text, now=NOW) <= NOW


def test_calibrate_refuses_an_absurd_since(tmp_path: Path) -> None:
    enqueue(tmp_path / "sagas.db", [order(1)])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "simulate",
            "calibrate",
            "--db",
            str(tmp_path / "sagas.db"),
            "--since",
            "99999999999h",
            "--out",
            str(tmp_path / "s.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "--since" in done.stderr
    assert not (tmp_path / "s.yaml").exists()
