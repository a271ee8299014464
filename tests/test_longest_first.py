"""slowfirst's ordering for `--dist worksteal` (conftest.py applies it): pytest-xdist's own
scheduler, given the reordered collection, starts every worker on the longest tests of its
share."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from slowfirst import LONGEST, longest_first, worksteal_slices
from xdist.scheduler.worksteal import WorkStealingScheduling


@dataclass(frozen=True)
class Item:
    nodeid: str


@dataclass(eq=False)
class Node:
    """What the scheduler calls on a worker: the indices it is sent, in order."""

    gateway: SimpleNamespace
    sent: list[int] = field(default_factory=list)
    shutting_down: bool = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent += indices

    def shutdown(self) -> None:
        self.shutting_down = True


def first_slices(nodeids: list[str], workers: int) -> list[list[str]]:
    """What each of `workers` workers is first sent by xdist's worksteal scheduler."""
    config = SimpleNamespace(getvalue=lambda name: [f"{workers}*popen"])
    scheduler = WorkStealingScheduling(config)  # type: ignore[arg-type]
    nodes = [Node(SimpleNamespace(id=f"gw{n}")) for n in range(workers)]
    for node in nodes:
        scheduler.add_node(node)  # type: ignore[arg-type]
        scheduler.add_node_collection(node, nodeids)  # type: ignore[arg-type]
    scheduler.schedule()
    return [[nodeids[i] for i in node.sent] for node in nodes]


def collection(others: int) -> list[Item]:
    """LONGEST spread among `others` short tests, in an order unlike the result's."""
    items = [Item(f"tests/test_x.py::test_{n}") for n in range(others)]
    for k, nodeid in enumerate(sorted(LONGEST)):
        items.insert(k * others // len(LONGEST), Item(nodeid))
    return items


def test_each_worker_starts_with_its_longest_tests_and_nothing_is_lost() -> None:
    items = collection(1000)
    for workers in (2, 3, 4):
        ordered = longest_first(items, workers)
        assert sorted(i.nodeid for i in ordered) == sorted(i.nodeid for i in items)
        slices = first_slices([i.nodeid for i in ordered], workers)
        assert [len(s) for s in slices] == worksteal_slices(len(items), workers)
        for share in slices:
            longest = [n for n in share if n in LONGEST]
            assert share[: len(longest)] == longest, "the long tests lead the slice"
            assert [LONGEST[n] for n in longest] == sorted(
                (LONGEST[n] for n in longest), reverse=True
            )
        assert all(s[0] in LONGEST for s in slices), "no worker starts on a short test"
        # the rest keeps its collected order
        rest = [i.nodeid for i in ordered if i.nodeid not in LONGEST]
        assert rest == [i.nodeid for i in items if i.nodeid not in LONGEST]


def test_the_load_is_balanced_over_the_workers() -> None:
    loads = [
        sum(LONGEST.get(n, 0) for n in share)
        for share in first_slices([i.nodeid for i in longest_first(collection(1000), 4)], 4)
    ]
    assert max(loads) - min(loads) <= max(LONGEST.values())


def test_a_few_selected_tests_keep_their_order() -> None:
    """Three tests on four workers: the first slice is empty, no test can head it."""
    items = [Item(nodeid) for nodeid in sorted(LONGEST)[:3]]
    assert longest_first(items, 4) == items
