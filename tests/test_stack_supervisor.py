"""The stack supervisor's restart policy on real processes that keep dying.

A component that dies soon after each start is restarted after delays that double from
`restart_delay` up to a cap; one that stayed up `stable_after` seconds starts again from the
first delay. Why it stopped (its exit code and the last line it logged, the one-line reason a
worker gives when it cannot go on) is recorded in the state file that `stack status` reads.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from workerlab import wait_for

from sagalab.stack.processes import Component, StackConfig, StackState, _spawn, alive, load_state
from sagalab.stack.supervisor import MAX_RESTART_DELAY, StackSupervisor, exit_reason


def crasher(logs: Path, script: str) -> Component:
    return _spawn("worker-1", "worker", [sys.executable, "-c", script], logs, url=None, health=None)


def delays(lines: list[str]) -> list[float]:
    return [float(m) for line in lines for m in re.findall(r"restarting in ([\d.]+)s", line)]


def run_supervisor(
    tmp_path: Path, lines: list[str], script: str, delay: float, stable: float
) -> tuple[StackSupervisor, threading.Thread]:
    """A supervisor of one component running `script`, in a thread."""
    c = crasher(tmp_path / "logs", script)
    state = StackState(
        directory=str(tmp_path), db="", keys_db="", edge_url="", services_url=None,
        api_key="", components=[c], created_at=0.0,
    )  # fmt: skip
    sup = StackSupervisor(
        state, StackConfig(directory=tmp_path, restart_delay=delay), lines.append,
        stable_after=stable,
    )  # fmt: skip
    thread = threading.Thread(target=sup.run, kwargs={"tick": 0.02})
    thread.start()
    return sup, thread


def test_a_component_that_keeps_dying_is_restarted_after_doubling_delays(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    lines: list[str] = []
    script = "print('worker cannot go on: database file deleted'); raise SystemExit(3)"
    sup, thread = run_supervisor(tmp_path, lines, script, delay=0.1, stable=60.0)
    try:
        wait_for(lambda: len(delays(lines)) >= 4, 30, "four deaths")
        shown = load_state(tmp_path).components[0]
        assert shown.last_exit == "exit code 3: worker cannot go on: database file deleted"
        assert shown.restarts >= 3
    finally:
        sup.stopping = True
        thread.join(timeout=30)
    assert delays(lines)[:4] == [0.1, 0.2, 0.4, 0.8]
    assert sup.backoff.backoff_cap(50) == MAX_RESTART_DELAY, "the delay is bounded"
    assert not alive(sup.state.components[0])
    assert not (tmp_path / "stack.json").exists()


def test_a_component_that_stayed_up_restarts_after_the_first_delay(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    lines: list[str] = []
    script = "import time; time.sleep(0.5); raise SystemExit(1)"
    sup, thread = run_supervisor(tmp_path, lines, script, delay=0.1, stable=0.3)
    try:
        wait_for(lambda: len(delays(lines)) >= 3, 30, "three deaths after stable runs")
    finally:
        sup.stopping = True
        thread.join(timeout=30)
    assert delays(lines)[:3] == [0.1, 0.1, 0.1]
    assert not alive(sup.state.components[0])


def _exited(lock: Path) -> bool:
    """Whether the supervisor holding `lock` (an flock for its life) has exited."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _answers(url: str) -> bool:
    where = urlsplit(url)
    try:
        socket.create_connection((where.hostname, where.port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_sigkilled_stack_up_leaves_one_log_line_not_a_traceback(tmp_path: Path) -> None:
    """`stack up --detach` SIGKILLed while it starts: the supervisor's next progress line has
    no reader (EPIPE). It stops what it started and logs one line, not a BrokenPipeError."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    up = subprocess.Popen(
        [sys.executable, "-m", "sagalab.cli.main", "stack", "up", "--detach", "--dir",
         str(tmp_path), "--workers", "1", "--gateways", "2", "--no-ui", "--no-services"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert up.stderr is not None
    first = up.stderr.readline()  # the first component ready: the others are still starting
    up.send_signal(signal.SIGKILL)
    up.wait(timeout=10)
    up.stderr.close()
    url = re.search(r"ready at (\S+)", first)
    assert url is not None, first
    wait_for(lambda: _exited(tmp_path / "supervisor.lock"), 30, "the supervisor to exit")
    log = (tmp_path / "logs" / "supervisor.log").read_text()
    assert "Traceback" not in log and "BrokenPipeError" not in log, log
    assert "start failed: the `stack up` that started this supervisor went away" in log
    assert not _answers(url.group(1))  # what was started is stopped


def _supervisor(directory: Path, stdout: int) -> subprocess.Popen[bytes]:
    """The supervisor process as `launch` starts it, its handshake pipe on `stdout`."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "sagalab.stack.supervisor", str(directory)],
        stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


def test_a_stack_up_gone_before_sending_its_configuration_leaves_one_log_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "logs").mkdir()
    sup = _supervisor(tmp_path, subprocess.DEVNULL)
    _, err = sup.communicate(b'{"directory": ', timeout=30)  # cut off: its parent died
    assert sup.returncode == 1 and b"Traceback" not in err, err
    (line,) = (tmp_path / "logs" / "supervisor.log").read_text().splitlines()
    assert "start failed: the `stack up` that started this supervisor went away" in line, line
    assert not (tmp_path / "supervisor.lock").exists()  # it never got as far as the lock


def test_a_refused_lock_with_its_stack_up_gone_leaves_one_log_line(tmp_path: Path) -> None:
    from sagalab.stack.supervisor import _config_to_json

    (tmp_path / "logs").mkdir()
    held = os.open(tmp_path / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # another stack runs from this directory
    read, write = os.pipe()
    os.close(read)  # the `stack up` is gone: nobody reads the handshake
    try:
        sup = _supervisor(tmp_path, write)
        config = _config_to_json(StackConfig(directory=tmp_path)).encode()
        _, err = sup.communicate(config, timeout=30)
    finally:
        os.close(write)
        os.close(held)
    assert sup.returncode == 1 and b"Traceback" not in err, err
    (line,) = (tmp_path / "logs" / "supervisor.log").read_text().splitlines()
    assert "start failed: a stack is already running from" in line, line


def test_a_long_last_log_line_keeps_its_end_in_the_exit_reason(tmp_path: Path) -> None:
    # A deep stack directory made the API's "database replaced" line longer than the reason
    # keeps; cutting its end lost the advice ("restart the API").
    log = tmp_path / "api.log"
    line = f"error: database file /{'d' * 300}/sagas.db was replaced: restart the API"
    log.write_text(f"started\n{line}\n")
    reason = exit_reason(5, str(log))
    assert reason.startswith("exit code 5: error: database file /ddd") and "..." in reason
    assert reason.endswith("was replaced: restart the API")
    assert len(reason) == len("exit code 5: ") + 200
    log.write_text("error: short\n")
    assert exit_reason(5, str(log)) == "exit code 5: error: short"
