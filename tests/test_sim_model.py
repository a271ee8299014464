"""Simulator plumbing: config overrides, claims, schedules, memory that stays flat."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

from sagalab.simulator.claims import evaluate
from sagalab.simulator.config import Node, apply_override, load_scenario, merge_defaults
from sagalab.simulator.errors import ScenarioError, ScenarioNotFound
from sagalab.simulator.metrics import Histogram
from sagalab.simulator.model import simulate


@pytest.mark.parametrize(
    ("assignment", "path", "value"),
    [
        ("duration=12", ("duration",), 12),
        ("services.payments.concurrency=4", ("services", "payments", "concurrency"), 4),
        ("clients.0.rate.value=2.5", ("clients", 0, "rate", "value"), 2.5),
        ("breakers.enabled=false", ("breakers", "enabled"), False),
    ],
    ids=["top", "nested", "list-index", "bool"],
)
def test_override_sets_value(assignment: str, path: tuple, value: object) -> None:
    config = load_scenario("baseline")
    apply_override(config, assignment)
    node = config
    for part in path:
        node = node[part]
    assert node == value


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("servcies.payments.concurrency=3", "unknown setting"),
        ("duration=fast", "expects a number"),
        ("clients.7.rate.value=1", "index '7'"),
        ("duration", "expected key.path=value"),
    ],
    ids=["typo", "wrong-kind", "bad-index", "no-equals"],
)
def test_bad_override_says_what_to_fix(assignment: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        apply_override(load_scenario("baseline"), assignment)


def test_unknown_scenario_lists_known_ones() -> None:
    with pytest.raises(ScenarioNotFound, match="baseline"):
        load_scenario("no-such-scenario")


def test_a_folder_named_like_a_shipped_scenario_does_not_hide_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `ddos/` folder in the working directory once made `simulate run ddos` answer "no
    scenario 'ddos': not a file and not one of ..., ddos, ..."."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ddos").mkdir()
    (tmp_path / "folder.yaml").mkdir()
    assert load_scenario("ddos")["source"] == "ddos"
    with pytest.raises(ScenarioError, match="folder.yaml: is a directory"):
        load_scenario("folder.yaml")
    (tmp_path / "baseline").write_text("name: mine\nduration: 3\n")
    assert load_scenario("baseline")["duration"] == 3  # a file of that name is the user's
    with pytest.raises(ScenarioNotFound):
        load_scenario("../scenarios/baseline")
    for name in ("", "a" * 300):  # no name; one too long for the file system (a traceback)
        with pytest.raises(ScenarioNotFound):
            load_scenario(name)
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ScenarioError, match="latin1.yaml: is not UTF-8 text"):
        load_scenario("latin1.yaml")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: t\nduraton: 5\n", "duraton"),
        ("clients:\n  - name: c\n    adresses: 10.0.0.0/8\n", r"clients\[0\]\.adresses"),
        ("services: {payments: {concurency: 4}}\n", r"services\.payments\.concurency"),
        ("orchestrator: {autoscale: {maxx: 3}}\n", r"orchestrator\.autoscale\.maxx"),
    ],
)
def test_a_misspelt_setting_is_refused_not_ignored(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=where + ": unknown setting; known here: "):
        load_scenario(str(path))


def test_rate_and_latency_keys_depend_on_their_kind() -> None:
    config = merge_defaults({"clients": [{"rate": {"kind": "spike", "base": 5, "peak": 50}}]})
    assert config["clients"][0]["rate"]["peak"] == 50


def test_bad_values_name_their_path() -> None:
    config = load_scenario("baseline")
    config["services"]["payments"]["error_rate"] = 3
    with pytest.raises(ScenarioError, match=r"services\.payments\.error_rate"):
        simulate(config, duration=1)
    with pytest.raises(ScenarioError, match="must be positive"):
        Node({"x": -1}).num("x", positive=True)


def test_claims_read_report_paths_and_windows() -> None:
    report = {"a": {"b": 3}}
    series = [{"t": 1.0, "x": 1.0}, {"t": 2.0, "x": 3.0}, {"t": 3.0, "x": 5.0}]
    claims = [
        {"text": "path", "check": "a.b >= 3"},
        {"text": "window", "check": "window(1, 3).x == 4"},
        {"text": "max", "check": "window(0, end).x.max == 5"},
        {"text": "missing", "check": "a.c > 1"},
        {"text": "garbage", "check": "what"},
    ]
    results = evaluate(claims, report, series)
    assert [r["ok"] for r in results] == [True, True, True, False, False]
    assert "no metric" in results[3]["error"] and "cannot parse" in results[4]["error"]


def test_histogram_quantiles_within_two_percent() -> None:
    h = Histogram()
    for i in range(1, 10001):
        h.record(i / 1000)
    assert h.quantile(0.5) == pytest.approx(5.0, rel=0.02)
    assert h.quantile(0.99) == pytest.approx(9.9, rel=0.02)
    assert h.mean == pytest.approx(5.0005)


def _peak_memory(duration: float) -> int:
    config = load_scenario("baseline")
    tracemalloc.start()
    simulate(config, duration=duration)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_memory_stays_flat_as_duration_grows() -> None:
    short, long = _peak_memory(10), _peak_memory(40)
    # Four times the simulated time (and requests) may add time-series rows, not per-request state.
    assert long < short * 1.5, (short, long)


def test_a_crash_loses_what_the_runner_had_not_committed() -> None:
    """Outcomes are committed with the next attempt's start, as the real runner does."""
    from sagalab.orchestrator.flowfile import load_flow
    from sagalab.orchestrator.saga import Event, EventType, Phase
    from sagalab.simulator.orchestration import Saga

    saga = Saga(1, load_flow("checkout"), born=0.0, legit=True)
    started = Event(EventType.ATTEMPT_STARTED, 1.0, "reserve_inventory", Phase.ACTION, 1)
    saga.state.apply(started)
    saga.journal.append(started)
    saga.flushed = len(saga.journal)  # committed before the call
    done = Event(EventType.ATTEMPT_SUCCEEDED, 1.1, "reserve_inventory", Phase.ACTION, 1)
    saga.state.apply(done)
    saga.journal.append(done)  # noted, not yet committed
    assert saga.state.steps["reserve_inventory"].action.done
    saga.lose_unflushed()
    assert saga.journal == [saga.journal[0], started]
    assert saga.state.open_attempt == ("reserve_inventory", Phase.ACTION, 1)
    assert not saga.state.steps["reserve_inventory"].action.done
    saga.lose_unflushed()  # nothing more to lose
    assert len(saga.journal) == 2


