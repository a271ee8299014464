"""`sagalab ui` in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright
for Python, against a real console subprocess over a real SQLite database of sagas made by
real runs (tests/uilab.py).

Never skipped: without /usr/bin/chromium or the playwright package these tests fail and say
how to install them (.ci/run installs chromium when it is missing). Playwright never
downloads a browser here: it launches the system one (`executable_path`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uilab import Console, Sagas, populate, traced_saga
from workerlab import sagalab

from sagalab.fakeservices import RunningServices

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps reaching for hosts (FIELD-NOTES.md).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no {CHROMIUM}: the browser tests need Debian's chromium "
            "(sudo apt-get install -y chromium; .ci/run does it)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need playwright: pip install -e '.[test]'")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def made(lab: RunningServices, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Sagas]:
    db = str(tmp_path_factory.mktemp("uib") / "sagas.db")
    return db, populate(db, lab)


@pytest.fixture(scope="module")
def console(made: tuple[str, Sagas]) -> Iterator[str]:
    running = Console(made[0])
    try:
        yield running.url
    finally:
        running.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    tab = context.new_page()
    errors: list[str] = []
    elsewhere: list[str] = []
    context.on("weberror", lambda error: errors.append(str(error.error)))
    # Offline by design: no CDN, no font, nothing but the console itself is ever asked for.
    context.on(
        "request",
        lambda request: (
            None
            if request.url.startswith(("http://127.0.0.1:", "data:"))
            else elsewhere.append(request.url)
        ),
    )
    tab.set_default_timeout(WAIT_MS)
    yield tab
    context.close()
    assert errors == [], f"the page's script failed: {errors}"
    assert elsewhere == [], f"the console reached beyond 127.0.0.1: {elsewhere}"


def expect(locator: Any) -> Any:
    """Playwright's `expect` (imported late: a missing package fails in `browser`)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def row_ids(page: Any) -> set[str]:
    return set(
        page.eval_on_selector_all("#saga-rows tr[data-id]", "rows => rows.map(r => r.dataset.id)")
    )


def test_list_filters(made: tuple[str, Sagas], console: str, page: Any) -> None:
    _, s = made
    page.goto(console + "/")
    assert len(row_ids(page)) == 7
    page.check("input[name=status][value=rolled_back]")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**status=rolled_back**")
    assert row_ids(page) == {s.rolled_back}
    page.goto(console + "/")
    page.fill("input[name=tenant]", "acme")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**tenant=acme**")
    assert row_ids(page) == {s.other_tenant}
    page.click(f"a[href='/sagas/{s.other_tenant}']")
    page.wait_for_selector("#timeline svg")
    assert page.text_content("#saga-status") == "pending"


def test_list_composed_filter_survives_the_live_update(
    made: tuple[str, Sagas], console: str, page: Any
) -> None:
    """Two statuses, a step and an input match typed in the form: the rows the CLI's `list`
    gives for the same options, and the two-second live update keeps them."""
    _, s = made
    page.goto(console + "/")
    page.check("input[name=status][value=rolled_back]")
    page.check("input[name=status][value=failed]")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**status=failed**")
    assert row_ids(page) == {s.rolled_back, s.failed}
    page.fill("input[name=step]", "charge_payment")
    page.fill("input[name=input] >> nth=-1", "amount=80000")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**step=charge_payment**")
    assert row_ids(page) == {s.failed}
    assert page.is_checked("input[name=status][value=rolled_back]")
    assert page.input_value("input[name=input] >> nth=0") == "amount=80000"
    with page.expect_response(lambda r: "/api/sagas?" in r.url and r.ok, timeout=10_000) as polled:
        pass
    assert "step=charge_payment" in polled.value.url and "input=amount" in polled.value.url
    # the rows are rebuilt from that answer: still the one filtered saga
    expect(page.locator("#saga-rows tr[data-id]")).to_have_count(1)
    expect(page.locator(f"#saga-rows tr[data-id='{s.failed}']")).to_have_count(1)
    page.fill("input[name=since]", "not a time")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**since=not**")
    assert "--since 'not a time' is not a time" in (page.text_content("p.error") or "")


