"""A seeded simulation over a real server and real clients on 127.0.0.1.

3 to 5 clients, each behind its own :class:`~tests.helpers.proxy.ChaosProxy`, do random
writes to shared documents of one partition (creates, field sets, deletes, list inserts, moves and
erases, set adds and removes, dictionary puts and deletes, counter increments) while the
simulation pauses and resumes their sessions, takes their network away, cuts their
connections mid-upload and mid-download (mid-frame: the proxy counts bytes), closes their
WebSocket from under them, restarts their app (close and reopen the file), lets the last
client join late (snapshot bootstrap while others write), compacts the server's log (clients
behind it bootstrap again and keep their unsynced writes), and restarts the server on the
same port and data directory while clients keep writing.

Whenever a client's ``wait_for_upload_completion`` returns, every transaction it had committed
before the call must already be in the server's log (acknowledged means durable there).

At the end (everyone online and resumed, uploads and downloads complete) the simulation checks:

* every client and the server hold identical live documents;
* the server's log holds every transaction any client wrote, exactly once, and nothing else;
* the state is what the merge rules give for the set of all writes, computed here by an
  independent oracle from the clients' logs: registers and dictionary keys by the latest
  stamp, set members by the later of add and remove, list elements inserted and not erased,
  counters as the exact sum of every increment (nothing lost, nothing applied twice), and a
  deleted note deleted whatever was written to it concurrently.

The operation sequence is fixed by the seed (``TIDESYNC_SIM_SEED`` overrides it; the seed is in
every failure message); thread timing is not, so a failing run is reproduced by its seed in
spirit rather than byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest

import tidesync
from tests.helpers.proxy import ChaosProxy
from tests.helpers.servers import free_port
from tidesync.core.operations import (
    CounterAdd, CreateDoc, DeleteDoc, DictDel, DictPut, ListErase, ListInsert, ListMove, SetAdd, SetRemove, SetValue,
)
from tidesync.core.transaction import Transaction
from tidesync.server import RunningServer, ServerConfig, start_server

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("TIDESYNC_SIM_SEED", "20250611"))
T = 30  # bound on any single wait
BUDGET_S = 25.0  # the random phase stops early if it runs longer than this


class SimDoc(tidesync.Model):
    """A shared document that every client may create (concurrent creates merge); never deleted."""

    _id: str = tidesync.field(primary_key=True)
    title: str = ""
    rank: int = 0
    tags: list[str] = tidesync.field(default_factory=list)
    labels: set[str] = tidesync.field(default_factory=set)
    notes: dict[str, str] = tidesync.field(default_factory=dict)
    hits: tidesync.Counter = tidesync.field(default_factory=tidesync.Counter)


class SimNote(tidesync.Model):
    """A document created once (fresh id) that any client who has it may edit or delete."""

    _id: str = tidesync.field(primary_key=True)
    text: str = ""


DOC_IDS = [f"d{i}" for i in range(4)]
LABELS = list("abcdef")
NOTE_KEYS = ["k1", "k2", "k3"]


@dataclass
class Client:
    index: int
    path: Path
    proxy: ChaosProxy
    config: tidesync.SyncConfig
    db: tidesync.Database
    counter: int = 0
    paused: bool = False
    offline: bool = False
    acked: set[str] = field(default_factory=set)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.index}-{self.counter}"


def local_txn_ids(db: tidesync.Database) -> set[str]:
    with db._lock:
        return {r[0] for r in db._engine.query("SELECT id FROM log WHERE via IS NULL")}


def local_txns(db: tidesync.Database) -> list[Transaction]:
    with db._lock:
        rows = db._engine.query("SELECT data FROM log WHERE via IS NULL ORDER BY seq")
    return [Transaction.from_wire(msgpack.unpackb(r[0], raw=False)) for r in rows]


def log_ids(db: tidesync.Database) -> tuple[set[str], int]:
    """The distinct transaction ids in a replica's log, and the number of log rows."""
    with db._lock:
        rows = db._engine.query("SELECT id FROM log")
    return {r[0] for r in rows}, len(rows)


