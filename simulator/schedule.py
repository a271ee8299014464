"""Arrival-rate schedules and the Poisson arrival process that follows them.

A schedule is piecewise: constant, `spike` (base, then peak between start and end), `steps`
(`[[t, rate], ...]`) and `ramp` (linear from `from` to `to` between start and end). Arrivals
are a non-homogeneous Poisson process, drawn segment by segment (thinning only inside a ramp),
so a quiet segment costs no events.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Generator
from typing import Any

import simpy

from .config import Node
from .errors import ScenarioError
from .timer import Timer

__all__ = ["Segment", "arrivals", "segments"]

# (start, end, rate at t, max rate over the segment)
Segment = tuple[float, float, Callable[[float], float], float]


def _flat(rate: float) -> Callable[[float], float]:
    return lambda _t: rate


def segments(node: Node) -> list[Segment]:
    """The schedule at `node` as contiguous segments from 0 to infinity."""
    kind = node.text("kind", "constant", {"constant", "spike", "steps", "ramp"})
    inf = math.inf
    if kind == "constant":
        v = node.num("value", min=0.0)
        return [(0.0, inf, _flat(v), v)]
    if kind == "spike":
        base, peak = node.num("base", min=0.0), node.num("peak", min=0.0)
        start, end = node.num("start", min=0.0), node.num("end", min=0.0)
        if end <= start:
            raise ScenarioError(f"{node.path}.end", "must be after start")
        return [
            (0.0, start, _flat(base), base),
            (start, end, _flat(peak), peak),
            (end, inf, _flat(base), base),
        ]
    if kind == "ramp":
        a, b = node.num("from", min=0.0), node.num("to", min=0.0)
        start, end = node.num("start", min=0.0), node.num("end", min=0.0)
        if end <= start:
            raise ScenarioError(f"{node.path}.end", "must be after start")

        def ramp(t: float) -> float:
            return a + (b - a) * (t - start) / (end - start)

        return [(0.0, start, _flat(a), a), (start, end, ramp, max(a, b)), (end, inf, _flat(b), b)]
    steps = node.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ScenarioError(f"{node.path}.steps", "must be a list of [time, rate] pairs")
    out: list[Segment] = []
    points: list[tuple[float, float]] = []
    for i, pair in enumerate(steps):
        ok = isinstance(pair, list) and len(pair) == 2
        if not ok or not all(isinstance(x, int | float) and x >= 0 for x in pair):
            raise ScenarioError(f"{node.path}.steps[{i}]", "must be [time, rate], both >= 0")
        points.append((float(pair[0]), float(pair[1])))
    points.sort()
    if points[0][0] > 0:
        points.insert(0, (0.0, 0.0))
    for i, (t, rate) in enumerate(points):
        end = points[i + 1][0] if i + 1 < len(points) else inf
        out.append((t, end, _flat(rate), rate))
    return out


def arrivals(
    env: simpy.Environment,
    segs: list[Segment],
    until: float,
    rng: random.Random,
    arrive: Callable[[], Any],
    shape: Callable[[], float] | None = None,
) -> Generator[simpy.Event, Any, None]:
    """A SimPy process calling `arrive()` at Poisson times following `segs`, until `until`.

    `shape` (a draw of mean 1) makes the gaps those of a renewal process instead: each gap is
    `shape() / rate` (Erlang gaps are steadier than Poisson, hyperexponential ones burstier).
    At a segment's end the gap in progress is dropped and a fresh one starts, which is exact
    only for Poisson; inside a ramp the gaps are thinned as Poisson ones are.
    """
    timer = Timer(env)  # each gap: one object scheduled again (simulator/timer.py)
    for start, end, rate_at, peak in segs:
        end = min(end, until)
        if start >= until:
            return
        if peak <= 0 or end <= start:
            continue
        if env.now < start:
            yield timer.after(start - env.now)
        constant = rate_at(start) == peak and rate_at(end if end < math.inf else start) == peak
        while True:
            gap = rng.expovariate(peak) if shape is None else shape() / peak
            if env.now + gap >= end:
                # Memoryless: what is left of this gap belongs to the next segment.
                if end > env.now:
                    yield timer.after(end - env.now)
                break
            yield timer.after(gap)
            if constant or rng.random() * peak < rate_at(env.now):
                arrive()
