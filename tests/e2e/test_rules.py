"""Permission rules and JSON Schemas end to end, over real HTTP and WebSocket on 127.0.0.1.

A user reading or writing another user's documents through every path: upload (create,
update, delete, a forbidden field: a compensating write restores the device and the error
handler names the document, the operation and the rule; other documents of the same
transaction are unaffected), download and bootstrap (another user's documents and hidden
fields never reach the device's file), and the choice of a partition.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

import tidesync
from tidesync.core.operations import CreateDoc
from tidesync.core.transaction import Transaction
from tidesync.server import start_server
from tidesync.server.config import load_config

pytestmark = pytest.mark.slow
T = 20

RULES_TOML = """
[app]
id = "default"

[sync]
partition_key = "_partition"

[rules.RuleJob]
[[rules.RuleJob.roles]]
name = "owner"
read = { "$or" = [{ owner_id = "%%user.id" }, { shared = true }] }
write = { owner_id = "%%user.id" }
[rules.RuleJob.roles.fields]
salary = { read = false }
approved = { read = true, write = false }

[schema.RuleJob]
properties = { title = { type = "string", maxLength = 20 } }
"""

PARTITIONS_TOML = """
[app]
id = "default"

[partitions]
read = ["%%user.id", "public"]
write = "%%user.id"
"""


class RuleJob(tidesync.Model):
    _id: str = tidesync.field(primary_key=True)
    _partition: str | None = None
    owner_id: str = ""
    title: str = ""
    shared: bool = False
    approved: bool | None = None
    salary: int | None = None
    tags: list[str] = tidesync.field(default_factory=list)


def serve(tmp_path: Path, toml: str):
    path = tmp_path / "tidesync.toml"
    path.write_text(toml)
    return start_server(load_config(path, data_dir=tmp_path / "server", port=0))


class Device:
    """A user's app: its user, its database, the errors its handler received."""

    def __init__(self, server, tmp_path: Path, name: str, partition: object = "shared") -> None:
        self.app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / f"{name}-users")
        self.user = self.app.log_in(tidesync.Credentials.anonymous())
        self.errors: list[tidesync.SyncError] = []
        self.error_seen = threading.Event()
        self.path = tmp_path / f"{name}.db"
        self.db = tidesync.open(self.path, schema=[RuleJob], sync=tidesync.SyncConfig(
            user=self.user, partition=partition, error_handler=self._on_error))

    def _on_error(self, session, error):
        self.errors.append(error)
        self.error_seen.set()

    def sync(self):
        self.db.sync_session.wait_for_upload_completion(timeout=T)
        self.db.sync_session.wait_for_download_completion(timeout=T)

    def compensated(self):
        assert self.error_seen.wait(T), "no compensating write reached the error handler"
        self.error_seen.clear()
        writes = [w for e in self.errors if isinstance(e, tidesync.CompensatingWriteError) for w in e.writes]
        self.errors.clear()
        return writes

    def file_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.path.parent.glob(self.path.name + "*"))

    def close(self):
        self.db.close()


def eventually(predicate, timeout=T):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def world(tmp_path):
    server = serve(tmp_path, RULES_TOML)
    ann, bob = Device(server, tmp_path, "ann"), Device(server, tmp_path, "bob")
    yield server, ann, bob
    ann.close()
    bob.close()
    server.stop()


