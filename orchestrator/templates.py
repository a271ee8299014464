"""`${...}` templates in step paths and bodies.

`${input.order_id}` reads the saga input, `${steps.reserve.response.id}` an earlier step's
response, `${saga.id}` / `${saga.trace_id}` the saga itself. A string that is exactly one
template keeps the value's JSON type; templates inside a longer string are interpolated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sagalab.orchestrator.errors import TemplateError

_TEMPLATE = re.compile(r"\$\{([^}]*)\}")
_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^[0-9]+$")


def _parse(expr: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in expr.split("."))
    if not parts or not all(_PART.match(p) for p in parts):
        raise ValueError(f"malformed template '${{{expr}}}'")
    return parts


def template_references(value: Any) -> list[tuple[str, ...]]:
    """Every `${...}` reference in `value` (strings, lists, mappings), as dotted paths."""
    refs: list[tuple[str, ...]] = []
    if isinstance(value, str):
        if "${" in value and value.count("${") != len(_TEMPLATE.findall(value)):
            raise ValueError(f"unclosed template in {value!r}")
        refs.extend(_parse(m) for m in _TEMPLATE.findall(value))
    elif isinstance(value, Mapping):
        for v in value.values():
            refs.extend(template_references(v))
    elif isinstance(value, list):
        for v in value:
            refs.extend(template_references(v))
    return refs


def _lookup(path: tuple[str, ...], context: Mapping[str, Any]) -> Any:
    current: Any = context
    for i, part in enumerate(path):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            shown = ".".join(path[: i + 1])
            raise TemplateError(f"'${{{'.'.join(path)}}}' has no value ('{shown}' is missing)")
    return current


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """`value` with every template replaced from `context` (keys: input, steps, saga)."""
    if isinstance(value, str):
        whole = _TEMPLATE.fullmatch(value)
        if whole:
            return _lookup(_parse(whole.group(1)), context)

        def one(match: re.Match[str]) -> str:
            found = _lookup(_parse(match.group(1)), context)
            return found if isinstance(found, str) else _json_text(found)

        return _TEMPLATE.sub(one, value)
    if isinstance(value, Mapping):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))
