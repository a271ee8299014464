"""The driver's transcript (simulator/transcript.py) against the unmemoized driver.

Several sagas of one generated flow share one transcript, each with its own replies (successes,
unwell successes, answers with a detail, failures of every kind, breaker refusals) and its own
start time: every effect served must equal the real driver's, the journal fold must equal the
driver's state at the end, and the shared `rng` must be drawn exactly alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import flowgen
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagalab.orchestrator.driver import (
    AskBreaker,
    Call,
    Commit,
    Done,
    Effect,
    WaitUntil,
    breaker_gates,
    drive,
)
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.outcomes import (
    SUCCESS,
    Transport,
    classify_status,
    classify_transport,
)
from sagalab.orchestrator.saga import Event, EventType, SagaState
from sagalab.simulator.config import load_scenario
from sagalab.simulator.model import simulate
from sagalab.simulator.transcript import Transcript, TranscriptRun, stamped

SERVICES = ("alpha", "beta", "gamma")  # gamma has no breaker
ANSWERS: dict[str, Any] = {
    "ok": SUCCESS,
    "ok_unwell": SUCCESS,  # a success reported with the service unwell
    "ok_detail": SUCCESS,  # a success with the interpreter's detail
    "422": classify_status(422, "rejected"),
    "500": classify_status(500, "boom"),
    "503": classify_status(503, "unavailable", 1.0),
    "429": classify_status(429, "slow down", 2.0),
    "timeout": classify_transport(Transport.TIMEOUT, "timed out"),
    "refused": classify_transport(Transport.NOT_SENT, "connection refused"),
}
MAX_EFFECTS = 300  # a saga's run is cut here (a script of refusals could wait a long time)


def flows() -> st.SearchStrategy[dict[str, Any]]:
    return flowgen.flows(SERVICES, jitter=True)


@dataclass(frozen=True)
class Script:
    """One saga's replies: call answers and breaker answers in order (then ok and allowed)."""

    start: float
    answers: list[str]
    refusals: list[float | None]  # per breaker question: None lets it through
    latencies: list[float]


scripts = st.builds(
    Script,
    start=st.floats(0.0, 1000.0),
    answers=st.lists(
        st.sampled_from(sorted(ANSWERS)) | st.just("ok") | st.just("ok"),  # mostly successes
        max_size=10,
    ),
    refusals=st.lists(st.none() | st.none() | st.floats(0.0, 30.0), max_size=6),
    latencies=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=5),
)


class Responder:
    """Replies to a driver's effects as a runtime would, from a `Script`."""

    def __init__(self, script: Script) -> None:
        self.now = script.start
        self.answers = list(script.answers)
        self.refusals = list(script.refusals)
        self.latencies = script.latencies
        self.turn = 0

    def _later(self) -> float:
        self.turn += 1
        self.now += self.latencies[self.turn % len(self.latencies)]
        return self.now

    def reply(self, effect: Effect) -> Any:
        kind = type(effect)
        if kind is AskBreaker:
            return self.refusals.pop(0) if self.refusals else None
        if kind is Call:
            answer = self.answers.pop(0) if self.answers else "ok"
            failure = ANSWERS[answer]
            unwell = answer == "ok_unwell" or (failure is not SUCCESS and failure[1])
            detail = {"sent": answer} if answer == "ok_detail" else None
            return (self._later(), failure[0], unwell, detail)
        if kind is Commit:
            return self._later()
        if kind is WaitUntil:
            self.now = max(self.now, effect.until)  # type: ignore[union-attr]
            return self.now
        return None


def run(
    first: Effect, send: Any, script: Script, served: TranscriptRun | None = None
) -> tuple[list[Effect], list[Event]]:
    """The effects of one run and the events it committed. For a `served` run, each effect
    as `full` rebuilds it, and a commit's events as the simulator keeps them (`stamp`)."""
    responder = Responder(script)
    effects: list[Effect] = []
    journal: list[Event] = []
    effect = first
    while True:
        whole = effect if served is None else served.full(effect)
        effects.append(whole)
        if type(effect) is Done or len(effects) >= MAX_EFFECTS:
            break
        if type(effect) in (Call, Commit):
            events = whole.events  # type: ignore[union-attr]
            if served is not None and served.from_tree:
                events = stamped(*served.stamp())
                assert events == whole.events  # type: ignore[union-attr]
            journal.extend(events)
        effect = send(responder.reply(effect))
    return effects, journal


def progress(state: SagaState) -> tuple[Any, ...]:
    return (
        state.status,
        state.reason,
        state.applied_order,
        state.pivot_passed,
        state.open_attempt,
        state.kept,
        list(state.steps.values()),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flow=flows(), sagas=st.lists(scripts, min_size=1, max_size=8), seed=st.integers(0, 9))
def test_served_runs_are_the_drivers_effect_by_effect(
    flow: dict[str, Any], sagas: list[Script], seed: int
) -> None:
    definition: FlowDefinition = flow_from_dict(flow)
    gates = breaker_gates(definition, {"alpha", "beta"})
    real_rng, memo_rng = random.Random(seed), random.Random(seed)
    transcript = Transcript(definition, gates, memo_rng)
    for i, script in enumerate(sagas):
        created = Event(EventType.SAGA_CREATED, script.start)
        state = SagaState(definition)
        state.apply(created)
        driver = drive(state, saga_id=i, now=script.start, rng=real_rng, gates=gates)
        expected, _ = run(next(driver), driver.send, script)

        served = transcript.start(created, i, script.start)
        effects, journal = run(served.first, served.send, script, served)

        assert effects == expected
        assert real_rng.getstate() == memo_rng.getstate()
        if type(effects[-1]) is Done:  # everything is committed: the journal is the truth
            folded = SagaState.replay(definition, [created, *journal])
            assert progress(folded) == progress(state)
        if served.state is not None:  # the driver ran: its state is the saga's
            assert progress(served.state) == progress(state)
    assert transcript.nodes <= 200  # success paths only: a handful of nodes per flow


def test_a_run_of_the_baseline_serves_most_effects_from_the_transcript(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[Transcript] = []
    original = Transcript.__init__

    def keep(self: Transcript, *args: Any) -> None:
        original(self, *args)
        served.append(self)

    monkeypatch.setattr(Transcript, "__init__", keep)
    report = simulate(load_scenario("baseline"), seed=1, duration=20.0).report
    (transcript,) = served
    assert report["sagas"]["created"] > 500
    # a few sagas with a failure run the driver; the rest are served, and the tree stays small
    assert transcript.driven < report["sagas"]["created"] / 10
    assert transcript.served > 0.9 * report["sagas"]["created"]
    assert transcript.nodes < 50
