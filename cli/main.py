"""The `sagalab` command: thin Typer shells over the orchestrator, services and simulator.

Start-up is lazy: `main()` builds the top-level group from `COMMANDS` and imports a command's
module only when that command runs, so `sagalab orchestrate status ID` does not pay for
importing the simulator, the fake services (FastAPI), uvicorn or Locust. `app`, the whole
Typer application with every command loaded, is built on first access (tests drive it with
typer's CliRunner); tests/test_cli_startup.py checks both list the same commands and texts.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer import _click

NAME = "sagalab"
HELP = "Run, inspect and simulate saga flows across services that fail."


@dataclass(frozen=True)
class Entry:
    """A top-level command: where it lives, and the one-paragraph help `--help` lists."""

    module: str  # under sagalab.cli
    attribute: str  # a typer.Typer (a group) or a command function
    summary: str  # the first paragraph of its help, as the loaded command has it


# In the order `sagalab --help` lists them (typer's: commands, then groups).
# Each summary is a copy of its command's help (a function's docstring, a group's `help=`),
# kept here so that `--help` imports no command module; tests/test_cli_startup.py holds each
# to the loaded command's text. Not made one source (weighed in session 22): reading it from
# the module means importing it (what start-up avoids), or parsing twelve modules' source on
# every `--help` (~20 ms CPU, +10 %); moving the texts here would serve the seven groups but
# not the five commands whose help is their docstring (worker's and loadtest's say more).
COMMANDS: dict[str, Entry] = {
    "demo": Entry(
        "demo",
        "demo",
        "Show completion, rollback, crash-resume and a breaker opening, against local services.",
    ),
    "worker": Entry(
        "worker",
        "worker",
        "Take queued sagas and run them; resume sagas whose worker died once its lease expires.",
    ),
    "loadtest": Entry(
        "loadtest",
        "loadtest",
        "Run the Locust load test against the stack (started if needed); exit with Locust's code.",
    ),
    "verify": Entry(
        "verify",
        "verify",
        "Reconcile every saga's journal with the services' ledgers: exit 0 when each is done "
        "or\nundone, 1 with every finding otherwise.",
    ),
    "ui": Entry(
        "ui",
        "ui",
        "Serve the web console: sagas, per-saga timelines, breakers and queue, simulation\n"
        "reports. It prints its URL, then serves until Ctrl-C.",
    ),
    "orchestrate": Entry(
        "orchestrate",
        "app",
        "Run sagas and operate on them. Exit codes: 0 done as asked, 1 the saga rolled back "
        "or failed, 2 bad input, 3 unknown saga id, 4 action refused, 5 database or config "
        "error. Bulk actions (filters instead of an id): 0 acted, 1 some saga failed, 3 no "
        "saga matches, 4 none could be acted on.",
    ),
    "services": Entry(
        "services",
        "app",
        "Run the fake external services (inventory, payments, shipping, notifications) and "
        "inject faults into them.",
    ),
    "simulate": Entry(
        "simulate", "app", "Simulate the whole path (firewall to services) under failure scenarios."
    ),
    "breakers": Entry(
        "breakers", "app", "Show and reset the per-service circuit breakers shared by all workers."
    ),
    "stack": Entry("stack", "app", "Start, inspect, break and stop the local stack."),
    "keys": Entry("keys", "app", "Create, list and revoke gateway API keys."),
    "db": Entry(
        "db",
        "app",
        "Copy saga databases between SQLite and PostgreSQL; run a lab PostgreSQL server.",
    ),
}


def _typer_app() -> typer.Typer:
    """The top-level Typer application, without its commands."""
    return typer.Typer(
        name=NAME,
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )


def load(name: str) -> _click.Command:
    """The command `name` of `COMMANDS`, its module imported now."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(f"sagalab.cli.{entry.module}"), entry.attribute)
    holder = _typer_app()
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_group(holder).commands[name]


class _Deferred(TyperGroup):
    """Stands for a command of `COMMANDS` until it runs: `--help` lists its name and summary,
    and parsing its arguments loads the real command, whose context then runs it. A group
    class so that no option or argument of its own is ever parsed."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: _click.Context | None = None,
        **extra: Any,
    ) -> _click.Context:
        return load(self.name or "").make_context(info_name, args, parent=parent, **extra)


def lazy_command() -> TyperGroup:
    """The `sagalab` group with every command of `COMMANDS` deferred (what `main` runs)."""
    group = typer.main.get_group(_typer_app())
    group.commands = {name: _Deferred(name=name, help=e.summary) for name, e in COMMANDS.items()}
    return group


def __getattr__(name: str) -> Any:
    """`app`: the whole Typer application, every command loaded (built on first use)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    full = _typer_app()
    for command, entry in COMMANDS.items():
        module = importlib.import_module(f"sagalab.cli.{entry.module}")
        target = getattr(module, entry.attribute)
        if isinstance(target, typer.Typer):
            full.add_typer(target, name=command)
        else:
            full.command(command)(target)
    globals()["app"] = full
    return full


if TYPE_CHECKING:
    app: typer.Typer


def main() -> None:
    """Console-script entry point."""
    _refuse_undecodable_arguments(sys.argv[1:])
    try:
        lazy_command()()
    except RuntimeError as exc:
        # pathlib (Python 3.11) raises this for a path whose symbolic links lead back to
        # themselves (a --dir, a --db): a path that cannot be used, not a bug to trace.
        if not str(exc).startswith("Symlink loop"):
            raise
        from sagalab.cli.errors import EXIT_ENVIRONMENT, fail  # (not at start-up: `--help`)

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
            from sagalab.cli.errors import EXIT_USAGE, fail  # (not at start-up: `--help`)

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
