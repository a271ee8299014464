"""`sagalab simulate explore FLOW|SCENARIO --seeds N`: seeded crash and delivery orderings.

Thin shell over `simulator.explore` (one seed's world and its faults) and
`simulator.explore_checks` (the invariants, the loop): it resolves the flow or scenario,
makes each seed's generator, times the run and renders. Exit 0: no invariant broken; 1: a
violation (the smallest failing seed, its fault schedule and the command that replays it are
printed); 2: bad input (unknown flow or scenario, a bad file, an option out of bounds).
"""

from __future__ import annotations

import json
import random
import shlex
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from sagalab.cli.errors import EXIT_SAGA_FAILED, EXIT_USAGE, fail, stderr
from sagalab.orchestrator.errors import FlowNotFoundError, FlowValidationError
from sagalab.orchestrator.flow import flow_from_dict
from sagalab.orchestrator.flowfile import example_flow_names, load_flow
from sagalab.orchestrator.limits import LimitError, check
from sagalab.orchestrator.safeyaml import safe_load
from sagalab.simulator.config import configure, list_scenarios
from sagalab.simulator.errors import SimulationError
from sagalab.simulator.explore import MAX_SEEDS, ServiceBehaviour, Setup, run_seed
from sagalab.simulator.explore_checks import Exploration, check_seed, explore

#: Sagas per seed: each runs to its end before the next starts, so more only costs time.
MAX_SAGAS = 20
#: Faults one saga may meet in one seed.
MAX_FAULTS = 50
DEFAULTS = {"sagas": 2, "fault_rate": 0.25, "max_faults": 4}


def resolve(target: str) -> tuple[Setup, str]:
    """The setup for a flow (file or shipped example) or a scenario (file or shipped name),
    and which of the two it is; typer.Exit(2) with one line otherwise."""
    path = Path(target)
    try:
        if path.is_file():
            try:
                raw = safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise fail(f"{target}: not a readable YAML file: {first}", EXIT_USAGE) from None
            if not isinstance(raw, dict):
                raise fail(f"{target}: neither a flow nor a scenario (not a mapping)", EXIT_USAGE)
            if "steps" in raw:
                return Setup(load_flow(path), {}), "flow"
            return _scenario(target), "scenario"
        if target in example_flow_names():
            return Setup(load_flow(target), {}), "flow"
        if target in list_scenarios():
            return _scenario(target), "scenario"
    except (FlowValidationError, FlowNotFoundError, SimulationError, LimitError) as exc:
        raise fail(f"{target}: {exc}", EXIT_USAGE) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"{target} has a value of the wrong shape: {exc}", EXIT_USAGE) from None
    raise fail(
        f"no flow or scenario {target!r}: not a file; flows: {', '.join(example_flow_names())}; "
        f"scenarios: {', '.join(list_scenarios())}",
        EXIT_USAGE,
    )


def _scenario(target: str) -> Setup:
    config = configure(target)
    services = {
        name: ServiceBehaviour(float(s.get("error_rate", 0.0)), float(s.get("reject_rate", 0.0)))
        for name, s in config["services"].items()
    }
    return Setup(flow_from_dict(config["flow"], "flow"), services)


def replay_command(target: str, seed: int, options: dict[str, Any]) -> str:
    """The command that runs `seed` alone again, with its trace."""
    parts = ["sagalab", "simulate", "explore", target, "--seed", str(seed)]
    for name, default in DEFAULTS.items():
        if options[name] != default:
            parts += [f"--{name.replace('_', '-')}", str(options[name])]
    return shlex.join([*parts, "--replay"])


