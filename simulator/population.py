"""Closed client populations: `users` that each submit, wait for the answer, think, repeat.

A client group has either `rate` (open arrivals: a Poisson schedule, however the system
answers) or `population` (closed: at most one request in flight per user):

    population: {users: 50, think: {dist: exponential, mean: 2.0}}

Each user first thinks (so that the users do not all start at t=0), then submits a request,
waits until it is over (admitted, or given up after its retries, or refused by the client's
own throttle), thinks again, and so on until the run's `duration`. The throughput then follows
the interactive response time law, X = N / (R + Z), with R the mean time a request took and Z
the mean think time: a slower system is offered less, which an open schedule never is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import simpy

from .config import Node
from .errors import ScenarioError
from .metrics import Histogram
from .stations import sampler

if TYPE_CHECKING:
    from .edge_model import ClientGroup, Edge, Request

__all__ = ["Population", "arrival_kind", "population_settings"]

_KEYS = ("think", "users")
_THINK = {"exponential": "mean", "constant": "value"}


def arrival_kind(client: Node) -> str:
    """`rate` or `population`: which of the two a client group has (exactly one)."""
    has_rate = client.get("rate") is not None
    has_population = client.get("population") is not None
    if has_rate and has_population:
        raise ScenarioError(client.path, "has both rate and population; give exactly one")
    if not has_rate and not has_population:
        raise ScenarioError(client.path, "has neither rate nor population; give exactly one")
    return "rate" if has_rate else "population"


def population_settings(client: Node) -> tuple[int, dict[str, Any], float]:
    """(users, think distribution, mean think time) of a closed client group."""
    raw = client.get("population")
    where = f"{client.path}.population"
    if not isinstance(raw, Mapping):
        raise ScenarioError(where, "must be a mapping (users, think)")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ScenarioError(f"{where}.{unknown[0]}", "unknown setting; known here: think, users")
    node = Node(raw, where)
    users = node.int("users", min=1)
    think = node.node("think")
    dist = think.text("dist", "exponential", set(_THINK))
    key = _THINK[dist]
    extra = sorted(set(think.data) - {"dist", key})
    if extra:
        raise ScenarioError(f"{think.path}.{extra[0]}", f"unknown setting; known here: dist, {key}")
    mean = think.num(key, positive=True)
    return users, dict(think.data), mean


class Population:
    """The users of one closed client group, driven by timers (no process per user)."""

    def __init__(
        self,
        env: simpy.Environment,
        edge: Edge,
        group: ClientGroup,
        node: Node,
        until: float,
        rng: Any,
    ) -> None:
        users, think, self.think_mean = population_settings(node)
        self.env = env
        self.edge = edge
        self.group = group
        self.users = users
        self.until = until
        self.think: Callable[[], float] = sampler(think, rng, f"{node.path}.population.think")
        self.cycles = 0  # requests over
        self.outstanding = 0
        self.peak_outstanding = 0
        self.response = Histogram()  # first attempt to the request being over, retries included
        self._submit = partial(Population._submit_one, self)
        group.wait_for_requests(self._done)

    def start(self) -> None:
        """Every user starts thinking now."""
        for _ in range(self.users):
            self._after_think()

    def _after_think(self) -> None:
        timer = self.env.timeout(self.think())
        timer.callbacks.append(self._submit)

    def _submit_one(self, _timer: simpy.Event) -> None:
        if self.env.now >= self.until:
            return  # the run's arrivals are over: this user stops
        self.outstanding += 1
        self.peak_outstanding = max(self.peak_outstanding, self.outstanding)
        self.edge.new_request(self.group)

    def _done(self, request: Request) -> None:
        self.outstanding -= 1
        self.cycles += 1
        self.response.record(self.env.now - request.first_at)
        self._after_think()

    def report(self) -> dict[str, Any]:
        """What the group's users did: requests over, their throughput, and the throughput the
        interactive response time law predicts from the measured R and the think time Z."""
        r = self.response.mean
        return {
            "users": self.users,
            "think_mean": self.think_mean,
            "requests_over": self.cycles,
            "peak_outstanding": self.peak_outstanding,
            "throughput": round(self.cycles / self.until, 6),
            "response": self.response.summary(),
            "law_throughput": round(self.users / (r + self.think_mean), 6),
        }
