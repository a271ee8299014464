"""Both runtimes run one saga driver: same journal, same commits, same breakers, same end.

The real runtime here is the real `SagaRunner` over a real SQLite file, with the real
`HttpExecutor` (its httpx client on a `MockTransport` that answers from a script, so the real
classification of responses and httpx errors runs) and the real shared `BreakerBoard`. The
simulated one is the real SimPy `Orchestrator` (replicas, queue, crash and reaper) calling
scripted simulated services that answer the same script with what `orchestrator.outcomes`
says those answers mean. Both clocks move only by the same call latencies, timeouts and waits
(commits take no time), so even the timestamps must agree.

For generated flows (steps with and without compensations, a pivot, retriable steps after
it, per-step retry limits, one or two services, breakers that open after one to three
failures) and scripted outcome sequences (success, 4xx, 5xx, 503 and 429 with Retry-After,
409 in_progress, timeouts, dropped and refused connections; open breakers refuse what
follows), the two must produce the same journal (every event, in order), the same commits
(the same events in each), the same breaker transitions and the same final status. With a
crash, both lose the same uncommitted events: the real runner stops at its k-th commit and a
new runner resumes after the lease; the simulated replica crashes during its k-th commit and
another replica resumes the saga when the lease expires.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flowgen
import httpx
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagalab.orchestrator.breaker_board import BreakerBoard, BreakerConfig
from sagalab.orchestrator.executors import HttpExecutor
from sagalab.orchestrator.flow import FlowDefinition, flow_from_dict
from sagalab.orchestrator.outcomes import (
    SUCCESS,
    Transport,
    Verdict,
    classify_status,
    classify_transport,
)
from sagalab.orchestrator.policies.breaker import Breaker
from sagalab.orchestrator.runner import SagaRunner, start_saga
from sagalab.orchestrator.saga import Event, EventType, SagaStatus
from sagalab.orchestrator.sqlite_store import SQLiteStore
from sagalab.simulator.orchestration import Orchestrator, Saga
from sagalab.simulator.transcript import Stamp, stamped

LATENCY = 0.25  # every answered call takes this long, in both runtimes
LEASE = 5.0  # a crashed saga is resumed this long after the crash
CRASH_DELAY = 0.5  # the simulated replica dies this far into its k-th commit
SERVICES = ("alpha", "beta")
RESET_TIMEOUT = 3.0

# What each scripted outcome is on the wire (for the real executor) and, through the shared
# classification, in the simulation. The texts match, so the journaled failures match too.
KINDS = (
    "ok",
    "422",
    "500",
    "503",
    "429",
    "409_in_progress",
    "timeout",
    "dropped",
    "refused",
)
IN_PROGRESS_BODY = '{"error": "in_progress"}'
SIMULATED: dict[str, Verdict] = {
    "ok": SUCCESS,
    "422": classify_status(422, "rejected"),
    "500": classify_status(500, "boom"),
    "503": classify_status(503, "unavailable", 1.0),
    "429": classify_status(429, "slow down", 2.0),
    "409_in_progress": classify_status(409, IN_PROGRESS_BODY, 1.0),
    "timeout": classify_transport(Transport.TIMEOUT, "ReadTimeout: timed out"),
    "dropped": classify_transport(Transport.DROPPED, "ReadError: connection reset"),
    "refused": classify_transport(Transport.NOT_SENT, "ConnectError: connection refused"),
}


def wire_answer(kind: str, request: httpx.Request) -> httpx.Response:
    """The real answer for `kind` (or the httpx error it raises)."""
    if kind == "timeout":
        raise httpx.ReadTimeout("timed out", request=request)
    if kind == "dropped":
        raise httpx.ReadError("connection reset", request=request)
    if kind == "refused":
        raise httpx.ConnectError("connection refused", request=request)
    answers = {
        "ok": (200, '{"ok": true}', {}),
        "422": (422, "rejected", {}),
        "500": (500, "boom", {}),
        "503": (503, "unavailable", {"Retry-After": "1"}),
        "429": (429, "slow down", {"Retry-After": "2"}),
        "409_in_progress": (409, IN_PROGRESS_BODY, {"Retry-After": "1"}),
    }
    code, text, headers = answers[kind]
    return httpx.Response(code, text=text, headers=headers, request=request)


class Script:
    """The outcomes of the calls, in the order they are made; then every call succeeds."""

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = list(kinds)
        self.calls: list[tuple[str, str]] = []  # (step path, outcome) as sent

    def next(self, what: str) -> str:
        kind = self.kinds.pop(0) if self.kinds else "ok"
        self.calls.append((what, kind))
        return kind


# --- generated flows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    flow: dict[str, Any]
    kinds: list[str]
    fail_max: dict[str, int]
    crash_at: int | None = None  # crash at this commit (1-based), if any

    def definition(self) -> FlowDefinition:
        return flow_from_dict(self.flow)


def flows() -> st.SearchStrategy[dict[str, Any]]:
    return flowgen.flows(SERVICES, jitter=False)


@st.composite
def cases(draw: st.DrawFn, crash: bool = False) -> Case:
    return Case(
        flow=draw(flows()),
        kinds=draw(st.lists(st.sampled_from(KINDS), max_size=12)),
        fail_max={s: draw(st.integers(1, 3)) for s in SERVICES},
        crash_at=draw(st.integers(1, 8)) if crash else None,
    )


# --- what a run shows ---------------------------------------------------------------------------


@dataclass
class Run:
    journal: list[Event] = field(default_factory=list)
    commits: list[list[Event]] = field(default_factory=list)
    transitions: list[tuple[str, float, str, str]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    status: SagaStatus | None = None
    crashed: bool = False


class Crash(Exception):
    """The real runner's process dies here (nothing after this point happens)."""


