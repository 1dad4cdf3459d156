"""The sans-I/O connection: payloads in, events and payloads out.

A :class:`Link` sits above WebSocket framing: the transport delivers whole binary messages
(*payloads*) and the Link turns them into validated messages, enforces the state machine of
:mod:`tidesync.protocol.states`, answers heartbeats and reports what happened as events. It
performs no I/O and reads no clock; a *driver* owns the socket and the timers::

    link = Link(Role.INITIATOR)
    link.send(hello)
    while True:
        for payload in link.data_to_send():
            transport.send(payload)              # driver I/O
        if link.finished:
            break                                # close the transport
        payload = transport.receive(timeout=...) # driver I/O
        if payload is None:
            link.connection_lost()
        elif payload is TIMEOUT:
            link.tick(now_ms())                  # heartbeats and deadlines
        else:
            link.receive(payload)
        for event in link.events_received():
            ...                                  # hand messages to the Replicator

Blame is explicit. Anything wrong with the peer's input (malformed, oversized, wrong version,
not allowed in the current state) never raises: the Link queues an ``Error`` for the peer,
moves to ERROR, stores the exception on :attr:`Link.error` and reports :class:`~.events.Failed`.
Local misuse (sending a message the state does not allow) raises
:class:`~tidesync.errors.UsageError`; sending once the connection has ended raises
:class:`~tidesync.errors.ConnectionClosedError`.
"""

from __future__ import annotations

from ..errors import ConnectionClosedError, ProtocolError, SyncError, UsageError
from .codec import (
    _ACK_MAX,
    DEFAULT_COMPRESS_THRESHOLD,
    DEFAULT_MAX_ASSEMBLED_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    _ack_of,
    decode,
    encode,
    is_part,
    part_of,
    split,
)
from .codes import ErrorAction, ErrorCode, action_of, code_of, exception_for
from .events import Closed, Connected, Event, Failed, MessageReceived
from .messages import FEATURE_PARTS, Ack, Close, Error, Hello, Message, Ping, Pong, Welcome
from .states import ACTIVE, CLOSED, SESSION_MESSAGES, TRANSITIONS, ConnectionState, Role, State

__all__ = ["Link", "DEFAULT_HEARTBEAT_INTERVAL_MS", "DEFAULT_HEARTBEAT_TIMEOUT_MS",
           "DEFAULT_HANDSHAKE_TIMEOUT_MS"]

#: Message types that either party may send from ACTIVE, staying there, whatever the other's
#: state (no cross trigger): sending one from ACTIVE needs no state machine step.
_SESSION_TYPES: frozenset[type[Message]] = frozenset(
    m for m in SESSION_MESSAGES
    if all(TRANSITIONS[r][ACTIVE].get(m) is ACTIVE for r in TRANSITIONS)
    and not any(isinstance(t, tuple) and t[0] is m for r in TRANSITIONS for table in TRANSITIONS[r].values()
                for t in table))

#: Send a Ping after this long without hearing from the peer.
DEFAULT_HEARTBEAT_INTERVAL_MS = 20_000
#: Fail the connection after this long without hearing from the peer.
DEFAULT_HEARTBEAT_TIMEOUT_MS = 60_000
#: Fail the connection if the handshake has not completed after this long.
DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000


