"""Retry budget: retries at most a share of requests, with a per-second minimum.

A retry policy bounds what one request does; a budget bounds what all of a client's (or a
cluster's) requests do together, so that retries cannot multiply the load on a struggling
service (the amplification of a retry storm). This is Finagle's `RetryBudget`
(`percentCanRetry`, `minRetriesPerSec`, `ttl`) and gRPC's retry throttling in spirit:

    retries in the window  <=  ratio * requests in the window  +  min_per_second * window

counted over the last `window` seconds in one-second slots. A first attempt is a request
(`record_request`); a retry asks `try_retry`, which spends from the budget if it allows one.
The minimum lets a client with little traffic still retry (one retry in ten requests would
otherwise forbid any retry to a client sending five requests a minute).

Pure: the time `now` is an argument (seconds on the caller's clock); no clock, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

from sagalab.orchestrator.policies.sliding import SlidingCounts
from sagalab.orchestrator.policies.sliding import finite_number as _number

__all__ = ["MAX_BUDGET_RATIO", "MAX_BUDGET_WINDOW", "RetryBudget", "RetryBudgetPolicy"]

MAX_BUDGET_RATIO = 10.0
"""At most ten retries per request: a larger share is no budget at all."""
MAX_BUDGET_WINDOW = 3_600.0
"""Requests and retries are counted over at most an hour."""


@dataclass(frozen=True)
class RetryBudgetPolicy:
    """How many retries a budget allows: `ratio` of the requests plus `min_per_second`,
    both over the last `window` seconds."""

    ratio: float = 0.2
    min_per_second: float = 10.0
    window: float = 10.0

    def __post_init__(self) -> None:
        if not _number(self.ratio) or not 0 <= self.ratio <= MAX_BUDGET_RATIO:
            raise ValueError(
                f"ratio must be a number from 0 to {MAX_BUDGET_RATIO:g} (retries per request), "
                f"not {self.ratio!r}"
            )
        if not _number(self.min_per_second) or self.min_per_second < 0:
            raise ValueError(
                f"min_per_second must be a number of retries per second, 0 or more, "
                f"not {self.min_per_second!r}"
            )
        if not _number(self.window) or not 1 <= self.window <= MAX_BUDGET_WINDOW:
            raise ValueError(
                f"window must be a number of seconds from 1 to {MAX_BUDGET_WINDOW:g}, "
                f"not {self.window!r}"
            )


class RetryBudget:
    """The requests and retries of the last `policy.window` seconds, and the decision."""

    __slots__ = ("policy", "_counts")

    def __init__(self, policy: RetryBudgetPolicy) -> None:
        self.policy = policy
        self._counts = SlidingCounts(policy.window)  # first: requests, second: retries

    def record_request(self, now: float) -> None:
        """A first attempt was sent at `now`: it adds `ratio` to what may be retried."""
        self._counts.add_first(now)

    def allowance(self, now: float) -> float:
        """Retries the window allows in all at `now` (spent ones included)."""
        self._counts.at(now)
        policy = self.policy
        return policy.ratio * self._counts.first + policy.min_per_second * policy.window

    def try_retry(self, now: float) -> bool:
        """Whether a retry may be sent at `now`; if so, it is counted against the budget."""
        if self._counts.second + 1 > self.allowance(now):
            return False
        self._counts.add_second(now)
        return True
