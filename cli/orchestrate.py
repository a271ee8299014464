"""`sagalab orchestrate ...`: start, follow, inspect, resume and roll back sagas."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from contextlib import ExitStack, closing
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from sagalab.cli import bulk, render
from sagalab.cli.bulk import (
    BULK_EXIT_HELP,
    DEFAULT_RPS,
    RpsOption,
    WaitBreakerOption,
    WaitTimeoutOption,
    YesOption,
    bulk_mode,
    run_bulk,
)
from sagalab.cli.errors import (
    EXIT_ENVIRONMENT,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SAGA_FAILED,
    EXIT_USAGE,
    fail,
    handled,
    parse_json_arg,
)
from sagalab.cli.filters import FilterArgs, filter_options
from sagalab.cli.options import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    ReadDbOption,
    SagaIdArg,
    ServicesOption,
    open_store,
    reads_from,
)
from sagalab.cli.signals import sigterm_raises
from sagalab.orchestrator import operations
from sagalab.orchestrator.breaker_board import BreakerBoard, load_breaker_configs
from sagalab.orchestrator.bulk import BulkOptions
from sagalab.orchestrator.errors import ConcurrentUpdate
from sagalab.orchestrator.executors import HttpExecutor
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.flowfile import check_services, load_flow, load_services
from sagalab.orchestrator.forkplan import ForkPlan
from sagalab.orchestrator.journal import entry_to_dict
from sagalab.orchestrator.jsonsafe import displayable
from sagalab.orchestrator.leases import DEFAULT_LEASE_SECONDS, LeaseKeeper, new_owner, owner_is_dead
from sagalab.orchestrator.runner import Checkpoint, RunResult, SagaRunner, start_saga
from sagalab.orchestrator.saga import Phase, SagaStatus
from sagalab.orchestrator.store import Lease, Store
from sagalab.orchestrator.tracing import OTLP_ENV, SagaTracer, TracingConfigError, setup_tracing
from sagalab.orchestrator.views import events_view, saga_summary, saga_view
from sagalab.orchestrator.watchdog import DatabaseWatchdog, WatchedStore

app = typer.Typer(
    help="Run sagas and operate on them. Exit codes: 0 done as asked, 1 the saga rolled back "
    "or failed, 2 bad input, 3 unknown saga id, 4 action refused, 5 database or config error. "
    "Bulk actions (filters instead of an id): 0 acted, 1 some saga failed, 3 no saga matches, "
    "4 none could be acted on.",
    no_args_is_help=True,
)

CrashAtOption = Annotated[
    str | None,
    typer.Option(
        "--crash-at",
        hidden=True,
        help="STEP:before-call|after-call: SIGKILL this process there (demos and crash tests).",
    ),
]


def _crash_checkpoint(spec: str | None) -> Checkpoint | None:
    if spec is None:
        return None
    step, _, point = spec.partition(":")
    if point not in ("before-call", "after-call"):
        raise fail("--crash-at takes STEP:before-call or STEP:after-call", EXIT_USAGE)

    def checkpoint(at: str, name: str, phase: Phase) -> None:
        if at == point and name == step and phase is Phase.ACTION:
            os.kill(os.getpid(), signal.SIGKILL)

    return checkpoint


def _services_for(flow: FlowDefinition, services_file: Path | None) -> dict[str, str]:
    services = load_services(services_file)
    check_services(flow, services)
    load_breaker_configs(services_file)  # refused here, before a saga is stored or run
    return services


def _runs_here(flow: FlowDefinition, services_file: Path | None) -> bool:
    """Whether this shell can run `flow`: False when it knows no service at all (no file, no
    SAGALAB_SERVICE_*) and the flow needs some, as on a machine where only a stack's workers
    are configured. A configuration that is there but wrong or incomplete still raises
    ServiceConfigError (exit 5), before anything is written."""
    if services_file is None and not load_services(None):
        return not any(step.service for step in flow.steps)
    _services_for(flow, services_file)
    return True


def _drive(
    store: Store,
    saga_id: str,
    flow: FlowDefinition,
    services_file: Path | None,
    *,
    quiet: bool,
    crash_at: str | None = None,
    tracer: SagaTracer | None = None,
) -> RunResult:
    """Run the saga here under a lease (taken over from a dead local owner) and breakers,
    its spans emitted by `tracer` when given.

    Its writes go through a watchdog, as a worker's do: a --db file deleted or replaced
    while a call is in flight stops the run with exit 5 and one line, instead of journaling
    on into a file nobody will read again.
    """
    services = _services_for(flow, services_file)
    watchdog = DatabaseWatchdog(
        store.path, restart="the saga's journal went with that file; run it again on the new one"
    )
    watched = WatchedStore(store.path, watchdog)
    owner = new_owner("cli")
    result: RunResult | None = None
    try:
        watchdog.check()
        lease = watched.claim(
            saga_id,
            owner,
            now=time.time(),
            lease_seconds=DEFAULT_LEASE_SECONDS,
            take_over=owner_is_dead,
        )
        executor = HttpExecutor(services)
        board = BreakerBoard(
            store.path, load_breaker_configs(services_file), owner=owner, guard=watchdog.check
        )
        try:
            with LeaseKeeper(store.path, guard=watchdog.check) as keeper:
                keeper.hold(lease)
                runner = SagaRunner(
                    watched,
                    executor,
                    checkpoint=_crash_checkpoint(crash_at),
                    on_event=None if quiet else render.live_event,
                    breakers=board,
                    on_breaker_wait=None if quiet else render.breaker_wait,
                    observer=tracer,
                )
                if tracer is not None:
                    tracer.claimed(saga_id, lease.epoch)
                try:
                    result = _run_through_conflicts(runner, saga_id, lease)
                finally:
                    if tracer is not None:
                        outcome = result.status.value if result is not None else "error"
                        tracer.ended(saga_id, outcome)
                return result
        finally:
            executor.close()
            board.close()
            if watchdog.gone is None:
                # Off the queue when it halted; back on it (for workers) if this run was cut
                # short.
                watched.release(lease, run_after=None if result is not None else time.time())
    finally:
        watched.close()


#: How many times a foreground run reads the saga again after an operator's concurrent
#: append before it gives the saga back to the workers' queue.
RERUN_TRIES = 5


def _run_through_conflicts(runner: SagaRunner, saga_id: str, lease: Lease) -> RunResult:
    """Run the saga under `lease`; after a concurrent append (an operator's rollback, cancel,
    retry or skip landing during a call) read it again and drive on, as a worker does.

    The lease stays ours: an operator's request does not take it, so the next run's writes
    are fenced as the first's. After RERUN_TRIES conflicts in a row ConcurrentUpdate passes
    through; `_drive` then puts the saga back on the queue.
    """
    for _ in range(RERUN_TRIES - 1):
        try:
            return runner.run(saga_id, lease=lease)
        except ConcurrentUpdate:
            continue  # the journal moved on under us: fold it again and decide from there
    return runner.run(saga_id, lease=lease)


class _RunHere:
    """The CLI's `operations.RunHere`: runs a saga in this process (`_drive`), when it knows
    the services the flow calls."""

    def __init__(
        self,
        store: Store,
        services_file: Path | None,
        *,
        quiet: bool,
        crash_at: str | None = None,
    ) -> None:
        self.store = store
        self.services_file = services_file
        self.quiet = quiet
        self.crash_at = crash_at

    def unavailable(self, flow: FlowDefinition) -> str | None:
        if _runs_here(flow, self.services_file):
            return None
        return "no services known here to run it: pass --services or set SAGALAB_SERVICE_*"

    def run(self, saga_id: str, flow: FlowDefinition) -> SagaStatus:
        result = _drive(
            self.store,
            saga_id,
            flow,
            self.services_file,
            quiet=self.quiet,
            crash_at=self.crash_at,
        )
        return result.status


def _show(store: Store, saga_id: str, as_json: bool) -> SagaStatus:
    record, entries, _ = store.state(saga_id)
    view = saga_view(record, store.steps(saga_id), entries, forks=store.forks(saga_id))
    if as_json:
        render.print_json(view)
    else:
        render.saga(view)
    return record.status


def _outcome_code(status: SagaStatus, expected: SagaStatus) -> int:
    return EXIT_OK if status is expected else EXIT_SAGA_FAILED


@app.command()
def run(
    flow: Annotated[str, typer.Argument(help="Flow YAML file, or a shipped example (checkout).")],
    input_: Annotated[
        str, typer.Option("--input", "-i", help="Flow input as JSON, or @file ('@-': stdin).")
    ] = "{}",
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            "-k",
            help="Returns the existing saga if this key was used before with the same input.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Run the saga here and follow it to the end.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-F",
            help="Queue it for the workers and show its live timeline (as `status --follow`) "
            "until it ends.",
        ),
    ] = False,
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
    crash_at: CrashAtOption = None,
    trace_file: Annotated[
        Path | None,
        typer.Option(
            "--trace-file",
            help="With --wait: append the run's OpenTelemetry spans here (JSON lines).",
        ),
    ] = None,
    otlp_endpoint: Annotated[
        str | None,
        typer.Option(
            "--otlp-endpoint",
            envvar=OTLP_ENV,
            help="With --wait: send the run's spans over OTLP/HTTP here (extra sagalab[otlp]).",
        ),
    ] = None,
) -> None:
    """Start a saga of FLOW. Without --wait it is queued for workers and its id is printed."""
    if wait and follow:
        raise fail(
            "--wait runs the saga here, --follow watches the workers run it: not both", EXIT_USAGE
        )
    tracing = None
    if wait:
        try:
            tracing = setup_tracing("sagalab-cli", trace_file, otlp_endpoint)
        except TracingConfigError as exc:
            raise fail(str(exc), EXIT_ENVIRONMENT) from None
    payload = parse_json_arg(input_, "--input")
    with handled(), ExitStack() as cleanup:
        definition = load_flow(flow)
        if wait:
            _services_for(definition, services)  # fail before storing anything
        elif services is not None:  # queued for workers: still a file they could not load
            load_services(services)
            load_breaker_configs(services)
        store = cleanup.enter_context(closing(open_store(db, create=True)))
        record, created = start_saga(
            store, definition, payload, idempotency_key=idempotency_key, queue=not wait
        )
        if not created:
            render.err.print(f"idempotency key already used: saga {record.id} ({record.status})")
        if follow:
            store.close()
            raise typer.Exit(_follow(db, record.id, as_json, 0.5))
        if not wait:
            if as_json:
                render.print_json({**saga_summary(record), "created": created})
            else:
                render.out.print(record.id)
                if created:
                    render.err.print(
                        "queued; workers (`sagalab worker`) pick it up, or run it here with "
                        f"`sagalab orchestrate resume {record.id}`"
                    )
            return
        if not record.status.is_terminal:
            try:
                _drive(
                    store,
                    record.id,
                    record.flow,
                    services,
                    quiet=as_json,
                    crash_at=crash_at,
                    tracer=SagaTracer(tracing, time.time) if tracing is not None else None,
                )
            except ConcurrentUpdate as exc:  # `_drive` gave it back to the queue: say so
                raise fail(
                    f"{exc}; saga {record.id} kept changing while it ran here and is queued "
                    f"for the workers (or `sagalab orchestrate resume {record.id}`)",
                    EXIT_REFUSED,
                ) from None
            finally:
                if tracing is not None:
                    tracing.shutdown()
        status = _show(store, record.id, as_json)
    raise typer.Exit(_outcome_code(status, SagaStatus.COMPLETED))


#: Bounds of `status --follow --interval`: often enough to feel live, never a busy loop.
FOLLOW_INTERVAL_MIN, FOLLOW_INTERVAL_MAX = 0.05, 5.0
#: Exit code after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
_STOPPED = (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK, SagaStatus.FAILED)


@app.command()
def status(
    saga_id: SagaIdArg,
    db: DbOption = DEFAULT_DB,
    read_db: ReadDbOption = None,
    as_json: JsonOption = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-F",
            help="Print each journal event as it is appended (by any process) until the saga "
            "completes, rolls back or fails; with --json, one JSON object per line. Exit 0 "
            "completed, 1 rolled back or failed, 130 on Ctrl-C.",
        ),
    ] = False,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=FOLLOW_INTERVAL_MIN,
            max=FOLLOW_INTERVAL_MAX,
            help="Seconds between two reads of the journal with --follow.",
        ),
    ] = 0.5,
) -> None:
    """A saga's status and step timeline: attempts, durations, errors, trace id."""
    if follow:
        raise typer.Exit(_follow(reads_from(db, read_db), saga_id, as_json, interval))
    with handled(), closing(open_store(reads_from(db, read_db), read_only=True)) as store:
        _show(store, saga_id, as_json)


