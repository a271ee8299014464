"""Poison input is refused at the door: the CLI (exit 2, one line) and the API (422), and
nothing is stored. Flows that declare their input keys are checked against their templates
when loaded."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apilab import admin_api
from typer.testing import CliRunner

from sagalab.cli.main import app
from sagalab.orchestrator.errors import FlowValidationError, InputError
from sagalab.orchestrator.flow import flow_from_dict
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.jsonsafe import MAX_DEPTH, check_json_value, loads_strict
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.sqlite_store import SQLiteStore

ORDER = '{"order_id": "o-1", "customer_id": "c-1", "sku": "A", "quantity": 1, "amount": %s}'
DEEP = "[" * 100_000 + "]" * 100_000

POISON = [
    ("NaN", ORDER % "NaN"),
    ("Infinity", ORDER % "Infinity"),
    ("-Infinity", ORDER % "-Infinity"),
    ("overflow", ORDER % "1e999"),
    ("nested-nan", ORDER % '{"x": [1, NaN]}'),
    ("lone-surrogate", ORDER % '"\\ud800"'),
    ("deep", ORDER % DEEP),
    ("too-deep-for-us", ORDER % ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))),
]
POISON_IDS = [name for name, _ in POISON]


def saga_count(db: Path) -> int:
    if not db.exists():
        return 0
    store = SQLiteStore(db)
    try:
        return int(store.conn.execute("SELECT COUNT(*) FROM sagas").fetchone()[0])
    finally:
        store.close()


# -- the validator ------------------------------------------------------------------------


@pytest.mark.parametrize("text", [text for _, text in POISON], ids=POISON_IDS)
def test_loads_strict_refuses_what_json_cannot_carry_both_ways(text: str) -> None:
    with pytest.raises(InputError):
        loads_strict(text)


def test_loads_strict_keeps_plain_json() -> None:
    text = ORDER % '{"a": [1, 2.5, -3e10, true, null, "\\u00e9"]}'
    assert loads_strict(text) == json.loads(text)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": float("nan")}, "input.a"),
        ({"a": [1, {"b": float("inf")}]}, "input.a[1].b"),
        ({"a": {1, 2}}, "input.a"),
        ({1: "x"}, "input"),
    ],
    ids=["nan", "nested-inf", "set", "int-key"],
)
def test_check_json_value_names_the_bad_value(value: object, where: str) -> None:
    with pytest.raises(InputError, match="^" + re.escape(where) + " "):
        check_json_value(value, what="input")


def test_start_saga_refuses_poison_even_past_the_door(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    payload = json.loads(ORDER % "NaN")  # Python's json takes it
    with pytest.raises(InputError, match="NaN"):
        start_saga(store, load_flow("checkout"), payload)
    assert store.conn.execute("SELECT COUNT(*) FROM sagas").fetchone()[0] == 0


# -- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [text for _, text in POISON], ids=POISON_IDS)
@pytest.mark.parametrize("wait", [False, True], ids=["queue", "wait"])
def test_cli_run_refuses_poison_input_with_exit_2_and_stores_nothing(
    tmp_path: Path, text: str, wait: bool
) -> None:
    db = tmp_path / "sagas.db"
    args = ["orchestrate", "run", "checkout", "--db", str(db), "--input", text]
    result = CliRunner().invoke(app, [*args, "--wait"] if wait else args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --input"), result.stderr
    assert saga_count(db) == 0


# -- the API ------------------------------------------------------------------------------


@pytest.fixture
def api_db(tmp_path: Path) -> Path:
    return tmp_path / "api.db"


@pytest.fixture
def client(api_db: Path) -> Iterator[httpx.Client]:
    with admin_api(api_db) as c:
        yield c


@pytest.mark.parametrize("text", [text for _, text in POISON], ids=POISON_IDS)
def test_api_refuses_poison_input_with_a_422_problem_and_stores_nothing(
    client: httpx.Client, api_db: Path, text: str
) -> None:
    body = '{"flow": "checkout", "input": ' + text + "}"
    r = client.post("/v1/sagas", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 422
    assert saga_count(api_db) == 0


def test_api_deeply_nested_body_is_422_not_500(client: httpx.Client, api_db: Path) -> None:
    r = client.post("/v1/sagas", content=DEEP, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert saga_count(api_db) == 0


def test_api_still_takes_a_plain_saga(client: httpx.Client, api_db: Path) -> None:
    body = '{"flow": "checkout", "input": ' + ORDER % "12.5" + "}"
    r = client.post("/v1/sagas", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 202, r.text
    assert saga_count(api_db) == 1


# -- flows declare their input ------------------------------------------------------------


def http_flow(body: object, declared: dict[str, list[str]] | None) -> dict[str, object]:
    raw: dict[str, object] = {
        "name": "f",
        "steps": [
            {"name": "one", "service": "svc", "action": {"path": "/x", "body": body}},
        ],
    }
    if declared is not None:
        raw["input"] = declared
    return raw


def test_a_template_naming_an_undeclared_input_key_is_refused_at_load() -> None:
    raw = http_flow({"a": "${input.order_id}", "b": "${input.oops.x}"}, {"required": ["order_id"]})
    with pytest.raises(FlowValidationError) as caught:
        flow_from_dict(raw, source="f.yaml")
    (issue,) = caught.value.issues
    assert issue.where == "step 'one'.action.body"
    assert "'oops'" in issue.message and "declare" in issue.message


def test_optional_input_keys_count_as_declared_and_round_trip() -> None:
    from sagalab.orchestrator.flow import flow_to_dict

    raw = http_flow(
        {"a": "${input.order_id}", "b": "${input.note}"},
        {"required": ["order_id"], "optional": ["note"]},
    )
    flow = flow_from_dict(raw)
    assert flow.optional_input == ("note",)
    assert flow_from_dict(flow_to_dict(flow)) == flow


def test_a_flow_that_declares_nothing_is_not_checked() -> None:
    flow_from_dict(http_flow({"a": "${input.anything}"}, None))


@pytest.mark.parametrize(
    "declared",
    [{"required": [], "optional": []}, {}, {"required": []}],
    ids=["empty-lists", "empty-mapping", "required-empty"],
)
def test_an_empty_input_declaration_still_declares_every_key(
    declared: dict[str, list[str]],
) -> None:
    # `input:` present at all means "these are my keys": none, so `${input.zz}` is undeclared
    # and refused at load, not when a saga runs.
    with pytest.raises(FlowValidationError) as caught:
        flow_from_dict(http_flow({"a": "${input.zz}"}, declared), source="f.yaml")
    (issue,) = caught.value.issues
    assert "'zz'" in issue.message and "declare" in issue.message


def test_a_flow_that_declares_nothing_round_trips_undeclared() -> None:
    from sagalab.orchestrator.flow import flow_to_dict

    flow = flow_from_dict(http_flow({"a": "${input.anything}"}, None))
    assert "input" not in flow_to_dict(flow)
    assert flow_from_dict(flow_to_dict(flow)) == flow


def test_a_flow_that_declares_an_empty_input_round_trips_declared() -> None:
    from sagalab.orchestrator.flow import flow_to_dict

    flow = flow_from_dict(http_flow({"a": "x"}, {"required": []}))
    assert flow_to_dict(flow)["input"] == {"required": []}


def test_cli_refuses_such_a_flow_file_with_exit_2_naming_step_and_key(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(http_flow({"a": "${input.sku}"}, {"required": ["order_id"]})))
    result = CliRunner().invoke(
        app,
        ["orchestrate", "run", str(path), "--db", str(tmp_path / "s.db"), "--input", "{}"],
    )
    assert result.exit_code == 2, result.output
    assert "step 'one'" in result.stderr and "'sku'" in result.stderr
    assert not (tmp_path / "s.db").exists()


def test_shipped_examples_declare_every_input_key_they_use() -> None:
    flow = load_flow("checkout")
    assert set(flow.required_input) >= {"order_id", "customer_id", "sku", "quantity", "amount"}


def test_api_deeply_nested_rollback_body_is_422_not_400_or_500(client: httpx.Client) -> None:
    body = '{"flow": "checkout", "input": ' + ORDER % "1" + "}"
    created = client.post("/v1/sagas", content=body, headers={"content-type": "application/json"})
    saga = created.json()["id"]
    r = client.post(
        f"/v1/sagas/{saga}/rollback", content=DEEP, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/nothing-here").status_code == 404


def test_a_stored_snapshot_from_before_the_rule_stays_readable(tmp_path: Path) -> None:
    raw = http_flow({"a": "${input.order_id}", "b": "${input.note}"}, {"required": ["order_id"]})
    old = flow_from_dict(raw, check_input_keys=False)
    store = SQLiteStore(tmp_path / "s.db")
    record, _ = start_saga(store, old, {"order_id": "o-1", "note": "x"})
    store.close()
    reopened = SQLiteStore(tmp_path / "s.db")  # a fresh process reads the snapshot back
    assert reopened.load(record.id).flow == old
