"""A saga database for the console's tests, made by real runs, and a real `sagalab ui`.

`populate` runs checkout sagas with the real runner (`sagalab orchestrate run --wait`)
against the fake services: one completed, one rolled back (the pivot refused), one failed (its
compensation refused), one crash-resumed (the process SIGKILLed after the charge's call,
then `resume` takes the dead owner's lease over), one whose input holds a `<script>`, one
queued (pending) and one of another tenant. `traced_saga` makes one whose spans a real API
and worker write to a trace file. `Console` starts `sagalab ui` as a subprocess on
a free port of 127.0.0.1 and reads the URL it prints. Not a test module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from apilab import admin_api
from workerlab import REPO, Workers, order, sagalab, wait_for

from sagalab.fakeservices import FaultSpec, RunningServices
from sagalab.orchestrator.flowfile import load_flow
from sagalab.orchestrator.runner import new_saga_id, new_trace_id
from sagalab.orchestrator.stores import open_store
from sagalab.orchestrator.tracing import setup_tracing

XSS = "<script>window.__pwned = 1</script><img src=x onerror='window.__pwned = 2'>"


@dataclass
class Sagas:
    """The ids `populate` made, by what happened to them."""

    completed: str
    rolled_back: str
    failed: str
    resumed: str
    xss: str
    pending: str
    other_tenant: str


def _run(db: str, env: dict[str, str], payload: dict[str, object], *extra: str) -> str:
    done = sagalab(
        "orchestrate",
        "run",
        "checkout",
        "-i",
        json.dumps(payload),
        "--wait",
        "--json",
        "--db",
        db,
        *extra,
        env=env,
    )
    assert done.returncode in (0, 1), done.stderr
    return str(json.loads(done.stdout)["id"])


def populate(db: str, services: RunningServices) -> Sagas:
    """Fill `db` (a SQLite path or a PostgreSQL URL) with the sagas `Sagas` names."""
    env = {**services.env, "PYTHONPATH": str(REPO)}
    services.lab.reset()
    completed = _run(db, env, order(1))
    # The pivot refused (400: not applied): charge and reservation undone, in that order.
    services.lab.add_fault(FaultSpec(service="shipping", status=400))
    rolled_back = _run(db, env, order(2))
    services.lab.clear_faults()
    services.lab.add_fault(
        FaultSpec(service="inventory", endpoint="/reservations/release", status=400)
    )
    failed = _run(db, env, order(3, amount=80_000))
    services.lab.clear_faults()
    xss = _run(db, env, {**order(4), "order_id": XSS})
    crashed = sagalab(
        "orchestrate",
        "run",
        "checkout",
        "-i",
        json.dumps(order(5)),
        "--wait",
        "--db",
        db,
        "--crash-at",
        "charge_payment:after-call",
        env=env,
    )
    assert crashed.returncode < 0, crashed.stderr  # SIGKILLed mid-saga, as a crash leaves it
    store = open_store(db)
    try:
        resumed = next(r.id for r in store.list_sagas() if r.status.value == "running")
        flow = load_flow("checkout")
        now = time.time()
        pending = store.create_saga(
            saga_id=new_saga_id(),
            flow=flow,
            payload=order(6),
            trace_id=new_trace_id(),
            idempotency_key=None,
            now=now,
        )[0].id
        other = store.create_saga(
            saga_id=new_saga_id(),
            flow=flow,
            payload=order(7),
            trace_id=new_trace_id(),
            idempotency_key=None,
            now=now,
            tenant="acme",
        )[0].id
    finally:
        store.close()
    done = sagalab("orchestrate", "resume", resumed, "--db", db, env=env)
    assert done.returncode == 0, done.stderr
    return Sagas(completed, rolled_back, failed, resumed, xss, pending, other)


def traced_saga(db: Path, services: RunningServices, spans: Path) -> tuple[str, str]:
    """A checkout rolled back (shipping refuses the pivot), submitted to a real API tracing
    into `spans` under a caller's `traceparent`, then run by a real `sagalab worker
    --trace-file spans`: its id and trace id. The trace: the API's submit span (its parent,
    the caller's, is not in the file), the worker's run linked from it, five attempts."""
    services.lab.reset()
    services.lab.add_fault(FaultSpec(service="shipping", status=400))
    trace = new_trace_id()
    tracing = setup_tracing("sagalab-api", spans, None)
    assert tracing is not None
    try:
        with admin_api(db, tracing=tracing) as api:
            r = api.post(
                "/v1/sagas",
                json={"flow": "checkout", "input": order(1)},
                headers={"traceparent": f"00-{trace}-{'cd' * 8}-01"},
            )
            assert r.status_code == 202, r.text
            saga = str(r.json()["id"])
    finally:
        tracing.shutdown()
    workers = Workers(db, services.env, spans.with_name("logs"))
    try:
        w = workers.start("--exit-when-idle", "0.5", "--poll", "0.05", "--trace-file", str(spans))
        assert w.proc.wait(timeout=30) == 0, w.stderr()
    finally:
        workers.stop_all()
        services.lab.clear_faults()
    return saga, trace


class Console:
    """`sagalab ui --db DB --port 0 [ARGS]` as a subprocess; `url` is where it serves."""

    def __init__(self, db: str, *args: str, env: dict[str, str] | None = None) -> None:
        # stderr goes to a file: never a pipe nobody drains (closed by `close`)
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sagalab.cli.main", "ui", "--db", db, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.log.seek(0)
            self.close()
            raise AssertionError(f"sagalab ui printed no URL (exit {code}): {self.log.read()}")
        self.url = line.split(" on ", 1)[1].split()[0].rstrip("/")
        wait_for(self._up, 15, "the console to answer")

    def _up(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()

    def stop(self) -> None:
        """SIGTERM, then wait (a console that will not stop is killed and fails the test)."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError("sagalab ui did not stop on SIGTERM") from None
        finally:
            self.close()