class _Terminated(BaseException):
    """SIGTERM while following: end like Ctrl-C, closing the store (no -wal/-shm left)."""


def _follow(db: Path, saga_id: str, as_json: bool, interval: float) -> int:
    """The live timeline: new journal entries as they land, until the saga stops; Ctrl-C
    ends it with EXIT_INTERRUPTED and SIGTERM with 143, no traceback (the saga itself goes
    on). A database file deleted or replaced meanwhile ends it with exit 5 and one line."""
    with sigterm_raises(_Terminated):
        try:
            with handled(), closing(open_store(db, read_only=True)) as store:
                watchdog = DatabaseWatchdog(store.path, restart="follow the saga on the new file")
                record = store.load(saga_id)
                if not as_json:
                    render.follow_header(saga_summary(record))
                seen = 0
                while True:
                    watchdog.check()
                    record, entries, _ = store.state(saga_id)
                    for entry in entries[seen:]:
                        row = entry_to_dict(entry)
                        if as_json:
                            line = json.dumps(
                                displayable({"saga_id": saga_id, **row}),
                                default=str,
                                allow_nan=False,
                            )
                            sys.stdout.write(line + "\n")
                            sys.stdout.flush()
                        else:
                            render.follow_event(row)
                    seen = len(entries)
                    if record.status in _STOPPED:
                        break
                    time.sleep(interval)
                if not as_json:
                    render.follow_end(record.status.value, record.reason)
        except KeyboardInterrupt:
            render.err.print("stopped following; the saga goes on")
            return EXIT_INTERRUPTED
        except _Terminated:
            return 128 + signal.SIGTERM
    return _outcome_code(record.status, SagaStatus.COMPLETED)


