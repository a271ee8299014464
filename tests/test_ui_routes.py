"""`sagalab ui` over HTTP (no browser): a real console subprocess on 127.0.0.1 over a real
database of sagas made by real runs (tests/uilab.py), asked with httpx.

The browser tests (test_ui_browser.py) check what the script draws; these check what the
server answers: list filters and paging, the timeline's lanes, escaping, 404s and 400s
instead of 500s, actions refused without --allow-actions and cross-site requests refused
with it, and the same pages over PostgreSQL.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from uilab import XSS, Console, Sagas, populate, traced_saga
from workerlab import REPO

from sagalab.fakeservices import RunningServices

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def made(lab: RunningServices, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Sagas]:
    db = str(tmp_path_factory.mktemp("ui") / "sagas.db")
    return db, populate(db, lab)


@pytest.fixture(scope="module")
def console(made: tuple[str, Sagas]) -> Iterator[httpx.Client]:
    running = Console(made[0])
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            yield client
    finally:
        running.stop()


def ids(client: httpx.Client, query: str) -> set[str]:
    answer = client.get("/api/sagas?" + query)
    assert answer.status_code == 200, answer.text
    return {s["id"] for s in answer.json()["items"]}


def test_list_filters_by_status_flow_and_tenant(
    made: tuple[str, Sagas], console: httpx.Client
) -> None:
    _, s = made
    assert ids(console, "status=completed") == {s.completed, s.resumed, s.xss}
    assert ids(console, "status=rolled_back") == {s.rolled_back}
    assert ids(console, "status=failed") == {s.failed}
    assert ids(console, "tenant=acme") == {s.other_tenant}
    assert ids(console, "flow=nothing-like-it") == set()
    assert len(ids(console, "flow=checkout")) == 7
    page = console.get("/?status=failed")
    assert page.status_code == 200 and s.failed in page.text and s.completed not in page.text


def test_list_is_newest_first_and_pages(made: tuple[str, Sagas], console: httpx.Client) -> None:
    answer = console.get("/api/sagas").json()
    items = answer["items"]
    created = [i["created_at"] for i in items]
    assert created == sorted(created, reverse=True)
    assert answer["more"] is False and answer["next_after"] is None
    # Paging as the CLI's --after: the sagas after this one, newest first.
    rest = console.get("/api/sagas", params={"after": items[2]["id"]}).json()["items"]
    assert [i["id"] for i in rest] == [i["id"] for i in items[3:]]


def test_list_composes_the_cli_filters(made: tuple[str, Sagas], console: httpx.Client) -> None:
    """Several statuses, step, error, since/until, key, input and tenant: the CLI's `list`
    options, by the same names, all of which must hold."""
    _, s = made
    assert ids(console, "status=rolled_back&status=failed") == {s.rolled_back, s.failed}
    both = "status=rolled_back&status=failed&input=order_id=ord-0002"
    assert ids(console, both) == {s.rolled_back}
    assert ids(console, "input=amount=80000") == {s.failed}
    assert ids(console, "input=amount=80000&input=order_id=ord-0002") == set()
    assert ids(console, "status=completed&since=1h&until=" + "9" * 10) == {
        s.completed,
        s.resumed,
        s.xss,
    }
    assert ids(console, "since=2000-01-01T00:00&until=2000-01-02T00:00") == set()
    assert ids(console, "key=no-such-key") == set()
    assert ids(console, "tenant=acme&status=pending") == {s.other_tenant}
    assert ids(console, "step=create_shipment&status=rolled_back&status=failed") == {s.rolled_back}
    assert ids(console, "step=charge_payment&status=failed") == {s.failed}
    reason = console.get(f"/api/sagas/{s.rolled_back}/timeline").json()["reason"]
    assert ids(console, "error=" + reason[:12].upper()) >= {s.rolled_back}
    assert ids(console, "error=nothing-says-this") == set()
    # The page shows the filters back, and its live update keeps them.
    page = console.get(
        "/", params=[("status", "failed"), ("status", "rolled_back"), ("flow", "checkout")]
    )
    assert page.status_code == 200
    assert 'value="failed" checked' in page.text and 'value="rolled_back" checked' in page.text
    assert 'name=flow value="checkout"' in page.text
    poll = page.text.split('data-poll="')[1].split('"')[0].replace("&amp;", "&")
    assert poll == "/api/sagas?status=failed&status=rolled_back&flow=checkout"
    assert ids(console, poll.split("?", 1)[1]) == {s.rolled_back, s.failed}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=bogus", "--status 'bogus' is not one of:"),
        ("since=yesterday-ish", "--since 'yesterday-ish' is not a time"),
        ("input=no-equals", "--input 'no-equals' is not key=value"),
        ("since=1h&until=2h", "--since is after --until"),
        ("flow=" + "f" * 600, "--flow must be 1 to 500 characters"),
        ("after=no-such-saga", "--after 'no-such-saga' names no saga"),
    ],
    ids=["status", "since", "input", "since-after-until", "long-flow", "unknown-after"],
)
def test_bad_filters_are_400_with_the_cli_message(
    console: httpx.Client, query: str, message: str
) -> None:
    for path in ("/?", "/api/sagas?"):
        answer = console.get(path + query)
        assert answer.status_code == 400, answer.text
        assert message in html.unescape(answer.text), answer.text


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/sagas/no-such-saga", 404),
        ("/sagas/" + "x" * 5000, 404),
        ("/api/sagas/no-such-saga/timeline", 404),
        ("/sagas/%3Cscript%3E", 404),
        ("/?status=bogus", 400),
        ("/?input=%3Cb%3E", 400),
        ("/?since=%00", 400),
        ("/?flow=" + "f" * 1000, 400),
        ("/static/../app.py", 404),
        ("/nowhere", 404),
    ],
    ids=[
        "unknown",
        "huge-id",
        "unknown-timeline",
        "markup-id",
        "status",
        "input",
        "since-nul",
        "long-flow",
        "static-escape",
        "no-route",
    ],
)
def test_bad_requests_are_answers_never_500(console: httpx.Client, path: str, status: int) -> None:
    answer = console.get(path)
    assert answer.status_code == status, answer.text
    assert "<script>" not in answer.text.replace('<script src="/static/ui.js"></script>', "")


def test_timeline_lanes_pivot_compensations_and_takeover(
    made: tuple[str, Sagas], console: httpx.Client
) -> None:
    _, s = made
    rolled = console.get(f"/api/sagas/{s.rolled_back}/timeline").json()
    lanes = [lane["id"] for lane in rolled["lanes"]]
    steps = ["reserve_inventory", "charge_payment", "create_shipment", "send_confirmation"]
    assert lanes[:4] == [f"action:{n}" for n in steps]
    # compensations in their own lanes, in the order they ran: the reverse of the flow's
    assert lanes[4:6] == ["compensation:charge_payment", "compensation:reserve_inventory"]
    assert [lane["id"] for lane in rolled["lanes"] if lane.get("pivot")] == [
        "action:create_shipment"
    ]
    assert all(lane.startswith("breaker:") for lane in lanes[6:])
    shipment = rolled["lanes"][2]["bars"]
    assert shipment and shipment[-1]["outcome"] == "failed" and shipment[-1]["status_code"] == 400

    resumed = console.get(f"/api/sagas/{s.resumed}/timeline").json()
    charge = next(lane for lane in resumed["lanes"] if lane["id"] == "action:charge_payment")
    assert [b["outcome"] for b in charge["bars"]] == ["interrupted", "succeeded"]
    assert [m["step"] for m in resumed["markers"] if m["kind"] == "takeover"] == ["charge_payment"]
    assert resumed["status"] == "completed" and not resumed["active"]


def test_database_text_is_escaped(made: tuple[str, Sagas], console: httpx.Client) -> None:
    _, s = made
    page = console.get(f"/sagas/{s.xss}")
    assert page.status_code == 200
    assert "<script>window.__pwned" not in page.text and "onerror='" not in page.text
    assert "&lt;script&gt;window.__pwned" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert XSS not in page.text


def test_actions_refused_without_allow_actions(
    made: tuple[str, Sagas], console: httpx.Client
) -> None:
    _, s = made
    page = console.get(f"/sagas/{s.pending}").text
    assert "class=action" not in page and "Operator actions" not in page
    answer = console.post(f"/api/sagas/{s.pending}/actions/cancel", json={})
    assert answer.status_code == 403
    assert console.get(f"/api/sagas/{s.pending}/timeline").json()["status"] == "pending"


def test_breakers_queue_and_simulation_pages(
    made: tuple[str, Sagas], console: httpx.Client
) -> None:
    page = console.get("/breakers")
    assert page.status_code == 200 and "queue-depth" in page.text and "payments" in page.text
    token = console.get("/simulations").text.split('name="csrf-token" content="')[1].split('"')[0]
    report = {
        "scenario": {"name": "<b>x</b>"},
        "seed": 1,
        "sagas": {"completed": 3},
        "latency": {"end_to_end": {"p50": 0.1}},
        "breakers": {"payments": {}},
        "breaker_transitions": [{"service": "payments", "t": 1.0, "to": "open"}],
        "duration": 10.0,
        "claims": [],
        "invariants_failed": 0,
    }
    charts = console.post(
        "/api/simulations", content=json.dumps(report), headers={"X-CSRF-Token": token}
    )
    assert charts.status_code == 200 and "<svg" in charts.json()["html"]
    assert "&lt;b&gt;x&lt;/b&gt;" in charts.json()["html"]
    csv = "t,completed,queue_depth\n1,3,0\n2,5,1\n"
    series = console.post("/api/simulations", content=csv, headers={"X-CSRF-Token": token})
    assert series.status_code == 200 and "polyline" in series.json()["html"]
    bad = console.post("/api/simulations", content="[1]", headers={"X-CSRF-Token": token})
    assert bad.status_code == 422
    assert console.post("/api/simulations", content=csv).status_code == 403  # no token


@pytest.fixture
def acting(made: tuple[str, Sagas]) -> Iterator[tuple[httpx.Client, str]]:
    running = Console(made[0], "--allow-actions")
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            page = client.get("/").text
            yield client, page.split('name="csrf-token" content="')[1].split('"')[0]
    finally:
        running.stop()


def test_actions_with_allow_actions_are_guarded_and_mapped(
    made: tuple[str, Sagas], acting: tuple[httpx.Client, str]
) -> None:
    client, token = acting
    _, s = made
    url = f"/api/sagas/{s.failed}/actions/resume"
    good = {"X-CSRF-Token": token}
    assert client.post(url, json={}).status_code == 403  # no token
    assert (
        client.post(url, json={}, headers={**good, "Origin": "http://evil.example"}).status_code
        == 403
    )
    assert (
        client.post(url, json={}, headers={**good, "Sec-Fetch-Site": "cross-site"}).status_code
        == 403
    )
    assert client.post(url, json={}, headers={**good, "Host": "evil.example"}).status_code == 403
    assert client.get(url).status_code == 405  # POST only
    # the API's mapping: refused 409 (a failed saga is not resumed), unknown 404, bad step 422
    assert client.post(url, json={}, headers=good).status_code == 409
    assert client.post("/api/sagas/nope/actions/resume", json={}, headers=good).status_code == 404
    bad_step = client.post(
        f"/api/sagas/{s.failed}/actions/retry-step", json={"step": "zz"}, headers=good
    )
    assert bad_step.status_code == 422
    assert client.post(url, content="{", headers=good).status_code == 422
    plan = client.post(
        f"/api/sagas/{s.completed}/actions/fork",
        json={"step": "create_shipment", "dry_run": True},
        headers=good,
    )
    assert plan.status_code == 200 and "plan" in plan.json()
    # a rolled-back saga forks from its first step: a new saga, linked, queued for the workers
    forked = client.post(
        f"/api/sagas/{s.rolled_back}/actions/fork",
        json={"step": "reserve_inventory"},
        headers=good,
    )
    assert forked.status_code == 200, forked.text
    fork_id = forked.json()["saga_id"]
    assert fork_id != s.rolled_back and forked.json()["status"] == "pending"
    assert f'href="/sagas/{s.rolled_back}"' in client.get(f"/sagas/{fork_id}").text


def test_routes_on_postgresql(pg_url: str, lab: RunningServices) -> None:
    s = populate(pg_url, lab)
    running = Console(pg_url)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            assert ids(client, "status=rolled_back") == {s.rolled_back}
            assert ids(client, "tenant=acme") == {s.other_tenant}
            resumed = client.get(f"/api/sagas/{s.resumed}/timeline").json()
            assert [m["kind"] for m in resumed["markers"]].count("takeover") == 1
            assert client.get("/breakers").status_code == 200
            assert client.get("/sagas/nope").status_code == 404
    finally:
        running.stop()


def test_console_refuses_a_public_host_and_a_missing_database(tmp_path: Path) -> None:
    from workerlab import sagalab

    public = sagalab("ui", "--db", str(tmp_path / "x.db"), "--host", "0.0.0.0", "--port", "0")
    assert public.returncode == 2 and "127.0.0.1 only" in public.stderr
    missing = sagalab("ui", "--db", str(tmp_path / "x.db"), "--port", "0")
    assert missing.returncode == 5 and not (tmp_path / "x.db").exists()
    assert REPO.exists()


JAEGER = "http://127.0.0.1:16686/trace/{trace_id}"
SPAN_ROW = re.compile(r'<tr id="span-[0-9a-f]+" class=span data-depth="(\d+)" data-name="([^"]*)"')


def span_rows(page: str) -> list[tuple[int, str]]:
    """The trace page's rows: (depth, span name), top to bottom."""
    return [(int(d), html.unescape(n)) for d, n in SPAN_ROW.findall(page)]


