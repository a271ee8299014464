"""Metastability as output: how much a service's load is amplified, and whether a run recovers.

Pure functions over counts and sampled series (no SimPy, no clock, no randomness), so they are
tested on hand-made series and the report only calls them.

* `amplification(calls, useful)`: calls offered to a service per useful call. A *useful call*
  is the first call of one operation (a saga's step, action or compensation) that reached the
  service; every further call of the same operation (a retry after a timeout, an error or a
  lost answer, a resumed attempt after a crash) is amplification. 1.0 means every operation
  reached the service once; a retry storm gives several. Calls refused by the breaker before
  they are sent reach no service and count nowhere.
* `time_to_recover(times, values, ...)`: after a fault window ends, how long until a health
  signal (windowed goodput, say) is back within `tolerance` of its pre-fault level and stays
  there for `hold` seconds; None when it never does before the end of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "RecoveryRule",
    "amplification",
    "baseline",
    "rolling_mean",
    "time_to_recover",
]


def amplification(calls: int, useful: int) -> float:
    """Calls offered per useful call (0.0 when nothing useful reached the service)."""
    return calls / useful if useful else 0.0


def rolling_mean(values: Sequence[float], width: int) -> list[float]:
    """Trailing mean over the last `width` values (fewer at the start)."""
    if width < 1:
        raise ValueError("width must be at least 1")
    out: list[float] = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def baseline(times: Sequence[float], values: Sequence[float], start: float, end: float) -> float:
    """Mean of the samples taken in (start, end]; ValueError when there is none."""
    chosen = [v for t, v in zip(times, values, strict=True) if start < t <= end]
    if not chosen:
        raise ValueError(f"no sample in ({start:g}, {end:g}]")
    return sum(chosen) / len(chosen)


@dataclass(frozen=True)
class RecoveryRule:
    """When a signal counts as recovered: within `tolerance` (a share) of its pre-fault level
    for `hold` seconds in a row. `higher_is_better` (goodput): only falling short counts
    (a backlog drained above the arrival rate is healthy); otherwise (latency) only
    exceeding it counts."""

    tolerance: float = 0.1
    hold: float = 5.0
    higher_is_better: bool = True

    def healthy(self, value: float, level: float) -> bool:
        """Is `value` within the rule of `level`?"""
        if self.higher_is_better:
            return value >= (1.0 - self.tolerance) * level
        return value <= (1.0 + self.tolerance) * level


def time_to_recover(
    times: Sequence[float],
    values: Sequence[float],
    *,
    fault_end: float,
    level: float,
    until: float,
    interval: float,
    rule: RecoveryRule = RecoveryRule(),
) -> float | None:
    """Seconds from `fault_end` to the start of the first stretch of healthy samples (each
    covering the `interval` before its time) that lasts `hold` seconds and ends by `until`;
    0.0 when the signal is healthy from the fault's end on; None when no such stretch exists
    (did not recover).
    """
    run_start: float | None = None
    for t, value in zip(times, values, strict=True):
        if t <= fault_end or t > until + 1e-9:
            continue
        if not rule.healthy(value, level):
            run_start = None
            continue
        if run_start is None:
            run_start = max(t - interval, fault_end)
        if t - run_start >= rule.hold - 1e-9:
            return round(run_start - fault_end, 6)
    return None
