"""Circuit breaker on pybreaker, with the clock as a seam and calls kept concurrent.

Theory of operation
-------------------
pybreaker owns the state machine: consecutive failures counted in its storage, closed -> open
at `fail_max`, half-open -> closed after `success_threshold` successes, half-open -> open on a
failure, listeners told of every transition. Three things about it do not fit a runtime that
makes many concurrent calls, or a simulator (see FIELD-NOTES):

* `CircuitBreaker.call()` holds a lock for the whole call, so calls would run one at a time;
* half-open through `calling()` lets every concurrent caller through, not one probe;
* time is `datetime.now(UTC)`, read when it opens and when an open breaker is called.

So `Breaker` never runs a call inside pybreaker. It asks first (`allow(now)`), the caller makes
the call with no lock held, and then reports (`record_success(now)` / `record_failure(now)`),
which feeds pybreaker's own state objects (`_handle_success` / `_handle_error`): the counters
and transitions are pybreaker's. Time comes from `now`: every method sets the breaker's
`ManualClock`, and `ClockedStorage` records `opened_at` on that clock, ignoring pybreaker's
wall-clock argument. Its `opened_at` property hands pybreaker a wall-clock datetime that is as
far in the past as the breaker opened on the breaker's clock, so pybreaker's own open-state
comparison (`datetime.now(UTC) < opened_at + reset_timeout`) agrees with simulated time too.

Half-open admits exactly one probe at a time: `ClockedStorage.try_acquire_probe` is a
compare-and-set (a SQLite storage implements it with one `UPDATE ... WHERE`), the probe is
released by the next recorded outcome, and a probe whose caller died is forgotten after
`probe_timeout` so the breaker cannot stay half-open for ever.

Subclass `ClockedStorage` for shared state (issue 3): implement `state`, the two counters,
`opened_time` and the probe compare-and-set against the database; every process then sees
one breaker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pybreaker

__all__ = [
    "Breaker",
    "BreakerOpen",
    "BreakerState",
    "ClockedStorage",
    "MIN_REFUSAL_WAIT",
    "ManualClock",
    "MemoryClockedStorage",
]

BreakerState = str  # one of pybreaker.STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN

# A refused call that must go through (`SagaState.refusal_waits`) waits at least this long
# before asking again: while another caller holds the half-open probe, `retry_after` is 0.
MIN_REFUSAL_WAIT = 0.5


class BreakerOpen(Exception):
    """A call was refused by an open breaker; `retry_after` is when it may half-open."""

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = retry_after
        super().__init__(
            f"circuit breaker {name!r} is open; the service is not called for "
            f"{retry_after:.1f}s more"
        )


class ManualClock:
    """A clock that reads whatever it was last set to (the runtime's or simulation's `now`)."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _CallFailed(Exception):
    """Stand-in exception fed to pybreaker for a failed call reported by `record_failure`."""


class ClockedStorage(pybreaker.CircuitBreakerStorage):
    """A pybreaker storage whose `opened_at` lives on an injected clock (seconds, float).

    Subclasses implement the primitives marked below; the base translates `opened_at` between
    the injected clock and pybreaker's wall-clock datetimes.
    """

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        super().__init__(name)
        self.clock = clock

    # --- primitives a shared (e.g. SQLite) storage implements -----------------------------

    @property
    def opened_time(self) -> float | None:
        """When the breaker last opened, on the injected clock."""
        raise NotImplementedError

    @opened_time.setter
    def opened_time(self, value: float | None) -> None:
        raise NotImplementedError

    def try_acquire_probe(self, now: float, until: float) -> bool:
        """Atomically take the half-open probe if nobody holds it (or its holder's time ran out)."""
        raise NotImplementedError

    def release_probe(self) -> None:
        """Give the probe back (its outcome was recorded)."""
        raise NotImplementedError

    # --- pybreaker's view -----------------------------------------------------------------

    @property
    def opened_at(self) -> datetime | None:
        """The wall-clock instant as far in the past as the breaker opened on our clock."""
        opened = self.opened_time
        if opened is None:
            return None
        elapsed = max(self.clock() - opened, 0.0)
        return datetime.now(UTC) - timedelta(seconds=elapsed)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        # pybreaker passes datetime.now(UTC); the breaker's own clock is what counts.
        self.opened_time = self.clock()


