"""`simulate ramp`: one run whose load rises level by level, then falls back the same way.

Separate runs per level would each start from an idle system and could not show hysteresis;
one run carries the queue, the retries in flight and the breakers' states from one level to
the next, so a level met on the way down after an overload can be worse than on the way up
(a metastable failure). The figures and the comparison are pure
(`simulator.metastability`); this module only builds the run and reads the service counters
at each level's end.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import simpy

from .config import apply_override, load_scenario, validate
from .errors import ScenarioError
from .metastability import Stage, amplification, hysteresis, ramp_stages, stage_figures
from .model import Simulation

__all__ = ["COLUMNS", "MAX_LEVELS", "ramp"]

#: Per-second series columns averaged over each level.
COLUMNS = ("legit_offered", "completed", "rolled_back", "failed", "timeouts", "e2e_p95")
MAX_LEVELS = 50
"""At most fifty levels up (99 stages): a longer ramp says nothing more."""


def _config(
    scenario: str,
    stages: Sequence[Stage],
    sets: Sequence[str],
    group: str | None,
    seed: int | None,
) -> tuple[dict[str, Any], str]:
    config = load_scenario(scenario)
    for item in sets:
        apply_override(config, item)
    # The scenario's claims are about its own schedule, not about this ramp.
    config["claims"] = []
    clients = config.get("clients")
    if not isinstance(clients, list) or not clients or not isinstance(clients[0], dict):
        raise ScenarioError("clients", "needs at least one client group")
    names = [str(c.get("name", "")) for c in clients if isinstance(c, dict)]
    chosen = group if group is not None else names[0]
    if chosen not in names:
        raise ScenarioError("--group", f"no client group {chosen!r}; groups: {names}")
    target = clients[names.index(chosen)]
    target["rate"] = {"kind": "steps", "steps": [[s.start, s.rate] for s in stages]}
    target["population"] = None  # a ramp is open arrivals, also for a closed group
    validate(config, seed=seed, duration=stages[-1].end)
    return config, chosen


def ramp(
    scenario: str,
    levels: Sequence[float],
    *,
    hold: float,
    settle: float = 5.0,
    sets: Sequence[str] = (),
    group: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Run `scenario` with `group`'s (default: the first group's) arrivals stepping through
    `levels` up then down, `hold` seconds each; per level the mean of `COLUMNS` after `settle`
    seconds, the amplification per service over the level, and the hysteresis of goodput.
    ScenarioError on a bad level, hold, group or resulting scenario."""
    if len(levels) > MAX_LEVELS:
        raise ScenarioError("--levels", f"{len(levels)} levels is over the limit of {MAX_LEVELS}")
    try:
        stages = ramp_stages(levels, hold)
    except ValueError as exc:
        raise ScenarioError("--levels", str(exc)) from None
    if not 0 <= settle < hold:
        raise ScenarioError("--settle", f"must be from 0 to under --hold ({hold:g}), not {settle}")
    config, chosen = _config(scenario, stages, sets, group, seed)
    sim = Simulation(config, seed=seed, duration=stages[-1].end)
    marks: list[dict[str, tuple[int, int]]] = []

    def mark() -> Generator[simpy.Event, Any, None]:
        # The services' counters at each level's end: their differences are the level's calls.
        marks.append({n: (s.counts["calls"], s.useful) for n, s in sim.services.items()})
        for stage in stages:
            yield sim.env.timeout(stage.end - sim.env.now)
            marks.append({n: (s.counts["calls"], s.useful) for n, s in sim.services.items()})

    sim.env.process(mark())
    result = sim.run()
    # A run with nothing left to drain stops at the last level's end, before the mark due
    # then (SimPy stops ahead of events at its `until`): the counters now are those at the end.
    while len(marks) < len(stages) + 1:
        marks.append({n: (s.counts["calls"], s.useful) for n, s in sim.services.items()})
    figures = stage_figures(result.series, stages, COLUMNS, settle)
    for i, row in enumerate(figures):
        for name in sim.services:
            calls = marks[i + 1][name][0] - marks[i][name][0]
            useful = marks[i + 1][name][1] - marks[i][name][1]
            row[f"amplification_{name}"] = round(amplification(calls, useful), 6)
    return {
        "scenario": result.report["scenario"]["name"],
        "seed": sim.seed,
        "group": chosen,
        "hold": hold,
        "settle": settle,
        "stages": figures,
        "hysteresis": hysteresis(figures, "completed"),
        # By name: the sampled Little's-law check can miss on a run this far from
        # stationary (its standard error assumes independent samples), the saga ones cannot.
        "invariants_failed": [
            name for name, check in result.report["invariants"].items() if not check["ok"]
        ],
    }
