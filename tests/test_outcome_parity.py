"""One classification of an attempt's outcome, used by the real runtime and the simulator.

`orchestrator.outcomes` decides what a status or transport error means (retry? may it have
applied? is the service unwell for its breaker?). These tests feed the same outcome to both
runtimes' real paths (a real fake service over HTTP, a real SQLite file; the SimPy services
and orchestrator) and expect the same answer.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import simpy

from sagalab.fakeservices import FaultSpec, run_in_thread
from sagalab.orchestrator.breaker_board import BreakerBoard, BreakerConfig
from sagalab.orchestrator.executors import AttemptContext, HttpExecutor
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.outcomes import Transport, Verdict, classify_status, classify_transport
from sagalab.orchestrator.policies.breaker import Breaker
from sagalab.orchestrator.runner import SagaRunner, start_saga
from sagalab.orchestrator.saga import Failure, Phase, SagaStatus, idempotency_key
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.simulator.orchestration import Orchestrator, Saga
from sagalab.simulator.stations import Service


def _f(retryable: bool, maybe_applied: bool, retry_after: float | None = None) -> tuple:
    return (retryable, maybe_applied, retry_after)


TABLE: list[tuple[str, Verdict, tuple | None, bool]] = [
    ("200", classify_status(200), None, False),
    ("201", classify_status(201, "created"), None, False),
    ("400", classify_status(400, "bad"), _f(False, False), False),
    ("402 declined", classify_status(402, "card_declined"), _f(False, False), False),
    ("409 refusal", classify_status(409, "out_of_stock"), _f(False, False), False),
    (
        "409 in_progress",
        classify_status(409, '{"error":"in_progress"}', 1.0),
        _f(True, True, 1.0),
        False,
    ),
    ("429", classify_status(429, "slow down", 2.0), _f(True, False, 2.0), False),
    ("500", classify_status(500, "boom"), _f(True, True), True),
    ("502", classify_status(502, "lost response"), _f(True, True), True),
    ("503", classify_status(503, "unavailable", 3.0), _f(True, True, 3.0), True),
    ("504", classify_status(504), _f(True, True), True),
    ("refused", classify_transport(Transport.NOT_SENT, "refused"), _f(True, False), True),
    ("timeout", classify_transport(Transport.TIMEOUT, "timeout"), _f(True, True), True),
    ("dropped", classify_transport(Transport.DROPPED, "reset"), _f(True, True), True),
    ("unreadable", classify_transport(Transport.PROTOCOL, "bad"), _f(False, True), False),
]


@pytest.mark.parametrize(
    ("verdict", "failure", "unwell"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE]
)
def test_classification_table(verdict: Verdict, failure: tuple | None, unwell: bool) -> None:
    got = verdict.failure
    assert (None if got is None else (got.retryable, got.maybe_applied, got.retry_after)) == failure
    assert verdict.unwell is unwell


def test_an_error_names_the_status_and_the_body() -> None:
    assert classify_status(503, "x" * 400).failure == Failure("HTTP 503: " + "x" * 300, True, True)
    assert classify_status(504).failure == Failure("HTTP 504", True, True)


# --- the same 503 in both runtimes ----------------------------------------------------------


def order(n: str) -> dict[str, Any]:
    return {"order_id": n, "customer_id": "c", "sku": "A", "quantity": 1, "amount": 50}


def _real_503() -> tuple[Failure | None, bool]:
    """A charge through the real executor against a fake payments service answering 503."""
    flow = load_flow("checkout")
    step = flow.step("charge_payment")
    with run_in_thread() as lab:
        lab.lab.add_fault(FaultSpec(service="payments", error_rate=1.0, status=503))
        executor = HttpExecutor(lab.services)
        try:
            outcome = executor.execute(
                AttemptContext(
                    saga_id="s1",
                    trace_id="0" * 32,
                    span_id="0" * 16,
                    step=step,
                    phase=Phase.ACTION,
                    attempt=1,
                    idempotency_key="s1:charge_payment:action",
                    input=order("o1"),
                    responses={},
                )
            )
        finally:
            executor.close()
        assert outcome.status_code == 503
        assert [e for e in lab.lab.ledger() if e.service == "payments"] == []  # before applying
    return outcome.failure, outcome.unwell


def _sim_service(env: simpy.Environment, name: str, **kw: Any) -> Service:
    settings: dict[str, Any] = dict(
        rng=random.Random(1),
        latency=lambda: 0.01,
        concurrency=1,
        queue_limit=None,
        error_rate=0.0,
        reject_rate=0.0,
        idempotent=True,
        faults=[],
    )
    settings.update(kw)
    return Service(env, name, **settings)


def _simulated_503() -> tuple[Failure | None, bool]:
    """A charge to a simulated payments service whose queue is full (it answers 503)."""
    env = simpy.Environment()
    service = _sim_service(env, "payments", queue_limit=0)
    flow = load_flow("checkout")
    busy = service.call(Saga(1, flow, 0.0, True), "charge_payment", Phase.ACTION, 5.0)
    call = service.call(Saga(2, flow, 0.0, True), "charge_payment", Phase.ACTION, 5.0)
    assert not busy.answered and call.answered  # the second found the queue full
    assert service.counts["overloaded"] == 1
    return call.outcome


def test_a_503_is_classified_the_same_in_both_runtimes() -> None:
    (real, real_unwell), (simulated, sim_unwell) = _real_503(), _simulated_503()
    assert real is not None and simulated is not None
    assert real.error.startswith("HTTP 503") and simulated.error.startswith("HTTP 503")
    # The same failure (the texts are each service's own words): retried, counted as maybe
    # applied (so compensated on a rollback in both), and a sign of an unwell service.
    assert (real.retryable, real.maybe_applied, real.retry_after) == (True, True, None)
    assert (simulated.retryable, simulated.maybe_applied, simulated.retry_after) == (
        real.retryable,
        real.maybe_applied,
        real.retry_after,
    )
    assert real_unwell is sim_unwell is True


# --- a 409 in_progress is a healthy answer ------------------------------------------------------


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_409_in_progress_is_a_healthy_answer_for_the_breaker(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    flow = load_flow("checkout")
    config = {"payments": BreakerConfig(fail_max=1, reset_timeout=60.0)}
    with run_in_thread() as lab:
        board = BreakerBoard(db, config, owner="test")
        executor = HttpExecutor(lab.services)
        runner = SagaRunner(store, executor, breakers=board)
        first: list[httpx.Response] = []
        try:
            saga, _ = start_saga(store, flow, order("ip1"), queue=False)
            key = idempotency_key(saga.id, "charge_payment", Phase.ACTION)
            # An earlier attempt under the same key is still being processed (a slow charge).
            lab.lab.add_fault(FaultSpec(service="payments", endpoint="/charges", latency_ms=1500))
            body = {"order_id": "ip1", "amount": 50, "currency": "EUR"}
            sender = threading.Thread(
                target=lambda: first.append(
                    httpx.post(
                        lab.services["payments"] + "/charges",
                        json=body,
                        headers={"Idempotency-Key": key},
                        timeout=10,
                    )
                )
            )
            sender.start()
            wait_for(lambda: lab.lab.in_flight("payments", key), 5, "the first charge in flight")
            result = runner.run(saga.id, wait_for_retries=False)
            charge = [e for e in store.journal(saga.id) if e.event.step == "charge_payment"]
            (failed,) = [e for e in charge if e.event.failure is not None]
            assert failed.status_code == 409 and "in_progress" in failed.event.failure.error  # type: ignore[union-attr]
            assert result.status is SagaStatus.RUNNING and result.wait_until is not None
            # With fail_max=1 one counted failure would have opened it.
            breaker = board.get("payments")
            assert breaker.fail_counter == 0 and breaker.state == "closed"
            sender.join(10)
            assert first and first[0].status_code == 201
            # The retry gets the first charge's stored answer: charged once, saga completed.
            assert runner.run(saga.id).status is SagaStatus.COMPLETED
            charges = [e for e in lab.lab.ledger() if e.service == "payments"]
            assert len(charges) == 1
        finally:
            executor.close()
            board.close()
            store.close()


def test_the_simulator_counts_a_409_in_progress_as_healthy() -> None:
    """A charge times out (the service is slow), its retry finds the key in progress."""
    env = simpy.Environment()
    flow = load_flow("checkout")  # charge_payment: timeout 3 s, backoff from 0.2 s
    latencies = iter([5.0])  # the first charge takes 5 s, every later call 10 ms
    names = ("inventory", "payments", "shipping", "notifications")
    services = {n: _sim_service(env, n) for n in names}
    services["payments"] = _sim_service(env, "payments", latency=lambda: next(latencies, 0.01))
    breaker = Breaker("payments", fail_max=2, reset_timeout=60.0)
    done: list[Saga] = []
    orchestrator = Orchestrator(
        env,
        rng=random.Random(3),
        flow=flow,
        services=services,
        breakers={"payments": breaker},
        concurrency=1,
        lease=10.0,
        reaper_interval=1.0,
        startup_delay=0.0,
        db_write=lambda: 0.001,
        autoscale=None,
        autoscale_interval=1.0,
        finished=lambda saga, _now: done.append(saga),
    )
    orchestrator.start_replica(0.0)
    orchestrator.enqueue(Saga(1, flow, 0.0, True))
    env.run(until=60)
    (saga,) = done
    counts = services["payments"].counts
    assert counts["timeouts"] == 1 and counts["in_progress"] >= 1
    # The timeout counted (1 of fail_max 2); the 409 in_progress did not, so the breaker never
    # opened and the retry after the slow charge got its recorded answer.
    assert saga.state.status is SagaStatus.COMPLETED
    assert breaker.state == "closed" and breaker.fail_counter == 0
    assert saga.ledger[("charge_payment", Phase.ACTION)] == 1  # charged once


# --- a refused gateway: one failover rule for the edge and the simulator -------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _real_edge_refused() -> dict[str, Any]:
    """The real pool: instance 0 refuses connections, instance 1 is a live server."""
    import asyncio

    from sagalab.edge.pool import Pool

    with run_in_thread() as lab:
        port = int(lab.base_url.rsplit(":", 1)[1])
        pool = Pool(
            [("127.0.0.1", _closed_port()), ("127.0.0.1", port)],
            strategy="round_robin",
            fail_threshold=2,
            pass_threshold=2,
        )

        async def send() -> int:
            try:
                backend, response = await pool.send("GET", "/healthz", [], b"")
                assert backend is pool.backends[1]
                return response.status
            finally:
                await pool.stop()

        status = asyncio.run(send())
    refused = pool.backends[0]
    return {
        "answered": status == 200,
        "tries": [b.sent for b in pool.backends],
        "refused_in_rotation": refused.health.healthy,
        "ejections": refused.ejections,
    }


def _simulated_edge_refused() -> dict[str, Any]:
    """The simulated edge: gateway 0 is down (refuses connections), gateway 1 is up."""
    from sagalab.edge.policies.firewall import Firewall
    from sagalab.simulator.config import Node
    from sagalab.simulator.edge_model import ClientGroup, Edge

    env = simpy.Environment()
    rng = random.Random(5)
    config = {
        "firewall": {"workers": 1, "service_time": 0.0, "queue_limit": 10},
        "balancer": {
            "strategy": "round_robin",
            "health": {"interval": 1.0, "fail_threshold": 2, "pass_threshold": 2},
        },
        "gateways": {
            "count": 2,
            "workers": 1,
            "connection_limit": 10,
            "auth_time": 0.001,
            "handle_time": 0.0,
            "rate_limit": {"rate": 5.0, "burst": 10.0},
        },
    }
    edge = Edge(env, Node(config), rng, Firewall(allow=[], deny=[]), lambda _r, _now: True)
    edge.gateways[0].up = False
    group = ClientGroup(
        Node(
            {
                "name": "shop",
                "kind": "legit",
                "addresses": "10.0.0.0/24",
                "address_count": 1,
                "keys": 1,
                "timeout": 5.0,
            },
            "clients[0]",
        ),
        rng,
    )
    edge.new_request(group)
    env.run(until=1.0)
    return {
        "answered": edge.counts.get("legit.202") == 1,
        "tries": [edge.counts.get("balancer.connect_failed", 0), g1_served(edge)],
        "refused_in_rotation": edge.gateways[0].health.healthy,
        "ejections": edge.counts.get("balancer.ejections", 0),
    }


def g1_served(edge: Any) -> int:
    """Requests gateway 1 finished serving."""
    return int(edge.gateways[1].station.response.count)


def test_a_refused_gateway_is_handled_the_same_by_the_edge_and_the_simulator() -> None:
    real, simulated = _real_edge_refused(), _simulated_edge_refused()
    # One refusal ejects the instance at once (fail_threshold 2 notwithstanding), and the
    # request goes to the other instance: each tried once, the client served.
    assert real == {"answered": True, "tries": [1, 1], "refused_in_rotation": False, "ejections": 1}
    assert simulated == real
