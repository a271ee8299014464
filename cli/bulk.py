"""Bulk mode of the operator verbs, and `sagalab orchestrate batch list|show|resume`.

`resume`, `rollback`, `retry-step`, `fork` and `cancel` take the filter options (cli/filters.py)
instead of a saga id: `run_bulk` shows how many sagas match and the first few, asks (or takes
`--yes`), records the batch (orchestrator/bulk.py), acts at `--rps` with a progress bar on
stderr, and ends with a summary (text, or `--json` on stdout).

Exit codes of a bulk action: 0 every matched saga was acted on (some may be skipped: the
summary says why); 1 some failed (an error, not a refusal); 2 bad input (id and filters
together, neither, a malformed filter, --rps out of range, no terminal for the question and
no --yes); 3 the filter matches no saga (nothing done); 4 none could be acted on (every one
refused, a breaker open...) or the question was answered no; 5 database or configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sagalab.cli import render
from sagalab.cli.errors import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE, fail, handled
from sagalab.cli.filters import FilterArgs
from sagalab.cli.options import DEFAULT_DB, DbOption, JsonOption, ServicesOption, open_store
from sagalab.orchestrator import operations
from sagalab.orchestrator.breaker_board import load_breaker_configs
from sagalab.orchestrator.bulk import (
    MAX_BATCH,
    MAX_RPS,
    BatchRunner,
    BreakerGate,
    BulkOptions,
    Summary,
    exit_code,
    start_batch,
    summarize,
)
from sagalab.orchestrator.flowfile import load_services
from sagalab.orchestrator.store import BatchRecord, Store
from sagalab.orchestrator.stores import open_breaker_store
from sagalab.orchestrator.views import saga_summary

__all__ = [
    "BULK_EXIT_HELP",
    "RpsOption",
    "RunnerFactory",
    "WaitBreakerOption",
    "WaitTimeoutOption",
    "YesOption",
    "batch_app",
    "bulk_mode",
    "run_bulk",
]

RunnerFactory = Callable[[Store, Path | None], operations.RunHere]

BULK_EXIT_HELP = (
    "With filters instead of an id it acts on every saga they match (at most "
    f"{MAX_BATCH}), after showing them and asking (--yes for scripts), at --rps, recorded "
    "as a batch (`orchestrate batch resume ID` after an interruption). Bulk exit codes: 0 "
    "acted (the summary lists any skipped), 1 some failed, 2 bad input, 3 no saga matches, "
    "4 none could be acted on (all refused) or the answer was no."
)
#: Sagas listed before the question.
PREVIEW = 5
#: Exit code after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
DEFAULT_RPS = 10.0
MAX_WAIT = 3600.0

YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Act without asking (bulk mode; for scripts).")
]
RpsOption = Annotated[
    float,
    typer.Option(
        "--rps", help=f"Bulk mode: sagas acted on per second (above 0, at most {MAX_RPS:g})."
    ),
]
WaitBreakerOption = Annotated[
    bool,
    typer.Option(
        "--wait-breaker",
        help="Bulk mode: a saga whose next call goes to a service whose breaker is open is "
        "skipped ('breaker open: SERVICE') unless this waits for the breaker (--wait-timeout).",
    ),
]
WaitTimeoutOption = Annotated[
    float,
    typer.Option("--wait-timeout", help="Seconds --wait-breaker waits per saga at most."),
]


def bulk_mode(saga_id: str | None, criteria: FilterArgs, *, other: str | None = None) -> bool:
    """True for bulk mode (filters, no id), False for one saga; exit 2 for both or neither.

    `other` names another way of choosing sagas the command has (resume's --stuck), given.
    """
    paging = criteria.limit is not None or criteria.after is not None
    if saga_id is not None and (criteria.given or paging or other):
        raise fail("give a saga id or filters (--status, --flow, ...), not both", EXIT_USAGE)
    if saga_id is not None:
        return False
    if other is not None:
        if criteria.given or paging:
            raise fail(f"{other} chooses the sagas itself: no filters with it", EXIT_USAGE)
        return False
    if not criteria.given:
        raise fail(
            "give a saga id, or filters (--status, --flow, --step, --error, --since, --until, "
            "--key, --input, --tenant) to act on every saga they match",
            EXIT_USAGE,
        )
    return True


def _check_rps(rps: float) -> None:
    if not 0 < rps <= MAX_RPS:
        raise fail(f"--rps must be above 0 and at most {MAX_RPS:g}, not {rps:g}", EXIT_USAGE)


def run_bulk(
    action: str,
    criteria: FilterArgs,
    options: BulkOptions,
    *,
    db: Path,
    services: Path | None,
    yes: bool,
    rps: float,
    as_json: bool,
    make_runner: RunnerFactory,
) -> None:
    """Match, preview, ask, record and act; raise typer.Exit with the batch's exit code."""
    _check_rps(rps)
    if options.wait_breaker is not None and not 0 < options.wait_breaker <= MAX_WAIT:
        raise fail(f"--wait-timeout must be above 0 and at most {MAX_WAIT:g}", EXIT_USAGE)
    wanted = criteria.to_filter(default_limit=None)
    if wanted.limit is None:
        wanted = replace(wanted, limit=MAX_BATCH + 1)
    with handled():
        load_services(services)  # a wrong file is exit 5 before anything is matched or done
        load_breaker_configs(services)
        store = open_store(db)
        try:
            records = store.find_sagas(wanted)
            if not records:
                if as_json:
                    render.print_json({"batch": None, "action": action, "matched": 0})
                raise fail(f"no saga matches the filter; nothing to {action}", EXIT_NOT_FOUND)
            if len(records) > MAX_BATCH:
                raise fail(
                    f"more than {MAX_BATCH} sagas match: narrow the filter, or page with "
                    "--limit and --after",
                    EXIT_USAGE,
                )
            _preview(action, [saga_summary(r) for r in records])
            _confirm(action, len(records), yes)
            batch = start_batch(store, action, wanted, options, [r.id for r in records])
            render.err.print(
                f"batch {batch.id}: {action} {len(records)} saga(s) at {rps:g}/s "
                f"(if it is interrupted: `sagalab orchestrate batch resume {batch.id}`)"
            )
            code = execute(store, db, batch, services, rps, as_json, make_runner)
        finally:
            store.close()
    raise typer.Exit(code)


def _preview(action: str, rows: list[dict[str, Any]]) -> None:
    render.err.print(f"{len(rows)} saga(s) match; {action} them:")
    render.saga_list(rows[:PREVIEW], console=render.err)  # stdout stays data
    if len(rows) > PREVIEW:
        render.err.print(f"... and {len(rows) - PREVIEW} more")


def _confirm(action: str, count: int, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise fail(
            f"{count} saga(s) match and there is no terminal to ask: pass --yes to {action} "
            "them without a question",
            EXIT_USAGE,
        )
    if not typer.confirm(f"{action} these {count} saga(s)?", default=False, err=True):
        render.err.print("nothing done")
        raise typer.Exit(EXIT_REFUSED)


def execute(
    store: Store,
    db: Path,
    batch: BatchRecord,
    services: Path | None,
    rps: float,
    as_json: bool,
    make_runner: RunnerFactory,
) -> int:
    """Act on the batch's sagas not done yet, with a progress bar; print the summary and
    return the exit code."""
    options = BulkOptions.from_dict(batch.options)
    states = open_breaker_store(db, readonly=True)
    try:
        gate = BreakerGate(states, load_breaker_configs(services), wait=options.wait_breaker)
        runner = BatchRunner(store, runner=make_runner(store, services), gate=gate, rps=rps)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=render.err, transient=False) as progress:
            task = progress.add_task(f"{batch.action} {batch.id}", total=len(batch.pending()))
            summary = runner.run(batch, on_item=lambda _item: progress.advance(task))
    except KeyboardInterrupt:
        render.err.print(
            f"interrupted: batch {batch.id} stopped; `sagalab orchestrate batch resume "
            f"{batch.id}` goes on with the sagas it has not finished"
        )
        return EXIT_INTERRUPTED
    finally:
        states.close()
    _print_summary(summary, as_json)
    return exit_code(summary)


def _print_summary(summary: Summary, as_json: bool) -> None:
    if as_json:
        render.print_json(summary.to_dict())
        return
    batch = summary.batch
    stream = render.err
    stream.print(
        f"{batch.action} batch {batch.id}: {len(summary.acted)} acted, "
        f"{len(summary.skipped)} skipped, {len(summary.failed)} failed "
        f"(of {len(batch.items)} matched)"
    )
    for label, items in (("skipped", summary.skipped), ("failed", summary.failed)):
        for item in items:
            stream.print(f"  {label} {item.saga_id}: {item.detail}", soft_wrap=True)


# --- orchestrate batch ... ---------------------------------------------------------------------

batch_app = typer.Typer(
    help="Bulk batches: list them, show one, resume one that was interrupted.",
    no_args_is_help=True,
)
BatchIdArg = Annotated[str, typer.Argument(help="Batch id, as printed when it started.")]
#: Filled in by cli/orchestrate.py (which owns how the CLI runs a saga here).
RUNNER: list[RunnerFactory] = []


@batch_app.command("list")
def batch_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    db: DbOption = DEFAULT_DB,
    as_json: JsonOption = False,
) -> None:
    """Recent batches, newest first, with their counts."""
    with handled():
        store = open_store(db, read_only=True)
        try:
            batches = [summarize(b).to_dict() for b in store.list_batches(limit=limit)]
        finally:
            store.close()
    if as_json:
        render.print_json([{k: v for k, v in b.items() if k != "sagas"} for b in batches])
        return
    if not batches:
        render.err.print("no batches")
    for b in batches:
        render.out.print(
            f"{b['batch']}  {b['action']:<10} matched {b['matched']}: {b['acted']} acted, "
            f"{b['skipped']} skipped, {b['failed']} failed, {b['pending']} pending"
        )


