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


# -- refused where it is written --------------------------------------------------------------
# Each way in refuses the str at the statement that writes it (not at the commit, which would
# lose the whole write), naming the model and the field; the write goes on without it.


class Spot(tidesync.EmbeddedModel):
    street: str = ""


class Card(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    text: str = ""
    maybe: str | None = None
    n: int = 0
    tags: list[str] = tidesync.field(default_factory=list)
    labels: set[str] = tidesync.field(default_factory=set)
    notes: dict[str, str] = tidesync.field(default_factory=dict)
    extra: tidesync.Mixed = None
    spot: Spot | None = None


class Flat(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    text: str = ""
    n: int = 0


N = 40  # past the bulk paths' thresholds (columns records from 32 documents)


@pytest.fixture
def cards(tmp_path):
    with tidesync.open(tmp_path / "c.db", schema=[Card, Flat]) as d:
        with d.write():
            d.create(Card, _id="a", text="before", tags=["t"], labels={"l"}, notes={"k": "v"}, spot=Spot(street="s"))
            d.create_many(Flat, [{"_id": f"f{i:02}", "text": "old"} for i in range(N)])
        yield d


def _loop(d, ascii_before: bool) -> None:
    for i in range(N):
        d.get(Flat, f"f{i:02}").text = LONE if i == N - 1 else "new" if ascii_before else "nëw"


def _state(d) -> list[object]:
    cards = [(c._id, c.text, c.maybe, list(c.tags), sorted(c.labels), dict(c.notes), c.extra,
              c.spot.street if c.spot else None) for c in d.objects(Card).sort("_id")]
    return [cards, [(f._id, f.text, f.n) for f in d.objects(Flat).sort("_id")]]


ENTRY_POINTS = {
    "assign (fast path)": ("Card.text", lambda d: setattr(d.get(Card, "a"), "text", LONE)),
    "assign an optional str": ("Card.maybe", lambda d: setattr(d.get(Card, "a"), "maybe", LONE)),
    "assign in a loop of ascii": ("Flat.text", lambda d: _loop(d, True)),
    "assign in a loop of non-ascii": ("Flat.text", lambda d: _loop(d, False)),
    "assign an embedded object's field": ("Spot.street", lambda d: setattr(d.get(Card, "a").spot, "street", LONE)),
    "assign an embedded object": ("Card.spot", lambda d: setattr(d.get(Card, "a"), "spot", {"street": LONE})),
    "assign a list": ("Card.tags", lambda d: setattr(d.get(Card, "a"), "tags", ["ok", LONE])),
    "assign a dict key": ("Card.notes", lambda d: setattr(d.get(Card, "a"), "notes", {LONE: "v"})),
    "assign a Mixed str": ("Card.extra", lambda d: setattr(d.get(Card, "a"), "extra", LONE)),
    "assign a Mixed list": ("Card.extra", lambda d: setattr(d.get(Card, "a"), "extra", [1, [LONE]])),
    "assign a Mixed dict value": ("Card.extra", lambda d: setattr(d.get(Card, "a"), "extra", {"k": LONE})),
    "assign a Mixed dict key": ("Card.extra", lambda d: setattr(d.get(Card, "a"), "extra", {LONE: 1})),
    "list append": ("Card.tags", lambda d: d.get(Card, "a").tags.append(LONE)),
    "list insert": ("Card.tags", lambda d: d.get(Card, "a").tags.insert(0, LONE)),
    "list item": ("Card.tags", lambda d: d.get(Card, "a").tags.__setitem__(0, LONE)),
    "list extend": ("Card.tags", lambda d: d.get(Card, "a").tags.extend(["ok", LONE])),
    "set add": ("Card.labels", lambda d: d.get(Card, "a").labels.add(LONE)),
    "dict value": ("Card.notes", lambda d: d.get(Card, "a").notes.__setitem__("k2", LONE)),
    "dict key": ("Card.notes", lambda d: d.get(Card, "a").notes.__setitem__(LONE, "v")),
    "create": ("Card.text", lambda d: d.create(Card, _id="b", text=LONE)),
    "create (lean path)": ("Flat.text", lambda d: d.create(Flat, _id="b", text=LONE)),
    "create a key": ("Flat._id", lambda d: d.create(Flat, _id=LONE)),
    "create a Mixed": ("Card.extra", lambda d: d.create(Card, _id="b", extra={"a": [LONE]})),
    "create (update=)": ("Flat.text", lambda d: d.create(Flat, {"_id": "f01", "text": LONE}, update="modified")),
    "create_many (bulk path)": ("Flat.text", lambda d: d.create_many(
        Flat, [{"_id": f"n{i:02}", "text": LONE if i == N - 1 else "ok"} for i in range(N)])),
    "create_many a key": ("Flat._id", lambda d: d.create_many(
        Flat, [{"_id": LONE if i == N - 1 else f"n{i:02}"} for i in range(N)])),
    "create_many (general path)": ("Card.tags", lambda d: d.create_many(
        Card, [{"_id": f"n{i:02}", "tags": [LONE if i == N - 1 else "ok"]} for i in range(N)])),
    "create_many (update=, uniform)": ("Flat.text", lambda d: d.create_many(
        Flat, [{"_id": f"f{i:02}", "text": LONE if i == N - 1 else "ok"} for i in range(N)], update="modified")),
    "create_many (update=, a key)": ("Flat._id", lambda d: d.create_many(
        Flat, [{"_id": LONE, "n": 1}], update="all")),
    "create_many (update=, mixed items)": ("Flat.text", lambda d: d.create_many(
        Flat, [{"_id": f"f{i:02}", "text": LONE} if i == 5 else {"_id": f"f{i:02}", "n": 3} for i in range(N)],
        update="all")),
    "an unmanaged object": ("Card.text", lambda d: Card(_id="u", text=LONE)),
}


@pytest.mark.parametrize("how", list(ENTRY_POINTS))
def test_a_lone_surrogate_is_refused_where_it_is_written_and_the_write_goes_on(cards, how) -> None:
    where, write = ENTRY_POINTS[how]
    before = _state(cards)
    with cards.write():
        with pytest.raises(tidesync.ValidationError, match=rf"^{where.replace('.', '[.]')}\b.*surrogate") as caught:
            write(cards)
        cards.create(Flat, _id="z", text="after")   # the write transaction goes on
    assert "remove the lone half" in str(caught.value)
    after = _state(cards)
    assert after[1][-1] == ("z", "after", 0)
    assert LONE not in repr(after)
    if how.startswith("assign in a loop"):   # the loop's assignments before the refused one stay
        assert after[0] == before[0]
        assert [t for _, t, _ in after[1][:N - 1]] == ["new" if "of ascii" in how else "nëw"] * (N - 1)
        assert after[1][N - 1] == ("f39", "old", 0)
    elif how == "list extend":   # a loop of append (as with an element of the wrong type): "ok" stays
        assert after[0][0][3] == ["t", "ok"] and after[1][:-1] == before[1]
    else:   # (create_many: all or nothing)
        assert after[0] == before[0] and after[1][:-1] == before[1]


def test_non_ascii_text_is_stored_on_every_path(cards) -> None:
    """The check lets text that is not ASCII through (a character beyond the BMP is one code
    point in Python, not a surrogate pair)."""
    text = "naïve 日本 \U0001f600"
    with cards.write():
        cards.get(Card, "a").text = text
        cards.get(Card, "a").tags.append(text)
        cards.get(Card, "a").notes[text] = text
        cards.get(Card, "a").extra = {text: [text]}
        cards.create_many(Flat, [{"_id": f"{text}{i}", "text": text} for i in range(N)])
        cards.create_many(Flat, [{"_id": f"f{i:02}", "text": text} for i in range(N)], update="modified")
    c = cards.get(Card, "a")
    assert (c.text, c.tags[-1], c.notes[text], c.extra) == (text, text, text, {text: [text]})
    assert {f.text for f in cards.objects(Flat)} == {text}
