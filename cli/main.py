"""The `sagalab` command: thin Typer shells over the orchestrator, services and simulator."""

from __future__ import annotations

import sys

import typer

from sagalab.cli import (
    breakers,
    db,
    demo,
    keys,
    loadtest,
    orchestrate,
    services,
    simulate,
    stack,
    ui,
    verify,
    worker,
)
from sagalab.cli.errors import EXIT_ENVIRONMENT, EXIT_USAGE, fail

app = typer.Typer(
    name="sagalab",
    help="Run, inspect and simulate saga flows across services that fail.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(orchestrate.app, name="orchestrate")
app.add_typer(services.app, name="services")
app.add_typer(simulate.app, name="simulate")
app.add_typer(breakers.app, name="breakers")
app.command("demo")(demo.demo)
app.command("worker")(worker.worker)
app.add_typer(stack.app, name="stack")
app.add_typer(keys.app, name="keys")
app.command("loadtest")(loadtest.loadtest)
app.command("verify")(verify.verify)
app.add_typer(db.app, name="db")
app.command("ui")(ui.ui)


def main() -> None:
    """Console-script entry point."""
    _refuse_undecodable_arguments(sys.argv[1:])
    try:
        app()
    except RuntimeError as exc:
        # pathlib (Python 3.11) raises this for a path whose symbolic links lead back to
        # themselves (a --dir, a --db): a path that cannot be used, not a bug to trace.
        if not str(exc).startswith("Symlink loop"):
            raise
        raise SystemExit(
            fail(f"{exc}: a loop of symbolic links; pass another path", EXIT_ENVIRONMENT).exit_code
        ) from None


def _refuse_undecodable_arguments(args: list[str]) -> None:
    """Exit 2 (one line) for an argument that is not UTF-8 text.

    Python hands such bytes on as lone surrogates (`$'\\xff'` reads as "\\udcff"), which
    no database, JSON document or HTTP request can carry: found later, they were a traceback
    from the store (a `--reason`, an `--idempotency-key`, a `--db` path, a `list --error`)."""
    for number, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise SystemExit(
                fail(
                    f'argument {number} ("{shown}") is not UTF-8 text (byte {exc.start}): '
                    "sagalab takes UTF-8 arguments",
                    EXIT_USAGE,
                ).exit_code
            ) from None


if __name__ == "__main__":
    main()
