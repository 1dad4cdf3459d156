"""server.enforcement on real SQLite replicas, without a network: a device writes, the server's
Enforcer judges the upload, the compensating transaction goes back through the session's
filter, and device and server must end up showing the same (visible) document."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import tidesync
from tidesync.core.rules import Rules, UserContext
from tidesync.core.values import to_plain
from tidesync.server.config import ServerConfig
from tidesync.server.enforcement import Enforcer, SessionReplica, query_compiler, strip_meta_fields
from tidesync.server.schemas import SchemaLearner
from tidesync.store.database import Database


class EnfJob(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    owner_id: str
    title: str = ""
    shared: bool = False
    approved: bool | None = None
    salary: int | None = None
    tags: list[str] = tidesync.field(default_factory=list)
    labels: set[str] = tidesync.field(default_factory=set)
    notes: dict[str, str] = tidesync.field(default_factory=dict)
    visits: tidesync.Counter = tidesync.field(default_factory=tidesync.Counter)


RULES = Rules.from_config({"EnfJob": {"roles": [{
    "name": "owner",
    "read": {"$or": [{"owner_id": "%%user.id"}, {"shared": True}]},
    "write": {"owner_id": "%%user.id"},
    "fields": {"salary": {"read": False}, "approved": {"read": True, "write": False}},
}]}})
SCHEMAS = {"EnfJob": {"properties": {"title": {"type": "string", "maxLength": 20}}}}


class Harness:
    def __init__(self, tmp_path, schemas=None):
        self.server = Database(tmp_path / "server.db", ())
        config = ServerConfig(data_dir=tmp_path, rules=RULES, schemas=schemas or {}, development_mode=False)
        self.state = SimpleNamespace(backend=self.server, config=config,
                                     schema_learner=SchemaLearner(tmp_path / "schema.json"))
        self.devices = {}

    def device(self, name, user_id):
        db = tidesync.open(self.state.config.data_dir / f"{name}.db", schema=[EnfJob])
        rules = RULES.for_user(UserContext(user_id), query_compiler)
        enforcer = Enforcer(self.state, rules)
        self.devices[name] = (db, enforcer, SessionReplica(self.server, rules, enforcer), 0, 0)
        return db

    def sync(self, name):
        """Upload the device's new transactions, then download what the server has for it."""
        db, enforcer, reader, sent, received = self.devices[name]
        txns = [t for t in db.export_transactions(sent) if t.origin == db.replica_id]
        messages = []
        if txns:
            _, messages, _ = enforcer.integrate(txns, db.replica_id, db.last_seq)
        batch = reader.read_log(received, limit=1000, max_bytes=1 << 30, scope={}, exclude_origin=db.replica_id)
        db.integrate([t for _, t in batch.entries], peer=self.server.replica_id, peer_seq=batch.scanned_to)
        self.devices[name] = (db, enforcer, reader, db.last_seq, batch.scanned_to)
        return messages

    def close(self):
        for db, *_ in self.devices.values():
            db.close()
        self.server.close()


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path, SCHEMAS)
    yield harness
    harness.close()


def visible(db_or_server, key, hidden=("salary",)):
    body = db_or_server.get_raw("EnfJob", key)
    if body is None:
        return None
    return {k: v for k, v in body.items() if k not in hidden and v not in (None, [], {}, 0)}


def test_a_refused_create_disappears_from_the_device_and_changes_nothing(h):
    bob = h.device("bob", "bob")
    with bob.write():
        bob.create(EnfJob, _id="mine", owner_id="bob")
        bob.create(EnfJob, _id="forged", owner_id="ann")
    messages = h.sync("bob")
    assert [(m.key, m.operation, m.code) for m in messages] == [("forged", "create", "write_denied")]
    assert bob.get(EnfJob, "forged") is None and bob.get(EnfJob, "mine") is not None
    assert h.server.get_raw("EnfJob", "forged") is None
    assert h.server.document_state("EnfJob", "forged").epoch == ""  # not even a tombstone


