"""Two counts over the last `window` seconds, kept in one-second slots.

What the retry budget (requests, retries) and the client's adaptive throttle (requests,
accepts) both count. Pure: the time `now` is an argument (seconds on the caller's clock).
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["SlidingCounts", "finite_number"]


def finite_number(value: object) -> bool:
    """An int or float (not a bool) that is finite: what a policy's settings must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class SlidingCounts:
    """Counts `first` and `second` of the last `window` seconds (whole seconds, rounded up)."""

    __slots__ = ("_span", "_slots", "first", "second")

    def __init__(self, window: float) -> None:
        self._span = math.ceil(window)
        # [second, first, second] per one-second slot, oldest first; totals kept alongside.
        self._slots: deque[list[int]] = deque()
        self.first = 0
        self.second = 0

    def at(self, now: float) -> None:
        """Forget the slots that left the window by `now` and open the slot of `now`."""
        second = math.floor(now)
        slots = self._slots
        oldest = second - self._span + 1
        while slots and slots[0][0] < oldest:
            _, first, later = slots.popleft()
            self.first -= first
            self.second -= later
        # A clock that goes back (it should not) counts in the newest slot.
        if not slots or slots[-1][0] < second:
            slots.append([second, 0, 0])

    def add_first(self, now: float) -> None:
        """Count one `first` at `now`."""
        self.at(now)
        self._slots[-1][1] += 1
        self.first += 1

    def add_second(self, now: float) -> None:
        """Count one `second` at `now`."""
        self.at(now)
        self._slots[-1][2] += 1
        self.second += 1
