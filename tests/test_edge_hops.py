"""The hops behind the edge, as real processes: a gateway's and the API's own ports get the
edge's connection protections (header and body timeouts, the head size limit, a per-address
cap that exempts the hop in front).

In a stack every hop connects from 127.0.0.1, so that address is exempt from the per-address
cap (`--exempt`); these tests connect from other loopback addresses to see the cap.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagalab.edge.keys import open_key_store
from sagalab.edge.server import serve_in_thread
from tests.edgelab import (
    GatewayProcess,
    HoldingApi,
    read_to_close,
    start_component,
    start_gateway,
)

LIMITS = ["--header-timeout", "0.5", "--body-timeout", "0.5", "--per-address", "3"]
LIMITS += ["--max-header-bytes", "4096", "--exempt", "127.0.0.1"]


@pytest.fixture(params=["gateway", "api"])
def hop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayProcess]:
    keys_db = tmp_path / "keys.db"
    store = open_key_store(keys_db)
    _, key = store.create("client", rate=1000, burst=1000)
    store.close()
    (tmp_path / "key").write_text(key)
    if request.param == "gateway":
        with serve_in_thread(HoldingApi()) as api:
            proc = start_gateway(keys_db, api.url, "gw", LIMITS)
            try:
                yield proc
            finally:
                proc.stop()
    else:
        args = ["--db", str(tmp_path / "sagas.db"), "--keys-db", str(keys_db), *LIMITS]
        proc = start_component("api", args, "api")
        try:
            yield proc
        finally:
            proc.stop()


def connect(hop: GatewayProcess, source: str) -> socket.socket:
    host, port = hop.name.split(":")
    return socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))


def test_a_header_drip_is_closed_after_the_header_timeout(hop: GatewayProcess) -> None:
    with connect(hop, "127.0.0.1") as sock:
        started = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nhost: hop\r\nx-drip: " + b"a" * 100
        answer = b""
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
            if time.monotonic() - started > 1.0:
                break
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started < 4


def test_a_slow_body_gets_408(hop: GatewayProcess, tmp_path: Path) -> None:
    key = (tmp_path / "key").read_text().encode()
    with connect(hop, "127.0.0.1") as sock:
        sock.sendall(
            b"POST /v1/sagas HTTP/1.1\r\nhost: hop\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + key + b"\r\ncontent-length: 100\r\n\r\n{"
        )
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_a_head_over_the_limit_gets_431(hop: GatewayProcess) -> None:
    with connect(hop, "127.0.0.1") as sock:
        small = b"GET /healthz HTTP/1.1\r\nhost: hop\r\n\r\n"
        big = b"GET /healthz HTTP/1.1\r\nhost: hop\r\nx-big: " + b"a" * 8000 + b"\r\n\r\n"
        sock.sendall(small + big)
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b"HTTP/1.1 431 " in answer


def test_other_addresses_are_capped_but_the_hop_in_front_is_not(hop: GatewayProcess) -> None:
    held = [connect(hop, "127.0.0.7") for _ in range(3)]
    front = [connect(hop, "127.0.0.1") for _ in range(6)]
    try:
        with connect(hop, "127.0.0.7") as extra:
            answer = read_to_close(extra)
        assert answer.startswith(b"HTTP/1.1 429 "), answer
        front[-1].sendall(b"GET /healthz HTTP/1.1\r\nhost: hop\r\nconnection: close\r\n\r\n")
        assert read_to_close(front[-1]).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held + front:
            sock.close()
