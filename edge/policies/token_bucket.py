"""Token bucket: a rate with a burst allowance, decided on a clock reading passed in.

Pure: `take(now, n)` reads no clock and does no I/O, so the gateway (per API key) and the
simulator make the same decision from the same inputs. A bucket starts full. Tokens accrue at
`rate` per second up to `burst`; a request for `n` tokens is allowed if that many are there,
and otherwise refused with the seconds until it would be (the `Retry-After` of a 429).

`take_tokens` is the same rule as a function over a frozen `BucketState`, for runtimes that
keep the state elsewhere (a database row shared by processes). `KeyBuckets` keeps one bucket
per API key: the gateway and the API (for a key presented to it directly) both limit keys
through it, so a key's rate means the same at either door.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BucketState", "KeyBuckets", "TakeResult", "TokenBucket", "take_tokens"]


@dataclass(frozen=True)
class TakeResult:
    """Outcome of `take`: allowed, or refused with `retry_after` seconds (0.0 when allowed)."""

    allowed: bool
    retry_after: float = 0.0


@dataclass(frozen=True)
class BucketState:
    """Tokens in the bucket as of `updated_at` (the clock reading of the last take)."""

    tokens: float
    updated_at: float


_ALLOWED = TakeResult(True, 0.0)


def take_tokens(
    state: BucketState, *, now: float, n: float, rate: float, burst: float
) -> tuple[BucketState, TakeResult]:
    """Refill `state` up to `now`, then try to take `n` tokens; returns the new state and result.

    A clock that goes backwards (another process's reading) refills nothing rather than
    draining the bucket. Asking for more than `burst` tokens can never succeed: the result is
    refused with an infinite `retry_after`.
    """
    elapsed = now - state.updated_at
    tokens = state.tokens
    if elapsed > 0:
        tokens = min(burst, tokens + elapsed * rate)
    updated = max(now, state.updated_at)
    if tokens >= n:
        return BucketState(tokens - n, updated), _ALLOWED
    if n > burst or rate <= 0:
        return BucketState(tokens, updated), TakeResult(False, math.inf)
    return BucketState(tokens, updated), TakeResult(False, (n - tokens) / rate)


class TokenBucket:
    """A mutable token bucket for one key: `rate` tokens per second, at most `burst` saved."""

    __slots__ = ("rate", "burst", "_tokens", "_updated_at")

    def __init__(self, rate: float, burst: float, *, now: float = 0.0) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        if burst <= 0:
            raise ValueError("burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._updated_at = float(now)

    @property
    def state(self) -> BucketState:
        """The bucket's contents as of its last take."""
        return BucketState(self._tokens, self._updated_at)

    def tokens(self, now: float) -> float:
        """Tokens available at `now` (without taking any)."""
        elapsed = now - self._updated_at
        if elapsed <= 0:
            return self._tokens
        return min(self.burst, self._tokens + elapsed * self.rate)

    def take(self, now: float, n: float = 1.0) -> TakeResult:
        """Take `n` tokens at `now` if the bucket has them; otherwise say how long to wait."""
        # Inlined `take_tokens`: this runs once per request in the gateway and the simulator.
        elapsed = now - self._updated_at
        tokens = self._tokens
        if elapsed > 0:
            tokens = min(self.burst, tokens + elapsed * self.rate)
            self._updated_at = now
        if tokens >= n:
            self._tokens = tokens - n
            return _ALLOWED
        self._tokens = tokens
        if n > self.burst or self.rate <= 0:
            return TakeResult(False, math.inf)
        return TakeResult(False, (n - tokens) / self.rate)

    def is_full(self, now: float) -> bool:
        """Whether the bucket is back to `burst` (an idle key whose state may be dropped)."""
        return self.tokens(now) >= self.burst


class KeyBuckets:
    """One `TokenBucket` per key, at the key's rate and burst divided by `share`.

    `share` is the number of instances a key's traffic is spread over (the gateways of a
    stack), so that the key's rate holds across all of them; each bucket keeps at least one
    token of burst. A key whose rate or burst changed gets a new, full bucket. Past
    `max_keys` buckets, the full ones (idle keys, nothing to remember) are dropped.
    """

    def __init__(self, *, share: int = 1, max_keys: int = 100_000) -> None:
        self.share = max(1, share)
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def bucket(self, key: str, *, rate: float, burst: float, now: float) -> TokenBucket:
        """The bucket of `key` at its current settings."""
        bucket = self._buckets.get(key)
        share_rate = rate / self.share
        share_burst = max(1.0, burst / self.share)
        if bucket is None or bucket.rate != share_rate or bucket.burst != share_burst:
            if len(self._buckets) > self.max_keys:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.is_full(now)}
            bucket = self._buckets[key] = TokenBucket(share_rate, share_burst, now=now)
        return bucket

    def take(self, key: str, *, rate: float, burst: float, now: float) -> TakeResult:
        """Take one token from `key`'s bucket at `now` (see `TokenBucket.take`)."""
        return self.bucket(key, rate=rate, burst=burst, now=now).take(now)

    def __len__(self) -> int:
        return len(self._buckets)
