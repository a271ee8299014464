"""Retry policy: exponential backoff with full jitter, attempt and deadline limits.

Pure: time (`now`, `first_attempt_at`) and randomness (`rng`) are arguments, so the real
orchestrator and the simulator make the same decision from the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import tenacity


class UniformSource(Protocol):
    """What the policy needs from a random generator (`random.Random` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


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
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("deadline must be positive")

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
        retrying = tenacity.Retrying(
            stop=self._stop(),
            wait=_FullJitter(self, rng, retry_after),
            retry=tenacity.retry_if_result(lambda outcome: outcome is _RETRYABLE),
            retry_error_callback=lambda _state: _GIVE_UP,
            sleep=_never_sleep,
        )
        # tenacity keeps counters in `statistics`; seed them instead of calling begin(),
        # which would read the wall clock.
        retrying.statistics.update(attempt_number=attempts_made, idle_for=0.0)
        state = tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
        state.attempt_number = attempts_made
        state.start_time = first_attempt_at
        state.outcome_timestamp = now
        outcome = tenacity.Future(attempts_made)
        outcome.set_result(_RETRYABLE)
        state.outcome = outcome
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


_RETRYABLE = object()
_GIVE_UP = object()


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
    """tenacity wait: uniform in [0, exponential cap], drawn from an injected generator."""

    def __init__(self, policy: RetryPolicy, rng: UniformSource, retry_after: float | None) -> None:
        self.policy = policy
        self.rng = rng
        self.retry_after = retry_after

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        cap = self.policy.backoff_cap(retry_state.attempt_number)
        delay = self.rng.uniform(0.0, cap) if self.policy.jitter else cap
        if self.retry_after is not None:
            delay = max(delay, self.retry_after)
        return delay


DEFAULT_ACTION_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=8, max_delay=10.0)
FOREVER_RETRY = RetryPolicy(max_attempts=None, max_delay=30.0)
