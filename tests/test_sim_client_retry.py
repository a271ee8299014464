"""Client retry settings in a scenario: `multiplier`, `deadline` and `jitter` are accepted,
validated, and change what the simulated clients do as simulator/README.md states."""

from __future__ import annotations

from typing import Any

import pytest

from sagalab.simulator.config import merge_defaults, validate
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.model import simulate


def _all_refused(retry: dict[str, Any]) -> dict[str, Any]:
    """About 20 requests in 2 s, then 6 s more; the only gateway is down for the whole run:
    every attempt gets a 503, so what a request does is its retry policy alone."""
    return merge_defaults(
        {
            "name": "refused",
            "duration": 8,
            "clients": [
                {"name": "c", "rate": {"kind": "steps", "steps": [[0, 10], [2, 0]]}, "retry": retry}
            ],
            "gateways": {"count": 1, "crashes": [{"instance": 0, "at": 0, "restart_after": 900}]},
        }
    )


def _requests(retry: dict[str, Any]) -> dict[str, int]:
    config = _all_refused(retry)
    validate(config)
    requests: dict[str, int] = simulate(config, seed=3).report["requests"]["legit"]
    assert requests["offered"] > 10 and requests["admitted"] == 0
    assert requests["gave_up"] == requests["offered"]  # every one ended, by its retry policy
    return requests


def _retries_per_request(retry: dict[str, Any]) -> float:
    requests = _requests(retry)
    return requests["retries"] / requests["offered"]


def test_deadline_ends_retrying() -> None:
    """`deadline`: no retry may start later than that many seconds after the first attempt."""
    base = {"max_attempts": 10, "initial_delay": 0.1, "max_delay": 0.1, "jitter": False}
    assert _retries_per_request(base) == 9
    # Waits of 0.1 s: retries start at 0.1, 0.2, 0.3 s (+ the firewall's microseconds).
    assert _retries_per_request({**base, "deadline": 0.35}) == 3
    assert _requests({**base, "deadline": 0.05})["retries"] == 0


def test_multiplier_grows_the_waits() -> None:
    """`multiplier`: waits of 0.1 * m**(n-1): within a 3 s deadline, 29 retries at m=1,
    3 at m=3 (0.1 + 0.3 + 0.9 = 1.3 s; the next, 2.7 s later, would start at 4 s)."""
    base = {"max_attempts": 100, "initial_delay": 0.1, "max_delay": 60, "deadline": 3}
    base["jitter"] = False
    assert _retries_per_request({**base, "multiplier": 1}) == 29
    assert _retries_per_request({**base, "multiplier": 3}) == 3


def test_jitter_draws_shorter_waits_than_its_cap() -> None:
    """`jitter: true` (full jitter) draws each wait in [0, cap], so within the same deadline
    a request makes about twice as many retries as with `jitter: false` (always the cap)."""
    base = {"max_attempts": 100, "initial_delay": 0.1, "max_delay": 0.1, "deadline": 3}
    fixed = _retries_per_request({**base, "jitter": False})
    jittered = _retries_per_request({**base, "jitter": True})
    assert fixed == 29
    assert 1.7 * fixed < jittered < 2.3 * fixed


@pytest.mark.parametrize(
    ("retry", "where", "message"),
    [
        ({"multiplier": 0.5}, "retry.multiplier", "under the minimum of 1"),
        ({"multiplier": True}, "retry.multiplier", "must be a number"),
        ({"multiplier": 1e9}, "retry.multiplier", "over the limit"),
        ({"deadline": 0}, "retry.deadline", "under the minimum"),
        ({"deadline": float("inf")}, "retry.deadline", "finite"),
        ({"deadline": "soon"}, "retry", "deadline must be a number of seconds"),
        ({"jitter": "yes"}, "retry.jitter", "must be one of none, full, equal, decorrelated"),
        ({"jitter": 1}, "retry.jitter", "takes no number"),
    ],
    ids=str,
)
def test_bad_retry_settings_are_refused_naming_them(
    retry: dict[str, Any], where: str, message: str
) -> None:
    with pytest.raises(ScenarioError) as info:
        validate(_all_refused({"max_attempts": 3, **retry}))
    assert info.value.where == f"clients[0].{where}"
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kind", "low", "high"),
    [
        ("none", 29, 29),  # always the 0.1 s cap
        (False, 29, 29),
        ("full", 50, 66),  # mean wait 0.05 s: about 58
        (True, 50, 66),
        ("equal", 35, 42),  # mean wait 0.075 s: about 39
        # From [0.1, 0.3] growing by up to 3 per wait, capped at 1 s: a few retries only.
        ("decorrelated", 3, 12),
    ],
    ids=str,
)
def test_each_jitter_kind_paces_the_retries(kind: object, low: float, high: float) -> None:
    """Retries per request within a 3 s deadline under each jitter kind (cap 0.1 s; the
    decorrelated kind grows from its own last wait up to `max_delay`)."""
    max_delay = 1.0 if kind == "decorrelated" else 0.1
    retry = {"max_attempts": 100, "initial_delay": 0.1, "max_delay": max_delay}
    got = _retries_per_request({**retry, "deadline": 3, "multiplier": 1, "jitter": kind})
    assert low <= got <= high