class RecordingStore(SQLiteStore):
    """The real SQLite store, noting each commit (and dying at commit `crash_at`)."""

    def __init__(self, path: Path, run: Run, crash_at: int | None) -> None:
        super().__init__(path)
        self.run = run
        self.crash_at = crash_at

    def append(self, saga_id: str, entries: Any, **kw: Any) -> int:
        if self.crash_at is not None and len(self.run.commits) + 1 == self.crash_at:
            self.crash_at = None
            raise Crash  # before the write: what this commit carried is lost
        seq = super().append(saga_id, entries, **kw)
        self.run.commits.append([e.event for e in entries])
        return seq


class Clock:
    """The real runner's clock: moves only when it sleeps or a call takes time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_real(case: Case) -> Run:
    run = Run()
    flow = case.definition()
    script = Script(case.kinds)
    clock = Clock()
    timeouts = {f"/{s.name}": s.timeout for s in flow.steps}

    def answer(request: httpx.Request) -> httpx.Response:
        kind = script.next(request.url.path)
        path = request.url.path.removesuffix("/undo")
        clock.now += timeouts[path] if kind == "timeout" else LATENCY
        return wire_answer(kind, request)

    configs = {
        s: BreakerConfig(fail_max=case.fail_max.get(s, 5), reset_timeout=RESET_TIMEOUT)
        for s in SERVICES
    }
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        db = Path(tmp) / "sagas.db"
        board = BreakerBoard(
            db, configs, owner="parity", on_transition=lambda *t: run.transitions.append(t)
        )
        client = httpx.Client(transport=httpx.MockTransport(answer))
        executor = HttpExecutor({s: f"http://{s}.test" for s in SERVICES}, client=client)
        store = RecordingStore(db, run, case.crash_at)
        try:
            record, _ = start_saga(store, flow, {}, now=0.0, queue=False)

            def runner(on: SQLiteStore) -> SagaRunner:
                return SagaRunner(
                    on,
                    executor,
                    clock=clock,
                    sleep=clock.sleep,
                    rng=random.Random(0),
                    breakers=board,
                )

            try:
                result = runner(store).run(record.id)
            except Crash:
                run.crashed = True
                store.close()
                # another worker takes the saga over once the lease has run out
                clock.now = clock.now + CRASH_DELAY + LEASE
                store = RecordingStore(db, run, None)
                result = runner(store).run(record.id)
            run.journal = [e.event for e in store.journal(record.id)]
            stored = store.load(record.id).status
            assert stored is result.status, (stored, result.status)
            run.status = result.status
        finally:
            store.close()
            executor.close()
            board.close()
    run.calls = script.calls
    return run


class ScriptedService:
    """A simulated service answering from the script: the outcome's verdict after its time."""

    def __init__(self, env: simpy.Environment, script: Script, paths: dict[tuple[str, Any], str]):
        self.env = env
        self.script = script
        self.paths = paths

    def call(self, saga: Any, step: str, phase: Any, timeout: float) -> Any:
        kind = self.script.next(self.paths[(step, phase)])
        event = self.env.timeout(timeout if kind == "timeout" else LATENCY)
        return _SimCall(event, SIMULATED[kind])


