"""Flow definitions: a named, versioned, ordered list of steps.

A step is either an HTTP call to a named service (an *action* and an optional *compensation*)
or a Python callable registered with `orchestrator.registry`. Definitions are frozen
dataclasses built from plain data by `flow_from_dict`, which validates everything and reports
each problem with its location; `orchestrator.flowfile` reads them from YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sagalab.orchestrator.errors import FlowValidationError, ValidationIssue
from sagalab.orchestrator.policies.retry import (
    DEFAULT_ACTION_RETRY,
    DEFAULT_COMPENSATION_RETRY,
    FOREVER_RETRY,
    RetryPolicy,
)
from sagalab.orchestrator.templates import template_references

HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

#: Seconds one step's call may take (a flow's `timeout`): a saga's lease must outlive it.
MAX_STEP_TIMEOUT = 3600.0


class StepKind(StrEnum):
    """How a step takes part in rollback.

    compensatable: undone by its compensation if a later step fails for good (the default).
    pivot: the point of no return; once it succeeds the flow only goes forward.
    retriable: after the pivot; retried until it succeeds, never undone.
    """

    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request template: method, path and JSON body (with `${...}` templates)."""

    method: str
    path: str
    body: Any = None


@dataclass(frozen=True)
class StepDefinition:
    """One step of a flow. Exactly one of `service`/`handler` is set."""

    name: str
    kind: StepKind = StepKind.COMPENSATABLE
    service: str | None = None
    action: HttpCall | None = None
    compensation: HttpCall | None = None
    handler: str | None = None
    compensation_handler: str | None = None
    timeout: float = 5.0
    retry: RetryPolicy = DEFAULT_ACTION_RETRY
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY

    @property
    def has_compensation(self) -> bool:
        """Whether there is anything to undo for this step."""
        return self.compensation is not None or self.compensation_handler is not None


@dataclass(frozen=True)
class FlowDefinition:
    """A named, versioned, ordered list of steps, plus the input keys it declares.

    `required_input` keys must be in every saga's input; `optional_input` keys may be. A flow
    with an `input:` declaration (`declares_input`), even an empty one, must declare every
    `${input.KEY}` its templates name; a flow without one is not checked.
    """

    name: str
    version: int
    steps: tuple[StepDefinition, ...]
    description: str = ""
    required_input: tuple[str, ...] = ()
    optional_input: tuple[str, ...] = ()
    declares_input: bool = False
    _index: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {s.name: i for i, s in enumerate(self.steps)})

    def step(self, name: str) -> StepDefinition:
        """The step called `name` (KeyError if there is none)."""
        return self.steps[self._index[name]]

    def index(self, name: str) -> int:
        """Position of step `name` in the flow."""
        return self._index[name]

    @property
    def pivot_index(self) -> int | None:
        """Position of the pivot step, if the flow has one."""
        for i, s in enumerate(self.steps):
            if s.kind is StepKind.PIVOT:
                return i
        return None


class _Issues:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[ValidationIssue] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(ValidationIssue(self.source, where, message))


