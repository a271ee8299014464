"""Every shipped scenario: saga invariants hold and the scenario shows what it claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.simulator.config import list_scenarios, load_scenario
from sagalab.simulator.model import simulate

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = sorted(list_scenarios())
REQUIRED = {
    "baseline",
    "payments-outage",
    "orchestrator-crash",
    "ddos",
    "gateway-failure",
    "traffic-spike",
    "retry-storm",
    "retry-storm-resilient",
}


def test_required_scenarios_ship() -> None:
    assert set(SCENARIOS) >= REQUIRED
    for raw in list_scenarios().values():
        assert raw.get("shows") and raw.get("claims"), "each scenario states what it shows"


@pytest.mark.parametrize("name", SCENARIOS, ids=SCENARIOS)
def test_scenario_invariants_and_claims(name: str) -> None:
    report = simulate(load_scenario(name)).report
    failed = {k: v for k, v in report["invariants"].items() if not v["ok"]}
    assert not failed
    assert report["sagas"]["unfinished"] == 0
    bad = [c for c in report["claims"] if not c["ok"]]
    assert not bad, bad
    little = report["little"]
    for tier, stats in little.items():
        assert stats["L"] == pytest.approx(stats["lambda_W"], rel=0.02, abs=1e-3), tier


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        ("checkout-cache", 7),
        ("checkout-cache", 12),
        ("backoff-contention", 4),
        ("throttled-outage", 4),
    ],
)
def test_claims_hold_at_seeds_where_a_bound_was_once_too_tight(name: str, seed: int) -> None:
    """A claim is about the model, not one seed: a sweep of seeds found these failing (a
    cache's read p95 of 13.8 ms against "< 13 ms"; a Poisson burst of 443 orders against
    ">= 450"; a throttle that let customers back in only at 134 s, after the run's end at
    120 s); the bounds now sit outside what 40 - 64 seeds gave and inside what the claim
    means."""
    report = simulate(load_scenario(name), seed=seed).report
    bad = [c for c in report["claims"] if not c["ok"]]
    assert not bad, bad


def test_same_seed_same_report() -> None:
    config = load_scenario("payments-outage")
    first = simulate(config, seed=3, duration=25).report
    second = simulate(load_scenario("payments-outage"), seed=3, duration=25).report
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    other = simulate(load_scenario("payments-outage"), seed=4, duration=25).report
    assert json.dumps(first, sort_keys=True) != json.dumps(other, sort_keys=True)


def test_non_idempotent_service_is_caught_by_the_invariant() -> None:
    """The ledger check is real: turn idempotency off and a crash makes a double charge."""
    config = load_scenario("orchestrator-crash")
    for service in config["services"].values():
        service["idempotent"] = False
    report = simulate(config).report
    check = report["invariants"]["no service applied an operation twice"]
    assert not check["ok"] and check["value"] >= 1


def test_throttled_outage_without_the_throttle_hammers_the_dead_edge() -> None:
    """The shipped throttling scenario's contrast: the same outage, clients unthrottled."""
    config = load_scenario("throttled-outage")
    config["clients"][0]["throttle"] = None
    config["claims"] = []
    series = simulate(config).series
    during = [r["unavailable"] for r in series if 50 < r["t"] <= 70]
    after = [r["legit_admitted"] for r in series if 72 < r["t"] <= 90]
    assert sum(during) / len(during) > 100  # the throttled run: at most 3 (its claim)
    assert sum(after) / len(after) > 30  # the throttled run: at most 10 (its claim)


# Seconds of arrivals per scenario for the cross-process check: past each one's crash, fault
# or spike (the code paths whose order could follow addresses or hashes), short enough to be fast.
CROSS_PROCESS_DURATION = {
    "backoff-contention": 5,
    "baseline": 5,
    "checkout-cache": 5,
    "checkout-read-heavy": 5,
    "checkout-read-replica": 5,
    "ddos": 8,
    "gateway-failure": 24,
    "orchestrator-crash": 27,
    "payments-outage": 24,
    "retry-storm": 24,
    "retry-storm-resilient": 24,
    "throttled-outage": 45,
    "traffic-spike": 24,
    "two-regions": 24,
}


def test_every_shipped_scenario_has_a_cross_process_duration() -> None:
    assert set(CROSS_PROCESS_DURATION) == set(SCENARIOS)


def other_hash_seed() -> str:
    """A PYTHONHASHSEED unlike this process's: its own plus one when it was set, else 1 (this
    process then hashes with a random key, unlike seed 1's but by a 2**-64 chance)."""
    mine = os.environ.get("PYTHONHASHSEED", "random")
    return "1" if mine == "random" else str((int(mine) + 1) % 2**32)


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_seed_same_bytes_in_separate_processes(name: str, tmp_path: Path) -> None:
    """Reproducible across processes, byte for byte (report on stdout and CSV series): no
    iteration over objects ordered by their address or by string hashes (a crash's orphaned
    sagas used to be reaped in set order), no clock, no global random. Two processes with
    different PYTHONHASHSEED values must agree: a child started here, and this test process
    itself (the same command in process, after whatever other tests ran in it, which is no
    weaker: a state left behind would show as a difference too)."""
    args = ["simulate", "run", name, "--seed", "5"]
    args += ["--duration", str(CROSS_PROCESS_DURATION.get(name, 5)), "--json"]
    child = subprocess.run(
        [sys.executable, "-m", "sagalab.cli.main", *args, "--out", str(tmp_path / "child")],
        env={**os.environ, "PYTHONHASHSEED": other_hash_seed()},
        capture_output=True,
        timeout=120,
        cwd=REPO,
    )
    here = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "here")])
    # A shortened run may miss a claim (exit 1); anything else is a failure.
    assert child.returncode in (0, 1), child.stderr
    assert here.exit_code == child.returncode, here.output
    outputs = []
    for out, stdout in ((tmp_path / "child", child.stdout), (tmp_path / "here", here.stdout_bytes)):
        (csv,) = out.glob("*.csv")
        outputs.append((stdout, csv.read_bytes()))
    report = json.loads(outputs[0][0])
    assert report["sagas"]["completed"] > 0
    if name == "orchestrator-crash":
        assert report["sagas"]["orphaned_by_crash"] > 0
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]


def test_a_simulated_outage_is_a_refused_connection_nothing_applied_nothing_undone() -> None:
    """`kind: outage` in a scenario: no call reaches the service (unlike the lab's
    `services fault --unavailable`, a 503 that may have applied): every call to it is refused,
    nothing there is applied, and the sagas roll back what the other services applied."""
    config = load_scenario("baseline")
    config["faults"] = [{"service": "payments", "kind": "outage", "start": 0, "end": 1000}]
    report = simulate(config, seed=1, duration=5).report
    payments = report["services"]["payments"]
    assert payments["calls"] > 0 and payments["refused"] == payments["calls"]
    assert payments["applied"] == 0
    assert report["sagas"]["completed"] == 0 and report["sagas"]["rolled_back"] > 0
    assert report["invariants_failed"] == 0
