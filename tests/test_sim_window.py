"""Warm-up and measurement windows, per-tier waiting, the drain of every tier, and removing a
default service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.simulator.config import configure
from sagalab.simulator.defaults import DEFAULT_FLOW
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.model import simulate
from sagalab.simulator.paired import t_interval
from sagalab.simulator.queueing import erlang_c, mmc_wait

runner = CliRunner()
SHORT = ["duration=20", "clients.0.rate.value=20"]


def _run(*sets: str) -> dict:
    return simulate(configure("baseline", [*SHORT, *sets])).report


def test_no_window_by_default_and_the_figures_cover_every_arrival() -> None:
    report = _run()
    assert "window" not in report
    s = report["sagas"]
    assert (
        report["latency"]["end_to_end"]["count"] == s["completed"] + s["rolled_back"] + s["failed"]
    )


def test_warmup_leaves_early_arrivals_out_of_latency_and_throughput() -> None:
    whole = _run()
    report = _run("warmup=10")
    window = report["window"]
    assert (window["start"], window["end"]) == (10.0, 20.0)
    assert "latency.end_to_end" in window["covers"]
    e2e = report["latency"]["end_to_end"]["count"]
    measured = window["sagas"]
    assert e2e == measured["completed"] + measured["rolled_back"] + measured["failed"]
    # About half the arrivals, and the totals (and invariants) still count every saga.
    assert 0.35 * whole["latency"]["end_to_end"]["count"] < e2e < 0.65 * whole["sagas"]["created"]
    assert report["sagas"] == whole["sagas"] and report["invariants_failed"] == 0
    assert report["latency"]["submit"]["count"] < whole["latency"]["submit"]["count"]
    assert window["throughput"] == pytest.approx(measured["completed"] / 10, rel=1e-6)


def test_measure_window_and_claims_read_the_windowed_figures() -> None:
    claim = "claims=[{text: p95, check: 'latency.end_to_end.p95 < 5'}]"
    report = _run("measure={start: 5, end: 10}", claim)
    assert (report["window"]["start"], report["window"]["end"]) == (5.0, 10.0)
    count = report["latency"]["end_to_end"]["count"]
    assert 50 <= count <= 150  # 5 s of arrivals at 20/s
    assert report["claims"][0]["ok"] and report["claims"][0]["value"] > 0


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["warmup=20"], "warmup: must be shorter than the run (20 s)"),
        (["warmup=-1"], "warmup: -1 is under the minimum of 0"),
        (["warmup=2", "measure={start: 5, end: 10}"], "measure: give warmup or measure, not both"),
        (["measure={start: 5, end: 5}"], "measure.end: must be after measure.start"),
        (["measure={start: 30, end: 40}"], "measure.start: must be before the run ends"),
        (["measure={begin: 3}"], "measure.begin: unknown setting; known here: end, start"),
    ],
    ids=["warmup-too-long", "warmup-negative", "both", "empty", "after-run", "typo"],
)
def test_a_bad_window_is_one_line_exit_2(sets: list[str], fragment: str, tmp_path: Path) -> None:
    args = ["run", "baseline", "--out", str(tmp_path)]
    for item in [*SHORT, *sets]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines


def test_waiting_is_reported_for_every_tier_that_queues() -> None:
    report = _run("services.payments.concurrency=2", "database.enabled=true")
    waiting = report["waiting"]
    assert {"firewall", "gateway-0", "gateway-1", "gateway-2", "queue"} <= set(waiting)
    assert set(waiting["services"]) == set(report["services"])
    assert set(waiting["database"]) == {"write", "read"}
    payments = waiting["services"]["payments"]
    # Two servers at ~20 calls/s of ~50 ms: most calls queue, and waits are above zero.
    assert 0.2 < payments["probability"] <= 1
    assert payments["mean"] > 0 and payments["p95"] > payments["p50"] >= 0
    assert payments["started"] == report["services"]["payments"]["calls"] - (
        report["services"]["payments"]["in_progress"] + report["services"]["payments"]["refused"]
    )
    assert waiting["services"]["inventory"]["probability"] < payments["probability"]


# Payments 80 times slower for the first 3 s: calls time out (2 s) while their jobs run on.
SLOW_PAYMENTS = [
    "duration=5",
    "faults=[{service: payments, kind: slowdown, start: 0, end: 3, factor: 80}]",
]


def test_drain_waits_for_work_whose_caller_gave_up() -> None:
    # Every saga has ended by t = 6 s (where the drain used to stop) with jobs still running.
    report = simulate(configure("baseline", [*SLOW_PAYMENTS, "drain=60"])).report
    assert report["services"]["payments"]["wasted"] > 0 and report["simulated_until"] > 6
    assert report["drain"]["complete"] == 1 and report["drain"]["left_over"] == {}
    assert all(v["present_at_end"] == 0 for v in report["little"].values())


def test_a_drain_cut_short_says_what_was_left_per_tier() -> None:
    report = simulate(configure("baseline", [*SLOW_PAYMENTS, "drain=1"])).report
    drain = report["drain"]
    assert drain["complete"] == 0 and drain["seconds"] == pytest.approx(1.0)
    assert report["sagas"]["unfinished"] == 0  # the sagas are done; their work is not
    left = drain["left_over"]
    assert left["service.payments"] > 0
    assert left["service.payments"] == report["little"]["service.payments"]["present_at_end"]


def test_a_default_service_no_step_uses_can_be_removed(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    steps = [s for s in DEFAULT_FLOW["steps"] if s["name"] != "notify"]
    text: dict[str, Any] = {"duration": 10, "services": {"notifications": None}}
    text["flow"] = {**DEFAULT_FLOW, "steps": steps}
    path.write_text(yaml.safe_dump(text))
    report = simulate(configure(str(path))).report
    assert "notifications" not in report["services"]
    assert "notifications" not in report["waiting"]["services"]
    assert report["invariants_failed"] == 0 and report["sagas"]["completed"] > 0


def test_removing_a_service_a_step_calls_is_refused_naming_the_step(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("services:\n  shipping: null\n")
    with pytest.raises(ScenarioError) as info:
        configure(str(path))
    assert str(info.value) == (
        "services.shipping: cannot be removed: flow step 'ship' calls it; keep the service or "
        "change the step"
    )
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "flow step 'ship'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


MM4 = """
name: mm4-payments
duration: 200
clients:
  - name: customers
    rate: {kind: constant, value: 30}
    retry: false
