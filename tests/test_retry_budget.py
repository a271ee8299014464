"""Retry budget (orchestrator/policies/retry_budget.py): retries at most a share of requests
plus a per-second minimum, per client group and cluster-wide; it caps a retry storm."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagalab.orchestrator.policies.retry_budget import RetryBudget, RetryBudgetPolicy
from sagalab.simulator.config import merge_defaults, validate
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.model import simulate

# --- the pure policy ---------------------------------------------------------------------------


def test_without_requests_only_the_minimum_is_allowed() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.5, min_per_second=1, window=10))
    assert sum(budget.try_retry(0.0) for _ in range(20)) == 10  # 1 per second over 10 s


def test_each_request_adds_its_ratio() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=0.2, min_per_second=0, window=10))
    for _ in range(50):
        budget.record_request(1.0)
    assert sum(budget.try_retry(1.5) for _ in range(30)) == 10  # 20 % of 50


def test_the_window_forgets_old_requests_and_retries() -> None:
    budget = RetryBudget(RetryBudgetPolicy(ratio=1.0, min_per_second=0, window=5))
    for _ in range(4):
        budget.record_request(0.0)
    assert [budget.try_retry(0.5) for _ in range(5)] == [True] * 4 + [False]
    assert not budget.try_retry(4.9)  # still inside the window
    assert not budget.try_retry(5.0)  # the requests left with their retries
    budget.record_request(5.0)
    assert budget.try_retry(5.0)


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(st.tuples(st.floats(0, 0.999), st.booleans()), max_size=300),
    ratio=st.floats(0, 2),
    minimum=st.floats(0, 5),
)
def test_retries_never_exceed_ratio_times_requests_plus_minimum(
    events: list[tuple[float, bool]], ratio: float, minimum: float
) -> None:
    """Within one window: granted retries <= ratio * requests + min_per_second * window."""
    budget = RetryBudget(RetryBudgetPolicy(ratio=ratio, min_per_second=minimum, window=10))
    requests = granted = 0
    for step, (fraction, is_request) in enumerate(events):
        now = step / 300 * 9 + fraction  # all inside the first 10 s
        if is_request:
            budget.record_request(now)
            requests += 1
        elif budget.try_retry(now):
            granted += 1
        assert granted <= ratio * requests + minimum * 10 + 1e-9


@pytest.mark.parametrize(
    ("settings_", "field"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 11}, "ratio"),
        ({"ratio": float("nan")}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"min_per_second": -1}, "min_per_second"),
        ({"window": 0.5}, "window"),
        ({"window": "10s"}, "window"),
    ],
    ids=str,
)
def test_bad_budget_settings_are_refused(settings_: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryBudgetPolicy(**settings_)


# --- in the simulator: a client retry storm with and without a budget --------------------------

BUDGET = {"ratio": 0.1, "min_per_second": 5, "window": 10}


def _storm(client_budget: Any = None, cluster_budget: Any = None, groups: int = 1) -> dict:
    """One gateway at 80 % load (200/s of 250/s); the load doubles for 3 s; clients time out
    after 0.3 s and retry at once, up to 10 attempts, while their abandoned attempts still
    wait in the gateway's queue: a retry storm."""
    rate = {"kind": "steps", "steps": [[0, 200 / groups], [10, 400 / groups], [13, 200 / groups]]}
    retry = {"max_attempts": 10, "initial_delay": 0, "max_delay": 0, "jitter": "none"}
    client = {"keys": 200, "rate": rate, "timeout": 0.3, "retry": retry}
    config = merge_defaults(
        {
            "name": "client-retry-storm",
            "duration": 30,
            "clients": [
                {"name": f"c{i}", **client, "retry_budget": client_budget} for i in range(groups)
            ],
            "gateways": {"count": 1, "workers": 2, "handle_time": 0.008, "auth_time": 0},
            "retry_budget": cluster_budget,
        }
    )
    validate(config)
    return simulate(config, seed=4).report


def _amplification(report: dict) -> tuple[float, dict[str, int]]:
    requests = report["requests"]["legit"]
    return requests["attempts"] / requests["admitted"], requests


def test_a_client_budget_caps_the_amplification_of_a_retry_storm() -> None:
    """Attempts offered per useful (admitted) request, same seed, without and with a budget
    of 10 % of requests plus 5 retries per second."""
    storm, without = _amplification(_storm())
    capped, within = _amplification(_storm(client_budget=BUDGET))
    assert "retry_budget_refused" not in without  # no budget: the report as it was
    assert storm > 10
    assert capped < 1.6
    assert within["retry_budget_refused"] > 0
    # Retries stay within the budget: 10 % of ~6600 requests plus 5/s over the 30 s run,
    # counted per 10 s window (so at most 3 windows' minimum).
    assert within["retries"] <= 0.1 * within["offered"] + 5 * 10 * 3
    assert within["admitted"] > 2 * without["admitted"]  # and more useful work gets done


def test_a_cluster_budget_caps_every_group_together() -> None:
    """Two groups of half the load: the cluster-wide budget counts them together."""
    _, per_group = _amplification(_storm(client_budget=BUDGET, groups=2))
    capped, cluster = _amplification(_storm(cluster_budget=BUDGET, groups=2))
    assert capped < 1.6
    assert cluster["retry_budget_refused"] > 0
    # One shared minimum instead of one per group: fewer retries.
    assert cluster["retries"] < per_group["retries"]


@pytest.mark.parametrize(
    ("budget", "where", "message"),
    [
        ({"ratio": 20}, "clients[0].retry_budget.ratio", "over the limit of 10"),
        ({"window": 0}, "clients[0].retry_budget.window", "under the minimum of 1"),
        ({"share": 0.1}, "clients[0].retry_budget.share", "unknown setting"),
        ({"ratio": "10%"}, "clients[0].retry_budget", "ratio must be a number"),
        ("10%", "clients[0].retry_budget", "must be a mapping"),
    ],
    ids=str,
)
def test_bad_budget_in_a_scenario_is_refused_naming_it(
    budget: Any, where: str, message: str
) -> None:
    config = merge_defaults({"clients": [{"name": "c", "retry_budget": budget}]})
    with pytest.raises(ScenarioError) as info:
        validate(config)
    assert info.value.where == where
    assert message in info.value.message
