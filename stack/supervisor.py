"""The stack supervisor: the process that starts the stack's components and restarts any that die.

    sagalab stack up  --config on stdin-->  python -m sagalab.stack.supervisor DIRECTORY
                      <--progress / ready / error lines on stdout--
                                            |- --postgres: starts its server (stack.database)
                                            |- starts every component (stack.processes.start)
                                            |- every tick: reaps the dead, restarts them
                                            `- SIGTERM (stack down): stops them all (the
                                               database last), exits

`launch()` is the client side (used by `sagalab stack up` and `sagalab loadtest`): it starts
the supervisor in its own session (it outlives the terminal with `--detach`), writes the
config to it and waits for one `ready` or `error` line. The supervisor is every component's
parent, so it learns each exit code at once. A component that dies is started again after a
backoff: `restart_delay` doubled with each death that follows a short run, capped at
`MAX_RESTART_DELAY`; a component that stayed up `STABLE_AFTER` seconds starts again from the
first delay. Every restart is logged (logs/supervisor.log) and recorded in `stack.json`
(restart count, why it last stopped, when the next start is due), which `stack status` shows.

`sagalab stack restart NAME` drops a request file in `requests/`; the supervisor stops that
component (SIGTERM, then SIGKILL) and starts it at once, without backoff.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sagalab.edge.errors import StackError
from sagalab.orchestrator.policies.retry import RetryPolicy
from sagalab.stack.children import held_signals
from sagalab.stack.database import start_database
from sagalab.stack.processes import (
    STATE_FILE,
    STOP_ORDER,
    Component,
    StackConfig,
    StackState,
    alive,
    children,
    database_target,
    proc_start,
    respawn,
    start,
    stop_database,
    tail_log,
    terminate,
    write_state,
)

__all__ = [
    "MAX_RESTART_DELAY",
    "MIN_RESTART_DELAY",
    "STABLE_AFTER",
    "exit_reason",
    "launch",
    "request_restart",
]

#: The longest wait before restarting a component that keeps dying, seconds.
MAX_RESTART_DELAY = 30.0
#: Shortest `--restart-delay`: with 0 the doubling stays at 0 and a crashing component is
#: restarted as fast as it dies (15 times in 8 s).
MIN_RESTART_DELAY = 0.1
#: A component up this long has recovered: its next death restarts it after the first delay.
STABLE_AFTER = 10.0
REQUESTS = "requests"
LOG = "supervisor.log"
LOCK_FILE = "supervisor.lock"
#: Why a supervisor stops starting when nobody waits for it any more.
GONE = "the `stack up` that started this supervisor went away"
_HELD: list[int] = []


def exit_reason(returncode: int | None, log: str) -> str:
    """Why a component stopped, in one line: its signal, or its code and last log line."""
    if returncode is None:  # not our child (a stack started without a supervisor)
        return "exited (exit code unknown)"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    last = tail_log(Path(log), 1).strip()
    reason = f"exit code {returncode}"
    return f"{reason}: {_shortened(last)}" if last and last != "(no log)" else reason


def _shortened(line: str, limit: int = 200) -> str:
    """`line` cut to `limit` characters in the middle: an error's end says what to do (and a
    long path in it must not push that out)."""
    if len(line) <= limit:
        return line
    head = (limit - 3) // 2
    return f"{line[:head]}...{line[len(line) - (limit - 3 - head) :]}"


@dataclass
class _Watch:
    """What the supervisor knows about one component beyond `Component`."""

    since: float  # monotonic time of its last start
    deaths: int = 0  # deaths in a row, each after a short run
    due: float | None = None  # monotonic time of its pending restart


class StackSupervisor:
    """Restarts the components of `state` that die, until `stopping` is set."""

    def __init__(
        self,
        state: StackState,
        config: StackConfig,
        log: Callable[[str], None],
        *,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.state = state
        self.stable_after = stable_after
        self.log = log
        self.backoff = RetryPolicy(
            max_attempts=None,
            # `stack up` refuses a delay out of bounds; a state file edited by hand is clamped.
            initial_delay=min(max(config.restart_delay, MIN_RESTART_DELAY), MAX_RESTART_DELAY),
            max_delay=MAX_RESTART_DELAY,
            jitter=False,
        )
        self.stopping = False
        now = time.monotonic()
        self.watch = {c.name: _Watch(since=now) for c in state.components}
        self.requests = Path(state.directory) / REQUESTS

    def run(self, tick: float = 0.1) -> None:
        """Supervise until `stopping`; then stop every component and remove the state file."""
        try:
            while not self.stopping:
                changed = self._reap() | self._restart_due() | self._restart_requested()
                if changed and not self.stopping:
                    write_state(self.state)
                time.sleep(tick)
        finally:
            components = sorted(self.state.components, key=lambda c: STOP_ORDER.get(c.kind, 5))
            stopped = terminate(components, grace=5.0)
            for proc in list(children.values()):
                proc.poll()  # reap
            if self.state.database is not None and stop_database(self.state.database):
                stopped.append(self.state.database.name)  # the last: the others used it
            (Path(self.state.directory) / STATE_FILE).unlink(missing_ok=True)
            shutil.rmtree(self.requests, ignore_errors=True)
            self.log(f"stopped {len(stopped)} component(s): {', '.join(stopped) or 'none'}")

    def _replace(self, old: Component, new: Component) -> None:
        self.state.components = [new if c.name == old.name else c for c in self.state.components]

    def _reap(self) -> bool:
        """Note every component that has exited and schedule its restart."""
        changed = False
        now = time.monotonic()
        for c in self.state.components:
            w = self.watch[c.name]
            if w.due is not None:
                continue
            proc = children.get(c.pid)
            # Our own child tells its exit code; one we did not start can only be seen gone.
            code = proc.poll() if proc is not None else None
            running = code is None if proc is not None else alive(c)
            if running:
                if now - w.since >= self.stable_after:
                    w.deaths = 0
                continue
            children.pop(c.pid, None)
            w.deaths = 1 if now - w.since >= self.stable_after else w.deaths + 1
            delay = self.backoff.backoff_cap(w.deaths)
            w.due = now + delay
            reason = exit_reason(code, c.log)
            self._replace(c, replace(c, last_exit=reason, restart_at=time.time() + delay))
            self.log(f"{c.name} (pid {c.pid}) stopped: {reason}; restarting in {delay:g}s")
            changed = True
        return changed

    def _restart_due(self) -> bool:
        changed = False
        now = time.monotonic()
        for c in list(self.state.components):
            w = self.watch[c.name]
            if w.due is None or w.due > now or self.stopping:
                continue
            self._start_again(c, replace(c, restarts=c.restarts + 1))
            changed = True
        return changed

    def _start_again(self, c: Component, counted: Component) -> None:
        w = self.watch[c.name]
        try:
            new = respawn(counted)
        except StackError as exc:  # its port was taken meanwhile: try again later
            delay = self.backoff.backoff_cap(w.deaths + 1)
            w.deaths, w.due = w.deaths + 1, time.monotonic() + delay
            self.log(f"{c.name}: cannot restart ({exc}); next try in {delay:g}s")
            return
        w.since, w.due = time.monotonic(), None
        self._replace(c, replace(new, restart_at=None))
        self.log(f"{c.name} restarted as pid {new.pid} (restart {new.restarts})")

    def _restart_requested(self) -> bool:
        """Restart each component named by a file in `requests/` (at once, no backoff)."""
        try:
            names = sorted(os.listdir(self.requests))
        except OSError:
            return False
        changed = False
        for name in names:
            (self.requests / name).unlink(missing_ok=True)
            found = [c for c in self.state.components if c.name == name]
            if not found or self.stopping:
                continue
            c = found[0]
            terminate([c], grace=5.0)
            proc = children.pop(c.pid, None)
            if proc is not None:
                proc.poll()
            self.watch[name].deaths = 0
            self.log(f"{name} (pid {c.pid}) restarting on request")
            self._start_again(c, replace(c, restarts=c.restarts + 1, last_exit="restart requested"))
            changed = True
        return changed


def request_restart(state: StackState, name: str) -> None:
    """Ask the stack's supervisor to restart `name` (StackError if it has no supervisor)."""
    state.component(name)  # StackError naming the components if there is no such one
    if state.supervisor is None or not alive(state.supervisor):
        raise StackError(
            "this stack's supervisor is not running, so nothing restarts components; "
            "`sagalab stack down` then `sagalab stack up` starts a supervised stack"
        )
    requests = Path(state.directory) / REQUESTS
    requests.mkdir(exist_ok=True)
    (requests / name).touch()


