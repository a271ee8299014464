"""A throwaway PostgreSQL cluster from the machine's server binaries, for tests and the lab.

`PgCluster(directory).start()` runs `initdb` (trust authentication, one superuser) in
`directory/data` and `pg_ctl start` with a unix socket in `directory` and 127.0.0.1 on a free
port; it returns the cluster's `postgresql://` URL. `stop()` stops it (`-m immediate`: the
data is thrown away anyway). `restart_crash()` is `pg_ctl restart -m immediate`, a crash
restart for chaos tests.

The binaries are found with `pg_config --bindir`, then a glob of /usr/lib/postgresql/*/bin
(newest first); none found is a `ClusterError` saying how to get them (`apt-get install
postgresql` on Debian/Ubuntu). `initdb` refuses to run as root: as root, every server command
runs as the `postgres` user (`runuser -u postgres --`), in a directory made its own (its
parents must let that user through: a directory under /tmp does, /root does not).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

__all__ = ["ClusterError", "PgCluster", "find_bindir"]

_SUPERUSER = "sagalab"


class ClusterError(RuntimeError):
    """The cluster could not be set up or started; the message says why and what to do."""


def find_bindir() -> Path:
    """The directory holding `initdb` and `pg_ctl` (ClusterError if there is none)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    # Newest major version first: "15" sorts before "9" as text, not as a number.
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates.extend(Path(p) for p in reversed(versions))
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).parent)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise ClusterError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install them "
        "(`apt-get install postgresql` on Debian/Ubuntu) or pass an existing server's URL"
    )


#: Starts tried on a port of our own choosing that turns out taken (each a new free port).
PORT_ATTEMPTS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One throwaway cluster in `directory` (created if missing)."""

    def __init__(self, directory: str | Path, *, port: int | None = None) -> None:
        self.directory = Path(directory).absolute()
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.port = port or _free_port()
        self._port_given = port is not None
        self.bindir = find_bindir()
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        """The URL of the cluster's `postgres` database over TCP on 127.0.0.1."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """The URL of `database` on this cluster."""
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        # The server inherits no pipe of ours (its output goes to the log with -l): a pipe
        # held open by the postmaster would block this call until the server exits.
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ClusterError(f"{args[0]} failed: {' / '.join(tail)} (log: {self.log})")
        return result

    def start(self) -> str:
        """Create the cluster if needed, start it, and return its URL."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            # The server runs as `postgres`: it must own its directory (and its socket).
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            reachable = subprocess.run(
                ["runuser", "-u", "postgres", "--", "test", "-w", str(self.directory)],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=10,
            )
            if reachable.returncode != 0:
                raise ClusterError(
                    f"the postgres user cannot reach {self.directory} (a parent directory "
                    "is private to root): put the cluster in a directory whose parents "
                    "it may enter (mode 0711 or wider), e.g. one under /tmp"
                )
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb", "-A", "trust", "-U", _SUPERUSER, "-E", "UTF8", "--no-sync", "-D",
                str(self.data),
            )  # fmt: skip
        for attempt in range(1, PORT_ATTEMPTS + 1):
            options = (
                f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c max_connections=200"
            )
            logged = self.log.stat().st_size if self.log.exists() else 0
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                    "start",
                )  # fmt: skip
                return self.url
            except ClusterError:
                # The free port we picked was taken before the server bound it (another
                # process's bind or outgoing connection: several test workers start clusters
                # and servers at once). A port given by the caller is theirs to fix.
                if self._port_given or attempt == PORT_ATTEMPTS or not self._port_taken(logged):
                    raise
                self.port = _free_port()
        raise AssertionError("unreachable")

    def _port_taken(self, since: int) -> bool:
        """The server's log after byte `since` says its port was in use."""
        try:
            with self.log.open("rb") as f:
                f.seek(since)
                return b"Address already in use" in f.read()
        except OSError:
            return False

    def restart_crash(self) -> None:
        """Crash-restart the server (`pg_ctl restart -m immediate`): connections are cut."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "immediate", "-w", "restart"
        )

    def stop(self, *, mode: str = "immediate") -> None:
        """Stop the server, if it runs (the data stays in `directory`); `mode` is pg_ctl's
        (`fast` lets it shut down cleanly: what `sagalab db down` does to a lab's data)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
