"""The database as a station: writes queue for the writers (one for SQLite), status reads for
read slots, read replicas with a replication lag, a cache in front of the status reads, and
`compare` weighing a replica and a cache."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sagalab.cli.simulate import app
from sagalab.simulator.compare import compare
from sagalab.simulator.config import apply_override, check_bounds, configure, load_scenario
from sagalab.simulator.database import cache_hit, route_read
from sagalab.simulator.errors import ScenarioError
from sagalab.simulator.model import simulate

runner = CliRunner()


@pytest.mark.parametrize(
    ("age", "lag", "replicas", "turn", "expected"),
    [
        (1.0, 0.5, 0, 0, None),  # no replica: the primary
        (0.2, 0.5, 2, 0, None),  # younger than the lag: the replica may not have it
        (0.5, 0.5, 2, 0, 0),  # as old as the lag: replicated
        (3.0, 0.5, 2, 1, 1),
        (3.0, 0.5, 2, 7, 1),  # in turn
        (0.0, 0.0, 3, 5, 2),  # no lag
    ],
    ids=["no-replica", "too-young", "at-lag", "turn-1", "round-robin", "no-lag"],
)
def test_route_read(age: float, lag: float, replicas: int, turn: int, expected: int | None) -> None:
    assert route_read(age, lag=lag, replicas=replicas, turn=turn) == expected


def _run(name: str, *sets: str, seed: int = 2, duration: float = 10) -> dict:
    config = configure(name, list(sets), duration=duration)
    return simulate(config, seed=seed, duration=duration).report


def test_off_by_default_and_the_report_has_no_database() -> None:
    assert "database" not in _run("baseline", duration=3)


def test_every_claim_and_commit_is_a_write_and_reads_follow_the_polls() -> None:
    report = _run("baseline", "database.enabled=true", "database.reads.per_saga=3", duration=5)
    db = report["database"]
    created = report["sagas"]["created"]
    # One claim per saga (no crash, no resume) and at least a commit per action attempt.
    attempts = sum(s["calls"] for s in report["services"].values())
    assert db["primary"]["writes"] >= created + attempts
    assert db["primary"]["reads"] == 3 * created
    assert db["replicas"] == {} and db["fallbacks"] == 0
    assert report["invariants_failed"] == 0


def test_sqlite_has_one_writer() -> None:
    """The same writes, 2 ms each, at ~300 writes/s: one SQLite writer is 60 % busy and they
    queue; four PostgreSQL writers hardly do, and sagas end sooner."""
    slow = ["database.enabled=true", "database.write_latency.mean=0.002"]
    sqlite = _run("baseline", *slow)
    postgres = _run("baseline", *slow, "database.engine=postgresql", "database.writers=4")
    assert sqlite["database"]["writers"] == 1 and postgres["database"]["writers"] == 4
    s, p = sqlite["database"]["primary"], postgres["database"]["primary"]
    assert s["write_latency"]["p95"] > 1.5 * p["write_latency"]["p95"]
    assert s["peak_write_queue"] > p["peak_write_queue"]
    assert sqlite["latency"]["end_to_end"]["mean"] > postgres["latency"]["end_to_end"]["mean"]


def test_sqlite_with_two_writers_is_refused() -> None:
    with pytest.raises(ScenarioError, match=r"database\.writers.*one writer"):
        configure("baseline", ["database.enabled=true", "database.writers=2"])
    result = runner.invoke(
        app, ["run", "baseline", "--set", "database.enabled=true", "--set", "database.writers=2"]
    )
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_reads_younger_than_the_lag_fall_back_to_the_primary() -> None:
    replicas = ["database.replicas.count=2", "database.reads.interval=0.25"]
    # Polls at 0.25 s .. 1 s: with a 0.6 s lag the first two go to the primary.
    lagging = _run(
        "checkout-read-replica",
        *replicas,
        "database.replicas.lag=0.6",
        "database.reads.per_saga=4",
        duration=5,
    )
    db, created = lagging["database"], lagging["sagas"]["created"]
    assert db["primary"]["reads"] == db["fallbacks"] == 2 * created
    replica_reads = [r["reads"] for r in db["replicas"].values()]
    assert sum(replica_reads) == 2 * created and abs(replica_reads[0] - replica_reads[1]) <= 1
    # No lag: the primary reads nothing; a lag over every poll: the replicas read nothing.
    fresh = _run("checkout-read-replica", "database.replicas.lag=0", duration=3)
    assert fresh["database"]["primary"]["reads"] == 0
    stale = _run("checkout-read-replica", "database.replicas.lag=100", duration=3)
    assert all(r["reads"] == 0 for r in stale["database"]["replicas"].values())


def test_too_many_status_reads_are_refused_with_the_estimate() -> None:
    config = load_scenario("checkout-read-heavy")
    apply_override(config, "database.reads.per_saga=100")
    apply_override(config, "clients.0.rate.value=200")
    apply_override(config, "duration=3600")
    with pytest.raises(ScenarioError, match=r"database\.reads\.per_saga.*72,000,000 status"):
        check_bounds(config)


def test_same_seed_same_database_report() -> None:
    first = _run("checkout-read-replica", duration=4)
    again = _run("checkout-read-replica", duration=4)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)


def test_compare_says_a_read_replica_unloads_the_primary() -> None:
    """At 800 status reads/s on a primary 90 % busy with them, two replicas take the reads
    older than the lag: the primary's reads and their p95 fall, significantly."""
    result = compare("checkout-read-heavy", "checkout-read-replica", seeds=4, duration=8, workers=1)
    figures = result["figures"]
    reads, p95 = figures["db.primary_reads"], figures["db.primary_read_p95"]
    assert reads["significant"] and reads["high"] < 0
    assert reads["variant"] < 0.1 * reads["base"]
    assert p95["significant"] and p95["high"] < 0
    assert figures["db.replica_reads"]["significant"]
    assert result["invariants_failed"] == {"base": 0, "variant": 0}


