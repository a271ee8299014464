"""The whole path as real processes on 127.0.0.1, with a state file other terminals can read.

    edge (firewall + load balancer)  ->  gateway-1..N  ->  api  ->  SQLite  <-  worker-1..M
                                                                 or PostgreSQL   -> services

With `--postgres` the stack's first process is a throwaway PostgreSQL server in the stack
directory (stack.database), recorded as the state's `database`, stopped after the rest.

`start()` binds every listening socket itself (so ports are known at once and a taken port
fails before anything starts), starts each component with its socket as `--fd`, waits until
every one answers its health check, creates an API key and writes `stack.json` in the stack
directory. Components run in their own session: they outlive the terminal that started them
(`--detach`) until `stop()` (`sagalab stack down`) sends SIGTERM, then SIGKILL after a grace
period. A pid is only signalled if its start time matches the one recorded, so a recycled pid
is never hit.

`sagalab stack up` runs `start()` inside a stack supervisor process
(`stack.supervisor`), which is then the parent of every component: it restarts one that
dies (`respawn()` binds its port again) and records the restart in `stack.json`. `stop()` asks
that supervisor to stop first, then stops whatever is still running itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from sagalab.edge.errors import StackError
from sagalab.edge.keys import open_key_store
from sagalab.edge.server import bind

__all__ = [
    "Component",
    "StackConfig",
    "StackState",
    "load_state",
    "respawn",
    "start",
    "database_target",
    "stop",
    "stop_database",
    "write_state",
]

STATE_FILE = "stack.json"
#: The order `stack down` stops components in: what takes new work first (edge, console).
STOP_ORDER = {"edge": 0, "ui": 0, "gateway": 1, "api": 2, "worker": 3, "services": 4}
#: The gateways' secret for the API (mode 0600; new at every `stack up`; never on a command line).
SECRET_FILE = "gateway.secret"
#: The gateways and the API serve with the edge's connection limits; the hop in front of each
#: (the edge, the gateways) connects from 127.0.0.1, so no per-address cap applies to it.
_EXEMPT_HOPS = ("--exempt", "127.0.0.1")
#: The range the load tests' flooding users bind to; denied by default.
BLOCKED_RANGE = "127.66.0.0/16"


@dataclass
class StackConfig:
    """What `sagalab stack up` starts."""

    directory: Path
    #: A SQLite path or a PostgreSQL URL (default: sagas.db in `directory`).
    db: Path | str | None = None
    #: Start a throwaway PostgreSQL cluster in the directory and use it as `db`.
    postgres: bool = False
    #: Where the API's reads go (a streaming replica of `db`); None: `db`.
    read_db: str | None = None
    gateways: int = 2
    workers: int = 1
    concurrency: int = 8
    services: bool = True
    services_url: str | None = None
    edge_port: int = 8800
    strategy: str = "least_connections"
    deny: list[str] = field(default_factory=lambda: [BLOCKED_RANGE])
    allow: list[str] = field(default_factory=list)
    flood_rate: float = 200.0
    flood_burst: float = 400.0
    flood_block: float = 10.0
    key_rate: float = 1000.0
    key_burst: float = 2000.0
    startup_timeout: float = 30.0
    #: Seconds before restarting a component that died; doubles with each quick death.
    restart_delay: float = 0.5
    #: Serve the web console (`sagalab ui`) as the `ui` component, on `ui_port` (0: any
    #: free one); `ui_actions` passes `--allow-actions` (off: read-only).
    ui: bool = False
    ui_port: int = 0
    ui_actions: bool = False
    #: Where every component appends its OpenTelemetry spans (absolute path); None: no tracing.
    trace_file: str | None = None
    #: Components get SIGTERM when the process that started them dies, even by SIGKILL
    #: (Linux): for a stack that lives only as long as one command (`simulate validate`).
    die_with_parent: bool = False


@dataclass
class Component:
    """One process of the stack."""

    name: str
    kind: str
    pid: int
    started: float
    url: str | None
    health: str | None
    log: str
    command: list[str]
    #: The port its `--fd` socket listens on (bound again when it is restarted).
    port: int | None = None
    #: Restarts so far, why it last stopped, and when a pending restart is due (epoch s).
    restarts: int = 0
    last_exit: str | None = None
    restart_at: float | None = None
    #: Variables added to its environment (the services' URLs for a worker).
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class StackState:
    """What `stack.json` holds."""

    directory: str
    db: str
    keys_db: str
    edge_url: str
    services_url: str | None
    api_key: str
    components: list[Component]
    created_at: float
    #: The process that restarts components that die (None: started without one).
    supervisor: Component | None = None
    #: The stack's own PostgreSQL server (`stack up --postgres`), stopped with the stack.
    database: Component | None = None
    #: The URL the API reads from (`stack up --read-db`), None: `db`.
    read_db: str | None = None
    #: The web console's link (`stack up --no-ui`: None).
    ui_url: str | None = None

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        names = ", ".join(c.name for c in self.components)
        raise StackError(f"no component {name!r} in this stack; components: {names}")


def proc_start(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is gone for our purposes
        return None
    return float(fields[19])


#: The processes this process started, by pid: kept so that exit codes can be read (a Popen
#: that is dropped gets reaped by the subprocess module behind our back).
children: dict[int, subprocess.Popen[bytes]] = {}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def alive(c: Component) -> bool:
    """The component's process is running (and is the one we started)."""
    return proc_start(c.pid) == c.started