def _retry_from(raw: Any, default: RetryPolicy, where: str, issues: _Issues) -> RetryPolicy:
    if raw is None:
        return default
    if not isinstance(raw, Mapping):
        issues.add(where, "must be a mapping (max_attempts, initial_delay, max_delay, deadline)")
        return default
    allowed = {"max_attempts", "initial_delay", "max_delay", "multiplier", "deadline", "jitter"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        issues.add(where, f"unknown field(s) {', '.join(unknown)}; allowed: {sorted(allowed)}")
        return default
    values = {**default.__dict__, **raw}
    try:
        policy = RetryPolicy(**values)
    except (TypeError, ValueError) as exc:
        issues.add(where, str(exc))
        return default
    if policy.jitter_kind == "decorrelated":
        # It grows from the last wait drawn, which a saga's journal does not record.
        issues.add(
            where, "jitter decorrelated is for clients only; a step takes none, full or equal"
        )
        return default
    return policy


def _call_from(raw: Any, where: str, issues: _Issues) -> HttpCall | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        issues.add(where, "must be a mapping with method, path and optional body")
        return None
    unknown = sorted(set(raw) - {"method", "path", "body"})
    if unknown:
        issues.add(where, f"unknown field(s) {', '.join(unknown)}")
    method = str(raw.get("method", "POST")).upper()
    if method not in HTTP_METHODS:
        issues.add(f"{where}.method", f"{method!r} is not one of {sorted(HTTP_METHODS)}")
    path = raw.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        issues.add(f"{where}.path", "is required and must start with '/'")
        path = "/"
    return HttpCall(method=method, path=path, body=raw.get("body"))


def _check_templates(
    call: HttpCall | None,
    where: str,
    earlier: set[str],
    own: str | None,
    declared: frozenset[str] | None,
    issues: _Issues,
) -> None:
    """Every reference must resolve: an earlier step, saga fields, or (if the flow declares
    its input, `declared` is not None) a declared input key."""
    if call is None:
        return
    for field_name, value in (("path", call.path), ("body", call.body)):
        try:
            refs = template_references(value)
        except ValueError as exc:
            issues.add(f"{where}.{field_name}", str(exc))
            continue
        for ref in refs:
            root = ref[0]
            if root == "input":
                key = ref[1] if len(ref) > 1 else ""
                if declared is not None and key not in declared:
                    issues.add(
                        f"{where}.{field_name}",
                        f"'${{{'.'.join(ref)}}}' names input key {key!r}, which the flow does "
                        "not declare: add it to input.required (or input.optional)",
                    )
                continue
            if root == "saga":
                continue
            if root == "steps":
                target = ref[1] if len(ref) > 1 else ""
                if target == own:
                    issues.add(
                        f"{where}.{field_name}",
                        f"'${{steps.{target}...}}' refers to this step's own response, which "
                        "is unknown when its outcome is unknown; key the compensation on input "
                        "instead",
                    )
                elif target not in earlier:
                    issues.add(
                        f"{where}.{field_name}",
                        f"unknown step reference '${{{'.'.join(ref)}}}': "
                        f"'{target}' is not an earlier step",
                    )
                continue
            issues.add(
                f"{where}.{field_name}",
                f"unknown template root '${{{'.'.join(ref)}}}' (use input., steps. or saga.)",
            )


def _input_keys(raw: Any, issues: _Issues) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) input keys from `input: {required: [...], optional: [...]}`."""
    if raw is None:
        return (), ()
    shape = "must be a mapping like {required: [key, ...], optional: [key, ...]}"
    if not isinstance(raw, Mapping):
        issues.add("input", shape)
        return (), ()
    unknown = sorted(str(k) for k in set(raw) - {"required", "optional"})
    if unknown:
        issues.add("input", f"unknown field(s) {', '.join(unknown)}; {shape}")
    found: list[tuple[str, ...]] = []
    for part in ("required", "optional"):
        keys = raw.get(part) or []
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            issues.add(f"input.{part}", "must be a list of key names")
            keys = []
        found.append(tuple(keys))
    both = sorted(set(found[0]) & set(found[1]))
    if both:
        issues.add("input", f"key(s) {', '.join(both)} are both required and optional")
    return found[0], found[1]


_STEP_FIELDS = {
    "name",
    "kind",
    "service",
    "action",
    "compensation",
    "handler",
    "compensation_handler",
    "timeout",
    "retry",
    "compensation_retry",
}


def flow_from_dict(
    raw: Any, source: str = "<flow>", *, check_input_keys: bool = True
) -> FlowDefinition:
    """Build and validate a flow from plain data; raise FlowValidationError listing every issue.

    `check_input_keys=False` skips the rule that declared input covers the templates: for
    snapshots stored before the rule existed, which must stay readable.
    """
    issues = _Issues(source)
    if not isinstance(raw, Mapping):
        issues.add("(top)", "a flow must be a mapping with name, version and steps")
        raise FlowValidationError(issues.items)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        issues.add("name", "is required and must be a non-empty string")
        name = "?"
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        issues.add("version", "must be a positive integer")
        version = 1
    required_input, optional_input = _input_keys(raw.get("input"), issues)
    # A flow that declares its input at all (even `input: {}`: "no keys") must declare every
    # key its templates name; only a flow with no `input:` is left unchecked.
    declares_input = raw.get("input") is not None
    declared = frozenset(required_input + optional_input) if declares_input else None
    if not check_input_keys:
        declared = None
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        issues.add("steps", "is required and must be a non-empty list")
        raise FlowValidationError(issues.items)

    steps: list[StepDefinition] = []
    seen: set[str] = set()
    pivot_seen = False
    for i, rs in enumerate(raw_steps):
        where = f"steps[{i}]"
        if not isinstance(rs, Mapping):
            issues.add(where, "must be a mapping")
            continue
        sname = rs.get("name")
        if not isinstance(sname, str) or not sname.isidentifier():
            issues.add(
                f"{where}.name", "is required and must be an identifier (letters, _, digits)"
            )
            sname = f"step{i}"
        where = f"step '{sname}'"
        if sname in seen:
            issues.add(f"{where}.name", "is used by an earlier step")
        unknown = sorted(set(rs) - _STEP_FIELDS)
        if unknown:
            issues.add(where, f"unknown field(s) {', '.join(unknown)}")
        try:
            kind = StepKind(rs.get("kind", "compensatable"))
        except ValueError:
            issues.add(f"{where}.kind", f"must be one of {[k.value for k in StepKind]}")
            kind = StepKind.COMPENSATABLE
        if kind is StepKind.PIVOT:
            if pivot_seen:
                issues.add(f"{where}.kind", "a flow has at most one pivot")
            pivot_seen = True
        elif pivot_seen and kind is not StepKind.RETRIABLE:
            issues.add(f"{where}.kind", "steps after the pivot must be 'retriable'")
        elif not pivot_seen and kind is StepKind.RETRIABLE:
            issues.add(f"{where}.kind", "'retriable' steps must come after a pivot")
        service, handler = rs.get("service"), rs.get("handler")
        action = _call_from(rs.get("action"), f"{where}.action", issues)
        compensation = _call_from(rs.get("compensation"), f"{where}.compensation", issues)
        comp_handler = rs.get("compensation_handler")
        if (service is None) == (handler is None):
            issues.add(where, "needs exactly one of 'service' (HTTP) or 'handler' (Python)")
        if service is not None:
            if not isinstance(service, str) or not service.isidentifier():
                issues.add(f"{where}.service", "must be a service name (an identifier)")
            if action is None:
                issues.add(f"{where}.action", "is required for an HTTP step")
        if kind is StepKind.RETRIABLE and (compensation or comp_handler):
            issues.add(f"{where}.compensation", "a retriable step is never undone; remove it")
        timeout = rs.get("timeout", 5.0)
        number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        # `not 0 < t <= max` also refuses NaN, which compares false with everything.
        if not number or not 0 < timeout <= MAX_STEP_TIMEOUT:
            issues.add(
                f"{where}.timeout",
                f"must be a positive number of seconds, at most {MAX_STEP_TIMEOUT:g}",
            )
            timeout = 5.0
        default_retry = FOREVER_RETRY if kind is StepKind.RETRIABLE else DEFAULT_ACTION_RETRY
        retry = _retry_from(rs.get("retry"), default_retry, f"{where}.retry", issues)
        comp_retry = _retry_from(
            rs.get("compensation_retry"),
            DEFAULT_COMPENSATION_RETRY,
            f"{where}.compensation_retry",
            issues,
        )
        _check_templates(action, f"{where}.action", seen, None, declared, issues)
        _check_templates(compensation, f"{where}.compensation", seen, sname, declared, issues)
        seen.add(sname)
        steps.append(
            StepDefinition(
                name=sname,
                kind=kind,
                service=service if isinstance(service, str) else None,
                action=action,
                compensation=compensation,
                handler=handler if isinstance(handler, str) else None,
                compensation_handler=comp_handler if isinstance(comp_handler, str) else None,
                timeout=float(timeout),
                retry=retry,
                compensation_retry=comp_retry,
            )
        )
    if issues.items:
        raise FlowValidationError(issues.items)
    return FlowDefinition(
        name=str(name),
        version=int(version),
        steps=tuple(steps),
        description=str(raw.get("description", "")),
        required_input=required_input,
        optional_input=optional_input,
        declares_input=declares_input,
    )


def retry_to_dict(policy: RetryPolicy) -> dict[str, Any]:
    """Plain-data form of a retry policy (for snapshots)."""
    return dict(policy.__dict__)


def flow_to_dict(flow: FlowDefinition) -> dict[str, Any]:
    """Plain-data form of a flow; `flow_from_dict(flow_to_dict(f)) == f`."""
    steps = []
    for s in flow.steps:
        d: dict[str, Any] = {"name": s.name, "kind": s.kind.value, "timeout": s.timeout}
        if s.service is not None:
            d["service"] = s.service
        if s.handler is not None:
            d["handler"] = s.handler
        if s.compensation_handler is not None:
            d["compensation_handler"] = s.compensation_handler
        for key, call in (("action", s.action), ("compensation", s.compensation)):
            if call is not None:
                d[key] = {"method": call.method, "path": call.path, "body": call.body}
        d["retry"] = retry_to_dict(s.retry)
        d["compensation_retry"] = retry_to_dict(s.compensation_retry)
        steps.append(d)
    out: dict[str, Any] = {
        "name": flow.name,
        "version": flow.version,
        "description": flow.description,
    }
    if flow.declares_input:  # written only if declared, so that it reads back the same
        out["input"] = {
            "required": list(flow.required_input),
            **({"optional": list(flow.optional_input)} if flow.optional_input else {}),
        }
    out["steps"] = steps
    return out
