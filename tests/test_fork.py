"""`orchestrate fork`: the plan (pure), and that what then happens in the journal is the plan.

Python-step sagas (tests/opslab.py) run by the real runner on real SQLite files for the plan
against the journal; checkout sagas against the fake services over HTTP for the CLI end to
end, where the services' ledgers show which idempotency keys the fork's calls carried.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apilab import admin_api, cli
from opslab import (
    DONE,
    FAILING,
    RunsHere,
    completed,
    failed_on_notify,
    footprint,
    leased,
    reset_handlers,
    rolled_back,
    stored,
)
from workerlab import order

from sagalab.fakeservices import RunningServices
from sagalab.orchestrator import operations
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.forkplan import SetError, apply_sets, plan_fork
from sagalab.orchestrator.operations import ActionRefused, BadArgument, UnknownSaga
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.saga import EventType, Phase, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    reset_handlers()
    yield
    reset_handlers()


def no_pivot_flow() -> FlowDefinition:
    """reserve, charge, ship: each compensable, no pivot (so a fork may compensate them)."""
    quick = {"max_attempts": 2, "initial_delay": 0.001, "max_delay": 0.001}
    return flow_from_dict(
        {
            "name": "ops-no-pivot",
            "version": 1,
            "steps": [
                {
                    "name": n,
                    "handler": f"tops_{n}",
                    "compensation_handler": f"tops_undo_{n}",
                    "retry": quick,
                }
                for n in ("reserve", "charge", "ship")
            ],
        }
    )


def completed_no_pivot(store: SQLiteStore) -> str:
    from sagalab.orchestrator.executors import PythonExecutor
    from sagalab.orchestrator.runner import SagaRunner

    record, _ = start_saga(store, no_pivot_flow(), {"amount": 100}, queue=False)
    SagaRunner(store, PythonExecutor(), sleep=lambda _s: None).run(record.id)
    assert store.load(record.id).status is SagaStatus.COMPLETED
    DONE.clear()
    return record.id


def started_actions(store: SQLiteStore, saga_id: str, phase: Phase) -> list[str]:
    return [
        e.event.step or ""
        for e in store.journal(saga_id)
        if e.event.type is EventType.ATTEMPT_STARTED and e.event.phase is phase
    ]


# --- the plan against the journal -------------------------------------------------------------


def test_a_forks_plan_is_what_then_happens_in_both_journals(store: SQLiteStore) -> None:
    old = completed_no_pivot(store)
    old_charge = [e for e in store.journal(old) if e.event.step == "reserve"]
    plan, result = operations.fork(
        store, old, "charge", sets=["input.amount=120"], runner=RunsHere(store)
    )

    assert plan.allowed and plan.fork_id == result.saga_id
    assert plan.reused == ("reserve",)
    assert plan.compensate_first == ("ship", "charge")  # most recently applied first
    assert plan.rerun == ("charge", "ship")
    assert plan.new_keys == {n: f"{result.saga_id}:{n}:action" for n in ("charge", "ship")}
    assert plan.reused_keys == {"reserve": f"{old}:reserve:action"}
    # The old saga: exactly the planned compensations, in the planned order, and closed.
    assert started_actions(store, old, Phase.COMPENSATION) == list(plan.compensate_first)
    old_record = store.load(old)
    assert old_record.status is SagaStatus.ROLLED_BACK
    assert f"forked as {result.saga_id} from step 'charge'" in (old_record.reason or "")
    assert {r.name: r.status for r in store.steps(old)}["reserve"] == "succeeded"
    # The fork: reserve's result copied (never called again), the rest run with the new input.
    fork = store.load(result.saga_id)
    assert fork.status is SagaStatus.COMPLETED and fork.input == {"amount": 120}
    assert fork.forked_from == old and store.forks(old) == [fork.id]
    assert started_actions(store, fork.id, Phase.ACTION) == ["reserve", *plan.rerun]
    copied = [e for e in store.journal(fork.id) if e.event.step == "reserve"]
    assert [(e.event.type, e.response) for e in copied] == [
        (e.event.type, e.response) for e in old_charge
    ]
    assert DONE == ["undo ship", "undo charge", "charge", "ship"]


def test_a_fork_from_after_the_pivot_reuses_it_and_compensates_nothing(
    store: SQLiteStore,
) -> None:
    old = failed_on_notify(store)
    plan, result = operations.fork(store, old, "notify", runner=RunsHere(store))
    assert (plan.reused, plan.compensate_first, plan.rerun) == (
        ("reserve", "charge", "ship"),
        (),
        ("notify",),
    )
    assert DONE == ["notify"]  # nothing before the pivot ran again, nothing was undone
    assert store.load(result.saga_id).status is SagaStatus.COMPLETED
    assert store.load(old).status is SagaStatus.ROLLED_BACK
    assert started_actions(store, old, Phase.COMPENSATION) == []


def test_dry_run_prints_the_plan_and_changes_nothing(db: Path, store: SQLiteStore) -> None:
    old = completed_no_pivot(store)
    before = footprint(store, old)
    code, out, err = cli("orchestrate", "fork", old, "--from-step", "ship", "--dry-run",
                         "--json", "--db", str(db))  # fmt: skip
    assert code == 0, err
    plan = json.loads(out)
    assert plan["compensate_first"] == ["ship"] and plan["rerun"] == ["ship"]
    assert plan["allowed"] is True and plan["reused"] == ["reserve", "charge"]
    assert footprint(store, old) == before and store.forks(old) == []
    code, out, _ = cli("orchestrate", "fork", old, "--from-step", "ship", "--dry-run",
                       "--db", str(db))  # fmt: skip
    assert code == 0 and "compensate first, in this order: ship" in out
    assert f"reuse: reserve (key {old}:reserve:action), charge" in out
    assert ":ship:action" in out  # as is: Rich would draw ":ship:" as an emoji


# --- refusals and bad input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "setup", [stored, leased], ids=["pending-on-the-queue", "held-by-a-worker"]
)
def test_a_running_saga_is_not_forked(store: SQLiteStore, setup: Any) -> None:
    saga_id = setup(store)
    before = footprint(store, saga_id)
    with pytest.raises(ActionRefused, match="is pending: a fork needs it stopped"):
        operations.fork(store, saga_id, "charge", runner=RunsHere(store))
    assert footprint(store, saga_id) == before and store.forks(saga_id) == []


def test_a_fork_past_an_applied_pivot_is_refused_even_forced(store: SQLiteStore) -> None:
    old = completed(store)
    for force in (False, True):
        with pytest.raises(ActionRefused, match="pivot 'ship' was applied .* no compensation"):
            operations.fork(store, old, "charge", force=force, runner=RunsHere(store))
    assert store.load(old).status is SagaStatus.COMPLETED and DONE == []


def test_a_saga_is_forked_once(store: SQLiteStore) -> None:
    old = failed_on_notify(store)
    _, first = operations.fork(store, old, "notify", runner=RunsHere(store))
    with pytest.raises(ActionRefused, match=f"forked already \\(as {first.saga_id}\\)"):
        operations.fork(store, old, "notify", runner=RunsHere(store))


def test_a_compensated_step_is_not_reused(store: SQLiteStore) -> None:
    old = rolled_back(store)  # charge failed; reserve was compensated
    with pytest.raises(ActionRefused, match="'reserve' was compensated"):
        operations.fork(store, old, "charge", runner=RunsHere(store))
    # From the start nothing is reused: the whole saga runs again with the same input.
    plan, result = operations.fork(store, old, "reserve", runner=RunsHere(store))
    assert plan.reused == () and plan.compensate_first == ()
    assert store.load(result.saga_id).status is SagaStatus.COMPLETED


def test_compensations_that_fail_leave_no_fork(store: SQLiteStore) -> None:
    old = completed_no_pivot(store)
    FAILING.add("undo ship")
    with pytest.raises(ActionRefused, match="the fork was not created"):
        operations.fork(store, old, "ship", runner=RunsHere(store))
    assert store.forks(old) == [] and store.load(old).status is SagaStatus.FAILED


class CutShort(RunsHere):
    """A process that dies (here: raises) as it starts to run the old saga's compensations."""

    def run(self, saga_id: str, flow: FlowDefinition) -> SagaStatus:
        raise RuntimeError("killed")


