"""What `simulate` writes is whole or absent (issue 13, outside attacker's round: on a full
disk `simulate run` left a report JSON cut at 8 KB under its final name, and `simulate
sweep --out` into a path that cannot be a directory ended in a traceback). A real
RLIMIT_FSIZE in a subprocess stands in for the full disk: a write past it fails with EFBIG."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagalab.simulator.output import write_atomic

REPO = Path(__file__).resolve().parent.parent

CAPPED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, ({cap}, {cap}))
from sagalab.cli.main import app
sys.argv = ["sagalab", *sys.argv[1:]]
app()
"""


def capped(cap: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CAPPED.format(cap=cap), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )


def test_run_on_a_full_disk_leaves_no_cut_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = capped(4096, "simulate", "run", "payments-outage", "--duration", "5", "--out", str(out))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot write" in done.stderr and "Traceback" not in done.stderr
    assert list(out.iterdir()) == []  # no cut JSON, no stray temporary file


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """What calibrate's `--out --force` relies on: a write that fails half way (a full disk)
    leaves the previous file as it was, not a cut scenario that still parses as YAML."""
    target = tmp_path / "s.yaml"
    target.write_text("name: kept\n", encoding="utf-8")

    def half(tmp: Path) -> None:
        tmp.write_text("name: cut", encoding="utf-8")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(target, half)
    assert target.read_text(encoding="utf-8") == "name: kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
    write_atomic(target, lambda tmp: tmp.write_text("name: new\n", encoding="utf-8"))
    assert target.read_text(encoding="utf-8") == "name: new\n"


def test_sweep_into_a_path_that_cannot_be_a_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "simulate",
            "sweep",
            "baseline",
            "--grid",
            "duration=1",
            "--workers",
            "1",
            "--out",
            str(tmp_path / "file" / "sub"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot write" in done.stderr and "Traceback" not in done.stderr
