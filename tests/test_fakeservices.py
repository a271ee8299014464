"""The fake services over real HTTP: uvicorn on 127.0.0.1 in a thread, httpx as the client.

Time is an injected clock (outages never sleep) and randomness a seeded ``random.Random``.
Every test starts from a reset lab; the ledger is the witness of what was applied.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagalab.fakeservices import (
    SERVICE_NAMES,
    SERVICES,
    Fault,
    LabState,
    PortInUseError,
    RunningServices,
    applied_twice,
    decide,
    run_in_thread,
    service_env,
    services_map,
)
from sagalab.fakeservices.catalog import OrderRef


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.start = start
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Lab:
    """A running lab plus an HTTP client and shortcuts for the calls tests make."""

    running: RunningServices
    clock: FakeClock
    http: httpx.Client
    _keys: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))

    @property
    def base(self) -> str:
        return self.running.base_url

    def new_key(self) -> str:
        return f"key-{next(self._keys)}"

    def call(
        self,
        path: str,
        body: Any,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST `body` to `path` (e.g. ``/payments/charges``) under `key` (fresh if None)."""
        sent = {"Idempotency-Key": key or self.new_key(), **(headers or {})}
        return self.http.post(self.base + path, json=body, headers=sent)

    def ledger(self, service: str | None = None) -> list[dict[str, Any]]:
        path = f"/{service}/ledger" if service else "/_admin/ledger"
        response = self.http.get(self.base + path)
        assert response.status_code == 200
        entries: list[dict[str, Any]] = response.json()["entries"]
        return entries

    def add_fault(self, **spec: Any) -> dict[str, Any]:
        response = self.http.post(self.base + "/_admin/faults", json=spec)
        assert response.status_code == 201, response.text
        fault: dict[str, Any] = response.json()
        return fault

    def clear_faults(self) -> None:
        assert self.http.delete(self.base + "/_admin/faults").status_code == 200


CHARGE = {"order_id": "o-1", "amount": 120, "currency": "EUR"}
RESERVATION = {"order_id": "o-1", "sku": "sku-9", "quantity": 2}
SHIPMENT = {"order_id": "o-1", "address": "1 Main St"}
MESSAGE = {"order_id": "o-1", "customer_id": "c-7", "template": "order_confirmed"}
ORDER = {"order_id": "o-1"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def running(clock: FakeClock) -> Iterator[RunningServices]:
    with run_in_thread(clock=clock, rng=random.Random(0)) as running:
        yield running


@pytest.fixture
def lab(running: RunningServices, clock: FakeClock) -> Iterator[Lab]:
    clock.now = clock.start
    with httpx.Client(timeout=5.0) as http:
        assert http.post(running.base_url + "/_admin/reset").status_code == 200
        yield Lab(running, clock, http)


# -- actions and idempotency -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "id_field"),
    [
        ("/inventory/reservations", RESERVATION, "reservation_id"),
        ("/payments/charges", CHARGE, "charge_id"),
        ("/shipping/shipments", SHIPMENT, "shipment_id"),
        ("/notifications/messages", MESSAGE, "message_id"),
    ],
    ids=["inventory", "payments", "shipping", "notifications"],
)
def test_action_creates_a_resource_and_echoes_the_body(
    lab: Lab, path: str, body: dict[str, Any], id_field: str
) -> None:
    response = lab.call(path, body)

    assert response.status_code == 201
    data = response.json()
    assert data[id_field]
    assert {k: data[k] for k in body} == body
    assert "idempotent-replayed" not in response.headers


def test_shipping_accepts_an_address_object(lab: Lab) -> None:
    address = {"street": "1 Main St", "city": "Lyon"}
    response = lab.call("/shipping/shipments", {"order_id": "o-1", "address": address})
    assert response.status_code == 201
    assert response.json()["address"] == address


def test_repeated_key_replays_the_first_response_and_applies_once(lab: Lab) -> None:
    first = lab.call("/payments/charges", CHARGE, key="k-1")
    again = lab.call("/payments/charges", CHARGE, key="k-1")

    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert again.headers["idempotent-replayed"] == "true"
    entries = lab.ledger()
    assert [(e["operation"], e["idempotency_key"]) for e in entries] == [("action", "k-1")]
    assert applied_twice(entries) == []


def test_same_key_with_another_body_is_refused(lab: Lab) -> None:
    assert lab.call("/payments/charges", CHARGE, key="k-1").status_code == 201

    response = lab.call("/payments/charges", {**CHARGE, "amount": 121}, key="k-1")

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"
    assert len(lab.ledger()) == 1