def test_forbidden_uploads_are_compensated_and_named(world):
    server, ann, bob = world
    backend = server.app.state.tidesync.backend
    with ann.db.write():
        ann.db.create(RuleJob, _id="shared", owner_id=ann.user.id, shared=True, title="orig", tags=["a"])
        ann.db.create(RuleJob, _id="a-own", owner_id=ann.user.id, title="ann's")
    ann.sync()
    bob.sync()
    eventually(lambda: bob.db.get(RuleJob, "shared") is not None)

    # create: one document forged for another user, one of bob's own, in one transaction
    with bob.db.write():
        bob.db.create(RuleJob, _id="b-own", owner_id=bob.user.id, title="bob's")
        bob.db.create(RuleJob, _id="forged", owner_id=ann.user.id, title="planted")
    writes = bob.compensated()
    assert [(w["collection"], w["id"], w["operation"], w["code"]) for w in writes] == [
        ("RuleJob", "forged", "create", "write_denied")]
    assert "role 'owner' of RuleJob" in writes[0]["reason"]
    eventually(lambda: bob.db.get(RuleJob, "forged") is None)
    assert backend.get_raw("RuleJob", "forged") is None
    assert backend.get_raw("RuleJob", "b-own")["title"] == "bob's"

    # update another user's (readable) document
    with bob.db.write():
        job = bob.db.get(RuleJob, "shared")
        job.title = "hacked"
        job.tags.append("evil")
    writes = bob.compensated()
    assert [(w["id"], w["operation"], w["code"]) for w in writes] == [("shared", "update", "write_denied")]
    eventually(lambda: bob.db.get(RuleJob, "shared").title == "orig")
    assert list(bob.db.get(RuleJob, "shared").tags) == ["a"]

    # delete it
    with bob.db.write():
        bob.db.delete(bob.db.get(RuleJob, "shared"))
    writes = bob.compensated()
    assert [(w["id"], w["operation"], w["code"]) for w in writes] == [("shared", "delete", "write_denied")]
    eventually(lambda: bob.db.get(RuleJob, "shared") is not None)
    assert bob.db.get(RuleJob, "shared").title == "orig"

    # a field bob may not write, on his own document, next to an allowed change
    with bob.db.write():
        bob.db.get(RuleJob, "b-own").approved = True
        bob.db.create(RuleJob, _id="b-two", owner_id=bob.user.id)
    writes = bob.compensated()
    assert [(w["id"], w["code"]) for w in writes] == [("b-own", "field_write_denied")]
    assert "'approved'" in writes[0]["reason"]
    eventually(lambda: bob.db.get(RuleJob, "b-own").approved is None)
    assert backend.get_raw("RuleJob", "b-two") is not None

    # Nothing of it reached ann; her own edits still flow to bob.
    with ann.db.write():
        ann.db.get(RuleJob, "shared").title = "v2"
    ann.sync()
    eventually(lambda: bob.db.get(RuleJob, "shared").title == "v2")
    job = ann.db.get(RuleJob, "shared")
    assert (job.title, list(job.tags)) == ("v2", ["a"])
    assert ann.db.get(RuleJob, "forged") is None and ann.db.get(RuleJob, "b-own") is None


def test_a_json_schema_violation_is_compensated_with_its_message(world):
    _, ann, _ = world
    with ann.db.write():
        ann.db.create(RuleJob, _id="long", owner_id=ann.user.id, title="x" * 40)
    writes = ann.compensated()
    assert [(w["id"], w["operation"], w["code"]) for w in writes] == [("long", "create", "schema")]
    assert "title must be at most 20 characters long" in writes[0]["reason"]
    eventually(lambda: ann.db.get(RuleJob, "long") is None)


_SEEDS = itertools.count(1)


def _seed(backend, doc):
    origin = "5eed5eed5eed5eed"
    # (the counter: two seeds in one millisecond would otherwise be one transaction)
    stamp = f"{int(time.time() * 1000):012x}{next(_SEEDS):06x}{origin}"
    backend.integrate([Transaction(stamp, origin, stamp, (), (CreateDoc("RuleJob", doc["_id"], stamp, "", doc, {}),))])


