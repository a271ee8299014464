"""Queueing building blocks: a multi-server FIFO station and an external service on top of it.

Both are driven by SimPy event callbacks instead of one process per request: a job costs one
scheduled event for its service time (plus one for a caller's timeout when it may be needed),
which keeps a full request within the benchmark's budget.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import simpy
from simpy.events import NORMAL

from sagalab.orchestrator.outcomes import (
    SUCCESS,
    Transport,
    Verdict,
    classify_status,
    classify_transport,
)
from sagalab.orchestrator.saga import Phase

from .distributions import erlang, hyperexponential
from .errors import ScenarioError
from .metrics import Histogram, TierStats, waiting_summary

__all__ = ["DISTRIBUTIONS", "Call", "Fault", "Job", "Service", "Station", "sampler"]

_log, _exp = math.log, math.exp
# random.py's own definition (its NV_MAGICCONST is not in the typeshed stubs): same float.
_NV_MAGICCONST = 4 * math.exp(-0.5) / math.sqrt(2.0)
_ACTION, _COMPENSATION = Phase.ACTION, Phase.COMPENSATION


#: The `dist` a latency (or an inter-arrival shape) may name.
DISTRIBUTIONS = frozenset(
    {"exponential", "lognormal", "constant", "uniform", "empirical", "erlang", "hyperexponential"}
)


def sampler(spec: dict[str, Any], rng: random.Random, where: str) -> Callable[[], float]:
    """A latency sampler from `{dist: exponential|lognormal|constant|uniform|empirical|erlang|
    hyperexponential, ...}` (the last two: `simulator.distributions`).

    `empirical`: `quantiles: [x0, ..., xk]`, the values at probabilities 0, 1/k, ..., 1
    (non-decreasing); a draw is the inverse of their piecewise-linear CDF at one uniform
    number, so a seed gives the same draws. `simulate calibrate` writes them.

    The exponential and lognormal samplers inline `random.Random.expovariate` and
    `lognormvariate` (Kinderman-Monahan `normalvariate`) step for step: the same draws and the
    same floats, without two Python calls per sample on the hottest path of a run.
    """
    from .config import Node

    node = Node(spec, where)
    dist = node.text("dist", "exponential", DISTRIBUTIONS)
    if dist == "erlang":
        return erlang(node, rng)
    if dist == "hyperexponential":
        return hyperexponential(node, rng)
    uniform01 = rng.random
    if dist == "exponential":
        rate = 1.0 / node.num("mean", positive=True)

        def exponential() -> float:
            return -_log(1.0 - uniform01()) / rate

        return exponential
    if dist == "lognormal":
        mu = _log(node.num("median", positive=True))
        sigma = node.num("sigma", min=0.0, default=0.5)

        def lognormal() -> float:
            while True:
                u1 = uniform01()
                u2 = 1.0 - uniform01()
                z = _NV_MAGICCONST * (u1 - 0.5) / u2
                if z * z / 4.0 <= -_log(u2):
                    return _exp(mu + z * sigma)

        return lognormal
    if dist == "empirical":
        points = _quantile_points(node)
        k = len(points) - 1

        def empirical() -> float:
            u = uniform01() * k
            i = min(int(u), k - 1)
            return points[i] + (points[i + 1] - points[i]) * (u - i)

        return empirical
    if dist == "constant":
        value = node.num("value", min=0.0)
        return lambda: value
    low, high = node.num("low", min=0.0), node.num("high", min=0.0)
    return lambda: rng.uniform(low, high)


#: Most points of an empirical distribution (each is a float held for the run).
MAX_QUANTILES = 1001


def _quantile_points(node: Any) -> list[float]:
    where = f"{node.path}.quantiles"
    raw = node.get("quantiles")
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_QUANTILES:
        raise ScenarioError(where, f"must be a list of 2 to {MAX_QUANTILES} seconds")
    points: list[float] = []
    for i, x in enumerate(raw):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x < 0:
            raise ScenarioError(f"{where}[{i}]", f"must be a number of seconds >= 0, got {x!r}")
        if points and x < points[-1]:
            raise ScenarioError(f"{where}[{i}]", "must not be less than the one before")
        points.append(float(x))
    return points


class Job:
    """One item at a station. `payload` belongs to the caller.

    Once started, a job is its own completion event in SimPy's schedule, where a `Timeout`
    of its service time would otherwise be (one object less per job: measured, 0.66 against
    0.26 µs per job with its timer). SimPy's loop (`Environment.step`) and a process waiting
    on an event read only its `callbacks`, `_ok` and `_value`; a completion never fails, and
    a process waiting on one is sent None. `Station._start` schedules it exactly as
    `Timeout.__init__` schedules itself (`env.schedule(event, NORMAL, delay)`), at the same
    point, so the order of simultaneous events is unchanged.
    """

    __slots__ = ("arrived", "started", "ends", "payload", "done", "cancelled", "callbacks")

    _ok = True  # read by SimPy: the event succeeded
    _value = None  # read by SimPy: what a process waiting on the job is sent

    def __init__(self, arrived: float, payload: Any, done: Callable[[Job], None]) -> None:
        self.arrived = arrived
        self.started = -1.0
        self.ends = -1.0
        self.payload = payload
        self.done = done
        self.cancelled = False
        # None until started; SimPy sets it back to None once the completion is processed.
        self.callbacks: list[Callable[[Job], None]] | None = None


class Station:
    """`servers` parallel servers, a FIFO queue of at most `queue_limit`, service by `sample`.

    With a `queue_timeout` (seconds; None: none), a job that waited longer than that when a
    server frees up is dropped unserved (a server discarding expired work): counted in
    `expired` and handed to `on_expired` instead of being served.

    Only a `droppable` station (one that may crash: a gateway) keeps its jobs in service
    for `drop_all`; the others save a dict insert and removal per job.
    """

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        servers: int,
        sample: Callable[[], float],
        queue_limit: int | None = None,
        *,
        droppable: bool = False,
    ) -> None:
        self.env = env
        self.name = name
        self.servers = servers
        self.sample = sample
        self.queue_limit = queue_limit
        self.busy = 0
        self.queue: deque[Job] = deque()
        # Ordered (a dict): `drop_all` is reproducible across processes.
        self.in_service: dict[Job, None] | None = {} if droppable else None
        self.stats = TierStats(name)
        self.response = Histogram()
        self.scale = 1.0  # service-time multiplier (slowdowns)
        # Waiting before service: jobs that found every server busy, and their waits once
        # started. Kept on the queueing path only; a job served at once costs nothing here.
        self.queued = 0
        self.waits = Histogram()
        self._on_timer = self._finish  # bound once: the callback of every job's completion
        self.queue_timeout: float | None = None
        self.on_expired: Callable[[Job], None] | None = None
        self.expired = 0

    @property
    def active(self) -> int:
        """Jobs queued or in service."""
        return self.busy + len(self.queue)

    def submit(
        self, payload: Any, done: Callable[[Job], None], now: float | None = None
    ) -> Job | None:
        """Queue a job; None if the queue is full (the caller answers 503).

        `now` is env.now, from a caller that has just read it.
        """
        if now is None:
            now = self.env.now
        if self.busy >= self.servers:
            if self.queue_limit is not None and len(self.queue) >= self.queue_limit:
                return None
            job = Job(now, payload, done)
            self.stats.enter(now)
            self.queue.append(job)
            self.queued += 1
            return job
        job = Job(now, payload, done)
        self.stats.enter(now)
        self._start(job, now)
        return job

    def _start(self, job: Job, now: float) -> None:
        self.busy += 1
        in_service = self.in_service
        if in_service is not None:
            in_service[job] = None
        job.started = now
        duration = self.sample() * self.scale
        job.ends = now + duration
        if duration < 0:  # what `Timeout` refuses
            raise ValueError(f"Negative delay {duration}")
        # The job is its own completion event (see `Job`), and one bound callback serves
        # every job of the station.
        job.callbacks = [self._on_timer]
        self.env.schedule(job, NORMAL, duration)  # type: ignore[arg-type]  # an event: `Job`

    def _finish(self, job: Job) -> None:
        # A job's completion (its own event: `_start`).
        if job.cancelled:
            return
        # The timer fired at env.now, scheduled as now + duration by the same float sum as
        # `job.ends` (SimPy's `schedule`): equal, and read without a property call.
        now = job.ends
        self.busy -= 1
        in_service = self.in_service
        if in_service is not None:
            in_service.pop(job, None)
        sojourn = now - job.arrived
        self.stats.leave(now, sojourn)
        self.response.record(sojourn)
        job.done(job)
        job.payload = None
        queue = self.queue
        if queue and self.queue_timeout is not None:
            self._start_unexpired(now)
            return
        while queue and self.busy < self.servers:
            job = queue.popleft()
            self.waits.record(now - job.arrived)
            self._start(job, now)

    def waiting(self) -> dict[str, float]:
        """Waiting before service of the jobs started so far (`metrics.waiting_summary`)."""
        return waiting_summary(self.stats.arrivals - self.queued, self.waits)

    def _start_unexpired(self, now: float) -> None:
        """Start the queued jobs that have not waited past `queue_timeout`; drop the others."""
        queue, limit = self.queue, self.queue_timeout
        assert limit is not None
        while queue and self.busy < self.servers:
            job = queue.popleft()
            if now - job.arrived <= limit:
                self._start(job, now)
                continue
            self.expired += 1
            self.stats.leave(now, now - job.arrived)
            if self.on_expired is not None:
                self.on_expired(job)
            job.payload = None

    def drop_all(self) -> list[Job]:
        """Cancel every queued and running job (the instance crashed); returns them."""
        in_service = self.in_service
        if in_service is None:
            raise TypeError(f"station {self.name!r} was not made droppable")
        now = self.env.now
        dropped = list(in_service) + list(self.queue)
        for job in dropped:
            job.cancelled = True
            self.stats.leave(now, now - job.arrived)
        in_service.clear()
        self.queue.clear()
        self.busy = 0
        return dropped


class Fault:
    """A scheduled fault on one service: outage, slowdown (factor) or errors (rate).

    An outage's `answer` is "refused" (the connection is refused: surely not applied, no
    Retry-After) or "503" (what the fake services answer: a 503 whose Retry-After is the
    outage's remaining seconds, rounded up, at least 1; the caller cannot tell whether it
    applied, so a failed step is compensated)."""

    __slots__ = ("service", "kind", "start", "end", "factor", "rate", "answer")

    def __init__(
        self,
        service: str,
        kind: str,
        start: float,
        end: float,
        factor: float,
        rate: float,
        answer: str = "refused",
    ) -> None:
        self.service = service
        self.kind = kind
        self.start = start
        self.end = end
        self.factor = factor
        self.rate = rate
        self.answer = answer

    def outage_answer(self, now: float) -> Verdict:
        """What a call during this outage gets at `now`."""
        if self.answer == "refused":
            return REFUSED
        remaining = max(0.0, self.end - now)
        # The fake services' header: whole seconds, at least one (fakeservices/app.py).
        return classify_status(
            503, f"outage: down for another {remaining:.1f}s", max(1, math.ceil(remaining))
        )


# What the simulated services answer, classified by the rule the real executor uses
# (`orchestrator.outcomes`): the same status means the same failure and the same breaker count.
REFUSED = classify_transport(Transport.NOT_SENT, "connection refused")
OVERLOADED = classify_status(503, "service queue full")
SERVER_ERROR = classify_status(500, "internal error")
REJECTED = classify_status(422, "rejected by the service")
# A call dropped unserved after waiting past the service's `queue_timeout`.
EXPIRED = classify_status(503, "queue timeout: dropped unserved")
TOMBSTONED = classify_status(409, "already compensated")
TIMED_OUT = classify_transport(Transport.TIMEOUT, "timeout")
# An idempotent service's answer to a key it is still processing (the fake services' 409).
IN_PROGRESS = classify_status(409, '{"error": "in_progress"}', 1.0)

# What a call's event carries: (failure or None, counts against the breaker).
Outcome = Verdict
_OK: Outcome = SUCCESS


class Call:
    """One attempt in flight: wait for `event`, then read `outcome`."""

    __slots__ = ("event", "saga", "key", "phase", "answered", "outcome", "direct", "held")

    # Set by `Service.call` before it returns the call (which event depends on the path taken).
    event: simpy.Event

    def __init__(self, saga: Any, key: tuple[str, Phase], phase: Phase) -> None:
        self.saga = saga
        self.key = key
        self.phase = phase
        self.answered = False
        self.outcome: Outcome = _OK
        self.direct = False
        # (saga id, step, phase) while a service that holds keys has it queued or in service
        self.held: tuple[Any, str, Phase] | None = None

    def answer(self, outcome: Outcome) -> None:
        self.answered = True
        self.outcome = outcome
        if not self.direct:
            self.event.succeed(outcome)


class Service:
    """An external service: latency, errors, rejections, finite concurrency, idempotency, faults.

    Its ledger for a saga lives on the saga object (`saga.ledger`: (step, phase) -> times
    applied), so it is freed with the saga. Idempotent services apply a key once and answer
    repeats from the record; a late action whose compensation already ran is refused
    (a tombstone), as a real service keyed on the idempotency key does. A repeat that arrives
    while its key is still queued or being processed is answered 409 `in_progress` at once,
    as the fake services (fakeservices/app.py) answer it, unless `in_progress` is off (a
    service that queues every repeat and deduplicates only once the first is done).
    """

    def __init__(
        self,
        env: simpy.Environment,
        name: str,
        *,
        rng: random.Random,
        latency: Callable[[], float],
        concurrency: int,
        queue_limit: int | None,
        error_rate: float,
        reject_rate: float,
        idempotent: bool,
        faults: list[Fault],
        in_progress: bool = True,
        queue_timeout: float | None = None,
    ) -> None:
        self.env = env
        self.name = name
        self.rng = rng
        self.station = Station(env, name, concurrency, latency, queue_limit)
        if queue_timeout is not None:
            self.station.queue_timeout = queue_timeout
            self.station.on_expired = self._expired
        self.error_rate = error_rate
        self.reject_rate = reject_rate
        self.idempotent = idempotent
        self.faults = [f for f in faults if f.service == name]
        self._on_done = self._done  # bound once: the completion callback of every job
        # (saga id, step, phase) of the calls queued or in service, for a service that answers
        # a repeat of one of them 409 in_progress (idempotent, with `in_progress` on).
        self.holds_keys = idempotent and in_progress
        self.processing: dict[tuple[Any, str, Phase], None] = {}
        self.counts = {
            "calls": 0,
            "applied": 0,
            "deduplicated": 0,
            "applied_twice": 0,
            "tombstoned": 0,
            "errors": 0,
            "rejected": 0,
            "refused": 0,
            "overloaded": 0,
            "in_progress": 0,
            "timeouts": 0,
            "wasted": 0,
        }
        # First calls of an operation (the saga's `sent` notes which it made): kept out of
        # `counts` so that the report's `services` stay as they were.
        self.useful = 0

    def _fault_state(self, now: float) -> tuple[Fault | None, float, float]:
        outage: Fault | None = None
        factor, rate = 1.0, self.error_rate
        for f in self.faults:
            if f.start <= now < f.end:
                if f.kind == "outage":
                    outage = f
                elif f.kind == "slowdown":
                    factor *= f.factor
                else:
                    rate = max(rate, f.rate)
        return outage, factor, rate

    def call(self, saga: Any, step: str, phase: Phase, timeout: float) -> Call:
        """Send one attempt; wait for the returned call's `event`, then read its `outcome`.

        When the job starts at once and ends within the timeout, the call's event is the
        station's own completion timer (whose callback sets the outcome before the caller
        resumes): one scheduled event per call instead of two.
        """
        env = self.env
        now = env.now
        counts = self.counts
        counts["calls"] += 1
        key = (step, phase)
        sent = saga.sent
        if key not in sent:  # the operation's first call here: useful; any later one repeats it
            sent.add(key)
            self.useful += 1
        call = Call(saga, key, phase)
        if self.faults:
            outage, factor, _ = self._fault_state(now)
            self.station.scale = factor
            if outage is not None:
                counts["refused"] += 1
                call.event = env.event()
                call.answer(outage.outage_answer(now))
                return call
        if self.holds_keys:
            held = (saga.id, step, phase)
            # A saga with no call in process anywhere (`inflight`) holds no key here.
            if saga.inflight and held in self.processing:
                counts["in_progress"] += 1
                call.event = env.event()
                call.answer(IN_PROGRESS)
                return call
        job = self.station.submit(call, self._on_done, now)
        if job is None:
            counts["overloaded"] += 1
            call.event = env.event()
            call.answer(OVERLOADED)
            return call
        if self.holds_keys:
            self.processing[held] = None
            call.held = held
        saga.inflight += 1
        if job.started >= 0.0 and job.ends - now <= timeout:  # started at once, ends in time
            call.direct = True
            call.event = job  # type: ignore[assignment]  # an event in all but its class: `Job`
            return call
        call.event = env.event()
        guard = env.timeout(timeout)
        guard.callbacks.append(partial(self._time_out, call))
        return call

    def _time_out(self, call: Call, _guard: simpy.Event) -> None:
        if not call.answered:
            self.counts["timeouts"] += 1
            call.answer(TIMED_OUT)

    def _done(self, job: Job) -> None:
        call: Call = job.payload
        saga = call.saga
        saga.inflight -= 1
        if call.held is not None:
            self.processing.pop(call.held, None)
        if call.answered:
            self.counts["wasted"] += 1  # the caller gave up; the work was done anyway
        outcome = self._apply(call, saga)
        if not call.answered:
            if call.direct:  # what `call.answer` does for a call waiting on the timer itself
                call.answered = True
                call.outcome = outcome
            else:
                call.answer(outcome)

    def _expired(self, job: Job) -> None:
        """The call waited past the queue timeout: dropped unserved, answered 503."""
        call: Call = job.payload
        call.saga.inflight -= 1
        if call.held is not None:
            self.processing.pop(call.held, None)
        if not call.answered:
            call.answer(EXPIRED)

    def _apply(self, call: Call, saga: Any) -> Outcome:
        counts = self.counts
        rng = self.rng
        rate = self._fault_state(self.env.now)[2] if self.faults else self.error_rate
        if rate and rng.random() < rate:
            counts["errors"] += 1
            return SERVER_ERROR
        ledger = saga.ledger
        key = call.key
        if call.phase is _ACTION:
            if (key[0], _COMPENSATION) in ledger:
                counts["tombstoned"] += 1
                return TOMBSTONED
            if key not in ledger and self.reject_rate and rng.random() < self.reject_rate:
                counts["rejected"] += 1
                return REJECTED
        seen = ledger.get(key, 0)
        if seen and self.idempotent:
            counts["deduplicated"] += 1
            return _OK
        ledger[key] = seen + 1
        counts["applied"] += 1
        if seen:
            counts["applied_twice"] += 1
        return _OK
