"""A small HTTP/1.1 client for one upstream, with a pool of keep-alive connections.

Why not httpx: an httpx AsyncClient costs about 0.5 ms of CPU per request here (FIELD-NOTES),
more than the whole hop it would carry; the edge makes one upstream call per request on every
hop, so it speaks HTTP/1.1 to the (uvicorn) upstreams itself on asyncio streams. It handles
exactly what those upstreams send: `Content-Length` or chunked bodies, keep-alive, and
`Connection: close`.

Errors: `UpstreamUnavailable` when no connection could be made (not one byte of the request
was sent, so the caller may try another instance freely); `UpstreamFailed` when the exchange
broke after the request was written, even if nothing came back (the upstream may have acted:
its outcome is unknown), and `UpstreamTimeout`, a kind of it, when no answer came in time.

A request is written to a pooled keep-alive connection only to find it closed more often than
to find the upstream dead, yet the two look the same from here: it is written again on a fresh
connection only when the caller says it is `replayable` (safe to send twice).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

__all__ = [
    "Response",
    "Upstream",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]

#: Hop-by-hop headers (RFC 9110 section 7.6.1) plus those we recompute.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)


#: Response headers the relaying server writes itself (kept once, not twice).
_SET_BY_SERVER = frozenset({b"date", b"server"})


class UpstreamError(Exception):
    """The upstream could not answer."""


class UpstreamUnavailable(UpstreamError):
    """Nothing was delivered to the upstream application: safe to try another instance."""


class UpstreamFailed(UpstreamError):
    """The exchange broke after the request was sent: the upstream may have acted on it."""


class UpstreamTimeout(UpstreamFailed):
    """The request was sent and no answer came in time (the upstream may still be acting)."""


@dataclass(frozen=True, slots=True)
class Response:
    """An upstream response: status, headers (lower-case names) and the whole body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Upstream:
    """Keep-alive connections to one `host`:`port`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_idle: int = 256,
        connect_timeout: float = 1.0,
        timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._idle: deque[_Conn] = deque()
        # Every connection still open, idle or in an exchange: close() closes them all, so a
        # server stopped mid-request leaves no socket for the garbage collector to find.
        self._open: set[asyncio.StreamWriter] = set()
        self._host_header = f"{host}:{port}".encode()

    async def _connect(self) -> _Conn:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for may drop a connection that
        # opened just as the caller was cancelled, leaving its socket open.
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"cannot connect to {self.name}: {exc}") from None
        self._open.add(conn[1])
        return conn

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        writer.close()

    def close(self) -> None:
        """Close every connection: the idle ones and any still in an exchange."""
        self._idle.clear()
        while self._open:
            self._open.pop().close()

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        *,
        timeout: float | None = None,
        replayable: bool = True,
    ) -> Response:
        """Send one request (end-to-end `headers` only) and read the whole response.

        `replayable`: the request may be written twice (an idempotent method, or one carrying
        an Idempotency-Key); only then is it written again after a pooled connection turned
        out closed.
        """
        head = [
            f"{method} {target} HTTP/1.1\r\n".encode("latin-1"),
            b"host: ",
            self._host_header,
            b"\r\n",
        ]
        for name, value in headers:
            if name not in HOP_BY_HOP:
                head += [name, b": ", value, b"\r\n"]
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            head += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        head.append(b"\r\n")
        payload = b"".join(head) + body
        limit = self.timeout if timeout is None else timeout
        # A pooled connection may have been closed by the upstream while idle; if so, the
        # exchange fails before any byte comes back. The upstream may also have died holding
        # the request: only a replayable request is written again, on a fresh connection.
        written = False
        while self._idle:
            conn = self._idle.pop()
            if conn[1].is_closing() or conn[0].at_eof():
                self._close(conn[1])
                continue
            try:
                return await self._exchange(conn, method, payload, limit)
            except _StaleConnection:
                if not replayable:
                    raise UpstreamFailed(self._closed) from None
                written = True
                continue
        try:
            conn = await self._connect()
        except UpstreamUnavailable:
            if written:  # the write before may have reached it: the outcome is unknown
                raise UpstreamFailed(self._closed) from None
            raise
        try:
            return await self._exchange(conn, method, payload, limit)
        except _StaleConnection:
            raise UpstreamFailed(self._closed) from None

    @property
    def _closed(self) -> str:
        return f"{self.name} closed the connection without answering"

    async def _exchange(self, conn: _Conn, method: str, payload: bytes, limit: float) -> Response:
        reader, writer = conn
        try:
            writer.write(payload)
            try:
                async with asyncio.timeout(limit):
                    raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _StaleConnection from None
                raise
            except (ConnectionResetError, BrokenPipeError):
                raise _StaleConnection from None  # closed (or reset) before any byte came back
            status, headers, length, chunked, close = _parse_head(raw)
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                body = b""
            elif chunked:
                async with asyncio.timeout(limit):
                    body = await _read_chunked(reader)
            elif length is not None:
                async with asyncio.timeout(limit):
                    body = await reader.readexactly(length)
            else:
                async with asyncio.timeout(limit):
                    body = await reader.read()
                close = True
        except _StaleConnection:
            self._close(writer)
            raise
        # Before OSError: since Python 3.11, TimeoutError (asyncio.timeout's) is an OSError,
        # and a timeout must not pass for a broken exchange (that one may be sent again).
        except TimeoutError:
            self._close(writer)
            raise UpstreamTimeout(f"{self.name} did not answer within {limit:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self._close(writer)
            raise UpstreamFailed(f"{self.name}: broken exchange: {exc!r}") from None
        except BaseException:
            self._close(writer)  # cancelled: the connection is in an unknown state
            raise
        if close or len(self._idle) >= self.max_idle:
            self._close(writer)
        else:
            self._idle.append(conn)
        return Response(status, headers, body)


class _StaleConnection(Exception):
    """The connection was closed before any byte of a response came back."""


def _parse_head(
    raw: bytes,
) -> tuple[int, list[tuple[bytes, bytes]], int | None, bool, bool]:
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    close = parts[0] == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
        if name not in HOP_BY_HOP and name not in _SET_BY_SERVER:
            headers.append((name, value))
    return status, headers, length, chunked, close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # trailers, if any, end with an empty line
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
