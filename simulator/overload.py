"""Report entries of the overload settings, each present only when its setting is on, so a
report without them stays as it was: client-side throttling (`clients[].throttle`), queue
timeouts (`gateways.queue_timeout`, `services.*.queue_timeout`) and closed populations
(`clients[].population`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Simulation

__all__ = ["extend_report"]


def extend_report(sim: Simulation, report: dict[str, Any]) -> None:
    """Add the overload settings' entries to `report` (built by `report.build_report`)."""
    counts = sim.edge.counts
    for kind in ("legit", "attacker"):
        if any(g.throttle is not None and g.kind == kind for g, _ in sim.groups):
            # Requests the client refused itself (never sent, not retried).
            report["requests"][kind]["throttled"] = counts.get(f"{kind}.throttled", 0)
    expired: dict[str, int] = {}
    firewall = sim.edge.fw_station
    if firewall.queue_timeout is not None:
        expired["firewall"] = firewall.expired
    gateways = [g.station for g in sim.edge.gateways]
    if any(s.queue_timeout is not None for s in gateways):
        expired["gateways"] = sum(s.expired for s in gateways)
    for name, service in sim.services.items():
        if service.station.queue_timeout is not None:
            expired[f"service.{name}"] = service.station.expired
    if expired:
        # Work dropped unserved after waiting past its tier's queue timeout, per tier.
        report["queue_timeouts"] = expired
    closed = {g.name: g.population.report() for g, _ in sim.groups if g.population is not None}
    if closed:
        report["populations"] = closed
