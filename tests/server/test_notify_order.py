"""After an integration the sessions are woken in an order that keeps propagation short: the
sessions the new entries concern first, the uploading session last; sessions that already
have a later wake-up scheduled (and are not concerned) are not visited."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tidesync.server.app import ServerState


class _Session:
    def __init__(self, name: str, woken: list[str]) -> None:
        self.name, self._woken = name, woken

    def local_commit(self) -> None:
        self._woken.append(self.name)

    def own_commit(self) -> None:  # the uploader's wake-up (ServerSession.own_commit)
        self._woken.append(self.name)


def _notify(sessions: list[Any], origin: Any, first: Any = (), skip: Any = frozenset()) -> None:
    ServerState.notify_commit(SimpleNamespace(sessions=set(sessions)), origin, first, skip)  # type: ignore[arg-type]


def test_first_sessions_first_the_uploader_last_the_skipped_not_at_all() -> None:
    woken: list[str] = []
    origin = _Session("origin", woken)
    b, c = _Session("b", woken), _Session("c", woken)
    lazy = [_Session(f"lazy{i}", woken) for i in range(20)]
    rest = [_Session(f"rest{i}", woken) for i in range(5)]
    gone = _Session("gone", woken)   # in the partition's group, but its connection ended
    both = _Session("both", woken)   # scheduled for later, but this write concerns it: now
    _notify([origin, b, c, both, *lazy, *rest], origin, first={origin, b, c, gone, both},
            skip={*lazy, both})
    assert sorted(woken[:3]) == ["b", "both", "c"]
    assert sorted(woken[3:-1]) == sorted(s.name for s in rest)
    assert woken[-1] == "origin"


def test_without_hints_every_session_is_woken_once_the_uploader_last() -> None:
    woken: list[str] = []
    origin = _Session("origin", woken)
    others = [_Session(f"s{i}", woken) for i in range(10)]
    _notify([*others, origin], origin)
    assert sorted(woken[:-1]) == sorted(s.name for s in others) and woken[-1] == "origin"
    woken.clear()
    _notify(others, _Session("left", woken))   # an uploader that left is not woken
    assert sorted(woken) == sorted(s.name for s in others)
