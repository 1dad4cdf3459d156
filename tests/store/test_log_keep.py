"""tidesync.open(..., log_keep=N): the log keeps about the newest N transactions; without sync
it trims now and then, with sync never past what the server acknowledged."""

from __future__ import annotations

import pytest

import tidesync
from tests.models import Technician


def log_seqs(db):
    return [r[0] for r in db._engine.query("SELECT seq FROM log ORDER BY seq")]


def test_without_sync_the_log_keeps_about_the_newest_entries(tmp_path):
    with tidesync.open(tmp_path / "d.db", schema=[Technician], log_keep=20) as db:
        ids = []
        for i in range(300):
            with db.write():
                db.create(Technician, _id=f"t{i}", name="x")
            ids.append(db.history(1)[0].id)
        seqs = log_seqs(db)
        assert seqs[-1] == 300 and db.last_seq == 300
        assert 20 <= len(seqs) < 20 + 100 + 100                 # trimmed every 100 commits, 100 at least
        assert seqs == list(range(seqs[0], 301)) and db.log_floor() == seqs[0] - 1
        assert len(db.objects(Technician)) == 300                 # documents stay
        assert [e.id for e in db.history(3)] == ids[:-4:-1]
        with pytest.raises(tidesync.RevertError, match="log_keep"):
            db.revert(ids[0])
        assert db.revert(ids[-1]).restored                        # a kept one still reverts
        with pytest.raises(tidesync.UsageError, match="trimmed"):
            db.export_transactions(0)
        assert len(db.export_transactions(db.log_floor())) == len(log_seqs(db))


def test_by_default_and_with_a_large_keep_nothing_is_dropped(tmp_path):
    for keep in (None, 1000):
        with tidesync.open(tmp_path / f"d{keep}.db", schema=[Technician], log_keep=keep) as db:
            for i in range(250):
                with db.write():
                    db.create(Technician, _id=f"t{i}", name="x")
            assert log_seqs(db) == list(range(1, 251)) and db.log_floor() == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_a_bad_log_keep_is_a_usage_error(tmp_path, bad):
    with pytest.raises(tidesync.UsageError, match="log_keep"):
        tidesync.open(tmp_path / "d.db", schema=[Technician], log_keep=bad)


class _NoSync:
    """Stands in for the sync session's place on the database (nothing is sent anywhere)."""

    def local_commit(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_with_sync_nothing_after_the_acknowledged_seq_is_dropped(tmp_path):
    with tidesync.open(tmp_path / "d.db", schema=[Technician], log_keep=5) as db:
        db._sync = _NoSync()                                  # as when opened with sync: no trimming on commit
        for i in range(300):
            with db.write():
                db.create(Technician, _id=f"t{i}", name="x")
        assert db.log_floor() == 0
        db._record_sync_checkpoint("00000000000000ab", None, 50)   # too few acknowledged to trim
        assert db.log_floor() == 0
        db._record_sync_checkpoint("00000000000000ab", None, 180)  # the server holds up to 180
        assert db.log_floor() == 180 and log_seqs(db)[0] == 181
        db._record_sync_checkpoint("00000000000000ab", None, 300)
        assert db.log_floor() == 295 and len(log_seqs(db)) == 5
        db._sync = None
