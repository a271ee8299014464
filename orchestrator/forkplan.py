"""The plan of a fork: what rerunning a saga from one of its steps, with new input, must do.

Theory of operation
-------------------
`sagalab orchestrate fork OLD --from-step STEP` makes a new saga, linked to OLD, that keeps
OLD's results for the steps before STEP (their calls are not made again: the fork's journal
starts with copies of their successful attempts) and runs STEP and every step after it with
its own input and its own idempotency keys. OLD is closed first with a rollback *from STEP*
(saga.py): what OLD applied from STEP on is compensated, most recently applied first, and the
steps before STEP stay applied - they are the fork's from then on.

`plan_fork(state, ...)` decides all of that from OLD's folded journal alone (no I/O, no clock):
which steps are reused, which are compensated first and in which order, which re-run and with
which new keys, and whether the fork is refused, and why:

* OLD is pending, running or rolling back: refused (wait for it, or `cancel` it).
* OLD was forked already: refused (its reused steps belong to that fork).
* A step before STEP did not succeed, or was compensated or skipped: nothing of it stands to
  reuse, so the fork has to start there or earlier.
* The pivot (the flow's point of no return) was applied, or may have been, at or after STEP:
  refused. Running from STEP would apply it a second time; `force` is accepted only if the
  pivot has a compensation (which then undoes OLD's, as `rollback --force` would).
* A step at or after STEP without a compensation was applied: refused, since rerunning it
  applies it twice; `force` states that it stays applied and is applied again.

`apply_sets` gives the fork's input: OLD's (or `--input`'s) with `--set input.a.b=value`
edits, the value read as JSON when it is JSON and as a string otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sagalab.orchestrator.saga import Phase, SagaState, SagaStatus, idempotency_key

__all__ = ["ForkPlan", "SetError", "apply_sets", "plan_fork"]


class SetError(ValueError):
    """A `--set` that is not `input.KEY[.KEY...]=VALUE`, or edits inside a non-object."""


@dataclass(frozen=True)
class ForkPlan:
    """What a fork of `saga_id` from `from_step` does, in order; `refusal` says why it may not.

    `compensate_first` is in the order the compensations run (reverse order of application);
    `new_keys` maps each re-run step to the idempotency key its action will carry, and
    `reused_keys` each reused step to the key its applied action carried in the old saga.
    """

    saga_id: str
    fork_id: str
    from_step: str
    old_status: SagaStatus
    reused: tuple[str, ...]
    compensate_first: tuple[str, ...]
    rerun: tuple[str, ...]
    new_keys: dict[str, str]
    reused_keys: dict[str, str]
    stays_applied: tuple[str, ...] = ()
    #: The flow's pivot, and whether the old saga applied it (or may have): reused when it
    #: comes before `from_step`, a refusal (or, forced, a compensation) when it does not.
    pivot: str | None = None
    pivot_applied: bool = False
    refusal: str | None = None
    forced: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        """Whether the fork may go ahead."""
        return self.refusal is None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json` and the API."""
        return {
            "saga_id": self.saga_id,
            "fork_id": self.fork_id,
            "from_step": self.from_step,
            "old_status": self.old_status.value,
            "reused": list(self.reused),
            "compensate_first": list(self.compensate_first),
            "rerun": list(self.rerun),
            "new_keys": dict(self.new_keys),
            "reused_keys": dict(self.reused_keys),
            "stays_applied": list(self.stays_applied),
            "pivot": self.pivot,
            "pivot_applied": self.pivot_applied,
            "allowed": self.allowed,
            "refusal": self.refusal,
            "forced": self.forced,
            "notes": list(self.notes),
        }


_ACTIVE = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


