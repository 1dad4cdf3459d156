"""The server's WebSocket protocol (server/runner.py, ``_ws_protocol``): a chunk that is exactly
one small masked binary frame, arriving where websockets' parser waits for the next frame, is
unmasked and handed to the app's receive hook without the parser. These tests feed the same
byte streams, cut in many ways, to the protocol and check that the hook, the queue and the
parser see exactly what uvicorn's own path gives them: the same messages in the same order,
and the same failures for frames that break the WebSocket protocol."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from tidesync.protocol import codec
from tidesync.protocol.messages import Ack
from tidesync.server.runner import _ws_protocol


class _Transport:
    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass


def _pair(fast: bool, take: bool = True) -> tuple[object, ClientProtocol, list[bytes]]:
    """A server protocol after a real handshake (its ``conn`` open), the client that made it,
    and the list the app's receive hook appends to (it takes every message when ``take``)."""
    cls = _ws_protocol()
    if isinstance(cls, str):
        pytest.skip("this uvicorn has no sans-I/O WebSocket protocol")
    proto = object.__new__(cls)
    proto.transport = _Transport()
    proto.queue = asyncio.Queue()
    proto.read_paused = False
    proto.close_sent = False
    proto.frames = []
    proto.curr_msg_data_type = None
    conn = ServerProtocol(max_size=1 << 20)
    client = ClientProtocol(parse_uri("ws://127.0.0.1/sync"))
    client.send_request(client.connect())
    conn.receive_data(b"".join(client.data_to_send()))
    request = conn.events_received()[0]
    conn.send_response(conn.accept(request))
    client.receive_data(b"".join(conn.data_to_send()))
    assert client.events_received()
    proto.conn = conn
    got: list[bytes] = []

    def hook(data: bytes) -> bool:
        if not take:
            return False
        got.append(data)
        return True

    proto.direct = hook
    proto.plain = False
    if not fast:
        proto.plain_frames = True   # this instance takes uvicorn's own path
    return proto, client, got


def _queued(proto: object) -> list[bytes]:
    out = []
    while not proto.queue.empty():
        out.append(proto.queue.get_nowait()["bytes"])
    return out


def _stream(client: ClientProtocol, messages: list[bytes], fragment_at: int | None = None) -> bytes:
    for i, m in enumerate(messages):
        if i == fragment_at and len(m) > 1:
            client.send_binary(m[:1], fin=False)
            client.send_continuation(m[1:], fin=True)
        else:
            client.send_binary(m)
    return b"".join(client.data_to_send())


def _feed(proto: object, data: bytes, cuts: list[int]) -> None:
    at = 0
    for cut in [*cuts, len(data)]:
        if cut > at:
            proto.data_received(data[at:cut])
            at = cut


def _acks(n: int, rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.6:
            out.append(codec.encode(Ack(rng.choice([0, 5, 300, 70_000, 2**40]))))
        elif kind < 0.8:
            out.append(rng.randbytes(rng.randrange(0, 140)))
        else:
            out.append(rng.randbytes(rng.randrange(120, 400)))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_any_cut_of_the_stream_gives_the_messages_uvicorn_gives(seed):
    rng = random.Random(seed)
    messages = _acks(rng.randrange(1, 12), rng)
    fragment_at = rng.randrange(len(messages)) if rng.random() < 0.3 else None
    results = []
    for fast in (True, False):
        proto, client, got = _pair(fast)
        data = _stream(client, messages, fragment_at)
        if seed % 3 == 0:
            # Each chunk one whole frame (the fast path's case), a frame at a time.
            cuts, at = [], 0
            while at < len(data):
                n = data[at + 1] & 0x7F
                at += 2 + (2 if n == 126 else 8 if n == 127 else 0) + 4 + (
                    n if n < 126 else int.from_bytes(data[at + 2:at + (4 if n == 126 else 10)], "big"))
                cuts.append(at)
        else:
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 6))))
        state = rng.getstate()
        _feed(proto, data, cuts)
        rng.setstate(state)
        results.append((got, _queued(proto), proto.conn.state, proto.conn.parser_exc))
    assert results[0][0] + results[0][1] == results[1][0] + results[1][1] == messages
    assert results[0][2:] == results[1][2:]


def _frames(client: ClientProtocol, messages: list[bytes]) -> list[bytes]:
    out = []
    for m in messages:
        client.send_binary(m)
        out.append(b"".join(client.data_to_send()))
    return out


