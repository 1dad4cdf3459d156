"""Log entries read back unfiltered are unpacked only when a field is first read: an upload
splices their stored bytes into its ``Changes`` without decoding them. They must be the
transactions an eager decode gives, and encode to the same bytes."""

from __future__ import annotations

import pickle
from pathlib import Path

import msgpack
import pytest

import tidesync
from tidesync.core.transaction import Transaction
from tidesync.protocol import codec
from tidesync.protocol.messages import Changes
from tidesync.store.replica import _unpack_stored


class Note(tidesync.Model):
    title: str = ""
    n: int = 0


def _device(tmp_path: Path) -> tidesync.Database:
    db = tidesync.open(tmp_path / "device.db", schema=[Note])
    for i in range(3):
        with db.write():
            for j in range(4):
                db.create(Note, {"title": f"t{i}-{j}", "n": j})
    with db.write():
        db.create(Note, {"title": "last"})
    return db


def _eager(t: Transaction) -> Transaction:
    data = t.packed()
    assert data is not None
    return Transaction.from_stored(msgpack.unpackb(data, raw=False), data)


def test_entries_are_not_decoded_until_read_and_then_equal(tmp_path: Path) -> None:
    db = _device(tmp_path)
    try:
        batch = db.read_log(0, limit=100, max_bytes=1 << 20, scope={}, exclude_origin=None)
        assert len(batch.entries) == 4
        for _, t in batch.entries:
            with pytest.raises(AttributeError):
                object.__getattribute__(t, "ops")  # not unpacked yet
        payload = codec.encode(Changes(0, batch.scanned_to, batch.head, batch.entries))
        for _, t in batch.entries:
            with pytest.raises(AttributeError):
                object.__getattribute__(t, "id")  # encoding spliced the stored bytes
        decoded = codec.decode(payload)
        eager = [(seq, _eager(t)) for seq, t in batch.entries]
        assert [(s, t.id, t.ops) for s, t in decoded.entries] == [(s, t.id, t.ops) for s, t in eager]
        for (_, lazy), (_, full) in zip(batch.entries, eager):
            assert lazy == full and full == lazy
            assert lazy.to_wire() == full.to_wire()
            assert lazy.refs() == full.refs() and lazy.descriptor() == full.descriptor()
            assert lazy.packed() == full.packed()
        assert codec.encode(Changes(0, batch.scanned_to, batch.head, tuple(eager))) == payload
    finally:
        db.close()


def test_unknown_attributes_still_raise(tmp_path: Path) -> None:
    db = _device(tmp_path)
    try:
        _, t = db.read_log(0, limit=1, max_bytes=1 << 20, scope={}, exclude_origin=None).entries[0]
        with pytest.raises(AttributeError, match="no_such_field"):
            getattr(t, "no_such_field")
        assert isinstance(t.ops, tuple)  # the failed lookup did not break it
    finally:
        db.close()


def test_lazy_transaction_survives_pickle(tmp_path: Path) -> None:
    db = _device(tmp_path)
    try:
        _, t = db.read_log(0, limit=1, max_bytes=1 << 20, scope={}, exclude_origin=None).entries[0]
        copy = pickle.loads(pickle.dumps(t))
        assert copy == _eager(t)
    finally:
        db.close()


def test_stored_lazily_directly() -> None:
    db_free = Transaction("0" * 16 + "00" + "00000000000000aa", "00000000000000aa",
                          "0" * 16 + "00" + "00000000000000aa", (), ())
    data = msgpack.packb(db_free.to_wire(), use_bin_type=True)
    lazy = Transaction.stored_lazily(data, _unpack_stored)
    assert lazy.packed() == data
    assert lazy == db_free and lazy.stamp == db_free.stamp and lazy.meta == {}
