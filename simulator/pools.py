"""The process pool `sweep` and `compare` run on, stopped with its caller.

A plain `with ProcessPoolExecutor()` left its workers running when the parent was stopped:
SIGTERM killed the parent at once and its workers went on (orphans, for as long as their
runs took); Ctrl-C made the parent wait for every running run to finish. Here SIGTERM and
SIGINT are turned into KeyboardInterrupt while the pool is open, and on any exception the
workers are killed before it propagates (the CLI then exits 130, as after Ctrl-C).

A signal that lands inside `submit` waits until `submit` returns: the executor forks a worker
and only then records it, and an interrupt between the two left a worker no one killed, which
the interpreter's exit then waited for, for ever (seen once in a parallel test run).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

__all__ = ["StoppablePool", "stoppable_pool"]

T = TypeVar("T")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Deferral:
    """The signal handler of an open pool: raise at once, or once the pool's own
    bookkeeping (a `submit`) is done."""

    def __init__(self) -> None:
        self.busy = False
        self.pending = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.busy:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt


class StoppablePool:
    """The open pool as its callers use it: `submit` only."""

    def __init__(self, pool: ProcessPoolExecutor, deferral: _Deferral) -> None:
        self._pool = pool
        self._deferral = deferral

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._deferral.held():
            return self._pool.submit(fn, *args, **kwargs)


@contextmanager
def stoppable_pool(workers: int) -> Iterator[StoppablePool]:
    """A pool of `workers` processes whose workers die with the caller."""
    deferral = _Deferral()
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, deferral.handler) for s in _STOP_SIGNALS} if main else {}
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield StoppablePool(pool, deferral)
    except BaseException:
        # SIGKILL, not SIGTERM: a forked worker inherited the handler above, and a
        # KeyboardInterrupt inside a worker is reported as a result, not an exit.
        # `_processes` is the executor's own map of its workers (no public way before 3.14).
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
