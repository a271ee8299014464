"""What the edge does when an upstream instance fails a request: one rule for both runtimes.

The real edge (`edge/pool.py`) and the simulated one (`simulator/edge_model.py`) both ask
`after_failure` what a failed send means and `choose_untried` which instance to try next, so a
refused gateway is handled the same in both. Pure: no I/O, no clock.

* **Refused** (could not connect; not one byte of the request was sent): the instance is known
  to be down, so it is *ejected at once* (out of rotation until its health checks pass again),
  and the request goes to another instance: nothing was sent, so any request may be.
* **Broken** (the exchange broke after the request was sent): the instance may have acted on
  it. That counts as *one* failed passive health check (a broken connection is not proof it is
  down), and the request goes to another instance only if it is `replayable` (a safe method,
  or a saga submission under an Idempotency-Key, which the API answers on a repeat with what
  it did the first time); otherwise the client is told the outcome is unknown.
* **Timeout**: never sent again (the first may still be running) and not counted against the
  instance's health (slow is not dead; the active checks decide).

Each instance is tried at most once per request (`choose_untried`), so a request makes at most
as many tries as there are instances.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum

from sagalab.edge.policies.balancer import Balancer, HealthTracker, Instance, RandomSource

__all__ = ["Failover", "SendFailure", "after_failure", "choose_untried", "eject"]


class SendFailure(Enum):
    """How sending a request to one upstream instance failed."""

    REFUSED = "refused"
    BROKEN = "broken"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Failover:
    """What to do after a failed send."""

    eject: bool  # out of rotation now: known down
    count_failure: bool  # one failed passive health check
    try_another: bool  # send the request to an instance not tried yet
    outcome_unknown: bool  # the instance may have acted on it: if no other takes it, say so


_REFUSED = Failover(eject=True, count_failure=False, try_another=True, outcome_unknown=False)
_TIMEOUT = Failover(eject=False, count_failure=False, try_another=False, outcome_unknown=True)


def after_failure(failure: SendFailure, *, replayable: bool) -> Failover:
    """The edge's move after `failure`; `replayable`: the request may be sent twice."""
    if failure is SendFailure.REFUSED:
        return _REFUSED
    if failure is SendFailure.TIMEOUT:
        return _TIMEOUT
    return Failover(eject=False, count_failure=True, try_another=replayable, outcome_unknown=True)


def eject(health: HealthTracker) -> bool:
    """Take an instance out of rotation now; True if it was in rotation until now.

    Always one failed check at least, so an ejected instance's count of passing checks
    starts again.
    """
    changed = health.record(False) is False
    while health.healthy:
        changed = health.record(False) is False or changed
    return changed


@dataclass(frozen=True, slots=True)
class _Tried:
    """An instance already tried for this request: never chosen again for it."""

    active: int = 0
    available: bool = False


_TRIED = _Tried()


def choose_untried(
    balancer: Balancer,
    instances: Sequence[Instance],
    tried: Collection[int],
    rng: RandomSource,
) -> int | None:
    """The balancer's choice among the instances not yet tried for this request."""
    if not tried:
        return balancer.choose(instances, rng)
    return balancer.choose(
        [_TRIED if i in tried else inst for i, inst in enumerate(instances)], rng
    )
