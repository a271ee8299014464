"""Rich rendering of simulator results (the CLI's tables); no logic of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

__all__ = ["render_compare", "render_list", "render_summary", "render_sweep"]


def render_list(console: Console, scenarios: Mapping[str, Mapping[str, Any]]) -> None:
    table = Table(title="Shipped scenarios", show_lines=True)
    table.add_column("name", style="bold")
    table.add_column("duration")
    table.add_column("shows")
    for name, raw in scenarios.items():
        shows = " ".join(str(raw.get("shows", "")).split())
        table.add_row(name, f"{raw.get('duration', 60)} s", shows)
    console.print(table)


def _ms(summary: Mapping[str, float]) -> tuple[str, str, str]:
    return (
        f"{summary['p50'] * 1000:.1f}",
        f"{summary['p95'] * 1000:.1f}",
        f"{summary['p99'] * 1000:.1f}",
    )


def render_summary(console: Console, report: Mapping[str, Any], files: Sequence[str]) -> None:
    scenario = report["scenario"]
    console.print(
        f"[bold]{scenario['name']}[/bold] seed {report['seed']}, "
        f"{report['duration']:g} s of arrivals, ended at {report['simulated_until']:g} s"
    )
    if scenario.get("shows"):
        console.print(f"[dim]{scenario['shows']}[/dim]")

    req = Table(title="Requests (403 blocked, 429 rate-limited, 401 no key, 503 unavailable)")
    heads = ("who", "offered", "admitted", "403", "429", "401", "503", "timeout", "gave up")
    for col in heads:
        req.add_column(col, justify="right" if col != "who" else "left")
    fields = ("offered", "admitted", "blocked", "rate_limited", "unauthorized", "unavailable")
    for who in ("legit", "attacker"):
        r = report["requests"][who]
        if r["offered"]:
            req.add_row(who, *(str(r[k]) for k in (*fields, "timeout", "gave_up")))
    console.print(req)

    s = report["sagas"]
    sagas = Table(title="Sagas")
    for col in (
        "created",
        "completed",
        "rolled back",
        "failed",
        "unfinished",
        "resumed",
        "breaker-refused",
    ):
        sagas.add_column(col, justify="right")
    sagas.add_row(
        *(
            str(s[k])
            for k in (
                "created",
                "completed",
                "rolled_back",
                "failed",
                "unfinished",
                "resumed",
                "actions_refused_by_breaker",
            )
        )
    )
    console.print(sagas)

    lat = Table(title="Latency (ms)")
    for col in ("tier", "p50", "p95", "p99"):
        lat.add_column(col, justify="right" if col != "tier" else "left")
    latency = report["latency"]
    lat.add_row("end to end (customers)", *_ms(latency["end_to_end"]))
    for name in ("submit", "firewall", "gateway", "queue_wait"):
        lat.add_row(name.replace("_", " "), *_ms(latency[name]))
    for name, summary in latency["services"].items():
        lat.add_row(f"service {name}", *_ms(summary))
    window = report.get("window")
    if window is not None:
        console.print(
            f"[dim]End-to-end and submit latency: arrivals from {window['start']:g} s to "
            f"{window['end']:g} s only ({window['throughput']:g} completed/s).[/dim]"
        )
    console.print(lat)
    _render_waiting(console, report.get("waiting"))

    ops = Table(title="Breakers, replicas, queue")
    ops.add_column("what")
    ops.add_column("value")
    for name, b in report["breakers"].items():
        if b["opened"] or b["final"] != "closed":
            ops.add_row(
                f"breaker {name}",
                f"opened {b['opened']}x, half-open {b['half_opened']}x, "
                f"closed {b['closed']}x, now {b['final']}",
            )
    if not any(b["opened"] for b in report["breakers"].values()):
        ops.add_row("breakers", "all stayed closed" if report["breakers"] else "disabled")
    rep = report["replicas"]
    ops.add_row(
        "replicas",
        f"{rep['initial']} at start, {rep['min']}..{rep['max']} "
        f"(mean {rep['mean']}), {rep['final']} at end, {rep['scale_events']} scaling "
        f"decisions, {rep['crashes']} crashed",
    )
    q = report["queue"]
    ops.add_row("queue peak", f"{q['peak_depth']} sagas, oldest {q['peak_age']:.2f} s")
    meta = report.get("metastability")
    if meta is not None:
        amp = meta["amplification"]
        ops.add_row(
            "amplification",
            ", ".join(f"{name} {a['factor']:.2f}x" for name, a in amp.items()) or "no services",
        )
        ops.add_row("recovery", _recovery(meta["recovery"]))
    _overload_rows(ops, report)
    drain = report.get("drain")
    if drain is not None:
        left = ", ".join(f"{tier} {n}" for tier, n in drain["left_over"].items())
        outcome = f"left over: {left}" if left else "every tier empty"
        ops.add_row("drain", f"{drain['seconds']:g} s, {outcome}")
    console.print(ops)

    checks = Table(title="Invariants and claims")
    checks.add_column("", width=4)
    checks.add_column("check")
    checks.add_column("value", justify="right")
    for text, inv in report["invariants"].items():
        checks.add_row(_mark(inv["ok"]), text, str(inv["value"]))
    for claim in report["claims"]:
        detail = claim.get("error") or str(claim.get("value"))
        checks.add_row(_mark(claim["ok"]), f"{claim['text']}  [dim]{claim['check']}[/dim]", detail)
    console.print(checks)
    for f in files:
        console.print(f"wrote {f}")


def _overload_rows(ops: Table, report: Mapping[str, Any]) -> None:
    """Rows of the overload settings that are on (`simulator.overload`)."""
    for who in ("legit", "attacker"):
        throttled = report["requests"][who].get("throttled")
        if throttled is not None:
            ops.add_row(f"throttled ({who})", f"{throttled} requests refused by their own clients")
    dropped = report.get("queue_timeouts")
    if dropped:
        ops.add_row("queue timeouts", ", ".join(f"{tier} {n}" for tier, n in dropped.items()))
    for name, pop in (report.get("populations") or {}).items():
        r_ms = pop["response"]["mean"] * 1000
        ops.add_row(
            f"population {name}",
            f"{pop['users']} users, {pop['throughput']:.2f} requests/s "
            f"(N / (R + Z): {pop['law_throughput']:.2f}), R {r_ms:.1f} ms",
        )


def _render_waiting(console: Console, waiting: Mapping[str, Any] | None) -> None:
    """The tiers where work waited before service: P(wait) and the wait (ms)."""
    if not waiting:
        return
    flat = {k: v for k, v in waiting.items() if "probability" in v}
    for group, label in (("services", "service"), ("database", "db")):
        flat.update({f"{label} {k}": v for k, v in waiting.get(group, {}).items()})
    rows = [(name, w) for name, w in flat.items() if w["waited"]]
    if not rows:
        console.print("[dim]Waiting: no work waited for a server at any tier.[/dim]")
        return
    table = Table(title="Waiting before service (ms)")
    for col in ("tier", "P(wait)", "mean", "p50", "p95"):
        table.add_column(col, justify="right" if col != "tier" else "left")
    for name, w in rows:
        table.add_row(
            name,
            f"{w['probability']:.3f}",
            *(f"{w[k] * 1000:.1f}" for k in ("mean", "p50", "p95")),
        )
    console.print(table)


def _recovery(rec: Mapping[str, Any] | None) -> str:
    if rec is None:
        return "no fault window"
    if rec["pre_fault_level"] is None:
        return "no level before the fault to return to"
    where = f"after {rec['fault_end']:g} s, to {rec['pre_fault_level']:.1f} {rec['signal']}/s"
    if not rec["recovered"]:
        return f"did not recover ({where})"
    return f"{rec['time_to_recover']:g} s ({where})"


def _mark(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]FAIL[/red]"


def render_sweep(console: Console, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    table = Table(title="Sweep")
    for k in keys:
        table.add_column(k)
    metrics = (
        "completed",
        "rolled_back",
        "failed",
        "e2e_p95",
        "invariants_failed",
        "claims_failed",
    )
    for m in metrics:
        table.add_column(m, justify="right")
    for row in rows:
        table.add_row(*(str(row[k]) for k in keys), *(str(row[m]) for m in metrics))
    console.print(table)


def render_replicated(
    console: Console, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> None:
    """A metric replicated over seeds: per combination, its mean and 95 % interval."""
    first = rows[0] if rows else {}
    table = Table(title=f"{first.get('metric', '')} over {first.get('seeds', 0)} seeds")
    for k in [*keys, "mean", "95% low", "95% high", "measured"]:
        table.add_column(k, justify="left" if k in keys else "right")
    for row in rows:
        cells = [row["mean"], row["low"], row["high"]]
        shown = ["-" if c is None else f"{c:.6g}" for c in cells]
        table.add_row(*(str(row[k]) for k in keys), *shown, f"{row['measured']}/{row['seeds']}")
    console.print(table)


def render_ramp(console: Console, result: Mapping[str, Any]) -> None:
    """Each level of a ramp (up, then down) and goodput's hysteresis."""
    stages = result["stages"]
    table = Table(
        title=f"Ramp: {result['scenario']} (group {result['group']}, seed {result['seed']})"
    )
    shown = ["legit_offered", "completed", "rolled_back", "failed", "e2e_p95"]
    heads = ["offered/s", "done/s", "undone/s", "failed/s", "p95 s"]
    amp = [k for k in (stages[0] if stages else {}) if k.startswith("amplification_")]
    table.add_column("way")
    table.add_column("rate/s", justify="right")
    for head in heads:
        table.add_column(head, justify="right")
    for k in amp:  # each service's amplification factor over the level
        table.add_column(k.removeprefix("amplification_")[:8] + " x", justify="right")
    for row in stages:
        table.add_row(row["direction"], _num(row["rate"]), *(_num(row[k]) for k in shown + amp))
    console.print(table)
    for h in result["hysteresis"]:
        console.print(
            f"at {_num(h['rate'])}/s: {_num(h['up'])} completed/s on the way up, "
            f"{_num(h['down'])} on the way down"
        )
    for name in result["invariants_failed"]:
        console.print(f"[red]FAIL[/red] invariant: {name}")


