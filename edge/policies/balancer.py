"""Load-balancer choice and instance health: which gateway gets the next request.

Pure: the balancer sees `Instance`s (an `InstanceView` snapshot the runtime builds from its
own bookkeeping, or any object that answers `available` and `active`) and a random source
passed in; it never reads a clock. The real load balancer
(issue 5) and the simulator call the same `Balancer.choose`, so both follow one rule:

* an instance that is down (ejected by health checks) or at its connection limit is never chosen;
* `round_robin` walks the instances in order from where it stopped;
* `random` picks uniformly among the eligible;
* `least_connections` picks the eligible instance with the fewest active connections; ties go
  round robin (the first tied instance at or after the cursor), so a sequential client, which
  always sees every instance idle, alternates instead of loading the first one only. Gateways
  each enforce their share of a key's rate: sending every tie to the first would halve the
  rate a sequential client gets. No randomness, so the simulator stays reproducible;
* `power_of_two` draws two distinct eligible instances and keeps the less loaded one;
* `weighted_round_robin` gives each eligible instance a share of the requests proportional to
  its weight (`weights`, one per instance; instances of different speed), interleaved rather
  than in bursts: nginx's smooth weighted round robin (each choice adds every eligible
  instance's weight to its credit, takes the instance with the most credit and charges it the
  eligible weights' sum). No randomness. An instance of weight 0 is never chosen.

`HealthTracker` turns check results into ejection and return: `fail_threshold` consecutive
failed checks eject an instance, `pass_threshold` consecutive passing checks bring it back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

__all__ = [
    "Balancer",
    "HealthTracker",
    "Instance",
    "InstanceView",
    "RandomSource",
    "Strategy",
    "UnusedWeights",
    "eligible",
]


class RandomSource(Protocol):
    """What the balancer needs from a random generator (`random.Random` fits)."""

    def random(self) -> float: ...


class Instance(Protocol):
    """What the balancer reads of an instance."""

    @property
    def available(self) -> bool:
        """Healthy and below its connection limit."""
        ...

    @property
    def active(self) -> int:
        """Connections in flight."""
        ...


class Strategy(StrEnum):
    """How to choose among eligible instances."""

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    LEAST_CONNECTIONS = "least_connections"
    POWER_OF_TWO = "power_of_two"
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"


@dataclass(frozen=True, slots=True)
class InstanceView:
    """What the balancer knows about one instance when it chooses.

    `healthy`: not ejected (the runtime's `HealthTracker` says so). `active`: connections in
    flight. `limit`: the instance's connection limit, or None for no limit.
    """

    name: str
    healthy: bool = True
    active: int = 0
    limit: int | None = None

    @property
    def available(self) -> bool:
        """Healthy and below its connection limit."""
        return self.healthy and (self.limit is None or self.active < self.limit)


def eligible(instances: Sequence[Instance]) -> list[int]:
    """Positions of the instances that may receive a request."""
    return [i for i, inst in enumerate(instances) if inst.available]


class UnusedWeights(ValueError):
    """Weights given with a strategy that would ignore them (all but weighted_round_robin)."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        super().__init__(
            "weights are used only by the weighted_round_robin strategy "
            f"(the strategy is {strategy.value})"
        )


