"""Building the edge apps from plain settings, and running one as a process.

    python -m sagalab.edge.apps api --fd 5 --db sagalab.db --keys-db keys.db \\
        --secret-file gateway.secret
    python -m sagalab.edge.apps gateway --fd 6 --keys-db keys.db --upstream 127.0.0.1:8101 \\
        --secret-file gateway.secret
    python -m sagalab.edge.apps edge --fd 7 --upstream 127.0.0.1:8201 --upstream 127.0.0.1:8202 \\
        --deny 127.66.0.0/16 --flood-rate 200

`sagalab stack` binds each socket itself and starts these commands with `--fd`; argparse and
no Typer keeps a component's start-up light. Every component serves with connection limits
(`edge.connections`: header and body timeouts, head size, per-address and total caps; the
gateways and the API default to `HOP_LIMITS` and take `--exempt` for the hop in front).
The gateway secret is passed as the path of a file (mode 0600), never as an argument that `ps`
would show.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sagalab.edge.asgi import BodyDeadline
from sagalab.edge.balancer import LoadBalancerApp
from sagalab.edge.connections import BOUNDS, ConnectionLimits
from sagalab.edge.errors import KeyStoreError
from sagalab.edge.firewall import FirewallMiddleware
from sagalab.edge.gateway import GatewayApp, describe
from sagalab.edge.keys import KeyCache, open_key_store, read_secret
from sagalab.edge.metrics import Metrics
from sagalab.edge.policies.balancer import Balancer, Strategy
from sagalab.edge.policies.firewall import Firewall, FloodGuard
from sagalab.edge.pool import Pool
from sagalab.orchestrator.jsonsafe import MAX_BYTES
from sagalab.orchestrator.limits import (
    API_DB_TIMEOUT,
    MAX_FLOOD_BURST,
    MAX_FLOOD_RATE,
    WRITER_LOCK_SLACK,
    check,
)
from sagalab.orchestrator.tracing import Tracing, TracingConfigError, setup_tracing

#: How often the API checks that its database file is still the one it opened, seconds.
_WATCH_EVERY = 0.5

__all__ = [
    "EdgeSettings",
    "GatewaySettings",
    "build_edge",
    "build_gateway",
    "HOP_LIMITS",
    "edge_limits",
    "main",
]


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (or a `http://host:port` URL) as a tuple."""
    bare = text.removeprefix("http://").rstrip("/")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


#: Seconds each hop waits beyond the longest wait of the one behind it.
HOP_MARGIN = 2.0


def hop_timeouts(db_timeout: float) -> tuple[float, float]:
    """The (gateway, edge) upstream timeouts before an API that waits `db_timeout` s for its
    database: each a little longer than the hop behind it, so that the API's 503 (the lock
    is held: retry) reaches the client, not a hop's 504. The API answers within its busy
    timeout plus the group writer's lock slack (a caller may wait on the writer's lock
    through another's whole busy wait)."""
    api = db_timeout + WRITER_LOCK_SLACK
    return api + HOP_MARGIN, api + 2 * HOP_MARGIN


GATEWAY_UPSTREAM_TIMEOUT, EDGE_UPSTREAM_TIMEOUT = hop_timeouts(API_DB_TIMEOUT)


@dataclass
class GatewaySettings:
    """What a gateway instance needs."""

    keys_db: str
    upstreams: Sequence[str]
    rate_share: int = 1
    max_body: int = MAX_BYTES  # the API's own limit: one body limit on the whole path
    strategy: str = "least_connections"
    weights: Sequence[float] = ()  # one per upstream for weighted_round_robin; (): all equal
    instance: str = "gateway"
    key_ttl: float = 2.0
    secret: str | None = None  # the stack's gateway secret, sent to the API with the tenant
    body_timeout: float | None = None  # seconds a body has after its headers (408); None: no limit
    tracing: Tracing | None = None  # a span per forwarded request; None: off
    #: Seconds the API has to answer a forwarded request (504 after it).
    upstream_timeout: float = GATEWAY_UPSTREAM_TIMEOUT


