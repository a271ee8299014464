"""ui/traces.py on its own: the span tree's placement rules, the bounded read of a trace file,
and any line a damaged or hostile file holds rendered without an error (never a 500).

The console's routes over spans real processes wrote are in test_ui_routes.py, the link in a
real browser in test_ui_browser.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagalab.ui.traces import (
    MAX_LINKS_SHOWN,
    Link,
    Span,
    check_trace_url,
    read_spans,
    span_tree,
    trace_page,
    valid_trace_id,
)

TRACE = "ab" * 16


def span(
    sid: str, name: str, parent: str | None = None, start: int = 0, end: int = 1, links: Any = ()
) -> dict[str, Any]:
    return {
        "trace_id": TRACE,
        "span_id": sid * 16,
        "parent_span_id": parent * 16 if parent else None,
        "name": name,
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "attributes": {},
        "links": [
            {"trace_id": TRACE, "span_id": t * 16, "attributes": {"sagalab.link": kind}}
            for t, kind in links
        ],
        "status": {"code": "OK"},
        "resource": {"service.name": "s"},
    }


def tree_of(path: Path, lines: list[Any]) -> list[tuple[int, str, str]]:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return [(r.depth, r.span.name, r.placed) for r in span_tree(read_spans(path, TRACE).spans)]


def test_runs_hang_under_the_submit_span_that_links_to_them_and_resumes_beside(
    tmp_path: Path,
) -> None:
    lines = [
        span("5", "run 2", start=50, end=60, links=[("4", "previous_run")]),
        span("1", "edge", start=0, end=20),
        span("2", "gateway", "1", 1, 19),
        span("3", "submit", "2", 2, 18, links=[("4", "run")]),
        span("6", "run 3", start=70, end=80, links=[("5", "previous_run")]),
        span("4", "run 1", start=30, end=40),
        span("7", "attempt", "4", 31, 32),
        span("8", "attempt again", "6", 71, 72),
    ]
    assert tree_of(tmp_path / "t.jsonl", lines) == [
        (0, "edge", ""),
        (1, "gateway", ""),
        (2, "submit", ""),
        (3, "run 1", "linked"),
        (4, "attempt", ""),
        (3, "run 2", "follows"),
        (3, "run 3", "follows"),
        (4, "attempt again", ""),
    ]


def test_a_cycle_in_a_damaged_file_is_shown_once_from_its_earliest_span(tmp_path: Path) -> None:
    lines = [span("a", "b", "b", 2, 3), span("b", "a", "a", 1, 2), span("c", "c", "c", 0, 1)]
    assert tree_of(tmp_path / "t.jsonl", lines) == [
        (0, "c", ""),
        (0, "a", ""),
        (1, "b", ""),
    ]


def test_fifty_thousand_spans_in_any_order_are_placed_in_linear_time() -> None:
    n = 50_000

    def sid(i: int) -> str:
        return f"{i + 1:016x}"

    def run(i: int, parent: str | None = None, links: tuple[Link, ...] = ()) -> Span:
        return Span(sid(i), parent, f"run {i}", "s", i, i + 1, "OK", links=links)

    # A chain of resumed runs, each following the one before, handed over newest first: a
    # placement that resolved one more link per pass over all spans took minutes here.
    first = Span(sid(0), None, "submit", "s", 0, 1, "OK", links=(Link(sid(1), True, "run"),))
    chain = [first, run(1)]
    chain += [run(i, links=(Link(sid(i - 1), True, "previous_run"),)) for i in range(2, n)]
    deep = [run(i, sid(i - 1) if i else None) for i in range(n)]
    wide = [run(0)] + [run(i, sid(0)) for i in range(1, n)]
    started = time.process_time()
    rows = span_tree(chain[::-1])
    deep_rows, wide_rows = span_tree(deep), span_tree(wide)
    assert time.process_time() - started < 10  # generous: linear work takes well under 1 s
    assert (rows[0].span.name, rows[0].depth) == ("submit", 0)
    assert len(rows) == n and {r.depth for r in rows[1:]} == {1}
    placed = [r.placed for r in rows[1:]]
    assert placed.count("linked") == 1 and placed.count("follows") == n - 2
    assert [r.depth for r in deep_rows] == list(range(n))
    assert len(wide_rows) == n and max(r.depth for r in wide_rows) == 1


def test_a_span_with_thousands_of_links_shows_a_few_and_counts_the_rest(tmp_path: Path) -> None:
    many = [(f"{i:016x}"[-1], "link") for i in range(3000)]
    lines = [span(str(i), f"s{i}", start=i, end=i + 1, links=many) for i in range(1, 10)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    read = read_spans(path, TRACE)
    page = trace_page(TRACE, read, str(path), csrf="t", actions=False)
    assert page.count("class=span ") == 9
    shown = page.count('href="#span-') + page.count("<code>") - page.count("<code id=")
    assert shown <= 9 * MAX_LINKS_SHOWN + 1, shown  # + the file's name
    assert page.count(f"and {3000 - MAX_LINKS_SHOWN} more") == 9


def test_only_the_files_last_window_is_read(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    old, new = json.dumps(span("1", "old")), json.dumps(span("2", "new", start=5, end=6))
    path.write_text(old + "\n" + old + "\n" + new + "\n")
    read = read_spans(path, TRACE, max_bytes=len(old) + len(new) + 2)
    # A line the window starts inside is dropped, not counted as damaged; a whole one is read.
    assert [s.name for s in read.spans] == ["old", "new"]
    assert read.truncated and read.skipped == 0
    cut = read_spans(path, TRACE, max_bytes=len(old) + len(new) + 1)
    assert [s.name for s in cut.spans] == ["new"] and cut.skipped == 0
    assert not read_spans(path, TRACE).truncated


def test_a_missing_file_has_no_spans_and_a_fifo_or_directory_is_refused(tmp_path: Path) -> None:
    assert read_spans(tmp_path / "nope.jsonl", TRACE).missing
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        with pytest.raises(OSError, match="not a regular file"):
            read_spans(path, TRACE)  # at once: a FIFO with no writer is never waited on


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TRACE.upper(), TRACE),
        (" " + TRACE, TRACE),
        ("0" * 32, None),
        ("ab" * 15, None),
        ("g" * 32, None),
    ],
    ids=["upper", "spaces", "zero", "short", "not-hex"],
)
def test_valid_trace_id(text: str, expected: str | None) -> None:
    assert valid_trace_id(text) == expected


@pytest.mark.parametrize(
    "template",
    ["http://127.0.0.1:16686/trace/", "ftp://x/{trace_id}", "https:///{trace_id}", "{trace_id}"],
)
def test_bad_trace_url_templates(template: str) -> None:
    with pytest.raises(ValueError, match="--trace-url"):
        check_trace_url(template)


FIELDS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "attributes",
    "links",
    "status",
    "resource",
]
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([TRACE, "12" * 8, "ef" * 8, "OK", "ERROR", "saga.outcome"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
spans = st.fixed_dictionaries(
    {"trace_id": st.just(TRACE)},
    optional={k: values for k in FIELDS[1:]}
    | {"span_id": st.sampled_from(["12" * 8, "ef" * 8, "cd" * 8])},
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(spans | values, max_size=6))
def test_any_line_renders_or_is_skipped_never_an_error(tmp_path: Path, lines: list[Any]) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    read = read_spans(path, TRACE)
    assert len(read.spans) + read.skipped <= len(lines)
    if read.spans:
        page = trace_page(TRACE, read, str(path), csrf="t", actions=False)
        assert page.count("class=span ") == len(read.spans)