services:
  inventory: null
  shipping: null
  notifications: null
  payments:
    latency: {dist: exponential, mean: 0.1}
    concurrency: 4
    error_rate: 0
    reject_rate: 0
flow:
  name: charge-only
  version: 1
  steps:
    - {name: charge, service: payments, action: {method: POST, path: /charges}, timeout: 60}
"""


def test_the_whole_models_waiting_on_an_mmc_tier_matches_erlang_c(tmp_path: Path) -> None:
    # Poisson arrivals reach payments through tiers that hardly queue, so payments is M/M/4
    # at a = 3 Erlangs: the report's own figures, over five seeds, against Erlang C.
    path = tmp_path / "mm4.yaml"
    path.write_text(MM4)
    config = configure(str(path))
    runs = [
        simulate(config, seed=seed).report["waiting"]["services"]["payments"]
        for seed in range(1, 6)
    ]
    _, low, high = t_interval([r["probability"] for r in runs])
    assert low <= erlang_c(4, 3.0) <= high, (low, high)
    _, low, high = t_interval([r["mean"] for r in runs])
    assert low <= mmc_wait(30.0, 10.0, 4) <= high, (low, high)


def test_the_summary_shows_the_window_the_waits_and_the_drain(tmp_path: Path) -> None:
    args = ["run", "baseline", "--out", str(tmp_path)]
    for item in [*SHORT, "services.payments.concurrency=2", "warmup=5"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), result.output
    out = result.stdout
    assert "arrivals from 5 s to 20 s only" in out
    assert "Waiting before service" in out and "service payments" in out
    assert "every tier empty" in out
