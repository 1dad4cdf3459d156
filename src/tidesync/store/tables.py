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

Value columns (a server's flexible router, see :func:`value_column_sql`): ``documents`` may
have, per queried top-level field ``f``, a column ``v_f`` holding ``json_extract(body, '$.f')``
and an index ``documents_v_f`` on ``(collection, v_f)``. The integration writes the column
with the row; two triggers (``documents_values_insert`` / ``_update``) set it again whenever a
row's body and its columns disagree, so every other write keeps it right. An update whose
body keeps the field's value does not assign the column, so SQLite leaves its index alone
(an expression index on the body was rewritten, a delete and an insert, by every write).
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["FORMAT_VERSION", "INSERT_DOCUMENT", "MIGRATIONS", "UPDATE_DOCUMENT", "UPDATE_DOCUMENT_SAME_SCOPE",
           "UPDATE_DOCUMENT_VALUES_KEPT", "UPSERT_DOCUMENT", "VALUES_KEPT", "VALUE_FIELD",
           "upsert_values_sql", "value_column_sql", "value_triggers_sql"]

#: A new document row; parameters (collection, pk, body, meta, epoch, live, seq, scope).
INSERT_DOCUMENT = ("INSERT INTO documents (collection, pk, body, meta, epoch, live, seq, scope) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")

#: A document row written whole, new or not; the same parameters. A row's scope is kept when
#: the new one has none (a tombstone keeps the partition it was deleted in).
UPSERT_DOCUMENT = (INSERT_DOCUMENT + " ON CONFLICT(collection, pk) DO UPDATE SET body = excluded.body, "
                   "meta = excluded.meta, epoch = excluded.epoch, live = excluded.live, seq = excluded.seq, "
                   "scope = coalesce(excluded.scope, documents.scope)")

#: A document row the file holds, written whole: ``UPSERT_DOCUMENT``'s update, parameters
#: (body, meta, epoch, live, seq, scope, collection, pk).
UPDATE_DOCUMENT = ("UPDATE documents SET body = ?, meta = ?, epoch = ?, live = ?, seq = ?, "
                   "scope = coalesce(?, scope) WHERE collection = ? AND pk = ?")

#: ``UPDATE_DOCUMENT`` of a row whose scope stays (it does not assign the column, so SQLite
#: leaves the scope index alone); parameters (body, meta, epoch, live, seq, collection, pk).
UPDATE_DOCUMENT_SAME_SCOPE = ("UPDATE documents SET body = ?, meta = ?, epoch = ?, live = ?, seq = ? "
                              "WHERE collection = ? AND pk = ?")

#: The column of ``documents`` through which an update vouches that it left every value column
#: right (it wrote none of their fields): an update that changes it is not checked by the
#: update trigger (:func:`value_triggers_sql`). Only :data:`UPDATE_DOCUMENT_VALUES_KEPT` changes
#: it; every other write leaves it as it was, and so is checked. Added with the first value column.
VALUES_KEPT = "values_kept"

#: ``UPDATE_DOCUMENT_SAME_SCOPE`` of a row whose value fields the writer knows it did not
#: write (the server's lean integration of register writes: it holds the fields it wrote), in a
#: file with value columns: it sets :data:`VALUES_KEPT` to the new seq, so the update trigger
#: skips its condition (three ``json_extract`` parses of the body for three columns). Same
#: parameters (body, meta, epoch, live, seq, collection, pk).
UPDATE_DOCUMENT_VALUES_KEPT = ("UPDATE documents SET body = ?1, meta = ?2, epoch = ?3, live = ?4, seq = ?5, "
                               f"{VALUES_KEPT} = ?5 WHERE collection = ?6 AND pk = ?7")

#: A field that may have a value column: a plain identifier (it is written into SQL as is).
VALUE_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

_UPSERT_SET = UPSERT_DOCUMENT.partition(" ON CONFLICT")[2]


def value_column_sql(field: str) -> list[str]:
    """The statements that give ``documents`` a value column for ``field`` (a
    :data:`VALUE_FIELD`), fill it and index it; then (re)create the triggers
    (:func:`value_triggers_sql`) for every value column."""
    return [f"ALTER TABLE documents ADD COLUMN v_{field}",
            f"UPDATE documents SET v_{field} = json_extract(body, '$.{field}') "
            f"WHERE json_extract(body, '$.{field}') IS NOT NULL",
            f"CREATE INDEX IF NOT EXISTS documents_v_{field} ON documents (collection, v_{field})"]


def value_triggers_sql(fields: tuple[str, ...]) -> list[str]:
    """Drop and create the triggers that set the value columns of ``fields`` from the body
    whenever a written row's columns disagree with it (none for no fields). Their condition
    is all a write that kept them right pays: no second write of the row. An update that
    changes :data:`VALUES_KEPT` (the file has it with its first value column) vouches for the
    columns and is not checked."""
    out = ["DROP TRIGGER IF EXISTS documents_values_insert", "DROP TRIGGER IF EXISTS documents_values_update"]
    if fields:
        stale = " OR ".join(f"new.v_{f} IS NOT json_extract(new.body, '$.{f}')" for f in fields)
        fix = ", ".join(f"v_{f} = json_extract(new.body, '$.{f}')" for f in fields)
        body = f"WHEN {stale} BEGIN UPDATE documents SET {fix} WHERE rowid = new.rowid; END"
        kept = (f"WHEN new.{VALUES_KEPT} IS old.{VALUES_KEPT} AND ({stale}) "
                f"BEGIN UPDATE documents SET {fix} WHERE rowid = new.rowid; END")
        out += [f"CREATE TRIGGER documents_values_insert AFTER INSERT ON documents {body}",
                f"CREATE TRIGGER documents_values_update AFTER UPDATE OF body ON documents {kept}"]
    return out


@lru_cache(maxsize=64)
def upsert_values_sql(fields: tuple[str, ...], rows: int) -> str:
    """``UPSERT_DOCUMENT`` for ``rows`` rows (its 8 parameters each) that also writes a new
    row's value columns of ``fields`` from its body. A row that exists keeps its columns: the
    update trigger sets them again only if the body's values changed, so an update that
    keeps them leaves their indexes alone."""
    cols = "".join(f", v_{f}" for f in fields)
    exprs = "".join(f", json_extract(column3, '$.{f}')" for f in fields)
    values = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    # The WHERE clause is SQLite's rule for an upsert after INSERT ... SELECT (a parsing ambiguity).
    return (f"INSERT INTO documents (collection, pk, body, meta, epoch, live, seq, scope{cols}) "
            f"SELECT *{exprs} FROM (VALUES {values}) WHERE column1 IS NOT NULL ON CONFLICT{_UPSERT_SET}")


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
