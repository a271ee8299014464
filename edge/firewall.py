"""The firewall in front of the load balancer: allow/deny networks and flood protection.

Every decision is `edge.policies.firewall.Firewall.check` (the simulator's code). This
module only finds the client address and answers 403. The address is the TCP peer, unless the
peer is a configured trusted proxy: then it is the right-most `X-Forwarded-For` entry that is
not itself a trusted proxy (entries further left are whatever the client wrote, and are never
believed). The address it settled on is passed on in `X-Forwarded-For` (replacing what came
in), so the hops behind see the client the firewall judged.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from typing import Any

from sagalab.edge.asgi import Receive, Scope, Send, header, problem, retry_after
from sagalab.edge.metrics import Metrics
from sagalab.edge.policies.firewall import Firewall, Reason, parse_networks

__all__ = ["FirewallMiddleware", "client_address", "in_networks"]

_DETAIL = {
    Reason.DENIED: "your address is on the deny list",
    Reason.NOT_ALLOWED: "your address is not on the allow list",
    Reason.FLOODING: "too many requests from your address; it is blocked for a while",
    Reason.MALFORMED: "your address could not be read",
}


def client_address(peer: str, forwarded_for: bytes | None, trusted: tuple[Any, ...]) -> str:
    """The client address: `peer`, or what trusted proxies recorded in X-Forwarded-For."""
    if not trusted or forwarded_for is None or not in_networks(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",") if h.strip()]
    for hop in reversed(hops):
        if not in_networks(hop, trusted):
            return hop
    return hops[0] if hops else peer


def in_networks(address: str, networks: tuple[Any, ...]) -> bool:
    """Whether `address` (text) is in one of `networks`; False if it is not an address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


class FirewallMiddleware:
    """ASGI middleware: 403 for a blocked client, else the wrapped app."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Any],
        firewall: Firewall,
        *,
        trusted_proxies: Iterable[str] = (),
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.firewall = firewall
        self.trusted = parse_networks(trusted_proxies)
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = scope["client"][0] if scope.get("client") else ""
        address = client_address(peer, header(scope, b"x-forwarded-for"), self.trusted)
        verdict = self.firewall.check(address, self.clock())
        if not verdict.allowed:
            if self.metrics is not None:
                self.metrics.inc("firewall_blocked_total", (("reason", verdict.reason.value),))
            extra = [retry_after(verdict.retry_after)] if verdict.retry_after else []
            await problem(send, 403, "Forbidden", _DETAIL[verdict.reason], extra)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"x-forwarded-for"]
        headers.append((b"x-forwarded-for", address.encode()))
        await self.app({**scope, "headers": headers}, receive, send)
