"""Planted bugs for `simulate explore`'s tests, as a program so that a subprocess has them too.

    python3 tests/explorelab.py BUG simulate explore checkout --seeds 1000

plants BUG in this process, then runs the `sagalab` command with the remaining arguments: the
replay command `explore` prints runs the same way (its `sagalab` replaced by this program and
the bug), so the test checks that the printed command reproduces the violation.

* ``forward-compensation``: `SagaState.next_to_compensate` picks the earliest applied step
  instead of the latest (compensations in flow order, what the issue's example plants).
* ``no-fence``: the explorer's journal store lands a write whatever the writer's lease.
* ``interrupted-not-applied``: `decide` closes an interrupted attempt as one that applied
  nothing, so a rollback leaves a call a crashed worker had sent standing.
"""

from __future__ import annotations

import sys

from sagalab.orchestrator import saga
from sagalab.orchestrator.saga import Failure, SagaState
from sagalab.simulator import explore

BUGS = ("forward-compensation", "no-fence", "interrupted-not-applied")


def _forward(self: SagaState) -> str | None:
    for name in self.applied_order:  # forward: the bug
        if name in self.kept:
            continue
        c = self.steps[name].compensation
        if self.flow.step(name).has_compensation and not (c.done or c.skipped):
            return name
    return None


def plant(bug: str) -> None:
    """Plant `bug` (one of BUGS) in this process."""
    if bug == "forward-compensation":
        SagaState.next_to_compensate = _forward  # type: ignore[method-assign]
    elif bug == "no-fence":
        fenced = explore.JournalStore.__init__

        def unfenced(
            self: explore.JournalStore, run: explore.SeedRun, *, fence: bool = True
        ) -> None:
            fenced(self, run, fence=False)

        explore.JournalStore.__init__ = unfenced  # type: ignore[method-assign]
    elif bug == "interrupted-not-applied":
        saga.INTERRUPTED = Failure("interrupted", retryable=True, maybe_applied=False)
    else:
        raise SystemExit(f"unknown bug {bug!r}; one of {', '.join(BUGS)}")


if __name__ == "__main__":
    plant(sys.argv[1])
    from sagalab.cli.main import app

    app(sys.argv[2:], prog_name="sagalab")
