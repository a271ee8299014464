"""Lease owners and the keeper thread that renews leases while sagas run.

An owner id is `host:pid:nonce`. On the same host, a lease whose owner process no longer
exists can be taken over at once (`owner_is_dead`), so an operator's `resume` after a crash
does not wait for the lease to expire; on other hosts expiry is the only evidence.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sagalab.orchestrator.errors import SagaError
from sagalab.orchestrator.store import Lease, Store
from sagalab.orchestrator.stores import driver_errors, open_store

DEFAULT_LEASE_SECONDS = 10.0


def _failures() -> tuple[type[Exception], ...]:
    """A busy, full or vanished database: the keeper reconnects and tries the next round."""
    return (SagaError, *driver_errors())


def new_owner(role: str = "worker") -> str:
    """A unique lease owner id for this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}-{secrets.token_hex(3)}"


def owner_is_dead(owner: str) -> bool:
    """True if `owner` names a process on this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


class LeaseKeeper:
    """Renews the leases it holds every `lease_seconds / 3` on its own connection, all of
    them in one statement (`QueueStore.renew_many`).

    A database error skips a round (and reopens the connection next time): a lease that runs
    out meanwhile is lost, which fencing makes safe. `guard` is called before each round (a
    worker's database watchdog): when it raises, nothing is renewed. If the keeper's thread
    ever ends by an unexpected exception, `failure` says why; its worker then stops.
    """

    def __init__(
        self,
        db: str | Path,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = time.time,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.guard = guard
        self.failure: str | None = None
        self._leases: dict[str, Lease] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def hold(self, lease: Lease) -> None:
        """Start renewing `lease`."""
        with self._lock:
            self._leases[lease.saga_id] = lease
            self._lost.discard(lease.saga_id)

    def drop(self, saga_id: str) -> None:
        """Stop renewing the lease on `saga_id`."""
        with self._lock:
            self._leases.pop(saga_id, None)

    def lost(self, saga_id: str) -> bool:
        """Whether renewing the lease on `saga_id` failed."""
        with self._lock:
            return saga_id in self._lost

    def _loop(self) -> None:
        store: Store | None = None
        try:
            while not self._stop.wait(self.lease_seconds / 3):
                try:
                    if self.guard is not None:
                        self.guard()
                    if store is None:
                        store = open_store(self.db, create=False)
                    self._renew_all(store)
                except _failures():
                    # A busy, full or vanished database: reconnect and try the next round.
                    if store is not None:
                        with contextlib.suppress(*driver_errors()):
                            store.close()
                    store = None
        except BaseException as exc:
            self.failure = f"lease keeper died: {type(exc).__name__}: {exc}"
            raise
        finally:
            if store is not None:
                with contextlib.suppress(*driver_errors()):
                    store.close()

    def _renew_all(self, store: Store) -> None:
        # One statement for all of them (`renew_many`): a keeper's round is one write
        # transaction however many sagas its worker runs, not one per saga (issue 14).
        with self._lock:
            leases = list(self._leases.values())
        if not leases:
            return
        now = self.clock()
        lost = store.renew_many(leases, now=now, lease_seconds=self.lease_seconds)
        until = now + self.lease_seconds
        with self._lock:
            for lease in leases:
                if self._leases.get(lease.saga_id) != lease:
                    continue  # dropped (or held anew) while renewing: leave it be
                if lease.saga_id in lost:
                    del self._leases[lease.saga_id]
                    self._lost.add(lease.saga_id)
                else:
                    self._leases[lease.saga_id] = Lease(
                        lease.saga_id, lease.owner, lease.epoch, until
                    )
