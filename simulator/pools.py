"""The process pool `sweep` and `compare` run on, stopped with its caller.

A plain `with ProcessPoolExecutor()` left its workers running when the parent was stopped:
SIGTERM killed the parent at once and its workers went on (orphans, for as long as their
runs took); Ctrl-C made the parent wait for every running run to finish. Here SIGTERM is
turned into KeyboardInterrupt while the pool is open, and on any exception the workers are
killed before it propagates (the CLI then exits 130, as after Ctrl-C).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from types import FrameType

__all__ = ["stoppable_pool"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def stoppable_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A ProcessPoolExecutor of `workers` processes whose workers die with the caller."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield pool
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
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
