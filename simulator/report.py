"""The run report: plain data built from a finished `Simulation`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .claims import evaluate
from .metastability import RecoveryRule, amplification, baseline, rolling_mean, time_to_recover
from .metrics import waiting_summary
from .overload import extend_report

if TYPE_CHECKING:
    from .model import Simulation

__all__ = ["build_report", "shape_before_run"]

REQUEST_FIELDS = (
    "offered",
    "attempts",
    "admitted",
    "403",
    "429",
    "401",
    "503",
    "reset",
    "timeout",
    "retries",
    "gave_up",
)
NAMES = {"403": "blocked", "429": "rate_limited", "401": "unauthorized", "503": "unavailable"}


def _requests(counts: dict[str, int], kind: str, budgeted: bool) -> dict[str, int]:
    out = {NAMES.get(f, f): counts.get(f"{kind}.{f}", 0) for f in REQUEST_FIELDS}
    if budgeted:  # only then, so a report without a retry budget stays as it was
        out["retry_budget_refused"] = counts.get(f"{kind}.retry_budget_refused", 0)
    return out


def little_holds(tier: dict[str, Any]) -> bool:
    """Little's law at a drained tier: the occupancy read at the sampler's ticks (L_sampled)
    agrees with λW from the sojourn times, within four standard errors of the sampled mean and
    a small floor. The standard error is at least Poisson's, sqrt(λW / samples): a tier seldom
    occupied may be empty at every tick, which says nothing about its spread."""
    samples = tier["samples"]
    if not samples:
        return True  # nothing sampled (a run shorter than one interval): nothing to compare
    se = max(tier["L_sampled_se"], math.sqrt(tier["lambda_W"] / samples))
    tolerance = 4 * se + 0.05 * tier["lambda_W"] + 0.01
    return abs(tier["L_sampled"] - tier["lambda_W"]) <= tolerance


def build_report(sim: Simulation, now: float) -> dict[str, Any]:
    """Everything the summary, the JSON file and the claims need (deterministic)."""
    edge, orch = sim.edge, sim.orchestrator
    counts = edge.counts
    budgeted = edge.budget is not None or any(g.budget is not None for g, _ in sim.groups)
    statuses = sim.status_counts
    created = sim.next_id
    unfinished = len(sim.live)
    applied_twice = sum(s.counts["applied_twice"] for s in sim.services.values())
    replicas = sim.replica_samples or [orch.alive]
    little = {name: stats.little(now) for name, stats in sim.tiers().items()}
    little_ok = all(little_holds(v) for v in little.values() if v["present_at_end"] == 0)
    invariants = {
        "every saga ended (completed, rolled back or failed)": {
            "ok": unfinished == 0,
            "value": unfinished,
        },
        "no saga lost (created = ended + unfinished)": {
            "ok": created
            == statuses["completed"] + statuses["rolled_back"] + statuses["failed"] + unfinished
            and orch.unfinished() == unfinished,
            "value": created,
        },
        "failed sagas carry a reason": {
            "ok": sim.violations["failed_without_reason"] == 0,
            "value": sim.violations["failed_without_reason"],
        },
        "compensations ran in reverse order": {
            "ok": sim.violations["compensation_order"] == 0,
            "value": sim.violations["compensation_order"],
        },
        "rolled-back sagas undid every applied action": {
            "ok": sim.violations["applied_not_undone"] == 0,
            "value": sim.violations["applied_not_undone"],
        },
        "completed sagas applied every action": {
            "ok": sim.violations["completed_not_applied"] == 0,
            "value": sim.violations["completed_not_applied"],
        },
        "no service applied an operation twice": {"ok": applied_twice == 0, "value": applied_twice},
        "Little's law holds at every drained tier": {"ok": little_ok, "value": len(little)},
    }
    report: dict[str, Any] = {
        "scenario": {
            "name": sim.config.get("name", "unnamed"),
            "description": str(sim.config.get("description", "")).strip(),
            "shows": str(sim.config.get("shows", "")).strip(),
        },
        "seed": sim.seed,
        "duration": sim.duration,
        "simulated_until": round(now, 6),
        "requests": {
            "legit": _requests(counts, "legit", budgeted),
            "attacker": _requests(counts, "attacker", budgeted),
        },
        "firewall": {
            "denied": counts.get("firewall.denied", 0) + counts.get("firewall.not_allowed", 0),
            "flooding": counts.get("firewall.flooding", 0),
        },
        "balancer": {
            "connect_failed": counts.get("balancer.connect_failed", 0),
            "no_instance": counts.get("balancer.no_instance", 0),
            "ejections": counts.get("balancer.ejections", 0),
            "returns": counts.get("balancer.returns", 0),
            "gateway_crashes": counts.get("gateway.crashes", 0),
        },
        "sagas": {
            "created": created,
            "completed": statuses["completed"],
            "rolled_back": statuses["rolled_back"],
            "failed": statuses["failed"],
            "unfinished": unfinished,
            "duplicates": sim.duplicates,
            "orphaned_by_crash": orch.orphaned,
            "resumed": orch.counts.get("sagas_resumed", 0),
            "not_resumed": orch.orphaned - orch.counts.get("sagas_resumed", 0),
            "actions_refused_by_breaker": orch.counts.get("actions_refused_by_breaker", 0),
            "compensations_delayed_by_breaker": orch.counts.get(
                "compensations_delayed_by_breaker", 0
            ),
            "actions_delayed_by_breaker": orch.counts.get("actions_delayed_by_breaker", 0),
        },
        "latency": {
            "end_to_end": sim.e2e.summary(),
            "end_to_end_by_group": {
                name: h.summary() for name, h in sorted(sim.e2e_by_group.items())
            },
            "submit": edge.submit_latency["legit"].summary(),
            "firewall": edge.fw_station.response.summary(),
            "gateway": _merged([g.station.response for g in edge.gateways]),
            "queue_wait": orch.queue_wait.summary(),
            "services": {n: s.station.response.summary() for n, s in sim.services.items()},
        },
        "breakers": {
            name: {
                **sim.breaker_counts[name],
                "final": b.state,
                "open_at_end": int(b.state != "closed"),
            }
            for name, b in sim.breakers.items()
        },
        "breaker_transitions": sim.transitions,
        "replicas": {
            "initial": sim.initial_replicas,
            "min": min(replicas),
            "max": max(replicas),
            "mean": round(sum(replicas) / len(replicas), 3),
            "final": orch.alive,
            "scale_events": orch.scale_events,
            "crashes": orch.counts.get("replica_crashes", 0),
            "decisions": orch.decisions[:20],
        },
        "queue": {"peak_depth": sim.peak_depth, "peak_age": round(sim.peak_age, 6)},
        "services": {n: dict(s.counts) for n, s in sim.services.items()},
        "little": little,
        "invariants": invariants,
        "invariants_failed": sum(not v["ok"] for v in invariants.values()),
        "faults": _windows(sim),
    }
    report["waiting"] = waiting(sim)
    report["drain"] = {
        "seconds": round(max(now - sim.duration, 0.0), 6),
        "complete": int(not sim.left_over()),
        "left_over": sim.left_over(),
    }
    if sim.measure is not None:  # only then, so a report without a window stays as it was
        report["window"] = measured(sim)
    report["metastability"] = metastability(sim, report["faults"])
    if sim.database is not None:  # only then, so a report without it stays as it was
        report["database"] = sim.database.report()
    if sim.regions is not None:
        report["regions"] = sim.regions.report()
    extend_report(sim, report)  # throttling, queue timeouts, closed populations
    report["claims"] = evaluate(sim.config.get("claims") or [], report, sim.series)
    return report


def waiting(sim: Simulation) -> dict[str, Any]:
    """Per tier that queues, the wait before service and the probability of waiting. Keys
    have no dots (services and database stations nest), so a claim can name any of them:
    `waiting.services.payments.probability`."""
    edge, orch = sim.edge, sim.orchestrator
    stations = [edge.fw_station, *(g.station for g in edge.gateways)]
    out: dict[str, Any] = {s.name: s.waiting() for s in stations}
    out["queue"] = waiting_summary(orch.queue_wait.count - orch.queue_waits.count, orch.queue_waits)
    out["services"] = {name: s.station.waiting() for name, s in sim.services.items()}
    if sim.database is not None:
        out["database"] = {
            station.name.removeprefix("db."): station.waiting()
            for station in sim.database.stations()
        }
    return out


#: The report's figures that the measurement window limits (the rest cover the whole run).
WINDOWED = ("latency.end_to_end", "latency.end_to_end_by_group", "latency.submit", "window.sagas")


def measured(sim: Simulation) -> dict[str, Any]:
    """The measurement window: which arrivals the windowed figures cover, and their sagas."""
    start, end = sim.measure or (0.0, math.inf)
    span = min(end, sim.duration) - start
    completed = sim.measured["completed"]
    return {
        "start": start,
        "end": end if math.isfinite(end) else sim.duration,
        "covers": list(WINDOWED),
        "sagas": {
            "completed": completed,
            "rolled_back": sim.measured["rolled_back"],
            "failed": sim.measured["failed"],
        },
        "throughput": round(completed / span, 6) if span > 0 else 0.0,
    }


def shape_before_run(sim: Simulation) -> tuple[dict[str, Any], set[str]]:
    """The report (its keys; the numbers mean nothing yet) and the time series' columns that a
    run of `sim` will have, for checking claims before anything runs (`simulator.claims.check`).

    Read from the same code that builds them after a run, so the two cannot drift apart. It
    takes a sample at t=0: `sim` is spent and must not be run afterwards.
    """
    from .metrics import Histogram

    report = build_report(sim, 0.0)
    # Filled as sagas of a group end: every configured group will have its entry.
    by_group = report["latency"]["end_to_end_by_group"]
    for group, _ in sim.groups:
        by_group.setdefault(group.name, Histogram().summary())
    sim._sample(0.0)
    return report, set(sim.series[-1])


#: The health signal whose return after a fault is the time to recover: sagas completed per
#: second (goodput), averaged over `RECOVERY_WINDOW` seconds after the fault, back to within
#: `RECOVERY_RULE.tolerance` of its mean before the fault for `RECOVERY_RULE.hold` seconds.
RECOVERY_SIGNAL = "completed"
RECOVERY_WINDOW = 5.0
RECOVERY_RULE = RecoveryRule(tolerance=0.1, hold=5.0, higher_is_better=True)


def metastability(sim: Simulation, windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per service, the amplification factor; after the fault windows, the time to recover
    (None when the scenario has no fault window). See `simulator.metastability`."""
    amp = {
        name: {
            "calls": s.counts["calls"],
            "useful": s.useful,
            "factor": round(amplification(s.counts["calls"], s.useful), 6),
        }
        for name, s in sim.services.items()
    }
    # The clients' own amplification: attempts per request (a retry budget caps it).
    counts = sim.edge.counts
    clients = {
        kind: {
            "offered": counts.get(f"{kind}.offered", 0),
            "attempts": counts.get(f"{kind}.attempts", 0),
            "factor": round(
                amplification(counts.get(f"{kind}.attempts", 0), counts.get(f"{kind}.offered", 0)),
                6,
            ),
        }
        for kind in ("legit", "attacker")
    }
    return {
        "amplification": amp,
        "clients": clients,
        "recovery": recovery(sim.series, windows, sim),
    }


