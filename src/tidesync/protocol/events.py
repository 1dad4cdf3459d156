"""What a :class:`~tidesync.protocol.link.Link` reports to its driver.

Events are small frozen dataclasses, returned in order by ``Link.events_received()``. A
driver typically hands every :class:`MessageReceived` to its
:class:`~tidesync.protocol.replicator.Replicator` (after any authority checks of its own, e.g.
the server checks ``Hello.token`` before passing the ``Hello`` on), and treats
:class:`Failed` and :class:`Closed` as the end of the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from ..errors import SyncError
from .messages import Hello, Message, Welcome

__all__ = ["MessageReceived", "Connected", "Failed", "Closed", "Event"]


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A valid message arrived from the peer, in a state that allows it.

    ``Ping`` and ``Pong`` are answered and consumed by the Link and are not reported.
    """

    message: Message


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed: both parties are ACTIVE.

    Reported right after the ``MessageReceived`` of the ``Welcome`` (initiator), or when the
    acceptor sends its ``Welcome``.
    """

    hello: Hello
    welcome: Welcome


@dataclass(frozen=True, slots=True)
class Failed:
    """The connection failed; the Link is in ERROR and will send nothing after its ``Error``.

    Attributes:
        error: what went wrong; also stored on ``Link.error``. Its ``code`` is an
            :class:`~tidesync.protocol.codes.ErrorCode` value and its ``action`` says whether
            to retry, reauthenticate or stop.
        remote: True when the peer reported the failure (an ``Error`` message received),
            False when this side detected it (bad input from the peer, a heartbeat timeout, a
            lost connection, or a local ``Link.fail()``).
    """

    error: SyncError
    remote: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """Both parties sent ``Close``: the connection ended cleanly; the driver may close the
    transport."""

    reason: str


Event: TypeAlias = MessageReceived | Connected | Failed | Closed
