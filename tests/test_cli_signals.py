"""`cli.signals.sigterm_raises`: SIGTERM unwinds the block, and the old handler comes back.

The commands that use it (loadtest, simulate validate, orchestrate status --follow) are tested
end to end with a real SIGTERM to a subprocess in their own files; this holds the helper to
its contract in this process (pytest runs tests in the main thread, as signal.signal needs).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from sagalab.cli.signals import sigterm_raises


class Stopped(BaseException):
    """A command's own way out (orchestrate's follow exits 143 with one)."""


@pytest.fixture
def marker() -> Iterator[list[int]]:
    """A handler of our own in place around each test: the one the helper must put back."""
    seen: list[int] = []

    def ours(signum: int, _frame: FrameType | None) -> None:
        seen.append(signum)

    before = signal.signal(signal.SIGTERM, ours)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, before)


def test_sigterm_inside_raises_keyboard_interrupt_and_the_old_handler_comes_back(
    marker: list[int],
) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_raises():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous
    signal.raise_signal(signal.SIGTERM)  # ours again: recorded, nothing raised
    assert marker == [signal.SIGTERM]


def test_a_command_may_raise_its_own_exception(marker: list[int]) -> None:
    with pytest.raises(Stopped), sigterm_raises(Stopped):
        signal.raise_signal(signal.SIGTERM)
    assert marker == []


def test_a_block_that_ends_normally_or_by_another_error_restores_too(marker: list[int]) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is not previous
    assert signal.getsignal(signal.SIGTERM) is previous
    with pytest.raises(ValueError), sigterm_raises():
        raise ValueError("boom")
    assert signal.getsignal(signal.SIGTERM) is previous
