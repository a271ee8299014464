"""Tenants on the real path: edge -> gateways -> API -> SQLite, on real sockets.

Each key belongs to a tenant; a tenant sees only its own sagas (another's is 404, as if it did
not exist), idempotency keys are per tenant, and the API believes a tenant only from a gateway
holding the stack's secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sagalab.edge.keys import open_key_store
from sagalab.edge.server import RunningServer
from tests.edgelab import ORDER, SAGA, serve_path


@dataclass
class Tenants:
    edge: RunningServer
    gateways: list[RunningServer]
    api: RunningServer
    alice: str
    alice_too: str  # another key of tenant alice
    bob: str
    admin: str
    secret: str


@pytest.fixture
def tenants(tmp_path: Path) -> Iterator[Tenants]:
    keys_db = tmp_path / "keys.db"
    store = open_key_store(keys_db)
    _, alice = store.create("alice-ci", tenant="alice", rate=1000, burst=1000)
    _, alice_too = store.create("alice-web", tenant="alice", rate=1000, burst=1000)
    _, bob = store.create("bob", rate=1000, burst=1000)
    _, admin = store.create("ops", admin=True, rate=1000, burst=1000)
    store.close()
    with serve_path(
        tmp_path / "sagas.db", keys_db, api_keys=True, edge={"health_interval": 0.1}
    ) as p:
        yield Tenants(p.edge, p.gateways, p.api, alice, alice_too, bob, admin, p.secret)


def client(base_url: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=5)


def test_another_tenant_cannot_read_list_or_operate_a_saga(tenants: Tenants) -> None:
    with (
        client(tenants.edge.url, tenants.alice) as alice,
        client(tenants.edge.url, tenants.bob) as bob,
    ):
        created = alice.post("/v1/sagas", json=SAGA)
        assert created.status_code == 202, created.text
        saga = created.headers["location"]
        assert created.json()["tenant"] == "alice"
        for r in (
            bob.get(saga),
            bob.post(saga + "/rollback", json={"force": True}),
            bob.post(saga + "/resume"),
        ):
            assert r.status_code == 404, r.text
            assert r.json()["title"] == "Saga not found"
        assert bob.get("/v1/sagas").json()["count"] == 0
        assert bob.get("/v1/sagas", params={"tenant": "alice"}).status_code == 403
        # Nothing bob tried changed the saga; alice's other key sees and lists it.
        with client(tenants.edge.url, tenants.alice_too) as same_tenant:
            assert same_tenant.get(saga).json()["status"] == "pending"
            assert same_tenant.get("/v1/sagas").json()["count"] == 1


def test_the_same_idempotency_key_from_two_tenants_makes_two_sagas(tenants: Tenants) -> None:
    headers = {"Idempotency-Key": "order-1"}
    with (
        client(tenants.edge.url, tenants.alice) as alice,
        client(tenants.edge.url, tenants.bob) as bob,
    ):
        a = alice.post("/v1/sagas", json=SAGA, headers=headers)
        b = bob.post("/v1/sagas", json=SAGA, headers=headers)
        assert a.status_code == b.status_code == 202
        assert a.json()["id"] != b.json()["id"]
        assert alice.post("/v1/sagas", json=SAGA, headers=headers).json()["id"] == a.json()["id"]
        # Other input under bob's key: the 409 names bob's saga, never alice's.
        other = {**SAGA, "input": {**ORDER, "amount": 99}}
        conflict = bob.post("/v1/sagas", json=other, headers=headers)
        assert conflict.status_code == 409
        assert b.json()["id"] in conflict.json()["detail"]
        assert a.json()["id"] not in conflict.text


@pytest.mark.parametrize(
    "forged",
    [
        {"x-sagalab-tenant": "alice"},
        {"x-sagalab-tenant": "alice", "x-sagalab-admin": "true"},
        {"X-Sagalab-Key-Id": "deadbeef", "x-sagalab-tenant": "alice"},
        {"x-sagalab-gateway": "guess", "x-sagalab-tenant": "alice", "x-sagalab-admin": "true"},
    ],
    ids=["tenant", "admin", "key-id", "wrong-secret"],
)
def test_tenant_headers_a_client_sends_are_ignored(
    tenants: Tenants, forged: dict[str, str]
) -> None:
    with (
        client(tenants.edge.url, tenants.alice) as alice,
        client(tenants.edge.url, tenants.bob) as bob,
    ):
        saga = alice.post("/v1/sagas", json=SAGA).headers["location"]
        assert bob.get(saga, headers=forged).status_code == 404
        listed = bob.get("/v1/sagas", headers=forged).json()
        assert listed["count"] == 0
        mine = bob.post("/v1/sagas", json=SAGA, headers=forged)
        assert mine.status_code == 202 and mine.json()["tenant"] == "bob"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-sagalab-tenant": "alice", "x-sagalab-key-id": "deadbeef"},
        {"x-sagalab-gateway": "not-the-secret", "x-sagalab-tenant": "alice"},
        {"Authorization": "Bearer sgl_deadbeef_nope"},
    ],
    ids=["no-key", "forged-tenant", "wrong-secret", "unknown-key"],
)
def test_the_api_port_refuses_requests_without_a_key(
    tenants: Tenants, headers: dict[str, str]
) -> None:
    with client(tenants.api.url) as direct:
        for r in (
            direct.get("/v1/sagas", headers=headers),
            direct.post("/v1/sagas", json=SAGA, headers=headers),
            direct.get("/v1/flows", headers=headers),
        ):
            assert r.status_code == 401, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"].startswith("Bearer")
        # Health, readiness and metrics stay open for balancers and scrapers.
        assert direct.get("/healthz").status_code == 200
        assert direct.get("/readyz").status_code == 200
        assert direct.get("/metrics").status_code == 200


def test_a_key_presented_to_the_api_directly_is_scoped_too(tenants: Tenants) -> None:
    with (
        client(tenants.api.url, tenants.alice) as alice,
        client(tenants.api.url, tenants.bob) as bob,
    ):
        created = alice.post("/v1/sagas", json=SAGA)
        assert created.status_code == 202
        saga = created.headers["location"]
        assert alice.get(saga).status_code == 200
        assert bob.get(saga).status_code == 404
        forged = {"x-sagalab-tenant": "alice", "x-sagalab-admin": "true"}
        assert bob.get(saga, headers=forged).status_code == 404


def test_an_admin_key_sees_every_tenant(tenants: Tenants) -> None:
    with (
        client(tenants.edge.url, tenants.alice) as alice,
        client(tenants.edge.url, tenants.bob) as bob,
    ):
        a = alice.post("/v1/sagas", json=SAGA).headers["location"]
        b = bob.post("/v1/sagas", json=SAGA).headers["location"]
    for base in (tenants.edge.url, tenants.api.url):  # through the gateways, and directly
        with client(base, tenants.admin) as admin:
            assert admin.get(a).json()["tenant"] == "alice"
            assert admin.get(b).json()["tenant"] == "bob"
            assert admin.get("/v1/sagas").json()["count"] == 2
            only_bob = admin.get("/v1/sagas", params={"tenant": "bob"}).json()
            assert [s["tenant"] for s in only_bob["items"]] == ["bob"]
    with client(tenants.edge.url, tenants.admin) as admin:
        rolled = admin.post(a + "/rollback")
        assert rolled.status_code == 202 and rolled.json()["status"] == "compensating"
