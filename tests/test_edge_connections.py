"""Client connections the edge will not hold for ever: header and body timeouts, a cap per
address and in all, and a request header size limit. Real sockets on 127.0.0.1, small limits."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest

from sagalab.edge.apps import EdgeSettings, build_edge, edge_limits
from sagalab.edge.connections import ConnectionLimits
from sagalab.edge.server import RunningServer, serve_in_thread
from tests.edgelab import REPO, HoldingApi, read_to_close

Edge = Callable[..., RunningServer]


@pytest.fixture
def edge() -> Iterator[Edge]:
    """Starts an edge in front of a fake API with the given `ConnectionLimits` fields."""
    with ExitStack() as stack:

        def start(**limits: float) -> RunningServer:
            api = serve_in_thread(HoldingApi())
            stack.callback(api.stop)
            settings = EdgeSettings(
                upstreams=[api.url],
                flood_rate=0,
                trusted_proxies=["127.0.0.9"],
                limits=ConnectionLimits(**limits),  # type: ignore[arg-type]
            )
            server = serve_in_thread(build_edge(settings), limits=edge_limits(settings))
            stack.callback(server.stop)
            return server

        yield start


def connect(server: RunningServer, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", server.port), timeout=5, source_address=(source, 0)
    )
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and a content-length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"<closed>"
        assert not data.endswith(b"<closed>"), data
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_idle_and_half_sent_connections_are_closed_after_the_header_timeout(edge: Edge) -> None:
    server = edge(header_timeout=0.3)
    idle, half = connect(server), connect(server)
    started = time.monotonic()
    half.sendall(b"GET /edge/healthz HTTP/1.1\r\nhost: edge\r\nx-slow: ")
    assert read_to_close(idle) == b""
    answer = read_to_close(half)
    assert time.monotonic() - started >= 0.3
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    # A kept-alive connection that starts its next request and stalls is closed too.
    kept = connect(server)
    kept.sendall(b"GET /edge/healthz HTTP/1.1\r\nhost: edge\r\n\r\n")
    assert read_response(kept).startswith(b"HTTP/1.1 200 ")
    kept.sendall(b"GET /edge/healthz HTTP/1.1\r\n")
    assert read_to_close(kept).startswith(b"HTTP/1.1 408 ")
    for sock in (idle, half, kept):
        sock.close()


def test_a_slow_body_gets_408_and_the_connection_closed(edge: Edge) -> None:
    server = edge(body_timeout=0.3)
    with connect(server) as sock:
        sock.sendall(b'POST /v1/sagas HTTP/1.1\r\nhost: edge\r\ncontent-length: 100\r\n\r\n{"a"')
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive within 0.3s" in answer


def test_one_address_over_its_cap_is_refused_while_others_get_in(edge: Edge) -> None:
    server = edge(per_address=20)
    hog = [connect(server, "127.0.0.5") for _ in range(20)]
    # Each is accepted and held (idle, within the header timeout): prove it on the last one.
    hog[-1].sendall(b"GET /edge/healthz HTTP/1.1\r\nhost: edge\r\n\r\n")
    assert read_response(hog[-1]).startswith(b"HTTP/1.1 200 ")
    for _ in range(5):
        with connect(server, "127.0.0.5") as extra:
            answer = read_to_close(extra)
        assert answer.startswith(b"HTTP/1.1 429 "), answer
        assert b"retry-after: 1" in answer
    for source in ("127.0.0.6", "127.0.0.1", "127.0.0.9"):
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(base_url=server.url, transport=transport, timeout=5) as other:
            assert other.get("/edge/healthz").status_code == 200
    # A trusted proxy carries many clients: it is not capped.
    proxy = [connect(server, "127.0.0.9") for _ in range(25)]
    proxy[-1].sendall(b"GET /edge/healthz HTTP/1.1\r\nhost: edge\r\n\r\n")
    assert read_response(proxy[-1]).startswith(b"HTTP/1.1 200 ")
    # The count goes down as connections close: the address gets in again.
    hog.pop().close()

    def admitted() -> bool:
        with connect(server, "127.0.0.5") as again:
            again.sendall(b"GET /edge/healthz HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n")
            return read_to_close(again).startswith(b"HTTP/1.1 200 ")

    deadline = time.monotonic() + 5
    while not admitted():
        assert time.monotonic() < deadline, "a closed connection was never uncounted"
        time.sleep(0.02)
    for sock in hog + proxy:
        sock.close()


def test_headers_over_the_limit_get_431_but_a_large_body_does_not(edge: Edge) -> None:
    server = edge(max_header_bytes=2048)
    with connect(server) as sock:
        sock.sendall(
            b"GET /edge/healthz HTTP/1.1\r\nhost: edge\r\nx-big: " + b"a" * 4000 + b"\r\n\r\n"
        )
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer
    assert b"limited to 2048 bytes" in answer
    body = b'{"pad": "' + b"b" * 8000 + b'"}'
    r = httpx.post(
        server.url + "/v1/sagas", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("header_timeout", 0.0),
        ("body_timeout", 10_000.0),
        ("keep_alive", float("nan")),
        ("max_header_bytes", 10),
        ("per_address", 0),
        ("max_connections", 10**9),
    ],
    ids=lambda v: str(v),
)
def test_limits_are_bounded(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be between"):
        ConnectionLimits(**{field: value})  # type: ignore[arg-type]


def test_the_edge_command_refuses_an_out_of_range_limit_with_exit_2() -> None:
    cmd = [
        sys.executable,
        "-m",
        "sagalab.edge.apps",
        "edge",
        "--upstream",
        "127.0.0.1:9",
        "--per-address",
        "0",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "per_address must be between 1 and 100000, got 0" in done.stderr
    assert "Traceback" not in done.stderr


def send_all(sock: socket.socket, data: bytes, piece: int | None) -> None:
    """`data` in one `sendall` or in pieces; the edge may close before it has all of it."""
    try:
        if piece is None:
            sock.sendall(data)
        else:
            for start in range(0, len(data), piece):
                sock.sendall(data[start : start + piece])
    except (BrokenPipeError, ConnectionResetError):
        pass


@pytest.mark.parametrize("piece", [None, 1400], ids=["one-send", "in-pieces"])
@pytest.mark.parametrize("pipelined", [False, True], ids=["alone", "pipelined"])
@pytest.mark.parametrize("size", [60_000, 200_000], ids=["60KB", "200KB"])
def test_every_head_over_the_limit_gets_431(
    edge: Edge, size: int, pipelined: bool, piece: int | None
) -> None:
    server = edge()  # the default limit: 16 KiB
    small = b"GET /edge/healthz HTTP/1.1\r\nhost: edge\r\n\r\n"
    big = b"GET /edge/healthz HTTP/1.1\r\nhost: edge\r\nx-big: " + b"a" * size + b"\r\n\r\n"
    with connect(server) as sock:
        send_all(sock, (small if pipelined else b"") + big, piece)
        answer = read_to_close(sock)
    heads = [part.split(b"\r\n", 1)[0] for part in answer.split(b"HTTP/1.1 ")[1:]]
    expected = [b"200 OK"] if pipelined else []
    assert heads == [*expected, b"431 Request Header Fields Too Large"], answer
    assert b"limited to 16384 bytes" in answer


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--flood-rate", "nan", "--flood-rate must be a finite number, got nan"),
        ("--flood-rate", "inf", "--flood-rate must be a finite number, got inf"),
        ("--flood-rate", "-5", "--flood-rate -5 is under the minimum of 0 (0 turns"),
        ("--flood-burst", "nan", "--flood-burst must be a finite number, got nan"),
        ("--flood-burst", "0.5", "--flood-burst 0.5 is under the minimum of 1"),
        ("--flood-block", "-1", "--flood-block -1 is under the minimum of 0"),
    ],
    ids=["rate-nan", "rate-inf", "rate-negative", "burst-nan", "burst-small", "block-negative"],
)
def test_the_edge_command_refuses_a_flood_setting_that_would_turn_protection_off(
    flag: str, value: str, message: str
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "sagalab.edge.apps",
        "edge",
        "--upstream",
        "127.0.0.1:9",
        flag,
        value,
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_edge_command_says_flood_rate_0_turns_protection_off() -> None:
    cmd = [sys.executable, "-m", "sagalab.edge.apps", "edge", "--help"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert "0 turns flood protection off" in " ".join(done.stdout.split())


def test_a_body_still_coming_after_the_answer_is_cut_off_after_the_body_timeout(
    edge: Edge,
) -> None:
    # The edge answers its own endpoints without reading a body: the rest of the body must
    # not hold the connection until the keep-alive timeout (15 s) either.
    server = edge(body_timeout=0.3)
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /edge/healthz HTTP/1.1\r\nhost: edge\r\ncontent-length: 100\r\n\r\n{")
        answer = read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert time.monotonic() - started < 3
