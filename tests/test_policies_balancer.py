"""Load-balancer choice and health tracking."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagalab.edge.policies.balancer import Balancer, HealthTracker, InstanceView, Strategy

UP = InstanceView("a")


def views(*specs: tuple[bool, int, int | None]) -> list[InstanceView]:
    return [InstanceView(f"g{i}", h, a, lim) for i, (h, a, lim) in enumerate(specs)]


@pytest.mark.parametrize(
    ("strategy", "instances", "expected"),
    [
        ("least_connections", views((True, 5, None), (True, 2, None), (True, 3, None)), 1),
        ("least_connections", views((True, 5, None), (False, 0, None), (True, 3, None)), 2),
        ("least_connections", views((True, 1, None), (True, 1, None)), 0),
        ("least_connections", views((True, 0, 0), (True, 9, 10)), 1),
        ("round_robin", views((False, 0, None), (True, 0, None)), 1),
        ("random", views((False, 0, None), (True, 4, 4), (True, 0, None)), 2),
        ("power_of_two", views((True, 9, None), (True, 1, None)), 1),
        ("power_of_two", views((True, 9, None), (True, 1, 1), (False, 0, None)), 0),
    ],
    ids=[
        "lc-fewest",
        "lc-skips-down",
        "lc-tie-first",
        "lc-skips-full",
        "rr-skips-down",
        "random-only-eligible",
        "p2c-two-picks-lighter",
        "p2c-single-eligible",
    ],
)
def test_choice_table(strategy: str, instances: list[InstanceView], expected: int) -> None:
    assert Balancer(strategy).choose(instances, random.Random(0)) == expected


@pytest.mark.parametrize("strategy", list(Strategy), ids=[s.value for s in Strategy])
def test_none_when_nothing_eligible(strategy: Strategy) -> None:
    instances = views((False, 0, None), (True, 3, 3))
    assert Balancer(strategy).choose(instances, random.Random(0)) is None
    assert Balancer(strategy).choose([], random.Random(0)) is None


def test_round_robin_cycles() -> None:
    balancer = Balancer(Strategy.ROUND_ROBIN)
    instances = views((True, 0, None), (True, 0, None), (True, 0, None))
    picks = [balancer.choose(instances, random.Random(0)) for _ in range(7)]
    assert picks == [0, 1, 2, 0, 1, 2, 0]


def test_random_and_p2c_spread_load() -> None:
    rng = random.Random(3)
    instances = views(*[(True, 0, None)] * 4)
    for strategy in (Strategy.RANDOM, Strategy.POWER_OF_TWO):
        counts = Counter(Balancer(strategy).choose(instances, rng) for _ in range(4000))
        assert set(counts) == {0, 1, 2, 3}
        assert min(counts.values()) > 800


spec = st.tuples(st.booleans(), st.integers(0, 10), st.one_of(st.none(), st.integers(0, 10)))


@given(
    st.sampled_from(list(Strategy)),
    st.lists(spec, max_size=8),
    st.integers(0, 2**32),
)
def test_never_picks_down_or_full(strategy: Strategy, specs: list, seed: int) -> None:
    instances = views(*specs)
    choice = Balancer(strategy).choose(instances, random.Random(seed))
    if any(v.available for v in instances):
        assert choice is not None and instances[choice].available
    else:
        assert choice is None


def test_health_tracker_ejects_and_returns() -> None:
    tracker = HealthTracker(fail_threshold=2, pass_threshold=3)
    results = [tracker.record(ok) for ok in [False, True, False, False, True, True, True]]
    assert results == [None, None, None, False, None, None, True]
    assert tracker.healthy


def test_least_connections_ties_go_round_robin() -> None:
    # A sequential client always finds every instance idle: it must alternate, not load the
    # first one only (each gateway enforces its share of a key's rate).
    balancer = Balancer(Strategy.LEAST_CONNECTIONS)
    idle = views((True, 0, None), (True, 0, None), (True, 0, None))
    assert [balancer.choose(idle, random.Random(0)) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_least_connections_still_prefers_the_least_loaded_and_rotates_among_ties() -> None:
    balancer = Balancer(Strategy.LEAST_CONNECTIONS)
    busy_middle = views((True, 1, None), (True, 4, None), (True, 1, None))
    picks = [balancer.choose(busy_middle, random.Random(0)) for _ in range(4)]
    assert picks == [0, 2, 0, 2]
    assert balancer.choose(views((True, 3, None), (True, 0, None)), random.Random(0)) == 1


@given(st.lists(spec, max_size=8), st.lists(st.integers(0, 7), max_size=12))
def test_least_connections_is_the_fewest_then_the_first_at_or_after_the_cursor(
    specs: list, cursors: list[int]
) -> None:
    # The rule as the module docstring states it, written out the slow way: `choose` reads
    # each instance once in one pass (the simulator asks for every request) and must agree.
    instances = views(*specs)
    balancer = Balancer(Strategy.LEAST_CONNECTIONS)
    for cursor in cursors:
        balancer._cursor = cursor % max(len(instances), 1)
        start = balancer._cursor
        candidates = [i for i, v in enumerate(instances) if v.available]
        expected = None
        if candidates:
            fewest = min(instances[i].active for i in candidates)
            tied = [i for i in candidates if instances[i].active == fewest]
            expected = min(tied, key=lambda i: (i - start) % len(instances))
        assert balancer.choose(instances, random.Random(0)) == expected
        if expected is not None:
            assert balancer._cursor == (expected + 1) % len(instances)


def test_weighted_round_robin_is_smooth_and_proportional() -> None:
    balancer = Balancer(Strategy.WEIGHTED_ROUND_ROBIN, weights=[2, 1])
    instances = views((True, 0, None), (True, 0, None))
    picks = [balancer.choose(instances, random.Random(0)) for _ in range(9)]
    # Interleaved (not 0, 0, 1 bursts of the plain weighted cycle): nginx's smooth order.
    assert picks == [0, 1, 0] * 3
    counts = Counter(balancer.choose(instances, random.Random(0)) for _ in range(3000))
    assert counts == {0: 2000, 1: 1000}


def test_weighted_round_robin_skips_unavailable_and_zero_weight() -> None:
    balancer = Balancer(Strategy.WEIGHTED_ROUND_ROBIN, weights=[5, 0, 1])
    picks = {balancer.choose(views(*[(True, 0, None)] * 3), random.Random(0)) for _ in range(60)}
    assert picks == {0, 2}
    down = views((False, 0, None), (True, 0, None), (True, 0, None))
    assert {balancer.choose(down, random.Random(0)) for _ in range(10)} == {2}
    # Without weights every instance weighs 1: plain round robin.
    plain = Balancer(Strategy.WEIGHTED_ROUND_ROBIN)
    assert [plain.choose(views(*[(True, 0, None)] * 3), random.Random(0)) for _ in range(6)] == [
        0,
        1,
        2,
        0,
        1,
        2,
    ]


@pytest.mark.parametrize("weights", [[-1, 1], [0, 0], [float("inf")], [True, 1]])
def test_weighted_round_robin_refuses_bad_weights(weights: list) -> None:
    with pytest.raises(ValueError, match="weights"):
        Balancer(Strategy.WEIGHTED_ROUND_ROBIN, weights=weights)


def test_the_real_edge_pool_weighs_its_upstreams_by_the_same_rule() -> None:
    from sagalab.edge.pool import Pool

    pool = Pool(
        [("127.0.0.1", 1), ("127.0.0.1", 2)], strategy="weighted_round_robin", weights=[3, 1]
    )
    picks = [pool.choose(set()) for _ in range(8)]
    assert picks == [0, 0, 1, 0] * 2
    assert pool.choose({0}) == 1  # a tried upstream is skipped whatever its weight


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [(["1"], "1 weights for 2 upstreams"), (["-1", "1"], "weights must be finite")],
)
def test_edge_refuses_bad_weights_exit_2(weights: list[str], fragment: str) -> None:
    import subprocess
    import sys

    args = [sys.executable, "-m", "sagalab.edge.apps", "edge", "--strategy", "weighted_round_robin"]
    args += ["--upstream", "127.0.0.1:1", "--upstream", "127.0.0.1:2"]
    for w in weights:
        args += ["--weight", w]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert fragment in done.stderr and "Traceback" not in done.stderr
