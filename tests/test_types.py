"""mypy stays clean: every package with the settings in pyproject.toml, and the core strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECKS = [
    pytest.param(
        ["cli", "orchestrator", "edge", "simulator", "fakeservices", "loadtests"], id="packages"
    ),
    # The strict run keeps its own cache: mypy invalidates a module's cache entry when the
    # options differ, so a shared one would be rebuilt on every alternation.
    pytest.param(
        [
            "--strict",
            "--cache-dir",
            ".mypy_cache/strict",
            "orchestrator/saga.py",
            "orchestrator/operator.py",
            "orchestrator/policies",
        ],
        id="core-strict",
    ),
]


@pytest.mark.parametrize("args", CHECKS)
def test_mypy_reports_no_errors(args: list[str]) -> None:
    # Run from the repository root so mypy reads [tool.mypy] in pyproject.toml.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mypy {' '.join(args)}:\n{result.stdout}{result.stderr}"
