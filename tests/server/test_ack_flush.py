"""The server gathers its peers' ``Ack``s and records them together, unsynced
(server/sync_endpoint.py, ``_Shared.record_ack`` and ``_flush_acks``)."""

from __future__ import annotations

import asyncio
from typing import Any

from tidesync.server.sync_endpoint import _Shared


class _Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, int], bool]] = []

    def record_acks(self, acks: dict[str, int], *, durable: bool = True) -> None:
        self.calls.append((dict(acks), durable))


def test_acks_are_gathered_and_recorded_together_without_an_fsync_of_their_own():
    backend = _Backend()

    async def main() -> None:
        shared: Any = _Shared()
        shared.ACK_DELAY = 0.01
        shared.record_ack(backend, "peer-a", 3)
        shared.record_ack(backend, "peer-b", 4)
        shared.record_ack(backend, "peer-a", 2)  # an older one changes nothing
        for _ in range(200):
            if backend.calls and not shared._flushing:
                break
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert backend.calls == [({"peer-a": 3, "peer-b": 4}, False)]
