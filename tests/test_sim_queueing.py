"""The model's station against queueing theory: M/M/c (Erlang C: wait and P(wait)), M/G/1
(Pollaczek-Khinchine, Erlang-k and hyperexponential service), Little's law, and the balancer's
power of two choices against Mitzenmacher's supermarket model."""

from __future__ import annotations

import pytest

from sagalab.simulator.distributions import moments
from sagalab.simulator.queueing import (
    balanced_run,
    erlang_c,
    mmc_wait,
    pk_wait,
    plain_queue_run,
    supermarket_sojourn,
)

T_99_19DF = 2.861  # two-sided 99% Student t quantile, 19 degrees of freedom


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert mmc_wait(0.8, 1.0, 1) == pytest.approx(0.8 / (1.0 - 0.8))  # rho / (mu - lambda)


@pytest.mark.parametrize(
    ("lam", "mu", "c"),
    [(5.0, 10.0, 1), (8.0, 10.0, 1), (14.0, 10.0, 2), (34.0, 10.0, 4), (70.0, 10.0, 8)],
    ids=["mm1-rho0.5", "mm1-rho0.8", "mm2-rho0.7", "mm4-rho0.85", "mm8-rho0.875"],
)
def test_waiting_time_matches_closed_form(lam: float, mu: float, c: int) -> None:
    run = plain_queue_run(lam, mu, c, customers=120_000, seed=7)
    expected = mmc_wait(lam, mu, c)
    half_width = T_99_19DF * run["stderr"]
    assert abs(run["mean_wait"] - expected) <= half_width, (run, expected)
    little = run["little"]
    assert little["present_at_end"] == 0
    assert little["L"] == pytest.approx(little["lambda_W"], rel=1e-6)


@pytest.mark.parametrize(
    ("lam", "mu", "c"),
    [(7.0, 10.0, 1), (14.0, 10.0, 2), (34.0, 10.0, 4)],
    ids=["mm1-rho0.7", "mm2-rho0.7", "mm4-rho0.85"],
)
def test_probability_of_waiting_matches_erlang_c(lam: float, mu: float, c: int) -> None:
    run = plain_queue_run(lam, mu, c, customers=120_000, seed=11)
    expected = erlang_c(c, lam / mu)
    half_width = T_99_19DF * run["p_wait_stderr"]
    assert abs(run["p_wait"] - expected) <= half_width, (run, expected)
    # The station's own figures (what the report gives per tier) over every customer.
    waiting = run["waiting"]
    assert waiting["started"] == 120_000 // 10 + 120_000
    assert abs(waiting["probability"] - expected) <= half_width + 0.005, (waiting, expected)
    assert waiting["mean"] == pytest.approx(mmc_wait(lam, mu, c), rel=0.1)


# M/G/1 with Erlang-k and hyperexponential service (Pollaczek-Khinchine).
_SERVICES = {
    "erlang4-rho0.8": ({"dist": "erlang", "k": 4, "mean": 0.1}, 8.0),
    "erlang2-rho0.6": ({"dist": "erlang", "k": 2, "mean": 0.1}, 6.0),
    "hyper2-rho0.57": (
        {"dist": "hyperexponential", "means": [0.05, 0.5], "probs": [0.9, 0.1]},
        6.0,
    ),
}


@pytest.mark.parametrize(("service", "lam"), list(_SERVICES.values()), ids=list(_SERVICES))
def test_mg1_wait_matches_pollaczek_khinchine(service: dict, lam: float) -> None:
    run = plain_queue_run(lam, 0.0, 1, customers=200_000, seed=3, service=service)
    mean, second = moments(service)
    expected = pk_wait(lam, mean, second)
    half_width = T_99_19DF * run["stderr"]
    assert abs(run["mean_wait"] - expected) <= half_width, (run, expected)
    # Not the exponential answer: the check tells the distributions apart.
    assert abs(mmc_wait(lam, 1 / mean, 1) - expected) > half_width


def test_pk_wait_reduces_to_mm1() -> None:
    assert pk_wait(8.0, 0.1, 2 * 0.1**2) == pytest.approx(mmc_wait(8.0, 10.0, 1))
    with pytest.raises(ValueError, match="stable"):
        pk_wait(11.0, 0.1, 0.02)


def test_supermarket_sojourn_known_values() -> None:
    # Mitzenmacher's table (d = 2, mu = 1): 2.6141 at lambda = 0.9; an empty system serves at once.
    assert supermarket_sojourn(0.9) == pytest.approx(2.614057, abs=1e-6)
    assert supermarket_sojourn(0.0, mu=2.0) == pytest.approx(0.5)
    for rho in (0.3, 0.6, 0.9, 0.99):
        assert supermarket_sojourn(rho) < 1 / (1 - rho)  # never worse than M/M/1
    with pytest.raises(ValueError, match="stable"):
        supermarket_sojourn(1.0)


# 100 queues at rho = 0.9: the supermarket model is the limit as N grows; at N = 100 a run
# sits 1 - 2 % above it (2.63 - 2.66 measured on seeds 1 - 4), Mitzenmacher's finite-N gap.
RHO, SERVERS, FINITE_N = 0.9, 100, 0.03


def _matches_supermarket(run: dict) -> bool:
    """The claim: the run's mean time in system is the supermarket model's, within the run's
    99% interval plus the finite-N tolerance."""
    expected = supermarket_sojourn(RHO)
    half_width = T_99_19DF * run["stderr"] + FINITE_N * expected
    return abs(run["mean_sojourn"] - expected) <= half_width


def test_power_of_two_matches_the_supermarket_model_and_random_does_not() -> None:
    two = balanced_run(RHO, 1.0, SERVERS, "power_of_two", customers=300_000, seed=2)
    rand = balanced_run(RHO, 1.0, SERVERS, "random", customers=300_000, seed=2)
    assert _matches_supermarket(two), (two, supermarket_sojourn(RHO))
    # Random choice is N independent M/M/1 queues: 1 / (mu - lambda) = 10, within its interval.
    assert abs(rand["mean_sojourn"] - 1 / (1 - RHO)) <= T_99_19DF * rand["stderr"], rand
    # The claim can fail: random in its place is nowhere near (10 against 2.6).
    assert not _matches_supermarket(rand), rand
    assert two["mean_sojourn"] < rand["mean_sojourn"] / 3