@pytest.fixture(scope="module")
def traced(
    lab: RunningServices, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, str, str, Path]]:
    """A console with `--trace-file` and `--trace-url` over a saga a real API and worker
    traced into that file: (client, saga id, trace id, trace file)."""
    where = tmp_path_factory.mktemp("traced")
    spans = where / "spans.jsonl"
    saga, trace = traced_saga(where / "sagas.db", lab, spans)
    running = Console(str(where / "sagas.db"), "--trace-file", str(spans), "--trace-url", JAEGER)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            yield client, saga, trace, spans
    finally:
        running.stop()


def test_a_sagas_trace_id_links_to_its_span_tree_and_the_tracing_ui(
    traced: tuple[httpx.Client, str, str, Path],
) -> None:
    client, saga, trace, spans = traced
    page = client.get(f"/sagas/{saga}").text
    assert f'href="/traces/{trace}"' in page and "id=trace-link" in page
    assert f'href="{JAEGER.format(trace_id=trace)}"' in page
    tree = client.get(f"/traces/{trace}")
    assert tree.status_code == 200, tree.text
    assert "script-src 'self'" in tree.headers["content-security-policy"]
    # The API's submit span (its parent, the caller's, is not in the file), the run it links
    # to under it, the attempts under the run: compensations after the refused pivot.
    assert span_rows(tree.text) == [
        (0, "POST /v1/sagas"),
        (1, "saga checkout"),
        (2, "action reserve_inventory"),
        (2, "action charge_payment"),
        (2, "action create_shipment"),
        (2, "compensation charge_payment"),
        (2, "compensation reserve_inventory"),
    ]
    assert "rolled_back" in tree.text and "failed (HTTP 400)" in tree.text
    assert "(linked)" in tree.text and "is not in the file" in tree.text
    assert tree.text.count("<svg class=span-bar") == 7
    assert f'href="/sagas/{saga}"' in tree.text and str(spans) in tree.text
    assert client.get(f"/traces/{trace.upper()}").status_code == 200


