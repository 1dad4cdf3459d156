"""The Link: handshake, blame (peer input never raises; local misuse does), heartbeats, close."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from tidesync.errors import (
    AuthError,
    ConnectionClosedError,
    ProtocolError,
    SyncError,
    UsageError,
    VersionMismatchError,
)
from tidesync.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Changes,
    Close,
    Closed,
    Connected,
    Error,
    ErrorAction,
    Failed,
    Hello,
    Link,
    MessageReceived,
    Ping,
    Pong,
    Role,
    State,
    Welcome,
    decode,
    encode,
)

A = "000000000000000a"
B = "000000000000000b"


def transfer(src: Link, dst: Link) -> list[Any]:
    """Deliver everything src wants to send to dst; return dst's new events."""
    for payload in src.data_to_send():
        dst.receive(payload)
    return dst.events_received()


def connected(**options: Any) -> tuple[Link, Link]:
    i, a = Link(Role.INITIATOR, **options), Link(Role.ACCEPTOR, **options)
    i.send(Hello(A))
    assert transfer(i, a) == [MessageReceived(Hello(A))]
    a.send(Welcome(B))
    assert a.events_received() == [Connected(Hello(A), Welcome(B))]
    assert transfer(a, i) == [MessageReceived(Welcome(B)), Connected(Hello(A), Welcome(B))]
    assert i.state is a.state is State.ACTIVE
    return i, a


def sent(link: Link) -> list[Any]:
    return [decode(p) for p in link.data_to_send()]


def test_handshake_and_data_both_ways() -> None:
    i, a = connected()
    i.send(Ack(3))
    a.send(Ack(4))
    assert transfer(i, a) == [MessageReceived(Ack(3))]
    assert transfer(a, i) == [MessageReceived(Ack(4))]
    assert i.hello == a.hello == Hello(A) and i.welcome == a.welcome == Welcome(B)



def test_a_message_encoded_once_is_sent_as_given_to_several_links() -> None:
    message = Ack(7)
    payload = encode(message)
    links = [connected() for _ in range(2)]
    for i, a in links:
        a.send(message, encoded=payload)
        assert a.data_to_send() == [payload]
        a.send(message, encoded=payload)
        assert transfer(a, i) == [MessageReceived(Ack(7))]
    closed = connected()[1]
    closed.fail(RuntimeError("x"))
    with pytest.raises(ConnectionClosedError):
        closed.send(message, encoded=payload)  # the state machine still applies


# ---------------------------------------------------------------- peer input never raises


@pytest.mark.parametrize(("payload", "code"), [
    (b"\xc1garbage", "malformed_message"),
    (msgpack.packb([PROTOCOL_VERSION, "nope", 0, {}]), "unknown_message_type"),
    (msgpack.packb([PROTOCOL_VERSION, "ack", 0, {"seq": "x"}]), "malformed_message"),
    (b"\x00" * 2000, "message_too_large"),
])
def test_bad_payload_fails_the_link_without_raising(payload: bytes, code: str) -> None:
    i, a = connected(max_message_size=1000)
    a.receive(payload)
    assert a.state is State.ERROR and a.finished
    assert isinstance(a.error, ProtocolError) and a.error.code == code
    [event] = a.events_received()
    assert event == Failed(a.error, remote=False)
    [error] = sent(a)
    assert isinstance(error, Error) and error.code == code and error.action is ErrorAction.STOP
    # the peer learns why, and its link fails too, blaming the remote side
    i.receive(encode(error))
    events = i.events_received()
    assert events[0] == MessageReceived(error)
    assert isinstance(events[1], Failed) and events[1].remote
    assert isinstance(i.error, ProtocolError) and i.error.code == code
    # later input is ignored
    a.receive(encode(Ack(1)))
    assert a.events_received() == [] and a.data_to_send() == []