@dataclass
class EdgeSettings:
    """What the edge (firewall + load balancer) needs."""

    upstreams: Sequence[str]
    strategy: str = "least_connections"
    weights: Sequence[float] = ()  # one per upstream for weighted_round_robin; (): all equal
    allow: Sequence[str] = ()
    deny: Sequence[str] = ()
    trusted_proxies: Sequence[str] = ()
    flood_rate: float = 200.0
    flood_burst: float = 400.0
    flood_block: float = 10.0
    health_interval: float = 0.5
    #: Seconds a gateway has to answer a forwarded request (504 after it, never re-sent).
    upstream_timeout: float = EDGE_UPSTREAM_TIMEOUT
    max_body: int = MAX_BYTES
    #: Timeouts, connection caps and the header size limit for client connections.
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    tracing: Tracing | None = None  # a span per forwarded request; None: off
    extra: dict[str, Any] = field(default_factory=dict)


def build_gateway(s: GatewaySettings) -> GatewayApp:
    """A gateway ASGI app."""
    pool = Pool(
        [parse_address(u) for u in s.upstreams],
        strategy=s.strategy,
        weights=s.weights or None,
        health_path="/readyz",
        timeout=s.upstream_timeout,
    )
    metrics = describe(Metrics("sagalab_gateway_"))
    return GatewayApp(
        pool,
        KeyCache(open_key_store(s.keys_db), ttl=s.key_ttl),
        metrics=metrics,
        max_body=s.max_body,
        rate_share=s.rate_share,
        instance=s.instance,
        secret=s.secret,
        body_timeout=s.body_timeout,
        tracing=s.tracing,
    )


def build_edge(s: EdgeSettings) -> FirewallMiddleware:
    """The edge ASGI app: the firewall wrapping the load balancer."""
    pool = Pool(
        [parse_address(u) for u in s.upstreams],
        strategy=s.strategy,
        weights=s.weights or None,
        health_path="/readyz",
        interval=s.health_interval,
        timeout=s.upstream_timeout,
    )
    metrics = describe(Metrics("sagalab_edge_"))
    # Only an explicit 0 turns flood protection off; FloodGuard refuses NaN and negatives.
    flood = FloodGuard(s.flood_rate, s.flood_burst, s.flood_block) if s.flood_rate != 0 else None
    firewall = Firewall(allow=s.allow, deny=s.deny, flood=flood)
    lb = LoadBalancerApp(
        pool,
        metrics=metrics,
        max_body=s.max_body,
        body_timeout=s.limits.body_timeout,
        tracing=s.tracing,
    )
    return FirewallMiddleware(
        lb, firewall, trusted_proxies=s.trusted_proxies, metrics=metrics, clock=time.monotonic
    )


#: Defaults for the hops behind the edge (gateways, API): the edge's, with room for the
#: headers the hops add (Idempotency-Key, traceparent, the gateway's x-sagalab-*), so that a
#: head the edge lets through is never refused behind it, and the keep-alive the edge's and
#: gateways' connection pools have always had.
HOP_LIMITS = ConnectionLimits(max_header_bytes=20 * 1024, keep_alive=30.0)


def edge_limits(s: EdgeSettings) -> ConnectionLimits:
    """The edge server's connection limits: trusted proxies carry many clients, so the
    per-address cap does not apply to them."""
    return dataclasses.replace(s.limits, exempt=(*s.trusted_proxies, *s.limits.exempt))