@pytest.mark.parametrize(
    ("trace_id", "status", "message"),
    [
        ("12" * 16, 404, "no spans for this trace in"),
        ("xyz", 400, "is not a trace id"),
        ("0" * 32, 400, "is not a trace id"),
        ("ab" * 17, 400, "is not a trace id"),
        ("%3Cscript%3E", 400, "is not a trace id"),
        ("x" * 5000, 400, "is not a trace id"),
    ],
    ids=["unknown", "not-hex", "all-zero", "too-long", "markup", "huge"],
)
def test_trace_page_answers_404_and_400_never_500(
    traced: tuple[httpx.Client, str, str, Path], trace_id: str, status: int, message: str
) -> None:
    client, _, _, spans = traced
    answer = client.get(f"/traces/{trace_id}")
    assert answer.status_code == status, answer.text
    assert message in html.unescape(answer.text)
    assert "<script>" not in answer.text.replace('<script src="/static/ui.js"></script>', "")
    if status == 404:
        assert str(spans) in answer.text


def test_without_a_trace_file_the_trace_id_is_text_and_traces_404(
    made: tuple[str, Sagas], console: httpx.Client
) -> None:
    _, s = made
    page = console.get(f"/sagas/{s.completed}").text
    assert "<code id=trace-id>" in page and "/traces/" not in page
    answer = console.get("/traces/" + "12" * 16)
    assert answer.status_code == 404 and "--trace-file" in answer.text