def integrated_ids(db: tidesync.Database) -> set[str]:
    """Every transaction id a replica has integrated, including those compacted out of its log
    (their descriptors stay, with the seq they were integrated at)."""
    with db._lock:
        rows = db._engine.query("SELECT id FROM log UNION SELECT id FROM descriptors WHERE seq IS NOT NULL")
    return {r[0] for r in rows}


def live_bodies(db: tidesync.Database) -> dict[tuple[str, str], Any]:
    with db._lock:
        rows = db._engine.query("SELECT collection, pk, body FROM documents WHERE live = 1")
    return {(c, pk): json.loads(body) for c, pk, body in rows}


def expected_state(txns: list[Transaction], partition: str) -> dict[tuple[str, str], Any]:
    """What the merge rules say the live documents are, given every transaction ever written.

    Independent of the merge core: it only sorts writes by stamp and adds up increments.
    """
    registers: dict[tuple[str, str, str], tuple[str, Any]] = {}   # (coll, id, field) -> (stamp, value)
    dict_keys: dict[tuple[str, str, str], tuple[str, bool, Any]] = {}  # (id, field, key) -> (stamp, put?, value)
    set_members: dict[tuple[str, str, Any], tuple[str, bool]] = {}     # (id, field, value) -> (stamp, add?)
    inserted: dict[tuple[str, str], dict[str, Any]] = {}              # (id, field) -> elem -> value
    erased: dict[tuple[str, str], set[str]] = {}
    counters: dict[tuple[str, str], int] = {}
    created: dict[tuple[str, str], dict[str, Any]] = {}               # fields of any create (defaults too)
    deleted: set[tuple[str, str]] = set()

    def lww(table: dict[Any, Any], key: Any, entry: tuple[Any, ...]) -> None:
        if key not in table or entry[0] > table[key][0]:
            table[key] = entry

    for t in txns:
        for op in t.ops:
            doc = (op.collection, op.key)
            if isinstance(op, CreateDoc):
                created.setdefault(doc, dict(op.fields))
                for name, value in op.fields.items():
                    if name not in op.defaults and name not in op.kinds:
                        lww(registers, (op.collection, op.key, name), (op.stamp, value))
            elif isinstance(op, DeleteDoc):
                deleted.add(doc)
            elif isinstance(op, SetValue):
                assert len(op.path) == 1 and not op.default
                lww(registers, (op.collection, op.key, op.path[0]), (op.stamp, op.value))
            elif isinstance(op, ListInsert):
                inserted.setdefault((op.key, op.path[0]), {})[op.elem] = op.value
            elif isinstance(op, ListErase):
                erased.setdefault((op.key, op.path[0]), set()).add(op.elem)
            elif isinstance(op, ListMove):
                continue          # the element stays itself: the inserted-and-not-erased multiset holds
            elif isinstance(op, (SetAdd, SetRemove)):
                lww(set_members, (op.key, op.path[0], json.dumps(op.value)), (op.stamp, isinstance(op, SetAdd)))
            elif isinstance(op, (DictPut, DictDel)):
                value = op.value if isinstance(op, DictPut) else None
                lww(dict_keys, (op.key, op.path[0], op.dkey), (op.stamp, isinstance(op, DictPut), value))
            elif isinstance(op, CounterAdd):
                counters[(op.key, op.path[0])] = counters.get((op.key, op.path[0]), 0) + op.amount
            else:
                raise AssertionError(f"the simulation does not make {type(op).__name__} operations")

    out: dict[tuple[str, str], Any] = {}
    for (coll, key), fields in created.items():
        if (coll, key) in deleted:
            continue
        body: dict[str, Any] = {}
        for name, initial in fields.items():
            if (coll, key, name) in registers:
                body[name] = registers[(coll, key, name)][1]
            else:
                body[name] = initial
        if coll == "SimDoc":
            body["tags"] = sorted(v for e, v in inserted.get((key, "tags"), {}).items()
                                  if e not in erased.get((key, "tags"), set()))
            body["labels"] = sorted(json.loads(v) for (k, f, v), (_, add) in set_members.items()
                                    if k == key and f == "labels" and add)
            body["notes"] = {dk: v for (k, f, dk), (_, put, v) in dict_keys.items() if k == key and f == "notes" and put}
            body["hits"] = counters.get((key, "hits"), 0)
        assert body.get("_partition") == partition
        out[(coll, json.dumps(key))] = body
    return out


