"""Errors raised by the simulator package.

SimulationError
 ├── ScenarioNotFound   no shipped scenario or file by that name
 ├── ScenarioError      a scenario (file or --set override) is malformed; says where and why
 └── ClaimError         a scenario claim cannot be evaluated (unknown metric, bad syntax)
"""

from __future__ import annotations

__all__ = ["ClaimError", "ScenarioError", "ScenarioNotFound", "SimulationError"]


class SimulationError(Exception):
    """Base of every error the simulator raises on purpose."""


class ScenarioNotFound(SimulationError):
    """No shipped scenario and no file with that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"no scenario {name!r}: not a file and not one of {', '.join(known)} "
            "(`sagalab simulate list` shows them)"
        )

    def __reduce__(self) -> tuple[type, tuple[str, list[str]]]:
        # Rebuilt from its fields when a sweep's worker process sends it back.
        return (type(self), (self.name, self.known))


class ScenarioError(SimulationError):
    """A scenario value is missing, of the wrong type or out of range."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuilt from its fields when a sweep's worker process sends it back (the default
        # would call __init__ with the formatted message alone, and the pool would break).
        return (type(self), (self.where, self.message))


class ClaimError(SimulationError):
    """A scenario claim names a metric the report does not have, or cannot be parsed."""
