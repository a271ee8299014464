"""API keys: created once and shown once, stored hashed, checked in constant time.

A key reads `sgl_<id>_<secret>`: the 8-hex-digit id finds the row, and the secret (32 random
bytes, URL-safe base64) is checked against its stored SHA-256 digest with
`hmac.compare_digest`. A slow password hash (scrypt, argon2) is for low-entropy secrets; a
256-bit random secret cannot be guessed from its SHA-256, and the gateway checks keys on every
request.

Keys live in a small SQLite file of their own (not the saga database): `sagalab keys` writes
it, every gateway reads it. A gateway caches what it read for `ttl` seconds, so a revoked key
stops working everywhere within that time.

Every key belongs to a tenant: the sagas it creates are that tenant's and it sees no other's.
A key created without a tenant is its own tenant, named after the key, and that tenant must be
new: a key joins an existing tenant only when told to (`--tenant`), never because its name
matches. Two active keys never share a name (`keys revoke NAME` must name one key). Keys from
before tenants existed belong to the tenant "default", as do the sagas of that time. An admin key
sees every tenant's sagas. Only `KeyStore(path, create=True)` creates or upgrades a file:
reads never write, and a file that is not a key database (a saga database, say) is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sagalab.edge.errors import KeyRequestError, KeyStoreError, UnknownKey
from sagalab.orchestrator.store import DEFAULT_TENANT

__all__ = [
    "ApiKey",
    "KeyCache",
    "KeyStore",
    "check_tenant",
    "parse_key",
    "presented_key",
    "read_secret",
]

PREFIX = "sgl"
DEFAULT_RATE = 50.0
DEFAULT_BURST = 100.0
#: Bounds of a key's rate (requests/s) and burst (requests at once).
MIN_RATE, MAX_RATE = 0.001, 100_000.0
MIN_BURST, MAX_BURST = 1.0, 100_000.0
#: The tenant of keys (and sagas) from before tenants existed.
LEGACY_TENANT = "default"
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

# What a gateway tells the API about the caller. The API believes these headers only next to
# the stack's gateway secret, and a gateway drops every `x-sagalab-*` header a client sends.
INTERNAL_PREFIX = "x-sagalab-"
GATEWAY_HEADER = "x-sagalab-gateway"
TENANT_HEADER = "x-sagalab-tenant"
ADMIN_HEADER = "x-sagalab-admin"
KEY_ID_HEADER = "x-sagalab-key-id"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    rate REAL NOT NULL,
    burst REAL NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL,
    tenant TEXT NOT NULL DEFAULT 'default',
    admin INTEGER NOT NULL DEFAULT 0
)
"""
# Columns added since the first key files; ADDed to an older file when it is opened to write.
_ADDED = {
    "tenant": "tenant TEXT NOT NULL DEFAULT 'default'",
    "admin": "admin INTEGER NOT NULL DEFAULT 0",
}
_LEGACY = {"tenant": "'default' AS tenant", "admin": "0 AS admin"}


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    rate: float
    burst: float
    created_at: float
    revoked_at: float | None = None
    tenant: str = LEGACY_TENANT
    admin: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    """`tenant` if it is a valid tenant name (it travels in a header), else KeyRequestError."""
    if not _TENANT.match(tenant):
        raise KeyRequestError(
            f"{tenant!r} is not a valid tenant name: 1 to 64 letters, digits, '_', '.', '@' "
            "or '-', starting with a letter or digit"
        )
    return tenant


