"""Worker replicas as processes: a fixed count, or autoscaled from the queue.

The supervisor starts `sagalab worker --replicas 1` children, replaces any that die (a crashed
replica's sagas are resumed by the others once its leases expire), and with autoscaling asks
the shared `AutoscalePolicy` for the desired count from the queue's depth and the age of its
oldest saga, journaling every change. Scaling down sends SIGTERM: the replica finishes the
sagas it holds and exits.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.policies.autoscaling import AutoscalePolicy, ScaleDecision
from orchestrator.sqlite_store import SQLiteStore


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
        self.children.append(subprocess.Popen(list(self.config.child_command)))

    def _retire(self) -> None:
        child = self.children.pop()
        child.send_signal(signal.SIGTERM)
        self.retiring.append(child)  # it finishes the sagas in hand; reaped when it exits

    def run(self) -> int:
        """Supervise until stopped or a limit is hit; return the restart count."""
        store = SQLiteStore(self.config.db)
        started = time.monotonic()
        last_change: float | None = None
        idle_since: float | None = None
        target = self.config.replicas if self.config.replicas is not None else 0
        if self.config.policy is not None:
            target = self.config.policy.min_replicas
        for _ in range(target):
            self._spawn()
        try:
            while not self.stop.wait(self.config.tick):
                alive = []
                for child in self.children:
                    if child.poll() is None:
                        alive.append(child)
                    else:
                        self.restarts += 1
                self.children = alive
                self.retiring = [c for c in self.retiring if c.poll() is None]
                while len(self.children) < target:
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
                        while len(self.children) < target:
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

    def shutdown(self, timeout: float = 15.0) -> None:
        """SIGTERM every replica, then SIGKILL what has not exited within `timeout`."""
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in [*self.children, *self.retiring]:
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children = []
        self.retiring = []
