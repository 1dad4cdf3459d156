"""Conflicts resolve by the merge rules end to end; policies; resolved conflicts are listed."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

import tidesync
from tests.helpers.servers import ROOT, running_server, synced_db
from tests.models import WorkOrder

pytestmark = pytest.mark.slow
T = 20


def _sync_all(*dbs):
    # One after the other, so the server receives the earlier-stamped write first and the
    # conflict is detected from the later arrival of the winner (the harder case).
    for db in dbs:
        db.sync_session.resume()
        db.sync_session.wait_for_upload_completion(timeout=T)
    for db in dbs:
        db.sync_session.wait_for_download_completion(timeout=T)


def _offline_pair(server, tmp_path):
    a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
    b = synced_db(tmp_path / "b.db", server.url, [WorkOrder])
    with a.write():
        wo = a.create(WorkOrder, title="start", tags=["a"], labels={"x"}, notes={"k": "v"}, priority=1)
    _sync_all(a, b)
    a.sync_session.pause()
    b.sync_session.pause()
    return a, b, wo._id


def test_concurrent_offline_edits_merge_by_the_rules(tmp_path):
    with running_server(tmp_path / "s") as server:
        a, b, pk = _offline_pair(server, tmp_path)
        try:
            wa, wb = a.get(WorkOrder, pk), b.get(WorkOrder, pk)
            with a.write():
                wa.title = "title from a"           # earlier stamp
                wa.status = "done"                   # a different field: both survive
                wa.tags.append("from-a")
                wa.labels.add("a-label")
                wa.notes["k"] = "a"
                wa.visits.increment(2)
            with b.write():
                wb.title = "title from b"           # later stamp: wins
                wb.tags.append("from-b")
                wb.labels.discard("x")
                wb.notes["other"] = "b"
                wb.visits.increment(3)
            _sync_all(a, b)
            for db in (a, b):
                w = db.get(WorkOrder, pk)
                assert w.title == "title from b"
                assert w.status == "done"
                assert sorted(w.tags) == ["a", "from-a", "from-b"] and w.tags[0] == "a"
                assert set(w.labels) == {"a-label"}
                assert dict(w.notes) == {"k": "a", "other": "b"}
                assert w.visits == 5
            assert list(a.get(WorkOrder, pk).tags) == list(b.get(WorkOrder, pk).tags)
            conflicts = server.app.state.tidesync.backend.conflicts()
            assert any(c["path"] == "title" and c["winner"] == "title from b" and c["loser"] == "title from a"
                       for c in conflicts), conflicts
        finally:
            a.close()
            b.close()


def test_delete_wins_over_a_concurrent_update(tmp_path):
    with running_server(tmp_path / "s") as server:
        a, b, pk = _offline_pair(server, tmp_path)
        try:
            with a.write():
                a.delete(a.get(WorkOrder, pk))
            with b.write():
                b.get(WorkOrder, pk).title = "edited later, while it was being deleted"
            _sync_all(a, b)
            assert a.get(WorkOrder, pk) is None and b.get(WorkOrder, pk) is None
        finally:
            a.close()
            b.close()


def test_concurrent_creates_of_one_id_merge(tmp_path):
    with running_server(tmp_path / "s") as server:
        a = synced_db(tmp_path / "a.db", server.url, [WorkOrder])
        b = synced_db(tmp_path / "b.db", server.url, [WorkOrder])
        try:
            a.sync_session.pause()
            b.sync_session.pause()
            pk = tidesync.ObjectId()
            with a.write():
                a.create(WorkOrder, _id=pk, title="a", tags=["ta"])
            with b.write():
                b.create(WorkOrder, _id=pk, title="b", priority=7, tags=["tb"])
            _sync_all(a, b)
            for db in (a, b):
                w = db.get(WorkOrder, pk)
                assert w.title == "b" and w.priority == 7 and sorted(w.tags) == ["ta", "tb"]
        finally:
            a.close()
            b.close()


def test_server_policy_max_applies_everywhere(tmp_path):
    policies = tidesync.Policies({("WorkOrder", "priority"): "max"})
    with running_server(tmp_path / "s", policies=policies) as server:
        a, b, pk = _offline_pair(server, tmp_path)
        try:
            with a.write():
                a.get(WorkOrder, pk).priority = 9   # earlier, but larger
            with b.write():
                b.get(WorkOrder, pk).priority = 3   # later, smaller
            _sync_all(a, b)
            assert a.get(WorkOrder, pk).priority == 9 == b.get(WorkOrder, pk).priority
            assert server.app.state.tidesync.backend.conflicts()[0]["rule"] in ("max", "policy:max")
        finally:
            a.close()
            b.close()


def test_conflicts_are_listed_by_the_api_and_the_cli(tmp_path):
    with running_server(tmp_path / "s") as server:
        a, b, pk = _offline_pair(server, tmp_path)
        try:
            with a.write():
                a.get(WorkOrder, pk).title = "one"
            with b.write():
                b.get(WorkOrder, pk).title = "two"
            _sync_all(a, b)
            token = a.sync_session.config.user.access_token
            req = urllib.request.Request(f"{server.url}/api/default/conflicts",
                                         headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                listed = json.loads(resp.read())["conflicts"]
            assert listed[0]["winner"] == "two" and listed[0]["loser"] == "one"
            assert listed[0]["winner_stamp"] > listed[0]["loser_stamp"]
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{server.url}/api/default/conflicts", timeout=10)
            assert info.value.code == 401
            info.value.close()
        finally:
            a.close()
            b.close()
    out = subprocess.run([sys.executable, "-m", "tidesync", "conflicts", "--data", str(tmp_path / "s"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    rows = json.loads(out.stdout)
    assert rows[0]["path"] == "title" and rows[0]["winner"] == "two"


def test_concurrent_list_moves_merge_as_device_sync_did(tmp_path):
    with running_server(tmp_path / "s") as server:
        a, b, pk = _offline_pair(server, tmp_path)
        try:
            with a.write():
                a.get(WorkOrder, pk).tags.extend(["b", "c", "d"])
            a.sync_session.resume()
            b.sync_session.resume()
            _sync_all(a, b)
            assert list(b.get(WorkOrder, pk).tags) == ["a", "b", "c", "d"]
            a.sync_session.pause()
            b.sync_session.pause()
            wa, wb = a.get(WorkOrder, pk), b.get(WorkOrder, pk)
            with a.write():
                wa.tags.move(0, 1)                   # earlier move of "a": loses (CR-16)
                wa.tags[3] = "D"                     # an edit of "d": follows B's move (CR-15)
            with b.write():
                wb.tags.move(0, 3)                   # later move of "a": wins
                wb.tags.move(2, 0)                   # "d" to the head
            _sync_all(b, a)                          # the server gets the winner first
            for db in (a, b):
                assert list(db.get(WorkOrder, pk).tags) == ["D", "b", "c", "a"]
            conflicts = server.app.state.tidesync.backend.conflicts()
            assert any(c["path"].startswith("tags.") and c["rule"] == "lww" and c["winner"] == "a"
                       for c in conflicts), conflicts
        finally:
            a.close()
            b.close()



def _edit_after_a_snapshot(server, tmp_path):
    """a creates and edits a document; with the server's log compacted, c and then b get it in
    a snapshot; c edits it again, having seen a's edit, and syncs."""
    a = synced_db(tmp_path / "a.db", server.url, [WorkOrder], partition="p1")
    with a.write():
        wo = a.create(WorkOrder, title="start")
    with a.write():
        a.get(WorkOrder, wo._id).title = "edited by a"
    a.sync_session.wait_for_upload_completion(timeout=T)
    server.app.state.tidesync.backend.compact_log(keep_last=0)
    c = synced_db(tmp_path / "c.db", server.url, [WorkOrder], partition="p1")
    c.sync_session.wait_for_download_completion(timeout=T)
    assert c.get(WorkOrder, wo._id).title == "edited by a"
    b = synced_db(tmp_path / "b.db", server.url, [WorkOrder], partition="p1")
    b.sync_session.wait_for_download_completion(timeout=T)
    for db in (b, c):
        assert db.history(10) == []  # it came as a snapshot: no history of the document
    with c.write():
        c.get(WorkOrder, wo._id).title = "later by c"
    c.sync_session.wait_for_upload_completion(timeout=T)
    b.sync_session.wait_for_download_completion(timeout=T)
    assert b.get(WorkOrder, wo._id).title == "later by c"
    return a, b, c