def _breaker_states(db: str) -> Any:
    """name -> state of the workers' shared circuit breakers (none before any worker ran)."""

    def states() -> dict[str, str]:
        try:
            from sagalab.orchestrator.breaker_board import breaker_rows

            return {str(r["name"]): str(r["state"]) for r in breaker_rows(db)}
        except Exception:  # no breaker table yet, or an older orchestrator
            return {}

    return states


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sagalab.edge.apps")
    sub = parser.add_subparsers(dest="component", required=True)
    api = sub.add_parser("api", help="the orchestrator HTTP API")
    api.add_argument("--db", required=True)
    api.add_argument(
        "--read-db",
        default=os.environ.get("SAGALAB_READ_DB") or None,
        help="database the GET routes read from (a streaming replica of --db; default "
        "SAGALAB_READ_DB, else --db)",
    )
    api.add_argument("--keys-db", help="keys a client may present to the API directly")
    api.add_argument(
        "--no-direct-keys",
        dest="direct_keys",
        action="store_false",
        help="refuse keys presented to the API directly (401): only the gateways are heard",
    )
    gw = sub.add_parser("gateway", help="an API gateway instance")
    gw.add_argument("--keys-db", required=True)
    gw.add_argument("--rate-share", type=int, default=1)
    gw.add_argument("--max-body", type=int, default=MAX_BYTES)
    edge = sub.add_parser("edge", help="the firewall and load balancer")
    edge.add_argument("--allow", action="append", default=[])
    edge.add_argument("--deny", action="append", default=[])
    edge.add_argument("--trusted-proxy", action="append", default=[])
    edge.add_argument(
        "--flood-rate",
        type=float,
        default=200.0,
        help="requests/s one address may send before it is blocked; 0 turns flood protection "
        "off (default 200)",
    )
    edge.add_argument(
        "--flood-burst", type=float, default=400.0, help="requests above the rate at once (>= 1)"
    )
    edge.add_argument(
        "--flood-block", type=float, default=10.0, help="seconds a flooding address is blocked"
    )
    for p in (api, gw):
        p.add_argument("--secret-file", help="file holding the gateways' secret for the API")
        p.add_argument(
            "--exempt",
            action="append",
            default=[],
            help="address or CIDR never capped per address: the hop in front (repeatable)",
        )
    limit_flags = {
        "header_timeout": "seconds a connection has to send a request's headers",
        "body_timeout": "seconds a request has to send its body after the headers (408)",
        "keep_alive": "seconds an idle kept-alive connection stays open",
        "max_header_bytes": "largest request head (431 above it)",
        "per_address": "connections one address may hold (429 above it)",
        "max_connections": "connections in all (503 above it)",
    }
    for p, defaults in ((edge, ConnectionLimits()), (gw, HOP_LIMITS), (api, HOP_LIMITS)):
        for name, text in limit_flags.items():
            default = getattr(defaults, name)
            p.add_argument(
                "--" + name.replace("_", "-"),
                type=type(default),
                default=default,
                help=f"{text} (default {default:g})",
            )
    for p in (api, gw, edge):
        p.add_argument("--trace-file", help="append OpenTelemetry spans here (JSON lines)")
        p.add_argument("--otlp-endpoint", help="send OpenTelemetry spans over OTLP/HTTP here")
        p.add_argument("--fd", type=int, help="listening socket passed by the parent")
        p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (without --fd)")
        p.add_argument("--instance", default=None)
    for p in (gw, edge):
        p.add_argument("--upstream", action="append", required=True)
        p.add_argument(
            "--strategy",
            default="least_connections",
            choices=[strategy.value for strategy in Strategy],
        )
        p.add_argument(
            "--weight",
            action="append",
            type=float,
            default=[],
            help="an upstream's weight for weighted_round_robin, once per --upstream in order",
        )
    return parser


def _secret(path: str | None) -> str | None:
    """The gateway secret kept in `path`; one line and exit 5 when it cannot be read."""
    if path is None:
        return None
    try:
        return read_secret(path)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(5) from None


