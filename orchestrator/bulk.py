"""Bulk operator actions: one action over the sagas a filter matched, paced and recorded.

`start_batch` freezes the matched saga ids in a batch record (`BatchStore`); `BatchRunner`
then acts on each saga not done yet, one at a time, through the very functions a single
action uses (orchestrator/operations.py: nothing is reimplemented here), at most `rps` a
second, and records each saga's outcome as it goes:

- before acting, the item is marked ACTING; after, ACTED, SKIPPED (the action did not apply:
  refused, unknown, a breaker open) or FAILED (an error, e.g. the database);
- a batch killed halfway resumes (`BatchRunner.run` on the same record) with the items that
  have no end yet. One that was ACTING is judged again: its operator event, if it was
  written, makes the core refuse a second one, so no saga is acted on twice;
- an item is marked ACTING by a claim (`claim_batch_item`: only if no other run changed it
  since it was read, the claiming run's owner id in its detail), so two runs of one batch at
  once (two `batch resume ID`) share its sagas instead of each acting on all of them; an item
  ACTING for a live process of this host is left to it.

Redriving actions (resume, retry-step, fork) first ask a `BreakerGate` whether the service
the saga would call next has its breaker open (shared state through the `BreakerStore`):
such a saga is skipped, "breaker open: <service>", unless the gate waits (bounded) for it.

`exit_code` is the one rule for a batch's exit: 1 if any saga failed, 4 if none was acted on
and some were refused, 0 otherwise.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sagalab.orchestrator import operations
from sagalab.orchestrator.breaker_board import DEFAULT_BREAKER, BreakerConfig, stored_state
from sagalab.orchestrator.errors import SagaError, SagaNotFoundError
from sagalab.orchestrator.leases import new_owner, owner_is_dead
from sagalab.orchestrator.policies.breaker import OPEN
from sagalab.orchestrator.saga import SagaState, SagaStatus, blocking_step
from sagalab.orchestrator.sagafilter import MAX_LIMIT, SagaFilter
from sagalab.orchestrator.store import (
    ACTED,
    ACTING,
    FAILED,
    SKIPPED,
    BatchItem,
    BatchRecord,
    BreakerStore,
    Store,
)

__all__ = [
    "ACTIONS",
    "MAX_BATCH",
    "MAX_RPS",
    "REDRIVES",
    "BatchRunner",
    "BreakerGate",
    "BulkOptions",
    "Summary",
    "exit_code",
    "next_service",
    "own_sets",
    "start_batch",
    "summarize",
]

#: The actions a batch can carry, and those that call services forward again (redrives).
ACTIONS = ("resume", "rollback", "retry-step", "fork", "cancel")
REDRIVES = ("resume", "retry-step", "fork")
#: The fastest pace a batch may be asked for (sagas a second), and the most sagas in one.
MAX_RPS = 1000.0
MAX_BATCH = MAX_LIMIT

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class BulkOptions:
    """The action's own arguments, the same for every saga of the batch (recorded with it)."""

    reason: str | None = None
    force: bool = False
    from_step: str | None = None
    sets: tuple[str, ...] = ()
    wait_breaker: float | None = None  # seconds to wait for an open breaker; None: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the batch record's `options`)."""
        return {
            "reason": self.reason,
            "force": self.force,
            "from_step": self.from_step,
            "sets": list(self.sets),
            "wait_breaker": self.wait_breaker,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BulkOptions:
        """The options `to_dict` gave."""
        return cls(
            reason=data.get("reason"),
            force=bool(data.get("force")),
            from_step=data.get("from_step"),
            sets=tuple(data.get("sets") or ()),
            wait_breaker=data.get("wait_breaker"),
        )


def start_batch(
    store: Store,
    action: str,
    criteria: SagaFilter,
    options: BulkOptions,
    saga_ids: list[str],
    *,
    clock: Clock = time.time,
) -> BatchRecord:
    """Record a new batch of `action` over `saga_ids` (as matched now, in that order)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown bulk action {action!r}")
    return store.create_batch(
        batch_id="b-" + uuid.uuid4().hex[:12],
        action=action,
        filter=criteria.to_dict(),
        options=options.to_dict(),
        saga_ids=saga_ids,
        now=clock(),
    )


_OWN_INPUT = re.compile(r"\{input\.([A-Za-z0-9_-]+)\}")


def own_sets(sets: tuple[str, ...], payload: Mapping[str, Any]) -> list[str]:
    """A bulk fork's `--set` edits for one saga: `{input.KEY}` in a value is that saga's own
    input value (`--set 'input.order_id={input.order_id}-r1'` gives each fork a new order).
    KeyError naming the key if the saga's input has none."""

    def value(match: re.Match[str]) -> str:
        found = payload[match[1]]
        return found if isinstance(found, str) else json.dumps(found)

    edited = []
    for item in sets:
        path, eq, raw = item.partition("=")
        edited.append(path + eq + _OWN_INPUT.sub(value, raw))
    return edited


def next_service(state: SagaState, action: str, from_step: str | None = None) -> str | None:
    """The service the saga calls first if `action` redrives it (None: no call, or a step
    of in-process handlers)."""
    if action == "fork":
        step = from_step
    elif action == "retry-step":
        blocked = blocking_step(state)
        step = blocked[0] if blocked else None
    elif state.status is SagaStatus.COMPENSATING:
        step = state.next_to_compensate()
    else:
        step = state.next_forward()
    if step is None or step not in state.steps:
        return None
    return state.flow.step(step).service


class BreakerGate:
    """Whether a service's shared breaker keeps calls out now (open, its reset timeout not
    yet over), read through the `BreakerStore`; waits for it, bounded, when told to."""

    POLL = 0.2

    def __init__(
        self,
        states: BreakerStore,
        configs: Mapping[str, BreakerConfig],
        *,
        wait: float | None = None,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.states = states
        self.configs = configs
        self.wait = wait
        self.clock = clock
        self.sleep = sleep

    def _open(self, service: str) -> bool:
        now = self.clock()
        for row in self.states.rows():
            if row["name"] != service:
                continue
            state = stored_state(service, row["state"], row["opened_time"], now=now)
            if state != OPEN:
                return False
            reset = self.configs.get(service, DEFAULT_BREAKER).reset_timeout
            opened = row["opened_time"]
            return opened is None or now < float(opened) + reset
        return False

    def refusal(self, service: str) -> str | None:
        """ "breaker open: SERVICE" while it is open (after waiting, if told to), else None."""
        if not self._open(service):
            return None
        if self.wait is None:
            return f"breaker open: {service}"
        deadline = self.clock() + self.wait
        while self.clock() < deadline:
            self.sleep(min(self.POLL, max(0.0, deadline - self.clock())))
            if not self._open(service):
                return None
        return f"breaker open: {service} (still open after waiting {self.wait:g}s)"


@dataclass
class Summary:
    """What a batch did so far, saga by saga."""

    batch: BatchRecord
    acted: list[BatchItem] = field(default_factory=list)
    skipped: list[BatchItem] = field(default_factory=list)
    failed: list[BatchItem] = field(default_factory=list)
    pending: list[BatchItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, then every saga with its outcome and why."""
        return {
            "batch": self.batch.id,
            "action": self.batch.action,
            "matched": len(self.batch.items),
            "acted": len(self.acted),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "pending": len(self.pending),
            "exit_code": exit_code(self),
            "sagas": [
                {"id": i.saga_id, "outcome": i.outcome or "pending", "detail": i.detail}
                for i in self.batch.items
            ],
        }


def summarize(batch: BatchRecord) -> Summary:
    """The batch's items sorted by outcome."""
    summary = Summary(batch)
    for item in batch.items:
        {ACTED: summary.acted, SKIPPED: summary.skipped, FAILED: summary.failed}.get(
            item.outcome or "", summary.pending
        ).append(item)
    return summary


def exit_code(summary: Summary) -> int:
    """1 if any saga failed; 4 if none was acted on and some were refused (skipped); 0."""
    if summary.failed or summary.pending:
        return 1
    if summary.skipped and not summary.acted:
        return 4
    return 0


def _held_elsewhere(item: BatchItem) -> bool:
    """Whether `item` is ACTING for another process of this host that is still alive (its
    detail names the claiming run: `leases.new_owner`). An ACTING item of a run that died, of
    another host, or from before claims named their run is judged again."""
    owner = item.detail
    if item.outcome != ACTING or owner is None:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return not owner_is_dead(owner)


class BatchRunner:
    """Acts on a batch's sagas not done yet, one at a time, at most `rps` a second."""

    def __init__(
        self,
        store: Store,
        *,
        runner: operations.RunHere | None,
        gate: BreakerGate | None,
        rps: float,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if not 0 < rps <= MAX_RPS:
            raise ValueError(f"rps must be above 0 and at most {MAX_RPS:g}")
        self.store = store
        self.runner = runner
        self.gate = gate
        self.interval = 1.0 / rps
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        #: Who this run is, in the detail of the items it claims (a lease owner id).
        self.owner = new_owner("batch")

    def run(
        self, batch: BatchRecord, *, on_item: Callable[[BatchItem], None] | None = None
    ) -> Summary:
        """Act on every item without an end; return the batch's summary (all of it)."""
        options = BulkOptions.from_dict(batch.options)
        start = self.monotonic()
        for n, item in enumerate(batch.pending()):
            delay = start + n * self.interval - self.monotonic()
            if delay > 0:
                self.sleep(delay)
            if _held_elsewhere(item):
                continue  # another run of this batch, alive, is acting on it
            if not self.store.claim_batch_item(batch.id, item, owner=self.owner, now=self.clock()):
                continue  # another run of this batch claimed it since it was read
            again = item.outcome == ACTING
            outcome, detail = self._one(batch.action, item.saga_id, options)
            if again and outcome == SKIPPED:
                detail = f"{detail} (a run of this batch was cut short while acting on it)"
            self.store.record_batch_outcome(
                batch.id, item.saga_id, outcome=outcome, detail=detail, now=self.clock()
            )
            if on_item is not None:
                on_item(BatchItem(item.saga_id, item.position, outcome, detail, self.clock()))
        done = self.store.load_batch(batch.id)
        if not done.pending():
            self.store.finish_batch(batch.id, now=self.clock())
        return summarize(self.store.load_batch(batch.id))

    def _one(self, action: str, saga_id: str, options: BulkOptions) -> tuple[str, str | None]:
        """(outcome, why) of acting on one saga."""
        try:
            step = None
            if action in REDRIVES:
                _, _, state = self.store.state(saga_id)
                if action == "retry-step":
                    blocked = blocking_step(state)
                    if blocked is None:
                        return SKIPPED, f"saga is {state.status.value}, not failed"
                    step = blocked[0]
                service = next_service(state, action, options.from_step)
                if self.gate is not None and service is not None:
                    refusal = self.gate.refusal(service)
                    if refusal is not None:
                        return SKIPPED, refusal
            result = self._act(action, saga_id, step, options)
        except SagaNotFoundError as exc:
            return SKIPPED, str(exc)
        except (operations.ActionRefused, operations.UnknownSaga, operations.BadArgument) as exc:
            return SKIPPED, str(exc)
        except SagaError as exc:
            return FAILED, str(exc)
        detail = f"{result.carried.value}: {result.saga_id} {result.status.value}"
        if result.message:
            detail += f" ({result.message})"
        return ACTED, detail

    def _act(
        self, action: str, saga_id: str, step: str | None, options: BulkOptions
    ) -> operations.OperationResult:
        """The single action, as `orchestrate ACTION ID` carries it out."""
        if action == "resume":
            # As the other actions do: queued for the workers when this process cannot run
            # the flow (no services known here), rather than failing to.
            flow = self.store.load(saga_id).flow
            if self.runner is None or self.runner.unavailable(flow) is not None:
                return operations.requeue(self.store, saga_id)
            return operations.resume(self.store, saga_id, runner=self.runner)
        if action == "rollback":
            return operations.rollback(
                self.store,
                saga_id,
                force=options.force,
                reason=options.reason or "operator rollback",
                runner=self.runner,
            )
        if action == "cancel":
            return operations.cancel(
                self.store, saga_id, reason=options.reason or "operator cancel", runner=self.runner
            )
        if action == "retry-step":
            assert step is not None
            return operations.retry_step(self.store, saga_id, step, runner=self.runner)
        if action == "fork":
            assert options.from_step is not None
            payload = self.store.load(saga_id).input
            try:
                sets = own_sets(options.sets, payload)
            except KeyError as exc:
                raise operations.BadArgument(
                    f"its input has no {exc.args[0]!r} for --set", action="fork", saga_id=saga_id
                ) from None
            _, result = operations.fork(
                self.store,
                saga_id,
                options.from_step,
                sets=sets,
                force=options.force,
                runner=self.runner,
            )
            return result
        raise ValueError(f"unknown bulk action {action!r}")
