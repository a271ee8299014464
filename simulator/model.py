"""Build a simulation from a scenario, run it, and report what happened.

`simulate(config, seed=..., duration=...)` returns a `RunResult`: the `report` (plain data,
identical for the same scenario and seed) and the per-interval `series` (rows of numbers).
Arrivals stop at `duration`; the model then drains for at most `drain` seconds so that every
saga can reach its end before the invariants are checked.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pybreaker
import simpy

from sagalab.edge.policies.firewall import Firewall, FloodGuard
from sagalab.orchestrator.errors import FlowValidationError
from sagalab.orchestrator.flow import flow_from_dict
from sagalab.orchestrator.policies.autoscaling import AutoscalePolicy
from sagalab.orchestrator.policies.breaker import Breaker
from sagalab.orchestrator.saga import Phase, SagaStatus

from .config import Node
from .database import database_from
from .defaults import DEFAULTS
from .distributions import moments
from .edge_model import ClientGroup, Edge, Request, queue_timeout
from .errors import ScenarioError
from .metrics import Histogram, TierStats
from .orchestration import Orchestrator, Saga
from .population import Population, arrival_kind
from .regions import regions_from
from .schedule import arrivals, segments
from .stations import Fault, Service, sampler

__all__ = ["RunResult", "Simulation", "simulate"]

_FAILED, _ROLLED_BACK, _COMPLETED = SagaStatus.FAILED, SagaStatus.ROLLED_BACK, SagaStatus.COMPLETED
BREAKER_LEVEL = {pybreaker.STATE_CLOSED: 0.0, pybreaker.STATE_HALF_OPEN: 0.5, "open": 1.0}
_MAX_TRANSITIONS = 500


@dataclass
class RunResult:
    """What a run produced: the report (plain data) and the per-interval time series."""

    report: dict[str, Any]
    series: list[dict[str, float]] = field(default_factory=list)


class Simulation:
    """One scenario wired into a SimPy environment."""

    def __init__(
        self, config: dict[str, Any], *, seed: int | None = None, duration: float | None = None
    ) -> None:
        root = Node(config)
        self.config = config
        self.seed = int(root.int("seed") if seed is None else seed)
        self.duration = root.num("duration", positive=True) if duration is None else duration
        if self.duration <= 0:
            raise ScenarioError("duration", "must be positive")
        self.drain = root.num("drain", min=0.0)
        self.interval = root.num("interval", positive=True)
        self.rng = rng = random.Random(self.seed)
        self.env = env = simpy.Environment()
        try:
            self.flow = flow_from_dict(config.get("flow"), "flow")
        except FlowValidationError as exc:
            raise ScenarioError("flow", str(exc)) from None

        self.faults = self._faults(root)
        services_node = root.node("services")
        self.services: dict[str, Service] = {}
        for name in services_node.data:
            s = services_node.node(name)
            self.services[name] = Service(
                env,
                name,
                rng=rng,
                latency=sampler(s.node("latency").data, rng, f"services.{name}.latency"),
                concurrency=s.int("concurrency", min=1),
                queue_limit=s.int("queue_limit", min=0),
                error_rate=s.num("error_rate", min=0.0, max=1.0),
                reject_rate=s.num("reject_rate", min=0.0, max=1.0),
                idempotent=s.flag("idempotent", True),
                in_progress=s.flag("in_progress", True),
                faults=self.faults,
                queue_timeout=queue_timeout(s),
            )
        for step in self.flow.steps:
            if step.service in DEFAULTS["services"] and step.service not in self.services:
                raise ScenarioError(
                    f"services.{step.service}",
                    f"cannot be removed: flow step {step.name!r} calls it; keep the service "
                    "or change the step",
                )
            if step.service not in self.services:
                raise ScenarioError(
                    f"flow step {step.name!r}",
                    f"service {step.service!r} is not under services: {sorted(self.services)}",
                )

        b = root.node("breakers")
        self.transitions: list[dict[str, Any]] = []
        self.breaker_counts: dict[str, dict[str, int]] = {}
        self.breakers: dict[str, Breaker] = {}
        if b.flag("enabled", True):
            for name in self.services:
                self.breaker_counts[name] = {"opened": 0, "half_opened": 0, "closed": 0}
                self.breakers[name] = Breaker(
                    name,
                    fail_max=b.int("fail_max", min=1),
                    reset_timeout=b.num("reset_timeout", min=0.0),
                    success_threshold=b.int("success_threshold", min=1),
                    on_transition=self._transition_recorder(name),
                )

        o = root.node("orchestrator")
        a = o.node("autoscale")
        policy = None
        if a.flag("enabled", False):
            try:
                policy = AutoscalePolicy(
                    min_replicas=a.int("min", min=0),
                    max_replicas=a.int("max", min=1),
                    target_depth=a.num("target_depth", positive=True),
                    max_age=a.num("max_age", positive=True),
                    cooldown=a.num("cooldown", min=0.0),
                )
            except ValueError as exc:
                raise ScenarioError("orchestrator.autoscale", str(exc)) from None
        self.database, self._poll = database_from(env, root, self.seed)
        self.orchestrator = Orchestrator(
            env,
            rng=rng,
            flow=self.flow,
            services=self.services,
            breakers=self.breakers,
            concurrency=o.int("concurrency", min=1),
            lease=o.num("lease", positive=True),
            reaper_interval=o.num("reaper_interval", positive=True),
            startup_delay=o.num("startup_delay", min=0.0),
            db_write=sampler(o.node("db_write").data, rng, "orchestrator.db_write"),
            autoscale=policy,
            autoscale_interval=a.num("interval", positive=True),
            finished=self._finished,
            database=self.database,
        )
        self.initial_replicas = n = o.int("replicas", min=1)
        self.regions = regions_from(env, root, n)
        for i in range(n):
            remote = self.regions is not None and self.regions.is_remote(i, n)
            self.orchestrator.start_replica(delay=0.0, remote=remote)
        if self.regions is not None:
            self.regions.schedule(self.orchestrator)
        self.orch_crashes = o.items("crashes")

        fw = root.node("firewall")
        flood = fw.node("flood")
        guard = None
        if flood.flag("enabled", True):
            guard = FloodGuard(
                flood.num("rate", positive=True),
                flood.num("burst", min=1.0),
                flood.num("block_for", min=0.0),
            )
        try:
            firewall = Firewall(allow=fw.get("allow") or [], deny=fw.get("deny") or [], flood=guard)
        except ValueError as exc:
            raise ScenarioError("firewall", str(exc)) from None
        self.edge = Edge(env, root, rng, firewall, self._admit)
        self.gw_crashes = root.node("gateways").items("crashes")
        self.groups = [(ClientGroup(c, rng), c) for c in root.items("clients")]
        if not self.groups:
            raise ScenarioError("clients", "needs at least one client group")
        for group, node in self.groups:
            if arrival_kind(node) == "population":
                group.population = Population(env, self.edge, group, node, self.duration, rng)
        self.shapes = [interarrival_shape(c, rng) for _, c in self.groups]
        self.measure = measurement_window(root, self.duration)
        self.edge.measure = self.measure
        self.measured = {s.value: 0 for s in SagaStatus}

        # For the invariant checks at each saga's end (computed once, not per saga).
        flow = self.flow
        self._compensable = frozenset(s.name for s in flow.steps if s.has_compensation)
        self._action_keys = [(s.name, Phase.ACTION) for s in flow.steps]
        self._undo_keys = [
            ((s.name, Phase.ACTION), (s.name, Phase.COMPENSATION))
            for s in flow.steps
            if s.has_compensation
        ]

        self.next_id = 0
        self.live: dict[int, Saga] = {}
        self.status_counts = {s.value: 0 for s in SagaStatus}
        self.violations: dict[str, int] = {
            "failed_without_reason": 0,
            "compensation_order": 0,
            "applied_not_undone": 0,
            "completed_not_applied": 0,
        }
        self.e2e = Histogram()
        self.e2e_by_group: dict[str, Histogram] = {}
        self.window = Histogram()
        self.duplicates = 0
        self.series: list[dict[str, float]] = []
        self._last_counts: dict[str, float] = {}
        self.replica_samples: list[int] = []
        self.peak_depth = 0
        self.peak_age = 0.0

    # --- wiring helpers ---------------------------------------------------------------------

    def _faults(self, root: Node) -> list[Fault]:
        services = root.node("services").data
        out = []
        for f in root.items("faults"):
            service = f.text("service")
            if service not in services:
                raise ScenarioError(f"{f.path}.service", f"unknown service {service!r}")
            kind = f.text("kind", None, {"outage", "slowdown", "errors"})
            start, end = f.num("start", min=0.0), f.num("end", min=0.0)
            if end <= start:
                raise ScenarioError(f"{f.path}.end", "must be after start")
            factor = f.num("factor", min=1.0, default=1.0)
            rate = f.num("rate", min=0.0, max=1.0, default=1.0)
            # `answer: 503` reads as a number in YAML: either spelling is taken.
            answer = str(f.get("answer", "refused"))
            if answer not in ("refused", "503"):
                raise ScenarioError(f"{f.path}.answer", f"must be refused or 503, got {answer!r}")
            out.append(Fault(service, kind, start, end, factor, rate, answer))
        return out

    def _transition_recorder(self, name: str) -> Callable[[float, str, str], None]:
        def record(now: float, old: str, new: str) -> None:
            key = {"open": "opened", "half-open": "half_opened", "closed": "closed"}[new]
            self.breaker_counts[name][key] += 1
            if len(self.transitions) < _MAX_TRANSITIONS:
                self.transitions.append({"t": round(now, 6), "service": name, "to": new})

        return record

    def _admit(self, request: Request, now: float) -> bool:
        if request.saga is not None and request.group.idempotent:
            return True  # the same idempotency key: the existing saga's id is returned
        if request.saga is not None:
            self.duplicates += 1
        group = request.group
        saga = Saga(self.next_id, self.flow, request.first_at, group.legit, group.name)
        self.next_id += 1
        self.live[saga.id] = saga
        request.saga = saga
        self.orchestrator.enqueue(saga)
        if self._poll is not None:
            self._poll(now, saga)  # its client will read its status
        return True

    def _finished(self, saga: Saga, now: float) -> None:
        # The driver's last word, its state's status: the state itself is read (folded from
        # the journal, for a run served from the transcript) only for the checks that need it.
        status = saga.status
        assert status is not None
        self.status_counts[status.value] += 1
        latency = now - saga.born
        by_group = self.e2e_by_group.get(saga.group)
        if by_group is None:
            by_group = self.e2e_by_group[saga.group] = Histogram()
        measure = self.measure
        if measure is not None and not measure[0] <= saga.born < measure[1]:
            if saga.legit:  # outside the measurement window: in the time series only
                self.window.record(latency)
        elif saga.legit:
            by_group.record(latency, (self.e2e, self.window))
        else:
            by_group.record(latency)
        if measure is not None and measure[0] <= saga.born < measure[1]:
            self.measured[status.value] += 1
        v = self.violations
        if status is _FAILED and not saga.state.reason:
            v["failed_without_reason"] += 1
        if status is not _COMPLETED:  # a completed saga has no compensation (the core's rule)
            state = saga.state
            compensable = self._compensable
            steps = state.steps
            expected = [
                n
                for n in reversed(state.applied_order)
                if n in compensable and steps[n].compensation.done
            ]
            if saga.compensation_order() != expected:
                v["compensation_order"] += 1
        ledger = saga.ledger
        if status is _ROLLED_BACK:
            for action, compensation in self._undo_keys:
                if ledger.get(action) and not ledger.get(compensation):
                    v["applied_not_undone"] += 1
        elif status is _COMPLETED:
            for action in self._action_keys:
                if not ledger.get(action):
                    v["completed_not_applied"] += 1
                    break
        del self.live[saga.id]

    # --- processes ----------------------------------------------------------------------------

    def _schedule_crashes(self) -> None:
        env = self.env

        def at(t: float, fn: Callable[[], None]) -> None:
            timer = env.timeout(t)
            timer.callbacks.append(lambda _ev: fn())

        for c in self.gw_crashes:
            index = c.int("instance", min=0)
            if index >= len(self.edge.gateways):
                raise ScenarioError(f"{c.path}.instance", "no gateway with that index")
            start = c.num("at", min=0.0)
            at(start, partial(self.edge.crash_gateway, index))
            if c.get("restart_after") is not None:
                back = start + c.num("restart_after", positive=True)
                at(back, partial(self.edge.restart_gateway, index))
        for c in self.orch_crashes:
            start = c.num("at", min=0.0)
            count = c.int("count", min=1, default=1)
            at(start, partial(self.orchestrator.crash, count))
            if c.get("restart_after") is not None:
                delay = c.num("restart_after", min=0.0)
                for _ in range(count):
                    at(start, partial(self.orchestrator.start_replica, delay=delay))

    def _sampler(self) -> Any:
        env, interval = self.env, self.interval
        tiers = list(self.tiers().values())
        while True:
            yield env.timeout(interval)
            for stats in tiers:  # occupancy for the Little's-law check (`report.little_holds`)
                stats.sample()
            self._sample(env.now)

    def _cumulative(self) -> dict[str, float]:
        c = self.edge.counts
        s = self.status_counts
        return {
            "legit_offered": c.get("legit.offered", 0),
            "legit_admitted": c.get("legit.admitted", 0),
            "attacker_offered": c.get("attacker.offered", 0),
            "blocked": c.get("legit.403", 0) + c.get("attacker.403", 0),
            "rate_limited": c.get("legit.429", 0),
            "unavailable": c.get("legit.503", 0) + c.get("legit.reset", 0),
            "timeouts": c.get("legit.timeout", 0),
            "completed": s["completed"],
            "rolled_back": s["rolled_back"],
            "failed": s["failed"],
        }

    def tiers(self) -> dict[str, TierStats]:
        """Every tier whose occupancy the report checks against Little's law, by name."""
        edge, orch = self.edge, self.orchestrator
        return {
            "firewall": edge.fw_station.stats,
            **{g.name: g.station.stats for g in edge.gateways},
            "queue": orch.queue_stats,
            "orchestrator": orch.run_stats,
            **{f"service.{n}": s.station.stats for n, s in self.services.items()},
            **(self.database.tiers() if self.database is not None else {}),
        }

    def _sample(self, now: float) -> None:
        cumulative = self._cumulative()
        last = self._last_counts
        interval = self.interval
        row: dict[str, float] = {"t": round(now, 6)}
        for key, value in cumulative.items():
            row[key] = round((value - last.get(key, 0)) / interval, 6)
        self._last_counts = cumulative
        p50, p95, p99 = self.window.quantiles((0.5, 0.95, 0.99))
        row["e2e_p50"] = round(p50, 6)
        row["e2e_p95"] = round(p95, 6)
        row["e2e_p99"] = round(p99, 6)
        self.window = Histogram()
        orch = self.orchestrator
        depth, age = orch.depth, orch.oldest_age()
        self.peak_depth = max(self.peak_depth, depth)
        self.peak_age = max(self.peak_age, age)
        row["queue_depth"] = depth
        row["oldest_age"] = round(age, 6)
        row["replicas"] = orch.alive
        row["replicas_starting"] = orch.starting
        self.replica_samples.append(orch.alive)
        row["gateways_up"] = sum(g.up for g in self.edge.gateways)
        row["gateways_healthy"] = sum(g.health.healthy for g in self.edge.gateways)
        for name, breaker in self.breakers.items():
            row[f"breaker_{name}"] = BREAKER_LEVEL.get(breaker.state, 1.0)
        for name, service in self.services.items():
            row[f"busy_{name}"] = service.station.active
        if self.database is not None:
            row.update(self.database.sample())
        self.series.append(row)

    # --- run ----------------------------------------------------------------------------------

    def run(self, progress: Callable[[float, float], None] | None = None) -> RunResult:
        """Run to `duration`, drain, and build the report. `progress(now, total)` is optional."""
        env = self.env
        for (group, node), shape in zip(self.groups, self.shapes, strict=True):
            if group.population is not None:
                group.population.start()
                continue
            segs = segments(node.node("rate"))
            arrive = partial(self.edge.new_request, group)
            env.process(arrivals(env, segs, self.duration, self.rng, arrive, shape))
        env.process(self.edge.health_checks())
        if self.orchestrator.autoscale is not None:
            env.process(self.orchestrator.autoscaler())
        self._schedule_crashes()
        env.process(self._sampler())
        total = self.duration + self.drain
        chunk = max(self.interval, self.duration / 100)
        t = 0.0
        with _older_objects_frozen():
            while t < self.duration:
                t = min(t + chunk, self.duration)
                env.run(until=t)
                if progress is not None:
                    progress(t, total)
            while t < total and (
                self.live or self.orchestrator.unfinished() or self._busy_db() or self._busy_tiers()
            ):
                t = min(t + self.interval, total)
                env.run(until=t)
                if progress is not None:
                    progress(t, total)
        if progress is not None:
            progress(total, total)
        return RunResult(self._report(env.now), self.series)

    def _busy_db(self) -> bool:
        return self.database is not None and self.database.busy

    def _busy_tiers(self) -> bool:
        """Work left anywhere else: a request at the edge (in flight or waiting to retry), or
        a job at a station whose caller has moved on (a timed-out call still in service)."""
        return self.edge.open_requests > 0 or any(s.present for s in self.tiers().values())

    def left_over(self) -> dict[str, int]:
        """What the drain did not finish, per tier (only tiers with something left)."""
        left = {name: s.present for name, s in self.tiers().items() if s.present}
        if self.edge.open_requests:
            left["clients"] = self.edge.open_requests  # requests in flight or in backoff
        return left

    def _report(self, now: float) -> dict[str, Any]:
        from .report import build_report

        return build_report(self, now)


