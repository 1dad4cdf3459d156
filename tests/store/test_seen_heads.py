"""A replica that joins documents it got as states (a snapshot's pages, documents entering a
flexible-sync view) takes, per origin, the latest stamp they hold as a "seen" head: its next
transactions name it as a parent, so the replicas that hold the history can tell its later
edit from a concurrent one (docs/sync.md, "Which overwrites count as conflicts")."""

from __future__ import annotations

import time

import tidesync
from tidesync.core.merge import latest_stamp
from tidesync.core.stamp import ReplicaId
from tidesync.protocol.messages import SnapshotDoc
from tidesync.store.replica import MAX_SEEN_ORIGINS

OTHER = ReplicaId("00000000000000cc")


class Note(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    text: str = ""
    tags: list[str] = tidesync.field(default_factory=list)


def _heads(db: tidesync.Database) -> set[str]:
    return {r[0] for r in db._engine.query("SELECT id FROM heads")}


def _stamp(wall: int, origin: str) -> str:
    return f"{wall:012x}000000{origin}"


def _all_pages(db: tidesync.Database, limit: int = 2):
    cursor = None
    while True:
        page = db.read_snapshot({}, cursor=cursor, limit=limit, max_bytes=1 << 20)
        yield page
        cursor = page.cursor
        if cursor is None:
            return


def test_joined_pages_give_each_origins_latest_stamp_as_a_head(tmp_path) -> None:
    with tidesync.open(tmp_path / "a.db", schema=[Note]) as a, tidesync.open(tmp_path / "b.db", schema=[Note]) as b:
        with a.write():
            for i in range(3):
                a.create(Note, _id=f"n{i}", text="one")
        with a.write():
            a.get(Note, "n0").text = "two"      # a later write in a meta that is no longer fresh
        [edit, _] = a.history(2)
        with b.write():
            b.create(Note, _id="mine", text="b's own")
        own = _heads(b)
        for page in _all_pages(a):
            b.integrate_snapshot(page.docs, peer=a.replica_id, as_of_seq=page.as_of_seq)
        [seen] = _heads(b) - own
        assert seen[18:] == a.replica_id and seen >= edit.id   # the edit's stamp, the latest of a's
        assert _heads(b) >= own
        with b.write():
            b.get(Note, "n0").text = "three"
        [entry] = b.history(1)
        assert set(entry.parents) == own | {seen}   # a's edit is in its causal past
        assert _heads(b) == {entry.id}              # the next write took them all


def test_states_in_every_form_are_read(tmp_path) -> None:
    full = {"epoch": "", "live": True, "body": {"_id": "x", "text": "t", "tags": ["a"]},
            "meta": {"k": "object", "c": {"text": {"k": "value", "vk": "~" + _stamp(9, "cc" * 8)}}}}
    tomb = {"epoch": _stamp(12, "dd" * 8), "live": False, "body": {}, "meta": {}}
    with tidesync.open(tmp_path / "b.db", schema=[Note]) as b:
        docs = (SnapshotDoc("Note", "x", full), SnapshotDoc("Note", "y", tomb),
                SnapshotDoc.from_json_form("Note", "z", "", True, '{"_id":"z"}',
                                           '{"*":"' + _stamp(7, "cc" * 8) + '"}'))
        before = _heads(b)
        b.integrate_snapshot(docs, peer=OTHER, as_of_seq=None)
        assert _heads(b) - before == {_stamp(9, "cc" * 8), _stamp(12, "dd" * 8)}


def test_own_and_already_reached_origins_are_not_taken_and_older_seen_heads_are_replaced(tmp_path) -> None:
    with tidesync.open(tmp_path / "b.db", schema=[Note]) as b:
        with b.write():
            b.create(Note, _id="x")
        [mine] = _heads(b)

        def join(key: str, stamp: str) -> None:
            b.integrate_snapshot((SnapshotDoc.from_json_form("Note", key, "", True, '{"_id":"%s"}' % key,
                                                             '{"*":"' + stamp + '"}'),), peer=OTHER, as_of_seq=None)

        join("own", _stamp(1, b.replica_id))        # this replica's own writes: its heads reach them
        assert _heads(b) == {mine}
        join("c1", _stamp(5, "cc" * 8))
        join("c0", _stamp(3, "cc" * 8))             # older than what is held: nothing
        assert _heads(b) == {mine, _stamp(5, "cc" * 8)}
        join("c2", _stamp(8, "cc" * 8))             # newer: replaces the older seen head
        assert _heads(b) == {mine, _stamp(8, "cc" * 8)}


def test_at_most_max_seen_origins_are_kept_the_latest(tmp_path) -> None:
    with tidesync.open(tmp_path / "b.db", schema=[Note]) as b:
        n = MAX_SEEN_ORIGINS + 5
        docs = tuple(SnapshotDoc.from_json_form("Note", f"k{i}", "", True, '{"_id":"k%d"}' % i,
                                                '{"*":"' + _stamp(100 + i, f"{i:016x}") + '"}') for i in range(n))
        b.integrate_snapshot(docs, peer=OTHER, as_of_seq=None)
        assert _heads(b) == {_stamp(100 + i, f"{i:016x}") for i in range(5, n)}


class Bare(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)


def test_a_create_that_no_key_carries_still_moves_the_clock_and_the_seen_heads(tmp_path) -> None:
    # Two concurrent creates of a document of _id alone: joining them expands the meta, where
    # no field's key carries a create's stamp; the later create's stamp is kept ("t") so the
    # joining replica's clock moves past it, and a replica bootstrapping from it sees it.
    ahead = _stamp(int(time.time() * 1000) + 10 * 86_400_000, "cc" * 8)   # a peer's clock ahead
    with tidesync.open(tmp_path / "b.db", schema=[Bare]) as b, tidesync.open(tmp_path / "c.db", schema=[Bare]) as c:
        with b.write():
            b.create(Bare, _id="x")
        b.integrate_snapshot((SnapshotDoc.from_json_form("Bare", "x", "", True, '{"_id":"x"}', '{"*":"' + ahead + '"}'),),
                             peer=OTHER, as_of_seq=None)
        state = b.document_state("Bare", "x")
        assert "*" not in state.meta and latest_stamp(state) == ahead
        with b.write():
            b.create(Bare, _id="y")
        [entry] = b.history(1)
        assert entry.id > ahead                  # stamped after the create it joined
        before = _heads(c)
        for page in _all_pages(b):
            c.integrate_snapshot(page.docs, peer=b.replica_id, as_of_seq=page.as_of_seq)
        assert ahead in _heads(c) - before       # c has seen the other origin's create
        with c.write():
            c.create(Bare, _id="z")
        assert c.history(1)[0].id > ahead