def test_refused_updates_of_every_kind_are_undone_on_both_sides(h):
    ann, bob = h.device("ann", "ann"), h.device("bob", "bob")
    with ann.write():
        ann.create(EnfJob, _id="s", owner_id="ann", shared=True, title="orig", tags=["a", "b"], labels={"x"},
                   notes={"k": "v"}, visits=tidesync.Counter(3))
    h.sync("ann")
    h.sync("bob")
    j = bob.get(EnfJob, "s")
    with bob.write():
        j.title = "hacked"
        j.tags.append("evil")
        j.tags[0] = "A"
        j.labels.add("y")
        j.labels.discard("x")
        j.notes["k"] = "w"
        j.visits.increment(10)
    messages = h.sync("bob")
    assert [(m.operation, m.code) for m in messages] == [("update", "write_denied")]
    h.sync("ann")
    want = {"_id": "s", "owner_id": "ann", "shared": True, "title": "orig", "tags": ["a", "b"], "labels": ["x"],
            "notes": {"k": "v"}, "visits": 3}
    assert visible(h.server, "s") == visible(bob, "s") == visible(ann, "s") == want
    # Later writes of the owner still reach everyone.
    with ann.write():
        ann.get(EnfJob, "s").tags.append("c")
    h.sync("ann")
    h.sync("bob")
    assert list(bob.get(EnfJob, "s").tags) == ["a", "b", "c"]


def test_a_refused_delete_comes_back_and_later_edits_converge(h):
    ann, bob = h.device("ann", "ann"), h.device("bob", "bob")
    with ann.write():
        ann.create(EnfJob, _id="s", owner_id="ann", shared=True, title="orig", tags=["a"])
    h.sync("ann")
    h.sync("bob")
    with bob.write():
        bob.delete(bob.get(EnfJob, "s"))
    assert [(m.operation, m.code) for m in h.sync("bob")] == [("delete", "write_denied")]
    assert visible(bob, "s") == visible(h.server, "s")
    h.sync("ann")
    with ann.write():
        ann.get(EnfJob, "s").title = "v2"
    h.sync("ann")
    h.sync("bob")
    assert bob.get(EnfJob, "s").title == "v2" and h.server.get_raw("EnfJob", "s")["title"] == "v2"
    assert visible(bob, "s") == visible(ann, "s") == visible(h.server, "s")


def test_a_forbidden_field_is_undone_and_other_documents_keep_their_change(h):
    ann = h.device("ann", "ann")
    with ann.write():
        ann.create(EnfJob, _id="a1", owner_id="ann")
        ann.create(EnfJob, _id="a2", owner_id="ann")
    h.sync("ann")
    with ann.write():
        ann.get(EnfJob, "a1").approved = True
        ann.get(EnfJob, "a2").title = "new"
    messages = h.sync("ann")
    assert [(m.key, m.code) for m in messages] == [("a1", "field_write_denied")]
    assert "approved" in messages[0].message
    assert ann.get(EnfJob, "a1").approved is None
    assert h.server.get_raw("EnfJob", "a2")["title"] == "new" and ann.get(EnfJob, "a2").title == "new"


def test_a_write_to_a_hidden_field_is_undone_without_revealing_it(h):
    from tidesync.core.operations import SetValue
    from tidesync.core.transaction import Transaction

    ann = h.device("ann", "ann")
    with ann.write():
        ann.create(EnfJob, _id="a", owner_id="ann", title="t")
    h.sync("ann")
    admin = "a1b2c3d4e5f60718"
    stamp = h.server.next_stamps(1)[0][:18] + admin
    h.server.integrate([Transaction(stamp, admin, stamp, (), (SetValue("EnfJob", "a", stamp, "", ("salary",), (), 4242),))])
    h.sync("ann")
    assert ann.get(EnfJob, "a").salary is None          # stripped on the way down
    with ann.write():
        ann.get(EnfJob, "a").salary = 1
        ann.get(EnfJob, "a").title = "u"
    messages = h.sync("ann")
    assert [(m.key, m.code) for m in messages] == [("a", "field_write_denied")]
    assert ann.get(EnfJob, "a").salary is None and ann.get(EnfJob, "a").title == "t"
    assert h.server.get_raw("EnfJob", "a")["salary"] == 4242
    assert "4242" not in str([t.to_wire() for t in ann.export_transactions()])


