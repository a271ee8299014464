"""Circuit breaker on pybreaker with the clock as a seam and a single half-open probe."""

from __future__ import annotations

import pybreaker
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.policies.breaker import Breaker, BreakerOpen, MemoryClockedStorage

CLOSED, OPEN, HALF = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


def tripped(now: float = 0.0, **kwargs: float) -> Breaker:
    breaker = Breaker("payments", fail_max=3, reset_timeout=10, **kwargs)  # type: ignore[arg-type]
    for _ in range(3):
        assert breaker.allow(now)
        breaker.record_failure(now)
    return breaker


def test_opens_after_fail_max_consecutive_failures() -> None:
    breaker = Breaker("payments", fail_max=3, reset_timeout=10)
    for outcome in ["f", "f", "s", "f", "f"]:
        assert breaker.allow(0)
        (breaker.record_failure if outcome == "f" else breaker.record_success)(0)
    assert breaker.state == CLOSED
    breaker.record_failure(0)
    assert breaker.state == OPEN


@pytest.mark.parametrize(
    ("now", "allowed", "state"),
    [(0.0, False, OPEN), (9.999, False, OPEN), (10.0, True, HALF), (500.0, True, HALF)],
    ids=["just-opened", "before-timeout", "at-timeout", "long-after"],
)
def test_open_refuses_until_reset_timeout(now: float, allowed: bool, state: str) -> None:
    breaker = tripped()
    assert breaker.allow(now) is allowed
    assert breaker.state == state


def test_exactly_one_probe_when_half_open() -> None:
    breaker = tripped()
    grants = [breaker.allow(10.0 + i * 0.01) for i in range(20)]
    assert grants.count(True) == 1
    breaker.record_success(10.5)
    assert breaker.state == CLOSED


def test_failed_probe_reopens_for_another_timeout() -> None:
    breaker = tripped()
    assert breaker.allow(10)
    breaker.record_failure(11)
    assert breaker.state == OPEN
    assert not breaker.allow(20.9)
    assert breaker.retry_after(15) == pytest.approx(6)
    assert breaker.allow(21)


def test_success_threshold_needs_several_probes_one_at_a_time() -> None:
    breaker = tripped(success_threshold=2)
    assert breaker.allow(10) and not breaker.allow(10)
    breaker.record_success(10.1)
    assert breaker.state == HALF
    assert breaker.allow(10.2) and not breaker.allow(10.2)
    breaker.record_success(10.3)
    assert breaker.state == CLOSED


def test_probe_holder_that_never_reports_is_forgotten() -> None:
    breaker = tripped(probe_timeout=3)
    assert breaker.allow(10)
    assert not breaker.allow(12.9)
    assert breaker.allow(13.0)


def test_transitions_are_reported_on_the_breaker_clock() -> None:
    seen: list[tuple[float, str, str]] = []
    breaker = Breaker("p", fail_max=1, reset_timeout=5, on_transition=lambda *t: seen.append(t))
    breaker.allow(100)
    breaker.record_failure(100)
    breaker.allow(105)
    breaker.record_success(106)
    assert seen == [(100, CLOSED, OPEN), (105, OPEN, HALF), (106, HALF, CLOSED)]


def test_check_raises_with_retry_after() -> None:
    breaker = tripped()
    with pytest.raises(BreakerOpen) as info:
        breaker.check(4.0)
    assert info.value.retry_after == pytest.approx(6.0)


def test_pybreaker_own_open_state_follows_the_injected_clock() -> None:
    """pybreaker's CircuitOpenState compares wall time with our translated `opened_at`."""
    breaker = tripped(now=1000.0)
    cb = breaker._cb
    breaker.clock.now = 1005.0
    with pytest.raises(pybreaker.CircuitBreakerError):
        cb.call(lambda: None)
    breaker.clock.now = 1010.5
    assert cb.call(lambda: "ok") == "ok"
    assert breaker.state == CLOSED


def test_storage_is_shared_by_two_breakers() -> None:
    """Two breakers on one storage behave like two processes on one SQLite row."""
    first = Breaker("p", fail_max=2, reset_timeout=5)
    second = Breaker("p", fail_max=2, reset_timeout=5, storage=first.storage)
    first.record_failure(0)
    second.record_failure(0)
    assert first.state == OPEN and not first.allow(1) and not second.allow(1)
    assert first.allow(5) != second.allow(5)  # one probe between them


def test_memory_storage_round_trips_opened_time() -> None:
    storage = MemoryClockedStorage("x", lambda: 42.0)
    assert storage.opened_at is None
    from datetime import UTC, datetime

    storage.opened_at = datetime(2000, 1, 1, tzinfo=UTC)
    assert storage.opened_time == 42.0


@given(st.lists(st.tuples(st.floats(0, 3), st.booleans()), max_size=100))
def test_refuses_only_when_open_or_probe_taken(steps: list[tuple[float, bool]]) -> None:
    breaker = Breaker("p", fail_max=2, reset_timeout=2)
    now = 0.0
    for gap, ok in steps:
        now += gap
        before = breaker.state
        allowed = breaker.allow(now)
        if before == CLOSED:
            assert allowed
        if allowed:
            (breaker.record_success if ok else breaker.record_failure)(now)
        assert breaker.state in (CLOSED, OPEN, HALF)
