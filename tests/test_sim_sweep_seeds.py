"""`simulate sweep --metric PATH --seeds K`: any report metric over seeds, with its interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.simulator.config import configure
from sagalab.simulator.model import simulate
from sagalab.simulator.paired import t_interval
from sagalab.simulator.sweep import replicate

runner = CliRunner()
SHORT = ["clients.0.rate.value=20"]


def test_replicate_gives_each_seeds_value_and_the_t_interval() -> None:
    metric = "waiting.services.payments.mean"
    rows = replicate(
        "baseline", [], metric=metric, seeds=3, first_seed=4, sets=SHORT, duration=6, workers=1
    )
    assert len(rows) == 1
    row = rows[0]
    # The values are those of plain runs with seeds 4, 5, 6.
    expected = []
    for seed in (4, 5, 6):
        report = simulate(configure("baseline", SHORT, seed=seed, duration=6), seed=seed).report
        expected.append(report["waiting"]["services"]["payments"]["mean"])
    assert row["values"] == expected
    mean, low, high = t_interval(expected)
    assert (row["mean"], row["low"], row["high"]) == (
        round(mean, 6),
        round(low, 6),
        round(high, 6),
    )
    assert row["measured"] == 3 and row["metric"] == metric and low <= mean <= high


def test_cli_replicates_a_metric_per_grid_value(tmp_path: Path) -> None:
    args = ["sweep", "baseline", "--metric", "latency.end_to_end.p95", "--seeds", "2"]
    args += ["--grid", "services.payments.concurrency=2,32", "--duration", "5", "--json"]
    args += ["--workers", "1", "--out", str(tmp_path), "--set", SHORT[0]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["services.payments.concurrency"] for r in rows] == [2, 32]
    assert all(r["seeds"] == 2 and len(r["values"]) == 2 for r in rows)
    # Two servers instead of 32: a longer tail.
    assert rows[0]["mean"] > rows[1]["mean"]
    assert (
        (tmp_path / "sweep-baseline-seeds.csv")
        .read_text()
        .startswith("services.payments.concurrency,metric,seeds")
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--seeds", "1"], "--seeds: must be 2 to 100"),
        (["--seeds", "101"], "--seeds: must be 2 to 100"),
        (["--metric", "latency.nope"], "--metric latency.nope: the report has no metric"),
        (["--metric", "window(0, end).nope"], "time series has no column 'nope'"),
        (["--metric", "scenario.name"], "is not a number"),
        (["--seeds", "50", "--grid", "seed=" + ",".join(map(str, range(21)))], "1,050 runs"),
        (["--seeds", "3", "--seed", str(2**32 - 2)], "--seed: must be 0 to"),
        ([], "sweep needs --grid, or --metric/--seeds"),
    ],
    ids=["one-seed", "too-many", "no-metric", "no-column", "not-a-number", "runs", "seed", "none"],
)
def test_bad_replication_is_one_line_exit_2(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "baseline", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines
    assert not (tmp_path / "sweep-baseline-seeds.csv").exists()