def check_limits(rate: float, burst: float) -> None:
    """Refuse a rate or burst outside its bounds (KeyRequestError naming the bound)."""
    if not (math.isfinite(rate) and MIN_RATE <= rate <= MAX_RATE):
        raise KeyRequestError(
            f"a key's rate must be between {MIN_RATE:g} and {MAX_RATE:g} requests/s (got {rate:g})"
        )
    if not (math.isfinite(burst) and MIN_BURST <= burst <= MAX_BURST):
        raise KeyRequestError(
            f"a key's burst must be between {MIN_BURST:g} and {MAX_BURST:g} requests "
            f"(got {burst:g})"
        )


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>`, else `X-API-Key`."""
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return api_key


def read_secret(path: str | Path) -> str:
    """The gateway secret kept in `path` (a file only its owner reads; KeyStoreError if not)."""
    try:
        secret = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyStoreError(f"cannot read the gateway secret {path}: {exc}") from None
    if len(secret) < 16 or not secret.isascii() or not secret.isprintable():
        raise KeyStoreError(f"{path} holds no usable gateway secret (16 printable ASCII or more)")
    return secret


def check_request(name: str, *, rate: float, burst: float, tenant: str | None) -> str:
    """The tenant a key named `name` would have, once its limits are checked.

    KeyRequestError (bad input) names what is out of bounds; without `tenant`, the key's name
    serves as its tenant's.
    """
    check_limits(rate, burst)
    if tenant is None and not _TENANT.match(name):
        raise KeyRequestError(f"key name {name!r} cannot serve as its tenant's name; pass --tenant")
    return check_tenant(name if tenant is None else tenant)


def parse_key(presented: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 8 or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyStore:
    """The key table in one SQLite file (one instance per thread).

    `create=True` (what `keys create` and the gateways use) makes the file and brings its table
    up to date. Otherwise the file must already exist and nothing is written on opening;
    `readonly` (`keys list`) never writes at all (`PRAGMA query_only`), and once closed leaves
    no `-wal` or `-shm` file behind (`mode=rw`, so the last connection removes them).
    """

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False) -> None:
        create = create and not readonly
        self.path = Path(path)
        if self.path.is_dir():
            raise KeyStoreError(f"cannot open key database {path}: it is a directory")
        if self.path.exists() and not self.path.is_file():
            raise KeyStoreError(f"{path} is not a key database (not a regular file)")
        if not create and not self.path.exists():
            raise KeyStoreError(
                f"no key database at {path}: `sagalab keys create NAME` makes one "
                "(or pass the stack's with --keys-db)"
            )
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                target = str(self.path)
            else:  # mode=rw never creates the file
                target = self.path.resolve().as_uri() + "?mode=rw"
            # A gateway builds its store in one thread and serves from its event-loop thread;
            # it is only ever used from one thread at a time.
            self.conn = sqlite3.connect(
                target,
                timeout=10.0,
                isolation_level=None,
                check_same_thread=False,
                uri=not create,
            )
            if readonly:
                self.conn.execute("PRAGMA query_only=ON")
            tables = {
                r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except (sqlite3.Error, OSError) as exc:
            raise KeyStoreError(
                f"cannot open key database {path}: {exc}; pass a key database with --keys-db"
            ) from None
        if (tables or not create) and "api_keys" not in tables:
            # An empty file is a new key database only to `create`; to a read it is not one.
            self.conn.close()
            why = "it holds other tables: a saga database?" if tables else "it has no key table"
            raise KeyStoreError(
                f"{path} is not a key database ({why}); pass the key database with --keys-db"
            )
        try:
            if create:
                self.conn.execute("PRAGMA journal_mode=WAL")
                # One writer at a time: the API and every gateway open the file at once when
                # a stack starts, and an older file gains its columns exactly once.
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    self.conn.execute(_SCHEMA)
                    columns = self._columns()
                    for name, ddl in _ADDED.items():
                        if name not in columns:
                            self.conn.execute(f"ALTER TABLE api_keys ADD COLUMN {ddl}")
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
            columns = self._columns()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot use key database {path}: {exc}") from None
        self._select = (
            "SELECT id, name, rate, burst, created_at, revoked_at, "
            + ", ".join(c if c in columns else _LEGACY[c] for c in ("tenant", "admin"))
            + " FROM api_keys"
        )

    def _columns(self) -> set[str]:
        return {r[1] for r in self.conn.execute("PRAGMA table_info(api_keys)")}

    def close(self) -> None:
        self.conn.close()

    def create(
        self,
        name: str,
        *,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        tenant: str | None = None,
        admin: bool = False,
        now: float | None = None,
        replace: bool = False,
    ) -> tuple[ApiKey, str]:
        """A new key: its record and the full key text (shown once; only its hash is kept).

        Without `tenant`, the key is a tenant of its own named after it, and KeyRequestError
        if that tenant exists already. KeyRequestError if an active key has this name, unless
        `replace`: then that key is revoked in the same transaction and the new one takes its
        place, in its tenant (how a stack renews its own key on every `up`).
        """
        owner = check_request(name, rate=rate, burst=burst, tenant=tenant)
        at = time.time() if now is None else now
        try:
            # One writer from the checks to the insert: two `keys create` at once cannot both
            # find the name free.
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                made = self._insert(name, rate, burst, tenant, owner, admin, at, replace)
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot write key database {self.path}: {exc}") from None
        return made

    def _insert(
        self,
        name: str,
        rate: float,
        burst: float,
        tenant: str | None,
        owner: str,
        admin: bool,
        at: float,
        replace: bool,
    ) -> tuple[ApiKey, str]:
        active = self.conn.execute(
            "SELECT id, tenant FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,)
        ).fetchall()
        if active and replace:
            owner = tenant or active[0][1]
            self.conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (at, name),
            )
        elif active:
            raise KeyRequestError(
                f"an active key is already named {name!r} ({active[0][0]}): choose another "
                "name, or revoke that key first"
            )
        elif tenant is None and not replace:
            taken = self.conn.execute(
                "SELECT 1 FROM api_keys WHERE tenant = ? LIMIT 1", (owner,)
            ).fetchone()
            if taken or owner == DEFAULT_TENANT:  # `default` also holds the CLI's sagas
                raise KeyRequestError(
                    f"tenant {owner} exists: pass --tenant {owner} to add a key to it"
                )
        for _ in range(5):
            key_id = secrets.token_hex(4)
            secret = secrets.token_urlsafe(32)
            try:
                self.conn.execute(
                    "INSERT INTO api_keys "
                    "(id, name, digest, rate, burst, created_at, tenant, admin) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key_id, name, _digest(secret), rate, burst, at, owner, int(admin)),
                )
            except sqlite3.IntegrityError:
                continue  # id collision: draw again
            record = ApiKey(key_id, name, rate, burst, at, None, owner, admin)
            return record, f"{PREFIX}_{key_id}_{secret}"
        raise KeyStoreError("could not draw an unused key id; try again")

    def _row(self, row: tuple[Any, ...]) -> ApiKey:
        return ApiKey(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]))

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot read key database {self.path}: {exc}") from None

    def list(self) -> list[ApiKey]:
        """Every key, oldest first (revoked ones included)."""
        return [self._row(r) for r in self._query(self._select + " ORDER BY created_at, id")]

    def revoke(self, key_id: str, *, now: float | None = None) -> ApiKey:
        """Revoke a key by id, full key text, or a name only one active key has; idempotent."""
        parsed = parse_key(key_id)
        ident = parsed[0] if parsed else key_id
        exists = self._query("SELECT 1 FROM api_keys WHERE id = ?", (ident,))
        if not exists:
            named = [
                r[0]
                for r in self._query(
                    "SELECT id FROM api_keys WHERE name = ? AND revoked_at IS NULL", (key_id,)
                )
            ]
            if len(named) > 1:
                raise KeyRequestError(
                    f"{len(named)} active keys are named {key_id!r} ({', '.join(named)}); "
                    "revoke one by id"
                )
            if not named:
                raise UnknownKey(
                    f"no key with id or name {key_id!r}; `sagalab keys list` shows them"
                )
            ident = named[0]
        at = time.time() if now is None else now
        try:
            self.conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (at, ident),
            )
        except sqlite3.Error as exc:
            raise KeyStoreError(f"cannot write key database {self.path}: {exc}") from None
        return self._row(self._query(self._select + " WHERE id = ?", (ident,))[0])

    def lookup(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The active key with this id and its digest, or None."""
        rows = self.conn.execute(
            self._select.replace(" FROM", ", digest FROM", 1)
            + " WHERE id = ? AND revoked_at IS NULL",
            (key_id,),
        ).fetchall()
        return None if not rows else (self._row(rows[0][:8]), rows[0][8])


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
