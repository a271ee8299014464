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
* `ramp_stages`, `stage_figures`, `hysteresis`: a load that rises then falls level by level
  (`simulate ramp`), the figures of each stage, and each level's figure on the way up against
  the way down: a system that is worse at the same load after an overload is metastable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "RecoveryRule",
    "Stage",
    "amplification",
    "baseline",
    "hysteresis",
    "ramp_stages",
    "rolling_mean",
    "stage_figures",
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


@dataclass(frozen=True)
class Stage:
    """One level of a ramp: `rate` arrivals per second from `start` to `end` seconds."""

    direction: str  # "up" (the peak included) or "down"
    rate: float
    start: float
    end: float


def ramp_stages(levels: Sequence[float], hold: float) -> list[Stage]:
    """`levels` (rising) held `hold` seconds each, then the same levels back down below the
    peak: [1, 2, 3] gives 1, 2, 3 up and 2, 1 down. ValueError unless the levels rise."""
    if len(levels) < 2:
        raise ValueError("needs at least two levels")
    if any(b <= a for a, b in zip(levels, levels[1:], strict=False)) or levels[0] < 0:
        raise ValueError("levels must rise: 0 <= first < second < ...")
    if hold <= 0:
        raise ValueError("hold must be positive")
    rates = [("up", float(x)) for x in levels]
    rates += [("down", float(x)) for x in reversed(levels[:-1])]
    return [Stage(d, r, i * hold, (i + 1) * hold) for i, (d, r) in enumerate(rates)]


def stage_figures(
    series: Sequence[dict[str, float]],
    stages: Sequence[Stage],
    columns: Sequence[str],
    settle: float,
) -> list[dict[str, float | str]]:
    """Per stage, the mean of each of `columns` over its samples taken more than `settle`
    seconds after the stage starts (the transient of the step skipped)."""
    out: list[dict[str, float | str]] = []
    for stage in stages:
        rows = [r for r in series if stage.start + settle < r["t"] <= stage.end]
        figures: dict[str, float | str] = {"direction": stage.direction, "rate": stage.rate}
        for col in columns:
            values = [r[col] for r in rows]
            figures[col] = round(sum(values) / len(values), 6) if values else 0.0
        out.append(figures)
    return out


def hysteresis(figures: Sequence[dict[str, float | str]], column: str) -> list[dict[str, float]]:
    """For each rate met both ways, `column` on the way up and on the way down, and the gap
    (up minus down: positive when the way down is worse for a goodput)."""
    up = {f["rate"]: f[column] for f in figures if f["direction"] == "up"}
    out: list[dict[str, float]] = []
    for f in figures:
        if f["direction"] != "down" or f["rate"] not in up:
            continue
        a, b = float(up[f["rate"]]), float(f[column])
        out.append({"rate": float(f["rate"]), "up": a, "down": b, "gap": round(a - b, 6)})
    return out
