"""Edge tests' helpers: a slow fake of the API, gateways as real processes, the path in threads.

Not a test module (pytest does not collect it). `HoldingApi` stands in for the API behind the
gateways: it creates one "saga" per POST (or replays the saga an Idempotency-Key already
names, as the real API does), counts every request that reached it, and can hold its answer
so a test can kill the gateway that is waiting for it. `serve_path` serves the real edge,
gateways and API in threads of the test process. Every wait here is a bounded poll.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import workerlab

from sagalab.edge.apps import EdgeSettings, GatewaySettings, build_edge, build_gateway, edge_limits
from sagalab.edge.server import RunningServer, bind, serve_in_thread
from sagalab.orchestrator.api import create_app

REPO = Path(__file__).resolve().parent.parent


#: A checkout input, and the body that submits it as a saga.
ORDER = {"order_id": "o-1", "customer_id": "c-1", "sku": "sku-1", "quantity": 1, "amount": 10}
SAGA = {"flow": "checkout", "input": ORDER}


@dataclass
class ThreadedPath:
    """The whole path served in this process on 127.0.0.1: edge -> gateways -> API."""

    edge: RunningServer
    gateways: list[RunningServer]
    api: RunningServer
    secret: str  # the stack secret the gateways vouch for their callers with


@contextmanager
def serve_path(
    db: Path,
    keys_db: Path,
    *,
    api_keys: bool = False,
    api: Mapping[str, Any] | None = None,
    gateway: Mapping[str, Any] | None = None,
    edge: Mapping[str, Any] | None = None,
    with_edge_limits: bool = False,
    gateways: int = 2,
) -> Iterator[ThreadedPath]:
    """An API over `db`, `gateways` gateways over `keys_db` and an edge before them.

    `api_keys`: the API also takes keys presented to it directly (from `keys_db`). `api` are
    extra `create_app` arguments; `gateway` and `edge` extra `GatewaySettings` /
    `EdgeSettings` fields; `with_edge_limits` serves
    the edge with its client connection limits, as `python -m sagalab.edge.apps edge` does.
    """
    secret = secrets.token_urlsafe(32)
    api_app = create_app(
        db, keys_db=keys_db if api_keys else None, gateway_secret=secret, **(api or {})
    )
    api_server = serve_in_thread(api_app)
    running = [
        serve_in_thread(
            build_gateway(
                GatewaySettings(
                    keys_db=str(keys_db),
                    upstreams=[api_server.url],
                    instance=f"gw{i}",
                    secret=secret,
                    **(gateway or {}),
                )
            )
        )
        for i in range(gateways)
    ]
    settings = EdgeSettings(upstreams=[g.url for g in running], **(edge or {}))
    limits = edge_limits(settings) if with_edge_limits else None
    front = serve_in_thread(build_edge(settings), limits=limits)
    try:
        yield ThreadedPath(front, running, api_server, secret)
    finally:
        for server in (front, *running, api_server):
            server.stop()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """`workerlab.wait_for`, polling more often: edge tests watch for short windows."""
    return workerlab.wait_for(condition, timeout, what, every)


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection (fails on the socket's timeout)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        raise AssertionError(f"the connection was kept open; got {b''.join(chunks)!r}") from None
    except ConnectionResetError:
        pass
    return b"".join(chunks)


@dataclass
class HoldingApi:
    """An ASGI fake of the API: `POST /v1/sagas` creates (or replays) a saga, `hold` of them
    wait for `release` before answering, `/readyz` and `/healthz` answer 200."""

    hold: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    #: The Idempotency-Key of every POST that reached this API (None when it had none).
    posts: list[str | None] = field(default_factory=list)
    #: Sagas created: id -> the key that created it.
    sagas: dict[str, str | None] = field(default_factory=dict)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] in ("/readyz", "/healthz"):
            await self._answer(send, 200, {"status": "ok"})
            return
        while (await receive()).get("more_body", False):
            pass  # the whole request reaches the API before it acts, as with the real one
        raw = dict(scope["headers"]).get(b"idempotency-key")
        key = raw.decode() if raw is not None else None
        self.posts.append(key)
        replay = next((sid for sid, k in self.sagas.items() if key and k == key), None)
        saga_id = replay or f"saga-{len(self.sagas) + 1}"
        self.sagas[saga_id] = key
        if self.hold > 0:
            self.hold -= 1
            self.held.set()
            deadline = time.monotonic() + 20
            while not self.release.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await self._answer(send, 200 if replay else 202, {"id": saga_id, "created": not replay})

    @staticmethod
    async def _answer(send: Any, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class GatewayProcess:
    """`python -m sagalab.edge.apps gateway` in its own process, on a socket bound here."""

    proc: subprocess.Popen[bytes]
    url: str

    @property
    def name(self) -> str:
        return self.url.removeprefix("http://")

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


def start_gateway(
    keys_db: Path, upstream: str, name: str, extra: Sequence[str] = ()
) -> GatewayProcess:
    """A gateway process in front of `upstream`; returns once it answers /healthz."""
    args = ["--keys-db", str(keys_db), "--upstream", upstream, "--instance", name, *extra]
    return start_component("gateway", args, name)


def start_component(kind: str, args: Sequence[str], name: str) -> GatewayProcess:
    """`python -m sagalab.edge.apps KIND ARGS` on a socket bound here; returns once it answers
    /healthz."""
    sock = bind("127.0.0.1", 0, inheritable=True)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    cmd = [sys.executable, "-m", "sagalab.edge.apps", kind, "--fd", str(sock.fileno()), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(),), env=env, cwd=REPO)
    sock.close()
    gateway = GatewayProcess(proc, url)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{kind} {name} exited with {proc.returncode}")
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 15, f"{kind} {name} to answer /healthz", every=0.05)
    return gateway
