"""tidesync.backlinks: the objects whose link points at this one, as live results (Realm's
LinkingObjects), on a real file; nothing stored for them."""

from __future__ import annotations

import threading

import pytest

import tidesync
from tidesync.core.models import schema_of


class Crew(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    name: str = ""
    jobs = tidesync.backlinks("Job", "lead")                      # a link
    helping: tidesync.Results[Job] = tidesync.backlinks("Job", "helpers")   # annotated: still not a field
    teams = tidesync.backlinks("Team", "members")                 # a set of links
    not_a_link = tidesync.backlinks("Job", "title")


class Job(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    title: str = ""
    status: str = "open"
    lead: Crew | None = None
    helpers: list[Crew] = tidesync.field(default_factory=list)


class Team(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    members: set[Crew] = tidesync.field(default_factory=set)


@pytest.fixture
def db(tmp_path):
    with tidesync.open(tmp_path / "b.db", schema=[Crew, Job, Team]) as d:
        with d.write():
            ann = d.create(Crew, _id="ann", name="Ann")
            bo = d.create(Crew, _id="bo", name="Bo")
            d.create(Job, _id="j1", title="pump", lead=ann, helpers=[bo])
            d.create(Job, _id="j2", title="wall", lead=ann, status="done")
            d.create(Job, _id="j3", title="valve", lead=bo, helpers=[ann, bo])
            d.create(Team, _id="red", members={ann, bo})
        yield d


def ids(results):
    return sorted(o._id for o in results)


def test_backlinks_are_not_fields_and_nothing_is_stored_for_them():
    assert sorted(schema_of(Crew).fields) == ["_id", "name"]
    assert Crew(_id="x", name="X").to_dict() == {"_id": "x", "name": "X"}


def test_backlinks_give_the_objects_linking_here_through_a_link_a_list_and_a_set(db):
    ann, bo = db.get(Crew, "ann"), db.get(Crew, "bo")
    assert ids(ann.jobs) == ["j1", "j2"] and ids(bo.jobs) == ["j3"]
    assert ids(ann.helping) == ["j3"] and ids(bo.helping) == ["j1", "j3"]
    assert ids(ann.teams) == ["red"]
    assert ids(ann.jobs.filter("status == 'open'")) == ["j1"]
    assert [j.title for j in ann.jobs.sort("title", reverse=True)] == ["wall", "pump"]


def test_backlinks_are_live_and_listeners_fire(db):
    ann = db.get(Crew, "ann")
    jobs = ann.jobs
    fired = threading.Event()
    token = jobs.add_listener(lambda results, changes: fired.set())
    with db.write():
        db.create(Job, _id="j4", title="roof", lead=ann)
    assert fired.wait(10)
    assert ids(jobs) == ["j1", "j2", "j4"]
    token.remove()
    with db.write():
        db.get(Job, "j1").lead = None
        db.delete(db.get(Job, "j2"))
    assert ids(jobs) == ["j4"]


def test_wrong_uses_are_refused_clearly(db):
    ann = db.get(Crew, "ann")
    with pytest.raises(tidesync.SchemaError, match=r"Crew.not_a_link: Job.title is not a link"):
        ann.not_a_link
    with pytest.raises(tidesync.InvalidatedObjectError, match="not in a database has no backlinks"):
        Crew(_id="new").jobs
    with pytest.raises(tidesync.ValidationError, match="computed from Job.lead: set that link instead"):
        ann.jobs = []
    with pytest.raises(tidesync.SchemaError, match="need the name of the origin's link field"):
        tidesync.backlinks(Job, "")
    with pytest.raises(tidesync.SchemaError, match="need a model class or its name"):
        tidesync.backlinks(42, "lead")  # type: ignore[arg-type]
    with db.write():
        db.delete(ann)
    with pytest.raises(tidesync.InvalidatedObjectError):
        ann.jobs


def test_a_backlinks_attribute_starts_a_key_path_in_queries(db):
    crew = db.objects(Crew)
    assert ids(crew.filter("jobs.@count == 2")) == ["ann"]
    assert ids(crew.filter("jobs.@count == 0")) == []
    assert ids(crew.filter("ANY helping.status == 'open'")) == ["ann", "bo"]
    assert ids(crew.filter("ALL jobs.status == 'open'")) == ["bo"]
    assert ids(crew.filter("teams.@count > 0 AND name BEGINSWITH 'B'")) == ["bo"]
    assert ids(crew.filter("jobs.helpers.name == 'Ann'")) == ["bo"]        # then through the origin's links
    for text in ("jobs.@count == 2", "ANY helping.status == 'open'", "jobs.title == 'wall'"):
        spelled = text.replace("jobs", "@links.Job.lead").replace("helping", "@links.Job.helpers")
        assert ids(crew.filter(text)) == ids(crew.filter(spelled))            # the same as @links


def test_a_backlinks_attribute_cannot_be_crossed_or_compared(db):
    with pytest.raises(tidesync.QueryError, match="Crew.jobs is a backlinks attribute: in a query it can only "
                                                  "start a key path"):
        db.objects(Job).filter("lead.jobs.@count > 1")
    with pytest.raises(tidesync.QueryError, match="@links stands for objects"):
        db.objects(Crew).filter("jobs == 'j1'")
    with pytest.raises(tidesync.QueryError, match="Job.title is not a link"):
        db.objects(Crew).filter("not_a_link.@count == 0")


def test_a_subscription_cannot_start_at_a_backlinks_attribute(db):
    from tidesync.client.subscriptions import _query_of

    with pytest.raises(tidesync.UsageError, match="cannot follow links"):
        _query_of(db.objects(Crew).filter("jobs.@count == 0"))


def _module(name: str, source: str):
    import sys
    import types

    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(source, module.__dict__)  # noqa: S102 - the test's own model declarations
    return module


def test_an_origin_named_by_a_string_is_the_model_the_owners_module_declares(tmp_path):
    # Another module declaring a model of the same name later (as two test modules, or two
    # parts of an app, may) does not take over this module's backlinks.
    mine = _module("backlinks_mine", (
        "import tidesync\n"
        "class BlOwner(tidesync.Model):\n"
        "    _id: str = tidesync.field(primary_key=True)\n"
        "    items = tidesync.backlinks('BlItem', 'owner')\n"
        "class BlItem(tidesync.Model):\n"
        "    _id: str = tidesync.field(primary_key=True)\n"
        "    owner: BlOwner | None = None\n"))
    _module("backlinks_other", (
        "import tidesync\n"
        "class BlItem(tidesync.Model):\n"
        "    _id: str = tidesync.field(primary_key=True)\n"
        "    title: str = ''\n"))
    with tidesync.open(tmp_path / "bl.db", schema=[mine.BlOwner, mine.BlItem]) as d:
        with d.write():
            ann = d.create(mine.BlOwner, _id="ann")
            d.create(mine.BlItem, _id="i1", owner=ann)
        assert [i._id for i in d.get(mine.BlOwner, "ann").items] == ["i1"]
