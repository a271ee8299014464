"""Firewall rules: allow and deny lists of addresses and CIDRs, plus per-address flood guard.

Pure: the clock reading (`now`) is an argument and nothing here does I/O. The real firewall
(issue 5) and the simulator call the same `Firewall.check`:

1. an address in a deny network is refused (`denied`);
2. if allow networks are configured, an address outside all of them is refused (`not_allowed`);
3. the flood guard gives every address a token bucket (`rate` per second, `burst`); an address
   that overdraws it is blocked for `block_for` seconds (`flooding`), and every request during
   the block is refused without touching the bucket.

The guard forgets addresses that have been idle long enough for their bucket to refill, so its
memory follows the number of *active* addresses, not every address ever seen.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from sagalab.edge.policies.token_bucket import TokenBucket

__all__ = ["Address", "FloodGuard", "Firewall", "Reason", "Verdict", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Reason(StrEnum):
    """Why the firewall answered as it did."""

    ALLOWED = "allowed"
    DENIED = "denied"
    NOT_ALLOWED = "not_allowed"
    FLOODING = "flooding"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The firewall's answer; `retry_after` is set while an address is blocked for flooding."""

    allowed: bool
    reason: Reason
    retry_after: float | None = None


_OK = Verdict(True, Reason.ALLOWED)


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Networks from addresses or CIDRs (`"10.0.0.0/8"`, `"192.0.2.7"`).

    Raises ValueError naming the first item that is neither.
    """
    out: list[Network] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(out)


class FloodGuard:
    """Per-address rate limit with a penalty: over `rate` (and `burst`) is blocked `block_for`."""

    def __init__(self, rate: float, burst: float, block_for: float) -> None:
        if not (rate > 0 and burst >= 1 and block_for >= 0):  # also refuses NaN
            raise ValueError("flood guard needs rate > 0, burst >= 1 and block_for >= 0")
        self.rate = rate
        self.burst = burst
        self.block_for = block_for
        self._buckets: dict[str, TokenBucket] = {}
        self._blocked_until: dict[str, float] = {}
        self._next_sweep = 0.0
        # An idle bucket is full again after burst / rate seconds: then it carries no state.
        self._idle_horizon = max(burst / rate, 1.0)

    def __len__(self) -> int:
        """Addresses currently tracked (buckets and blocks)."""
        return len(self._buckets) + len(self._blocked_until)

    def blocked_until(self, address: str) -> float | None:
        """When the block on `address` ends, if it is blocked."""
        return self._blocked_until.get(address)

    def check(self, address: str, now: float) -> Verdict:
        """Count one request from `address` at `now`; refuse it if the address floods."""
        if now >= self._next_sweep:
            self._sweep(now)
        until = self._blocked_until.get(address)
        if until is not None:
            if now < until:
                return Verdict(False, Reason.FLOODING, until - now)
            del self._blocked_until[address]
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = TokenBucket(self.rate, self.burst, now=now)
        if bucket.take(now).allowed:
            return _OK
        del self._buckets[address]
        if self.block_for <= 0:
            return Verdict(False, Reason.FLOODING, 1.0 / self.rate)
        self._blocked_until[address] = now + self.block_for
        return Verdict(False, Reason.FLOODING, self.block_for)

    def _sweep(self, now: float) -> None:
        """Forget full buckets and finished blocks (amortised: at most once per horizon)."""
        self._buckets = {a: b for a, b in self._buckets.items() if not b.is_full(now)}
        self._blocked_until = {a: t for a, t in self._blocked_until.items() if t > now}
        self._next_sweep = now + self._idle_horizon


class Firewall:
    """Static allow/deny networks plus an optional `FloodGuard`."""

    def __init__(
        self,
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        flood: FloodGuard | None = None,
    ) -> None:
        self.allow = parse_networks(allow)
        self.deny = parse_networks(deny)
        self.flood = flood
        # Static rules depend only on the address: remember answers (bounded).
        self._static: dict[str, Verdict] = {}

    def static_verdict(self, address: str, ip: Address | None = None) -> Verdict:
        """The allow/deny answer for `address`, ignoring the flood guard.

        `ip` is `address` already parsed, from a caller that has it (the simulator's clients
        draw from parsed addresses): parsing a first-seen address is most of this call.
        """
        cached = self._static.get(address)
        if cached is not None:
            return cached
        if ip is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                ip = None
        if ip is None:
            verdict = Verdict(False, Reason.MALFORMED)
        else:
            if any(ip in net for net in self.deny):
                verdict = Verdict(False, Reason.DENIED)
            elif self.allow and not any(ip in net for net in self.allow):
                verdict = Verdict(False, Reason.NOT_ALLOWED)
            else:
                verdict = _OK
        if len(self._static) >= 65536:
            self._static.clear()
        self._static[address] = verdict
        return verdict

    def check(self, address: str, now: float, ip: Address | None = None) -> Verdict:
        """Whether a request from `address` at `now` may pass (`ip`: see `static_verdict`)."""
        verdict = self.static_verdict(address, ip)
        if not verdict.allowed or self.flood is None:
            return verdict
        return self.flood.check(address, now)
