"""Prometheus metrics of real `sagalab worker` processes, scraped over HTTP.

Every count a worker exports is in the journal too: the tests run sagas against the fake
services, then compare a scrape of `/metrics` with counts taken from the journal, exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from metricslab import Sample, scrape, total
from workerlab import (
    REPO,
    WorkerProcess,
    Workers,
    children_of,
    enqueue,
    journal,
    order,
    sagalab,
    statuses,
    wait_for,
)

from sagalab.edge.keys import MAX_BURST, MAX_RATE, open_key_store
from sagalab.edge.server import serve_in_thread
from sagalab.fakeservices import FaultSpec, RunningServices
from sagalab.orchestrator.api import create_app
from sagalab.orchestrator.breaker_board import breaker_events
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.runner import start_saga
from sagalab.orchestrator.saga import INTERRUPTED, EventType
from sagalab.orchestrator.stores import open_store

FAST = ("--poll", "0.05")
HALTS = {
    EventType.SAGA_COMPLETED: "completed",
    EventType.SAGA_ROLLED_BACK: "rolled_back",
}


def metrics_url(worker: WorkerProcess) -> str:
    """The URL the worker printed once its metrics server listened."""
    found = wait_for(
        lambda: (
            re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", worker.stderr())
            or (not worker.alive() and pytest.fail(f"worker exited: {worker.stderr()}"))
        ),
        15,
        "the worker's metrics line",
    )
    return str(found.group(1))


def get(url: str) -> dict[Sample, float]:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return scrape(response.text)


def counted(url: str, finished: int) -> dict[Sample, float]:
    """A scrape once it counts `finished` halted sagas: a halt is counted just after its
    commit, so the database may show it a moment before the worker's counter does."""

    def scrape_once() -> dict[Sample, float] | None:
        now = get(url)
        return now if total(now, "sagalab_sagas_finished_total") == finished else None

    found: dict[Sample, float] = wait_for(scrape_once, 10, f"{finished} finished sagas counted")
    return found


def journal_counts(db: Path, saga_ids: list[str]) -> dict[str, Counter[tuple[str, ...]]]:
    """What the journal says the metrics must count, label tuple by label tuple."""
    flow = load_flow("checkout")
    counts: dict[str, Counter[tuple[str, ...]]] = {
        k: Counter() for k in ("attempts", "timed", "retries", "halts", "interrupted")
    }
    for saga_id in saga_ids:
        for entry in journal(db, saga_id):
            e = entry.event
            if e.type in (EventType.ATTEMPT_SUCCEEDED, EventType.ATTEMPT_FAILED):
                assert e.step is not None and e.phase is not None
                service = flow.step(e.step).service or "-"
                if e.type is EventType.ATTEMPT_SUCCEEDED:
                    result = "succeeded"
                else:
                    result = "interrupted" if e.failure == INTERRUPTED else "failed"
                key = (service, e.step, e.phase.value, result)
                counts["attempts"][key] += 1
                if entry.duration_ms is not None:
                    counts["timed"][key] += 1
                if result == "interrupted":
                    counts["interrupted"][()] += 1
            elif e.type is EventType.RETRY_SCHEDULED:
                assert e.step is not None and e.phase is not None
                service = flow.step(e.step).service or "-"
                counts["retries"][(service, e.step, e.phase.value)] += 1
            elif e.type in HALTS:
                counts["halts"][("checkout", HALTS[e.type])] += 1
    return counts


def exported(samples: dict[Sample, float], name: str, labels: tuple[str, ...]) -> Counter[tuple]:
    """`name`'s samples as a Counter keyed by the values of `labels` (zeros dropped)."""
    found: Counter[tuple] = Counter()
    for (n, pairs), value in samples.items():
        if n == name and value:
            as_dict = dict(pairs)
            found[tuple(as_dict[k] for k in labels)] += int(value)
    return found


