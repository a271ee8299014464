"""`sagalab simulate`: run the SimPy model of the whole path under shipped or custom scenarios.

Thin shell over :mod:`simulator`: parse, call the library, render. `--json` prints only the
report on stdout; the progress bar and messages go to stderr. Exit codes: 0 ok, 1 a claim or an
invariant did not hold, 2 bad input (unknown scenario, bad --set, malformed YAML).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from simulator.config import apply_override, list_scenarios, load_scenario
from simulator.errors import SimulationError
from simulator.model import simulate
from simulator.output import write_csv, write_outputs
from simulator.render import render_list, render_summary, render_sweep
from simulator.sweep import parse_grid, sweep

app = typer.Typer(
    help="Simulate the whole path (firewall to services) under failure scenarios.",
    no_args_is_help=True,
)

ScenarioArg = Annotated[str, typer.Argument(help="A shipped scenario name or a YAML file.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: scenario's).")]
DurationOpt = Annotated[
    float | None, typer.Option("--duration", help="Seconds of arrivals (default: scenario's).")
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


def _configure(scenario: str, sets: list[str] | None) -> dict[str, Any]:
    config = load_scenario(scenario)
    for item in sets or []:
        apply_override(config, item)
    return config


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
    if duration is not None and duration <= 0:
        raise _fail("--duration must be positive")
    try:
        config = _configure(scenario, set_)
        with _progress() as progress:
            task = progress.add_task(str(config.get("name", scenario)), total=1.0)

            def tick(now: float, total: float) -> None:
                progress.update(task, completed=now, total=total)

            result = simulate(config, seed=seed, duration=duration, progress=tick)
    except SimulationError as exc:
        raise _fail(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(f"scenario {scenario!r} has a value of the wrong shape: {exc}") from None
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
        int | None, typer.Option("--workers", help="Processes (default: all cores).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run every combination of the grid values on all cores; table and CSV."""
    try:
        parsed = parse_grid(grid)
        total = 1
        for _, values in parsed:
            total *= len(values)
        with _progress() as progress:
            task = progress.add_task(f"sweep {scenario}", total=total)
            progress.columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f} runs"),
                TimeElapsedColumn(),
            )
            rows = sweep(
                scenario,
                parsed,
                sets=set_ or [],
                seed=seed,
                duration=duration,
                workers=workers,
                done=lambda _row: progress.advance(task),
            )
    except SimulationError as exc:
        raise _fail(str(exc)) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(f"sweep of {scenario!r}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    name = Path(scenario).stem
    path = write_csv(rows, out / f"sweep-{name}.csv")
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render_sweep(Console(highlight=False), rows, [k for k, _ in parsed])
    typer.echo(f"wrote {path}", err=True)
