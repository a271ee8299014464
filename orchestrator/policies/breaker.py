"""Circuit breaker: a pure transition table over a storage that may be shared by processes.

Theory of operation
-------------------
A breaker is closed, open or half-open. Callers ask before a call (`allow(now)`), make the
call with no lock held, and report how the service answered (`record_success(now)` /
`record_failure(now)`, where a failure means the service is unwell: see
`orchestrator.outcomes`). Time is always the `now` passed in, on whatever clock the runtime
runs (wall time for workers, simulated time in SimPy); nothing here reads a clock.

The rule is `TRANSITIONS` plus two guards (`next_state`):

* closed -> open on a failure, once `fail_max` consecutive failures are counted
  (a success in between zeroes the count);
* open -> half-open when asked `reset_timeout` seconds or more after it opened;
  before that every call is refused, with `retry_after(now)` seconds to go;
* half-open admits exactly one probe at a time; a failure reopens it (for another full
  timeout), and `success_threshold` successes close it;
* an operator's `reset` closes it from any state.

Entering a state resets what the state starts from (`_enter`): open records `opened_time`
and zeroes the success count, half-open zeroes the success count, closed zeroes both.

The state lives in a `BreakerStorage`: `MemoryBreakerStorage` in one process (or a
simulation), a database-backed subclass for workers that share one breaker per service
(orchestrator/breakers.py). Counters move through the storage's own increment, and the
half-open probe is the storage's compare-and-set `try_acquire_probe`, so several processes
on one row still count every failure and let exactly one probe through. A probe whose caller
died is forgotten after `probe_timeout`, so the breaker cannot stay half-open for ever.

Why not pybreaker (issue 9)
---------------------------
Until issue 9 this module drove pybreaker by calling its private `_handle_success` /
`_handle_error` and handing it fabricated wall-clock datetimes. Through its public interface
pybreaker cannot serve a clock-free core: its open state compares against
`datetime.now(UTC)` with no clock argument, `CircuitBreaker.call()` holds a lock for the
whole call (calls through one breaker would run one at a time), and `calling()` lets every
concurrent caller through when half-open instead of one probe (see FIELD-NOTES). The
simulator and the workers must take the same decisions from the same inputs, so both use this
table, and pybreaker is no longer used by the core. The storage keeps pybreaker's storage
primitives (`state`, the two counters and their increments and resets) and its state names,
so the shared SQLite row and `breakers list` are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "MIN_REFUSAL_WAIT",
    "OPEN",
    "STATES",
    "TRANSITIONS",
    "Breaker",
    "BreakerOpen",
    "BreakerState",
    "BreakerStorage",
    "ClockedStorage",
    "MemoryBreakerStorage",
    "MemoryClockedStorage",
    "Signal",
    "next_state",
]

BreakerState = str  # one of CLOSED, OPEN, HALF_OPEN

CLOSED: BreakerState = "closed"
OPEN: BreakerState = "open"
HALF_OPEN: BreakerState = "half-open"
STATES = (CLOSED, OPEN, HALF_OPEN)

# A refused call that must go through (`SagaState.refusal_waits`) waits at least this long
# before asking again: while another caller holds the half-open probe, `retry_after` is 0.
MIN_REFUSAL_WAIT = 0.5


class Signal(StrEnum):
    """What can happen to a breaker."""

    FAILURE = "failure"  # a call reported the service unwell
    SUCCESS = "success"  # a call reported the service healthy
    TIMEOUT = "timeout"  # asked while open, `reset_timeout` after it opened
    RESET = "reset"  # an operator closed it


#: (state, signal) -> the state it moves to. A pair not listed leaves the state as it is.
#: Two entries are guarded (see `next_state`): closed -> open needs `fail_max` consecutive
#: failures counted, half-open -> closed needs `success_threshold` successes.
TRANSITIONS: Mapping[tuple[BreakerState, Signal], BreakerState] = MappingProxyType(
    {
        (CLOSED, Signal.FAILURE): OPEN,
        (HALF_OPEN, Signal.FAILURE): OPEN,
        (HALF_OPEN, Signal.SUCCESS): CLOSED,
        (OPEN, Signal.TIMEOUT): HALF_OPEN,
        (OPEN, Signal.RESET): CLOSED,
        (HALF_OPEN, Signal.RESET): CLOSED,
    }
)


def next_state(
    state: BreakerState,
    signal: Signal,
    *,
    failures: int = 0,
    successes: int = 0,
    fail_max: int = 1,
    success_threshold: int = 1,
) -> BreakerState:
    """The state after `signal` in `state`, given the counts after the signal was counted.

    `failures` is the consecutive failures counted (this one included), `successes` the
    successes counted since the breaker went half-open (this one included).
    """
    target = TRANSITIONS.get((state, signal))
    if target is None:
        return state
    if state == CLOSED and signal is Signal.FAILURE and failures < fail_max:
        return state
    if state == HALF_OPEN and signal is Signal.SUCCESS and successes < success_threshold:
        return state
    return target


class BreakerOpen(Exception):
    """A call was refused by an open breaker; `retry_after` is when it may half-open."""

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = retry_after
        super().__init__(
            f"circuit breaker {name!r} is open; the service is not called for "
            f"{retry_after:.1f}s more"
        )


class BreakerStorage:
    """Where one breaker's state lives; subclasses implement every primitive below.

    A shared (database) storage must make `increment_counter`,
    `increment_success_counter` and `try_acquire_probe` atomic: several processes call them
    on one breaker at once. `clock` is accepted for subclasses written against the earlier
    signature; the policy never reads it (time is the `now` passed to `Breaker`).
    """

    def __init__(self, name: str, clock: Callable[[], float] | None = None) -> None:
        self.name = name
        self.clock = clock

    @property
    def state(self) -> BreakerState:
        """'closed', 'open' or 'half-open'."""
        raise NotImplementedError

    @state.setter
    def state(self, state: BreakerState) -> None:
        raise NotImplementedError

    def increment_counter(self) -> None:
        """Count one more consecutive failure."""
        raise NotImplementedError

    def reset_counter(self) -> None:
        """Zero the consecutive failures."""
        raise NotImplementedError

    def increment_success_counter(self) -> None:
        """Count one more half-open success."""
        raise NotImplementedError

    def reset_success_counter(self) -> None:
        """Zero the half-open successes."""
        raise NotImplementedError

    @property
    def counter(self) -> int:
        """Consecutive failures counted."""
        raise NotImplementedError

    @property
    def success_counter(self) -> int:
        """Half-open successes counted."""
        raise NotImplementedError

    @property
    def opened_time(self) -> float | None:
        """When the breaker last opened, on the runtime's clock."""
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