def normalized(body: dict[str, Any]) -> dict[str, Any]:
    """A live body with list order and set order made comparable with the oracle's."""
    out = dict(body)
    if "tags" in out:
        out["tags"] = sorted(out["tags"])
    if "labels" in out:
        out["labels"] = sorted(out["labels"])
    return out


class Simulation:
    def __init__(self, tmp: Path, seed: int) -> None:
        self.tmp = tmp
        self.rng = random.Random(seed)
        self.seed = seed
        self.port = free_port()
        self.server: RunningServer | None = self._start_server()
        self.clients: list[Client] = []
        self.log: list[str] = []  # what happened, for failure messages
        self.max_clients = self.rng.randint(3, 5)
        for _ in range(self.max_clients - 1):
            self.add_client()  # the last one joins later, bootstrapping while others write

    def add_client(self) -> Client:
        i = len(self.clients)
        proxy = ChaosProxy(self.port)
        app = tidesync.App("default", base_url=proxy.url, storage_dir=self.tmp / f"users{i}")
        user = app.log_in(tidesync.Credentials.anonymous())
        config = tidesync.SyncConfig(user=user, partition="sim", batch_limit=self.rng.randint(1, 4),
                                     min_backoff=0.02, max_backoff=0.5)
        path = self.tmp / f"c{i}.db"
        c = Client(i, path, proxy, config, tidesync.open(path, schema=[SimDoc, SimNote], sync=config))
        self.clients.append(c)
        return c

    def reopen(self, c: Client) -> None:
        """The app restarts: close the file and open it again; sync resumes from its checkpoints."""
        c.db.close()
        c.db = tidesync.open(c.path, schema=[SimDoc, SimNote], sync=c.config)
        if c.paused:
            c.db.sync_session.pause()

    def _start_server(self) -> RunningServer:
        return start_server(ServerConfig(data_dir=self.tmp / "server", port=self.port))

    def where(self) -> str:
        return f"seed {self.seed}; last events: {self.log[-12:]}"

    def stats(self) -> dict[str, int]:
        """How much the faults did: cuts that fired, connections made through the proxies."""
        return {"clients": len(self.clients), "steps": len(self.log),
                "cuts": sum(c.proxy.cuts_done for c in self.clients),
                "connections": sum(c.proxy.accepted for c in self.clients),
                "transactions": sum(len(local_txn_ids(c.db)) for c in self.clients)}

    # -- random steps ----------------------------------------------------------------------

    def random_write(self, c: Client) -> None:
        rng, db = self.rng, c.db
        with db.write():
            for _ in range(rng.randint(1, 3)):
                kind = rng.choices(
                    ["doc_field", "list_insert", "list_erase", "list_move", "set", "dict", "counter",
                     "note_create", "note_set", "note_delete"],
                    weights=[3, 3, 2, 2, 2, 2, 3, 2, 2, 1])[0]
                if kind.startswith("note"):
                    # Results run SQL on the committed file; db.get() sees this transaction's deletes.
                    committed = [json.loads(pk) for (pk,) in db._engine.query(
                        "SELECT pk FROM documents WHERE collection = 'SimNote' AND live = 1 ORDER BY pk")]
                    notes = [n for n in (db.get(SimNote, k) for k in committed) if n is not None]
                    if kind == "note_create" or not notes:
                        db.create(SimNote, _id=c.fresh("n"), text=c.fresh("text"))
                    elif kind == "note_set":
                        rng.choice(notes).text = c.fresh("text")
                    else:
                        db.delete(rng.choice(notes))
                    continue
                key = rng.choice(DOC_IDS)
                doc = db.get(SimDoc, key)
                if doc is None:
                    doc = db.create(SimDoc, _id=key, title=c.fresh("t"))
                if kind == "doc_field":
                    if rng.random() < 0.5:
                        doc.title = c.fresh("t")
                    else:
                        doc.rank = rng.randint(-100, 100)
                elif kind == "list_insert":
                    doc.tags.insert(rng.randint(0, len(doc.tags)), c.fresh("e"))
                elif kind == "list_erase":
                    if len(doc.tags):
                        del doc.tags[rng.randrange(len(doc.tags))]
                elif kind == "list_move":
                    # A move never adds or drops an element: the expected multiset stays.
                    if len(doc.tags) > 1:
                        doc.tags.move(rng.randrange(len(doc.tags)), rng.randrange(len(doc.tags)))
                elif kind == "set":
                    value = rng.choice(LABELS)
                    if rng.random() < 0.6:
                        doc.labels.add(value)
                    else:
                        doc.labels.discard(value)
                elif kind == "dict":
                    dk = rng.choice(NOTE_KEYS)
                    if rng.random() < 0.7 or dk not in doc.notes:
                        doc.notes[dk] = c.fresh("v")
                    else:
                        del doc.notes[dk]
                else:
                    doc.hits.increment(rng.choice([1, 2, 3, 5, -1, 10]))

    def acknowledge(self, c: Client) -> None:
        """Wait for c's upload; everything it wrote before must then be in the server's log."""
        before = local_txn_ids(c.db)
        c.db.sync_session.wait_for_upload_completion(timeout=T)
        assert self.server is not None
        missing = before - integrated_ids(self.server.app.state.tidesync.backend)
        assert not missing, f"acknowledged transactions missing on the server: {sorted(missing)[:5]} ({self.where()})"
        c.acked |= before

    def step(self) -> None:
        rng = self.rng
        c = rng.choice(self.clients)
        action = rng.choices(
            ["write", "burst", "pause", "offline", "cut_up", "cut_down", "close_ws", "ack", "reopen", "join",
             "compact"],
            weights=[40, 6, 6, 4, 6, 6, 3, 8, 2, 1, 2])[0]
        self.log.append(f"{action}@{c.index}")
        if action == "write":
            self.random_write(c)
        elif action == "burst":
            for _ in range(rng.randint(3, 8)):
                self.random_write(c)
        elif action == "pause":
            if c.paused:
                c.db.sync_session.resume()
            else:
                c.db.sync_session.pause()
            c.paused = not c.paused
        elif action == "offline":
            c.offline = not c.offline
            c.proxy.set_offline(c.offline)
        elif action == "cut_up":
            # Cut c's connection after a few hundred bytes of upload: mid-frame, usually.
            c.proxy.cut_after(rng.randint(0, 600), "up")
            for _ in range(rng.randint(2, 6)):
                self.random_write(c)
        elif action == "cut_down":
            # Cut c's connection while it downloads what another client writes.
            c.proxy.cut_after(rng.randint(0, 900), "down")
            other = rng.choice([x for x in self.clients if x is not c])
            for _ in range(rng.randint(2, 6)):
                self.random_write(other)
        elif action == "close_ws":
            ws = c.db.sync_session._ws
            if ws is not None:
                with warnings.catch_warnings():
                    # websockets >= 17.1 warns on the first use of a connection not opened as a
                    # context manager (the session's); if that first use is this close, the
                    # warning is attributed to this line. It says nothing about sync.
                    warnings.filterwarnings("ignore", "connect.. must be used as a context manager",
                                            DeprecationWarning)
                    ws.close()
        elif action == "ack":
            if self.server is not None and not c.paused and not c.offline:
                self.acknowledge(c)
        elif action == "reopen":
            self.reopen(c)
        elif action == "compact":
            # The server drops old log entries: clients behind them bootstrap from a snapshot
            # and merge it, keeping their unsynced writes.
            if self.server is not None:
                self.server.app.state.tidesync.backend.compact_log(keep_last=rng.randint(0, 30))
        elif action == "join":
            if len(self.clients) < self.max_clients:
                self.random_write(self.add_client())

    def restart_server(self) -> None:
        assert self.server is not None
        self.log.append("server-stop")
        self.server.stop()
        self.server = None
        # Clients keep writing while the server is down.
        for _ in range(self.rng.randint(3, 8)):
            self.random_write(self.rng.choice(self.clients))
        self.server = self._start_server()
        self.log.append("server-start")

    def run(self, steps: int) -> None:
        start = time.monotonic()
        restart_at = self.rng.randint(steps // 3, 2 * steps // 3)
        for i in range(steps):
            if time.monotonic() - start > BUDGET_S:
                break
            if i == restart_at:
                self.restart_server()
            self.step()
        if self.server is None:
            self.server = self._start_server()
        while len(self.clients) < self.max_clients:
            self.add_client()

    # -- the end ----------------------------------------------------------------------------

    def settle(self) -> None:
        for c in self.clients:
            c.proxy.disarm()
            c.proxy.set_offline(False)
            c.offline = False
            c.db.sync_session.resume()
            c.paused = False
        for c in self.clients:
            self.acknowledge(c)
        for c in self.clients:
            c.db.sync_session.wait_for_download_completion(timeout=T)

    def check(self) -> None:
        assert self.server is not None
        backend = self.server.app.state.tidesync.backend
        server_state = live_bodies(backend)

        # Identical state everywhere.
        for c in self.clients:
            mine = live_bodies(c.db)
            assert mine == server_state, (
                f"client {c.index} differs from the server: only on the client "
                f"{sorted(set(mine) - set(server_state))[:5]}, only on the server "
                f"{sorted(set(server_state) - set(mine))[:5]}, different "
                f"{[(k, mine[k], server_state[k]) for k in mine if k in server_state and mine[k] != server_state[k]][:3]} "
                f"({self.where()})")

        # Every transaction written anywhere is in the server's log, exactly once; nothing else is.
        written: list[Transaction] = []
        for c in self.clients:
            written.extend(local_txns(c.db))
        ids = [t.id for t in written]
        assert len(ids) == len(set(ids)), "two clients minted the same transaction id"
        in_log, rows = log_ids(backend)
        assert rows == len(in_log), f"the server's log holds a transaction twice ({self.where()})"
        server_ids = integrated_ids(backend)
        assert server_ids == set(ids), (
            f"missing on the server: {sorted(set(ids) - server_ids)[:5]}, unknown to the clients: "
            f"{sorted(server_ids - set(ids))[:5]} ({self.where()})")
        for c in self.clients:
            assert c.acked <= server_ids
            cids, crows = log_ids(c.db)
            assert crows == len(cids), f"client {c.index}'s log holds a transaction twice ({self.where()})"

        # The state is what the merge rules make of all the writes (moves among them).
        assert any(isinstance(op, ListMove) for t in written for op in t.ops), "the run made no list moves"
        expected = expected_state(written, "sim")
        got = {k: normalized(v) for k, v in server_state.items()}
        assert set(got) == set(expected), (
            f"live documents: only expected {sorted(set(expected) - set(got))[:5]}, only on the server "
            f"{sorted(set(got) - set(expected))[:5]} ({self.where()})")
        for k in expected:
            assert got[k] == expected[k], f"{k}: server has {got[k]}, the merge rules give {expected[k]} ({self.where()})"

    def close(self) -> None:
        for c in self.clients:
            c.db.close()
            c.proxy.close()
        if self.server is not None:
            self.server.stop()


def test_random_clients_with_faults_and_a_server_restart_converge_without_loss(tmp_path):
    sim = Simulation(tmp_path, SEED)
    try:
        sim.run(steps=300)
        sim.settle()
        sim.check()
        # The faults happened (cuts fired, clients reconnected) and counters were exercised.
        stats = sim.stats()
        assert stats["cuts"] > 0 and stats["connections"] > 2 * stats["clients"], (stats, sim.where())
        assert any(d.hits.value for c in sim.clients for d in c.db.objects(SimDoc)), sim.where()
    finally:
        sim.close()
