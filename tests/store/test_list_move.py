"""ManagedList.move and swap on a real file: Realm's List.move(from, to) and List.swap, kept
as one operation that moves the element itself (so concurrent edits of it follow it, and the
later of two moves wins), through the SQLite store, the log, revert, listeners and the
exchange of transactions between two files."""

from __future__ import annotations

import threading
import time

import pytest

import tidesync
from tests.models import Technician, WorkOrder


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "d.db", schema=[WorkOrder, Technician]) as db:
        yield db


def _order(db, tags):
    with db.write():
        return db.create(WorkOrder, title="t", tags=list(tags))


@pytest.mark.parametrize("src, dst, expected", [
    (0, 2, ["b", "c", "a", "d"]),
    (2, 0, ["c", "a", "b", "d"]),
    (0, 3, ["b", "c", "d", "a"]),
    (3, 1, ["a", "d", "b", "c"]),
    (-1, 0, ["d", "a", "b", "c"]),
    (1, -1, ["a", "c", "d", "b"]),
])
def test_move_puts_the_element_at_the_target_index(db, src, dst, expected):
    wo = _order(db, "abcd")
    with db.write():
        wo.tags.move(src, dst)
    assert list(wo.tags) == expected
    python = list("abcd")
    python.insert(dst if dst >= 0 else len(python) + dst, python.pop(src))
    assert python == expected


def test_swap_exchanges_two_elements(db):
    wo = _order(db, "abcde")
    with db.write():
        wo.tags.swap(0, 3)
    assert list(wo.tags) == ["d", "b", "c", "a", "e"]
    with db.write():
        wo.tags.swap(-1, 1)
    assert list(wo.tags) == ["d", "e", "c", "a", "b"]


def test_a_move_in_place_writes_nothing_and_bad_indexes_raise(db):
    wo = _order(db, "abc")
    before = len(db.history(limit=100))
    with db.write():
        wo.tags.move(1, 1)
        wo.tags.swap(2, 2)
    assert len(db.history(limit=100)) == before
    for src, dst in ((3, 0), (0, 3), (-4, 0)):
        with pytest.raises(IndexError), db.write():
            wo.tags.move(src, dst)
    with pytest.raises(tidesync.TidesyncError):
        wo.tags.move(0, 1)                    # outside a write
    assert list(wo.tags) == ["a", "b", "c"]


def test_moved_elements_keep_their_place_for_later_edits_and_across_reopening(tmp_path):
    path = tmp_path / "m.db"
    with tidesync.open(path, schema=[WorkOrder, Technician]) as db:
        wo = _order(db, "abcd")
        pk = wo._id
        with db.write():
            wo.tags.move(0, 3)                # b c d a
            wo.tags.insert(3, "x")            # b c d x a
            wo.tags[4] = "A"                  # the moved element
            wo.tags.move(4, 0)                # A b c d x
            del wo.tags[2]                    # A b d x
        assert list(wo.tags) == ["A", "b", "d", "x"]
    with tidesync.open(path, schema=[WorkOrder, Technician]) as db:
        wo = db.get(WorkOrder, pk)
        assert list(wo.tags) == ["A", "b", "d", "x"]
        with db.write():
            wo.tags.append("y")
            wo.tags.move(1, 4)
        assert list(wo.tags) == ["A", "d", "x", "y", "b"]
        assert [o._id for o in db.objects(WorkOrder).filter("'y' IN tags")] == [pk]


def test_a_list_of_links_moves_among_the_objects_it_shows(db):
    with db.write():
        techs = [db.create(Technician, _id=n, name=n) for n in ("ann", "bob", "cy", "dee")]
        wo = db.create(WorkOrder, title="t", helpers=techs)
    with db.write():
        db.delete(db.get(Technician, "bob"))          # hidden from the list, still stored
    assert [t._id for t in wo.helpers] == ["ann", "cy", "dee"]
    with db.write():
        wo.helpers.move(2, 0)
    assert [t._id for t in wo.helpers] == ["dee", "ann", "cy"]
    with db.write():
        wo.helpers.swap(0, 2)
    assert [t._id for t in wo.helpers] == ["cy", "ann", "dee"]


def test_revert_of_a_move_restores_the_order(db):
    wo = _order(db, "abc")
    with db.write():
        wo.tags.move(0, 2)
    txn = db.history(limit=1)[0]
    assert txn.changes and txn.changes[0].fields == ("tags",)
    db.revert(txn.id)
    assert list(wo.tags) == ["a", "b", "c"]


def test_an_object_listener_hears_a_move(db):
    wo = _order(db, "abc")
    heard = threading.Event()
    fields: list[tuple[str, ...]] = []

    def on_change(obj, change):
        fields.append(tuple(change.changed_fields))
        heard.set()

    token = wo.add_listener(on_change)
    try:
        with db.write():
            wo.tags.move(2, 0)
        assert heard.wait(10)
        assert ("tags",) in fields
    finally:
        token.remove()


def test_concurrent_moves_merge_by_the_rules_between_two_files(tmp_path):
    with tidesync.open(tmp_path / "a.db", schema=[WorkOrder, Technician]) as a, \
            tidesync.open(tmp_path / "b.db", schema=[WorkOrder, Technician]) as b:
        wo = _order(a, "abcd")
        b.integrate(a.export_transactions(since=0))
        mark_a, mark_b = a.history(limit=1)[0].id, b.history(limit=1)[0].id
        assert mark_a == mark_b
        wa, wb = a.get(WorkOrder, wo._id), b.get(WorkOrder, wo._id)
        with a.write():
            wa.tags.move(0, 1)                # earlier: b a c d
            wa.tags[3] = "D"                  # an edit of d
        # b's moves must be stamped later than a's: in the same millisecond with the same
        # counter the replica ids would decide (and did, in about 6% of runs).
        time.sleep(0.003)
        with b.write():
            wb.tags.move(0, 3)                # later: b c d a (the later move of a wins)
            wb.tags.move(2, 0)                # d to the head: d b c a (a set of d follows it)
            wb.tags.append("e")
        new_a = [t for t in a.export_transactions(since=0)]
        new_b = [t for t in b.export_transactions(since=0)]
        a.integrate(new_b)
        b.integrate(new_a)
        assert list(a.get(WorkOrder, wo._id).tags) == list(b.get(WorkOrder, wo._id).tags) == ["D", "b", "c", "a", "e"]
