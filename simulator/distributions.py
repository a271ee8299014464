"""Erlang-k and hyperexponential draws, and the first two moments of every distribution.

`stations.sampler` builds every latency sampler; the two phase-type distributions live here:

* `erlang`: `{dist: erlang, k: 4, mean: 0.01}`, the sum of `k` exponential phases of mean
  `mean / k` (squared coefficient of variation 1/k: steadier than exponential);
* `hyperexponential`: `{dist: hyperexponential, means: [0.005, 0.1], probs: [0.9, 0.1]}`, an
  exponential of mean `means[i]` with probability `probs[i]` (squared coefficient of variation
  above 1: burstier than exponential). The probabilities sum to 1.

`moments(spec)` gives E[X] and E[X^2] of any spec `sampler` takes: the Pollaczek-Khinchine
formula needs both (`queueing.pk_wait`), and a client's `interarrival` shape is scaled by its
mean so that the rate still sets the mean gap. Specs reach here already checked by `sampler`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ScenarioError

__all__ = ["MAX_BRANCHES", "MAX_PHASES", "erlang", "hyperexponential", "moments"]

#: Most phases of an Erlang distribution (each draw costs one uniform number per phase).
MAX_PHASES = 100
#: Most branches of a hyperexponential distribution.
MAX_BRANCHES = 16
_log = math.log


def erlang(node: Any, rng: random.Random) -> Callable[[], float]:
    """The sampler of `{dist: erlang, k, mean}` (k phases, `mean` in all)."""
    k = node.int("k", min=1)
    if k > MAX_PHASES:
        raise ScenarioError(f"{node.path}.k", f"must be at most {MAX_PHASES} phases, got {k}")
    phase = node.num("mean", positive=True) / k
    uniform01 = rng.random
    phases = range(k)

    def draw() -> float:
        # One logarithm of the product instead of k: 1 - u is in (0, 1], and a product of at
        # most MAX_PHASES of them stays far above the smallest float.
        product = 1.0
        for _ in phases:
            product *= 1.0 - uniform01()
        return -_log(product) * phase

    return draw


def _numbers(node: Any, key: str, *, positive: bool) -> list[float]:
    where = f"{node.path}.{key}"
    raw = node.get(key)
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_BRANCHES:
        raise ScenarioError(where, f"must be a list of 1 to {MAX_BRANCHES} numbers")
    out = []
    for i, x in enumerate(raw):
        bad = isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x)
        if bad or x < 0 or (positive and x <= 0):
            kind = "positive" if positive else ">= 0"
            raise ScenarioError(f"{where}[{i}]", f"must be a number {kind}, got {x!r}")
        out.append(float(x))
    return out


def _branches(node: Any) -> tuple[list[float], list[float]]:
    means = _numbers(node, "means", positive=True)
    probs = _numbers(node, "probs", positive=False)
    if len(probs) != len(means):
        raise ScenarioError(
            f"{node.path}.probs", f"needs one probability per mean ({len(means)}), got {len(probs)}"
        )
    if abs(math.fsum(probs) - 1.0) > 1e-9:
        raise ScenarioError(f"{node.path}.probs", f"must sum to 1, got {math.fsum(probs):g}")
    return means, probs


def hyperexponential(node: Any, rng: random.Random) -> Callable[[], float]:
    """The sampler of `{dist: hyperexponential, means, probs}`."""
    means, probs = _branches(node)
    # Cumulative thresholds; the last is 1 whatever the rounding, so a draw always lands.
    edges = [math.fsum(probs[: i + 1]) for i in range(len(probs))]
    edges[-1] = 1.0
    branches = list(zip(edges, means, strict=True))
    uniform01 = rng.random

    def draw() -> float:
        u = uniform01()
        chosen = means[-1]
        for edge, mean in branches:
            if u < edge:
                chosen = mean
                break
        return -_log(1.0 - uniform01()) * chosen

    return draw


def moments(spec: Mapping[str, Any]) -> tuple[float, float]:
    """(E[X], E[X^2]) of a distribution spec that `stations.sampler` accepted."""
    dist = spec.get("dist", "exponential")
    if dist == "exponential":
        m = float(spec["mean"])
        return m, 2 * m * m
    if dist == "erlang":
        m, k = float(spec["mean"]), int(spec["k"])
        return m, m * m * (1 + 1 / k)
    if dist == "hyperexponential":
        pairs = list(zip(spec["probs"], spec["means"], strict=True))
        return math.fsum(p * m for p, m in pairs), math.fsum(2 * p * m * m for p, m in pairs)
    if dist == "lognormal":
        mu, sigma = _log(float(spec["median"])), float(spec.get("sigma", 0.5))
        return math.exp(mu + sigma * sigma / 2), math.exp(2 * mu + 2 * sigma * sigma)
    if dist == "constant":
        v = float(spec["value"])
        return v, v * v
    if dist == "uniform":
        a, b = float(spec["low"]), float(spec["high"])
        return (a + b) / 2, (a * a + a * b + b * b) / 3
    # empirical: uniform between consecutive quantiles, each span with weight 1/k
    points = [float(x) for x in spec["quantiles"]]
    spans = list(zip(points, points[1:], strict=False))
    k = len(spans)
    first = math.fsum((a + b) / 2 for a, b in spans) / k
    second = math.fsum((a * a + a * b + b * b) / 3 for a, b in spans) / k
    return first, second
