"""A peer replica writing into a server's store, as its uploads reach it (``Database.integrate``)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc, Op, SetValue
from tidesync.core.stamp import ZERO, ReplicaId
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database

COLL = "Task"


class RemoteWriter:
    """One replica's transactions on documents of :data:`COLL`, each following the last
    (``parents``), integrated into ``db`` (a schema-less backend, as the server's)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.rid = ReplicaId(secrets.token_hex(8))
        self.clock = HybridClock(self.rid, lambda: time.time_ns() // 1_000_000)
        self.parents: tuple[Any, ...] = ()

    def created(self, key: str, body: dict[str, Any]) -> CreateDoc:
        """The operation creating document ``key`` with ``body`` (``_id`` added)."""
        return CreateDoc(COLL, key, self.clock.now(), ZERO, {"_id": key, **body}, {})

    def updated(self, key: str, field: str, value: Any) -> SetValue:
        """The operation setting top-level ``field`` of document ``key``."""
        return SetValue(COLL, key, self.clock.now(), ZERO, (field,), (), value)

    def transaction(self, ops: Sequence[Op]) -> Transaction:
        """The next transaction of this replica, of ``ops`` (not integrated)."""
        s = ops[0].stamp
        t = Transaction(s, self.rid, s, self.parents, tuple(ops))
        self.parents = (t.id,)
        return t

    def commit(self, *ops: Op) -> Transaction:
        """One transaction of ``ops``, integrated."""
        t = self.transaction(ops)
        self.db.integrate([t])
        return t

    def batch(self, ops_per_txn: list[list[Any]]) -> None:
        """Several transactions in one integration (one upload batch)."""
        self.db.integrate([self.transaction(ops) for ops in ops_per_txn])

    def create(self, key: str, body: dict[str, Any]) -> int:
        """Create document ``key``; the log's head after it."""
        self.commit(self.created(key, body))
        return self.db.head_seq()

    def set(self, key: str, field: str, value: Any) -> int:
        """Set ``field`` of document ``key``; the log's head after it."""
        self.commit(self.updated(key, field, value))
        return self.db.head_seq()
