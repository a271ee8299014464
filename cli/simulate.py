"""`sagalab simulate`: run the SimPy model of the whole path under shipped or custom scenarios.

Thin shell over :mod:`simulator`: parse, call the library, render. `--json` prints only the
report on stdout; the progress bar and messages go to stderr. Exit codes: 0 ok, 1 a claim or an
invariant did not hold, 2 bad input (unknown scenario, bad --set, malformed YAML).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sagalab.orchestrator.limits import (
    MAX_REPLICAS,
    MAX_SIM_DURATION,
    REPLICAS_WHY,
    LimitError,
    check,
)
from sagalab.simulator.config import configure, list_scenarios
from sagalab.simulator.errors import SimulationError
from sagalab.simulator.model import simulate
from sagalab.simulator.output import write_csv, write_outputs
from sagalab.simulator.render import render_list, render_summary, render_sweep
from sagalab.simulator.sweep import parse_grid, sweep

app = typer.Typer(
    help="Simulate the whole path (firewall to services) under failure scenarios.",
    no_args_is_help=True,
)

ScenarioArg = Annotated[str, typer.Argument(help="A shipped scenario name or a YAML file.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: scenario's).")]
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


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s simulated"),
        TimeElapsedColumn(),
        console=_err(),
        transient=True,
    )


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
        list[str], typer.Option("--grid", help="key.path=v1,v2,... (repeatable; all combinations).")
    ],
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

    Every combination is validated (as `run` validates its one) before any run starts.
    """
    with _refusals(scenario):
        if workers is not None:
            check("--workers", workers, low=1, high=MAX_REPLICAS, why=REPLICAS_WHY)
        parsed = parse_grid(grid)
        progress = _progress()
        progress.columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} runs"),
            TimeElapsedColumn(),
        )
        task = progress.add_task(f"sweep {scenario}", total=None)
        shown = False

        def started(runs: int) -> None:
            # Shown only once every combination is valid: a refusal stays one line.
            nonlocal shown
            progress.update(task, total=runs)
            progress.start()
            shown = True

        try:
            rows = sweep(
                scenario,
                parsed,
                sets=set_ or [],
                seed=seed,
                duration=duration,
                workers=workers,
                done=lambda _row: progress.advance(task),
                started=started,
            )
        finally:
            if shown:  # stopping a progress that never started prints a blank line
                progress.stop()
    out.mkdir(parents=True, exist_ok=True)
    name = Path(scenario).stem
    path = write_csv(rows, out / f"sweep-{name}.csv")
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render_sweep(Console(highlight=False), rows, [k for k, _ in parsed])
    typer.echo(f"wrote {path}", err=True)
