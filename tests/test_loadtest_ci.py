"""The CI load test: a short Locust run against a stack it starts, with the `ci` thresholds."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sagalab.loadtests.thresholds import PROFILES, evaluate

HAS_WORKER = (Path(__file__).parent.parent / "orchestrator" / "worker.py").exists()
HAS_LOCUST = importlib.util.find_spec("locust") is not None

GOOD = {
    "legit_requests": 100.0, "legit_failure_ratio": 0.0, "legit_p95_ms": 50.0,
    "sagas_submitted": 40.0, "terminal_share": 1.0, "flood_requests": 10.0,
    "flood_not_blocked": 0.0, "ratelimit_requests": 10.0, "ratelimit_429": 3.0,
    "ratelimit_errors": 0.0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "broken"),
    [
        ({}, 0),
        ({"legit_failure_ratio": 0.5}, 1),
        ({"legit_p95_ms": 99_999.0}, 1),
        ({"terminal_share": 0.5}, 1),
        ({"flood_not_blocked": 1.0}, 1),
        ({"ratelimit_429": 0.0}, 1),
        ({"ratelimit_errors": 2.0}, 1),
    ],
    ids=[
        "passes",
        "failures",
        "latency",
        "stuck-sagas",
        "flood-through",
        "never-limited",
        "limit-errors",
    ],
)
def test_thresholds(change: dict[str, float], broken: int) -> None:
    assert len(evaluate(PROFILES["ci"], {**GOOD, **change})) == broken


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WORKER, reason="needs orchestrator/worker.py (issue 3)")
@pytest.mark.skipif(not HAS_LOCUST, reason="needs locust (pip install -e '.[test]')")
def test_short_load_test_passes_its_thresholds(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    run = subprocess.run(
        [
            sys.executable, "-m", "sagalab.cli.main", "loadtest", "--profile", "ci",
            "--duration", "30", "--dir", str(tmp_path / "stack"), "--reports", str(reports),
        ],
        capture_output=True, text=True, timeout=150, check=False,
    )  # fmt: skip
    summary = json.loads((reports / "summary.json").read_text())
    assert run.returncode == 0, (summary["broken"], run.stdout[-3000:], run.stderr[-3000:])
    assert summary["measured"]["sagas_submitted"] > 20
    # and `sagalab verify` found every saga of the run done or undone by the services' ledgers
    assert "verify: every saga done or undone" in run.stderr, run.stderr[-3000:]
    assert summary["measured"]["flood_requests"] > 0
    assert summary["measured"]["ratelimit_429"] > 0
    assert (reports / "loadtest.html").exists()
    assert (reports / "loadtest_stats.csv").exists()
    assert not (tmp_path / "stack" / "stack.json").exists()  # the stack it started is gone
