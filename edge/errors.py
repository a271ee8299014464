"""Errors raised by the edge package.

EdgeError
 ├── KeyStoreError      the API key database cannot be read or written, or a key is unknown
 └── StackError         the stack cannot be started, found or stopped
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge raises on purpose."""


class KeyStoreError(EdgeError):
    """The API key store cannot be used as asked."""


class UnknownKey(KeyStoreError):
    """No key has that id (or name)."""


class StackError(EdgeError):
    """The local stack cannot be started, found or stopped."""
