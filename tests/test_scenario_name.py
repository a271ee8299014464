"""A scenario's name is the stem of the files `simulate run` writes, so it may not leave
`--out` (issue 13, outside attacker's round: `name: ../pwn` wrote pwn-seed1.json/.csv/.png
beside `--out`, and `name: ""` wrote `-seed1.json`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sagalab.simulator.config import load_scenario, merge_defaults, validate
from sagalab.simulator.errors import ScenarioError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "name", ["../pwn", "a/b", "a\\b", "", "   ", "x" * 101, "tab\there", 5, None]
)
def test_a_name_that_is_no_file_name_is_refused(name: object) -> None:
    with pytest.raises(ScenarioError, match="^name"):
        validate(merge_defaults({"name": name, "duration": 1}))


def test_ordinary_names_pass() -> None:
    validate(load_scenario("baseline") | {"name": "my scenario (v2), 10x.load"})


def test_run_writes_nothing_outside_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: ../pwn\nduration: 1\n", encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "simulate",
            "run",
            str(scenario),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().startswith("error: name") and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.yaml"]
    assert list(out.iterdir()) == []
