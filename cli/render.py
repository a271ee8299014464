"""Rich rendering for the orchestrator commands: the only place that draws tables."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from sagalab.orchestrator.jsonsafe import displayable
from sagalab.orchestrator.reconcile import Reconciliation
from sagalab.orchestrator.saga import Event

# Piped output (scripts, CI logs) is not width-limited to 80 columns: tables stay readable.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

STATUS_STYLE = {
    "completed": "green",
    "succeeded": "green",
    "rolled_back": "yellow",
    "compensated": "yellow",
    "compensating": "yellow",
    "running": "cyan",
    "retrying": "cyan",
    "pending": "dim",
    "failed": "bold red",
    "compensation_failed": "bold red",
    "skipped": "magenta",
    "compensation_skipped": "magenta",
    # An action a rollback gave up on; the first two may stand at the service.
    "interrupted": "bold yellow",
    "outcome_unknown": "bold yellow",
    "abandoned": "dim",
}


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S.%f")[:-3]
    except (OverflowError, ValueError, OSError):
        # a journal written before Retry-After was bounded may hold Infinity: show it
        return str(displayable(ts))


def print_json(data: Any) -> None:
    """Pure JSON on stdout."""
    text = json.dumps(displayable(data), indent=2, default=str, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def saga(view: dict[str, Any]) -> None:
    """A saga's header and step timeline."""
    out.print(
        Text.assemble(
            ("saga ", "bold"),
            (view["id"], "bold"),
            f"  flow {view['flow']} v{view['flow_version']}  ",
            styled(view["status"]),
        )
    )
    out.print(f"trace id {view['trace_id']}", style="dim")
    if view.get("idempotency_key"):
        out.print(f"idempotency key {view['idempotency_key']}", style="dim")
    if view.get("forked_from"):
        out.print(f"forked from {view['forked_from']}", style="dim")
    if view.get("forks"):
        out.print(f"forked as {', '.join(view['forks'])}", style="dim")
    if view.get("reason"):
        out.print(Text(f"reason: {view['reason']}", style="yellow"))
    table = Table(show_edge=False, pad_edge=False)
    for col in ("#", "step", "kind", "status", "tries", "undo tries", "started", "call ms"):
        table.add_column(col, justify="right" if col in ("#", "tries", "call ms") else "left")
    table.add_column("last error", overflow="fold", max_width=48)
    for i, s in enumerate(view["steps"], 1):
        table.add_row(
            str(i),
            s["name"],
            s["kind"],
            styled(s["status"]),
            str(s["attempts"]),
            str(s["compensation_attempts"]),
            when(s.get("started_at")),
            f"{s['call_ms']:.1f}" if s.get("call_ms") else "-",
            s.get("last_error") or "",
        )
    out.print(table)


