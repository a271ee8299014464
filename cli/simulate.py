"""`sagalab simulate`: run the SimPy model of the whole path under shipped or custom scenarios.

Thin shell over :mod:`simulator`: parse, call the library, render. `--json` prints only the
report on stdout; the progress bar and messages go to stderr. Exit codes: 0 ok, 1 a claim or an
invariant did not hold, 2 bad input (unknown scenario, bad --set, malformed YAML), 5 (calibrate)
the database cannot be read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sagalab.cli.errors import EXIT_USAGE, fail, handled
from sagalab.cli.explore import explore_cmd
from sagalab.cli.validate import validate_cmd
from sagalab.cli.verify import parse_since
from sagalab.orchestrator.limits import (
    MAX_REPLICAS,
    MAX_SIM_DURATION,
    REPLICAS_WHY,
    LimitError,
    check,
)
from sagalab.orchestrator.sagafilter import MAX_LIMIT, SagaFilter
from sagalab.orchestrator.store import SagaStore
from sagalab.orchestrator.stores import open_store, shown
from sagalab.simulator.calibrate import (
    LATENCY_CHOICES,
    CalibrationError,
    Observed,
    Row,
    calibrate,
    header,
)
from sagalab.simulator.compare import MAX_COMPARE_SEEDS, compare
from sagalab.simulator.config import configure, list_scenarios, merge_defaults, validate
from sagalab.simulator.errors import SimulationError
from sagalab.simulator.model import simulate
from sagalab.simulator.output import write_atomic, write_csv, write_outputs
from sagalab.simulator.ramp import ramp
from sagalab.simulator.render import (
    render_compare,
    render_list,
    render_ramp,
    render_replicated,
    render_summary,
    render_sweep,
)
from sagalab.simulator.sweep import DEFAULT_METRIC, MAX_SEEDS, parse_grid, replicate, sweep

app = typer.Typer(
    help="Simulate the whole path (firewall to services) under failure scenarios.",
    no_args_is_help=True,
)
app.command("explore")(explore_cmd)
app.command("validate")(validate_cmd)

ScenarioArg = Annotated[str, typer.Argument(help="A shipped scenario name or a YAML file.")]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Random seed, 0 to 4,294,967,295 (default: scenario's)."),
]
DurationOpt = Annotated[
    float | None,
    typer.Option(
        "--duration",
        help=f"Seconds of arrivals (default: scenario's; at most {MAX_SIM_DURATION:g}).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a setting: key.path=value (repeatable)."),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Directory for the report, CSV and charts.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON report on stdout.")]


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _progress(unit: str = "s simulated") -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} " + unit),
        TimeElapsedColumn(),
        console=_err(),
        transient=True,
    )


@contextmanager
def _runs_progress(
    description: str,
) -> Iterator[tuple[Callable[[int], None], Callable[[], None]]]:
    """`(started, advance)` for a progress bar of runs, stopped on the way out. It is shown
    only once `started(total)` is called, after every input was validated: a refusal stays
    one line (and stopping a bar that never started would print a blank one)."""
    progress = _progress("runs")
    task = progress.add_task(description, total=None)
    shown = False

    def started(runs: int) -> None:
        nonlocal shown
        progress.update(task, total=runs)
        progress.start()
        shown = True

    try:
        yield started, lambda: progress.advance(task)
    finally:
        if shown:
            progress.stop()


@app.command("list")
def list_cmd(json_out: JsonOpt = False) -> None:
    """List the shipped scenarios and what each shows."""
    scenarios = list_scenarios()
    if json_out:
        out = {
            n: {"description": r.get("description", ""), "shows": r.get("shows", "")}
            for n, r in scenarios.items()
        }
        typer.echo(json.dumps(out, indent=2))
        return
    render_list(Console(highlight=False), scenarios)


@contextmanager
def _refusals(scenario: str) -> Iterator[None]:
    """One line and exit 2 for a bad scenario, override, grid value or option: the same
    message from `run` and `sweep`, since both validate through `simulator.config.configure`."""
    try:
        yield
    except SimulationError as exc:
        raise _fail(str(exc)) from None
    except LimitError as exc:
        raise _fail(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(f"scenario {scenario!r} has a value of the wrong shape: {exc}") from None


@app.command("run")
def run_cmd(
    scenario: ScenarioArg,
    seed: SeedOpt = None,
    duration: DurationOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("sim-results"),
    json_out: JsonOpt = False,
) -> None:
    """Run one scenario: summary table, JSON report, CSV time series and a PNG chart."""
    with _refusals(scenario):
        config = configure(scenario, set_ or [], seed=seed, duration=duration)
        with _progress() as progress:
            task = progress.add_task(str(config.get("name", scenario)), total=1.0)

            def tick(now: float, total: float) -> None:
                progress.update(task, completed=now, total=total)

            result = simulate(config, seed=seed, duration=duration, progress=tick)
    report = result.report
    stem = f"{report['scenario']['name']}-seed{report['seed']}"
    try:
        files = write_outputs(report, result.series, out, stem)
    except OSError as exc:
        raise _fail(f"cannot write to {out}: {exc.strerror or exc}") from None
    if json_out:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        for f in files:
            typer.echo(f"wrote {f}", err=True)
    else:
        render_summary(Console(highlight=False), report, [str(f) for f in files])
    bad = report["invariants_failed"] + sum(not c["ok"] for c in report["claims"])
    if bad:
        raise typer.Exit(1)


@app.command("sweep")
def sweep_cmd(
    scenario: ScenarioArg,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="key.path=v1,v2,... (repeatable; all combinations)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Replicate this report metric over seeds: a dotted report path "
            f"(default with --seeds: {DEFAULT_METRIC}) or window(START, END).COLUMN[.agg].",
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            help=f"Run each combination over this many seeds (2 to {MAX_SEEDS}, from --seed or "
            "1) and print the metric's mean and 95 % interval (default with --metric: 10).",
        ),
    ] = None,
    seed: SeedOpt = None,
    duration: DurationOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("sim-results"),
    workers: Annotated[
        int | None,
        typer.Option("--workers", help=f"Processes (default: all cores; at most {MAX_REPLICAS})."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run every combination of the grid values on all cores; table and CSV.

    Every combination is validated (as `run` validates its one) before any run starts. With
    --metric or --seeds, each combination (or the scenario alone) runs over the seeds and the
    table gives the metric's mean and 95 % t-interval.
    """
    replicating = metric is not None or seeds is not None
    with _refusals(scenario):
        if workers is not None:
            check("--workers", workers, low=1, high=MAX_REPLICAS, why=REPLICAS_WHY)
        parsed = parse_grid(grid or [])
        if not parsed and not replicating:
            raise _fail("sweep needs --grid, or --metric/--seeds to replicate a metric")
        with _runs_progress(f"sweep {scenario}") as (started, advance):
            if replicating:
                rows = replicate(
                    scenario,
                    parsed,
                    metric=metric or DEFAULT_METRIC,
                    seeds=10 if seeds is None else seeds,
                    first_seed=1 if seed is None else seed,
                    sets=set_ or [],
                    duration=duration,
                    workers=workers,
                    done=advance,
                    started=started,
                )
            else:
                rows = sweep(
                    scenario,
                    parsed,
                    sets=set_ or [],
                    seed=seed,
                    duration=duration,
                    workers=workers,
                    done=lambda _row: advance(),
                    started=started,
                )
    try:
        if replicating:
            _write_replicated(rows, [k for k, _ in parsed], out, scenario, json_out)
            return
        out.mkdir(parents=True, exist_ok=True)
        path = write_csv(rows, out / f"sweep-{Path(scenario).stem}.csv")
    except OSError as exc:
        raise _fail(f"cannot write to {out}: {exc.strerror or exc}") from None
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render_sweep(Console(highlight=False), rows, [k for k, _ in parsed])
    typer.echo(f"wrote {path}", err=True)


