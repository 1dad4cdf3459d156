"""Messages larger than the maximum message size travel in parts (feature ``parts``): joined
whole on receipt, refused with a typed error when interrupted, oversized or unannounced, and
never delivered in part."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest

from tidesync.core.operations import CreateDoc
from tidesync.core.transaction import Transaction
from tidesync.errors import UsageError
from tidesync.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Changes,
    Connected,
    Failed,
    Hello,
    Link,
    MessageReceived,
    Role,
    Welcome,
)
from tidesync.protocol.codec import FLAG_MORE, part_of, split
from tidesync.protocol.messages import FEATURE_PARTS

A = "000000000000000a"
B = "000000000000000b"
RID = "00000000000000aa"
PARTS = (FEATURE_PARTS,)


def connected(i_features: tuple[str, ...] = PARTS, a_features: tuple[str, ...] = PARTS,
              **options: Any) -> tuple[Link, Link]:
    i, a = Link(Role.INITIATOR, **options), Link(Role.ACCEPTOR, **options)
    i.send(Hello(A, features=i_features))
    for p in i.data_to_send():
        a.receive(p)
    a.send(Welcome(B, features=a_features))
    for p in a.data_to_send():
        i.receive(p)
    assert isinstance(i.events_received()[-1], Connected) and isinstance(a.events_received()[-1], Connected)
    return i, a


def big_changes(n_docs: int = 40) -> Changes:
    """A Changes of one transaction of ``n_docs`` creates with incompressible bodies."""
    stamp = "0" * 16 + "01" + RID
    ops = tuple(CreateDoc("Doc", f"k{k}", stamp, "", {"_id": f"k{k}", "blob": os.urandom(60).hex()}, {}) for k in range(n_docs))
    return Changes(0, 1, 1, ((1, Transaction(stamp, RID, stamp, (), ops)),))


def failed_code(events: list[Any]) -> str:
    assert len(events) == 1 and isinstance(events[0], Failed), events
    return str(events[0].error.code)


def test_a_message_over_the_limit_arrives_whole_from_parts_each_within_the_limit() -> None:
    i, a = connected(max_message_size=1000, compress_threshold=None)
    message = big_changes()
    i.send(message)
    payloads = i.data_to_send()
    assert len(payloads) > 3 and all(len(p) <= 1000 for p in payloads)
    for p in payloads[:-1]:
        a.receive(p)
        assert a.events_received() == []                     # nothing until the last part
    a.receive(payloads[-1])
    assert a.events_received() == [MessageReceived(message)]
    i.send(Ack(1))                                           # and the link goes on as usual
    for p in i.data_to_send():
        a.receive(p)
    assert a.events_received() == [MessageReceived(Ack(1))]


def test_both_directions_and_compressed_bodies_too() -> None:
    i, a = connected(max_message_size=600)
    message = big_changes()
    a.send(message)
    payloads = a.data_to_send()
    assert len(payloads) > 1 and msgpack.unpackb(payloads[0])[1] == "part"
    for p in payloads:
        i.receive(p)
    assert i.events_received() == [MessageReceived(message)]


def test_without_the_peers_feature_an_oversized_send_is_refused_and_changes_nothing() -> None:
    i, a = connected(a_features=(), max_message_size=1000, compress_threshold=None)
    with pytest.raises(UsageError) as info:
        i.send(big_changes())
    assert info.value.code == "message_too_large"
    assert i.data_to_send() == []
    i.send(Ack(1))                                           # still usable
    assert len(i.data_to_send()) == 1


def test_a_part_this_side_did_not_announce_is_an_unknown_message_type() -> None:
    i, a = connected(a_features=(), max_message_size=1000, compress_threshold=None)
    # The initiator announced parts and the acceptor did not: a (misbehaving) acceptor's
    # part is taken by the initiator, an initiator's part is refused by the acceptor.
    parts = split(b"\x94" + b"\x00" * 3000, 1000)
    a.receive(parts[0])
    assert failed_code(a.events_received()) == "unknown_message_type"


def test_an_interrupted_message_in_parts_fails_and_delivers_nothing() -> None:
    i, a = connected(max_message_size=1000, compress_threshold=None)
    i.send(big_changes())
    payloads = i.data_to_send()
    a.receive(payloads[0])
    i.send(Ack(1))
    a.receive(i.data_to_send()[-1])                          # an Ack between two parts
    assert failed_code(a.events_received()) == "malformed_message"


def test_a_message_in_parts_over_the_assembled_limit_is_refused_before_it_is_joined() -> None:
    i, _ = connected(max_message_size=1000, max_assembled_size=100_000, compress_threshold=None)
    _, a = connected(max_message_size=1000, max_assembled_size=5_000, compress_threshold=None)
    i.send(big_changes())
    payloads = i.data_to_send()
    for p in payloads:
        a.receive(p)
        events = a.events_received()
        if events:
            break
    assert failed_code(events) == "message_too_large"
    assert a.error is not None


def test_the_senders_assembled_limit_is_a_usage_error() -> None:
    i, _ = connected(max_message_size=1000, max_assembled_size=2_000, compress_threshold=None)
    with pytest.raises(UsageError) as info:
        i.send(big_changes())
    assert info.value.code == "message_too_large" and i.data_to_send() == []


@pytest.mark.parametrize("payload", [
    msgpack.packb([PROTOCOL_VERSION, "part", 4, b"x"]),       # unknown flag
    msgpack.packb([PROTOCOL_VERSION, "part", FLAG_MORE, "x"]),  # chunk not bin
    msgpack.packb([PROTOCOL_VERSION, "part", 0]),             # short envelope
    msgpack.packb([PROTOCOL_VERSION, "part", 0, b"\xc1"]),    # the joined payload is not msgpack
])
def test_malformed_parts_are_typed_errors(payload: bytes) -> None:
    _, a = connected(max_message_size=1000)
    a.receive(payload)
    assert failed_code(a.events_received()) == "malformed_message"


def test_a_connection_lost_mid_message_delivers_nothing() -> None:
    i, a = connected(max_message_size=1000, compress_threshold=None)
    i.send(big_changes())
    payloads = i.data_to_send()
    for p in payloads[:-1]:
        a.receive(p)
    a.connection_lost()
    events = a.events_received()
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert str(events[0].error.code) == "connection_lost"


def test_split_and_part_of_round_trip() -> None:
    payload = b"\x94" + os.urandom(5000)
    parts = split(payload, 700)
    assert all(len(p) <= 700 for p in parts)
    read = [part_of(p) for p in parts]
    assert all(r is not None for r in read)
    assert b"".join(r[0] for r in read if r) == payload
    assert [r[1] for r in read if r] == [True] * (len(parts) - 1) + [False]
    assert split(payload, 10_000) == [payload]
    assert part_of(msgpack.packb([PROTOCOL_VERSION, "ack", 0, {"seq": 1}])) is None


def test_a_driver_decoding_ahead_leaves_the_parts_to_receive() -> None:
    i, a = connected(max_message_size=1000, compress_threshold=None)
    message = big_changes()
    i.send(message)
    for p in i.data_to_send():
        assert a.decode_ahead(p) is None                     # a part is not a message on its own
        a.receive(p, decoded=a.decode_ahead(p))
    assert a.events_received() == [MessageReceived(message)]
    i.send(Ack(2))
    (p,) = i.data_to_send()
    a.receive(p, decoded=a.decode_ahead(p))
    assert a.events_received() == [MessageReceived(Ack(2))]