def test_same_key_on_another_endpoint_of_the_service_is_refused(lab: Lab) -> None:
    assert lab.call("/payments/charges", CHARGE, key="k-1").status_code == 201

    response = lab.call("/payments/refunds", ORDER, key="k-1")

    assert response.status_code == 422
    assert response.json()["error"] == "idempotency_key_reused"


def test_keys_are_scoped_per_service(lab: Lab) -> None:
    assert lab.call("/payments/charges", CHARGE, key="k-1").status_code == 201
    assert lab.call("/inventory/reservations", RESERVATION, key="k-1").status_code == 201


@pytest.mark.parametrize(
    "path", ["/payments/charges", "/payments/refunds"], ids=["action", "compensation"]
)
@pytest.mark.parametrize("key", [None, "", "k" * 256], ids=["absent", "empty", "too-long"])
def test_a_missing_idempotency_key_is_a_400(lab: Lab, path: str, key: str | None) -> None:
    headers = {} if key is None else {"Idempotency-Key": key}
    response = lab.http.post(lab.base + path, json=CHARGE, headers=headers)

    assert response.status_code == 400
    assert response.json()["error"] == "missing_idempotency_key"
    assert "Idempotency-Key" in response.json()["message"]
    assert lab.ledger() == []


@pytest.mark.parametrize(
    "body",
    [
        {"order_id": "o-1", "currency": "EUR"},
        {**CHARGE, "amount": True},
        {**CHARGE, "amount": "120"},
        {**CHARGE, "amount": -5},
        {**CHARGE, "amount": int("9" * 4000)},
        {**CHARGE, "amount": -int("9" * 4000)},
        {**CHARGE, "currency": "EURO"},
        {**CHARGE, "order_id": ""},
        [CHARGE],
    ],
    ids=[
        "no-amount",
        "bool-amount",
        "string-amount",
        "negative",
        "4000-digits",
        "minus-4000-digits",
        "currency",
        "empty-order",
        "list",
    ],
)
def test_an_invalid_body_is_a_422_and_applies_nothing(lab: Lab, body: Any) -> None:
    response = lab.call("/payments/charges", body)

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert response.json()["message"]
    assert lab.ledger() == []


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b'{"order_id": "o-1", "address": {"lat": NaN}}',
        b'{"order_id": "o-1", "address": {"lat": ' + b"9" * 5000 + b"}}",
    ],
    ids=["garbage", "empty", "nan", "5000-digits"],
)
def test_a_body_that_is_not_json_is_a_422(lab: Lab, content: bytes) -> None:
    response = lab.http.post(
        lab.base + "/shipping/shipments",
        content=content,
        headers={"Idempotency-Key": "k-1", "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert lab.ledger() == []


@pytest.mark.parametrize(
    ("path", "refused", "status", "error"),
    [
        ("/inventory/reservations", {**RESERVATION, "quantity": 1001}, 409, "out_of_stock"),
        ("/payments/charges", {**CHARGE, "amount": 10_001}, 402, "card_declined"),
    ],
    ids=["out-of-stock", "card-declined"],
)
def test_a_business_refusal_applies_nothing_and_frees_the_key(
    lab: Lab, path: str, refused: dict[str, Any], status: int, error: str
) -> None:
    response = lab.call(path, refused, key="k-1")
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert lab.ledger() == []

    again = lab.call(path, refused, key="k-1")
    assert again.status_code == status
    assert "idempotent-replayed" not in again.headers

    fixed = {**refused, "quantity": 5} if "quantity" in refused else {**refused, "amount": 5}
    assert lab.call(path, fixed, key="k-1").status_code == 201
    assert len(lab.ledger()) == 1


def test_the_ledger_records_the_traceparent(lab: Lab) -> None:
    lab.call("/payments/charges", CHARGE, key="k-1", headers={"traceparent": TRACEPARENT})
    lab.call("/inventory/reservations", RESERVATION, key="k-2")

    payments, inventory = lab.ledger()
    assert payments["traceparent"] == TRACEPARENT
    assert inventory["traceparent"] is None
    assert payments == {
        "seq": 1,
        "service": "payments",
        "operation": "action",
        "endpoint": "/charges",
        "order_id": "o-1",
        "idempotency_key": "k-1",
        "traceparent": TRACEPARENT,
        "applied_at": "2023-11-14T22:13:20+00:00",
        "noop": False,
    }
    assert lab.ledger("inventory") == [inventory]
    assert [e["seq"] for e in lab.ledger()] == [1, 2]


def test_concurrent_retries_with_one_key_apply_once(lab: Lab) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(
            pool.map(lambda _: lab.call("/payments/charges", CHARGE, key="k-1"), range(24))
        )

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["charge_id"] for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    assert len(lab.ledger()) == 1


def test_the_ledger_shows_a_double_apply_under_two_keys(lab: Lab) -> None:
    # A buggy caller that retries with a new key gets charged twice, and the ledger says so.
    lab.call("/payments/charges", CHARGE, key="k-1")
    lab.call("/payments/charges", CHARGE, key="k-2")

    assert applied_twice(lab.ledger()) == [("payments", "action", "o-1")]


# -- compensations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "body", "compensation"),
    [
        ("/inventory/reservations", RESERVATION, "/inventory/reservations/release"),
        ("/payments/charges", CHARGE, "/payments/refunds"),
        ("/shipping/shipments", SHIPMENT, "/shipping/shipments/cancel"),
    ],
    ids=["inventory", "payments", "shipping"],
)
def test_a_compensation_undoes_the_applied_action(
    lab: Lab, action: str, body: dict[str, Any], compensation: str
) -> None:
    created = lab.call(action, body).json()

    response = lab.call(compensation, ORDER)

    assert response.status_code == 200
    resource_id = next(v for k, v in created.items() if k.endswith("_id") and k != "order_id")
    assert response.json() == {"order_id": "o-1", "noop": False, "undone": [resource_id]}
    assert [(e["operation"], e["noop"]) for e in lab.ledger()] == [
        ("action", False),
        ("compensation", False),
    ]


def test_notifications_have_no_compensation(lab: Lab) -> None:
    response = lab.call("/notifications/messages/cancel", ORDER)
    assert response.status_code in (404, 405)


def test_a_compensation_before_its_action_is_a_noop_that_refuses_the_late_action(
    lab: Lab,
) -> None:
    early = lab.call("/payments/refunds", ORDER, key="refund-1")
    assert (early.status_code, early.json()["noop"]) == (200, True)

    late = lab.call("/payments/charges", CHARGE, key="charge-1")

    assert late.status_code == 409
    assert late.json()["error"] == "compensated"
    entries = lab.ledger()
    assert [(e["operation"], e["noop"], e["idempotency_key"]) for e in entries] == [
        ("compensation", True, "refund-1")
    ]
    # The refusal was not stored: the same key is refused again, not replayed.
    assert (
        "idempotent-replayed" not in lab.call("/payments/charges", CHARGE, key="charge-1").headers
    )


def test_a_second_compensation_does_not_undo_twice(lab: Lab) -> None:
    lab.call("/payments/charges", CHARGE)
    first = lab.call("/payments/refunds", ORDER, key="refund-1")
    second = lab.call("/payments/refunds", ORDER, key="refund-2")
    replay = lab.call("/payments/refunds", ORDER, key="refund-1")

    assert first.json()["noop"] is False
    assert second.status_code == 200
    assert second.json() == {"order_id": "o-1", "noop": True, "undone": []}
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    entries = lab.ledger()
    assert [(e["operation"], e["noop"]) for e in entries] == [
        ("action", False),
        ("compensation", False),
        ("compensation", True),
    ]
    assert applied_twice(entries) == []


def test_compensations_are_per_order(lab: Lab) -> None:
    lab.call("/payments/refunds", {"order_id": "o-2"})
    assert lab.call("/payments/charges", CHARGE).status_code == 201


# -- faults -----------------------------------------------------------------------------------


def test_an_error_fault_fails_before_applying_and_a_retry_can_succeed(lab: Lab) -> None:
    fault = lab.add_fault(service="payments")
    assert (fault["endpoint"], fault["error_rate"], fault["status"]) == ("*", 1.0, 503)

    failed = lab.call("/payments/charges", CHARGE, key="k-1")
    assert failed.status_code == 503
    assert failed.json() == {
        "error": "injected_fault",
        "message": f"payments failed with an injected 503 (fault {fault['id']})",
        "fault_id": fault["id"],
    }
    assert lab.ledger() == []

    lab.clear_faults()
    retried = lab.call("/payments/charges", CHARGE, key="k-1")
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers


def test_a_fault_on_one_endpoint_leaves_the_others_alone(lab: Lab) -> None:
    lab.add_fault(service="payments", endpoint="/charges", status=429)

    assert lab.call("/payments/charges", CHARGE).status_code == 429
    assert lab.call("/payments/refunds", ORDER).status_code == 200
    assert lab.call("/inventory/reservations", RESERVATION).status_code == 201


def statuses_with_seed(seed: int, n: int) -> list[int]:
    """Send `n` charges through a fresh lab whose rng is seeded with `seed`."""
    with (
        run_in_thread(clock=FakeClock(), rng=random.Random(seed)) as running,
        httpx.Client() as http,
    ):
        http.post(
            running.base_url + "/_admin/faults", json={"service": "payments", "error_rate": 0.5}
        )
        statuses = []
        for i in range(n):
            response = http.post(
                running.base_url + "/payments/charges",
                json={**CHARGE, "order_id": f"o-{i}"},
                headers={"Idempotency-Key": f"k-{i}"},
            )
            statuses.append(response.status_code)
        entries = http.get(running.base_url + "/_admin/ledger").json()["entries"]
        assert len(entries) == statuses.count(201)
        return statuses


def test_a_partial_error_rate_is_reproducible_with_a_seed() -> None:
    first = statuses_with_seed(7, 30)
    second = statuses_with_seed(7, 30)

    assert first == second
    assert set(first) == {201, 503}
    # One draw per request: the same seed predicts the outcome exactly.
    rng = random.Random(7)
    assert first == [503 if rng.random() < 0.5 else 201 for _ in range(30)]


def test_a_latency_fault_delays_but_does_not_fail(lab: Lab) -> None:
    fault = lab.add_fault(service="payments", latency_ms=50)
    assert (fault["kind"], fault["error_rate"]) == ("latency", 0.0)

    started = time.perf_counter()
    response = lab.call("/payments/charges", CHARGE)
    elapsed = time.perf_counter() - started

    assert response.status_code == 201
    assert elapsed >= 0.05


def test_a_held_call_waits_applying_nothing_until_released_and_others_go_through(
    lab: Lab,
) -> None:
    state = lab.running.lab
    state.hold("payments", "charges")
    with ThreadPoolExecutor(max_workers=1) as pool:
        charge = pool.submit(lab.call, "/payments/charges", CHARGE, key="k-held")
        deadline = time.monotonic() + 10
        while not state.in_flight("payments", "k-held"):
            assert time.monotonic() < deadline, "the held charge never arrived"
            time.sleep(0.01)
        # Another endpoint and another service are not held; the charge is still out.
        assert lab.call("/payments/refunds", {"order_id": "o-2"}).status_code == 200
        assert lab.call("/inventory/reservations", RESERVATION).status_code == 201
        assert not charge.done() and state.in_flight("payments", "k-held")
        assert [e["operation"] for e in lab.ledger("payments")] == ["compensation"]
        state.release()
        assert charge.result(timeout=10).status_code == 201
    assert [e["operation"] for e in lab.ledger("payments")] == ["compensation", "action"]


def test_reset_releases_every_hold(lab: Lab) -> None:
    lab.running.lab.hold("shipping")
    assert lab.running.lab.held("shipping", "/shipments")
    assert lab.http.post(lab.base + "/_admin/reset").status_code == 200
    assert not lab.running.lab.held("shipping", "/shipments")
    assert lab.call("/shipping/shipments", SHIPMENT).status_code == 201


def test_an_outage_fails_everything_until_it_ends(lab: Lab) -> None:
    fault = lab.add_fault(service="payments", outage_seconds=30)

    down = lab.call("/payments/charges", CHARGE, key="k-1")
    assert down.status_code == 503
    assert down.json()["error"] == "outage"
    assert down.headers["retry-after"] == "30"
    assert lab.http.post(lab.base + "/payments/refunds", json=ORDER).status_code == 503
    assert lab.call("/inventory/reservations", RESERVATION).status_code == 201
    # Inspection is never faulted.
    assert lab.ledger("payments") == []

    lab.clock.advance(29.5)
    assert lab.call("/payments/charges", CHARGE, key="k-1").headers["retry-after"] == "1"
    lab.clock.advance(0.5)

    assert lab.call("/payments/charges", CHARGE, key="k-1").status_code == 201
    listed = lab.http.get(lab.base + "/_admin/faults").json()["faults"]
    assert [(f["id"], f["active"]) for f in listed] == [(fault["id"], False)]


def test_an_after_apply_fault_loses_the_response_of_an_applied_operation(lab: Lab) -> None:
    lab.add_fault(service="payments", endpoint="/charges", after_apply=True)

    lost = lab.call("/payments/charges", CHARGE, key="k-1")
    assert lost.status_code == 503
    assert lost.json()["error"] == "injected_fault"
    assert [e["idempotency_key"] for e in lab.ledger()] == ["k-1"]

    # Still faulted: the retry is answered 503 again but applies nothing new.
    assert lab.call("/payments/charges", CHARGE, key="k-1").status_code == 503
    lab.clear_faults()
    retried = lab.call("/payments/charges", CHARGE, key="k-1")

    assert retried.status_code == 201
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.json()["order_id"] == "o-1"
    assert len(lab.ledger()) == 1


# -- admin ------------------------------------------------------------------------------------


def test_faults_can_be_listed_and_cleared_per_service(lab: Lab) -> None:
    lab.add_fault(service="payments", endpoint="charges", status=500)
    lab.add_fault(service="inventory", latency_ms=5)

    listed = lab.http.get(lab.base + "/_admin/faults").json()["faults"]
    assert [(f["id"], f["service"], f["endpoint"]) for f in listed] == [
        ("flt-1", "payments", "/charges"),
        ("flt-2", "inventory", "*"),
    ]

    removed = lab.http.delete(lab.base + "/_admin/faults", params={"service": "payments"})
    assert removed.json() == {"removed": 1}
    assert [f["service"] for f in lab.http.get(lab.base + "/_admin/faults").json()["faults"]] == [
        "inventory"
    ]
    assert lab.http.delete(lab.base + "/_admin/faults").json() == {"removed": 1}


@pytest.mark.parametrize(
    "spec",
    [
        {"service": "payments", "error_rate": 1.5},
        {"service": "payments", "error_rate": -0.1},
        {"service": "payments", "status": 200},
        {"service": "payments", "status": 600},
        {"service": "payments", "status": "503"},
        {"service": "payments", "latency_ms": -1},
        {"service": "payments", "latency_ms": 600_000},
        {"service": "payments", "outage_seconds": 0},
        {"service": "payments", "outage_seconds": 5, "after_apply": True},
        {"service": "payments", "outage_seconds": 5, "error_rate": 0.5},
        {"service": "payments", "after_apply": "yes"},
        {"service": "payments", "endpoint": "/shipments"},
        {"service": "payments", "errorrate": 0.5},
        {"service": "paymentz"},
        {"endpoint": "*"},
    ],
    ids=[
        "rate-high",
        "rate-negative",
        "status-2xx",
        "status-600",
        "status-string",
        "latency-negative",
        "latency-huge",
        "outage-zero",
        "outage-after-apply",
        "outage-rate",
        "after-apply-string",
        "foreign-endpoint",
        "typo-field",
        "unknown-service",
        "no-service",
    ],
)
def test_bad_fault_specs_are_a_422(lab: Lab, spec: dict[str, Any]) -> None:
    response = lab.http.post(lab.base + "/_admin/faults", json=spec)

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert response.json()["message"]
    assert lab.http.get(lab.base + "/_admin/faults").json() == {"faults": []}


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/_admin/faults"), ("GET", "/_admin/ledger")],
    ids=["clear-faults", "ledger"],
)
def test_an_unknown_service_filter_is_a_422(lab: Lab, method: str, path: str) -> None:
    response = lab.http.request(method, lab.base + path, params={"service": "nope"})
    assert response.status_code == 422
    assert response.json()["error"] == "unknown_service"


