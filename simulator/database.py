"""The saga database as stations: the primary's writes and reads, and read replicas.

Off by default (`database.enabled: false`): a commit then takes one `orchestrator.db_write`
draw with no queue, as before, and a report has no `database` section. On, every write the
orchestrator makes goes through the primary's write station and waits its turn:

* writes: a worker's claim of a saga (the atomic `UPDATE ... RETURNING` of the real queue) and
  every journal commit of the saga driver. `engine: sqlite` has one writer at a time (the
  write lock: `BEGIN IMMEDIATE`); `engine: postgresql` has `writers` concurrent writers;
* reads: clients' status GETs. Each saga created is polled `reads.per_saga` times, every
  `reads.interval` seconds from its creation. A read holds one of `readers` read slots of the
  database it is routed to. Readers and the writer queue apart: WAL (SQLite) and MVCC
  (PostgreSQL) readers do not block the writer. What the model leaves out: CPU and disk the
  two share;
* replicas (`replicas.count`, PostgreSQL or SQLite alike): reads go to the replicas in turn
  (`route_read`), except a read of a saga younger than the replication `lag`, which the
  replica may not have yet: that one goes to the primary (read-your-writes).

The database draws from random streams of its own (seeded from the run's seed), one for the
writes and one for the reads, so turning a replica on shifts neither the services' draws nor
the writes': a comparison over the same seeds pairs exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import simpy

from .config import Node
from .errors import ScenarioError
from .metrics import TierStats
from .stations import Job, Station, sampler

__all__ = ["ENGINES", "Database", "cache_hit", "database_from", "route_read"]

ENGINES = ("sqlite", "postgresql")


def cache_hit(cached_at: float, now: float, ttl: float) -> bool:
    """A status cached at `cached_at` answers a read at `now` while it is younger than `ttl`."""
    return now - cached_at < ttl


def route_read(age: float, *, lag: float, replicas: int, turn: int) -> int | None:
    """Where a status read of a saga created `age` seconds ago goes: replica `turn % replicas`,
    or None (the primary) with no replica or when the saga is younger than the lag."""
    if replicas <= 0 or age < lag:
        return None
    return turn % replicas


class Database:
    """The primary (a write station and a read station) and its read replicas."""

    def __init__(self, env: simpy.Environment, node: Node, rng: random.Random) -> None:
        self.env = env
        self.engine = node.text("engine", "sqlite", ENGINES)
        writers = node.int("writers", min=1)
        if self.engine == "sqlite" and writers != 1:
            raise ScenarioError(
                f"{node.path}.writers",
                f"SQLite has one writer at a time (its write lock), got {writers}; "
                "use engine: postgresql for concurrent writers",
            )
        self.writers = writers
        readers = node.int("readers", min=1)
        write = sampler(node.node("write_latency").data, rng, f"{node.path}.write_latency")
        # Reads draw from a stream of their own: where they go (a replica or the primary)
        # then never shifts the writes' draws, and a replica on or off leaves every saga's
        # path as it was (common random numbers: a comparison's differences are the reads').
        rng = random.Random(rng.random())
        read = sampler(node.node("read_latency").data, rng, f"{node.path}.read_latency")
        self.primary_write = Station(env, "db.write", writers, write)
        self.primary_read = Station(env, "db.read", readers, read)
        reads = node.node("reads")
        self.per_saga = reads.int("per_saga", min=0)
        self.interval = reads.num("interval", positive=True)
        r = node.node("replicas")
        count = r.int("count", min=0)
        self.lag = r.num("lag", min=0.0)
        replica_read = sampler(r.node("read_latency").data, rng, f"{r.path}.read_latency")
        replica_readers = r.int("readers", min=1)
        self.replicas = [
            Station(env, f"db.replica{i}", replica_readers, replica_read) for i in range(count)
        ]
        self.turn = 0
        self.writes = 0
        self.primary_reads = 0
        self.replica_reads = [0] * count
        self.fallbacks = 0
        self.peak_write_queue = 0
        self.polling = 0  # sagas whose client has status reads still to make
        c = node.node("cache")
        # saga id -> (when its status was cached, its journal length then); None: no cache.
        self.cache: dict[int, tuple[float, int]] | None = {} if c.flag("enabled", False) else None
        self.ttl = c.num("ttl", min=0.0)
        self.flush_at = [f.data for f in c.items("flushes")]
        for i, at in enumerate(self.flush_at):
            if isinstance(at, bool) or not isinstance(at, int | float):
                raise ScenarioError(f"{c.path}.flushes[{i}]", f"must be seconds, got {at!r}")
            timer = env.timeout(float(at))
            timer.callbacks.append(lambda _ev: self.flush())
        self.cache_reads = 0
        self.cache_hits = 0
        self.stale_hits = 0
        self.flushes = 0

    # --- writes -------------------------------------------------------------------------------

    def write(self) -> simpy.Event:
        """One write (a claim or a commit): the returned event fires once it is durable."""
        self.writes += 1
        done = self.env.event()
        station = self.primary_write
        station.submit(done, _written)
        queued = len(station.queue)
        if queued > self.peak_write_queue:
            self.peak_write_queue = queued
        return done

    # --- reads --------------------------------------------------------------------------------

    def poll(self, born: float, saga: Any) -> None:
        """`saga` was created at `born`: its client reads its status `per_saga` times."""
        if self.per_saga:
            self.polling += 1
            self._next_poll(born, saga, 1)

    def _next_poll(self, born: float, saga: Any, k: int) -> None:
        timer = self.env.timeout(born + k * self.interval - self.env.now)
        timer.callbacks.append(lambda _ev: self._read(born, saga, k))

    def _read(self, born: float, saga: Any, k: int) -> None:
        now = self.env.now
        if k < self.per_saga:
            self._next_poll(born, saga, k + 1)
        else:
            self.polling -= 1
        cache = self.cache
        if cache is not None:
            self.cache_reads += 1
            # What the status says: its committed journal (every commit changes it).
            version = len(saga.journal)
            entry = cache.get(saga.id)
            if k == self.per_saga:  # the last read of it: the entry is not needed after
                cache.pop(saga.id, None)
            if entry is not None and cache_hit(entry[0], now, self.ttl):
                self.cache_hits += 1
                if entry[1] != version:
                    self.stale_hits += 1  # the answer is older than the journal
                return
            if k < self.per_saga:
                cache[saga.id] = (now, version)
        target = route_read(now - born, lag=self.lag, replicas=len(self.replicas), turn=self.turn)
        if target is None:
            if self.replicas:
                self.fallbacks += 1
            self.primary_reads += 1
            self.primary_read.submit(None, _nothing)
        else:
            self.turn += 1
            self.replica_reads[target] += 1
            self.replicas[target].submit(None, _nothing)

    def flush(self) -> None:
        """The cache restarts empty (a cold start): every read misses until it is refilled."""
        if self.cache is not None:
            self.cache.clear()
            self.flushes += 1

    @property
    def busy(self) -> bool:
        """Reads still to come or in flight: the run drains them as it drains the sagas."""
        stations = (self.primary_write, self.primary_read, *self.replicas)
        return self.polling > 0 or any(s.active for s in stations)

    # --- what the report and series read ----------------------------------------------------

    def stations(self) -> list[Station]:
        """The primary's writers and readers, then each replica's readers."""
        return [self.primary_write, self.primary_read, *self.replicas]

    def tiers(self) -> dict[str, TierStats]:
        """The database's stations for the Little's-law check, by name."""
        return {s.name: s.stats for s in self.stations()}

    def sample(self) -> dict[str, float]:
        """Columns of the per-interval series (only present when the database is modelled)."""
        return {
            "db_writes_present": self.primary_write.active,
            "db_primary_reads_present": self.primary_read.active,
        }

    def report(self) -> dict[str, Any]:
        """The report's `database` section."""
        out: dict[str, Any] = {
            "engine": self.engine,
            "writers": self.writers,
            "primary": {
                "writes": self.writes,
                "reads": self.primary_reads,
                "write_latency": self.primary_write.response.summary(),
                "read_latency": self.primary_read.response.summary(),
                "peak_write_queue": self.peak_write_queue,
            },
            # By name, so a claim can name one (`database.replicas.replica0.reads`).
            "replicas": {
                f"replica{i}": {"reads": n, "read_latency": s.response.summary()}
                for i, (n, s) in enumerate(zip(self.replica_reads, self.replicas, strict=True))
            },
            "lag": self.lag,
            "fallbacks": self.fallbacks,
        }
        if self.cache is not None:  # only then, so a report without a cache stays as it was
            out["cache"] = {
                "ttl": self.ttl,
                "reads": self.cache_reads,
                "hits": self.cache_hits,
                "hit_ratio": round(self.cache_hits / self.cache_reads, 6)
                if self.cache_reads
                else 0.0,
                "stale_hits": self.stale_hits,
                "flushes": self.flushes,
            }
        return out


def _written(job: Job) -> None:
    event = job.payload
    assert isinstance(event, simpy.Event)
    event.succeed()


def _nothing(_job: Job) -> None:
    """A status read: nobody on the saga's path waits for it."""


def database_from(
    env: simpy.Environment, root: Node, seed: int
) -> tuple[Database | None, Callable[[float, Any], None] | None]:
    """The scenario's database (None when `database.enabled` is false) and its poll hook."""
    node = root.node("database")
    if not node.flag("enabled", False):
        return None, None
    # Its own stream: a replica on or off leaves the services' draws where they were.
    database = Database(env, node, random.Random(f"database-{seed}"))
    return database, database.poll
