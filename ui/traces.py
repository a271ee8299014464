"""One trace's spans, read from a `--trace-file` (orchestrator/tracing.py's JSON lines), as the
tree the console's `/traces/{trace_id}` page draws; and the link to an outside tracing UI.

The file is read, never trusted: only its last `MAX_TRACE_BYTES` (the newest spans: the file
only grows), a line that mentions the trace but is not a span is skipped and counted, at most
`MAX_SPANS` spans are kept, and a FIFO or a directory is refused before anything is read.

The tree: a span hangs under its parent when the file holds it; a saga's run span has no
parent but the API's submit span links to it, so it hangs under that span ("linked"); a later
run links to the run before it and goes beside it ("follows"). What is left is a root, in
start order: edge -> gateway -> API -> runs -> attempts reads top to bottom.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .pages import esc, layout, when

__all__ = [
    "MAX_LINKS_SHOWN",
    "MAX_SPANS",
    "MAX_TRACE_BYTES",
    "Link",
    "Row",
    "Span",
    "SpanRead",
    "TraceUrlError",
    "check_trace_url",
    "read_spans",
    "span_tree",
    "trace_page",
    "valid_trace_id",
]

MAX_TRACE_BYTES = 32 * 1024 * 1024
MAX_SPANS = 2000
#: A span's links listed on its row (a hostile line can hold thousands; the rest are counted).
MAX_LINKS_SHOWN = 8
MAX_LINE = 1024 * 1024
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
#: One file read at a time: a burst of requests holds one window in memory, not one each.
_READING = threading.Lock()


class TraceUrlError(ValueError):
    """A `--trace-url` template the console cannot link with."""


def check_trace_url(template: str) -> str:
    """`template` if it is an http(s) URL holding `{trace_id}`, else TraceUrlError."""
    if "{trace_id}" not in template:
        raise TraceUrlError(f"--trace-url {template!r} has no {{trace_id}} to fill in")
    parts = urlsplit(template.replace("{trace_id}", "0" * 32))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TraceUrlError(f"--trace-url {template!r} is not an http:// or https:// URL")
    return template


def valid_trace_id(text: str) -> str | None:
    """`text` as a W3C trace id (32 hex digits, not all zero), lower case; else None."""
    trace_id = text.strip().lower()
    if _TRACE_ID.fullmatch(trace_id) and trace_id != "0" * 32:
        return trace_id
    return None


@dataclass(frozen=True)
class Link:
    """A span's link: the span it names (in this trace or not) and what kind of link."""

    span_id: str
    local: bool
    kind: str


@dataclass(frozen=True)
class Span:
    """The fields of a span line the page shows."""

    span_id: str
    parent_id: str | None
    name: str
    service: str
    start: int
    end: int
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    links: tuple[Link, ...] = ()


@dataclass(frozen=True)
class SpanRead:
    """What reading the file gave for one trace."""

    spans: list[Span]
    skipped: int = 0
    truncated: bool = False
    missing: bool = False


