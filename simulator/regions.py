"""A second region: orchestrator replicas across regions, an outage of the second region, and
failover of its replicas to the first.

Off by default (`regions.enabled: false`). On, the first region (home) keeps the edge, the
services and the database; `remote_replicas` of the `orchestrator.replicas` run in the second.
A replica there waits `hop` seconds each way for every call (there and back) and a round trip
for every write and claim (`Orchestrator._run` reads `Replica.remote` and `Orchestrator.hop`).

Each window of `outages` takes the second region down: its replicas die at `start` (their
leased sagas wait for the lease to expire, then a replica of the first region resumes them, as
after any crash) and start again at `end` (after the start-up delay). With `failover.enabled`,
as many replicas start in the first region `failover.delay` seconds after the outage begins;
they stay after it ends (giving them back is a scaling decision). What is not modelled: an
outage of the first region (the edge, services and database live there), and replicas that
were still starting when the outage began.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import simpy

from .config import Node
from .errors import ScenarioError
from .orchestration import Orchestrator

__all__ = ["Regions", "regions_from"]


class Regions:
    """The second region's placement, outages and failover, wired into the orchestrator."""

    def __init__(self, env: simpy.Environment, node: Node, replicas: int) -> None:
        self.env = env
        self.hop = node.num("hop", min=0.0)
        self.remote_replicas = node.int("remote_replicas", min=0)
        if self.remote_replicas > replicas:
            raise ScenarioError(
                f"{node.path}.remote_replicas",
                f"{self.remote_replicas} is more than orchestrator.replicas ({replicas})",
            )
        self.windows: list[tuple[float, float]] = []
        for o in node.items("outages"):
            start, end = o.num("start", min=0.0), o.num("end", min=0.0)
            if end <= start:
                raise ScenarioError(f"{o.path}.end", "must be after start")
            self.windows.append((start, end))
        f = node.node("failover")
        self.failover = f.flag("enabled", True)
        self.failover_delay = f.num("delay", min=0.0)
        self.outages = 0
        self.lost = 0
        self.failed_over = 0

    def is_remote(self, index: int, replicas: int) -> bool:
        """Whether the `index`-th of the initial `replicas` runs in the second region (the
        last `remote_replicas` of them do)."""
        return index >= replicas - self.remote_replicas

    def schedule(self, orchestrator: Orchestrator) -> None:
        """Set the hop and schedule every outage window (and its failover)."""
        orchestrator.hop = self.hop
        for start, end in self.windows:
            timer = self.env.timeout(start)
            timer.callbacks.append(partial(self._down, orchestrator, end))

    def _down(self, orchestrator: Orchestrator, end: float, _ev: simpy.Event) -> None:
        lost = sum(1 for r in orchestrator.replicas if r.alive and not r.draining and r.remote)
        self.outages += 1
        self.lost += lost
        orchestrator.crash(lost, remote=True)
        if self.failover:
            self.failed_over += lost
            for _ in range(lost):
                orchestrator.start_replica(delay=self.failover_delay)
        back = self.env.timeout(max(0.0, end - self.env.now))
        back.callbacks.append(lambda _ev: self._up(orchestrator, lost))

    def _up(self, orchestrator: Orchestrator, count: int) -> None:
        for _ in range(count):
            orchestrator.start_replica(remote=True)

    def report(self) -> dict[str, Any]:
        """The report's `regions` section."""
        return {
            "hop": self.hop,
            "remote_replicas": self.remote_replicas,
            "outages": self.outages,
            "replicas_lost": self.lost,
            "failed_over": self.failed_over,
        }


def regions_from(env: simpy.Environment, root: Node, replicas: int) -> Regions | None:
    """The scenario's second region, or None when `regions.enabled` is false."""
    node = root.node("regions")
    if not node.flag("enabled", False):
        return None
    return Regions(env, node, replicas)
