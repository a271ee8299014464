"""The saga filter options (`--status`, `--flow`, `--step`, ...), defined once.

`list` and every bulk verb (`resume`, `rollback`, `retry-step`, `fork`, `cancel`) take the
same options: `filter_options` adds them to a command and hands it one `FilterArgs`, which
`to_filter` turns into the pure `SagaFilter` (bad input: exit 2 with one line).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

from sagalab.cli.errors import EXIT_USAGE, fail
from sagalab.cli.verify import parse_since
from sagalab.orchestrator.saga import SagaStatus
from sagalab.orchestrator.sagafilter import (
    MAX_LIMIT,
    FilterError,
    SagaFilter,
    parse_input_match,
)

__all__ = ["FilterArgs", "filter_options"]

F = TypeVar("F", bound=Callable[..., Any])

_WHEN = "a date and time (2026-11-25T18:00, UTC unless a zone is given), a duration back "
_WHEN += "from now (90s, 15m, 2h, 1d) or epoch seconds"


@dataclass(frozen=True)
class FilterArgs:
    """The filter options as typed, before they are checked."""

    statuses: list[SagaStatus]
    flow: str | None
    step: str | None
    error: str | None
    since: str | None
    until: str | None
    key: str | None
    inputs: list[str]
    tenant: str | None
    limit: int | None
    after: str | None

    @property
    def given(self) -> bool:
        """Whether any option that selects sagas was given (not only paging or tenant)."""
        return bool(
            self.statuses
            or self.inputs
            or any(
                v is not None
                for v in (self.flow, self.step, self.error, self.since, self.until, self.key)
            )
        )

    def to_filter(self, *, default_limit: int | None) -> SagaFilter:
        """The SagaFilter these options mean; typer.Exit(2) with a clear line if they are
        malformed (a time that is not one, `--input` without `=`, a limit out of range)."""
        try:
            return self.build(default_limit=default_limit, now=time.time())
        except FilterError as exc:
            raise fail(str(exc), EXIT_USAGE) from None

    def build(self, *, default_limit: int | None, now: float) -> SagaFilter:
        """The SagaFilter these options mean, times read relative to `now`; FilterError
        (the line the CLI prints) if they are malformed. The console calls this too."""
        return SagaFilter(
            statuses=tuple(dict.fromkeys(self.statuses)),
            flow=self.flow,
            step=self.step,
            error=self.error,
            since=_time("--since", self.since, now),
            until=_time("--until", self.until, now),
            key=self.key,
            inputs=tuple(parse_input_match(t) for t in self.inputs),
            tenant=self.tenant,
            limit=self.limit if self.limit is not None else default_limit,
            after=self.after,
        )


def _time(option: str, text: str | None, now: float) -> float | None:
    if text is None:
        return None
    try:
        return parse_since(text, now=now)
    except ValueError:
        raise FilterError(f"{option} {text!r} is not a time: write {_WHEN}") from None


def _parameters(input_names: tuple[str, ...]) -> list[inspect.Parameter]:
    """The options, as the keyword parameters typer reads from a signature."""

    def opt(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
        )

    text = str | None
    return [
        opt(
            "f_statuses",
            Annotated[
                list[SagaStatus] | None,
                typer.Option("--status", "-s", help="Only sagas in this status (repeatable)."),
            ],
        ),
        opt("f_flow", Annotated[text, typer.Option("--flow", "-f", help="Only this flow.")]),
        opt(
            "f_step",
            Annotated[
                text,
                typer.Option(
                    "--step",
                    help="Only sagas that stopped at this step (the last step whose action "
                    "was attempted: the failed one of a failed or rolled back saga).",
                ),
            ],
        ),
        opt(
            "f_error",
            Annotated[
                text,
                typer.Option(
                    "--error",
                    help="Only sagas whose reason or a step's last error has this text (any case).",
                ),
            ],
        ),
        opt(
            "f_since",
            Annotated[text, typer.Option("--since", help=f"Created at or after: {_WHEN}.")],
        ),
        opt(
            "f_until", Annotated[text, typer.Option("--until", help="Created before (as --since).")]
        ),
        opt("f_key", Annotated[text, typer.Option("--key", help="Only this idempotency key.")]),
        opt(
            "f_inputs",
            Annotated[
                list[str] | None,
                typer.Option(
                    *input_names,
                    help="KEY=VALUE: only sagas whose input has KEY equal to VALUE, read as "
                    "JSON (100, true) or as a string (repeatable; all must match).",
                ),
            ],
        ),
        opt(
            "f_tenant",
            Annotated[
                text, typer.Option("--tenant", "-t", help="Only this tenant's (default: all).")
            ],
        ),
        opt(
            "f_limit",
            Annotated[
                int | None,
                typer.Option(
                    "--limit",
                    "-n",
                    min=1,
                    max=MAX_LIMIT,
                    help="At most this many, newest first (list: 50 unless given).",
                ),
            ],
        ),
        opt(
            "f_after",
            Annotated[
                text,
                typer.Option(
                    "--after",
                    help="Paging, newest first: the sagas after this id (the last one of the "
                    "previous page).",
                ),
            ],
        ),
    ]


_NAMES: tuple[str, ...] = ("statuses", "flow", "step", "error", "since", "until", "key")
_NAMES += ("inputs", "tenant", "limit", "after")


def filter_options(input_names: tuple[str, ...] = ("--input", "--match-input")) -> Callable[[F], F]:
    """Give a command the filter options; it receives them as `criteria: FilterArgs`.

    `input_names` names the `--input KEY=VALUE` option (fork, whose `--input` is the fork's
    own input, takes `--match-input` only).
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "criteria"]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(f"f_{name}") for name in _NAMES}
            values["statuses"] = values["statuses"] or []
            values["inputs"] = values["inputs"] or []
            return func(*args, criteria=FilterArgs(**values), **kwargs)

        shown = signature.replace(parameters=[*own, *_parameters(input_names)])
        command.__signature__ = shown  # type: ignore[attr-defined]  # what typer reads
        # ... and the annotations, evaluated: the command's own without criteria, and ours.
        command.__annotations__ = {p.name: p.annotation for p in shown.parameters.values()}
        return command  # type: ignore[return-value]

    return decorate