def test_a_workers_metrics_match_its_journal(
    db: Path, services: RunningServices, workers: Workers, tmp_path: Path
) -> None:
    # Notifications fail half the time (retried until they succeed): retries get scheduled.
    # No breaker opens (fail_max 1000), so every claim is of a saga due by the journal.
    services.lab.add_fault(FaultSpec(service="notifications", error_rate=0.5, status=503))
    services_file = tmp_path / "services.json"
    services_file.write_text(
        json.dumps(
            {
                "services": services.services,
                "breakers": {n: {"fail_max": 1000} for n in services.services},
            }
        )
    )
    ids = enqueue(db, [order(i) for i in range(4)] + [order(9, amount=20000)])  # 1 declined
    later = _enqueue_later(db, 2)  # queued, due in an hour: the queue depth
    worker = workers.start(
        "--metrics-port", "0", "--concurrency", "2", "--services", str(services_file), *FAST
    )
    url = metrics_url(worker)
    wait_for(
        lambda: statuses(db) == {"completed": 4, "rolled_back": 1, "pending": 2},
        60,
        "the sagas to halt",
    )
    want = journal_counts(db, ids)
    samples = counted(url, 5)

    assert exported(samples, "sagalab_sagas_finished_total", ("flow", "status")) == Counter(
        {("checkout", "completed"): 4, ("checkout", "rolled_back"): 1}
    )
    assert want["halts"] == Counter({("checkout", "completed"): 4, ("checkout", "rolled_back"): 1})
    saga_seconds = exported(samples, "sagalab_saga_duration_seconds_count", ("flow", "status"))
    assert saga_seconds == want["halts"]
    step = ("service", "step", "phase", "result")
    assert exported(samples, "sagalab_step_attempts_total", step) == want["attempts"]
    assert exported(samples, "sagalab_step_attempt_duration_seconds_count", step) == want["timed"]
    # The declined charge was compensated: its refund and the release are counted.
    assert want["attempts"][("payments", "charge_payment", "action", "failed")] == 1
    assert want["attempts"][("inventory", "reserve_inventory", "compensation", "succeeded")] == 1
    retries = exported(samples, "sagalab_retries_scheduled_total", ("service", "step", "phase"))
    assert retries == want["retries"]
    # Each saga was claimed once when created and once after each scheduled retry.
    claims = 5 + sum(want["retries"].values())
    assert total(samples, "sagalab_schedule_to_claim_seconds_count", flow="checkout") == claims
    assert total(samples, "sagalab_leases_lost_total") == 0
    assert total(samples, "sagalab_leases_taken_over_total") == 0 == want["interrupted"][()]
    assert total(samples, "sagalab_breaker_transitions_total") == 0

    # The gauges come from the database, refreshed every second: the two later sagas.
    def queue_settled() -> dict[Sample, float] | None:
        now = get(url)
        return now if total(now, "sagalab_queue_depth") == len(later) else None

    settled = wait_for(queue_settled, 10, "the queue depth gauge to show the later sagas")
    assert total(settled, "sagalab_queue_leased") == 0
    breaker_states = exported(settled, "sagalab_breaker_state", ("service", "state"))
    assert breaker_states == Counter({(s, "closed"): 1 for s in services.services})


def _enqueue_later(db: Path, n: int) -> list[str]:
    flow = load_flow("checkout")
    store = open_store(db)
    try:
        at = time.time() + 3600
        return [start_saga(store, flow, order(100 + i), now=at)[0].id for i in range(n)]
    finally:
        store.close()


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("port", "code", "says"),
    [("-1", 2, "--metrics-port must be 0"), ("65536", 2, "--metrics-port must be 0")],
    ids=["negative", "too-high"],
)
def test_a_metrics_port_out_of_range_is_bad_input(
    db: Path, port: str, code: int, says: str
) -> None:
    result = sagalab("worker", "--db", str(db), "--metrics-port", port, "--max-seconds", "1")
    assert result.returncode == code, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("replicas", ["1", "2"])
