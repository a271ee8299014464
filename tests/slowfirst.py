"""The order in which `--dist worksteal` should start the suite's longest tests (used by
conftest.py's pytest_collection_modifyitems; a module of its own so that tests can import it:
`from conftest import` may find tests/store_conformance/conftest.py first)."""

from __future__ import annotations

from typing import Protocol, TypeVar

# The longest tests start first (issue 9: the suite's wall time).
# `--dist worksteal` hands each of the N workers one contiguous slice of the collection and
# later moves tests from the tail of the longest queue to an idle worker: a test near a
# slice's end starts late, and one of 60-150 s started late sets the suite's wall time.
# So each of these tests (seconds measured in a `-n 4` run at load ~12, for the weights)
# goes to the head of one slice, the longest first, each to the slice with the least so far;
# everything else keeps its order. Serial runs and other --dist modes are left as collected.
# tests/test_longest_first.py checks this against xdist's own scheduler. A renamed test only
# loses its place (it runs where it is collected), so keep the names here current.
LONGEST = {
    "tests/test_newcomer_chain.py::test_load_test_calibrate_validate_compare_explore": 112,
    "tests/test_types.py::test_mypy_reports_no_errors[packages]": 103,
    "tests/test_types.py::test_mypy_reports_no_errors[folders]": 82,
    "tests/test_chaos.py::test_chaos": 79,
    "tests/test_ui_browser.py::test_list_filters": 64,
    "tests/test_types.py::test_mypy_reports_no_errors[core-strict]": 63,
    "tests/test_pg_hosts_chaos.py::"
    "test_sagas_survive_kills_a_partition_and_database_restarts_across_hosts": 62,
    "tests/test_ui_routes.py::test_routes_on_postgresql": 62,
    "tests/test_stack.py::test_the_console_link_shows_a_saga_submitted_through_the_edge": 56,
    "tests/test_sim_scenarios.py::test_scenario_invariants_and_claims[retry-storm]": 55,
    "tests/test_sim_queueing.py::"
    "test_power_of_two_matches_the_supermarket_model_and_random_does_not": 54,
    "tests/test_stack.py::test_two_ups_started_together_run_one_stack_that_down_stops": 48,
}


class Collected(Protocol):
    """A collected test (pytest.Item), as far as the ordering reads it."""

    @property
    def nodeid(self) -> str: ...


ItemT = TypeVar("ItemT", bound=Collected)


def worksteal_slices(count: int, workers: int) -> list[int]:
    """The sizes of the slices worksteal first sends to `workers` idle workers
    (xdist/scheduler/worksteal.py, check_schedule: each gets len(pending) // workers left)."""
    sizes = []
    for left in range(workers, 0, -1):
        sizes.append(count // left)
        count -= sizes[-1]
    return sizes


def longest_first(items: list[ItemT], workers: int) -> list[ItemT]:
    """`items` reordered so that each LONGEST test heads one worker's first slice."""
    long = sorted((i for i in items if i.nodeid in LONGEST), key=lambda i: -LONGEST[i.nodeid])
    rest = iter([i for i in items if i.nodeid not in LONGEST])
    sizes = worksteal_slices(len(items), workers)
    heads: list[list[ItemT]] = [[] for _ in sizes]
    for item in long:
        slot = min(range(len(sizes)), key=lambda k: sum(LONGEST[i.nodeid] for i in heads[k]))
        heads[slot].append(item)
    if any(len(head) > size for size, head in zip(sizes, heads, strict=True)):
        return items  # a handful of tests selected: nothing to gain
    ordered: list[ItemT] = []
    for size, head in zip(sizes, heads, strict=True):
        ordered += head
        ordered += [next(rest) for _ in range(size - len(head))]
    return ordered
