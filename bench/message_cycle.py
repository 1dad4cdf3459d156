"""``python -m bench.message_cycle [N]``: the server's CPU per ``changes`` sent and ``ack`` received.

The messaging part of a routing round, in-process and without the read (judging a session's
entries is ``bench.route_inprocess``'s): a server-side Replicator and Link after a real handshake,
and the runner's WebSocket protocol (server/runner.py, ``_ws_protocol``) over websockets' sans-I/O
connection after a real WebSocket handshake, writing into a counting transport. Each of N cycles
(default 20,000): ``local_commit`` -> ``ReadLog``; a read result of 8 one-document entries ->
``log_read`` -> ``Changes`` -> ``Link.send`` (encoding) -> the runner's ``_send_now`` (the frame,
``transport.write``); then the device's ``Ack`` frame (made ahead) -> the runner's
``data_received`` -> the receive hook -> the Link (``receive_ack`` where the tree has it, else
``receive``) -> ``Replicator.handle``. Prints the CPU (``time.process_time``) per cycle; checks
every Ack was recorded. No sockets, no event loop, no kernel ``write``/``recv``.

Compare trees back to back (``PYTHONPATH=src`` from each); for figures immune to the machine's
load, count instructions: ``valgrind --tool=cachegrind --cache-sim=no`` with N=0 and N=2000, the
difference divided by 2000. A development aid.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

import msgpack

from tidesync.core.clock import HybridClock
from tidesync.core.operations import SetValue
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.protocol import codec
from tidesync.protocol.actions import RecordAck, Send
from tidesync.protocol.link import Link
from tidesync.protocol.messages import Ack, Hello
from tidesync.protocol.replica import LogBatch
from tidesync.protocol.replicator import Replicator
from tidesync.protocol.states import Role
from tidesync.server.runner import _ws_protocol

DEVICE, SERVER = ReplicaId("000000000000000a"), ReplicaId("000000000000000b")


class _Transport:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def main(n: int) -> None:
    from websockets.client import ClientProtocol
    from websockets.server import ServerProtocol
    from websockets.uri import parse_uri

    link = Link(Role.ACCEPTOR)
    device = Link(Role.INITIATOR)
    device.send(Hello(DEVICE))
    for p in device.data_to_send():
        link.receive(p)
    link.events_received()
    rep = Replicator(SERVER, Role.ACCEPTOR)
    rep.start()
    rep.handle(Hello(DEVICE))
    for a in rep.checkpoint_read(type("Checkpoint", (), {"received": 0})()):  # type: ignore[arg-type]
        if isinstance(a, Send):
            link.send(a.message)
    for a in rep.log_read(LogBatch((), 0, 0, 0)):
        if isinstance(a, Send):
            link.send(a.message)
    link.data_to_send()
    link.events_received()
    rep.handle(Ack(0))

    cls = _ws_protocol()
    if isinstance(cls, str):
        raise SystemExit("this uvicorn has no sans-I/O WebSocket protocol")
    proto: Any = object.__new__(cls)
    proto.transport, proto.queue, proto.read_paused, proto.close_sent = _Transport(), asyncio.Queue(), False, False
    proto.frames, proto.curr_msg_data_type = [], None
    conn = ServerProtocol(max_size=1 << 24)
    client = ClientProtocol(parse_uri("ws://127.0.0.1/sync"))
    client.send_request(client.connect())
    conn.receive_data(b"".join(client.data_to_send()))
    conn.send_response(conn.accept(conn.events_received()[0]))
    client.receive_data(b"".join(conn.data_to_send()))
    client.events_received()
    proto.conn = conn
    writable = asyncio.Event()
    writable.set()
    proto.writable, proto.disconnected, proto.handshake_complete, proto.initial_response = writable, False, True, None
    proto.plain = False
    acked: list[int] = []
    receive_ack = getattr(link, "receive_ack", None)

    def hook(data: bytes) -> bool:
        ack = receive_ack(data) if receive_ack is not None else None
        if ack is None:
            link.receive(data)
            ack = link.events_received()[0].message
        for a in rep.handle(ack):
            if type(a) is RecordAck:
                acked.append(a.seq)
        return True

    proto.direct = hook
    clock = HybridClock(DEVICE, lambda: 1_700_000_000_000)
    txns = []
    for i in range(8):
        s = clock.now()
        t = Transaction(s, DEVICE, s, (), (SetValue("Task", f"t{i:06d}", s, ZERO, ("n",), (), i),))
        data = msgpack.packb(t.to_wire(), use_bin_type=True)
        txns.append(Transaction.from_stored(msgpack.unpackb(data, raw=False), data))
    frames = []
    for k in range(n):
        client.send_binary(codec.encode(Ack((k + 1) * 8)))
        frames.append(b"".join(client.data_to_send()))
    seq = 0
    gc.disable()
    began = time.process_time()
    for k in range(n):
        rep.local_commit(seq + 8)
        batch = LogBatch(tuple((seq + 1 + i, txns[i]) for i in range(8)), seq + 8, seq + 8, 800)
        for a in rep.log_read(batch):
            if type(a) is Send:
                link.send(a.message)
        for p in link.data_to_send():
            proto._send_now(p)
        seq += 8
        proto.data_received(frames[k])
    took = time.process_time() - began
    gc.enable()
    if len(acked) != n or (n and acked[-1] != seq):
        raise SystemExit(f"acks recorded: {len(acked)} of {n}")
    print(f"{n:,} cycles: {took / max(n, 1) * 1e6:.1f} us CPU per changes sent and ack received "
          f"({proto.transport.written:,} bytes written)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