# -- the supervisor process -------------------------------------------------------------------


def _config_from_json(raw: dict[str, Any]) -> StackConfig:
    raw["directory"] = Path(raw["directory"])
    return StackConfig(**raw)


def _config_to_json(config: StackConfig) -> str:
    raw = asdict(config)
    raw["directory"] = str(config.directory)
    # A URL as typed (a Path would collapse its `//`); a SQLite file as its absolute path.
    raw["db"] = database_target(config.db, config.directory) if config.db else None
    return json.dumps(raw)


def main() -> int:
    """Entry point of `python -m sagalab.stack.supervisor DIRECTORY` (config as JSON on stdin).

    Every way it stops leaves one line in DIRECTORY/logs/supervisor.log saying why, also
    before it has its configuration or its lock (the `stack up` may be gone by then, and
    this process's stderr goes nowhere).
    """
    given = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else None
    try:
        config = _config_from_json(json.loads(sys.stdin.read()))
    except (ValueError, TypeError, KeyError, AttributeError):  # cut off, or not ours
        _log_early(given, f"start failed: {GONE} before sending its configuration")
        return 1
    directory = config.directory.resolve()
    handshake = os.fdopen(os.dup(1), "w", buffering=1)
    try:
        _hold_directory(directory)
    except StackError as exc:
        _log_early(directory, f"start failed: {exc}")
        try:
            handshake.write(f"error {json.dumps(str(exc))}\n")
        except BrokenPipeError:  # nobody reads it: said in the log, and nothing left to flush
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, handshake.fileno())
            os.close(null)
        return 1
    # From now on, stdout and stderr go to the log; the handshake pipe only says how start went.
    log_file = open(directory / "logs" / LOG, "a", buffering=1)  # noqa: SIM115
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)

    def log(message: str) -> None:
        log_file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")

    def tell(line: str) -> bool:
        """Write `line` to the `stack up` that started us; False if it has gone away.

        A SIGKILLed `stack up` leaves a pipe nobody reads: the write is EPIPE. The pipe is
        pointed at /dev/null then, so the unwritten line cannot fail again at exit.
        """
        try:
            handshake.write(line + "\n")
            return True
        except BrokenPipeError:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, handshake.fileno())
            os.close(null)
            return False

    def progress(message: str) -> None:
        if not tell(f"progress {message}"):
            # Nobody waits for this start any more: stop what was started (start() does, on
            # the way out), with one line in the log instead of a BrokenPipeError traceback.
            raise StackError(GONE)

    # Not `cli.signals.sigterm_raises`: these handlers last this process's whole life (abort
    # while starting, then a flag that stops the supervision loop), and SystemExit(1) is its
    # exit status.
    def abort(_s: int, _f: object) -> None:
        raise SystemExit(1)  # start() stops what it started on the way out

    signal.signal(signal.SIGTERM, abort)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is for `stack up`
    me = Component(
        name="supervisor",
        kind="supervisor",
        pid=os.getpid(),
        started=proc_start(os.getpid()) or -1.0,
        url=None,
        health=None,
        log=str(directory / "logs" / LOG),
        command=[sys.executable, "-m", "sagalab.stack.supervisor"],
    )
    database = None
    try:
        if config.postgres:
            database = start_database(directory, on_progress=progress)
            log(f"postgres started (pid {database.pid}, log {database.log})")
            config = replace(config, db=database.url)
        state = start(config, on_progress=progress, supervisor=me, database=database)
    except (StackError, SystemExit) as exc:
        if database is not None:
            stop_database(database)
        why = str(exc) if isinstance(exc, StackError) else "stopped during start-up"
        log(f"start failed: {why}")
        tell(f"error {json.dumps(why)}")
        return 1
    supervisor = StackSupervisor(state, config, log)

    def on_term(_s: int, _f: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    log(f"started {len(state.components)} component(s); supervising")
    if not tell("ready"):
        log(f"{GONE}; the stack stays up")
    handshake.close()
    supervisor.run()
    return 0


def _log_early(directory: Path | None, message: str) -> None:
    """`message` as one line of `directory`'s supervisor log, before the log is set up
    (on stderr if there is no directory or its log cannot be written)."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n"
    try:
        if directory is None:
            raise OSError("no stack directory given")
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        with open(directory / "logs" / LOG, "a") as f:
            f.write(line)
    except OSError:
        sys.stderr.write(line)


def _hold_directory(directory: Path) -> None:
    """Lock `directory` for this supervisor's life (StackError if another holds it).

    `start` refuses a directory whose state file names live components, but that file is
    written once every component is ready: two `stack up` started together both passed that
    check and ran two stacks, one of which no `stack down` could reach. The lock is an
    flock on LOCK_FILE, released by the kernel when this process ends, however it ends.
    """
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StackError(
            f"a stack is already running from {directory}; `sagalab stack down` stops it"
        ) from None
    _HELD.append(fd)  # open (and so locked) until this process exits


def launch(
    config: StackConfig, *, on_progress: Callable[[str], None] = lambda _: None
) -> StackState:
    """Start a supervised stack; return its state once every component is ready.

    Raises StackError (nothing left running) if it cannot start.
    """
    directory = config.directory.resolve()
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    proc: subprocess.Popen[str] | None = None
    try:
        # Ctrl-C while it starts comes once `proc` is set: the supervisor is stopped below.
        with held_signals():
            proc = subprocess.Popen(
                [sys.executable, "-m", "sagalab.stack.supervisor", str(directory)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(_config_to_json(replace(config, directory=directory)))
        proc.stdin.close()
        for line in proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "progress":
                on_progress(rest)
            elif kind == "ready":
                from sagalab.stack.processes import load_state

                return load_state(directory)
            elif kind == "error":
                proc.wait(timeout=30)
                raise StackError(json.loads(rest))
        proc.wait(timeout=30)
        raise StackError(
            f"the stack supervisor exited during start-up (code {proc.returncode}); "
            f"see {directory / 'logs' / LOG}"
        )
    except BaseException:
        # Ctrl-C while starting: it stops what it started.
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=config.startup_timeout + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
