"""The edge of the modelled system: clients, firewall, load balancer and gateway instances.

A request's path is a chain of station callbacks (no process per request):

    client attempt -> firewall station (rules + flood guard) -> balancer choice
      -> gateway station (auth cost, token bucket per key) -> saga created and queued -> 202

Clients give up on an attempt after their timeout (the attempt still travels on: that is
wasted work) and retry under the same `RetryPolicy` objects the orchestrator uses.
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import simpy

from sagalab.edge.policies.balancer import Balancer, HealthTracker, Strategy, UnusedWeights
from sagalab.edge.policies.failover import SendFailure, after_failure, choose_untried, eject
from sagalab.edge.policies.firewall import Address, Firewall
from sagalab.edge.policies.token_bucket import TokenBucket
from sagalab.orchestrator.policies.adaptive_throttle import AdaptiveThrottle, ThrottlePolicy
from sagalab.orchestrator.policies.retry import JITTER_KINDS, RetryPolicy
from sagalab.orchestrator.policies.retry_budget import RetryBudget, RetryBudgetPolicy

from .config import Node
from .errors import ScenarioError
from .metrics import Histogram
from .stations import Job, Station, sampler

__all__ = ["Attempt", "ClientGroup", "Edge", "Gateway", "Request"]

RETRYABLE = frozenset({"timeout", "429", "503", "reset"})
# Client timeouts are checked by one sweeper per client group, at most this often: a timeout
# may fire up to this late, and a run schedules ~10 sweeps/s instead of one event per attempt.
TIMEOUT_RESOLUTION = 0.1


def _jitter(retry: Node) -> bool | str:
    """A client's `retry.jitter`: a kind of `JITTER_KINDS`, or true (full) or false (none)."""
    value = retry.get("jitter", True)
    if not isinstance(value, bool) and value not in JITTER_KINDS:
        raise ScenarioError(
            f"{retry.path}.jitter",
            f"must be one of {', '.join(JITTER_KINDS)} (or true: full, false: none), got {value!r}",
        )
    return value  # type: ignore[no-any-return]


def retry_budget(value: Any, where: str) -> RetryBudget | None:
    """A `retry_budget` setting (null: none) as a fresh `RetryBudget`."""
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        raise ScenarioError(where, "must be a mapping (ratio, min_per_second, window) or null")
    unknown = sorted(set(value) - {"ratio", "min_per_second", "window"})
    if unknown:
        raise ScenarioError(
            f"{where}.{unknown[0]}", "unknown setting; known here: min_per_second, ratio, window"
        )
    try:
        return RetryBudget(RetryBudgetPolicy(**value))
    except (TypeError, ValueError) as exc:
        raise ScenarioError(where, str(exc)) from None


def throttle(value: Any, where: str) -> AdaptiveThrottle | None:
    """A client group's `throttle` setting (null: none) as a fresh `AdaptiveThrottle`."""
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        raise ScenarioError(where, "must be a mapping (k, window) or null")
    unknown = sorted(set(value) - {"k", "window"})
    if unknown:
        raise ScenarioError(f"{where}.{unknown[0]}", "unknown setting; known here: k, window")
    try:
        return AdaptiveThrottle(ThrottlePolicy(**value))
    except (TypeError, ValueError) as exc:
        raise ScenarioError(where, str(exc)) from None


def queue_timeout(node: Node) -> float | None:
    """A station's `queue_timeout` at `node`: seconds, or None (null: never dropped)."""
    if node.get("queue_timeout") is None:
        return None
    return node.num("queue_timeout", positive=True)


def per_gateway(node: Node, key: str, count: int) -> list[float]:
    """A list of one positive number per gateway at `node.key` (empty: not given)."""
    value = node.get(key) or []
    where = f"{node.path}.{key}"
    if not isinstance(value, list) or (value and len(value) != count):
        raise ScenarioError(where, f"must be a list of one number per gateway ({count}) or []")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise ScenarioError(f"{where}[{i}]", f"must be a number, got {x!r}")
    return [float(x) for x in value]


def _faster(sample: Callable[[], float], speed: float) -> float:
    """A service time of a gateway `speed` times as fast as the base one."""
    return sample() / speed


