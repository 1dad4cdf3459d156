"""The connection state machine, as tables.

Rule 1: everything that decides which message may be sent when lives in this module, as much
as possible in the :data:`TRANSITIONS` table; :class:`ConnectionState` only applies it.

Rule 2: this module does not know which role *we* play. It tracks both parties, the
``INITIATOR`` (sends ``Hello`` first) and the ``ACCEPTOR`` (answers ``Welcome``), and applies
the same rules to a message whether we send it or receive it. The :class:`~.link.Link` calls
it with the sender's role; a violation by us is a bug in our code (the Link raises
:class:`~tidesync.errors.UsageError`), a violation by the peer is a protocol error (the Link
answers ``Error(unexpected_message)``).

Theory of operation
===================

There are two machines, one per role, with the same states. Each machine *sees* every message
its own party sends, and two messages of the other party: the acceptor's machine sees the
initiator's ``Hello``, the initiator's machine sees the acceptor's ``Welcome`` (written
``(Hello, INITIATOR)`` in the acceptor's table). A message a machine sees must have a
transition from that machine's current state, or it is illegal.

Event-triggered transitions (the table)::

    INITIATOR: IDLE --Hello--> HELLO_SENT --(Welcome from ACCEPTOR)--> ACTIVE
    ACCEPTOR:  IDLE --(Hello from INITIATOR)--> HELLO_RECEIVED --Welcome--> ACTIVE
    both:      ACTIVE --Changes, Descriptors, Ack, Snapshot, CompensatingWrite, Subscribe,
                        SubscriptionState, ViewUpdate, ViewAck, Ping, Pong--> ACTIVE
               ACTIVE --Close--> CLOSED        (the party will send nothing more)
               any live state --Error--> ERROR

State-triggered transitions (code, :meth:`ConnectionState._settle`): when either machine is in
``ERROR`` the other one goes to ``ERROR`` too (a failed connection has failed for both).

Connection loss (:meth:`ConnectionState.process_connection_lost`): if both machines are
``CLOSED`` the close was clean and nothing changes; otherwise both go to ``ERROR``.

``CLOSED`` and ``ERROR`` are terminal. :func:`diagram` renders a role's table as Mermaid
text; the diagrams in ``docs/protocol.md`` are its output (a test keeps them equal).
"""

from __future__ import annotations

from enum import Enum
from typing import TypeAlias

from ..errors import ProtocolError
from .codes import ErrorCode
from .messages import (
    Ack,
    Changes,
    Close,
    CompensatingWrite,
    Descriptors,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    Snapshot,
    Subscribe,
    SubscriptionState,
    ViewAck,
    ViewUpdate,
    Welcome,
)

__all__ = [
    "Role",
    "State",
    "INITIATOR",
    "ACCEPTOR",
    "IDLE",
    "HELLO_SENT",
    "HELLO_RECEIVED",
    "ACTIVE",
    "CLOSED",
    "ERROR",
    "TRANSITIONS",
    "SESSION_MESSAGES",
    "ConnectionState",
    "diagram",
]


class Role(Enum):
    """Which party: the one that opened the connection and speaks first, or the other."""

    INITIATOR = "initiator"
    ACCEPTOR = "acceptor"

    # Members are singletons: identity hashing is correct, and cheaper than Enum's
    # (every message sent or received looks roles and states up in the tables).
    __hash__ = object.__hash__

    @property
    def peer(self) -> Role:
        """The other role."""
        return _PEER[self]


class State(Enum):
    """The state of one party's machine."""

    IDLE = "IDLE"
    HELLO_SENT = "HELLO_SENT"
    HELLO_RECEIVED = "HELLO_RECEIVED"
    ACTIVE = "ACTIVE"
    CLOSED = "CLOSED"
    ERROR = "ERROR"

    __hash__ = object.__hash__  # see Role


INITIATOR, ACCEPTOR = Role.INITIATOR, Role.ACCEPTOR
_PEER = {INITIATOR: ACCEPTOR, ACCEPTOR: INITIATOR}
IDLE, HELLO_SENT, HELLO_RECEIVED = State.IDLE, State.HELLO_SENT, State.HELLO_RECEIVED
ACTIVE, CLOSED, ERROR = State.ACTIVE, State.CLOSED, State.ERROR

MessageType: TypeAlias = type[Message]
#: A key of a machine's table: a message type its party sends, or (type, other role).
Trigger: TypeAlias = "MessageType | tuple[MessageType, Role]"

#: Messages either party may send, any number of times, once the handshake is done.
SESSION_MESSAGES: tuple[MessageType, ...] = (
    Changes, Descriptors, Ack, Snapshot, CompensatingWrite, Subscribe, SubscriptionState,
    ViewUpdate, ViewAck, Ping, Pong,
)

