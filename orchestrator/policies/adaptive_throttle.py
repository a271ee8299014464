"""Client-side adaptive throttling: a client that sees its backend refuse work refuses some
of its own requests locally, before sending them.

The Google SRE book ("Handling Overload", client-side throttling): over the last `window`
seconds a client counts its `requests` (every request the application asked for, those it
refused locally included) and its `accepts` (those the backend accepted), and refuses a new
request locally with probability

    max(0, (requests - k * accepts) / (requests + 1))

While the backend accepts everything, nothing is refused (requests <= k * accepts); when it
accepts nothing, almost everything is, and what is still sent is about `k` times what the
backend accepts: the load a failing backend receives stays bounded by what it can take,
instead of every client's retries piling on. `k` = 2 is the book's choice; nearer 1 is more
aggressive.

Pure: the time `now` and the uniform number `u` in [0, 1) are arguments (the caller's clock
and its seeded random generator); the counts are a `sliding.SlidingCounts`, as the retry
budget's (`retry_budget.py`) are.
"""

from __future__ import annotations

from dataclasses import dataclass

from sagalab.orchestrator.policies.sliding import SlidingCounts
from sagalab.orchestrator.policies.sliding import finite_number as _number

__all__ = ["MAX_THROTTLE_K", "MAX_THROTTLE_WINDOW", "AdaptiveThrottle", "ThrottlePolicy"]

MAX_THROTTLE_K = 100.0
"""Above a hundred requests per accept the throttle never refuses anything that matters."""
MAX_THROTTLE_WINDOW = 3_600.0
"""Requests and accepts are counted over at most an hour."""


@dataclass(frozen=True)
class ThrottlePolicy:
    """Adaptive throttling's two settings: the multiplier `k` and the `window` in seconds."""

    k: float = 2.0
    window: float = 120.0

    def __post_init__(self) -> None:
        if not _number(self.k) or not 1 <= self.k <= MAX_THROTTLE_K:
            raise ValueError(
                f"k must be a number from 1 to {MAX_THROTTLE_K:g} (requests sent per request "
                f"accepted), not {self.k!r}"
            )
        if not _number(self.window) or not 1 <= self.window <= MAX_THROTTLE_WINDOW:
            raise ValueError(
                f"window must be a number of seconds from 1 to {MAX_THROTTLE_WINDOW:g}, "
                f"not {self.window!r}"
            )


class AdaptiveThrottle:
    """The requests and accepts of the last `policy.window` seconds, and the decision."""

    __slots__ = ("policy", "_counts")

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.policy = policy
        self._counts = SlidingCounts(policy.window)  # first: requests, second: accepts

    def reject_probability(self, now: float) -> float:
        """The chance that a request at `now` is refused locally."""
        counts = self._counts
        counts.at(now)
        requests = counts.first
        return max(0.0, (requests - self.policy.k * counts.second) / (requests + 1))

    def admit(self, now: float, u: float) -> bool:
        """Whether to send a request at `now` (`u`: uniform in [0, 1)); it counts as a request
        either way."""
        send = u >= self.reject_probability(now)
        self._counts.add_first(now)
        return send

    def record_accept(self, now: float) -> None:
        """The backend accepted a request (answered it, not refused it as overloaded)."""
        self._counts.add_second(now)

    @property
    def counts(self) -> tuple[int, int]:
        """(requests, accepts) in the window as of the last call."""
        return self._counts.first, self._counts.second
