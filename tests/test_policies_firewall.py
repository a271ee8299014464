"""Firewall: static CIDR rules and the per-address flood guard."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagalab.edge.policies.firewall import Firewall, FloodGuard, Reason, parse_networks


@pytest.mark.parametrize(
    ("allow", "deny", "address", "reason"),
    [
        ([], [], "10.1.2.3", Reason.ALLOWED),
        ([], ["203.0.113.0/24"], "203.0.113.9", Reason.DENIED),
        ([], ["203.0.113.0/24"], "203.0.114.9", Reason.ALLOWED),
        (["10.0.0.0/8"], [], "192.168.1.1", Reason.NOT_ALLOWED),
        (["10.0.0.0/8"], ["10.9.0.0/16"], "10.9.1.1", Reason.DENIED),
        (["::1/128"], [], "::1", Reason.ALLOWED),
        ([], [], "not-an-ip", Reason.MALFORMED),
    ],
    ids=["open", "deny-hit", "deny-miss", "allow-miss", "deny-wins", "ipv6", "malformed"],
)
def test_static_rules(allow: list[str], deny: list[str], address: str, reason: Reason) -> None:
    verdict = Firewall(allow=allow, deny=deny).check(address, now=0.0)
    assert verdict.reason is reason
    assert verdict.allowed == (reason is Reason.ALLOWED)


@pytest.mark.parametrize(
    ("allow", "deny", "address"),
    [
        ([], [], "10.1.2.3"),
        ([], ["203.0.113.0/24"], "203.0.113.9"),
        (["10.0.0.0/8"], [], "192.168.1.1"),
        (["::1/128"], [], "::1"),
    ],
)
def test_a_parsed_address_gets_the_verdict_of_its_string(
    allow: list[str], deny: list[str], address: str
) -> None:
    # The simulator hands over the address it already parsed; the answer must not change.
    parsed = Firewall(allow=allow, deny=deny).check(address, 0.0, ipaddress.ip_address(address))
    assert parsed == Firewall(allow=allow, deny=deny).check(address, now=0.0)


def test_flooding_address_is_blocked_then_released() -> None:
    guard = FloodGuard(rate=10, burst=5, block_for=30)
    fw = Firewall(flood=guard)
    verdicts = [fw.check("198.51.100.1", now=0.0) for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False]
    assert verdicts[-1].reason is Reason.FLOODING
    assert fw.check("198.51.100.2", now=0.0).allowed  # others are unaffected
    blocked = fw.check("198.51.100.1", now=29.0)
    assert not blocked.allowed and blocked.retry_after == pytest.approx(1.0)
    assert fw.check("198.51.100.1", now=30.0).allowed


def test_guard_forgets_idle_addresses() -> None:
    guard = FloodGuard(rate=1, burst=2, block_for=5)
    for i in range(1000):
        guard.check(f"10.0.{i // 256}.{i % 256}", now=0.0)
    assert len(guard) == 1000
    guard.check("10.9.9.9", now=100.0)
    assert len(guard) <= 1


def test_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks(["10.0.0.0/33"])


@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=300))
def test_allowed_never_exceeds_bucket(gaps: list[float]) -> None:
    guard = FloodGuard(rate=5, burst=3, block_for=2)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += guard.check("192.0.2.1", now).allowed
    assert allowed <= 3 + 5 * now + 1e-9