@batch_app.command("show")
def batch_show(
    batch_id: BatchIdArg, db: DbOption = DEFAULT_DB, as_json: JsonOption = False
) -> None:
    """One batch: its filter, options and every saga's outcome."""
    with handled():
        store = open_store(db, read_only=True)
        try:
            batch = store.load_batch(batch_id)
        finally:
            store.close()
    data = {**summarize(batch).to_dict(), "filter": batch.filter, "options": batch.options}
    if as_json:
        render.print_json(data)
        return
    _print_summary(summarize(batch), as_json=False)
    for item in batch.items:
        render.out.print(f"{item.saga_id}  {item.outcome or 'pending'}  {item.detail or ''}")


@batch_app.command("resume")
def batch_resume(
    batch_id: BatchIdArg,
    rps: RpsOption = DEFAULT_RPS,
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Go on with an interrupted batch: the sagas it has not finished, and only those (a saga
    it was acting on when it stopped is judged again, so none is acted on twice)."""
    _check_rps(rps)
    with handled():
        load_services(services)
        store = open_store(db)
        try:
            batch = store.load_batch(batch_id)
            left = len(batch.pending())
            render.err.print(f"batch {batch.id}: {batch.action}, {left} saga(s) left")
            code = execute(store, db, batch, services, rps, as_json, RUNNER[0])
        finally:
            store.close()
    raise typer.Exit(code)