class ClientGroup:
    """One population of callers: legitimate (with API keys) or attackers (without)."""

    def __init__(self, node: Node, rng: random.Random) -> None:
        self.name = node.text("name")
        self.kind = node.text("kind", "legit", {"legit", "attacker"})
        self.legit = self.kind == "legit"
        try:
            network = ipaddress.ip_network(node.text("addresses"), strict=False)
        except ValueError:
            raise ScenarioError(f"{node.path}.addresses", "must be a CIDR network") from None
        count = node.int("address_count", min=1)
        count = min(count, max(network.num_addresses - 2, 1))
        base = int(network.network_address) + (1 if network.num_addresses > 2 else 0)
        self.addresses = [str(ipaddress.ip_address(base + i)) for i in range(count)]
        # `addresses[i]` is `ip_address(ip_base + i)`: built per request from the integer (the
        # firewall then does not parse the string), not kept (65,534 objects the GC would walk)
        self.ip_base = base
        nkeys = node.int("keys", min=0) if self.legit else 0
        self.keys: list[str | None] = [f"{self.name}-{i}" for i in range(nkeys)] or [None]
        self.timeout = node.num("timeout", positive=True)
        self.idempotent = node.flag("idempotent", True)
        retry = node.get("retry")
        if retry is None or retry is False:
            self.retry: RetryPolicy | None = None
        else:
            r = Node(retry, f"{node.path}.retry")
            try:
                self.retry = RetryPolicy(
                    max_attempts=r.int("max_attempts", min=1),
                    initial_delay=r.num("initial_delay", min=0.0),
                    max_delay=r.num("max_delay", min=0.0),
                    multiplier=r.num("multiplier", min=1.0, default=2.0),
                    deadline=r.get("deadline"),
                    jitter=_jitter(r),
                )
            except (TypeError, ValueError) as exc:
                raise ScenarioError(f"{node.path}.retry", str(exc)) from None
        # Retries at most a share of this group's requests (and the cluster's, `Edge.budget`).
        self.budget = retry_budget(node.get("retry_budget"), f"{node.path}.retry_budget")
        # Refuses some requests locally while the edge refuses many (null: off).
        self.throttle = throttle(node.get("throttle"), f"{node.path}.throttle")
        # Called with each request of the group once it is over (a closed population's users
        # wait for it: `simulator.population`); None: nobody waits.
        self.on_done: Callable[[Request], None] | None = None
        self.population: Any = None  # its `simulator.population.Population`, if closed
        # A throttle or a waiting user hears of every admitted request: one attribute read on
        # that common path instead of two (`Edge.respond`); `wait_for_requests` keeps it true.
        self.hooked = self.throttle is not None
        self.rng = rng
        # The edge's counter names of this group's kind, built once (not an f-string per
        # request): `Edge.count_as`.
        self.counter_names: dict[str, str] = {}
        self.pending: deque[tuple[float, Attempt]] = deque()
        self.sweeping = False

    def wait_for_requests(self, on_done: Callable[[Request], None]) -> None:
        """Call `on_done` with each request of the group once it is over."""
        self.on_done = on_done
        self.hooked = True


class Request:
    """A client's logical request: one or more attempts, at most one saga (if idempotent)."""

    __slots__ = (
        "group",
        "address",
        "ip",
        "key",
        "first_at",
        "attempts",
        "inflight",
        "done",
        "saga",
        "last_delay",
    )

    def __init__(
        self, group: ClientGroup, address: str, key: str | None, now: float, ip: Address
    ) -> None:
        self.group = group
        self.address = address
        self.ip = ip  # `address` parsed, for the firewall
        self.key = key
        self.first_at = now
        self.attempts = 0
        self.inflight = 0
        self.done = False
        self.saga: Any = None
        # The last backoff wait (a decorrelated jitter grows from it); None before a retry.
        self.last_delay: float | None = None


class Attempt:
    """One try of a request; `answered` once the client has its response or gave up on it."""

    __slots__ = ("request", "sent", "answered", "tried", "unknown")

    def __init__(self, request: Request, sent: float) -> None:
        self.request = request
        self.sent = sent
        self.answered = False
        # Gateways this attempt was sent to (the balancer tries each at most once).
        self.tried: tuple[int, ...] = ()
        # A gateway may have acted on it (its connection broke after sending).
        self.unknown = False


