"""Run the fake services on a real socket: in a background thread, or from the CLI.

    with run_in_thread() as running:          # 127.0.0.1, a free port
        httpx.post(running.services["payments"] + "/charges", ...)

The socket is bound here, before uvicorn starts, so a taken port fails fast with
:class:`~fakeservices.errors.PortInUseError` and port 0 yields the real port at once.
"""

from __future__ import annotations

import errno
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from sagalab.fakeservices.catalog import SERVICE_NAMES
from sagalab.fakeservices.errors import PortInUseError, ServerStartError
from sagalab.fakeservices.state import Clock, LabState

if TYPE_CHECKING:  # imported where a server starts: `sagalab verify` needs none of them
    import uvicorn
    from fastapi import FastAPI

#: Environment variable naming the base URL of a running lab (read by the CLI).
SERVICES_URL_ENV = "SAGALAB_SERVICES_URL"


def services_map(base_url: str) -> dict[str, str]:
    """Map each service name to its base URL, e.g. ``{base}/payments``."""
    base = base_url.rstrip("/")
    return {name: f"{base}/{name}" for name in SERVICE_NAMES}


def service_env(base_url: str) -> dict[str, str]:
    """The environment an orchestrator needs: ``SAGALAB_SERVICE_<NAME>`` per service, plus
    ``SAGALAB_SERVICES_URL`` for the admin commands."""
    env = {f"SAGALAB_SERVICE_{name.upper()}": url for name, url in services_map(base_url).items()}
    env[SERVICES_URL_ENV] = base_url.rstrip("/")
    return env


@dataclass
class RunningServices:
    """A lab serving in a background thread. Stop it with :meth:`stop` or a ``with`` block."""

    base_url: str
    app: FastAPI
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _sock: socket.socket = field(repr=False)

    @property
    def services(self) -> dict[str, str]:
        """Service name -> base URL."""
        return services_map(self.base_url)

    @property
    def env(self) -> dict[str, str]:
        """See :func:`service_env`."""
        return service_env(self.base_url)

    @property
    def lab(self) -> LabState:
        """The in-process state, for inspection without HTTP."""
        lab: LabState = self.app.state.lab
        return lab

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the server to end; return whether it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def request_stop(self) -> None:
        """Ask the server to shut down without waiting (safe from a signal handler)."""
        self._server.should_exit = True

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down, wait for its thread and close the socket. Idempotent."""
        self._server.should_exit = True
        if not self.wait(timeout):
            self._server.force_exit = True
            self.wait(timeout)
        self._sock.close()

    def __enter__(self) -> RunningServices:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not the default 0: asyncio only sets TCP_NODELAY on accepted
    # sockets whose proto says TCP, and without it every keep-alive request costs ~40 ms
    # (Nagle against delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise PortInUseError(host, port, exc.strerror or str(exc)) from None
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def run_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    app: FastAPI | None = None,
    startup_timeout: float = 10.0,
) -> RunningServices:
    """Serve the fake services on `host`:`port` (0 picks a free port) in a daemon thread.

    Returns once uvicorn reports ``started``. `clock` and `rng` go to :func:`create_app`
    unless a ready `app` is given. Raises :class:`PortInUseError` if the port is taken and
    :class:`ServerStartError` if the server does not come up within `startup_timeout`.
    """
    import uvicorn  # here, not at the top: importing the module must stay cheap (`sagalab verify`)

    if app is None:
        from sagalab.fakeservices.app import create_app

        app = create_app(clock=clock or time.time, rng=rng)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"fakeservices-{bound_port}",
        daemon=True,
    )
    url_host = f"[{host}]" if ":" in host else host
    running = RunningServices(f"http://{url_host}:{bound_port}", app, server, thread, sock)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            running.stop(timeout=1.0)
            raise ServerStartError(
                f"the fake services did not start on {host}:{bound_port} within "
                f"{startup_timeout:g}s; see the log above"
            )
        time.sleep(0.005)
    return running
