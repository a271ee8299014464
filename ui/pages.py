"""The console's HTML, server-rendered from string templates.

Every value that comes from the database, a request or an uploaded file goes through `esc`
(html.escape, quotes too) before it reaches a page: a saga input holding `<script>` is shown
as text, never run. The pages work without the script; `static/ui.js` adds the live updates,
the timeline drawing and the action buttons.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from sagalab.orchestrator.saga import SagaStatus

if TYPE_CHECKING:  # the console's app imports this module
    from .app import ListQuery

__all__ = [
    "breakers_page",
    "error_page",
    "esc",
    "layout",
    "list_page",
    "saga_page",
    "saga_rows",
    "simulations_page",
]

ACTIONS = ("resume", "rollback", "retry-step", "cancel", "fork")


def esc(value: object) -> str:
    """`value` as HTML text (None as an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def when(at: float | None) -> str:
    """A UTC time as text, or a dash."""
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"


def layout(
    title: str, body: str, *, csrf: str, actions: bool, page: str = "", refresh: int = 0
) -> str:
    """A full page: the navigation, `body`, the stylesheet and the script (both local);
    reloaded every `refresh` seconds if set (a status board)."""
    nav = "".join(
        f'<a href="{href}"{" class=here" if page == name else ""}>{label}</a>'
        for name, href, label in (
            ("sagas", "/", "Sagas"),
            ("breakers", "/breakers", "Breakers and queue"),
            ("simulations", "/simulations", "Simulation reports"),
        )
    )
    mode = "actions allowed" if actions else "read-only"
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)} · sagalab</title>"
        f'<meta name="csrf-token" content="{esc(csrf)}">'
        + (f'<meta http-equiv="refresh" content="{refresh}">' if refresh else "")
        + '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/static/ui.css"></head>'
        f'<body data-actions="{"on" if actions else "off"}">'
        f"<header><strong>sagalab</strong> <nav>{nav}</nav> <span class=mode>{mode}</span>"
        f"</header><main>{body}</main>"
        '<script src="/static/ui.js"></script></body></html>'
    )


def error_page(status: int, message: str, *, csrf: str, actions: bool) -> str:
    """A 4xx/5xx page that says what happened."""
    body = f"<h1>{status}</h1><p class=error>{esc(message)}</p><p><a href='/'>All sagas</a></p>"
    return layout(str(status), body, csrf=csrf, actions=actions)


def saga_rows(items: Sequence[Mapping[str, Any]]) -> str:
    """The list's table rows (what the script rebuilds from /api/sagas when it polls)."""
    rows = []
    for s in items:
        rows.append(
            f'<tr data-id="{esc(s["id"])}"><td><a href="/sagas/{esc(s["id"])}">'
            f"{esc(s['id'])}</a></td><td>{esc(s['flow'])}</td>"
            f'<td><span class="status {esc(s["status"])}">{esc(s["status"])}</span></td>'
            f"<td>{esc(s['tenant'])}</td><td>{esc(when(s['created_at']))}</td>"
            f"<td>{esc(when(s['updated_at']))}</td>"
            f"<td class=reason>{esc(s.get('reason'))}</td></tr>"
        )
    return "".join(rows) or "<tr class=empty><td colspan=7>no saga matches</td></tr>"


_FIELD_HINTS = {
    "flow": "a flow's name",
    "step": "stopped at this step",
    "error": "text in the reason or a step's error",
    "since": "created at or after: 15m, 2h, 2026-11-25T18:00",
    "until": "created before (as since)",
    "key": "idempotency key",
    "tenant": "a tenant (default: all)",
}


def list_page(
    items: Sequence[Mapping[str, Any]],
    *,
    query: ListQuery,
    has_more: bool,
    csrf: str,
    actions: bool,
) -> str:
    """The saga list: the CLI's filters, a page of sagas newest first, paging links."""
    boxes = "".join(
        f'<label class=check><input type=checkbox name=status value="{s.value}"'
        f"{' checked' if s.value in query.statuses else ''}>{s.value}</label>"
        for s in SagaStatus
    )
    texts = "".join(
        f'<label>{name} <input name={name} value="{esc(query.texts.get(name))}" '
        f'title="{esc(hint)}" placeholder="{esc(hint)}" size=16></label>'
        for name, hint in _FIELD_HINTS.items()
    )
    inputs = "".join(
        f'<label>input <input name=input value="{esc(value)}" placeholder="key=value" '
        'title="the input has key equal to value (JSON or text)" size=16></label>'
        for value in (*query.inputs, "")
    )
    api = "/api/sagas?" + urlencode(query.params())
    last = items[-1]["id"] if items else ""
    parts = []
    if query.after:
        parts.append(f'<a href="/?{esc(urlencode(query.params(after="")))}">&larr; newest</a>')
    if has_more:
        older = urlencode(query.params(after=str(last)))
        parts.append(f'<a href="/?{esc(older)}" rel=next>older &rarr;</a>')
    body = f"""<h1>Sagas</h1>
<form class=filters method=get action="/">
<fieldset><legend>status</legend>{boxes}</fieldset>
{texts}{inputs}
<button type=submit>Filter</button> <a href="/">clear</a></form>
<table class=sagas><thead><tr><th>id</th><th>flow</th><th>status</th><th>tenant</th>
<th>created</th><th>updated</th><th>reason</th></tr></thead>
<tbody id=saga-rows data-poll="{esc(api)}">{saga_rows(items)}</tbody></table>
<p class=paging>{" ".join(parts)}</p>"""
    return layout("Sagas", body, csrf=csrf, actions=actions, page="sagas")