class Gateway:
    """One gateway instance: a station whose service is auth plus handling; can crash."""

    def __init__(self, env: simpy.Environment, index: int, station: Station, limit: int) -> None:
        self.env = env
        self.name = f"gateway-{index}"
        self.station = station
        self.limit = limit
        self.up = True
        self.health = HealthTracker()

    # What the balancer reads (`edge.policies.balancer.Instance`), live rather than
    # through a snapshot per request. Both read `Station.active`'s two fields directly: the
    # balancer asks every gateway for every request, and a property calling a property costs
    # 0.6% of a simulated request.
    @property
    def available(self) -> bool:
        """Not ejected by health checks and below its connection limit."""
        station = self.station
        return self.health.healthy and station.busy + len(station.queue) < self.limit

    @property
    def active(self) -> int:
        """Requests queued or in service."""
        station = self.station
        return station.busy + len(station.queue)


class Edge:
    """Clients' attempts through firewall, balancer and gateways up to `admit(request)`."""

    def __init__(
        self,
        env: simpy.Environment,
        node: Node,
        rng: random.Random,
        firewall: Firewall,
        admit: Callable[[Request, float], bool],
    ) -> None:
        self.env = env
        self.rng = rng
        self.firewall = firewall
        self.admit = admit
        fw = node.node("firewall")
        if isinstance(fw.get("service_time"), Mapping):  # a distribution
            fw_time = sampler(fw.get("service_time"), rng, "firewall.service_time")
        else:  # a number: a constant time per request, as before distributions were allowed
            service_time = fw.num("service_time", min=0.0)

            def fw_time() -> float:
                return service_time

        self.fw_station = Station(
            env, "firewall", fw.int("workers", min=1), fw_time, fw.int("queue_limit")
        )
        if queue_timeout(fw) is not None:
            self.fw_station.queue_timeout = queue_timeout(fw)
            self.fw_station.on_expired = self._gateway_expired  # the same answer: a 503
        lb = node.node("balancer")
        gw = node.node("gateways")
        count = gw.int("count", min=1)
        weights = per_gateway(lb, "weights", count)
        strategy = lb.text("strategy")
        if strategy not in {s.value for s in Strategy}:
            raise ScenarioError(
                "balancer.strategy",
                "must be round_robin, random, least_connections, power_of_two or "
                "weighted_round_robin",
            )
        try:
            self.balancer = Balancer(strategy, weights or None)
        except UnusedWeights as exc:
            raise ScenarioError(
                "balancer.weights",
                f"{exc}: set balancer.strategy to weighted_round_robin or remove balancer.weights",
            ) from None
        except ValueError as exc:
            raise ScenarioError("balancer.weights", str(exc)) from None
        health = lb.node("health")
        self.health_interval = health.num("interval", positive=True)
        auth = gw.num("auth_time", min=0.0)
        if isinstance(gw.get("handle_time"), Mapping):  # a distribution of the handling time
            handling = sampler(gw.get("handle_time"), rng, "gateways.handle_time")

            def gateway_time() -> float:
                return auth + handling()

        else:  # a number: the mean of an exponential handling time, as before
            handle = gw.num("handle_time", min=0.0)

            def gateway_time() -> float:
                return auth + (rng.expovariate(1.0 / handle) if handle > 0 else 0.0)

        speeds = per_gateway(gw, "speed", count)
        expire_after = queue_timeout(gw)
        limit = gw.int("connection_limit", min=1)
        workers = gw.int("workers", min=1)
        self.gateways = []
        for i in range(count):
            sample = gateway_time
            if speeds and speeds[i] != 1.0:
                sample = partial(_faster, gateway_time, speeds[i])
            g = Gateway(
                env, i, Station(env, f"gateway-{i}", workers, sample, None, droppable=True), limit
            )
            if expire_after is not None:
                g.station.queue_timeout = expire_after
                g.station.on_expired = self._gateway_expired
            g.health = HealthTracker(
                health.int("fail_threshold", min=1), health.int("pass_threshold", min=1)
            )
            self.gateways.append(g)
        rl = gw.node("rate_limit")
        self.key_rate, self.key_burst = rl.num("rate", positive=True), rl.num("burst", min=1.0)
        self.buckets: dict[str, TokenBucket] = {}
        self.counts: dict[str, int] = {}
        self.submit_latency = {"legit": Histogram(), "attacker": Histogram()}
        self.health_events = 0
        # Requests not yet done (in flight or waiting to retry): the drain waits for them.
        self.open_requests = 0
        # The arrivals whose submit latency the report keeps (`model.measurement_window`).
        self.measure: tuple[float, float] | None = None
        # One budget shared by every client group: the cluster-wide cap on retries.
        self.budget = retry_budget(node.get("retry_budget"), "retry_budget")

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def count_as(self, group: ClientGroup, what: str) -> None:
        """Count one `what` of `group`'s kind (`legit.offered`, `attacker.403` ...)."""
        name = group.counter_names.get(what)
        if name is None:
            name = group.counter_names[what] = f"{group.kind}.{what}"
        counts = self.counts
        counts[name] = counts.get(name, 0) + 1

    # --- client side ------------------------------------------------------------------------

    def new_request(self, group: ClientGroup) -> None:
        """A client in `group` starts a request now."""
        rng = self.rng
        addresses, keys = group.addresses, group.keys
        i = int(rng.random() * len(addresses))
        key = keys[int(rng.random() * len(keys))]
        ip = ipaddress.ip_address(group.ip_base + i)
        request = Request(group, addresses[i], key, self.env.now, ip)
        self.count_as(group, "offered")
        self.open_requests += 1
        if group.budget is not None:
            group.budget.record_request(request.first_at)
        if self.budget is not None:
            self.budget.record_request(request.first_at)
        self.send(request)

    def send(self, request: Request) -> None:
        env = self.env
        now = env.now
        group = request.group
        if group.throttle is not None and not group.throttle.admit(now, group.rng.random()):
            # Refused by the client itself: never sent, and not retried (that is the point).
            self.count_as(group, "throttled")
            self._over(request)
            return
        request.attempts += 1
        request.inflight += 1
        attempt = Attempt(request, now)
        self.count_as(group, "attempts")
        group.pending.append((now + group.timeout, attempt))
        if not group.sweeping:
            self._arm(group)
        if self.fw_station.submit(attempt, self._after_firewall, now) is None:
            self.respond(attempt, "503")

    def _arm(self, group: ClientGroup) -> None:
        group.sweeping = True
        delay = max(group.pending[0][0] - self.env.now, TIMEOUT_RESOLUTION)
        timer = self.env.timeout(delay)
        timer.callbacks.append(partial(self._sweep, group))

    def _sweep(self, group: ClientGroup, _timer: simpy.Event) -> None:
        """Time out every attempt past its deadline; forget the answered ones."""
        group.sweeping = False
        now = self.env.now
        pending = group.pending
        while pending and (pending[0][1].answered or pending[0][0] <= now):
            _, attempt = pending.popleft()
            if not attempt.answered:
                self.respond(attempt, "timeout")
        if pending and not group.sweeping:
            self._arm(group)

    def respond(self, attempt: Attempt, status: str, retry_after: float | None = None) -> None:
        """The answer to `attempt` reaches the client (ignored if it already gave up)."""
        request = attempt.request
        group = request.group
        kind = group.kind
        if attempt.answered:
            self.count(f"{kind}.late_{status}")
            return
        attempt.answered = True
        request.inflight -= 1
        now = self.env.now
        self.count_as(group, status)
        if status == "202":
            measure = self.measure
            if measure is None or measure[0] <= request.first_at < measure[1]:
                self.submit_latency[kind].record(now - attempt.sent)
            if not request.done:
                self.open_requests -= 1
            self.count_as(group, "admitted")
            request.done = True
            if group.hooked:  # one read on the common path for both hooks
                if group.throttle is not None:
                    group.throttle.record_accept(now)
                if group.on_done is not None:
                    group.on_done(request)
            return
        if group.throttle is not None and status not in RETRYABLE:
            group.throttle.record_accept(now)  # answered (401, 403), not refused for overload
        policy = group.retry
        delay = None
        if policy is not None:
            delay = policy.next_delay(
                attempts_made=request.attempts,
                first_attempt_at=request.first_at,
                now=now,
                retryable=status in RETRYABLE,
                rng=group.rng,
                retry_after=retry_after,
                previous_delay=request.last_delay,
            )
        if delay is not None and not self._budget_allows(group, now):
            self.count(f"{kind}.retry_budget_refused")
            delay = None
        if delay is None:
            self.count(f"{kind}.gave_up")
            self._over(request)
            return
        self.count(f"{kind}.retries")
        request.last_delay = delay
        timer = self.env.timeout(delay)
        timer.callbacks.append(partial(self._resend, request))

    def _over(self, request: Request) -> None:
        """`request` got its answer or was given up on."""
        if not request.done:
            self.open_requests -= 1
        request.done = True
        on_done = request.group.on_done
        if on_done is not None:
            on_done(request)

    def _budget_allows(self, group: ClientGroup, now: float) -> bool:
        # The group's budget first: a retry it refuses is not charged to the cluster's.
        if group.budget is not None and not group.budget.try_retry(now):
            return False
        return self.budget is None or self.budget.try_retry(now)

    def _resend(self, request: Request, _backoff: simpy.Event) -> None:
        self.send(request)

    # --- firewall, balancer, gateway -----------------------------------------------------------

    def _after_firewall(self, job: Job) -> None:
        attempt: Attempt = job.payload
        request = attempt.request
        verdict = self.firewall.check(request.address, self.env.now, request.ip)
        if not verdict.allowed:
            self.count(f"firewall.{verdict.reason.value}")
            self.respond(attempt, "403")
            return
        self.route(attempt)

    def route(self, attempt: Attempt) -> None:
        gateways = self.gateways
        choice = choose_untried(self.balancer, gateways, attempt.tried, self.rng)
        if choice is None:
            self.count("balancer.no_instance")
            # Like the real edge: 502 "outcome unknown" if a gateway may have acted on it.
            self.respond(attempt, "reset" if attempt.unknown else "503")
            return
        attempt.tried += (choice,)
        gateway = gateways[choice]
        if not gateway.up:
            # Connection refused: what the real edge does (`edge.policies.failover`).
            self.count("balancer.connect_failed")
            self._failed(attempt, gateway, SendFailure.REFUSED)
            return
        gateway.station.submit(attempt, self._after_gateway)

    def _failed(self, attempt: Attempt, gateway: Gateway, failure: SendFailure) -> None:
        """A send to `gateway` failed: the shared failover rule says what happens next."""
        move = after_failure(failure, replayable=attempt.request.group.idempotent)
        if move.eject:
            changed = eject(gateway.health)
        else:
            changed = move.count_failure and gateway.health.record(False) is False
        if changed:
            self.health_events += 1
            self.count("balancer.ejections")
        attempt.unknown = attempt.unknown or move.outcome_unknown
        if attempt.answered:
            self.respond(attempt, "reset")  # its client gave up already: counted as late
        elif move.try_another:
            if move.outcome_unknown:
                self.count("balancer.resent")
            self.route(attempt)
        else:
            # The real edge answers 502 "outcome unknown"; the client sees a reset connection.
            self.respond(attempt, "reset")

    def _after_gateway(self, job: Job) -> None:
        attempt: Attempt = job.payload
        request = attempt.request
        if request.key is None:
            self.respond(attempt, "401")
            return
        now = self.env.now
        bucket = self.buckets.get(request.key)
        if bucket is None:
            bucket = self.buckets[request.key] = TokenBucket(self.key_rate, self.key_burst, now=now)
        taken = bucket.take(now)
        if not taken.allowed:
            self.respond(attempt, "429", taken.retry_after)
            return
        if self.admit(request, now):
            self.respond(attempt, "202")
        else:
            self.respond(attempt, "503")

    def _gateway_expired(self, job: Job) -> None:
        # Dropped unserved after waiting past `gateways.queue_timeout` (or the firewall's):
        # the client is answered 503.
        self.respond(job.payload, "503")

    def crash_gateway(self, index: int) -> None:
        """Gateway `index` dies: every connection on it is reset."""
        gateway = self.gateways[index]
        gateway.up = False
        self.count("gateway.crashes")
        for job in gateway.station.drop_all():
            self._failed(job.payload, gateway, SendFailure.BROKEN)

    def restart_gateway(self, index: int) -> None:
        self.gateways[index].up = True

    def health_checks(self) -> Any:
        """A SimPy process: active health checks of every gateway, every interval."""
        while True:
            yield self.env.timeout(self.health_interval)
            for g in self.gateways:
                changed = g.health.record(g.up)
                if changed is not None:
                    self.health_events += 1
                    self.count("balancer.ejections" if not changed else "balancer.returns")
