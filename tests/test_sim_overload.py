"""Overload settings of the simulator: client-side adaptive throttling, queue timeouts, closed
client populations and heterogeneous gateways under weighted balancing (issue 13, item 6)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.orchestrator.policies.adaptive_throttle import AdaptiveThrottle, ThrottlePolicy
from sagalab.simulator.config import merge_defaults, validate
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.model import simulate
from sagalab.simulator.stations import Job, Station

runner = CliRunner()

# --- adaptive throttling: the pure policy -------------------------------------------------------


def test_throttle_refuses_nothing_while_everything_is_accepted() -> None:
    throttle = AdaptiveThrottle(ThrottlePolicy(k=2, window=10))
    rng = random.Random(1)
    for i in range(1000):
        now = i / 100
        assert throttle.admit(now, rng.random())
        throttle.record_accept(now)
    assert throttle.reject_probability(10.0) == 0.0


def test_throttle_probability_is_the_books_formula() -> None:
    throttle = AdaptiveThrottle(ThrottlePolicy(k=2, window=60))
    for _ in range(30):
        throttle.admit(1.0, 0.99)
    for _ in range(5):
        throttle.record_accept(1.0)
    assert throttle.reject_probability(1.5) == pytest.approx((30 - 2 * 5) / (30 + 1))
    # The window forgets: 60 s later nothing is counted.
    assert throttle.reject_probability(61.0) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(st.tuples(st.floats(0, 30), st.booleans(), st.floats(0, 0.999)), max_size=200),
    k=st.floats(1, 5),
)
def test_throttle_probability_stays_a_probability_and_zero_while_accepts_keep_up(
    events: list[tuple[float, bool, float]], k: float
) -> None:
    throttle = AdaptiveThrottle(ThrottlePolicy(k=k, window=10))
    for now, is_accept, u in sorted(events):
        if is_accept:
            throttle.record_accept(now)
        else:
            throttle.admit(now, u)
        p = throttle.reject_probability(now)
        requests, accepts = throttle.counts
        assert 0.0 <= p < 1.0
        assert (p == 0.0) == (requests <= k * accepts)


@pytest.mark.parametrize("k", [1.5, 2.0, 3.0])
def test_throttle_sends_about_k_times_what_the_backend_accepts(k: float) -> None:
    """A backend that accepts 10 requests a second, clients that want 200 a second: what
    the clients still send settles at about k times the accepts (the SRE book's claim)."""
    throttle = AdaptiveThrottle(ThrottlePolicy(k=k, window=10))
    rng = random.Random(7)
    sent_late = accepted_late = 0
    for second in range(60):
        accepted_this_second = 0
        for i in range(200):
            now = second + i / 200
            if throttle.admit(now, rng.random()):
                accepted = accepted_this_second < 10
                if accepted:
                    throttle.record_accept(now)
                    accepted_this_second += 1
                if second >= 30:
                    sent_late += 1
                    accepted_late += accepted
    assert accepted_late >= 280  # the backend stays busy
    assert sent_late / accepted_late == pytest.approx(k, rel=0.1)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [({"k": 0.5}, "k must be"), ({"window": 0}, "window must be"), ({"k": math.nan}, "k must")],
)
def test_throttle_policy_refuses_bad_settings(settings: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ThrottlePolicy(**settings)


# --- adaptive throttling in the model -----------------------------------------------------------


def _rate_limited(throttle: dict[str, float] | None) -> dict[str, Any]:
    """One API key limited to 5 requests/s at the gateways; its client wants 40/s, no retries."""
    client: dict[str, Any] = {
        "name": "customers",
        "rate": {"kind": "constant", "value": 40.0},
        "keys": 1,
        "retry": False,
        "throttle": throttle,
    }
    return merge_defaults(
        {"duration": 60, "clients": [client], "firewall": {"flood": {"enabled": False}}}
    )


def test_throttled_clients_send_about_k_times_what_is_admitted() -> None:
    plain = simulate(_rate_limited(None)).report["requests"]["legit"]
    assert "throttled" not in plain  # a report without throttling stays as it was
    assert plain["attempts"] / plain["admitted"] > 6  # 40/s against 5/s
    for k in (2.0, 3.0):
        legit = simulate(_rate_limited({"k": k, "window": 10})).report["requests"]["legit"]
        assert legit["throttled"] > 1000
        assert legit["attempts"] + legit["throttled"] == legit["offered"]
        assert legit["attempts"] / legit["admitted"] == pytest.approx(k, rel=0.15)


def test_throttling_draws_from_the_seeded_generator() -> None:
    config = _rate_limited({"k": 2, "window": 10})
    first = simulate(config, seed=3, duration=20).report
    assert first == simulate(_rate_limited({"k": 2, "window": 10}), seed=3, duration=20).report
    other = simulate(_rate_limited({"k": 2, "window": 10}), seed=4, duration=20).report
    assert first["requests"] != other["requests"]


# --- queue timeouts ----------------------------------------------------------------------------


def _station(timeout: float | None) -> tuple[list[float], Station]:
    """An overloaded single server (arrivals 1.5x its rate): the waits of served jobs."""
    env = simpy.Environment()
    rng = random.Random(2)
    station = Station(env, "s", 1, lambda: rng.expovariate(10.0))
    station.queue_timeout = timeout
    waits: list[float] = []
    dropped: list[Job] = []
    station.on_expired = dropped.append

    def done(job: Job) -> None:
        waits.append(job.started - job.arrived)

    def arrivals() -> Any:
        while env.now < 200:
            yield env.timeout(rng.expovariate(15.0))
            station.submit(None, done)

    env.process(arrivals())
    env.run(until=400)
    assert len(dropped) == station.expired
    return waits, station


def test_a_queue_timeout_bounds_the_wait_of_served_work() -> None:
    unbounded, plain = _station(None)
    assert max(unbounded) > 20 and plain.expired == 0  # the queue grows without bound
    waits, station = _station(0.5)
    assert max(waits) <= 0.5
    assert station.expired > 500
    # Every arrival was served or dropped, and the tier's bookkeeping saw both leave.
    assert len(waits) + station.expired == station.stats.arrivals == station.stats.departures


def test_queue_timeouts_in_the_model_are_counted_per_tier_and_answered_503() -> None:
    base = {
        "duration": 30,
        "clients": [{"name": "customers", "rate": {"kind": "constant", "value": 60.0}}],
        "services": {"payments": {"concurrency": 2, "queue_timeout": 0.2}},
        "gateways": {"queue_timeout": 5.0},
    }
    report = simulate(merge_defaults(base)).report
    dropped = report["queue_timeouts"]
    assert set(dropped) == {"gateways", "service.payments"}
    assert dropped["service.payments"] > 50 and dropped["gateways"] == 0
    assert report["invariants_failed"] == 0
    # Served payments waited at most 0.2 s: their response time is at most that plus service.
    assert report["services"]["payments"]["applied"] > 0
    del base["gateways"]
    plain = simulate(merge_defaults({**base, "services": {"payments": {"concurrency": 2}}}))
    assert "queue_timeouts" not in plain.report
    assert (
        report["latency"]["services"]["payments"]["max"]
        < plain.report["latency"]["services"]["payments"]["max"]
    )


def test_a_gateway_queue_timeout_bounds_its_sojourn_and_answers_503() -> None:
    """One gateway of one worker (50 ms a request) offered 30 requests/s: its queue grows
    without bound, unless requests that waited over 0.5 s are dropped (the client sees 503)."""

    def run(timeout: float | None) -> dict[str, Any]:
        config = _closed(users=1, think=1.0, duration=60)
        config["clients"] = merge_defaults(
            {"clients": [{"name": "c", "rate": {"value": 30.0}, "retry": False, "timeout": 60}]}
        )["clients"]
        config["gateways"]["queue_timeout"] = timeout
        return simulate(config).report

    plain, bounded = run(None), run(0.5)
    assert plain["little"]["gateway-0"]["W"] > 5
    assert bounded["queue_timeouts"]["gateways"] > 300
    assert bounded["requests"]["legit"]["unavailable"] == bounded["queue_timeouts"]["gateways"]
    # Served requests waited at most 0.5 s, then 50 ms on average: W of the served is small
    # (the dropped ones' sojourn counts in W too, at most 0.5 s each).
    assert bounded["little"]["gateway-0"]["W"] < 0.6
    assert bounded["latency"]["gateway"]["max"] < 0.5 + 1.0  # a service time over 1 s: e^-20


# --- closed populations ------------------------------------------------------------------------


def _closed(users: int, think: float, duration: float = 400) -> dict[str, Any]:
    """One slow gateway (one worker, 50 ms a request): the users queue there."""
    client = {
        "name": "users",
        "population": {"users": users, "think": {"dist": "exponential", "mean": think}},
        "retry": False,
        "timeout": 60.0,
    }
    return merge_defaults(
        {
            "duration": duration,
            "clients": [client],
            "firewall": {"flood": {"enabled": False}},
            "gateways": {
                "count": 1,
                "workers": 1,
                "auth_time": 0.0,
                "handle_time": 0.05,
                "rate_limit": {"rate": 1000, "burst": 1000},
            },
        }
    )


def test_a_closed_population_follows_the_interactive_response_time_law() -> None:
    """X = N / (R + Z): throughput from the measured response time R and think time Z. The
    users queue at the gateway (R is most of a cycle), so an open loop would be far off."""
    report = simulate(_closed(users=12, think=0.3)).report
    pop = report["populations"]["users"]
    r = pop["response"]["mean"]
    assert r > 0.2  # queueing: a request alone would take 0.05 s
    assert pop["peak_outstanding"] <= 12
    # Cycles are a renewal count: its standard error is about sqrt(count) / duration.
    band = 4 * math.sqrt(pop["requests_over"]) / 400 + 0.05 * pop["law_throughput"]
    assert abs(pop["throughput"] - 12 / (r + 0.3)) <= band
    # The gateway is the bottleneck: at most 20 requests/s, nowhere near N / Z = 40.
    assert pop["throughput"] < 20.5


def test_a_closed_population_without_queueing_offers_n_over_z() -> None:
    report = simulate(_closed(users=5, think=2.0)).report
    pop = report["populations"]["users"]
    assert pop["throughput"] == pytest.approx(5 / 2.0, rel=0.1)
    assert report["requests"]["legit"]["offered"] == pytest.approx(pop["requests_over"], abs=5)


# --- heterogeneous gateways -----------------------------------------------------------------


def test_a_twice_as_fast_gateway_under_weighted_balancing_serves_twice_the_share() -> None:
    config = merge_defaults(
        {
            "duration": 60,
            "balancer": {"strategy": "weighted_round_robin", "weights": [2, 1]},
            "gateways": {"count": 2, "speed": [2, 1], "auth_time": 0.0, "handle_time": 0.01},
        }
    )
    little = simulate(config).report["little"]
    fast, slow = little["gateway-0"], little["gateway-1"]
    assert fast["lambda"] / slow["lambda"] == pytest.approx(2.0, rel=0.05)
    assert fast["W"] / slow["W"] == pytest.approx(0.5, rel=0.15)


# --- validation: one line, exit 2 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (
            {"clients": [{"name": "c", "rate": {"value": 1}, "population": {"users": 1}}]},
            "clients[0]: has both rate and population",
        ),
        ({"clients": [{"name": "c", "rate": None}]}, "clients[0]: has neither rate nor"),
        (
            {"clients": [{"name": "c", "population": {"users": 200000, "think": {"mean": 1}}}]},
            "clients[0].population.users: 200,000 is over the limit of 100,000",
        ),
        (
            {"clients": [{"name": "c", "population": {"users": 2, "thinks": {"mean": 1}}}]},
            "clients[0].population.thinks.mean: unknown setting; known here: think, users",
        ),
        (
            {
                "clients": [
                    {"name": "c", "population": {"users": 2, "think": {"dist": "lognormal"}}}
                ]
            },
            "clients[0].population.think.dist: must be one of",
        ),
        ({"clients": [{"name": "c", "throttle": {"k": 0.5}}]}, "clients[0].throttle.k: 0.5 is"),
        ({"clients": [{"name": "c", "throttle": {"K": 2}}]}, "clients[0].throttle.K: unknown"),
        ({"gateways": {"queue_timeout": -1}}, "gateways.queue_timeout: -1 is under"),
        ({"services": {"payments": {"queue_timeout": 0}}}, "services.payments.queue_timeout"),
        ({"gateways": {"speed": [1, 2]}}, "gateways.speed: must be a list of one number per"),
        ({"gateways": {"speed": [1, 0, 1]}}, "gateways.speed[1]: 0 is under the minimum"),
        ({"balancer": {"weights": [0, 0, 0]}}, "balancer.weights: weights must not all be 0"),
        ({"balancer": {"strategy": "fastest"}}, "weighted_round_robin"),
    ],
    ids=[
        "both",
        "neither",
        "too-many-users",
        "misspelt-population",
        "think-dist",
        "throttle-k",
        "throttle-key",
        "gateway-timeout",
        "service-timeout",
        "speed-count",
        "speed-zero",
        "weights-zero",
        "strategy",
    ],
)
def test_bad_overload_settings_are_one_line_errors(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        validate(merge_defaults(raw))
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_a_population_that_would_run_for_hours_is_refused_up_front() -> None:
    raw = {"clients": [{"name": "c", "population": {"users": 100000, "think": {"mean": 0.01}}}]}
    with pytest.raises(ScenarioError, match="^clients: up to 600,000,000 requests"):
        validate(merge_defaults(raw))


def test_set_null_turns_off_a_mapping_setting_only() -> None:
    from sagalab.simulator.config import apply_override, load_scenario

    config = load_scenario("throttled-outage")
    apply_override(config, "clients.0.throttle=null")
    assert config["clients"][0]["throttle"] is None
    apply_override(config, "clients.0.rate=null")
    apply_override(config, "clients.0.population={users: 5, think: {mean: 1}}")
    config["claims"] = []
    validate(config, duration=5)
    with pytest.raises(ScenarioError, match="expects a number"):
        apply_override(config, "gateways.count=null")


def test_cli_refuses_rate_and_population_with_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["run", "baseline", "--out", str(tmp_path)]
        + ["--set", "clients.0.population={users: 5, think: {mean: 1}}"],
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has both rate and population" in lines[0]


def test_run_summary_shows_the_overload_rows(tmp_path: Path) -> None:
    scenario = tmp_path / "closed.yaml"
    scenario.write_text(
        "name: closed\nduration: 20\nclients:\n  - name: users\n"
        "    population: {users: 4, think: {dist: constant, value: 0.5}}\n"
        "    throttle: {k: 2, window: 10}\n"
        "gateways: {queue_timeout: 1.0}\n"
    )
    result = runner.invoke(app, ["run", str(scenario), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "population users │ 4 users, 7." in text  # 4 users every 0.5 s plus R: under 8/s
    assert "requests refused by their own clients" in text
    assert "queue timeouts │ gateways 0" in text