def test_trace_file_missing_then_with_malformed_lines(
    traced: tuple[httpx.Client, str, str, Path], tmp_path: Path
) -> None:
    """The file is read at each request: not there yet is a 404 saying so; lines that are not
    spans are skipped and counted; markup in a span is text."""
    _, saga, trace, spans = traced
    later = tmp_path / "later.jsonl"
    running = Console(str(spans.with_name("sagas.db")), "--trace-file", str(later))
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            answer = client.get(f"/traces/{trace}")
            assert answer.status_code == 404
            assert "does not exist yet" in answer.text and str(later) in answer.text
            good = json.loads(
                next(x for x in spans.read_text().splitlines() if '"saga checkout"' in x)
            )
            marked = {**good, "span_id": "ef" * 8, "name": "<script>x()</script>"}
            lines = [
                "not json " + trace,
                json.dumps([trace]),
                json.dumps({**good, "span_id": "zz"}),
                json.dumps({**good, "start_time_unix_nano": "soon"}),
                json.dumps(good),
                json.dumps(marked),
                json.dumps(good)[:40] + trace,  # a line cut short by a crash
            ]
            later.write_text("\n".join(lines) + "\n")
            answer = client.get(f"/traces/{trace}")
            assert answer.status_code == 200, answer.text
            assert span_rows(answer.text) == [(0, "saga checkout"), (0, "<script>x()</script>")]
            assert "5 line(s) of this trace are not spans: skipped" in answer.text
            assert "<script>x()" not in answer.text
            assert f'href="/sagas/{saga}"' in answer.text
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace-url", "http://127.0.0.1:16686/trace/"], "has no {trace_id}"),
        (["--trace-url", "javascript:alert('{trace_id}')"], "is not an http:// or https:// URL"),
        (["--trace-url", "file:///tmp/{trace_id}"], "is not an http:// or https:// URL"),
        (["--trace-file", "."], "is not a file of spans"),
    ],
    ids=["no-placeholder", "javascript", "file", "directory"],
)
def test_bad_trace_options_exit_2_with_one_line(
    made: tuple[str, Sagas], args: list[str], message: str
) -> None:
    from workerlab import sagalab

    r = sagalab("ui", "--db", made[0], "--port", "0", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_an_action_body_with_a_lone_surrogate_is_a_422_and_writes_nothing(
    made: tuple[str, Sagas], acting: tuple[httpx.Client, str]
) -> None:
    """`{"reason": "\\ud800"}` is JSON Python reads, and text SQLite cannot store: the console
    refuses it at the door, as the API does (422), instead of a 500 from the journal write."""
    client, token = acting
    db, s = made
    before = sagalab_events(db, s.completed)
    for action, body in [
        ("rollback", '{"reason": "x\\ud800", "force": true}'),
        ("retry-step", '{"step": "\\udcff"}'),
        ("cancel", '{"reason": "\\ud800"}'),
    ]:
        answer = client.post(
            f"/api/sagas/{s.completed}/actions/{action}",
            content=body,
            headers={"X-CSRF-Token": token, "Content-Type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        assert "surrogate" in answer.json()["detail"]
    assert sagalab_events(db, s.completed) == before


def sagalab_events(db: str, saga_id: str) -> int:
    """How many journal events the saga has (read through the store port)."""
    from sagalab.orchestrator.stores import open_store

    store = open_store(db, readonly=True, create=False)
    try:
        return len(store.state(saga_id)[1])
    finally:
        store.close()


def _declared_only(url: str, path: str, token: str, declared: int) -> bytes:
    """POST `path` declaring `declared` bytes and sending 2; the answer's first bytes (the
    console must answer without waiting for the rest, which never comes)."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=5) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{where.port}\r\n"
            f"X-CSRF-Token: {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n{{}}".encode()
        )
        try:
            return sock.recv(200)
        except TimeoutError:
            return b"(no answer within 5 s: the console waited for the declared body)"


def test_an_oversized_body_is_refused_before_it_is_read(
    made: tuple[str, Sagas], acting: tuple[httpx.Client, str]
) -> None:
    """A Content-Length over the limit is a 413 at once; a chunked body (no Content-Length)
    is read only up to the limit, then 413; nothing is written."""
    client, token = acting
    db, s = made
    url = str(client.base_url)
    for path in (f"/api/sagas/{s.completed}/actions/cancel", "/api/simulations"):
        first = _declared_only(url, path, token, 10**9)
        assert first.startswith(b"HTTP/1.1 413"), first
    before = sagalab_events(db, s.completed)

    def chunked() -> Iterator[bytes]:  # an iterator: httpx sends it chunked, no length
        yield b'{"reason": "'
        for _ in range(64):
            yield b"x" * 4096
        yield b'"}'

    answer = client.post(
        f"/api/sagas/{s.completed}/actions/cancel",
        content=chunked(),
        headers={"X-CSRF-Token": token, "Content-Type": "application/json"},
    )
    assert answer.status_code == 413, answer.text
    assert "at most 65536 bytes" in answer.json()["detail"]
    assert sagalab_events(db, s.completed) == before
    small = client.post(
        "/api/sagas/nope/actions/cancel",
        json={"reason": "x" * 400},
        headers={"X-CSRF-Token": token},
    )
    assert small.status_code == 404  # under the limit: on to the action
