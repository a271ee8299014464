"""Which sagas an operator means: `SagaFilter`, the criteria `list` and the bulk actions share.

Pure: no clock (times are epoch seconds the caller parsed), no I/O. The stores turn a filter
into one SQL query (`SagaStore.find_sagas`); this module only holds the criteria, checks them
(`FilterError`, a bad input) and says what each means:

- `statuses`: the saga is in one of them (none given: any status).
- `flow`: the flow's name.
- `step`: where the saga stopped - the last step, in flow order, whose action was attempted
  (`stopped_at`): the failed step of a saga that failed or rolled back, the current one of a
  running saga, the last one of a completed saga.
- `error`: a substring (any case) of the saga's reason or of a step's last error.
- `since` / `until`: created at or after / before (epoch seconds).
- `key`: the idempotency key. `tenant`: the tenant (None: every tenant's).
- `inputs`: `key=value` matches on the input, all of which must hold (`InputMatch`).
- `limit` / `after`: paging, newest first; `after` is the id of the last saga of the previous
  page (the next page starts after it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sagalab.orchestrator.saga import SagaStatus

__all__ = [
    "MAX_LIMIT",
    "FilterError",
    "InputMatch",
    "SagaFilter",
    "parse_input_match",
    "stopped_at",
]

#: The most sagas one filter returns (one page of `list`, or one bulk batch).
MAX_LIMIT = 10_000
_INPUT_KEY = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_MAX_TEXT = 500


class FilterError(ValueError):
    """A filter that cannot mean anything (a malformed `--input`, a limit out of range)."""


@dataclass(frozen=True)
class InputMatch:
    """`key=value` on a saga's input: the value at `key` equals `text` read as JSON (100,
    true, "x") or, failing that or as well, `text` as a string ("100")."""

    key: str
    text: str

    def candidates(self) -> tuple[Any, ...]:
        """The values that match: `text` as JSON (when it is JSON) and `text` itself."""
        try:
            parsed = json.loads(self.text)
        except (ValueError, RecursionError):
            return (self.text,)
        if isinstance(parsed, float) and not math.isfinite(parsed):  # 1e999: no JSON value
            return (self.text,)
        return (self.text,) if parsed == self.text else (parsed, self.text)


def parse_input_match(text: str) -> InputMatch:
    """`key=value` as an InputMatch; FilterError if it has no `=` or an unusable key."""
    key, sep, value = text.partition("=")
    if not sep:
        raise FilterError(f"--input {text!r} is not key=value (e.g. --input order_id=o-17)")
    if not _INPUT_KEY.match(key):
        raise FilterError(
            f"--input key {key!r} must be 1 to 100 letters, digits, '_' or '-' (an input key)"
        )
    if len(value) > _MAX_TEXT:
        raise FilterError(f"--input value for {key!r} is over {_MAX_TEXT} characters")
    return InputMatch(key, value)


@dataclass(frozen=True)
class SagaFilter:
    """The criteria; all given ones must hold. `limit` None: no limit (bulk, bounded by
    MAX_LIMIT + 1 by the caller)."""

    statuses: tuple[SagaStatus, ...] = ()
    flow: str | None = None
    step: str | None = None
    error: str | None = None
    since: float | None = None
    until: float | None = None
    key: str | None = None
    inputs: tuple[InputMatch, ...] = ()
    tenant: str | None = None
    limit: int | None = 50
    after: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and not 1 <= self.limit <= MAX_LIMIT + 1:
            raise FilterError(f"--limit must be between 1 and {MAX_LIMIT}, not {self.limit}")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise FilterError("--since is after --until: no saga could match")
        for name in ("flow", "step", "error", "key", "tenant", "after"):
            value = getattr(self, name)
            if value is not None and (not value or len(value) > _MAX_TEXT):
                raise FilterError(f"--{name} must be 1 to {_MAX_TEXT} characters")

    @property
    def criteria(self) -> bool:
        """Whether any criterion narrows it (a bulk action refuses a filter with none)."""
        return bool(
            self.statuses
            or self.inputs
            or any(
                v is not None
                for v in (self.flow, self.step, self.error, self.since, self.until, self.key)
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready criteria (a batch records the filter it was made from)."""
        return {
            "statuses": [s.value for s in self.statuses],
            "flow": self.flow,
            "step": self.step,
            "error": self.error,
            "since": self.since,
            "until": self.until,
            "key": self.key,
            "inputs": [f"{m.key}={m.text}" for m in self.inputs],
            "tenant": self.tenant,
            "limit": self.limit,
            "after": self.after,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SagaFilter:
        """The filter `to_dict` gave."""
        return cls(
            statuses=tuple(SagaStatus(s) for s in data.get("statuses", ())),
            flow=data.get("flow"),
            step=data.get("step"),
            error=data.get("error"),
            since=data.get("since"),
            until=data.get("until"),
            key=data.get("key"),
            inputs=tuple(parse_input_match(t) for t in data.get("inputs", ())),
            tenant=data.get("tenant"),
            limit=data.get("limit"),
            after=data.get("after"),
        )


def stopped_at(steps: Iterable[tuple[str, int]]) -> str | None:
    """Where a saga stopped, from its (step name, action attempts) in flow order: the last
    step whose action was attempted (None if none was). The stores compute the same in SQL."""
    found = None
    for name, attempts in steps:
        if attempts > 0:
            found = name
    return found