def plan_fork(
    state: SagaState,
    *,
    saga_id: str,
    fork_id: str,
    from_step: str,
    forks: Iterable[str] = (),
    force: bool = False,
) -> ForkPlan:
    """The plan for forking the saga whose journal folds to `state`, from `from_step`.

    `forks` are the sagas already forked from it. KeyError if the flow has no `from_step`
    (the shell checks it first and names the steps). Never raises for a refusal: the plan
    carries it, so that a dry run shows it.
    """
    names = [s.name for s in state.flow.steps]
    start = names.index(from_step) if from_step in names else -1
    if start < 0:
        raise KeyError(from_step)
    reused, rerun = names[:start], names[start:]
    refusals: list[str] = []
    notes: list[str] = []
    forced = False

    if state.status in _ACTIVE:
        refusals.append(
            f"saga {saga_id} is {state.status.value}: a fork needs it stopped. Wait for it to "
            "end, or `cancel` it"
        )
    earlier = list(forks)
    if earlier:
        refusals.append(
            f"saga {saga_id} was forked already (as {', '.join(earlier)}): the steps it reused "
            "belong to that fork. Fork the fork instead"
        )
    for name in reused:
        p = state.steps[name]
        # A step an earlier fork's rollback kept (that fork was never created) still stands
        # and is reusable like any other: done, its compensation never started.
        if p.action.skipped or not p.action.done:
            refusals.append(
                f"step {name!r} did not succeed in saga {saga_id} ({p.display_status}): "
                f"nothing of it stands to reuse; fork from {name!r} or earlier"
            )
            break
        if p.compensation.attempts or p.compensation.done or p.compensation.skipped:
            refusals.append(
                f"step {name!r} was compensated in saga {saga_id} ({p.display_status}): "
                f"nothing of it stands to reuse; fork from {name!r} or earlier"
            )
            break

    pivot_index = state.flow.pivot_index
    pivot = names[pivot_index] if pivot_index is not None else None
    pivot_applied = pivot is not None and state.steps[pivot].maybe_applied
    compensate: list[str] = []
    stays: list[str] = []
    for name in reversed(state.applied_order):  # most recently applied first
        if name not in rerun:
            continue
        c = state.steps[name].compensation
        if c.done or c.skipped:
            continue
        definition = state.flow.step(name)
        if name == pivot:
            if not definition.has_compensation:
                refusals.append(
                    f"the pivot {name!r} was applied (or may have been) in saga {saga_id} and "
                    f"has no compensation: a fork from {from_step!r} would apply it a second "
                    f"time. Fork from a step after {name!r}"
                )
                continue
            if not force:
                refusals.append(
                    f"the pivot {name!r} was applied in saga {saga_id}: the saga only goes "
                    f"forward. --force compensates it first (as `rollback --force` would), or "
                    f"fork from a step after {name!r}"
                )
            else:
                forced = True
                notes.append(f"forced: the pivot {name!r} is compensated before the fork runs")
            compensate.append(name)
        elif definition.has_compensation:
            compensate.append(name)
        else:
            stays.append(name)
            if not force:
                refusals.append(
                    f"step {name!r} was applied in saga {saga_id} and has no compensation: "
                    "the fork would apply it a second time. --force accepts that (it stays "
                    f"applied and runs again), or fork from a step after {name!r}"
                )
            else:
                forced = True
                notes.append(f"forced: {name!r} stays applied and is applied again by the fork")

    if state.status is SagaStatus.ROLLED_BACK and compensate:
        # A rolled back saga takes no further rollback (saga.py): what still stands there
        # came from a fork's rollback that stopped before it, and must stay.
        refusals.append(
            f"saga {saga_id} is rolled back and still has {', '.join(compensate)} applied "
            f"(kept for a fork): fork from a step after {compensate[0]!r}"
        )
    return ForkPlan(
        saga_id=saga_id,
        fork_id=fork_id,
        from_step=from_step,
        old_status=state.status,
        reused=tuple(reused),
        compensate_first=tuple(compensate),
        rerun=tuple(rerun),
        new_keys={n: idempotency_key(fork_id, n, Phase.ACTION) for n in rerun},
        reused_keys={n: idempotency_key(saga_id, n, Phase.ACTION) for n in reused},
        stays_applied=tuple(stays),
        pivot=pivot,
        pivot_applied=pivot_applied,
        refusal="; ".join(refusals) or None,
        forced=forced,
        notes=tuple(notes),
    )


def apply_sets(payload: Mapping[str, Any], sets: Iterable[str]) -> dict[str, Any]:
    """`payload` (deep-copied) with each `input.a.b=value` applied in order; SetError if one
    is malformed. The value is JSON if it parses as JSON, else the text as a string."""
    result: dict[str, Any] = json.loads(json.dumps(payload))
    for item in sets:
        path, eq, raw = item.partition("=")
        parts = path.strip().split(".")
        if not eq or parts[0] != "input" or len(parts) < 2 or not all(p for p in parts[1:]):
            raise SetError(f"--set {item!r}: expected input.KEY=VALUE (e.g. input.amount=120)")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = result
        for i, key in enumerate(parts[1:-1], 1):
            inner = target.setdefault(key, {})
            if not isinstance(inner, dict):
                shown = ".".join(parts[: i + 1])
                raise SetError(f"--set {item!r}: {shown} is not an object")
            target = inner
        target[parts[-1]] = value
    return result