@pytest.mark.parametrize(("payload", "code"), [
    (b"\xc1garbage", "malformed_message"),
    (msgpack.packb([PROTOCOL_VERSION, "nope", 0, {}]), "unknown_message_type"),
    (msgpack.packb([PROTOCOL_VERSION, "ack", 0, {"seq": "x"}]), "malformed_message"),
    (b"\x00" * 2000, "message_too_large"),
    (encode(Ack(5)), None),
    (encode(Changes(0, 3, 3, ())), None),
])
def test_a_payload_decoded_ahead_is_received_as_if_decoded_then(payload: bytes, code: str | None) -> None:
    """The server decodes a payload while its session is busy (``decode_ahead``) and feeds it
    later: same events, same error, same answer as ``receive`` alone."""
    plain_i, plain = connected(max_message_size=1000)
    ahead_i, ahead = connected(max_message_size=1000)
    decoded = ahead.decode_ahead(payload)
    plain.receive(payload)
    ahead.receive(payload, decoded=decoded)
    assert [repr(e) for e in ahead.events_received()] == [repr(e) for e in plain.events_received()]
    assert ahead.data_to_send() == plain.data_to_send()
    assert ahead.state is plain.state
    if code is None:
        assert ahead.error is None
    else:
        assert isinstance(ahead.error, ProtocolError) and ahead.error.code == code == plain.error.code
        assert ahead.error.message == plain.error.message


def test_out_of_order_message_is_a_peer_error() -> None:
    a = Link(Role.ACCEPTOR)
    a.receive(encode(Changes(0, 0, 0)))
    assert isinstance(a.error, ProtocolError) and a.error.code == "unexpected_message"
    assert sent(a)[0].code == "unexpected_message"


def test_acceptor_refuses_a_welcome_and_initiator_a_hello() -> None:
    a = Link(Role.ACCEPTOR)
    a.receive(encode(Welcome(B)))
    assert a.error is not None and a.error.code == "unexpected_message"
    i = Link(Role.INITIATOR)
    i.send(Hello(A))
    i.receive(encode(Hello(B)))
    assert i.error is not None and i.error.code == "unexpected_message"


def test_version_mismatch_is_reported_to_the_peer() -> None:
    a = Link(Role.ACCEPTOR)
    a.receive(msgpack.packb([PROTOCOL_VERSION + 1, "hello", 0, {"replica_id": A}]))
    assert isinstance(a.error, VersionMismatchError)
    [payload] = a.data_to_send()
    assert msgpack.unpackb(payload)[0] == PROTOCOL_VERSION
    assert decode(payload) == Error("version_mismatch", a.error.message, ErrorAction.STOP)


def test_received_error_becomes_the_most_specific_exception() -> None:
    i = Link(Role.INITIATOR)
    i.send(Hello(A, "expired-token"))
    i.receive(encode(Error("token_expired", "log in again")))
    assert isinstance(i.error, AuthError) and i.error.action == "reauthenticate"
    assert i.error.code == "token_expired"
    assert i.state is State.ERROR


def test_acceptor_may_refuse_the_hello() -> None:
    i, a = Link(Role.INITIATOR), Link(Role.ACCEPTOR)
    i.send(Hello(A, "bad"))
    transfer(i, a)
    a.send(Error("auth_failed", "unknown token"))
    assert a.finished and isinstance(a.events_received()[0], Failed)
    events = transfer(a, i)
    assert isinstance(events[-1], Failed) and events[-1].remote
    assert isinstance(i.error, AuthError)


# ---------------------------------------------------------------- local misuse raises


def test_sending_in_the_wrong_state_is_a_usage_error() -> None:
    i = Link(Role.INITIATOR)
    with pytest.raises(UsageError):
        i.send(Ack(1))
    with pytest.raises(UsageError):
        i.send(Welcome(B))
    a = Link(Role.ACCEPTOR)
    with pytest.raises(UsageError):
        a.send(Hello(A))
    assert i.state is a.state is State.IDLE  # nothing changed


