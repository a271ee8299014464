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

Entering a state resets what the state starts from (the storage's transitions below, and
`_enter` for a reset): open records `opened_time` and zeroes the success count, half-open
zeroes the success count, closed zeroes both.

The state lives in a `BreakerStorage`: `MemoryBreakerStorage` in one process (or a
simulation), a database-backed subclass for workers that share one breaker per service
(orchestrator/breaker_board.py). Counters move through the storage's own increment, and every
transition a caller makes is one compare-and-set in the storage, so several threads and
processes on one row take each decision once (issue 10):

* closed -> open: `try_open`, only if still closed;
* open -> half-open: `try_half_open`, only if still open since the `opened_time` the caller
  read, and it hands that caller the probe in the same step: the caller that makes the move
  is the probe, a caller that read "open" a moment too early cannot half-open the breaker
  again after the probe failed and reopened it;
* half-open -> open or closed: `end_probe`, only by the probe's holder (its token), and it
  frees the probe in the same step. An outcome of a call let through before the breaker
  opened is no probe's outcome: it is counted, but it neither ends the half-open window nor
  frees the probe.

Meanwhile every other caller is refused (`retry_after` 0: it waits `MIN_REFUSAL_WAIT`). A
probe whose caller died is forgotten after `probe_timeout` (`try_acquire_probe` then hands
it to the next caller), so the breaker cannot stay half-open for ever. The probe's token
lives in the `Breaker` that was let through: one per worker thread, one per service in a
simulation (where outcomes arrive one at a time).

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
    "Token",
    "next_state",
]

BreakerState = str  # one of CLOSED, OPEN, HALF_OPEN
#: Who holds the half-open probe: the probe's expiry as the storage wrote it (handed back as is).
Token = float

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

    def try_open(self, now: float) -> bool:
        """Atomically: closed -> open at `now`, only if still closed (a damaged row counts)."""
        raise NotImplementedError

    def try_half_open(self, opened: float | None, now: float, until: float) -> Token | None:
        """Atomically: open -> half-open, only if still open since `opened`, with the probe
        held until `until` by the caller; the probe's token (None: someone else moved it)."""
        raise NotImplementedError

    def try_acquire_probe(self, now: float, until: float) -> Token | None:
        """Atomically take the probe of a half-open breaker if nobody holds it (or its
        holder's time ran out); its token, None when refused (or not half-open)."""
        raise NotImplementedError

    def end_probe(self, token: Token, new: BreakerState, now: float) -> bool:
        """Atomically, only while half-open with the probe `token`: move to `new` (open:
        opened at `now`; closed: failures zeroed; successes zeroed either way) and free the
        probe. `new` half-open only frees the probe (a success short of the threshold)."""
        raise NotImplementedError

    def release_probe(self) -> None:
        """Free the probe whoever holds it (an operator's reset)."""
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

    # One thread (or a simulation) owns it: each primitive below is atomic by construction.

    def try_open(self, now: float) -> bool:
        if self._state != CLOSED:
            return False
        self._state, self._opened_time, self._success_counter = OPEN, now, 0
        self._probe_until = None
        return True

    def try_half_open(self, opened: float | None, now: float, until: float) -> Token | None:
        if self._state != OPEN or self._opened_time != opened:
            return None
        self._state, self._success_counter, self._probe_until = HALF_OPEN, 0, until
        return until

    def try_acquire_probe(self, now: float, until: float) -> Token | None:
        if self._state != HALF_OPEN:
            return None
        if self._probe_until is not None and now < self._probe_until:
            return None
        self._probe_until = until
        return until

    def end_probe(self, token: Token, new: BreakerState, now: float) -> bool:
        if self._state != HALF_OPEN or self._probe_until != token:
            return False
        if new == OPEN:
            self._opened_time = now
        elif new == CLOSED:
            self._fail_counter = 0
        if new != HALF_OPEN:
            self._success_counter = 0
        self._state, self._probe_until = new, None
        return True

    def release_probe(self) -> None:
        self._probe_until = None