def lanes(page: Any) -> list[dict[str, str]]:
    page.wait_for_selector("#timeline svg g.lane")
    return page.eval_on_selector_all(
        "#timeline svg g.lane",
        "gs => gs.map(g => ({id: g.dataset.lane, kind: g.dataset.kind, pivot: g.dataset.pivot,"
        " label: g.querySelector('.lane-label').textContent}))",
    )


def test_timeline_lanes_order_pivot_and_takeover(
    made: tuple[str, Sagas], console: str, page: Any
) -> None:
    _, s = made
    page.goto(f"{console}/sagas/{s.rolled_back}")
    drawn = lanes(page)
    assert [d["id"] for d in drawn[:6]] == [
        "action:reserve_inventory",
        "action:charge_payment",
        "action:create_shipment",
        "action:send_confirmation",
        "compensation:charge_payment",  # undone first: the reverse of the flow's order
        "compensation:reserve_inventory",
    ]
    assert [d["id"] for d in drawn if d["pivot"] == "yes"] == ["action:create_shipment"]
    assert "pivot" in drawn[2]["label"]
    assert {d["kind"] for d in drawn[6:]} == {"breaker"}
    failed_bar = page.locator("g[data-lane='action:create_shipment'] rect.bar.failed")
    assert "HTTP 400" in failed_bar.first.locator("title").text_content()
    assert (
        page.locator("g[data-lane='compensation:charge_payment'] rect.bar.succeeded").count() == 1
    )

    page.goto(f"{console}/sagas/{s.resumed}")
    lanes(page)
    assert page.locator("g.marker.takeover").count() == 1
    assert "interrupted" in page.locator("g.marker.takeover title").text_content()
    outcomes = page.eval_on_selector_all(
        "g[data-lane='action:charge_payment'] rect.bar", "rs => rs.map(r => r.dataset.outcome)"
    )
    assert outcomes == ["interrupted", "succeeded"]


def test_a_live_saga_and_the_list_update_without_reload(
    made: tuple[str, Sagas], console: str, page: Any, lab: RunningServices
) -> None:
    db, s = made
    page.goto(f"{console}/sagas/{s.pending}")
    lanes(page)
    assert page.text_content("#saga-status") == "pending"
    listing = page.context.new_page()
    listing.goto(console + "/")
    row = listing.locator(f"#saga-rows tr[data-id='{s.pending}'] .status")
    assert row.text_content() == "pending"
    for tab in (page, listing):
        tab.evaluate("window.__same_page = true")
    done = sagalab("orchestrate", "resume", s.pending, "--db", db, env=lab.env)
    assert done.returncode == 0, done.stderr
    expect(page.locator("#saga-status")).to_have_text("completed", timeout=WAIT_MS)
    expect(row).to_have_text("completed", timeout=WAIT_MS)
    for tab in (page, listing):  # updated in place, not reloaded
        assert tab.evaluate("window.__same_page") is True
    assert page.locator("g[data-lane='action:send_confirmation'] rect.bar.succeeded").count() == 1


def test_saga_input_with_markup_never_runs(
    made: tuple[str, Sagas], console: str, page: Any
) -> None:
    _, s = made
    page.goto(f"{console}/sagas/{s.xss}")
    lanes(page)
    page.hover("g[data-lane='action:reserve_inventory'] rect.bar")
    assert page.evaluate("window.__pwned") is None
    assert "<script>window.__pwned = 1</script>" in page.text_content("#saga-input")
    assert page.locator("main script, main img").count() == 0
    title = page.locator("g[data-lane='action:reserve_inventory'] rect.bar title").first
    assert "<script>" in title.text_content()  # drawn as text in the tooltip


def test_no_action_buttons_without_allow_actions(
    made: tuple[str, Sagas], console: str, page: Any
) -> None:
    _, s = made
    page.goto(f"{console}/sagas/{s.failed}")
    lanes(page)
    assert page.locator("button.action").count() == 0