_ACTIVE: dict[Trigger, State] = {**{m: ACTIVE for m in SESSION_MESSAGES}, Close: CLOSED, Error: ERROR}

#: role -> state -> trigger -> new state.
TRANSITIONS: dict[Role, dict[State, dict[Trigger, State]]] = {
    INITIATOR: {
        IDLE: {Hello: HELLO_SENT, Error: ERROR},
        HELLO_SENT: {(Welcome, ACCEPTOR): ACTIVE, Error: ERROR},
        ACTIVE: _ACTIVE,
        CLOSED: {},
        ERROR: {},
    },
    ACCEPTOR: {
        IDLE: {(Hello, INITIATOR): HELLO_RECEIVED, Error: ERROR},
        HELLO_RECEIVED: {Welcome: ACTIVE, Error: ERROR},
        ACTIVE: _ACTIVE,
        CLOSED: {},
        ERROR: {},
    },
}

#: role -> every (type, other role) trigger that appears in that role's table.
_CROSS_TRIGGERS: dict[Role, frozenset[Trigger]] = {
    role: frozenset(t for table in TRANSITIONS[role].values() for t in table if isinstance(t, tuple))
    for role in TRANSITIONS
}


class ConnectionState:
    """Both parties' machines for one connection.

    Attributes:
        states: the current state of each role's machine.
    """

    def __init__(self) -> None:
        self.states: dict[Role, State] = {INITIATOR: IDLE, ACCEPTOR: IDLE}

    def can_send(self, role: Role, message_type: MessageType) -> bool:
        """Whether ``role`` may send a message of this type now."""
        states = self.states
        if message_type not in TRANSITIONS[role][states[role]]:
            return False
        other = _PEER[role]
        cross = (message_type, role)
        return cross not in _CROSS_TRIGGERS[other] or cross in TRANSITIONS[other][states[other]]

    def process_message(self, role: Role, message_type: MessageType) -> None:
        """Apply a message sent by ``role``.

        Raises:
            ProtocolError: (code ``unexpected_message``) the message is not allowed now; no
                state changed.
        """
        if not self.can_send(role, message_type):
            raise ProtocolError(
                f"{role.value} may not send {message_type.TAG} in state "
                f"{self.states[role].value} (peer {self.states[role.peer].value})",
                code=ErrorCode.UNEXPECTED_MESSAGE)
        self.states[role] = TRANSITIONS[role][self.states[role]][message_type]
        other = role.peer
        cross = (message_type, role)
        if cross in TRANSITIONS[other][self.states[other]]:
            self.states[other] = TRANSITIONS[other][self.states[other]][cross]
        self._settle()

    def process_error(self, role: Role) -> None:
        """``role`` failed the connection (without a legal ``Error`` message, e.g. a peer sent
        garbage): its machine, hence both, go to ERROR."""
        self.states[role] = ERROR
        self._settle()

    def process_connection_lost(self) -> None:
        """The transport is gone: a clean close if both sides had sent ``Close``, else ERROR."""
        if not all(s is CLOSED for s in self.states.values()):
            for role in self.states:
                self.states[role] = ERROR

    @property
    def failed(self) -> bool:
        """True once the connection has failed."""
        states = self.states
        return states[INITIATOR] is ERROR or states[ACCEPTOR] is ERROR

    @property
    def finished(self) -> bool:
        """True once nothing more can be sent either way (both CLOSED, or ERROR)."""
        a, b = self.states[INITIATOR], self.states[ACCEPTOR]
        return a is ERROR or b is ERROR or (a is CLOSED and b is CLOSED)

    @staticmethod
    def _is_cross_trigger(role: Role, trigger: Trigger) -> bool:
        return trigger in _CROSS_TRIGGERS[role]

    def _settle(self) -> None:
        if self.failed:
            for role in self.states:
                self.states[role] = ERROR


def _trigger_label(trigger: Trigger) -> str:
    if isinstance(trigger, tuple):
        return f"{trigger[0].__name__} from {trigger[1].value}"
    return f"sends {trigger.__name__}"


def diagram(role: Role) -> str:
    """One role's machine as Mermaid ``stateDiagram-v2`` text (``docs/protocol.md`` embeds
    the output for both roles). Session messages that loop on ACTIVE share one edge."""
    lines = ["stateDiagram-v2", f"    [*] --> {IDLE.value}"]
    for state, table in TRANSITIONS[role].items():
        loops = [t for t, new in table.items() if new is state and not isinstance(t, tuple)]
        for trigger, new in table.items():
            if new is not state:
                lines.append(f"    {state.value} --> {new.value}: {_trigger_label(trigger)}")
        if loops:
            names = ", ".join(t.__name__ for t in loops)
            lines.append(f"    {state.value} --> {state.value}: sends {names}")
    lines += [f"    {CLOSED.value} --> [*]", f"    {ERROR.value} --> [*]"]
    return "\n".join(lines) + "\n"
