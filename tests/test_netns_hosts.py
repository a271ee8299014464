"""The test hosts of tests/netns.py: reachable from each other, cut and healed, cleaned up,
and never a quiet fallback where namespaces are required."""

from __future__ import annotations

import socket
import subprocess
import threading

import netns
import pytest
from netns import Host, NetnsError, hosts


def _serve_once(host: Host) -> tuple[socket.socket, int]:
    """A listening socket on `host` (accepting in a thread); its port."""
    with host.entered():
        server = socket.create_server((host.address, 0))
    port = server.getsockname()[1]

    def accept() -> None:
        with server:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                conn.close()

    threading.Thread(target=accept, daemon=True).start()
    return server, port


def _reaches(client: Host, server: Host, port: int) -> bool:
    with client.entered():
        try:
            socket.create_connection((server.address, port), timeout=2).close()
        except OSError:
            return False
    return True


def test_hosts_reach_each_other_until_cut_and_again_once_healed() -> None:
    with hosts(["a", "b"]) as net:
        a, b = net["a"], net["b"]
        if not net.namespaces:  # loopback: nothing to cut, and the note says why
            assert "127.0.0.1" in net.note
            return
        names = [a.netns, b.netns]
        server, port = _serve_once(b)
        try:
            assert _reaches(a, b, port)
            net.partition(a, b)
            assert not _reaches(a, b, port)
            net.heal(a, b)
            assert _reaches(a, b, port)
        finally:
            server.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names), listed


def test_required_namespaces_without_root_fail_and_auto_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("SAGALAB_NETNS", "require")
    with pytest.raises(NetnsError, match="not root"), hosts(["a"]):
        pass
    monkeypatch.setenv("SAGALAB_NETNS", "auto")
    with hosts(["a"]) as net:
        assert not net.namespaces and net["a"].address == "127.0.0.1"
        assert "not root" in net.note
    monkeypatch.setenv("SAGALAB_NETNS", "sometimes")
    with pytest.raises(NetnsError, match="SAGALAB_NETNS"), hosts(["a"]):
        pass
