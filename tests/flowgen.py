"""Generated saga flows for the property tests that hold two runtimes (or a runtime and its
memo) to the same journal: one to four steps, an optional pivot with retriable steps after it,
each step on one of the given services, with or without a compensation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st


def step_kinds(draw: st.DrawFn, n: int) -> list[str]:
    """Kinds of `n` steps in order: compensatable, with an optional pivot drawn at random and
    retriable steps after it (the order a saga's step kinds must follow)."""
    pivot = draw(st.none() | st.integers(0, n - 1))
    if pivot is None:
        return ["compensatable"] * n
    return ["compensatable"] * pivot + ["pivot"] + ["retriable"] * (n - pivot - 1)


@st.composite
def flows(draw: st.DrawFn, services: Sequence[str], *, jitter: bool) -> dict[str, Any]:
    """A flow document. `jitter` False keeps every retry delay a fixed number (two runtimes
    that draw their randomness differently then agree); True draws it per step, so the delays
    come from the caller's random generator."""
    steps = []
    for i, kind in enumerate(step_kinds(draw, draw(st.integers(1, 4)))):
        name = f"s{i}"
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