def test_a_fork_cut_short_before_it_was_created_can_be_made_again(store: SQLiteStore) -> None:
    old = completed_no_pivot(store)
    with pytest.raises(RuntimeError, match="killed"):
        operations.fork(store, old, "charge", runner=CutShort(store))
    # The old saga's rollback from `charge` stands (and names a fork that was never made);
    # whoever resumes it finishes the compensations, and reserve stays applied.
    assert store.load(old).status is SagaStatus.COMPENSATING and store.forks(old) == []
    operations.resume(store, old, runner=RunsHere(store))
    assert store.load(old).status is SagaStatus.ROLLED_BACK
    assert DONE == ["undo ship", "undo charge"]
    # From an earlier step, reserve would have to be undone in a saga that is rolled back.
    earlier = operations.fork_plan(store, old, "reserve")[0]
    assert earlier.refusal is not None and "still has reserve applied" in earlier.refusal
    # Forked again from the same step: reserve is reused, nothing is left to compensate.
    plan, result = operations.fork(store, old, "charge", runner=RunsHere(store))
    assert (plan.reused, plan.compensate_first) == (("reserve",), ())
    assert store.load(result.saga_id).status is SagaStatus.COMPLETED
    assert DONE == ["undo ship", "undo charge", "charge", "ship"]