def test_compare_a_database_scenario_with_itself() -> None:
    result = compare(
        "checkout-read-replica", "checkout-read-replica", seeds=2, duration=4, workers=1
    )
    for name, f in result["figures"].items():
        assert f["low"] <= 0 <= f["high"] and not f["significant"], name


@pytest.mark.parametrize(
    ("cached_at", "now", "ttl", "hit"),
    [(1.0, 1.5, 1.0, True), (1.0, 2.0, 1.0, False), (1.0, 1.0, 0.0, False), (0.0, 9.0, 10, True)],
    ids=["young", "at-ttl", "no-ttl", "long-ttl"],
)
def test_cache_hit(cached_at: float, now: float, ttl: float, hit: bool) -> None:
    assert cache_hit(cached_at, now, ttl) is hit


def test_the_hit_ratio_follows_the_ttl_and_a_restart_costs_misses() -> None:
    """Polls every 0.25 s with a 1 s TTL: one miss then three hits, a ratio of 3/4; a TTL
    under the poll interval never hits; a restart empties the cache and costs misses."""
    warm = _run("checkout-cache", "database.cache.flushes=[]", duration=6)
    cache = warm["database"]["cache"]
    assert cache["reads"] == 20 * warm["sagas"]["created"]
    assert cache["hit_ratio"] == pytest.approx(0.75, abs=0.01)
    assert warm["database"]["primary"]["reads"] == cache["reads"] - cache["hits"]
    short = _run(
        "checkout-cache", "database.cache.flushes=[]", "database.cache.ttl=0.2", duration=4
    )
    assert short["database"]["cache"]["hits"] == 0
    restarted = _run("checkout-cache", "database.cache.flushes=[2, 4]", duration=6)
    assert restarted["database"]["cache"]["flushes"] == 2
    assert restarted["database"]["cache"]["hits"] < cache["hits"]
    assert "cache" not in _run("checkout-read-heavy", duration=2)["database"]


def test_a_cache_answers_some_reads_with_a_stale_status() -> None:
    """A poll before the saga ends, answered from a cache entry taken before a later commit,
    is stale: polls every 20 ms with a 0.5 s TTL see sagas that take ~0.1 s change."""
    report = _run(
        "checkout-cache", "database.reads.interval=0.02", "database.cache.ttl=0.5", duration=4
    )
    assert report["database"]["cache"]["stale_hits"] > 0


def test_compare_says_a_cache_unloads_the_primary() -> None:
    result = compare("checkout-read-heavy", "checkout-cache", seeds=3, duration=8, workers=1)
    figures = result["figures"]
    reads = figures["db.primary_reads"]
    assert reads["significant"] and reads["variant"] < 0.3 * reads["base"]
    assert figures["db.primary_read_p95"]["significant"]
    # Only one side has a cache: its figures are left out of the comparison.
    assert "db.cache_hit_ratio" not in figures