class Output(StrEnum):
    """How `list` prints the sagas."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"
    IDS = "ids"


#: The columns of `list --output csv`, in order.
CSV_COLUMNS = (
    "id",
    "flow",
    "flow_version",
    "status",
    "tenant",
    "idempotency_key",
    "created_at",
    "updated_at",
    "forked_from",
    "reason",
)


@app.command("list")
@filter_options()
def list_(
    db: DbOption = DEFAULT_DB,
    read_db: ReadDbOption = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table, json, csv, or ids (one per line).")
    ] = Output.TABLE,
    as_json: Annotated[bool, typer.Option("--json", help="The same as --output json.")] = False,
    *,
    criteria: FilterArgs,
) -> None:
    """Sagas of every tenant (the CLI works on the database as an admin), newest first.

    The filters compose (all must hold). Page with --limit and --after (the last id of the
    previous page). A filter that matches nothing prints nothing (exit 0); a malformed
    filter is exit 2, an --after id that is no saga exit 3.
    """
    wanted = criteria.to_filter(default_limit=50)
    with handled(), closing(open_store(reads_from(db, read_db), read_only=True)) as store:
        records = store.find_sagas(wanted)
    rows = [saga_summary(r) for r in records]
    if as_json:
        output = Output.JSON
    if output is Output.JSON:
        render.print_json(rows)
    elif output is Output.IDS:
        for row in rows:
            sys.stdout.write(row["id"] + "\n")
    elif output is Output.CSV:
        writer = csv.DictWriter(sys.stdout, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        render.saga_list(rows)


@app.command()
def events(
    saga_id: SagaIdArg,
    db: DbOption = DEFAULT_DB,
    read_db: ReadDbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A saga's journal: every event in order."""
    with handled(), closing(open_store(reads_from(db, read_db), read_only=True)) as store:
        rows = events_view(store.journal(saga_id))
    if as_json:
        render.print_json(rows)
    else:
        render.events(rows)


