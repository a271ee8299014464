"""`sagalab worker`: run worker replicas that take sagas from the durable queue."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from prometheus_client import CollectorRegistry

from sagalab.cli import render
from sagalab.cli.errors import EXIT_ENVIRONMENT, EXIT_USAGE, fail, handled
from sagalab.cli.options import DEFAULT_DB, DbOption, JsonOption, ServicesOption
from sagalab.orchestrator.breaker_board import load_breaker_configs
from sagalab.orchestrator.flowfile import load_services
from sagalab.orchestrator.leases import DEFAULT_LEASE_SECONDS
from sagalab.orchestrator.limits import (
    CONCURRENCY_WHY,
    DEFAULT_GRACE,
    MAX_CONCURRENCY,
    MAX_GRACE,
    MAX_LEASE,
    MAX_POLL,
    MAX_REPLICAS,
    MAX_RUN_SECONDS,
    MIN_LEASE,
    MIN_POLL,
    REPLICAS_WHY,
    LimitError,
    check,
)
from sagalab.orchestrator.metrics import (
    MULTIPROC_ENV,
    SagaMetrics,
    StoreGauges,
    SupervisorGauges,
    multiprocess_child,
    multiprocess_dir,
    multiprocess_registry,
    remove_dir,
    serve,
)
from sagalab.orchestrator.policies.autoscaling import AutoscalePolicy, ScaleDecision
from sagalab.orchestrator.stores import open_store, shown, typed
from sagalab.orchestrator.supervisor import Supervisor, SupervisorConfig
from sagalab.orchestrator.tracing import (
    OTLP_ENV,
    TRACE_FILE_ENV,
    SagaTracer,
    Tracing,
    TracingConfigError,
    setup_tracing,
)
from sagalab.orchestrator.worker import Worker, WorkerConfig


def _on_signals(stop: threading.Event) -> None:
    # Not `signals.sigterm_raises`: SIGTERM and SIGINT only set `stop`, which the worker's
    # loops check at safe points; an exception raised mid-saga would skip that.
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _relay(stop: threading.Event, target: threading.Event) -> None:
    """Set `target` once `stop` is set, from a daemon thread (signal handlers only set `stop`)."""

    def wait_then_set() -> None:
        stop.wait()
        target.set()

    threading.Thread(target=wait_then_set, daemon=True).start()


def worker(
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency", "-c", help=f"Sagas run at once per replica (1 to {MAX_CONCURRENCY})."
        ),
    ] = 4,
    replicas: Annotated[
        str,
        typer.Option(
            "--replicas",
            "-r",
            help=f"Worker processes: a number (1 to {MAX_REPLICAS} on this machine), or 'auto' "
            "to scale with the queue.",
        ),
    ] = "1",
    min_replicas: Annotated[int, typer.Option("--min", help="With auto: fewest.")] = 1,
    max_replicas: Annotated[
        int, typer.Option("--max", help=f"With auto: most (at most {MAX_REPLICAS}).")
    ] = 4,
    target_depth: Annotated[
        float, typer.Option("--target-depth", min=0.1, help="With auto: queued sagas per replica.")
    ] = 10.0,
    cooldown: Annotated[
        float, typer.Option("--cooldown", min=0, help="With auto: seconds between changes.")
    ] = 5.0,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            help=f"Lease length in seconds, renewed at 1/3 ({MIN_LEASE:g} to {MAX_LEASE:g}).",
        ),
    ] = DEFAULT_LEASE_SECONDS,
    poll: Annotated[
        float,
        typer.Option(
            "--poll", help=f"Idle poll interval in seconds ({MIN_POLL:g} to {MAX_POLL:g})."
        ),
    ] = 0.2,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(
            "--exit-when-idle",
            help=(
                "Stop after this many seconds with nothing to do: no saga queued, waiting "
                "for its retry time or held by any worker "
                f"(at most {MAX_RUN_SECONDS:.0f}: thirty days)."
            ),
        ),
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option(
            "--max-seconds",
            help=f"Stop after this many seconds (at most {MAX_RUN_SECONDS:.0f}: thirty days).",
        ),
    ] = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="With several replicas: seconds they get to finish their sagas after SIGTERM "
            f"before SIGKILL (at most {MAX_GRACE:g}).",
        ),
    ] = DEFAULT_GRACE,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve Prometheus metrics on 127.0.0.1 at this port (0 picks a free one, "
            "printed); with several replicas the supervisor serves them all, summed.",
        ),
    ] = None,
    trace_file: Annotated[
        Path | None,
        typer.Option(
            "--trace-file",
            envvar=TRACE_FILE_ENV,
            help="Append an OpenTelemetry span per saga run and per attempt to this file, one "
            "JSON object per line (replicas append to the same file).",
        ),
    ] = None,
    otlp_endpoint: Annotated[
        str | None,
        typer.Option(
            "--otlp-endpoint",
            envvar=OTLP_ENV,
            help="Send the spans over OTLP/HTTP to this URL (e.g. http://127.0.0.1:4318; "
            "needs the extra sagalab[otlp]).",
        ),
    ] = None,
    db: DbOption = DEFAULT_DB,
    services: ServicesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take queued sagas and run them; resume sagas whose worker died once its lease expires.

    Several workers (processes or hosts sharing the file) may run at once. SIGTERM or Ctrl-C
    stops taking new sagas and finishes the ones in hand; a supervisor of several replicas
    SIGKILLs those still running after --grace seconds (their sagas are resumed by others).
    """
    count = _check_bounds(replicas, concurrency, min_replicas, max_replicas, grace)
    _check_times(lease, poll, exit_when_idle, max_seconds)
    _check_port(metrics_port)
    with handled():
        service_map = load_services(services)
        breaker_configs = load_breaker_configs(services)
        open_store(db).close()  # fail fast on a bad path, and migrate once
    tracing = _tracing(trace_file, otlp_endpoint)
    stop = threading.Event()
    _on_signals(stop)
    if count == 1:
        saga_metrics = SagaMetrics() if metrics_port is not None or multiprocess_child() else None
        with (
            _exported(db, saga_metrics.registry if saga_metrics else None, metrics_port),
            _traced(tracing),
        ):
            run_one(
                db,
                service_map,
                breaker_configs,
                concurrency,
                lease,
                poll,
                exit_when_idle,
                max_seconds,
                as_json,
                stop,
                saga_metrics,
                SagaTracer(tracing, time.time) if tracing is not None else None,
            )
        return
    if tracing is not None:
        tracing.shutdown()  # checked; each replica opens its own (from the environment)
    directory = multiprocess_dir() if metrics_port is not None else None
    try:
        registry = multiprocess_registry(directory) if directory is not None else None
        with _exported(db, registry, metrics_port):
            _supervise(
                db,
                count,
                replicas,
                concurrency,
                lease,
                poll,
                services,
                (min_replicas, max_replicas, target_depth, cooldown),
                max_seconds,
                exit_when_idle,
                grace,
                as_json,
                stop,
                # The replicas write their metrics to files there; this process sums them.
                {**os.environ, MULTIPROC_ENV: str(directory)} if directory is not None else None,
                registry,
            )
    finally:
        if directory is not None:
            remove_dir(directory)


