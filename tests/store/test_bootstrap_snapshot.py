"""When a server (``bootstrap_with_snapshot``) answers a peer with an empty checkpoint with a
snapshot: a fresh peer joining a log that holds something for it bootstraps from a snapshot; a
peer that connected while the log held nothing for it, and uploaded, never gets its own
uploads back as a snapshot."""

from __future__ import annotations

from tidesync.core.operations import CreateDoc
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database

P = "00000000000000aa"   # the device that uploaded first
Q = "00000000000000bb"   # a fresh device
R = "00000000000000cc"   # another device


def _scope(value: str) -> dict:
    return {"partition": {"key": "_partition", "value": value}}


def _upload(db: Database, origin: str, n: int, partition: str) -> None:
    stamp = f"{n:016x}00{origin}"
    op = CreateDoc("Doc", f"{origin}-{n}", stamp, "", {"_id": f"{origin}-{n}", "_partition": partition}, {})
    db.integrate([Transaction(stamp, origin, stamp, (), (op,))], peer=origin, peer_seq=n)


def _read(db: Database, peer: str, scope: dict, after: int = 0):
    return db.read_log(after, limit=100, max_bytes=1 << 20, scope=scope, exclude_origin=peer)


def _server(tmp_path) -> Database:
    return Database(tmp_path / "server.db", (), partition_key="_partition", bootstrap_with_snapshot=True)


def test_a_device_that_uploaded_to_an_empty_log_gets_no_snapshot_of_its_own_documents(tmp_path):
    db = _server(tmp_path)
    try:
        first = _read(db, P, _scope("a"))
        assert not first.snapshot_required and first.head == 0 and first.scanned_to == 0
        for n in range(1, 4):
            _upload(db, P, n, "a")
        for scope in (_scope("a"), {}):
            batch = _read(db, P, scope)
            assert not batch.snapshot_required
            assert batch.entries == () and batch.scanned_to == batch.head == 3
        # Another device's later writes reach it through the log.
        _upload(db, R, 4, "a")
        batch = _read(db, P, _scope("a"))
        assert not batch.snapshot_required and [seq for seq, _ in batch.entries] == [4]
        # A fresh device joining the partition still bootstraps from a snapshot.
        assert _read(db, Q, _scope("a")).snapshot_required
        assert _read(db, Q, {}).snapshot_required
        assert _read(db, Q, _scope("b")).snapshot_required
        assert _read(db, R, _scope("a")).snapshot_required  # its first entry is after P's
        assert _read(db, None, {}).snapshot_required
        # A checkpoint behind compacted history always needs one, even the first uploader's.
        db.compact_log(keep_last=1)
        assert _read(db, P, _scope("a")).snapshot_required
        assert _read(db, P, _scope("a"), after=2).snapshot_required
        assert not _read(db, P, _scope("a"), after=3).snapshot_required
    finally:
        db.close()


def test_entries_of_other_partitions_before_the_upload_do_not_call_for_a_snapshot(tmp_path):
    db = _server(tmp_path)
    try:
        _upload(db, R, 1, "b")     # out of P's scope, before P's upload
        _upload(db, P, 2, "a")
        _upload(db, R, 3, "a")
        batch = _read(db, P, _scope("a"))
        assert not batch.snapshot_required and [seq for seq, _ in batch.entries] == [3]
        # Unscoped, R's first entry is one P lacks: a snapshot.
        assert _read(db, P, {}).snapshot_required
        # In scope first, then P's own: P lacks the first, a snapshot.
        assert _read(db, Q, _scope("b")).snapshot_required
        _upload(db, Q, 4, "b")
        assert _read(db, Q, _scope("b")).snapshot_required
    finally:
        db.close()


def test_a_peer_behind_a_joined_snapshot_still_bootstraps(tmp_path):
    # A server whose own state partly came from a snapshot (joined from J) must pass it on to
    # a peer whose checkpoint is before that, even one that uploaded first.
    from tidesync.protocol.messages import SnapshotDoc

    db = _server(tmp_path)
    try:
        _upload(db, P, 1, "a")
        doc = SnapshotDoc("Doc", "j", {"epoch": "", "live": True, "body": {"_id": "j", "_partition": "a"},
                                       "meta": {"*": f"{9:016x}00{'d' * 16}"}})
        db.integrate_snapshot([doc], peer="dddddddddddddddd", as_of_seq=1)
        _upload(db, P, 2, "a")
        assert _read(db, P, _scope("a")).snapshot_required
    finally:
        db.close()


def test_a_fresh_device_is_answered_without_decoding_any_log_entry(tmp_path, monkeypatch):
    """The check is made on every read of a peer at checkpoint 0 (every page of its
    bootstrap): for a peer with no entry of its own it reads origins only, no entry's data."""
    db = _server(tmp_path)
    try:
        for n in range(1, 6):
            _upload(db, R, n, "a")
        decoded = []
        real = Database._refs_in_scope
        monkeypatch.setattr(Database, "_refs_in_scope",
                            lambda self, refs, want: decoded.append(want) or real(self, refs, want))
        for _ in range(3):
            assert _read(db, Q, _scope("a")).snapshot_required
        assert decoded == []
        # A device whose first entry comes after others' has those decoded (they concern it).
        _upload(db, P, 6, "b")
        assert not _read(db, P, _scope("b")).snapshot_required  # R's entries are not in b
        assert decoded
    finally:
        db.close()
