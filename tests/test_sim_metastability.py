"""Metastability as output: amplification and time to recover, on hand-made series and in
the shipped retry-storm scenarios."""

from __future__ import annotations

import pytest

from sagalab.simulator.config import load_scenario
from sagalab.simulator.metastability import (
    RecoveryRule,
    amplification,
    baseline,
    rolling_mean,
    time_to_recover,
)
from sagalab.simulator.model import simulate

TIMES = [float(t) for t in range(1, 31)]
GOODPUT = RecoveryRule()


def _recover(values: list[float], rule: RecoveryRule = GOODPUT) -> float | None:
    return time_to_recover(
        TIMES, values, fault_end=10.0, level=100.0, until=30.0, interval=1.0, rule=rule
    )


def test_amplification_is_calls_per_useful_call() -> None:
    assert amplification(30, 10) == 3.0
    assert amplification(10, 10) == 1.0
    assert amplification(0, 0) == 0.0  # nothing reached the service: no factor to speak of


def test_rolling_mean_is_trailing_and_shorter_at_the_start() -> None:
    assert rolling_mean([2, 4, 6, 8], 2) == [2.0, 3.0, 5.0, 7.0]
    assert rolling_mean([1, 2, 3], 5) == [1.0, 1.5, 2.0]
    with pytest.raises(ValueError):
        rolling_mean([1.0], 0)


def test_baseline_reads_the_window_and_refuses_an_empty_one() -> None:
    assert baseline(TIMES, TIMES, 2.0, 5.0) == 4.0  # samples 3, 4, 5
    with pytest.raises(ValueError):
        baseline(TIMES, TIMES, 40.0, 50.0)


def test_healthy_at_once_recovers_in_zero_seconds() -> None:
    assert _recover([100.0] * 30) == 0.0


def test_recovery_starts_where_the_healthy_stretch_starts() -> None:
    # Down until t=14 (the sample at 14 covers 13..14), healthy from the sample at 15 on.
    values = [0.0 if t <= 14 else 95.0 for t in TIMES]
    assert _recover(values) == 4.0  # the stretch starts at 14, four seconds after 10


def test_a_blip_restarts_the_hold() -> None:
    values = [100.0] * 30
    values[12] = 10.0  # t=13: healthy 10..12 (too short), then from 13 on
    assert _recover(values) == 3.0


def test_never_back_is_did_not_recover() -> None:
    assert _recover([50.0] * 30) is None


def test_a_stretch_cut_by_the_end_of_the_run_does_not_count() -> None:
    values = [0.0 if t <= 27 else 100.0 for t in TIMES]  # healthy for the last 3 s only
    assert _recover(values) is None


def test_overshoot_is_healthy_for_goodput_but_not_for_latency() -> None:
    high = [150.0] * 30
    assert _recover(high) == 0.0
    assert _recover(high, RecoveryRule(higher_is_better=False)) is None
    assert _recover([105.0] * 30, RecoveryRule(higher_is_better=False)) == 0.0


def test_retry_storm_outlives_its_trigger_and_the_resilient_variant_recovers() -> None:
    storm = simulate(load_scenario("retry-storm"), duration=40).report["metastability"]
    calm = simulate(load_scenario("retry-storm-resilient"), duration=40).report["metastability"]
    assert storm["recovery"]["recovered"] == 0 and storm["recovery"]["time_to_recover"] is None
    assert storm["amplification"]["payments"]["factor"] > 5
    assert calm["recovery"]["recovered"] == 1
    assert calm["recovery"]["time_to_recover"] < 15
    # Three attempts per operation at most (its retry policy): the factor cannot pass 3.
    assert 1.0 <= calm["amplification"]["payments"]["factor"] <= 3.0


def test_a_scenario_without_faults_reports_no_recovery_and_factors_near_one() -> None:
    report = simulate(load_scenario("baseline"), seed=2, duration=10).report
    meta = report["metastability"]
    assert meta["recovery"] is None
    for name, amp in meta["amplification"].items():
        assert amp["calls"] == report["services"][name]["calls"]
        assert 1.0 <= amp["factor"] < 1.05, name


@pytest.mark.parametrize("seed", [2, 3], ids=["seed2", "seed3"])
def test_storm_claims_hold_over_other_seeds(seed: int) -> None:
    """The shipped claims (test_sim_scenarios checks the scenario's own seed) on two more."""
    for name in ("retry-storm", "retry-storm-resilient"):
        claims = simulate(load_scenario(name), seed=seed).report["claims"]
        bad = [c for c in claims if not c["ok"]]
        assert not bad, (name, bad)