def test_a_metrics_port_in_use_is_a_configuration_error(
    db: Path, services: RunningServices, replicas: str
) -> None:
    with _listening() as taken:
        port = str(taken.getsockname()[1])
        result = sagalab(
            "worker", "--db", str(db), "--replicas", replicas, "--metrics-port", port,
            "--max-seconds", "5", env=services.env,
        )  # fmt: skip
    assert result.returncode == 5, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_replicas_metrics_are_summed_by_the_supervisor(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    ids = enqueue(db, [order(i) for i in range(6)] + [order(9, amount=20000)])
    supervisor = workers.start("--replicas", "2", "--metrics-port", "0", *FAST)
    url = metrics_url(supervisor)
    wait_for(lambda: len(children_of(supervisor.pid)) == 2, 15, "two replicas")
    wait_for(lambda: statuses(db) == {"completed": 6, "rolled_back": 1}, 60, "the sagas to halt")
    want = journal_counts(db, ids)
    samples = counted(url, 7)
    finished = exported(samples, "sagalab_sagas_finished_total", ("flow", "status"))
    assert (
        finished
        == want["halts"]
        == Counter({("checkout", "completed"): 6, ("checkout", "rolled_back"): 1})
    )
    step = ("service", "step", "phase", "result")
    assert exported(samples, "sagalab_step_attempts_total", step) == want["attempts"]
    assert total(samples, "sagalab_worker_replicas") == 2
    assert total(samples, "sagalab_worker_replica_restarts_total") == 0
    # Read from the database every second: 7 queued at the start, then none.
    wait_for(lambda: total(get(url), "sagalab_queue_depth") == 0, 10, "an empty queue gauge")
    # The replicas' metric files live in a directory of the supervisor's, gone once it stops.
    directories = [
        d for d in Path("/tmp").glob("sagalab-metrics-*") if _owned_by(d, supervisor.pid)
    ]
    assert len(directories) == 1
    supervisor.proc.terminate()
    assert supervisor.proc.wait(timeout=30) == 0, supervisor.stderr()
    assert all(not d.exists() for d in directories)


def _owned_by(directory: Path, pid: int) -> bool:
    """Whether `directory` is the one the supervisor `pid` gave its replicas."""
    for child in children_of(pid):
        environ = Path(f"/proc/{child}/environ")
        try:
            if str(directory).encode() in environ.read_bytes():
                return True
        except OSError:
            continue
    return False


def test_metrics_rise_during_a_locust_load_test(
    db: Path, services: RunningServices, workers: Workers, tmp_path: Path
) -> None:
    """Locust's customers submit to a real API; the worker's and the API's counters, scraped
    while it runs, rise, and once it is over they match the database exactly."""
    keys_db = tmp_path / "keys.db"
    keys = open_key_store(keys_db)
    _, key = keys.create("load", rate=MAX_RATE, burst=MAX_BURST)
    keys.close()
    with serve_in_thread(create_app(db, keys_db=keys_db)) as api:
        worker = workers.start("--metrics-port", "0", "--concurrency", "2", *FAST)
        url = metrics_url(worker)
        command = [
            sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "locustfile.py"),
            "--headless", "--only-summary", "--host", api.url, "-u", "4", "-r", "4",
            "-t", "8s", "--stop-timeout", "10", "--loglevel", "WARNING", "LegitUser",
        ]  # fmt: skip
        env = {
            **os.environ,
            "SAGALAB_LOADTEST_KEY": key,
            "SAGALAB_LOADTEST_SUMMARY": str(tmp_path / "summary.json"),
        }
        seen: list[float] = []
        with subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        ) as locust:
            try:
                while locust.poll() is None:  # bounded by Locust's -t and --stop-timeout
                    finished = total(get(url), "sagalab_sagas_finished_total")
                    if not seen or finished != seen[-1]:
                        seen.append(finished)
                    time.sleep(0.5)
                locust.wait(timeout=30)
            finally:
                if locust.poll() is None:
                    locust.kill()
        rises = [b for a, b in zip(seen, seen[1:], strict=False) if b > a]
        # One rise seen mid-run shows a live counter; two asked for a speed: at load 14 the
        # 8 s run gave [0, 4] (Locust's start ate most of it).
        assert rises, f"sagas finished, scraped during the load: {seen}"
        # Once the queue is drained: the worker counted every saga that halted, and the API
        # every saga submitted.
        wait_for(lambda: _unfinished(db) == 0, 30, "the submitted sagas to halt")
        halted = statuses(db)
        samples = counted(url, sum(halted.values()))
        by_status = exported(samples, "sagalab_sagas_finished_total", ("status",))
        assert by_status == Counter({(s,): n for s, n in halted.items()})
        api_samples = scrape(httpx.get(api.url + "/metrics", timeout=5).text)
        submitted = total(api_samples, "sagalab_api_sagas_submitted_total", flow="checkout")
        assert submitted == sum(halted.values()) > 0


