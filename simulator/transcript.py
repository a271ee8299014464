"""The saga driver's effects, remembered: a fresh saga's run served from what the driver said.

Why
---
The saga driver (`orchestrator.driver.drive`) is pure: from the same state, given the same
replies, it yields the same effects. Most simulated sagas start from the same state (just
created) and get the same kind of replies (every call succeeds, every breaker lets it
through), so the driver would compute the same decisions for each of them again, through
`decide`, `apply` and a generator round trip per effect: about a third of a simulated
request's cost. A `Transcript` runs the real driver the first time a path is seen and keeps
what it yielded; later sagas on that path are served from it.

What is remembered, and why that is exact
-----------------------------------------
A transcript is a tree. Its root is the first effect of `drive` on a saga whose journal is
just its SAGA_CREATED (the only start it serves; a resumed saga runs the driver itself). An
edge is a reply *kind* that tells the driver nothing but the time:

* `None` to an `AskBreaker` (the call may go out), a `RecordOutcome` or a `BreakerRefused`;
* a success `Answer` without a detail (`(at, None, unwell, None)`), keyed on `unwell`;
* the time after a `Commit` when the driver's next effect is `Done` (which carries no time).

Every other reply (a refusal's retry-after, a failure, a detail, a `WaitUntil`'s time, a
commit's time the driver goes on with) is a miss. A node is kept only when its effect holds
nothing that varies between sagas but the saga's id and the time: an `AskBreaker`,
`RecordOutcome` or `Done` as it is (they carry no time), or a `Call` or `Commit` without
details whose events all have the current time and otherwise only a type, step, phase and
attempt. Such an effect is this saga's but for its id and its time: it is handed out as
recorded, and what differs (a commit's events) is kept unbuilt as `(specs, time)` until the
saga's journal is read (`TranscriptRun.stamp`; `full` rebuilds the whole effect).

Along such a path from a fresh saga, no attempt has failed, so `decide` never reads the time
(retry delays, `not_before`) or draws from `rng`: the driver's effects depend on the replies'
kinds and are stamped with their times. `tests/test_sim_transcript.py` holds this to the
unmemoized driver on generated flows and reply sequences (failures, refusals, unwell
answers, details), effect by effect and in the final state.

A miss leaves the tree: the real driver is started on the saga's first state and fed the
replies the run had so far (it yields the effects already served, and draws nothing, since
none of them drew), then goes on by itself; while its path stays inside the kinds above,
what it yields is added to the tree.

The state
---------
On a served path the saga's `SagaState` is not folded step by step: the journal is the truth,
and `Saga.state` folds it when read (the simulator reads it when the saga ends, or after a
crash). The driver's own state, on a miss, is the fold of the same events.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from sagalab.orchestrator.driver import (
    AskBreaker,
    BreakerRefused,
    Call,
    Commit,
    Done,
    Effect,
    Gates,
    RecordOutcome,
    drive,
)
from sagalab.orchestrator.flow import FlowDefinition
from sagalab.orchestrator.policies.retry import UniformSource
from sagalab.orchestrator.saga import Event, SagaState

__all__ = ["MAX_NODES", "Stamp", "Transcript", "TranscriptRun", "stamped"]

#: Most nodes one transcript keeps (a flow's success paths need a few dozen); past it, new
#: paths run the driver without being remembered.
MAX_NODES = 4096

# Effect kinds of a node: given back as is, or rebuilt with the saga's id and time.
_CONSTANT, _CALL, _COMMIT = 0, 1, 2
# What a node's reply is, for `TranscriptRun.send` to pick the edge (`_key` says the same).
_ASKED, _IGNORED, _ANSWERED, _TIMED, _LAST = 0, 1, 2, 3, 4
_MISS = object()  # a reply no edge may be keyed on
_TIME = "t"  # the edge of a commit's reply before `Done`

# What an event must be, beside its type, step, phase and attempt, to be rebuilt from those.
_Spec = tuple[Any, Any, Any, int]

#: A served commit's events, unbuilt: their specs (type, step, phase, attempt) and their time.
Stamp = tuple[tuple[_Spec, ...], float]


def stamped(specs: tuple[_Spec, ...], at: float) -> list[Event]:
    """The events `specs` describe, at time `at` (a served commit's events, built)."""
    return [Event(t, at, s, p, a) for t, s, p, a in specs]


class _Node:
    """One effect of the driver, and the effects that follow it by reply kind."""

    __slots__ = ("kind", "reply", "effect", "specs", "step", "phase", "attempt", "next")

    def __init__(self, effect: Effect) -> None:
        self.effect = effect  # given back as is for _CONSTANT; the recorded one otherwise
        self.specs: tuple[_Spec, ...] = ()
        self.step: Any = None
        self.phase: Any = None
        self.attempt = 0
        self.next: dict[object, _Node] = {}
        if type(effect) is Call:
            self.kind = _CALL
            self.specs = tuple((e.type, e.step, e.phase, e.attempt) for e in effect.events)
            self.step, self.phase, self.attempt = effect.step, effect.phase, effect.attempt
        elif type(effect) is Commit:
            self.kind = _COMMIT
            self.specs = tuple((e.type, e.step, e.phase, e.attempt) for e in effect.events)
        else:
            self.kind = _CONSTANT
        kind = type(effect)
        self.reply = (
            _ASKED
            if kind is AskBreaker
            else _IGNORED
            if kind is RecordOutcome or kind is BreakerRefused
            else _ANSWERED
            if kind is Call
            else _TIMED
            if kind is Commit
            else _LAST
        )

    def build(self, saga_id: object, now: float) -> Effect:
        """This node's effect for a saga `saga_id` at `now`."""
        kind = self.kind
        if kind is _CONSTANT:
            return self.effect
        events = stamped(self.specs, now)
        if kind is _CALL:
            return Call(events, None, saga_id, self.step, self.phase, self.attempt)
        return Commit(events)


def _rebuildable(effect: Effect, now: float) -> bool:
    """Whether `effect` (yielded at `now`) varies between sagas only by their id and time."""
    kind = type(effect)
    if kind is AskBreaker or kind is RecordOutcome or kind is Done:
        return True
    if kind is not Call and kind is not Commit:
        return False
    if effect.details is not None:  # type: ignore[union-attr]
        return False
    return all(
        e == Event(e.type, now, e.step, e.phase, e.attempt)
        for e in effect.events  # type: ignore[union-attr]
    )


def _key(effect: Effect, reply: Any) -> object:
    """The edge `reply` to `effect` takes, or _MISS when the reply says more than the time."""
    kind = type(effect)
    if kind is AskBreaker:
        return None if reply is None else _MISS
    if kind is RecordOutcome or kind is BreakerRefused:
        return None  # the driver ignores the reply
    if kind is Call:
        if reply[1] is None and reply[3] is None:  # (at, failure, unwell, detail)
            return bool(reply[2])
        return _MISS
    if kind is Commit:
        return _TIME  # kept only when `Done` follows (see `TranscriptRun._note`)
    return _MISS


class Transcript:
    """What the driver yielded for fresh sagas of one flow, under one set of breaker gates."""

    def __init__(self, flow: FlowDefinition, gates: Gates, rng: UniformSource) -> None:
        self.flow = flow
        self.gates = gates
        self.rng = rng
        self.root: _Node | None = None
        self.nodes = 0
        self.served = 0  # runs started on the tree
        self.driven = 0  # runs that needed the driver (a miss)

    def start(self, created: Event, saga_id: object, now: float) -> TranscriptRun:
        """Run a saga whose journal is just `created`, from `now`."""
        return TranscriptRun(self, created, saga_id, now)

    def _add(self, parent: _Node | None, key: object, effect: Effect) -> _Node | None:
        if self.nodes >= MAX_NODES:
            return None
        node = _Node(effect)
        self.nodes += 1
        if parent is None:
            self.root = node
        else:
            parent.next[key] = node
        return node


class TranscriptRun:
    """One saga's run: `first` is its first effect; `send(reply)` gives the next, as the
    driver's `send` does. `state` is the driver's state once it had to run (else None: the
    journal is the truth).

    While `from_tree` is true, the last effect given is a node's recorded one, not rebuilt:
    its kind, step, phase, service, attempt and status are this saga's, but a `Call`'s or
    `Commit`'s `events` (and a `Call`'s `saga_id`) are those of the saga that recorded it.
    `stamp()` gives this saga's events unbuilt (what the simulator's journal keeps) and
    `full(effect)` the effect as the driver would have yielded it. Not building them saves
    about a tenth of a simulated request (ten `Event`s, five effects, five lists).
    """

    __slots__ = (
        "transcript",
        "created",
        "saga_id",
        "start",
        "now",
        "node",
        "replies",
        "driver",
        "state",
        "recording",
        "first",
        "from_tree",
    )

    def __init__(self, transcript: Transcript, created: Event, saga_id: object, now: float):
        self.transcript = transcript
        self.created = created
        self.saga_id = saga_id
        self.start = self.now = now
        self.replies: list[Any] = []
        self.driver: Generator[Effect, Any, None] | None = None
        self.state: SagaState | None = None
        self.recording = False
        root = transcript.root
        if root is not None:
            self.node: _Node | None = root
            transcript.served += 1
            self.from_tree = True
            self.first = root.effect
            return
        self.from_tree = False
        self.node = None
        self.first = self._drive()
        if _rebuildable(self.first, now):
            self.node = transcript._add(None, None, self.first)
            self.recording = self.node is not None

    def _drive(self) -> Effect:
        # The real driver from the saga's first state, fed the replies so far: it yields the
        # effects already served (none of which drew from `rng` or read a time but to stamp
        # events), and is where the run goes on from.
        transcript = self.transcript
        transcript.driven += 1
        state = self.state = SagaState(transcript.flow)
        state.apply(self.created)
        driver = self.driver = drive(
            state,
            saga_id=self.saga_id,
            now=self.start,
            rng=transcript.rng,
            gates=transcript.gates,
        )
        effect = next(driver)
        for reply in self.replies:
            effect = driver.send(reply)
        return effect

    def send(self, reply: Any) -> Effect:
        """The effect that follows `reply` to the last one."""
        node = self.node
        if self.driver is None:
            # On the tree: `_key`, inlined (this runs for every effect of most sagas).
            assert node is not None
            how = node.reply
            child: _Node | None = None
            if how is _IGNORED or (how is _ASKED and reply is None):
                child = node.next.get(None)
            elif how is _ANSWERED:
                if reply[1] is None and reply[3] is None:  # (at, failure, unwell, detail)
                    child = node.next.get(bool(reply[2]))
                    if child is not None:
                        self.now = reply[0]
            elif how is _TIMED:
                child = node.next.get(_TIME)
                if child is not None:
                    self.now = reply
            if child is not None:
                self.replies.append(reply)
                self.node = child
                return child.effect
            self.from_tree = False
            self.recording = _key(node.effect, reply) is not _MISS
            self._drive()
        driver = self.driver
        assert driver is not None
        effect = driver.send(reply)
        if self.recording:
            self._note(node, reply, effect)
        return effect

    def stamp(self) -> Stamp:
        """This saga's events of the `Call` or `Commit` just given from the tree, unbuilt."""
        node = self.node
        assert node is not None and self.from_tree
        return node.specs, self.now

    def full(self, effect: Effect) -> Effect:
        """`effect` (the last one given) as the driver yields it for this saga."""
        if not self.from_tree:
            return effect
        assert self.node is not None
        return self.node.build(self.saga_id, self.now)

    def _note(self, node: _Node | None, reply: Any, effect: Effect) -> None:
        # Add `effect` under `node` for `reply`, if both may be kept; else stop recording.
        assert node is not None
        key = _key(node.effect, reply)
        now = reply[0] if type(reply) is tuple else reply if key is _TIME else self.now
        keep = (
            key is not _MISS
            and (key is not _TIME or type(effect) is Done)
            and _rebuildable(effect, now)
        )
        child = node.next.get(key) if keep else None
        if keep and child is None:
            child = self.transcript._add(node, key, effect)
        self.now = now
        self.node = child
        self.recording = child is not None
