"""A server decodes upload batches with the cyclic GC paused, compressed ones too."""

from __future__ import annotations

import gc
from typing import Any

from tidesync.core.clock import HybridClock
from tidesync.core.operations import SetValue
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.protocol import codec
from tidesync.protocol.actions import Send
from tidesync.protocol.events import MessageReceived
from tidesync.protocol.link import Link
from tidesync.protocol.messages import Changes, Hello
from tidesync.protocol.replicator import Replicator
from tidesync.protocol.states import Role
from tidesync.server.sync_endpoint import LARGE_PAYLOAD, _large_payload, _receive

DEVICE, SERVER = ReplicaId("000000000000000a"), ReplicaId("000000000000000b")


def _upload(n: int) -> Changes:
    """A device's upload batch of ``n`` one-field edits (the routing benchmark's writer's shape)."""
    clock = HybridClock(DEVICE, lambda: 1_700_000_000_000)
    txns = []
    for i in range(n):
        s = clock.now()
        txns.append(Transaction(s, DEVICE, s, (), (SetValue("Task", f"t{i % 20_000:06d}", s, ZERO, ("n",), (), i),)))
    return Changes(0, n, n, tuple((i + 1, t) for i, t in enumerate(txns)))


def _active_link() -> Link:
    link, device = Link(Role.ACCEPTOR), Link(Role.INITIATOR)
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
    link.data_to_send()
    link.events_received()
    return link


def _collections_while(fn: Any) -> int:
    """How many cyclic-GC collections ``fn()`` sets off, the young generation's threshold low."""
    seen: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    old = gc.get_threshold()
    gc.collect()
    gc.set_threshold(50, 10, 10)
    gc.callbacks.append(count)
    try:
        fn()
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*old)
    return len(seen)


def test_a_compressed_upload_batch_under_64_kib_is_decoded_with_the_gc_paused() -> None:
    message = _upload(500)
    payload = codec.encode(message)
    assert codec.is_compressed(payload) and len(payload) < LARGE_PAYLOAD   # (115 KB of msgpack in 12 KB)
    assert _large_payload(payload)
    link = _active_link()
    assert gc.isenabled()
    assert _collections_while(lambda: _receive(link, payload)) == 0
    assert gc.isenabled()
    events = link.events_received()
    assert len(events) == 1 and isinstance(events[0], MessageReceived) and events[0].message == message


def test_large_plain_payloads_are_decoded_with_the_gc_paused_and_small_ones_not() -> None:
    small = codec.encode(_upload(2))
    assert not codec.is_compressed(small) and not _large_payload(small)
    plain = codec.encode(_upload(500), compress_threshold=None)
    assert len(plain) >= LARGE_PAYLOAD and _large_payload(plain)
    link = _active_link()
    assert _collections_while(lambda: _receive(link, plain)) == 0
    # The rule is the size or the flag, nothing else: a plain payload just under the size runs
    # with the collector.
    assert not _large_payload(b"\x94\x01\xa7changes\x00" + b"\x00" * (LARGE_PAYLOAD - 12))
