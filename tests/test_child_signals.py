"""stack/children.py: an interrupt while a child starts never leaves the child running.

The signal is raised inside `subprocess.Popen()` after the child has been exec'd, the window
in which `subprocess.run` (and a bare Popen) loses the child: each case runs in its own
interpreter, whose SIGTERM handler raises KeyboardInterrupt as the CLI's does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from workerlab import wait_for

SCRIPT = """\
import os, signal, subprocess, sys

from sagalab.stack import children

started = []
_execute_child = subprocess.Popen._execute_child


def _term_after_exec(self, *args, **kwargs):
    _execute_child(self, *args, **kwargs)
    started.append(self.pid)
    print(self.pid, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # handled before Popen() returns


def interrupt(_s, _f):
    raise KeyboardInterrupt


subprocess.Popen._execute_child = _term_after_exec
signal.signal(signal.SIGTERM, interrupt)
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # ours ends at our exit
try:
    if sys.argv[1] == "children.run":
        children.run(sleeper, timeout=60, **quiet)
    else:
        subprocess.run(sleeper, timeout=60, **quiet)
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(0)
"""


def alive(pid: int) -> bool:
    """`pid` runs (a zombie, reaped by init soon, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def interrupted_start(how: str) -> int:
    """Run SCRIPT with `how`; the pid of the child it started (its exit code checked)."""
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, how],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 130, r.stderr
    return int(r.stdout.split()[0])


def test_an_interrupt_while_the_child_starts_stops_the_child() -> None:
    pid = interrupted_start("children.run")
    assert not alive(pid), "the child outlived the interrupt"


def test_subprocess_run_loses_a_child_interrupted_while_it_starts() -> None:
    """Why children.run exists: the same interrupt leaves subprocess.run's child running."""
    pid = interrupted_start("subprocess.run")
    try:
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), 10, "the orphan to die")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_held_signals_come_once_the_block_has_ended(signum: int) -> None:
    script = f"""\
import os, signal
from sagalab.stack.children import held_signals

order = []
signal.signal({int(signum)}, lambda s, f: order.append("handler"))
with held_signals():
    os.kill(os.getpid(), {int(signum)})
    os.kill(os.getpid(), {int(signum)})
    order.append("block")
order.append("after")
print(" ".join(order))
"""
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["block", "handler", "after"]
