"""OpenTelemetry spans of real `sagalab worker` processes, read back from `--trace-file`.

A rolled-back saga: one run span, its attempts as children, the compensations after the failed
pivot in reverse order. A crash-resumed saga: the worker SIGKILLed mid-call, another resumes it;
the runs share the saga's trace id and each later run links to the one before.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from apilab import admin_api
from workerlab import Workers, enqueue, journal, order, sagalab, statuses, wait_for

from sagalab.fakeservices import FaultSpec, RunningServices
from sagalab.orchestrator.saga import EventType
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.orchestrator.tracing import setup_tracing

FAST = ("--poll", "0.05")


def spans_of(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def trace_id_of(db: Path, saga: str) -> str:
    store = SQLiteStore(db)
    try:
        return store.load(saga).trace_id
    finally:
        store.close()


def test_a_rolled_back_saga_is_one_run_span_with_its_attempts_and_compensations_in_reverse(
    db: Path, services: RunningServices, workers: Workers, tmp_path: Path
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    services.lab.add_fault(FaultSpec(service="shipping", status=400, error_rate=1.0))
    (saga,) = enqueue(db, [order(1)])
    w = workers.start("--exit-when-idle", "0.5", "--trace-file", str(trace_file), *FAST)
    assert w.proc.wait(timeout=30) == 0, w.stderr()
    assert statuses(db) == {"rolled_back": 1}
    trace = trace_id_of(db, saga)
    spans = [s for s in spans_of(trace_file) if s["trace_id"] == trace]
    runs = [s for s in spans if s["parent_span_id"] is None]
    assert len(runs) == 1, spans
    run = runs[0]
    assert run["name"] == "saga checkout"
    assert run["attributes"]["saga.outcome"] == "rolled_back"
    assert run["status"]["code"] == "ERROR"
    attempts = sorted(
        (s for s in spans if s["parent_span_id"] == run["span_id"]),
        key=lambda s: s["start_time_unix_nano"],
    )
    assert len(attempts) == len(spans) - 1  # every other span is an attempt of this run
    order_seen = [(a["attributes"]["saga.phase"], a["attributes"]["saga.step"]) for a in attempts]
    assert order_seen == [
        ("action", "reserve_inventory"),
        ("action", "charge_payment"),
        ("action", "create_shipment"),
        ("compensation", "charge_payment"),
        ("compensation", "reserve_inventory"),
    ]
    shipment = attempts[2]
    assert shipment["attributes"]["http.response.status_code"] == 400
    assert shipment["attributes"]["saga.outcome"] == "failed"
    assert shipment["attributes"]["service.target"] == "shipping"
    assert all(a["attributes"]["saga.outcome"] == "succeeded" for a in attempts[3:])
    # The attempt spans are the ones the services were told in `traceparent`.
    journaled = {e.span_id for e in journal(db, saga) if e.span_id}
    assert {a["span_id"] for a in attempts} <= journaled
    for s in spans:
        assert run["start_time_unix_nano"] <= s["start_time_unix_nano"] <= s["end_time_unix_nano"]
        assert s["resource"]["service.name"] == "sagalab-worker"


def test_a_crash_resumed_saga_has_linked_run_spans_in_one_trace(
    db: Path, services: RunningServices, workers: Workers, tmp_path: Path
) -> None:
    lease = 1.5
    trace_file = tmp_path / "spans.jsonl"
    services.lab.add_fault(FaultSpec(service="shipping", latency_ms=1200))
    (saga,) = enqueue(db, [order(1)])
    a = workers.start("--lease", str(lease), "--trace-file", str(trace_file), *FAST)

    def shipping_in_flight() -> bool:
        last = journal(db, saga)[-1].event
        return last.type is EventType.ATTEMPT_STARTED and last.step == "create_shipment"

    wait_for(shipping_in_flight, 30, "the shipping call to start")
    a.kill()
    b = workers.start(
        "--lease", str(lease), "--exit-when-idle", str(lease + 2.0),
        "--trace-file", str(trace_file), *FAST,
    )  # fmt: skip
    assert b.proc.wait(timeout=60) == 0, b.stderr()
    assert statuses(db) == {"completed": 1}
    trace = trace_id_of(db, saga)
    spans = [s for s in spans_of(trace_file) if s["trace_id"] == trace]
    assert {s["trace_id"] for s in spans_of(trace_file)} == {trace}
    runs = {s["span_id"]: s for s in spans if s["parent_span_id"] is None}
    by_epoch = sorted(runs.values(), key=lambda s: s["attributes"]["saga.lease_epoch"])
    # The crashed run (emitted by its successor), the resume that closes the interrupted call
    # and waits for the retry, the run that completes.
    assert [r["attributes"]["saga.outcome"] for r in by_epoch] == [
        "worker_lost",
        "waiting",
        "completed",
    ]
    for earlier, later in zip(by_epoch, by_epoch[1:], strict=False):
        assert [(link["trace_id"], link["span_id"]) for link in later["links"]] == [
            (trace, earlier["span_id"])
        ]
    crashed = by_epoch[0]["span_id"]
    # The attempts the crashed worker finished (exported before it died) and the one it
    # left in flight all hang under the crashed run.
    under_crashed = {
        (
            s["attributes"]["saga.step"],
            s["attributes"]["saga.attempt"],
            s["attributes"]["saga.outcome"],
        )
        for s in spans
        if s["parent_span_id"] == crashed
    }
    assert under_crashed == {
        ("reserve_inventory", 1, "succeeded"),
        ("charge_payment", 1, "succeeded"),
        ("create_shipment", 1, "failed"),
    }
    retried = [s for s in spans if s["attributes"].get("http.request.resend_count") == 1]
    assert len(retried) == 1
    assert retried[0]["attributes"]["saga.step"] == "create_shipment"
    assert retried[0]["parent_span_id"] == by_epoch[2]["span_id"]
    # One span per span id: nothing exported twice.
    assert len({s["span_id"] for s in spans}) == len(spans)


def test_the_apis_submit_span_joins_the_callers_trace_and_links_to_the_workers_run(
    db: Path, services: RunningServices, workers: Workers, tmp_path: Path
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    tracing = setup_tracing("sagalab-api", trace_file, None)
    caller_trace, caller_span = "ab" * 16, "cd" * 8
    try:
        with admin_api(db, tracing=tracing) as api:
            r = api.post(
                "/v1/sagas",
                json={"flow": "checkout", "input": order(1)},
                headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"},
            )
            assert r.status_code == 202, r.text
    finally:
        assert tracing is not None
        tracing.shutdown()
    w = workers.start("--exit-when-idle", "0.5", "--trace-file", str(trace_file), *FAST)
    assert w.proc.wait(timeout=30) == 0, w.stderr()
    assert statuses(db) == {"completed": 1}
    spans = spans_of(trace_file)
    assert {s["trace_id"] for s in spans} == {caller_trace}  # the caller's trace throughout
    (submit,) = [s for s in spans if s["name"] == "POST /v1/sagas"]
    assert submit["parent_span_id"] == caller_span
    assert submit["kind"] == "SERVER"
    assert submit["resource"]["service.name"] == "sagalab-api"
    (run,) = [s for s in spans if s["name"] == "saga checkout"]
    assert [(x["trace_id"], x["span_id"]) for x in submit["links"]] == [
        (caller_trace, run["span_id"])
    ]
    attempts = [s for s in spans if s["parent_span_id"] == run["span_id"]]
    assert len(attempts) == 4


def test_orchestrate_run_wait_traces_its_run(
    db: Path, services: RunningServices, tmp_path: Path
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    r = sagalab(
        "orchestrate", "run", "checkout", "--wait", "--json", "--db", str(db),
        "--input", json.dumps(order(1)), "--trace-file", str(trace_file),
        env=services.env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    trace = json.loads(r.stdout)["trace_id"]
    spans = spans_of(trace_file)
    assert {s["trace_id"] for s in spans} == {trace}
    (run,) = [s for s in spans if s["parent_span_id"] is None]
    assert run["attributes"]["saga.outcome"] == "completed"
    assert run["resource"]["service.name"] == "sagalab-cli"
    assert len([s for s in spans if s["parent_span_id"] == run["span_id"]]) == 4


def test_otlp_without_its_extra_is_a_configuration_error(db: Path) -> None:
    if importlib.util.find_spec("opentelemetry.exporter") is not None:
        pytest.skip("the otlp extra is installed here")  # the message is for when it is not
    r = sagalab(
        "worker", "--db", str(db), "--exit-when-idle", "0.1",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
    )  # fmt: skip
    assert r.returncode == 5, r.stderr
    assert "sagalab[otlp]" in r.stderr
    assert "Traceback" not in r.stderr


def test_replicas_append_their_spans_to_one_file_whole_lines(
    db: Path, services: RunningServices, workers: Workers, tmp_path: Path
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    services.lab.add_fault(FaultSpec(service="payments", latency_ms=50))
    ids = enqueue(db, [order(i) for i in range(8)])
    w = workers.start(
        "--replicas", "2", "--concurrency", "2", "--exit-when-idle", "1",
        "--trace-file", str(trace_file), *FAST,
    )  # fmt: skip
    assert w.proc.wait(timeout=60) == 0, w.stderr()
    assert statuses(db) == {"completed": 8}
    spans = spans_of(trace_file)  # every line parses: no interleaved writes
    runs = [s for s in spans if s["parent_span_id"] is None]
    assert sorted(r["attributes"]["saga.id"] for r in runs) == sorted(ids)
    assert len(spans) == 8 * 5
    pids = {s["resource"]["process.pid"] for s in spans}
    assert w.pid not in pids  # the replicas traced, not their supervisor
    assert len(pids) >= 1


def test_tracing_off_loads_no_sdk() -> None:
    code = (
        "import sys; import sagalab.cli.main, sagalab.edge.apps, sagalab.orchestrator.api; "
        "print('opentelemetry.sdk.trace' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_spans_that_cannot_be_written_are_counted_and_said_once_and_the_sagas_finish(
    db: Path, services: RunningServices, workers: Workers
) -> None:
    # /dev/full: every write fails with ENOSPC, as on a full disk.
    enqueue(db, [order(i) for i in range(3)])
    w = workers.start("--exit-when-idle", "0.5", "--json", "--trace-file", "/dev/full", *FAST)
    assert w.proc.wait(timeout=30) == 0, w.stderr()
    assert statuses(db) == {"completed": 3}
    err = w.stderr()
    assert "Traceback" not in err, err
    said = [line for line in err.splitlines() if "tracing" in line]
    assert len(said) == 1 and "/dev/full" in said[0] and "No space left" in said[0], err
    assert w.summary()["spans_dropped"] == 3 * 5
