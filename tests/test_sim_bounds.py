"""Every numeric setting a scenario holds is bounded: an absurd value (1e12, nan, inf, -1) is
refused before anything is built, naming the setting and its bound, identically by `simulate
run` and `simulate sweep` (issue 8, outside tester's round: `clients.0.keys=1e12` took 2.7 GB,
`orchestrator.concurrency=1e9` 750 MB, a lognormal `sigma` of 1e9 an OverflowError)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagalab.simulator.config import (
    apply_override,
    check_bounds,
    configure,
    list_scenarios,
    load_scenario,
)
from sagalab.simulator.errors import ScenarioError

ROOT = Path(__file__).resolve().parent.parent
ABSURD = ["1e12", "nan", "inf", "-1"]


def numeric_paths(node: Any, path: str = "") -> Iterator[str]:
    """Every `--set` path of a number in `node` (claims are text, not settings)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not path and key == "claims":
                continue
            yield from numeric_paths(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from numeric_paths(value, f"{path}.{i}")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path


CASES = [
    (name, path)
    for name in sorted(list_scenarios())
    for path in sorted(set(numeric_paths(load_scenario(name))))
]


def test_every_scenario_has_numeric_settings_to_check() -> None:
    assert len(CASES) > 8 * 50


@pytest.mark.parametrize(("scenario", "path"), CASES, ids=[f"{s}:{p}" for s, p in CASES])
def test_an_absurd_value_of_any_setting_is_refused_naming_it(scenario: str, path: str) -> None:
    for value in ABSURD:
        config = load_scenario(scenario)
        apply_override(config, f"{path}={value}")
        started = time.monotonic()
        with pytest.raises(ScenarioError) as caught:
            # The flow is read by the orchestrator's own flow rules when the model is built;
            # everything else is refused by the bounds alone, before the model is built.
            if path.startswith("flow."):
                configure(scenario, [f"{path}={value}"])
            else:
                check_bounds(config)
        assert time.monotonic() - started < 2, (path, value)
        message = str(caught.value)
        name = path.rsplit(".", 1)[-1]
        assert name in message or (name.isdigit() and "steps" in message), (value, message)


def test_the_shipped_scenarios_stay_within_the_bounds() -> None:
    for name in list_scenarios():
        configure(name)


def test_a_bound_names_its_limit() -> None:
    config = load_scenario("retry-storm-resilient")
    apply_override(config, "clients.0.keys=1e12")
    with pytest.raises(ScenarioError, match=r"clients\[0\]\.keys.*limit of 100,000"):
        check_bounds(config)


def test_workers_of_all_replicas_are_bounded_together() -> None:
    config = load_scenario("baseline")
    apply_override(config, "orchestrator.replicas=1000")
    apply_override(config, "orchestrator.concurrency=1000")
    with pytest.raises(ScenarioError, match="orchestrator.concurrency"):
        check_bounds(config)


CAPPED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from sagalab.cli.main import app
sys.argv = ["sagalab", *sys.argv[1:]]
app()
"""


def capped(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", CAPPED.format(cap=700 * 1024 * 1024), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    "setting",
    [
        "clients.0.keys=1e12",
        "orchestrator.concurrency=1e9",
        "services.payments.latency.sigma=1e9",
        "clients.0.address_count=1e12",
    ],
)
def test_run_and_sweep_refuse_alike_quickly_and_in_little_memory(
    setting: str, tmp_path: Path
) -> None:
    key, value = setting.split("=")
    started = time.monotonic()
    run = capped(
        ["simulate", "run", "retry-storm-resilient", "--set", setting, "--out", str(tmp_path)]
    )
    sweep = capped(
        [
            "simulate",
            "sweep",
            "retry-storm-resilient",
            "--grid",
            f"{key}={value},1",
            "--out",
            str(tmp_path),
        ]
    )
    assert time.monotonic() - started < 30
    for result in (run, sweep):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    line = [ln for ln in run.stderr.splitlines() if ln.strip()][-1]
    assert key.rsplit(".", 1)[-1] in line and "limit" in line, run.stderr
    assert line in sweep.stderr
