"""Child processes that an interrupt cannot orphan.

A signal handler that raises (Ctrl-C's KeyboardInterrupt, or a CLI's SIGTERM handler that
raises it too) can fire inside `subprocess.Popen()` after the child has been exec'd but
before the constructor returns: the caller never gets the Popen object, so nothing stops the
child, which goes on running with the caller's stdout and stderr. `sagalab loadtest` sent
SIGTERM right after Locust started exited 130 with Locust still running for its whole
`--duration`, holding the user's stderr pipe open (a caller reading it to EOF, as a CI job
or a test does, waited for Locust, not for the CLI). `subprocess.run` has the same window.

`held_signals()` defers SIGINT and SIGTERM across a start: they are delivered, to whatever
handler was there, once the block has ended. Hold them across the assignment too, inside
the `try` that stops the child (`with held_signals(): proc = Popen(...)`): an interrupt
raised by a function that returns the Popen would lose it again. `run()` is
`subprocess.run` without the window: the child is stopped (SIGKILL after a short grace)
whatever ends the wait. Whatever ends it: a signal whose handler is the default action ends
the process where it is delivered, before anything can stop the child, so a caller that must
stop its child on SIGTERM makes SIGTERM raise (`cli.signals.sigterm_raises`), as `loadtest`
and `demo` do.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["held_signals", "run"]

#: What Ctrl-C and `timeout`/a CI cancel send: the signals a CLI turns into an interrupt.
INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
#: How long an interrupted child gets to end by itself (it had the terminal's SIGINT too)
#: before it is killed: what `subprocess.run` gives it.
GRACE = 0.25


@contextlib.contextmanager
def held_signals(signals: Sequence[signal.Signals] = INTERRUPTS) -> Iterator[None]:
    """Defer `signals` inside the block; deliver each that came, once, on the way out.

    Only the main thread runs Python signal handlers, so elsewhere there is nothing to defer.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def note(signum: int, _frame: object) -> None:
        if signum not in came:
            came.append(signum)

    previous = {s: signal.signal(s, note) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            # None: a handler installed outside Python; the default is the nearest we can do.
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for signum in came:
            signal.raise_signal(signum)  # its own handler runs now (KeyboardInterrupt, usually)


def run(command: Sequence[str], *, timeout: float | None = None, **popen: Any) -> int:
    """Run `command` to its end; its exit code.

    Whatever ends the wait (an interrupt, `timeout` as subprocess.TimeoutExpired) stops the
    child first: GRACE seconds to end by itself, then SIGKILL, and it is reaped.
    """
    proc: subprocess.Popen[Any] | None = None
    try:
        with held_signals():
            proc = subprocess.Popen(command, **popen)
        return proc.wait(timeout=timeout)
    except BaseException:
        if proc is not None:
            _stop(proc)
        raise


def _stop(proc: subprocess.Popen[Any]) -> None:
    with held_signals():  # a second Ctrl-C must not leave it half-stopped
        try:
            proc.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
