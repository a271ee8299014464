"""Worker replicas as processes: a fixed count, or autoscaled from the queue.

The supervisor starts `sagalab worker --replicas 1` children, replaces any that die (a crashed
replica's sagas are resumed by the others once its leases expire), and with autoscaling asks
the shared `AutoscalePolicy` for the desired count from the queue's depth and the age of its
oldest saga, journaling every change. Scaling down sends SIGTERM: the replica finishes the
sagas it holds and exits.

Stopping is bounded: `shutdown()` sends SIGTERM to every replica (running or retiring), waits
at most `grace` seconds for all of them together, then SIGKILLs the rest and reaps them. A
replica killed mid-saga loses nothing: its sagas are resumed by whichever worker claims them
once their leases expire. The replica count is bounded by `orchestrator.limits.MAX_REPLICAS`.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sagalab.orchestrator.limits import DEFAULT_GRACE, MAX_REPLICAS
from sagalab.orchestrator.policies.autoscaling import AutoscalePolicy, ScaleDecision
from sagalab.orchestrator.stores import open_store


@dataclass(frozen=True)
class SupervisorConfig:
    """Replica count (or autoscaling policy) and the command that starts one replica."""

    db: Path
    child_command: Sequence[str]
    replicas: int | None = 1
    policy: AutoscalePolicy | None = None
    tick: float = 0.5
    max_seconds: float | None = None
    exit_when_idle: float | None = None
    #: Seconds replicas get to finish their sagas after SIGTERM before SIGKILL.
    grace: float = DEFAULT_GRACE
    #: The replicas' environment (None: this process's); how metrics reach the supervisor.
    child_env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        most = self.policy.max_replicas if self.policy is not None else self.replicas or 0
        if most > MAX_REPLICAS:
            # The CLI refuses this with a message; a library caller gets the same bound.
            raise ValueError(f"{most} replicas is over the limit of {MAX_REPLICAS}")
        if self.grace < 0:
            raise ValueError("grace must not be negative")


class Supervisor:
    """Keeps the right number of worker processes alive until stopped."""

    def __init__(
        self,
        config: SupervisorConfig,
        *,
        on_change: Callable[[ScaleDecision], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.on_change = on_change
        self.clock = clock
        self.stop = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []
        self.retiring: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self.decisions: list[ScaleDecision] = []

    def _spawn(self) -> None:
        if self.stop.is_set():
            return  # a stop arrived while starting replicas: start no more
        env = dict(self.config.child_env) if self.config.child_env is not None else None
        self.children.append(subprocess.Popen(list(self.config.child_command), env=env))

    def _retire(self) -> None:
        child = self.children.pop()
        child.send_signal(signal.SIGTERM)
        self.retiring.append(child)  # it finishes the sagas in hand; reaped when it exits

    def run(self) -> int:
        """Supervise until stopped or a limit is hit; return the restart count."""
        store = open_store(self.config.db)
        started = time.monotonic()
        last_change: float | None = None
        idle_since: float | None = None
        target = self.config.replicas if self.config.replicas is not None else 0
        if self.config.policy is not None:
            target = self.config.policy.min_replicas
        try:
            for _ in range(target):
                self._spawn()
            while not self.stop.wait(self.config.tick):
                alive = []
                for child in self.children:
                    if child.poll() is None:
                        alive.append(child)
                    else:
                        self.restarts += 1
                self.children = alive
                self.retiring = [c for c in self.retiring if c.poll() is None]
                while len(self.children) < target and not self.stop.is_set():
                    self._spawn()
                now = self.clock()
                stats = store.queue_stats(now)
                if self.config.policy is not None:
                    decision = self.config.policy.decide(
                        depth=int(stats["depth"]),
                        oldest_age=stats["oldest_age"],
                        current=len(self.children),
                        now=now,
                        last_change_at=last_change,
                    )
                    if decision.changed:
                        last_change = now
                        store.record_scaling(
                            at=now,
                            before=decision.current,
                            after=decision.desired,
                            depth=int(stats["depth"]),
                            oldest_age=stats["oldest_age"],
                            reason=decision.reason,
                        )
                        self.decisions.append(decision)
                        if self.on_change is not None:
                            self.on_change(decision)
                        target = decision.desired
                        while len(self.children) > target:
                            self._retire()
                        while len(self.children) < target and not self.stop.is_set():
                            self._spawn()
                if self._limit_reached(started, stats, idle_since):
                    break
                busy = stats["depth"] > 0 or stats["leased"] > 0
                idle_since = None if busy else (idle_since or time.monotonic())
        finally:
            self.shutdown()
            store.close()
        return self.restarts

    def _limit_reached(
        self, started: float, stats: dict[str, float], idle_since: float | None
    ) -> bool:
        elapsed = time.monotonic() - started
        if self.config.max_seconds is not None and elapsed > self.config.max_seconds:
            return True
        wait = self.config.exit_when_idle
        return wait is not None and idle_since is not None and time.monotonic() - idle_since > wait

    def shutdown(self, grace: float | None = None) -> None:
        """SIGTERM every replica, SIGKILL those still running `grace` seconds later, reap all.

        The grace is one deadline for all replicas together (not per replica), so stopping
        takes at most `grace` plus the moment SIGKILL takes.
        """
        grace = self.config.grace if grace is None else grace
        everyone = [*self.children, *self.retiring]
        for child in everyone:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.poll() is None for c in everyone):
            time.sleep(0.05)
        for child in everyone:
            if child.poll() is None:
                child.kill()
        for child in everyone:
            child.wait()
        self.children = []
        self.retiring = []
