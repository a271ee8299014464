"""The `sagalab` command: thin Typer shells over the orchestrator, services and simulator."""

from __future__ import annotations

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
    app()


if __name__ == "__main__":
    main()
