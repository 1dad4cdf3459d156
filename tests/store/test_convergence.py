"""Convergence through the SQLite store: replicas exchanging transactions in any order agree."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tidesync
from tests.models import WorkOrder

KEYS = [tidesync.ObjectId(bytes([i]) * 12) for i in range(3)]


def _random_edits(db, rng: random.Random, n: int) -> None:
    for _ in range(n):
        with db.write():
            pk = rng.choice(KEYS)
            wo = db.get(WorkOrder, pk)
            action = rng.random()
            if wo is None:
                db.create(WorkOrder, _id=pk, title=f"t{rng.randint(0, 9)}", tags=[f"c{rng.randint(0, 9)}"])
            elif action < 0.15:
                db.delete(wo)
            elif action < 0.35:
                wo.title = f"t{rng.randint(0, 99)}"
            elif action < 0.5:
                wo.tags.insert(rng.randint(0, len(wo.tags)), f"x{rng.randint(0, 9)}")
            elif action < 0.6 and len(wo.tags):
                del wo.tags[rng.randrange(len(wo.tags))]
            elif action < 0.7:
                wo.labels.add(f"l{rng.randint(0, 3)}")
            elif action < 0.75:
                wo.labels.discard(f"l{rng.randint(0, 3)}")
            elif action < 0.85:
                wo.visits.increment(rng.randint(1, 5))
            elif action < 0.9:
                wo.notes[f"k{rng.randint(0, 2)}"] = f"v{rng.randint(0, 9)}"
            else:
                wo.priority = rng.randint(0, 5)


def _state(db):
    out = {}
    for wo in db.objects(WorkOrder):
        out[str(wo._id)] = (wo.title, list(wo.tags), sorted(wo.labels), dict(wo.notes), int(wo.visits), wo.priority)
    return out


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_three_replicas_converge_in_every_order_with_duplicates(tmp_path_factory, seed):
    rng = random.Random(seed)
    base = tmp_path_factory.mktemp("conv")
    sources = [tidesync.open(base / f"src{i}.db", schema=[WorkOrder]) for i in range(3)]
    try:
        # a shared start, then concurrent offline edits
        with sources[0].write():
            sources[0].create(WorkOrder, _id=KEYS[0], title="start", tags=["a", "b"])
        for s in sources[1:]:
            s.integrate(sources[0].export_transactions())
        for s in sources:
            _random_edits(s, rng, 6)
        txns = [t for s in sources for t in s.export_transactions()]
        states = []
        orders = list(itertools.permutations(range(len(sources))))
        rng.shuffle(orders)
        for k, order in enumerate(orders[:3]):
            with tidesync.open(base / f"dst{k}.db", schema=[WorkOrder]) as dst:
                batch = [t for i in order for t in sources[i].export_transactions()]
                dup = rng.sample(batch, k=min(3, len(batch)))
                shuffled = batch + dup
                rng.shuffle(shuffled)
                for i in range(0, len(shuffled), 4):
                    dst.integrate(shuffled[i:i + 4])
                states.append(_state(dst))
        for s in sources:
            s.integrate(txns)
            states.append(_state(s))
        assert all(st_ == states[0] for st_ in states), states
    finally:
        for s in sources:
            s.close()


def _file_state(db):
    q = db._engine.query
    return {
        "log": q("SELECT seq, id, origin, stamp, data, via FROM log ORDER BY seq"),
        "descriptors": q("SELECT id, origin, user, stamp, data, seq FROM descriptors ORDER BY id"),
        "heads": q("SELECT id FROM heads ORDER BY id"),
        "documents": q("SELECT collection, pk, body, meta, epoch, live, seq, scope FROM documents ORDER BY pk"),
        "conflicts": q("SELECT txn, collection, pk, path, rule, winner, loser FROM conflicts ORDER BY txn, path"),
        "order": q("SELECT pk FROM documents ORDER BY rowid"),
    }


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_integrating_a_batch_writes_the_file_as_one_at_a_time_would(tmp_path_factory, seed):
    # A batch is integrated with its log entries, descriptors and heads written together:
    # the file must end up exactly as with one integrate() per transaction, seqs included
    # (also after a compaction left the AUTOINCREMENT counter above the log's last entry).
    rng = random.Random(seed)
    base = tmp_path_factory.mktemp("batch")
    sources = [tidesync.open(base / f"src{i}.db", schema=[WorkOrder]) for i in range(2)]
    try:
        with sources[0].write():
            sources[0].create(WorkOrder, _id=KEYS[0], title="start", tags=["a"])
        sources[1].integrate(sources[0].export_transactions())
        for s in sources:
            _random_edits(s, rng, 8)
        txns = [t for s in sources for t in s.export_transactions()]
        rng.shuffle(txns)
        states = []
        for mode in ("one", "batch"):
            with tidesync.open(base / f"{mode}.db", schema=[WorkOrder]) as dst:
                dst.integrate(txns[:2])
                dst.compact_log(0)
                if mode == "one":
                    for t in txns:
                        dst.integrate([t], peer="00000000000000ab", peer_seq=1)
                else:
                    dst.integrate(txns, peer="00000000000000ab", peer_seq=1)
                states.append(_file_state(dst))
        assert states[0] == states[1]
        # After the compacted entries (1 and 2, or only 1 when both were the same transaction,
        # which both sources export once one integrated the other's).
        assert states[1]["log"][0][0] == len({t.id for t in txns[:2]}) + 1
    finally:
        for s in sources:
            s.close()


def test_latest_stamp_of_a_snapshot_page_is_the_latest_of_each_document():
    from tidesync.core import merge
    from tidesync.store.replica import _latest_of

    def stamp(wall: int, rid: str = "a") -> str:
        return f"{wall:012x}000000" + rid * 16

    rng = random.Random(5)
    for _ in range(200):
        states = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.4:
                meta = {"*": stamp(rng.randint(1, 99), rng.choice("abc"))}
            elif kind < 0.5:
                meta = {"*": rng.choice(["zz" * 20, 7, "", "g" * 34])}  # not stamps: ignored
            elif kind < 0.8:
                meta = {"r": {"title": stamp(rng.randint(1, 99))}}
            else:
                meta = {}
            epoch = rng.choice(["", stamp(rng.randint(1, 99))])
            states.append(("c", ("c", '"k"'), merge.DocState(epoch, True, {}, meta)))
        assert _latest_of(states) == max(merge.latest_stamp(st) for _, _, st in states)


def test_snapshot_json_text_is_stored_as_received_on_a_device_and_re_encoded_on_a_server(tmp_path):
    from tidesync.core.stamp import ReplicaId
    from tidesync.protocol.messages import SnapshotDoc
    from tidesync.store.database import Database

    docs = [SnapshotDoc.from_json_wire(["WorkOrder", "k1", "", True, '{"_id": "k1", "title": "t"}', "{}"]),
            SnapshotDoc.from_json_wire(["WorkOrder", "k2", "", True, '{"_id":"k2","title":"u"}', "{}"])]
    peer = ReplicaId("00000000000000ab")
    stored = {}
    for name, serving in (("device", False), ("server", True)):
        db = Database(tmp_path / f"{name}.db", (), bootstrap_with_snapshot=serving)
        try:
            db.integrate_snapshot(docs, peer=peer, as_of_seq=1)
            stored[name] = db._engine.query("SELECT pk, body FROM documents ORDER BY pk")
        finally:
            db.close()
    assert stored["device"] == [('"k1"', '{"_id": "k1", "title": "t"}'), ('"k2"', '{"_id":"k2","title":"u"}')]
    assert stored["server"] == [('"k1"', '{"_id":"k1","title":"t"}'), ('"k2"', '{"_id":"k2","title":"u"}')]


def test_a_device_joins_json_text_documents_as_it_joins_their_map_form(tmp_path):
    # Documents a device does not hold are stored from their received text without a merge
    # state; the rows, the change numbers and the clock must be what the merge path gives.
    from tidesync.core.stamp import ReplicaId
    from tidesync.core.values import compact_json
    from tidesync.protocol.messages import SnapshotDoc
    from tidesync.store.database import Database

    def stamp(wall: int, rid: str) -> str:
        return f"{wall:012x}000000" + rid * 16

    rng = random.Random(11)
    pages = []
    for _ in range(4):
        page = []
        for _ in range(30):
            key = f"k{rng.randint(0, 40)}"  # repeats: within a page and across pages
            wall = rng.randint(1, 999)
            kind = rng.random()
            if kind < 0.6:
                state = {"epoch": "", "live": True, "body": {"_id": key, "title": f"t{wall}"},
                         "meta": {"*": stamp(wall, rng.choice("ab"))}}
            elif kind < 0.8:
                state = {"epoch": stamp(wall, "c"), "live": False, "body": {}, "meta": {}}
            else:
                state = {"epoch": "", "live": True, "body": {"_id": key, "title": "r"},
                         "meta": {"r": {"title": "@" + stamp(wall, "d")}}}
            page.append(("WorkOrder", key, state))
        pages.append(page)
    peer = ReplicaId("00000000000000ab")
    stored = []
    for as_text in (False, True):
        db = Database(tmp_path / f"device{as_text}.db", ())
        try:
            for page in pages:
                docs = [SnapshotDoc.from_json_wire([c, k, s["epoch"], s["live"], compact_json(s["body"]),
                                                    compact_json(s["meta"])]) if as_text
                        else SnapshotDoc(c, k, s) for c, k, s in page]
                db.integrate_snapshot(docs, peer=peer, as_of_seq=1)
            stored.append((db._engine.query("SELECT * FROM documents ORDER BY collection, pk"),
                           [(k, v[:18] if k == "clock" else v)  # the replica id differs
                            for k, v in db._engine.query("SELECT * FROM settings ORDER BY 1") if k != "replica_id"]))
        finally:
            db.close()
    assert stored[0] == stored[1]
    assert len(stored[0][0]) > 20


@pytest.mark.parametrize("insert_limit", [None, 4])
def test_a_device_stores_a_page_of_columns_as_the_per_document_path_would(tmp_path, insert_limit):
    # A page decoded as columns (DocColumns: every document in the common form) is stored
    # column by column when the device holds none of its documents; the rows, change numbers,
    # clock and snapshot settings must be those of the per-document path, and a page that
    # repeats or holds a document falls back to it. With insert_limit, a page takes several
    # INSERT statements (as on an SQLite build with fewer parameters per statement): one
    # refused late in the page must leave nothing of the earlier ones.
    import json

    from tidesync.core.stamp import ReplicaId
    from tidesync.protocol.messages import DocColumns, Snapshot
    from tidesync.store.database import Database

    def stamp(wall: int, rid: str) -> str:
        return f"{wall:012x}000000" + rid * 16

    rng = random.Random(17)
    pages = []
    used: list[object] = []
    for p in range(16):
        page = []
        for i in range(rng.randint(1, 25)):
            key: object = rng.choice([f"k{p}-{i}", f"k{p}-{i}", f'q"{p}-{i}', p * 100 + i])
            if used and rng.random() < (0.2 if p % 4 == 3 else 0.002):  # held, or twice in the page
                key = rng.choice(used)
            used.append(key)
            part = rng.choice(["p", "p", "p", "q", 1, None, -0.0, 0.0]) if p % 2 else "p"
            body = {"_id": str(key), "title": f"t{rng.randint(0, 9)}", "_partition": part}
            if part is None and rng.random() < 0.5:
                del body["_partition"]
            epoch = rng.choice(["", "", stamp(rng.randint(1, 999), "c")])
            live = rng.random() < 0.9
            if not live and p % 5 != 4:  # else maybe a tombstone never created (joined)
                epoch = stamp(rng.randint(1, 999), "c")
            page.append([rng.choice(["WorkOrder", "WorkOrder", "Other"]), key, epoch, live,
                         json.dumps(body, separators=(",", ":")),
                         '{"*":"' + stamp(rng.randint(1, 999), rng.choice("ab")) + '"}'])
        pages.append(page)
    pages.append([["WorkOrder", "t1", "", False, "{}", '{"*":"' + stamp(5, "a") + '"}']])  # never created
    peer = ReplicaId("00000000000000ab")
    stored = []
    columns_seen = 0
    for as_columns in (False, True):
        db = Database(tmp_path / f"device{as_columns}.db", (), partition_key="_partition")
        if insert_limit is not None:
            db._insert_limit = insert_limit
        try:
            for i, page in enumerate(pages):
                decoded = Snapshot.from_body({"page": 0, "docs": page, "as_of_seq": i, "done": True}, plain=True)
                assert type(decoded.docs) is DocColumns
                docs = decoded.docs if as_columns else tuple(decoded.docs)
                columns_seen += as_columns
                db.integrate_snapshot(docs, peer=peer, as_of_seq=i if i % 3 else None)
            stored.append((db._engine.query("SELECT * FROM documents ORDER BY collection, pk"),
                           [(k, v[:18] if k == "clock" else v)  # the replica id differs
                            for k, v in db._engine.query("SELECT * FROM settings ORDER BY 1") if k != "replica_id"],
                           db._engine.query("SELECT * FROM checkpoints")))
        finally:
            db.close()
    assert stored[0] == stored[1]
    assert columns_seen == len(pages) and len(stored[0][0]) > 40
