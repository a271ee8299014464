"""`sigterm_raises`: SIGTERM unwinds a block as Ctrl-C does, and the old handler comes back.

`timeout`, a CI job's cancel and systemd send SIGTERM; a command that started something (a
stack, Locust, a store it holds open) must stop it on the way out rather than leave it
running, which is what its `except KeyboardInterrupt` / `finally` already do for Ctrl-C.
Used by `loadtest run`, `simulate validate`, `orchestrate status --follow` (which raises its
own exception to exit 143 instead of 130) and benchmarks/run.py.

Handlers that differ on purpose and do not use it (each says why where it is installed):
`services run` and `stack up` only set a flag (a raise could land inside their `finally`'s
stop and cut it short), `worker` sets an event that drains the worker, the stack
supervisor's handlers last its whole process, and the simulator's process pool
(`simulator/pools.py`) defers the signal while a `submit` is half done and handles SIGINT
with it.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["sigterm_raises"]


@contextmanager
def sigterm_raises(
    exception: type[BaseException] = KeyboardInterrupt,
) -> Iterator[None]:
    """Within the block, SIGTERM raises `exception` (KeyboardInterrupt: as Ctrl-C does);
    the previous handler is put back on the way out. Main thread only, as `signal.signal`."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise exception

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