@dataclass
class _SimCall:
    event: simpy.Event
    outcome: Verdict


class LoggedSaga(Saga):
    """A simulated saga that notes what each commit added to its journal (a commit the
    driver yielded, or one served from the transcript, kept unbuilt)."""

    def __init__(self, commits: list[list[Event]], *args: Any) -> None:
        super().__init__(*args)
        self.commits = commits

    def commit(self, events: list[Event]) -> None:
        self.commits.append(list(events))
        super().commit(events)

    def commit_served(self, stamp: Stamp) -> None:
        self.commits.append(stamped(*stamp))
        super().commit_served(stamp)


def run_simulated(case: Case) -> Run:
    run = Run()
    flow = case.definition()
    script = Script(case.kinds)
    env = simpy.Environment()
    paths = {}
    for s in flow.steps:
        paths[(s.name, "action")] = f"/{s.name}"
        paths[(s.name, "compensation")] = f"/{s.name}/undo"
    service = ScriptedService(env, script, paths)

    def noting(service: str) -> Callable[[float, str, str], None]:
        return lambda now, old, new: run.transitions.append((service, now, old, new))

    breakers = {
        s: Breaker(
            s,
            fail_max=case.fail_max.get(s, 5),
            reset_timeout=RESET_TIMEOUT,
            on_transition=noting(s),
        )
        for s in SERVICES
    }
    done: list[Saga] = []
    writes = 0
    orchestrator: Orchestrator

    def db_write() -> float:
        nonlocal writes
        writes += 1
        if writes == case.crash_at:  # the replica dies while this commit is being written
            timer = env.timeout(CRASH_DELAY)
            timer.callbacks.append(lambda _e: orchestrator.crash(1))
            run.crashed = True
            return 2 * CRASH_DELAY
        return 0.0

    orchestrator = Orchestrator(
        env,
        rng=random.Random(0),
        flow=flow,
        services={s: service for s in SERVICES},  # type: ignore[misc]
        breakers=breakers,
        concurrency=1,
        lease=LEASE,
        reaper_interval=0.0,
        startup_delay=0.0,
        db_write=db_write,
        autoscale=None,
        autoscale_interval=1.0,
        finished=lambda saga, _now: done.append(saga),
    )
    saga = LoggedSaga(run.commits, 1, flow, 0.0, True)
    orchestrator.enqueue(saga)
    orchestrator.start_replica(0.0)  # takes the saga
    orchestrator.start_replica(0.0)  # takes it over after a crash
    env.run(until=100_000)
    assert done == [saga], "the simulated saga did not finish"
    assert saga.resumed == (1 if run.crashed else 0)
    run.journal = list(saga.journal)
    run.status = saga.state.status
    run.calls = script.calls
    return run


