"""``python -m bench.route_inprocess [CHANGES] [ROUND] [--sql] [--encode]``: the flexible router's CPU, in-process.

The routing case of ``python -m bench flexible`` without sockets, event loop or client fleet:
a schema-less server file with the case's 20,000 documents (and the bootstrap indexes of the
three queried fields), 1,000 bare flexible sessions with the case's three subscriptions each,
holding exactly their views; then the writer's CHANGES transactions (default 6,000) integrated
in upload batches of 500 as the server receives them (each batch encoded as ``Changes`` and
decoded again, ``codec.decode``, timed apart as ``decode``; then ``Database.integrate``, cyclic
GC paused as the server does), routed
every ROUND changes (default 2,000: about a 2 s round at the target) by ``Router.catch_up``, and
read by every session the round woke (``FlexibleSession.read_inline``: judging, documents
entering and leaving, view rows written one commit per 50 sessions). Prints the CPU
(``time.process_time``) per change of the three steps, and checks that every session holds
exactly its documents at the end. What the messages cost (encoding, sending, acks) is not
included. ``--sql``: also the CPU of each SQL statement of the integrations (the commit
included) per change, and the WAL frames each upload batch wrote (the WAL is checkpointed
before each batch; the extra statements are not counted in the figures). ``--encode``: also the
CPU of encoding each read's ``changes`` message (``codec.encode``, with its view part, as the
session sends it; not counted in ``reads``), per message. Compare trees back to back (``PYTHONPATH=src`` from each): the machine's load moves
the figures. A development aid; files under a temporary directory, removed at the end.
"""

from __future__ import annotations

import gc
import secrets
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tidesync.core.clock import HybridClock  # noqa: E402
from tidesync.core.operations import CreateDoc  # noqa: E402
from tidesync.core.stamp import ZERO, ReplicaId  # noqa: E402
from tidesync.core.transaction import Transaction  # noqa: E402
from tidesync.protocol import codec  # noqa: E402
from tidesync.protocol.messages import Changes, Progress  # noqa: E402
from tidesync.protocol.messages import SubscriptionQuery  # noqa: E402
from tidesync.server.flexible import FlexibleConfig, FlexibleSession, Router, ViewStore, compile_set  # noqa: E402
from tidesync.store.database import Database, _gc_paused  # noqa: E402

from bench.flexible_clients import (  # noqa: E402
    COLLECTION, final_states, workload_doc, workload_queries, writer_transactions,
)

CLIENTS, DOCS = 1000, 20_000
Ref = tuple[str, str]


def views_of(states: list[dict[str, Any]]) -> list[set[Ref]]:
    """Each client's view: its owner's, its region's, and its team's urgent documents."""
    by: dict[tuple[str, str], set[Ref]] = {}
    for x in states:
        ref = (COLLECTION, f'"{x["_id"]}"')
        by.setdefault(("o", x["owner"]), set()).add(ref)
        by.setdefault(("r", x["region"]), set()).add(ref)
        if x["status"] == "urgent":
            by.setdefault(("t", x["team"]), set()).add(ref)
    return [by.get(("o", f"u{i}"), set()) | by.get(("r", f"r{i}"), set()) | by.get(("t", f"g{i % 100}"), set())
            for i in range(CLIENTS)]


def session(router: Router, db: Database, cfg: FlexibleConfig, i: int) -> FlexibleSession:
    """A bare session (no connection) that reads as a connected one does."""
    s = FlexibleSession.__new__(FlexibleSession)
    s.config, s.peer = cfg, ReplicaId(f"p{i:04d}")
    s.held, s.relevant, s.indexed = set(), deque(), []
    s.rules, s._closed = None, False
    s._set_subs(compile_set([SubscriptionQuery(n, COLLECTION, q) for n, q in workload_queries(i)], cfg), 1)
    router.register(s)
    s.backend, s.router, s.reader = db, router, None
    s.uncertain, s.left, s.unacked, s.outbox = set(), set(), deque(), deque()
    s.version = s.view_seq = s.sent_docs = s.sent_leaves = 0
    s._first_read = s.resync = False
    s.registered = s.fold = True
    return s


class _SqlTimes:
    """The CPU of each statement the backend's engine runs while ``on`` (``--sql``)."""

    def __init__(self) -> None:
        from tidesync.store.engine import Engine

        self.on = False
        self.cpu: dict[str, float] = {}
        self.frames: list[int] = []
        for name in ("_run", "executemany", "query"):
            orig = getattr(Engine, name)

            def timed(engine: Any, sql: str, *args: Any, _orig: Any = orig, **kwargs: Any) -> Any:
                if not self.on:
                    return _orig(engine, sql, *args, **kwargs)
                c = time.process_time()
                try:
                    return _orig(engine, sql, *args, **kwargs)
                finally:
                    key = " ".join(sql.split())[:60]
                    self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c
            setattr(Engine, name, timed)

    def report(self, changes: int) -> str:
        lines = [f"  {v / changes * 1e6:6.1f} us/change  {k}" for k, v in sorted(self.cpu.items(), key=lambda x: -x[1])
                 if v / changes >= 0.5e-6]
        return "\n".join([f"SQL of the integrations: {sum(self.cpu.values()) / changes * 1e6:.0f} us/change", *lines,
                          f"WAL frames per upload batch: {self.frames}"])


