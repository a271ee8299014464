"""Flow definitions: validation with locations, templates, round trip, YAML loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagalab.orchestrator.errors import FlowNotFoundError, FlowValidationError, TemplateError
from sagalab.orchestrator.flow import FlowDefinition, StepKind, flow_from_dict, flow_to_dict
from sagalab.orchestrator.flowfile import example_flow_names, load_flow
from sagalab.orchestrator.policies.retry import DEFAULT_ACTION_RETRY, FOREVER_RETRY
from sagalab.orchestrator.templates import render, template_references


def http_step(name: str, **extra: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "name": name,
        "service": "inventory",
        "action": {"method": "POST", "path": f"/{name}", "body": {"id": "${input.id}"}},
        "compensation": {"method": "POST", "path": f"/{name}/undo"},
    }
    step.update(extra)
    return step


def flow_dict(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "f", "version": 1, "steps": list(steps), **extra}


def issues_of(raw: Any) -> list[str]:
    with pytest.raises(FlowValidationError) as info:
        flow_from_dict(raw, source="flows/f.yaml")
    assert all(i.source == "flows/f.yaml" for i in info.value.issues)
    return [f"{i.where}: {i.message}" for i in info.value.issues]


# --- validation ----------------------------------------------------------------------------

INVALID = [
    ("not-a-mapping", ["a", "list"], "(top)", "must be a mapping"),
    ("no-name", {"version": 1, "steps": [http_step("a")]}, "name", "is required"),
    ("bad-version", flow_dict(http_step("a"), version=0), "version", "positive integer"),
    ("no-steps", {"name": "f", "steps": []}, "steps", "non-empty list"),
    ("bad-input", flow_dict(http_step("a"), input=["x"]), "input", "required"),
    ("step-not-mapping", flow_dict("a"), "steps[0]", "must be a mapping"),
    ("bad-step-name", flow_dict(http_step("a-b")), "steps[0].name", "identifier"),
    ("duplicate-step", flow_dict(http_step("a"), http_step("a")), "step 'a'.name", "earlier step"),
    ("unknown-field", flow_dict(http_step("a", retries=3)), "step 'a'", "unknown field(s) retries"),
    ("bad-kind", flow_dict(http_step("a", kind="final")), "step 'a'.kind", "must be one of"),
    (
        "two-pivots",
        flow_dict(http_step("a", kind="pivot"), http_step("b", kind="pivot")),
        "step 'b'.kind",
        "at most one pivot",
    ),
    (
        "compensatable-after-pivot",
        flow_dict(http_step("a", kind="pivot"), http_step("b")),
        "step 'b'.kind",
        "after the pivot must be 'retriable'",
    ),
    (
        "retriable-before-pivot",
        flow_dict(http_step("a", kind="retriable", compensation=None)),
        "step 'a'.kind",
        "must come after a pivot",
    ),
    (
        "retriable-with-compensation",
        flow_dict(http_step("a", kind="pivot"), http_step("b", kind="retriable")),
        "step 'b'.compensation",
        "never undone",
    ),
    (
        "service-and-handler",
        flow_dict(http_step("a", handler="a")),
        "step 'a'",
        "exactly one of 'service'",
    ),
    (
        "neither-service-nor-handler",
        flow_dict({"name": "a"}),
        "step 'a'",
        "exactly one of 'service'",
    ),
    ("bad-service", flow_dict(http_step("a", service="in-ventory")), "step 'a'.service", "name"),
    ("http-without-action", flow_dict(http_step("a", action=None)), "step 'a'.action", "required"),
    (
        "bad-method",
        flow_dict(http_step("a", action={"method": "FETCH", "path": "/a"})),
        "step 'a'.action.method",
        "'FETCH' is not one of",
    ),
    (
        "bad-path",
        flow_dict(http_step("a", action={"path": "a"})),
        "step 'a'.action.path",
        "start with '/'",
    ),
    (
        "unknown-call-field",
        flow_dict(http_step("a", action={"path": "/a", "headers": {}})),
        "step 'a'.action",
        "unknown field(s) headers",
    ),
    ("bad-timeout", flow_dict(http_step("a", timeout=0)), "step 'a'.timeout", "positive"),
    ("bool-timeout", flow_dict(http_step("a", timeout=True)), "step 'a'.timeout", "positive"),
    ("retry-not-mapping", flow_dict(http_step("a", retry=3)), "step 'a'.retry", "mapping"),
    (
        "retry-unknown-field",
        flow_dict(http_step("a", retry={"tries": 3})),
        "step 'a'.retry",
        "unknown field(s) tries",
    ),
    (
        "retry-bad-value",
        flow_dict(http_step("a", compensation_retry={"max_attempts": 0})),
        "step 'a'.compensation_retry",
        "max_attempts must be a whole number from 1 to 1000000",
    ),
    (
        "reference-to-later-step",
        flow_dict(http_step("a", action={"path": "/a/${steps.b.response.id}"}), http_step("b")),
        "step 'a'.action.path",
        "unknown step reference '${steps.b.response.id}': 'b' is not an earlier step",
    ),
    (
        "reference-to-missing-step",
        flow_dict(http_step("a"), http_step("b", action={"path": "/b", "body": "${steps.zz.x}"})),
        "step 'b'.action.body",
        "'zz' is not an earlier step",
    ),
    (
        "compensation-uses-own-response",
        flow_dict(http_step("a", compensation={"path": "/undo/${steps.a.response.id}"})),
        "step 'a'.compensation.path",
        "this step's own response",
    ),
    (
        "unknown-template-root",
        flow_dict(http_step("a", action={"path": "/a", "body": {"x": "${env.HOME}"}})),
        "step 'a'.action.body",
        "unknown template root '${env.HOME}'",
    ),
    (
        "malformed-template",
        flow_dict(http_step("a", action={"path": "/a/${input.}"})),
        "step 'a'.action.path",
        "malformed template",
    ),
    (
        "unclosed-template",
        flow_dict(http_step("a", action={"path": "/a/${input.id"})),
        "step 'a'.action.path",
        "unclosed template",
    ),
]


@pytest.mark.parametrize(
    ("raw", "where", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_validation_reports_file_step_and_field(raw: Any, where: str, message: str) -> None:
    issues = issues_of(raw)
    assert any(i.startswith(f"{where}: ") and message in i for i in issues), issues


def test_every_issue_is_reported_at_once_and_in_the_message() -> None:
    raw = flow_dict(
        http_step("a", kind="final", timeout=-1),
        http_step("b", action={"method": "FETCH", "path": "b"}),
    )
    with pytest.raises(FlowValidationError) as info:
        flow_from_dict(raw, source="flows/f.yaml")
    wheres = [i.where for i in info.value.issues]
    assert wheres == [
        "step 'a'.kind",
        "step 'a'.timeout",
        "step 'b'.action.method",
        "step 'b'.action.path",
    ]
    text = str(info.value)
    assert text.startswith("invalid flow (4 issue(s)): flows/f.yaml: step 'a'.kind: ")
    assert "flows/f.yaml: step 'b'.action.path: is required and must start with '/'" in text


def test_valid_flow_defaults() -> None:
    flow = flow_from_dict(
        flow_dict(
            http_step("a"),
            http_step("b", kind="pivot", compensation=None),
            http_step("c", kind="retriable", compensation=None, retry={"initial_delay": 1.0}),
            input={"required": ["id"]},
        )
    )
    a, b, c = flow.steps
    assert (a.kind, b.kind, c.kind) == (StepKind.COMPENSATABLE, StepKind.PIVOT, StepKind.RETRIABLE)
    assert a.retry == DEFAULT_ACTION_RETRY and a.timeout == 5.0 and a.action is not None
    assert a.action.method == "POST"
    assert a.has_compensation and not b.has_compensation
    # A retriable step keeps retrying forever unless told otherwise.
    assert c.retry.max_attempts is None and c.retry.initial_delay == 1.0
    assert c.retry.max_delay == FOREVER_RETRY.max_delay
    assert flow.pivot_index == 1 and flow.index("c") == 2 and flow.step("b") is b
    assert flow.required_input == ("id",)


def test_python_steps_need_no_service() -> None:
    flow = flow_from_dict(
        flow_dict({"name": "a", "handler": "reserve", "compensation_handler": "release"})
    )
    assert flow.steps[0].handler == "reserve" and flow.steps[0].has_compensation


# --- templates -----------------------------------------------------------------------------

CONTEXT = {
    "input": {"order_id": "o-1", "qty": 3, "items": [{"sku": "A"}]},
    "steps": {"reserve": {"response": {"reservation_id": "r-9", "n": 2}}},
    "saga": {"id": "s-1", "trace_id": "t" * 32},
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${input.qty}", 3),
        ("${input.items}", [{"sku": "A"}]),
        ("${input.items.0.sku}", "A"),
        ("order ${input.order_id} x${input.qty}", "order o-1 x3"),
        ("/r/${steps.reserve.response.reservation_id}", "/r/r-9"),
        ("${saga.id}", "s-1"),
        ({"a": ["${input.qty}", "lit"]}, {"a": [3, "lit"]}),
        ("items=${input.items}", 'items=[{"sku":"A"}]'),
        (7, 7),
        (None, None),
    ],
    ids=[
        "whole-keeps-int",
        "whole-keeps-list",
        "list-index",
        "interpolated",
        "earlier-step-response",
        "saga-id",
        "nested",
        "json-in-string",
        "non-string",
        "none",
    ],
)
def test_render(template: Any, expected: Any) -> None:
    assert render(template, CONTEXT) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${input.missing}", "'${input.missing}' has no value ('input.missing' is missing)"),
        ("${steps.ship.response.id}", "'steps.ship' is missing"),
        ("${input.items.5.sku}", "'input.items.5' is missing"),
    ],
    ids=["missing-input", "missing-step", "index-out-of-range"],
)
def test_render_missing_value_says_which(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        render(template, CONTEXT)
    assert message in str(info.value)


def test_template_references() -> None:
    assert template_references(
        {"a": "${input.x} ${ steps.b.response }", "b": [1, "${saga.id}"]}
    ) == [
        ("input", "x"),
        ("steps", "b", "response"),
        ("saga", "id"),
    ]


# --- round trip ----------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
retry_dicts = st.fixed_dictionaries(
    {},
    optional={
        "max_attempts": st.none() | st.integers(1, 10),
        "initial_delay": st.floats(0, 5),
        "max_delay": st.floats(0, 60),
        "multiplier": st.floats(1, 4),
        "deadline": st.none() | st.floats(0.5, 100),
        "jitter": st.booleans(),
    },
)
bodies = st.none() | st.dictionaries(
    names, st.integers() | st.text(max_size=5) | st.just("${input.id}"), max_size=3
)


@st.composite
def raw_flows(draw: st.DrawFn) -> dict[str, Any]:
    step_names = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    pivot = draw(st.none() | st.integers(0, len(step_names) - 1))
    steps = []
    for i, name in enumerate(step_names):
        kind = "compensatable"
        if pivot is not None and i >= pivot:
            kind = "pivot" if i == pivot else "retriable"
        step: dict[str, Any] = {"name": name, "kind": kind}
        if draw(st.booleans()):
            step["service"] = draw(names)
            step["action"] = {
                "method": draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])),
                "path": "/" + draw(names),
                "body": draw(bodies),
            }
            if kind != "retriable" and draw(st.booleans()):
                step["compensation"] = {"method": "POST", "path": "/undo/${input.id}"}
        else:
            step["handler"] = name
            if kind != "retriable" and draw(st.booleans()):
                step["compensation_handler"] = "undo_" + name
        if draw(st.booleans()):
            step["timeout"] = draw(st.floats(0.1, 60))
        step["retry"] = draw(retry_dicts)
        step["compensation_retry"] = draw(retry_dicts)
        steps.append(step)
    raw: dict[str, Any] = {
        "name": draw(names),
        "version": draw(st.integers(1, 100)),
        "description": draw(st.text(max_size=20)),
        "steps": steps,
    }
    declared = _declared_input(draw)
    if declared is not None:
        raw["input"] = declared
    return raw


def _declared_input(draw: st.DrawFn) -> dict[str, list[str]] | None:
    """Nothing declared (no `input:`), or a declaration that covers `id`, the key the templates
    use (an empty `input:` declares no key, so it could not)."""
    required = draw(st.lists(names.filter(lambda n: n != "id"), max_size=3, unique=True))
    if not required:
        return None
    if draw(st.booleans()):
        return {"required": [*required, "id"]}
    return {"required": required, "optional": ["id"]}


@settings(max_examples=150, deadline=None)
@given(raw=raw_flows())
def test_round_trip(raw: dict[str, Any]) -> None:
    flow = flow_from_dict(raw)
    plain = flow_to_dict(flow)
    again = flow_from_dict(plain)
    assert again == flow
    assert flow_to_dict(again) == plain


def test_checkout_round_trips() -> None:
    flow = load_flow("checkout")
    assert flow_from_dict(flow_to_dict(flow)) == flow


# --- the shipped example and YAML files ----------------------------------------------------


def test_checkout_example_loads() -> None:
    assert "checkout" in example_flow_names()
    flow = load_flow("checkout")
    assert isinstance(flow, FlowDefinition)
    assert flow.name == "checkout" and flow.version == 1
    assert [(s.name, s.service, s.kind) for s in flow.steps] == [
        ("reserve_inventory", "inventory", StepKind.COMPENSATABLE),
        ("charge_payment", "payments", StepKind.COMPENSATABLE),
        ("create_shipment", "shipping", StepKind.PIVOT),
        ("send_confirmation", "notifications", StepKind.RETRIABLE),
    ]
    assert flow.steps[0].has_compensation and flow.steps[1].has_compensation
    assert not flow.steps[3].has_compensation
    assert flow.steps[3].retry.max_attempts is None
    assert set(flow.required_input) == {"order_id", "customer_id", "sku", "quantity", "amount"}


def test_flow_file_loads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nsteps:\n  - name: a\n    handler: a\n    compensation_handler: undo_a\n"
    )
    flow = load_flow(path)
    assert flow.name == "mine" and flow.steps[0].handler == "a"


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nsteps:\n  - name: a\n    action: {method: POST, path: /x\n")
    with pytest.raises(FlowValidationError) as info:
        load_flow(path)
    (issue,) = info.value.issues
    assert issue.source == str(path)
    assert issue.where.startswith("line ") and ", column " in issue.where
    assert issue.message.startswith("malformed YAML: ")
    assert str(path) in str(info.value)


def test_bad_indentation_reports_its_line(tmp_path: Path) -> None:
    path = tmp_path / "indent.yaml"
    path.write_text("name: x\nsteps:\n  - name: a\n   handler: a\n")
    with pytest.raises(FlowValidationError) as info:
        load_flow(path)
    assert info.value.issues[0].where.startswith("line 4, column ")


def test_invalid_flow_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsteps:\n  - name: a\n    service: inventory\n")
    with pytest.raises(FlowValidationError) as info:
        load_flow(path)
    assert str(info.value).endswith(f"{path}: step 'a'.action: is required for an HTTP step")


@pytest.mark.parametrize(
    ("ref", "message"),
    [("nope", "no flow file or example flow named 'nope'"), ("gone.yaml", "does not exist")],
    ids=["unknown-name", "missing-file"],
)
def test_unknown_flow(ref: str, message: str) -> None:
    with pytest.raises(FlowNotFoundError, match=message):
        load_flow(ref)


def test_a_directory_given_as_a_flow_file_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(FlowNotFoundError, match="is a directory, not a YAML file"):
        load_flow(str(tmp_path))
