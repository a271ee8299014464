"""Circuit breaker (orchestrator/policies/breaker.py): the transition table, time passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagalab.orchestrator.policies.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATES,
    Breaker,
    BreakerOpen,
    MemoryBreakerStorage,
    Signal,
    next_state,
)

HALF = HALF_OPEN


def tripped(now: float = 0.0, **kwargs: float) -> Breaker:
    breaker = Breaker("payments", fail_max=3, reset_timeout=10, **kwargs)  # type: ignore[arg-type]
    for _ in range(3):
        assert breaker.allow(now)
        breaker.record_failure(now)
    return breaker


# --- the table -------------------------------------------------------------------------------

TABLE = [
    # state, signal, failures, successes, expected (fail_max=3, success_threshold=2)
    (CLOSED, Signal.FAILURE, 2, 0, CLOSED),
    (CLOSED, Signal.FAILURE, 3, 0, OPEN),
    (CLOSED, Signal.SUCCESS, 0, 0, CLOSED),
    (CLOSED, Signal.TIMEOUT, 0, 0, CLOSED),
    (CLOSED, Signal.RESET, 0, 0, CLOSED),
    (OPEN, Signal.FAILURE, 9, 0, OPEN),
    (OPEN, Signal.SUCCESS, 0, 0, OPEN),
    (OPEN, Signal.TIMEOUT, 3, 0, HALF),
    (OPEN, Signal.RESET, 3, 0, CLOSED),
    (HALF, Signal.FAILURE, 1, 0, OPEN),
    (HALF, Signal.SUCCESS, 0, 1, HALF),
    (HALF, Signal.SUCCESS, 0, 2, CLOSED),
    (HALF, Signal.TIMEOUT, 0, 0, HALF),
    (HALF, Signal.RESET, 0, 0, CLOSED),
]


@pytest.mark.parametrize(
    ("state", "signal", "failures", "successes", "expected"),
    TABLE,
    ids=[f"{s}-{sig.value}-f{f}-s{k}" for s, sig, f, k, _ in TABLE],
)
def test_transition_table(
    state: str, signal: Signal, failures: int, successes: int, expected: str
) -> None:
    got = next_state(
        state, signal, failures=failures, successes=successes, fail_max=3, success_threshold=2
    )
    assert got == expected


# --- the breaker over a storage --------------------------------------------------------------


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


def test_transitions_are_reported_at_the_time_passed_in() -> None:
    seen: list[tuple[float, str, str]] = []
    breaker = Breaker("p", fail_max=1, reset_timeout=5, on_transition=lambda *t: seen.append(t))
    breaker.allow(100)
    breaker.record_failure(100)
    breaker.allow(105)
    breaker.record_success(106)
    assert seen == [(100, CLOSED, OPEN), (105, OPEN, HALF), (106, HALF, CLOSED)]
    assert breaker.transitions == 3


def test_check_raises_with_retry_after() -> None:
    breaker = tripped()
    with pytest.raises(BreakerOpen) as info:
        breaker.check(4.0)
    assert info.value.retry_after == pytest.approx(6.0)


@pytest.mark.parametrize("state", [CLOSED, OPEN, HALF], ids=str)
def test_reset_closes_and_zeroes_the_counts(state: str) -> None:
    seen: list[tuple[float, str, str]] = []
    breaker = Breaker("p", fail_max=3, reset_timeout=5, on_transition=lambda *t: seen.append(t))
    breaker.storage.state = state
    breaker.storage.increment_counter()
    breaker.storage.increment_success_counter()
    breaker.reset(7.0)
    assert breaker.state == CLOSED
    assert breaker.fail_counter == 0 and breaker.storage.success_counter == 0
    assert seen == ([] if state == CLOSED else [(7.0, state, CLOSED)])
    assert breaker.allow(7.0)


def test_open_without_an_opening_time_half_opens_when_asked() -> None:
    """A row written by hand (open, no time) must not keep a service's calls out for ever."""
    breaker = Breaker("p", fail_max=1, reset_timeout=60)
    breaker.storage.state = OPEN
    assert breaker.retry_after(0.0) == 0.0
    assert breaker.allow(0.0) and breaker.state == HALF


def test_storage_is_shared_by_two_breakers() -> None:
    """Two breakers on one storage behave like two processes on one SQLite row."""
    first = Breaker("p", fail_max=2, reset_timeout=5)
    second = Breaker("p", fail_max=2, reset_timeout=5, storage=first.storage)
    first.record_failure(0)
    second.record_failure(0)
    assert first.state == OPEN and not first.allow(1) and not second.allow(1)
    assert first.allow(5) != second.allow(5)  # one probe between them