def recovery(
    series: list[dict[str, float]], windows: list[dict[str, Any]], sim: Simulation
) -> dict[str, Any] | None:
    """The time to recover after the last fault window ends (module constants above)."""
    if not windows:
        return None
    start = min(float(w["start"]) for w in windows)
    end = max(float(w["end"]) for w in windows)
    interval = sim.interval
    times = [row["t"] for row in series]
    values = [row[RECOVERY_SIGNAL] for row in series]
    out: dict[str, Any] = {
        "signal": RECOVERY_SIGNAL,
        "window": RECOVERY_WINDOW,
        "tolerance": RECOVERY_RULE.tolerance,
        "hold": RECOVERY_RULE.hold,
        "fault_start": start,
        "fault_end": end,
        "pre_fault_level": None,
        "recovered": 0,
        "time_to_recover": None,
    }
    try:  # the level before the fault, past the first quarter of it (the warm-up)
        level = baseline(times, values, start / 4, start)
    except ValueError:
        return out  # a fault from the start: no level to return to
    out["pre_fault_level"] = round(level, 6)
    after = [i for i, t in enumerate(times) if t > end]
    width = max(1, round(RECOVERY_WINDOW / interval))
    windowed = rolling_mean([values[i] for i in after], width)
    took = time_to_recover(
        [times[i] for i in after],
        windowed,
        fault_end=end,
        level=level,
        until=sim.duration,
        interval=interval,
        rule=RECOVERY_RULE,
    )
    if took is not None:
        out["recovered"] = 1
        out["time_to_recover"] = took
    return out