def test_a_fault_body_that_is_not_json_is_a_422(lab: Lab) -> None:
    response = lab.http.post(
        lab.base + "/_admin/faults",
        content=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422


def test_reset_clears_ledger_state_and_faults(lab: Lab) -> None:
    lab.call("/payments/refunds", ORDER)
    lab.call("/inventory/reservations", RESERVATION, key="k-1")
    lab.add_fault(service="shipping")

    assert lab.http.post(lab.base + "/_admin/reset").json() == {"reset": True}

    assert lab.ledger() == []
    assert lab.http.get(lab.base + "/_admin/faults").json() == {"faults": []}
    assert lab.call("/payments/charges", CHARGE).status_code == 201  # tombstone gone
    replay = lab.call("/inventory/reservations", RESERVATION, key="k-1")
    assert "idempotent-replayed" not in replay.headers  # stored responses gone
    assert lab.call("/shipping/shipments", SHIPMENT).status_code == 201


def test_healthz(lab: Lab) -> None:
    response = lab.http.get(lab.base + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "services": list(SERVICE_NAMES)}


# -- server and pure parts --------------------------------------------------------------------


def test_services_map_and_env_point_at_the_service_prefixes() -> None:
    base = "http://127.0.0.1:8700/"
    assert services_map(base) == {
        "inventory": "http://127.0.0.1:8700/inventory",
        "payments": "http://127.0.0.1:8700/payments",
        "shipping": "http://127.0.0.1:8700/shipping",
        "notifications": "http://127.0.0.1:8700/notifications",
    }
    env = service_env(base)
    assert env["SAGALAB_SERVICE_PAYMENTS"] == "http://127.0.0.1:8700/payments"
    assert env["SAGALAB_SERVICES_URL"] == "http://127.0.0.1:8700"


def test_run_in_thread_refuses_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port}"):
            run_in_thread(port=port)


