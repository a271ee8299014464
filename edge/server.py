"""Serving an ASGI app on a socket bound up front: in a background thread, or in this process.

The socket is bound before uvicorn starts (port 0 gives the real port at once; a taken port
fails fast) and is created with `IPPROTO_TCP`: asyncio sets TCP_NODELAY only on accepted
sockets whose proto says TCP, and without it every keep-alive request waits ~40 ms (Nagle
against delayed ACK). A parent process (`sagalab stack`) binds and hands the socket to a child
by file descriptor (`--fd`).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn

from sagalab.edge.connections import ConnectionLimits, GuardedH11Protocol
from sagalab.edge.errors import EdgeError

__all__ = ["RunningServer", "bind", "serve_forever", "serve_in_thread", "socket_from_fd"]


def bind(host: str = "127.0.0.1", port: int = 0, *, inheritable: bool = False) -> socket.socket:
    """A listening-ready TCP socket bound to `host`:`port` (0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise EdgeError(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another port"
            ) from None
        raise EdgeError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(inheritable)
    return sock


def socket_from_fd(fd: int) -> socket.socket:
    """The socket a parent passed as file descriptor `fd` (family and proto read from it)."""
    return socket.socket(fileno=fd)


def _config(app: Any, limits: ConnectionLimits | None = None) -> uvicorn.Config:
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "auto",
        "timeout_graceful_shutdown": 2,
        "timeout_keep_alive": 30,
        "backlog": 2048,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default and rewrites the client
        # address; on loopback every peer is 127.x, so the firewall decides that itself.
        "proxy_headers": False,
    }
    if limits is not None:
        # h11 with header timeout, connection caps and 431.
        options.update(
            http=GuardedH11Protocol.for_limits(limits),
            timeout_keep_alive=limits.keep_alive,
            # h11 refuses an incomplete head above this (our protocol answers that with 431).
            h11_max_incomplete_event_size=limits.max_header_bytes,
        )
    return uvicorn.Config(app, **options)


@dataclass
class RunningServer:
    """An app served in a background thread. Stop it with `stop()` or a `with` block."""

    url: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _sock: socket.socket = field(repr=False)

    def stop(self, timeout: float = 5.0) -> None:
        """Shut down, wait for the thread, close the socket. Idempotent."""
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_thread(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    startup_timeout: float = 10.0,
    limits: ConnectionLimits | None = None,
) -> RunningServer:
    """Serve `app` on `host`:`port` in a daemon thread; returns once uvicorn has started.

    `limits`: connection limits (`python -m sagalab.edge.apps` serves every component with them);
    None for a server in a test that needs none.
    """
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, limits))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"edge-{bound}", daemon=True
    )
    running = RunningServer(f"http://{host}:{bound}", bound, server, thread, sock)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            running.stop(timeout=1.0)
            raise EdgeError(f"server on {host}:{bound} did not start within {startup_timeout}s")
        time.sleep(0.005)
    return running


def serve_forever(app: Any, sock: socket.socket, *, limits: ConnectionLimits | None = None) -> None:
    """Serve `app` on `sock` in this process until SIGTERM or SIGINT (uvicorn handles both)."""
    uvicorn.Server(_config(app, limits)).run(sockets=[sock])
