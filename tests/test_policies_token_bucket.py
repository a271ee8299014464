"""Token bucket: table-driven decisions and properties over random request sequences."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagalab.edge.policies.token_bucket import BucketState, TokenBucket, take_tokens


@pytest.mark.parametrize(
    ("takes", "expected"),
    [
        ([(0.0, 1)] * 3, [(True, 0.0)] * 3),
        ([(0.0, 1)] * 4, [(True, 0.0)] * 3 + [(False, 0.5)]),
        ([(0.0, 3), (0.25, 1), (0.5, 1)], [(True, 0.0), (False, 0.25), (True, 0.0)]),
        ([(0.0, 3), (10.0, 3)], [(True, 0.0), (True, 0.0)]),
        ([(0.0, 4)], [(False, math.inf)]),
    ],
    ids=["burst-allowed", "over-burst-waits", "refill-at-rate", "refill-capped", "too-big"],
)
def test_take_table(takes: list[tuple[float, int]], expected: list[tuple[bool, float]]) -> None:
    bucket = TokenBucket(rate=2, burst=3)
    got = [bucket.take(now, n) for now, n in takes]
    assert [(r.allowed, pytest.approx(r.retry_after)) for r in got] == expected


def test_class_and_function_agree() -> None:
    bucket = TokenBucket(rate=1.5, burst=4)
    state = BucketState(4, 0.0)
    for now in [0, 0, 0.1, 0.2, 0.2, 0.2, 0.2, 3.0, 3.1, 2.9]:
        state, fn = take_tokens(state, now=now, n=1, rate=1.5, burst=4)
        assert bucket.take(now) == fn
        assert bucket.state == state


def test_retry_after_is_exact() -> None:
    bucket = TokenBucket(rate=4, burst=1)
    assert bucket.take(0.0).allowed
    refused = bucket.take(0.0)
    assert not refused.allowed
    assert bucket.take(refused.retry_after).allowed


@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_never_more_than_rate_times_time_plus_burst(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate=rate, burst=burst)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        result = bucket.take(now)
        allowed += result.allowed
        assert result.allowed or result.retry_after > 0
        assert 0 <= bucket.tokens(now) <= burst
    assert allowed <= burst + rate * now + 1e-6


@given(st.lists(st.floats(-5, 5), max_size=50))
def test_clock_going_backwards_never_adds_tokens(times: list[float]) -> None:
    bucket = TokenBucket(rate=10, burst=2)
    before = bucket.tokens(0)
    for t in times:
        if t < 0:
            bucket.take(t)
            assert bucket.tokens(t) <= before
        before = bucket.tokens(t)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=-1, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)
