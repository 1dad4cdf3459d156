"""A str holding half of a UTF-16 surrogate pair is not Unicode text: SQLite cannot store or
search for it. Every way in gets a ValidationError that says so, and nothing changes."""

from __future__ import annotations

import pytest

import tidesync

LONE = "ok \ud800 then"


class Memo(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    text: str = ""
    tags: list[str] = tidesync.field(default_factory=list)


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "m.db", schema=[Memo]) as d:
        with d.write():
            d.create(Memo, _id="a", text="before")
        yield d


def _rows(db) -> list[tuple[str, str, list[str]]]:
    return [(m._id, m.text, list(m.tags)) for m in db.objects(Memo).sort("_id")]


WRITES = {
    "create": lambda d: d.create(Memo, _id="b", text=LONE),
    "create_many": lambda d: d.create_many(Memo, [{"_id": "b", "text": "fine"}, {"_id": "c", "text": LONE}]),
    "upsert": lambda d: d.create(Memo, {"_id": "a", "text": LONE}, update="modified"),
    "assign": lambda d: setattr(d.get(Memo, "a"), "text", LONE),
    "list append": lambda d: d.get(Memo, "a").tags.append(LONE),
    "key": lambda d: d.create(Memo, _id=LONE),
}


@pytest.mark.parametrize("how", list(WRITES))
def test_a_write_of_a_lone_surrogate_is_refused_and_changes_nothing(db, how) -> None:
    before = (_rows(db), db.history(5))
    with pytest.raises(tidesync.ValidationError, match="surrogate"):
        with db.write():
            WRITES[how](db)
    assert (_rows(db), db.history(5)) == before


@pytest.mark.parametrize("query", [
    lambda d: d.objects(Memo).filter("text == $0", LONE),
    lambda d: d.objects(Memo).filter({"text": LONE}),
    lambda d: d.objects(Memo).filter("text BEGINSWITH $0", LONE),
])
def test_a_query_for_a_lone_surrogate_is_refused(db, query) -> None:
    with pytest.raises(tidesync.ValidationError, match="surrogate"):
        len(query(db))


def test_a_pair_written_as_two_escapes_in_a_query_finds_its_character(db) -> None:
    with db.write():
        db.create(Memo, _id="e", text="\U0001f600")
    assert [m._id for m in db.objects(Memo).filter("text == '\\ud83d\\ude00'")] == ["e"]
    with pytest.raises(tidesync.QueryError, match="surrogate"):
        db.objects(Memo).filter("text == '\\ud83d'")


def test_an_integrated_transaction_holding_a_lone_surrogate_is_refused_and_changes_nothing(tmp_path) -> None:
    from tidesync.core.operations import CreateDoc
    from tidesync.core.transaction import Transaction
    from tidesync.store.database import Database

    origin = "00000000000000ab"
    stamp = f"{5:012x}000000{origin}"
    bad = Transaction(stamp, origin, stamp, (), (CreateDoc("Memo", "x", stamp, "", {"_id": "x", "text": LONE}, {}),))
    db = Database(tmp_path / "server.db", ())
    try:
        with pytest.raises(tidesync.ValidationError, match="surrogate"):
            db.integrate([bad], peer=origin, peer_seq=1)
        assert db.head_seq() == 0 and db._engine.query("SELECT count(*) FROM documents") == [(0,)]
    finally:
        db.close()
