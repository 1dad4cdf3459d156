"""A uniform one-field ``create_many(..., update=...)`` chunk, and an assignment loop committed
as columns, read their bodies whole and splice the new value into them (``_split_bodies``,
``_member_texts``) instead of having SQLite parse each body twice (``body -> '$."f"'`` for the
old value, ``json_set`` for the new body): the spliced bodies are ``json_set``'s text and the
old values cut from them what ``->`` reads; bodies that do not split exactly (the field absent,
an object in it) or values that need escaping go the ``json_set`` way. Both ways give the same
rows (meta text included), merge states, log, descriptors, revert and peer documents."""

from __future__ import annotations

import json
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

import tidesync
from tidesync.core.values import compact_encoder
from tidesync.store import database
from tests.store.test_create_bulk import BulkNote, _norm
from tests.store.test_update_bulk import _before_sorted, _outcome

_dumps = compact_encoder()
N = 120


def _key(i: int) -> str:
    return f"s{i:04d}"


def _scenario(db):
    with db.write():
        db.create_many(BulkNote, [{"_id": _key(i), "title": f't{i} "q" \\' if i % 7 == 0 else f"t{i}",
                                   "priority": i % 4, "extra": f"e{i}" if i % 2 else None} for i in range(N)])
    # Bodies this path must not splice: the field absent (a file older than the field), an
    # object inside holding a member of the field's name (with and without the top-level one).
    db._engine.run("UPDATE documents SET body = json_remove(body, '$.priority') WHERE pk = '\"s0031\"'")
    db._engine.run("UPDATE documents SET body = json_set(body, '$.o', json('{\"priority\":9}')) "
                   "WHERE pk = '\"s0062\"'")
    db._engine.run("UPDATE documents SET body = json_set(json_remove(body, '$.priority'), '$.o', "
                   "json('{\"a\":1,\"priority\":9}')) WHERE pk = '\"s0093\"'")
    db._cache.clear()
    keys = [_key(i) for i in range(N)]
    with db.write():  # int, clean bodies
        db.create_many(BulkNote, [{"_id": k, "priority": 7} for k in keys[:30]], update="all")
    for lo in (30, 60, 90):  # each chunk holds one body that does not split
        with db.write():
            db.create_many(BulkNote, [{"_id": k, "priority": n % 3} for n, k in enumerate(keys[lo:lo + 30])],
                           update="modified")
    with db.write():  # str: plain (spliced), then one that needs escaping (json_set)
        db.create_many(BulkNote, [{"_id": k, "title": f"new {n} é"} for n, k in enumerate(keys[:40])],
                       update="modified")
    with db.write():
        db.create_many(BulkNote, [{"_id": k, "title": f'n"{n}\n'} for n, k in enumerate(keys[:20])],
                       update="modified")
    with db.write():  # old string values with escapes, a value not printable
        db.create_many(BulkNote, [{"_id": k, "status": "done"} for k in keys[::7]], update="all")
    with db.write():
        db.create_many(BulkNote, [{"_id": k, "status": "a\u2028b"} for k in keys[1::7]], update="all")
    with db.write():  # float and bool, some unchanged
        db.create_many(BulkNote, [{"_id": k, "score": n / 3 if n % 2 else 0.0} for n, k in enumerate(keys[:50])],
                       update="modified")
    with db.write():
        db.create_many(BulkNote, [{"_id": k, "flag": n % 2 == 0} for n, k in enumerate(keys[:50])],
                       update="modified")
    with db.write():  # rows whose meta has an overlay already (a second write of the field)
        for o in list(db.objects(BulkNote))[:10]:
            o.priority = 11
    with db.write():  # a loop over a body holding an object: json_set
        for o in list(db.objects(BulkNote))[85:100]:
            o.priority = 13
    with db.write():  # a loop, then a read of one of its objects: pending documents
        objs = list(db.objects(BulkNote))[60:70]
        for o in objs:
            o.priority = 14
        assert objs[2].priority == 14
    with db.write():
        db.create_many(BulkNote, [{"_id": k, "priority": 12} for k in keys[:20]], update="all")
    before, after, entries, revert, docs = _outcome(db, 3, [BulkNote], meta=True)
    return _before_sorted(before), _before_sorted(after), entries, revert, docs