def _num(x: float) -> str:
    if abs(x) >= 1000 or x == int(x):
        return f"{x:,.0f}"
    return f"{x:.3g}"


def render_compare(console: Console, result: Mapping[str, Any]) -> None:
    """Each figure: base and variant means, their difference and its 95 % interval."""
    seeds = result["seeds"]
    base, variant = result["base"]["name"], result["variant"]["name"]
    if result.get("variant_sets"):
        variant = f"{variant} ({', '.join(result['variant_sets'])})"
    table = Table(
        title=f"{variant} - {base}, {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}): "
        "means, difference, paired 95 % interval (* significant)",
        box=box.SIMPLE,
    )
    for col in ("", "figure", "base", "variant", "diff", "95 % interval"):
        table.add_column(col, justify="left" if col in ("", "figure") else "right", no_wrap=True)
    for name, f in result["figures"].items():
        table.add_row(
            "[bold]*[/bold]" if f["significant"] else "",
            name,
            _num(f["base"]),
            _num(f["variant"]),
            _num(f["difference"]),
            f"[{_num(f['low'])}, {_num(f['high'])}]",
        )
    console.print(table)
    bad = result["invariants_failed"]
    if bad["base"] or bad["variant"]:
        console.print(
            f"[red]invariants failed[/red]: {bad['base']} in base runs, "
            f"{bad['variant']} in variant runs (`simulate run` shows which)"
        )
