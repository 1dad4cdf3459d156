"""Every error tidesync raises, in one tree rooted at :class:`TidesyncError`.

Each error carries a stable ``code`` (a short string a program can switch on) and ``advice``
(what the caller should do next). Blame is explicit: a ``UsageError`` is a mistake in the
calling code; a ``RemoteError`` came from the other side of a connection; a ``StorageError``
comes from the local file.

::

    TidesyncError
    ├── UsageError                    the calling code did something tidesync does not allow
    │   ├── SchemaError               a model class or schema is not valid
    │   ├── ValidationError           a value has the wrong type for its field (also a TypeError)
    │   ├── NotInWriteTransaction     a write outside ``with db.write():``
    │   ├── InvalidatedObjectError    the object was deleted or its database closed
    │   ├── QueryError                a query does not parse or names an unknown field
    │   ├── DatabaseClosedError       the database was closed
    │   ├── PartitionError            a write to a partition this session does not sync
    │   └── MissingExtraError         an optional dependency is not installed
    ├── StorageError                  the local file cannot be used
    │   ├── EncryptionError           wrong, missing or unexpected encryption key
    │   ├── SchemaMismatchError       the file's schema cannot be changed to this one
    │   └── CorruptFileError          the file is not a tidesync database
    ├── MergeError                    a transaction cannot be integrated (malformed)
    ├── RevertError                   a transaction cannot be reverted (unknown id)
    ├── TimeoutError                  a bounded wait ran out (also a builtin TimeoutError)
    └── SyncError                     anything about talking to another replica
        ├── ProtocolError             a malformed, oversized or out-of-order message
        │   └── VersionMismatchError  the two sides speak different protocol versions
        ├── AuthError                 bad credentials or token; log in again
        ├── PermissionDeniedError     the server refused a read or a write
        ├── CompensatingWriteError    the server undid a write of ours (see ``writes``)
        ├── SubscriptionError         the server cannot serve a subscription set (flexible sync)
        ├── RateLimitedError          too many attempts; try again after ``retry_after`` s
        ├── CertificateError          the server's TLS certificate could not be verified
        └── ConnectionClosedError     the connection closed; the session will retry
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "TidesyncError",
    "UsageError",
    "SchemaError",
    "ValidationError",
    "NotInWriteTransaction",
    "InvalidatedObjectError",
    "QueryError",
    "DatabaseClosedError",
    "PartitionError",
    "MissingExtraError",
    "StorageError",
    "EncryptionError",
    "SchemaMismatchError",
    "CorruptFileError",
    "MergeError",
    "RevertError",
    "TimeoutError",
    "SyncError",
    "ProtocolError",
    "VersionMismatchError",
    "AuthError",
    "PermissionDeniedError",
    "CompensatingWriteError",
    "SubscriptionError",
    "RateLimitedError",
    "CertificateError",
    "ConnectionClosedError",
]


class TidesyncError(Exception):
    """Root of every tidesync error.

    Attributes:
        code: a stable machine-readable code, e.g. ``"validation"``.
        advice: what to do about it, in one sentence (may be empty).
    """

    code: str = "error"
    default_advice: str = ""

    def __init__(self, message: str, *, advice: str | None = None, code: str | None = None) -> None:
        self.message = message
        self.advice = self.default_advice if advice is None else advice
        if code is not None:
            self.code = code
        super().__init__(message)

    def __str__(self) -> str:
        if self.advice:
            return f"{self.message} ({self.advice})"
        return self.message


class UsageError(TidesyncError):
    """The calling code used tidesync in a way it does not allow."""

    code = "usage"


class SchemaError(UsageError):
    """A model class or schema declaration is not valid."""

    code = "schema"


class ValidationError(UsageError, builtins.TypeError):
    """A value does not fit its field; the message names the model, the field and the type."""

    code = "validation"


class NotInWriteTransaction(UsageError):
    """A write was attempted outside ``with db.write():``."""

    code = "not_in_write"
    default_advice = "wrap the change in `with db.write():`"


class InvalidatedObjectError(UsageError):
    """The object was deleted, or its database was closed."""

    code = "invalidated"
    default_advice = "fetch the object again with db.get(); it may have been deleted"


class QueryError(UsageError, builtins.ValueError):
    """A query does not parse, or names a field the model does not have.

    Attributes:
        position: index in the query text where parsing failed, when known.
    """

    code = "query"

    def __init__(self, message: str, *, position: int | None = None, query: str | None = None,
                 advice: str | None = None) -> None:
        self.position = position
        self.query = query
        if query is not None and position is not None:
            message = f"{message}\n  {query}\n  {' ' * position}^"
        super().__init__(message, advice=advice)


class DatabaseClosedError(UsageError):
    """The database was closed."""

    code = "closed"
    default_advice = "open the database again with tidesync.open()"


class PartitionError(UsageError):
    """A write to a document of a partition that this sync session does not sync."""

    code = "partition"


class MissingExtraError(UsageError, builtins.ImportError):
    """An optional dependency is not installed; the message names the extra."""

    code = "missing_extra"


class StorageError(TidesyncError):
    """The local database file cannot be used."""

    code = "storage"


class EncryptionError(StorageError):
    """Wrong, missing or unexpected encryption key."""

    code = "encryption"


class SchemaMismatchError(StorageError):
    """The file's stored schema cannot be changed to the schema given to ``open()``."""

    code = "schema_mismatch"


