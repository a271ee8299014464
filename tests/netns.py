"""Test "hosts" for multi-host tests: network namespaces on one machine, or loopback.

`hosts(roles)` gives one `Host` per role. As root with `ip netns`, each host is a network
namespace of its own (named `sl<pid>-<role>`, unique per run) with one veth link into a
switch namespace holding a bridge, and an address 10.213.0.N/24: a private network that
touches no interface of the machine's own namespace and that no other run can see. Else
(not root, namespaces refused, or SAGALAB_NETNS=loopback) every host is 127.0.0.1 and
the network's `note` says why, for the test to print. SAGALAB_NETNS=require (CI sets it)
makes namespaces mandatory: a host that cannot be made is a failure, never a fallback.

What a host offers either way:

- `Host.command(argv)`: the argv run on that host (`ip netns exec NS ...`, which execs: the
  child's pid is the program's own, so SIGKILL reaches it);
- `Host.entered()`: the calling thread joins the host's namespace (`setns`), so that sockets
  it creates (a server bound in this process, a client) live on that host;
- `Network.partition(a, b)` / `heal(a, b)`: blackhole routes both ways between two hosts, so
  their packets are dropped (a connection in progress stalls and resumes when healed, as TCP
  retransmits; new connections fail at once). Routes, because they need nothing but
  iproute2: this image has neither iptables nor nft, nor the netem qdisc. On loopback there
  is no network to cut: the partitioned host's processes are stopped (SIGSTOP) and continued
  (SIGCONT), which the database sees the same way: a holder that goes silent past its lease
  and writes late.

Every namespace is deleted when the `hosts` block ends, whatever happened in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sagalab.orchestrator.pg_cluster import PgCluster

SUBNET = "10.213.0"
_CLONE_NEWNET = 0x40000000
_MODES = ("auto", "require", "loopback")


class NetnsError(RuntimeError):
    """A namespace or link could not be made or changed; the message names the command."""


def _ip(*args: str) -> None:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _join(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace open as `fd`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise NetnsError(f"setns to {what}: {os.strerror(ctypes.get_errno())}")


@dataclass
class Host:
    """One test host: a network namespace (`netns`) with `address`, or 127.0.0.1."""

    role: str
    address: str = "127.0.0.1"
    netns: str | None = None
    #: Processes to SIGSTOP for a loopback "partition" (the caller keeps it current).
    pids: set[int] = field(default_factory=set)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run on this host."""
        if self.netns is None:
            return list(argv)
        return ["ip", "netns", "exec", self.netns, *argv]

    @contextlib.contextmanager
    def entered(self) -> Iterator[Host]:
        """The calling thread on this host's network for the block (threads it starts
        meanwhile stay there: a server started here keeps serving on this host)."""
        if self.netns is None:
            yield self
            return
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
        try:
            _join(there, self.netns)
            try:
                yield self
            finally:
                _join(home, "the thread's own network namespace")
        finally:
            os.close(there)
            os.close(home)


@dataclass
class Network:
    """The hosts of one run, and how to cut and heal links between them."""

    hosts: dict[str, Host]
    namespaces: bool
    note: str

    def __getitem__(self, role: str) -> Host:
        return self.hosts[role]

    def partition(self, a: Host, b: Host) -> None:
        """Drop every packet between `a` and `b` (loopback: stop `a`'s processes)."""
        if not self.namespaces:
            for pid in a.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            return
        _ip("-n", str(a.netns), "route", "add", "blackhole", f"{b.address}/32")
        _ip("-n", str(b.netns), "route", "add", "blackhole", f"{a.address}/32")

    def heal(self, a: Host, b: Host) -> None:
        """Undo `partition(a, b)`."""
        if not self.namespaces:
            for pid in a.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            return
        for x, y in ((a, b), (b, a)):
            with contextlib.suppress(NetnsError):  # already healed
                _ip("-n", str(x.netns), "route", "del", "blackhole", f"{y.address}/32")


