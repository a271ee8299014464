"""A server's Retry-After, however absurd, waits at most MAX_RETRY_AFTER, and never breaks a
command.

`parse_retry_after` (orchestrator/outcomes.py) reads the header once for the real executor;
`bounded_retry_after` (the retry policy) bounds every Retry-After, the simulated services'
too. End to end: a real HTTP server answering 503 with `Retry-After: inf` and a real worker
process; and a journal written before the bound, holding Infinity, read by `events`/`status`.
"""

from __future__ import annotations

import math
import random
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opslab import checkout_saga, cli_subprocess
from workerlab import REPO, journal, sagalab

from sagalab.orchestrator.executors import classify_response
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.outcomes import MAX_RETRY_AFTER, classify_status, parse_retry_after
from sagalab.orchestrator.policies.retry import MAX_RETRY_SECONDS, RetryPolicy, backoff_delay
from sagalab.orchestrator.saga import Event, EventType, Failure, Phase, SagaState, Wait, decide

NOW = 1_800_000_000.0


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, UTC), usegmt=True)


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("inf", MAX_RETRY_AFTER),
        ("Infinity", MAX_RETRY_AFTER),
        ("1e400", MAX_RETRY_AFTER),
        ("99999999", MAX_RETRY_AFTER),
        ("nan", None),
        ("", None),
        (None, None),
        ("soon", None),
        (http_date(30), 30.0),
        (http_date(-30), 0.0),
        (http_date(86_400 * 365 * 3), MAX_RETRY_AFTER),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Mon, 01 Jan 99999 00:00:00 GMT", None),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@given(st.one_of(st.text(), st.from_regex(r"\A[-+]?[0-9.eE]{0,40}(inf|nan)?\Z")))
def test_any_retry_after_string_is_a_bounded_wait_or_nothing(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or (math.isfinite(seconds) and 0.0 <= seconds <= MAX_RETRY_AFTER)


@pytest.mark.parametrize("asked", [math.inf, 1e300, -5.0, math.nan], ids=str)
def test_both_runtimes_bound_the_wait_the_same_way(asked: float) -> None:
    """classify_status is what the simulator calls; backoff_delay is what both retry on."""
    failure = classify_status(503, "busy", asked).failure
    assert failure is not None
    bounded = failure.retry_after
    assert bounded is None or 0.0 <= bounded <= MAX_RETRY_AFTER
    delay = backoff_delay(RetryPolicy(), 1, 1.0, retry_after=asked)
    assert math.isfinite(delay) and delay <= max(MAX_RETRY_AFTER, RetryPolicy().max_delay)


def test_the_executor_reads_the_header_through_the_one_parser() -> None:
    answer = httpx.Response(503, headers={"Retry-After": "inf"}, text="busy")
    failure = classify_response(answer).failure
    assert failure is not None and failure.retry_after == MAX_RETRY_AFTER


class _Busy(BaseHTTPRequestHandler):
    """Every request: 503 with an infinite Retry-After."""

    def do_POST(self) -> None:  # noqa: N802 (the http.server name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(503)
        self.send_header("Retry-After", "inf")
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"busy")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def busy() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


FLOW = """\
name: busy
version: 1
steps:
  - name: ping
    service: busy
    kind: pivot
    action: {method: POST, path: /work, body: {}}
    retry: {max_attempts: 3, initial_delay: 0.01, max_delay: 0.01}
"""


def test_an_infinite_retry_after_schedules_the_step_within_the_bound(
    busy: str, tmp_path: Path
) -> None:
    flow = tmp_path / "busy.yaml"
    flow.write_text(FLOW)
    db = tmp_path / "sagas.db"
    env = {"SAGALAB_SERVICE_BUSY": busy, "PYTHONPATH": str(REPO)}
    queued = sagalab("orchestrate", "run", str(flow), "--db", str(db), env=env)
    assert queued.returncode == 0, queued.stderr
    saga_id = queued.stdout.strip()
    # The saga waits up to an hour for its retry, and an idle worker waits for it (the queue
    # is not empty): --max-seconds ends this one.
    worker = sagalab(
        "worker", "--db", str(db), "--concurrency", "1", "--exit-when-idle", "1",
        "--max-seconds", "4", env=env,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    (scheduled,) = [
        e.event for e in journal(db, saga_id) if e.event.type is EventType.RETRY_SCHEDULED
    ]
    assert scheduled.not_before is not None
    assert 0 < scheduled.not_before - scheduled.at <= MAX_RETRY_AFTER
    for args in (("events", saga_id), ("events", saga_id, "--json"), ("status", saga_id)):
        shown = cli_subprocess(db, *args)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr


def test_a_journal_holding_infinity_is_shown_not_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "sagas.db"
    saga_id = checkout_saga(db)
    with sqlite3.connect(db) as conn:  # as a journal written before the bound holds it
        conn.execute("UPDATE events SET not_before = 9e999 WHERE saga_id = ?", (saga_id,))
    conn.close()
    for args in (("events", saga_id), ("events", saga_id, "--json"), ("status", saga_id)):
        shown = cli_subprocess(db, *args)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "Infinity" in shown.stdout or args[0] == "status"


@pytest.mark.parametrize("stored", [math.inf, math.nan, 1e300], ids=str)
def test_a_retry_stored_for_never_is_due_within_the_longest_policy_wait(stored: float) -> None:
    """A journal written before the bound: the fold takes the retry as due by then, so a
    worker retries the step instead of requeueing it forever."""
    flow = load_flow("checkout")
    failure = Failure("HTTP 503: busy", True, True)
    at = 100.0
    events = [
        Event(EventType.SAGA_CREATED, 1.0),
        Event(EventType.ATTEMPT_STARTED, 2.0, "reserve_inventory", Phase.ACTION, 1),
        Event(EventType.ATTEMPT_FAILED, at, "reserve_inventory", Phase.ACTION, 1, failure),
        Event(
            EventType.RETRY_SCHEDULED, at, "reserve_inventory", Phase.ACTION, 2, not_before=stored
        ),
    ]
    state = SagaState.replay(flow, events)
    due = state.progress("reserve_inventory").phase(Phase.ACTION).not_before
    assert due == at + MAX_RETRY_SECONDS
    command = decide(state, now=due, rng=random.Random(0))
    assert not isinstance(command, Wait)  # due: the step is tried again
