"""Retry policy: exponential backoff with a jitter kind, attempt and deadline limits.

Pure: time (`now`, `first_attempt_at`) and randomness (`rng`, or the drawn `random_value`)
are arguments, so the real orchestrator and the simulator make the same decision from the
same inputs. `RetryPolicy.next_delay` is the decision the saga core and the simulated
clients ask for; it is `backoff_delay` (the wait: exponential cap, jitter, Retry-After
as a floor) and `exhausted` (the stop: attempts made, deadline), both pure functions.

Jitter kinds (`jitter_delay`), as defined in the AWS Architecture Blog's "Exponential Backoff
and Jitter" (Marc Brooker, 2015), with `cap` the exponential cap `backoff_cap` and `u` one
uniform draw in [0, 1]:

- `none`: the cap itself (`jitter: false`);
- `full`: `cap * u`, in [0, cap] (`jitter: true`, the default);
- `equal`: `cap / 2 + cap / 2 * u`, in [cap / 2, cap];
- `decorrelated`: `min(max_delay, base + u * (3 * previous - base))`, in [base, 3 * previous]
  capped, where `base` is `initial_delay` and `previous` the last wait (`base` at first): it
  grows from the waits drawn, not from the attempt count, so its caller keeps `previous`.

Why not tenacity (issue 9)
--------------------------
Until issue 9 the decision was tenacity's `Retrying.iter`, fed a hand-made subclass of its
`RetryCallState` and thread-local `statistics` seeded by hand so that `begin()` would not
read the clock. tenacity's public interface cannot serve a clock-free core: `RetryCallState`
is documented as what tenacity passes to callbacks, not as something to build, and its
constructor stamps `time.monotonic()`; its full-jitter wait (`wait_random_exponential`)
draws from the global `random`, so a seeded simulation could not reproduce it; and the rest
it offered (a count limit, a deadline, a capped exponential) is a few lines of arithmetic.
So the rule is ours, the same one tenacity applied (stop after `max_attempts`; the wait
computed, and the jitter drawn, before the stop is checked), and tenacity is no longer used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_ACTION_RETRY",
    "DEFAULT_COMPENSATION_RETRY",
    "FOREVER_RETRY",
    "JITTER_KINDS",
    "MAX_MULTIPLIER",
    "MAX_RETRY_AFTER",
    "MAX_RETRY_ATTEMPTS",
    "MAX_RETRY_DEADLINE",
    "MAX_RETRY_SECONDS",
    "RetryPolicy",
    "UniformSource",
    "backoff_delay",
    "bounded_retry_after",
    "exhausted",
    "jitter_delay",
    "jitter_kind",
]


class UniformSource(Protocol):
    """What the policy needs from a random generator (`random.Random` fits)."""

    def uniform(self, a: float, b: float) -> float: ...


MAX_RETRY_ATTEMPTS = 1_000_000
MAX_RETRY_SECONDS = 86_400.0  # one wait of a day at most
MAX_RETRY_DEADLINE = 30 * 86_400.0
MAX_MULTIPLIER = 100.0
MAX_RETRY_AFTER = 3_600.0
"""The longest wait a server's Retry-After may ask for (seconds): an hour. A longer, infinite
or unreadably large value is taken as this, so no answer can park a step for years or push a
non-finite time into the journal (`bounded_retry_after`)."""


JITTER_KINDS = ("none", "full", "equal", "decorrelated")
"""The jitter kinds a `RetryPolicy` takes (besides true, full, and false, none)."""

DECORRELATED_GROWTH = 3.0
"""How far a decorrelated wait may grow over the last one (the blog's `sleep * 3`)."""


def jitter_kind(jitter: bool | str) -> str:
    """The kind a policy's `jitter` names: true is `full`, false is `none`."""
    if jitter is True:
        return "full"
    if jitter is False:
        return "none"
    return jitter


def jitter_delay(
    kind: str, cap: float, random_value: float, *, base: float, previous: float, max_delay: float
) -> float:
    """One wait of jitter `kind` (see the module docstring): pure, the draw `random_value`
    in [0, 1] passed in. `cap` is the exponential cap (for `none`, `full` and `equal`);
    `base`, `previous` and `max_delay` are what the decorrelated kind grows from."""
    if kind == "full":
        return cap * random_value
    if kind == "equal":
        half = cap / 2.0
        return half + half * random_value
    if kind == "decorrelated":
        high = max(base, previous * DECORRELATED_GROWTH)
        return min(max_delay, base + random_value * (high - base))
    return cap


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # NaN fails every range comparison below, and infinity is out of every range.
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again after a failed attempt, and how long to wait first.

    `max_attempts=None` means no attempt limit (steps after the pivot retry until they succeed).
    `deadline` bounds the time from the first attempt to the start of the last one.
    """

    max_attempts: int | None = 3
    initial_delay: float = 0.2
    max_delay: float = 5.0
    multiplier: float = 2.0
    deadline: float | None = None
    jitter: bool | str = True
    """A jitter kind (`JITTER_KINDS`), or true (`full`) or false (`none`)."""

    def __post_init__(self) -> None:
        # Types and bounds as well as signs: a flow file is input, and a string, a NaN or a
        # year-long wait would otherwise surface only when a step fails.
        attempts = self.max_attempts
        if attempts is not None and (
            not _is_int(attempts) or not 1 <= attempts <= MAX_RETRY_ATTEMPTS
        ):
            raise ValueError(
                f"max_attempts must be a whole number from 1 to {MAX_RETRY_ATTEMPTS} "
                f"(or null: no limit), not {attempts!r}"
            )
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value <= MAX_RETRY_SECONDS:
                raise ValueError(
                    f"{name} must be a number of seconds from 0 to {MAX_RETRY_SECONDS:g}, "
                    f"not {value!r}"
                )
        if not _is_number(self.multiplier) or not 1 <= self.multiplier <= MAX_MULTIPLIER:
            raise ValueError(
                f"multiplier must be a number from 1 to {MAX_MULTIPLIER:g}, not {self.multiplier!r}"
            )
        deadline = self.deadline
        if deadline is not None and (
            not _is_number(deadline) or not 0 < deadline <= MAX_RETRY_DEADLINE
        ):
            raise ValueError(
                f"deadline must be a number of seconds above 0 and at most "
                f"{MAX_RETRY_DEADLINE:g} (or null), not {deadline!r}"
            )
        if not isinstance(self.jitter, bool) and self.jitter not in JITTER_KINDS:
            raise ValueError(
                f"jitter must be one of {', '.join(JITTER_KINDS)} (or true: full, false: none), "
                f"not {self.jitter!r}"
            )

    @property
    def jitter_kind(self) -> str:
        """The jitter kind (`jitter` true is `full`, false is `none`)."""
        return jitter_kind(self.jitter)

    def backoff_cap(self, attempts_made: int) -> float:
        """Upper bound of the wait after `attempts_made` attempts (exponential, capped)."""
        exponent = max(attempts_made - 1, 0)
        # Guard the float power: 2.0 ** 2000 overflows long before the cap matters.
        try:
            growth = self.multiplier**exponent
        except OverflowError:
            return self.max_delay if self.initial_delay > 0 else 0.0
        return min(self.max_delay, self.initial_delay * growth)

    def next_delay(
        self,
        *,
        attempts_made: int,
        first_attempt_at: float,
        now: float,
        retryable: bool,
        rng: UniformSource,
        retry_after: float | None = None,
        previous_delay: float | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up.

        Gives up at once on a failure that is not retryable. Otherwise draws the jitter (one
        `rng.uniform(0, 1)`, unless the kind is `none`), takes `backoff_delay`, and gives up if
        `exhausted` says so for that wait. `first_attempt_at` and `now` are readings of the
        caller's clock (the journal's times); a server's `Retry-After` is a floor on the wait.
        `previous_delay` is the last wait of this call (None before the first retry), which
        only the decorrelated kind reads.
        """
        if not retryable:
            return None
        # The draw comes before the stop check, so a run uses one value per failed retryable
        # attempt whether or not it then gives up (same seed, same sequence).
        random_value = rng.uniform(0.0, 1.0) if self.jitter_kind != "none" else 1.0
        delay = backoff_delay(
            self,
            attempts_made,
            random_value,
            retry_after=retry_after,
            previous_delay=previous_delay,
        )
        if exhausted(
            self, attempts_made=attempts_made, elapsed=now - first_attempt_at, delay=delay
        ):
            return None
        return delay


def backoff_delay(
    policy: RetryPolicy,
    attempts_made: int,
    random_value: float,
    *,
    retry_after: float | None = None,
    previous_delay: float | None = None,
) -> float:
    """The wait after `attempts_made` failed attempts: pure, the jitter passed in.

    `jitter_delay` of the policy's kind over the exponential cap `backoff_cap` (full jitter:
    `random_value` in [0, 1] times the cap; none: the cap itself); the decorrelated kind grows
    from `previous_delay` (`initial_delay` when None). A server's `retry_after` is a floor
    (the wait is then at least `retry_after`).
    """
    cap = policy.backoff_cap(attempts_made)
    base = policy.initial_delay
    delay = jitter_delay(
        policy.jitter_kind,
        cap,
        random_value,
        base=base,
        previous=base if previous_delay is None else previous_delay,
        max_delay=policy.max_delay,
    )
    retry_after = bounded_retry_after(retry_after)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def bounded_retry_after(seconds: float | None) -> float | None:
    """A server's Retry-After in seconds, as the retry rule takes it: in [0, MAX_RETRY_AFTER].

    Infinite or too large values become MAX_RETRY_AFTER, negative ones 0; NaN says nothing
    (None). Both runtimes pass every Retry-After through here (`outcomes.classify_status`).
    """
    if seconds is None or seconds != seconds:  # NaN is the one value not equal to itself
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def exhausted(policy: RetryPolicy, *, attempts_made: int, elapsed: float, delay: float) -> bool:
    """Whether to give up instead of waiting `delay` for another attempt.

    `max_attempts` counts the attempts made so far; `deadline` bounds the time from the first
    attempt (`elapsed` ago) to the start of the next one, which may start exactly at it.
    """
    if policy.max_attempts is not None and attempts_made >= policy.max_attempts:
        return True
    return policy.deadline is not None and elapsed + delay > policy.deadline


DEFAULT_ACTION_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=8, max_delay=10.0)
FOREVER_RETRY = RetryPolicy(max_attempts=None, max_delay=30.0)
