"""Wake-ups: a saga put on the queue wakes an idle worker at once instead of at its next poll.

A wake-up is only a hint. Workers still poll the queue (`--poll`): the queue in the database
is the truth, and a lost wake-up (a full socket buffer, a dropped PostgreSQL connection, a
deleted directory, a read-only database directory) costs at most one poll interval.

The writer side is `notify_queued()` on the store (orchestrator/store.py), called after the
write committed; the worker side is a `Waker` (one per worker process, `stores.open_waker`).
On SQLite the channel is a directory next to the database file, `<db>.wake/`, in which each
worker process binds one unix datagram socket (`<pid>-<random>.sock`). A writer wakes ONE
worker process per queued saga, not all of them: it sends one byte to a socket picked at
random there, without ever blocking, and goes on to the next one (in name order, round the
ring) only when that send fails: a refused send means the worker is gone (SIGKILLed) and its
socket file is removed, a full buffer that the worker has wake-ups it has not read yet; at
most `MAX_SOCKETS` sockets are tried. The byte is how many times the wake-up may be passed
on: a process with no idle thread to take it (`Waker.attach`'s handler says so) passes it to
the next socket of the ring, so it reaches an idle process if there is one and visits each
at most once. Waking every process for every saga had each of them claim, all but one for
nothing (a thundering herd: with 4 worker processes 7.4 claims per saga, 6.4 of them
empty, measured in issue 14). Datagram sockets rather than FIFOs: opening a FIFO with no
reader fails or blocks, a FIFO cannot tell a dead reader from a slow one, and a socket never
fills the disk. A clean exit removes its socket (and the directory once empty).
On PostgreSQL the channel is LISTEN/NOTIFY (orchestrator/postgres_store.py), which reaches
every listener.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import errno
import hashlib
import itertools
import logging
import os
import random
import secrets
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: How many worker sockets a writer tries at most per wake-up: a bound on a writer's cost.
MAX_SOCKETS = 64
#: Most times one wake-up is passed on (a byte; never more than the sockets tried).
_MAX_HOPS = MAX_SOCKETS - 1
#: What writers before one-process wake-ups sent to every socket.
_BROADCAST = b"!"
#: Longest socket path the kernel accepts (sun_path is 108 bytes on Linux, with its NUL).
_MAX_PATH = 107
#: How often a waiting thread looks at its stop event (seconds).
_STOP_SLICE = 0.1

_send_lock = threading.Lock()
_sender: socket.socket | None = None


def due_now(run_after: float | None) -> bool:
    """True when a saga queued at `run_after` is due now: worth waking a worker for (a retry
    due later is found by polling when its time comes)."""
    return run_after is not None and run_after <= time.time() + 0.001


def enabled() -> bool:
    """False when SAGALAB_NO_WAKE is set (workers then only poll: for comparisons and tests)."""
    return os.environ.get("SAGALAB_NO_WAKE", "") in ("", "0")


#: Room a worker's socket name takes in its directory ("/<pid>-<8 hex>.sock").
_SOCKET_NAME = 24


def wake_dir(db: Path) -> Path:
    """The wake-up directory of the SQLite database `db`: `<db>.wake/` beside it, or, where
    a socket path there would be too long for the kernel (a deep folder), a short one named
    after the database's absolute path under the system's /tmp (the same for every process
    that opens `db`, whatever its TMPDIR)."""
    beside = db.with_name(db.name + ".wake")
    if len(os.fsencode(beside)) + _SOCKET_NAME <= _MAX_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(os.path.abspath(db))).hexdigest()[:20]
    return Path("/tmp") / f"sagalab-wake-{os.getuid()}" / digest


def _send_socket() -> socket.socket:
    global _sender
    with _send_lock:
        if _sender is None:
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
            atexit.register(sender.close)
            _sender = sender
        return _sender


def notify_dir(directory: Path, *, after: str | None = None, hops: int | None = None) -> int:
    """Wake one worker process through its socket in `directory`; 1 if one got the byte.

    The first socket tried is picked at random, or is the one after the socket named `after`
    in name order (a wake-up passed on); the next ones are tried in name order round the
    ring only while sends fail. The byte says how many times the wake-up may still be passed
    on: `hops`, or one less than the number of sockets (so that it visits each once).
    Never raises and never blocks: a missing directory, a dead or full socket is skipped
    (a dead one's file removed).
    """
    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in itertools.islice(entries, 2 * MAX_SOCKETS))
    except OSError:
        return 0
    ring = [name for name in names if name.endswith(".sock")][:MAX_SOCKETS]
    if after is not None:
        ring = [name for name in ring if name != after]
        first = bisect.bisect_right(ring, after)
    else:
        first = random.randrange(len(ring)) if ring else 0
    left = len(ring) - 1 if hops is None else hops
    try:
        sender = _send_socket()
        for i in range(len(ring)):
            path = os.path.join(directory, ring[(first + i) % len(ring)])
            try:
                sender.sendto(bytes([max(0, min(left, _MAX_HOPS))]), path)
                return 1
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:  # nobody bound: a killed worker's
                    _remove_stale(path)
                # EAGAIN: its buffer is full (wake-ups it has not read); ENOENT: gone
    except OSError:
        pass
    return 0


def _remove_stale(path: str) -> None:
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


class Waker:
    """What a worker process's idle threads wait on: returns early when a wake-up arrives.

    One listener thread per process reads the channel (`receive(timeout)`: -1 for nothing,
    else how many times the wake-up may be passed on). A wake-up releases ONE waiting thread
    (or the next one to wait, if none waits now: a wake-up that arrives while the threads
    look at the queue is kept, not lost). Waking them all would have every idle thread race
    for the same saga and sleep in the database's busy handler (measured: 70 ms per saga with
    eight threads on SQLite); a thread that claimed a saga after a wake-up passes it on
    (`pulse`) instead, so a burst is taken up thread by thread.

    A worker `attach`es its own handler instead of waiting here: it is called in the
    listener thread and says whether a thread of the process was waiting to take the
    wake-up; when none was, the wake-up is also passed on (`forward(hops)`, the channel's)
    to another process, which may have one.
    """

    def __init__(
        self,
        receive: Callable[[float], int],
        close: Callable[[], None],
        forward: Callable[[int], object] | None = None,
    ) -> None:
        self._receive = receive
        self._close = close
        self._forward = forward
        self._handler: Callable[[], bool] = self.pulse
        self._cond = threading.Condition()
        self._pending = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="waker", daemon=True)
        self._thread.start()

    def attach(self, handler: Callable[[], bool]) -> None:
        """Deliver wake-ups to `handler` (True: a thread here takes it) instead of `wait`."""
        self._handler = handler

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                hops = self._receive(0.5)
            except Exception:  # a hint only: polling goes on; try again after a pause
                log.debug("wake-up channel failed", exc_info=True)
                self._closed.wait(1.0)
                continue
            if hops < 0:
                continue
            # Nobody here to take it: another process may have an idle thread. It still
            # counts here too (a thread about to wait claims once more: a read, not a loss).
            if not self._handler() and hops > 0 and self._forward is not None:
                with contextlib.suppress(Exception):
                    self._forward(hops - 1)

    def pulse(self) -> bool:
        """Release one waiting thread (or the next one to wait); True (it is taken here)."""
        with self._cond:
            self._pending = True
            self._cond.notify()
        return True

    def wait(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Wait up to `timeout` seconds for a wake-up (or `stop`); True if woken."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(min(left, _STOP_SLICE))
            self._pending = False
            return True

    def close(self) -> None:
        """Stop listening and remove what the channel left (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(Exception):
            self._close()


def sqlite_waker(db: Path) -> Waker | None:
    """A waker on `<db>.wake/`, or None (polling only) where it cannot be made: a read-only
    directory, a path too long for a socket, no unix sockets."""
    directory = wake_dir(db)
    path = directory / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
    if len(os.fsencode(path)) > _MAX_PATH or not hasattr(socket, "AF_UNIX"):
        log.debug("no wake-up channel for %s: socket path too long", db)
        return None
    try:
        if directory.parent.name.startswith("sagalab-wake-"):  # the short one under /tmp
            directory.parent.mkdir(mode=0o700, exist_ok=True)
            if directory.parent.stat().st_uid != os.getuid():  # not ours: never bind there
                log.debug("no wake-up channel for %s: %s is not ours", db, directory.parent)
                return None
        directory.mkdir(mode=0o700, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError as exc:
        log.debug("no wake-up channel for %s: %s", db, exc)
        return None
    try:
        sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        log.debug("no wake-up channel for %s: %s", db, exc)
        return None
    sock.setblocking(False)

    def receive(timeout: float) -> int:
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return -1
        hops = 0
        with contextlib.suppress(OSError):  # all pending wake-ups at once: one pulse serves
            while True:
                data = sock.recv(64)
                # An older writer's "!" went to every process: nothing to pass on.
                if len(data) == 1 and data != _BROADCAST and data[0] <= _MAX_HOPS:
                    hops = max(hops, data[0])
        return hops

    def forward(hops: int) -> None:
        notify_dir(directory, after=path.name, hops=hops)

    def close() -> None:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: other workers keep theirs

    return Waker(receive, close, forward)