def _gateway_or_exit(s: GatewaySettings) -> GatewayApp:
    """`build_gateway(s)`, or one line and exit 5 when its key database cannot be used."""
    try:
        return build_gateway(s)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)  # messages mask URL passwords already
        raise SystemExit(5) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Run one component in this process until SIGTERM."""
    from sagalab.edge.server import bind, serve_forever, socket_from_fd

    parser = _parser()
    args = parser.parse_args(argv)
    app: Any
    try:
        # Every component faces connections it cannot trust: on 127.0.0.1 anyone may reach a
        # gateway's or the API's port as well as the edge's.
        limits = ConnectionLimits(
            **{n: getattr(args, n) for n in BOUNDS}, exempt=tuple(getattr(args, "exempt", ()))
        )
        if args.component == "edge":
            # NaN or a negative rate would silently turn flood protection off: only 0 does.
            check(
                "--flood-rate",
                args.flood_rate,
                low=0,
                high=MAX_FLOOD_RATE,
                low_why="0 turns flood protection off",
            )
            check("--flood-burst", args.flood_burst, low=1, high=MAX_FLOOD_BURST)
            check("--flood-block", args.flood_block, low=0)
        if args.component in ("gateway", "edge") and args.weight:
            if len(args.weight) != len(args.upstream):
                raise ValueError(
                    f"--weight: {len(args.weight)} weights for {len(args.upstream)} upstreams "
                    "(one per --upstream, in order)"
                )
            Balancer(args.strategy, args.weight)  # refuses a negative, infinite or all-0 weight
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with the bound named
    try:
        tracing = setup_tracing(f"sagalab-{args.component}", args.trace_file, args.otlp_endpoint)
    except TracingConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(5) from None
    if args.component == "api":
        from sagalab.orchestrator.api import create_app
        from sagalab.orchestrator.errors import StoreError
        from sagalab.orchestrator.redact import redacted

        try:
            app = create_app(
                args.db,
                instance=args.instance or "api",
                breaker_states=_breaker_states(args.db),
                keys_db=args.keys_db,
                gateway_secret=_secret(args.secret_file),
                direct_keys=args.direct_keys,
                read_db=args.read_db,
                tracing=tracing,
            )
        except (StoreError, KeyStoreError) as exc:  # not a saga/key database: one line, exit 5
            print(f"error: {redacted(str(exc))}", file=sys.stderr)  # the one masking rule
            raise SystemExit(5) from None
        watchdog = app.state.watchdog
        threading.Thread(target=_exit_when_gone, args=(watchdog,), daemon=True).start()
        app = BodyDeadline(app, timeout=limits.body_timeout, max_body=MAX_BYTES)
    elif args.component == "gateway":
        app = _gateway_or_exit(
            GatewaySettings(
                keys_db=args.keys_db,
                upstreams=args.upstream,
                rate_share=args.rate_share,
                max_body=args.max_body,
                strategy=args.strategy,
                weights=args.weight,
                instance=args.instance or "gateway",
                secret=_secret(args.secret_file),
                body_timeout=limits.body_timeout,
                tracing=tracing,
            ),
        )
    else:
        settings = EdgeSettings(
            upstreams=args.upstream,
            strategy=args.strategy,
            weights=args.weight,
            allow=args.allow,
            deny=args.deny,
            trusted_proxies=args.trusted_proxy,
            flood_rate=args.flood_rate,
            flood_burst=args.flood_burst,
            flood_block=args.flood_block,
            limits=limits,
            tracing=tracing,
        )
        app = build_edge(settings)
        limits = edge_limits(settings)
    sock = socket_from_fd(args.fd) if args.fd is not None else bind("127.0.0.1", args.port)
    # What exists now (modules, the app, its routes and models: ~all long-lived objects) lives
    # until exit: the cyclic GC need never walk it again. Without this every full collection
    # walked it, 30 - 60 ms with the loop stopped, the largest part of POST /v1/sagas' p99
    # (benchmarks/README.md, "Group commit").
    gc.freeze()
    serve_forever(app, sock, limits=limits)


def _exit_when_gone(watchdog: Any) -> None:
    """Stop the API (one line, then exit 5) once its database file is deleted or replaced.

    Until then every request already gets 503 (the stores ask the same watchdog); exiting
    lets the stack's supervisor start the API again, and the new process opens the file the
    path names now. `os._exit`: a request in flight is cut, but it could only be answered
    503 anyway; no SQLite connection is closed, so none checkpoints into the old file (a
    graceful uvicorn stop would also end with its signal re-raised, not exit code 5).
    """
    from sagalab.orchestrator.watchdog import DatabaseGone

    while True:
        try:
            watchdog.check()
        except DatabaseGone as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            os._exit(5)
        time.sleep(_WATCH_EVERY)


if __name__ == "__main__":
    main()