@app.command(epilog=BULK_EXIT_HELP)
@filter_options()
def resume(
    saga_id: Annotated[
        str | None,
        typer.Argument(help="Saga id (omit with --stuck, or with filters).", show_default=False),
    ] = None,
    stuck: Annotated[
        bool,
        typer.Option(
            "--stuck", help="Resume every active saga nobody runs (lease expired, or never queued)."
        ),
    ] = False,
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
    crash_at: CrashAtOption = None,
    yes: YesOption = False,
    rps: RpsOption = DEFAULT_RPS,
    wait_breaker: WaitBreakerOption = False,
    wait_timeout: WaitTimeoutOption = 60.0,
    *,
    criteria: FilterArgs,
) -> None:
    """Continue a saga from its last durable event, here, until it ends.

    A call that was in flight when it stopped is sent again with the same idempotency key.
    """
    if bulk_mode(saga_id, criteria, other="--stuck" if stuck else None):
        run_bulk(
            "resume",
            criteria,
            BulkOptions(wait_breaker=wait_timeout if wait_breaker else None),
            db=db,
            services=services,
            yes=yes,
            rps=rps,
            as_json=as_json,
            make_runner=_bulk_runner,
        )
    with handled(), closing(open_store(db)) as store:
        if stuck:
            _resume_stuck(store, services, as_json)
            return
        assert saga_id is not None
        # A failed, completed or rolled back saga, or one a live worker runs: exit 4.
        here = _RunHere(store, services, quiet=as_json, crash_at=crash_at)
        result = operations.resume(store, saga_id, runner=here)
        _render_result(store, result, as_json)
    raise typer.Exit(_request_code(result, (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK)))


