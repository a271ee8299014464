"""`sagalab loadtest`: Locust, headless, in a subprocess, against the stack's edge.

Never imports locust (its gevent monkey-patching breaks asyncio and threads in the importing
process): Locust runs as `python -m locust` and reports through its exit code, its HTML and CSV
reports, and a JSON summary written by the locustfile's quitting listener. If no stack is
running from --dir, one is started for the run and stopped after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edge.errors import EdgeError
from edge.keys import KeyStore
from edge.stack import StackConfig, check, load_state, start, stop
from loadtests.thresholds import PROFILES

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _running(directory: Path) -> bool:
    try:
        state = load_state(directory.resolve())
    except EdgeError:
        return False
    return all(check(c) == "up" for c in state.components if c.kind in ("edge", "api"))


def _summary(summary: dict, code: int) -> None:  # type: ignore[type-arg]
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


def loadtest(
    users: Annotated[
        int | None, typer.Option(min=1, max=2000, help="Users (default: profile's).")
    ] = None,
    duration: Annotated[float | None, typer.Option(min=1, max=3600, help="Seconds.")] = None,
    profile: Annotated[str, typer.Option(help=f"One of: {', '.join(PROFILES)}.")] = "default",
    processes: Annotated[
        int, typer.Option(min=1, max=64, help="Locust processes (distributed mode if > 1).")
    ] = 1,
    workers: Annotated[
        int, typer.Option(min=1, help="Workers of a stack started for the run.")
    ] = 2,
    reports: Annotated[Path, typer.Option(help="Directory for the HTML and CSV reports.")] = Path(
        "reports/loadtest"
    ),
    directory: Annotated[
        Path, typer.Option("--dir", envvar="SAGALAB_STACK_DIR", help="Stack directory.")
    ] = Path(".sagalab"),
) -> None:
    """Run the Locust load test against the stack (started if needed); exit with Locust's code."""
    if profile not in PROFILES:
        err.print(f"[bold red]error:[/] no profile {profile!r}; one of: {', '.join(PROFILES)}")
        raise typer.Exit(2)
    shape = PROFILES[profile]
    n_users = users or shape.users
    seconds = duration or shape.duration
    own_stack = not _running(directory)
    try:
        if own_stack:
            err.print(f"no stack running from {directory}: starting one for this run")
            start(StackConfig(directory=directory, workers=workers, edge_port=0))
        state = load_state(directory.resolve())
        keys = KeyStore(state.keys_db)
        _, key = keys.create("loadtest", rate=10_000, burst=10_000)
        _, limited = keys.create("loadtest-limited", rate=2, burst=4)
        keys.close()
    except EdgeError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    reports.mkdir(parents=True, exist_ok=True)
    summary_path = reports / "summary.json"
    summary_path.unlink(missing_ok=True)
    locustfile = str(resources.files("loadtests") / "locustfile.py")
    stop_timeout = int(shape.follow_timeout + 5)
    command = [
        sys.executable, "-m", "locust", "-f", locustfile, "--headless", "--only-summary",
        "--host", state.edge_url, "-u", str(n_users), "-r", str(shape.spawn_rate),
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
        code = subprocess.run(
            command, env=env, timeout=seconds + stop_timeout + 120, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        err.print("[bold red]error:[/] locust did not finish in time; killed")
        code = 1
    finally:
        if own_stack:
            stop(directory)
    err.print(f"ran {time.monotonic() - started:.0f}s; reports in {reports}/")
    try:
        _summary(json.loads(summary_path.read_text()), code)
    except (OSError, ValueError, KeyError):
        err.print("[bold red]no summary[/]: locust did not reach its quitting listener")
        code = code or 1
    raise typer.Exit(code)