def test_stop_is_idempotent_and_frees_the_port() -> None:
    running = run_in_thread()
    port = int(running.base_url.rsplit(":", 1)[1])
    running.stop()
    running.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.base_url + "/healthz")
    run_in_thread(port=port).stop()


def make_fault(**overrides: Any) -> Fault:
    values: dict[str, Any] = {
        "id": "flt-1",
        "service": "payments",
        "endpoint": "*",
        "error_rate": 1.0,
        "status": 503,
        "latency_ms": 0,
        "outage_seconds": None,
        "after_apply": False,
        "created_at": 100.0,
    }
    return Fault(**{**values, **overrides})


def test_decide_adds_latencies_and_stops_at_the_first_firing_fault() -> None:
    faults = [
        make_fault(id="a", error_rate=0.0, latency_ms=10),
        make_fault(id="b", endpoint="/refunds"),
        make_fault(id="c", latency_ms=5, after_apply=True),
        make_fault(id="d"),
    ]
    decision = decide(faults, "payments", "/charges", now=100.0, rng=random.Random(0))

    assert decision.latency_ms == 15
    assert decision.after_apply is not None and decision.after_apply.id == "c"
    assert decision.before_apply is None and decision.outage is None


@given(
    rate=st.sampled_from([0.0, 1.0]),
    seed=st.integers(min_value=0, max_value=2**32),
    now=st.floats(min_value=0, max_value=1e6),
)
def test_decide_with_a_certain_rate_ignores_the_rng(rate: float, seed: int, now: float) -> None:
    rng = random.Random(seed)
    state = rng.getstate()
    decision = decide([make_fault(error_rate=rate)], "payments", "/charges", now=now, rng=rng)

    assert (decision.before_apply is not None) == (rate == 1.0)
    assert rng.getstate() == state