class CorruptFileError(StorageError):
    """The file is not a tidesync database or is damaged."""

    code = "corrupt"


class MergeError(TidesyncError):
    """A transaction cannot be integrated because it is malformed."""

    code = "merge"


class RevertError(TidesyncError):
    """A transaction cannot be reverted."""

    code = "revert"


class TimeoutError(TidesyncError, builtins.TimeoutError):
    """A bounded wait ran out before the awaited condition held."""

    code = "timeout"


class SyncError(TidesyncError):
    """Something went wrong talking to another replica.

    Attributes:
        action: what the client should do: ``"retry"``, ``"reauthenticate"`` or ``"stop"``.
    """

    code = "sync"
    action: str = "retry"

    def __init__(self, message: str, *, advice: str | None = None, code: str | None = None,
                 action: str | None = None) -> None:
        super().__init__(message, advice=advice, code=code)
        if action is not None:
            self.action = action


class ProtocolError(SyncError):
    """A malformed, oversized or out-of-order message."""

    code = "protocol"
    action = "stop"


class VersionMismatchError(ProtocolError):
    """The two sides speak different protocol versions."""

    code = "version_mismatch"
    default_advice = "upgrade the older side so both speak the same protocol version"


class AuthError(SyncError):
    """Bad credentials or token."""

    code = "auth"
    action = "reauthenticate"
    default_advice = "log in again"


class PermissionDeniedError(SyncError):
    """The server refused a read or a write."""

    code = "permission_denied"
    action = "stop"


class CompensatingWriteError(SyncError):
    """The server undid one or more of our writes.

    Attributes:
        writes: one dict per undone write: ``collection``, ``id``, ``operation``, ``reason``.
    """

    code = "compensating_write"
    action = "retry"

    def __init__(self, message: str, *, writes: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.writes = writes or []


class SubscriptionError(SyncError):
    """The server put a flexible-sync subscription set in the error state: a field that is not
    queryable, an operator it does not run... ``message`` says which. The device keeps its data
    and the server keeps serving the previous good set."""

    code = "subscription_error"
    action = "stop"
    default_advice = "change the subscription (db.subscriptions.update()) so the server can serve it"


class RateLimitedError(SyncError):
    """The server refused an attempt because there were too many (HTTP 429).

    Attributes:
        retry_after: seconds to wait before trying again (the server's ``Retry-After``).
    """

    code = "rate_limited"
    action = "retry"

    def __init__(self, message: str, *, retry_after: float = 0.0, code: str | None = None,
                 advice: str | None = None) -> None:
        super().__init__(message, code=code, advice=f"try again in {retry_after:g} s" if advice is None else advice)
        self.retry_after = retry_after


class CertificateError(SyncError):
    """The server's TLS certificate could not be verified (unknown CA, wrong host, expired).

    Nothing was sent. A sync session stops (it would fail the same way again).
    """

    code = "tls_certificate"
    action = "stop"
    default_advice = ("pass App(ca_file=...) with the CA that signed the server's certificate, "
                      "or fix the server's certificate")


class ConnectionClosedError(SyncError):
    """The connection closed; a sync session retries by itself."""

    code = "connection_closed"