def _unfinished(db: Path) -> int:
    return sum(n for s, n in statuses(db).items() if s in ("pending", "running", "compensating"))


def test_a_stalled_workers_lease_is_lost_and_taken_over_and_both_count_it(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    lease = "1.5"
    services.lab.add_fault(FaultSpec(service="shipping", latency_ms=1200))
    (saga,) = enqueue(db, [order(1)])
    a = workers.start("--metrics-port", "0", "--concurrency", "1", "--lease", lease, *FAST)
    a_url = metrics_url(a)

    def shipping_in_flight() -> bool:
        last = journal(db, saga)[-1].event
        return last.type is EventType.ATTEMPT_STARTED and last.step == "create_shipment"

    wait_for(shipping_in_flight, 30, "the shipping call to start")
    os.kill(a.pid, signal.SIGSTOP)  # a holds the lease but cannot renew it
    try:
        b = workers.start("--metrics-port", "0", "--concurrency", "1", "--lease", lease, *FAST)
        b_url = metrics_url(b)
        wait_for(lambda: statuses(db) == {"completed": 1}, 30, "b to finish the saga")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    # a wakes up, gets its answer, and is fenced off at its next write.
    wait_for(lambda: total(get(a_url), "sagalab_leases_lost_total") == 1, 15, "a to lose its lease")
    want = journal_counts(db, [saga])
    assert want["interrupted"][()] == 1
    b_samples = counted(b_url, 1)
    assert total(b_samples, "sagalab_leases_taken_over_total") == 1
    assert total(b_samples, "sagalab_leases_lost_total") == 0
    assert total(b_samples, "sagalab_step_attempts_total", result="interrupted") == 1
    a_samples = get(a_url)
    assert total(a_samples, "sagalab_sagas_finished_total") == 0
    step = ("service", "step", "phase", "result")
    both = exported(a_samples, "sagalab_step_attempts_total", step) + exported(
        b_samples, "sagalab_step_attempts_total", step
    )
    assert both == want["attempts"]
    assert total(b_samples, "sagalab_sagas_finished_total", status="completed") == 1


def test_breaker_transitions_and_state_match_the_shared_breaker_log(
    db: Path, services: RunningServices, workers: Workers, tmp_path: Path
) -> None:
    services.lab.add_fault(FaultSpec(service="payments", error_rate=1.0, status=503))
    services_file = tmp_path / "services.json"
    services_file.write_text(
        json.dumps(
            {
                "services": services.services,
                "breakers": {"payments": {"fail_max": 2, "reset_timeout": 60}},
            }
        )
    )
    enqueue(db, [order(i) for i in range(3)])
    worker = workers.start("--metrics-port", "0", "--services", str(services_file), *FAST)
    url = metrics_url(worker)
    wait_for(lambda: breaker_events(db, "payments"), 30, "the payments breaker to open")

    def open_gauge() -> dict[Sample, float] | None:
        now = get(url)
        is_open = total(now, "sagalab_breaker_state", service="payments", state="open")
        return now if is_open else None

    samples = wait_for(open_gauge, 10, "the breaker gauge to show payments open")
    assert total(samples, "sagalab_breaker_state", service="payments", state="closed") == 0
    logged = Counter((e["name"], e["old"], e["new"]) for e in breaker_events(db))
    assert logged == Counter({("payments", "closed", "open"): 1})
    moved = exported(samples, "sagalab_breaker_transitions_total", ("service", "from", "to"))
    assert moved == logged
