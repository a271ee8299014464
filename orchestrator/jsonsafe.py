"""JSON that survives the round trip: the one check every door into the orchestrator uses.

Python's `json` reads `NaN`, `Infinity` and `1e999` (as inf), which no other JSON reader takes
and which httpx refuses to send: stored in a saga, such a value fails the step that sends it.
A lone surrogate (`"\\ud800"`) reads fine and cannot be encoded as UTF-8 for a request. A
deeply nested document makes `json` raise RecursionError. An integer of more than 4,300 digits
fails inside `json` with a message about `sys.set_int_max_str_digits`; we refuse any number of
more than `MAX_DIGITS` digits first, as "number too long". `loads_strict` (text from a client)
and `check_json_value` (a value already parsed, e.g. by a web framework) refuse all of these
with an `InputError` naming where the bad value is, so they are turned away at the door
(CLI exit 2, HTTP 422) instead of stalling a worker later.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sagalab.orchestrator.errors import InputError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_DIGITS",
    "PayloadTooLarge",
    "UnsafeJson",
    "check_json_value",
    "displayable",
    "loads_strict",
]

MAX_DEPTH = 32
"""Deepest nesting of objects and arrays accepted (a saga input needs a handful)."""

MAX_BYTES = 1_000_000
"""Largest JSON text accepted, in bytes."""

MAX_DIGITS = 40
"""Most digits a JSON number may have. A saga's numbers are amounts, counts and ids: an int64
has 19 digits and a float holds 17 significant ones, so 40 leaves room for any of them (and
for a 128-bit id) while a 5,000-digit number is refused as such, not with Python's internal
`sys.set_int_max_str_digits` message (and never costs a quadratic conversion)."""


_INT_BOUND = 10**MAX_DIGITS


class UnsafeJson(InputError):
    """JSON text or a value that JSON cannot carry both ways (or is too deep or too large)."""


class PayloadTooLarge(UnsafeJson):
    """JSON text longer than `MAX_BYTES`."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def _digits(text: str) -> int:
    """Digits of a JSON number's text (sign, point and exponent not counted)."""
    mantissa = text.lower().split("e", 1)[0]
    return sum(c.isdigit() for c in mantissa)


def _too_long(count: int | str) -> ValueError:
    return ValueError(
        f"number too long ({count} digits); a JSON number here has at most {MAX_DIGITS} digits "
        "(send a longer id as a string)"
    )


def _bounded_int(text: str) -> int:
    digits = _digits(text)
    if digits > MAX_DIGITS:
        raise _too_long(digits)
    return int(text)


def _finite_float(text: str) -> float:
    digits = _digits(text)
    if digits > MAX_DIGITS:
        raise _too_long(digits)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a JSON number; send a finite number")
    return value


def loads_strict(text: str | bytes, *, what: str = "JSON") -> Any:
    """Parse `text` as JSON that round-trips, or raise UnsafeJson naming the problem."""
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise PayloadTooLarge(f"{what} is {size} bytes; at most {MAX_BYTES} are accepted")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnsafeJson(f"{what} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        value = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except json.JSONDecodeError as exc:
        raise UnsafeJson(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise UnsafeJson(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # a constant or an out-of-range number; or a huge integer
        raise UnsafeJson(f"{what}: {exc}") from None
    check_json_value(value, what=what)
    return value


def check_json_value(value: Any, *, what: str = "value") -> None:
    """Raise UnsafeJson unless `value` is plain JSON data that encodes and decodes unchanged.

    Allowed: dict with str keys, list, str (encodable as UTF-8), int of at most `MAX_DIGITS`
    digits, finite float, bool, None;
    nested at most `MAX_DEPTH` deep. The message names the path of the first bad value.
    """
    # Iterative, so a deep value cannot exhaust the stack here either.
    stack: list[tuple[Any, str, int]] = [(value, what, 0)]
    while stack:
        item, where, depth = stack.pop()
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            # Compared as numbers: turning a huge int into text is what Python refuses.
            if abs(item) >= _INT_BOUND:
                raise UnsafeJson(f"{where}: {_too_long('more than ' + str(MAX_DIGITS))}")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeJson(
                    f"{where} is {item!r}: JSON has no NaN or Infinity; send a finite number"
                )
            continue
        if isinstance(item, str):
            _check_text(item, where)
            continue
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise UnsafeJson(f"{what} nests deeper than {MAX_DEPTH} levels (at {where})")
            if isinstance(item, list):
                stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item))
                continue
            for key, v in item.items():
                if not isinstance(key, str):
                    raise UnsafeJson(f"{where} has a key {key!r} that is not a string")
                _check_text(key, f"{where} key")
                stack.append((v, f"{where}.{key}", depth + 1))
            continue
        raise UnsafeJson(f"{where} is a {type(item).__name__}, which JSON cannot carry")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsafeJson(
            f"{where} holds a lone surrogate (character {exc.start}), which is not UTF-8 text"
        ) from None


def displayable(value: Any) -> Any:
    """`value` with each non-finite float spelled as a string ("NaN", "Infinity", "-Infinity").

    For output only: a saga stored before the door checked its input may hold such numbers,
    and `--json` output must stay JSON that any reader takes.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: displayable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [displayable(v) for v in value]
    return value
