"""`sagalab ui`: the local web console (ui/) served on 127.0.0.1 until Ctrl-C or SIGTERM."""

from __future__ import annotations

import socket
import threading
import webbrowser
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from sagalab.cli.errors import EXIT_ENVIRONMENT, EXIT_USAGE, fail, handled
from sagalab.cli.options import DEFAULT_DB, DbOption, open_store
from sagalab.orchestrator.stores import shown, typed

#: The console has no login: it listens on the loopback interface only.
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), or exit 5 saying why."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise fail(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
            "(0: any free port)",
            EXIT_ENVIRONMENT,
        ) from None
    sock.listen(128)
    return sock


def ui(
    db: DbOption = DEFAULT_DB,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")
    ] = 8790,
    host: Annotated[
        str, typer.Option(help="Address to listen on: 127.0.0.1 (or localhost) only.")
    ] = "127.0.0.1",
    allow_actions: Annotated[
        bool,
        typer.Option(
            "--allow-actions",
            help="Show buttons for resume, rollback, retry-step, cancel and fork (off: "
            "read-only, every action refused with 403).",
        ),
    ] = False,
    open_browser: Annotated[
        bool, typer.Option("--open/--no-open", help="Open the console in a browser.")
    ] = False,
    trace_file: Annotated[
        Path | None,
        typer.Option(
            "--trace-file",
            help="The JSON-lines span file the processes write (--trace-file of worker, "
            "stack up...): each saga's trace id links to its span tree.",
        ),
    ] = None,
    trace_url: Annotated[
        str | None,
        typer.Option(
            "--trace-url",
            help="Link trace ids to a tracing UI too: an http(s) URL template with "
            "{trace_id}, e.g. http://127.0.0.1:16686/trace/{trace_id} (Jaeger).",
        ),
    ] = None,
    fd: Annotated[
        int | None,
        typer.Option(
            hidden=True, help="A listening socket passed by the parent (`stack up`), not --port."
        ),
    ] = None,
) -> None:
    """Serve the web console: sagas, per-saga timelines, breakers and queue, simulation
    reports. It prints its URL, then serves until Ctrl-C."""
    if host not in LOCAL_HOSTS:
        raise fail(
            f"--host {host}: the console has no login and listens on 127.0.0.1 only",
            EXIT_USAGE,
        )
    if trace_url is not None:
        from sagalab.ui.traces import TraceUrlError, check_trace_url

        try:
            check_trace_url(trace_url)
        except TraceUrlError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
    if trace_file is not None and trace_file.exists() and not trace_file.is_file():
        raise fail(f"--trace-file {trace_file} is not a file of spans", EXIT_USAGE)
    with handled():
        open_store(db, read_only=True).close()  # a saga database, or exit 5 before serving
    from sagalab.ui import create_app  # FastAPI's import cost only for this command

    app = create_app(
        typed(db) if isinstance(db, Path) else db,
        allow_actions=allow_actions,
        trace_file=trace_file.resolve() if trace_file is not None else None,
        trace_url=trace_url,
    )
    if fd is not None:  # `stack up` bound 127.0.0.1:PORT itself, as for its other components
        sock = socket.socket(fileno=fd)
        sock.listen(128)
    else:
        sock = _bind("127.0.0.1" if host == "localhost" else host, port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    mode = "actions allowed" if allow_actions else "read-only"
    typer.echo(f"sagalab console on {url} ({mode}) over {shown(db)}", err=False)
    typer.echo("press Ctrl-C to stop", err=True)
    if open_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
