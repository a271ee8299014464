"""Scenario claims: one-line checks evaluated against a run's report and time series.

A claim is `LHS OP NUMBER`, OP one of < <= > >= == !=, and LHS either a dotted path into the
report (`breakers.payments.opened`, `latency.end_to_end.p95`) or a window over the time series,
`window(START, END).COLUMN[.mean|.max|.min|.sum]` (mean by default; END may be `end`).

A claim is never Python: it is matched by the regular expressions below, its path looked up key
by key and its bound read with `float`, so nothing in a scenario is evaluated as code.

`check` refuses a malformed claim when the scenario is loaded, before anything runs (a
ScenarioError naming the claim, exit 2; `simulator.config.validate` calls it): text that is not
`metric OP number`, a bound that is not a finite number, a metric the report will not have, a
column the series will not have, a window that ends before it starts.
`evaluate` then only measures.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ClaimError, ScenarioError

__all__ = ["Claim", "check", "evaluate", "metric", "parse"]

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
_NUMBER = r"\d+(?:\.\d+)?"
_CLAIM = re.compile(r"^\s*(?P<lhs>\S+(?:\s*,\s*\S+)?)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<rhs>\S+)\s*$")
_WINDOW = re.compile(
    rf"^window\((?P<a>{_NUMBER}),(?P<b>{_NUMBER}|end)\)\.(?P<col>\w+)"
    r"(?:\.(?P<agg>mean|max|min|sum))?$"
)
# A dotted path of report keys (a client group's or a service's name may hold a dash).
_PATH = re.compile(r"^[A-Za-z_][\w-]*(?:\.[\w-]+)*$")


@dataclass(frozen=True)
class Claim:
    """A parsed claim: `lhs` (spaces removed) `op` `bound`."""

    lhs: str
    op: str
    bound: float


def parse(text: str) -> Claim:
    """The claim `text` says; ClaimError unless it is `metric OP number` (module docstring)."""
    match = _CLAIM.match(text)
    lhs = match["lhs"].replace(" ", "") if match else ""
    if not match or not (_WINDOW.match(lhs) or _PATH.match(lhs)):
        raise ClaimError(
            f"cannot parse {text!r}: expected 'metric OP number', the metric a dotted report "
            "path or window(START, END).COLUMN[.mean|.max|.min|.sum]"
        )
    try:
        bound = float(match["rhs"])
    except ValueError:
        raise ClaimError(f"{text!r}: {match['rhs']!r} is not a number") from None
    if not math.isfinite(bound):
        raise ClaimError(f"{text!r}: {match['rhs']!r} is not a finite number")
    return Claim(lhs, match["op"], bound)


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
    node = _lookup(lhs, report)
    if node is None:  # a figure a run may not have (a time to recover when it did not)
        raise ClaimError(f"{lhs!r} has no value in this run")
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise ClaimError(f"{lhs!r} is not a number")
    return float(node)


def _lookup(lhs: str, report: Mapping[str, Any]) -> Any:
    """The report's value at the dotted path `lhs` (ClaimError when a key is missing)."""
    node: Any = report
    for part in lhs.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            raise ClaimError(f"the report has no metric {lhs!r} (missing {part!r})")
    return node


def _claim_text(claim: Any) -> tuple[str, str]:
    """(text, check) of one entry of a scenario's `claims`."""
    if isinstance(claim, Mapping):
        return str(claim.get("text", "")), str(claim.get("check", ""))
    return "", str(claim)


def check(
    claims: Any,
    report: Mapping[str, Any],
    columns: Collection[str],
) -> None:
    """Refuse, before a run, a claim that could never be measured: ScenarioError naming it
    (`claims[I]: 'CHECK': why`).

    `report` has the shape the run's report will have (its numbers need not mean anything),
    and `columns` are the time series' columns.
    """
    if not isinstance(claims, Sequence) or isinstance(claims, str):
        raise ScenarioError("claims", "must be a list of {text, check} entries")
    for i, entry in enumerate(claims):
        _, text = _claim_text(entry)
        if isinstance(entry, Mapping) and not isinstance(entry.get("check"), str):
            raise ScenarioError(f"claims[{i}]", "needs a `check` string, 'metric OP number'")
        try:
            claim = parse(text)
            window = _WINDOW.match(claim.lhs)
            if window is None:
                # None is a figure a run may leave unmeasured (a time to recover): the path
                # exists, so the claim is measurable; the run says whether it had a value.
                if _lookup(claim.lhs, report) is not None:
                    metric(claim.lhs, report, ())
                continue
            if window["col"] not in columns:
                raise ClaimError(
                    f"time series has no column {window['col']!r}; columns: {sorted(columns)}"
                )
            start = float(window["a"])
            end = math.inf if window["b"] == "end" else float(window["b"])
            if start >= end:
                raise ClaimError(f"window({window['a']}, {window['b']}) must start before it ends")
            # A window past the end of a run shortened by `--duration` is not refused: the
            # scenario is right for its own duration; that run reports the claim unmeasured.
        except ClaimError as exc:
            raise ScenarioError(f"claims[{i}]", f"{text!r}: {exc}") from None


def evaluate(
    claims: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any],
    series: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Each claim with `ok` and the measured `value` (or an `error`)."""
    out: list[dict[str, Any]] = []
    for i, claim in enumerate(claims):
        text, check_text = _claim_text(claim)
        entry: dict[str, Any] = {"text": text, "check": check_text}
        try:
            try:
                parsed = parse(check_text)
            except ClaimError as exc:
                raise ClaimError(f"claims[{i}]: {exc}") from None
            value = metric(parsed.lhs, report, series)
            entry["value"] = round(value, 6)
            entry["ok"] = bool(_OPS[parsed.op](value, parsed.bound))
        except ClaimError as exc:
            entry["ok"] = False
            entry["error"] = str(exc)
        out.append(entry)
    return out