def test_sending_after_the_end_raises_connection_closed() -> None:
    i, a = connected()
    i.send(Close())
    with pytest.raises(ConnectionClosedError):
        i.send(Ack(1))
    a.receive(b"\xc1")
    with pytest.raises(ConnectionClosedError):
        a.send(Ack(1))


def test_oversized_send_is_a_usage_error_and_changes_nothing() -> None:
    i = Link(Role.INITIATOR, max_message_size=200, compress_threshold=None)
    with pytest.raises(UsageError) as info:
        i.send(Hello(A, "x" * 500))
    assert info.value.code == "message_too_large"
    assert i.state is State.IDLE and i.data_to_send() == []


def test_fail_reports_local_errors() -> None:
    i, a = connected()
    i.fail(ProtocolError("gap", code="sequence_gap", action="retry"))
    assert sent(i) == [Error("sequence_gap", "gap", ErrorAction.RETRY)]
    assert i.events_received() == [Failed(i.error, remote=False)]  # type: ignore[arg-type]
    i.fail(ProtocolError("again"))  # idempotent once failed
    assert i.data_to_send() == []


def test_fail_with_a_foreign_exception_does_not_leak_details() -> None:
    i, _ = connected()
    i.fail(KeyError("secret-internal-detail"))
    [error] = sent(i)
    assert error.code == "internal" and "secret" not in error.message
    assert isinstance(i.error, SyncError) and "secret" in str(i.error)


# ---------------------------------------------------------------- heartbeats


def test_ping_is_answered_and_not_reported() -> None:
    i, a = connected()
    i.send(Ping(42))
    assert transfer(i, a) == []
    assert sent(a) == [Pong(42)]


def test_idle_link_pings_then_times_out() -> None:
    i, a = connected(heartbeat_interval_ms=1000, heartbeat_timeout_ms=3000)
    i.tick(0)
    assert i.next_deadline() == 1000
    i.tick(999)
    assert i.data_to_send() == []
    i.tick(1000)
    assert sent(i) == [Ping(1)]
    assert i.next_deadline() == 3000
    i.tick(2000)
    assert i.data_to_send() == []  # one ping outstanding at a time
    i.tick(3000)
    assert isinstance(i.error, ConnectionClosedError) and i.error.code == "heartbeat_timeout"
    assert i.error.action == "retry"
    assert sent(i)[0].code == "heartbeat_timeout"


def test_pong_answers_the_ping_and_measures_rtt() -> None:
    i, a = connected(heartbeat_interval_ms=1000, heartbeat_timeout_ms=3000)
    i.tick(0)
    i.tick(1000)
    transfer(i, a)
    i.tick(1040)
    transfer(a, i)
    i.tick(1100)
    assert i.rtt_ms == 1100 - 1000  # known at the tick after the pong
    assert i.error is None
    i.tick(2099)
    assert i.data_to_send() == []
    i.tick(2100)
    assert sent(i) == [Ping(2)]


def test_any_message_counts_as_a_sign_of_life() -> None:
    i, a = connected(heartbeat_interval_ms=1000, heartbeat_timeout_ms=3000)
    i.tick(0)
    for t in range(500, 10_000, 500):
        a.send(Ack(t))
        transfer(a, i)
        i.tick(t)
    assert i.error is None and i.data_to_send() == []


def test_handshake_timeout() -> None:
    i = Link(Role.INITIATOR, handshake_timeout_ms=5000)
    i.send(Hello(A))
    i.data_to_send()
    i.tick(100)
    assert i.next_deadline() == 5100
    i.tick(5099)
    assert i.error is None
    i.tick(5100)
    assert i.error is not None and i.error.code == "handshake_timeout"


def test_heartbeat_options_are_checked() -> None:
    with pytest.raises(UsageError):
        Link(Role.INITIATOR, heartbeat_interval_ms=5000, heartbeat_timeout_ms=5000)