def _bulk_runner(store: Store, services: Path | None) -> operations.RunHere:
    """How a bulk action runs each saga here: as the single verbs do, quietly."""
    return _RunHere(store, services, quiet=True)


bulk.RUNNER.append(_bulk_runner)
app.add_typer(bulk.batch_app, name="batch")


def _resume_stuck(store: Store, services: Path | None, as_json: bool) -> None:
    ids = store.stuck(now=time.time())
    here = _RunHere(store, services, quiet=as_json)
    results = []
    for saga_id in ids:
        try:
            status = operations.resume(store, saga_id, runner=here).status
        except operations.ActionRefused as exc:  # a worker took it since the scan
            render.err.print(str(exc))
            continue
        results.append({"id": saga_id, "status": status.value})
        if not as_json:
            render.err.print(f"{saga_id}: {status.value}")
    if as_json:
        render.print_json(results)
    elif not ids:
        render.err.print("no stuck sagas")
    failed = [r for r in results if r["status"] not in ("completed", "rolled_back")]
    raise typer.Exit(1 if failed else 0)


OptionalIdArg = Annotated[
    str | None,
    typer.Argument(
        help="Saga id, as printed by `run` or `list` (omit with filters).", show_default=False
    ),
]


@app.command(epilog=BULK_EXIT_HELP)
@filter_options()
def rollback(
    saga_id: OptionalIdArg = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Roll back even past the pivot step, or while its call is in flight "
            "(what has no compensation stays applied).",
        ),
    ] = False,
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the journal.")
    ] = "operator rollback",
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
    yes: YesOption = False,
    rps: RpsOption = DEFAULT_RPS,
    *,
    criteria: FilterArgs,
) -> None:
    """Compensate every completed step in reverse order (running, failed or completed sagas)."""
    if bulk_mode(saga_id, criteria):
        run_bulk(
            "rollback",
            criteria,
            BulkOptions(reason=reason, force=force),
            db=db,
            services=services,
            yes=yes,
            rps=rps,
            as_json=as_json,
            make_runner=_bulk_runner,
        )
    assert saga_id is not None
    with handled(), closing(open_store(db)) as store:
        result = operations.rollback(
            store,
            saga_id,
            force=force,
            reason=reason,
            runner=_RunHere(store, services, quiet=as_json),
        )
        _render_result(store, result, as_json)
    raise typer.Exit(_request_code(result, (SagaStatus.ROLLED_BACK,)))


