"""The report's Little's-law check compares occupancy read at the sampler's ticks with λW
from the sojourn times: two independent measurements, so it can fail (it used to compare
the integral of the same bookkeeping with itself, an identity)."""

from __future__ import annotations

import pytest

from sagalab.simulator.config import load_scenario
from sagalab.simulator.metrics import TierStats
from sagalab.simulator.model import Simulation
from sagalab.simulator.report import little_holds

INVARIANT = "Little's law holds at every drained tier"


def _tier(sojourn_factor: float) -> TierStats:
    """One job every second staying 0.5 s (so L = 0.5), read every 0.1 s between events;
    the sojourn reported is `sojourn_factor` times the real one."""
    stats = TierStats("t")
    for second in range(100):
        stats.enter(float(second))
        for tick in range(10):  # reads at second + 0.05, 0.15, ... 0.95
            if tick == 5:
                stats.leave(second + 0.5, 0.5 * sojourn_factor)
            stats.sample()
    return stats


def test_consistent_bookkeeping_passes() -> None:
    little = _tier(1.0).little(100.0)
    assert little["L_sampled"] == pytest.approx(0.5, abs=0.01)
    assert little_holds(little)


@pytest.mark.parametrize("factor", [0.5, 1.5, 2.0], ids=str)
def test_a_misreported_sojourn_fails(factor: float) -> None:
    little = _tier(factor).little(100.0)
    assert not little_holds(little)


class _DoubleSojourn(TierStats):
    """A planted bug: the tier reports twice the time each job spent in it."""

    def leave(self, now: float, sojourn: float) -> None:
        super().leave(now, 2 * sojourn)


def _baseline() -> Simulation:
    config = load_scenario("baseline")
    config["interval"] = 0.1  # 200 reads of each tier in 20 s
    return Simulation(config, seed=2, duration=20)


def test_a_planted_inconsistency_fails_the_reports_invariant() -> None:
    honest = _baseline().run().report
    assert honest["invariants"][INVARIANT]["ok"]

    sim = _baseline()
    station = sim.services["payments"].station
    station.stats = _DoubleSojourn("service.payments")
    report = sim.run().report
    assert not report["invariants"][INVARIANT]["ok"]
    assert report["invariants_failed"] >= 1
    payments = report["little"]["service.payments"]
    assert payments["lambda_W"] > 1.5 * payments["L_sampled"]