def test_a_device_bootstrapped_from_a_snapshot_records_no_conflict_for_a_later_edit(tmp_path):
    """A device that got a document in a snapshot has no history of who wrote its fields, so
    it cannot tell a later edit from a concurrent one: it claims no conflict (before, every
    edit by another device of a field written before its snapshot was listed as one)."""
    with running_server(tmp_path / "server") as server:
        dbs = _edit_after_a_snapshot(server, tmp_path)
        try:
            assert dbs[1].conflicts() == []
        finally:
            for db in dbs:
                db.close()


def test_the_server_records_no_conflict_for_an_edit_by_a_device_that_bootstrapped_from_a_snapshot(tmp_path):
    """c takes, with the snapshot, the latest stamp of each origin its documents hold as a
    "seen" parent, so its edit names a's as its causal past (it was listed as a conflict)."""
    with running_server(tmp_path / "server") as server:
        dbs = _edit_after_a_snapshot(server, tmp_path)
        try:
            assert server.app.state.tidesync.backend.conflicts() == []
        finally:
            for db in dbs:
                db.close()


def _overwrite_while_offline(server, a, c, pk):
    """a writes the document while c is offline; c, offline, writes it later (its stamp wins);
    both sync. Returns the server's conflict records as (winner, loser)."""
    a.sync_session.wait_for_download_completion(timeout=T)
    c.sync_session.pause()
    with a.write():
        a.get(WorkOrder, pk).title = "a again, c offline"
    a.sync_session.wait_for_upload_completion(timeout=T)
    with c.write():
        c.get(WorkOrder, pk).title = "c, offline"
    c.sync_session.resume()
    c.sync_session.wait_for_upload_completion(timeout=T)
    for db in (a, c):
        db.sync_session.wait_for_download_completion(timeout=T)
        assert db.get(WorkOrder, pk).title == "c, offline"
    return [(x["winner"], x["loser"]) for x in server.app.state.tidesync.backend.conflicts()]


