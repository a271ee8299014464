"""Retry policy: exponential backoff with full jitter, attempt and deadline limits.

Pure: time (`now`, `first_attempt_at`) and randomness (`rng`) are arguments, so the real
orchestrator and the simulator make the same decision from the same inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import tenacity


class UniformSource(Protocol):
    """What the policy needs from a random generator (`random.Random` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


MAX_RETRY_ATTEMPTS = 1_000_000
MAX_RETRY_SECONDS = 86_400.0  # one wait of a day at most
MAX_RETRY_DEADLINE = 30 * 86_400.0
MAX_MULTIPLIER = 100.0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # NaN fails every range comparison below, and infinity is out of every range.
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a failed attempt, and how long to wait first.

    `max_attempts=None` means no attempt limit (steps after the pivot retry until they succeed).
    `deadline` bounds the time from the first attempt to the start of the last one.
    """

    max_attempts: int | None = 3
    initial_delay: float = 0.2
    max_delay: float = 5.0
    multiplier: float = 2.0
    deadline: float | None = None
    jitter: bool = True

    def __post_init__(self) -> None:
        # Types and bounds as well as signs: a flow file is input, and a string, a NaN or a
        # year-long wait would otherwise surface only when a step fails.
        attempts = self.max_attempts
        if attempts is not None and (
            not _is_int(attempts) or not 1 <= attempts <= MAX_RETRY_ATTEMPTS
        ):
            raise ValueError(
                f"max_attempts must be a whole number from 1 to {MAX_RETRY_ATTEMPTS} "
                f"(or null: no limit), not {attempts!r}"
            )
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= MAX_RETRY_SECONDS:
                raise ValueError(
                    f"{name} must be a number of seconds from 0 to {MAX_RETRY_SECONDS:g}, "
                    f"not {value!r}"
                )
        if not _is_number(self.multiplier) or not 1 <= self.multiplier <= MAX_MULTIPLIER:
            raise ValueError(
                f"multiplier must be a number from 1 to {MAX_MULTIPLIER:g}, not {self.multiplier!r}"
            )
        deadline = self.deadline
        if deadline is not None and (
            not _is_number(deadline) or not 0 < deadline <= MAX_RETRY_DEADLINE
        ):
            raise ValueError(
                f"deadline must be a number of seconds above 0 and at most "
                f"{MAX_RETRY_DEADLINE:g} (or null), not {deadline!r}"
            )
        if not isinstance(self.jitter, bool):
            raise ValueError(f"jitter must be true or false, not {self.jitter!r}")

    def backoff_cap(self, attempts_made: int) -> float:
        """Upper bound of the wait after `attempts_made` attempts (exponential, capped)."""
        exponent = max(attempts_made - 1, 0)
        # Guard the float power: 2.0 ** 2000 overflows long before the cap matters.
        try:
            growth = self.multiplier**exponent
        except OverflowError:
            return self.max_delay if self.initial_delay > 0 else 0.0
        return min(self.max_delay, self.initial_delay * growth)

    def next_delay(
        self,
        *,
        attempts_made: int,
        first_attempt_at: float,
        now: float,
        retryable: bool,
        rng: UniformSource,
        retry_after: float | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        The decision is tenacity's own (`Retrying.iter` with `stop_after_attempt`,
        `stop_before_delay` and a full-jitter wait), fed a call state rebuilt from the
        journal: attempt count, first-attempt time and `now` come from the caller, the jitter
        from `rng`. A server's `Retry-After` is a floor on the wait.
        """
        if not retryable:
            return None
        retrying = _retrying(self)
        # tenacity keeps counters in `statistics` (thread-local, like its iteration state);
        # seed them instead of calling begin(), which would read the wall clock.
        retrying.statistics.update(attempt_number=attempts_made, idle_for=0.0)
        state = _CallState(retrying, attempts_made, first_attempt_at, now, rng, retry_after)
        action = retrying.iter(state)
        if isinstance(action, tenacity.DoSleep):
            return float(action)
        return None

    def _stop(self) -> tenacity.stop.stop_base:
        stop: tenacity.stop.stop_base = tenacity.stop_never
        if self.max_attempts is not None:
            stop = tenacity.stop_after_attempt(self.max_attempts)
        if self.deadline is not None:
            stop = stop | _StopPastDeadline(self.deadline)
        return stop


@functools.lru_cache(maxsize=256)
def _retrying(policy: RetryPolicy) -> tenacity.Retrying:
    """One tenacity controller per policy (by value), shared by every call and thread.

    It holds no per-call state: tenacity keeps its iteration state and statistics in a
    `threading.local`, and the jitter source and Retry-After travel on the call state.
    """
    return tenacity.Retrying(
        stop=policy._stop(),
        wait=_FullJitter(policy),
        retry=tenacity.retry_if_result(_is_retryable),
        retry_error_callback=_give_up,
        sleep=_never_sleep,
    )


class _CallState(tenacity.RetryCallState):
    """A tenacity call state rebuilt from the journal, plus this call's jitter source.

    tenacity's own initialiser stamps a start time from its monotonic clock; it is replaced
    at once by the journal's first attempt time, so no decision depends on that clock.
    """

    def __init__(
        self,
        retrying: tenacity.Retrying,
        attempts_made: int,
        first_attempt_at: float,
        now: float,
        rng: UniformSource,
        retry_after: float | None,
    ) -> None:
        super().__init__(retrying, fn=None, args=(), kwargs={})
        self.start_time = first_attempt_at
        self.attempt_number = attempts_made
        outcome = tenacity.Future(attempts_made)
        outcome.set_result(_RETRYABLE)
        self.outcome = outcome
        self.outcome_timestamp = now
        self.rng = rng
        self.retry_after = retry_after


_RETRYABLE = object()
_GIVE_UP = object()


def _is_retryable(outcome: object) -> bool:
    return outcome is _RETRYABLE


def _give_up(_state: tenacity.RetryCallState) -> object:
    return _GIVE_UP


def _never_sleep(seconds: float) -> None:
    raise AssertionError("the retry policy only decides; runtimes do the waiting")


class _StopPastDeadline(tenacity.stop.stop_base):
    """tenacity stop: give up if the next attempt would start after the deadline.

    Like `stop_before_delay`, but an attempt starting exactly at the deadline still runs.
    """

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        # the policy's call state always carries its outcome time, so this is never None
        elapsed = retry_state.seconds_since_start or 0.0
        return elapsed + retry_state.upcoming_sleep > self.deadline


class _FullJitter(tenacity.wait.wait_base):
    """tenacity wait: uniform in [0, exponential cap], drawn from the call's generator.

    Shared by every call of one policy, so it keeps nothing per call: the generator and the
    server's Retry-After come from the call state (`_CallState`).
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        assert isinstance(retry_state, _CallState)
        cap = self.policy.backoff_cap(retry_state.attempt_number)
        delay = retry_state.rng.uniform(0.0, cap) if self.policy.jitter else cap
        if retry_state.retry_after is not None:
            delay = max(delay, retry_state.retry_after)
        return delay


DEFAULT_ACTION_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=8, max_delay=10.0)
FOREVER_RETRY = RetryPolicy(max_attempts=None, max_delay=30.0)
