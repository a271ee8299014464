"""Conformance: `find_sagas` (every criterion of `SagaFilter`, composed, paged) and bulk
batches (`create_batch`, outcomes, `list_batches`), on every backend."""

from __future__ import annotations

import pytest
from conformancelab import Backend, advance, create, reserve_ok

from sagalab.orchestrator.errors import BatchNotFoundError, SagaNotFoundError
from sagalab.orchestrator.saga import Event, EventType, Failure, Phase, SagaStatus
from sagalab.orchestrator.sagafilter import SagaFilter, parse_input_match
from sagalab.orchestrator.store import ACTED, ACTING, SKIPPED, Store

ACT, COMP = Phase.ACTION, Phase.COMPENSATION


def _charge_fails(store: Store, saga_id: str, error: str, at: float) -> None:
    """reserve succeeds, charge fails for good, reserve is compensated: rolled back."""
    failure = Failure(error, retryable=False, maybe_applied=False)
    advance(store, saga_id, reserve_ok(at))
    advance(
        store,
        saga_id,
        [
            Event(EventType.ATTEMPT_STARTED, at + 1, "charge", ACT, 1),
            Event(EventType.ATTEMPT_FAILED, at + 1.5, "charge", ACT, 1, failure=failure),
            Event(EventType.STEP_FAILED, at + 1.6, "charge", ACT, 1, failure=failure),
        ],
    )


def _ids(store: Store, **criteria: object) -> list[str]:
    return [r.id for r in store.find_sagas(SagaFilter(**criteria))]  # type: ignore[arg-type]


@pytest.fixture
def sagas(store: Store) -> Store:
    """s1 (oldest) .. s5: pending, running at reserve, two stopped at charge, another tenant's."""
    create(store, "s1", now=100.0, order_id="o-1", amount=100)
    create(store, "s2", "key-2", now=200.0, order_id="o-2", amount="100")
    advance(store, "s2", reserve_ok(201.0))
    create(store, "s3", now=300.0, order_id="o-3", vip=True)
    _charge_fails(store, "s3", "payments: 503 Service Unavailable", 301.0)
    create(store, "s4", now=400.0, order_id="o-4", nested={"a": [1, 2]})
    _charge_fails(store, "s4", "card declined", 401.0)
    create(store, "s5", now=500.0, tenant="acme", order_id="o-1")
    return store


def test_no_criteria_lists_every_saga_newest_first(sagas: Store) -> None:
    assert _ids(sagas) == ["s5", "s4", "s3", "s2", "s1"]
    assert _ids(sagas, tenant="acme") == ["s5"]


def test_status_flow_key_and_times(sagas: Store) -> None:
    stopped = {r.id: r.status for r in sagas.find_sagas(SagaFilter(step="charge"))}
    assert set(stopped) == {"s3", "s4"}
    status = stopped["s3"]
    assert _ids(sagas, statuses=(status,)) == ["s4", "s3"]
    assert _ids(sagas, statuses=(status, SagaStatus.PENDING)) == ["s5", "s4", "s3", "s1"]
    assert _ids(sagas, flow="order", key="key-2") == ["s2"]
    assert _ids(sagas, flow="other") == []
    assert _ids(sagas, since=200.0, until=400.0) == ["s3", "s2"]  # until is exclusive


def test_step_is_where_the_saga_stopped(sagas: Store) -> None:
    assert _ids(sagas, step="charge") == ["s4", "s3"]
    assert _ids(sagas, step="reserve") == ["s2"]
    assert _ids(sagas, step="nowhere") == []


def test_error_is_a_substring_of_any_case(sagas: Store) -> None:
    assert _ids(sagas, error="SERVICE unavailable") == ["s3"]
    assert _ids(sagas, error="declined") == ["s4"]
    assert _ids(sagas, error="100%_") == []  # no LIKE wildcards


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("order_id=o-1", ["s5", "s1"]),
        ("amount=100", ["s2", "s1"]),  # the number 100, and the string "100"
        ('amount="100"', ["s2"]),
        ("vip=true", ["s3"]),
        ('nested={"a": [1, 2]}', ["s4"]),
        ("missing=x", []),
    ],
    ids=["string", "number-or-string", "json-string", "bool", "object", "absent"],
)
def test_input_matches_json_value_or_string(sagas: Store, match: str, expected: list[str]) -> None:
    assert _ids(sagas, inputs=(parse_input_match(match),)) == expected