class MemoryClockedStorage(ClockedStorage):
    """`ClockedStorage` in process memory (one breaker per service per process, or a simulation)."""

    def __init__(self, name: str, clock: Callable[[], float]) -> None:
        super().__init__(name, clock)
        self._state: str = pybreaker.STATE_CLOSED
        self._fail_counter = 0
        self._success_counter = 0
        self._opened_time: float | None = None
        self._probe_until: float | None = None

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state

    def increment_counter(self) -> None:
        self._fail_counter += 1

    def reset_counter(self) -> None:
        self._fail_counter = 0

    def increment_success_counter(self) -> None:
        self._success_counter += 1

    def reset_success_counter(self) -> None:
        self._success_counter = 0

    @property
    def counter(self) -> int:
        return self._fail_counter

    @property
    def success_counter(self) -> int:
        return self._success_counter

    @property
    def opened_time(self) -> float | None:
        return self._opened_time

    @opened_time.setter
    def opened_time(self, value: float | None) -> None:
        self._opened_time = value

    def try_acquire_probe(self, now: float, until: float) -> bool:
        if self._probe_until is not None and now < self._probe_until:
            return False
        self._probe_until = until
        return True

    def release_probe(self) -> None:
        self._probe_until = None


class _Recorder(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else pybreaker.STATE_CLOSED
        self.breaker._transitioned(old, new_state.name)


class Breaker:
    """One service's circuit breaker: ask with `allow(now)`, call, then record the outcome.

    `fail_max` consecutive failures open it; after `reset_timeout` seconds open it lets one
    probe through (half-open); `success_threshold` successful probes close it, a failed one
    opens it again. `on_transition(now, old, new)` is called on every state change.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        success_threshold: int = 1,
        probe_timeout: float | None = None,
        storage: ClockedStorage | None = None,
        on_transition: Callable[[float, str, str], None] | None = None,
    ) -> None:
        if fail_max < 1 or success_threshold < 1 or reset_timeout < 0:
            raise ValueError("need fail_max >= 1, success_threshold >= 1, reset_timeout >= 0")
        self.name = name
        self.clock = ManualClock()
        self.storage = storage if storage is not None else MemoryClockedStorage(name, self.clock)
        self.storage.clock = self.clock
        self.probe_timeout = probe_timeout if probe_timeout is not None else max(reset_timeout, 1.0)
        self.on_transition = on_transition
        self.transitions = 0
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            success_threshold=success_threshold,
            state_storage=self.storage,
            listeners=[_Recorder(self)],
            name=name,
        )

    @property
    def fail_max(self) -> int:
        """Consecutive failures that open the breaker."""
        return self._cb.fail_max

    @property
    def reset_timeout(self) -> float:
        """Seconds an open breaker refuses calls before letting a probe through."""
        return float(self._cb.reset_timeout)

    @property
    def state(self) -> BreakerState:
        """'closed', 'open' or 'half-open', as the storage says."""
        return self.storage.state

    @property
    def fail_counter(self) -> int:
        """Consecutive failures recorded."""
        return self.storage.counter

    def _transitioned(self, old: str, new: str) -> None:
        self.transitions += 1
        if self.on_transition is not None:
            self.on_transition(self.clock.now, old, new)

    def retry_after(self, now: float) -> float:
        """Seconds until an open breaker may let a probe through (0 when not open)."""
        if self.storage.state != pybreaker.STATE_OPEN:
            return 0.0
        opened = self.storage.opened_time
        if opened is None:
            return 0.0
        return max(opened + self._cb.reset_timeout - now, 0.0)

    def allow(self, now: float) -> bool:
        """Whether a call may go out at `now`. A True in half-open means: you are the probe."""
        self.clock.now = now
        state = self.storage.state
        if state == pybreaker.STATE_CLOSED:
            return True
        if state == pybreaker.STATE_OPEN:
            # Fast path without pybreaker's wall-clock translation: still inside the timeout.
            opened = self.storage.opened_time
            if opened is not None and now < opened + self._cb.reset_timeout:
                return False
            self._cb.half_open()
        return self.storage.try_acquire_probe(now, now + self.probe_timeout)

    def check(self, now: float) -> None:
        """`allow`, raising `BreakerOpen` when refused."""
        if not self.allow(now):
            raise BreakerOpen(self.name, self.retry_after(now))

    def record_success(self, now: float) -> None:
        """A call made after `allow` succeeded."""
        self.clock.now = now
        state = self.storage.state
        if state == pybreaker.STATE_CLOSED and self.storage.counter == 0:
            # pybreaker would only zero a counter that is zero already; with shared storage
            # that is a database write per successful call, saved here.
            return
        half_open = state == pybreaker.STATE_HALF_OPEN
        self._cb.state._handle_success()
        if half_open:
            self.storage.release_probe()

    def record_failure(self, now: float) -> None:
        """A call made after `allow` failed (a failure that says the service is unwell)."""
        self.clock.now = now
        half_open = self.storage.state == pybreaker.STATE_HALF_OPEN
        # pybreaker raises when this failure trips the breaker: it is open now.
        with contextlib.suppress(pybreaker.CircuitBreakerError, _CallFailed):
            self._cb.state._handle_error(_CallFailed(self.name), reraise=False)
        if half_open:
            self.storage.release_probe()

    def reset(self, now: float) -> None:
        """Close the breaker by hand (an operator's `breakers reset`)."""
        self.clock.now = now
        self._cb.close()
        self.storage.release_probe()
