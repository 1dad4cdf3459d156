"""Schema evolution on the device: additive changes keep data; impossible ones say what to do."""

from __future__ import annotations

import pytest

import tidesync


def _v1():
    class Note(tidesync.Model):
        _id: str = tidesync.field(primary_key=True)
        text: str
        pages: int = 0
    return Note


def _v2_optional_field():
    class Note(tidesync.Model):
        _id: str = tidesync.field(primary_key=True)
        text: str
        pages: int = 0
        author: str | None = None

    class Folder(tidesync.Model):
        _id: str = tidesync.field(primary_key=True)
    return Note, Folder


def _v3_type_changed():
    class Note(tidesync.Model):
        _id: str = tidesync.field(primary_key=True)
        text: str
        pages: str = ""
    return Note


def _v4_required_without_default():
    class Note(tidesync.Model):
        _id: str = tidesync.field(primary_key=True)
        text: str
        pages: int = 0
        owner: str
    return Note


def test_adding_a_model_and_an_optional_field_keeps_data(tmp_path):
    path = tmp_path / "n.db"
    Note = _v1()
    with tidesync.open(path, schema=[Note]) as db:
        with db.write():
            db.create(Note, _id="n1", text="hello", pages=3)
    Note2, Folder = _v2_optional_field()
    with tidesync.open(path, schema=[Note2, Folder]) as db:
        n = db.get(Note2, "n1")
        assert (n.text, n.pages, n.author) == ("hello", 3, None)
        with db.write():
            n.author = "me"
            db.create(Folder, _id="f")
        assert len(db.objects(Folder)) == 1


def test_changed_field_type_says_what_to_do(tmp_path):
    path = tmp_path / "n.db"
    Note = _v1()
    with tidesync.open(path, schema=[Note]) as db:
        with db.write():
            db.create(Note, _id="n1", text="hello")
    Note3 = _v3_type_changed()
    with pytest.raises(tidesync.SchemaMismatchError, match="changed type from int to str") as info:
        tidesync.open(path, schema=[Note3])
    assert "new name" in str(info.value)


def test_new_required_field_on_existing_data_is_refused(tmp_path):
    path = tmp_path / "n.db"
    Note = _v1()
    with tidesync.open(path, schema=[Note]) as db:
        with db.write():
            db.create(Note, _id="n1", text="hello")
    Note4 = _v4_required_without_default()
    with pytest.raises(tidesync.SchemaMismatchError, match="default or make it optional"):
        tidesync.open(path, schema=[Note4])


def test_fields_this_client_does_not_know_are_kept(tmp_path):
    path = tmp_path / "n.db"
    Note2, Folder = _v2_optional_field()
    with tidesync.open(path, schema=[Note2, Folder]) as db:
        with db.write():
            db.create(Note2, _id="n1", text="hello", author="zed")
    Note = _v1()  # an older client that has never heard of `author`
    with tidesync.open(path, schema=[Note]) as db:
        with db.write():
            db.get(Note, "n1").text = "edited by old client"
    Note2b, _ = _v2_optional_field()
    with tidesync.open(path, schema=[Note2b]) as db:
        n = db.get(Note2b, "n1")
        assert (n.text, n.author) == ("edited by old client", "zed")
