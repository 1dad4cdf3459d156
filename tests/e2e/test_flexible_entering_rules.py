"""Session 9's documents entering views made once per round for all sessions
(``Router.entering``, ``FlexibleSession._entering``, shared query verdicts): users whose read
rules differ subscribe to the very same query, and one write brings documents into all their
views at once (the dispatcher's loop, integrated by the lean path). Each device gets only what
its rules let it read, never a field hidden from it, whichever session made the entering
document first; a document changing between two rounds enters the view it now matches and
leaves the other."""

from __future__ import annotations

import pytest

from tests.e2e.test_flexible_rules import Job, make_dispatcher, world  # noqa: F401 - the fixture
from tests.helpers.flexible import Device, eventually, login

pytestmark = pytest.mark.slow


def _seen(device):
    return {o._id: (o.status, o.salary, o.title) for o in device.db.objects(Job)}


def test_documents_entering_views_of_one_query_are_filtered_per_users_rules(world):  # noqa: F811
    server, boss, ann, bob = world
    boss.subscribe(all=(Job, "TRUEPREDICATE"))
    # A second dispatcher (reads everything, salaries too) with the workers' very query.
    carl_user = login(server.url, ann.tmp, "carl")
    make_dispatcher(server, carl_user.id)
    carl = Device(server.url, ann.tmp, "carl", [Job], user=carl_user)
    try:
        _rounds(boss, ann, bob, carl)
    finally:
        carl.close()


def _rounds(boss, ann, bob, carl):
    carl.subscribe(urgent=(Job, "status == 'urgent'"))
    ann.subscribe(urgent=(Job, "status == 'urgent'"))
    bob.subscribe(urgent=(Job, "status == 'urgent'"))
    with boss.db.write():
        for i in range(12):
            who = (ann.user.id, bob.user.id, "nobody")[i % 3]
            boss.db.create(Job, _id=f"j{i:02d}", assignee=who, status="open", title=f"t{i}", salary=1000 + i,
                           shared=i % 4 == 0)
    boss.sync()
    assert ann.ids(Job) == bob.ids(Job) == set()
    jobs = list(boss.db.objects(Job).sort("_id"))
    for round_ in range(2):
        with boss.db.write():  # every job enters the three views in one round
            for o in jobs:
                o.status = "urgent"
        boss.sync()
        for device, uid in ((ann, ann.user.id), (bob, bob.user.id)):
            want = {f"j{i:02d}" for i in range(12) if (ann.user.id, bob.user.id, "nobody")[i % 3] == uid or i % 4 == 0}
            eventually(lambda d=device, w=want: d.ids(Job) == w, what=f"{device.name}'s view, round {round_}")
            seen = _seen(device)
            assert all(salary is None for _, salary, _ in seen.values()), f"{device.name} got a hidden field"
        eventually(lambda: len(carl.ids(Job)) == 12, what="the other dispatcher's view")
        assert {o.salary for o in carl.db.objects(Job)} == {1000 + i for i in range(12)}
        with boss.db.write():  # all leave again
            for o in jobs:
                o.status = "open"
        boss.sync()
        for device in (ann, bob, carl):
            eventually(lambda d=device: d.ids(Job) == set(), what=f"{device.name}'s view emptied")
    # A document changing between two rounds: j00 (ann's) handed to bob while urgent.
    with boss.db.write():
        jobs[1].status = "urgent"      # j01: bob's
        jobs[3].status = "urgent"      # j03: ann's
    boss.sync()
    eventually(lambda: bob.ids(Job) == {"j01"}, what="bob's j01")
    eventually(lambda: ann.ids(Job) == {"j03"}, what="ann's j03")
    with boss.db.write():
        jobs[3].assignee = bob.user.id
        jobs[3].title = "handed"
    boss.sync()
    eventually(lambda: bob.ids(Job) == {"j01", "j03"}, what="j03 entering bob's view")
    eventually(lambda: ann.ids(Job) == set(), what="j03 leaving ann's view")
    assert _seen(bob)["j03"] == ("urgent", None, "handed")
    eventually(lambda: _seen(carl).get("j03") == ("urgent", 1003, "handed"), what="carl's j03")


