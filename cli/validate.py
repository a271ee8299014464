"""`sagalab simulate validate SCENARIO`: the same scenario in SimPy and on a real loopback stack.

Thin shell: the plan and the comparison are `simulator.validate`, the real run
`stack.realrun`. Exit codes: 0 sim and real agree within the printed tolerance, 1 they do not,
2 bad input (unknown scenario, something the fake services cannot express, --duration out of
bounds), 5 the stack could not be started, 130 interrupted (the stack is stopped first).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sagalab.cli.errors import EXIT_ENVIRONMENT, EXIT_USAGE, fail
from sagalab.cli.signals import sigterm_raises
from sagalab.edge.errors import EdgeError
from sagalab.orchestrator.limits import LimitError
from sagalab.simulator import metrics
from sagalab.simulator.config import Node, configure
from sagalab.simulator.errors import SimulationError
from sagalab.simulator.model import Simulation
from sagalab.simulator.schedule import segments
from sagalab.simulator.validate import (
    DEFAULT_VALIDATE_DURATION,
    MAX_VALIDATE_DURATION,
    Tolerance,
    ValidationRefused,
    as_served,
    base_path_config,
    breaker_open_seconds,
    compare,
    figures,
    histogram_samples,
    plan,
)
from sagalab.stack.realrun import DRAIN_SECONDS, run_real

__all__ = ["validate_cmd"]

#: Simulated seconds (at one saga a second) for the model's own path.
BASE_SIM_SECONDS = 30.0


def _rates(config: dict[str, Any]) -> list[tuple[float, float, float]]:
    out = []
    for i, client in enumerate(config.get("clients") or []):
        if client.get("population") is not None:
            raise ValidationRefused(
                f"clients[{i}].population: a closed population is not expressed by validate "
                "(its load client sends open-loop arrivals)"
            )
        for start, end, at, peak in segments(Node(client["rate"], f"clients[{i}].rate")):
            if at(start) != peak or (math.isfinite(end) and at(end) != peak):
                raise ValidationRefused(f"clients[{i}].rate: a ramp is not expressed by validate")
            out.append((start, end, peak))
    return out


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        console=Console(stderr=True, highlight=False),
        transient=True,
    )


def validate_cmd(
    scenario: Annotated[str, typer.Argument(help="A shipped scenario name or a YAML file.")],
    duration: Annotated[
        float,
        typer.Option(
            "--duration",
            help=f"Seconds of arrivals, in both runs (at most {MAX_VALIDATE_DURATION:g}).",
        ),
    ] = DEFAULT_VALIDATE_DURATION,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed, 0 to 4,294,967,295.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting: key.path=value (repeatable)."),
    ] = None,
    service_latency: Annotated[
        bool,
        typer.Option(
            "--service-latency/--no-service-latency",
            help="Make each fake service wait the scenario's median latency less the stack's "
            "own call hop (measured on sagas run alone); off: the services add nothing.",
        ),
    ] = True,
    hop_correction: Annotated[
        bool,
        typer.Option(
            "--hop-correction/--no-hop-correction",
            help="Shift the real end-to-end latencies by the model's own path less the stack's "
            "(both measured on sagas run one at a time, the stack's before the arrivals).",
        ),
    ] = True,
    latency_tolerance: Annotated[
        float, typer.Option("--latency-tolerance", help="Relative error allowed on p50/p95.")
    ] = Tolerance.latency_rel,
    share_tolerance: Annotated[
        float, typer.Option("--share-tolerance", help="Absolute difference allowed on shares.")
    ] = Tolerance.share_abs,
    ks_d: Annotated[
        float, typer.Option("--ks-d", help="Largest KS D allowed on end-to-end latencies.")
    ] = Tolerance.ks_d,
    ks_shift: Annotated[
        float,
        typer.Option(
            "--ks-shift",
            help="Relative gap allowed between the two sides' latencies before the KS D is "
            "taken (0: the plain two-sample KS test).",
        ),
    ] = Tolerance.ks_shift,
    json_out: Annotated[bool, typer.Option("--json", help="Print the JSON report.")] = False,
) -> None:
    """Run SCENARIO in SimPy and on a real loopback stack of its own (open-loop arrivals at
    the scenario's rate, its service latencies, error rates and fault windows applied to the
    fake services, the same breaker settings); print sim against real with a KS test.

    Exit 1 if they differ beyond the printed tolerance; 2 for what cannot be expressed.
    """
    if not (0 < duration <= MAX_VALIDATE_DURATION):
        raise fail(
            f"--duration {duration:g} is outside 0 to {MAX_VALIDATE_DURATION:g} s (the real "
            "run takes that long in wall-clock time)",
            EXIT_USAGE,
        )
    for name, value in (
        ("--latency-tolerance", latency_tolerance),
        ("--share-tolerance", share_tolerance),
        ("--ks-d", ks_d),
    ):
        if not (0 < value <= 1 or (name == "--latency-tolerance" and 0 < value <= 10)):
            raise fail(f"{name} {value:g} is out of range", EXIT_USAGE)
    if not (0 <= ks_shift <= 1):
        raise fail(f"--ks-shift {ks_shift:g} is out of range (0 to 1)", EXIT_USAGE)
    tolerance = Tolerance(
        latency_rel=latency_tolerance, share_abs=share_tolerance, ks_d=ks_d, ks_shift=ks_shift
    )
    try:
        config = configure(scenario, set_ or [], seed=seed, duration=duration)
        the_plan = plan(
            config, duration=duration, segments=_rates(config), service_latency=service_latency
        )
        config = as_served(config)
    except (SimulationError, LimitError, ValidationRefused) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(
            f"scenario {scenario!r} has a value of the wrong shape: {exc}", EXIT_USAGE
        ) from None
    sim = Simulation(config, seed=seed, duration=duration)
    with _progress() as progress:
        task = progress.add_task("simulate", total=duration)
        result = sim.run(lambda now, total: progress.update(task, completed=now, total=total))
        real_task = progress.add_task("real stack: starting", total=duration)

        def tick(what: str, done: float, total: float) -> None:
            progress.update(real_task, description=f"real stack: {what}", completed=done)
            if what == "arrivals":
                progress.update(real_task, total=total)

        # SIGTERM stops the run as Ctrl-C does: the stack is stopped on the way out.
        with sigterm_raises():
            try:
                real = run_real(the_plan, seed=sim.seed, progress=tick)
            except KeyboardInterrupt:
                typer.echo("interrupted: the stack was stopped", err=True)
                raise typer.Exit(130) from None
            except (EdgeError, OSError, httpx.HTTPError) as exc:
                raise fail(f"the stack could not be run: {exc}", EXIT_ENVIRONMENT) from None
    report = result.report
    base_sim = Simulation(
        base_path_config(config, the_plan.standing),
        seed=sim.seed,
        duration=BASE_SIM_SECONDS,
    )
    base_sim.run()
    # Lower quartiles on both sides: a saga run alone may still wait for an idle worker's next
    # poll or a busy machine; the quartile is the path itself.
    sim_base = base_sim.e2e.quantile(0.25)
    real_base = sorted(real.base)[len(real.base) // 4] if real.base else sim_base
    # The sagas run alone can all have waited (a busy machine, a missed wake-up): the path is
    # never more than the least own path a saga of the loaded run showed.
    if real.least_own is not None:
        real_base = min(real_base, real.least_own)
    # Either sign: the model's default gateway and database times may be above or below the
    # stack's own path; the shift makes both start from the same fixed path.
    shift = real_base - sim_base if hop_correction else 0.0
    real_e2e = [max(0.0, x - shift) for x in real.e2e]
    sagas = report["sagas"]
    sim_e2e = histogram_samples(sim.e2e.counts, low=metrics._MIN, growth=metrics._GROWTH)
    sim_transitions = [(t["t"], t["service"], t["to"]) for t in report["breaker_transitions"]]
    until = duration + DRAIN_SECONDS
    sim_side = figures(
        sim_e2e,
        {k: sagas[k] for k in ("completed", "rolled_back", "failed", "unfinished")},
        breaker_open_seconds(sim_transitions, until=until),
        int(report["queue"]["peak_depth"]),
    )
    real_side = figures(
        real_e2e,
        real.statuses,
        breaker_open_seconds(sorted(real.transitions), until=until),
        real.peak_depth,
    )
    reset = float(config["breakers"]["reset_timeout"])
    verdict = compare(
        sim_side,
        real_side,
        sim_e2e,
        real_e2e,
        tolerance=tolerance,
        duration=duration,
        reset_timeout=reset,
    )
    out = {
        "scenario": str(config.get("name", scenario)),
        "seed": sim.seed,
        "duration": duration,
        "load": "open-loop Python client (Poisson arrivals), not Locust",
        "service_latency": "scenario median per service" if service_latency else "none added",
        "hop_correction": {
            "real_base_p25": round(real_base, 6),
            "real_base_sagas": len(real.base),
            "sim_base_p25": round(sim_base, 6),
            "subtracted": round(shift, 6),  # negative: added
            # Taken off each fake service's wait: the scenario's latency includes the hop.
            "call_hop": round(real.call_hop, 6),
            "raw_real_e2e_p50": figures(real.e2e, real.statuses, {}, 0)["e2e_p50"],
            "raw_real_e2e_p95": figures(real.e2e, real.statuses, {}, 0)["e2e_p95"],
        },
        "sim": sim_side,
        "real": {
            **real_side,
            "submitted": real.submitted,
            "submit_refused": real.refused,
            "stack_stopped": real.stack_gone,
        },
        **verdict,
    }
    if json_out:
        typer.echo(json.dumps(out, indent=2, sort_keys=True))
    else:
        _render(out)
    if not verdict["ok"]:
        raise typer.Exit(1)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _render(out: dict[str, Any]) -> None:
    console = Console(highlight=False)
    table = Table(title=f"{out['scenario']}: sim vs real ({out['duration']:g} s of arrivals)")
    for col in ("figure", "sim", "real", "check"):
        table.add_column(col)
    for row in out["rows"]:
        mark = {True: "ok", False: "[red]beyond[/]", None: "-"}[row["ok"]]
        table.add_row(row["figure"], _fmt(row["sim"]), _fmt(row["real"]), f"{mark} {row['bound']}")
    ks = out["ks"]
    table.add_row(
        "KS end-to-end",
        f"n={out['sim']['sagas']}",
        f"n={out['real']['sagas']}",
        f"{'ok' if ks['ok'] else '[red]beyond[/]'} D {ks['d_within_shift']:.3f} within the "
        f"shift (plain D {ks['d']:.3f}, p {ks['p_value']:.3g})",
    )
    console.print(table)
    console.print(f"tolerance: {out['tolerance']}")
    hop = out["hop_correction"]
    console.print(
        f"stack's own path: {hop['real_base_p25'] * 1000:.1f} ms real vs "
        f"{hop['sim_base_p25'] * 1000:.1f} ms modelled (lower quartile of sagas run alone, "
        "capped by the loaded run's least); "
        f"{hop['subtracted'] * 1000:.1f} ms subtracted from each real end-to-end latency; "
        f"each fake service waits its median less the stack's call hop of "
        f"{hop['call_hop'] * 1000:.1f} ms (raw "
        f"real p50 "
        f"{hop['raw_real_e2e_p50']:.4g} s, p95 {hop['raw_real_e2e_p95']:.4g} s)"
    )
    console.print(
        f"load: {out['load']}; submitted {out['real']['submitted']}, refused "
        f"{out['real']['submit_refused']}; service latency: {out['service_latency']}"
    )
    for item in out["not_expressed"]:
        console.print(f"not expressed: {item}")
    console.print("[bold green]agree[/]" if out["ok"] else "[bold red]differ[/]")
