"""Connection limits for the server that faces clients: timeouts, caps and a header size limit.

uvicorn alone holds a connection for as long as its peer keeps it open: nothing bounds the time
to send a request's headers (a connection that opens and sends nothing, or half a request
line, stays until the descriptors run out), nor how many connections one address holds. Our
servers therefore run uvicorn's h11 protocol with `GuardedH11Protocol`, which adds, per
connection:

* a **header timeout**: a connection must finish a request's headers within `header_timeout`
  of opening (or of starting the next request on a kept-alive connection); else it is closed,
  after a 408 if part of a request had come;
* a **per-address cap**: an address already holding `per_address` connections gets 429 and
  the connection closed (trusted proxies, which carry many clients, are exempt), so one
  address cannot take the descriptors every other client needs; and a **total cap**,
  `max_connections`, above which a connection gets 503 and is closed;
* a **header size limit**: every request head (request line and headers) over
  `max_header_bytes` gets 431 and the connection closed, whether it comes alone, in pieces or
  pipelined behind another request in one packet.

The **body timeout** (408 when a request body has not fully arrived within `body_timeout` of
its headers) is the apps' (`edge.asgi.read_body`, and `edge.asgi.BodyDeadline` in front of the
API); when an app answered without reading the body, the connection is closed if the rest of
it has not come within `body_timeout` of the answer. Idle keep-alive connections are closed by
uvicorn after `keep_alive`.

Every server of a stack runs with these limits (`python -m sagalab.edge.apps edge|gateway|api`): on
127.0.0.1 anyone can reach a gateway's or the API's port, not only the edge's. All the stack's
hops connect from 127.0.0.1, which the gateways and the API therefore exempt from the
per-address cap (`exempt`); the timeouts, the head size limit and the total cap hold for
everyone.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr

from sagalab.edge.firewall import in_networks
from sagalab.edge.policies.firewall import parse_networks

__all__ = ["BOUNDS", "ConnectionLimits", "GuardedH11Protocol", "default_max_connections"]

#: name -> (lowest, highest) accepted value; refusals name the bound.
BOUNDS: dict[str, tuple[float, float]] = {
    "header_timeout": (0.05, 300.0),
    "body_timeout": (0.05, 600.0),
    "keep_alive": (0.05, 600.0),
    "max_header_bytes": (1024, 1 << 20),
    "per_address": (1, 100_000),
    "max_connections": (1, 100_000),
}


def default_max_connections() -> int:
    """Half the descriptors this process may open (each client may need an upstream one too),
    keeping 64 for files and listeners, between 64 and 4096."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(64, min(4096, (soft - 64) // 2))


@dataclass(frozen=True)
class ConnectionLimits:
    """Limits on client connections (see the module docstring); each is bounded by `BOUNDS`."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 15.0
    max_header_bytes: int = 16 * 1024
    per_address: int = 64
    max_connections: int = field(default_factory=default_max_connections)
    #: Addresses or networks never capped per address (trusted proxies).
    exempt: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:  # also refuses NaN
                raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value:g}")


def _raw_response(status: int, reason: str, detail: str, extra: Iterable[str] = ()) -> bytes:
    """A whole problem response that closes the connection, written without h11."""
    body = json.dumps(
        {"type": "about:blank", "title": reason, "status": status, "detail": detail}
    ).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of `ConnectionLimits` (use `for_limits`)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    exempt: ClassVar[tuple[Any, ...]] = ()

    @classmethod
    def for_limits(cls, limits: ConnectionLimits) -> type[GuardedH11Protocol]:
        """A protocol class bound to `limits` (pass it as uvicorn's `http`)."""
        attrs = {"limits": limits, "exempt": parse_networks(limits.exempt)}
        return type("GuardedH11Protocol", (cls,), attrs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.peer_host = ""
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # Every event uvicorn reads passes the head size check (`_next_event`).
        self._h11_next_event = self.conn.next_event
        self.conn.next_event = self._next_event  # type: ignore[method-assign]

    # -- admission ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = get_remote_addr(transport)
        host = peer[0] if peer else ""
        limits = self.limits
        if len(self.connections) >= limits.max_connections:
            self._refuse(
                transport, 503, "Service Unavailable", "the edge is at its connection limit"
            )
            return
        if not self._exempt(host):
            held = sum(1 for c in self.connections if getattr(c, "peer_host", None) == host)
            if held >= limits.per_address:
                detail = f"your address already holds {held} connections (the limit)"
                self._refuse(transport, 429, "Too Many Requests", detail)
                return
        super().connection_made(transport)
        self.peer_host = host
        self._arm()

    def _exempt(self, host: str) -> bool:
        return bool(self.exempt) and in_networks(host, self.exempt)

    def _refuse(self, transport: asyncio.Transport, status: int, reason: str, detail: str) -> None:
        self._refused = True
        transport.write(_raw_response(status, reason, detail, ["retry-after: 1"]))
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # never admitted: uvicorn's bookkeeping knows nothing of it
        self._disarm()
        if self._body_timer is not None:
            self._body_timer.cancel()
        super().connection_lost(exc)

    # -- a body still coming after the answer -------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered before its body was read (a refusal, an endpoint that takes none): the rest
        # of the body gets `body_timeout` to arrive, not the whole keep-alive timeout.
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            cycle = self.cycle
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout, self._body_late, cycle
            )

    def _body_late(self, cycle: object) -> None:
        self._body_timer = None
        if self.cycle is cycle and self.conn.their_state is h11.SEND_BODY:
            self.transport.close()

    # -- the header timeout ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_request():
            self._disarm()
        else:
            self._arm()  # part of the next request on a kept-alive connection

    def _in_request(self) -> bool:
        """Headers of the current request have arrived and its response is not complete."""
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._in_request() or self.transport.is_closing():
            return
        if self.conn.trailing_data[0]:  # part of a request came: say why it is closed
            detail = f"the request headers did not arrive within {self.limits.header_timeout:g}s"
            self.transport.write(_raw_response(408, "Request Timeout", detail))
        self.transport.close()

    # -- the header size limit -------------------------------------------------------------

    def _next_event(self) -> Any:
        """h11's next event, with every request head over the limit answered 431.

        Each head passes through here, whatever the chunking and however many requests one
        packet pipelines. h11 refuses a head that is still incomplete once its buffer holds
        more than the limit (`h11_max_incomplete_event_size`, hint 431); a complete head in
        one packet never hits that check, so its size is taken from the parsed request.
        """
        try:
            event = self._h11_next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint != 431:
                raise
            return self._head_too_large()
        if isinstance(event, h11.Request) and _head_size(event) > self.limits.max_header_bytes:
            return self._head_too_large()
        return event

    def _head_too_large(self) -> Any:
        detail = f"request headers are limited to {self.limits.max_header_bytes} bytes"
        self.transport.write(_raw_response(431, "Request Header Fields Too Large", detail))
        self.transport.close()
        return h11.NEED_DATA  # uvicorn stops reading events; the connection is closing


def _head_size(event: h11.Request) -> int:
    """Bytes of the request head `event` was parsed from (request line, headers, blank line)."""
    size = len(event.method) + 1 + len(event.target) + len(b" HTTP/1.1\r\n")
    # Each header line is name, ": ", value and CRLF.
    size += sum(len(name) + len(value) + 4 for name, value in event.headers.raw_items())
    return size + 2
