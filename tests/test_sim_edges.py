"""Rough edges of the simulator's inputs (session 20): `--seed` bounded like the scenario's
own `seed`, YAML numbers in exponent form without a dot read as numbers, `balancer.weights`
refused unless the strategy uses them, and `--set` reaching into nested mappings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.simulator.bounds import BOUNDS
from sagalab.simulator.config import configure, load_scenario

runner = CliRunner()
MAX_SEED = int(BOUNDS["seed"].high)


def one_line_exit_2(args: list[str], *fragments: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


SEED_COMMANDS = {
    "run": ["run", "baseline"],
    "sweep-grid": ["sweep", "baseline", "--grid", "gateways.count=2,3"],
    "ramp": ["ramp", "baseline", "--levels", "10,20", "--hold", "2", "--settle", "1"],
    "validate": ["validate", "baseline", "--duration", "2"],
}


@pytest.mark.parametrize("seed", [MAX_SEED + 1, 10**30, -1], ids=["over", "huge", "negative"])
@pytest.mark.parametrize("command", list(SEED_COMMANDS), ids=list(SEED_COMMANDS))
def test_a_seed_out_of_range_is_one_line_exit_2(command: str, seed: int, tmp_path: Path) -> None:
    line = one_line_exit_2(
        [*SEED_COMMANDS[command], "--seed", str(seed), "--out", str(tmp_path)]
        if command != "validate"
        else [*SEED_COMMANDS[command], "--seed", str(seed)],
        "--seed",
    )
    assert f"{MAX_SEED:,}" in line
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_the_largest_seed_is_taken() -> None:
    config = configure("baseline", seed=MAX_SEED, duration=1.0)
    assert config["name"] == "baseline"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("duration: 3e1\n", ("duration",), 30.0),
        ("duration: 1E1\n", ("duration",), 10.0),
        ("drain: 5e+0\n", ("drain",), 5.0),
        ("duration: 1.5e1\n", ("duration",), 15.0),
        (
            "clients:\n  - rate: {kind: constant, value: 2e1}\n",
            ("clients", 0, "rate", "value"),
            20.0,
        ),
        (
            "services:\n  payments:\n    latency: {dist: exponential, mean: 1e-2}\n",
            ("services", "payments", "latency", "mean"),
            0.01,
        ),
    ],
    ids=["duration", "capital-e", "plus-exponent", "with-dot", "rate", "negative-exponent"],
)
def test_a_number_in_exponent_form_without_a_dot_is_a_number(
    tmp_path: Path, text: str, path: tuple[str | int, ...], expected: float
) -> None:
    config = configure(write(tmp_path, "name: t\n" + text))
    node = config
    for part in path:
        node = node[part]
    assert node == expected and isinstance(node, float)


def test_an_exponent_form_number_out_of_bounds_names_the_bound(tmp_path: Path) -> None:
    scenario = write(tmp_path, "name: t\nduration: 1e12\n")
    line = one_line_exit_2(["run", scenario, "--out", str(tmp_path / "out")], "duration")
    assert "over the limit" in line and "must be a number" not in line


def test_text_that_only_looks_like_a_number_stays_text(tmp_path: Path) -> None:
    config = load_scenario(write(tmp_path, "name: 1e3x\n"))
    assert config["name"] == "1e3x"


# -- balancer.weights without weighted_round_robin ----------------------------------------------


@pytest.mark.parametrize("strategy", ["least_connections", "round_robin", "power_of_two"])
def test_weights_without_the_weighted_strategy_are_refused_naming_both_keys(
    tmp_path: Path, strategy: str
) -> None:
    scenario = write(tmp_path, f"name: t\nbalancer: {{strategy: {strategy}, weights: [2, 1, 1]}}\n")
    one_line_exit_2(
        ["run", scenario, "--out", str(tmp_path / "out")],
        "balancer.weights",
        "balancer.strategy",
        "weighted_round_robin",
        strategy,
    )


def test_weights_given_by_set_without_the_strategy_are_refused(tmp_path: Path) -> None:
    one_line_exit_2(
        ["run", "baseline", "--set", "balancer.weights=[2,1,1]", "--out", str(tmp_path)],
        "balancer.weights",
        "balancer.strategy",
    )


def test_weights_with_the_weighted_strategy_are_taken(tmp_path: Path) -> None:
    scenario = write(
        tmp_path, "name: t\nbalancer: {strategy: weighted_round_robin, weights: [2, 1, 1]}\n"
    )
    assert configure(scenario)["balancer"]["weights"] == [2, 1, 1]


def test_the_balancer_refuses_weights_it_would_ignore() -> None:
    from sagalab.edge.policies.balancer import Balancer

    with pytest.raises(ValueError, match="only by the weighted_round_robin strategy"):
        Balancer("least_connections", [2, 1])
    assert Balancer("least_connections", None).weights is None


def test_the_edge_refuses_weight_without_the_weighted_strategy_exit_2() -> None:
    import subprocess
    import sys

    args = [sys.executable, "-m", "sagalab.edge.apps", "edge", "--strategy", "round_robin"]
    args += ["--upstream", "127.0.0.1:1", "--upstream", "127.0.0.1:2"]
    args += ["--weight", "2", "--weight", "1"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "weighted_round_robin" in done.stderr and "Traceback" not in done.stderr


# -- --set into nested mappings ---------------------------------------------------------------


def test_set_reaches_into_a_nested_mapping_that_is_set() -> None:
    config = configure("throttled-outage", ["clients.0.throttle.k=3"])
    assert config["clients"][0]["throttle"] == {"k": 3, "window": 10}


@pytest.mark.parametrize(
    ("sets", "path", "expected"),
    [
        (["clients.0.throttle.k=3"], ("clients", 0, "throttle"), {"k": 3}),
        (
            ["clients.0.throttle.k=3", "clients.0.throttle.window=20"],
            ("clients", 0, "throttle"),
            {"k": 3, "window": 20},
        ),
        (["retry_budget.ratio=0.1"], ("retry_budget",), {"ratio": 0.1}),
        (["clients.0.retry_budget.window=5"], ("clients", 0, "retry_budget"), {"window": 5}),
        (
            [
                "clients.0.rate=null",
                "clients.0.population.users=5",
                "clients.0.population.think.mean=2",
            ],
            ("clients", 0, "population"),
            {"users": 5, "think": {"mean": 2}},
        ),
    ],
    ids=["throttle", "throttle-both", "budget", "client-budget", "population-two-deep"],
)
def test_set_turns_on_a_setting_that_is_off_by_its_keys(
    sets: list[str], path: tuple[str | int, ...], expected: dict[str, object]
) -> None:
    config = configure("baseline", sets, duration=5.0)
    node: object = config
    for part in path:
        node = node[part]  # type: ignore[index]
    assert node == expected


def test_set_into_a_setting_that_is_off_is_the_same_as_the_file(tmp_path: Path) -> None:
    from sagalab.simulator.model import simulate

    scenario = write(
        tmp_path,
        "name: t\nduration: 5\nclients:\n  - {name: legit, throttle: {k: 3, window: 20}}\n",
    )
    by_file = simulate(configure(scenario), seed=3).report
    # The same scenario with the throttle off, turned on again by its keys.
    sets = ["clients.0.throttle=null", "clients.0.throttle.k=3", "clients.0.throttle.window=20"]
    assert simulate(configure(scenario, sets), seed=3).report == by_file


@pytest.mark.parametrize(
    ("assignment", "fragments"),
    [
        ("clients.0.throttle.kk=2", ("clients[0].throttle.kk", "unknown setting", "k, window")),
        ("clients.0.throttle.k=1e12", ("clients[0].throttle.k", "over the limit")),
        ("clients.0.throttle.k=0.5", ("clients[0].throttle.k", "under the minimum")),
        ("clients.0.throttle.k=fast", ("clients[0].throttle", "k must be a number")),
        ("retry_budget.ratio=nan", ("retry_budget", "ratio must be a number")),
        ("clients.0.throtle.k=2", ("clients.0.throtle", "unknown setting")),
        ("gateways.cont.x=2", ("gateways.cont", "unknown setting")),
        ("clients.5.throttle.k=2", ("clients.5", "not in a list of 1")),
    ],
    ids=["unknown-key", "huge", "low", "text", "nan", "misspelt-parent", "misspelt", "index"],
)
def test_set_into_a_nested_mapping_is_bounded_like_the_file(
    assignment: str, fragments: tuple[str, ...], tmp_path: Path
) -> None:
    one_line_exit_2(["run", "baseline", "--set", assignment, "--out", str(tmp_path)], *fragments)
    assert not list(tmp_path.iterdir())