# ---------------------------------------------------------------- closing


def test_close_is_answered_and_both_sides_report_closed() -> None:
    i, a = connected()
    i.send(Close("bye"))
    assert i.state is State.CLOSED and not i.finished
    events = transfer(i, a)
    assert events == [MessageReceived(Close("bye")), Closed("bye")]
    assert a.finished and a.error is None
    assert transfer(a, i) == [MessageReceived(Close("bye")), Closed("bye")]
    assert i.finished and i.error is None
    i.connection_lost()
    assert i.events_received() == [] and i.error is None


def test_peer_may_finish_sending_after_our_close() -> None:
    i, a = connected()
    i.send(Close())
    a.send(Ack(9))  # sent before a saw the Close
    assert transfer(a, i) == [MessageReceived(Ack(9))]


def test_lost_connection_is_a_failure_and_drops_unsent_data() -> None:
    i, _ = connected()
    i.send(Ack(1))
    i.connection_lost()
    assert i.data_to_send() == []
    [event] = i.events_received()
    assert isinstance(event, Failed) and not event.remote
    assert isinstance(i.error, ConnectionClosedError) and i.error.code == "connection_lost"
    assert i.state is State.ERROR
    i.connection_lost()  # idempotent
    assert i.events_received() == []


# -- receive_ack: a plain Ack taken without the general decode (the server's fast path) ---------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ACK_HEAD = encode(Ack(0))[:-1]   # [1, "ack", 0, {"seq": ... up to the seq


def _link_state(link: Link) -> tuple[Any, ...]:
    return (link.state, link.their_state, link.finished, link._heard, link.error is None,
            [type(e).__name__ for e in link._events], link._out[:])


@st.composite
def _small_payloads(draw: Any) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return encode(Ack(draw(st.integers(0, 2**63 - 1))))
    if kind == 1:   # the seq in every msgpack int form, signed ones included
        fmt = draw(st.sampled_from([b"", b"\xcc", b"\xcd", b"\xce", b"\xcf", b"\xd0", b"\xd1", b"\xd2",
                                    b"\xd3", b"\xc0", b"\xc3", b"\xca"]))
        return _ACK_HEAD + fmt + draw(st.binary(max_size=9))
    if kind == 2:   # an ack with a trailing or missing byte
        payload = encode(Ack(draw(st.integers(0, 2**40))))
        return payload + draw(st.binary(min_size=1, max_size=3)) if draw(st.booleans()) else payload[:-1]
    if kind == 3:
        return encode(Ack(draw(st.integers(0, 100)), snapshot_page=draw(st.integers(0, 5))))
    if kind == 4:
        return encode(draw(st.sampled_from([Ping(3), Pong(4), Close("bye")])))
    return draw(st.binary(max_size=24))


@settings(max_examples=300, deadline=None)
@given(payload=_small_payloads(), handshake=st.booleans())
def test_receive_ack_agrees_with_receive(payload: bytes, handshake: bool) -> None:
    """receive_ack() returns what receive() reports for a plain Ack and leaves the Link as
    receive() leaves it; anything else (or a Link before its handshake) gets None and no
    change, and receive() then reports it, or fails with the error it names."""
    if handshake:
        _, fast = connected()
        _, general = connected()
    else:
        fast, general = Link(Role.ACCEPTOR), Link(Role.ACCEPTOR)
    before = _link_state(fast)
    ack = fast.receive_ack(payload)
    general.receive(payload)
    events = general.events_received()
    if ack is None:
        assert _link_state(fast) == before
        fast.receive(payload)
        assert [repr(e) for e in fast.events_received()] == [repr(e) for e in events]
        assert repr(fast.error) == repr(general.error)
        assert _link_state(fast) == _link_state(general)
    else:
        assert handshake
        assert events == [MessageReceived(ack)]
        assert _link_state(fast) == _link_state(general)


