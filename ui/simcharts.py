"""Charts of a `sagalab simulate run` report (its JSON) or time series (its CSV), as inline SVG.

The same quantities `simulator/output.py` plots with matplotlib into the PNG, drawn here as
SVG the browser shows (hover a point or a bar for its value). Every text from the file is
escaped; a file that is neither a report nor a series is `ReportError`, shown as such.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .pages import esc

__all__ = ["MAX_REPORT_BYTES", "ReportError", "render_report"]

#: The largest file the console charts (a 10-minute run's series is well under 1 MB).
MAX_REPORT_BYTES = 8 * 1024 * 1024
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf")
_W, _H, _PAD = 720, 170, 40


class ReportError(ValueError):
    """The file is not a simulation report or series this console can chart."""


def _num(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _frame(title: str, inner: str, height: int = _H) -> str:
    return (
        f"<figure class=chart><figcaption>{esc(title)}</figcaption>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" role=img aria-label="{esc(title)}">{inner}</svg></figure>'
    )


def line_chart(title: str, xs: Sequence[float], series: Mapping[str, Sequence[float]]) -> str:
    """Lines of `series` against `xs`, each point's value in its tooltip."""
    if not xs:
        return _frame(title, "<text x=10 y=20>no data</text>", 40)
    x0, x1 = min(xs), max(xs) or 1.0
    top = max((max(v, default=0.0) for v in series.values()), default=0.0) or 1.0

    def px(x: float) -> float:
        return _PAD + (x - x0) / ((x1 - x0) or 1.0) * (_W - 2 * _PAD)

    def py(y: float) -> float:
        return _H - 20 - y / top * (_H - 40)

    parts = [
        f"<line x1={_PAD} y1={_H - 20} x2={_W - _PAD} y2={_H - 20} class=axis />",
        f"<text x=2 y=14 class=tick>{esc(f'{top:.3g}')}</text>",
        f"<text x={_PAD} y={_H - 4} class=tick>{esc(f'{x0:g}')} s</text>",
        f"<text x={_W - _PAD - 30} y={_H - 4} class=tick>{esc(f'{x1:g}')} s</text>",
    ]
    for i, (name, values) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, values, strict=False))
        parts.append(
            f'<polyline fill=none stroke="{colour}" stroke-width=1.5 points="{points}">'
            f"<title>{esc(name)}</title></polyline>"
        )
        step = max(1, len(xs) // 120)  # hover targets, not one per sample of a long run
        for x, y in list(zip(xs, values, strict=False))[::step]:
            parts.append(
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r=2.5 fill="{colour}">'
                f"<title>{esc(name)} at {x:g} s: {y:.4g}</title></circle>"
            )
        parts.append(
            f'<text x="{_PAD + 10 + i * 130}" y=14 fill="{colour}" class=key>{esc(name)}</text>'
        )
    return _frame(title, "".join(parts))


def bar_chart(title: str, bars: Mapping[str, float]) -> str:
    """Horizontal bars, one per item, each value in its tooltip and its label."""
    top = max(bars.values(), default=0.0) or 1.0
    height = 22 * len(bars) + 10
    parts = []
    for i, (name, value) in enumerate(bars.items()):
        y = 5 + 22 * i
        width = value / top * (_W - 240)
        parts.append(
            f'<text x=4 y="{y + 14}" class=tick>{esc(name)}</text>'
            f'<rect x=150 y="{y}" width="{max(width, 1):.1f}" height=16 '
            f'fill="{_COLOURS[i % len(_COLOURS)]}"><title>{esc(name)}: {value:g}</title></rect>'
            f'<text x="{155 + width:.1f}" y="{y + 14}" class=tick>{esc(f"{value:g}")}</text>'
        )
    return _frame(title, "".join(parts), height)


def breaker_chart(report: Mapping[str, Any]) -> str:
    """Each service's breaker over the run (low closed, middle half-open, high open), fault
    windows shaded."""
    names = sorted(report.get("breakers") or {})
    duration = _num(report.get("simulated_until") or report.get("duration")) or 1.0
    level = {"closed": 0.0, "half-open": 0.5, "open": 1.0}
    lane = 30
    height = lane * max(len(names), 1) + 30

    def px(t: float) -> float:
        return 150 + t / duration * (_W - 170)

    parts = []
    for f in report.get("faults") or []:
        start, end = _num(f.get("start")), _num(f.get("end"))
        parts.append(
            f'<rect x="{px(start):.1f}" y=0 width="{max(px(end) - px(start), 2):.1f}" '
            f'height="{height - 20}" class=fault><title>{esc(f.get("label"))}: '
            f"{start:g}-{end:g} s</title></rect>"
        )
    transitions = [t for t in report.get("breaker_transitions") or [] if isinstance(t, Mapping)]
    for i, name in enumerate(names):
        base = 10 + lane * i + 20
        points, state = [f"{px(0):.1f},{base}"], 0.0
        for tr in transitions:
            if tr.get("service") != name:
                continue
            t = _num(tr.get("t"))
            points.append(f"{px(t):.1f},{base - state * 18:.1f}")
            state = level.get(str(tr.get("to")), 1.0)
            points.append(f"{px(t):.1f},{base - state * 18:.1f}")
        points.append(f"{px(duration):.1f},{base - state * 18:.1f}")
        parts.append(
            f'<text x=4 y="{base}" class=tick>{esc(name)}</text><polyline fill=none '
            f'stroke="{_COLOURS[i % len(_COLOURS)]}" stroke-width=2 points="{" ".join(points)}">'
            f"<title>breaker {esc(name)}</title></polyline>"
        )
    parts.append(f'<text x=150 y="{height - 4}" class=tick>0 s</text>')
    parts.append(f'<text x="{_W - 60}" y="{height - 4}" class=tick>{duration:g} s</text>')
    return _frame(
        "Circuit breakers (low closed, middle half-open, high open)", "".join(parts), height
    )


def _report_html(report: Mapping[str, Any]) -> str:
    scenario = report.get("scenario") or {}
    sagas = report.get("sagas") or {}
    latency = (report.get("latency") or {}).get("end_to_end") or {}
    outcomes = {k: _num(sagas.get(k)) for k in ("created", "completed", "rolled_back", "failed")}
    quantiles = {k: _num(latency.get(k)) for k in ("p50", "p95", "p99", "max")}
    claims = "".join(
        f'<li class="{"ok" if c.get("ok") else "bad"}">{"✔" if c.get("ok") else "✘"} '
        f"{esc(c.get('text'))} <code>{esc(c.get('check'))}</code> = {esc(c.get('value'))}</li>"
        for c in report.get("claims") or []
        if isinstance(c, Mapping)
    )
    return (
        f"<section class=sim><h2>{esc(scenario.get('name'))} (seed {esc(report.get('seed'))})"
        f"</h2><p>{esc(scenario.get('description'))}</p>"
        f"<p>invariants failed: {esc(report.get('invariants_failed'))}</p><ul>{claims}</ul>"
        f"{bar_chart('Sagas', outcomes)}{bar_chart('End-to-end latency (s)', quantiles)}"
        f"{breaker_chart(report)}</section>"
    )


def _series_html(text: str) -> str:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "t" not in rows[0]:
        raise ReportError("a CSV series needs a header with a 't' column and rows")
    xs = [_num(r.get("t")) for r in rows]

    def cols(*names: str) -> dict[str, list[float]]:
        return {n: [_num(r.get(n)) for r in rows] for n in names if n in rows[0]}

    breakers = [k for k in rows[0] if k.startswith("breaker_")]
    charts = [
        ("Throughput (per second)", cols("legit_offered", "completed", "rolled_back", "failed")),
        ("End-to-end latency (s)", cols("e2e_p50", "e2e_p95", "e2e_p99")),
        ("Queue", cols("queue_depth", "oldest_age")),
        ("Replicas and gateways", cols("replicas", "gateways_healthy")),
        ("Breakers (0 closed, 1 open)", cols(*breakers)),
    ]
    return (
        "<section class=sim><h2>Time series</h2>"
        + "".join(line_chart(title, xs, series) for title, series in charts if series)
        + "</section>"
    )


def render_report(text: str) -> str:
    """HTML (with SVG charts) for a report's JSON text or a series' CSV text."""
    if len(text) > MAX_REPORT_BYTES:
        raise ReportError(f"the file is over {MAX_REPORT_BYTES // 1024 // 1024} MB")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            report = json.loads(stripped)
        except (ValueError, RecursionError) as exc:
            raise ReportError(f"not JSON: {exc}") from None
        if not isinstance(report, dict) or "scenario" not in report or "sagas" not in report:
            raise ReportError("not a `simulate run` report: no scenario or sagas")
        try:
            return _report_html(report)
        except (AttributeError, TypeError) as exc:
            raise ReportError(f"a report value has the wrong shape: {exc}") from None
    try:
        return _series_html(stripped)
    except csv.Error as exc:
        raise ReportError(f"not a CSV series: {exc}") from None
