"""`sagalab stack`: the whole path as real processes on 127.0.0.1.

Thin shell over `stack.processes` and `stack.supervisor`. Exit codes: 0 ok, 1 the stack
cannot be started or found (or, for `status`, a component or the stack's database is not up),
2 bad usage (an option out of range, an unknown component, `--postgres` with `--db`), 4 `kill`
or `restart` of the stack's own database (refused), 5 the directory, database, read database,
services file or port cannot be used, or `--postgres` finds no PostgreSQL server binaries.
`up` checks every option before it starts anything.
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sagalab.cli.options import DEFAULT_STACK_DIR, DbPath, ReadDbOption, StackDirOption
from sagalab.edge.errors import EdgeError
from sagalab.edge.policies.balancer import Strategy
from sagalab.orchestrator.limits import (
    MAX_CONCURRENCY,
    MAX_FLOOD_RATE,
    MAX_GATEWAYS,
    MAX_STACK_WORKERS,
)
from sagalab.orchestrator.stores import shown, typed
from sagalab.stack.checks import StackEnvironmentError, StackOptionError, validate
from sagalab.stack.processes import (
    BLOCKED_RANGE,
    StackConfig,
    StackState,
    alive,
    check,
    kill,
    load_state,
    status,
    stop,
    supervised,
)
from sagalab.stack.supervisor import (
    MAX_RESTART_DELAY,
    MIN_RESTART_DELAY,
    STABLE_AFTER,
    launch,
    request_restart,
)

app = typer.Typer(help="Start, inspect, break and stop the local stack.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DirOption = StackDirOption
JsonOpt = Annotated[bool, typer.Option("--json", help="Print pure JSON on stdout.")]
DEFAULT_DIR = DEFAULT_STACK_DIR


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _code(exc: EdgeError) -> int:
    """The documented exit code for an edge error."""
    if isinstance(exc, StackOptionError):
        return 2
    if isinstance(exc, StackEnvironmentError):
        return 5
    return 1


def _show_endpoints(state: StackState) -> None:
    out.print(f"[bold]edge[/]      {state.edge_url}   (firewall + load balancer)")
    if state.ui_url:
        mode = "actions allowed" if _ui_actions(state) else "read-only"
        out.print(f"[bold]console[/]   {state.ui_url}   (open it in a browser; {mode})")
    for c in state.components:
        if c.kind not in ("edge", "ui"):
            out.print(f"  {c.name:<10} {c.url or '-':<26} pid {c.pid}")
    if state.database is not None:
        out.print(
            f"[bold]database[/]  {shown(state.db)}   (postgres pid {state.database.pid}, "
            "stopped with the stack)"
        )
    if state.read_db is not None:
        out.print(f"[bold]reads[/]     {shown(state.read_db)}   (the API's GETs)")
    out.print(f"[bold]API key[/]   {state.api_key}")
    out.print(
        f"try:  curl -s -X POST {state.edge_url}/v1/sagas -H 'Authorization: Bearer "
        f"{state.api_key}' -H 'Content-Type: application/json' -d '{{\"flow\": \"checkout\", "
        '"input": {"order_id": "o-1", "customer_id": "c-1", "sku": "sku-1", "quantity": 1, '
        '"amount": 10}}\''
    )
    # Quoted for the shell: these lines are pasted, and a directory may hold a space.
    reads = f" --read-db {shlex.quote(shown(state.read_db))}" if state.read_db else ""
    db = shlex.quote(shown(state.db))
    out.print(f"then: sagalab orchestrate list --db {db}{reads}   (the stack's sagas)")
    where = Path(state.directory).resolve()
    # From another directory, `services` finds this stack only through SAGALAB_STACK_DIR.
    prefix = (
        ""
        if where == DEFAULT_STACK_DIR.resolve()
        else f"SAGALAB_STACK_DIR={shlex.quote(str(where))} "
    )
    out.print(
        f"      {prefix}sagalab services fault payments --error-rate 1   (the stack's services)"
    )


def _ui_actions(state: StackState) -> bool:
    return any(c.kind == "ui" and "--allow-actions" in c.command for c in state.components)


@app.command()
def up(
    gateways: Annotated[
        int, typer.Option(help=f"Gateway instances (1 to {MAX_GATEWAYS} on this machine).")
    ] = 2,
    workers: Annotated[
        int, typer.Option(help=f"Worker processes (0: none; at most {MAX_STACK_WORKERS}).")
    ] = 1,
    concurrency: Annotated[
        int, typer.Option(help=f"Sagas at once per worker (1 to {MAX_CONCURRENCY}).")
    ] = 8,
    services: Annotated[
        bool, typer.Option("--services/--no-services", help="Start the fake services.")
    ] = True,
    port: Annotated[int, typer.Option(help="Edge port (0: any free port).")] = 8800,
    strategy: Annotated[
        str,
        typer.Option(help=f"Gateway choice: {', '.join(s.value for s in Strategy)}."),
    ] = "least_connections",
    deny: Annotated[
        list[str] | None, typer.Option(help=f"Denied address or CIDR (default {BLOCKED_RANGE}).")
    ] = None,
    flood_rate: Annotated[
        float,
        typer.Option(
            help="Requests/s per client address before it is blocked (0: no flood "
            f"protection; at most {MAX_FLOOD_RATE:g})."
        ),
    ] = 200.0,
    db: Annotated[
        Path | None,
        typer.Option(
            parser=DbPath.parse,
            help="Saga database: a SQLite path or a postgresql:// URL (default: in --dir).",
        ),
    ] = None,
    postgres: Annotated[
        bool,
        typer.Option(
            "--postgres",
            help="Start a throwaway PostgreSQL server in --dir (the machine's initdb and "
            "pg_ctl) as the saga database; stopped with the stack. Not with --db.",
        ),
    ] = False,
    read_db: ReadDbOption = None,
    restart_delay: Annotated[
        float,
        typer.Option(
            help="Seconds before a component that died is started again "
            f"({MIN_RESTART_DELAY:g} to {MAX_RESTART_DELAY:g}); doubles while it keeps dying "
            f"within {STABLE_AFTER:g}s of a start, up to {MAX_RESTART_DELAY:g}s.",
        ),
    ] = 0.5,
    trace_file: Annotated[
        Path | None,
        typer.Option(
            "--trace-file",
            help="Every component (edge, gateways, API, workers) appends its OpenTelemetry "
            "spans to this file, one JSON object per line.",
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start, print and return; `down` stops it.")
    ] = False,
    ui: Annotated[
        bool,
        typer.Option(
            "--ui/--no-ui", help="Serve the web console (`sagalab ui`) on 127.0.0.1 as `ui`."
        ),
    ] = True,
    ui_port: Annotated[int, typer.Option(help="The console's port (0: any free port).")] = 0,
    ui_actions: Annotated[
        bool,
        typer.Option(
            "--ui-actions",
            help="The console shows operator buttons (its --allow-actions); off: read-only.",
        ),
    ] = False,
    directory: DirOption = DEFAULT_DIR,
    as_json: JsonOpt = False,
) -> None:
    """Start the edge, gateways, orchestrator API, workers and fake services on 127.0.0.1.

    A supervisor process starts them and restarts any that dies (with backoff); `status`
    shows the restarts, `restart NAME` restarts one, `down` stops everything.
    """
    config = StackConfig(
        directory=directory,
        db=typed(db) if db is not None else None,
        postgres=postgres,
        read_db=typed(read_db) if read_db is not None else None,
        gateways=gateways,
        workers=workers,
        concurrency=concurrency,
        services=services,
        edge_port=port,
        strategy=strategy,
        deny=list(deny) if deny else [BLOCKED_RANGE],
        flood_rate=flood_rate,
        restart_delay=restart_delay,
        ui=ui,
        ui_port=ui_port,
        ui_actions=ui_actions,
        trace_file=str(trace_file.resolve()) if trace_file is not None else None,
    )
    try:
        validate(config)
        state = launch(config, on_progress=lambda m: err.print(f"[dim]{m}[/]"))
    except EdgeError as exc:
        raise _fail(str(exc), _code(exc)) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "edge_url": state.edge_url,
                    "ui_url": state.ui_url,
                    "api_key": state.api_key,
                    "directory": state.directory,
                    "db": shown(state.db),
                    "read_db": shown(state.read_db) if state.read_db else None,
                    "components": [c.name for c in state.components],
                }
            )
        )
    else:
        _show_endpoints(state)
    if detach:
        err.print(f"detached; `sagalab stack down --dir {shlex.quote(str(directory))}` stops it")
        return
    # A flag, not `signals.sigterm_raises`: a raise could land inside the `finally`'s
    # `stop(directory)` and leave components running; the flag also tells a requested stop
    # from a supervisor that died.
    stopping = False

    def on_term(_s: int, _f: object) -> None:
        nonlocal stopping
        stopping = True

    # Before the line that says the stack is up: whoever waits for it may SIGTERM at once.
    signal.signal(signal.SIGTERM, on_term)
    err.print("press Ctrl-C to stop the stack")
    try:
        while not stopping and supervised(state):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        lost = not stopping and not supervised(state)
        stopped = stop(directory)
        err.print(f"stopped {len(stopped)} process(es)")
    if lost:
        raise _fail("the stack supervisor died; everything it started has been stopped")


@app.command("status")
def status_(directory: DirOption = DEFAULT_DIR, as_json: JsonOpt = False) -> None:
    """Each component's process, health, restarts and why it last stopped (exit 1 if one is not
    up, or the supervisor that restarts them is not running)."""
    try:
        state, rows = status(directory)
    except EdgeError as exc:
        raise _fail(str(exc)) from None
    sup = state.supervisor
    supervisor = {
        "pid": sup.pid if sup else None,
        "status": "up" if supervised(state) else "down",
        "log": sup.log if sup else None,
    }
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "edge_url": state.edge_url,
                    "ui_url": state.ui_url,
                    "db": shown(state.db),
                    "read_db": shown(state.read_db) if state.read_db else None,
                    "supervisor": supervisor,
                    "components": rows,
                },
                indent=2,
            )
        )
    else:
        # The url column never shrinks: a truncated worker metrics URL is useless to copy.
        widest = max((len(r["url"] or "-") for r in rows), default=3)
        table = Table("component", "pid", "status", "restarts", "last exit")
        table.add_column("url", no_wrap=True, min_width=widest)
        for r in rows:
            style = "green" if r["status"] == "up" else "bold red"
            table.add_row(
                r["name"],
                str(r["pid"]),
                f"[{style}]{r['status']}[/]",
                str(r["restarts"]),
                r["last_exit"] or "-",
                r["url"] or "-",
            )
        out.print(f"edge {state.edge_url}")
        if state.ui_url:
            out.print(f"console {state.ui_url}")
        out.print(f"database {shown(state.db)}")
        if state.read_db:
            out.print(f"reads from {shown(state.read_db)}")
        out.print(f"supervisor pid {supervisor['pid']}: {supervisor['status']}")
        out.print(table)
    if supervisor["status"] != "up" or any(r["status"] != "up" for r in rows):
        raise typer.Exit(1)


@app.command()
def down(directory: DirOption = DEFAULT_DIR) -> None:
    """Stop every process of the stack (SIGTERM, then SIGKILL)."""
    try:
        stopped = stop(directory)
    except EdgeError as exc:
        raise _fail(str(exc)) from None
    err.print(f"stopped {len(stopped)} process(es): {', '.join(stopped) or 'none was running'}")


@app.command("kill")
def kill_(
    component: Annotated[str, typer.Argument(help="e.g. gateway-1, api, worker-1, edge.")],
    term: Annotated[bool, typer.Option("--term", help="SIGTERM instead of SIGKILL.")] = False,
    directory: DirOption = DEFAULT_DIR,
) -> None:
    """Kill one component on purpose (SIGKILL unless --term); the supervisor restarts it."""
    _known(directory, component)
    try:
        c = kill(directory, component, signal.SIGTERM if term else signal.SIGKILL)
    except EdgeError as exc:
        raise _fail(str(exc)) from None
    err.print(f"sent {'SIGTERM' if term else 'SIGKILL'} to {c.name} (pid {c.pid})")


def _known(directory: Path, name: str) -> StackState:
    """The stack's state, if it has a component `name` (exit 1: no stack; 2: no such name;
    4: the stack's own database, which is neither killed nor restarted on its own)."""
    try:
        state = load_state(directory.resolve())
    except EdgeError as exc:
        raise _fail(str(exc)) from None
    if state.database is not None and name == state.database.name:
        raise _fail(
            f"{name} is the stack's database: the supervisor does not restart it (its sagas "
            "live there), so it is not killed or restarted on its own; `sagalab stack down` "
            "stops it with the stack",
            4,
        )
    try:
        state.component(name)
    except EdgeError as exc:
        raise _fail(str(exc), 2) from None
    return state


@app.command()
def restart(
    component: Annotated[str, typer.Argument(help="e.g. gateway-1, api, worker-1, edge.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to be up.")] = 30.0,
    directory: DirOption = DEFAULT_DIR,
) -> None:
    """Restart one component (SIGTERM, then SIGKILL after 5 s) and wait until it is up."""
    state = _known(directory, component)
    before = state.component(component)
    try:
        request_restart(state, component)
    except EdgeError as exc:
        raise _fail(str(exc)) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = load_state(directory.resolve()).component(component)
        except EdgeError:
            c = before  # the supervisor is rewriting the file, or the stack is going down
        if c.pid != before.pid and alive(c) and check(c) == "up":
            err.print(f"restarted {component}: pid {before.pid} -> {c.pid}")
            return
        time.sleep(0.1)
    raise _fail(f"{component} was not up again within {timeout:g}s; see {before.log}")
