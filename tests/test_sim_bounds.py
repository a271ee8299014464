"""Every numeric setting a scenario holds is bounded: an absurd value (1e12, nan, inf, -1) is
refused before anything is built, naming the setting and its bound, identically by `simulate
run` and `simulate sweep` (issue 8, outside tester's round: `clients.0.keys=1e12` took 2.7 GB,
`orchestrator.concurrency=1e9` 750 MB, a lognormal `sigma` of 1e9 an OverflowError)."""

from __future__ import annotations

import copy
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagalab.orchestrator.limits import MAX_SIM_EVENTS, MAX_SIM_REQUESTS
from sagalab.simulator.bounds import estimate_events
from sagalab.simulator.config import (
    apply_override,
    check_bounds,
    configure,
    list_scenarios,
    load_scenario,
    validate,
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


# Each scenario parsed once: a case works on a deep copy (parsing the YAML again for each of the
# ~1,400 cases and 4 values was nine tenths of this file's CPU; the bounds are what is tested).
LOADED = {name: load_scenario(name) for name in sorted(list_scenarios())}
CASES = [
    (name, path) for name, config in LOADED.items() for path in sorted(set(numeric_paths(config)))
]


def test_every_scenario_has_numeric_settings_to_check() -> None:
    assert len(CASES) > 8 * 50


@pytest.mark.parametrize(("scenario", "path"), CASES, ids=[f"{s}:{p}" for s, p in CASES])
def test_an_absurd_value_of_any_setting_is_refused_naming_it(scenario: str, path: str) -> None:
    for value in ABSURD:
        config = copy.deepcopy(LOADED[scenario])
        apply_override(config, f"{path}={value}")
        started = time.process_time()  # CPU: a loaded machine does not stretch it
        with pytest.raises(ScenarioError) as caught:
            # The flow is read by the orchestrator's own flow rules when the model is built;
            # everything else is refused by the bounds alone, before the model is built.
            if path.startswith("flow."):
                validate(config)  # what configure(scenario, [f"{path}={value}"]) does last
            else:
                check_bounds(config)
        assert time.process_time() - started < 2, (path, value)
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


def test_a_run_of_hours_is_refused_with_its_estimate_and_the_bound() -> None:
    # Every number within its own bound, the requests too (3.5 million), but a thousand
    # gateways health-checked every 10 ms for a simulated day is 8.6e9 checks: about 20 hours.
    config = load_scenario("baseline")
    for setting in ("duration=86400", "gateways.count=1000", "balancer.health.interval=0.01"):
        apply_override(config, setting)
    started = time.process_time()  # CPU: a loaded machine does not stretch it
    with pytest.raises(ScenarioError) as caught:
        check_bounds(config)
    assert time.process_time() - started < 2
    message = str(caught.value)
    assert "about 8.7e+09 simulated events" in message
    assert "3,456,000 requests x 12 hops" in message
    assert "about 20.1 hours" in message
    assert f"over the limit of {MAX_SIM_EVENTS:,} per run" in message


def test_a_long_flow_at_a_rate_the_request_bound_allows_is_refused() -> None:
    # 4 million requests (under MAX_SIM_REQUESTS) of a 40-step flow: 84 events each.
    requests = 4_000_000.0
    assert requests < MAX_SIM_REQUESTS
    common = {
        "span": 86_400.0,
        "client_groups": 1,
        "interval": 1.0,
        "gateways": 3,
        "health_interval": 1.0,
        "autoscale_interval": None,
    }
    long = estimate_events(requests=requests, steps=40, **common)
    assert long.hops == 84 and long.events > MAX_SIM_EVENTS
    refusal = long.refusal()
    assert refusal is not None and "4,000,000 requests x 84 hops" in refusal
    assert "about 47 minutes" in refusal
    # The shipped four-step flow at that rate stays within the bound.
    assert estimate_events(requests=requests, steps=4, **common).refusal() is None


def test_the_estimate_is_near_what_a_run_schedules() -> None:
    # The estimate is only useful if it is about right: count the events SimPy processes
    # in 20 s of `baseline` (its public `step`, wrapped) against the estimate's.
    from sagalab.simulator.model import Simulation

    config = load_scenario("baseline")
    sim = Simulation(config, seed=1, duration=20.0)
    steps = 0
    step = sim.env.step

    def counted() -> None:
        nonlocal steps
        steps += 1
        step()

    sim.env.step = counted  # type: ignore[method-assign]
    report = sim.run().report
    estimate = estimate_events(
        requests=report["requests"]["legit"]["offered"],
        span=20.0,
        steps=len(config["flow"]["steps"]),
        client_groups=len(config["clients"]),
        interval=config["interval"],
        gateways=config["gateways"]["count"],
        health_interval=config["balancer"]["health"]["interval"],
        autoscale_interval=None,
    )
    assert 0.5 * steps < estimate.events < 2 * steps, (steps, estimate)


CAPPED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
from sagalab.cli.main import app
sys.argv = ["sagalab", *sys.argv[1:]]
app()
"""


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's children that have ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    # Quickly in CPU time, which a loaded machine does not stretch as it does the wall clock
    # (56 s for these two starts at load 14 in a parallel run); a run that went ahead would
    # spend its 60 s timeout computing.
    started = children_cpu()
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
    assert children_cpu() - started < 20
    for result in (run, sweep):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    line = [ln for ln in run.stderr.splitlines() if ln.strip()][-1]
    assert key.rsplit(".", 1)[-1] in line and "limit" in line, run.stderr
    assert line in sweep.stderr
