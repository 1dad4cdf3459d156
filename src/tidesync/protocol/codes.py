"""Error codes carried by the ``Error`` message, and what each asks the other side to do.

Every failure the protocol reports has one :class:`ErrorCode` (a stable string on the wire)
and one :class:`ErrorAction` (``retry``, ``reauthenticate`` or ``stop``). The code says what
went wrong; the action says what the side that receives it should do next. A peer may send
a code this version does not know (a newer peer): receivers then go by the action alone.

:func:`exception_for` turns a received ``(code, message, action)`` into the most specific
:class:`~tidesync.errors.SyncError`; :func:`code_of` goes the other way for a local error that
must be reported to the peer.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import (
    AuthError,
    ConnectionClosedError,
    PermissionDeniedError,
    ProtocolError,
    SyncError,
    TidesyncError,
    VersionMismatchError,
)

__all__ = ["ErrorCode", "ErrorAction", "DEFAULT_ACTIONS", "exception_for", "code_of", "action_of"]


class ErrorAction(StrEnum):
    """What the side that receives an ``Error`` should do next."""

    #: Reconnect later (with backoff, or after ``retry_after_ms``); nothing is wrong with the data.
    RETRY = "retry"
    #: Obtain a fresh token (log in again), then reconnect.
    REAUTHENTICATE = "reauthenticate"
    #: Do not reconnect automatically; a person or an upgrade must fix something first.
    STOP = "stop"


class ErrorCode(StrEnum):
    """Why a connection failed. The values are the strings sent on the wire."""

    # -- framing and codec (raised by the codec, reported by the Link) --
    #: The payload is not msgpack, or not a ``[version, type, flags, body]`` envelope, or a
    #: field has the wrong type or value.
    MALFORMED_MESSAGE = "malformed_message"
    #: The envelope names a message type this version does not know.
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    #: The payload, or its decompressed body, is larger than the receiver's limit.
    MESSAGE_TOO_LARGE = "message_too_large"
    #: The compressed body is not valid zlib data.
    BAD_COMPRESSION = "bad_compression"
    #: The envelope carries a protocol version the receiver does not speak.
    VERSION_MISMATCH = "version_mismatch"
    # -- session (raised by the Link's state machine or the Replicator) --
    #: A message that is not allowed in the current state (e.g. ``Changes`` before ``Welcome``).
    UNEXPECTED_MESSAGE = "unexpected_message"
    #: A ``Changes``/``Snapshot``/``Ack`` that does not continue where the previous one ended.
    SEQUENCE_GAP = "sequence_gap"
    #: The peer has the same replica id as this side (a replica connected to itself, or a
    #: copied database file).
    SAME_REPLICA = "same_replica"
    #: No message arrived within the heartbeat deadline.
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    #: The handshake did not complete within its deadline.
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    # -- authority (decided by a driver, typically the server's) --
    #: The token is missing, malformed, unknown or revoked.
    AUTH_FAILED = "auth_failed"
    #: The token has expired; refresh it.
    TOKEN_EXPIRED = "token_expired"
    #: The user may not sync this scope at all.
    PERMISSION_DENIED = "permission_denied"
    #: The scope in ``Hello``/``Welcome`` is not valid for this peer (unknown partition field...).
    BAD_SCOPE = "bad_scope"
    #: The peer could not store what it received (disk full, storage failure).
    STORAGE_FAILURE = "storage_failure"
    #: The peer is overloaded; reconnect after ``retry_after_ms``.
    BUSY = "busy"
    #: The peer is shutting down or moving the session elsewhere.
    GOING_AWAY = "going_away"
    #: A bug on the peer's side.
    INTERNAL = "internal"


#: The action each code implies when a sender does not choose otherwise.
DEFAULT_ACTIONS: dict[ErrorCode, ErrorAction] = {
    ErrorCode.MALFORMED_MESSAGE: ErrorAction.STOP,
    ErrorCode.UNKNOWN_MESSAGE_TYPE: ErrorAction.STOP,
    ErrorCode.MESSAGE_TOO_LARGE: ErrorAction.STOP,
    ErrorCode.BAD_COMPRESSION: ErrorAction.STOP,
    ErrorCode.VERSION_MISMATCH: ErrorAction.STOP,
    ErrorCode.UNEXPECTED_MESSAGE: ErrorAction.STOP,
    ErrorCode.SEQUENCE_GAP: ErrorAction.RETRY,
    ErrorCode.SAME_REPLICA: ErrorAction.STOP,
    ErrorCode.HEARTBEAT_TIMEOUT: ErrorAction.RETRY,
    ErrorCode.HANDSHAKE_TIMEOUT: ErrorAction.RETRY,
    ErrorCode.AUTH_FAILED: ErrorAction.REAUTHENTICATE,
    ErrorCode.TOKEN_EXPIRED: ErrorAction.REAUTHENTICATE,
    ErrorCode.PERMISSION_DENIED: ErrorAction.STOP,
    ErrorCode.BAD_SCOPE: ErrorAction.STOP,
    ErrorCode.STORAGE_FAILURE: ErrorAction.RETRY,
    ErrorCode.BUSY: ErrorAction.RETRY,
    ErrorCode.GOING_AWAY: ErrorAction.RETRY,
    ErrorCode.INTERNAL: ErrorAction.RETRY,
}

_PROTOCOL_CODES = frozenset({
    ErrorCode.MALFORMED_MESSAGE, ErrorCode.UNKNOWN_MESSAGE_TYPE, ErrorCode.MESSAGE_TOO_LARGE,
    ErrorCode.BAD_COMPRESSION, ErrorCode.UNEXPECTED_MESSAGE, ErrorCode.SEQUENCE_GAP,
    ErrorCode.SAME_REPLICA, ErrorCode.BAD_SCOPE,
})
_CONNECTION_CODES = frozenset({
    ErrorCode.HEARTBEAT_TIMEOUT, ErrorCode.HANDSHAKE_TIMEOUT, ErrorCode.BUSY,
    ErrorCode.GOING_AWAY, ErrorCode.INTERNAL, ErrorCode.STORAGE_FAILURE,
})


def action_of(code: str) -> ErrorAction:
    """The default action for a code; ``retry`` for a code this version does not know."""
    try:
        return DEFAULT_ACTIONS[ErrorCode(code)]
    except ValueError:
        return ErrorAction.RETRY


def exception_for(code: str, message: str, action: str) -> SyncError:
    """The :class:`~tidesync.errors.SyncError` that stands for an ``Error`` received from a peer.

    The exception's ``code`` is the wire code and its ``action`` the action the peer asked for.
    """
    cls: type[SyncError]
    if code == ErrorCode.VERSION_MISMATCH:
        cls = VersionMismatchError
    elif code in (ErrorCode.AUTH_FAILED, ErrorCode.TOKEN_EXPIRED):
        cls = AuthError
    elif code == ErrorCode.PERMISSION_DENIED:
        cls = PermissionDeniedError
    elif code in _PROTOCOL_CODES:
        cls = ProtocolError
    elif code in _CONNECTION_CODES:
        cls = ConnectionClosedError
    else:
        cls = SyncError
    return cls(f"the peer reported {code}: {message}", code=code, action=action)


def code_of(error: BaseException) -> ErrorCode:
    """The wire code to report a local error with.

    A :class:`~tidesync.errors.TidesyncError` whose ``code`` is a known wire code keeps it;
    anything else is reported as :attr:`ErrorCode.INTERNAL` (details stay local).
    """
    if isinstance(error, TidesyncError):
        try:
            return ErrorCode(error.code)
        except ValueError:
            pass
        if isinstance(error, AuthError):
            return ErrorCode.AUTH_FAILED
        if isinstance(error, PermissionDeniedError):
            return ErrorCode.PERMISSION_DENIED
        if isinstance(error, VersionMismatchError):
            return ErrorCode.VERSION_MISMATCH
        if isinstance(error, ProtocolError):
            return ErrorCode.MALFORMED_MESSAGE
    return ErrorCode.INTERNAL
