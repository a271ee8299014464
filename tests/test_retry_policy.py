"""Retry policy (orchestrator/policies/retry.py): full jitter, cap, deadline, Retry-After.

The policy is pure: `backoff_delay` takes the jitter as a number, `next_delay` draws it from the
generator passed in. No clock, no global random.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagalab.orchestrator.policies.retry import (
    FOREVER_RETRY,
    JITTER_KINDS,
    MAX_RETRY_AFTER,
    RetryPolicy,
    backoff_delay,
    exhausted,
    jitter_delay,
)


class Extremes:
    """A UniformSource that always returns the low or the high end of the range."""

    def __init__(self, high: bool) -> None:
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def delay(policy: RetryPolicy, attempts: int, **kwargs: object) -> float | None:
    args: dict[str, object] = {
        "attempts_made": attempts,
        "first_attempt_at": 0.0,
        "now": 0.0,
        "retryable": True,
        "rng": random.Random(0),
    }
    args.update(kwargs)
    return policy.next_delay(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempts", "cap"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (50, 5.0), (5000, 5.0)],
    ids=lambda v: str(v),
)
def test_backoff_cap_grows_exponentially_up_to_max_delay(attempts: int, cap: float) -> None:
    policy = RetryPolicy(max_attempts=None, initial_delay=0.5, max_delay=5.0, multiplier=2.0)
    assert policy.backoff_cap(attempts) == pytest.approx(cap)


@settings(max_examples=200, deadline=None)
@given(
    initial=st.floats(0.0, 10.0),
    max_delay=st.floats(0.0, 100.0),
    multiplier=st.floats(1.0, 3.0),
    attempts=st.integers(1, 3000),
)
def test_backoff_cap_is_monotone_and_bounded(
    initial: float, max_delay: float, multiplier: float, attempts: int
) -> None:
    policy = RetryPolicy(
        max_attempts=None, initial_delay=initial, max_delay=max_delay, multiplier=multiplier
    )
    cap = policy.backoff_cap(attempts)
    assert 0.0 <= cap <= max_delay
    assert cap <= policy.backoff_cap(attempts + 1)
    assert cap >= min(initial, max_delay)


@pytest.mark.parametrize("multiplier", [1.0, 1.01], ids=["constant", "slow-growth"])
def test_backoff_cap_after_many_attempts_follows_the_formula(multiplier: float) -> None:
    # A slowly growing (or constant) backoff stays small after 100 attempts; it must not jump
    # to max_delay just because the exponent is large.
    policy = RetryPolicy(
        max_attempts=None, initial_delay=0.1, max_delay=30.0, multiplier=multiplier
    )
    assert policy.backoff_cap(100) == pytest.approx(min(30.0, 0.1 * multiplier**99))


@settings(max_examples=200, deadline=None)
@given(attempts=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_full_jitter_draws_between_zero_and_the_cap(attempts: int, seed: int) -> None:
    policy = RetryPolicy(max_attempts=None, initial_delay=0.2, max_delay=5.0)
    got = delay(policy, attempts, rng=random.Random(seed))
    assert got is not None
    assert 0.0 <= got <= policy.backoff_cap(attempts)


def test_full_jitter_reaches_both_ends_of_the_range() -> None:
    policy = RetryPolicy(max_attempts=None, initial_delay=1.0, max_delay=8.0)
    assert delay(policy, 3, rng=Extremes(high=False)) == 0.0
    assert delay(policy, 3, rng=Extremes(high=True)) == 4.0


def test_same_seed_same_delays() -> None:
    policy = RetryPolicy(max_attempts=None)
    one = [delay(policy, n, rng=random.Random(7)) for n in range(1, 10)]
    two = [delay(policy, n, rng=random.Random(7)) for n in range(1, 10)]
    assert one == two


def test_without_jitter_the_delay_is_the_cap() -> None:
    policy = RetryPolicy(max_attempts=None, initial_delay=0.5, max_delay=3.0, jitter=False)
    assert [delay(policy, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("attempts", "expected_none"),
    [(1, False), (2, False), (3, True), (4, True)],
    ids=["after-1", "after-2", "after-3-gives-up", "after-4"],
)
def test_max_attempts_counts_attempts_made(attempts: int, expected_none: bool) -> None:
    assert (delay(RetryPolicy(max_attempts=3), attempts) is None) is expected_none


def test_max_attempts_none_never_gives_up() -> None:
    assert FOREVER_RETRY.max_attempts is None
    for attempts in (1, 10, 1_000, 1_000_000):
        got = delay(FOREVER_RETRY, attempts)
        assert got is not None and 0.0 <= got <= FOREVER_RETRY.max_delay


def test_not_retryable_gives_up_at_once() -> None:
    assert delay(FOREVER_RETRY, 1, retryable=False) is None


@pytest.mark.parametrize(
    ("now", "drawn_high", "gives_up"),
    [(0.0, True, False), (5.0, True, False), (6.0, True, True), (9.0, False, False)],
    ids=["early", "just-fits", "would-overshoot", "zero-wait-fits"],
)
def test_deadline_bounds_first_attempt_to_last_start(
    now: float, drawn_high: bool, gives_up: bool
) -> None:
    policy = RetryPolicy(max_attempts=None, initial_delay=5.0, max_delay=5.0, deadline=10.0)
    got = delay(policy, 1, now=now, first_attempt_at=0.0, rng=Extremes(drawn_high))
    assert (got is None) is gives_up
    if got is not None:
        assert now + got <= 10.0


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(max_attempts=None, initial_delay=0.1, max_delay=1.0)
    assert delay(policy, 1, retry_after=12.0, rng=Extremes(high=True)) == 12.0
    assert delay(policy, 4, retry_after=0.01, rng=Extremes(high=True)) == 0.8


def test_retry_after_past_the_deadline_gives_up() -> None:
    policy = RetryPolicy(max_attempts=None, deadline=10.0)
    assert delay(policy, 1, retry_after=30.0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_delay": -1.0},
        {"max_delay": -1.0},
        {"multiplier": 0.5},
        {"deadline": 0.0},
    ],
    ids=["zero-attempts", "negative-initial", "negative-max", "shrinking", "zero-deadline"],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# --- the pure wait: backoff_delay(policy, attempts_made, random_value) ------------------------

policies = st.builds(
    RetryPolicy,
    max_attempts=st.none() | st.integers(1, 50),
    initial_delay=st.floats(0.0, 10.0),
    max_delay=st.floats(0.0, 100.0),
    multiplier=st.floats(1.0, 5.0),
    jitter=st.booleans(),
)
units = st.floats(0.0, 1.0)


@settings(max_examples=300, deadline=None)
@given(policy=policies, attempts=st.integers(1, 5000), u=units)
def test_backoff_delay_lies_between_zero_and_the_cap(
    policy: RetryPolicy, attempts: int, u: float
) -> None:
    got = backoff_delay(policy, attempts, u)
    assert 0.0 <= got <= policy.backoff_cap(attempts) <= policy.max_delay


@settings(max_examples=300, deadline=None)
@given(policy=policies, attempts=st.integers(1, 5000), u=units)
def test_the_upper_bound_never_shrinks_with_more_attempts(
    policy: RetryPolicy, attempts: int, u: float
) -> None:
    assert backoff_delay(policy, attempts, 1.0) <= backoff_delay(policy, attempts + 1, 1.0)
    assert backoff_delay(policy, attempts, u) <= backoff_delay(policy, attempts, 1.0)


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    attempts=st.integers(1, 5000),
    u=units,
    retry_after=st.floats(0.0, 1e5),
)
def test_retry_after_is_honoured(
    policy: RetryPolicy, attempts: int, u: float, retry_after: float
) -> None:
    got = backoff_delay(policy, attempts, u, retry_after=retry_after)
    floor = min(retry_after, MAX_RETRY_AFTER)  # a server may ask for an hour at most
    assert got >= floor
    assert got <= max(policy.backoff_cap(attempts), floor)


@settings(max_examples=200, deadline=None)
@given(policy=policies, attempts=st.integers(1, 5000), u=units)
def test_same_inputs_same_delay(policy: RetryPolicy, attempts: int, u: float) -> None:
    assert backoff_delay(policy, attempts, u) == backoff_delay(policy, attempts, u)


@settings(max_examples=200, deadline=None)
@given(
    policy=policies,
    attempts=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
    elapsed=st.floats(0.0, 1e4),
    retry_after=st.none() | st.floats(0.0, 100.0),
)
def test_next_delay_is_backoff_delay_unless_exhausted(
    policy: RetryPolicy,
    attempts: int,
    seed: int,
    elapsed: float,
    retry_after: float | None,
) -> None:
    """The decision is the two pure parts, with one draw in [0, 1] when jitter is on."""
    rng = random.Random(seed)
    got = delay(policy, attempts, now=elapsed, rng=rng, retry_after=retry_after)
    u = random.Random(seed).random() if policy.jitter else 1.0
    wait = backoff_delay(policy, attempts, u, retry_after=retry_after)
    if exhausted(policy, attempts_made=attempts, elapsed=elapsed, delay=wait):
        assert got is None
    else:
        assert got == wait
    # A jittered decision uses exactly one draw, given up or not (same seed, same sequence).
    twin = random.Random(seed)
    if policy.jitter:
        twin.random()
    assert rng.random() == twin.random()


def test_same_seed_same_decisions_as_the_tenacity_version() -> None:
    """Pinned from the policy as it was on tenacity (before issue 9): seeded runs keep their
    results, give-ups included (the draw still happens, so later waits stay the same)."""
    policy = RetryPolicy(max_attempts=4, deadline=3.0)
    rng = random.Random(7)
    got = [
        delay(policy, attempts, now=now, rng=rng)
        for attempts, now in [(1, 0.0), (2, 0.5), (3, 1.0), (3, 2.9), (4, 1.0), (1, 0.0)]
    ]
    assert got == [
        0.06476655296663247,
        0.060339669569800775,
        0.520747578431883,
        0.05794902933403421,
        None,
        0.07313778338251711,
    ]
    assert rng.random() == 0.057998924774706806


# --- jitter kinds (AWS Architecture Blog, "Exponential Backoff and Jitter") -------------------


def _samples(kind: str, attempts: int, n: int = 20_000) -> list[float]:
    policy = RetryPolicy(max_attempts=None, initial_delay=0.5, max_delay=8.0, jitter=kind)
    rng = random.Random(11)
    return [backoff_delay(policy, attempts, rng.uniform(0.0, 1.0)) for _ in range(n)]


@pytest.mark.parametrize(
    ("kind", "low", "high", "mean"),
    [
        ("none", 2.0, 2.0, 2.0),  # the cap: 0.5 * 2 ** 2 after three attempts
        ("full", 0.0, 2.0, 1.0),  # uniform in [0, cap]
        ("equal", 1.0, 2.0, 1.5),  # uniform in [cap / 2, cap]
        ("decorrelated", 0.5, 1.5, 1.0),  # uniform in [base, 3 * base] before any wait
    ],
    ids=str,
)
def test_each_jitter_kind_draws_in_its_range_with_its_mean(
    kind: str, low: float, high: float, mean: float
) -> None:
    got = _samples(kind, 3)
    assert low <= min(got) and max(got) <= high
    assert sum(got) / len(got) == pytest.approx(mean, rel=0.02)
    if low < high:  # it spreads over the range, not a point
        assert min(got) < low + 0.01 * (high - low) and max(got) > high - 0.01 * (high - low)


@settings(max_examples=300, deadline=None)
@given(
    previous=st.floats(0.0, 100.0),
    u=st.floats(0.0, 1.0),
    base=st.floats(0.0, 5.0),
    max_delay=st.floats(0.0, 60.0),
)
def test_decorrelated_grows_from_the_last_wait_within_its_cap(
    previous: float, u: float, base: float, max_delay: float
) -> None:
    """sleep = min(cap, uniform(base, sleep * 3)): from the previous wait, not the attempt."""
    got = jitter_delay("decorrelated", 0.0, u, base=base, previous=previous, max_delay=max_delay)
    assert got <= max_delay
    assert got >= min(base, max_delay)
    assert got <= max(base, 3 * previous) + 1e-9


def test_decorrelated_waits_follow_the_previous_one() -> None:
    policy = RetryPolicy(
        max_attempts=None, initial_delay=1.0, max_delay=100.0, jitter="decorrelated"
    )
    top, bottom = Extremes(high=True), Extremes(high=False)
    assert delay(policy, 1, rng=top) == 3.0  # no previous wait: from the base
    assert delay(policy, 1, rng=top, previous_delay=3.0) == 9.0  # the attempt count is not read
    assert delay(policy, 5, rng=bottom, previous_delay=9.0) == 1.0  # never under the base
    assert delay(policy, 2, rng=top, previous_delay=50.0) == 100.0  # capped at max_delay


@pytest.mark.parametrize("kind", JITTER_KINDS)
def test_each_kind_uses_one_draw_or_none(kind: str) -> None:
    """A seeded run uses one uniform per retry decision, none for `none`."""
    draws: list[tuple[float, float]] = []

    class Counting:
        def uniform(self, a: float, b: float) -> float:
            draws.append((a, b))
            return 0.5

    policy = RetryPolicy(max_attempts=None, jitter=kind)
    assert delay(policy, 2, rng=Counting()) is not None
    assert len(draws) == (0 if kind == "none" else 1)


@pytest.mark.parametrize("jitter", ["fuller", "", 1, None, "FULL"], ids=repr)
def test_an_unknown_jitter_kind_is_refused_naming_the_kinds(jitter: object) -> None:
    with pytest.raises(ValueError, match="jitter must be one of none, full, equal, decorrelated"):
        RetryPolicy(jitter=jitter)  # type: ignore[arg-type]


def test_true_and_false_are_full_and_none() -> None:
    assert RetryPolicy(jitter=True).jitter_kind == "full"
    assert RetryPolicy(jitter=False).jitter_kind == "none"
    same = [delay(RetryPolicy(jitter=j), 3, rng=random.Random(5)) for j in (True, "full")]
    assert same[0] == same[1]