def test_criteria_compose(sagas: Store) -> None:
    both = (parse_input_match("order_id=o-1"),)
    assert _ids(sagas, inputs=both, tenant="default") == ["s1"]
    assert _ids(sagas, step="charge", error="card", since=400.0) == ["s4"]
    assert _ids(sagas, step="charge", error="card", until=400.0) == []


def test_paging_with_limit_and_after(sagas: Store) -> None:
    create(sagas, "s0", now=100.0)  # the same created_at as s1: ties go by id
    pages, after = [], None
    while True:
        page = _ids(sagas, limit=2, after=after)
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert pages == [["s5", "s4"], ["s3", "s2"], ["s0", "s1"]]
    with pytest.raises(SagaNotFoundError):
        _ids(sagas, after="nope")


def test_batches_record_sagas_and_outcomes(store_factory: Backend) -> None:
    store = store_factory.open()
    criteria = SagaFilter(statuses=(SagaStatus.FAILED,), step="charge")
    batch = store.create_batch(
        batch_id="b1",
        action="rollback",
        filter=criteria.to_dict(),
        options={"reason": "outage"},
        saga_ids=["s2", "s1", "s3"],
        now=10.0,
    )
    assert [i.saga_id for i in batch.pending()] == ["s2", "s1", "s3"]
    assert SagaFilter.from_dict(batch.filter) == criteria
    store.record_batch_outcome("b1", "s2", outcome=ACTED, detail="queued", now=11.0)
    store.record_batch_outcome("b1", "s1", outcome=ACTING, detail=None, now=12.0)
    other = store_factory.open()  # what a resumed run reads
    again = other.load_batch("b1")
    assert (again.action, again.options, again.finished_at) == (
        "rollback",
        {"reason": "outage"},
        None,
    )
    assert [(i.saga_id, i.outcome) for i in again.items] == [
        ("s2", ACTED),
        ("s1", ACTING),
        ("s3", None),
    ]
    assert [i.saga_id for i in again.pending()] == ["s1", "s3"]
    other.record_batch_outcome("b1", "s1", outcome=SKIPPED, detail="refused", now=13.0)
    other.record_batch_outcome("b1", "s3", outcome=ACTED, detail=None, now=14.0)
    other.finish_batch("b1", now=15.0)
    done = store.load_batch("b1")
    assert done.finished_at == 15.0 and not done.pending()
    store.create_batch(batch_id="b2", action="resume", filter={}, options={}, saga_ids=[], now=20.0)
    assert [b.id for b in store.list_batches()] == ["b2", "b1"]
    with pytest.raises(BatchNotFoundError):
        store.load_batch("b9")


def test_a_batch_item_is_claimed_by_one_run(store_factory: Backend) -> None:
    """Two runs of a batch read an item, then both claim it: one gets it. A claim is a
    compare-and-set on the outcome and detail read, so an ACTING item (a run cut short) is
    claimed again only by one run too."""
    store, other = store_factory.open(), store_factory.open()
    store.create_batch(
        batch_id="b1", action="cancel", filter={}, options={}, saga_ids=["s1", "s2"], now=1.0
    )
    seen = store.load_batch("b1").items[0]
    assert store.claim_batch_item("b1", seen, owner="run-a", now=2.0)
    assert not other.claim_batch_item("b1", seen, owner="run-b", now=2.0)
    [acting] = [i for i in other.load_batch("b1").items if i.saga_id == "s1"]
    assert (acting.outcome, acting.detail, acting.at) == (ACTING, "run-a", 2.0)
    assert other.claim_batch_item("b1", acting, owner="run-b", now=3.0)  # a run cut short
    assert not store.claim_batch_item("b1", acting, owner="run-c", now=3.0)
    assert not store.claim_batch_item("b9", seen, owner="run-a", now=3.0)  # no such batch


@pytest.mark.parametrize("digits", [30, 400], ids=["beyond-64-bits", "beyond-a-double"])
def test_input_match_on_a_huge_integer_is_an_answer(store: Store, digits: int) -> None:
    """A number past SQLite's 64-bit integers (`--input big=<30 digits>`) is a value to
    look for, not an OverflowError out of the driver (a traceback from `list`, a 500 from
    the console)."""
    big = int("9" * digits)
    create(store, "s1", now=100.0, big=big if digits <= 40 else 1)
    create(store, "s2", now=200.0, big=1)
    expected = ["s1"] if digits <= 40 else []
    assert _ids(store, inputs=(parse_input_match(f"big={big}"),)) == expected