def test_whole_small_frames_reach_the_hook_and_the_parser_stays_at_a_frame_boundary():
    proto, client, got = _pair(True)
    parsed = []
    receive_data = proto.conn.receive_data
    proto.conn.receive_data = lambda data: (parsed.append(data), receive_data(data))
    acks = [codec.encode(Ack(n)) for n in (1, 2, 300, 2**40)]
    for frame in _frames(client, acks):
        proto.data_received(frame)
    assert got == acks and proto.queue.empty()
    assert parsed == []   # none went through websockets' parser
    # A frame cut in two after that still parses (the parser did not lose its place).
    big = b"y" * 200
    frame = _frames(client, [big, codec.encode(Ack(7))])
    proto.data_received(frame[0][:3])
    proto.data_received(frame[0][3:])
    proto.data_received(frame[1])
    assert got == [*acks, big, codec.encode(Ack(7))]
    assert proto.conn.parser_exc is None


def test_a_frame_whose_header_came_in_an_earlier_chunk_is_not_taken_as_a_new_one():
    proto, client, got = _pair(True)
    ack = codec.encode(Ack(9))
    # The first chunk ends after a small frame's header and mask: the next chunk is that
    # frame's payload, which must not be read as a frame of its own.
    inner = codec.encode(Ack(3))
    payload = bytes((0x82, 0x80 | len(inner))) + b"\x00\x00\x00\x00" + inner   # a frame inside
    frames = _frames(client, [payload, ack])
    header = 6
    proto.data_received(frames[0][:header])
    proto.data_received(frames[0][header:])
    proto.data_received(frames[1])
    assert got == [payload, ack]


def test_a_message_the_hook_does_not_take_is_queued_as_before():
    proto, client, got = _pair(True, take=False)
    acks = [codec.encode(Ack(n)) for n in (1, 2)]
    for frame in _frames(client, acks):
        proto.data_received(frame)
    assert got == [] and _queued(proto) == acks


@pytest.mark.parametrize("fast", [True, False])
def test_frames_that_break_the_protocol_fail_the_connection_as_before(fast):
    from websockets.protocol import State

    # Unmasked: a client must mask its frames.
    proto, client, got = _pair(fast)
    frame = Frame(Opcode.BINARY, codec.encode(Ack(1))).serialize(mask=False, extensions=[])
    proto.handle_parser_exception = lambda: None
    proto.data_received(frame)
    assert got == [] and proto.conn.parser_exc is not None and proto.conn.state is State.CLOSING
    # A new binary message in the middle of a fragmented one.
    proto, client, got = _pair(fast)
    proto.handle_parser_exception = lambda: None
    client.send_binary(b"a", fin=False)
    proto.data_received(b"".join(client.data_to_send()))
    whole = Frame(Opcode.BINARY, codec.encode(Ack(1))).serialize(mask=True, extensions=[])
    proto.data_received(whole)
    assert got == [] and proto.conn.parser_exc is not None and proto.conn.state is State.CLOSING


def _ready_to_send(proto: Any) -> None:
    """The state uvicorn's protocol is in once its handshake is done and its transport writable."""
    proto.writable = asyncio.Event()
    proto.writable.set()
    proto.disconnected = False
    proto.handshake_complete = True
    proto.initial_response = None


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
def test_a_message_framed_by_send_now_is_the_frame_websockets_makes(size):
    """``_send_now`` frames a binary message itself when nothing else is queued: the bytes are
    those of websockets' ``send_binary`` (the client reads the same message back)."""
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    written = []
    for fast in (True, False):
        proto, client, _ = _pair(True)
        _ready_to_send(proto)
        proto.plain_send = False
        proto.frames_send = fast
        assert proto._send_now(data)
        out = b"".join(proto.transport.written)
        client.receive_data(out)
        [frame] = client.events_received()
        assert frame.data == data and frame.fin
        written.append(out)
        assert proto._send_now(b"x")   # and the next one still frames right
        client.receive_data(b"".join(proto.transport.written)[len(out):])
        assert [f.data for f in client.events_received()] == [b"x"]
    assert written[0] == written[1]


def test_send_now_leaves_a_queued_write_first():
    proto, client, _ = _pair(True)
    _ready_to_send(proto)
    proto.conn.send_ping(b"p")      # queued in websockets, not yet written
    assert proto._send_now(b"data")
    client.receive_data(b"".join(proto.transport.written))
    assert [(f.opcode.name, f.data) for f in client.events_received()] == [("PING", b"p"), ("BINARY", b"data")]


@pytest.mark.parametrize("fast", [True, False])
def test_a_stream_fed_byte_by_byte_gives_the_same_messages(fast):
    proto, client, got = _pair(fast)
    messages = [codec.encode(Ack(n)) for n in (1, 2, 70_000)] + [b"", b"\x82", b"z" * 300]
    data = _stream(client, messages)
    _feed(proto, data, list(range(1, len(data))))
    assert got == messages and proto.conn.parser_exc is None
