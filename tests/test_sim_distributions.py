"""Erlang-k and hyperexponential distributions: draws, moments, bounds, every tier using them."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import yaml

from sagalab.simulator.config import configure, load_scenario
from sagalab.simulator.distributions import moments
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.model import simulate
from sagalab.simulator.stations import sampler

SPECS = {
    "erlang4": {"dist": "erlang", "k": 4, "mean": 0.02},
    "erlang1": {"dist": "erlang", "k": 1, "mean": 0.02},
    "hyper2": {"dist": "hyperexponential", "means": [0.01, 0.2], "probs": [0.8, 0.2]},
    "empirical": {"dist": "empirical", "quantiles": [0.0, 0.01, 0.05, 0.2]},
    "lognormal": {"dist": "lognormal", "median": 0.01, "sigma": 0.5},
    "uniform": {"dist": "uniform", "low": 0.01, "high": 0.03},
}


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
def test_draws_have_the_stated_moments(spec: dict) -> None:
    draw = sampler(spec, random.Random(5), "x")
    n = 200_000
    values = [draw() for _ in range(n)]
    mean, second = moments(spec)
    got_mean = math.fsum(values) / n
    got_second = math.fsum(v * v for v in values) / n
    sd = math.sqrt(second - mean * mean)
    assert abs(got_mean - mean) <= 5 * sd / math.sqrt(n), (got_mean, mean)
    assert got_second == pytest.approx(second, rel=0.05)


def test_erlang_is_steadier_and_hyperexponential_burstier_than_exponential() -> None:
    def scv(spec: dict) -> float:  # squared coefficient of variation
        mean, second = moments(spec)
        return second / mean**2 - 1

    assert scv(SPECS["erlang4"]) == pytest.approx(0.25)
    assert scv({"dist": "exponential", "mean": 0.02}) == pytest.approx(1.0)
    assert scv(SPECS["hyper2"]) > 1.0


def test_same_seed_same_draws() -> None:
    for spec in SPECS.values():
        a = sampler(spec, random.Random(9), "x")
        b = sampler(spec, random.Random(9), "x")
        assert [a() for _ in range(50)] == [b() for _ in range(50)]


def _scenario(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("latency", "where", "fragment"),
    [
        ("{dist: erlang, k: 0, mean: 0.01}", "latency.k", "under the minimum of 1"),
        ("{dist: erlang, k: 101, mean: 0.01}", "latency.k", "over the limit of 100"),
        ("{dist: erlang, k: 2.5, mean: 0.01}", "latency.k", "whole number"),
        ("{dist: erlang, k: 2}", "latency.mean", "must be a number"),
        ("{dist: hyperexponential, means: [0.01, 0.1], probs: [0.5, 0.4]}", "probs", "sum to 1"),
        ("{dist: hyperexponential, means: [0.01, 0.1], probs: [1.0]}", "probs", "one probability"),
        ("{dist: hyperexponential, means: [0.01, 0], probs: [0.5, 0.5]}", "means[1]", "minimum"),
        ("{dist: hyperexponential, means: [0.01], probs: [1.5]}", "probs[0]", "over the limit"),
        ("{dist: hyperexponential, probs: [1.0]}", "latency.means", "list of 1 to 16"),
        ("{dist: weibull, mean: 0.01}", "latency.dist", "must be one of"),
    ],
    ids=[
        "k-zero",
        "k-over",
        "k-fraction",
        "no-mean",
        "probs-sum",
        "probs-length",
        "mean-zero",
        "prob-over-one",
        "no-means",
        "unknown-dist",
    ],
)
def test_a_bad_distribution_is_refused_with_its_path(
    tmp_path: Path, latency: str, where: str, fragment: str
) -> None:
    path = _scenario(tmp_path, f"services:\n  payments:\n    latency: {latency}\n")
    with pytest.raises(ScenarioError) as info:
        configure(path)
    message = str(info.value)
    assert "services.payments." in message and where in message and fragment in message, message
    assert "\n" not in message


EVERY_TIER = """
duration: 20
drain: 30
clients:
  - name: customers
    rate: {kind: constant, value: 20}
    interarrival: {dist: erlang, k: 8, mean: 1}