def _render_result(store: Store, result: operations.OperationResult, as_json: bool) -> None:
    """The action's message (stderr), then the saga as it stands."""
    if result.message:
        render.err.print(result.message)
    _show(store, result.saga_id, as_json)


def _request_code(result: operations.OperationResult, done: tuple[SagaStatus, ...]) -> int:
    """0 if the request was queued for the workers, or ran here to one of `done`; else 1."""
    if result.carried is operations.Carried.QUEUED or result.status in done:
        return EXIT_OK
    return EXIT_SAGA_FAILED


StepArg = Annotated[str, typer.Argument(help="Name of the step that failed for good.")]


@app.command("retry-step", epilog=BULK_EXIT_HELP)
@filter_options()
def retry_step(
    saga_id: OptionalIdArg = None,
    step: Annotated[
        str | None,
        typer.Argument(
            help="Name of the step that failed for good (with filters: each saga's own).",
            show_default=False,
        ),
    ] = None,
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
    yes: YesOption = False,
    rps: RpsOption = DEFAULT_RPS,
    wait_breaker: WaitBreakerOption = False,
    wait_timeout: WaitTimeoutOption = 60.0,
    *,
    criteria: FilterArgs,
) -> None:
    """Give a failed step (or its compensation) a fresh retry budget and continue the saga.

    With filters instead of ID STEP: each matching failed saga's failed step is retried.
    """
    if bulk_mode(saga_id, criteria):
        run_bulk(
            "retry-step",
            criteria,
            BulkOptions(wait_breaker=wait_timeout if wait_breaker else None),
            db=db,
            services=services,
            yes=yes,
            rps=rps,
            as_json=as_json,
            make_runner=_bulk_runner,
        )
    if saga_id is None or step is None:
        raise fail("retry-step needs a saga id and a step (or filters instead of both)", EXIT_USAGE)
    with handled(), closing(open_store(db)) as store:
        result = operations.retry_step(
            store, saga_id, step, runner=_RunHere(store, services, quiet=as_json)
        )
        _render_result(store, result, as_json)
    raise typer.Exit(_request_code(result, (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK)))