# The names orchestrator/breaker_board.py (and code written before issue 9) subclass and import.
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
        # The probe this breaker was let through with (its token), until its outcome is in.
        self._probe: Token | None = None

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
        until = now + self.probe_timeout
        state = storage.state
        if state == CLOSED:
            return True
        if state == OPEN:
            opened = storage.opened_time
            if opened is not None and now < opened + self.reset_timeout:
                return False
            # An open breaker without an opening time (a row written by hand) times out at once.
            token = storage.try_half_open(opened, now, until)
            if token is not None:
                self._probe = token
                self._report(now, OPEN, next_state(OPEN, Signal.TIMEOUT))
                return True
            if storage.state == CLOSED:  # another caller's probe closed it meanwhile
                return True
        token = storage.try_acquire_probe(now, until)
        if token is None:
            return False  # (a refusal keeps any probe this breaker holds: one per simulation)
        self._probe = token
        return True

    def check(self, now: float) -> None:
        """`allow`, raising `BreakerOpen` when refused."""
        if not self.allow(now):
            raise BreakerOpen(self.name, self.retry_after(now))

    def record_success(self, now: float) -> None:
        """A call made after `allow` succeeded (the service answered as a healthy one does)."""
        # `_take_probe` inlined: this runs for every call (the simulator: 4 per request).
        storage, token, self._probe = self.storage, self._probe, None
        state = storage.state
        if state == CLOSED and storage.counter == 0:
            # Nothing to zero: with a shared storage this saves a write per successful call.
            return
        storage.reset_counter()  # a success ends a run of consecutive failures
        if state != HALF_OPEN or token is None:
            return  # only the probe's outcome decides a half-open breaker
        storage.increment_success_counter()
        new = next_state(
            state,
            Signal.SUCCESS,
            successes=storage.success_counter,
            success_threshold=self.success_threshold,
        )
        if storage.end_probe(token, new, now):
            self._report(now, state, new)

    def record_failure(self, now: float) -> None:
        """A call made after `allow` failed (a failure that says the service is unwell)."""
        storage, token = self.storage, self._take_probe()
        storage.increment_counter()
        state = storage.state
        if state == HALF_OPEN:
            # Only the probe's failure reopens it: the others were let through while closed.
            if token is not None and storage.end_probe(token, OPEN, now):
                self._report(now, state, OPEN)
            return
        new = next_state(state, Signal.FAILURE, failures=storage.counter, fail_max=self.fail_max)
        if new != state and storage.try_open(now):
            self._report(now, state, new)

    def reset(self, now: float) -> None:
        """Close the breaker by hand (an operator's `breakers reset`): counts zeroed too."""
        state = self.storage.state
        # Closed already: still zero the counts (the point of a reset), without a transition.
        self._enter(now, state, next_state(state, Signal.RESET), force=True)
        self.storage.release_probe()
        self._probe = None

    def _take_probe(self) -> Token | None:
        """The probe this breaker was let through with (if any), forgotten: its outcome is in."""
        token, self._probe = self._probe, None
        return token

    def _report(self, now: float, old: BreakerState, new: BreakerState) -> None:
        """Count a transition this breaker made, and tell `on_transition`."""
        if new == old:
            return
        self.transitions += 1
        if self.on_transition is not None:
            self.on_transition(now, old, new)

    def _enter(
        self, now: float, old: BreakerState, new: BreakerState, *, force: bool = False
    ) -> None:
        """Write `new` whatever the state (an operator's reset only), then report it."""
        if new == old and not force:
            return
        storage = self.storage
        if new == OPEN:
            storage.opened_time = now
        elif new == CLOSED:
            storage.reset_counter()
        storage.reset_success_counter()  # every state starts counting successes afresh
        storage.state = new
        self._report(now, old, new)
