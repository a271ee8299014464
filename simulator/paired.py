"""Paired differences over seeds: the mean difference and its 95 % t-interval (pure).

`simulate compare` runs a base and a variant scenario over the same seeds. Each seed gives one
pair of figures; their difference `variant - base` removes what the seed does to both (the
same arrivals where the two models draw alike), so the interval is that of the K per-seed
differences: mean ± t(0.975, K - 1) · sd / sqrt(K). A difference is significant when its
interval excludes 0. Identical runs give differences of exactly 0: an interval [0, 0], not
significant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedDifference", "paired_difference", "t_interval", "t_quantile_975"]

# Student's t at 0.975 for 1 to 30 degrees of freedom (any statistics table).
_T975 = (
    12.706205,
    4.302653,
    3.182446,
    2.776445,
    2.570582,
    2.446912,
    2.364624,
    2.306004,
    2.262157,
    2.228139,
    2.200985,
    2.178813,
    2.160369,
    2.144787,
    2.131450,
    2.119905,
    2.109816,
    2.100922,
    2.093024,
    2.085963,
    2.079614,
    2.073873,
    2.068658,
    2.063899,
    2.059539,
    2.055529,
    2.051831,
    2.048407,
    2.045230,
    2.042272,
)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """Student's t quantile at 0.975 for `df` >= 1 degrees of freedom.

    A table up to 30; beyond, the Cornish-Fisher expansion around the normal quantile (its
    error there is under 1e-5, far below what a simulated interval can resolve).
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass(frozen=True)
class PairedDifference:
    """The mean of `variant - base` over the seeds and its 95 % interval."""

    base: float
    variant: float
    difference: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0: the variant differs from the base at the 5 % level."""
        return self.low > 0 or self.high < 0


def paired_difference(base: Sequence[float], variant: Sequence[float]) -> PairedDifference:
    """The paired t-interval of `variant[i] - base[i]`; ValueError under two pairs."""
    if len(base) != len(variant):
        raise ValueError(f"{len(base)} base runs against {len(variant)} variant runs")
    k = len(base)
    if k < 2:
        raise ValueError("a paired interval needs at least two seeds")
    diffs = [v - b for b, v in zip(base, variant, strict=True)]
    mean, low, high = t_interval(diffs)
    return PairedDifference(
        base=math.fsum(base) / k,
        variant=math.fsum(variant) / k,
        difference=mean,
        low=low,
        high=high,
    )


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its 95 % t-interval, mean ± t(0.975, K - 1)
    · sd / sqrt(K); ValueError under two values."""
    k = len(values)
    if k < 2:
        raise ValueError("an interval needs at least two values")
    mean = math.fsum(values) / k
    var = math.fsum((d - mean) ** 2 for d in values) / (k - 1)
    half = t_quantile_975(k - 1) * math.sqrt(var / k)
    return mean, mean - half, mean + half