def saga_list(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """One line per saga (on stdout, or `console`: a bulk action's preview goes to stderr)."""
    if not rows:
        err.print("no sagas match")
        return
    table = Table(show_edge=False, pad_edge=False)
    for col in ("id", "tenant", "flow", "status", "created", "updated", "reason"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["id"],
            r.get("tenant", ""),
            f"{r['flow']} v{r['flow_version']}",
            styled(r["status"]),
            when(r["created_at"]),
            when(r["updated_at"]),
            clip(r.get("damaged") or r.get("reason") or "", 60),
        )
    (console or out).print(table)


def events(rows: list[dict[str, Any]]) -> None:
    """The journal, one line per event."""
    table = Table(show_edge=False, pad_edge=False)
    for col in ("seq", "at", "event", "step", "phase", "try", "http", "ms", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        failure = r.get("failure") or {}
        detail = failure.get("error") or r.get("reason") or ""
        if r.get("not_before") is not None:
            detail = f"retry at {when(r['not_before'])}"
        table.add_row(
            str(r["seq"]),
            when(r["at"]),
            r["type"],
            r.get("step") or "",
            r.get("phase") or "",
            str(r["attempt"] or ""),
            str(r.get("status_code") or ""),
            f"{r['duration_ms']:.1f}" if r.get("duration_ms") else "",
            clip(detail, 80),
        )
    out.print(table)


def clip(text: str, width: int) -> str:
    """`text` on one line, cut at a word boundary with an ellipsis if longer than `width`."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > width // 2 else cut).rstrip(" ,;:") + "…"


def live_event(saga_id: str, event: Event) -> None:
    """A progress line on stderr as a saga moves."""
    # ids start with their creation time, so sagas started together differ only at the end
    parts = [f"[dim]…{saga_id[-8:]}[/]", event.type.value]
    if event.step:
        parts.append(f"{event.step}/{event.phase.value if event.phase else ''}")
    if event.attempt:
        parts.append(f"try {event.attempt}")
    if event.failure is not None:
        parts.append(f"[red]{escape(clip(event.failure.error, 90))}[/]")
    if event.not_before is not None:
        parts.append(f"in {max(0.0, event.not_before - event.at):.1f}s")
    err.print(" ".join(parts), soft_wrap=True)


def breaker_wait(saga_id: str, step: str, service: str, seconds: float) -> None:
    """A progress line on stderr while a saga waits for an open breaker (nothing is journaled)."""
    err.print(
        f"[dim]…{saga_id[-8:]}[/] waiting {seconds:.1f}s: the {service} breaker is open; "
        f"{step} is asked again once it may half-open",
        soft_wrap=True,
    )


def reconciliation_dict(result: Reconciliation) -> dict[str, Any]:
    """`sagalab verify --json`: the verdict, what was compared, and every finding."""
    return {
        "consistent": result.consistent,
        "sagas": result.sagas,
        "services": list(result.services),
        "ledger_entries": result.entries,
        "matched": result.matched,
        "unmatched": result.unmatched,
        "unchecked_steps": result.unchecked,
        "findings": [
            {
                "saga_id": f.saga_id,
                "kind": f.kind.value,
                "step": f.step,
                "service": f.service,
                "detail": f.detail,
                "keys": list(f.keys),
            }
            for f in result.findings
        ],
    }


def verdict_line(result: Reconciliation) -> Text:
    """One line: consistent or how many findings, and what was compared."""
    compared = (
        f"{result.sagas} sagas against {result.matched} ledger entries of "
        f"{', '.join(result.services) or 'no service'}"
    )
    if result.consistent:
        return Text.assemble(("verify: every saga done or undone", "green"), f" ({compared})")
    sagas = len({f.saga_id for f in result.findings})
    return Text.assemble(
        (f"verify: {len(result.findings)} finding(s) in {sagas} saga(s)", "bold red"),
        f" ({compared})",
    )


def reconciliation(result: Reconciliation) -> None:
    """The findings as a table (none: one line), then the verdict."""
    if result.findings:
        table = Table(show_edge=False, pad_edge=False)
        for col in ("saga", "finding", "step", "service", "detail"):
            table.add_column(col, overflow="fold")
        for f in result.findings:
            table.add_row(
                f.saga_id,
                Text(f.kind.value, style="bold red"),
                f.step or "",
                f.service or "",
                f.detail,
            )
        out.print(table)
    out.print(verdict_line(result))
    if result.unchecked:
        err.print(f"[dim]{result.unchecked} step(s) of services with no ledger not checked[/]")
    if result.unmatched:
        err.print(f"[dim]{result.unmatched} ledger entries belong to no saga checked[/]")


def fork_plan(plan: dict[str, Any], *, dry_run: bool) -> None:
    """A fork's plan, in the order it runs (on stdout for a dry run, else on stderr)."""
    console = out if dry_run else err

    def say(text: str, **options: Any) -> None:
        # emoji=False: a key such as "ID:ship:action" holds Rich's ":ship:" emoji code.
        console.print(text, emoji=False, **options)

    head = "fork plan (dry run)" if dry_run else "fork plan"
    say(
        f"[bold]{head}[/]: saga {plan['saga_id']} ({plan['old_status']}) from step "
        f"{plan['from_step']!r} as {plan['fork_id']}",
        soft_wrap=True,
    )
    comp = plan["compensate_first"]
    say(
        "  1. compensate first, in this order: " + (" -> ".join(comp) if comp else "nothing"),
        soft_wrap=True,
    )
    reused = ", ".join(f"{n} (key {k})" for n, k in plan["reused_keys"].items())
    say(f"  2. reuse: {reused or 'nothing'}", soft_wrap=True)
    rerun = ", ".join(f"{n} (new key {k})" for n, k in plan["new_keys"].items())
    say(f"  3. run again: {rerun}", soft_wrap=True)
    if plan["pivot"]:
        where = "reused" if plan["pivot"] in plan["reused_keys"] else "run again"
        applied = "applied" if plan["pivot_applied"] else "not applied"
        say(f"  pivot: {plan['pivot']} ({applied} in the old saga; {where})", soft_wrap=True)
    if plan["stays_applied"]:
        say(f"  stays applied: {', '.join(plan['stays_applied'])}", soft_wrap=True)
    for note in plan["notes"]:
        say(f"  [yellow]{escape(note)}[/]", soft_wrap=True)
    if plan["refusal"]:
        say(f"  [bold red]refused:[/] {escape(plan['refusal'])}", soft_wrap=True)


def follow_header(view: dict[str, Any]) -> None:
    """The first lines of `status --follow`: which saga, where it stands."""
    out.print(
        Text.assemble(
            ("following saga ", "bold"),
            (view["id"], "bold"),
            f"  flow {view['flow']} v{view['flow_version']}  ",
            styled(view["status"]),
        )
    )


def follow_event(row: dict[str, Any]) -> None:
    """One journal entry as a timeline line, as it is appended."""
    failure = row.get("failure") or {}
    detail = failure.get("error") or row.get("reason") or ""
    if row.get("not_before") is not None:
        detail = f"retry at {when(row['not_before'])}"
    step = row.get("step") or ""
    if step and row.get("phase"):
        step = f"{step}/{row['phase']}"
    parts = [
        f"{row['seq']:>4}",
        when(row["at"]),
        row["type"],
        step,
        f"try {row['attempt']}" if row.get("attempt") else "",
        str(row.get("status_code") or ""),
        f"{row['duration_ms']:.1f} ms" if row.get("duration_ms") else "",
        escape(clip(detail, 90)),
    ]
    out.print("  ".join(p for p in parts if p), soft_wrap=True, emoji=False)


def follow_end(status: str, reason: str | None) -> None:
    """The last line of `status --follow`."""
    tail = f": {escape(reason)}" if reason else ""
    out.print(Text.assemble("ended ", styled(status)), Text(tail), soft_wrap=True)
