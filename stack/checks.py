"""Every option of `sagalab stack up`, checked before anything starts.

`validate()` raises `StackOptionError` (bad input, `--postgres` with `--db`: exit 2) or
`StackEnvironmentError` (the directory, database, read database, services file or port cannot
be used, or `--postgres` finds no PostgreSQL server binaries: exit 5), each with a one-line
message. It starts no process and writes no state file; it may create the stack directory
and the saga database, which the stack would create anyway.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sagalab.edge.errors import EdgeError, StackError
from sagalab.edge.policies.balancer import Strategy
from sagalab.edge.server import bind
from sagalab.orchestrator.errors import SagaError
from sagalab.orchestrator.limits import (
    CONCURRENCY_WHY,
    GATEWAYS_WHY,
    MAX_CONCURRENCY,
    MAX_FLOOD_BURST,
    MAX_FLOOD_RATE,
    MAX_GATEWAYS,
    MAX_STACK_WORKERS,
    REPLICAS_WHY,
    LimitError,
    check,
)
from sagalab.stack.processes import StackConfig, alive, load_state
from sagalab.stack.supervisor import MAX_RESTART_DELAY, MIN_RESTART_DELAY

__all__ = ["StackEnvironmentError", "StackOptionError", "validate"]


class StackOptionError(StackError):
    """An option of `stack up` is out of range or malformed (exit 2)."""


class StackEnvironmentError(StackError):
    """The stack's directory, database, services file or port cannot be used (exit 5)."""


def validate(c: StackConfig, env: Mapping[str, str] | None = None) -> None:
    """Check every setting of `c`; `env` is the environment the workers will inherit."""
    env = os.environ if env is None else env
    try:
        check("--gateways", c.gateways, low=1, high=MAX_GATEWAYS, why=GATEWAYS_WHY)
        check("--workers", c.workers, low=0, high=MAX_STACK_WORKERS, why=REPLICAS_WHY)
        check("--concurrency", c.concurrency, low=1, high=MAX_CONCURRENCY, why=CONCURRENCY_WHY)
        check("--port", c.edge_port, low=0, high=65535, why="0 picks a free port")
        check("--ui-port", c.ui_port, low=0, high=65535, why="0 picks a free port")
        check(
            "--restart-delay",
            c.restart_delay,
            low=MIN_RESTART_DELAY,
            high=MAX_RESTART_DELAY,
            why="the most the doubling reaches",
            low_why="0 would restart a crashing component as fast as it dies",
        )
    except LimitError as exc:
        raise StackOptionError(str(exc)) from None
    if c.strategy not in set(Strategy):
        choices = ", ".join(s.value for s in Strategy)
        raise StackOptionError(f"--strategy {c.strategy!r} is not one of: {choices}")
    for flag, nets in (("--deny", c.deny), ("--allow", c.allow)):
        for net in nets:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise StackOptionError(
                    f"{flag} {net!r} is not an address or CIDR range (e.g. 10.0.0.0/8)"
                ) from None
    # A flood rate of 0 turns the edge's flood protection off, as the edge itself takes it.
    if not math.isfinite(c.flood_rate) or c.flood_rate < 0:
        raise StackOptionError(f"--flood-rate must be 0 (off) or more, got {c.flood_rate:g}")
    if not math.isfinite(c.flood_burst) or c.flood_burst <= 0:
        raise StackOptionError(f"--flood-burst must be a positive number, got {c.flood_burst:g}")
    try:
        check("--flood-rate", c.flood_rate, high=MAX_FLOOD_RATE, why="requests/s from one address")
        check("--flood-burst", c.flood_burst, high=MAX_FLOOD_BURST)
    except LimitError as exc:
        raise StackOptionError(str(exc)) from None
    if c.postgres and c.db is not None:
        raise StackOptionError(
            "--postgres starts the stack's own database: pass either --postgres or --db, not both"
        )
    _check_not_running(c.directory)
    directory = _check_directory(c.directory)
    _check_services_file(env)
    if c.postgres:
        _check_server_binaries()
        _check_server_reach(directory)
    else:
        _check_db(c.db or directory / "sagas.db")
    if c.read_db is not None:
        _check_db(c.read_db, read_only=True, flag="--read-db")
    _check_port(c.edge_port)


