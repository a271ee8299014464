"""API keys: created once and shown once, stored hashed, checked in constant time.

A key reads `sgl_<id>_<secret>`: the 8-hex-digit id finds the row, and the secret (32 random
bytes, URL-safe base64) is checked against its stored SHA-256 digest with
`hmac.compare_digest`. A slow password hash (scrypt, argon2) is for low-entropy secrets; a
256-bit random secret cannot be guessed from its SHA-256, and the gateway checks keys on every
request.

Keys live in a small SQLite file of their own (not the saga database): `sagalab keys` writes
it, every gateway reads it. A gateway caches what it read for `ttl` seconds, so a revoked key
stops working everywhere within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.errors import KeyStoreError, UnknownKey

__all__ = ["ApiKey", "KeyCache", "KeyStore", "parse_key"]

PREFIX = "sgl"
DEFAULT_RATE = 50.0
DEFAULT_BURST = 100.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    rate REAL NOT NULL,
    burst REAL NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
)
"""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    rate: float
    burst: float
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(presented: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 8 or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyStore:
    """The key table in one SQLite file (one instance per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A gateway builds its store in one thread and serves from its event-loop thread;
            # it is only ever used from one thread at a time.
            self.conn = sqlite3.connect(
                str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise KeyStoreError(
                f"cannot open key database {path}: {exc}; pass a writable path with --keys-db"
            ) from None

    def close(self) -> None:
        self.conn.close()

    def create(
        self,
        name: str,
        *,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        now: float | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key: its record and the full key text (shown once; only its hash is kept)."""
        if rate <= 0 or burst < 1:
            raise KeyStoreError("a key needs rate > 0 and burst >= 1")
        at = time.time() if now is None else now
        for _ in range(5):
            key_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            try:
                self.conn.execute(
                    "INSERT INTO api_keys (id, name, digest, rate, burst, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (key_id, name, _digest(secret), rate, burst, at),
                )
            except sqlite3.IntegrityError:
                continue  # id collision: draw again
            except sqlite3.Error as exc:
                raise KeyStoreError(f"cannot write key database {self.path}: {exc}") from None
            return ApiKey(key_id, name, rate, burst, at), f"{PREFIX}_{key_id}_{secret}"
        raise KeyStoreError("could not draw an unused key id; try again")

    def _row(self, row: tuple[Any, ...]) -> ApiKey:
        return ApiKey(row[0], row[1], row[2], row[3], row[4], row[5])

    def list(self) -> list[ApiKey]:
        """Every key, oldest first (revoked ones included)."""
        rows = self.conn.execute(
            "SELECT id, name, rate, burst, created_at, revoked_at FROM api_keys "
            "ORDER BY created_at, id"
        ).fetchall()
        return [self._row(r) for r in rows]

    def revoke(self, key_id: str, *, now: float | None = None) -> ApiKey:
        """Revoke a key by id, full key text, or a name only one active key has; idempotent."""
        parsed = parse_key(key_id)
        ident = parsed[0] if parsed else key_id
        exists = self.conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (ident,)).fetchone()
        if exists is None:
            named = [
                r[0]
                for r in self.conn.execute(
                    "SELECT id FROM api_keys WHERE name = ? AND revoked_at IS NULL", (key_id,)
                )
            ]
            if len(named) > 1:
                raise KeyStoreError(
                    f"{len(named)} active keys are named {key_id!r} ({', '.join(named)}); "
                    "revoke one by id"
                )
            if not named:
                raise UnknownKey(
                    f"no key with id or name {key_id!r}; `sagalab keys list` shows them"
                )
            ident = named[0]
        at = time.time() if now is None else now
        self.conn.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (at, ident)
        )
        row = self.conn.execute(
            "SELECT id, name, rate, burst, created_at, revoked_at FROM api_keys WHERE id = ?",
            (ident,),
        ).fetchone()
        return self._row(row)

    def lookup(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The active key with this id and its digest, or None."""
        row = self.conn.execute(
            "SELECT id, name, rate, burst, created_at, revoked_at, digest FROM api_keys "
            "WHERE id = ? AND revoked_at IS NULL",
            (key_id,),
        ).fetchone()
        return None if row is None else (self._row(row[:6]), row[6])


class KeyCache:
    """What a gateway knows about keys: reads the store at most once per key per `ttl`."""

    def __init__(
        self, store: KeyStore, *, ttl: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, tuple[ApiKey, str] | None]] = {}

    def authenticate(self, presented: str | None) -> ApiKey | None:
        """The active key `presented` names, if its secret matches; else None."""
        if not presented:
            return None
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        now = self.clock()
        cached = self._cache.get(key_id)
        if cached is None or now - cached[0] > self.ttl:
            if len(self._cache) > 100_000:
                self._cache.clear()  # bounded under a flood of made-up ids
            try:
                found = self.store.lookup(key_id)
            except sqlite3.Error:
                found = cached[1] if cached else None  # keep serving what we knew
            cached = self._cache[key_id] = (now, found)
        found = cached[1]
        if found is None:
            return None
        key, digest = found
        if not hmac.compare_digest(_digest(secret), digest):
            return None
        return key