def main(changes: int, round_size: int, sql: bool = False, encoding: bool = False) -> None:
    work = Path(tempfile.mkdtemp(prefix="tidesync-route-"))
    try:
        db = Database(work / "sync.db", (), partition_key="_partition")
        rid = ReplicaId(secrets.token_hex(8))
        clock = HybridClock(rid, lambda: time.time_ns() // 1_000_000)
        docs = [workload_doc(k, CLIENTS) for k in range(DOCS)]
        ops = tuple(CreateDoc(COLLECTION, x["_id"], clock.now(), ZERO, x, {}) for x in docs)
        seed = Transaction(ops[0].stamp, rid, ops[0].stamp, (), ops)  # type: ignore[arg-type]
        db.integrate([seed])
        router = Router(db, ViewStore(work / "flexible.db"))
        cfg = FlexibleConfig(all_fields=True)
        for fieldname in ("owner", "region", "team"):
            router.ensure_index(fieldname, cfg)
        sessions = [session(router, db, cfg, i) for i in range(CLIENTS)]
        for s, view in zip(sessions, views_of(docs)):
            router.hold(s, view)
        router.catch_up()
        for s in sessions:
            s.routed_from = s.read_to = router.processed_to
        w = {"clients": CLIENTS, "docs": DOCS, "changes": changes, "seed": 5, "flip": 0.05}
        txns = writer_transactions(w, rid, (seed.id,))
        # The writer's upload batches as they travel (seq i + 2 is txns[i]: the seed is 1).
        payloads = {b: codec.encode(Changes(b + 1, b + 1 + len(txns[b:b + 500]), len(txns) + 1,
                                            tuple((b + 2 + i, t) for i, t in enumerate(txns[b:b + 500]))))
                    for b in range(0, changes, 500)}
        times = _SqlTimes() if sql else None
        encode = [0.0, 0] if encoding else None
        gc.collect()
        cpu = {"decode": 0.0, "integrate": 0.0, "catch_up": 0.0, "reads": 0.0}
        entries = enters = 0
        clock_cpu = time.process_time
        for start in range(0, changes, round_size):
            for b in range(start, min(changes, start + round_size), 500):
                c = clock_cpu()
                with _gc_paused(promote=True):
                    message = codec.decode(payloads[b])
                d = clock_cpu()
                cpu["decode"] += d - c
                if times is not None:
                    db._engine.query("PRAGMA wal_checkpoint(TRUNCATE)")
                    d = clock_cpu()
                    times.on = True
                with _gc_paused():
                    db.integrate([t for _, t in message.entries], peer="writer", peer_seq=b)
                cpu["integrate"] += clock_cpu() - d
                if times is not None:
                    times.on = False
                    times.frames.append(int(db._engine.query("PRAGMA wal_checkpoint(PASSIVE)")[0][1]))
            c = clock_cpu()
            router.catch_up()
            cpu["catch_up"] += clock_cpu() - c
            woken, router._woken = router._woken, set()
            c = clock_cpu()
            encoded_before = encode[0] if encode is not None else 0.0
            router.views.begin()
            for n, s in enumerate(sorted(woken, key=lambda s: str(s.peer))):
                after = s.read_to
                batch = s.read_inline(after, 100_000, 1 << 24, None)
                if batch is None:
                    raise SystemExit("an inline read was refused")
                entries += len(batch.entries)
                if encode is not None:
                    message = Changes(after, batch.scanned_to, batch.head, batch.entries,
                                      Progress(len(batch.entries), 20_000, 300_000, 9_000_000))
                    if s.folded is not None:
                        message = message.with_view(s.folded)
                    e = clock_cpu()
                    codec.encode(message)
                    encode[0] += clock_cpu() - e
                    encode[1] += 1
                if s.folded is not None:       # (the Changes it would ride in takes it)
                    enters += len(s.folded.enter)
                    s.folded = None
                s.held_back = False
                if n % 50 == 49:
                    router.flush_views(reopen=True)
            router.flush_views()
            cpu["reads"] += clock_cpu() - c - (encode[0] - encoded_before if encode is not None else 0.0)
        final = final_states(w)
        now = [{**x, "n": final[x["_id"]][0], "status": final[x["_id"]][1]} for x in docs]
        wrong = sum(want != s.held for s, want in zip(sessions, views_of(now)))
        db.close()
        print(f"{changes:,} changes, routed every {round_size:,}: "
              + ", ".join(f"{k} {v:.2f} s ({v / changes * 1e6:.0f} us/change)" for k, v in cpu.items())
              + f"; entries read {entries:,}, documents entered {enters:,}; sessions not exact {wrong}")
        if times is not None:
            print(times.report(changes))
        if encode is not None:
            print(f"encoding the reads' changes messages: {encode[0] / max(1, encode[1]) * 1e6:.1f} us per message "
                  f"({encode[1]:,} messages)")
        if wrong:
            raise SystemExit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a not in ("--sql", "--encode")]
    main(int(args[0]) if args else 6000, int(args[1]) if len(args) > 1 else 2000, "--sql" in sys.argv[1:],
         "--encode" in sys.argv[1:])