def test_compensations_are_refused_where_nothing_runs_them(store: SQLiteStore) -> None:
    old = completed_no_pivot(store)
    before = footprint(store, old)
    with pytest.raises(ActionRefused, match="compensates ship of saga .* first"):
        operations.fork(store, old, "ship")
    assert footprint(store, old) == before


def test_bad_arguments(store: SQLiteStore) -> None:
    old = failed_on_notify(store)
    with pytest.raises(BadArgument, match="has no step 'nope'; its steps: reserve, charge"):
        operations.fork(store, old, "nope")
    with pytest.raises(BadArgument, match="expected input.KEY=VALUE"):
        operations.fork(store, old, "notify", sets=["amount=3"])
    with pytest.raises(UnknownSaga):
        operations.fork(store, "no-such-saga", "notify")
    assert store.forks(old) == []


# --- the CLI and the API, against the fake services ---------------------------------------------


def run_checkout(db: Path, n: int, *extra: str) -> str:
    code, out, err = cli("orchestrate", "run", "checkout", "-i", json.dumps(order(n)), "--wait",
                         "--json", "--db", str(db), *extra)  # fmt: skip
    assert code == 0, err
    return str(json.loads(out)["id"])


def test_cli_fork_after_the_pivot_with_new_input_calls_with_new_keys(
    env: Path, services: RunningServices
) -> None:
    old = run_checkout(env, 1)
    # The confirmation was sent and cannot be undone: refused, --force says it is sent again.
    code, _, err = cli("orchestrate", "fork", old, "--from-step", "send_confirmation")
    assert code == 4 and "'send_confirmation' was applied" in err and "--force" in err
    code, out, err = cli("orchestrate", "fork", old, "--from-step", "send_confirmation",
                         "--set", "input.customer_id=cust-9", "--force", "--json")  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    plan, fork = answer["plan"], answer["fork"]
    assert plan["stays_applied"] == ["send_confirmation"] and plan["forced"] is True
    assert fork["forked_from"] == old and fork["status"] == "completed"
    assert fork["input"]["customer_id"] == "cust-9"
    sent = [
        e.idempotency_key
        for e in services.lab.ledger()
        if e.service == "notifications" and e.operation == "action"
    ]
    assert sent == [f"{old}:send_confirmation:action", plan["new_keys"]["send_confirmation"]]
    # Every other call was made once, under the old saga's keys.
    others = [e for e in services.lab.ledger() if e.service != "notifications"]
    assert all(e.idempotency_key.startswith(old) for e in others) and len(others) == 3
    code, out, _ = cli("orchestrate", "status", old, "--json")
    assert json.loads(out)["forks"] == [fork["id"]]


def test_cli_fork_before_an_applied_pivot_is_refused_with_the_reason(env: Path) -> None:
    old = run_checkout(env, 2)
    for extra in ([], ["--force"]):
        code, _, err = cli("orchestrate", "fork", old, "--from-step", "charge_payment", *extra)
        assert code == 4, err
        assert "pivot 'create_shipment' was applied" in err and "Traceback" not in err
    code, out, _ = cli("orchestrate", "fork", old, "--from-step", "charge_payment",
                       "--dry-run", "--json")  # fmt: skip
    assert code == 4 and json.loads(out)["allowed"] is False
    code, out, err = cli("orchestrate", "fork", old, "--from-step", "charge_payment", "--json")
    assert code == 4 and "pivot" in err
    assert json.loads(out)["fork"] is None and json.loads(out)["plan"]["allowed"] is False


