"""After an integration the sessions are woken in an order that keeps propagation short: the
sessions the new entries concern first, then those that only schedule a later wake-up, the
uploading session last."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tidesync.server.app import ServerState


class _Session:
    def __init__(self, name: str, woken: list[str], concerned: bool | None) -> None:
        self.name, self._woken = name, woken
        if concerned is not None:
            self.concerned = lambda: concerned

    def local_commit(self) -> None:
        self._woken.append(self.name)


def _notify(sessions: list[Any], origin: Any) -> None:
    ServerState.notify_commit(SimpleNamespace(sessions=set(sessions)), origin)  # type: ignore[arg-type]


def test_concerned_sessions_first_the_uploader_last() -> None:
    woken: list[str] = []
    origin = _Session("origin", woken, True)
    sessions = [_Session(f"lazy{i}", woken, False) for i in range(20)]
    sessions += [origin, _Session("b", woken, True), _Session("c", woken, True), _Session("plain", woken, None)]
    _notify(sessions, origin)
    assert sorted(woken[:3]) == ["b", "c", "plain"]   # no concerned(): woken at once, as before
    assert sorted(woken[3:-1]) == sorted(f"lazy{i}" for i in range(20))
    assert woken[-1] == "origin"
    assert len(woken) == len(sessions)                  # each exactly once


def test_an_origin_that_left_is_not_woken() -> None:
    woken: list[str] = []
    gone = _Session("gone", woken, True)
    _notify([_Session("b", woken, True)], gone)
    assert woken == ["b"]
    _notify([_Session("b", woken, True)], None)
    assert woken == ["b", "b"]