def _write_replicated(
    rows: list[dict[str, Any]], keys: list[str], out: Path, scenario: str, json_out: bool
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = write_csv(rows, out / f"sweep-{Path(scenario).stem}-seeds.csv")
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render_replicated(Console(highlight=False), rows, keys)
    typer.echo(f"wrote {path}", err=True)


def _levels(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _fail(f"--levels {text!r}: expected rising rates, e.g. 100,200,300") from None


@app.command("ramp")
def ramp_cmd(
    scenario: ScenarioArg,
    levels: Annotated[
        str,
        typer.Option("--levels", help="Rising arrival rates (/s), e.g. 100,200,300,450."),
    ],
    hold: Annotated[float, typer.Option("--hold", help="Seconds at each level.")] = 20.0,
    settle: Annotated[
        float, typer.Option("--settle", help="Seconds of each level not averaged.")
    ] = 5.0,
    group: Annotated[
        str | None, typer.Option("--group", help="Client group to ramp (default: the first).")
    ] = None,
    seed: SeedOpt = None,
    set_: SetOpt = None,
    out: OutOpt = Path("sim-results"),
    json_out: JsonOpt = False,
) -> None:
    """Raise the load level by level, then lower it, in one run: each level's figures on the
    way up and down, and goodput's hysteresis (worse on the way down: metastable). Exit 1
    when an invariant did not hold."""
    with _refusals(scenario):
        result = ramp(
            scenario,
            _levels(levels),
            hold=hold,
            settle=settle,
            sets=set_ or [],
            group=group,
            seed=seed,
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = write_csv(result["stages"], out / f"ramp-{Path(scenario).stem}.csv")
    except OSError as exc:
        raise _fail(f"cannot write to {out}: {exc.strerror or exc}") from None
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        render_ramp(Console(highlight=False), result)
    typer.echo(f"wrote {path}", err=True)
    if result["invariants_failed"]:  # as `run`: an invariant that did not hold exits 1
        raise typer.Exit(1)


@app.command("compare")
def compare_cmd(
    base: Annotated[str, typer.Argument(help="The base scenario (shipped name or YAML file).")],
    variant: Annotated[str, typer.Argument(help="The variant scenario to compare with it.")],
    seeds: Annotated[
        int,
        typer.Option("--seeds", help=f"Seeds to run both over (2 to {MAX_COMPARE_SEEDS})."),
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="The first seed.")] = 1,
    duration: DurationOpt = None,
    set_: SetOpt = None,
    variant_set: Annotated[
        list[str] | None,
        typer.Option(
            "--variant-set", help="Override a setting of VARIANT only: key.path=value (repeatable)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help=f"Processes (default: all cores; at most {MAX_REPLICAS})."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run BASE and VARIANT over the same seeds; print each figure with the variant's
    difference and its paired 95 % interval, marking the significant ones.

    Exit 2: a bad scenario file or option (both are validated before anything runs).
    """
    label = f"{base} vs {variant}"
    with _refusals(label):
        if workers is not None:
            check("--workers", workers, low=1, high=MAX_REPLICAS, why=REPLICAS_WHY)
        with _runs_progress(f"compare {label}") as (started, advance):
            result = compare(
                base,
                variant,
                seeds=seeds,
                first_seed=seed,
                sets=set_ or [],
                variant_sets=variant_set or [],
                duration=duration,
                workers=workers,
                started=started,
                done=advance,
            )
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        render_compare(Console(highlight=False), result)


#: Statuses whose `updated_at` is the saga's last commit.
_ENDED = ("completed", "rolled_back", "failed")


def _observed(store: SagaStore, since: float | None) -> tuple[list[Observed], bool]:
    """The sagas created at or after `since` (the newest MAX_LIMIT), each with its journal as
    calibration rows; True if more were left out."""
    records = store.find_sagas(SagaFilter(since=since, limit=MAX_LIMIT + 1))
    out = []
    for record in records[:MAX_LIMIT]:
        rows = []
        for entry in store.journal(record.id):
            event = entry.event
            failure = event.failure
            rows.append(
                Row(
                    type=event.type.value,
                    at=event.at,
                    step=event.step,
                    phase=event.phase.value if event.phase is not None else None,
                    attempt=event.attempt,
                    status_code=entry.status_code,
                    duration_ms=entry.duration_ms,
                    failure=failure.error if failure is not None else None,
                    retry_after=failure.retry_after if failure is not None else None,
                    not_before=event.not_before,
                )
            )
        ended = record.updated_at if record.status.value in _ENDED else None
        out.append(Observed(record.created_at, record.flow, tuple(rows), ended))
    return out, len(records) > MAX_LIMIT


@app.command("calibrate")
def calibrate_cmd(
    db: Annotated[str, typer.Option("--db", help="The saga database (SQLite path or URL).")],
    out: Annotated[Path, typer.Option("--out", help="The scenario YAML to write.")],
    since: Annotated[
        str | None,
        typer.Option("--since", help="Sagas created at or after: 15m, 2h, an ISO time, epoch s."),
    ] = None,
    latency: Annotated[
        str,
        typer.Option(
            "--latency",
            help="auto (empirical where the lognormal's KS p < 0.01), lognormal or empirical.",
        ),
    ] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --out.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit a scenario to the journal: each service's latency (lognormal, with its KS fit
    quality, and empirical quantiles), error rates, Retry-After, and the arrival rate.

    Exit 2: no saga in the window, a bad --since, or --out in a missing directory or existing
    (without --force); 5: the database cannot be read.
    """
    now = time.time()
    if latency not in LATENCY_CHOICES:
        raise fail(f"--latency must be one of {', '.join(LATENCY_CHOICES)}", EXIT_USAGE)
    try:
        start = parse_since(since, now=now) if since is not None else None
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if not out.parent.is_dir():
        raise fail(f"--out {out}: directory {out.parent} does not exist", EXIT_USAGE)
    if out.exists() and not force:
        raise fail(f"--out {out} exists; pass --force to overwrite it", EXIT_USAGE)
    with handled(), closing(open_store(db, readonly=True)) as store:
        sagas, truncated = _observed(store, start)
    try:
        engine = "postgresql" if db.startswith(("postgresql:", "postgres:")) else "sqlite"
        scenario, report = calibrate(sagas, latency=latency, engine=engine)
    except CalibrationError as exc:
        where = f" created since {since}" if since else ""
        raise fail(f"{shown(db)}{where}: {exc}", EXIT_USAGE) from None
    if truncated:
        report["truncated"] = f"only the newest {MAX_LIMIT} sagas were read; narrow --since"
    # What is written must be what `simulate run` takes: validated as it would be.
    with _refusals(str(out)):
        validate(merge_defaults(scenario))
    fitted_at = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
    for key in ("first_created", "last_created"):
        created = datetime.fromtimestamp(report["window"][key], UTC)
        report["window"][f"{key}_utc"] = created.isoformat(timespec="milliseconds")
    window: str | None = None
    if start is not None:
        at = datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds")
        window = f"at or after {at} (--since {since})"
    text = header(report, source=shown(db), fitted_at=fitted_at, since=window)
    text += yaml.safe_dump(scenario, sort_keys=False, default_flow_style=None)
    try:
        write_atomic(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror or exc}", EXIT_USAGE) from None
    report["out"] = str(out)
    if json_out:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        fits = report["services"]
        for name, fit in fits.items():
            typer.echo(f"{name}: {fit.get('attempts', 0)} attempts, {fit['used']}", err=True)
        path = report["path"]
        typer.echo(
            f"database writes: {path['writes'].get('n', 0)} commits, {path['writes']['used']}; "
            f"wake-up: {path['wake'].get('n', 0)} sagas, {path['wake']['used']}",
            err=True,
        )
    typer.echo(f"wrote {out} ({report['sagas']} sagas)", err=True)
