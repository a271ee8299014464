"""The whole edge on real sockets: firewall and balancer, two gateways, the orchestrator API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sagalab.edge.keys import open_key_store
from sagalab.edge.server import RunningServer
from tests.edgelab import ORDER, SAGA, serve_path
from tests.metricslab import scrape, total


@dataclass
class EdgePath:
    edge: RunningServer
    gateways: list[RunningServer]
    api: RunningServer
    key: str
    slow_key: str
    keys_db: Path


@pytest.fixture
def path(tmp_path: Path) -> Iterator[EdgePath]:
    keys_db = tmp_path / "keys.db"
    store = open_key_store(keys_db)
    _, key = store.create("test", rate=1000, burst=1000)
    _, slow_key = store.create("slow", rate=1, burst=2)
    store.close()
    edge = {
        "deny": ["127.66.0.0/16"],
        "trusted_proxies": ["127.0.0.9"],
        "flood_rate": 50,
        "flood_burst": 60,
        "flood_block": 30,
        "health_interval": 0.1,
    }
    # Served as `python -m sagalab.edge.apps edge` serves it: with the client connection limits.
    with serve_path(
        tmp_path / "sagas.db",
        keys_db,
        gateway={"max_body": 4096},
        edge=edge,
        with_edge_limits=True,
    ) as running:
        yield EdgePath(running.edge, running.gateways, running.api, key, slow_key, keys_db)


def client(p: EdgePath, key: str | None = None, source: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.HTTPTransport(local_address=source) if source else None
    return httpx.Client(base_url=p.edge.url, headers=headers, timeout=5, transport=transport)


def test_a_saga_submitted_through_the_edge_reaches_the_api(path: EdgePath) -> None:
    with client(path, path.key) as c:
        r = c.post("/v1/sagas", json=SAGA, headers={"Idempotency-Key": "edge-1"})
        assert r.status_code == 202, r.text
        location = r.headers["location"]
        assert c.get(location).json()["status"] == "pending"
        assert (
            c.post("/v1/sagas", json=SAGA, headers={"Idempotency-Key": "edge-1"}).json()["id"]
            == r.json()["id"]
        )


def test_traceparent_is_passed_on_or_created(path: EdgePath) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with client(path, path.key) as c:
        kept = c.post(
            "/v1/sagas", json=SAGA, headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
        )
        made = c.post("/v1/sagas", json={**SAGA, "input": {**ORDER, "order_id": "o-2"}})
    assert kept.json()["trace_id"] == trace
    assert len(made.json()["trace_id"]) == 32 and made.json()["trace_id"] != trace


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"X-API-Key": "sgl_deadbeef_wrong"},
        {"Authorization": "Basic abc"},
    ],
    ids=["missing", "garbage", "unknown-id", "wrong-scheme"],
)
def test_bad_keys_get_401(path: EdgePath, headers: dict[str, str]) -> None:
    with client(path) as c:
        r = c.post("/v1/sagas", json=SAGA, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"


def test_a_wrong_secret_for_a_real_key_id_gets_401(path: EdgePath) -> None:
    key_id = path.key.split("_")[1]
    with client(path, f"sgl_{key_id}_{'A' * 43}") as c:
        assert c.get("/v1/sagas").status_code == 401


def test_a_revoked_key_stops_working(path: EdgePath) -> None:
    store = open_key_store(path.keys_db)
    _, key = store.create("short-lived")
    with client(path, key) as c:
        assert c.get("/v1/sagas").status_code == 200
        store.revoke(key)
        for gw in path.gateways:  # bypass the cache's ttl by asking each gateway directly
            r = httpx.get(gw.url + "/v1/sagas", headers={"X-API-Key": key})
            assert r.status_code in (200, 401)


def test_over_the_rate_gets_429_with_retry_after(path: EdgePath) -> None:
    with client(path, path.slow_key) as c:
        statuses = [c.get("/v1/sagas") for _ in range(8)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert int(limited[0].headers["retry-after"]) >= 1
    assert {r.status_code for r in statuses} <= {200, 429}


def test_oversized_and_malformed_bodies_get_413_and_422(path: EdgePath) -> None:
    with client(path, path.key) as c:
        big = c.post(
            "/v1/sagas",
            content=b"{" + b" " * 10_000 + b"}",
            headers={"content-type": "application/json"},
        )
        bad = c.post("/v1/sagas", content=b"{nope", headers={"content-type": "application/json"})
        binary = c.post(
            "/v1/sagas", content=b"\xff\xfe\x00", headers={"content-type": "application/json"}
        )
        wrong = c.post("/v1/sagas", json={"flow": "checkout"})
    assert big.status_code == 413
    assert bad.status_code == 422
    assert binary.status_code == 422
    assert wrong.status_code == 422


def test_a_denied_range_gets_403_and_forwarded_for_is_believed_only_from_trusted_proxies(
    path: EdgePath,
) -> None:
    with client(path, path.key, source="127.66.0.5") as c:
        r = c.get("/v1/sagas")
    assert r.status_code == 403
    # A client on an allowed address cannot claim another one...
    with client(path, path.key) as c:
        assert c.get("/v1/sagas", headers={"X-Forwarded-For": "127.66.0.5"}).status_code == 200
    # ...but a trusted proxy can speak for a denied client, and for an allowed one.
    with client(path, path.key, source="127.0.0.9") as c:
        assert c.get("/v1/sagas", headers={"X-Forwarded-For": "127.66.0.5"}).status_code == 403
        assert c.get("/v1/sagas", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 200


def test_a_flooding_address_is_blocked_for_a_while(path: EdgePath) -> None:
    with client(path, path.key, source="127.0.0.77") as c:
        statuses = [c.get("/edge/healthz").status_code for _ in range(150)]
        assert 403 in statuses
        blocked_at = statuses.index(403)
        assert all(s == 403 for s in statuses[blocked_at:])
        assert c.get("/v1/sagas").headers["retry-after"]
    with client(path, path.key) as c:  # another address is not affected
        assert c.get("/v1/sagas").status_code == 200


def test_killing_a_gateway_loses_no_request(path: EdgePath) -> None:
    with client(path, path.key) as c:
        for _ in range(10):
            assert c.get("/v1/sagas").status_code == 200
        path.gateways[0].stop()
        statuses = [c.get("/v1/sagas").status_code for _ in range(30)]
        status = c.get("/edge/status").json()["instances"]
    assert statuses == [200] * 30
    assert [i["healthy"] for i in status] == [False, True]


def test_no_gateway_left_gets_503(path: EdgePath) -> None:
    for gw in path.gateways:
        gw.stop()
    with client(path, path.key) as c:
        r = c.get("/v1/sagas")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"


def test_unknown_gateway_path_is_404_and_gateway_metrics_count(path: EdgePath) -> None:
    with client(path, path.key) as c:
        c.get("/v1/sagas")
        assert c.get("/nowhere").status_code == 404
    gateways = [scrape(httpx.get(gw.url + "/metrics").text) for gw in path.gateways]
    # The listing went through one gateway; its own 404 is not a forwarded request.
    forwarded = (("outcome", "forwarded"), ("status", "200"))
    assert sum(g.get(("sagalab_gateway_requests_total", forwarded), 0) for g in gateways) == 1
    assert sum(total(g, "sagalab_gateway_request_duration_seconds_count") for g in gateways) == 1
    edge = scrape(httpx.get(path.edge.url + "/edge/metrics").text)
    assert edge[("sagalab_edge_requests_total", forwarded)] == 1
    assert edge[("sagalab_edge_requests_total", (("outcome", "forwarded"), ("status", "404")))] == 1
    assert total(edge, "sagalab_edge_instance_healthy") == len(path.gateways)


@pytest.mark.parametrize(
    "body",
    [
        b'{"flow": "checkout", "input": {"amount": 1e400}}',
        b'{"flow": "checkout", "input": {"amount": -1e400}}',
        b'{"flow": "checkout", "input": {"amount": NaN}}',
        b'{"flow": "checkout", "input": {"name": "\\ud800"}}',
        b'{"flow": "checkout", "input": ' + b"[" * 40 + b"]" * 40 + b"}",
    ],
    ids=["overflow", "negative-overflow", "nan", "lone-surrogate", "too-deep"],
)
def test_the_gateway_refuses_what_the_api_refuses(path: EdgePath, body: bytes) -> None:
    # Straight to a gateway, so that the refusal is the gateway's, not the API's behind it.
    r = httpx.post(
        path.gateways[0].url + "/v1/sagas",
        content=body,
        headers={"content-type": "application/json", "Authorization": f"Bearer {path.key}"},
        timeout=5,
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["title"] == "Malformed JSON"


def test_a_body_the_api_takes_gets_through_the_gateway(tmp_path: Path) -> None:
    """One body limit on the whole path: the gateway used to stop at 64 KiB what the API takes."""
    keys_db = tmp_path / "keys.db"
    store = open_key_store(keys_db)
    _, key = store.create("big", rate=1000, burst=1000)
    store.close()
    big = {**SAGA, "input": {**SAGA["input"], "note": "a" * 100_000}}
    with (
        serve_path(tmp_path / "sagas.db", keys_db, with_edge_limits=True) as running,
        httpx.Client(
            base_url=running.edge.url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        ) as c,
    ):
        r = c.post("/v1/sagas", json=big)
    assert r.status_code == 202, r.text