def _dies_with(parent: int) -> Callable[[], None]:
    """For the child, between fork and exec: SIGTERM when `parent` dies (PR_SET_PDEATHSIG),
    and exit at once if it died already (the signal is only sent for a later death)."""
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def tie() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return tie


def _spawn(
    name: str,
    kind: str,
    command: list[str],
    logs: Path,
    *,
    url: str | None,
    health: str | None,
    pass_fds: tuple[int, ...] = (),
    env: dict[str, str] | None = None,
    port: int | None = None,
    tied: bool = False,
) -> Component:
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            preexec_fn=_dies_with(os.getpid()) if tied else None,
        )
    children[proc.pid] = proc
    started = None
    for _ in range(100):
        started = proc_start(proc.pid)
        if started is not None:
            break
        time.sleep(0.01)
    return Component(
        name, kind, proc.pid, started or -1.0, url, health, str(log), command, port=port,
        env=dict(env or {}),
    )  # fmt: skip


def respawn(c: Component) -> Component:
    """Start `c` again with the same command and environment, on the same port.

    Raises StackError if the port has been taken meanwhile.
    """
    fds: tuple[int, ...] = ()
    if c.port is None:
        command = c.command
        sock = None
    else:
        sock = bind("127.0.0.1", c.port, inheritable=True)
        fd = sock.fileno()
        at = c.command.index("--fd") + 1
        command, fds = [*c.command[:at], str(fd), *c.command[at + 1 :]], (fd,)
    try:
        new = _spawn(
            c.name, c.kind, command, Path(c.log).parent, url=c.url, health=c.health,
            pass_fds=fds, port=c.port, env=c.env,
        )  # fmt: skip
    finally:
        if sock is not None:
            sock.close()  # the child holds its copy
    new.restarts, new.last_exit = c.restarts, c.last_exit
    return new


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def load_state(directory: Path) -> StackState:
    """The state of the stack started in `directory`."""
    path = directory / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise StackError(
            f"no stack is running from {directory} (no {path}); start one with `sagalab stack up`"
        ) from None
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read {path}: {exc}") from None
    raw["components"] = [Component(**c) for c in raw["components"]]
    for part in ("supervisor", "database"):
        if raw.get(part):
            raw[part] = Component(**raw[part])
    return StackState(**raw)


def write_state(state: StackState) -> None:
    """Write `stack.json` atomically (readers never see half a file)."""
    path = Path(state.directory) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.chmod(tmp, 0o600)  # it holds a usable API key
    tmp.replace(path)