def interarrival_shape(client: Node, rng: random.Random) -> Callable[[], float] | None:
    """A client group's `interarrival` as a draw of mean 1 (None: Poisson arrivals)."""
    spec = client.get("interarrival")
    if spec is None:
        return None
    where = f"{client.path}.interarrival"
    draw = sampler(spec, rng, where)
    mean = moments(spec)[0]
    if not mean > 0:
        raise ScenarioError(where, "must have a positive mean (it is rescaled to the rate)")
    scale = 1.0 / mean
    return lambda: draw() * scale


def measurement_window(root: Node, duration: float) -> tuple[float, float] | None:
    """The arrivals (by first attempt) the report's figures cover: `[warmup, inf)`, or
    `measure`'s `[start, end)`; None when neither is set (every arrival, as before)."""
    warmup = root.num("warmup", min=0.0, default=0.0)
    measure = root.get("measure")
    if measure is None:
        if warmup == 0:
            return None
        if warmup >= duration:
            raise ScenarioError("warmup", f"must be shorter than the run ({duration:g} s)")
        return warmup, float("inf")
    if warmup:
        raise ScenarioError("measure", "give warmup or measure, not both")
    m = root.node("measure")
    start, end = m.num("start", min=0.0), m.num("end", min=0.0)
    if end <= start:
        raise ScenarioError("measure.end", f"must be after measure.start ({start:g})")
    if start >= duration:
        raise ScenarioError("measure.start", f"must be before the run ends ({duration:g} s)")
    return start, end