def test_hidden_documents_and_fields_never_reach_the_device(tmp_path):
    server = serve(tmp_path, RULES_TOML)
    backend = server.app.state.tidesync.backend
    ann = Device(server, tmp_path, "ann")
    try:
        with ann.db.write():
            ann.db.create(RuleJob, _id="ann-private", owner_id=ann.user.id, title="PRIVATE-BOOT")
        ann.sync()
        _seed(backend, {"_id": "pay", "_partition": "shared", "owner_id": ann.user.id, "shared": True,
                        "title": "payslip", "salary": 987654321})
        # bootstrap: bob's first download is a snapshot of the server's documents
        bob = Device(server, tmp_path, "bob")
        bob.sync()
        eventually(lambda: bob.db.get(RuleJob, "pay") is not None)
        assert bob.db.get(RuleJob, "pay").salary is None
        assert bob.db.get(RuleJob, "ann-private") is None
        # download: changes made while bob is connected
        with ann.db.write():
            ann.db.create(RuleJob, _id="ann-live", owner_id=ann.user.id, title="PRIVATE-LIVE")
            ann.db.create(RuleJob, _id="ann-open", owner_id=ann.user.id, shared=True, title="open")
        ann.sync()
        eventually(lambda: bob.db.get(RuleJob, "ann-open") is not None)
        bob.sync()
        assert bob.db.get(RuleJob, "ann-live") is None
        bob.close()
        raw = bob.file_bytes()
        for secret in (b"PRIVATE-BOOT", b"PRIVATE-LIVE", b"987654321", b"ann-private", b"ann-live"):
            assert secret not in raw, secret
        assert b"payslip" in raw and b"ann-open" in raw
        assert backend.get_raw("RuleJob", "pay")["salary"] == 987654321
    finally:
        ann.close()
        server.stop()


def _conflict(backend, key, field, first, second, at=None):
    """Two devices' concurrent writes of ``field`` (the second wins): a conflict the server
    records. ``at``: the writes' time in ms (two calls in one millisecond would otherwise make
    the same transactions)."""
    from tidesync.core.operations import SetValue

    now = int(time.time() * 1000) if at is None else at
    for i, (origin, value) in enumerate((("a1a1a1a1a1a1a1a1", first), ("b2b2b2b2b2b2b2b2", second))):
        stamp = f"{now + 1 + i:012x}000000{origin}"
        op = SetValue("RuleJob", key, stamp, "", (field,), (), value)
        backend.integrate([Transaction(stamp, origin, stamp, (), (op,))])


def _listed_conflicts(server, user, limit=None):
    import json
    import urllib.request

    query = "" if limit is None else f"?limit={limit}"
    req = urllib.request.Request(f"{server.url}/api/default/conflicts{query}",
                                 headers={"Authorization": f"Bearer {user.access_token}"})
    with urllib.request.urlopen(req, timeout=T) as resp:
        return sorted({(c["key"], c["path"]) for c in json.loads(resp.read())["conflicts"]})


def _two_users(server, tmp_path):
    """Ann and Bob, each logged in anonymously through an App of its own."""
    return tuple(tidesync.App("default", base_url=server.url, storage_dir=tmp_path / f"{name}-users")
                 .log_in(tidesync.Credentials.anonymous()) for name in ("ann", "bob"))


def test_the_conflicts_api_lists_only_what_the_caller_may_read(tmp_path):
    # The conflict records hold the values of both writes: the API shows a user those of the
    # documents and fields the rules let it read, as sync would.
    server = serve(tmp_path, RULES_TOML)
    backend = server.app.state.tidesync.backend
    try:
        ann, bob = _two_users(server, tmp_path)
        _seed(backend, {"_id": "private", "_partition": "shared", "owner_id": ann.id, "title": "t"})
        _seed(backend, {"_id": "open", "_partition": "shared", "owner_id": ann.id, "shared": True, "title": "t",
                        "salary": 1})
        at = int(time.time() * 1000) + 1000   # (after the seeds, and apart from each other)
        _conflict(backend, "private", "title", "PRIVATE-1", "PRIVATE-2", at=at)
        _conflict(backend, "open", "title", "open-1", "open-2", at=at + 10)
        _conflict(backend, "open", "salary", 111111, 222222, at=at + 20)
        # (Each document's and field's conflicts: the first write against the seeded value, then
        # the second against the first.)
        assert sorted({(c["key"], c["path"]) for c in backend.conflicts()}) == [
            ("open", "salary"), ("open", "title"), ("private", "title")]
        assert _listed_conflicts(server, ann) == [("open", "title"), ("private", "title")]
        assert _listed_conflicts(server, bob) == [("open", "title")]
    finally:
        server.stop()