def test_a_finished_request_is_freed_without_the_cyclic_gc() -> None:
    """Nothing of a finished saga or request sits in a reference cycle: a station job and its
    timer used to refer to each other (and a service call to both), so every saga, with its
    journal and state, lived until a GC run found it, and the collections cost ~4% of a run.
    With the collector off for the run, whatever is freed only by it is left for `collect`."""
    import gc

    from sagalab.simulator.orchestration import Saga
    from sagalab.simulator.stations import Call, Job

    gc.collect()
    gc.disable()
    try:
        simulate(load_scenario("baseline"), seed=1, duration=5)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, Saga | Job | Call)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_a_run_freezes_older_objects_for_the_gc_and_hands_them_back() -> None:
    # The cyclic GC skips what existed before the run while it lasts (half the run's cache
    # misses were its walks over the whole process), and gets everything back afterwards.
    counts: list[int] = []
    simulate(
        load_scenario("baseline"),
        seed=1,
        duration=2.0,
        progress=lambda *_: counts.append(gc.get_freeze_count()),
    )
    assert counts[0] > 0
    assert gc.get_freeze_count() == 0


def test_a_run_leaves_a_process_that_froze_objects_itself_as_it_was() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        simulate(load_scenario("baseline"), seed=1, duration=2.0)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_a_run_raises_the_gc_threshold_and_restores_it_on_every_way_out() -> None:
    from sagalab.simulator.model import RUN_GC_THRESHOLD

    before = gc.get_threshold()
    assert before[0] < RUN_GC_THRESHOLD
    seen: list[tuple[int, ...]] = []
    simulate(
        load_scenario("baseline"),
        seed=1,
        duration=2.0,
        progress=lambda *_: seen.append(gc.get_threshold()),
    )
    assert seen[0] == (RUN_GC_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before

    def fail(*_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(load_scenario("baseline"), seed=1, duration=2.0, progress=fail)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_run_keeps_a_callers_gc_settings() -> None:
    from sagalab.simulator.model import RUN_GC_THRESHOLD

    before = gc.get_threshold()
    try:
        # Higher already: left as it is.
        gc.set_threshold(RUN_GC_THRESHOLD * 2, 5, 5)
        simulate(load_scenario("baseline"), seed=1, duration=2.0)
        assert gc.get_threshold() == (RUN_GC_THRESHOLD * 2, 5, 5)
        # Changed by the caller during the run: the caller's setting stays.
        gc.set_threshold(*before)
        simulate(
            load_scenario("baseline"),
            seed=1,
            duration=2.0,
            progress=lambda *_: gc.set_threshold(1234, 10, 10),
        )
        assert gc.get_threshold() == (1234, 10, 10)
        # Switched off: not touched, and still off after.
        gc.set_threshold(*before)
        gc.disable()
        seen: list[tuple[int, ...]] = []
        simulate(
            load_scenario("baseline"),
            seed=1,
            duration=2.0,
            progress=lambda *_: seen.append(gc.get_threshold()),
        )
        assert seen[0] == before and not gc.isenabled()
    finally:
        gc.enable()
        gc.set_threshold(*before)


def test_histogram_buckets_are_those_of_a_dict_of_counts() -> None:
    """The list of bucket counts gives what the dict of non-empty buckets gave: the same
    buckets, count, mean and quantiles (the formulation before, written out here)."""
    import math
    import random

    from sagalab.simulator import metrics

    def reference(values: list[float], q: float) -> float:
        counts: dict[int, int] = {}
        for v in values:
            i = 0
            if v > metrics._MIN:
                i = min(int((math.log(v) - metrics._LOG_MIN) * metrics._PER_LOG) + 1, 1000)
            counts[i] = counts.get(i, 0) + 1
        rank, seen = q * len(values), 0
        for i in sorted(counts):
            seen += counts[i]
            if seen >= rank:
                return min(metrics._MIN * metrics._GROWTH**i, max(values))
        return max(values) if values else 0.0

    rng = random.Random(5)
    for _ in range(200):
        values = [
            rng.choice([0.0, 1e-6, rng.lognormvariate(-3, 2), 1e5])
            for _ in range(rng.choice([1, 2, 5, 50, 500]))
        ]
        h, also = Histogram(), Histogram()
        for v in values:
            h.record(v, (also,))
        assert h.count == also.count == len(values)
        assert h.counts == also.counts and sum(h.counts.values()) == len(values)
        for q in (0.0, 0.001, 0.25, 0.5, 0.95, 0.99, 1.0, 1.2):
            assert h.quantile(q) == also.quantile(q) == reference(values, q)
        p50, p95, p99 = h.quantiles((0.5, 0.95, 0.99))
        assert h.summary()["p95"] == round(p95, 6)
    assert Histogram().quantiles((0.5, 0.9)) == [0.0, 0.0]


def test_a_pass_through_the_queue_is_an_enter_and_a_leave_at_once() -> None:
    import random

    from sagalab.simulator.metrics import TierStats

    rng = random.Random(3)
    for _ in range(50):
        a, b = TierStats("a"), TierStats("b")
        h, g = Histogram(), Histogram()
        now, held = 0.0, 0
        for _ in range(200):
            now += rng.choice([0.0, rng.expovariate(10.0)])
            move = rng.random()
            if move < 0.4:
                a.pass_through(now)
                b.enter(now)
                b.leave(now, 0.0)
                h.record_zero()
                g.record(0.0)
            elif move < 0.7 or not held:
                a.enter(now)
                b.enter(now)
                held += 1
            else:
                a.leave(now, 0.5)
                b.leave(now, 0.5)
                held -= 1
            value = rng.expovariate(20.0)
            h.record(value)
            g.record(value)
        assert [getattr(a, f) for f in TierStats.__slots__[1:]] == [
            getattr(b, f) for f in TierStats.__slots__[1:]
        ]
        assert (h.bins, h.total, h.max) == (g.bins, g.total, g.max)
