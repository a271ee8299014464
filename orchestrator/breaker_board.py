"""Circuit breakers shared by every worker process through the saga database.

Breaker settings (`BreakerConfig`, the services file's `breakers:` section), and
`BreakerBoard`, which hands out one `Breaker` per service for one thread over a
`BreakerStore` (orchestrator/store.py) opened by `open_breaker_store`: what one replica
learns about a service protects all of them. The SQL lives with the SQLite store
(orchestrator/sqlite_breakers.py). `breaker_rows`, `breaker_events` and `reset_breaker` serve
`sagalab breakers`; the first two open the database read-only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sagalab.orchestrator.errors import ServiceConfigError
from sagalab.orchestrator.flowfile import load_services, read_services_file
from sagalab.orchestrator.policies.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from sagalab.orchestrator.store import Guard
from sagalab.orchestrator.stores import open_breaker_store


@dataclass(frozen=True)
class BreakerConfig:
    """One service's breaker settings."""

    fail_max: int = 5
    reset_timeout: float = 10.0
    success_threshold: int = 1

    def __post_init__(self) -> None:
        # ValueError names the setting; a bad one would leave a breaker that never opens,
        # never closes, or refuses every call (and sagas compensating for ever).
        for name in ("fail_max", "success_threshold"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_BREAKER_COUNT:
                raise ValueError(
                    f"{name} must be a whole number from 1 to {MAX_BREAKER_COUNT}, not {value!r}"
                )
        timeout = self.reset_timeout
        if not _is_number(timeout) or not 0 < timeout <= MAX_RESET_TIMEOUT:
            raise ValueError(
                f"reset_timeout must be a number of seconds above 0 and at most "
                f"{MAX_RESET_TIMEOUT:g}, not {timeout!r}"
            )


MAX_BREAKER_COUNT = 1000
MAX_RESET_TIMEOUT = 86_400.0  # a day: longer is a service switched off, not a breaker


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # NaN fails every comparison, so the range check refuses it (and inf is out of range).
    return isinstance(value, int | float) and not isinstance(value, bool)


DEFAULT_BREAKER = BreakerConfig()
_SETTINGS = ("fail_max", "reset_timeout", "success_threshold")


def load_breaker_configs(path: str | Path | None) -> dict[str, BreakerConfig]:
    """Per-service settings from the services file's `breakers:` section (if any).

    Every setting is checked here, at load: ServiceConfigError names the service and setting.
    """
    if path is None:
        return {}
    raw = read_services_file(path)
    section = raw.get("breakers", {})
    if not isinstance(section or {}, Mapping):
        raise ServiceConfigError(
            f"services file {path}: breakers must map service names to settings"
        )
    configs = {}
    for name, values in (section or {}).items():
        where = f"services file {path}: breakers.{name}"
        if not isinstance(values or {}, Mapping):
            raise ServiceConfigError(f"{where} must be a mapping of {', '.join(_SETTINGS)}")
        unknown = sorted(str(k) for k in (values or {}) if k not in _SETTINGS)
        if unknown:
            raise ServiceConfigError(
                f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {', '.join(_SETTINGS)}"
            )
        try:
            configs[str(name)] = BreakerConfig(**dict(values or {}))
        except ValueError as exc:
            raise ServiceConfigError(f"{where}.{str(exc).split()[0]}: {exc}") from None
    if configs:
        # A breaker for a service that has no URL (in the file or SAGALAB_SERVICE_*) guards
        # nothing: most likely a misspelt name, which would leave the real service unguarded.
        known = load_services(path)
        for name in configs:
            if name not in known:
                raise ServiceConfigError(
                    f"services file {path}: breakers.{name}: no service {name!r} is configured "
                    f"(services: {', '.join(sorted(known)) or 'none'}); fix the name or add "
                    f"its URL"
                )
    return configs


_STATES = (CLOSED, OPEN, HALF_OPEN)
#: How far ahead of this clock an `opened_time` may be (another host's clock): a day.
_CLOCK_SKEW = 86_400.0


def _sane_time(value: float, now: float) -> bool:
    return math.isfinite(value) and 0 <= value <= now + _CLOCK_SKEW


def row_damage(state: object, opened_time: object, *, now: float) -> str | None:
    """Why a stored breaker row cannot be what sagalab wrote (None when it can)."""
    if state not in _STATES:
        return f"damaged row: unknown state {state!r}"
    if opened_time is not None and (
        not _is_number(opened_time) or not _sane_time(float(opened_time), now)  # type: ignore[arg-type]
    ):
        return f"damaged row: opened_time {opened_time!r} is not a time"
    return None


_log = logging.getLogger(__name__)
_DAMAGE_LOGGED: set[str] = set()


def stored_state(name: str, state: object, opened_time: object, *, now: float) -> str:
    """The state a stored breaker row says, on every backend. A row no code of ours wrote
    (see `row_damage`) is never a reason to keep a service's calls out, or to park every saga
    that calls it: closed, as after `breakers reset`, logged once; the next transition writes
    a sound row."""
    if state is None:
        return CLOSED
    damaged = row_damage(state, opened_time, now=now)
    if damaged is None:
        return str(state)
    if name not in _DAMAGE_LOGGED:
        _DAMAGE_LOGGED.add(name)
        _log.warning("breaker %s: %s; treated as closed", name, damaged)
    return CLOSED


def sane_opened_time(value: object, *, now: float) -> float | None:
    """A stored `opened_time` if it is a time (None, as never opened, if it is not)."""
    if not _is_number(value) or not _sane_time(float(value), now):  # type: ignore[arg-type]
        return None
    return float(value)  # type: ignore[arg-type]


class BreakerBoard:
    """One breaker per service for one thread, backed by the shared `BreakerStore`."""

    def __init__(
        self,
        db: str | Path,
        configs: Mapping[str, BreakerConfig] | None = None,
        *,
        owner: str = "",
        on_transition: Callable[[str, float, str, str], None] | None = None,
        guard: Guard | None = None,
    ) -> None:
        """Breakers on the database `db` (a path or URL, as `open_store` takes)."""
        self.states = open_breaker_store(db, guard=guard)
        self.configs = dict(configs or {})
        self.owner = owner
        self.on_transition = on_transition
        self._breakers: dict[str, Breaker] = {}

    def get(self, service: str) -> Breaker:
        """The breaker guarding `service`."""
        breaker = self._breakers.get(service)
        if breaker is None:
            config = self.configs.get(service, DEFAULT_BREAKER)
            breaker = Breaker(
                service,
                fail_max=config.fail_max,
                reset_timeout=config.reset_timeout,
                success_threshold=config.success_threshold,
                storage=self.states.storage(service, time.time),
                on_transition=partial(self._journal, service),
            )
            self._breakers[service] = breaker
        return breaker

    def _journal(self, service: str, now: float, old: str, new: str) -> None:
        # The breaker reports only moves its own compare-and-set made, so each is logged as
        # made (checking the log's last entry instead lost a move whose racer logged first).
        previous = self.states.record_transition(service, now, new, owner=self.owner, old=old)
        if previous is not None and self.on_transition is not None:
            self.on_transition(service, now, previous, new)

    def close(self) -> None:
        """Close the board's connection."""
        self.states.close()


def breaker_rows(db: str | Path) -> list[dict[str, Any]]:
    """Every breaker's shared state, for `sagalab breakers list` (read-only)."""
    states = open_breaker_store(db, readonly=True)
    try:
        return states.rows()
    finally:
        states.close()


def breaker_events(db: str | Path, name: str | None = None) -> list[dict[str, Any]]:
    """Breaker transitions, oldest first (read-only)."""
    states = open_breaker_store(db, readonly=True)
    try:
        return states.events(name)
    finally:
        states.close()


def reset_breaker(db: str | Path, name: str) -> bool:
    """Close breaker `name` by hand; False if no such breaker exists."""
    states = open_breaker_store(db)
    try:
        return states.reset(name, now=time.time())
    finally:
        states.close()