class MemoryBreakerStorage(BreakerStorage):
    """`BreakerStorage` in process memory (one breaker per service per process, or a simulation)."""

    def __init__(self, name: str, clock: Callable[[], float] | None = None) -> None:
        super().__init__(name, clock)
        self._state: BreakerState = CLOSED
        self._fail_counter = 0
        self._success_counter = 0
        self._opened_time: float | None = None
        self._probe_until: float | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    @state.setter
    def state(self, state: BreakerState) -> None:
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


# The names orchestrator/breakers.py (and code written before issue 9) subclass and import.
ClockedStorage = BreakerStorage
MemoryClockedStorage = MemoryBreakerStorage


class Breaker:
    """One service's circuit breaker: ask with `allow(now)`, call, then record the outcome.

    `fail_max` consecutive failures open it; after `reset_timeout` seconds open it lets one
    probe through (half-open); `success_threshold` successful probes close it, a failed one
    opens it again. `on_transition(now, old, new)` is called on every state change this
    breaker makes (see the module docstring for the whole rule).
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        success_threshold: int = 1,
        probe_timeout: float | None = None,
        storage: BreakerStorage | None = None,
        on_transition: Callable[[float, str, str], None] | None = None,
    ) -> None:
        if fail_max < 1 or success_threshold < 1 or reset_timeout < 0:
            raise ValueError("need fail_max >= 1, success_threshold >= 1, reset_timeout >= 0")
        self.name = name
        self.fail_max = fail_max
        self.reset_timeout = float(reset_timeout)
        self.success_threshold = success_threshold
        self.storage = storage if storage is not None else MemoryBreakerStorage(name)
        self.probe_timeout = probe_timeout if probe_timeout is not None else max(reset_timeout, 1.0)
        self.on_transition = on_transition
        self.transitions = 0

    @property
    def state(self) -> BreakerState:
        """'closed', 'open' or 'half-open', as the storage says."""
        return self.storage.state

    @property
    def fail_counter(self) -> int:
        """Consecutive failures recorded."""
        return self.storage.counter

    def retry_after(self, now: float) -> float:
        """Seconds until an open breaker may let a probe through (0 when not open)."""
        if self.storage.state != OPEN:
            return 0.0
        opened = self.storage.opened_time
        if opened is None:
            return 0.0
        return max(opened + self.reset_timeout - now, 0.0)

    def allow(self, now: float) -> bool:
        """Whether a call may go out at `now`. A True in half-open means: you are the probe."""
        storage = self.storage
        state = storage.state
        if state == CLOSED:
            return True
        if state == OPEN:
            opened = storage.opened_time
            if opened is not None and now < opened + self.reset_timeout:
                return False
            # An open breaker without an opening time (a row written by hand) times out at once.
            self._enter(now, state, next_state(state, Signal.TIMEOUT))
        return storage.try_acquire_probe(now, now + self.probe_timeout)

    def check(self, now: float) -> None:
        """`allow`, raising `BreakerOpen` when refused."""
        if not self.allow(now):
            raise BreakerOpen(self.name, self.retry_after(now))

    def record_success(self, now: float) -> None:
        """A call made after `allow` succeeded (the service answered as a healthy one does)."""
        storage = self.storage
        state = storage.state
        if state == CLOSED and storage.counter == 0:
            # Nothing to zero: with a shared storage this saves a write per successful call.
            return
        storage.reset_counter()  # a success ends a run of consecutive failures
        successes = 0
        if state == HALF_OPEN:
            storage.increment_success_counter()
            successes = storage.success_counter
        new = next_state(
            state,
            Signal.SUCCESS,
            successes=successes,
            success_threshold=self.success_threshold,
        )
        self._enter(now, state, new)
        if state == HALF_OPEN:
            storage.release_probe()

    def record_failure(self, now: float) -> None:
        """A call made after `allow` failed (a failure that says the service is unwell)."""
        storage = self.storage
        state = storage.state
        storage.increment_counter()
        new = next_state(state, Signal.FAILURE, failures=storage.counter, fail_max=self.fail_max)
        self._enter(now, state, new)
        if state == HALF_OPEN:
            storage.release_probe()

    def reset(self, now: float) -> None:
        """Close the breaker by hand (an operator's `breakers reset`): counts zeroed too."""
        state = self.storage.state
        # Closed already: still zero the counts (the point of a reset), without a transition.
        self._enter(now, state, next_state(state, Signal.RESET), force=True)
        self.storage.release_probe()

    def _enter(
        self, now: float, old: BreakerState, new: BreakerState, *, force: bool = False
    ) -> None:
        """Move from `old` to `new` (nothing when equal, unless `force`d), then report it."""
        if new == old and not force:
            return
        storage = self.storage
        if new == OPEN:
            storage.opened_time = now
        elif new == CLOSED:
            storage.reset_counter()
        storage.reset_success_counter()  # every state starts counting successes afresh
        storage.state = new
        if new != old:
            self.transitions += 1
            if self.on_transition is not None:
                self.on_transition(now, old, new)
