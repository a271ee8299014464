"""`stack up` options: the restart delay has a floor (0 removed all backoff) and agrees with
the README's 30 s cap, the flood rate has a ceiling, and --help names every bound and every
strategy the balancer takes (issue 8, outside tester's round). Checked through `validate`,
which is what `stack up` runs before it starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.edge.policies.balancer import Strategy
from sagalab.orchestrator.limits import MAX_FLOOD_RATE
from sagalab.stack.checks import StackOptionError, validate
from sagalab.stack.processes import StackConfig
from sagalab.stack.supervisor import MAX_RESTART_DELAY, MIN_RESTART_DELAY

README = Path(__file__).resolve().parent.parent / "README.md"


def config(tmp_path: Path, **changes: object) -> StackConfig:
    return StackConfig(directory=tmp_path / "stack", edge_port=0, workers=0, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        (
            {"restart_delay": 0.0},
            f"--restart-delay 0 is under the minimum of {MIN_RESTART_DELAY:g}",
        ),
        ({"restart_delay": 45.0}, f"--restart-delay 45 is over the limit of {MAX_RESTART_DELAY:g}"),
        ({"flood_rate": 1e308}, f"--flood-rate 1e+308 is over the limit of {MAX_FLOOD_RATE:g}"),
        ({"ui_port": 70000}, "--ui-port 70000 is over the limit of 65535"),
    ],
    ids=["restart-delay-0", "restart-delay-over-cap", "flood-rate-huge", "ui-port"],
)
def test_up_refuses_an_option_outside_its_bound(
    tmp_path: Path, changes: dict[str, object], fragment: str
) -> None:
    with pytest.raises(StackOptionError) as caught:
        validate(config(tmp_path, **changes))
    assert fragment in str(caught.value)


def test_up_takes_a_flood_rate_of_0_as_off_and_hands_it_to_the_edge(tmp_path: Path) -> None:
    c = config(tmp_path, flood_rate=0.0)
    validate(c)  # as `python -m sagalab.edge.apps edge --flood-rate 0` takes it: off
    assert not (tmp_path / "stack").exists(), "validating created nothing"


def test_the_restart_floor_and_cap_are_sane_and_the_readme_says_them() -> None:
    assert 0 < MIN_RESTART_DELAY <= 0.5 <= MAX_RESTART_DELAY
    text = " ".join(README.read_text().split())
    assert f"from {MIN_RESTART_DELAY:g} s" in text and f"up to {MAX_RESTART_DELAY:g} s" in text


def test_up_help_names_every_strategy_and_bound() -> None:
    result = CliRunner().invoke(app, ["stack", "up", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for strategy in Strategy:
        assert strategy.value in text, strategy
    assert f"{MIN_RESTART_DELAY:g} to {MAX_RESTART_DELAY:g}" in text
    assert f"at most {MAX_FLOOD_RATE:g}" in text


def test_simulate_duration_help_names_its_bound() -> None:
    from sagalab.orchestrator.limits import MAX_SIM_DURATION

    result = CliRunner().invoke(app, ["simulate", "run", "--help"], env={"COLUMNS": "300"})
    assert f"at most {MAX_SIM_DURATION:g}" in " ".join(result.stdout.split())