def test_the_conflicts_api_limit_counts_what_the_caller_may_read(tmp_path):
    # The newest records are of a document bob may not read: limit=1 still gives him the newest
    # record he may read, found further down (the limit counts what is listed, not what is looked at).
    server = serve(tmp_path, RULES_TOML)
    backend = server.app.state.tidesync.backend
    try:
        ann, bob = _two_users(server, tmp_path)
        _seed(backend, {"_id": "private", "_partition": "shared", "owner_id": ann.id, "title": "t"})
        _seed(backend, {"_id": "open", "_partition": "shared", "owner_id": ann.id, "shared": True, "title": "t"})
        at = int(time.time() * 1000) + 1000
        _conflict(backend, "open", "title", "open-1", "open-2", at=at)
        for i in range(1, 251):   # more than a page of the server's scan (200)
            _conflict(backend, "private", "title", f"P-{i}-a", f"P-{i}-b", at=at + 10 * i)
        assert len(backend.conflicts(1000)) == 2 + 2 * 250
        assert _listed_conflicts(server, bob, limit=1) == [("open", "title")]
        assert _listed_conflicts(server, ann, limit=1) == [("private", "title")]
    finally:
        server.stop()


def test_the_conflicts_api_lists_only_the_partitions_the_caller_may_read(tmp_path):
    server = serve(tmp_path, PARTITIONS_TOML)
    backend = server.app.state.tidesync.backend
    try:
        ann, bob = _two_users(server, tmp_path)
        _seed(backend, {"_id": "ann-own", "_partition": ann.id, "title": "t"})
        _seed(backend, {"_id": "pub", "_partition": "public", "title": "t"})
        at = int(time.time() * 1000) + 1000
        _conflict(backend, "ann-own", "title", "PRIVATE-1", "PRIVATE-2", at=at)
        _conflict(backend, "pub", "title", "p-1", "p-2", at=at + 10)
        assert _listed_conflicts(server, ann) == [("ann-own", "title"), ("pub", "title")]
        assert _listed_conflicts(server, bob) == [("pub", "title")]
    finally:
        server.stop()


def test_the_partition_a_user_asks_for_is_checked(tmp_path):
    server = serve(tmp_path, PARTITIONS_TOML)
    try:
        # Ann logs in; Bob asks for Ann's partition and is refused with a clear error.
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "ann-users")
        user = app.log_in(tidesync.Credentials.anonymous())
        bob = Device(server, tmp_path, "bob", partition=user.id)
        assert bob.error_seen.wait(T)
        assert isinstance(bob.errors[0], tidesync.PermissionDeniedError)
        assert f"may not read partition {user.id!r}" in str(bob.errors[0])
        assert bob.db.get(RuleJob, "in-own") is None
        bob.close()

        # a user's own partition: read and write
        db = tidesync.open(tmp_path / "ann.db", schema=[RuleJob],
                           sync=tidesync.SyncConfig(user=user, partition=user.id))
        with db.write():
            db.create(RuleJob, _id="in-own", title="ok")
        db.sync_session.wait_for_upload_completion(timeout=T)
        assert server.app.state.tidesync.backend.get_raw("RuleJob", "in-own")["_partition"] == user.id
        db.close()

        # "public": readable by all, writable by none of them
        pub = Device(server, tmp_path, "pub", partition="public")
        with pub.db.write():
            pub.db.create(RuleJob, _id="pub-write", title="no")
        writes = pub.compensated()
        assert [(w["id"], w["code"]) for w in writes] == [("pub-write", "partition_write_denied")]
        eventually(lambda: pub.db.get(RuleJob, "pub-write") is None)
        pub.close()

        # a placeholder or an operator as the partition value is a literal that matches nothing
        for i, hostile in enumerate(["%%user.id", '{"$ne": null}', "public' OR '1'='1"]):
            dev = Device(server, tmp_path, f"hostile{i}", partition=hostile)
            assert dev.error_seen.wait(T)
            assert isinstance(dev.errors[0], tidesync.PermissionDeniedError)
            dev.close()
        assert server.app.state.tidesync.backend.get_raw("RuleJob", "pub-write") is None
    finally:
        server.stop()