class Balancer:
    """Chooses an instance for each request under one `Strategy`.

    Holds only the round-robin cursor (used by `round_robin`, and by `least_connections` to
    break ties) and, for `weighted_round_robin`, the weights and each instance's credit;
    everything else comes in with each call. `weights` (one per instance, >= 0, not all 0;
    None: all 1) are for `weighted_round_robin` only: given with another strategy, which
    would ignore them, they are refused (ValueError).
    """

    __slots__ = ("strategy", "_cursor", "weights", "_credit")

    def __init__(
        self,
        strategy: Strategy | str = Strategy.ROUND_ROBIN,
        weights: Sequence[float] | None = None,
    ) -> None:
        self.strategy = Strategy(strategy)
        self._cursor = 0
        if weights is not None:
            if any(
                isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf
                for w in weights
            ):
                raise ValueError("weights must be finite numbers, 0 or more")
            if weights and not any(weights):
                raise ValueError("weights must not all be 0")
            if weights and self.strategy is not Strategy.WEIGHTED_ROUND_ROBIN:
                # Another strategy would ignore them: a user who gave weights expects them used.
                raise UnusedWeights(self.strategy)
        self.weights: tuple[float, ...] | None = (
            tuple(float(w) for w in weights) if weights else None
        )
        self._credit: list[float] = []

    def choose(self, instances: Sequence[Instance], rng: RandomSource) -> int | None:
        """Position of the chosen instance, or None if none is eligible (answer 503)."""
        n = len(instances)
        if n == 0:
            return None
        strategy = self.strategy
        if strategy is Strategy.ROUND_ROBIN:
            for k in range(n):
                i = (self._cursor + k) % n
                if instances[i].available:
                    self._cursor = (i + 1) % n
                    return i
            return None
        if strategy is Strategy.LEAST_CONNECTIONS:
            # One pass in ring order from the cursor, reading each instance once: the first
            # with the fewest active connections is the first tied one at or after the cursor.
            # (The simulator asks for every request: a pass over `eligible` and again over the
            # tied ones cost twice the property reads.)
            cursor = self._cursor
            chosen, fewest = -1, 0
            for k in range(n):
                i = (cursor + k) % n
                instance = instances[i]
                if instance.available:
                    active = instance.active
                    if chosen < 0 or active < fewest:
                        chosen, fewest = i, active
            if chosen < 0:
                return None
            self._cursor = (chosen + 1) % n
            return chosen
        if strategy is Strategy.WEIGHTED_ROUND_ROBIN:
            return self._weighted(instances)
        candidates = eligible(instances)
        if not candidates:
            return None
        if strategy is Strategy.RANDOM:
            return candidates[int(rng.random() * len(candidates)) % len(candidates)]
        # power of two choices
        if len(candidates) == 1:
            return candidates[0]
        m = len(candidates)
        a = int(rng.random() * m) % m
        b = int(rng.random() * (m - 1)) % (m - 1)
        if b >= a:
            b += 1
        # The first draw wins ties, so equal loads still spread uniformly.
        first, second = candidates[a], candidates[b]
        return second if instances[second].active < instances[first].active else first

    def _weighted(self, instances: Sequence[Instance]) -> int | None:
        n = len(instances)
        weights = self.weights
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} weights for {n} instances")
        credit = self._credit
        if len(credit) != n:
            credit[:] = [0.0] * n
        chosen, total = -1, 0.0
        for i in range(n):
            weight = 1.0 if weights is None else weights[i]
            if weight > 0 and instances[i].available:
                credit[i] += weight
                total += weight
                if chosen < 0 or credit[i] > credit[chosen]:
                    chosen = i
        if chosen < 0:
            return None
        credit[chosen] -= total
        return chosen


class HealthTracker:
    """Ejection and return of one instance from consecutive health-check results."""

    __slots__ = ("fail_threshold", "pass_threshold", "healthy", "_fails", "_passes")

    def __init__(self, fail_threshold: int = 2, pass_threshold: int = 2) -> None:
        if fail_threshold < 1 or pass_threshold < 1:
            raise ValueError("thresholds must be at least 1")
        self.fail_threshold = fail_threshold
        self.pass_threshold = pass_threshold
        self.healthy = True
        self._fails = 0
        self._passes = 0

    def record(self, ok: bool) -> bool | None:
        """Fold one check result in; return the new health if it changed, else None."""
        if ok:
            self._fails = 0
            self._passes += 1
            if not self.healthy and self._passes >= self.pass_threshold:
                self.healthy = True
                return True
        else:
            self._passes = 0
            self._fails += 1
            if self.healthy and self._fails >= self.fail_threshold:
                self.healthy = False
                return False
        return None
