"""The model's station against queueing theory: M/M/1, M/M/c (Erlang C) and Little's law."""

from __future__ import annotations

import pytest

from sagalab.simulator.queueing import erlang_c, mmc_wait, plain_queue_run

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