def _nanos(value: object) -> int | None:
    """A time in nanoseconds as OTLP has it (an unsigned 64-bit integer), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


def _span(obj: object, trace_id: str) -> Span | None:
    if not isinstance(obj, dict) or obj.get("trace_id") != trace_id:
        return None
    sid, parent, name = obj.get("span_id"), obj.get("parent_span_id"), obj.get("name")
    start, end = _nanos(obj.get("start_time_unix_nano")), _nanos(obj.get("end_time_unix_nano"))
    if not isinstance(sid, str) or not _SPAN_ID.fullmatch(sid) or not isinstance(name, str):
        return None
    if parent is not None and (not isinstance(parent, str) or not _SPAN_ID.fullmatch(parent)):
        return None
    if start is None or end is None:
        return None
    attrs, resource, status = (obj.get(k) for k in ("attributes", "resource", "status"))
    attrs = attrs if isinstance(attrs, dict) else {}
    resource = resource if isinstance(resource, dict) else {}
    code = status.get("code") if isinstance(status, dict) else None
    raw = obj.get("links")
    links = []
    for link in raw if isinstance(raw, list) else []:
        if isinstance(link, dict) and isinstance(link.get("span_id"), str):
            kind = link.get("attributes")
            kind = kind.get("sagalab.link", "link") if isinstance(kind, dict) else "link"
            links.append(Link(link["span_id"], link.get("trace_id") == trace_id, str(kind)))
    return Span(
        span_id=sid,
        parent_id=parent,
        name=name,
        service=str(resource.get("service.name", "-")),
        start=start,
        end=max(start, end),
        status=code if isinstance(code, str) else "UNSET",
        attributes=attrs,
        links=tuple(links),
    )


def read_spans(path: str | Path, trace_id: str, *, max_bytes: int = MAX_TRACE_BYTES) -> SpanRead:
    """The spans of `trace_id` in the JSON-lines file `path` (its last `max_bytes`), in start
    order, one per span id. OSError if it cannot be read (a missing file has no spans)."""
    with _READING:
        return _read(path, trace_id, max_bytes)


def _read(path: str | Path, trace_id: str, max_bytes: int) -> SpanRead:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the console
    except FileNotFoundError:
        return SpanRead([], missing=True)
    facts = os.fstat(fd)
    if not stat.S_ISREG(facts.st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    size = facts.st_size
    with os.fdopen(fd, "rb") as f:
        truncated = size > max_bytes
        if truncated:  # from the byte before the window: a line cut by it is dropped whole
            f.seek(size - max_bytes - 1)
        data = f.read(max_bytes + 1 if truncated else max_bytes)
    lines = data.split(b"\n")
    if truncated:
        lines = lines[1:]  # the piece before the first newline (empty if none was cut)
    needle = trace_id.encode()
    spans: dict[str, Span] = {}
    skipped = 0
    for line in lines:
        if needle not in line:
            continue
        try:
            span = _span(json.loads(line), trace_id) if len(line) <= MAX_LINE else None
        except (ValueError, RecursionError):
            span = None
        if span is None:
            skipped += 1
        elif len(spans) < MAX_SPANS:
            spans.setdefault(span.span_id, span)
    ordered = sorted(spans.values(), key=lambda s: (s.start, s.end))
    return SpanRead(ordered, skipped=skipped, truncated=truncated)


@dataclass(frozen=True)
class Row:
    """One line of the tree: a span, its depth, and how it was placed ("" under its parent,
    "linked" under the span linking to it, "follows" beside the run it follows)."""

    span: Span
    depth: int
    placed: str = ""


def span_tree(spans: list[Span]) -> list[Row]:
    """`spans` (in start order) as the rows of their tree, depth first."""
    by_id = {s.span_id: s for s in spans}
    linked_from: dict[str, str] = {}
    for s in spans:
        for link in s.links:
            target = by_id.get(link.span_id) if link.local else None
            # A link forward in time (submit -> run) nests; one back (run -> previous) follows.
            if target is not None and target is not s and s.start <= target.start:
                linked_from.setdefault(link.span_id, s.span_id)
    parent_of: dict[str, tuple[str | None, str]] = {}
    for s in spans:
        if s.parent_id in by_id:
            parent_of[s.span_id] = (s.parent_id, "")
        else:
            parent_of[s.span_id] = (linked_from.get(s.span_id), "linked")
    _place_followers(spans, by_id, parent_of)
    children: dict[str | None, list[Span]] = {}
    for s in spans:
        children.setdefault(parent_of[s.span_id][0], []).append(s)
    rows: list[Row] = []
    seen: set[str] = set()

    def walk(root: Span) -> None:
        stack = [(root, 0)]
        while stack:
            span, depth = stack.pop()
            if span.span_id in seen:
                continue
            seen.add(span.span_id)
            how = parent_of[span.span_id][1] if depth else ""
            rows.append(Row(span, depth, how))
            stack.extend((c, depth + 1) for c in reversed(children.get(span.span_id, [])))

    for s in children.get(None, []):
        walk(s)
    for s in spans:  # a cycle in a damaged file: shown from its earliest span
        walk(s)
    return rows


def _place_followers(
    spans: list[Span], by_id: dict[str, Span], parent_of: dict[str, tuple[str | None, str]]
) -> None:
    """Put each span still without a parent beside the first span it links to that has one
    (a run beside the run it follows), resolving a linked span first when it is itself
    unplaced: a chain of runs, in any order, in one visit per span and per link (a pass over
    all spans per link of the chain was quadratic on a hostile file)."""
    state: dict[str, bool] = {}  # span id -> placed for good (False: being placed)
    for root in spans:
        if root.span_id in state or parent_of[root.span_id][0] is not None:
            continue
        state[root.span_id] = False
        stack = [(root.span_id, 0)]  # a span being placed and its next link to look at
        while stack:
            sid, i = stack.pop()
            links = by_id[sid].links
            descended = False
            for j in range(i, len(links)):
                link, target = links[j], links[j].span_id
                if not link.local:
                    continue
                if target in by_id and target not in state and parent_of[target][0] is None:
                    state[target] = False  # place it first, then look at this link again
                    stack += [(sid, j), (target, 0)]
                    descended = True
                    break
                beside = parent_of.get(target, (None, ""))[0]
                if beside is not None and beside != sid:
                    parent_of[sid] = (beside, "follows")
                    break
            if not descended:
                state[sid] = True


WIDTH = 1000  # the bars' viewBox width: the trace's whole duration
_BARS = {"OK": "succeeded", "ERROR": "failed"}


def _ms(nanos: int) -> str:
    return f"{nanos / 1e6:.1f} ms"


def _outcome(span: Span) -> str:
    a = span.attributes
    text = str(a["saga.outcome"]) if "saga.outcome" in a else span.status.lower()
    code = a.get("http.response.status_code")
    return f"{text} (HTTP {code})" if code is not None else text


def trace_page(trace_id: str, read: SpanRead, source: str, *, csrf: str, actions: bool) -> str:
    """The span tree of one trace (`read` holds at least one span): a row per span, indented
    under its parent, with its bar on the trace's time axis and its links."""
    t0 = min(s.start for s in read.spans)
    total = max(max(s.end for s in read.spans) - t0, 1)
    names = {s.span_id: s.name for s in read.spans}
    body_rows = []
    for row in span_tree(read.spans):
        s = row.span
        x = (s.start - t0) * WIDTH / total
        width = min(max((s.end - s.start) * WIDTH / total, 2.0), WIDTH - x)
        tip = f"{s.name}: {_ms(s.start - t0)} + {_ms(s.end - s.start)}, {_outcome(s)}"
        bar = (
            f'<svg class=span-bar viewBox="0 0 {WIDTH} 10" preserveAspectRatio=none>'
            f'<rect class="bar {_BARS.get(s.status, "unset")}" x="{x:.1f}" y=0 '
            f'width="{width:.1f}" height=10><title>{esc(tip)}</title></rect></svg>'
        )
        note = f" <span class=muted>({row.placed})</span>" if row.placed else ""
        if row.depth == 0 and s.parent_id is not None:
            note = f" <span class=muted>(parent {esc(s.parent_id)} is not in the file)</span>"
        links = ", ".join(
            f'{esc(link.kind)} <a href="#span-{esc(link.span_id)}">{esc(names[link.span_id])}</a>'
            if link.local and link.span_id in names
            else f"{esc(link.kind)} <code>{esc(link.span_id)}</code>"
            for link in s.links[:MAX_LINKS_SHOWN]
        )
        if len(s.links) > MAX_LINKS_SHOWN:
            links += f" <span class=muted>and {len(s.links) - MAX_LINKS_SHOWN} more</span>"
        indent = "&nbsp;&nbsp;" * min(row.depth, 12) + ("&#9492; " if row.depth else "")
        body_rows.append(
            f'<tr id="span-{esc(s.span_id)}" class=span data-depth="{row.depth}" '
            f'data-name="{esc(s.name)}"><td class=name>{indent}{esc(s.name)}{note}</td>'
            f"<td>{esc(s.service)}</td><td>{esc(_ms(s.start - t0))}</td>"
            f"<td>{esc(_ms(s.end - s.start))}</td>"
            f'<td><span class="status {esc(s.status.lower())}">{esc(_outcome(s))}</span></td>'
            f"<td>{bar}</td><td>{links}</td></tr>"
        )
    sagas = dict.fromkeys(
        str(s.attributes["saga.id"]) for s in read.spans if "saga.id" in s.attributes
    )
    facts = [
        ("spans", str(len(read.spans))),
        ("services", esc(", ".join(sorted({s.service for s in read.spans})))),
        ("started", esc(when(t0 / 1e9))),
        ("duration", esc(_ms(total))),
        ("sagas", ", ".join(f'<a href="/sagas/{esc(i)}">{esc(i)}</a>' for i in sagas) or "-"),
        ("file", f"<code>{esc(source)}</code>"),
    ]
    notes = []
    if read.skipped:
        notes.append(f"{read.skipped} line(s) of this trace are not spans: skipped")
    if read.truncated:
        notes.append(f"only the file's last {MAX_TRACE_BYTES // 2**20} MiB were read")
    if len(read.spans) >= MAX_SPANS:
        notes.append(f"only the first {MAX_SPANS} spans are shown")
    body = f"""<h1>Trace <code id=trace>{esc(trace_id)}</code></h1>
<dl class=facts>{"".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)}</dl>
{"".join(f"<p class=muted>{esc(n)}</p>" for n in notes)}
<table class=spans><thead><tr><th>span</th><th>service</th><th>start</th><th>duration</th>
<th>outcome</th><th>0 &ndash; {esc(_ms(total))}</th><th>links</th></tr></thead>
<tbody>{"".join(body_rows)}</tbody></table>"""
    return layout(f"Trace {trace_id}", body, csrf=csrf, actions=actions, page="sagas")