firewall:
  service_time: {dist: erlang, k: 2, mean: 0.0005}
gateways:
  handle_time: {dist: hyperexponential, means: [0.0005, 0.005], probs: [0.9, 0.1]}
orchestrator:
  db_write: {dist: erlang, k: 3, mean: 0.001}
database:
  enabled: true
  write_latency: {dist: hyperexponential, means: [0.0005, 0.004], probs: [0.7, 0.3]}
  read_latency: {dist: erlang, k: 2, mean: 0.0005}
services:
  payments:
    latency: {dist: erlang, k: 4, mean: 0.04}
  inventory:
    latency: {dist: hyperexponential, means: [0.005, 0.05], probs: [0.9, 0.1]}
"""


def test_every_tier_takes_the_new_distributions(tmp_path: Path) -> None:
    path = _scenario(tmp_path, EVERY_TIER)
    report = simulate(configure(path)).report
    assert report["invariants_failed"] == 0
    assert report["sagas"]["completed"] > 300
    # The firewall's time is drawn now, not the constant 0.2 ms it was: its responses vary.
    firewall = report["latency"]["firewall"]
    assert firewall["p95"] > 2 * firewall["p50"] > 0
    payments = report["latency"]["services"]["payments"]
    assert payments["mean"] == pytest.approx(0.04, rel=0.15)
    # Same seed, same report.
    assert simulate(configure(path)).report == report


def _offered(tmp_path: Path, interarrival: str, seed: int) -> int:
    text = (
        "duration: 50\ndrain: 10\nclients:\n  - name: c\n    rate: {kind: constant, value: 10}\n"
        f"    interarrival: {interarrival}\n"
    )
    report = simulate(configure(_scenario(tmp_path, text)), seed=seed).report
    return int(report["requests"]["legit"]["offered"])


def test_interarrival_shape_keeps_the_rate_and_sets_the_spread(tmp_path: Path) -> None:
    # Constant gaps: exactly one arrival per 0.1 s (the shape is rescaled to the rate).
    assert _offered(tmp_path, "{dist: constant, value: 7}", 1) in (499, 500)
    steady = [_offered(tmp_path, "{dist: erlang, k: 50, mean: 1}", s) for s in range(1, 7)]
    bursty = [
        _offered(tmp_path, "{dist: hyperexponential, means: [0.1, 5], probs: [0.98, 0.02]}", s)
        for s in range(1, 7)
    ]
    assert all(abs(n - 500) <= 40 for n in steady), steady
    assert max(bursty) - min(bursty) > max(steady) - min(steady), (steady, bursty)


def test_interarrival_with_a_zero_mean_is_refused(tmp_path: Path) -> None:
    text = "clients:\n  - name: c\n    interarrival: {dist: constant, value: 0}\n"
    with pytest.raises(ScenarioError, match=r"clients\[0\]\.interarrival: must have a positive"):
        configure(_scenario(tmp_path, text))


def test_default_tiers_are_unchanged() -> None:
    config = load_scenario("baseline")
    assert config["clients"][0]["interarrival"] is None
    assert yaml.safe_dump(config["firewall"]["service_time"]) == "0.0002\n...\n"


def test_set_switches_a_number_setting_to_a_distribution() -> None:
    sets = ["duration=5", "gateways.handle_time={dist: erlang, k: 2, mean: 0.004}"]
    config = configure("baseline", sets)
    assert config["gateways"]["handle_time"] == {"dist": "erlang", "k": 2, "mean": 0.004}
    with pytest.raises(ScenarioError, match="expects a number"):
        configure("baseline", ["gateways.count={a: 1}"])