def test_no_clock_is_ever_read() -> None:
    def clock() -> float:
        raise AssertionError("the breaker read a clock")

    breaker = Breaker("p", fail_max=1, reset_timeout=1, storage=MemoryBreakerStorage("p", clock))
    breaker.record_failure(0)
    assert not breaker.allow(0.5) and breaker.allow(1.0)
    breaker.record_success(1.0)
    breaker.reset(2.0)
    assert breaker.state == CLOSED


# --- properties ------------------------------------------------------------------------------

gaps = st.floats(0.0, 3.0, allow_nan=False)
# One step: time passes, then caller `who` asks; if allowed, the call fails or succeeds
# (None: the caller never reports, as if it died).
steps = st.lists(
    st.tuples(gaps, st.integers(0, 3), st.sampled_from([True, False, None])), max_size=120
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    fail_max=st.integers(1, 4),
    success_threshold=st.integers(1, 3),
    reset_timeout=st.floats(0.0, 5.0),
    start=st.sampled_from([0.0, 1e9]),
)
def test_never_two_half_open_probes_out_at_once(
    steps: list[tuple[float, int, bool | None]],
    fail_max: int,
    success_threshold: int,
    reset_timeout: float,
    start: float,
) -> None:
    breaker = Breaker(
        "p",
        fail_max=fail_max,
        reset_timeout=reset_timeout,
        success_threshold=success_threshold,
        probe_timeout=2.0,
    )
    now = start
    probes: dict[int, float] = {}  # caller -> when its half-open probe was granted
    for gap, who, ok in steps:
        now += gap
        before = breaker.state
        allowed = breaker.allow(now)
        if before == CLOSED:
            assert allowed, "a closed breaker refused a call"
        if allowed and breaker.state == HALF:
            live = [w for w, t in probes.items() if now < t + 2.0]
            assert not live, f"probe granted to {who} while {live} hold one"
            probes[who] = now
        if allowed and ok is not None:
            (breaker.record_success if ok else breaker.record_failure)(now)
            probes.pop(who, None)
            if breaker.state != HALF:
                probes.clear()  # the probe (whoever held it) was released by this outcome
        assert breaker.state in STATES


@settings(max_examples=300, deadline=None)
@given(outcomes=st.lists(st.booleans(), max_size=60), fail_max=st.integers(1, 6))
def test_opens_after_exactly_fail_max_consecutive_failures(
    outcomes: list[bool], fail_max: int
) -> None:
    breaker = Breaker("p", fail_max=fail_max, reset_timeout=1000)
    run = 0
    for i, ok in enumerate(outcomes):
        assert breaker.allow(float(i))
        (breaker.record_success if ok else breaker.record_failure)(float(i))
        run = 0 if ok else run + 1
        if run == fail_max:
            assert breaker.state == OPEN
            return
        assert breaker.state == CLOSED, f"opened after {run} consecutive failure(s)"


@settings(max_examples=300, deadline=None)
@given(
    opened_at=st.floats(-1e6, 1e9),
    reset_timeout=st.floats(0.0, 1e4),
    asks=st.lists(st.floats(0.0, 1.0, exclude_max=True), max_size=20),
)
def test_reset_timeout_is_measured_on_the_time_passed_in(
    opened_at: float, reset_timeout: float, asks: list[float]
) -> None:
    breaker = Breaker("p", fail_max=1, reset_timeout=reset_timeout)
    breaker.record_failure(opened_at)
    reopens_at = breaker.storage.opened_time
    assert reopens_at == opened_at
    for fraction in sorted(asks):  # any number of asks inside the timeout: all refused
        now = opened_at + fraction * reset_timeout
        if now < opened_at + reset_timeout:
            assert not breaker.allow(now) and breaker.state == OPEN
            assert breaker.retry_after(now) > 0
    assert breaker.allow(opened_at + reset_timeout), "not half-open once the timeout passed"
    assert breaker.state == HALF


@settings(max_examples=100, deadline=None)
@given(steps=steps)
def test_same_inputs_same_transitions(steps: list[tuple[float, int, bool | None]]) -> None:
    def run() -> list[tuple[float, str, str]]:
        seen: list[tuple[float, str, str]] = []
        breaker = Breaker("p", fail_max=2, reset_timeout=2, on_transition=lambda *t: seen.append(t))
        now = 0.0
        for gap, _who, ok in steps:
            now += gap
            if breaker.allow(now) and ok is not None:
                (breaker.record_success if ok else breaker.record_failure)(now)
        return seen

    assert run() == run()
