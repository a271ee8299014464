"""Autoscaling rule: desired replicas from depth, age, bounds and cooldown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagalab.orchestrator.policies.autoscaling import AutoscalePolicy

POLICY = AutoscalePolicy(min_replicas=1, max_replicas=6, target_depth=10, max_age=2, cooldown=5)


@pytest.mark.parametrize(
    ("depth", "age", "current", "now", "last", "desired", "word"),
    [
        (0, 0.0, 1, 100, None, 1, "steady"),
        (35, 0.5, 1, 100, None, 4, "scale up"),
        (500, 9.0, 2, 100, None, 6, "bounded"),
        (5, 3.0, 1, 100, None, 2, "waited"),
        (0, 0.0, 4, 100, 90, 3, "scale down"),
        (0, 1.5, 4, 100, 90, 4, "holding"),
        (35, 0.5, 1, 100, 97, 1, "cooldown"),
        (0, 0.0, 0, 100, 99, 1, "scale up"),
        (0, 0.0, 9, 100, 99, 6, "bounded"),
    ],
    ids=[
        "idle-steady",
        "depth-up",
        "capped-at-max",
        "old-item-adds-one",
        "down-one-step",
        "old-item-holds",
        "cooldown-holds",
        "below-min-ignores-cooldown",
        "above-max-ignores-cooldown",
    ],
)
def test_decision_table(
    depth: int, age: float, current: int, now: float, last: float | None, desired: int, word: str
) -> None:
    decision = POLICY.decide(
        depth=depth, oldest_age=age, current=current, now=now, last_change_at=last
    )
    assert decision.desired == desired
    assert word in decision.reason
    assert decision.changed == (desired != current)


@given(
    depth=st.integers(0, 10_000),
    age=st.floats(0, 100),
    current=st.integers(0, 20),
    last=st.one_of(st.none(), st.floats(0, 100)),
)
def test_always_within_bounds_or_unchanged(
    depth: int, age: float, current: int, last: float | None
) -> None:
    d = POLICY.decide(depth=depth, oldest_age=age, current=current, now=100, last_change_at=last)
    assert POLICY.min_replicas <= d.desired <= POLICY.max_replicas or d.desired == current
    if 1 <= current <= 6 and last is not None and 100 - last < POLICY.cooldown:
        assert d.desired == current


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        AutoscalePolicy(min_replicas=3, max_replicas=2)
