"""Retry policy: exponential backoff with full jitter, attempt and deadline limits.

Pure: time (`now`, `first_attempt_at`) and randomness (`rng`) are arguments, so the real
orchestrator and the simulator make the same decision from the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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

        Full jitter: a uniform draw in [0, cap]. A server's `Retry-After` is a floor.
        """
        if not retryable:
            return None
        if self.max_attempts is not None and attempts_made >= self.max_attempts:
            return None
        cap = self.backoff_cap(attempts_made)
        delay = rng.uniform(0.0, cap) if self.jitter else cap
        if retry_after is not None:
            delay = max(delay, retry_after)
        if self.deadline is not None and (now + delay) - first_attempt_at > self.deadline:
            return None
        return delay


DEFAULT_ACTION_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=8, max_delay=10.0)
FOREVER_RETRY = RetryPolicy(max_attempts=None, max_delay=30.0)
