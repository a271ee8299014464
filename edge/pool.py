"""A pool of upstream instances: the shared balancer policy chooses, health checks eject.

The choice is `edge.policies.balancer.Balancer.choose` over `InstanceView`s built from
this pool's bookkeeping (connections in flight, health), the same rule the simulator applies.
Health is `HealthTracker`: an active check (`GET health_path` every `interval`) feeds it, and
so does every request that cannot connect (passive check). An instance that refuses a
connection is ejected at once: it is known to be down, and no request goes to it until
`pass_threshold` consecutive checks pass.

What a failed send means (eject or count a failure, try another instance or not) is
`edge.policies.failover`, the rule the simulated edge follows too.
`send` tries another instance when the chosen one could not be reached (not one byte of the
request was sent), at most once per instance, so killing an instance costs no client request.
When the exchange broke after the request was sent, the instance may have acted on it: the
request goes to another instance only if it is `replayable` (a safe method, or a request to
one of `KEYED_ROUTES` carrying an Idempotency-Key, which the API answers on a repeat with what
it did the first time; it honours keys nowhere else, so a rollback sent twice would be refused
although the first was recorded), else the caller gets `UpstreamFailed` and must tell its
client the outcome is unknown. A timeout (`UpstreamTimeout`) is never followed by a second
send, since the first may still be running, and it does not count against the instance's
health: slow is not dead, and the active health check decides whether it still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from sagalab.edge.policies.balancer import Balancer, HealthTracker, InstanceView, Strategy
from sagalab.edge.policies.failover import (
    Failover,
    SendFailure,
    after_failure,
    choose_untried,
    eject,
)
from sagalab.edge.upstream import (
    Response,
    Upstream,
    UpstreamError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "KEYED_ROUTES",
    "SAFE_METHODS",
    "Backend",
    "NoHealthyInstance",
    "Pool",
    "honours_key",
    "replayable",
]

#: Methods that change nothing (RFC 9110 section 9.2.1): sending one twice is harmless.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

#: (method, path) where the orchestrator API honours an Idempotency-Key: creating a saga.
#: Anywhere else a key is ignored, and a request sent twice acts (or is refused) twice.
KEYED_ROUTES = frozenset({("POST", "/v1/sagas")})


def honours_key(method: str, target: str) -> bool:
    """Whether the API answers a repeat of this request under the same key with the first
    answer (`target` may carry a query string; its path is compared decoded, as the API
    routes it, so `/v1/%73agas` is `/v1/sagas`)."""
    return (method, unquote(target.partition("?")[0])) in KEYED_ROUTES


def replayable(method: str, target: str, headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request may be sent twice: a safe method, or a keyed route with its key."""
    if method in SAFE_METHODS:
        return True
    return honours_key(method, target) and any(k == b"idempotency-key" for k, _ in headers)


class NoHealthyInstance(Exception):
    """Every instance is down or at its limit (answer 503)."""


@dataclass
class Backend:
    """One instance: its client, its health and the requests it has in flight."""

    upstream: Upstream
    health: HealthTracker
    limit: int | None = None
    active: int = 0
    sent: int = 0
    ejections: int = 0
    last_error: str | None = field(default=None)

    @property
    def name(self) -> str:
        return self.upstream.name

    def view(self) -> InstanceView:
        return InstanceView(self.name, self.health.healthy, self.active, self.limit)

    def record(self, ok: bool, error: str | None = None) -> None:
        if not ok:
            self.last_error = error
        if self.health.record(ok) is False:
            self.ejections += 1

    def eject(self, error: str) -> None:
        """Known down (refused a connection): out of rotation now."""
        self.last_error = error
        if eject(self.health):
            self.ejections += 1

    def failed(self, move: Failover, error: str) -> None:
        """Apply the failover policy's verdict on this instance's health."""
        if move.eject:
            self.eject(error)
        elif move.count_failure:
            self.record(False, error)


class Pool:
    """Instances behind one name, chosen per request by one balancer strategy."""

    def __init__(
        self,
        addresses: Sequence[tuple[str, int]],
        *,
        strategy: Strategy | str = Strategy.LEAST_CONNECTIONS,
        weights: Sequence[float] | None = None,
        health_path: str = "/healthz",
        interval: float = 0.5,
        check_timeout: float = 0.5,
        fail_threshold: int = 2,
        pass_threshold: int = 2,
        timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.backends = [
            Backend(Upstream(h, p, timeout=timeout), HealthTracker(fail_threshold, pass_threshold))
            for h, p in addresses
        ]
        self.balancer = Balancer(strategy, weights)
        self.health_path = health_path
        self.interval = interval
        self.check_timeout = check_timeout
        self.rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None

    def choose(self, exclude: set[int]) -> int | None:
        views = [b.view() for b in self.backends]
        return choose_untried(self.balancer, views, exclude, self.rng)

    async def send(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[Backend, Response]:
        """Send to a chosen instance, moving on when one cannot be reached.

        Raises `NoHealthyInstance` when no instance could be sent the request, and
        `UpstreamFailed` when one may have received it and it cannot be (or could not
        successfully be) sent elsewhere: its outcome is unknown.
        """
        again = replayable(method, target, headers)
        tried: set[int] = set()
        unknown: UpstreamFailed | None = None
        while True:
            index = self.choose(tried)
            if index is None:
                if unknown is not None:
                    raise unknown
                raise NoHealthyInstance(
                    "no healthy instance: "
                    + ", ".join(f"{b.name} ({b.last_error or 'down'})" for b in self.backends)
                )
            backend = self.backends[index]
            tried.add(index)
            backend.active += 1
            backend.sent += 1
            error: UpstreamError
            try:
                response = await backend.upstream.request(
                    method, target, headers, body, replayable=again
                )
                return backend, response
            except UpstreamUnavailable as exc:
                failure, error = SendFailure.REFUSED, exc
            except UpstreamTimeout:
                raise  # slow, not broken: it may still be acting on the request (the policy)
            except UpstreamFailed as exc:
                failure, error = SendFailure.BROKEN, exc
            finally:
                backend.active -= 1
            move = after_failure(failure, replayable=again)
            backend.failed(move, str(error))
            if move.outcome_unknown:
                assert isinstance(error, UpstreamFailed)
                if not move.try_another:
                    raise error
                unknown = error  # sent again elsewhere, under the same Idempotency-Key

    # -- active health checks ----------------------------------------------------------------

    async def check_once(self) -> None:
        """Check every instance once, concurrently."""
        await asyncio.gather(*(self._check(b) for b in self.backends))

    async def _check(self, backend: Backend) -> None:
        try:
            response = await backend.upstream.request(
                "GET", self.health_path, [], timeout=self.check_timeout
            )
        except UpstreamError as exc:
            backend.record(False, str(exc))
            return
        ok = response.status == 200
        backend.record(ok, None if ok else f"health check answered {response.status}")

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.check_once()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Start the health-check loop on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop checking and close idle connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for b in self.backends:
            b.upstream.close()

    def status(self) -> list[dict[str, object]]:
        """Per instance: health, in flight, sent, ejections, last error."""
        return [
            {
                "instance": b.name,
                "healthy": b.health.healthy,
                "active": b.active,
                "sent": b.sent,
                "ejections": b.ejections,
                "last_error": b.last_error,
            }
            for b in self.backends
        ]