def _tracing(trace_file: Path | None, otlp_endpoint: str | None) -> Tracing | None:
    """The tracing asked for (None: off, no SDK loaded); exit 5 when it cannot be set up.

    The settings go into the environment too: replicas are `sagalab worker` processes that read
    them from there, each appending to the same file.
    """
    if trace_file is not None:
        os.environ[TRACE_FILE_ENV] = str(trace_file.resolve())
    if otlp_endpoint:
        os.environ[OTLP_ENV] = otlp_endpoint
    try:
        return setup_tracing("sagalab-worker", trace_file, otlp_endpoint)
    except TracingConfigError as exc:
        raise fail(str(exc), EXIT_ENVIRONMENT) from None


@contextmanager
def _traced(tracing: Tracing | None) -> Iterator[None]:
    """Flush and close the exporters when the worker stops."""
    try:
        yield
    finally:
        if tracing is not None:
            tracing.shutdown()


def _check_port(port: int | None) -> None:
    """Refuse (exit 2) a --metrics-port outside 0..65535."""
    if port is not None and not 0 <= port <= 65535:
        raise fail(f"--metrics-port must be 0 (a free port) to 65535, got {port}", EXIT_USAGE)


@contextmanager
def _exported(db: Path, registry: CollectorRegistry | None, port: int | None) -> Iterator[None]:
    """Serve `registry` plus the database's queue and breaker gauges on 127.0.0.1:`port`
    while the body runs (nothing when `port` is None); exit 5 if the port cannot be had."""
    if port is None or registry is None:
        yield
        return
    gauges = StoreGauges(db)
    registry.register(gauges)
    try:
        server, bound = serve(registry, port)
    except OSError as exc:
        raise fail(
            f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror or exc}; "
            "pick another --metrics-port, or 0 for a free one",
            EXIT_ENVIRONMENT,
        ) from None
    gauges.start()
    render.err.print(f"metrics on http://127.0.0.1:{bound}/metrics")
    try:
        yield
    finally:
        gauges.close()
        server.shutdown()
        server.server_close()