def assert_same(real: Run, simulated: Run) -> None:
    assert real.crashed == simulated.crashed
    assert real.calls == simulated.calls, "the two runtimes made different calls"
    assert real.journal == simulated.journal, "the journals differ"
    assert real.commits == simulated.commits, "the commits differ"
    assert real.transitions == simulated.transitions, "the breakers moved differently"
    assert real.status is simulated.status


PARITY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PARITY
@given(cases())
def test_the_runner_and_the_simulator_journal_and_commit_the_same(case: Case) -> None:
    assert_same(run_real(case), run_simulated(case))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(crash=True))
def test_a_crash_between_commits_loses_the_same_in_both_runtimes(case: Case) -> None:
    assert_same(run_real(case), run_simulated(case))


# --- named cases: what each rule looks like in both ---------------------------------------------


def _flow(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "named", "version": 1, "steps": list(steps)}


def _step(name: str, **kw: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "name": name,
        "service": "alpha",
        "action": {"method": "POST", "path": f"/{name}"},
        "timeout": 1.5,
        "retry": {"max_attempts": 2, "initial_delay": 0.5, "jitter": False},
        "compensation_retry": {"max_attempts": 3, "initial_delay": 0.5, "jitter": False},
        "compensation": {"method": "POST", "path": f"/{name}/undo"},
    }
    step.update(kw)
    return step


def both(case: Case) -> Run:
    real, simulated = run_real(case), run_simulated(case)
    assert_same(real, simulated)
    return real


def _types(run: Run) -> Iterator[tuple[str, str | None, str | None]]:
    for e in run.journal:
        yield (e.type.value, e.step, e.phase.value if e.phase else None)


def test_a_503_compensates_the_step_in_both_runtimes() -> None:
    """A 503 may have applied: a rollback compensates the step in both (issue 9's first)."""
    case = Case(_flow(_step("a"), _step("b")), ["ok", "503", "503"], {"alpha": 5})
    run = both(case)
    assert run.status is SagaStatus.ROLLED_BACK
    undone = [e.step for e in run.journal if e.type is EventType.ATTEMPT_SUCCEEDED and e.phase]
    assert undone == ["a", "b", "a"]  # a's action, then b's and a's compensations


def test_a_409_in_progress_does_not_open_the_breaker_in_either_runtime() -> None:
    """A 409 in_progress is a healthy answer (issue 9's second): fail_max 1 stays closed."""
    case = Case(_flow(_step("a")), ["409_in_progress", "ok"], {"alpha": 1})
    run = both(case)
    assert run.status is SagaStatus.COMPLETED and run.transitions == []


def test_an_open_breaker_fails_an_action_fast_and_delays_a_compensation_alike() -> None:
    """Two 500s open alpha's breaker: b's third try is refused, b's undo waits for the probe."""
    retry3 = {"max_attempts": 3, "initial_delay": 0.5, "jitter": False}
    case = Case(_flow(_step("a"), _step("b", retry=retry3)), ["ok", "500", "500"], {"alpha": 2})
    run = both(case)
    assert run.status is SagaStatus.ROLLED_BACK
    refused = [e for e in run.journal if e.failure and "circuit breaker" in e.failure.error]
    assert [(e.step, e.phase and e.phase.value, e.attempt) for e in refused] == [("b", "action", 3)]
    # b's compensation was not refused (it waited for the half-open probe) and succeeded
    assert [(t[0], t[2], t[3]) for t in run.transitions] == [
        ("alpha", "closed", "open"),
        ("alpha", "open", "half-open"),
        ("alpha", "half-open", "closed"),
    ]


def test_the_commit_before_each_call_carries_the_previous_outcome_in_both() -> None:
    run = both(Case(_flow(_step("a"), _step("b")), [], {"alpha": 5}))
    assert [[e.type.value for e in c] for c in run.commits] == [
        ["attempt_started"],
        ["attempt_succeeded", "attempt_started"],
        ["attempt_succeeded", "saga_completed"],
    ]
