"""A worker process's hand: the leases one thread claimed for the others, and their count.

A worker claims sagas for all of its idle threads in one transaction (`QueueStore.claim_due`)
rather than each thread claiming its own: with several processes on one database, a claim per
saga and per thread was what made two workers slower than one (issue 14). One thread at a time
claims (`claiming`), as many sagas as there are threads neither running a saga nor already
owed one (`room`), keeps the first and hands out the rest (`put`). A handed lease is held by
the lease keeper from the moment it is claimed, so a saga waiting in the hand is renewed like
a running one; whatever is left in the hand when the worker stops is released (`drain`).

Idle threads wait here (`wait`): for a handed lease, for a wake-up (`pulse`, relayed from the
process's `Waker`), or for the poll interval.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from sagalab.orchestrator.store import Lease

#: How often a waiting thread looks at its stop event (seconds).
_STOP_SLICE = 0.1


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

    def pulse(self) -> None:
        """A wake-up: release one waiting thread (or the next one to wait) to claim."""
        with self._cond:
            self._pending = True
            self._cond.notify()

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Wait up to `timeout` seconds for a handed lease or a wake-up (or `stop`); True if
        one came. A lease in the hand is left for `take`; a wake-up is used up."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._leases and not self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or stop.is_set():
                    return False
                self._cond.wait(min(left, _STOP_SLICE))
            if not self._leases:
                self._pending = False
            return True
