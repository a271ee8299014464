"""`sagalab simulate validate`: the same scenario in SimPy and on a real loopback stack.

The short CI version: the shipped checkout flow with no faults agrees within the printed
tolerance; a scenario ten times too slow for the stack it is checked against exits 1; what
the fake services cannot express, an unknown scenario or a --duration over the bound exit 2
with one line and start nothing; and no stack process outlives a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from workerlab import processes_mentioning, sagalab, wait_for

from sagalab.orchestrator.flow import flow_to_dict
from sagalab.orchestrator.flowfile import load_flow
from sagalab.simulator.config import load_scenario
from sagalab.simulator.validate import (
    MAX_VALIDATE_DURATION,
    Tolerance,
    ValidationRefused,
    breaker_open_seconds,
    compare,
    figures,
    ks_two_sample,
    ks_within,
    plan,
)

NO_ERRORS = {"error_rate": 0.0, "reject_rate": 0.0}


def scenario(tmp_path: Path, **extra: Any) -> Path:
    """The shipped checkout flow at 10 orders/s on a small stack (1 gateway, 1 worker)."""
    raw: dict[str, Any] = {
        "name": "checkout-validate",
        "duration": 10,
        "clients": [{"rate": {"kind": "constant", "value": 10}}],
        "gateways": {"count": 1},
        "orchestrator": {"replicas": 1, "concurrency": 8},
        "flow": flow_to_dict(load_flow("checkout")),
        "services": {
            name: dict(NO_ERRORS) for name in ("inventory", "payments", "shipping", "notifications")
        },
        **extra,
    }
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def validate(tmp_path: Path, *args: str) -> Any:
    # The run's stack directory goes under tmp_path, so its processes can be looked for.
    return sagalab(
        "simulate", "validate", *args, "--json", env={"TMPDIR": str(tmp_path)}, timeout=120
    )


@pytest.mark.slow
def test_checkout_without_faults_agrees(tmp_path: Path) -> None:
    r = validate(tmp_path, str(scenario(tmp_path)), "--duration", "8")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["ks"]["ok"]
    assert out["real"]["sagas"] >= 40 and out["real"]["completed_share"] == 1.0
    assert out["sim"]["completed_share"] == 1.0
    assert out["real"]["stack_stopped"]
    assert not processes_mentioning(str(tmp_path))


@pytest.mark.slow
def test_a_payments_outage_breaker_and_shares_agree(tmp_path: Path) -> None:
    # Payments refuses everything from 3 s to 7 s: both runs open its breaker for about as
    # long and roll back the sagas that reach it meanwhile. The tail latency does not always
    # agree (some real sagas wait about one reset timeout for the breaker; the model's do
    # not): the exit code then says so, and this test holds only what agrees.
    outage = [{"service": "payments", "kind": "outage", "start": 3, "end": 7}]
    r = validate(tmp_path, str(scenario(tmp_path, faults=outage)), "--duration", "10")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    out = json.loads(r.stdout)
    rows = {row["figure"]: row for row in out["rows"]}
    for figure in ("completed_share", "rolled_back_share", "breaker_open_s"):
        assert rows[figure]["ok"], rows[figure]
    for side in ("sim", "real"):
        assert out[side]["breaker_open_by_service"]["payments"] > 3.0, out[side]
        assert 0.15 < out[side]["rolled_back_share"] < 0.75, out[side]
    failing = {name for name, row in rows.items() if row["ok"] is False}
    assert (r.returncode == 1) == bool(failing or not out["ks"]["ok"])
    assert not processes_mentioning(str(tmp_path))


@pytest.mark.slow
def test_a_scenario_ten_times_too_slow_exits_1(tmp_path: Path) -> None:
    # The fake services add nothing (--no-service-latency): the stack answers in its own few
    # milliseconds, while the scenario claims ten times the default latencies.
    slow = {
        name: {**NO_ERRORS, "latency": {"dist": "lognormal", "median": median, "sigma": 0.5}}
        for name, median in (
            ("inventory", 0.1),
            ("payments", 0.4),
            ("shipping", 0.2),
            ("notifications", 0.05),
        )
    }
    path = scenario(tmp_path, services=slow)
    r = validate(tmp_path, str(path), "--duration", "5", "--no-service-latency")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    p50 = next(row for row in out["rows"] if row["figure"] == "e2e_p50")
    assert p50["ok"] is False and p50["sim"] > 3 * p50["real"]
    assert not out["ks"]["ok"]
    assert not processes_mentioning(str(tmp_path))


def cmdline(pid: int) -> bytes:
    """A process's command line, words joined by spaces (empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


