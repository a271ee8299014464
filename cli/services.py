"""`sagalab services`: run the fake external services and break them on purpose.

Thin shells over :mod:`fakeservices`: parse, call the library, render. With ``--json`` only
JSON goes to stdout; messages always go to stderr. Exit codes: 0 ok, 1 the services cannot be
reached or started, 2 a bad argument (unknown service, a value the services refuse).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sagalab.cli.options import DEFAULT_STACK_DIR
from sagalab.edge.errors import StackError
from sagalab.fakeservices import (
    DEFAULT_URL,
    SERVICE_NAMES,
    SERVICES_URL_ENV,
    AdminClient,
    AdminRequestRejected,
    FakeServicesError,
    PortInUseError,
    ServicesUnreachable,
    UnknownServiceError,
    get_service,
    run_in_thread,
)
from sagalab.stack.processes import load_state

app = typer.Typer(
    help="Run the fake external services (inventory, payments, shipping, notifications) "
    "and inject faults into them.",
    no_args_is_help=True,
)

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=SERVICES_URL_ENV,
        help=f"Base URL of the running fake services (default: those of the stack started "
        f"from this directory if one runs, else {DEFAULT_URL}).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print pure JSON on stdout.")]
ServiceArg = Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICE_NAMES)}.")]


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _services_url(url: str | None) -> str:
    """--url, else the fake services of a stack started from this directory, else the default."""
    if url:
        return url
    stack_dir = Path(os.environ.get("SAGALAB_STACK_DIR") or DEFAULT_STACK_DIR)
    try:
        state = load_state(stack_dir)
    except StackError:
        return DEFAULT_URL
    if not state.services_url:
        return DEFAULT_URL
    typer.echo(
        f"using the fake services of the stack in {stack_dir}/: {state.services_url}", err=True
    )
    return state.services_url


@contextmanager
def _admin(url: str | None) -> Iterator[AdminClient]:
    """An admin client whose errors become one line on stderr and an exit code."""
    try:
        with AdminClient(_services_url(url)) as client:
            yield client
    except UnknownServiceError as exc:
        raise _fail(str(exc), 2) from None
    except ServicesUnreachable as exc:
        raise _fail(str(exc), 1) from None
    except AdminRequestRejected as exc:
        raise _fail(
            f"the services refused the request: {exc}", 2 if exc.status < 500 else 1
        ) from None
    except FakeServicesError as exc:
        raise _fail(str(exc), 1) from None


def _check_service(name: str) -> None:
    try:
        get_service(name)
    except UnknownServiceError as exc:
        raise _fail(str(exc), 2) from None


# -- rendering ------------------------------------------------------------------------------


def _describe_fault(fault: dict[str, Any]) -> str:
    parts = []
    if fault["outage_seconds"] is not None:
        # The services answer (with Retry-After): unlike a refused connection, the simulator's
        # `kind: outage`, the caller cannot tell that nothing was applied.
        parts.append(
            f"unavailable {fault['outage_seconds']:g}s -> {fault['status']} with Retry-After"
        )
    elif fault["error_rate"] > 0:
        when = "after applying" if fault["after_apply"] else "before applying"
        parts.append(f"{fault['error_rate']:.0%} -> {fault['status']} {when}")
    if fault["latency_ms"]:
        parts.append(f"+{fault['latency_ms']} ms")
    state = "" if fault["active"] else " (expired)"
    what = ", ".join(parts) or "no effect"
    return f"{fault['id']} {fault['service']} {fault['endpoint']}: {what}{state}"


def _render_faults(faults: list[dict[str, Any]]) -> None:
    console = _stdout()
    if not faults:
        console.print("no faults")
    for fault in faults:
        console.print(escape(_describe_fault(fault)))


def _render_ledger(entries: list[dict[str, Any]]) -> None:
    console = _stdout()
    if not entries:
        console.print("the ledger is empty")
        return
    table = Table("seq", "service", "operation", "endpoint", "order", "key", "noop", "trace")
    for e in entries:
        trace = e["traceparent"] or ""
        # Show the trace id only: the rest of a traceparent is noise in a table.
        parts = trace.split("-")
        table.add_row(
            str(e["seq"]),
            e["service"],
            e["operation"],
            e["endpoint"],
            escape(e["order_id"]),
            escape(e["idempotency_key"]),
            "yes" if e["noop"] else "",
            parts[1] if len(parts) == 4 else escape(trace),
        )
    console.print(table)


# -- commands -------------------------------------------------------------------------------


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8700,
) -> None:
    """Serve the four fake services in the foreground until Ctrl-C."""
    try:
        running = run_in_thread(host, port)
    except PortInUseError as exc:
        raise _fail(str(exc), 1) from None
    except FakeServicesError as exc:
        raise _fail(str(exc), 1) from None
    console = _stdout()
    console.print(f"sagalab fake services on {running.base_url}")
    for name, url in running.services.items():
        console.print(f"  {name:<14} {url}")
    console.print("environment for the orchestrator:")
    for key, value in running.env.items():
        typer.echo(f"export {key}={value}")
    sys.stdout.flush()
    typer.echo("press Ctrl-C to stop", err=True)

    # A flag, not `signals.sigterm_raises`: a raise could land inside the `finally`'s
    # `running.stop()` and cut it short; the flag also tells a requested stop from a crash.
    stopping = False

    def on_sigterm(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        running.request_stop()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while not running.wait(0.5):
            pass
    except KeyboardInterrupt:
        stopping = True
    finally:
        running.stop()
        signal.signal(signal.SIGTERM, previous)
    if not stopping:
        raise _fail("the fake services stopped unexpectedly; see the log above", 1)
    typer.echo("stopped", err=True)


@app.command()
def fault(
    service: ServiceArg,
    endpoint: Annotated[
        str | None, typer.Option(help="'*' (all, the default) or one endpoint, e.g. /charges.")
    ] = None,
    error_rate: Annotated[
        float | None,
        typer.Option(help="Share of requests that fail, 0..1 (default 1, or 0 with a latency)."),
    ] = None,
    status: Annotated[int | None, typer.Option(help="Status of a failure (default 503).")] = None,
    latency_ms: Annotated[int | None, typer.Option(help="Delay added to each request.")] = None,
    unavailable: Annotated[
        float | None,
        typer.Option(
            help="Answer every request 503 with Retry-After for this many seconds (applying "
            "nothing, but a caller cannot know that: sagas compensate, no-op refunds follow). "
            "Not the simulator's `kind: outage`, a refused connection."
        ),
    ] = None,
    outage: Annotated[
        float | None, typer.Option(help="Old name of --unavailable.", hidden=True)
    ] = None,
    after_apply: Annotated[
        bool, typer.Option("--after-apply", help="Fail after applying: a lost response.")
    ] = False,
    clear: Annotated[
        bool,
        typer.Option("--clear", help="Clear this service's faults first (alone: only clear them)."),
    ] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Inject a fault into SERVICE, or clear its faults with --clear."""
    _check_service(service)
    # The services judge the ranges; a number JSON cannot carry never reaches them.
    if unavailable is not None and outage is not None:
        raise _fail("give --unavailable (or its old name --outage), not both", 2)
    seconds, named = (outage, "--outage") if outage is not None else (unavailable, "--unavailable")
    for flag, value in (("--error-rate", error_rate), (named, seconds)):
        if value is not None and not math.isfinite(value):
            raise _fail(f"{flag} {value} is not a finite number", 2)
    spec = {
        "endpoint": endpoint,
        "error_rate": error_rate,
        "status": status,
        "latency_ms": latency_ms,
        "outage_seconds": seconds,
        "after_apply": True if after_apply else None,
    }
    adding = not clear or any(v is not None for v in spec.values())
    result: dict[str, Any] = {}
    with _admin(url) as client:
        if clear:
            result["removed"] = client.clear_faults(service)
        if adding:
            result["fault"] = client.add_fault(service, **spec)
    if as_json:
        _print_json(result)
        return
    if clear:
        typer.echo(f"cleared {result['removed']} fault(s) on {service}", err=True)
    if adding:
        _stdout().print(escape("added " + _describe_fault(result["fault"])))


@app.command()
def faults(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List the faults in force."""
    with _admin(url) as client:
        listed = client.faults()
    if as_json:
        _print_json({"faults": listed})
    else:
        _render_faults(listed)


@app.command()
def ledger(
    service: Annotated[str | None, typer.Option(help="Only this service's entries.")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show every operation the services applied, in order."""
    if service is not None:
        _check_service(service)
    with _admin(url) as client:
        entries = client.ledger(service)
    if as_json:
        _print_json({"entries": entries})
    else:
        _render_ledger(entries)


@app.command()
def reset(url: UrlOpt = None) -> None:
    """Clear the ledger, the services' state and all faults."""
    url = _services_url(url)
    with _admin(url) as client:
        client.reset()
    typer.echo(f"reset the fake services at {url}: ledger, state and faults cleared", err=True)


if __name__ == "__main__":
    app()
