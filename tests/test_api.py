"""The orchestrator HTTP API on a real uvicorn server and a real SQLite file."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from apilab import admin_api
from metricslab import scrape
from opslab import failed_on_notify, footprint, types

from sagalab.edge.keys import MAX_BURST, MAX_RATE, open_key_store
from sagalab.edge.server import RunningServer, serve_in_thread
from sagalab.fakeservices import run_in_thread
from sagalab.orchestrator.api import create_app
from sagalab.orchestrator.executors import HttpExecutor
from sagalab.orchestrator.leases import new_owner
from sagalab.orchestrator.runner import SagaRunner
from sagalab.orchestrator.saga import EventType
from sagalab.orchestrator.sqlite_store import SQLiteStore

ORDER = {"order_id": "o-1", "customer_id": "c-1", "sku": "sku-1", "quantity": 1, "amount": 10}


@pytest.fixture
def keys_db(tmp_path: Path) -> Path:
    return tmp_path / "keys.db"


@pytest.fixture
def api_key(keys_db: Path) -> str:
    store = open_key_store(keys_db)
    _, key = store.create("tests")
    store.close()
    return key


@pytest.fixture
def api(db: Path, keys_db: Path, api_key: str) -> Iterator[RunningServer]:
    with serve_in_thread(create_app(db, keys_db=keys_db)) as running:
        yield running


@pytest.fixture
def client(api: RunningServer, api_key: str) -> Iterator[httpx.Client]:
    """A client presenting a valid key to the API directly."""
    with httpx.Client(
        base_url=api.url, timeout=5.0, headers={"Authorization": f"Bearer {api_key}"}
    ) as c:
        yield c


def run_queued(db: Path, services: dict[str, str], saga_id: str) -> None:
    """Stand-in for a worker: run one queued saga to its end in another thread."""

    def work() -> None:
        store = SQLiteStore(db)
        executor = HttpExecutor(services)
        try:
            SagaRunner(store, executor).run(saga_id)
        finally:
            executor.close()
            store.close()

    t = threading.Thread(target=work)
    t.start()
    t.join(30)


def submit(
    client: httpx.Client, order: dict[str, object], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/sagas", json={"flow": "checkout", "input": order}, headers=headers)


def test_submit_queues_a_saga_and_answers_202_with_location(client: httpx.Client, db: Path) -> None:
    r = submit(client, ORDER)
    assert r.status_code == 202
    saga_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/sagas/{saga_id}"
    assert r.json()["status"] == "pending"
    assert SQLiteStore(db).queue_stats(now=1e12)["depth"] == 1
    got = client.get(r.headers["location"])
    assert got.status_code == 200
    assert [s["name"] for s in got.json()["steps"]][0] == "reserve_inventory"


def test_idempotency_key_returns_the_same_saga_and_refuses_other_input(
    client: httpx.Client,
) -> None:
    first = submit(client, ORDER, key="k-1")
    again = submit(client, ORDER, key="k-1")
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = submit(client, {**ORDER, "amount": 99}, key="k-1")
    assert other.status_code == 409
    assert other.headers["content-type"].startswith("application/problem+json")


def test_traceparent_becomes_the_saga_trace_id(client: httpx.Client) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = client.post(
        "/v1/sagas",
        json={"flow": "checkout", "input": ORDER},
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    assert r.json()["trace_id"] == trace


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'{"flow": "checkout"}', "application/json"),
        (b'{"flow": "checkout", "input": []}', "application/json"),
        (b'{"flow": "checkout", "input": {"order_id": "x"}}', "application/json"),
        (b'{"flow": "../../etc/passwd", "input": {}}', "application/json"),
        (b'{"flow": "nosuchflow", "input": {}}', "application/json"),
        (b"\xff\xfe", "application/json"),
    ],
    ids=[
        "malformed",
        "no-input",
        "input-not-object",
        "missing-key",
        "path-flow",
        "unknown-flow",
        "not-utf8",
    ],
)
def test_bad_bodies_get_422_never_500(client: httpx.Client, body: bytes, content_type: str) -> None:
    r = client.post("/v1/sagas", content=body, headers={"content-type": content_type})
    assert r.status_code == 422, r.text
    assert r.json()["status"] == 422


def test_unknown_saga_is_404(client: httpx.Client) -> None:
    for r in (
        client.get("/v1/sagas/nope"),
        client.post("/v1/sagas/nope/resume"),
        client.post("/v1/sagas/nope/rollback"),
    ):
        assert r.status_code == 404


def test_list_filters_by_status_and_flow(client: httpx.Client) -> None:
    for i in range(3):
        submit(client, {**ORDER, "order_id": f"o-{i}"})
    assert client.get("/v1/sagas", params={"status": "pending"}).json()["count"] == 3
    assert client.get("/v1/sagas", params={"status": "completed"}).json()["count"] == 0
    assert client.get("/v1/sagas", params={"flow": "other"}).json()["count"] == 0
    assert client.get("/v1/sagas", params={"limit": 2}).json()["count"] == 2
    assert client.get("/v1/sagas", params={"status": "bogus"}).status_code == 422
    assert client.get("/v1/sagas", params={"limit": 0}).status_code == 422


def test_rollback_of_a_completed_saga_past_its_pivot_needs_force(
    client: httpx.Client, db: Path
) -> None:
    with run_in_thread() as services:
        saga_id = submit(client, ORDER).json()["id"]
        run_queued(db, services.services, saga_id)
        assert client.get(f"/v1/sagas/{saga_id}").json()["status"] == "completed"
        assert client.post(f"/v1/sagas/{saga_id}/resume").status_code == 409
        refused = client.post(f"/v1/sagas/{saga_id}/rollback")
        assert refused.status_code == 409
        assert "pivot" in refused.json()["detail"]
        forced = client.post(f"/v1/sagas/{saga_id}/rollback", json={"force": True})
        assert forced.status_code == 202
        assert forced.json()["status"] == "compensating"
        run_queued(db, services.services, saga_id)
        assert client.get(f"/v1/sagas/{saga_id}").json()["status"] == "rolled_back"


def test_resume_requeues_an_unfinished_saga(client: httpx.Client, db: Path) -> None:
    saga_id = submit(client, ORDER).json()["id"]
    r = client.post(f"/v1/sagas/{saga_id}/resume")
    assert r.status_code == 202
    assert r.json()["queued"] is True


def test_health_readiness_and_metrics(client: httpx.Client) -> None:
    submit(client, ORDER)
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").status_code == 200
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = scrape(response.text)
    assert samples[("sagalab_api_sagas", (("status", "pending"),))] == 1
    assert samples[("sagalab_api_queue_depth", ())] == 1
    post = (("method", "POST"), ("route", "/v1/sagas"), ("status", "202"))
    assert samples[("sagalab_api_http_requests_total", post)] == 1
    assert samples[("sagalab_api_sagas_submitted_total", (("flow", "checkout"),))] == 1
    get = (("method", "POST"), ("route", "/v1/sagas"))
    assert samples[("sagalab_api_http_request_duration_seconds_count", get)] == 1


def test_openapi_document_describes_every_route(client: httpx.Client) -> None:
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) >= {
        "/v1/sagas",
        "/v1/sagas/{saga_id}",
        "/v1/sagas/{saga_id}/resume",
        "/v1/sagas/{saga_id}/rollback",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    post = paths["/v1/sagas"]["post"]
    assert "202" in post["responses"]
    params = {p["name"].lower() for p in post["parameters"]}
    assert {"idempotency-key", "traceparent"} <= params
    assert set(doc["components"]["schemas"]["SagaCreate"]["required"]) == {"flow", "input"}


# --- the API port keeps the gateway's protections (issue 8, second round) -------------------


def test_a_key_presented_directly_is_rate_limited_as_at_the_gateway(
    db: Path, keys_db: Path
) -> None:
    store = open_key_store(keys_db)
    _, slow = store.create("slow", rate=0.001, burst=1)  # one token, then one per 1000 s
    store.close()
    with (
        serve_in_thread(create_app(db, keys_db=keys_db)) as api,
        httpx.Client(base_url=api.url, headers={"X-API-Key": slow}, timeout=5) as c,
    ):
        codes = [c.get("/v1/sagas").status_code for _ in range(8)]
        refused = c.get("/v1/sagas")
    assert codes == [200] + [429] * 7
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1


def test_requests_a_gateway_vouches_for_are_not_limited_twice(db: Path, keys_db: Path) -> None:
    secret = "s" * 32
    vouched = {"x-sagalab-gateway": secret, "x-sagalab-tenant": "t1", "x-sagalab-key-id": "k1"}
    with (
        serve_in_thread(create_app(db, keys_db=keys_db, gateway_secret=secret)) as api,
        httpx.Client(base_url=api.url, headers=vouched, timeout=5) as c,
    ):
        assert [c.get("/v1/sagas").status_code for _ in range(8)] == [200] * 8


def test_without_direct_keys_only_the_gateways_requests_are_taken(
    db: Path, keys_db: Path, api_key: str
) -> None:
    secret = "s" * 32
    vouched = {"x-sagalab-gateway": secret, "x-sagalab-tenant": "t1"}
    app = create_app(db, keys_db=keys_db, gateway_secret=secret, direct_keys=False)
    with serve_in_thread(app) as api, httpx.Client(base_url=api.url, timeout=5) as c:
        direct = c.get("/v1/sagas", headers={"Authorization": f"Bearer {api_key}"})
        assert direct.status_code == 401
        assert "gateway" in direct.json()["detail"]
        assert c.get("/v1/sagas", headers=vouched).status_code == 200


DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    "route",
    ["/v1/sagas", "/v1/sagas/{id}/rollback", "/v1/sagas/{id}/resume"],
    ids=["submit", "rollback", "resume"],
)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"reason": "\xff\xfe"}', 422),
        (DEEP, 422),
        (b'{"reason": NaN}', 422),
        (b'{"reason": "' + b"x" * 1_000_001 + b'"}', 413),
    ],
    ids=["not-utf8", "too-deep", "nan", "too-large"],
)
def test_every_route_limits_its_body_and_refuses_what_it_cannot_read(
    client: httpx.Client, route: str, body: bytes, status: int
) -> None:
    saga_id = submit(client, ORDER).json()["id"]
    r = client.post(
        route.format(id=saga_id), content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert client.get(f"/v1/sagas/{saga_id}").json()["status"] == "pending"  # nothing done


def test_an_empty_idempotency_key_is_refused(client: httpx.Client, db: Path) -> None:
    r = client.post(
        "/v1/sagas", json={"flow": "checkout", "input": ORDER}, headers={"Idempotency-Key": ""}
    )
    assert r.status_code == 422, r.text
    assert "idempotency" in r.json()["detail"].lower()
    assert client.get("/v1/sagas").json()["count"] == 0


@pytest.mark.parametrize(
    "body",
    [{"force": "yes"}, {"force": 1}, {"force": "true"}, {"force": None}, {"reason": 5}],
    ids=["yes", "one", "string-true", "null", "reason-number"],
)
def test_rollback_takes_only_true_or_false_for_force(
    client: httpx.Client, body: dict[str, object]
) -> None:
    saga_id = submit(client, ORDER).json()["id"]
    r = client.post(f"/v1/sagas/{saga_id}/rollback", json=body)
    assert r.status_code == 422, r.text
    assert client.get(f"/v1/sagas/{saga_id}").json()["status"] == "pending"


UNKNOWN_FIELDS = [
    ("submit", "", {"flow": "checkout", "input": ORDER, "zzz": 1}),
    ("resume", "/resume", {"zzz": 1}),
    ("rollback", "/rollback", {"force": False, "zzz": 1}),
    ("cancel", "/cancel", {"reason": "ok", "zzz": 1}),
    ("fork", "/fork", {"from_step": "reserve_inventory", "dry_run": True, "zzz": 1}),
    ("retry", "/steps/charge_payment/retry", {"zzz": 1}),
    ("skip", "/steps/charge_payment/skip", {"reason": "ok", "zzz": 1}),
]


@pytest.mark.parametrize(
    ("route", "body"), [u[1:] for u in UNKNOWN_FIELDS], ids=[u[0] for u in UNKNOWN_FIELDS]
)
def test_every_route_refuses_a_field_it_does_not_know_and_names_it(
    client: httpx.Client, route: str, body: dict[str, object]
) -> None:
    """Was accepted (a typo such as `"froce": true` silently did the default)."""
    saga_id = submit(client, ORDER).json()["id"]
    path = "/v1/sagas" if route == "" else f"/v1/sagas/{saga_id}{route}"
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert "zzz" in r.json()["detail"]
    assert "Extra inputs are not permitted" in r.json()["detail"]
    listed = client.get("/v1/sagas").json()
    assert listed["count"] == 1
    assert client.get(f"/v1/sagas/{saga_id}").json()["status"] == "pending"


def test_resume_of_a_saga_a_live_worker_holds_is_refused(client: httpx.Client, db: Path) -> None:
    saga_id = submit(client, ORDER).json()["id"]
    store = SQLiteStore(db)
    try:
        # This process is alive: its lease is a live worker's.
        store.claim(saga_id, new_owner("worker"), now=time.time(), lease_seconds=60)
    finally:
        store.close()
    r = client.post(f"/v1/sagas/{saga_id}/resume")
    assert r.status_code == 409, r.text
    assert "is being run by" in r.json()["detail"]


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_api_port(client: httpx.Client) -> None:
    for method in ("GET", "POST"):
        r = client.request(method, "/v1/sagas/", json={"flow": "checkout", "input": ORDER})
        assert r.status_code == 404, (method, r.status_code, r.headers.get("location"))
        assert "location" not in r.headers


def test_several_idempotency_keys_are_refused(client: httpx.Client) -> None:
    headers = [("Idempotency-Key", "first"), ("Idempotency-Key", "second")]
    r = client.post("/v1/sagas", json={"flow": "checkout", "input": ORDER}, headers=headers)
    assert r.status_code == 422, r.text
    assert "one Idempotency-Key" in r.json()["detail"]
    assert client.get("/v1/sagas").json()["count"] == 0


# --- the operator actions of orchestrator.operations, over HTTP ------------------------------


def test_the_api_retries_and_skips_the_step_a_failed_saga_waits_on(db: Path) -> None:
    """The API's step actions: 404, 422 and 409 as for the CLI, then 202 and queued."""
    store = SQLiteStore(db)
    try:
        saga_id = failed_on_notify(store)
    finally:
        store.close()
    with admin_api(db) as client:
        base = f"/v1/sagas/{saga_id}/steps"
        assert client.post("/v1/sagas/nope/steps/notify/retry").status_code == 404
        assert client.post(f"{base}/nope/retry").status_code == 422
        assert client.post(f"{base}/charge/retry").status_code == 409
        assert client.post(f"{base}/notify/skip", json={"reason": ""}).status_code == 422
        assert client.post(f"{base}/notify/skip").status_code == 422  # the reason is required
        retried = client.post(f"{base}/notify/retry")
        assert retried.status_code == 202, retried.text
        assert retried.json()["queued"] is True
        assert retried.json()["message"] == "retry recorded; queued for the workers"
        assert retried.headers["location"] == f"/v1/sagas/{saga_id}"
    store = SQLiteStore(db)
    try:
        assert types(store, saga_id)[-1] is EventType.STEP_RETRY_REQUESTED
        assert footprint(store, saga_id)[1] is not None  # on the workers' queue
    finally:
        store.close()