def _check_not_running(directory: Path) -> None:
    """A second `stack up` in one directory says so (before its port is found taken)."""
    try:
        state = load_state(directory.resolve())
    except (StackError, OSError, TypeError):
        return  # no stack, or an unreadable state file that `start` replaces
    if any(alive(c) for c in state.components):
        raise StackError(
            f"a stack is already running from {directory}; `sagalab stack down` stops it"
        )


def probe_directory(directory: Path) -> None:
    """OSError unless `directory` can be written in, or created: creates nothing that stays.

    A missing directory is judged by its nearest existing ancestor, so a refused command
    leaves no empty directory behind (`start` creates it).
    """
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    with tempfile.NamedTemporaryFile(dir=existing, prefix=".probe-"):
        pass


def _check_directory(directory: Path) -> Path:
    """The stack directory exists or can be created, and this user can write in it."""
    try:
        probe_directory(directory)
    except OSError as exc:
        raise StackEnvironmentError(
            f"cannot use {directory} as the stack directory: {exc.strerror or exc}; "
            "pass a writable --dir"
        ) from None
    return directory.resolve()


def _check_services_file(env: Mapping[str, str]) -> None:
    """The workers would read SAGALAB_SERVICES_FILE: refuse a bad one now, not after start."""
    from sagalab.orchestrator.breaker_board import load_breaker_configs
    from sagalab.orchestrator.flowfile import load_services

    path = env.get("SAGALAB_SERVICES_FILE")
    if not path:
        return
    try:
        load_services(Path(path))
        load_breaker_configs(Path(path))
    except SagaError as exc:
        first = str(exc).splitlines()[0]  # a YAML error runs over several lines
        raise StackEnvironmentError(f"SAGALAB_SERVICES_FILE: {first}") from None


def _check_db(db: Path | str, *, read_only: bool = False, flag: str = "") -> None:
    # Checked, not created: a refusal that follows (a port in use) must leave no file.
    from sagalab.orchestrator.store import Access
    from sagalab.orchestrator.stores import check_store

    try:
        check_store(db, Access.READ if read_only else Access.CREATE)
    except SagaError as exc:
        raise StackEnvironmentError(f"{flag}: {exc}" if flag else str(exc)) from None


def _check_server_binaries() -> None:
    """`--postgres` needs the machine's initdb and pg_ctl: exit 5 saying how to get them."""
    from sagalab.orchestrator.pg_cluster import ClusterError, find_bindir

    try:
        find_bindir()
    except ClusterError as exc:
        raise StackEnvironmentError(f"--postgres: {exc}") from None


def _check_server_reach(directory: Path) -> None:
    """As root the server runs as `postgres` (orchestrator/pg_cluster.py): that user must be
    able to enter the stack directory, or the start would fail after every check passed."""
    if os.geteuid() != 0:
        return
    existing = directory.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # what is missing yet is created by root, mode 0755
    try:
        reach = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(existing)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise StackEnvironmentError(
            f"--postgres: cannot run the server as postgres: {exc}"
        ) from None
    if reach.returncode != 0:
        raise StackEnvironmentError(
            f"--postgres: as root the server runs as the postgres user, which cannot enter "
            f"{existing} (a parent directory is private to root): pass a --dir it may reach, "
            "e.g. one under /tmp"
        )


def _check_port(port: int) -> None:
    if port == 0:
        return
    try:
        bind("127.0.0.1", port).close()
    except EdgeError as exc:
        raise StackEnvironmentError(f"--port: {exc}") from None
