"""Generated saga flows for the property tests that hold two runtimes (or a runtime and its
memo) to the same journal: one to four steps, an optional pivot with retriable steps after it,
each step on one of the given services, with or without a compensation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st


@st.composite
def flows(draw: st.DrawFn, services: Sequence[str], *, jitter: bool) -> dict[str, Any]:
    """A flow document. `jitter` False keeps every retry delay a fixed number (two runtimes
    that draw their randomness differently then agree); True draws it per step, so the delays
    come from the caller's random generator."""
    n = draw(st.integers(1, 4))
    pivot = draw(st.none() | st.integers(0, n - 1))
    steps = []
    for i in range(n):
        name = f"s{i}"
        kind = "compensatable"
        if pivot is not None and i == pivot:
            kind = "pivot"
        elif pivot is not None and i > pivot:
            kind = "retriable"
        attempts = None if kind == "retriable" else draw(st.integers(1, 3))
        step: dict[str, Any] = {
            "name": name,
            "service": draw(st.sampled_from(list(services))),
            "kind": kind,
            "action": {"method": "POST", "path": f"/{name}"},
            "timeout": 1.5,
            "retry": {
                "max_attempts": attempts,
                "initial_delay": 0.5,
                "jitter": draw(st.booleans()) if jitter else False,
            },
            "compensation_retry": {"max_attempts": 3, "initial_delay": 0.5, "jitter": jitter},
        }
        if kind != "retriable" and draw(st.booleans()):
            step["compensation"] = {"method": "POST", "path": f"/{name}/undo"}
        steps.append(step)
    return {"name": "generated", "version": 1, "steps": steps}
