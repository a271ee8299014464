"""`sagalab loadtest`: Locust, headless, in a subprocess, against the stack's edge.

Never imports locust (its gevent monkey-patching breaks asyncio and threads in the importing
process): Locust runs as `python -m locust` and reports through its exit code, its HTML and CSV
reports, and a JSON summary written by the locustfile's quitting listener. If no stack is
running from --dir, one is started for the run and stopped after it, whatever happens (a
failure, Ctrl-C).

At the end, `sagalab verify` runs over the sagas the run created (after waiting, bounded, for
those still running): a run whose sagas are not each done or undone by the services' own
ledgers fails, whatever its latencies (`--no-verify` skips it).

Every option is checked before anything starts. Exit codes: 0 the run passed its thresholds
(and verify found nothing), 1 it did not (or Locust or the stack failed, or verify found
something), 2 bad input (an option out of range, an unknown profile, a missing locustfile),
5 a path that cannot be used (the reports directory, the stack directory or database of a stack
started for the run), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sagalab.cli import render
from sagalab.cli.options import open_store
from sagalab.cli.signals import sigterm_raises
from sagalab.cli.verify import resolve_reader
from sagalab.edge.errors import EdgeError
from sagalab.edge.keys import open_key_store
from sagalab.loadtests.thresholds import PROFILES, Profile
from sagalab.orchestrator.errors import SagaError, ServiceConfigError
from sagalab.orchestrator.ledgers import verify_store
from sagalab.orchestrator.limits import (
    LOAD_PROCESSES_WHY,
    MAX_LOAD_DURATION,
    MAX_LOAD_PROCESSES,
    MAX_LOAD_USERS,
    MAX_SPAWN_RATE,
    MAX_STACK_WORKERS,
    REPLICAS_WHY,
    LimitError,
)
from sagalab.orchestrator.limits import check as within
from sagalab.orchestrator.reconcile import FindingKind, Reconciliation
from sagalab.stack import children
from sagalab.stack.checks import (
    StackEnvironmentError,
    StackOptionError,
    probe_directory,
    validate,
)
from sagalab.stack.processes import StackConfig, StackState, check, load_state, stop
from sagalab.stack.supervisor import launch

EXIT_FAILED, EXIT_USAGE, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 1, 2, 5, 130
#: A locustfile bigger than this is not one to load (read at most this much to check it).
MAX_LOCUSTFILE_BYTES = 1_000_000

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _running(directory: Path) -> bool:
    try:
        state = load_state(directory.resolve())
    except EdgeError:
        return False
    return all(check(c) == "up" for c in state.components if c.kind in ("edge", "api"))


def _summary(summary: dict[str, Any], code: int) -> None:
    m, t = summary["measured"], summary["thresholds"]
    table = Table("measure", "value", "threshold", title="sagalab load test")
    table.add_row("legit requests", f"{m['legit_requests']:.0f}", "")
    table.add_row("legit requests/s", f"{m['legit_rps']:.1f}", "")
    table.add_row(
        "legit failure ratio", f"{m['legit_failure_ratio']:.2%}", f"<= {t['max_failure_ratio']:.2%}"
    )
    table.add_row("legit p95", f"{m['legit_p95_ms']:.0f} ms", f"<= {t['max_p95_ms']:.0f} ms")
    table.add_row("sagas followed", f"{m['sagas_submitted']:.0f}", "")
    table.add_row(
        "reached terminal state", f"{m['terminal_share']:.1%}", f">= {t['min_terminal_share']:.0%}"
    )
    table.add_row("saga p50 submit-to-end", f"{m['saga_p50_ms']:.0f} ms", "")
    table.add_row(
        "flood requests (blocked)",
        f"{m['flood_requests']:.0f} ({m['flood_requests'] - m['flood_not_blocked']:.0f})",
        "all blocked",
    )
    table.add_row(
        "over-the-rate requests (429)",
        f"{m['ratelimit_requests']:.0f} ({m['ratelimit_429']:.0f})",
        "some 429, no error",
    )
    out.print(table)
    for line in summary["broken"]:
        out.print(f"[bold red]threshold broken:[/] {line}")
    verdict = "[green]PASSED[/]" if code == 0 else f"[bold red]FAILED[/] (locust exit code {code})"
    out.print(verdict)


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def _check_locustfile(script: Path) -> None:
    """Refuse, before any stack starts, a locustfile Locust would not load."""
    # Locust imports only `*.py` files ("Could not find ..." after the stack was up).
    if script.suffix != ".py":
        raise _fail(f"locustfile {script} is not a Python file (*.py)", EXIT_USAGE)
    try:
        with script.open("rb") as f:
            source = f.read(MAX_LOCUSTFILE_BYTES + 1)
        if len(source) > MAX_LOCUSTFILE_BYTES:
            raise _fail(f"locustfile {script} is over {MAX_LOCUSTFILE_BYTES:,} bytes", EXIT_USAGE)
        compile(source, str(script), "exec")
    except OSError as exc:
        raise _fail(f"cannot read locustfile {script}: {exc.strerror}", EXIT_USAGE) from None
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes in the source
        raise _fail(f"locustfile {script} is not valid Python: {exc}", EXIT_USAGE) from None


def _writable_dir(path: Path, what: str) -> None:
    """`path` exists or can be created, and can be written to; else exit 5. Creates nothing:
    the run creates it once every other check has passed."""
    try:
        probe_directory(path)
    except OSError as exc:
        raise _fail(
            f"cannot write the {what} in {path}: {exc.strerror or exc}", EXIT_ENVIRONMENT
        ) from None


def _check_options(
    users: int, spawn_rate: float, seconds: float, processes: int, workers: int
) -> None:
    try:
        within("--users", users, low=1, high=MAX_LOAD_USERS)
        within("--spawn-rate", spawn_rate, low=0.1, high=MAX_SPAWN_RATE, why="users started per s")
        within("--duration", seconds, low=1, high=MAX_LOAD_DURATION, why="seconds")
        within("--processes", processes, low=1, high=MAX_LOAD_PROCESSES, why=LOAD_PROCESSES_WHY)
        within("--workers", workers, low=1, high=MAX_STACK_WORKERS, why=REPLICAS_WHY)
    except LimitError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


def loadtest(
    users: Annotated[
        int | None,
        typer.Option(help=f"Users (default: profile's; 1 to {MAX_LOAD_USERS})."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(help=f"Seconds (default: profile's; at most {MAX_LOAD_DURATION:g})."),
    ] = None,
    spawn_rate: Annotated[
        float | None,
        typer.Option(
            help=f"Users started per second (default: profile's; at most {MAX_SPAWN_RATE:g})."
        ),
    ] = None,
    profile: Annotated[str, typer.Option(help=f"One of: {', '.join(PROFILES)}.")] = "default",
    processes: Annotated[
        int,
        typer.Option(
            help=f"Locust processes (distributed mode if > 1; at most {MAX_LOAD_PROCESSES})."
        ),
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(help=f"Workers of a stack started for the run (1 to {MAX_STACK_WORKERS})."),
    ] = 2,
    locustfile: Annotated[
        Path | None,
        typer.Option(help="Locust file (default: the shipped loadtests/locustfile.py)."),
    ] = None,
    reports: Annotated[Path, typer.Option(help="Directory for the HTML and CSV reports.")] = Path(
        "reports/loadtest"
    ),
    db: Annotated[
        Path | None, typer.Option(help="Saga database of a stack started for the run.")
    ] = None,
    directory: Annotated[
        Path, typer.Option("--dir", envvar="SAGALAB_STACK_DIR", help="Stack directory.")
    ] = Path(".sagalab"),
    verify: Annotated[
        bool,
        typer.Option(
            help="At the end, check every saga of the run done or undone against the "
            "services' ledgers (`sagalab verify`); findings fail the run."
        ),
    ] = True,
) -> None:
    """Run the Locust load test against the stack (started if needed); exit with Locust's code.

    Exit codes: 0 passed, 1 thresholds broken or a failure, 2 bad input, 5 a path that cannot
    be used, 130 interrupted. A stack started for the run is always stopped.
    """
    if profile not in PROFILES:
        raise _fail(f"no profile {profile!r}; one of: {', '.join(PROFILES)}", EXIT_USAGE)
    shape = PROFILES[profile]
    n_users = users if users is not None else shape.users
    rate = spawn_rate if spawn_rate is not None else shape.spawn_rate
    seconds = duration if duration is not None else shape.duration
    _check_options(n_users, rate, seconds, processes, workers)
    script = locustfile or Path(str(resources.files("sagalab.loadtests") / "locustfile.py"))
    if not script.is_file():
        raise _fail(f"no locustfile at {script}", EXIT_USAGE)
    _check_locustfile(script)
    _writable_dir(reports, "load-test reports")
    own_stack = not _running(directory)
    config = StackConfig(directory=directory, db=db, workers=workers, edge_port=0)
    if own_stack:
        try:
            validate(config)
        except StackOptionError as exc:
            raise _fail(str(exc), EXIT_USAGE) from None
        except StackEnvironmentError as exc:
            raise _fail(str(exc), EXIT_ENVIRONMENT) from None
    # SIGTERM (`timeout`, a CI job's cancel) stops the run as Ctrl-C does: the stack this
    # run started, and Locust, are stopped on the way out instead of left running.
    with sigterm_raises():
        try:
            reports.mkdir(parents=True, exist_ok=True)  # checked above: refusals created nothing
            if own_stack:
                err.print(f"no stack running from {directory}: starting one for this run")
                launch(config)
            started = time.time()
            code = _run(
                load_state(directory.resolve()),
                script,
                shape,
                profile,
                n_users,
                rate,
                seconds,
                processes,
                reports,
            )
            if verify and code in (0, 1):
                found = _verify_run(directory, since=started, settle=shape.follow_timeout + 30)
                code = code or found
        except EdgeError as exc:
            raise _fail(str(exc), EXIT_FAILED) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            code = EXIT_INTERRUPTED
        finally:
            if own_stack:
                try:
                    stopped = stop(directory)
                    err.print(
                        f"stopped the stack started for this run ({len(stopped)} process(es))"
                    )
                except EdgeError:
                    pass  # it never started: nothing to stop
    raise typer.Exit(code)


def _run(
    state: StackState,
    script: Path,
    shape: Profile,
    profile: str,
    n_users: int,
    rate: float,
    seconds: float,
    processes: int,
    reports: Path,
) -> int:
    """Run Locust against the stack; its exit code (1 if no summary came back)."""
    keys = open_key_store(state.keys_db)
    # Each run renews its keys (an earlier run's are revoked): one active key per name.
    _, key = keys.create("loadtest", rate=10_000, burst=10_000, replace=True)
    _, limited = keys.create("loadtest-limited", rate=2, burst=4, replace=True)
    keys.close()
    summary_path = reports / "summary.json"
    summary_path.unlink(missing_ok=True)
    stop_timeout = int(shape.follow_timeout + 5)
    command = [
        sys.executable, "-m", "locust", "-f", str(script), "--headless", "--only-summary",
        "--host", state.edge_url, "-u", str(n_users), "-r", f"{rate:g}",
        "-t", f"{int(seconds)}s", "--stop-timeout", str(stop_timeout),
        "--csv", str(reports / "loadtest"), "--html", str(reports / "loadtest.html"),
        "--loglevel", "WARNING",
    ]  # fmt: skip
    if processes > 1:
        command += ["--processes", str(processes), "--master-bind-host", "127.0.0.1"]
    env = {
        **os.environ,
        "SAGALAB_LOADTEST_KEY": key,
        "SAGALAB_LOADTEST_LIMITED_KEY": limited,
        "SAGALAB_LOADTEST_PROFILE": profile,
        "SAGALAB_LOADTEST_SUMMARY": str(summary_path.resolve()),
    }
    err.print(f"locust: {n_users} users for {seconds:g}s against {state.edge_url} ({profile})")
    started = time.monotonic()
    try:
        # On Ctrl-C or SIGTERM, Locust is killed before the KeyboardInterrupt goes on, also
        # when it comes while Locust is starting (subprocess.run would leave it running,
        # holding this command's stderr: stack/children.py).
        code = children.run(command, env=env, timeout=seconds + stop_timeout + 120)
    except subprocess.TimeoutExpired:
        err.print("[bold red]error:[/] locust did not finish in time; killed")
        code = 1
    err.print(f"ran {time.monotonic() - started:.0f}s; reports in {reports}/")
    try:
        _summary(json.loads(summary_path.read_text()), code)
    except (OSError, ValueError, KeyError):
        err.print("[bold red]no summary[/]: locust did not reach its quitting listener")
        code = code or 1
    return code


def _verify_run(directory: Path, *, since: float, settle: float) -> int:
    """`sagalab verify` over the sagas created since `since`: 0 when each is done or undone,
    1 otherwise. Sagas still running get up to `settle` seconds to end first."""
    err.print("verify: reconciling the run's sagas with the services' ledgers")
    try:
        reader = resolve_reader([], directory.resolve())
        store = open_store(Path(load_state(directory.resolve()).db), read_only=True)
    except (EdgeError, SagaError, ServiceConfigError) as exc:
        err.print(f"[bold red]verify:[/] {exc}")
        return EXIT_FAILED
    deadline = time.monotonic() + settle
    try:
        while True:
            result = verify_store(store, reader, since=since)
            if not _still_running(result) or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    except (SagaError, ServiceConfigError) as exc:
        err.print(f"[bold red]verify:[/] {exc}")
        return EXIT_FAILED
    finally:
        store.close()
        reader.close()
    if result.consistent:
        err.print(render.verdict_line(result))
        return 0
    render.reconciliation(result)
    return EXIT_FAILED


def _still_running(result: Reconciliation) -> bool:
    """Some findings may only say a saga has not ended yet: worth waiting for."""
    return any(f.kind is FindingKind.NOT_TERMINAL for f in result.findings)
