"""The layout of tidesync's own tables in a database file, and their migrations.

=============  =================================================================================
table          what it holds
=============  =================================================================================
settings       key/value: file format version, replica id, schema (JSON), last clock stamp
documents      one row per document ever seen: collection, canonical-JSON primary key, the
               materialized body (JSON, plain form; what queries read), merge metadata (JSON),
               incarnation epoch, live flag (0 = tombstone), seq of the last change, and
               ``scope``: the canonical JSON of the document's partition value (kept in the
               tombstone, so a delete still reaches the partition's devices)
log            one row per integrated transaction, in local change-sequence order (``seq``):
               id, origin, stamp, the transaction itself (msgpack of its wire form, where a
               local bulk update may be a columns record, see ``Transaction.from_stored``), and
               ``via``: the peer it was received from (NULL for local writes)
descriptors    one row per known transaction, held or only announced (``seq`` NULL)
heads          the transaction ids no later local transaction names as parent (the DAG heads)
checkpoints    per peer: ``received`` (the peer's seq integrated here), ``acked`` (our seq the
               peer acknowledged)
conflicts      every resolved conflict: losing and winning values and stamps
subscriptions  flexible sync: one row per subscription set version (its queries as JSON, its
               state and error message); see ``tidesync.client.subscriptions``
=============  =================================================================================
"""

from __future__ import annotations

__all__ = ["FORMAT_VERSION", "INSERT_DOCUMENT", "MIGRATIONS", "UPSERT_DOCUMENT"]

#: A new document row; parameters (collection, pk, body, meta, epoch, live, seq, scope).
INSERT_DOCUMENT = ("INSERT INTO documents (collection, pk, body, meta, epoch, live, seq, scope) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")

#: A document row written whole, new or not; the same parameters. A row's scope is kept when
#: the new one has none (a tombstone keeps the partition it was deleted in).
UPSERT_DOCUMENT = (INSERT_DOCUMENT + " ON CONFLICT(collection, pk) DO UPDATE SET body = excluded.body, "
                   "meta = excluded.meta, epoch = excluded.epoch, live = excluded.live, seq = excluded.seq, "
                   "scope = coalesce(excluded.scope, documents.scope)")

#: The format of files this version writes. A file of format ``v`` is brought up to date by
#: running ``MIGRATIONS[v:]`` in order (one transaction); a new file runs them all.
FORMAT_VERSION = 3

MIGRATIONS: list[list[str]] = [
    # version 1
    [
        "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE IF NOT EXISTS documents (
            collection TEXT NOT NULL,
            pk TEXT NOT NULL,
            body TEXT NOT NULL,
            meta TEXT NOT NULL,
            epoch TEXT NOT NULL,
            live INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            scope TEXT
        )""",
        "CREATE UNIQUE INDEX IF NOT EXISTS documents_key ON documents (collection, pk)",
        "CREATE INDEX IF NOT EXISTS documents_seq ON documents (seq)",
        "CREATE INDEX IF NOT EXISTS documents_scope ON documents (scope, collection)",
        """CREATE TABLE IF NOT EXISTS log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            origin TEXT NOT NULL,
            stamp TEXT NOT NULL,
            data BLOB NOT NULL,
            via TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS descriptors (
            id TEXT PRIMARY KEY,
            origin TEXT NOT NULL,
            user TEXT,
            stamp TEXT NOT NULL,
            data BLOB NOT NULL,
            seq INTEGER
        )""",
        "CREATE TABLE IF NOT EXISTS heads (id TEXT PRIMARY KEY)",
        """CREATE TABLE IF NOT EXISTS checkpoints (
            peer TEXT PRIMARY KEY,
            received INTEGER NOT NULL DEFAULT 0,
            acked INTEGER NOT NULL DEFAULT 0,
            data TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS conflicts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            txn TEXT NOT NULL,
            collection TEXT NOT NULL,
            pk TEXT NOT NULL,
            path TEXT NOT NULL,
            rule TEXT NOT NULL,
            winner TEXT,
            winner_stamp TEXT,
            loser TEXT,
            loser_stamp TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS subscriptions (
            version INTEGER PRIMARY KEY,
            state TEXT NOT NULL,
            error TEXT,
            queries TEXT NOT NULL,
            created REAL NOT NULL
        )""",
    ],
    # version 2: cheaper document writes. Nothing looks documents up by seq; the scope index
    # only serves partition lookups (``scope = ?``), so the rows of unpartitioned documents
    # (scope NULL, the common case on a device) stay out of it.
    [
        "DROP INDEX IF EXISTS documents_seq",
        "DROP INDEX IF EXISTS documents_scope",
        "CREATE INDEX IF NOT EXISTS documents_scope ON documents (scope, collection) WHERE scope IS NOT NULL",
    ],
    # version 3: a log entry may hold columns records (many top-level field sets and their
    # before-images in one record, see tidesync.core.operations.SET_COLUMNS). No table
    # changes: entries of older files read as they are; the version keeps older tidesync
    # versions, which cannot read such entries, from opening the file.
    [],
]