def test_spliced_bodies_give_what_json_set_gives(tmp_path, monkeypatch):
    spliced: list[bool] = []
    split = database._split_bodies

    def recorded(joined, n, name):
        parts = split(joined, n, name)
        spliced.append(parts is not None)
        return parts
    monkeypatch.setattr(database, "_split_bodies", recorded)
    with tidesync.open(tmp_path / "s.db", schema=[BulkNote]) as db:
        fast = _scenario(db)
    # the chunks asked to split: int 4 (three of them with a body that does not split: the field
    # absent, an object in it), str 1 (the one needing escapes never reads bodies), status 1 (of
    # 2), float 1, bool 1, the loops' commits (the second's bodies do not split: then each is
    # asked alone, one holding an object), the third loop's old values one by one (a read turned
    # it into pending documents; one body holds an object), the last chunk
    assert spliced == [True, False, False, False, True, True, True, True, True, False] + [True] * 8 + [False] + [
        True] * 6 + [True] * 2 + [False] + [True] * 7 + [True]
    monkeypatch.undo()
    monkeypatch.setattr(database, "_member_texts", lambda kind, name, values: None)  # json_set always
    with tidesync.open(tmp_path / "j.db", schema=[BulkNote]) as db:
        json_set = _scenario(db)
    assert _norm(fast[:2]) == _norm(json_set[:2])
    assert _norm(fast[4]) == _norm(json_set[4])
    assert len(fast[2]) == len(json_set[2]) and _norm(fast[3]) == _norm(json_set[3])


def test_split_bodies_finds_only_a_top_level_member_once_in_each_body():
    split = database._split_bodies
    bodies = ['{"_id":"a","xpriority":1,"priority":2}', '{"_id":"b","priority":"x\\",\\"priority\\":3","z":4}']
    parts = split("\x1e".join(bodies), 2, "priority")
    assert parts is not None and parts[1::2] == ["2", '"x\\",\\"priority\\":3"']

    for bad in (['{"_id":"a","priority":1,"priority":2}', '{"_id":"b"}'],  # twice in one, absent in the other
                ['{"_id":"a","o":{"priority":1}}', '{"_id":"b","priority":2}'],  # only inside an object
                ['{"_id":"a","o":{"priority":1},"priority":3}', '{"_id":"b","priority":2}'],  # an object
                ['{"_id":"a","priority":3,"o":{"p":1}}', '{"_id":"b","priority":2}'],
                ['{"_id":"a","priority":[1,2]}', '{"_id":"b","priority":2}'],  # not a scalar
                ['{"_id":"a","priority":{"v":1}}', '{"_id":"b","priority":2}'],
                ['{"_id":"a", "priority": 1}', '{"_id":"b","priority":2}'],  # not minified
                ['{"priority":1,"_id":"a"}', '{"_id":"b","priority":2}']):  # first: no comma before it
        assert split("\x1e".join(bad), 2, "priority") is None, bad


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                     st.text("{}[]\\\",:f\x1e\u2028é", max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "f", "ff", "b_1"]), _scalars, max_size=4),
       st.sampled_from(["int", "str", "float", "bool"]), st.data())
def test_a_spliced_body_is_json_sets_text(body, kind, data):
    new = data.draw({"int": st.integers(-2**63, 2**63 - 1), "str": st.text(max_size=12),
                     "float": st.floats(allow_nan=False, allow_infinity=False), "bool": st.booleans()}[kind])
    doc = {"_id": "k", **body}
    text = _dumps(doc)
    members = database._member_texts(kind, "f", [new])
    parts = database._split_bodies(text, 1, "f")
    con = sqlite3.connect(":memory:")
    direct = kind in ("int", "str")
    expected = con.execute(f"""SELECT json_set(?, '$."f"', {'?' if direct else 'json(?)'})""",
                           (text, new if direct else _dumps(new))).fetchone()[0]
    old = con.execute("""SELECT ? -> '$."f"'""", (text,)).fetchone()[0]
    if parts is not None:
        assert parts[1] == old
        if members is not None:
            parts[1::2] = members
            assert "".join(parts) == expected
            assert json.loads(expected)["f"] == new
    if "f" in body:
        # only a brace in a string keeps a body with the field from splitting (it is counted
        # as an object's)
        assert (parts is None) == any(type(v) is str and "{" in v for v in doc.values())
    else:
        assert parts is None
    if members is not None:  # each value's member made once when values repeat
        assert database._member_texts(kind, "f", [new, new, new]) == members * 3


_values = st.one_of(_scalars, st.dictionaries(st.sampled_from(["f", "a"]), _scalars, max_size=2),
                    st.lists(_scalars, max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["a", "f", "ff", "o"]), _values, max_size=4), min_size=1,
                max_size=5))
def test_bodies_split_together_as_each_alone(bodies):
    texts = [_dumps({"_id": "k", **b}) for b in bodies]
    alone = [database._split_bodies(t, 1, "f") for t in texts]
    together = database._split_bodies("\x1e".join(texts), len(texts), "f")
    assert (together is not None) == all(p is not None for p in alone)
    if together is not None:
        assert together[1::2] == [p[1] for p in alone if p is not None]
    con = sqlite3.connect(":memory:")
    for t, p in zip(texts, alone):
        if p is not None:  # the old value is what -> reads, the splice what json_set writes
            assert p[1] == con.execute("""SELECT ? -> '$."f"'""", (t,)).fetchone()[0]
            p[1] = ',"f":0'
            assert "".join(p) == con.execute("""SELECT json_set(?, '$."f"', 0)""", (t,)).fetchone()[0]
