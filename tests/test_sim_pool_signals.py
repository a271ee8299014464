"""`simulate sweep` and `simulate compare` stop their worker processes with them (issue 13,
outside attacker's round: SIGTERM to `sweep` killed the parent and left its workers running
as orphans for as long as their runs took; Ctrl-C made it wait for every running run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

COMMANDS = {
    "sweep": ["sweep", "baseline", "--grid", "duration=3000,3100", "--workers", "2"],
    "compare": [
        "compare",
        "baseline",
        "baseline",
        "--seeds",
        "2",
        "--duration",
        "3000",
        "--workers",
        "2",
    ],
}


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group `pgid`."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True, check=True
    ).stdout
    return [
        int(pid)
        for pid, group, stat in (line.split() for line in out.splitlines())
        if int(group) == pgid and not stat.startswith("Z")
    ]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_a_signal_to_the_parent_stops_its_workers(
    verb: str, sig: signal.Signals, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagalab.cli.main",
            "simulate",
            *COMMANDS[verb],
            *(["--out", str(tmp_path)] if verb == "sweep" else []),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 30
        while len(group_members(proc.pid)) < 3:  # the parent and both workers are running
            assert proc.poll() is None and time.monotonic() < deadline, "workers never started"
            time.sleep(0.05)
        os.kill(proc.pid, sig)  # the parent alone, as `kill PID` does
        proc.wait(timeout=15)
        assert proc.returncode == 130
        deadline = time.monotonic() + 10
        while group_members(proc.pid):
            assert time.monotonic() < deadline, f"orphans left: {group_members(proc.pid)}"
            time.sleep(0.05)
        assert list(tmp_path.iterdir()) == []
    finally:
        if proc.poll() is None or group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_signal_between_a_workers_fork_and_its_record_leaves_no_worker(
    sig: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The executor forks a worker (`Process.start`) and records it a line later: a signal
    # delivered right after the fork, as here, raised there, and that worker outlived the
    # pool (a parallel CI run's `compare` then hung at exit, waiting for it).
    import multiprocessing.process

    from sagalab.simulator.pools import stoppable_pool

    start = multiprocessing.process.BaseProcess.start

    def start_then_signal(self: multiprocessing.process.BaseProcess) -> None:
        start(self)
        os.kill(os.getpid(), sig)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_then_signal)
    with pytest.raises(KeyboardInterrupt), stoppable_pool(2) as pool:
        pool.submit(_square, 3).result()
    monkeypatch.undo()
    deadline = time.monotonic() + 10
    while multiprocessing.active_children():  # reaps the killed ones
        assert time.monotonic() < deadline, f"left running: {multiprocessing.active_children()}"
        time.sleep(0.05)