def test_the_api_answers_another_tenants_operator_requests_as_unknown(
    db: Path, tmp_path: Path
) -> None:
    keys_db = tmp_path / "keys.db"
    keys = open_key_store(keys_db)
    try:
        _, alice = keys.create("alice", rate=MAX_RATE, burst=MAX_BURST)
        _, bob = keys.create("bob", rate=MAX_RATE, burst=MAX_BURST)
    finally:
        keys.close()
    store = SQLiteStore(db)
    try:
        saga_id = failed_on_notify(store)
        store.conn.execute("UPDATE sagas SET tenant = 'alice' WHERE id = ?", (saga_id,))
        before = footprint(store, saga_id)
    finally:
        store.close()
    requests = [
        ("resume", None),
        ("rollback", {"force": True}),
        ("steps/notify/retry", None),
        ("steps/notify/skip", {"reason": "by hand"}),
    ]
    with serve_in_thread(create_app(db, keys_db=keys_db)) as api:
        for key, expected in ((bob, 404), (alice, None)):
            with httpx.Client(
                base_url=api.url, timeout=5, headers={"Authorization": f"Bearer {key}"}
            ) as client:
                got = [
                    client.post(f"/v1/sagas/{saga_id}/{path}", json=body).status_code
                    for path, body in requests
                ]
            if expected is not None:
                assert got == [expected] * len(requests)
                store = SQLiteStore(db)
                try:
                    assert footprint(store, saga_id) == before  # bob changed nothing
                finally:
                    store.close()
    # Alice's own saga is answered about itself: a failed saga is not resumed (409), the
    # forced rollback is taken (202), and then it is compensating: no step waits to be
    # retried or skipped (409).
    assert got == [409, 202, 409, 409]
