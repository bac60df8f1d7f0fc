"""Errors raised by the store. Every message is a full sentence a user interface can show."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the store's own errors."""


class StoreInputError(StoreError, ValueError):
    """An argument is invalid (unknown role, empty user name, missing scores, ...)."""


class NotFoundError(StoreError, LookupError):
    """A triplet, annotation, label, run, user or image that does not exist was referenced."""


class ConflictError(StoreError):
    """A write lost a race or contradicts what is stored; reload and try again."""


class LockedError(ConflictError):
    """The item is locked by another user (see ``Store.acquire_lock``)."""


class StoreBusyError(StoreError):
    """Another connection held the database's write lock for longer than the busy timeout."""