def mode() -> str:
    """SAGALAB_NETNS: auto (default), require, or loopback."""
    value = (os.environ.get("SAGALAB_NETNS") or "auto").strip().lower()
    if value not in _MODES:
        raise NetnsError(f"SAGALAB_NETNS={value!r}: use one of {', '.join(_MODES)}")
    return value


def _why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


@contextlib.contextmanager
def hosts(roles: Sequence[str]) -> Iterator[Network]:
    """One host per role on a private network (see the module docstring)."""
    chosen = mode()
    why = "SAGALAB_NETNS=loopback" if chosen == "loopback" else _why_no_namespaces()
    made: list[str] = []
    network = None
    try:
        if why is None:
            try:
                network = _namespaces(roles, made)
            except NetnsError as exc:  # root without the right (a container, say)
                why = str(exc)
        if network is None:
            if chosen == "require":
                raise NetnsError(f"SAGALAB_NETNS=require, but no network namespaces: {why}")
            note = f"network namespaces unavailable ({why}): every host runs on 127.0.0.1"
            network = Network({r: Host(r) for r in roles}, namespaces=False, note=note)
        yield network
    finally:
        _delete(made)


def _namespaces(roles: Sequence[str], made: list[str]) -> Network:
    """A switch namespace with a bridge, and one namespace per role linked to it; each
    namespace's name is added to `made` as soon as it exists."""
    tag = f"sl{os.getpid()}"
    switch = f"{tag}-sw"
    _ip("netns", "add", switch)
    made.append(switch)
    _ip("-n", switch, "link", "add", "br0", "type", "bridge")
    _ip("-n", switch, "link", "set", "br0", "up")
    network = Network({}, namespaces=True, note="")
    for n, role in enumerate(roles, start=1):
        name = f"{tag}-{role}"
        _ip("netns", "add", name)
        made.append(name)
        host = Host(role, f"{SUBNET}.{n + 1}", name)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{n}",
            "netns", switch)  # fmt: skip
        _ip("-n", switch, "link", "set", f"p{n}", "master", "br0", "up")
        _ip("-n", name, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        network.hosts[role] = host
    network.note = (
        f"{len(roles)} hosts as network namespaces {tag}-{{{','.join(roles)}}} on a "
        f"bridge, {SUBNET}.0/24"
    )
    return network


def _delete(names: list[str]) -> None:
    """Delete these namespaces (their links go with them), newest first."""
    for name in reversed(names):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        names.remove(name)


class HostedCluster(PgCluster):
    """A `PgCluster` whose server runs on `host` and also listens on the host's address.

    Every server command (`initdb`, `pg_ctl start/restart/stop`) is started from a thread
    on the host (`Host.entered`): the postmaster, and the one a crash restart starts, live
    in the host's namespace. Clients connect over TCP to `host.address`.
    """

    def __init__(self, directory: str | os.PathLike[str], host: Host) -> None:
        super().__init__(directory)
        self.host = host

    def url_for(self, database: str) -> str:
        """The URL of `database` on this cluster, at the host's address."""
        return super().url_for(database).replace("@127.0.0.1:", f"@{self.host.address}:")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        listen = "listen_addresses=127.0.0.1"
        if args[0] == "pg_ctl" and "-o" in args and self.host.netns is not None:
            options = args[args.index("-o") + 1]
            if listen not in options:  # PgCluster changed how it says where to listen
                raise NetnsError(f"cannot add {self.host.address} to pg_ctl -o {options!r}")
            wider = options.replace(listen, f"{listen},{self.host.address}")
            args = tuple(wider if a == options else a for a in args)
            hba = self.data / "pg_hba.conf"
            rule = f"host all all {SUBNET}.0/24 trust\n"  # initdb trusts 127.0.0.1 only
            if rule not in hba.read_text():
                with hba.open("a") as f:
                    f.write(rule)
        with self.host.entered():
            return super()._run(*args)
