"""`simulate compare`: paired intervals over seeds, a scenario against itself, a variant that
changes something, and one-line refusals of bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.simulator.compare import compare, headline
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.paired import paired_difference, t_quantile_975

runner = CliRunner()


def test_paired_interval_matches_a_hand_computation() -> None:
    """Differences 2, 3, 4: mean 3, sd 1, half-width t(0.975, 2) / sqrt(3) = 2.484."""
    d = paired_difference([10.0, 10.0, 10.0], [12.0, 13.0, 14.0])
    half = 4.302653 / math.sqrt(3)
    assert d.difference == pytest.approx(3.0)
    assert (d.low, d.high) == pytest.approx((3.0 - half, 3.0 + half))
    assert d.significant
    assert (d.base, d.variant) == pytest.approx((10.0, 13.0))


def test_noise_around_zero_is_not_significant() -> None:
    d = paired_difference([1.0, 2.0, 3.0, 4.0], [1.5, 1.5, 3.5, 3.5])
    assert d.low < 0 < d.high and not d.significant


def test_identical_runs_give_a_zero_interval() -> None:
    d = paired_difference([1.0, 2.0], [1.0, 2.0])
    assert (d.low, d.difference, d.high) == (0.0, 0.0, 0.0) and not d.significant


@pytest.mark.parametrize(
    ("df", "expected"), [(1, 12.7062), (10, 2.2281), (30, 2.0423), (31, 2.0395), (99, 1.9842)]
)
def test_t_quantile(df: int, expected: float) -> None:
    assert t_quantile_975(df) == pytest.approx(expected, abs=1e-4)


def test_under_two_seeds_is_refused() -> None:
    with pytest.raises(ValueError, match="at least two"):
        paired_difference([1.0], [2.0])


def test_a_scenario_against_itself_differs_in_nothing() -> None:
    """Same seeds, same model: every difference is exactly 0 and none is significant."""
    result = compare("baseline", "baseline", seeds=3, duration=6, workers=1)
    assert result["seeds"] == [1, 2, 3]
    figures = result["figures"]
    assert {"e2e_p50", "e2e_p95", "throughput", "completed_share", "calls.payments"} <= set(figures)
    for name, f in figures.items():
        assert f["low"] <= 0 <= f["high"], name
        assert not f["significant"], name
    # Different seeds give different runs: the zero is the pairing, not a constant model.
    assert len(set(figures["e2e_p95"]["base_runs"])) == 3


def test_same_seeds_same_comparison() -> None:
    first = compare("baseline", "payments-outage", seeds=2, duration=25, workers=1)
    again = compare("baseline", "payments-outage", seeds=2, duration=25, workers=1)
    assert first == again
    # A payments outage (20 s to 40 s) rolls sagas back and opens the breaker: significant.
    figures = first["figures"]
    assert figures["rolled_back_share"]["significant"]
    assert figures["rolled_back_share"]["difference"] > 0
    assert figures["breaker_open_seconds"]["low"] > 0


def test_headline_reads_every_figure_from_a_report() -> None:
    report = {
        "duration": 10.0,
        "sagas": {"created": 100, "completed": 90, "rolled_back": 8},
        "latency": {"end_to_end": {"p50": 0.1, "p95": 0.3}},
        "queue": {"peak_depth": 7},
        "services": {"payments": {"calls": 120}},
    }
    series = [{"t": 1.0, "breaker_payments": 0.0}, {"t": 2.0, "breaker_payments": 1.0}]
    assert headline(report, series) == {
        "e2e_p50": 0.1,
        "e2e_p95": 0.3,
        "throughput": 9.0,
        "completed_share": 0.9,
        "rolled_back_share": 0.08,
        "breaker_open_seconds": 1.0,
        "peak_queue_depth": 7,
        "calls.payments": 120,
    }


def test_cli_json_and_table() -> None:
    args = ["compare", "baseline", "baseline", "--seeds", "2", "--duration", "4", "--workers", "1"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["seeds"] == [1, 2] and not out["figures"]["e2e_p95"]["significant"]
    table = runner.invoke(app, args)
    assert table.exit_code == 0
    assert "e2e_p95" in table.stdout and "[0, 0]" in table.stdout
    # No row is marked significant (a marked row starts with its `*`).
    assert not any(line.strip().startswith("*") for line in table.stdout.splitlines())


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("a: [", [], "malformed YAML"),
        ("duration: -1", [], "duration"),
        ("services: {payments: {concurrency: 0}}", [], "services.payments.concurrency"),
        ("name: ok", ["--seeds", "1"], "--seeds"),
        ("name: ok", ["--seeds", "101"], "--seeds"),
    ],
    ids=["malformed", "negative-duration", "bad-value", "one-seed", "too-many-seeds"],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, content: str, extra: list[str], message: str
) -> None:
    path = tmp_path / "variant.yaml"
    path.write_text(content)
    result = runner.invoke(app, ["compare", "baseline", str(path), *extra])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_missing_file_is_refused_before_anything_runs() -> None:
    with pytest.raises(ScenarioError):
        compare("baseline", "baseline", seeds=0)
    result = runner.invoke(app, ["compare", "no-such.yaml", "baseline"])
    assert result.exit_code == 2 and "no scenario" in result.stderr


def test_variant_set_compares_a_scenario_with_a_changed_copy() -> None:
    """One replica of 4 workers against two: sagas queue less with two, significantly."""
    sets = ["orchestrator.replicas=1", "orchestrator.concurrency=4"]
    result = compare(
        "baseline",
        "baseline",
        seeds=3,
        duration=8,
        workers=1,
        sets=sets,
        variant_sets=["orchestrator.replicas=2"],
    )
    assert result["variant_sets"] == ["orchestrator.replicas=2"]
    p95 = result["figures"]["e2e_p95"]
    assert p95["significant"] and p95["high"] < 0
    bad = runner.invoke(app, ["compare", "baseline", "baseline", "--variant-set", "nope=1"])
    assert bad.exit_code == 2 and "nope" in bad.stderr