#: The cyclic GC's first-generation threshold while a run lasts (Python's default: 700).
RUN_GC_THRESHOLD = 10_000


@contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """While a run lasts, the cyclic GC leaves alone what existed before it (`gc.freeze`),
    and collects its youngest generation after 10,000 net allocations rather than 700.

    Its full and middle collections otherwise walk every object of the process (modules,
    functions, the scenario) a few times a minute of simulated time: about half of a run's
    last-level cache misses (cachegrind). Objects made during the run are collected as
    always, and the older ones are handed back to the GC after it (`gc.unfreeze`). A process
    that froze objects itself (before a fork, say) is left as it is.

    The higher threshold: a simulated request leaves a few objects alive for a while (its
    saga, jobs and calls), so at 700 the GC ran every ~125 requests and mostly walked and
    promoted live ones; at 10,000 it runs 14 times less often and finds more of them gone
    (100 s of `baseline`: 31 young collections -> 1; -1.8% instructions and -4% L1 data
    misses per request, cachegrind). Nothing is left uncollected: the same collections run,
    later; the threshold only bounds how many young objects wait for one (about a megabyte).
    It is restored on every way out of the run (an exception included), and only if it is
    still the run's own (a caller that changed it meanwhile keeps its setting); a threshold
    already at least this high, or a GC switched off, is left as it is.
    """
    threshold = _raise_gc_threshold()
    try:
        if gc.get_freeze_count():
            yield
            return
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
    finally:
        if threshold is not None:
            _restore_gc_threshold(threshold)


def _raise_gc_threshold() -> tuple[int, int, int] | None:
    """Raise the first-generation threshold for a run; the previous thresholds, or None if
    they were left as they were."""
    before = gc.get_threshold()
    if not gc.isenabled() or before[0] == 0 or before[0] >= RUN_GC_THRESHOLD:
        return None
    gc.set_threshold(RUN_GC_THRESHOLD, *before[1:])
    return before


def _restore_gc_threshold(before: tuple[int, int, int]) -> None:
    current = gc.get_threshold()
    if current == (RUN_GC_THRESHOLD, *before[1:]):  # still the run's: nobody else changed it
        gc.set_threshold(*before)


def simulate(
    config: dict[str, Any],
    *,
    seed: int | None = None,
    duration: float | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> RunResult:
    """Build and run one scenario (already merged with defaults)."""
    return Simulation(config, seed=seed, duration=duration).run(progress)