def test_cli_fork_prints_its_plan_before_it_runs_and_both_sagas_show_the_link(
    env: Path,
) -> None:
    old = run_checkout(env, 6)
    code, out, err = cli("orchestrate", "fork", old, "--from-step", "send_confirmation", "--force")
    assert code == 0, err
    assert "fork plan" in err and "compensate first, in this order: nothing" in err
    assert "stays applied: send_confirmation" in err
    fork_id = out.split()[1]  # "saga ID ..."
    assert f"forked from {old}" in out
    code, out, _ = cli("orchestrate", "status", old)
    assert code == 0 and f"forked as {fork_id}" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "amount=3"], "expected input.KEY=VALUE"),
        (["--set", "input."], "expected input.KEY=VALUE"),
        (["--set", "input.order_id.x=1"], "input.order_id is not an object"),
        (["--input", "[1]"], "must be a JSON object"),
        (["--input", "{}"], "needs input key(s)"),
    ],
    ids=["no-input-prefix", "no-key", "into-a-string", "not-an-object", "missing-keys"],
)
def test_cli_bad_input_is_exit_2(env: Path, args: list[str], message: str) -> None:
    old = run_checkout(env, 3)
    code, _, err = cli("orchestrate", "fork", old, "--from-step", "send_confirmation", *args)
    assert code == 2 and message in err, err


def test_cli_unknown_step_is_2_and_unknown_saga_is_3(env: Path) -> None:
    old = run_checkout(env, 4)
    code, _, err = cli("orchestrate", "fork", old, "--from-step", "teleport")
    assert code == 2 and "has no step 'teleport'" in err
    code, _, _ = cli("orchestrate", "fork", "nope", "--from-step", "send_confirmation")
    assert code == 3


def test_api_fork_plans_and_queues_and_get_shows_the_link(env: Path) -> None:
    old = run_checkout(env, 5)
    with admin_api(env) as client:
        dry = client.post(
            f"/v1/sagas/{old}/fork",
            json={"from_step": "send_confirmation", "dry_run": True, "force": True},
        )
        assert dry.status_code == 200 and dry.json()["plan"]["allowed"] is True
        refused = client.post(f"/v1/sagas/{old}/fork", json={"from_step": "charge_payment"})
        assert refused.status_code == 409 and "pivot" in refused.json()["detail"]
        bad = client.post(f"/v1/sagas/{old}/fork", json={"from_step": "x"})
        assert bad.status_code == 422
        made = client.post(
            f"/v1/sagas/{old}/fork",
            json={"from_step": "send_confirmation", "force": True, "set": ["input.amount=7"]},
        )
        assert made.status_code == 202, made.text
        fork_id = made.json()["id"]
        # Its reused steps are done: it stands running, on the queue for the workers.
        assert made.json()["status"] == "running" and made.json()["queued"] is True
        assert client.get(f"/v1/sagas/{fork_id}").json()["forked_from"] == old
        assert client.get(f"/v1/sagas/{old}").json()["forks"] == [fork_id]


# --- the pure pieces --------------------------------------------------------------------------


def test_apply_sets() -> None:
    base = {"a": 1, "n": {"x": 1}}
    assert apply_sets(base, ["input.a=2", 'input.n.y="t"', "input.b=text", "input.c.d=[1]"]) == {
        "a": 2,
        "n": {"x": 1, "y": "t"},
        "b": "text",
        "c": {"d": [1]},
    }
    assert base == {"a": 1, "n": {"x": 1}}  # not changed in place
    for bad in ("a=1", "input=1", "input.=1", "input.a..b=1", "input.a"):
        with pytest.raises(SetError):
            apply_sets(base, [bad])


def test_plan_of_an_unknown_step_is_a_key_error(store: SQLiteStore) -> None:
    old = completed(store)
    _, _, state = store.state(old)
    with pytest.raises(KeyError):
        plan_fork(state, saga_id=old, fork_id="f", from_step="nope")