def test_a_loop_mixing_allowed_and_refused_writes_is_compensated_per_document(world):  # noqa: F811
    """The worker's loop of one field over documents it may write and one it may only read (a
    shared job of bob's): the allowed writes are integrated (the lean path's shape), the refused
    one is compensated and undone on the device, and nothing of it reaches the server or bob."""
    server, boss, ann, bob = world
    boss.subscribe(all=(Job, "TRUEPREDICATE"))
    with boss.db.write():
        for i in range(6):
            boss.db.create(Job, _id=f"a{i}", assignee=ann.user.id, status="open", title="t", salary=5)
        boss.db.create(Job, _id="bobs", assignee=bob.user.id, status="open", shared=True, title="t")
    boss.sync()
    ann.subscribe(open=(Job, "status == 'open'"))
    bob.subscribe(open=(Job, "status == 'open'"))
    assert ann.ids(Job) == {f"a{i}" for i in range(6)} | {"bobs"}
    with ann.db.write():
        for o in ann.db.objects(Job).sort("_id"):
            o.title = "by ann"
    writes = ann.compensated()
    assert [(w["id"], w["operation"]) for w in writes] == [("bobs", "update")]
    eventually(lambda: ann.db.get(Job, "bobs").title == "t", what="the refused write undone")
    backend = server.app.state.tidesync.backend
    eventually(lambda: all(backend.get_raw("Job", f"a{i}")["title"] == "by ann" for i in range(6)), what="upload")
    assert backend.get_raw("Job", "bobs")["title"] == "t"
    boss.sync()
    bob.sync()
    assert bob.db.get(Job, "bobs").title == "t"
    assert {o.title for o in boss.db.objects(Job) if o._id != "bobs"} == {"by ann"}
    assert all(o.salary is None for o in ann.db.objects(Job))


def test_sessions_changing_subscriptions_between_rounds_get_the_documents_of_their_new_query(world):  # noqa: F811
    """Two workers share a query; one changes to another query between the dispatcher's rounds
    (which move every job from one status to the other): each ends with the jobs of its own
    current query that its rules let it read, never one kept from the shared query."""
    server, boss, ann, bob = world
    boss.subscribe(all=(Job, "TRUEPREDICATE"))
    with boss.db.write():
        for i in range(10):
            boss.db.create(Job, _id=f"s{i}", assignee=(ann.user.id, bob.user.id)[i % 2], status="open",
                           shared=i % 5 == 0, salary=i)
    boss.sync()
    ann.subscribe(q=(Job, "status == 'urgent'"))
    bob.subscribe(q=(Job, "status == 'urgent'"))
    jobs = list(boss.db.objects(Job).sort("_id"))

    def visible(uid: str) -> set[str]:
        return {f"s{i}" for i in range(10) if (ann.user.id, bob.user.id)[i % 2] == uid or i % 5 == 0}

    current = "status == 'urgent'"
    for status, ann_query in (("urgent", "status == 'done'"), ("done", "status == 'urgent'"), ("urgent", None)):
        with boss.db.write():
            for o in jobs:
                o.status = status
        boss.sync()
        ann_wants = visible(ann.user.id) if current.endswith(f"'{status}'") else set()
        bob_wants = visible(bob.user.id) if status == "urgent" else set()
        eventually(lambda w=ann_wants: ann.ids(Job) == w, what=f"ann's view at {status}")
        eventually(lambda w=bob_wants: bob.ids(Job) == w, what=f"bob's view at {status}")
        if ann_query is not None:
            ann.subscribe(q=(Job, ann_query))
            current = ann_query
            want = visible(ann.user.id) if ann_query.endswith(f"'{status}'") else set()
            eventually(lambda w=want: ann.ids(Job) == w, what=f"ann's view after {ann_query}")
    assert all(o.salary is None for o in ann.db.objects(Job))
    assert all(o.salary is None for o in bob.db.objects(Job))
