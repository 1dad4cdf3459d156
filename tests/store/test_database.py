"""The local database: models, write transactions, managed objects, typed errors."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

import tidesync
from tests.models import Address, Gadget, Technician, WorkOrder


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "orders.db", schema=[WorkOrder, Technician, Gadget]) as d:
        yield d


def test_create_returns_managed_object_with_defaults(db):
    with db.write():
        wo = db.create(WorkOrder, title="Fix pump", priority=2)
    assert wo.is_managed
    assert wo.title == "Fix pump"
    assert wo.priority == 2
    assert wo.status == "open"
    assert list(wo.tags) == [] and set(wo.labels) == set() and dict(wo.notes) == {}
    assert wo.visits == 0
    assert wo.site is None and wo.technician is None and wo.extra is None
    assert isinstance(wo._id, tidesync.ObjectId)
    assert db.get(WorkOrder, wo._id) == wo


def test_every_scalar_type_round_trips_through_the_file(tmp_path):
    when = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    uid, oid = uuid.uuid4(), tidesync.ObjectId()
    path = tmp_path / "g.db"
    with tidesync.open(path, schema=[Gadget]) as db:
        with db.write():
            db.create(Gadget, _id=1, flag=True, ratio=2.5, blob=b"\x00\xff", uid=uid, oid=oid,
                      amount=Decimal("12.50"), when=when, name="ünïcode ✓")
    with tidesync.open(path, schema=[Gadget]) as db:
        g = db.get(Gadget, 1)
        assert (g.flag, g.ratio, g.blob, g.uid, g.oid, g.amount, g.name) == (
            True, 2.5, b"\x00\xff", uid, oid, Decimal("12.50"), "ünïcode ✓")
        assert g.when == when and g.when.tzinfo is not None
        assert isinstance(g.ratio, float)


def test_writing_outside_write_raises_and_reading_works_anywhere(db):
    with db.write():
        wo = db.create(WorkOrder, title="a")
    with pytest.raises(tidesync.NotInWriteTransaction):
        wo.title = "b"
    with pytest.raises(tidesync.NotInWriteTransaction):
        db.create(WorkOrder, title="c")
    with pytest.raises(tidesync.NotInWriteTransaction):
        wo.tags.append("x")
    assert wo.title == "a"
    assert len(db.objects(WorkOrder)) == 1


def test_exception_inside_write_rolls_everything_back(db):
    with db.write():
        wo = db.create(WorkOrder, title="keep")
    before = db.last_seq
    with pytest.raises(RuntimeError):
        with db.write():
            wo.title = "changed"
            db.create(WorkOrder, title="new")
            raise RuntimeError("boom")
    assert wo.title == "keep"
    assert len(db.objects(WorkOrder)) == 1
    assert db.last_seq == before


def test_wrong_type_names_model_field_and_expected_type(db):
    with db.write():
        wo = db.create(WorkOrder, title="a")
        with pytest.raises(tidesync.ValidationError, match=r"WorkOrder\.priority expects int, got str"):
            wo.priority = "high"
        with pytest.raises(tidesync.ValidationError, match=r"WorkOrder\.title expects str"):
            db.create(WorkOrder, title=5)
        with pytest.raises(tidesync.ValidationError, match="naive"):
            wo.due = datetime(2026, 1, 1)
        with pytest.raises(tidesync.ValidationError, match="tags"):
            wo.tags.append(3)
        with pytest.raises(tidesync.ValidationError, match="required"):
            db.create(Technician, _id="t1")
    assert isinstance(tidesync.ValidationError("x"), tidesync.TidesyncError)
    assert isinstance(tidesync.ValidationError("x"), TypeError)


def test_unmanaged_objects_validate_too():
    with pytest.raises(tidesync.ValidationError, match="WorkOrder.priority"):
        WorkOrder(title="x", priority="no")
    with pytest.raises(tidesync.ValidationError, match="no field"):
        WorkOrder(title="x", colour="red")
    wo = WorkOrder(title="x")
    assert not wo.is_managed and wo.priority == 0


def test_list_set_dict_and_counter_behave_like_python(db):
    with db.write():
        wo = db.create(WorkOrder, title="a")
        wo.tags.append("b")
        wo.tags.insert(0, "a")
        wo.tags.append("c")
        wo.tags.remove("b")
        wo.tags.extend(["d", "e"])
        del wo.tags[-1]
        wo.tags[0] = "A"
        wo.labels.add("x")
        wo.labels.add("y")
        wo.labels.discard("x")
        wo.notes["k"] = "v"
        wo.notes["j"] = "w"
        del wo.notes["k"]
        wo.visits.increment(2)
        wo.visits.increment(3)
    assert list(wo.tags) == ["A", "c", "d"]
    assert wo.tags == ["A", "c", "d"]
    assert set(wo.labels) == {"y"} and "y" in wo.labels
    assert dict(wo.notes) == {"j": "w"}
    assert wo.visits == 5
    with db.write():
        wo.tags = ["z"]
        wo.labels.clear()
        wo.notes.clear()
        wo.visits = 1
    assert list(wo.tags) == ["z"] and len(wo.labels) == 0 and len(wo.notes) == 0 and wo.visits == 1
    with pytest.raises(KeyError):
        with db.write():
            del wo.notes["missing"]


def test_embedded_objects_and_links(db):
    with db.write():
        tech = db.create(Technician, _id="t1", name="Ann")
        wo = db.create(WorkOrder, title="a", site=Address(street="Main 1", city="Oslo"), technician=tech)
        wo.helpers.append(tech)
        wo.helpers.append(Technician(_id="t2", name="Bo"))  # unmanaged: added to the database
    assert wo.site.city == "Oslo"
    assert wo.technician == tech and wo.technician.name == "Ann"
    assert [h.name for h in wo.helpers] == ["Ann", "Bo"]
    with db.write():
        wo.site.city = "Bergen"
    assert wo.site.city == "Bergen" and wo.site.street == "Main 1"
    with db.write():
        db.delete(db.get(Technician, "t2"))
    assert [h.name for h in wo.helpers] == ["Ann"]  # a link to a deleted object disappears
    with db.write():
        db.delete(tech)
    assert wo.technician is None


def test_upsert_with_update_modified_writes_only_changed_fields(db):
    with db.write():
        db.create(Technician, _id="t1", name="Ann")
    seq = db.last_seq
    with db.write():
        db.create(Technician, {"_id": "t1", "name": "Ann"}, update="modified")
    assert db.last_seq == seq  # nothing changed, nothing recorded
    with db.write():
        t = db.create(Technician, {"_id": "t1", "name": "Anna"}, update="modified")
    assert t.name == "Anna" and db.history(1)[0].changes[0].fields == ("name",)
    with pytest.raises(tidesync.ValidationError, match="already exists"):
        with db.write():
            db.create(Technician, _id="t1", name="X")


def test_delete_object_and_results_and_deleted_object_raises(db):
    with db.write():
        a = db.create(WorkOrder, title="a", status="done")
        db.create(WorkOrder, title="b", status="done")
        c = db.create(WorkOrder, title="c")
        db.delete(a)
    with pytest.raises(tidesync.InvalidatedObjectError):
        _ = a.title
    with db.write():
        db.delete(db.objects(WorkOrder).filter("status == $0", "done"))
    assert [w.title for w in db.objects(WorkOrder)] == ["c"]
    assert db.get(WorkOrder, a._id if False else c._id) == c


def test_recreate_after_delete_is_a_new_object(db):
    with db.write():
        db.create(Technician, _id="t1", name="Ann")
    with db.write():
        db.delete(db.get(Technician, "t1"))
    assert db.get(Technician, "t1") is None
    with db.write():
        db.create(Technician, _id="t1", name="Bea")
    assert db.get(Technician, "t1").name == "Bea"


def test_write_transactions_do_not_nest(db):
    with db.write():
        with pytest.raises(tidesync.UsageError, match="nest"):
            with db.write():
                pass


def test_closed_database_raises(tmp_path):
    db = tidesync.open(tmp_path / "x.db", schema=[Technician])
    with db.write():
        t = db.create(Technician, _id="a", name="A")
    db.close()
    with pytest.raises(tidesync.DatabaseClosedError):
        db.objects(Technician)
    with pytest.raises(tidesync.DatabaseClosedError):
        _ = t.name


def test_model_not_in_schema_is_a_clear_error(tmp_path):
    with tidesync.open(tmp_path / "x.db", schema=[Technician]) as db:
        with pytest.raises(tidesync.UsageError, match="not in this database's schema"):
            db.objects(WorkOrder)


def test_schema_declaration_errors():
    with pytest.raises(tidesync.SchemaError, match="optional"):
        class Bad(tidesync.Model):
            other: Technician
        tidesync.open(":memory:", schema=[Bad])
    with pytest.raises(tidesync.SchemaError, match="mutable default"):
        class Bad2(tidesync.Model):
            tags: list[str] = []  # noqa: RUF012
