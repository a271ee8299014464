"""Autoscaling rule for orchestrator replicas: how many should run, and why.

Pure: the worker supervisor (issue 3, `sagalab worker --replicas auto`) and the simulator pass
the queue's depth, the age of its oldest saga, the current replica count and the clock reading;
`AutoscalePolicy.decide` returns a `ScaleDecision` carrying the desired count and a reason for
the log. The rule:

1. enough replicas for the backlog: `ceil(depth / target_depth)`;
2. if the oldest saga has waited longer than `max_age`, at least one more than now;
3. clamp to `[min_replicas, max_replicas]`;
4. scale down only when the backlog also allows it (depth-based need below current and the
   oldest saga younger than `max_age / 2`), one replica at a time;
5. no change within `cooldown` seconds of the last one (growth within `up_cooldown`, which
   defaults to the same), so the count does not flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AutoscalePolicy", "ScaleDecision"]


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """The desired replica count and why. `changed` is `desired != current`."""

    desired: int
    current: int
    reason: str

    @property
    def changed(self) -> bool:
        """Whether the runtime should start or stop replicas."""
        return self.desired != self.current


@dataclass(frozen=True)
class AutoscalePolicy:
    """Bounds and thresholds of the replica rule (see the module docstring)."""

    min_replicas: int = 1
    max_replicas: int = 8
    target_depth: float = 10.0
    max_age: float = 2.0
    cooldown: float = 10.0
    up_cooldown: float | None = None

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < max(self.min_replicas, 1):
            raise ValueError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.target_depth <= 0 or self.max_age <= 0:
            raise ValueError("target_depth and max_age must be positive")
        if self.cooldown < 0 or (self.up_cooldown is not None and self.up_cooldown < 0):
            raise ValueError("cooldowns must not be negative")

    def decide(
        self,
        *,
        depth: int,
        oldest_age: float,
        current: int,
        now: float,
        last_change_at: float | None,
    ) -> ScaleDecision:
        """The replica count to run now (see the module docstring for the rule)."""
        need = math.ceil(depth / self.target_depth) if depth > 0 else 0
        why = f"depth {depth} needs {need}"
        desired = need
        if oldest_age > self.max_age and desired <= current:
            desired = current + 1
            why = f"oldest saga waited {oldest_age:.1f}s > {self.max_age:.1f}s"
        if desired < current:
            if oldest_age > self.max_age / 2:
                desired = current
                why = f"oldest saga waited {oldest_age:.1f}s; holding"
            else:
                desired = current - 1
                why = f"depth {depth} needs {need}; stepping down"
        bounded = min(max(desired, self.min_replicas), self.max_replicas)
        if bounded != desired:
            why += f" (bounded to [{self.min_replicas}, {self.max_replicas}])"
        desired = bounded
        if desired == current:
            return ScaleDecision(current, current, f"steady: {why}")
        # Bounds are enforced even inside the cooldown (e.g. a current count below minimum).
        if self.min_replicas <= current <= self.max_replicas and last_change_at is not None:
            wait = self.cooldown
            if desired > current and self.up_cooldown is not None:
                wait = self.up_cooldown
            since = now - last_change_at
            if since < wait:
                return ScaleDecision(
                    current, current, f"cooldown ({since:.1f}s of {wait:.1f}s): {why}"
                )
        verb = "scale up" if desired > current else "scale down"
        return ScaleDecision(desired, current, f"{verb} {current}->{desired}: {why}")
