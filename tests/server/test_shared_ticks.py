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


class _User:
    def __init__(self, uid: str, sid: str) -> None:
        self.id, self.sid, self.expires = uid, sid, 0.0


class _Tokens:
    """still_valid: None while valid, else why not (here: a marker); raises for 'broken'."""

    def __init__(self, lapsed: set[str]) -> None:
        self.lapsed = lapsed
        self.calls: list[str] = []

    def still_valid(self, user: _User) -> Any:
        self.calls.append(user.id)
        if user.id == "broken":
            raise RuntimeError("user store unavailable")
        return "lapsed" if user.id in self.lapsed else None


class _Rechecked:
    def __init__(self, user: _User, tokens: _Tokens) -> None:
        self.user = user
        self.state = type("State", (), {"tokens": tokens})()
        self.woken = 0

    def recheck_auth(self) -> None:
        self.woken += 1


def test_periodic_rechecks_are_made_together_and_wake_only_failing_sessions() -> None:
    async def scenario() -> None:
        shared = _Shared()
        tokens = _Tokens(lapsed={"gone"})
        same = _User("ok", "s1")
        ok1, ok2 = _Rechecked(same, tokens), _Rechecked(same, tokens)   # one login session, two devices
        gone, broken = _Rechecked(_User("gone", "s2"), tokens), _Rechecked(_User("broken", "s3"), tokens)
        for s in (ok1, ok2, gone, broken):
            shared.recheck_soon(s)  # type: ignore[arg-type]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not shared._rechecking:
                break
        assert sorted(tokens.calls) == ["broken", "gone", "ok"]   # once per login session
        assert (ok1.woken, ok2.woken) == (0, 0)
        # A lapsed user, or a check that failed: the session checks again itself (and closes).
        assert (gone.woken, broken.woken) == (1, 1)

    asyncio.run(scenario())


class _Lazy:
    def __init__(self, fail: bool = False) -> None:
        self.woken = 0
        self.fail = fail

    def _wake_now(self) -> None:
        self.woken += 1
        if self.fail:
            raise RuntimeError("boom")


class _State:
    def __init__(self, log_keep: int | None) -> None:
        self.config = type("Config", (), {"log_keep": log_keep})()
        self.backend = type("Backend", (), {"written_elsewhere": staticmethod(lambda: None)})()
        self.compactions = 0


def test_the_lazy_wake_ups_are_made_a_tick_before_the_log_may_be_compacted() -> None:
    async def scenario(log_keep: int | None) -> tuple[int, int, list[int]]:
        shared = _Shared()
        shared.state = _State(log_keep)  # type: ignore[assignment]
        compactions: list[int] = []
        shared._compact_soon = lambda: compactions.append(shared._ticks)  # type: ignore[method-assign]
        a, bad = _Lazy(), _Lazy(fail=True)
        shared.lazy = {a, bad}  # type: ignore[arg-type]
        woken_at: list[int] = []
        for _ in range(2 * _Shared.COMPACT_TICKS):
            before = a.woken
            shared._tick_all()
            if a.woken != before:
                woken_at.append(shared._ticks)
        if shared._ticker is not None:
            shared._ticker.cancel()
        assert compactions == [_Shared.COMPACT_TICKS, 2 * _Shared.COMPACT_TICKS]
        return a.woken, bad.woken, woken_at

    n = _Shared.COMPACT_TICKS
    assert asyncio.run(scenario(1000)) == (2, 2, [n - 1, 2 * n - 1])  # one failure stops no other
    assert asyncio.run(scenario(None)) == (0, 0, [])  # no compaction: they keep their pace
