"""What an attempt's outcome means: the one classification both runtimes use.

A runtime observes either an HTTP status (with its body text and Retry-After) or a transport
error; `classify_status` and `classify_transport` turn that into a `Verdict`: the `Failure` the
saga core journals (None for a success) and whether the outcome counts against the service's
circuit breaker. The real executor (orchestrator/executors.py) and the simulated services
(simulator/stations.py) both call these, so the same outcome is compensated, retried and
counted the same way in both. Pure: no I/O, no clock.

The rules, and why:

* **2xx**: success; the service is healthy.
* **4xx**: the service answered and refused; it applied nothing, retrying will not help, and a
  refusal is a healthy answer (the breaker counts it as a success). Two exceptions, still
  healthy: **429** is worth retrying (after Retry-After); a **409 whose body says
  `in_progress`** means another attempt under the same idempotency key is being processed
  right now, so it is retryable and may have applied (that other attempt may complete).
* **5xx, 503 included**: retryable and *may have applied*; the service is unwell. A 503 reached
  something: the service itself (which may have failed part-way) or a proxy in front of it,
  and proxies answer 503 also when the upstream connection broke after the request was sent
  (Envoy's "upstream reset before headers"). The caller cannot tell which, so the request may
  have been applied. Counting it so costs one compensation, which an idempotent service
  answers harmlessly (it leaves a tombstone); counting it the other way would leave an applied
  operation unrolled-back, which breaks the guarantee that what may have happened is undone.
* **Transport, not sent** (connection refused, connect or pool timeout): retryable, nothing
  applied; unwell.
* **Transport, sent** (read/write timeout, connection dropped): retryable, may have applied;
  unwell.
* **Protocol** (an answer that cannot be read): not retryable, may have applied; not counted
  against the breaker (the service answered).

A **Retry-After** is read here once (`parse_retry_after`: delay-seconds or an HTTP-date) and
bounded by the retry policy's rule (`policies.retry.bounded_retry_after`: at most
MAX_RETRY_AFTER, an hour; `inf`, `1e400` or a date years out are taken as that), in
`classify_status`, which the simulated services call too.
"""

from __future__ import annotations

import calendar
from email.utils import parsedate_tz
from enum import Enum
from typing import NamedTuple

from sagalab.orchestrator.policies.retry import MAX_RETRY_AFTER, bounded_retry_after
from sagalab.orchestrator.saga import Failure

__all__ = [
    "MAX_RETRY_AFTER",
    "SUCCESS",
    "Transport",
    "Verdict",
    "classify_status",
    "classify_transport",
    "parse_retry_after",
]


class Transport(Enum):
    """How a call failed without an HTTP answer."""

    NOT_SENT = "not_sent"  # refused, connect timeout, pool timeout: nothing reached the service
    TIMEOUT = "timeout"  # sent; no answer within the call's timeout
    DROPPED = "dropped"  # sent; the connection broke before a full answer
    PROTOCOL = "protocol"  # an answer came but could not be read


class Verdict(NamedTuple):
    """A classified outcome: the failure to journal (None: success) and the breaker's view.

    A tuple, so the simulator's hot path unpacks it as `failure, unwell = verdict`.
    """

    failure: Failure | None
    unwell: bool  # counts as a breaker failure: the service, not the request, is the problem


SUCCESS = Verdict(None, False)


def classify_status(code: int, text: str = "", retry_after: float | None = None) -> Verdict:
    """The verdict for an HTTP answer `code` whose body starts with `text`."""
    if 200 <= code < 300:
        return SUCCESS
    retry_after = bounded_retry_after(retry_after)
    text = text[:300]
    error = f"HTTP {code}: {text}" if text else f"HTTP {code}"
    if code >= 500:
        return Verdict(Failure(error, True, True, retry_after), True)
    if code == 429:
        return Verdict(Failure(error, True, False, retry_after), False)
    if code == 409 and "in_progress" in text:
        return Verdict(Failure(error, True, True, retry_after), False)
    return Verdict(Failure(error, False, False), False)


def classify_transport(kind: Transport, error: str) -> Verdict:
    """The verdict for a call that got no readable HTTP answer."""
    if kind is Transport.NOT_SENT:
        return Verdict(Failure(error, True, False), True)
    if kind is Transport.PROTOCOL:
        return Verdict(Failure(error, False, True), False)
    return Verdict(Failure(error, True, True), True)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds a `Retry-After` header value asks to wait, bounded; None if it says nothing.

    Either delay-seconds ("120"; a fraction is taken too) or an HTTP-date, counted from `now`
    (epoch seconds: the caller's clock). Never raises: an unreadable value is None, and an
    infinite, huge or far-future one is MAX_RETRY_AFTER (`bounded_retry_after`).
    """
    if not value or not value.strip():
        return None
    try:
        return bounded_retry_after(float(value))
    except ValueError:
        pass
    try:
        parsed = parsedate_tz(value)
        if parsed is None:
            return None
        # timegm, not mktime: a date without a zone is GMT (RFC 9110), never local time
        at = calendar.timegm((*parsed[:6], 0, 1, 0)) - (parsed[9] or 0)
    except (ValueError, TypeError, IndexError, OverflowError):  # a date no calendar has
        return None
    return bounded_retry_after(at - now)