class Link:
    """One connection between two replicas, seen from one side.

    Args:
        role: ``Role.INITIATOR`` (opened the connection, sends ``Hello``) or
            ``Role.ACCEPTOR``.
        max_message_size: the largest payload sent or accepted, and the largest decompressed
            body accepted.
        max_assembled_size: with a peer that announced the ``parts`` feature (and when this
            side announced it too), a message larger than ``max_message_size`` is sent as
            consecutive ``part`` payloads and joined again on receipt; this is the largest
            such message, and its largest decompressed body, sent or accepted.
        compress_threshold: compress bodies from this many encoded bytes; None never compresses.
        heartbeat_interval_ms: send a ``Ping`` after this long without hearing from the peer;
            None disables heartbeats (and the heartbeat timeout).
        heartbeat_timeout_ms: fail with ``heartbeat_timeout`` after this long without hearing
            from the peer (any message counts, not only ``Pong``).
        handshake_timeout_ms: fail with ``handshake_timeout`` if the handshake has not
            completed this long after the first :meth:`tick`; None: no limit.

    Attributes:
        role: this side's role.
        error: why the connection failed, once it has (None otherwise).
        hello: the ``Hello`` of this connection, once sent or received.
        welcome: the ``Welcome`` of this connection, once sent or received.
        rtt_ms: the round-trip time of the last answered ``Ping``, or None (an upper bound:
            the ``Pong`` is timed at the first tick after it arrived).
    """

    def __init__(
        self,
        role: Role,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_assembled_size: int = DEFAULT_MAX_ASSEMBLED_SIZE,
        compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
        heartbeat_interval_ms: int | None = DEFAULT_HEARTBEAT_INTERVAL_MS,
        heartbeat_timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS,
        handshake_timeout_ms: int | None = DEFAULT_HANDSHAKE_TIMEOUT_MS,
    ) -> None:
        if not isinstance(role, Role):
            raise UsageError(f"role must be a Role, not {role!r}")
        if heartbeat_interval_ms is not None and not 0 < heartbeat_interval_ms < heartbeat_timeout_ms:
            raise UsageError("need 0 < heartbeat_interval_ms < heartbeat_timeout_ms")
        self.role = role
        self.max_message_size = max_message_size
        self.max_assembled_size = max(max_assembled_size, max_message_size)
        self.compress_threshold = compress_threshold
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.handshake_timeout_ms = handshake_timeout_ms
        self.error: SyncError | None = None
        self.hello: Hello | None = None
        self.welcome: Welcome | None = None
        self.rtt_ms: int | None = None
        self._conn = ConnectionState()
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._transport_lost = False
        # Heartbeat bookkeeping; times come only from tick().
        self._now: int | None = None
        self._started_at: int | None = None
        self._last_heard: int | None = None
        self._heard = False
        self._ping_nonce = 0
        self._ping_sent_at: int | None = None
        self._pong_received = False
        # The chunks of a payload arriving in parts, and their total size.
        self._parts: list[bytes] | None = None
        self._parts_size = 0

    # ------------------------------------------------------------------ state

    @property
    def our_state(self) -> State:
        """This side's machine state."""
        return self._conn.states[self.role]

    @property
    def their_state(self) -> State:
        """The peer's machine state, as far as this side knows."""
        return self._conn.states[self.role.peer]

    @property
    def state(self) -> State:
        """Same as :attr:`our_state`."""
        return self.our_state

    @property
    def finished(self) -> bool:
        """True when nothing more will be sent or received: both sides closed, or the
        connection failed. Flush :meth:`data_to_send` (the last payload may be an ``Error``
        or ``Close`` for the peer), then close the transport."""
        return self._conn.finished

    @property
    def max_send_size(self) -> int:
        """The largest payload :meth:`send` takes now: ``max_assembled_size`` once the peer
        announced the ``parts`` feature, else ``max_message_size``. Encode with it when
        passing ``encoded`` to :meth:`send`."""
        return self.max_assembled_size if self._peer_takes_parts() else self.max_message_size

    def _peer_takes_parts(self) -> bool:
        theirs = self.welcome if self.role is Role.INITIATOR else self.hello
        return theirs is not None and FEATURE_PARTS in theirs.features

    def _takes_parts(self) -> bool:
        ours = self.hello if self.role is Role.INITIATOR else self.welcome
        return ours is not None and FEATURE_PARTS in ours.features

    def can_send(self, message: Message | type[Message]) -> bool:
        """Whether :meth:`send` would accept a message of this type now."""
        cls = message if isinstance(message, type) else type(message)
        return self._conn.can_send(self.role, cls)

    # ------------------------------------------------------------------ outputs

    def events_received(self) -> list[Event]:
        """Return (and forget) the events produced since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[bytes]:
        """Return (and forget) the payloads to send, in order, each as one binary message."""
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ inputs

    def send(self, message: Message, *, encoded: bytes | None = None) -> None:
        """Queue a message for the peer.

        ``encoded``: the message's payload when the caller already has it, exactly as
        :func:`~.codec.encode` makes it with this Link's ``compress_threshold`` and
        ``max_message_size`` (a server sending one message to many connections encodes it once).

        Raises:
            ConnectionClosedError: the connection has ended (this side sent ``Close``, or it
                failed); nothing more can be sent.
            UsageError: the message is not allowed in the current state (a bug in the
                caller), or is larger than :attr:`max_send_size` (code ``message_too_large``).
        """
        conn = self._conn
        # A session message sent from ACTIVE (the usual case) is allowed and leaves both
        # machines as they are: the state machine is consulted only for anything else.
        session = conn.states[self.role] is ACTIVE and type(message) in _SESSION_TYPES
        if conn.finished or (not session and self.our_state is CLOSED):
            raise ConnectionClosedError(
                f"cannot send {message.TAG}: the connection has {'failed' if conn.failed else 'closed'}")
        if not session and not conn.can_send(self.role, type(message)):
            raise UsageError(
                f"{self.role.value} may not send {message.TAG} in state {self.our_state.value}",
                code="invalid_state")
        limit = self.max_send_size
        payload = encoded if encoded is not None else encode(
            message, compress_threshold=self.compress_threshold, max_size=limit)
        if len(payload) > limit:
            raise UsageError(f"a {message.TAG} message of {len(payload)} bytes exceeds the "
                             f"{limit}-byte limit", code=ErrorCode.MESSAGE_TOO_LARGE)
        if not session:
            conn.process_message(self.role, type(message))
        if len(payload) > self.max_message_size:
            self._out.extend(split(payload, self.max_message_size))
        else:
            self._out.append(payload)
        if not session:   # (what follows a session message is nothing)
            self._after_message(message, remote=False)

    def fail(self, error: BaseException) -> None:
        """Fail the connection because of ``error`` found on this side.

        Queues an ``Error`` for the peer (its code from ``error.code`` when that is an
        :class:`~tidesync.protocol.codes.ErrorCode` value, else ``internal``), moves to ERROR
        and reports :class:`~.events.Failed`. Does nothing if the connection already ended.
        """
        if self._conn.finished:
            return
        code = code_of(error)
        if isinstance(error, SyncError):
            sync_error, text = error, error.message
        else:
            # Details of a local bug stay local; the peer only learns that it happened.
            sync_error = SyncError(f"internal error: {error!r}", code=ErrorCode.INTERNAL,
                                   action=action_of(ErrorCode.INTERNAL))
            text = "internal error"
        try:
            action = ErrorAction(sync_error.action)
        except ValueError:
            action = action_of(code)
        if not self._transport_lost and self._conn.can_send(self.role, Error):
            payload = encode(Error(code.value, text[:1000], action),
                             compress_threshold=None, max_size=self.max_message_size)
            self._out.append(payload)
        self._conn.process_error(self.role)
        self.error = sync_error
        self._events.append(Failed(sync_error, remote=False))

    def decode_ahead(self, payload: bytes) -> Message | Exception | None:
        """Decode ``payload`` now, without feeding it: hand the result to :meth:`receive`
        (``decoded=``) when its turn comes. Decoding is pure, so the outcome is the one
        :meth:`receive` would reach itself (an error is returned, and raised there). A driver
        busy with an earlier message (a server integrating an upload batch) decodes the next
        one meanwhile. None for a part of a larger message (``parts``): :meth:`receive`
        joins the parts itself."""
        if is_part(payload):
            return None
        try:
            return decode(payload, max_size=self.max_message_size)
        except Exception as exc:  # noqa: BLE001 - handed to receive(), which reports it
            return exc

    def receive(self, payload: bytes, *, decoded: Message | Exception | None = None) -> None:
        """Feed one payload received from the peer. Never raises because of its content.

        ``decoded``: :meth:`decode_ahead` of this payload, when made earlier.

        After the connection has ended, payloads are ignored.
        """
        if self._conn.finished:
            return
        self._heard = True
        max_size = self.max_message_size
        try:
            part = part_of(payload)
            if part is not None or self._parts is not None:
                assembled = self._assemble(part)
                if assembled is None:
                    return
                payload, max_size, decoded = assembled, self.max_assembled_size, None
            if decoded is None:
                message = decode(payload, max_size=max_size)
            elif isinstance(decoded, Exception):
                raise decoded
            else:
                message = decoded
        except ProtocolError as exc:
            self.fail(exc)
            return
        except Exception as exc:  # a bug in a validator must not reach the driver
            self.fail(ProtocolError(f"cannot decode payload: {exc!r}",
                                    code=ErrorCode.MALFORMED_MESSAGE))
            return
        peer = self.role.peer
        try:
            self._conn.process_message(peer, type(message))
        except ProtocolError as exc:
            self.fail(exc)
            return
        if isinstance(message, Ping):
            if self._conn.can_send(self.role, Pong):
                self.send(Pong(message.nonce))
            return
        if isinstance(message, Pong):
            if message.nonce == self._ping_nonce and self._ping_sent_at is not None:
                self._pong_received = True  # timed at the next tick, like everything heard
            return
        self._events.append(MessageReceived(message))
        self._after_message(message, remote=True)

    def receive_ack(self, payload: bytes) -> Ack | None:
        """:meth:`receive` for a payload that is a plain ``Ack`` of a ``changes`` batch
        (``[1, "ack", 0, {"seq": n}]``, what every device sends for each batch), taken where
        nothing else could happen: the connection is open, the peer's machine is ACTIVE (where an
        ``Ack`` leaves both machines as they are), no part of a larger message is pending and no
        event waits. Then the Link notes the peer heard, exactly as :meth:`receive` would, and
        returns the ``Ack`` instead of reporting it as :class:`~.events.MessageReceived` (the
        caller hands it on as it would that event's message). None, with nothing done,
        otherwise: feed the payload to :meth:`receive`, which decodes, checks and reports it,
        or names what is wrong with it."""
        conn = self._conn
        if (self._events or self._parts is not None or conn.states[self.role.peer] is not ACTIVE
                or conn.finished or len(payload) > _ACK_MAX or len(payload) > self.max_message_size
                or type(payload) is not bytes):
            return None
        ack = _ack_of(payload)
        if ack is not None:
            self._heard = True
        return ack

    def connection_lost(self) -> None:
        """The transport closed. Unless both sides had sent ``Close``, the connection failed
        (``connection_lost``, action retry). Unsent payloads are dropped."""
        self._out.clear()
        if self._transport_lost:
            return
        self._transport_lost = True
        if self._conn.finished:
            return
        self._conn.process_connection_lost()
        self.error = ConnectionClosedError("the connection was lost before it was closed",
                                           code="connection_lost")
        self._events.append(Failed(self.error, remote=False))

    def tick(self, now_ms: int) -> None:
        """Advance the Link's notion of time: send a ``Ping`` when the peer has been quiet for
        ``heartbeat_interval_ms``, fail the connection when it has been quiet for
        ``heartbeat_timeout_ms`` or the handshake took longer than ``handshake_timeout_ms``.

        Call it periodically, at the latest at :meth:`next_deadline`. Time is only known to
        the Link through these calls, so a message received between two ticks counts as heard
        at the second.
        """
        self._now = now_ms
        if self._started_at is None:
            self._started_at = now_ms
        if self._last_heard is None or self._heard:
            self._last_heard, self._heard = now_ms, False
        if self._pong_received and self._ping_sent_at is not None:
            self.rtt_ms = now_ms - self._ping_sent_at
            self._ping_sent_at, self._pong_received = None, False
        if self._conn.finished or self._transport_lost:
            return
        handshaking = not (self.our_state is ACTIVE or self.our_state is CLOSED)
        if handshaking:
            if (self.handshake_timeout_ms is not None
                    and now_ms - self._started_at >= self.handshake_timeout_ms):
                self.fail(ConnectionClosedError(
                    f"no handshake within {self.handshake_timeout_ms} ms",
                    code=ErrorCode.HANDSHAKE_TIMEOUT, action="retry"))
            return
        if self.heartbeat_interval_ms is None:
            return
        quiet = now_ms - self._last_heard
        if quiet >= self.heartbeat_timeout_ms:
            self.fail(ConnectionClosedError(
                f"nothing heard from the peer for {quiet} ms",
                code=ErrorCode.HEARTBEAT_TIMEOUT, action="retry"))
        elif (quiet >= self.heartbeat_interval_ms and self._ping_sent_at is None
              and self._conn.can_send(self.role, Ping)):
            self._ping_nonce += 1
            self._ping_sent_at = now_ms
            self.send(Ping(self._ping_nonce))

    def tick_idle(self, now_ms: int) -> bool:
        """:meth:`tick` when all it would do is note the time: the handshake is done (this side
        ACTIVE), no ``Pong`` waits to be timed, and the peer, heard at ``now_ms`` at the latest,
        is not yet quiet long enough for a ``Ping`` or a timeout. True then (done, as
        :meth:`tick` does it); False, with nothing done, otherwise (call :meth:`tick`). A
        driver ticking many idle connections saves :meth:`next_deadline` and the state checks
        for each."""
        interval = self.heartbeat_interval_ms
        last = self._last_heard
        if (interval is None or last is None or self._started_at is None or self._pong_received
                or self._conn.states[self.role] is not ACTIVE):
            return False
        heard = self._heard
        if heard:
            last = now_ms
        if now_ms - last >= (interval if self._ping_sent_at is None else self.heartbeat_timeout_ms):
            return False
        self._now = now_ms
        if heard:
            self._last_heard, self._heard = now_ms, False
        return True

    def next_deadline(self) -> int | None:
        """When :meth:`tick` should be called next (ms, on the driver's clock), or None."""
        if self._conn.finished or self._now is None or self._last_heard is None:
            return None
        handshaking = not (self.our_state is ACTIVE or self.our_state is CLOSED)
        if handshaking:
            if self.handshake_timeout_ms is None or self._started_at is None:
                return None
            return self._started_at + self.handshake_timeout_ms
        if self.heartbeat_interval_ms is None:
            return None
        if self._ping_sent_at is None:
            return self._last_heard + self.heartbeat_interval_ms
        return self._last_heard + self.heartbeat_timeout_ms

    # ------------------------------------------------------------------ internals

    def _assemble(self, part: tuple[bytes, bool] | None) -> bytes | None:
        """Take one received part: the joined payload after the last one, else None."""
        if part is None:
            raise ProtocolError("a message sent in parts was interrupted by another message",
                                code=ErrorCode.MALFORMED_MESSAGE)
        if not self._takes_parts():
            raise ProtocolError("a part payload, but this side did not announce the parts feature",
                                code=ErrorCode.UNKNOWN_MESSAGE_TYPE)
        chunk, more = part
        parts = self._parts if self._parts is not None else []
        self._parts_size += len(chunk)
        if self._parts_size > self.max_assembled_size:
            self._parts, self._parts_size = None, 0
            raise ProtocolError(f"a message sent in parts exceeds the {self.max_assembled_size}-byte limit",
                                code=ErrorCode.MESSAGE_TOO_LARGE)
        parts.append(chunk)
        if more:
            self._parts = parts
            return None
        self._parts, self._parts_size = None, 0
        return b"".join(parts)

    def _after_message(self, message: Message, *, remote: bool) -> None:
        if isinstance(message, Hello):
            self.hello = message
        elif isinstance(message, Welcome):
            self.welcome = message
            assert self.hello is not None  # the state machine guarantees it
            self._events.append(Connected(self.hello, message))
        elif isinstance(message, Error):
            assert message.action is not None
            error = exception_for(message.code, message.message, message.action.value)
            self.error = error
            self._events.append(Failed(error, remote=remote))
        elif isinstance(message, Close):
            if remote and self._conn.can_send(self.role, Close):
                self.send(Close(message.reason))
            elif self._conn.finished:
                self._events.append(Closed(message.reason))