def check(c: Component, timeout: float = 1.0) -> str:
    """`up`, `unhealthy (...)`, or `down`."""
    if not alive(c):
        return "down"
    if c.health is None:
        return "up"
    try:
        r = httpx.get(c.health, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"unhealthy ({type(exc).__name__})"
    return "up" if r.status_code == 200 else f"unhealthy ({r.status_code})"


def start(
    config: StackConfig,
    *,
    on_progress: Callable[[str], None] = lambda _: None,
    supervisor: Component | None = None,
    database: Component | None = None,
) -> StackState:
    """Start every component; raise StackError (after stopping what started) on failure.

    `supervisor` is the process that will restart components, `database` the stack's own
    PostgreSQL server (`config.db` is its URL): both recorded in the state file.
    """
    spawn = partial(_spawn, tied=config.die_with_parent)
    directory = config.directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    state_path = directory / STATE_FILE
    if state_path.exists():
        try:
            previous = load_state(directory)
        except StackError:
            previous = None
        if previous is not None and any(alive(c) for c in previous.components):
            raise StackError(
                f"a stack is already running from {directory}; `sagalab stack down` stops it"
            )
        state_path.unlink()
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    db = database_target(config.db, directory)
    keys_db = directory / "keys.db"
    secret_file = _write_secret(directory / SECRET_FILE)
    started: list[Component] = []
    sockets = []
    # Every component appends to the one file (a line per span, one write each).
    traced = ["--trace-file", config.trace_file] if config.trace_file else []
    try:
        services_url = config.services_url
        env: dict[str, str] = {}
        if config.services:
            probe = bind("127.0.0.1", 0)
            port = probe.getsockname()[1]
            probe.close()  # `services up` binds its own port; it is free now
            services_url = f"http://127.0.0.1:{port}"
            started.append(
                spawn(
                    "services",
                    "services",
                    _python("sagalab.cli.main", "services", "up", "--port", str(port)),
                    logs,
                    url=services_url,
                    health=f"{services_url}/healthz",
                )
            )
        if services_url:
            from sagalab.fakeservices.server import service_env

            env = service_env(services_url)
        api_sock = bind("127.0.0.1", 0, inheritable=True)
        sockets.append(api_sock)
        api_url = f"http://127.0.0.1:{api_sock.getsockname()[1]}"
        started.append(
            spawn(
                "api",
                "api",
                _python(
                    "sagalab.edge.apps",
                    "api",
                    "--fd",
                    str(api_sock.fileno()),
                    "--db",
                    db,
                    *(["--read-db", config.read_db] if config.read_db else []),
                    "--keys-db",
                    str(keys_db),
                    "--secret-file",
                    str(secret_file),
                    "--no-direct-keys",  # every client goes through the edge's firewall
                    *_EXEMPT_HOPS,
                    *traced,
                ),
                logs,
                url=api_url,
                health=f"{api_url}/readyz",
                pass_fds=(api_sock.fileno(),),
                port=api_sock.getsockname()[1],
            )
        )
        open_key_store(keys_db).close()
        gateway_urls = []
        for i in range(1, config.gateways + 1):
            sock = bind("127.0.0.1", 0, inheritable=True)
            sockets.append(sock)
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            gateway_urls.append(url)
            started.append(
                spawn(
                    f"gateway-{i}",
                    "gateway",
                    _python(
                        "sagalab.edge.apps",
                        "gateway",
                        "--fd",
                        str(sock.fileno()),
                        "--keys-db",
                        str(keys_db),
                        "--upstream",
                        api_url,
                        "--rate-share",
                        str(config.gateways),
                        "--instance",
                        f"gateway-{i}",
                        "--secret-file",
                        str(secret_file),
                        *_EXEMPT_HOPS,
                        *traced,
                    ),
                    logs,
                    url=url,
                    health=f"{url}/readyz",
                    pass_fds=(sock.fileno(),),
                    port=sock.getsockname()[1],
                )
            )
        edge_sock = bind("127.0.0.1", config.edge_port, inheritable=True)
        sockets.append(edge_sock)
        edge_url = f"http://127.0.0.1:{edge_sock.getsockname()[1]}"
        edge_cmd = _python("sagalab.edge.apps", "edge", "--fd", str(edge_sock.fileno()))
        edge_cmd += ["--strategy", config.strategy]
        for u in gateway_urls:
            edge_cmd += ["--upstream", u]
        for d in config.deny:
            edge_cmd += ["--deny", d]
        for a in config.allow:
            edge_cmd += ["--allow", a]
        edge_cmd += [
            "--flood-rate",
            str(config.flood_rate),
            "--flood-burst",
            str(config.flood_burst),
        ]
        edge_cmd += ["--flood-block", str(config.flood_block), *traced]
        if gateway_urls:
            started.append(
                spawn(
                    "edge",
                    "edge",
                    edge_cmd,
                    logs,
                    url=edge_url,
                    health=f"{edge_url}/edge/readyz",
                    pass_fds=(edge_sock.fileno(),),
                    port=edge_sock.getsockname()[1],
                )
            )
        for i in range(1, config.workers + 1):
            # Each worker serves its own Prometheus metrics; like `services up` it binds the port
            # itself (and again when restarted), so the probe only reserves a free number.
            probe = bind("127.0.0.1", 0)
            metrics_port = probe.getsockname()[1]
            probe.close()
            started.append(
                spawn(
                    f"worker-{i}",
                    "worker",
                    _python(
                        "sagalab.cli.main",
                        "worker",
                        "--replicas",
                        "1",
                        "--db",
                        db,
                        "--concurrency",
                        str(config.concurrency),
                        "--metrics-port",
                        str(metrics_port),
                        *traced,
                    ),
                    logs,
                    url=f"http://127.0.0.1:{metrics_port}/metrics",
                    health=None,
                    env=env,
                )
            )
        for s in sockets:
            s.close()  # the children hold their copies
        sockets.clear()
        _wait_ready(started, config.startup_timeout, on_progress)
        ui_url = None
        if config.ui:  # after the API: its database exists by now
            console = _start_ui(config, db, logs)
            started.append(console)
            ui_url = console.url
            _wait_ready([console], config.startup_timeout, on_progress)
        _, api_key = open_key_store(keys_db).create(
            "stack", rate=config.key_rate, burst=config.key_burst, replace=True
        )
        state = StackState(
            directory=str(directory),
            db=db,
            keys_db=str(keys_db),
            edge_url=edge_url,
            services_url=services_url,
            api_key=api_key,
            components=started,
            created_at=time.time(),
            supervisor=supervisor,
            database=database,
            read_db=config.read_db,
            ui_url=ui_url,
        )
        write_state(state)
        return state
    except BaseException:
        for s in sockets:
            s.close()
        terminate(started, grace=3.0)
        raise


def _start_ui(config: StackConfig, db: str, logs: Path) -> Component:
    """The web console over the stack's database, on a socket bound here like the others."""
    spawn = partial(_spawn, tied=config.die_with_parent)
    sock = bind("127.0.0.1", config.ui_port, inheritable=True)
    try:
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        command = _python("sagalab.cli.main", "ui", "--db", db, "--fd", str(sock.fileno()))
        command += ["--allow-actions"] if config.ui_actions else []
        # The file every component appends its spans to: trace ids link to their tree.
        command += ["--trace-file", config.trace_file] if config.trace_file else []
        return spawn(
            "ui", "ui", command, logs, url=url + "/", health=f"{url}/healthz",
            pass_fds=(sock.fileno(),), port=port,
        )  # fmt: skip
    finally:
        sock.close()  # the child holds its copy


def database_target(db: Path | str | None, directory: Path) -> str:
    """What the components get as `--db`: a PostgreSQL URL as typed, else the SQLite file's
    absolute path (default: sagas.db in the stack directory)."""
    from sagalab.orchestrator.stores import postgres_url

    url = postgres_url(db) if db is not None else None
    if url is not None:
        return url
    return str(Path(db or directory / "sagas.db").resolve())


def _write_secret(path: Path) -> Path:
    """A new random gateway secret in `path`, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file may have had looser bits
        os.write(fd, secrets.token_urlsafe(32).encode())
    finally:
        os.close(fd)
    return path


def _wait_ready(
    components: list[Component], timeout: float, on_progress: Callable[[str], None]
) -> None:
    deadline = time.monotonic() + timeout
    pending = list(components)
    # Workers have no port: they count as ready when they are still alive after the others.
    while pending:
        for c in list(pending):
            if not alive(c):
                tail = tail_log(Path(c.log))
                raise StackError(
                    f"{c.name} exited during start-up; its log ({c.log}) ends:\n{tail}"
                )
            if c.health is None or check(c, timeout=0.5) == "up":
                if c.health is not None:
                    on_progress(f"{c.name} ready at {c.url}")
                pending.remove(c)
        if pending and time.monotonic() > deadline:
            names = ", ".join(c.name for c in pending)
            raise StackError(
                f"{names} did not become healthy within {timeout:g}s; see {pending[0].log}"
            )
        if pending:
            time.sleep(0.05)
    time.sleep(0.3)
    for c in components:
        if c.health is None and not alive(c):
            raise StackError(
                f"{c.name} exited during start-up; its log ({c.log}) ends:\n{tail_log(Path(c.log))}"
            )


def tail_log(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _signal(c: Component, sig: int, *, group: bool = True) -> bool:
    if not alive(c):
        return False
    try:
        if not group:
            os.kill(c.pid, sig)
        else:
            os.killpg(c.pid, sig)  # the component and anything it started (worker replicas)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(c.pid, sig)
    return True


def terminate(components: list[Component], grace: float) -> list[str]:
    """SIGTERM every live component, SIGKILL those still alive after `grace`; names stopped."""
    stopped = [c.name for c in components if _signal(c, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(c) for c in components):
        time.sleep(0.05)
    for c in components:
        if alive(c):
            _signal(c, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(alive(c) for c in components):
        time.sleep(0.02)
    return stopped


def stop(directory: Path, *, grace: float = 5.0) -> list[str]:
    """Stop every component of the stack in `directory` and remove its state file.

    The supervisor is asked first (it stops the components itself, and restarts nothing
    after), then anything still running is stopped here: the stack stops even if its
    supervisor is dead or stuck.
    """
    state = load_state(directory.resolve())
    database = [state.database] if state.database is not None else []
    running = [c.name for c in [*state.components, *database] if alive(c)]
    sup = state.supervisor
    if sup is not None and _signal(sup, signal.SIGTERM, group=False):
        deadline = time.monotonic() + grace + 5.0
        while time.monotonic() < deadline and alive(sup):
            time.sleep(0.05)
        if alive(sup):
            _signal(sup, signal.SIGKILL, group=False)
        state = _reload(state)
    # The edge first, so no new work comes in while the rest stops.
    components = sorted(state.components, key=lambda c: STOP_ORDER.get(c.kind, 5))
    terminate(components, grace)
    if state.database is not None:
        stop_database(state.database, grace=grace)  # the last: the components used it
    from sagalab.orchestrator.stores import release_files

    # The console, stopped last, reads SQLite read-only and cannot remove the `-wal` and
    # `-shm` files as it closes; a component that was killed never closes at all. The keys
    # file too: whichever of the API and the gateways closed it last left them at times.
    for db in {state.db, state.read_db or state.db, state.keys_db}:
        release_files(db)
    (Path(state.directory) / STATE_FILE).unlink(missing_ok=True)
    return running


def stop_database(database: Component, *, grace: float = 10.0) -> bool:
    """Stop the stack's PostgreSQL server if it still runs; whether it was running.

    SIGINT is the server's fast shutdown (sessions cut, a clean stop); SIGQUIT after `grace`
    its immediate one. Only the postmaster is signalled: it stops its own children.
    """
    if not _signal(database, signal.SIGINT, group=False):
        return False
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and alive(database):
            time.sleep(0.05)
        if not alive(database):
            break
        _signal(database, sig, group=False)
    return True


def _reload(state: StackState) -> StackState:
    """The state file as the supervisor last wrote it (it may have restarted components)."""
    try:
        return load_state(Path(state.directory))
    except StackError:
        return state


def kill(directory: Path, name: str, sig: int = signal.SIGKILL) -> Component:
    """Send `sig` to one component (SIGKILL by default), to break things on purpose."""
    state = load_state(directory.resolve())
    component = state.component(name)
    if not _signal(component, sig):
        raise StackError(f"{name} is not running")
    return component


def status(directory: Path) -> tuple[StackState, list[dict[str, Any]]]:
    """The state and each component's health, restarts and why it last stopped."""
    state = load_state(directory.resolve())
    from sagalab.orchestrator.stores import shown

    rows = []
    database = [state.database] if state.database is not None else []
    for c in [*database, *state.components]:
        health = check(c)
        if health == "down" and c.restart_at is not None:
            health = f"restarting in {max(0.0, c.restart_at - time.time()):.1f}s"
        rows.append(
            {
                "name": c.name,
                "kind": c.kind,
                "pid": c.pid,
                "url": shown(c.url) if c.kind == "database" and c.url else c.url,
                "status": health,
                "restarts": c.restarts,
                "last_exit": c.last_exit,
                "log": c.log,
            }
        )
    return state, rows


def supervised(state: StackState) -> bool:
    """A supervisor is running for this stack (it restarts components that die)."""
    return state.supervisor is not None and alive(state.supervisor)