@given(now=st.floats(min_value=0, max_value=1e3))
def test_an_outage_acts_only_within_its_window(now: float) -> None:
    fault = make_fault(error_rate=0.0, outage_seconds=30.0)  # created at 100
    decision = decide([fault], "payments", "/charges", now=now, rng=random.Random())

    assert (decision.outage is not None) == (100 <= now < 130)


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["action", "compensation"]),
        st.sampled_from(["o-1", "o-2"]),
        st.sampled_from(["k-1", "k-2", "k-3", "k-4"]),
    ),
    max_size=30,
)


@given(operations=OPERATIONS)
def test_no_interleaving_of_retries_undoes_or_applies_twice(
    operations: list[tuple[str, str, str]],
) -> None:
    """Whatever a caller sends, each key applies at most once, an order is undone at most
    once, and no action takes effect after its order's compensation."""
    lab = LabState(clock=FakeClock(), rng=random.Random(0))
    spec = SERVICES["payments"]
    for operation, order_id, key in operations:
        is_action = operation == "action"
        raw = {**CHARGE, "order_id": order_id} if is_action else {"order_id": order_id}
        model = spec.action_model if is_action else OrderRef
        endpoint = spec.action_path if is_action else spec.compensation_path
        assert endpoint is not None
        lab.perform(
            spec,
            endpoint,
            key=f"{operation}-{key}",
            raw_body=raw,
            body=model.model_validate(raw),
            traceparent=None,
        )

    entries = [e.to_dict() for e in lab.ledger()]
    assert len({e["idempotency_key"] for e in entries}) == len(entries)
    undone = [e["order_id"] for e in entries if e["operation"] == "compensation" and not e["noop"]]
    assert len(undone) == len(set(undone))
    compensated: set[str] = set()
    for entry in entries:
        if entry["operation"] == "compensation":
            compensated.add(entry["order_id"])
        else:
            assert entry["order_id"] not in compensated