def explore_cmd(
    target: Annotated[
        str,
        typer.Argument(
            metavar="FLOW|SCENARIO",
            help="A flow (shipped example or file) or a scenario (name or file).",
        ),
    ],
    seeds: Annotated[
        int, typer.Option("--seeds", help=f"Explore seeds 1..N (at most {MAX_SEEDS:,}).")
    ] = 1000,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Run this one seed (with --replay: its trace).")
    ] = None,
    replay: Annotated[
        bool, typer.Option("--replay", help="With --seed: print every write, call and fault.")
    ] = False,
    sagas: Annotated[
        int, typer.Option("--sagas", help=f"Sagas per seed (at most {MAX_SAGAS}).")
    ] = DEFAULTS["sagas"],  # type: ignore[assignment]
    fault_rate: Annotated[
        float, typer.Option("--fault-rate", help="Chance of a fault at each commit and call.")
    ] = DEFAULTS["fault_rate"],
    max_faults: Annotated[
        int, typer.Option("--max-faults", help=f"Faults per saga (at most {MAX_FAULTS}).")
    ] = DEFAULTS["max_faults"],  # type: ignore[assignment]
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON report on stdout.")
    ] = False,
) -> None:
    """Explore crash and delivery orderings seed by seed through the real saga driver.

    Faults: a crash before or after every commit, a lease that runs out mid-call (the old
    holder must be fenced), an answer lost after the call applied, a duplicate delivery, a slow
    compensation, a service answering after the caller gave up. After each seed: every saga
    completed, rolled back or held for an operator with a reason; nothing applied twice; no
    write under a lost lease; compensations in reverse order, never without their action.
    """
    try:
        check("--seeds", seeds, low=1, high=MAX_SEEDS, why="about two minutes of exploring")
        if seed is not None:
            check("--seed", seed, low=0, high=2**63 - 1)
        check("--sagas", sagas, low=1, high=MAX_SAGAS, why="sagas per seed")
        check("--fault-rate", fault_rate, low=0.0, high=1.0, why="a probability")
        check("--max-faults", max_faults, low=0, high=MAX_FAULTS, why="faults per saga")
    except LimitError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if replay and seed is None:
        raise fail("--replay runs one seed: give it with --seed S", EXIT_USAGE)
    base, kind = resolve(target)
    setup = Setup(
        base.flow, base.services, sagas=sagas, fault_rate=fault_rate, max_faults=max_faults
    )
    options = {"sagas": sagas, "fault_rate": fault_rate, "max_faults": max_faults}
    if replay:
        assert seed is not None
        _replay(setup, target, seed, json_out)
        return
    chosen = range(seed, seed + 1) if seed is not None else range(1, seeds + 1)
    started = time.perf_counter()
    with Progress(
        TextColumn(f"[bold]explore {target}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} seeds"),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=len(chosen) < 1000,
    ) as progress:
        task = progress.add_task("explore", total=len(chosen))
        found = explore(
            setup,
            chosen,
            random.Random,
            progress=lambda done: progress.update(task, completed=done),
        )
    elapsed = time.perf_counter() - started
    report = found.to_dict()
    rate = found.seeds / elapsed * 60 if elapsed > 0 else 0.0
    report.update(
        target=target,
        kind=kind,
        flow=setup.flow.name,
        first_seed=chosen[0],
        last_seed=chosen[-1],
        sagas_per_seed=sagas,
        elapsed_s=round(elapsed, 3),
        seeds_per_minute=round(rate),
    )
    if found.failing_seed is not None:
        report["replay"] = replay_command(target, found.failing_seed, options)
    if json_out:
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _render(found, report)
    if found.failing_seed is not None:
        raise typer.Exit(EXIT_SAGA_FAILED)


def _render(found: Exploration, report: dict[str, Any]) -> None:
    echo = typer.echo
    echo(
        f"explored {found.seeds:,} seed(s) of {report['flow']} ({report['target']}): "
        f"{found.sagas:,} sagas, {report['sagas_per_seed']} per seed, in "
        f"{report['elapsed_s']:.2f} s ({report['seeds_per_minute']:,} seeds/min)"
    )
    faults = ", ".join(f"{k} {v:,}" for k, v in report["faults"].items()) or "none"
    echo(f"faults injected: {faults}")
    outcomes = ", ".join(f"{k} {v:,}" for k, v in report["outcomes"].items())
    echo(f"outcomes: {outcomes} (failed: held for an operator, with a reason)")
    echo(f"claims {found.claims:,}, writes fenced {found.fenced_writes:,}")
    if found.failing_seed is None:
        echo("no invariant broken")
        return
    echo(f"VIOLATION at seed {found.failing_seed} (the smallest failing seed explored):")
    for v in found.violations:
        echo(f"  {v.invariant} {v.saga}: {v.detail.strip()}")
    echo(f"fault schedule of seed {found.failing_seed}:")
    for f in found.failing_run.faults if found.failing_run else []:
        echo(f"  {f.describe()}")
    echo(f"replay: {report['replay']}")


def _replay(setup: Setup, target: str, seed: int, json_out: bool) -> None:
    run = run_seed(setup, seed, random.Random(seed), trace=True)
    violations, outcomes = check_seed(setup.flow, run)
    journals = {
        saga: [
            f"{e.type.value}"
            + (f" {e.step} {e.phase.value} #{e.attempt}" if e.step and e.phase else "")
            for e in events
        ]
        for saga, events in run.journals.items()
    }
    ledger = [
        f"{r.seq} {r.service} {r.operation.value} {r.idempotency_key}" + (" noop" if r.noop else "")
        for r in run.ledger
    ]
    if json_out:
        report = {
            "target": target,
            "seed": seed,
            "fault_schedule": [f.to_dict() for f in run.faults],
            "trace": run.trace,
            "journals": journals,
            "ledger": ledger,
            "outcomes": outcomes,
            "violations": [v.to_dict() for v in violations],
        }
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        echo = typer.echo
        echo(f"seed {seed} of {target}: {len(run.faults)} fault(s)")
        for line in run.trace or []:
            echo(f"  {line}")
        for saga, lines in journals.items():
            echo(f"journal {saga}: " + "; ".join(lines))
        echo("ledger: " + ("; ".join(ledger) or "empty"))
        for v in violations:
            echo(f"VIOLATION {v.invariant} {v.saga}: {v.detail.strip()}")
        if not violations:
            echo("no invariant broken")
    if violations:
        raise typer.Exit(EXIT_SAGA_FAILED)
