"""Scenario claims: one-line checks evaluated against a run's report and time series.

A claim is `LHS OP NUMBER`, OP one of < <= > >= == !=, and LHS either a dotted path into the
report (`breakers.payments.opened`, `latency.end_to_end.p95`) or a window over the time series,
`window(START, END).COLUMN[.mean|.max|.min|.sum]` (mean by default; END may be `end`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from simulator.errors import ClaimError

__all__ = ["evaluate", "metric"]

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
# The window aggregates `_WINDOW` accepts, over a non-empty list of samples.
_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda values: sum(values) / len(values),
    "max": max,
    "min": min,
    "sum": sum,
}
_CLAIM = re.compile(r"^\s*(?P<lhs>\S+(?:\s*,\s*\S+)?)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<rhs>\S+)\s*$")
_WINDOW = re.compile(
    r"^window\(\s*(?P<a>[\d.]+)\s*,\s*(?P<b>[\d.]+|end)\s*\)\.(?P<col>\w+)(?:\.(?P<agg>mean|max|min|sum))?$"
)


def metric(lhs: str, report: Mapping[str, Any], series: Sequence[Mapping[str, Any]]) -> float:
    """The value `lhs` names (see the module docstring)."""
    lhs = lhs.replace(" ", "")
    window = _WINDOW.match(lhs)
    if window:
        a = float(window["a"])
        b = float("inf") if window["b"] == "end" else float(window["b"])
        col = window["col"]
        if series and col not in series[0]:
            raise ClaimError(f"time series has no column {col!r}; columns: {sorted(series[0])}")
        values = [float(row[col]) for row in series if a < row["t"] <= b]
        if not values:
            raise ClaimError(f"window({window['a']}, {window['b']}) holds no sample")
        return _AGGREGATES[window["agg"] or "mean"](values)
    node: Any = report
    for part in lhs.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            raise ClaimError(f"the report has no metric {lhs!r} (missing {part!r})")
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise ClaimError(f"{lhs!r} is not a number")
    return float(node)


def evaluate(
    claims: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any],
    series: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Each claim with `ok` and the measured `value` (or an `error`)."""
    out: list[dict[str, Any]] = []
    for i, claim in enumerate(claims):
        text = str(claim.get("text", "")) if isinstance(claim, Mapping) else ""
        check = str(claim.get("check", "")) if isinstance(claim, Mapping) else str(claim)
        match = _CLAIM.match(check)
        entry: dict[str, Any] = {"text": text, "check": check}
        try:
            if not match:
                raise ClaimError(
                    f"claims[{i}]: cannot parse {check!r}: expected 'metric OP number'"
                )
            value = metric(match["lhs"], report, series)
            try:
                bound = float(match["rhs"])
            except ValueError:
                raise ClaimError(f"claims[{i}]: {match['rhs']!r} is not a number") from None
            entry["value"] = round(value, 6)
            entry["ok"] = bool(_OPS[match["op"]](value, bound))
        except ClaimError as exc:
            entry["ok"] = False
            entry["error"] = str(exc)
        out.append(entry)
    return out