def test_receive_ack_takes_a_plain_ack_only_where_nothing_else_can_happen() -> None:
    payload = encode(Ack(7))
    i, a = connected()
    assert a.receive_ack(payload) == Ack(7)
    # A waiting event, a pending part, an ended connection: the general path.
    a._events.append(MessageReceived(Ping(1)))
    assert a.receive_ack(payload) is None
    a.events_received()
    a._parts = [b"x"]
    assert a.receive_ack(payload) is None
    a._parts = None
    a.fail(ProtocolError("x", code="malformed_message"))
    assert a.receive_ack(payload) is None
    assert a.receive_ack(bytearray(payload)) is None  # type: ignore[arg-type]
    # Our Close sent: the peer may still ack (its machine is ACTIVE), as receive() allows.
    i, a = connected()
    a.send(Close("bye"))
    assert a.receive_ack(payload) == Ack(7)
    # The peer's Close received (and answered): the connection has ended, receive() ignores it.
    i, a = connected()
    i.send(Close("bye"))
    transfer(i, a)
    assert a.receive_ack(payload) is None
    a.events_received()
    a.receive(payload)
    assert a.events_received() == [] and a.error is None


# -- tick_idle: tick() for a Link with nothing due, without the state checks ---------------------

def _tick_state(link: Link) -> tuple[Any, ...]:
    return (link._now, link._started_at, link._last_heard, link._heard, link._ping_sent_at,
            link._pong_received, link.rtt_ms, link.state, link.their_state, link.error is None, link._out[:],
            [repr(e) for e in link._events])


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["tick", "hear", "ping", "pong", "close", "lose"]),
                                st.integers(0, 70_000)), max_size=12),
       handshake=st.booleans(), interval=st.sampled_from([None, 20_000]))
def test_tick_idle_is_tick_where_it_takes_over(steps: list[tuple[str, int]], handshake: bool,
                                               interval: int | None) -> None:
    """Two Links fed the same inputs, one ticked with tick_idle() first (tick() when it says
    False), the other with tick() alone, stay the same in every respect after every step."""
    def make() -> tuple[Link, Link]:
        if handshake:
            return connected(heartbeat_interval_ms=interval)
        return Link(Role.INITIATOR, heartbeat_interval_ms=interval), Link(Role.ACCEPTOR, heartbeat_interval_ms=interval)

    (pi, a), (qi, b) = make(), make()
    now = 0
    for what, dt in steps:
        now += dt
        for peer, link, idle in ((pi, a, True), (qi, b, False)):
            if what == "tick":
                if not (idle and link.tick_idle(now)):
                    link.tick(now)
            elif what == "hear" and peer.state is State.ACTIVE and not peer.finished:
                peer.send(Ack(1))
                transfer(peer, link)
            elif what == "ping" and peer.state is State.ACTIVE and not peer.finished:
                peer.send(Ping(7))
                transfer(peer, link)
                transfer(link, peer)
            elif (what == "pong" and link._ping_sent_at is not None and peer.state is State.ACTIVE
                  and not peer.finished):
                peer.send(Pong(link._ping_nonce))
                transfer(peer, link)
            elif what == "close" and link.state is State.ACTIVE:
                link.send(Close("bye"))
            elif what == "lose":
                link.connection_lost()
        assert _tick_state(a) == _tick_state(b)


def test_tick_idle_notes_the_time_only_when_nothing_is_due() -> None:
    i, a = connected()
    a.tick(1_000)
    assert a.tick_idle(5_000) and a._now == 5_000
    assert not a.tick_idle(1_000 + 20_000)      # a Ping is due: tick()'s to send
    i.send(Ack(1))
    transfer(i, a)
    assert a.tick_idle(1_000 + 20_000)          # heard since: not quiet
    assert a._last_heard == 21_000 and not a._heard
    assert not Link(Role.ACCEPTOR).tick_idle(0)  # no handshake yet