@contextlib.contextmanager
def running_validate(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A 30 s `simulate validate` of the checkout scenario whose stack is up (its state file
    written) and whose worker runs: the arrivals are next. Whatever a failure leaves behind,
    the validate and its components, is killed on the way out."""
    command = [sys.executable, "-m", "sagalab.cli.main", "simulate", "validate"]
    proc = subprocess.Popen(
        [*command, str(scenario(tmp_path)), "--duration", "30"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: (
                list(tmp_path.glob("sagalab-validate-*/stack.json"))
                and any(b" worker " in cmdline(pid) for pid in processes_mentioning(str(tmp_path)))
            ),
            40,
            "the validate stack to be up",
            every=0.1,
        )
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        for pid in processes_mentioning(str(tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_stops_the_stack(tmp_path: Path) -> None:
    with running_validate(tmp_path) as proc:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=40)
    assert proc.returncode == 130, err
    assert "the stack was stopped" in err
    assert not processes_mentioning(str(tmp_path))


@pytest.mark.slow
def test_a_sigkilled_validate_takes_its_stack_with_it(tmp_path: Path) -> None:
    with running_validate(tmp_path) as proc:
        proc.kill()  # no handler runs: the components must see their parent go by themselves
        proc.wait(timeout=10)
        wait_for(
            lambda: not processes_mentioning(str(tmp_path)), 30, "the stack to stop", every=0.2
        )


@pytest.mark.slow
def test_the_next_validate_removes_the_directory_a_sigkilled_one_left(tmp_path: Path) -> None:
    with running_validate(tmp_path) as proc:
        proc.kill()
        proc.wait(timeout=10)
        left = list(tmp_path.glob("sagalab-validate-*"))
        assert len(left) == 1  # what this test is about
        wait_for(
            lambda: not processes_mentioning(str(tmp_path)), 30, "the stack to stop", every=0.2
        )
        # A validate whose owner still runs is never touched: only the dead one's goes.
        r = validate(tmp_path, str(scenario(tmp_path)), "--duration", "1")
        assert r.returncode in (0, 1), r.stderr
        assert not left[0].exists()
        assert list(tmp_path.glob("sagalab-validate-*")) == []


def test_a_validate_directory_whose_owner_runs_is_kept(tmp_path: Path) -> None:
    from sagalab.stack.realrun import claim_directory, remove_stale

    mine = claim_directory(tmp_path)
    foreign = tmp_path / "sagalab-validate-nobody"  # no owner file: not ours to judge
    foreign.mkdir()
    dead = claim_directory(tmp_path)
    (dead / "owner.json").write_text(json.dumps({"pid": 2**22 + 1, "start": 1.0}))
    assert remove_stale(tmp_path) == [dead]
    assert mine.exists() and foreign.exists() and not dead.exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["no-such-scenario"], "no-such-scenario"),
        (["baseline"], "flow 'order' is not served by the real stack"),
        (["SCENARIO", "--duration", str(MAX_VALIDATE_DURATION + 1)], "--duration"),
        (
            ["SCENARIO", "--set", "faults=[{service: payments, kind: slowdown, start: 1, end: 2}]"],
            "kind 'slowdown' cannot be expressed",
        ),
        (["SCENARIO", "--set", "gateways.crashes=[{at: 1}]"], "gateways.crashes"),
        (
            ["SCENARIO", "--set", "clients.0.interarrival={dist: erlang, k: 4, mean: 1}"],
            "clients[0].interarrival cannot be expressed",
        ),
    ],
    ids=[
        "unknown-scenario",
        "flow-not-served",
        "duration-over-bound",
        "slowdown",
        "crash",
        "interarrival",
    ],
)
def test_refusals_exit_2_with_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    path = str(scenario(tmp_path))
    r = validate(tmp_path, *[path if a == "SCENARIO" else a for a in args])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert r.stdout == ""
    assert not processes_mentioning(str(tmp_path))


def test_breaker_open_seconds_counts_open_and_half_open() -> None:
    transitions = [(1.0, "payments", "open"), (6.0, "payments", "half-open")]
    transitions += [(6.5, "payments", "closed"), (9.0, "shipping", "open")]
    assert breaker_open_seconds(transitions, until=10.0) == {"payments": 5.5, "shipping": 1.0}


def test_ks_two_sample() -> None:
    same = [i / 100 for i in range(100)]
    assert ks_two_sample(same, same) == (0.0, 1.0)
    d, p = ks_two_sample(same, [x + 10 for x in same])
    assert d == 1.0 and p < 1e-6
    d, p = ks_two_sample(same, [x + 0.005 for x in same])
    assert d == pytest.approx(0.01) and p == 1.0


def test_ks_within_allows_the_stated_shift_and_no_more() -> None:
    # The failed CI run: the model's sagas took 214-218 ms, the real ones 220-223 ms on a busy
    # machine (3 % apart). The plain KS D is 1; within a 10 % shift they agree.
    sim = [0.214 + 0.004 * i / 99 for i in range(100)]
    real = [0.220 + 0.003 * i / 99 for i in range(100)]
    assert ks_two_sample(sim, real)[0] == 1.0
    assert ks_within(sim, real, rel=0.1) == 0.0
    assert ks_within(sim, real, rel=0.0) == 1.0
    # A latency scale off by 2x or 10x stays beyond any sensible bound, either way round.
    assert ks_within(sim, [x * 2 for x in sim], rel=0.1) == 1.0
    assert ks_within([x * 10 for x in sim], sim, rel=0.1) == 1.0
    # Half the sagas 30 % slower: half the mass is outside the band.
    assert ks_within(sim, sim[:50] + [x * 1.3 for x in sim[50:]], rel=0.1) == pytest.approx(0.5)
    assert ks_within([], sim, rel=0.1) == 1.0


def test_compare_fails_beyond_tolerance_only() -> None:
    statuses = {"completed": 90, "rolled_back": 10}
    sim = figures([0.1] * 50 + [0.2] * 50, statuses, {}, 3)
    e2e = [0.1] * 50 + [0.2] * 50
    close = compare(sim, sim, e2e, e2e, tolerance=Tolerance(), duration=20, reset_timeout=5)
    assert close["ok"]
    slower = [x * 3 for x in e2e]
    real = figures(slower, statuses, {}, 3)
    far = compare(sim, real, e2e, slower, tolerance=Tolerance(), duration=20, reset_timeout=5)
    assert not far["ok"]
    assert {r["figure"] for r in far["rows"] if r["ok"] is False} == {"e2e_p50", "e2e_p95"}


def test_a_bimodal_p50_agrees_within_the_rank_band() -> None:
    # Half the sagas roll back fast, half complete: a share a few points off moves the p50
    # from one mode to the other (here 0.03 against 0.09: 200 % relative error), within what
    # a hundred sagas can tell apart. The same p50 off by 3x still fails.
    sim_e2e = [0.03] * 52 + [0.09] * 48
    real_e2e = [0.03] * 47 + [0.09] * 53
    sim = figures(sim_e2e, {"completed": 48, "rolled_back": 52}, {}, 0)
    real = figures(real_e2e, {"completed": 53, "rolled_back": 47}, {}, 0)
    assert sim["e2e_p50"] == 0.03 and real["e2e_p50"] == 0.09
    out = compare(sim, real, sim_e2e, real_e2e, tolerance=Tolerance(), duration=10, reset_timeout=5)
    p50 = next(r for r in out["rows"] if r["figure"] == "e2e_p50")
    assert p50["ok"] and "band" in p50["bound"]
    far_e2e = [x * 3 for x in real_e2e]
    far = figures(far_e2e, {"completed": 53, "rolled_back": 47}, {}, 0)
    out = compare(sim, far, sim_e2e, far_e2e, tolerance=Tolerance(), duration=10, reset_timeout=5)
    assert not next(r for r in out["rows"] if r["figure"] == "e2e_p50")["ok"]


def test_plan_says_the_scenario_in_faults(tmp_path: Path) -> None:
    windows = [
        {"service": "payments", "kind": "errors", "start": 2, "end": 5, "rate": 0.5},
        {"service": "shipping", "kind": "outage", "start": 1, "end": 4},
    ]
    config = load_scenario(str(scenario(tmp_path, faults=windows)))
    config["services"]["payments"]["reject_rate"] = 0.1
    p = plan(config, duration=10, segments=[(0.0, float("inf"), 10.0)])
    assert p.flow == "checkout" and p.rates == ((0.0, 10, 10.0),)
    assert p.standing["payments"] == (
        {"service": "payments", "latency_ms": 40},
        {"service": "payments", "error_rate": 0.1, "status": 422},
    )
    assert [(a.at, a.service, a.clear) for a in p.timed] == [
        (1.0, "shipping", False),
        (2.0, "payments", False),
        (5.0, "payments", True),
    ]
    assert p.timed[0].spec == {"service": "shipping", "outage_seconds": 3.0}
    assert p.breakers["payments"] == {"fail_max": 5, "reset_timeout": 5.0, "success_threshold": 1}
    bare = plan(config, duration=10, segments=[(0.0, 10.0, 10.0)], service_latency=False)
    assert all("latency_ms" not in f for fs in bare.standing.values() for f in fs)


def test_an_outage_answered_503_is_compensated_after_the_breaker_as_on_the_stack(
    tmp_path: Path,
) -> None:
    # The fake services answer an outage with 503 and Retry-After: the charge may have
    # applied, so the saga refunds it, and the refund waits for payments' open breaker (about
    # a reset timeout). The model's default answer (a refused connection) needs no refund.
    from sagalab.simulator.model import Simulation
    from sagalab.simulator.validate import as_served

    outage = [{"service": "payments", "kind": "outage", "start": 3, "end": 7}]
    config = load_scenario(str(scenario(tmp_path, faults=outage)))
    served = as_served(config)
    assert served["faults"][0]["answer"] == "503" and "answer" not in config["faults"][0]
    runs = {}
    for name, cfg in (("refused", config), ("503", served)):
        sim = Simulation(cfg, seed=4, duration=10.0)
        result = sim.run()
        runs[name] = (result.report["sagas"], sim.e2e.quantile(0.99))
    refused, answered = runs["refused"], runs["503"]
    assert refused[0]["compensations_delayed_by_breaker"] == 0
    assert answered[0]["compensations_delayed_by_breaker"] > 0
    assert answered[1] > 2.0 > refused[1], runs


def test_plan_takes_the_calibrated_database_and_refuses_what_the_stack_lacks(
    tmp_path: Path,
) -> None:
    db = {"enabled": True, "engine": "sqlite", "writers": 1}
    config = load_scenario(str(scenario(tmp_path, database=db)))
    assert plan(config, duration=5, segments=[(0.0, 5.0, 10.0)]).flow == "checkout"
    for extra, word in (
        ({"replicas": {"count": 1}}, "replicas"),
        ({"cache": {"enabled": True}}, "cache"),
        ({"reads": {"per_saga": 3}}, "per_saga"),
    ):
        config = load_scenario(str(scenario(tmp_path, database={**db, **extra})))
        with pytest.raises(ValidationRefused, match=word):
            plan(config, duration=5, segments=[(0.0, 5.0, 10.0)])
    refused = [{"service": "payments", "kind": "outage", "start": 1, "end": 2, "answer": "refused"}]
    config = load_scenario(str(scenario(tmp_path, faults=refused)))
    with pytest.raises(ValidationRefused, match="answer"):
        plan(config, duration=5, segments=[(0.0, 5.0, 10.0)])


def test_an_outage_answer_is_refused_or_503(tmp_path: Path) -> None:
    from sagalab.simulator.errors import ScenarioError
    from sagalab.simulator.model import Simulation

    for answer in (503, "503", "refused"):
        fault = {"service": "payments", "kind": "outage", "start": 1, "end": 2, "answer": answer}
        Simulation(load_scenario(str(scenario(tmp_path, faults=[fault]))), seed=1, duration=1.0)
    fault = {"service": "payments", "kind": "outage", "start": 1, "end": 2, "answer": "teapot"}
    with pytest.raises(ScenarioError, match="answer"):
        Simulation(load_scenario(str(scenario(tmp_path, faults=[fault]))), seed=1, duration=1.0)


def test_latency_faults_lose_the_hop_and_never_become_error_faults() -> None:
    # A fault of 0 ms with no rate would fail every call (the fake services' default rate):
    # a median below the hop posts no latency fault at all.
    from sagalab.stack.realrun import _less_hop

    specs = (
        {"service": "payments", "latency_ms": 40},
        {"service": "payments", "error_rate": 0.1, "status": 503},
    )
    assert _less_hop(specs, 0.0015) == [
        {"service": "payments", "latency_ms": 38},
        {"service": "payments", "error_rate": 0.1, "status": 503},
    ]
    assert _less_hop(({"service": "notifications", "latency_ms": 5},), 0.008) == []
