"""At most one saga per client POST: a gateway SIGKILLed while it holds a forwarded POST.

The API behind the gateways is `HoldingApi` (tests/edgelab.py), which holds its answer to the
first POST so that the kill lands while the gateway is waiting for it: the request has reached
the API, and the edge cannot know. It may send the request again only under the same
Idempotency-Key (its own when the client sent none), so the API replays the one saga; when no
other gateway is left, the client is told the outcome is unknown and which key to retry with.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sagalab.edge.apps import EdgeSettings, build_edge
from sagalab.edge.keys import open_key_store
from sagalab.edge.server import RunningServer, serve_in_thread
from tests.edgelab import GatewayProcess, HoldingApi, start_gateway, wait_for

SAGA = {"flow": "checkout", "input": {"order_id": "o-1", "amount": 10}}


@dataclass
class Lab:
    api: HoldingApi
    gateways: list[GatewayProcess]
    edge: RunningServer
    key: str


def lab(tmp_path: Path, gateways: int) -> Iterator[Lab]:
    keys_db = tmp_path / "keys.db"
    store = open_key_store(keys_db)
    _, key = store.create("client", rate=1000, burst=1000)
    store.close()
    fake = HoldingApi(hold=1)
    api = serve_in_thread(fake)
    procs: list[GatewayProcess] = []
    edge: RunningServer | None = None
    try:
        for i in range(gateways):
            procs.append(start_gateway(keys_db, api.url, f"gw{i}"))
        edge = serve_in_thread(
            build_edge(EdgeSettings(upstreams=[g.url for g in procs], health_interval=0.1))
        )
        yield Lab(fake, procs, edge, key)
    finally:
        fake.release.set()
        if edge is not None:
            edge.stop()
        for g in procs:
            g.stop()
        api.stop()


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Lab]:
    yield from lab(tmp_path, 2)


@pytest.fixture
def one(tmp_path: Path) -> Iterator[Lab]:
    yield from lab(tmp_path, 1)


def post_and_kill_the_holder(
    lab: Lab, headers: dict[str, str], target: str = "/v1/sagas"
) -> httpx.Response:
    """POST through the edge; SIGKILL the gateway that holds it once it reached the API."""
    headers = {"Authorization": f"Bearer {lab.key}", **headers}
    with (
        httpx.Client(base_url=lab.edge.url, headers=headers, timeout=15) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        answer = pool.submit(client.post, target, json=SAGA)
        wait_for(lab.api.held.is_set, 10, "the POST to reach the API")
        status = httpx.get(lab.edge.url + "/edge/status").json()["instances"]
        holders = [i["instance"] for i in status if i["active"] == 1]
        assert len(holders) == 1, status
        holder = next(g for g in lab.gateways if g.name == holders[0])
        holder.kill()
        return answer.result(timeout=15)


@pytest.mark.parametrize("client_key", [None, "client-key-1"], ids=["no-key", "client-key"])
def test_a_gateway_killed_mid_post_gives_one_saga(two: Lab, client_key: str | None) -> None:
    headers = {"Idempotency-Key": client_key} if client_key else {}
    r = post_and_kill_the_holder(two, headers)
    assert r.status_code in (200, 202), r.text
    # The POST reached the API twice (once through each gateway) but under one key: one saga.
    assert len(two.api.sagas) == 1, two.api.sagas
    assert len(two.api.posts) == 2
    assert len(set(two.api.posts)) == 1 and two.api.posts[0] is not None
    if client_key:
        assert two.api.posts[0] == client_key
    assert r.json()["id"] == next(iter(two.api.sagas))


@pytest.mark.parametrize("client_key", [None, "client-key-2"], ids=["no-key", "client-key"])
def test_an_unknown_outcome_says_so_and_names_the_key(one: Lab, client_key: str | None) -> None:
    headers = {"Idempotency-Key": client_key} if client_key else {}
    r = post_and_kill_the_holder(one, headers)
    assert r.status_code == 502, r.text
    assert r.headers["content-type"] == "application/problem+json"
    key = r.headers["idempotency-key"]
    assert key == (client_key or one.api.posts[0])
    assert f"the outcome is unknown: retry with Idempotency-Key: {key}" in r.json()["detail"]
    # Nothing was sent twice: the one gateway is gone and the edge did not try it again.
    assert len(one.api.posts) == 1 and len(one.api.sagas) == 1


def test_a_post_that_reached_no_gateway_is_sent_to_another_freely() -> None:
    # Connection refused: not one byte was sent, so the POST goes on to the next gateway.
    gone, fake = HoldingApi(), HoldingApi()
    first, second = serve_in_thread(gone), serve_in_thread(fake)
    try:
        settings = EdgeSettings(upstreams=[first.url, second.url], health_interval=30)
        with serve_in_thread(build_edge(settings)) as edge:
            first.stop()  # healthy a moment ago; the next health check is 30 s away
            r = httpx.post(edge.url + "/v1/sagas", json=SAGA, timeout=10)
            status = httpx.get(edge.url + "/edge/status").json()["instances"]
    finally:
        second.stop()
    assert r.status_code == 202, r.text
    assert status[0]["sent"] == 1 and status[0]["healthy"] is False
    assert gone.posts == [] and len(fake.posts) == 1 and len(fake.sagas) == 1


@pytest.mark.parametrize("action", ["rollback", "resume"])
def test_an_operator_action_is_never_sent_twice(two: Lab, action: str) -> None:
    # The API honours Idempotency-Keys only when creating a saga: a rollback sent again would
    # be refused ("already rolling back") although the first one was recorded.
    r = post_and_kill_the_holder(two, {}, f"/v1/sagas/saga-9/{action}")
    assert r.status_code == 502, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "idempotency-key" not in r.headers
    detail = r.json()["detail"]
    assert "the outcome is unknown" in detail
    assert "GET /v1/sagas/saga-9 to see whether it took effect" in detail
    assert two.api.posts == [None]  # reached the API once, and with no key of the edge's


def test_a_timed_out_post_is_not_sent_again(tmp_path: Path) -> None:
    keys_db = tmp_path / "keys.db"
    store = open_key_store(keys_db)
    _, key = store.create("client", rate=1000, burst=1000)
    store.close()
    fake = HoldingApi()
    api = serve_in_thread(fake)
    procs: list[GatewayProcess] = []
    stopped: GatewayProcess | None = None
    try:
        procs = [start_gateway(keys_db, api.url, f"gw{i}") for i in range(2)]
        # No health check during the test: the stopped gateway stays in rotation and, with
        # nothing in flight, least connections picks the first instance.
        settings = EdgeSettings(
            upstreams=[g.url for g in procs], health_interval=60, upstream_timeout=0.7
        )
        with serve_in_thread(build_edge(settings)) as edge:
            stopped = procs[0]
            stopped.proc.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            r = httpx.post(
                edge.url + "/v1/sagas",
                json=SAGA,
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "k-slow"},
                timeout=15,
            )
            took = time.monotonic() - started
            status = httpx.get(edge.url + "/edge/status").json()["instances"]
            posts = list(fake.posts)
    finally:
        if stopped is not None:
            stopped.proc.send_signal(signal.SIGCONT)
        for g in procs:
            g.stop()
        api.stop()
    assert r.status_code == 504, r.text
    assert r.headers["idempotency-key"] == "k-slow"
    assert "the outcome is unknown: retry with Idempotency-Key: k-slow" in r.json()["detail"]
    assert took < 5
    # Never sent to the second gateway, and slow is not dead: the first stays in rotation.
    assert posts == []
    assert [i["sent"] for i in status] == [1, 0]
    # (A health check that was in flight at the SIGSTOP may have failed: it names 0.5s.)
    assert status[0]["healthy"] is True
    assert not any(t in str(status[0]["last_error"]) for t in ("broken exchange", "within 0.7s"))
