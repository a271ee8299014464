"""API keys: created once and shown once, stored hashed, checked in constant time.

A key reads `sgl_<id>_<secret>`: the 8-hex-digit id finds the row, and the secret (32 random
bytes, URL-safe base64) is checked against its stored SHA-256 digest with
`hmac.compare_digest`. A slow password hash (scrypt, argon2) is for low-entropy secrets; a
256-bit random secret cannot be guessed from its SHA-256, and the gateway checks keys on every
request.

Where keys live: `open_key_store(url_or_path)` takes what `--keys-db` (SAGALAB_KEYS_DB) gives,
read by orchestrator/stores.py's one URL rule. A path (or `sqlite:` URL) is a small SQLite file
of its own, never the saga database (edge/sqlite_keys.py); a `postgresql://` URL is an
`api_keys` table in that database, which may be the saga database itself: keys beside the
sagas, one server for the whole lab (edge/postgres_keys.py). `sagalab keys` writes it, every
gateway reads it. A gateway caches what it read for `ttl` seconds, so a revoked key stops
working everywhere within that time.

Every key belongs to a tenant: the sagas it creates are that tenant's and it sees no other's.
A key created without a tenant is its own tenant, named after the key, and that tenant must be
new: a key joins an existing tenant only when told to (`--tenant`), never because its name
matches. Two active keys never share a name (`keys revoke NAME` must name one key). Keys from
before tenants existed belong to the tenant "default", as do the sagas of that time. An admin key
sees every tenant's sagas. These rules are written once, in `KeyTable`, over SQL both backends
run. Only an open with `create=True` creates or upgrades a key table: reads never write, and a
database that is not a key database (a SQLite saga file, another application's tables) is
refused.

`export` and `import_keys` copy keys as stored (ids, digests, tenants, limits, revoked state),
so that a key made at the source authenticates at the destination (`sagalab db copy
--keys-from ... --keys-to ...`, `sagalab keys copy`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from sagalab.edge.errors import KeyCopyRefused, KeyRequestError, KeyStoreError, UnknownKey
from sagalab.orchestrator.errors import StoreError
from sagalab.orchestrator.store import DEFAULT_TENANT
from sagalab.orchestrator.stores import database_identity, postgres_url, sqlite_path

__all__ = [
    "KEY_COLUMNS",
    "MAX_ECHOED",
    "ApiKey",
    "KeyCount",
    "KeyCache",
    "KeyStore",
    "KeyTable",
    "check_tenant",
    "copy_keys",
    "echoed",
    "open_key_store",
    "same_key_database",
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
#: The longest key name: it is shown in `keys list` and in every refusal that names the key.
MAX_NAME = 200

# What a gateway tells the API about the caller. The API believes these headers only next to
# the stack's gateway secret, and a gateway drops every `x-sagalab-*` header a client sends.
INTERNAL_PREFIX = "x-sagalab-"
GATEWAY_HEADER = "x-sagalab-gateway"
TENANT_HEADER = "x-sagalab-tenant"
ADMIN_HEADER = "x-sagalab-admin"
KEY_ID_HEADER = "x-sagalab-key-id"

#: A stored key's columns, in the order `export` gives and `import_keys` takes them.
KEY_COLUMNS = (
    "id",
    "name",
    "digest",
    "rate",
    "burst",
    "created_at",
    "revoked_at",
    "tenant",
    "admin",
)
#: A key's row as `export` gives it (the digest included: a copy keeps the key working).
KeyRow = dict[str, Any]
#: (The classes below have a `list` method, which hides the builtin in their bodies.)
KeyRows = list[KeyRow]


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


#: How much of a typed name or id a message echoes (the rest is cut: "…").
MAX_ECHOED = 60


def echoed(typed: str) -> str:
    """`typed` (a name, id or tenant the user gave) as a message quotes it: at most
    MAX_ECHOED characters, then "…", so a 100,000-character argument is one short line."""
    if len(typed) <= MAX_ECHOED:
        return repr(typed)
    return repr(typed[:MAX_ECHOED]) + "…"


def check_tenant(tenant: str) -> str:
    """`tenant` if it is a valid tenant name (it travels in a header), else KeyRequestError."""
    if not _TENANT.match(tenant):
        raise KeyRequestError(
            f"{echoed(tenant)} is not a valid tenant name: 1 to 64 letters, digits, '_', '.', '@' "
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


def check_name(name: str) -> str:
    """`name` if it can name a key: 1 to MAX_NAME printable characters, else KeyRequestError.

    The refusal gives the length, never the name itself: a 100,000-character name must not
    come back as a 100,000-character error line.
    """
    if not 1 <= len(name) <= MAX_NAME:
        raise KeyRequestError(f"a key's name must be 1 to {MAX_NAME} characters (got {len(name)})")
    if not name.isprintable() or not name.strip():
        raise KeyRequestError(
            f"a key's name must be printable characters, not only spaces (got {echoed(name)})"
        )
    return name


def check_request(name: str, *, rate: float, burst: float, tenant: str | None) -> str:
    """The tenant a key named `name` would have, once its name and limits are checked.

    KeyRequestError (bad input) names what is out of bounds; without `tenant`, the key's name
    serves as its tenant's.
    """
    check_name(name)
    check_limits(rate, burst)
    if tenant is None and not _TENANT.match(name):
        raise KeyRequestError(
            f"key name {echoed(name)} cannot serve as its tenant's name; pass --tenant"
        )
    return check_tenant(name if tenant is None else tenant)


def parse_key(presented: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None."""
    parts = presented.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 8 or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyTable:
    """The key rules, once, over the `api_keys` table both backends hold.

    A backend gives four things: `_read` and `_write` (one statement, `?` placeholders,
    driver errors as KeyStoreError), `_transaction()` (one writer at a time from its first
    statement to its commit: two `keys create` at once cannot both find a name free) and
    `_select` (the columns of `ApiKey`, in its order, `FROM api_keys`).
    """

    shown: str
    _select: str

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _write(self, sql: str, args: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def close(self) -> None:
        """Close the handle."""
        raise NotImplementedError

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
        with self._transaction():
            return self._insert(name, rate, burst, tenant, owner, admin, at, replace)

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
        active = self._read(
            "SELECT id, tenant FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,)
        )
        if active and replace:
            owner = tenant or active[0][1]
            self._write(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (at, name),
            )
        elif active:
            raise KeyRequestError(
                f"an active key is already named {echoed(name)} ({active[0][0]}): choose another "
                "name, or revoke that key first"
            )
        elif tenant is None and not replace:
            taken = self._read("SELECT 1 FROM api_keys WHERE tenant = ? LIMIT 1", (owner,))
            if taken or owner == DEFAULT_TENANT:  # `default` also holds the CLI's sagas
                raise KeyRequestError(
                    f"tenant {owner} exists: pass --tenant {owner} to add a key to it"
                )
        for _ in range(5):
            key_id = secrets.token_hex(4)
            # Checked, not caught: a failed INSERT would end a PostgreSQL transaction. The
            # transaction's one-writer lock keeps the id free until the insert.
            if self._read("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)):
                continue
            secret = secrets.token_urlsafe(32)
            self._write(
                "INSERT INTO api_keys (id, name, digest, rate, burst, created_at, tenant, admin) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, _digest(secret), rate, burst, at, owner, int(admin)),
            )
            record = ApiKey(key_id, name, rate, burst, at, None, owner, admin)
            return record, f"{PREFIX}_{key_id}_{secret}"
        raise KeyStoreError("could not draw an unused key id; try again")

    def _row(self, row: Sequence[Any]) -> ApiKey:
        return ApiKey(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]))

    def list(self) -> list[ApiKey]:
        """Every key, oldest first (revoked ones included)."""
        return [self._row(r) for r in self._read(self._select + " ORDER BY created_at, id")]

    def revoke(self, key_id: str, *, now: float | None = None) -> ApiKey:
        """Revoke a key by id, full key text, or a name only one active key has; idempotent."""
        parsed = parse_key(key_id)
        ident = parsed[0] if parsed else key_id
        typed = ident  # a whole key is echoed by its id: its secret stays out of messages
        if not self._read("SELECT 1 FROM api_keys WHERE id = ?", (ident,)):
            named = [
                r[0]
                for r in self._read(
                    "SELECT id FROM api_keys WHERE name = ? AND revoked_at IS NULL", (key_id,)
                )
            ]
            if len(named) > 1:
                raise KeyRequestError(
                    f"{len(named)} active keys are named {echoed(typed)} ({', '.join(named)}); "
                    "revoke one by id"
                )
            if not named:
                raise UnknownKey(
                    f"no key with id or name {echoed(typed)}; `sagalab keys list` shows them"
                )
            ident = named[0]
        at = time.time() if now is None else now
        self._write(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (at, ident)
        )
        return self._row(self._read(self._select + " WHERE id = ?", (ident,))[0])

    def lookup(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The active key with this id and its digest, or None."""
        rows = self._read(
            self._select.replace(" FROM", ", digest FROM", 1)
            + " WHERE id = ? AND revoked_at IS NULL",
            (key_id,),
        )
        return None if not rows else (self._row(rows[0][:8]), rows[0][8])

    def export(self) -> KeyRows:
        """Every key as stored (`KEY_COLUMNS`, digests included), oldest first: one
        statement, so one snapshot."""
        rows = self._read(
            self._select.replace(" FROM", ", digest FROM", 1) + " ORDER BY created_at, id"
        )
        return [{**self._row(r[:8]).to_dict(), "digest": r[8]} for r in rows]

    def import_keys(self, rows: Sequence[KeyRow], *, merge: bool = False) -> int:
        """Add `rows` (from `export`) as they are, in one transaction; how many were added.

        KeyCopyRefused, with nothing written, if this store has keys and `merge` is False;
        with `merge`, if a key id is in both or an active key's name would then be on two
        active keys. KeyStoreError for a row that is not a key (nothing written either).
        """
        with self._transaction():
            self.check_import(rows, merge=merge)
            for row in rows:
                values = _checked_row(row)
                self._write(
                    f"INSERT INTO api_keys ({', '.join(KEY_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in KEY_COLUMNS)})",
                    values,
                )
        return len(rows)

    def check_import(self, rows: Sequence[KeyRow], *, merge: bool = False) -> None:
        """KeyCopyRefused if `import_keys(rows, merge=merge)` would be (reads only)."""
        held = self._read("SELECT id, name, revoked_at FROM api_keys")
        if held and not merge:
            raise KeyCopyRefused(
                f"the key database {self.shown} has {len(held)} key(s) already: copy into "
                "an empty one, or pass --force to add the source's keys to them (refused, "
                "with nothing written, if a key id or an active key's name is in both)"
            )
        ids = {r[0] for r in held}
        names = {r[1] for r in held if r[2] is None}
        both = sorted(str(r.get("id")) for r in rows if r.get("id") in ids)
        if both:
            raise KeyCopyRefused(
                f"key id(s) {', '.join(both[:5])} are in both key databases: nothing copied"
            )
        clash = sorted(
            str(r.get("name"))
            for r in rows
            if r.get("revoked_at") is None and r.get("name") in names
        )
        if clash:
            raise KeyCopyRefused(
                f"active keys named {', '.join(map(repr, clash[:5]))} are in both key "
                "databases (two active keys never share a name): revoke one side's first; "
                "nothing copied"
            )


#: What the gateways, the API and the CLI hold of a key database (either backend, one handle
#: per thread): `KeyTable`'s rules over a backend's statements. Errors: KeyStoreError (the
#: database cannot be used), its KeyRequestError (bad input), UnknownKey and KeyCopyRefused.
KeyStore = KeyTable


def _checked_row(row: KeyRow) -> tuple[Any, ...]:
    """`row`'s values in `KEY_COLUMNS` order, once it reads as a stored key."""
    try:
        values = tuple(row[c] for c in KEY_COLUMNS)
        ok = (
            isinstance(row["id"], str)
            and len(row["id"]) == 8
            and isinstance(row["digest"], str)
            and len(row["digest"]) == 64
        )
        check_tenant(str(row["tenant"]))
    except (KeyError, KeyRequestError):
        ok = False
    if not ok:
        raise KeyStoreError(f"not a stored key: {sorted(row)!r}; nothing copied")
    return (*values[:-1], int(bool(row["admin"])))


def open_key_store(
    url_or_path: str | os.PathLike[str], *, create: bool = True, readonly: bool = False
) -> KeyStore:
    """The key database `url_or_path` names (`--keys-db`), by orchestrator.stores' URL rule:
    a PostgreSQL URL is the `api_keys` table in that database, anything else a SQLite file.

    `create` (the gateways, the API, `keys create`) makes the table, and the file or
    database, if missing. Otherwise it must exist and nothing is written on opening;
    `readonly` never writes at all. KeyStoreError, one line, for anything else.
    """
    try:
        url = postgres_url(url_or_path)
        if url is None:
            path = sqlite_path(url_or_path)
    except StoreError as exc:
        raise KeyStoreError(f"{exc} (for --keys-db)") from None
    if url is not None:
        try:
            from sagalab.edge.postgres_keys import PostgresKeyStore
        except ImportError:
            raise KeyStoreError(
                "a postgresql:// key database needs psycopg 3: pip install 'sagalab[postgres]'"
            ) from None
        # cast: mypy run by folder (tests/test_types.py) names this module `edge.keys` and the
        # backends' KeyTable `sagalab.edge.keys.KeyTable`, two types for one class.
        return cast(KeyStore, PostgresKeyStore(url, create=create, readonly=readonly))
    from sagalab.edge.sqlite_keys import SQLiteKeyStore  # imports this module: not at top

    return cast(KeyStore, SQLiteKeyStore(path, create=create, readonly=readonly))


def same_key_database(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether `a` and `b` name one key database."""
    try:
        return database_identity(a) == database_identity(b)
    except StoreError:
        return False


def copy_keys(source: KeyStore, destination: KeyStore, *, merge: bool = False) -> KeyCount:
    """Copy every key of `source` to `destination` as stored (see `KeyTable.import_keys`)."""
    rows = source.export()
    before = len(destination.list())
    copied = destination.import_keys(rows, merge=merge)
    return KeyCount(len(rows), before, copied, len(destination.list()))


@dataclass(frozen=True)
class KeyCount:
    """A key copy's count check (as `db copy` shows it beside the saga tables')."""

    source: int
    before: int
    copied: int
    after: int

    @property
    def ok(self) -> bool:
        """Every source key arrived and nothing else changed the destination."""
        return self.copied == self.source and self.after == self.before + self.copied

    def to_dict(self) -> dict[str, Any]:
        """The check as JSON, in the shape of `db copy`'s saga tables."""
        return {
            "table": "api_keys",
            "source": self.source,
            "destination_before": self.before,
            "copied": self.copied,
            "destination": self.after,
            "ok": self.ok,
        }


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
            except KeyStoreError:  # the database is away for now (a restart, a cut network)
                found = cached[1] if cached else None  # keep serving what we knew
            cached = self._cache[key_id] = (now, found)
        found = cached[1]
        if found is None:
            return None
        key, digest = found
        if not hmac.compare_digest(_digest(secret), digest):
            return None
        return key