def test_an_edit_concurrent_with_a_write_after_the_snapshot_is_still_a_conflict(tmp_path):
    """What the snapshot showed c is in its edit's past; a's later write, made while c was
    offline, is not: overwriting it is listed."""
    with running_server(tmp_path / "server") as server:
        a, b, c = _edit_after_a_snapshot(server, tmp_path)
        try:
            pk = c.objects(WorkOrder).first()._id
            assert _overwrite_while_offline(server, a, c, pk) == [("c, offline", "a again, c offline")]
        finally:
            for db in (a, b, c):
                db.close()


def _flexible_edit_of_an_entered_document(server, tmp_path):
    """a writes a document twice; flexible device c subscribes, gets it entering its view (a
    state, not a's transactions), and edits it."""
    from tests.helpers.flexible import Device

    a = synced_db(tmp_path / "a.db", server.url, [WorkOrder], partition=None)
    with a.write():
        wo = a.create(WorkOrder, title="start", status="open")
    with a.write():
        a.get(WorkOrder, wo._id).title = "edited by a"
    a.sync_session.wait_for_upload_completion(timeout=T)
    c = Device(server.url, tmp_path, "c", [WorkOrder]).db
    with c.subscriptions.update() as subs:
        subs.add(c.objects(WorkOrder).filter("status == 'open'"))
    c.subscriptions.wait_for_synchronization(timeout=T)
    assert c.get(WorkOrder, wo._id).title == "edited by a"
    return a, c, wo._id


def test_the_server_records_no_conflict_for_an_edit_of_a_document_that_entered_a_flexible_view(tmp_path):
    with running_server(tmp_path / "server") as server:
        a, c, pk = _flexible_edit_of_an_entered_document(server, tmp_path)
        try:
            with c.write():
                c.get(WorkOrder, pk).title = "later by c"
            c.sync_session.wait_for_upload_completion(timeout=T)
            a.sync_session.wait_for_download_completion(timeout=T)
            assert a.get(WorkOrder, pk).title == "later by c"
            assert server.app.state.tidesync.backend.conflicts() == []
        finally:
            a.close()
            c.close()


def test_an_edit_of_an_entered_document_concurrent_with_a_later_write_is_still_a_conflict(tmp_path):
    with running_server(tmp_path / "server") as server:
        a, c, pk = _flexible_edit_of_an_entered_document(server, tmp_path)
        try:
            assert _overwrite_while_offline(server, a, c, pk) == [("c, offline", "a again, c offline")]
        finally:
            a.close()
            c.close()
