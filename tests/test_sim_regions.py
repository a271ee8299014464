"""A second region: the round trips of its replicas, its outage and the failover of its
replicas to the first region."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.simulator.compare import compare
from sagalab.simulator.config import configure
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.model import simulate

runner = CliRunner()


def _run(name: str, *sets: str, seed: int = 3, duration: float = 10) -> dict:
    config = configure(name, list(sets), duration=duration)
    return simulate(config, seed=seed, duration=duration).report


def test_off_by_default() -> None:
    assert "regions" not in _run("baseline", duration=3)


def test_a_region_with_no_distance_changes_nothing_but_the_report() -> None:
    plain = _run("baseline")
    near = _run("baseline", "regions.enabled=true", "regions.hop=0")
    assert near.pop("regions")["remote_replicas"] == 1
    assert near == plain


def test_remote_replicas_pay_the_round_trips() -> None:
    """Every replica remote, 20 ms each way: each saga's claim, its four calls (each after
    its attempt's write) and its last commits cross over, 40 ms each: over 0.2 s more."""
    plain = _run("baseline")["latency"]["end_to_end"]["p50"]
    far = _run("baseline", "regions.enabled=true", "regions.hop=0.02", "regions.remote_replicas=2")
    assert far["latency"]["end_to_end"]["p50"] > plain + 0.2
    assert far["invariants_failed"] == 0


@pytest.mark.parametrize("failover", [True, False], ids=["failover", "no-failover"])
def test_an_outage_orphans_sagas_and_the_first_region_resumes_them(failover: bool) -> None:
    report = _run("two-regions", f"regions.failover.enabled={str(failover).lower()}", duration=50)
    sagas, replicas, regions = report["sagas"], report["replicas"], report["regions"]
    assert regions["outages"] == 1 and regions["replicas_lost"] == 1
    assert sagas["orphaned_by_crash"] >= 1
    assert sagas["resumed"] == sagas["orphaned_by_crash"] and sagas["unfinished"] == 0
    assert report["invariants_failed"] == 0
    if failover:
        # The failover replica stays after the region is back: three at the end.
        assert regions["failed_over"] == 1 and replicas["final"] == 3
    else:
        assert regions["failed_over"] == 0 and replicas["min"] == 1 and replicas["final"] == 2


def test_more_remote_replicas_than_replicas_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"regions\.remote_replicas"):
        configure("baseline", ["regions.enabled=true", "regions.remote_replicas=3"])
    args = ["run", "two-regions", "--set", "regions.outages=[{start: 5, end: 1}]"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "regions.outages[0].end" in result.stderr


def test_compare_says_what_the_second_region_costs() -> None:
    result = compare("baseline", "two-regions", seeds=3, duration=8, workers=1)
    p95 = result["figures"]["e2e_p95"]
    assert p95["significant"] and p95["low"] > 0.1