def test_action_buttons_work_with_allow_actions(
    made: tuple[str, Sagas], page: Any, lab: RunningServices
) -> None:
    db, s = made
    running = Console(db, "--allow-actions")
    try:
        page.goto(f"{running.url}/sagas/{s.completed}")
        lanes(page)
        page.select_option("#action-step", "create_shipment")
        page.click("button.action[data-action=fork]")  # the plan first, nothing written
        page.wait_for_selector("#fork-plan:not([hidden])")
        plan = json.loads(page.text_content("#fork-plan-text"))
        assert plan["from_step"] == "create_shipment"
        page.click("#fork-cancel")

        page.goto(f"{running.url}/sagas/{s.other_tenant}")
        lanes(page)
        page.click("button.action[data-action=cancel]")
        expect(page.locator("#action-result")).to_have_class("ok", timeout=WAIT_MS)
        assert "queued for the workers" in page.text_content("#action-result")
        page.wait_for_selector("g.marker.operator")
        assert "rollback" in page.locator("g.marker.operator title").text_content()

        page.goto(f"{running.url}/sagas/{s.completed}")
        lanes(page)
        page.click("button.action[data-action=rollback]")  # past the pivot: refused, 409
        expect(page.locator("#action-result")).to_have_class("bad", timeout=WAIT_MS)
        assert "409" in page.text_content("#action-result")
    finally:
        running.stop()


def test_simulation_report_charts(console: str, page: Any, tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    report.write_text(
        json.dumps(
            {
                "scenario": {"name": "payments-outage", "description": "<i>d</i>"},
                "seed": 7,
                "sagas": {"created": 10, "completed": 6, "rolled_back": 4, "failed": 0},
                "latency": {"end_to_end": {"p50": 0.1, "p95": 0.4, "p99": 0.9, "max": 1.2}},
                "breakers": {"payments": {}},
                "breaker_transitions": [{"service": "payments", "t": 3.0, "to": "open"}],
                "faults": [{"label": "outage", "start": 2.0, "end": 5.0}],
                "duration": 10.0,
                "claims": [{"text": "rolls back", "check": "x", "ok": True, "value": 4}],
                "invariants_failed": 0,
            }
        )
    )
    page.goto(console + "/simulations")
    page.set_input_files("#sim-file", str(report))
    page.wait_for_selector("#sim-charts svg")
    assert page.locator("#sim-charts figure.chart").count() == 3
    assert page.locator("#sim-charts i").count() == 0
    assert shutil.which("chromium") or Path(CHROMIUM).exists()


def test_the_trace_link_opens_the_span_tree_of_the_sagas_attempts(
    lab: RunningServices, page: Any, tmp_path: Path
) -> None:
    """A saga an API and a worker traced into a file: its page's trace id is a link to the
    console's span tree, where its run and attempts hang under the API's submit span."""
    spans = tmp_path / "spans.jsonl"
    saga, trace = traced_saga(tmp_path / "sagas.db", lab, spans)
    running = Console(str(tmp_path / "sagas.db"), "--trace-file", str(spans))
    try:
        page.goto(f"{running.url}/sagas/{saga}")
        lanes(page)
        assert page.text_content("#trace-id") == trace
        page.click("#trace-link")
        page.wait_for_url(f"**/traces/{trace}")
        rows = page.eval_on_selector_all(
            "tr.span", "rs => rs.map(r => [Number(r.dataset.depth), r.dataset.name])"
        )
        assert rows == [
            [0, "POST /v1/sagas"],
            [1, "saga checkout"],
            [2, "action reserve_inventory"],
            [2, "action charge_payment"],
            [2, "action create_shipment"],
            [2, "compensation charge_payment"],
            [2, "compensation reserve_inventory"],
        ]
        refused = page.locator("tr.span[data-name='action create_shipment']")
        assert "HTTP 400" in refused.locator("td").nth(4).text_content()
        assert refused.locator("svg.span-bar rect.bar.failed").count() == 1
        bars = page.eval_on_selector_all(
            "tr.span svg.span-bar rect.bar", "rs => rs.map(r => r.getAttribute('class'))"
        )  # the API's span sets no status; the run rolled back; the pivot was refused
        assert (
            bars
            == ["bar unset", "bar failed", *["bar succeeded"] * 2, "bar failed"]
            + ["bar succeeded"] * 2
        )
        page.click(f"a[href='/sagas/{saga}']")  # and back to the saga
        page.wait_for_url(f"**/sagas/{saga}")
    finally:
        running.stop()
