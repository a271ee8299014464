"""The real half of `sagalab simulate validate`: one scenario's plan on a loopback stack.

`run_real(plan)` starts a stack of its own in a temporary directory (the plan's gateways,
workers and concurrency; the scenario's breaker settings through a services file the workers
read; no flood protection, since every arrival comes from 127.0.0.1), posts the standing
faults, then drives it with a small open-loop Python client: Poisson arrivals at the
scenario's rate for the plan's duration, each a `POST /v1/sagas` that does not wait for the
one before (an open model, as the simulator's clients; Locust's users are closed loops). A
timer applies the scenario's fault windows in real time; a sampler reads the queue depth
every 0.2 s. After the arrivals it waits (bounded) for the sagas to end, reads the journal
through the store port (as `simulate calibrate` does) and stops the stack: always, also on an
error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from sagalab.edge.errors import StackError
from sagalab.orchestrator.sagafilter import MAX_LIMIT, SagaFilter
from sagalab.orchestrator.stores import open_breaker_store, open_store
from sagalab.simulator.validate import Plan
from sagalab.stack.processes import (
    STATE_FILE,
    StackConfig,
    alive,
    load_state,
    proc_start,
    start,
    stop,
)

__all__ = [
    "DIR_PREFIX",
    "DRAIN_SECONDS",
    "OWNER_FILE",
    "RealRun",
    "claim_directory",
    "owned_directory",
    "remove_stale",
    "run_real",
]

#: The name of each run's stack directory under the temporary directory starts so.
DIR_PREFIX = "sagalab-validate-"
#: The file in it naming the validate process that owns it (pid and start time).
OWNER_FILE = "owner.json"


def claim_directory(parent: Path | None = None) -> Path:
    """A new stack directory under `parent` (default: the temporary directory), with the
    owner file that names this process."""
    path = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent))
    owner = {"pid": os.getpid(), "start": proc_start(os.getpid())}
    (path / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
    return path


def remove_stale(parent: Path | None = None) -> list[Path]:
    """Remove the stack directories of validate runs that died without cleaning up (a
    SIGKILL runs no `finally`); the ones removed.

    A directory is stale when the process its owner file names is gone (or its pid now
    belongs to a process started at another time) and none of its stack's components still
    runs (they stop when their parent dies, but a moment after it). A directory without an
    owner file (just created, or another version's) is left alone: not ours to judge.
    """
    removed: list[Path] = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
            pid, started = int(owner["pid"]), owner["start"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        now = proc_start(pid)
        if now is not None and (started is None or now == started):
            continue  # its validate still runs
        if (path / STATE_FILE).exists():
            try:
                if any(alive(c) for c in load_state(path).components):
                    continue  # its components have not yet seen their parent go
            except StackError:
                pass  # a state file cut short: nothing in it to wait for
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    return removed


@contextmanager
def owned_directory() -> Iterator[Path]:
    """A stack directory of this process, removed on the way out; the ones that SIGKILLed
    validate runs left are removed first (`remove_stale`)."""
    remove_stale()
    path = claim_directory()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: The longest wait after the last arrival for the sagas to end (unfinished ones are counted).
DRAIN_SECONDS = 30.0
SAMPLE_EVERY = 0.2
#: Sagas run one at a time before the arrivals, with no fault posted, to measure the stack's
#: own path (HTTP hops, commits, worker pickup); their idempotency keys start with BASE_KEY.
BASE_SAGAS = 12
BASE_KEY = "vbase-"
BASE_WARMUP = 3
_TERMINAL = ("completed", "rolled_back", "failed")


@dataclass
class RealRun:
    """What the stack did: end-to-end seconds of the ended sagas, statuses, breaker
    transitions (t from the first arrival, service, new state), peak sampled queue depth."""

    e2e: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    transitions: list[tuple[float, str, str]] = field(default_factory=list)
    peak_depth: int = 0
    submitted: int = 0
    refused: int = 0
    until: float = 0.0
    stack_gone: bool = False
    #: The stack's own path: end-to-end seconds of the base-path sagas (no fault, no load)
    #: less their service calls' journaled durations.
    base: list[float] = field(default_factory=list)
    #: The least own path (end-to-end less journaled calls) of a saga of the loaded run: the
    #: stack's path costs at most this (waits only add to it). None: no saga ended.
    least_own: float | None = None
    #: The median journaled call of the base-path sagas (no fault posted: the HTTP hop to a
    #: fake service and back), taken off each service's latency fault; 0 before it is known.
    call_hop: float = 0.0


def _order(flow: str) -> tuple[str, dict[str, Any]]:
    order = uuid.uuid4().hex[:12]
    body = {
        "flow": flow,
        "input": {
            "order_id": order,
            "customer_id": f"c-{order[:4]}",
            "sku": "sku-1",
            "quantity": 1,
            "amount": 10,
        },
    }
    return order, body


def _base_path(plan: Plan, edge: str, key: str, db: str, run: RealRun) -> None:
    """Run BASE_SAGAS sagas one after the other (each waits for the one before to end) and
    keep their end-to-end seconds less their calls': the stack's own path, without load."""
    headers = {"Authorization": f"Bearer {key}"}
    hops: list[float] = []
    with (
        httpx.Client(base_url=edge, timeout=10.0) as client,
        closing(open_store(db, readonly=True)) as store,
    ):
        for i in range(BASE_WARMUP + BASE_SAGAS):
            order, body = _order(plan.flow)
            r = client.post(
                "/v1/sagas", json=body, headers={**headers, "Idempotency-Key": BASE_KEY + order}
            )
            if r.status_code != 202:
                continue
            saga_id = r.headers.get("location", "").rsplit("/", 1)[-1]
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                record = store.load(saga_id)
                if record.status.value in _TERMINAL:
                    if i >= BASE_WARMUP:  # the first ones open connections, warm caches
                        durations = [
                            e.duration_ms / 1000.0
                            for e in store.journal(saga_id)
                            if e.duration_ms is not None
                        ]
                        hops.extend(durations)
                        calls = sum(durations)
                        run.base.append(max(0.0, record.updated_at - record.created_at - calls))
                    break
                time.sleep(0.02)
    if hops:
        run.call_hop = sorted(hops)[len(hops) // 2]


def _less_hop(specs: tuple[dict[str, Any], ...], hop: float) -> list[dict[str, Any]]:
    """`specs` with each latency fault shortened by the stack's own hop: a scenario's service
    latency is the call as the worker sees it (hop included), the fault only the wait."""
    out = []
    for spec in specs:
        if "latency_ms" in spec:
            ms = round(spec["latency_ms"] - hop * 1000)
            if ms <= 0:
                # Not a fault of 0 ms: a fault with no latency and no rate fails every call.
                continue
            spec = {**spec, "latency_ms": ms}
        out.append(spec)
    return out


def _services_file(directory: Path, plan: Plan) -> Path:
    # Workers read breaker settings from a services file; the URLs come from the stack's
    # SAGALAB_SERVICE_* variables, which override the file's.
    path = directory / "validate-services.yaml"
    path.write_text(yaml.safe_dump({"breakers": plan.breakers}), encoding="utf-8")
    return path


async def _drive(
    plan: Plan,
    edge: str,
    key: str,
    services: str,
    t0: float,
    run: RealRun,
    progress: Callable[[str, float, float], None],
    rng: random.Random,
) -> None:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(base_url=edge, timeout=10.0, limits=limits) as client,
        httpx.AsyncClient(base_url=services, timeout=5.0) as admin,
    ):
        tasks: set[asyncio.Task[None]] = set()

        async def submit() -> None:
            order, body = _order(plan.flow)
            try:
                r = await client.post(
                    "/v1/sagas",
                    json=body,
                    headers={"Authorization": f"Bearer {key}", "Idempotency-Key": f"v-{order}"},
                )
                if r.status_code != 202:
                    run.refused += 1
            except httpx.HTTPError:
                run.refused += 1

        async def faults() -> None:
            for action in plan.timed:
                delay = t0 + action.at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if action.clear:
                    r = await admin.delete("/_admin/faults", params={"service": action.service})
                    r.raise_for_status()
                    for spec in _less_hop(plan.standing.get(action.service, ()), run.call_hop):
                        (await admin.post("/_admin/faults", json=spec)).raise_for_status()
                else:
                    (await admin.post("/_admin/faults", json=dict(action.spec))).raise_for_status()

        fault_task = asyncio.create_task(faults())
        for s, e, rate in plan.rates:
            t = s
            while True:
                t += rng.expovariate(rate)
                if t >= e:
                    break
                delay = t0 + t - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(submit())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                run.submitted += 1
                progress("arrivals", min(t, plan.duration), plan.duration)
        delay = t0 + plan.duration - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if tasks:
            await asyncio.wait(tasks, timeout=15.0)
        if fault_task.done():
            fault_task.result()  # a fault the services refused ends the run: say so
        else:
            fault_task.cancel()


def _sampler(db: str, stop_event: threading.Event, run: RealRun) -> None:
    with closing(open_store(db, readonly=True)) as store:
        while not stop_event.wait(SAMPLE_EVERY):
            try:
                depth = int(store.queue_stats(time.time()).get("depth", 0))
            except Exception:  # noqa: BLE001 - a busy database skips one sample, no more
                continue
            run.peak_depth = max(run.peak_depth, depth)


def _collect(db: str, t0: float, run: RealRun, deadline: float) -> None:
    with closing(open_store(db, readonly=True)) as store:
        while True:
            records = store.find_sagas(SagaFilter(since=t0 - 1.0, limit=MAX_LIMIT))
            pending = [r for r in records if r.status.value not in _TERMINAL]
            if not pending or time.time() >= deadline:
                break
            time.sleep(0.25)
        statuses: dict[str, int] = {}
        for r in records:
            if (r.idempotency_key or "").startswith(BASE_KEY):
                continue
            status = r.status.value
            if status not in _TERMINAL:
                status = "unfinished"
            else:
                e2e = max(0.0, r.updated_at - r.created_at)
                run.e2e.append(e2e)
                calls = sum((e.duration_ms or 0.0) / 1000.0 for e in store.journal(r.id))
                own = max(0.0, e2e - calls)
                run.least_own = own if run.least_own is None else min(run.least_own, own)
            statuses[status] = statuses.get(status, 0) + 1
        run.statuses = statuses
        run.until = max([r.updated_at for r in records] + [time.time()]) - t0
    with closing(open_breaker_store(db, readonly=True)) as breakers:
        for event in breakers.events():
            run.transitions.append((float(event["at"]) - t0, str(event["name"]), event["new"]))


def run_real(
    plan: Plan,
    *,
    seed: int,
    progress: Callable[[str, float, float], None] = lambda _what, _done, _total: None,
) -> RealRun:
    """Run `plan` on a stack of its own and read what happened from its journal; the stack
    is stopped (and its directory removed) before this returns or raises."""
    run = RealRun()
    rng = random.Random(seed)
    with owned_directory() as directory:
        services_file = _services_file(directory, plan)
        config = StackConfig(
            directory=directory,
            gateways=plan.gateways,
            workers=plan.workers,
            concurrency=plan.concurrency,
            edge_port=0,
            flood_rate=0.0,
            die_with_parent=True,  # a SIGKILLed validate must not leave its stack running
        )
        previous = os.environ.get("SAGALAB_SERVICES_FILE")
        os.environ["SAGALAB_SERVICES_FILE"] = str(services_file)  # inherited by the workers
        state = None
        try:
            state = start(config, on_progress=lambda what: progress(what, 0.0, 1.0))
        finally:
            if previous is None:
                os.environ.pop("SAGALAB_SERVICES_FILE", None)
            else:
                os.environ["SAGALAB_SERVICES_FILE"] = previous
        try:
            assert state.services_url is not None
            progress("base path", 0.0, 1.0)
            _base_path(plan, state.edge_url, state.api_key, state.db, run)
            with httpx.Client(base_url=state.services_url, timeout=5.0) as admin:
                for specs in plan.standing.values():
                    for spec in _less_hop(specs, run.call_hop):
                        admin.post("/_admin/faults", json=spec).raise_for_status()
            stop_event = threading.Event()
            sampler = threading.Thread(
                target=_sampler, args=(state.db, stop_event, run), daemon=True
            )
            sampler.start()
            t0 = time.time()
            try:
                asyncio.run(
                    _drive(
                        plan, state.edge_url, state.api_key, state.services_url, t0, run,
                        progress, rng,
                    )
                )  # fmt: skip
                progress("draining", 0.0, 1.0)
                _collect(state.db, t0, run, time.time() + DRAIN_SECONDS)
            finally:
                stop_event.set()
                sampler.join(timeout=5.0)
        finally:
            stop(directory)
            run.stack_gone = not any(alive(c) for c in state.components)
    return run
