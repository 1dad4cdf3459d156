"""The server's WebSocket protocol (server/runner.py, ``_ws_protocol``): the app may take a binary
message where it arrives (never ahead of a queued one); reading is paused only
once the app falls behind: a small message finding nothing queued leaves reading on; a large
one, or a second one the app has not taken, pauses it as uvicorn does; taking the queue's
last message resumes it (uvicorn's own ``receive``)."""

from __future__ import annotations

import asyncio

import pytest

from tidesync.server.runner import _ws_protocol


class _Transport:
    def __init__(self) -> None:
        self.reading = True
        self.calls = 0

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False
        self.calls += 1

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True
        self.calls += 1


def _protocol() -> tuple[object, _Transport]:
    cls = _ws_protocol()
    if isinstance(cls, str):
        pytest.skip("this uvicorn has no sans-I/O WebSocket protocol")
    proto = object.__new__(cls)  # only the receiving side's state, no handshake
    transport = _Transport()
    proto.transport = transport
    proto.queue = asyncio.Queue()
    proto.read_paused = False
    proto.close_sent = False
    proto.frames = []
    return proto, transport


def _arrive(proto, data: bytes) -> None:
    proto.curr_msg_data_type = "bytes"
    proto.frames = [data]
    proto.send_receive_event_to_app()


def test_small_messages_taken_in_turn_never_pause_reading():
    async def main() -> None:
        proto, transport = _protocol()
        for i in range(5):
            _arrive(proto, b"ack%d" % i)
            assert transport.reading and not proto.read_paused
            assert (await proto.receive()) == {"type": "websocket.receive", "bytes": b"ack%d" % i}
        assert transport.calls == 0

    asyncio.run(main())


def test_a_backlog_or_a_large_message_pauses_reading_until_the_queue_is_taken():
    async def main() -> None:
        proto, transport = _protocol()
        _arrive(proto, b"one")
        _arrive(proto, b"two")  # the app has not taken the first: pause
        assert not transport.reading and proto.read_paused
        assert (await proto.receive())["bytes"] == b"one"
        assert not transport.reading
        assert (await proto.receive())["bytes"] == b"two"
        assert transport.reading and not proto.read_paused
        _arrive(proto, b"x" * (proto.SMALL + 1))
        assert not transport.reading
        assert len((await proto.receive())["bytes"]) == proto.SMALL + 1
        assert transport.reading

    asyncio.run(main())


def test_the_app_may_take_a_message_where_it_arrives_but_never_ahead_of_a_queued_one():
    async def main() -> None:
        proto, transport = _protocol()
        taken: list[bytes] = []
        willing = [True]

        def direct(data: bytes) -> bool:
            if willing[0]:
                taken.append(data)
            return willing[0]

        proto._set_direct(direct)
        _arrive(proto, b"a")
        assert taken == [b"a"] and proto.queue.empty() and transport.reading
        willing[0] = False
        _arrive(proto, b"b")  # declined: queued as usual
        willing[0] = True
        _arrive(proto, b"c")  # b is still queued: c must follow it, not overtake it
        assert taken == [b"a"]
        assert (await proto.receive())["bytes"] == b"b"
        assert (await proto.receive())["bytes"] == b"c"
        proto.curr_msg_data_type = "text"
        proto.frames = [b"t"]
        proto.send_receive_event_to_app()  # text is never taken directly
        assert taken == [b"a"] and (await proto.receive())["text"] == "t"
        proto._set_direct(None)
        _arrive(proto, b"d")
        assert taken == [b"a"] and (await proto.receive())["bytes"] == b"d"

    asyncio.run(main())


def test_an_immediate_send_only_when_nothing_could_make_it_wait():
    proto, transport = _protocol()
    written: list[bytes] = []
    transport.write = written.append

    class _Conn:
        def __init__(self) -> None:
            self.out: list[bytes] = []

        def send_binary(self, data: bytes) -> None:
            self.out.append(b"frame:" + data)

        def data_to_send(self) -> list[bytes]:
            out, self.out = self.out, []
            return out

    proto.conn = _Conn()
    proto.writable = asyncio.Event()
    proto.disconnected = False
    proto.handshake_complete = True
    proto.initial_response = None
    assert not proto._send_now(b"x")  # the transport asked to wait: websocket.send waits
    proto.writable.set()
    assert proto._send_now(b"y") and written == [b"frame:y"]
    proto.close_sent = True
    assert not proto._send_now(b"z") and written == [b"frame:y"]


def test_unknown_uvicorn_internals_turn_the_immediate_send_off():
    cls = _ws_protocol()
    if isinstance(cls, str):
        pytest.skip("this uvicorn has no sans-I/O WebSocket protocol")
    proto = object.__new__(cls)  # none of the attributes the fast path relies on
    assert proto._send_now(b"x") is False  # websocket.send is used instead, nothing raised
    assert cls.plain_send is True