def test_a_write_to_a_hidden_field_is_undone_even_when_a_later_hidden_value_overrode_it(h):
    # The device never sees the newer hidden value, so its write can carry an older stamp: it
    # changes nothing on the server, and is refused all the same (else the device would keep
    # salary = 1 for good). Once a same-millisecond race in the test above.
    from tidesync.core.operations import SetValue
    from tidesync.core.transaction import Transaction

    ann = h.device("ann", "ann")
    with ann.write():
        ann.create(EnfJob, _id="a", owner_id="ann", title="t")
    h.sync("ann")
    admin = "a1b2c3d4e5f60718"
    now = h.server.next_stamps(1)[0]
    later = f"{int(now[:12], 16) + 60_000:012x}" + now[12:18] + admin     # a minute ahead of the device
    h.server.integrate([Transaction(later, admin, later, (), (SetValue("EnfJob", "a", later, "", ("salary",), (), 4242),))])
    h.sync("ann")
    with ann.write():
        ann.get(EnfJob, "a").salary = 1
        ann.get(EnfJob, "a").title = "u"
    assert ann.history(limit=1)[0].stamp < later
    messages = h.sync("ann")
    assert [(m.key, m.code) for m in messages] == [("a", "field_write_denied")]
    assert ann.get(EnfJob, "a").salary is None and ann.get(EnfJob, "a").title == "t"
    assert h.server.get_raw("EnfJob", "a")["salary"] == 4242 and h.server.get_raw("EnfJob", "a")["title"] == "t"


def test_a_write_to_an_unreadable_document_leaves_nothing_on_the_device(h):
    ann, bob = h.device("ann", "ann"), h.device("bob", "bob")
    with ann.write():
        ann.create(EnfJob, _id="private", owner_id="ann", title="secret")
    h.sync("ann")
    h.sync("bob")
    assert bob.get(EnfJob, "private") is None
    # Bob creates a document with the same key: it is Ann's, hidden: refused, nothing leaks.
    with bob.write():
        bob.create(EnfJob, _id="private", owner_id="bob", title="mine now")
    messages = h.sync("bob")
    assert [(m.operation, m.code) for m in messages] == [("update", "write_denied")]
    assert bob.get(EnfJob, "private") is None
    assert h.server.get_raw("EnfJob", "private")["title"] == "secret"
    assert b"secret" not in b"".join(bytes(str(t.to_wire()), "utf8") for t in bob.export_transactions())


def test_the_json_schema_refuses_with_its_message(h):
    ann = h.device("ann", "ann")
    with ann.write():
        ann.create(EnfJob, _id="long", owner_id="ann", title="x" * 30)
        ann.create(EnfJob, _id="short", owner_id="ann", title="ok")
    messages = h.sync("ann")
    assert [(m.key, m.operation, m.code) for m in messages] == [("long", "create", "schema")]
    assert "title must be at most 20 characters long" in messages[0].message
    assert ann.get(EnfJob, "long") is None and ann.get(EnfJob, "short") is not None


def test_hidden_fields_never_reach_the_device_by_log_or_snapshot(h):
    from tidesync.core.operations import CreateDoc, SetValue
    from tidesync.core.transaction import Transaction

    admin = "a1b2c3d4e5f60718"
    stamp = f"{0x18f000000000:012x}000000{admin}"
    stamp2 = f"{0x18f000000001:012x}000000{admin}"
    h.server.integrate([Transaction(stamp, admin, stamp, (), (
        CreateDoc("EnfJob", "s", stamp, "", {"_id": "s", "owner_id": "ann", "shared": True, "salary": 987654321},
                  {}),))])
    h.server.integrate([Transaction(stamp2, admin, stamp2, (), (
        SetValue("EnfJob", "s", stamp2, "", ("salary",), (), 987654322),))])
    rules = RULES.for_user(UserContext("bob"), query_compiler)
    reader = SessionReplica(h.server, rules)
    batch = reader.read_log(0, limit=100, max_bytes=1 << 20, scope={}, exclude_origin="0" * 16)
    assert len(batch.entries) == 1 and "9876543" not in str([t.to_wire() for _, t in batch.entries])
    page = reader.read_snapshot({}, cursor=None, limit=100, max_bytes=1 << 20)
    assert [d.key for d in page.docs] == ["s"]
    assert "salary" not in str(page.docs[0].to_wire())
    assert "9876543" in str(SessionReplica(h.server, RULES.for_user(UserContext("x"), query_compiler))
                            .backend.document_state("EnfJob", "s").body)  # the server keeps it


