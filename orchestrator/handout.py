"""A worker process's hand: the leases one thread claimed for the others, and their count.

A worker claims sagas for all of its idle threads in one transaction (`QueueStore.claim_due`)
rather than each thread claiming its own: with several processes on one database, a claim per
saga and per thread was what made two workers slower than one (issue 14). One thread at a time
claims (`claiming`), as many sagas as there are threads neither running a saga nor already
owed one (`room`), keeps the first and hands out the rest (`put`). A handed lease is held by
the lease keeper from the moment it is claimed, so a saga waiting in the hand is renewed like
a running one; whatever is left in the hand when the worker stops is released (`drain`).

Idle threads wait here (`wait`): for a handed lease, for a wake-up (`pulse`, called by the
process's `Waker`, which passes the wake-up on to another process when no thread here
waits), or for the poll interval. Only one idle thread per process polls (the
poller): it claims for all the others, so more idle threads poll no more often. The others
wait `FOLLOWER_POLLS` intervals as a backstop; the poller gives the role up when it gets a
saga (`got_work`), and the next idle thread takes it at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from sagalab.orchestrator.store import Lease

#: How often a waiting thread looks at its stop event (seconds).
_STOP_SLICE = 0.1
#: How many poll intervals an idle thread that is not the poller waits at most.
FOLLOWER_POLLS = 10


class Hand:
    """Leases claimed for `threads` threads, and how many of those threads run a saga."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        #: Held by the one thread that claims for the process at a time.
        self.claiming = threading.Lock()
        self._cond = threading.Condition()
        self._leases: deque[Lease] = deque()
        self._busy = 0
        self._pending = False
        self._poller: threading.Thread | None = None
        self._waiting = 0

    def room(self) -> int:
        """How many threads are neither running a saga nor owed a handed lease."""
        with self._cond:
            return self.threads - self._busy - len(self._leases)

    def idle(self) -> bool:
        """True when no thread runs a saga and no lease waits in the hand."""
        with self._cond:
            return self._busy == 0 and not self._leases

    def take(self) -> Lease | None:
        """A handed lease, counted as running; None if the hand is empty."""
        with self._cond:
            if not self._leases:
                return None
            self._busy += 1
            return self._leases.popleft()

    def started(self) -> None:
        """The calling thread runs a saga it claimed itself."""
        with self._cond:
            self._busy += 1

    def finished(self) -> None:
        """The calling thread is done with its saga."""
        with self._cond:
            self._busy -= 1

    def put(self, leases: list[Lease]) -> None:
        """Hand `leases` out: one waiting thread is released for each."""
        if not leases:
            return
        with self._cond:
            self._leases.extend(leases)
            self._cond.notify(len(leases))

    def drain(self) -> list[Lease]:
        """Empty the hand (the worker stops): the leases nobody took, to release."""
        with self._cond:
            leases = list(self._leases)
            self._leases.clear()
            return leases

    def pulse(self) -> bool:
        """A wake-up: release one waiting thread (or the next one to wait) to claim. True
        if a thread was waiting (False: every thread is busy; the wake-up is kept for the
        next one to wait, and another process may take it sooner)."""
        with self._cond:
            self._pending = True
            self._cond.notify()
            return self._waiting > 0

    def waiting(self) -> int:
        """How many threads wait in `wait` now."""
        with self._cond:
            return self._waiting

    def got_work(self) -> None:
        """The calling thread runs a saga now: if it was the poller, the next idle thread
        becomes the poller (woken now, it polls at once)."""
        with self._cond:
            if self._poller is threading.current_thread():
                self._poller = None
                self._cond.notify()

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait for a handed lease or a wake-up (or `stop`): up to `timeout` seconds for the
        poller, `FOLLOWER_POLLS` times that for the others; True if one came. A lease in the
        hand is left for `take`; a wake-up is used up."""
        me = threading.current_thread()
        started = time.monotonic()
        follower = False
        with self._cond:
            self._waiting += 1
            try:
                while not self._leases and not self._pending:
                    if self._poller is None:
                        self._poller = me
                        if follower:
                            return False  # the role came to this thread: it polls now
                    follower = self._poller is not me
                    polls = FOLLOWER_POLLS if follower else 1
                    left = started + timeout * polls - time.monotonic()
                    if left <= 0 or stop.is_set():
                        return False
                    self._cond.wait(min(left, _STOP_SLICE))
            finally:
                self._waiting -= 1
            if not self._leases:
                self._pending = False
            return True
