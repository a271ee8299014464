"""Load-test profiles and their thresholds: the one place that says what "passing" means.

Imported by the locustfile (which enforces them when Locust quits) and by `sagalab loadtest`
(which shows them next to what was measured). No Locust import here: the CLI must never import
locust (gevent monkey-patching breaks asyncio and threads in the importing process).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["PROFILES", "Profile", "evaluate"]


@dataclass(frozen=True)
class Profile:
    """Load shape and the limits the run must stay within."""

    users: int
    spawn_rate: float
    duration: float
    #: Failed share of the legitimate users' requests (any 4xx/5xx they did not expect).
    max_failure_ratio: float
    #: 95th percentile latency of the legitimate users' requests, milliseconds.
    max_p95_ms: float
    #: Share of submitted sagas seen in a terminal state (completed or rolled back) in time.
    min_terminal_share: float
    #: How long a legitimate user follows one saga before counting it as stuck, seconds.
    follow_timeout: float = 20.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    # CI: short, modest, on a 2-core runner that also runs the whole stack.
    "ci": Profile(
        users=8,
        spawn_rate=8,
        duration=30,
        max_failure_ratio=0.01,
        max_p95_ms=1500,
        min_terminal_share=0.95,
    ),
    "default": Profile(
        users=20,
        spawn_rate=10,
        duration=60,
        max_failure_ratio=0.01,
        max_p95_ms=1000,
        min_terminal_share=0.98,
    ),
    "stress": Profile(
        users=100,
        spawn_rate=20,
        duration=120,
        max_failure_ratio=0.02,
        max_p95_ms=2500,
        min_terminal_share=0.95,
        follow_timeout=40.0,
    ),
}


def evaluate(profile: Profile, measured: dict[str, float]) -> list[str]:
    """Every threshold `measured` breaks, as sentences (empty: the run passes).

    `measured` holds legit_requests, legit_failure_ratio, legit_p95_ms, sagas_submitted,
    terminal_share, flood_requests, flood_not_blocked, ratelimit_429, ratelimit_errors.
    """
    broken = []
    if measured["legit_requests"] == 0:
        broken.append("legitimate users made no request")
    if measured["legit_failure_ratio"] > profile.max_failure_ratio:
        broken.append(
            f"legitimate failure ratio {measured['legit_failure_ratio']:.2%} > "
            f"{profile.max_failure_ratio:.2%}"
        )
    if measured["legit_p95_ms"] > profile.max_p95_ms:
        broken.append(f"p95 {measured['legit_p95_ms']:.0f} ms > {profile.max_p95_ms:.0f} ms")
    if measured["sagas_submitted"] == 0:
        broken.append("no saga was submitted")
    elif measured["terminal_share"] < profile.min_terminal_share:
        broken.append(
            f"only {measured['terminal_share']:.1%} of sagas reached a terminal state "
            f"(need {profile.min_terminal_share:.0%})"
        )
    if measured["flood_requests"] and measured["flood_not_blocked"]:
        broken.append(f"{measured['flood_not_blocked']:.0f} flood request(s) were not blocked")
    if measured["ratelimit_errors"]:
        broken.append(
            f"{measured['ratelimit_errors']:.0f} over-the-rate request(s) got neither 2xx nor 429"
        )
    if measured.get("ratelimit_requests", 0) and not measured["ratelimit_429"]:
        broken.append("the over-the-rate user was never limited (no 429)")
    return broken