def _merged(histograms: list[Any]) -> dict[str, float]:
    from .metrics import Histogram

    total = Histogram()
    for h in histograms:
        total.merge(h)
    return total.summary()


def _windows(sim: Simulation) -> list[dict[str, Any]]:
    """Fault windows for chart annotations."""
    out: list[dict[str, Any]] = []
    for f in sim.faults:
        label = f"{f.service} {f.kind}" + (f" x{f.factor:g}" if f.kind == "slowdown" else "")
        out.append({"label": label, "start": f.start, "end": f.end})
    for c in sim.gw_crashes:
        start = float(c.get("at", 0))
        end = start + float(c.get("restart_after", sim.duration - start) or 0)
        out.append({"label": f"gateway-{c.get('instance', 0)} down", "start": start, "end": end})
    if sim.regions is not None:
        for start, end in sim.regions.windows:
            out.append({"label": "second region down", "start": start, "end": end})
    for c in sim.orch_crashes:
        start = float(c.get("at", 0))
        out.append({"label": f"{c.get('count', 1)} replica(s) crash", "start": start, "end": start})
    for group, node in sim.groups:
        rate = node.get("rate") or {}
        if rate.get("kind") == "spike":
            out.append(
                {
                    "label": f"{group.name} spike",
                    "start": float(rate["start"]),
                    "end": float(rate["end"]),
                }
            )
    return out