@app.command("skip-step")
def skip_step(
    saga_id: SagaIdArg,
    step: StepArg,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the journal).")],
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Mark a failed step as handled by hand (recorded with the reason) and continue."""
    with handled(), closing(open_store(db)) as store:
        result = operations.skip_step(
            store, saga_id, step, reason=reason, runner=_RunHere(store, services, quiet=as_json)
        )
        _render_result(store, result, as_json)
    raise typer.Exit(_request_code(result, (SagaStatus.COMPLETED, SagaStatus.ROLLED_BACK)))


@app.command(epilog=BULK_EXIT_HELP)
@filter_options()
def cancel(
    saga_id: OptionalIdArg = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the journal.")
    ] = "operator cancel",
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
    yes: YesOption = False,
    rps: RpsOption = DEFAULT_RPS,
    *,
    criteria: FilterArgs,
) -> None:
    """Stop a saga that has not passed its pivot and roll it back at its next step boundary.

    A worker that holds it meets the request at its next commit. Past the pivot (or while the
    pivot's call is in flight) it is refused, exit 4: `rollback --force` is the tool there.
    """
    if bulk_mode(saga_id, criteria):
        run_bulk(
            "cancel",
            criteria,
            BulkOptions(reason=reason),
            db=db,
            services=services,
            yes=yes,
            rps=rps,
            as_json=as_json,
            make_runner=_bulk_runner,
        )
    assert saga_id is not None
    with handled(), closing(open_store(db)) as store:
        result = operations.cancel(
            store, saga_id, reason=reason, runner=_RunHere(store, services, quiet=as_json)
        )
        _render_result(store, result, as_json)
    raise typer.Exit(_request_code(result, (SagaStatus.ROLLED_BACK,)))


@app.command(epilog=BULK_EXIT_HELP)
@filter_options(input_names=("--match-input",))
def fork(
    saga_id: OptionalIdArg = None,
    *,
    from_step: Annotated[str, typer.Option("--from-step", help="First step the fork runs again.")],
    input_: Annotated[
        str | None,
        typer.Option(
            "--input", "-i", help="The fork's input as JSON, or @file (default: the old one's)."
        ),
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="input.KEY=VALUE: change one input value (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan only; change nothing.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Fork even where the plan says a step stays applied and runs again, or the "
            "pivot (if it has a compensation) is compensated first.",
        ),
    ] = False,
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
    yes: YesOption = False,
    rps: RpsOption = DEFAULT_RPS,
    wait_breaker: WaitBreakerOption = False,
    wait_timeout: WaitTimeoutOption = 60.0,
    criteria: FilterArgs,
) -> None:
    """Run a stopped saga again from STEP with new input, as a new saga linked to it.

    The steps before STEP keep the old saga's results; what the old saga applied from STEP on
    is compensated first. The plan is printed before anything runs (--dry-run: only it).
    Exit 0 the fork completed (or was queued), 1 it did not, 2 bad step/input/--set, 3 unknown
    saga, 4 refused (running, forked already, past an applied pivot).
    With filters (--match-input for the input) each matching saga is forked from STEP,
    with the same --set edits (not --input or --dry-run), where {input.KEY} is each saga's
    own value: --set 'input.order_id={input.order_id}-r1'.
    """
    if bulk_mode(saga_id, criteria):
        if input_ is not None or dry_run:
            raise fail("a bulk fork takes --set edits, not --input or --dry-run", EXIT_USAGE)
        run_bulk(
            "fork",
            criteria,
            BulkOptions(
                from_step=from_step,
                sets=tuple(sets or ()),
                force=force,
                wait_breaker=wait_timeout if wait_breaker else None,
            ),
            db=db,
            services=services,
            yes=yes,
            rps=rps,
            as_json=as_json,
            make_runner=_bulk_runner,
        )
    assert saga_id is not None
    payload = None
    if input_ is not None:
        parsed = parse_json_arg(input_, "--input")
        if not isinstance(parsed, dict):
            raise fail("--input must be a JSON object", EXIT_USAGE)
        payload = parsed
    with handled(), ExitStack() as cleanup:
        if dry_run:
            with closing(open_store(db, read_only=True)) as reader:
                plan, _ = operations.fork_plan(
                    reader, saga_id, from_step, payload=payload, sets=sets or (), force=force
                )
            if as_json:
                render.print_json(plan.to_dict())
            else:
                render.fork_plan(plan.to_dict(), dry_run=True)
            raise typer.Exit(EXIT_OK if plan.allowed else EXIT_REFUSED)
        store = cleanup.enter_context(closing(open_store(db)))
        planned: list[dict[str, object]] = []

        def on_plan(plan: ForkPlan) -> None:
            planned.append(plan.to_dict())
            if not as_json:
                render.fork_plan(planned[-1], dry_run=False)

        try:
            _, result = operations.fork(
                store,
                saga_id,
                from_step,
                payload=payload,
                sets=sets or (),
                force=force,
                runner=_RunHere(store, services, quiet=as_json),
                on_plan=on_plan,
            )
        except operations.OperationError:
            if as_json and planned:
                render.print_json({"plan": planned[-1], "fork": None})
            raise
        if result.message:
            render.err.print(result.message)
        if as_json:
            record, entries, _ = store.state(result.saga_id)
            view = saga_view(record, store.steps(result.saga_id), entries)
            render.print_json({"plan": planned[-1], "fork": view})
        else:
            _show(store, result.saga_id, as_json)
    raise typer.Exit(_request_code(result, (SagaStatus.COMPLETED,)))