def _pre(value: Any) -> str:
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return f"<pre>{esc(text)}</pre>"


def _step_table(steps: Sequence[Mapping[str, Any]], calls: Mapping[str, Any]) -> str:
    rows = []
    for s in steps:
        call = calls.get(s["name"], {})
        rows.append(
            f"<tr><td>{esc(s['name'])}</td><td>{esc(s['kind'])}</td><td>{esc(s['service'])}</td>"
            f'<td><span class="status {esc(s["status"])}">{esc(s["status"])}</span></td>'
            f"<td>{esc(s['attempts'])} / {esc(s['compensation_attempts'])}</td>"
            f"<td class=reason>{esc(s['last_error'])}</td>"
            f"<td><code>{esc(call.get('request'))}</code></td>"
            f"<td><code>{esc(call.get('response'))}</code></td></tr>"
        )
    return (
        "<table class=steps><thead><tr><th>step</th><th>kind</th><th>service</th>"
        "<th>status</th><th>attempts / undo</th><th>last error</th><th>last request</th>"
        f"<th>last response</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _action_bar(view: Mapping[str, Any]) -> str:
    steps = "".join(
        f'<option value="{esc(s["name"])}">{esc(s["name"])}</option>' for s in view["steps"]
    )
    buttons = "".join(
        f'<button type=button class=action data-action="{a}">{a}</button>' for a in ACTIONS
    )
    return (
        f"<section class=actions><h2>Operator actions</h2>"
        f"<label>step <select id=action-step>{steps}</select></label> "
        f'<label>reason <input id=action-reason value="operator, from the console"></label> '
        f"{buttons}<div id=fork-plan hidden><h3>Fork plan</h3><pre id=fork-plan-text></pre>"
        "<button type=button id=fork-confirm>Fork as planned</button> "
        "<button type=button id=fork-cancel>Do not fork</button></div>"
        "<p id=action-result role=status></p></section>"
    )


def _trace_fact(trace_id: str, links: Sequence[tuple[str, str]]) -> str:
    """The trace id, a link to the first of `links` ((label, href): this console's span
    tree, an outside tracing UI), the others beside it."""
    code = f"<code id=trace-id>{esc(trace_id)}</code>"
    anchors = [
        f'<a href="{esc(href)}" title="{esc(label)}"'
        + ("" if href.startswith("/") else ' rel="noopener noreferrer"')
        for label, href in links
    ]
    if not anchors:
        return code
    rest = "".join(
        f" {a} class=trace-link>{esc(label)}</a>"
        for a, (label, _) in zip(anchors[1:], links[1:], strict=True)
    )
    return f"{anchors[0]} id=trace-link>{code}</a>{rest}"


def saga_page(
    view: Mapping[str, Any],
    calls: Mapping[str, Any],
    *,
    csrf: str,
    actions: bool,
    trace_links: Sequence[tuple[str, str]] = (),
) -> str:
    """One saga: summary, timeline (drawn by the script), steps, input, actions; the trace id
    links to each of `trace_links` ((label, href))."""
    sid = esc(view["id"])
    forks = ", ".join(f'<a href="/sagas/{esc(f)}">{esc(f)}</a>' for f in view.get("forks", []))
    parent = view.get("forked_from")
    facts = [
        ("flow", f"{esc(view['flow'])} v{esc(view['flow_version'])}"),
        (
            "status",
            f'<span id=saga-status class="status {esc(view["status"])}">'
            f"{esc(view['status'])}</span>",
        ),
        ("tenant", esc(view["tenant"])),
        ("trace id", _trace_fact(view["trace_id"], trace_links)),
        ("idempotency key", esc(view.get("idempotency_key")) or "-"),
        ("reason", f"<span id=saga-reason>{esc(view.get('reason')) or '-'}</span>"),
        ("created", esc(when(view["created_at"]))),
        ("updated", f"<span id=saga-updated>{esc(when(view['updated_at']))}</span>"),
    ]
    if parent:
        facts.append(("forked from", f'<a href="/sagas/{esc(parent)}">{esc(parent)}</a>'))
    if forks:
        facts.append(("forks", forks))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    body = f"""<h1>Saga <code>{sid}</code></h1>
<dl class=facts>{dl}</dl>
<section><h2>Timeline</h2>
<div id=timeline data-src="/api/sagas/{sid}/timeline"><p class=muted>drawing…</p></div>
<p class=legend><span class="key succeeded"></span>succeeded <span class="key failed"></span>failed
<span class="key interrupted"></span>interrupted <span class="key open"></span>in flight
<span class="key wait"></span>retry wait <span class="key closed"></span>breaker closed
<span class="key half-open"></span>half-open <span class="key open-breaker"></span>open
&#9670; operator &#9650; takeover (lease taken over) &#9679; step failed, saga ended</p></section>
{_action_bar(view) if actions else ""}
<section><h2>Steps</h2>{_step_table(view["steps"], calls)}</section>
<section><h2>Input</h2><div id=saga-input>{_pre(view["input"])}</div></section>"""
    return layout(f"Saga {view['id']}", body, csrf=csrf, actions=actions, page="sagas")


def breakers_page(
    rows: Iterable[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    queue: Mapping[str, float],
    counts: Mapping[str, int],
    *,
    csrf: str,
    actions: bool,
) -> str:
    """Breakers (current state, recent transitions) and the queue (depth, oldest age)."""
    brows = (
        "".join(
            f'<tr><td>{esc(r["name"])}</td><td><span class="status {esc(r["state"])}">'
            f"{esc(r['damaged'] or r['state'])}</span></td><td>{esc(r.get('fail_counter'))}</td>"
            f"<td>{esc(when(r.get('opened_time')))}</td><td>{esc(r.get('transitions'))}</td></tr>"
            for r in rows
        )
        or "<tr class=empty><td colspan=5>no breakers yet: they appear once a service is "
        "called</td></tr>"
    )
    erows = (
        "".join(
            f"<tr><td>{esc(when(e.get('at')))}</td><td>{esc(e.get('name'))}</td>"
            f"<td>{esc(e.get('old'))} &rarr; {esc(e.get('new'))}</td>"
            f"<td>{esc(e.get('owner'))}</td></tr>"
            for e in reversed(events[-50:])
        )
        or "<tr class=empty><td colspan=4>no transitions</td></tr>"
    )
    statuses = "".join(
        f'<tr><td><a href="/?status={esc(k)}">{esc(k)}</a></td><td>{esc(v)}</td></tr>'
        for k, v in sorted(counts.items())
    )
    body = f"""<h1>Breakers and queue</h1>
<section><h2>Queue</h2><dl class=facts id=queue>
<dt>depth (queued, unleased)</dt><dd id=queue-depth>{esc(int(queue.get("depth", 0)))}</dd>
<dt>under a live lease</dt><dd>{esc(int(queue.get("leased", 0)))}</dd>
<dt>oldest age</dt><dd id=queue-oldest>{esc(f"{queue.get('oldest_age', 0.0):.1f}")} s</dd></dl>
<table class=counts><thead><tr><th>status</th><th>sagas</th></tr></thead>
<tbody>{statuses}</tbody></table></section>
<section><h2>Breakers</h2><table class=breakers><thead><tr><th>service</th><th>state</th>
<th>failures</th><th>opened</th><th>transitions</th></tr></thead><tbody>{brows}</tbody></table>
<h3>Recent transitions</h3><table class=transitions><thead><tr><th>at</th><th>service</th>
<th>change</th><th>by</th></tr></thead><tbody>{erows}</tbody></table></section>"""
    return layout(
        "Breakers and queue", body, csrf=csrf, actions=actions, page="breakers", refresh=5
    )


def simulations_page(*, csrf: str, actions: bool) -> str:
    """Open a `simulate run` report (JSON) or its series (CSV): charts drawn as SVG."""
    body = """<h1>Simulation reports</h1>
<p>Open the files <code>sagalab simulate run SCENARIO</code> writes (or its <code>--json</code>
output): the report <code>.json</code> and the time series <code>.csv</code>. Nothing leaves
this machine: the file is read here and charted by this console.</p>
<p><input type=file id=sim-file accept=".json,.csv,application/json,text/csv" multiple></p>
<div id=sim-charts></div>"""
    return layout("Simulation reports", body, csrf=csrf, actions=actions, page="simulations")
