"""mypy and ruff stay clean: `pytest -q` (what `.ci/run` runs) fails on a type error, a lint
error or unformatted code.

mypy checks every package with the settings in pyproject.toml, and the core strict; ruff runs
`check` and `format --check` over the repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECKS = [
    pytest.param(["sagalab", "benchmarks"], id="packages"),
    # The same files by folder, as `mypy orchestrator simulator ...` names them: a module
    # whose own class crosses into a sibling must reach it by a relative import, or the two
    # names (simulator.config, sagalab.simulator.config) make two types.
    pytest.param(
        [
            "--cache-dir",
            ".mypy_cache/folders",
            *("cli", "orchestrator", "edge", "simulator", "fakeservices", "loadtests", "stack"),
            "ui",
        ],
        id="folders",
    ),
    # The strict run keeps its own cache: mypy invalidates a module's cache entry when the
    # options differ, so a shared one would be rebuilt on every alternation.
    pytest.param(
        [
            "--strict",
            "--cache-dir",
            ".mypy_cache/strict",
            "sagalab/orchestrator/saga.py",
            "sagalab/orchestrator/driver.py",
            "sagalab/orchestrator/records.py",
            "sagalab/orchestrator/operations.py",
            "sagalab/orchestrator/reconcile.py",
            "sagalab/orchestrator/forkplan.py",
            "sagalab/orchestrator/sagafilter.py",
            "sagalab/orchestrator/policies",
            "sagalab/edge/policies",
            "sagalab/simulator/calibrate.py",
            "sagalab/simulator/explore.py",
            "sagalab/simulator/explore_checks.py",
            "sagalab/simulator/explore_world.py",
            "sagalab/simulator/paired.py",
            "sagalab/simulator/validate.py",
            "sagalab/simulator/metastability.py",
        ],
        id="core-strict",
    ),
]

RUFF = [
    pytest.param(["check", "."], id="check"),
    pytest.param(["format", "--check", "."], id="format"),
]


def run_tool(tool: str, args: list[str], timeout: float) -> None:
    """`python -m TOOL ARGS` from the repository root (so it reads pyproject.toml); exit 0."""
    result = subprocess.run(
        [sys.executable, "-m", tool, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{tool} {' '.join(args)}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("args", CHECKS)
def test_mypy_reports_no_errors(args: list[str]) -> None:
    run_tool("mypy", args, timeout=300)


@pytest.mark.parametrize("args", RUFF)
def test_ruff_reports_nothing(args: list[str]) -> None:
    run_tool("ruff", args, timeout=120)
