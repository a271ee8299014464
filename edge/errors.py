"""Errors raised by the edge package.

EdgeError
 ├── KeyStoreError      the API key database cannot be read or written, or a key is unknown
 │    ├── UnknownKey    no key has that id (or name)
 │    ├── KeyRequestError  a key request out of bounds or ambiguous (bad input, not the store)
 │    └── KeyCopyRefused   a key copy would collide with the destination's keys (nothing written)
 └── StackError         the stack cannot be started, found or stopped
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge raises on purpose."""


class KeyStoreError(EdgeError):
    """The API key store cannot be used as asked."""


class UnknownKey(KeyStoreError):
    """No key has that id (or name)."""


class KeyRequestError(KeyStoreError):
    """A key request refused as bad input: a rate or burst out of bounds, a bad tenant name,
    a name several active keys share."""


class KeyCopyRefused(KeyStoreError):
    """A key copy refused before anything was written: the destination has keys (without
    `merge`), or, with `merge`, a key id or an active key's name is in both."""


class StackError(EdgeError):
    """The local stack cannot be started, found or stopped."""