def _supervise(
    db: Path,
    count: int | None,
    replicas: str,
    concurrency: int,
    lease: float,
    poll: float,
    services: Path | None,
    scaling: tuple[int, int, float, float],
    max_seconds: float | None,
    exit_when_idle: float | None,
    grace: float,
    as_json: bool,
    stop: threading.Event,
    child_env: dict[str, str] | None,
    registry: CollectorRegistry | None,
) -> None:
    """Several replicas as child processes under a `Supervisor`; `scaling` is (min, max,
    target depth, cooldown) for `--replicas auto`."""
    min_replicas, max_replicas, target_depth, cooldown = scaling
    auto = count is None
    child = [
        sys.executable,
        "-m",
        "sagalab.cli.main",
        "worker",
        "--replicas",
        "1",
        "--db",
        typed(db),  # as typed: a Path's str collapses `sqlite:///` and `postgresql://`
        "--concurrency",
        str(concurrency),
        "--lease",
        str(lease),
        "--poll",
        str(poll),
    ]
    if services is not None:
        child += ["--services", str(services)]
    try:
        policy = (
            AutoscalePolicy(
                min_replicas, max_replicas, target_depth, max_age=2.0, cooldown=cooldown
            )
            if auto
            else None
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    config = SupervisorConfig(
        db=db,  # a DbPath: keeps the URL as typed
        child_command=child,
        replicas=count,
        policy=policy,
        max_seconds=max_seconds,
        exit_when_idle=exit_when_idle,
        grace=grace,
        child_env=child_env,
    )

    def changed(decision: ScaleDecision) -> None:
        render.err.print(f"replicas {decision.current} -> {decision.desired}: {decision.reason}")

    supervisor = Supervisor(config, on_change=changed)
    if registry is not None:
        registry.register(SupervisorGauges(supervisor))
    _relay(stop, supervisor.stop)
    render.err.print(f"supervising {'auto-scaled' if auto else replicas} worker replica(s)")
    restarts = supervisor.run()
    summary = {"restarts": restarts, "scaling": [d.reason for d in supervisor.decisions]}
    if as_json:
        render.print_json(summary)
    else:
        render.err.print(f"stopped; {restarts} replica restart(s)")


def _check_bounds(replicas: str, concurrency: int, low: int, high: int, grace: float) -> int | None:
    """The replica count (None for auto), after checking every bound (exit 2 naming it)."""
    try:
        if replicas == "auto":
            count = None
            check("--min", low, low=0, high=MAX_REPLICAS, why=REPLICAS_WHY)
            check("--max", high, low=max(1, low), high=MAX_REPLICAS, why=REPLICAS_WHY)
        elif replicas.removeprefix("-").isdigit():
            count = int(
                check("--replicas", int(replicas), low=1, high=MAX_REPLICAS, why=REPLICAS_WHY)
            )
        else:
            raise fail(f"--replicas takes a number or 'auto', got {replicas!r}", EXIT_USAGE)
        check("--concurrency", concurrency, low=1, high=MAX_CONCURRENCY, why=CONCURRENCY_WHY)
        check("--grace", grace, low=0, high=MAX_GRACE)
    except LimitError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    return count


def _check_times(
    lease: float, poll: float, exit_when_idle: float | None, max_seconds: float | None
) -> None:
    """Refuse (exit 2 naming the bound) a lease, poll or run time that is not finite or out of
    its bound, before anything starts: `--lease inf` or `--poll 1e12` would kill a thread later."""
    try:
        check("--lease", lease, low=MIN_LEASE, high=MAX_LEASE, why="seconds: an hour")
        check("--poll", poll, low=MIN_POLL, high=MAX_POLL, why="seconds")
        for name, seconds in (("--exit-when-idle", exit_when_idle), ("--max-seconds", max_seconds)):
            if seconds is not None:
                check(name, seconds, low=0, high=MAX_RUN_SECONDS, why="seconds: thirty days")
    except LimitError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def run_one(
    db: Path,
    services: dict[str, str],
    breaker_configs: dict[str, Any],
    concurrency: int,
    lease: float,
    poll: float,
    exit_when_idle: float | None,
    max_seconds: float | None,
    as_json: bool,
    stop: threading.Event,
    metrics: SagaMetrics | None = None,
    tracer: SagaTracer | None = None,
) -> None:
    """One replica in this process (counting for Prometheus into `metrics`, tracing with
    `tracer`, if given)."""
    config = WorkerConfig(
        db=db,  # a DbPath: keeps the URL as typed
        services=services,
        breakers=breaker_configs,
        concurrency=concurrency,
        lease_seconds=lease,
        poll_interval=poll,
        exit_when_idle=exit_when_idle,
        max_seconds=max_seconds,
        metrics=metrics,
        tracer=tracer,
    )
    w = Worker(config)
    _relay(stop, w.stop)
    render.err.print(f"worker {w.owner}: {concurrency} thread(s), lease {lease}s, db {shown(db)}")
    try:
        with handled():  # a worker that cannot go on says why in one line and exits non-zero
            stats = w.run()
    finally:
        stop.set()
    summary = {
        "owner": w.owner,
        "claimed": stats.claimed,
        "finished": stats.finished,
        "requeued": stats.requeued,
        "lost_leases": stats.lost_leases,
        "conflicts": stats.conflicts,
        "errors": stats.errors,
        # Spans the --trace-file could not take (a full disk): the sagas ran on regardless.
        "spans_dropped": tracer.tracing.spans_dropped if tracer is not None else 0,
    }
    if as_json:
        render.print_json(summary)
    else:
        ended = ", ".join(f"{n} {status}" for status, n in sorted(stats.finished.items()))
        render.err.print(
            f"worker {w.owner} stopped: claimed {stats.claimed} saga run(s); "
            f"ended {ended or 'none'}; requeued {stats.requeued} (waiting for a retry or a "
            f"breaker); lost leases {stats.lost_leases}, conflicts {stats.conflicts}, "
            f"errors {stats.errors}"
        )
