"""The sessions of a server share one 1 s timer for their heartbeats and deadlines."""

from __future__ import annotations

import asyncio
from typing import Any

from tidesync.server.sync_endpoint import _Shared


class _Session:
    def __init__(self, fail: bool = False) -> None:
        self.ticks = 0
        self.fail = fail

    def _tick(self) -> None:
        self.ticks += 1
        if self.fail:
            raise RuntimeError("boom")


def test_one_timer_ticks_every_session_until_the_last_stops() -> None:
    async def scenario() -> None:
        shared = _Shared()
        a, b, bad = _Session(), _Session(), _Session(fail=True)
        for s in (a, bad, b):
            shared.start_ticks(s)  # type: ignore[arg-type]
        first: Any = shared._ticker
        assert first is not None
        shared._tick_all()  # what the timer calls
        assert (a.ticks, b.ticks, bad.ticks) == (1, 1, 1)   # one failing tick stops no other
        assert shared._ticker is not None and shared._ticker is not first   # re-armed
        shared.stop_ticks(a)  # type: ignore[arg-type]
        shared._tick_all()
        assert (a.ticks, b.ticks) == (1, 2)
        shared.stop_ticks(b)  # type: ignore[arg-type]
        shared.stop_ticks(bad)  # type: ignore[arg-type]
        assert shared._ticker is None

    asyncio.run(scenario())


def test_a_new_event_loop_starts_afresh() -> None:
    shared = _Shared()
    stale = _Session()

    async def start(s: _Session) -> None:
        shared.start_ticks(s)  # type: ignore[arg-type]

    asyncio.run(start(stale))       # that loop closes with the session still registered
    fresh = _Session()

    async def again() -> None:
        await start(fresh)
        assert shared._ticked == {fresh}
        assert shared._ticker is not None
        shared._tick_all()
        assert (stale.ticks, fresh.ticks) == (0, 1)
        shared.stop_ticks(fresh)  # type: ignore[arg-type]

    asyncio.run(again())