def test_strip_meta_fields_handles_both_layouts():
    compact = {"*": "s", "*k": {"tags": "list", "site": "object", "site.tags": "list"}, "*d": ["salary", "site.x"]}
    assert strip_meta_fields(compact, {"site", "salary"}) == {"*": "s", "*k": {"tags": "list"}}
    expanded = {"r": {"a": "1x", "salary": "1y"}, "c": {"salary": {"k": "list"}}, "n": {"salary": {}}}
    assert strip_meta_fields(expanded, {"salary"}) == {"r": {"a": "1x"}}


def test_the_learned_schema_records_kinds(h):
    ann = h.device("ann", "ann")
    with ann.write():
        ann.create(EnfJob, _id="k", owner_id="ann", tags=["a"], visits=tidesync.Counter(1))
    h.sync("ann")
    learned = h.state.schema_learner.snapshot()["EnfJob"]
    assert learned["owner_id"]["kinds"] == ["string"]
    assert learned["tags"]["kinds"] == ["list"] and learned["visits"]["kinds"] == ["counter"]
    assert to_plain is not None


class PartJob(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    _partition: str
    title: str = ""


@pytest.mark.parametrize("schemas", [{}, {"PartJob": {"properties": {"title": {"type": "string"}}}}],
                         ids=["cheap-check", "full-check"])
def test_a_create_of_an_id_of_another_partition_is_refused(tmp_path, schemas):
    """Both the cheap check (a partition session without collection rules or schemas) and the
    full one refuse a create whose _id is held in another partition, live or deleted (it would
    merge into that document, or lose to its delete on the server while the device keeps it)."""
    config = ServerConfig(data_dir=tmp_path, development_mode=False, schemas=schemas)
    server = Database(tmp_path / "server.db", (), partition_key=config.partition_key)  # as server/app.py
    state = SimpleNamespace(backend=server, config=config, schema_learner=SchemaLearner(tmp_path / "schema.json"))
    a = tidesync.open(tmp_path / "a.db", schema=[PartJob])
    b = tidesync.open(tmp_path / "b.db", schema=[PartJob])
    try:
        ea = Enforcer(state, None, "u0", True)
        eb = Enforcer(state, None, "u1", True)
        assert ea.full == eb.full == bool(schemas)
        with a.write():
            a.create(PartJob, _id="x", _partition="u0", title="ann's")
        _, messages, _ = ea.integrate(a.export_transactions(0), a.replica_id, a.last_seq)
        assert messages == []
        with b.write():
            b.create(PartJob, _id="x", _partition="u1", title="bob's")
            b.create(PartJob, _id="y", _partition="u1", title="bob's own")
        _, messages, _ = eb.integrate(b.export_transactions(0), b.replica_id, b.last_seq)
        assert [(m.key, m.code) for m in messages] == [("x", "partition")]
        assert server.get_raw("PartJob", "x") == {"_id": "x", "_partition": "u0", "title": "ann's"}
        assert server.get_raw("PartJob", "y") == {"_id": "y", "_partition": "u1", "title": "bob's own"}
        # Deleted there: still refused (the device never receives that partition's delete).
        with a.write():
            a.delete(a.get(PartJob, "x"))
        ea.integrate(a.export_transactions(0), a.replica_id, a.last_seq)
        c = tidesync.open(tmp_path / "c.db", schema=[PartJob])
        with c.write():
            c.create(PartJob, _id="x", _partition="u1", title="bob's again")
        _, messages, _ = eb.integrate(c.export_transactions(0), c.replica_id, c.last_seq)
        c.close()
        assert [(m.key, m.code) for m in messages] == [("x", "partition")]
        assert server.get_raw("PartJob", "x") is None
    finally:
        a.close()
        b.close()
        server.close()


def test_the_full_check_reads_the_batch_once_and_judges_as_document_by_document(h):
    """A batch of many small transactions under rules and a schema, some refused, some on
    documents an earlier transaction of the batch wrote: the check on the batch's one read
    (``backend.preload``) allows and refuses exactly what reading each document does, and
    queries no document on its own."""
    alice = h.device("alice", "alice")
    bob = h.device("bob", "bob")
    with bob.write():
        bob.create(EnfJob, _id="b0", owner_id="bob", title="bob's")
    h.sync("bob")
    with alice.write():
        alice.create(EnfJob, _id="a0", owner_id="alice", title="first")
    h.sync("alice")
    for i in range(1, 40):
        with alice.write():
            if i % 7 == 0:
                alice.create(EnfJob, _id=f"a{i}", owner_id="alice", title="x" * 30)  # schema: refused
            else:
                alice.create(EnfJob, _id=f"a{i}", owner_id="alice", title=f"t{i}")
            if i % 5 == 0:
                alice.get(EnfJob, f"a{i - 1}").title = f"again {i}"                  # an earlier one's document
            if i % 9 == 0:
                alice.get(EnfJob, "a0").owner_id = "bob"                               # refused: not hers after
    db, enforcer, *_ = h.devices["alice"]
    txns = [t for t in db.export_transactions(0) if t.origin == db.replica_id][1:]
    assert len(txns) == 39
    plain = enforcer._check_full(txns)
    calls = []
    real = h.server.document_state
    h.server.document_state = lambda *a: calls.append(a) or real(*a)  # type: ignore[method-assign]
    try:
        batched = enforcer._check_full(txns, h.server.preload(txns))
    finally:
        del h.server.document_state
    assert calls == []
    assert batched[0] == plain[0]
    assert [(r.txn_id, r.collection, r.key, r.verdict, r.ops) for r in batched[1]] == \
        [(r.txn_id, r.collection, r.key, r.verdict, r.ops) for r in plain[1]]
    assert plain[1] and len(plain[0]) > 30
    messages = h.sync("alice")
    assert {m.key for m in messages} == {r.key for r in plain[1]}


def test_a_write_judged_before_another_connection_changed_its_document_is_judged_again(h):
    # Another connection (a second process on the server's file: `tidesync revert`, another
    # server) gives bob's document to ann while the integration of bob's edit, already judged
    # against the document as bob's, waits for its write lock: the edit is judged again on
    # what it would be merged into, and refused.
    import sqlite3
    import threading
    import time

    bob = h.device("bob", "bob")
    with bob.write():
        bob.create(EnfJob, _id="job", owner_id="bob", title="bob's")
    h.sync("bob")
    with bob.write():
        bob.get(EnfJob, "job").title = "edited"
    other = sqlite3.connect(h.server.path, isolation_level=None, timeout=30)
    try:
        other.execute("BEGIN IMMEDIATE")
        got: list[object] = []
        thread = threading.Thread(target=lambda: got.append(h.sync("bob")))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), "the integration did not wait for the other connection's lock"
        other.execute("UPDATE documents SET body = json_set(body, '$.owner_id', 'ann') "
                      "WHERE collection = 'EnfJob' AND pk = '\"job\"'")
        other.execute("COMMIT")
        thread.join(30)
    finally:
        other.close()
    assert got, "the upload failed"
    assert [(m.key, m.operation, m.code) for m in got[0]] == [("job", "update", "write_denied")]
    stored = h.server.get_raw("EnfJob", "job")
    assert (stored["owner_id"], stored["title"]) == ("ann", "bob's")
