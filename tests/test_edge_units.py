"""Edge pieces without sockets: keys, client addresses, trace context, response parsing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sagalab.edge.firewall import client_address
from sagalab.edge.gateway import ensure_traceparent
from sagalab.edge.keys import KeyCache, open_key_store, parse_key
from sagalab.edge.policies.firewall import parse_networks
from sagalab.edge.pool import honours_key
from sagalab.edge.upstream import _parse_head


def test_keys_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    store = open_key_store(tmp_path / "keys.db")
    record, key = store.create("ci", rate=5, burst=10)
    raw = (tmp_path / "keys.db").read_bytes()
    secret = key.split("_", 2)[2]
    assert secret.encode() not in raw
    cache = KeyCache(store, ttl=0.0)
    assert cache.authenticate(key) == record
    assert cache.authenticate(key + "x") is None
    assert cache.authenticate(None) is None
    store.revoke(record.id)
    assert cache.authenticate(key) is None
    assert [k.active for k in store.list()] == [False]


def test_keys_cli_revokes_by_name_only_when_the_name_is_unambiguous(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sagalab.cli.main import app

    db = str(tmp_path / "keys.db")
    run = CliRunner().invoke
    assert run(app, ["keys", "create", "ops", "--keys-db", db]).exit_code == 0
    done = run(app, ["keys", "revoke", "ops", "--keys-db", db, "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["active"] is False
    assert run(app, ["keys", "create", "ci", "--keys-db", db]).exit_code == 0
    again = run(app, ["keys", "create", "ci", "--tenant", "ci", "--keys-db", db])
    assert again.exit_code == 2 and "an active key is already named 'ci'" in again.stderr
    # A file from before names were checked may hold two: revoking by name then refuses.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO api_keys (id, name, digest, rate, burst, created_at, tenant) "
            "VALUES ('0000beef', 'ci', 'x', 1, 1, 0, 'ci')"
        )
    conn.close()
    twice = run(app, ["keys", "revoke", "ci", "--keys-db", db])
    assert twice.exit_code == 2 and "2 active keys are named 'ci'" in twice.stderr
    unknown = run(app, ["keys", "revoke", "nobody", "--keys-db", db])
    assert unknown.exit_code == 3 and "no key with id or name 'nobody'" in unknown.stderr
    assert [k.active for k in open_key_store(tmp_path / "keys.db").list()].count(True) == 2


def test_revocation_reaches_a_cache_after_its_ttl(tmp_path: Path) -> None:
    now = [0.0]
    store = open_key_store(tmp_path / "keys.db")
    _, key = store.create("ci")
    cache = KeyCache(store, ttl=2.0, clock=lambda: now[0])
    assert cache.authenticate(key) is not None
    store.revoke(key)
    assert cache.authenticate(key) is not None  # still cached
    now[0] = 2.5
    assert cache.authenticate(key) is None


@pytest.mark.parametrize(
    "text",
    ["", "sgl", "sgl_short_x", "abc_deadbeef_secret", "sgl_deadbeef_"],
    ids=["empty", "prefix", "short-id", "other-prefix", "no-secret"],
)
def test_malformed_keys_do_not_parse(text: str) -> None:
    assert parse_key(text) is None


TRUSTED = parse_networks(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("127.0.0.1", b"6.6.6.6", "127.0.0.1"),
        ("10.0.0.2", b"6.6.6.6", "6.6.6.6"),
        ("10.0.0.2", b"1.1.1.1, 6.6.6.6, 10.0.0.3", "6.6.6.6"),
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", b"10.0.0.5", "10.0.0.5"),
        ("10.0.0.2", b"garbage", "garbage"),
    ],
    ids=[
        "untrusted-peer",
        "trusted-peer",
        "rightmost-untrusted",
        "no-header",
        "all-trusted",
        "garbage",
    ],
)
def test_client_address(peer: str, xff: bytes | None, expected: str) -> None:
    assert client_address(peer, xff, TRUSTED) == expected


def test_traceparent_keeps_the_trace_and_makes_a_new_span() -> None:
    given = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    value, created = ensure_traceparent(given)
    assert not created
    assert value.startswith(b"00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert value != given
    for bad in (None, b"nonsense", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01"):
        value, created = ensure_traceparent(bad)
        assert created and len(value) == 55


def test_response_head_parsing() -> None:
    status, headers, length, chunked, close = _parse_head(
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 12\r\nConnection: close\r\n"
        b"Location: /v1/sagas/x\r\n\r\n"
    )
    assert (status, length, chunked, close) == (202, 12, False, True)
    assert headers == [(b"location", b"/v1/sagas/x")]


@pytest.mark.parametrize(
    ("method", "target", "keyed"),
    [
        ("POST", "/v1/sagas", True),
        ("POST", "/v1/sagas?x=1", True),
        ("POST", "/v1/%73agas", True),  # the API routes it decoded: so does the edge
        ("POST", "/v1/sagas/s1/rollback", False),
        ("GET", "/v1/sagas", False),
    ],
)
def test_the_edge_keys_exactly_the_routes_the_api_honours(
    method: str, target: str, keyed: bool
) -> None:
    assert honours_key(method, target) is keyed
