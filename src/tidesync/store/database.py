"""The local database: typed objects in a SQLite file, write transactions, history and revert.

A :class:`Database` is safe to share between threads: one lock serializes its use, and a write
transaction holds it from ``with db.write():`` to the end of the block (other threads' reads
wait for the commit, so they only ever see committed state). Several processes can open the
same file; SQLite's locking serializes their writes.
"""

from __future__ import annotations

import gc
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from itertools import compress, islice, repeat
from math import isfinite
from operator import attrgetter, contains, is_not, itemgetter, lt
from threading import get_ident
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

import msgpack

from ..core import merge
from ..core.clock import HybridClock
from ..core.merge.create import fast_create, register_top
from ..core.models import (
    MISSING, Counter, _ModelBase, coerce, default_of, model_registry, models_reached, schema_of,
    self_plain_type, value_to_plain,
)
from ..core.operations import CreateDoc, DeleteDoc, SetValue, Unset, top_level_set
from ..core.schema import SCALAR_KINDS, FieldSchema, FieldType, ObjectSchema, Schema
from ..core.stamp import ReplicaId, Stamp
from ..core.transaction import MISSING_FIELD, BeforeImage, Transaction
from ..core.values import (
    INT64_MAX, INT64_MIN, Plain, canonical_json, compact_encoder, from_plain, loads_json, surrogate_at, to_plain,
)
from ..errors import (
    DatabaseClosedError, InvalidatedObjectError, MergeError, NotInWriteTransaction, PartitionError, RevertError,
    SchemaMismatchError, StorageError, UsageError, ValidationError,
)
from ..query.to_sql import sql_text
from .checkpointer import Checkpointer
from .engine import Engine, default_mmap_size, not_text_error, remove_file_set
from .managed import ManagedDict, ManagedList, ManagedSet, ObjectBinding, bind_counter, make_managed
from ..protocol.replica import IntegrateResult as ProtocolIntegrateResult
from .replica import ReplicaStore
from .tables import (
    FORMAT_VERSION, MIGRATIONS, UPDATE_DOCUMENT, UPDATE_DOCUMENT_SAME_SCOPE, UPDATE_DOCUMENT_VALUES_KEPT, UPSERT_DOCUMENT,
)
from .writer import (
    ColumnUpdate, BulkCreates, LoadedDoc, PendingDoc, WriteTransaction, pack_transaction, packed_creates,
    READ_AHEAD_COLUMNS, packed_set_columns, row_facts,
)

if TYPE_CHECKING:
    from .results import Results

__all__ = ["Database", "HistoryEntry", "Change", "RevertResult", "IntegrateResult"]

M = TypeVar("M", bound=_ModelBase)
Ref = tuple[str, str]

_CACHE_LIMIT = 20_000
_UNCACHED: Any = object()
_MAY_LINK = frozenset({"link", "list", "set"})  # field kinds _adopt_field may have to adopt
# Field kinds that keep a model out of create_many's bulk path (containers, embedded objects, links).
_NOT_BULK_KINDS = frozenset({"list", "set", "dict", "counter", "object", "link"})
_BULK_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Change:
    """What a transaction did to one document."""

    collection: str
    id: Any
    kind: Literal["create", "update", "delete"]
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One transaction of the log, as ``db.history()`` lists it."""

    id: str
    seq: int
    stamp: str
    origin: str
    user: str | None
    parents: tuple[str, ...]
    changes: tuple[Change, ...]
    reverts: str | None = None

    @property
    def time(self) -> float:
        """Seconds since the epoch at which the transaction was stamped (from its stamp)."""
        return int(self.stamp[:12], 16) / 1000.0


@dataclass(frozen=True, slots=True)
class RevertResult:
    """What ``db.revert()`` restored and what it left alone (with the reason)."""

    transaction: str | None
    restored: tuple[tuple[str, Any, str], ...]
    skipped: tuple[tuple[str, Any, str, str], ...]


@dataclass(frozen=True, slots=True)
class IntegrateResult(ProtocolIntegrateResult):
    """What integrating a batch of transactions did (``conflicts`` resolved, ``last_seq`` reached)."""

    conflicts: int = 0
    last_seq: int = 0


def _overlay_meta(meta: str, keys: dict[str, str]) -> str:
    """The compact meta text ``meta`` with the write keys ``keys`` (ASCII identifier field
    names) set in its overlay ``"r"``: the text ``json_set(meta, '$.r."f"', key)`` of each
    gives."""
    if len(meta) == 42 and meta.startswith('{"*":"'):
        return meta[:-1] + ',"r":{' + ",".join([f'"{n}":"{k}"' for n, k in keys.items()]) + "}}"
    m = loads_json(meta)
    r = m.get("r")
    m["r"] = {**r, **keys} if isinstance(r, dict) else dict(keys)
    return _dumps(m)


@lru_cache(maxsize=256)
def _value_pattern(name: str) -> re.Pattern[str]:
    """The top-level member ``,"name":value`` of a minified JSON object whose value is a
    string or another scalar (``name`` an ASCII identifier), the value's text captured."""
    return re.compile(',"' + re.escape(name) + r'":("(?:[^"\\\x1e]|\\[^\x1e])*"|[^\s"\[\]{},\x1e]+)')


def _split_bodies(joined: str, n: int, name: str) -> list[str] | None:
    """``n`` document bodies joined by ``\x1e`` (as ``group_concat`` gives them) split around
    the value of their top-level field ``name``: ``[head0, old0, mid1, old1, ..., old(n-1),
    tail]``, where each ``old`` is the JSON text of a body's value (what ``body -> '$."name"'``
    reads) and each ``mid`` a body's tail, ``\x1e`` and the next body's head. None unless
    every body holds the field once and no object (only then is the member found the
    top-level one). Then ``"".join`` of the list with each ``old`` replaced by the member
    ``,"name":new`` gives the bodies ``json_set`` would: a body is minified JSON, as every
    write of this package makes it, so ``json_set`` gives back its text with the value
    replaced. (No body holds ``\x1e``: JSON escapes control characters.)"""
    if joined.count("{") != n:  # one opening brace per body: no object inside any of them
        return None
    parts = _value_pattern(name).split(joined)
    # n members found, and one in each body: every body's tail and the next one's head
    # between two of them (so no body without the field and another with it twice).
    if len(parts) != 2 * n + 1 or not all(map(contains, islice(parts, 2, 2 * n - 1, 2), repeat("\x1e"))):
        return None
    return parts


def _spliced(parts: list[str], members: list[str]) -> list[str]:
    """The bodies that ``parts`` (of :func:`_split_bodies`) make with each old value replaced
    by its new member (of :func:`_member_texts`)."""
    parts[1::2] = members
    return "".join(parts).split("\x1e")


def _member_texts(kind: str, name: str, values: list[Any]) -> list[str] | None:
    """The members ``,"name":value`` that ``json_set(body, '$."name"', ...)`` writes for
    ``values`` (of a top-level field of kind ``kind``, each already checked to be of its plain
    type), or None when a string among them needs escaping (left to ``json_set``)."""
    fmt: Callable[[Any], str]
    if kind == "int":
        fmt = f',"{name}":%d'.__mod__
    elif kind == "str":
        joined = "".join(values)
        if '"' in joined or "\\" in joined or not joined.isprintable():
            return None
        fmt = f',"{name}":"%s"'.__mod__
    elif kind == "bool":
        fmt = {True: f',"{name}":true', False: f',"{name}":false'}.__getitem__
        return list(map(fmt, values))
    else:  # float (finite): json(?) of this text gives the same text back
        return list(map(f',"{name}":'.__add__, map(_dumps, values)))
    distinct = set(values)
    if len(distinct) * 2 > len(values):
        return list(map(fmt, values))
    # Few distinct values (a field set to the same few values): each formatted once.
    texts = dict(zip(distinct, map(fmt, distinct)))
    return list(map(texts.__getitem__, values))


#: INSERT_DOCUMENT of a new local document: its epoch ('') and live (1) in the text, not bound.
_INSERT_NEW = ("INSERT INTO documents (collection, pk, body, meta, epoch, live, seq, scope) "
               "VALUES (?, ?, ?, ?, '', 1, ?, ?)")


def _compact_metas(metas: list[str]) -> tuple[bool, str]:
    """Whether every one of ``metas`` (none: False) is the compact meta of a create,
    ``{"*": stamp}`` (42 characters, ``{"*":"`` first), and if so the greatest, which holds
    the latest stamp (they differ only there). Two string comparisons a meta, no call: when
    the least and the greatest of them begin with ``{"*":"``, so does every one between."""
    if set(map(len, metas)) != {42}:
        return False, ""
    least, greatest = min(metas), max(metas)
    return least.startswith('{"*":"') and greatest.startswith('{"*":"'), greatest


#: Rows per statement of :meth:`Database._write_single_chunks` (fewer instructions per row at
#: 64 and 128 than at 32 or 256, by cachegrind: bench/RESULTS.md, session 11).
_CHUNK_ROWS = 64


@lru_cache(maxsize=64)
def _chunk_update(body: str, rows: int, contiguous: bool = False) -> str:
    """The ``UPDATE`` of ``rows`` rows of ``documents``: parameters ``?1, ?2, ?3``
    the first row's rowid, body value (``body`` with ``?`` for it) and meta, then the next
    rows' likewise, in increasing rowid order, and the seq last. A row's values are found by
    binary search on its rowid (nested ``CASE``: a handful of comparisons, not one per row).
    ``contiguous``: the rowids are consecutive integers, so the rows are those between the
    first and the last (a range scan: SQLite then builds no ephemeral index of the ``IN``
    list and seeks no row, 1.1k fewer instructions a row)."""
    def pick(lo: int, hi: int, col: int) -> str:
        if hi - lo == 1:
            return f"?{3 * lo + col}"
        mid = (lo + hi) // 2
        return f"CASE WHEN rowid < ?{3 * mid + 1} THEN {pick(lo, mid, col)} ELSE {pick(mid, hi, col)} END"

    value = body.replace("?", pick(0, rows, 2))
    where = (f"rowid BETWEEN ?1 AND ?{3 * rows - 2}" if contiguous
             else f"rowid IN ({', '.join([f'?{3 * j + 1}' for j in range(rows)])})")
    return f"UPDATE documents SET body = {value}, meta = {pick(0, rows, 3)}, seq = ?{3 * rows + 1} WHERE {where}"


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@contextmanager
def _gc_paused(*, promote: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk step, then restore it as it was.

    A bulk create or a big commit allocates hundreds of thousands of objects that form no
    reference cycles (reference counting frees them all), yet each automatic full collection
    in between scans every one of them: about a third of the CPU time of such a step. Cyclic
    garbage made meanwhile (by any thread) is collected after it, at the next collection.

    ``promote``: the step's result stays alive after it (a decoded upload batch): move every
    object the collector tracks to its oldest generation when the step ends (``gc.freeze``
    then ``gc.unfreeze``, two list splices), so that the first young collection after it
    does not scan them all (about 2 us per uploaded document, on the server's event loop,
    between the decode and the integration). They are scanned at the next full collection,
    as anything long-lived; cyclic garbage among them waits for that one.

    Steps of several threads overlap (a server decodes the next upload batch on its event
    loop while a worker thread integrates the last one): the collector stays paused until the
    last of them ends, and each promotes what it asked to when it ends, also inside another's
    pause (a decode that found the collector paused by an integration used to leave its batch
    in the young generation, scanned by the first young collections after the integration:
    a few milliseconds per batch on a server with a thousand flexible sessions). A collector
    disabled by someone else is left as it is.
    """
    with _GC_GUARD:
        ours = _GC_PAUSES[0] > 0 or gc.isenabled()
        if ours:
            _GC_PAUSES[0] += 1
            gc.disable()
    try:
        yield
    finally:
        with _GC_GUARD:
            if promote:
                gc.freeze()
                gc.unfreeze()
            if ours:
                _GC_PAUSES[0] -= 1
                if _GC_PAUSES[0] == 0:
                    gc.enable()


_GC_GUARD = threading.RLock()   # (a finalizer run by a collection may pause too)
#: How many _gc_paused steps (of any thread) are under way.
_GC_PAUSES = [0]


# Made once: ``json.dumps`` with options builds a new encoder on every call.
_dumps = compact_encoder()

# Plain values the update fast path writes with ``json_set`` (anything else: the general path).
#: The JSON of MISSING_FIELD (an absent field's old value, decoded as it).
_MISSING_JSON = _dumps(MISSING_FIELD)
_FAST_PLAIN = frozenset({str, int, float, bool, type(None)})
_DICT_ONLY = {dict}
_STR_ONLY = {str}
#: The field kinds whose values ObjectBinding.set_field's loop path takes as they are: the type.
_LOOP_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool}
_DIRECT_TYPES = {str, int}  # bound as they are in json_set (not bool: its JSON is true/false)
# Its row read per field name: epoch, live, [create stamp, the field's key in the overlay, its
# container kind at create, the create's defaults], the field's old value as JSON.
_FAST_READ: dict[tuple[str, str, str], str] = {}
_READ_AHEAD = 512


#: In a batch's loaded documents: one the file does not hold.
_ABSENT: Any = object()


class StaleReadError(StorageError):
    """:meth:`Database.integrate` with ``recheck``: another connection committed since the
    ``preloaded`` documents were read, so what was decided on them may no longer hold. Nothing
    was written: read them again and decide again."""

    code = "stale_read"


class Preloaded:
    """The documents an upload batch touches, read once (:meth:`Database.preload`) for the
    server's checks (``scopes``) and for the integration that follows, which uses them instead
    of reading them again when the file did not change in between (else it reads as usual).
    Good for one :meth:`Database.integrate`."""

    __slots__ = ("scopes", "_docs", "_version")

    def __init__(self, docs: dict[Ref, Any], scopes: dict[Ref, str | None], version: tuple[int, int]) -> None:
        #: The scope column of each touched document the file holds (tombstones too).
        self.scopes = scopes
        self._docs: dict[Ref, Any] | None = docs
        self._version = version

    def state(self, ref: Ref) -> merge.DocState | None:
        """A deep copy of the stored merge state of ``ref`` as read (a document the file does
        not hold: a new state), what ``Database.document_state`` reads; None if ``ref`` was not
        read or the documents were taken."""
        docs = self._docs
        d = docs.get(ref) if docs is not None else None
        if d is None:
            return None
        if d is _ABSENT:
            return merge.new_state()
        return d.state.copy()  # type: ignore[no-any-return]

    def take(self, version: tuple[int, int]) -> dict[Ref, Any] | None:
        """The loaded documents if the file is still at ``version`` and they were not taken."""
        docs, self._docs = self._docs, None
        return docs if version == self._version else None

    def written_elsewhere(self, version: tuple[int, int]) -> bool:
        """Whether another connection committed between the read and ``version`` (this
        connection's own writes aside)."""
        return version[1] != self._version[1]


class _Fresh:
    """A document a batch creates that the file did not hold, kept as its new row's parts
    (the state ``merge.integrate`` would give it, without the objects) until a later
    operation of the batch touches it again (:meth:`loaded`)."""

    __slots__ = ("collection", "key", "ref", "epoch", "body", "meta", "seq")

    def __init__(self, collection: str, key: Plain, ref: Ref, epoch: str, body: dict[str, Plain],
                 meta: dict[str, Any]) -> None:
        self.collection, self.key, self.ref, self.epoch, self.body, self.meta = collection, key, ref, epoch, body, meta
        self.seq = 0

    def loaded(self) -> LoadedDoc:
        """The same document as the general path holds it (new, changed by this batch)."""
        return LoadedDoc(self.collection, self.key, self.ref, merge.DocState(Stamp(self.epoch), True, self.body, self.meta),
                         False, False, None, dirty=True, seq=self.seq)


class Database(ReplicaStore):
    """A tidesync database file. Open it with :func:`tidesync.open`.

    It is also a replica (:class:`tidesync.protocol.replica.Replica`): the sync session, the
    server and a direct device-to-device link all read and write it through that interface.
    """

    def __init__(self, path: str | os.PathLike[str], schema: Sequence[type[_ModelBase]] = (), *,
                 encryption_key: bytes | None = None, policies: merge.Policies | None = None,
                 user: str | None = None, partition_key: str | None = None,
                 bootstrap_with_snapshot: bool = False, log_keep: int | None = None,
                 mmap_size: int | None = None) -> None:
        if log_keep is not None and (type(log_keep) is not int or log_keep < 0):
            raise UsageError(f"log_keep must be a whole number >= 0 or None, not {log_keep!r}")
        self.path = os.fspath(path)
        #: Keep about this many log entries (None: all); see _trim_log.
        self._log_keep = log_keep
        self._commits_unchecked = 0
        for cls in schema:
            if not isinstance(cls, type) or not issubclass(cls, _ModelBase) or cls.__ts_embedded__:
                raise UsageError(f"schema must list Model classes, got {cls!r}")
        self._models: dict[str, type[_ModelBase]] = models_reached(list(schema))
        self.schema: Schema = Schema({name: schema_of(cls) for name, cls in self._models.items()})
        self._engine = Engine(self.path, encryption_key=encryption_key, check_same_thread=False,
                              mmap_size=default_mmap_size() if mmap_size is None else mmap_size,
                              defer_map=mmap_size is None)
        self._lock = threading.RLock()
        self._txn: WriteTransaction | None = None
        self._txn_thread: int | None = None
        self._closed = False
        self._checkpointer: Checkpointer | None = None
        self._deferring = 0
        self._policies = policies
        self._fast_fields: dict[tuple[str, str], bool] = {}  # (collection, field) -> fast path allowed
        self._user = user
        self.partition_key = partition_key
        self.bootstrap_with_snapshot = bootstrap_with_snapshot
        self._cache: dict[Ref, dict[str, Plain] | None] = {}
        self._create_plans: dict[str, dict[str, tuple[FieldSchema, type | None]]] = {}
        self._bulk_builders: dict[str, Any] = {}
        self._update_plans: dict[str, dict[str, tuple[FieldSchema, int]] | None] = {}
        #: model class -> (its schema, its bulk builder), for the models ``create`` checked
        #: once and found to have a lean path (``_model``'s checks hold for them ever after).
        self._lean_creates: dict[type, tuple[ObjectSchema, Any]] = {}
        self._generation = 0
        #: The documents a download wrote (see :meth:`_integrate_download`), while it runs.
        self._written: list[tuple[str, str, str, int]] | None = None
        #: (generation, {ref: live body or None}) of the last download's commit: what the
        #: notifier would read back for those documents when it delivers that generation.
        self._handed: tuple[int, dict[Ref, dict[str, Plain] | None]] | None = None
        self._seen_data_version = -1
        self._checked_at = 0.0
        #: Collections whose first rows in the default order were read faster by a table scan
        #: in rowid order than through the index on collection (see Results._first_rows).
        self._collection_scans: set[str] = set()
        self._listeners: Any = None
        self._sync: Any = None
        self._on_remote_commit: Any = None
        self._partition: tuple[str, Plain] | None = None
        #: Log rows (seq, origin, via, data) appended since the current write began
        #: (see ReplicaStore._seed_log_cache).
        self._logged: list[tuple[int, str, str | None, bytes]] = []
        #: Called after each commit of :meth:`integrate` with (seq, transaction) of the entries
        #: it logged, each transaction carrying its stored bytes (``packed()``): a server's
        #: flexible router routes them without reading and decoding them again. Set by it.
        self.on_logged: Callable[[list[tuple[int, Transaction]]], None] | None = None
        self._handed_txns: list[tuple[int, Transaction]] | None = None
        # The lowest and highest transaction id held of each origin (descriptors), as of log
        # seq ``_origin_ids_seq``; brought up to date from the log (see _origin_range).
        self._origin_ids: dict[str, list[str]] | None = None
        self._origin_ids_seq = 0
        self._origin_ids_mark: str | None = None  # the id of the entry at that seq
        #: Called after each commit of :meth:`integrate` with the document rows it wrote
        #: (``UPSERT_DOCUMENT``'s parameters: collection, pk, body, meta, epoch, live, seq,
        #: scope), each with its body as a dict (the caller's from then on), and the file's version (:meth:`Engine.total_changes`,
        #: :meth:`Engine.data_version`) before and after it: while the version stays the last
        #: one handed, nothing else wrote and the rows are the documents' current states (a
        #: server's flexible router takes them instead of reading them back). Set by it.
        self.on_written: Callable[[list[tuple[tuple[Any, ...], dict[str, Plain]]], tuple[int, int], tuple[int, int]],
                                  None] | None = None
        self._written_rows: list[tuple[tuple[Any, ...], dict[str, Plain]]] | None = None
        #: While :meth:`integrate` runs: the scope column each document row it writes gets.
        self._written_scopes: dict[Ref, str | None] | None = None
        #: The document rows the last integrations wrote (``UPSERT_DOCUMENT``'s parameters),
        #: by ref, and the file's version after the last of them (``_rows_at``: total_changes,
        #: data_version): while the file is still at that version they are the documents'
        #: stored rows, and :meth:`_lean_rows` takes them instead of reading them back. A
        #: device's acknowledgements (``record_acks``) move the version on. At most
        #: :attr:`ROWS_CACHE` rows (then emptied). ``_rows_pending``: while an integration
        #: runs, the rows it writes; ``_rows_checked``: the data_version it found the file at.
        self._rows_cache: dict[Ref, tuple[Any, ...]] = {}
        self._rows_pending: list[tuple[Any, ...]] | None = None
        self._rows_checked: int | None = None
        try:
            self._init_file()
        except BaseException:
            self._engine.close()
            raise
        self.replica_id: ReplicaId = ReplicaId(self._setting("replica_id") or "")
        self._clock = HybridClock(self.replica_id, _wall_ms, Stamp(self._setting("clock") or ""))

    # -- opening ---------------------------------------------------------------------------

    def _setting(self, key: str) -> str | None:
        rows = self._engine.query("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def _set_setting(self, key: str, value: str) -> None:
        self._engine.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) "
                             "DO UPDATE SET value = excluded.value", (key, value))

    def _init_file(self) -> None:
        with self._engine.atomic():
            # Tables (all CREATE ... IF NOT EXISTS) on every open: version 1 gained tables after
            # its first files were written. Indexes only through the migrations below.
            for stmt in MIGRATIONS[0]:
                if stmt.startswith("CREATE TABLE"):
                    self._engine.execute(stmt)
            version = self._setting("format_version")
            if version is not None and int(version) > FORMAT_VERSION:
                raise SchemaMismatchError(f"{self.path} was written by a newer tidesync (format {version})",
                                          advice="upgrade tidesync to open it")
            done = 0 if version is None else int(version)
            for migration in MIGRATIONS[done:FORMAT_VERSION]:
                for stmt in migration:
                    self._engine.execute(stmt)
            if version is None:
                self._set_setting("replica_id", secrets.token_hex(8))
            if done < FORMAT_VERSION:
                self._set_setting("format_version", str(FORMAT_VERSION))
            stored = self._setting("schema")
            self._evolve_schema(Schema.of(ObjectSchema.from_json(o) for o in json.loads(stored)) if stored else Schema())
            self._set_setting("schema", _dumps([o.to_json() for o in self._merged_schema.objects.values()]))
            self._create_indexes()
            self._find_value_columns()

    def _evolve_schema(self, stored: Schema) -> None:
        """Check that the file's schema can become this one; keep what this client does not know."""
        merged: dict[str, ObjectSchema] = dict(stored.objects)
        for obj in self.schema:
            old = stored.get(obj.name)
            if old is None:
                merged[obj.name] = obj
                continue
            if old.embedded != obj.embedded:
                raise SchemaMismatchError(
                    f"{obj.name} was {'embedded' if old.embedded else 'a collection'} in {self.path}",
                    advice="rename the class, or migrate the data into a new file")
            fields = dict(old.fields)
            for name, f in obj.fields.items():
                prev = old.fields.get(name)
                if prev is None:
                    if not obj.embedded and not f.type.nullable and f.type.kind not in ("list", "set", "dict", "counter") \
                            and default_of(self._models_or_registry(obj.name), name) is MISSING \
                            and self._engine.query("SELECT 1 FROM documents WHERE collection = ? AND live = 1 LIMIT 1",
                                                   (obj.name,)):
                        raise SchemaMismatchError(
                            f"{obj.name}.{name} is new and required, but {self.path} already holds {obj.name} "
                            "objects without it", advice=f"give {obj.name}.{name} a default or make it optional")
                elif prev.type.to_json() != f.type.to_json() and not (
                        prev.type.kind == f.type.kind and f.type.nullable and not prev.type.nullable):
                    raise SchemaMismatchError(
                        f"{obj.name}.{name} changed type from {prev.type.describe()} to {f.type.describe()}",
                        advice=f"add a new field with a new name and copy the values over, "
                               f"or delete {self.path} to start afresh")
                fields[name] = f
            merged[obj.name] = ObjectSchema(obj.name, fields, obj.embedded)
        self._merged_schema = Schema(merged)

    def _models_or_registry(self, name: str) -> type[_ModelBase]:
        return self._models.get(name) or model_registry()[name]

    def _create_indexes(self) -> None:
        from ..query import index_expression

        for obj in self.schema:
            if obj.embedded:
                continue
            for f in obj.fields.values():
                if f.indexed and not f.primary_key:
                    expr = index_expression(obj.name, f.name, self.schema)
                    name = Engine.quote_identifier(f"ix_{obj.name}_{f.name}")
                    self._engine.execute(
                        f"CREATE INDEX IF NOT EXISTS {name} ON documents (collection, {expr}) "
                        f"WHERE collection = {sql_text(obj.name)} AND live = 1")

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file; stop listeners and sync. Managed objects become unusable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._sync is not None:
            self._sync.close()
        if self._listeners is not None:
            self._listeners.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._lock:
            self._engine.close()

    #: SQLite's automatic checkpoint threshold (its default), in WAL pages.
    AUTOCHECKPOINT_PAGES = 1000
    #: No deferral while the WAL holds more pages than this (64 MiB of 4 KiB pages): the next
    #: large commit checkpoints inline, and the write after it starts the WAL over.
    MAX_DEFERRED_WAL_PAGES = 16384

    @contextmanager
    def deferred_checkpoint(self) -> Iterator[None]:
        """Commits made in the block skip SQLite's automatic WAL checkpoint (which copies the
        WAL into the file inside the commit that takes the WAL past 1,000 pages, fsync
        included); when the block ends, a background thread makes a passive checkpoint
        instead (store/checkpointer.py). For a large write whose caller waits on its commit
        (the server's integration of an upload batch, before its ``Ack``). Every commit is as
        durable as before; commits outside such blocks checkpoint as usual, so the WAL stays
        bounded even if the background thread falls behind. An encrypted file checkpoints as
        usual (the thread would need its key). A background checkpoint that overlaps every next
        write keeps SQLite from starting the WAL over: once the WAL holds more than
        :data:`MAX_DEFERRED_WAL_PAGES`, large commits checkpoint inline again until it does."""
        with self._lock:
            self._check_open()
            checkpointer = self._background_checkpointer()
            defer = (checkpointer is not None and not checkpointer.stopped
                     and checkpointer.wal_pages <= self.MAX_DEFERRED_WAL_PAGES)
            if defer:
                if self._deferring == 0:
                    self._engine.run("PRAGMA wal_autocheckpoint = 0")
                self._deferring += 1
        try:
            yield
        finally:
            if defer:
                with self._lock:
                    self._deferring -= 1
                    if self._deferring == 0 and not self._closed:
                        self._engine.run(f"PRAGMA wal_autocheckpoint = {self.AUTOCHECKPOINT_PAGES}")
            if checkpointer is not None:
                checkpointer.request()  # also when not deferred: it measures the WAL again

    def _background_checkpointer(self) -> Checkpointer | None:
        """This file's background checkpointer (made on first use), or None for an encrypted
        file (the thread would need its key)."""
        if self._checkpointer is None and not self._engine.encrypted:
            self._checkpointer = Checkpointer(self.path)
        return self._checkpointer

    def _checkpoint_in_background(self) -> Checkpointer | None:
        """The background checkpointer when a large commit may skip SQLite's inline checkpoint
        now (as in :meth:`deferred_checkpoint`: not above :data:`MAX_DEFERRED_WAL_PAGES`), else
        None. Call its ``request()`` after the commit."""
        checkpointer = self._background_checkpointer()
        if checkpointer is None or checkpointer.stopped or checkpointer.wal_pages > self.MAX_DEFERRED_WAL_PAGES:
            return None
        return checkpointer

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sync_session(self) -> Any:
        """The background sync session (None when the database was opened without ``sync=``)."""
        return self._sync

    def _set_partition(self, key: str, value: Plain) -> None:
        """Sync one partition: fill ``key`` in on create, refuse other partitions' writes."""
        self._partition = (key, value)
        self.partition_key = key
        self._update_plans.clear()  # they leave the partition key to the general path

    def _set_setting_atomic(self, key: str, value: str) -> None:
        with self._lock:
            self._check_open()
            with self._engine.atomic():
                self._set_setting(key, value)

    @property
    def is_closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosedError(f"the database {self.path} is closed")

    # -- write transactions ----------------------------------------------------------------

    def write(self) -> Any:
        """A write transaction: ``with db.write(): ...``.

        Everything inside commits atomically when the block ends, durably (the call returns
        after the file is synced). An exception inside rolls everything back and propagates.
        Write transactions do not nest.
        """
        return self._write_block(None)

    @contextmanager
    def _write_block(self, meta: dict[str, Any] | None) -> Iterator[None]:
        self._check_open()
        with self._lock:
            if self._txn is not None:
                raise UsageError("already in a write transaction; write transactions do not nest")
            self._logged = []
            changes_before = self._engine.total_changes()
            with self._engine.atomic():
                # The write lock is held from here: bodies cached before another connection's
                # commit must not be read in the block (_refresh skips this check inside it).
                self._catch_up_with_file()
                last = self._setting("clock")
                if last:
                    self._clock.observe(Stamp(last))
                txn = WriteTransaction(self._clock, self._merged_schema, self._load_doc, self._policies, self._load_docs,
                                       self._old_json)
                self._txn, self._txn_thread = txn, threading.get_ident()
                try:
                    yield
                    try:
                        seq = self._commit_local(txn, meta)
                    except UnicodeEncodeError as exc:  # packing the log entry: a lone surrogate
                        raise not_text_error(exc) from None
                finally:
                    self._txn = self._txn_thread = None
                    self._cache.clear()
            self._generation += 1
            if seq is not None:
                self._seed_log_cache(changes_before, self._logged)
            self._logged = []
        if seq is not None:
            self._after_commit()

    @property
    def in_write(self) -> bool:
        """True inside ``db.write()`` on this thread."""
        return self._txn is not None and self._txn_thread == threading.get_ident()

    def _writable(self, binding: ObjectBinding) -> tuple[WriteTransaction, LoadedDoc]:
        txn = self._current_txn()
        d = txn.doc(binding.collection, binding.key, binding.ref)
        if not d.state.live:
            raise InvalidatedObjectError(f"this {binding.collection} object was deleted")
        return txn, d

    def _fast_assign(self, binding: ObjectBinding, name: str, ftype: FieldType, value: Any) -> bool:
        """The update fast path of ``obj.name = value`` (a top-level scalar field, LWW): record
        the write as pending, without loading the document, if its row allows it; False when
        the general path must do it. Raises as the general path would (a deleted object, a
        value that does not fit). The write is stamped later, with the transaction's other
        fast-path writes (:meth:`WriteTransaction.stamp_pending`)."""
        txn = self._txn
        if txn is None or self._txn_thread != get_ident() or self._closed:
            txn = self._current_txn()  # raises
        ref = binding.ref
        if txn._journal is not None or ref in txn.docs or ref in txn.bulk_refs:
            return False
        if txn.column_refs and ref in txn.column_refs:
            txn.expand_columns()
        collection = binding.collection
        loop = txn.loop_keys
        # The same field as the assignment loop's (its checks passed when it began)?
        same = bool(loop) and txn.loop_name == name and txn.loop_collection == collection
        if not same:
            ok = self._fast_fields.get((collection, name))
            if ok is None:
                policies = self._policies
                ok = self._fast_fields[(collection, name)] = name.isidentifier() and name.isascii() and (
                    policies is None or policies.lookup(collection, (name,)) == "lww")
            if not ok:
                return False
        tv = type(value)
        kind = ftype.kind
        if (tv is str and kind == "str") or (tv is int and kind == "int" and INT64_MIN <= value <= INT64_MAX) or (
                tv is bool and kind == "bool"):
            plain = value  # what value_to_plain gives for these, without the call
        else:
            plain = value_to_plain(ftype, value)
            if type(plain) not in _FAST_PLAIN:
                return False
        if (same or not loop) and ref not in loop and ref not in txn._pending:
            # The assignment loop, recorded as columns: the row read ahead and the value, no
            # pending document (what it would hold: WriteTransaction._unloop).
            ahead = txn.loop_ahead if same else txn.read_ahead.get((collection, name))
            pk = ref[1]
            row = ahead[0].pop(pk, None) if ahead is not None else None
            if row is None:
                row = self._live_row(txn, None, collection, pk, name)  # (_live_row without the call)
            else:
                ahead[2] += 1  # type: ignore[index]
                if type(row[3]) is not int and not row_facts(row[3])[1]:
                    raise InvalidatedObjectError(f"this {collection} object was deleted")
            meta = row[1]
            if len(meta) != 42 or meta[:6] != '{"*":"':
                top = register_top(loads_json(meta), name)
                if top is None:
                    return False
                if top > txn.loop_max:
                    txn.loop_max = top
            # (a create's compact meta {"*": stamp}: its stamp is taken when the loop is read)
            if not same:
                txn.loop_collection, txn.loop_name = collection, name
                txn.loop_ahead = txn.read_ahead[(collection, name)]
                # What ObjectBinding.set_field's loop path takes without these checks.
                txn.loop_schema = binding.schema
                txn.loop_type = _LOOP_TYPES.get(kind)
            loop[ref] = binding.key
            txn.loop_buf += (row, plain)
            return True
        p = txn.pending.get(ref)
        if p is None or name not in p.before_json:
            row = self._live_row(txn, txn.read_ahead.get((collection, name)), collection, ref[1], name)
            _, meta, body, at = row
            epoch, _, rowid = row_facts(at)
            old = self._old_json(body, name)
            if len(meta) == 42 and meta.startswith('{"*":"'):
                top = meta[6:40]  # the compact meta of a create, nothing else: {"*": stamp}
            else:
                found = register_top(loads_json(meta), name)
                if found is None:
                    return False
                top = found
            if p is None:
                p = txn.pending[ref] = PendingDoc(collection, binding.key, ref, epoch, meta, rowid, {name: old}, {}, {})
            else:
                p.before_json[name] = old
            if top > txn.unstamped_max:
                txn.unstamped_max = top
        p.flushed = False
        txn.unstamped += (p, name, plain)  # flat: no tuple kept per assignment for the collector
        return True

    def _live_row(self, txn: WriteTransaction, ahead: list[Any] | None, collection: str, pk: str,
                  name: str) -> tuple[Any, ...]:
        """The fast path's row facts of document ``pk`` for field ``name``: taken from ``ahead``
        (``txn.read_ahead[(collection, name)]``) when an earlier assignment read them ahead, else
        read (:meth:`_read_ahead`). Raises InvalidatedObjectError when the document is gone."""
        row = ahead[0].pop(pk, None) if ahead is not None else None
        if row is not None:
            ahead[2] += 1  # type: ignore[index]
        else:
            row = self._read_ahead(txn, collection, pk, name)
        if row is None or (type(row[3]) is not int and not row_facts(row[3])[1]):
            raise InvalidatedObjectError(f"this {collection} object was deleted")
        return row

    def _old_json(self, body: str, name: str) -> str | None:
        """What ``body -> '$."name"'`` gives for a row's body (None: the field is absent): cut
        from the body when it splits (:func:`_split_bodies`), else asked of SQLite."""
        parts = _split_bodies(body, 1, name)
        if parts is not None:
            return parts[1]
        rows = self._engine.query("SELECT ? -> ?", (body, f'$."{name}"'))
        return rows[0][0]  # type: ignore[no-any-return]

    def _read_ahead(self, txn: WriteTransaction, collection: str, pk: str, name: str) -> tuple[Any, ...] | None:
        """The row facts the fast path needs for field ``name`` of a document that was not read
        ahead (``txn.read_ahead[(collection, name)]``, which the caller, ``_fast_assign``, looks
        in first): ``(pk, meta, body, at)`` (``at``: see :func:`~tidesync.store.writer.row_facts`),
        or None when the file does not hold it. The body is read whole, not the field's old
        value: SQLite would parse it for that, while a loop's commit cuts the old values from
        the bodies it splices (see :meth:`_loop_as_columns`), and a pending document takes it
        with :meth:`_old_json`.

        Rows are read ahead in key order (assignments in a loop over results usually come in
        that order): the batch grows while its rows get used, and shrinks back to one row
        when they do not. A row read ahead stays valid for the whole write transaction: only
        this transaction writes the file meanwhile, and a document it changes otherwise (or
        this field of it) never reads its facts here again."""
        ahead = txn.read_ahead.get((collection, name))
        if ahead is None:
            ahead = txn.read_ahead[(collection, name)] = [{}, 1, 0]
        cached: dict[str, tuple[Any, ...]] = ahead[0]
        size, used = ahead[1], ahead[2]
        # Grow while at least half of the last batch was used, else start over from one row.
        size = min(_READ_AHEAD, size * 4) if used * 2 >= size else 1
        ahead[1], ahead[2] = size, 1  # the row asked for is used
        cached.clear()
        key = (collection, name, "rows" if size > 1 else "one")
        sql = _FAST_READ.get(key)
        if sql is None:
            sql = _FAST_READ[key] = (
                f"SELECT {READ_AHEAD_COLUMNS} FROM documents WHERE collection = ? AND pk "
                + (">= ? ORDER BY pk LIMIT ?" if size > 1 else "= ?"))
        rows = self._engine.query(sql, (collection, pk, size) if size > 1 else (collection, pk))
        cached.update(zip(map(itemgetter(0), rows), rows))
        return cached.pop(pk, None)

    def _write_pending(self, pending: Sequence[PendingDoc], seq: int) -> None:
        """Write the fast-path fields of ``pending`` into their rows, with ``seq``: one
        ``executemany`` per set of field names (only ``seq`` for rows that hold them already).
        Rows are found by the rowid read with their facts: the write transaction holds the
        database's lock, and nothing in it removes a row (documents are never deleted, only
        tombstoned; a pending document changed any other way leaves the fast path first).
        The body gets ``json_set`` of the fields (str, int and null bound as they are, other
        values as JSON text); the meta, small, is written whole: the row's meta with the
        fields' write keys in its overlay ``"r"``, as ``json_set`` of each would give."""
        groups: dict[tuple[tuple[str, ...], tuple[bool, ...]], list[tuple[Any, ...]]] = {}
        seq_only: list[tuple[Any, ...]] = []
        dumps = _dumps
        for p in pending:
            if p.flushed:
                if p.seq != seq:
                    seq_only.append((seq, p.rowid))
                continue
            p.seq = seq
            fields = p.fields
            if len(fields) == 1:
                (name, v), = fields.items()
                t = type(v)
                direct = t is str or t is int or v is None
                row: list[Any] = [v if direct else dumps(v)]
                gkey: tuple[tuple[str, ...], tuple[bool, ...]] = ((name,), (direct,))
            else:
                names = tuple(fields)
                flags: list[bool] = []
                row = []
                for n in names:
                    v = fields[n]
                    t = type(v)
                    direct = t is str or t is int or v is None
                    flags.append(direct)
                    row.append(v if direct else dumps(v))
                gkey = (names, tuple(flags))
            meta = p.meta
            if len(fields) == 1 and len(meta) == 42 and meta[:6] == '{"*":"':
                meta = f'{meta[:-1]},"r":{{"{name}":"{p.keys[name]}"}}}}'  # as _overlay_meta
            else:
                meta = _overlay_meta(meta, p.keys)
            row += (meta, seq, p.rowid)
            rows = groups.get(gkey)
            if rows is None:
                rows = groups[gkey] = []
            rows.append(tuple(row))
        for (names, direct_of), rows in groups.items():
            body = ", ".join(f"""'$."{n}"', {'?' if d else 'json(?)'}""" for n, d in zip(names, direct_of))
            self._engine.executemany(
                f"UPDATE documents SET body = json_set(body, {body}), meta = ?, seq = ? WHERE rowid = ?", rows)
        if seq_only:
            self._engine.executemany("UPDATE documents SET seq = ? WHERE rowid = ?", seq_only)

    def _current_txn(self) -> WriteTransaction:
        self._check_open()
        txn = self._txn
        if txn is None or self._txn_thread != threading.get_ident():
            raise NotInWriteTransaction("cannot change objects outside a write transaction")
        return txn

    def _load_doc(self, collection: str, key: Plain, ref: Ref) -> LoadedDoc:
        rows = self._engine.query("SELECT body, meta, epoch, live FROM documents WHERE collection = ? AND pk = ?",
                                  (collection, ref[1]))
        if not rows:
            return LoadedDoc(collection, key, ref, merge.new_state(), False, False, None)
        body_text, meta_text, epoch, live = rows[0]
        body = loads_json(body_text)
        state = merge.DocState(epoch=epoch, live=bool(live), body=body, meta=loads_json(meta_text))
        # The before-image keeps the text: it is decoded again only if it is needed whole.
        return LoadedDoc(collection, key, ref, state, True, bool(live), body_text if live else None)

    def _load_docs(self, collection: str, keys: Sequence[tuple[Plain, Ref]],
                   scopes: dict[Ref, str | None] | None = None) -> dict[Ref, LoadedDoc]:
        """The documents of ``keys`` that the file holds (as :meth:`_load_doc`), by ref
        (``scopes``: see :meth:`_states_of`)."""
        key_of = {ref: key for key, ref in keys}
        out: dict[Ref, LoadedDoc] = {}
        for ref, (body_text, meta_text, epoch, live) in self._states_of(list(key_of), scopes).items():
            state = merge.DocState(epoch=Stamp(epoch), live=bool(live), body=loads_json(body_text),
                                   meta=loads_json(meta_text))
            out[ref] = LoadedDoc(collection, key_of[ref], ref, state, True, bool(live), body_text if live else None)
        return out

    def _commit_local(self, txn: WriteTransaction, meta: dict[str, Any] | None = None) -> int | None:
        if not txn.has_ops and not txn.loop_keys and not txn.unstamped:
            return None
        with _gc_paused():
            self._loop_as_columns(txn)
            self._pending_as_columns(txn)
            txn.stamp_pending()
            return self._commit_ops(txn, meta)

    def _pending_as_columns(self, txn: WriteTransaction) -> None:
        """At commit, a write that did nothing but fast-path assignments (a loop of ``obj.f =
        v``) becomes one :class:`ColumnUpdate`, as a uniform ``create_many(..., update=...)``
        chunk does: the same stamps, operations (packed at once, no ``SetValue`` objects),
        before-images, rows and log entry as :meth:`WriteTransaction.stamp_pending` and
        :meth:`_write_pending` give, without a pass per pending document for each. Only when
        every document's assignments came one after the other, each field once, all of one
        collection; anything else is left to the general commit."""
        buf = txn.unstamped
        if not buf or txn.ops or txn.docs or txn.bulk or txn.columns or txn._journal is not None:
            return
        n = len(buf) // 3
        docs: list[PendingDoc] = buf[0::3]
        names: list[str] = buf[1::3]
        values: list[Plain] = buf[2::3]
        collection = docs[0].collection
        # Runs of one document: where the document changes from the previous assignment.
        starts = [0, *compress(range(1, n), map(is_not, islice(docs, 1, None), docs))]
        pending = txn.pending
        if len(starts) != len(pending) or len(set(map(id, docs))) != len(starts):
            return  # a document's assignments not in one run, or a pending document without any
        heads = docs if len(starts) == n else [docs[i] for i in starts]
        if set(map(attrgetter("collection"), heads)) != {collection} or any(map(attrgetter("flushed"), heads)) or any(
                map(attrgetter("fields"), heads)):
            return
        if len(starts) == n:  # one assignment per document: the common case
            single = len(set(names)) == 1
            item_names: list[tuple[str, ...]] = [(names[0],)] * n if single else [(name,) for name in names]
        else:
            ends = [*starts[1:], n]
            item_names = [tuple(names[a:b]) for a, b in zip(starts, ends)]
            if not all([len(set(ns)) == len(ns) for ns in item_names]):
                return  # a field assigned twice: two operations on one field
            single = False
        if single:
            direct = {names[0]: set(map(type, values)) <= _DIRECT_TYPES}
        else:
            direct = {name: True for name in names}
            for name, v in zip(names, values):
                if type(v) is not str and type(v) is not int:
                    direct[name] = False
        olds = [p.before_json[name] for p, name in zip(docs, names)]
        txn.unstamped, txn.pending = [], {}
        keys = list(map(attrgetter("key"), heads))
        refs = list(map(attrgetter("ref"), heads))
        epochs = list(map(attrgetter("epoch"), heads))
        metas = list(map(attrgetter("meta"), heads))
        rowids = list(map(attrgetter("rowid"), heads))
        compact = _compact_metas(metas)[0]
        self._commit_columns(txn, collection, item_names, keys, refs, epochs, metas, rowids, olds, values, direct,
                             single, compact)

    def _loop_as_columns(self, txn: WriteTransaction) -> None:
        """At commit, a write that did nothing but an assignment loop recorded as columns
        (``WriteTransaction.loop_keys``: one field of one collection, each document once)
        commits straight from them: what :meth:`_pending_as_columns` gives for the pending
        documents they stand for, without making those. Anything else in the write leaves the
        loop to the general commit (reading ``pending`` turns it into pending documents)."""
        if (not txn.loop_keys or txn._pending or txn._unstamped or txn.ops or txn.docs or txn.bulk or txn.columns
                or txn._journal is not None):
            return
        taken = txn.loop_columns()
        assert taken is not None
        collection, name, refs, keys, rows, values = taken
        _, meta_t, body_t, at_t = zip(*rows)
        metas: list[str] = list(meta_t)
        n = len(refs)
        rowids: list[int]
        if set(map(type, at_t)) == {int}:  # nearly always: live documents of epoch '' (see row_facts)
            epochs, rowids = [""] * n, list(at_t)
        else:
            facts = list(map(row_facts, at_t))
            epochs, rowids = list(map(itemgetter(0), facts)), list(map(itemgetter(2), facts))
        types = set(map(type, values))
        # The new bodies spliced from the ones read ahead, the old values cut from them, as a
        # uniform create_many(update=) chunk's (see _update_uniform); else json_set writes them.
        members = None
        if len(types) == 1:
            tv = next(iter(types))
            if tv is int:
                if INT64_MIN <= min(values) and max(values) <= INT64_MAX:
                    members = _member_texts("int", name, values)
            elif tv is str or tv is bool or (tv is float and all(map(isfinite, values))):
                members = _member_texts(tv.__name__, name, values)
        parts = _split_bodies("\x1e".join(body_t), n, name) if members is not None else None
        bodies: list[str] | None = None
        olds: list[str | None]
        if parts is not None:
            olds = cast("list[str | None]", parts[1::2])
            assert members is not None
            bodies = _spliced(parts, members)
        else:
            olds = [self._old_json(b, name) for b in body_t]
        compact, latest = _compact_metas(metas)
        # The latest write key replaced (as _fast_assign's for the others: see loop_max).
        if compact:
            top = latest[6:40]
        else:
            top = max([m[6:40] for m in metas if len(m) == 42 and m[:6] == '{"*":"'], default="")
        if top > txn.unstamped_max:
            txn.unstamped_max = top
        self._commit_columns(txn, collection, [(name,)] * n, keys, refs, epochs, metas, rowids,
                             olds, values, {name: types <= _DIRECT_TYPES}, True, compact, bodies)

    def _commit_columns(self, txn: WriteTransaction, collection: str, item_names: list[tuple[str, ...]],
                        keys: list[Plain], refs: list[Ref], epochs: list[str], metas: list[str], rowids: list[int],
                        olds: list[str | None], values: list[Plain], direct: dict[str, bool], single: bool,
                        compact: bool, bodies: list[str] | None = None) -> None:
        """Stamp, write and record fast-path assignments given as columns (per document:
        ``keys`` ... ``item_names``; per assignment, in order: ``olds``, ``values``) as one
        :class:`ColumnUpdate` (see :meth:`_pending_as_columns`); ``bodies``: the rows' new
        bodies, spliced (see :meth:`_write_columns`)."""
        n = len(values)
        if txn.unstamped_max:
            self._clock.observe(Stamp(txn.unstamped_max))
            txn.unstamped_max = ""
        stamps: list[str] = list(self._clock.now_many(n))
        if txn.bulk_seq == 0:
            txn.bulk_seq = self._next_log_seq()
        seq = txn.bulk_seq
        self._write_columns(item_names, rowids, metas, stamps, values, seq, direct, single, not compact, bodies)
        packed, items = packed_set_columns(collection, item_names, keys, epochs, stamps, values)
        txn.add_bulk(BulkCreates(0, n, stamps[0], [packed], [], items=items), [], collection)
        txn.add_columns(ColumnUpdate(collection, keys, refs, epochs, metas, rowids, item_names, olds, stamps, values,
                                     seq))
        txn.touch_columns(collection, refs, keys)

    def _commit_ops(self, txn: WriteTransaction, meta: dict[str, Any] | None) -> int:
        first = Stamp(txn.first_stamp)
        heads = tuple(r[0] for r in self._engine.query("SELECT id FROM heads ORDER BY id"))
        # With bulk creates, ``t`` lacks their operations: the log entry gets them packed.
        # With bulk updates kept as columns, ``t`` lacks its before-images: the log entry gets them.
        columns = bool(txn.columns)
        t = Transaction(id=first, origin=self.replica_id, stamp=first, parents=heads, ops=tuple(txn.ops),
                        before=() if columns else tuple(txn.before_images()), user=self._user, meta=meta or {})
        if txn.bulk:
            wire = t.to_wire(txn.op_wire)
            if columns:
                wire["before"] = txn.before_wires()
            seq = self._append_log(t, touches=txn.touches(),
                                   data=pack_transaction(wire, txn.bulk), op_count=txn.op_count)
            if txn.bulk_seq and seq != txn.bulk_seq:  # never expected: only this transaction appends to the log
                self._engine.execute("UPDATE documents SET seq = ? WHERE seq = ?", (seq, txn.bulk_seq))
        else:
            seq = self._append_log(t, touches=txn.touches(), known=txn.op_wire)
        self._write_docs(txn.docs.values(), seq)
        if txn.pending:
            self._write_pending(list(txn.pending.values()), seq)
        self._record_conflicts(t.id, txn.conflicts)
        self._set_setting("clock", self._clock.last)
        return seq

    def _append_log(self, t: Transaction, via: str | None = None,
                    touches: tuple[tuple[str, Plain], ...] | None = None, data: bytes | None = None,
                    op_count: int | None = None, known: dict[int, list[Any]] | None = None) -> int:
        """Append ``t`` to the log, with its descriptor (``touches``: its touches, if known;
        ``data`` and ``op_count``: its packed form and operation count, if known; ``known``:
        the wire form of some of its operations, by index)."""
        if data is None:
            data = msgpack.packb(t.to_wire(known), use_bin_type=True)
        cur = self._engine.execute("INSERT INTO log (id, origin, stamp, data, via) VALUES (?, ?, ?, ?, ?)",
                                   (t.id, t.origin, t.stamp, data, via))
        seq = int(cur.lastrowid or 0)
        self._logged.append((seq, t.origin, via, data))
        if touches is None:
            desc_wire = t.descriptor(len(data)).to_wire()
        else:
            # Descriptor.to_wire()'s map, its touches packed from the (collection, key) pairs as
            # they are: msgpack writes a tuple as the array to_wire's list would be.
            desc_wire = {"id": t.id, "origin": t.origin, "user": t.user, "stamp": t.stamp,
                         "parents": list(t.parents), "touches": touches,
                         "ops": len(t.ops) if op_count is None else op_count, "size": len(data)}
        self._engine.execute(
            "INSERT INTO descriptors (id, origin, user, stamp, data, seq) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq",
            (t.id, t.origin, t.user, t.stamp, msgpack.packb(desc_wire, use_bin_type=True), seq))
        if t.parents:
            self._engine.executemany("DELETE FROM heads WHERE id = ?", [(p,) for p in t.parents])
        self._engine.execute("INSERT OR IGNORE INTO heads (id) VALUES (?)", (t.id,))
        return seq

    def _flush_pending(self, txn: WriteTransaction) -> None:
        """Write the open transaction's changed documents into the (uncommitted) SQLite
        transaction, so queries inside ``db.write()`` see them; the commit rewrites them with
        their sequence number, and a rollback discards them."""
        txn.stamp_pending()
        pending = [d for d in txn.docs.values() if d.unflushed]
        if pending:
            self._write_docs(pending, 0)
            for d in pending:
                d.unflushed = False
        if txn.pending:
            fast = [p for p in txn.pending.values() if not p.flushed]
            if fast:
                self._write_pending(fast, 0)
                for p in fast:
                    p.flushed = True

    def _write_docs(self, docs: Iterable[LoadedDoc | _Fresh], seq: int | None,
                    scopes: dict[Ref, str | None] | None = None) -> None:
        """Write the dirty ``docs`` in one statement, with ``seq`` (None: each one's ``d.seq``):
        those the file held as an update, the others as an upsert. ``scopes``: the scope
        column of documents as read (:meth:`_states_of`): a row whose scope stays is updated
        without assigning it, which leaves its index alone."""
        rows = []
        held: list[bool] = []
        pkey = self.partition_key
        keep = self._written_rows
        bodies: list[dict[str, Plain]] | None = [] if keep is not None else None
        for d in docs:
            if isinstance(d, _Fresh):
                body = d.body
                if bodies is not None:
                    bodies.append(body)
                if pkey is None:
                    scope = None
                else:
                    value = body.get(pkey)
                    scope = (f'"{value}"' if type(value) is str and value.isalnum() else _dumps(value))
                meta = d.meta
                star = meta.get("*") if len(meta) == 1 else None
                meta_text = f'{{"*":"{star}"}}' if type(star) is str and star.isalnum() else _dumps(meta)
                rows.append((d.collection, d.ref[1], _dumps(body), meta_text, d.epoch, 1,
                             d.seq if seq is None else seq, scope))
                held.append(False)
                continue
            if d is _ABSENT or not d.dirty:  # _ABSENT: preloaded, no op integrated touched it
                continue
            s = d.state
            if bodies is not None:
                bodies.append(s.body)
            scope = _dumps(s.body.get(pkey)) if pkey is not None and s.live else None
            meta = s.meta
            # The compact meta of a fast-created document, {"*": stamp}: a stamp (hex digits,
            # checked) needs no escaping, so this is exactly what the encoder would write.
            star = meta.get("*") if len(meta) == 1 else None
            meta_text = f'{{"*":"{star}"}}' if type(star) is str and star.isalnum() else _dumps(meta)
            rows.append((d.collection, d.ref[1], _dumps(s.body), meta_text, s.epoch, 1 if s.live else 0,
                         d.seq if seq is None else seq, scope))
            held.append(d.existed_row)
        if rows:
            self._write_doc_rows(rows, held, bodies, scopes)

    def _write_doc_rows(self, rows: list[tuple[Any, ...]], held: list[bool], bodies: list[dict[str, Plain]] | None,
                        scopes: dict[Ref, str | None] | None, kept: list[bool] | None = None) -> None:
        """:meth:`_write_docs`'s statements for its ``rows`` (``held``: which of them the file
        holds; ``bodies``: their bodies, for the hand-over). ``kept``: which of them (held, in a
        file with value columns) the writer knows to keep every value field the file held
        (:data:`~tidesync.store.tables.UPDATE_DOCUMENT_VALUES_KEPT`)."""
        keep = self._written_rows
        if rows:
            pending = self._rows_pending
            if pending is not None:
                pending.extend(rows)
            written_scopes = self._written_scopes
            if written_scopes is not None:
                written_scopes.update({(r[0], r[1]): r[7] for r in rows})
            written = self._written
            if written is not None:
                written.extend([(r[0], r[1], r[2], r[5]) for r in rows])
            if keep is not None and bodies is not None:
                # Each with the body it holds (the batch's own, not kept after it).
                keep.extend(zip(rows, bodies))
            if any(held):
                # A row the file holds: an update by key, without the upsert's insert attempt
                # (nor the new row's value columns it computes first).
                old = list(compress(rows, held))
                same: list[tuple[Any, ...]] = []
                moved: list[tuple[Any, ...]] = []
                vouched: list[tuple[Any, ...]] = []
                for r, k in zip(old, compress(kept, held) if kept is not None else repeat(False)):
                    if r[7] is None or (scopes is not None and scopes.get((r[0], r[1]), _ABSENT) == r[7]):
                        (vouched if k else same).append((*r[2:7], r[0], r[1]))
                    else:
                        moved.append((*r[2:], r[0], r[1]))
                n = self._engine.executemany(UPDATE_DOCUMENT_SAME_SCOPE, same).rowcount if same else 0
                if vouched:
                    n += self._engine.executemany(UPDATE_DOCUMENT_VALUES_KEPT, vouched).rowcount
                if moved:
                    n += self._engine.executemany(UPDATE_DOCUMENT, moved).rowcount
                rows = [r for r, h in zip(rows, held) if not h] if n == len(old) else rows
            if rows:
                self._run_values(UPSERT_DOCUMENT, rows, 8, self.value_fields)

    def _record_conflicts(self, txn_id: str, conflicts: Sequence[merge.Conflict]) -> None:
        if not conflicts:
            return
        self._engine.executemany(
            "INSERT INTO conflicts (txn, collection, pk, path, rule, winner, winner_stamp, loser, loser_stamp) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(txn_id, c.collection, canonical_json(c.key), ".".join(c.path), c.rule, _dumps(c.winner),
              c.winner_stamp, _dumps(c.loser), c.loser_stamp) for c in conflicts])

    def _after_commit(self) -> None:
        if self._listeners is not None:
            self._listeners.notify()
        if self._sync is not None:
            self._sync.local_commit()
        elif self._log_keep is not None:
            # Without sync nothing waits for the log: trim it now and then.
            self._commits_unchecked += 1
            if self._commits_unchecked >= 100:
                self._commits_unchecked = 0
                self._trim_log(None)

    def compact(self) -> int:
        """Rewrite the file without its free pages (SQLite's ``VACUUM``, encrypted files
        stay encrypted) and return how many bytes it shrank by. Deleted documents and a trimmed
        log (``log_keep``) leave free pages that SQLite reuses but never gives back on its own.
        Other writers wait meanwhile (it rewrites the whole file). Not inside ``db.write()``.

        Raises:
            UsageError: called inside a write transaction.
        """
        with self._lock:
            self._check_open()
            if self._txn is not None:
                raise UsageError("compact() cannot run inside a write transaction")
            before = self._file_bytes()[0]
            self._engine.execute("VACUUM")
            self._engine.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._cache.clear()
            return max(0, before - self._file_bytes()[0])

    def write_copy(self, path: str | os.PathLike[str], *, encryption_key: bytes | None = None) -> None:
        """Write a compacted copy of the database's committed state to a new file (Realm's
        ``writeCopy``): to back it up, to ship it pre-filled in an app bundle, or to encrypt,
        re-key or decrypt it (``encryption_key``: the copy's 64-byte key; None writes a plain
        file, whatever this file's key).

        The copy is a new replica: it gets its own replica id when written, so two devices
        opened from one bundled file are two peers. A synced database is copied with its
        sync position, so a device opening the copy downloads only what is newer, and the
        source's writes count as the server's there (nothing is uploaded again); they must all
        be acknowledged first, so that no write is the unsynced work of two replicas.
        Not inside ``db.write()`` (the copy holds committed state only).

        Raises:
            UsageError: inside a write transaction; ``path`` exists; a synced database has
                writes the server has not acknowledged yet (call
                ``db.sync_session.wait_for_upload_completion()`` first).
            StorageError: the copy could not be written.
        """
        with self._lock:
            self._check_open()
            if self._txn is not None:
                raise UsageError("write_copy() copies committed state: call it outside db.write()")
            position: tuple[str, int, int] | None = None
            session = self._sync
            if session is not None:
                uploaded, position = session._copy_position()
                if not uploaded:
                    raise UsageError("this synced database has writes the server has not acknowledged yet, and a "
                                     "copy must not hold writes of two replicas",
                                     advice="call db.sync_session.wait_for_upload_completion() first")
            self._engine.write_copy(path, encryption_key=encryption_key)
        try:
            with Engine(path, encryption_key=encryption_key) as copy, copy.atomic():
                copy.execute("UPDATE settings SET value = ? WHERE key = 'replica_id'", (secrets.token_hex(8),))
                if position is not None:
                    peer, received, acked = position
                    copy.execute("INSERT INTO checkpoints (peer, received, acked) VALUES (?, ?, ?) ON CONFLICT(peer) "
                                 "DO UPDATE SET received = max(received, excluded.received), "
                                 "acked = max(acked, excluded.acked)", (peer, received, acked))
                    # The source's own writes, all acknowledged, are not the copy's to upload:
                    # to the new replica they are the server's, as if downloaded from it.
                    copy.execute("UPDATE log SET via = ? WHERE via IS NULL", (peer,))
        except BaseException:
            remove_file_set(path)
            raise

    def _file_bytes(self) -> tuple[int, int]:
        """(the file's size, the bytes of it in use), from SQLite's page counts."""
        size = int(self._engine.query("PRAGMA page_size")[0][0])
        pages = int(self._engine.query("PRAGMA page_count")[0][0])
        free = int(self._engine.query("PRAGMA freelist_count")[0][0])
        return pages * size, (pages - free) * size

    def _trim_log(self, acked: int | None) -> None:
        """Drop log entries beyond the newest ``log_keep`` (see :func:`tidesync.open`), never
        one after ``acked`` (the log seq the sync server acknowledged: what it does not hold
        yet must stay to be uploaded), once at least a tenth of ``log_keep`` (and 100) would go."""
        keep = self._log_keep
        if keep is None:
            return
        with self._lock:
            if self._closed or self._txn is not None:
                return
            head = self.head_seq()
            target = head - keep if acked is None else min(head - keep, acked)
            if target - self.log_floor() >= max(100, keep // 10):
                self.compact_log(head - target)

    # -- creating, reading, deleting -------------------------------------------------------

    def _model(self, cls: type[M]) -> ObjectSchema:
        self._check_open()
        if not isinstance(cls, type) or cls.__name__ not in self._models or self._models[cls.__name__] is not cls:
            raise UsageError(f"{getattr(cls, '__name__', cls)!r} is not in this database's schema; "
                             "pass it in tidesync.open(..., schema=[...])")
        obj = self.schema[cls.__name__]
        if obj.embedded:
            raise UsageError(f"{cls.__name__} is embedded: create it inside its parent object")
        return obj

    def create(self, cls: type[M], values: Mapping[str, Any] | None = None, /, *,
               update: Literal["modified", "all"] | None = None, **kwargs: Any) -> M:
        """Create an object and return it, managed. Must be called inside ``db.write()``.

        Args:
            cls: the model class.
            values: field values as a mapping (merged with ``kwargs``).
            update: ``None`` (an existing object with the same ``_id`` is an error),
                ``"modified"`` (upsert: write only the fields whose value differs) or
                ``"all"`` (upsert: write every given field).
        """
        if update is None:
            try:
                lean = self._lean_creates.get(cls)
            except TypeError:  # not hashable: _model says what is wrong
                lean = None
            if lean is not None:
                obj, build = lean
                txn = self._current_txn()
            else:
                obj = self._model(cls)
                txn = self._current_txn()
                build = self._bulk_builders.get(obj.name, _UNCACHED)
                if build is _UNCACHED:
                    build = self._bulk_builder(cls, obj)
                if build is not None:
                    self._lean_creates[cls] = (obj, build)
            if build is not None:
                # The builder only reads the given values: no copy of a dict given alone.
                made = self._create_one(txn, obj, build, values if type(values) is dict and not kwargs else
                                        {**values, **kwargs} if values else kwargs)
                if made is not None:
                    return self._managed(cls, obj, made[0], made[1])
        else:
            obj = self._model(cls)
            txn = self._current_txn()
        given = {**values, **kwargs} if values else kwargs
        plan = self._create_plans.get(obj.name) or self._create_plan(obj)
        coerced, defaults, key, ref = self._prepare_create(cls, obj, plan, given, update)
        self._finish_create(cls, obj, plan, txn, given, update, coerced, defaults, key, ref)
        return self._managed(cls, obj, key, ref)

    def create_many(self, cls: type[M], items: Iterable[Mapping[str, Any] | M], /, *,
                    update: Literal["modified", "all"] | None = None) -> int:
        """Create many objects at once (a data import); return how many items were given.

        The same as ``db.create(cls, item, update=update)`` for each item in order, in the
        current write transaction (one operation per document, the same validation, errors,
        listeners and sync), but faster: existing documents are looked up in bulk and no managed
        objects are returned. Must be called inside ``db.write()``. With ``update``, it is the
        fast way to update many objects: an item naming an existing object with plain values
        of top-level fields is done as ``obj.field = value`` would do it (see
        docs/data-model.md).

        All or nothing: if an item fails (a validation error, a document that already exists
        when ``update`` is None, an item of another type), the call raises and leaves nothing of
        its items behind; the write transaction stays usable.

        Args:
            cls: the model class.
            items: mappings of field values, or unmanaged objects of ``cls``.
            update: as for :meth:`create`.
        """
        obj = self._model(cls)
        txn = self._current_txn()
        plan = self._create_plans.get(obj.name) or self._create_plan(obj)
        bulk = self._bulk_builder(cls, obj) if update is None else None
        n = 0
        if bulk is not None:
            self._flush_pending(txn)  # the file's unique key then sees every document of the write
        lean = self._update_plan(cls, obj) if update is not None else None
        with self._engine.atomic(), txn.savepoint(), _gc_paused():
            it = iter(items)
            if lean is not None:
                while True:
                    chunk = list(islice(it, _BULK_CHUNK))
                    if not chunk:
                        break
                    self._update_bulk(cls, obj, plan, lean, txn, chunk, update)  # type: ignore[arg-type]
                    n += len(chunk)
                return n
            if bulk is not None:
                while True:
                    chunk = list(islice(it, _BULK_CHUNK))
                    if not chunk:
                        break
                    if not self._create_bulk(txn, obj, bulk, chunk):
                        self._create_chunk(cls, obj, plan, txn, chunk, update)
                    n += len(chunk)
                return n
            while True:
                chunk = list(islice(it, 500))
                if not chunk:
                    break
                self._create_chunk(cls, obj, plan, txn, chunk, update)
                n += len(chunk)
        return n

    def _create_chunk(self, cls: type[_ModelBase], obj: ObjectSchema, plan: dict[str, tuple[FieldSchema, type | None]],
                      txn: WriteTransaction, items: list[Any], update: str | None) -> None:
        """``create_many``'s general path: a loop of :meth:`create` over ``items``, the
        documents looked up 500 per query."""
        name = obj.name
        for start in range(0, len(items), 500):
            chunk = items[start:start + 500]
            # Validate the chunk first, to look its documents up in one query; an error is
            # raised after the items before it are created, as a loop of create() would.
            prepared = []
            error: Exception | None = None
            for item in chunk:
                try:
                    given = self._given_of(cls, item)
                    prepared.append((given, self._prepare_create(cls, obj, plan, given, update)))
                except Exception as exc:
                    error = exc
                    break
            absent = txn.prefetch(name, [(p[2], p[3]) for _, p in prepared])
            for given, (coerced, defaults, key, ref) in prepared:
                self._finish_create(cls, obj, plan, txn, given, update, coerced, defaults, key, ref,
                                    ref in absent)
            if error is not None:
                raise error

    def _update_plan(self, cls: type[_ModelBase], obj: ObjectSchema) -> dict[str, tuple[FieldSchema, int]] | None:
        """The fields ``create_many(..., update=...)`` may update in bulk (see
        :meth:`_update_bulk`): name -> (field, its place in the model), ``_id`` included; None
        when the model has a field that is not a register (its items all take the general
        path). Cached per model."""
        cached = self._update_plans.get(obj.name, _UNCACHED)
        if cached is not _UNCACHED:
            return cached  # type: ignore[no-any-return]
        fields = obj.fields
        plan: dict[str, tuple[FieldSchema, int]] | None = None
        if "_id" in fields and not any(f.type.kind in _NOT_BULK_KINDS for f in fields.values()):
            pkey = self.partition_key
            policies = self._policies
            plan = {}
            for i, (name, f) in enumerate(fields.items()):
                if name == "_id" or (
                        f.type.kind in SCALAR_KINDS and name != pkey and name.isidentifier() and name.isascii()
                        and (policies is None or policies.lookup(obj.name, (name,)) == "lww")):
                    plan[name] = (f, i)
        self._update_plans[obj.name] = plan
        return plan

    def _update_bulk(self, cls: type[_ModelBase], obj: ObjectSchema, plan: dict[str, tuple[FieldSchema, type | None]],
                     lean: dict[str, tuple[FieldSchema, int]], txn: WriteTransaction, items: list[Any],
                     update: str) -> None:
        """``create_many(..., update=...)`` of ``items``: the items naming a live document of
        the file that this write has not loaded, with plain top-level register values, update
        it as the assignment fast path does (``obj.f = v`` for each field that differs, or each
        given field with ``update="all"``): the same pending fields, operations, stamps and
        before-images, with the rows read in one query and stamped with one clock read. The
        other items (new or deleted documents, other values, anything :meth:`create` refuses)
        take the general path, in order, so the call does what a loop of ``create`` would."""
        if self._update_uniform(txn, obj, lean, items, update == "modified"):
            return
        owner = cls.__name__
        id_field = lean["_id"][0]
        id_str = id_field.type.kind == "str"
        allowed = lean.keys()
        parsed: list[tuple[Plain, str, list[tuple[str, Plain]]] | None] = []
        names: dict[str, Any] = {}
        for item in items:
            try:
                given = item if type(item) is dict else self._given_of(cls, item)
                v = given.get("_id", _UNCACHED)
                if v is _UNCACHED or not given.keys() <= allowed:
                    parsed.append(None)
                    continue
                key = v if id_str and type(v) is str and v.isascii() else value_to_plain(
                    id_field.type, coerce(owner, id_field, v))
                pairs: list[tuple[str, Plain]] = []
                for name, v in given.items():
                    if name != "_id":
                        f = lean[name][0]
                        plain = value_to_plain(f.type, coerce(owner, f, v))
                        if type(plain) not in _FAST_PLAIN:
                            raise _NotBulk(name)
                        pairs.append((name, plain))
                if len(pairs) > 1:  # create's order: the model's
                    pairs.sort(key=lambda nv: lean[nv[0]][1])
                names.update(given)
                parsed.append((key, canonical_json(key), pairs))
            except Exception:  # noqa: BLE001 - the general path does it again, and raises
                parsed.append(None)
        names.pop("_id", None)
        if txn.column_refs and any(p is not None and (obj.name, p[1]) in txn.column_refs for p in parsed):
            txn.expand_columns()
        rows = self._update_rows(obj.name, list(names), [p[1] for p in parsed if p is not None])
        modified = update == "modified"
        if modified:
            # Every old value read decoded with one call of the JSON decoder (None: absent).
            texts = [t for r in rows.values() for t in r[5:] if t is not None]
            decoded = iter(loads_json("[" + ",".join(texts) + "]"))
            olds = {pk: [MISSING_FIELD if t is None else next(decoded) for t in r[5:]] for pk, r in rows.items()}
        column = {name: 5 + i for i, name in enumerate(names)}
        collection = obj.name
        docs, pending, created = txn.docs, txn.pending, txn.bulk_refs
        general: list[Any] = []
        run: list[tuple[Plain, Ref, tuple[Any, ...], list[tuple[str, Plain, str | None]], str]] = []
        in_run: set[Ref] = set()
        for item, parsed_item in zip(items, parsed):
            if parsed_item is None:
                if run:
                    self._apply_updates(txn, run)
                    run, in_run = [], set()
                general.append(item)
                continue
            key, pk, pairs = parsed_item
            ref = (collection, pk)
            row = rows.get(pk)
            if row is not None and general:
                # What the general path does first may load this document: do it now.
                self._create_chunk(cls, obj, plan, txn, general, update)
                general = []
            if ref in in_run:  # twice in the call: the second sees the first's values
                self._apply_updates(txn, run)
                run, in_run = [], set()
            if row is None or not row[2] or ref in docs or ref in created:
                if run:
                    self._apply_updates(txn, run)
                    run, in_run = [], set()
                general.append(item)
                continue
            p = pending.get(ref)
            meta = row[3] if p is None else p.meta
            overlay = None
            if len(meta) == 42 and meta.startswith('{"*":"'):
                top = meta[6:40]  # the compact meta of a create, nothing else: {"*": stamp}
            else:
                m = loads_json(meta)
                top, kinds, overlay = m.get("*"), m.get("*k"), m.get("r")
                if type(top) is not str or (kinds and any(n in kinds for n, _ in pairs)):
                    if run:
                        self._apply_updates(txn, run)
                        run, in_run = [], set()
                    general.append(item)
                    continue
            if modified:
                old = olds[pk]
                pairs = [(n, plain) for n, plain in pairs if (
                    p.fields[n] if p is not None and n in p.fields else old[column[n] - 5]) != plain]
            if overlay:  # as _fast_assign: the latest write key the assignments replace
                for n, _ in pairs:
                    if type(k := overlay.get(n)) is str and k[1:] > top:
                        top = k[1:]
            if pairs:
                run.append((key, ref, row, [(n, plain, row[column[n]]) for n, plain in pairs], top))
                in_run.add(ref)
        if run:
            self._apply_updates(txn, run)
        if general:
            self._create_chunk(cls, obj, plan, txn, general, update)

    def _update_uniform(self, txn: WriteTransaction, obj: ObjectSchema, lean: dict[str, tuple[FieldSchema, int]],
                        items: list[Any], modified: bool) -> bool:
        """:meth:`_update_bulk` of a chunk in its most common form, column by column: every item
        a dict with the same keys, ``_id`` a str, the values of each field of one plain type
        its field takes as it is, each document a live one of the file that this write has not
        touched yet, once in the chunk. The same pending documents, operations (packed for
        the log at once, as :class:`BulkCreates`), stamps and before-images as
        :meth:`_apply_updates`. False, with nothing changed, for any other chunk."""
        first = items[0]
        if type(first) is not dict or "_id" not in first:
            return False
        shape = first.keys()
        # The checks below run over the whole chunk in C (map, set), no Python frame per item.
        if not shape <= lean.keys() or set(map(type, items)) != _DICT_ONLY or not all(
                map(shape.__eq__, map(dict.keys, items))):
            return False
        if lean["_id"][0].type.kind != "str":
            return False
        ids = list(map(itemgetter("_id"), items))
        if set(map(type, ids)) != _STR_ONLY:
            return False
        joined = "".join(ids)
        if not joined.isascii() and surrogate_at(joined) >= 0:
            return False  # the general path refuses it
        names = sorted((n for n in shape if n != "_id"), key=lambda n: lean[n][1])
        columns: list[list[Any]] = []
        for n in names:
            values = list(map(itemgetter(n), items))
            kind = lean[n][0].type.kind
            types = set(map(type, values))
            if kind == "str":
                # (One that is not Unicode text: the general path refuses it.)
                ok = types == _STR_ONLY and ((text := "".join(values)).isascii() or surrogate_at(text) < 0)
            elif kind == "bool":
                ok = types == {bool}
            elif kind == "int":
                ok = types == {int} and INT64_MIN <= min(values) and max(values) <= INT64_MAX
            elif kind == "float":
                ok = types == {float} and all(map(isfinite, values))
            else:
                ok = False
            if not ok:
                return False
            columns.append(values)
        if '"' not in joined and "\\" not in joined and joined.isprintable():
            pks = [f'"{v}"' for v in ids]  # canonical_json of each: nothing in them needs escaping
        else:
            pks = list(map(canonical_json, ids))
        if len(set(pks)) != len(pks):
            return False
        collection = obj.name
        refs = [(collection, pk) for pk in pks]
        docs, pending, created = txn.docs, txn.pending, txn.bulk_refs
        if (docs and not docs.keys().isdisjoint(refs)) or (pending and not pending.keys().isdisjoint(refs)) or (
                created and not created.isdisjoint(refs)) or (
                txn.column_refs and not txn.column_refs.isdisjoint(refs)):
            return False
        width, n_items = len(names), len(items)
        # The chunk's rows read as columns: one result row of group_concat()s (no statement step,
        # column call and tuple per document). The separator \x1e never occurs in a pk, meta
        # or value's JSON text (JSON escapes control characters); the joined pks, checked below,
        # prove that every column lists the items' documents in the items' order. It is a
        # literal in the statement: char(30) there is called again for every row and column.
        agg = ("SELECT count(*), group_concat(d.pk, '\x1e'), min(d.live), group_concat(d.epoch, '\x1e'), "
               "group_concat(d.meta, '\x1e'), group_concat(d.rowid), "
               """sum(length(d.meta) = 42 AND substr(d.meta, 1, 6) = '{"*":"')""")
        source = "json_each(?) AS j CROSS JOIN documents AS d ON d.collection = ? AND d.pk = j.value"
        params: tuple[Any, ...] | None = None
        if n_items > 1 and all(map(lt, pks, islice(pks, 1, None))):
            # Keys in order, and the n-th document of the collection from the first key is the
            # last one: the chunk is a range of the key index, read as one (a seek per key costs more).
            probe = self._engine.query("SELECT pk FROM documents WHERE collection = ? AND pk >= ? ORDER BY pk "
                                       "LIMIT 1 OFFSET ?", (collection, pks[0], n_items - 1))
            if probe and probe[0][0] == pks[-1]:
                source = "documents AS d WHERE d.collection = ? AND d.pk >= ? AND d.pk <= ?"
                params = (collection, pks[0], pks[-1])
        if params is None:
            params = (_dumps(pks), collection)
        # One field of plain values: the bodies are read whole (no JSON parse in SQLite), the old
        # values cut from them and the new bodies spliced (:func:`_split_bodies`), not json_set.
        # Else, or when a body does not split so, each field's old value read by SQLite.
        members = _member_texts(lean[names[0]][0].type.kind, names[0], columns[0]) if width == 1 else None
        parts: list[str] | None = None
        got: tuple[Any, ...] = ()
        if members is not None:
            got = self._engine.query(f"{agg}, group_concat(d.body, '\x1e') FROM {source}", params)[0]
            if got[0] != n_items or got[2] != 1 or got[1] != "\x1e".join(pks):
                return False
            parts = _split_bodies(got[7], n_items, names[0])
        if parts is None:
            olds_sql = "".join([f""", group_concat(coalesce(d.body -> '$."{n}"', ''), '\x1e')""" for n in names])
            got = self._engine.query(f"{agg}{olds_sql} FROM {source}", params)[0]
        # Every document found and live (the range holds n documents: the items' own unless one
        # is missing), the rows in the items' order.
        if got[0] != n_items or got[2] != 1 or got[1] != "\x1e".join(pks):
            return False
        all_epochs: list[str] = got[3].split("\x1e")
        all_metas: list[str] = got[4].split("\x1e")
        all_rowids: list[int] = list(map(int, got[5].split(",")))
        # Per field: the old values' JSON texts (None: absent, read as '', which no JSON text is).
        old_texts: list[list[str | None]] = []
        if parts is not None:
            old_texts.append(cast("list[str | None]", parts[1::2]))  # (each found in its body)
        else:
            for j in range(width):
                texts: list[str | None] = got[7 + j].split("\x1e")
                if "" in texts:
                    texts = [t or None for t in texts]
                old_texts.append(texts)
        if len(all_epochs) != n_items or len(all_metas) != n_items or any(len(t) != n_items for t in old_texts):
            return False  # not one part per document: leave it to the per-document path
        # The top stamp of each row's meta: cut from the compact meta of a create, else parsed here.
        tops: list[str | None]
        parsed: dict[int, dict[str, Any]] = {}
        if got[6] == n_items:
            tops = [m[6:40] for m in all_metas]
        else:
            tops = [m[6:40] if len(m) == 42 and m.startswith('{"*":"') else None for m in all_metas]
            for i, m_text in enumerate(all_metas):
                if tops[i] is None:
                    m = loads_json(m_text)
                    kinds = m.get("*k")
                    if type(m.get("*")) is not str or (kinds and any(n in kinds for n in names)):
                        return False
                    parsed[i] = m
        # Which (item, field) change: all of them, or with "modified" those that differ.
        decoded: list[Any] | None = None
        at: Sequence[int]
        if width == 1:
            changed: list[list[int]] = []
            if modified:
                # Every old value decoded with one call of the JSON decoder (absent: MISSING_FIELD's
                # JSON, which differs from every new value, as MISSING_FIELD does).
                olds0 = old_texts[0]
                decoded = loads_json("[" + ",".join(olds0 if None not in olds0 else  # type: ignore[arg-type]
                                                    [t or _MISSING_JSON for t in olds0]) + "]")
                at = [i for i, o, v in zip(range(n_items), decoded, columns[0]) if o != v]
            else:
                at = range(n_items)
        else:
            if modified:
                olds_of = [loads_json("[" + ",".join([t or _MISSING_JSON for t in texts]) + "]")
                           for texts in old_texts]
                changed = [[j for j in range(width) if olds_of[j][i] != columns[j][i]] for i in range(n_items)]
            else:
                changed = [list(range(width))] * n_items
            at = [i for i in range(n_items) if changed[i]]
        # As _fast_assign: the clock observes the latest write key the writes replace.
        if not parsed:
            tops_at = tops if len(at) == n_items else [tops[i] for i in at]
            top_max = max(tops_at) if tops_at else ""  # type: ignore[type-var]
        else:
            top_max = ""
            for i in at:
                top = tops[i]
                if top is None:
                    m = parsed[i]
                    top, overlay = m["*"], m.get("r")
                    if overlay:
                        for n in (names if width == 1 else [names[j] for j in changed[i]]):
                            if type(k := overlay.get(n)) is str and k[1:] > top:
                                top = k[1:]
                if top > top_max:
                    top_max = top
        count = len(at) if width == 1 else sum(map(len, changed))
        if not count:
            return True
        bodies: list[str] | None = None
        if parts is not None:
            assert members is not None
            bodies = _spliced(parts, members)
            if len(at) != n_items:
                bodies = [bodies[i] for i in at]
        txn.stamp_pending()  # earlier assignments take earlier stamps, and come first in the log
        if top_max:
            self._clock.observe(Stamp(top_max))
        stamps: list[str] = list(self._clock.now_many(count))
        # The rows written now, while their pages are in SQLite's cache from the read above, with
        # the seq the commit's log entry will get (as bulk creates are; checked at commit).
        if txn.bulk_seq == 0:
            txn.bulk_seq = self._next_log_seq()
        seq = txn.bulk_seq
        keys: list[Any]
        crefs: list[Ref]
        at_all: list[int] | None = None  # the documents written, when not all of them
        olds: list[str | None]
        decoded_at: list[Any] | None = None
        if width == 1:
            name = names[0]
            column = columns[0]
            if len(at) == n_items:  # every item changes: the columns as they are
                keys, crefs, values, decoded_at, olds = ids, refs, column, decoded, old_texts[0]
            else:
                at_all = list(at)
                keys = [ids[i] for i in at]
                crefs = [refs[i] for i in at]
                values = [column[i] for i in at]
                olds0 = old_texts[0]
                olds = [olds0[i] for i in at]
                if decoded is not None:
                    decoded_at = [decoded[i] for i in at]
            item_names: list[tuple[str, ...]] = [(name,)] * len(keys)
        else:
            keys, crefs, item_names, olds, values = [], [], [], [], []
            at_all = list(at)
            for i in at:
                ch = changed[i]
                keys.append(ids[i])
                crefs.append(refs[i])
                item_names.append(tuple([names[j] for j in ch]))
                olds.extend([old_texts[j][i] for j in ch])
                values.extend([columns[j][i] for j in ch])
        if at_all is None:
            epochs, metas, rowids = all_epochs, all_metas, all_rowids
        else:
            epochs = [all_epochs[i] for i in at_all]
            metas = [all_metas[i] for i in at_all]
            rowids = [all_rowids[i] for i in at_all]
        direct = {n: lean[n][0].type.kind in ("str", "int") for n in names}
        self._write_columns(item_names, rowids, metas, stamps, values, seq, direct, width == 1, bool(parsed), bodies)
        packed, n_packed = packed_set_columns(collection, item_names, keys, epochs, stamps, values)
        txn.add_bulk(BulkCreates(0, count, stamps[0], [packed], [], items=n_packed), [], collection)
        txn.add_columns(ColumnUpdate(collection, keys, crefs, epochs, metas, rowids, item_names, olds,
                                     stamps, values, seq, decoded_at))
        txn.touch_columns(collection, crefs, keys)
        if self._cache:
            self._cache.clear()
        return True

    def _write_columns(self, names: list[tuple[str, ...]], rowids: list[int], metas: list[str], stamps: list[str],
                       values: list[Any], seq: int, direct: dict[str, bool], single: bool, other_metas: bool,
                       bodies: list[str] | None = None) -> None:
        """Write a uniform bulk update into its rows: document ``k`` (row ``rowids[k]``, meta
        ``metas[k]`` before) gets fields ``names[k]`` set to the next values of ``values``,
        with write keys ``"1" + stamp`` from ``stamps`` in its meta's overlay ``"r"``, and
        ``seq``: what :meth:`_write_pending` writes for the pending documents they stand for,
        one ``executemany`` per set of field names. The compact meta of a create gets its
        overlay appended in SQL (the rows' parameters are then zipped from the columns, no
        Python per row); another meta is built as :func:`_overlay_meta` builds it. ``direct``:
        the fields bound as they are (str, int), not as JSON text; ``single``: one field per
        document; ``other_metas``: some meta is not the compact meta of a create; ``bodies``
        (with ``single``): each row's new body, spliced by the caller, written as it is."""
        dumps = _dumps
        overlays: Iterable[str | None]
        if other_metas:
            built: list[str | None] = [None] * len(metas)
            s = 0
            for k, meta in enumerate(metas):
                ns = names[k]
                if len(meta) != 42 or not meta.startswith('{"*":"'):  # not the compact meta of a create
                    built[k] = _overlay_meta(meta, {n: "1" + st for n, st in zip(ns, stamps[s:s + len(ns)])})
                s += len(ns)
            overlays = built
        else:
            overlays = repeat(None)
        groups: dict[tuple[str, ...], Iterable[tuple[Any, ...]]] = {}
        if single:
            if names:
                ns = names[0]
                vals = bodies if bodies is not None else values if direct[ns[0]] else list(map(dumps, values))
                if len(rowids) >= _CHUNK_ROWS:
                    self._write_single_chunks(ns[0], rowids, metas, stamps, vals, seq, direct[ns[0]],
                                              built if other_metas else None, bodies is not None)
                    return
                groups[ns] = zip(vals, overlays, stamps, rowids) if other_metas else zip(vals, stamps, rowids)
        else:
            s = 0
            for ns, rid, m in zip(names, rowids, overlays):
                e = s + len(ns)
                row = tuple([v if direct[n] else dumps(v) for n, v in zip(ns, values[s:e])]) + (m, *stamps[s:e], rid)
                s = e
                g = groups.get(ns)
                if g is None:
                    g = groups[ns] = []
                g.append(row)  # type: ignore[attr-defined]
        for ns, group in groups.items():
            body = "?" if bodies is not None else "json_set(body, " + ", ".join(
                [f"""'$."{n}"', {'?' if direct[n] else 'json(?)'}""" for n in ns]) + ")"
            # one literal between parameters: SQLite does not fold a concatenation of literals
            overlay = " || ? || ".join([f"""'{',"r":{' if i == 0 else '",'}"{n}":"1'""" for i, n in enumerate(ns)])
            appended = f"""substr(meta, 1, 41) || {overlay} || ? || '"}}}}'"""
            # seq (an int, the same for every row) is in the statement's text: a parameter bound
            # per row costs more than a statement prepared once per commit; so does the meta built
            # here when no row needs one (``other_metas`` false: the rows bind no meta at all).
            meta = f"coalesce(?, {appended})" if other_metas or not single else appended
            self._engine.executemany(
                f"UPDATE documents SET body = {body}, meta = {meta}, seq = {int(seq)} "
                "WHERE rowid = ?", group)

    def _write_single_chunks(self, name: str, rowids: list[int], metas: list[str], stamps: list[str], vals: list[Any],
                             seq: int, direct: bool, built: list[str | None] | None, spliced: bool) -> None:
        """:meth:`_write_columns` of one field per document, :data:`_CHUNK_ROWS` rows or more:
        the new metas made here (what the statement's ``substr(meta, 1, 41) || ...`` appends
        to a create's compact meta, or ``built[k]``), and the rows written
        :data:`_CHUNK_ROWS` per ``UPDATE`` (:func:`_chunk_update`: each row's values found by
        its rowid), the rest with one ``executemany``. Per row, that saves what ``executemany``
        pays for each of its steps (pysqlite releases the GIL four times, SQLite ends a
        statement) and SQLite's string functions on the meta."""
        head, tail = f',"r":{{"{name}":"1', '"}}'
        # one join a row (zip hands join the same tuple again when join lets go of it)
        compact = list(map("".join, zip(map(itemgetter(slice(0, 41)), metas), repeat(head), stamps, repeat(tail))))
        new_metas = compact if built is None else [b if b is not None else m for b, m in zip(built, compact)]
        body = "?" if spliced else f"""json_set(body, '$."{name}"', {'?' if direct else 'json(?)'})"""
        n, size = len(rowids), _CHUNK_ROWS
        # Rows in rowid order, as the chunk's statement finds them (a loop over results in key
        # order usually has them so; rowids are distinct: each document is written once).
        if not all(map(lt, rowids, islice(rowids, 1, None))):
            order = sorted(range(n), key=rowids.__getitem__)
            rowids, vals, new_metas = [rowids[i] for i in order], [vals[i] for i in order], [new_metas[i] for i in order]
        whole = n - n % size
        sql, sql_range = _chunk_update(body, size), _chunk_update(body, size, True)
        flat: list[Any] = [None] * (3 * n)
        flat[0::3], flat[1::3], flat[2::3] = rowids, vals, new_metas
        width = 3 * size
        execute = self._engine.execute
        for i in range(0, 3 * whole, width):
            params = flat[i:i + width]
            params.append(seq)
            # (rowids distinct and increasing: a span of size - 1 holds exactly these rows)
            changed = execute(sql_range if params[-4] - params[0] == size - 1 else sql, params).rowcount
            if changed != size:  # never expected: every row is the transaction's own, once
                raise StorageError(f"a bulk update wrote {changed} rows of {size}",
                                   advice="report this as a bug; the write was rolled back")
        if whole < n:
            self._engine.executemany(f"UPDATE documents SET body = {body}, meta = ?, seq = {int(seq)} WHERE rowid = ?",
                                     list(zip(vals[whole:], new_metas[whole:], rowids[whole:])))

    def _update_rows(self, collection: str, names: list[str], pks: list[str]) -> dict[str, tuple[Any, ...]]:
        """The rows of ``pks`` the file holds, by pk: ``(pk, epoch, live, meta, rowid, field as
        JSON text or None for each of names)``."""
        if not pks:
            return {}
        cols = "".join(f""", body -> '$."{n}"'""" for n in names)
        rows = self._engine.query(f"SELECT pk, epoch, live, meta, rowid{cols} FROM documents WHERE collection = ? "
                                  "AND pk IN (SELECT value FROM json_each(?))", (collection, _dumps(pks)))
        return {r[0]: r for r in rows}

    def _apply_updates(self, txn: WriteTransaction,
                       run: list[tuple[Plain, Ref, tuple[Any, ...], list[tuple[str, Plain, str | None]], str]]) -> None:
        """The fast-path assignments of ``run`` (key, ref, row, [(field, plain value, old value
        as JSON text)], the latest write key they replace), in order, stamped at once: what
        :meth:`_fast_assign` of each and then :meth:`WriteTransaction.stamp_pending` give."""
        txn.stamp_pending()  # earlier assignments take earlier stamps, and come first in the log
        top_max = max(r[4] for r in run)
        if top_max:
            self._clock.observe(Stamp(top_max))
        stamps = iter(self._clock.now_many(sum(len(r[3]) for r in run)))
        pending, touched, ops, wire = txn.pending, txn.touched, txn.ops, txn.op_wire
        keep = txn.keep_pending
        append = ops.append
        i = len(ops)
        for key, ref, row, pairs, _ in run:
            p = pending.get(ref)
            keep(ref, p)
            if p is None:
                p = pending[ref] = PendingDoc(ref[0], key, ref, row[1], row[3], row[4])
            before, keys, fields = p.before_json, p.keys, p.fields
            coll, key, epoch = p.collection, p.key, p.epoch
            for name, plain, old in pairs:
                if name not in before:
                    before[name] = old
                stamp = next(stamps)
                keys[name] = "1" + stamp
                fields[name] = plain
                append(top_level_set(coll, key, stamp, Stamp(epoch), name, plain))
                wire[i] = ["S", coll, key, stamp, epoch, [name], [], plain, False]  # op_to_wire's form
                i += 1
            p.flushed = False
            if ref not in touched:
                touched[ref] = (coll, key)
        if self._cache:
            self._cache.clear()

    def _bulk_builder(self, cls: type[_ModelBase], obj: ObjectSchema) -> Any:
        """``create_many``'s bulk path for ``cls`` (made once per model), or None when its
        fields allow no bulk path: a function from a given item to ``(plain values in field
        order, defaults filled in or None)``, raising :class:`_NotBulk` for anything but the
        common case (the general path then does the item, and says what is wrong)."""
        cached = self._bulk_builders.get(obj.name, _UNCACHED)
        if cached is not _UNCACHED:
            return cached
        builder = _make_bulk_builder(cls, obj)
        self._bulk_builders[obj.name] = builder
        return builder

    def _create_one(self, txn: WriteTransaction, obj: ObjectSchema, build: Any,
                    given: dict[str, Any]) -> tuple[Plain, Ref] | None:
        """``create`` (no ``update``) as :meth:`_create_bulk` does it, for one document: its row
        inserted now (the unique key refuses an existing one), its operation packed. None, with
        nothing changed, when the general path must do it."""
        try:
            plain, dflt = build(given)
        except Exception:  # noqa: BLE001 - the general path does it again, and raises
            return None
        scope = None
        if self._partition is not None:
            if not self._fill_partition(plain, dflt):
                return None
            scope = _dumps(self._partition[1])
        elif self.partition_key is not None:  # partitioned documents, no partition of its own: a server's
            scope = _dumps(plain.get(self.partition_key))
        name = obj.name
        key = plain["_id"]
        ref = (name, canonical_json(key))
        if ref in txn.docs or ref in txn.pending or ref in txn.column_refs:
            return None
        if txn.bulk_seq == 0:
            txn.bulk_seq = self._next_log_seq()
        if txn.unstamped:  # earlier assignments take earlier stamps, and come first in the log
            txn.stamp_pending()
        stamp = self._clock.now()
        if dflt:
            meta_text = _dumps({"*": stamp, "*d": dflt})
        else:
            meta_text = f'{{"*":"{stamp}"}}'
        try:
            self._engine.run(_INSERT_NEW, (name, ref[1], _dumps(plain), meta_text, txn.bulk_seq, scope))
        except StorageError as exc:
            if exc.code == "constraint":  # it exists: the general path raises or merges
                return None
            raise
        txn.add_created(ref, key, name, stamp, ["C", name, key, stamp, "", plain, {}, dflt or []])
        if self._cache:
            self._cache.clear()
        return key, ref

    def _fill_partition(self, plain: dict[str, Plain], dflt: list[str] | None) -> bool:
        """Set a lean-path item's partition field to the session's partition (no longer a
        default); False when the item names another one (the general path then raises
        PartitionError)."""
        assert self._partition is not None
        pkey, pvalue = self._partition
        if pkey in plain and plain[pkey] != pvalue and not (dflt and pkey in dflt):
            return False
        plain[pkey] = pvalue
        if dflt and pkey in dflt:
            dflt.remove(pkey)
        return True

    def _create_bulk(self, txn: WriteTransaction, obj: ObjectSchema, build: Any, items: list[Any]) -> bool:
        """Create the documents of ``items`` (no ``update``; none may exist) in bulk: rows
        inserted now, operations packed for the log (:class:`BulkCreates`), no per-document
        merge state. False, with nothing changed, when an item needs the general path: it is
        not a plain valid item, or a document exists (in the file or in this write)."""
        name = obj.name
        try:
            built = [build(item) for item in items]
        except Exception:  # noqa: BLE001 - the general path does the chunk again, and raises
            return False
        scope = None
        if self._partition is not None:
            fill = self._fill_partition
            if not all(fill(plain, dflt) for plain, dflt in built):
                return False
            scope = _dumps(self._partition[1])
        elif self.partition_key is not None:  # a scope per document (a server's file): the general path
            return False
        if txn.bulk_seq == 0:
            txn.bulk_seq = self._next_log_seq()
        seq = txn.bulk_seq
        if txn.unstamped:  # earlier assignments take earlier stamps, and come first in the log
            txn.stamp_pending()
        stamps = self._clock.now_many(len(built))
        keys = [plain["_id"] for plain, _ in built]
        pks = [canonical_json(key) for key in keys]
        refs = [(name, pk) for pk in pks]
        docs = txn.docs
        if docs and any(ref in docs for ref in refs):
            return False
        dumps = _dumps
        rows = [(pk, dumps(plain), dumps({"*": stamp, "*d": dflt}) if dflt else f'{{"*":"{stamp}"}}')
                for pk, (plain, dflt), stamp in zip(pks, built, stamps)]
        # INSERT_DOCUMENT with what every row shares in the statement's text: a parameter bound
        # per row costs more than a statement prepared once per chunk.
        insert = ("INSERT INTO documents (collection, pk, body, meta, epoch, live, seq, scope) VALUES "
                  f"({sql_text(name)}, ?, ?, ?, '', 1, {int(seq)}, {'NULL' if scope is None else sql_text(scope)})")
        try:
            with self._engine.atomic():
                self._engine.executemany(insert, rows)
        except StorageError as exc:
            if exc.code == "constraint":  # a document exists: the general path raises or merges
                return False
            raise
        packed, n_packed = packed_creates(name, built, keys, stamps)
        txn.add_bulk(BulkCreates(0, len(rows), stamps[0], [packed], refs, items=n_packed), keys, name)
        self._cache.clear()
        return True

    @staticmethod
    def _given_of(cls: type[_ModelBase], item: Any) -> dict[str, Any]:
        if type(item) is dict:
            return item  # read, never changed
        if isinstance(item, Mapping):
            return dict(item)
        if type(item) is cls:
            if item._ts_binding is not None:
                raise UsageError(f"create_many takes unmanaged {cls.__name__} objects or mappings, "
                                 "got a managed object")
            return dict(item._ts_values)
        raise UsageError(f"create_many takes mappings or unmanaged {cls.__name__} objects, "
                         f"got {type(item).__name__}")

    def _create_plan(self, obj: ObjectSchema) -> dict[str, tuple[FieldSchema, type | None]]:
        """name -> (field, the type whose values are their own coerced plain form)."""
        plan = self._create_plans[obj.name] = {name: (f, self_plain_type(f.type)) for name, f in obj.fields.items()}
        return plan

    def _prepare_create(self, cls: type[_ModelBase], obj: ObjectSchema,
                        plan: dict[str, tuple[FieldSchema, type | None]], given: dict[str, Any],
                        update: str | None) -> tuple[dict[str, Any], list[str], Plain, Ref]:
        """Check and coerce the given values of a create (no side effect); the key and ref."""
        fields = obj.fields
        if not given.keys() <= fields.keys():
            unknown = set(given) - set(fields)
            raise ValidationError(f"{cls.__name__} has no field(s) {sorted(unknown)}; its fields are {sorted(fields)}")
        owner = cls.__name__
        coerced: dict[str, Any] = {}
        defaults: list[str] = []
        for name, (f, same) in plan.items():
            if name in given:
                v = given[name]
                # (A str that is not ASCII goes to coerce, which refuses half of a surrogate pair.)
                tv = type(v)
                coerced[name] = v if tv is same and (tv is not str or v.isascii()) else coerce(owner, f, v)
            elif update is None or "_id" == name:
                v = default_of(cls, name)
                if v is MISSING:
                    raise ValidationError(f"{cls.__name__}.{name} is required (type {f.type.describe()})")
                coerced[name] = coerce(owner, f, v)
                defaults.append(name)
        key = value_to_plain(fields["_id"].type, coerced["_id"])
        return coerced, defaults, key, (obj.name, canonical_json(key))

    def _finish_create(self, cls: type[_ModelBase], obj: ObjectSchema,
                       plan: dict[str, tuple[FieldSchema, type | None]], txn: WriteTransaction,
                       given: dict[str, Any], update: str | None, coerced: dict[str, Any],
                       defaults: list[str], key: Plain, ref: Ref, absent: bool = False) -> None:
        """Write a prepared create into the transaction (an upsert when ``update`` is given);
        ``absent``: the file does not hold the document (it may be in the transaction)."""
        d = txn.docs.get(ref) if absent else txn.doc(obj.name, key, ref)
        if d is None:
            pass  # new: created below without loading
        elif d.state.live:
            if update is None:
                raise ValidationError(f"a {cls.__name__} with _id {coerced['_id']!r} already exists",
                                      advice="pass update='modified' to update it instead")
            existing = d.state.body
            for name, value in coerced.items():
                if name == "_id":
                    continue
                f = obj.fields[name]
                value = self._adopt_field(f.type, value)
                if update == "modified" and existing.get(name, MISSING_FIELD) == value_to_plain(f.type, value):
                    continue
                txn.assign(d, (name,), f.type, value)
            return
        if update is not None:
            for name, f in obj.fields.items():
                if name not in coerced:
                    v = default_of(cls, name)
                    if v is MISSING:
                        raise ValidationError(f"{cls.__name__}.{name} is required (type {f.type.describe()})")
                    coerced[name] = coerce(cls.__name__, f, v)
                    defaults.append(name)
        plain: dict[str, Plain] = {}
        for name, v in coerced.items():
            f, same = plan[name]
            if type(v) is same:
                plain[name] = v
                continue
            t = f.type
            if v is not None and t.kind in _MAY_LINK:
                v = self._adopt_field(t, v)
            plain[name] = value_to_plain(t, v)
        if self._partition is not None:
            pkey, pvalue = self._partition
            if pkey in given and plain.get(pkey) != pvalue:
                raise PartitionError(
                    f"{cls.__name__} {coerced['_id']!r} is in partition {from_plain(plain.get(pkey))!r}, "
                    f"but this database syncs partition {from_plain(pvalue)!r}",
                    advice="open a database synced to that partition to write there")
            plain[pkey] = pvalue
            if pkey in defaults:
                defaults.remove(pkey)
        if d is None:
            txn.create_new(obj, key, plain, defaults, ref)
        else:
            txn.create(obj, key, plain, defaults, ref)

    def _adopt_field(self, t: FieldType, value: Any) -> Any:
        if value is None:
            return None
        if t.kind == "link":
            return self._adopt(value)
        if t.kind in ("list", "set") and t.element is not None and t.element.kind == "link":
            return type(value)(self._adopt(v) for v in value)
        return value

    def _adopt(self, value: Any) -> Any:
        """A link target: a managed object of this database, or an unmanaged one to create."""
        if not isinstance(value, _ModelBase):
            raise ValidationError(f"a link needs a model object, got {type(value).__name__}")
        binding = value._ts_binding
        if binding is not None:
            if getattr(binding, "db", None) is not self:
                raise ValidationError("cannot link to an object of another database")
            return value
        cls = type(value)
        return self.create(cls, {k: v for k, v in value._ts_values.items()}, update="modified")

    def _managed(self, cls: type[M], obj: ObjectSchema, key: Plain, ref: Ref) -> M:
        return make_managed(self, cls, ObjectBinding(self, obj.name, key, ref, (), obj))  # type: ignore[no-any-return]

    def get(self, cls: type[M], pk: Any) -> M | None:
        """The object of ``cls`` with primary key ``pk``, or None."""
        obj = self._model(cls)
        try:
            key = value_to_plain(obj.fields["_id"].type, coerce(cls.__name__, obj.fields["_id"], pk))
        except ValidationError:
            raise
        ref = (obj.name, canonical_json(key))
        if self._body_of(ref) is None:
            return None
        return self._managed(cls, obj, key, ref)

    def get_raw(self, collection: str, pk: Any) -> dict[str, Any] | None:
        """A live document as plain Python values, without a model (e.g. on the server)."""
        self._check_open()
        body = self._body_of((collection, canonical_json(to_plain(pk))))
        return from_plain(body) if body is not None else None

    def document_state(self, collection: str, key: Plain) -> merge.DocState:
        """The merge state of a document, as stored (never seen: epoch ZERO, not live).

        The server's rule enforcement reads it to judge a write by its effect."""
        with self._lock:
            self._check_open()
            txn = self._txn
            if txn is not None and self._txn_thread == threading.get_ident():
                self._flush_pending(txn)
            return self._load_doc(collection, key, (collection, canonical_json(key))).state

    def next_stamps(self, n: int, after: Iterable[Stamp] = ()) -> list[Stamp]:
        """``n`` fresh stamps of this replica's clock, later than every stamp in ``after``
        (for a transaction built outside ``write()``, e.g. the server's compensating writes)."""
        with self._lock:
            self._check_open()
            last = self._setting("clock")
            if last:
                self._clock.observe(Stamp(last))
            for stamp in after:
                self._clock.observe(stamp)
            return [self._clock.now() for _ in range(n)]

    def delete(self, target: Any) -> None:
        """Delete an object, or every object of a query result or an iterable of objects."""
        txn = self._current_txn()
        items = [target] if isinstance(target, _ModelBase) else list(target)
        for item in items:
            binding = item._ts_binding if isinstance(item, _ModelBase) else None
            if not isinstance(binding, ObjectBinding) or binding.path or binding.db is not self:
                raise UsageError("db.delete() takes managed objects of this database (or results)")
            d = txn.doc(binding.collection, binding.key, binding.ref)
            if d.state.live:
                txn.delete(d)

    def objects(self, cls: type[M]) -> Results[M]:
        """All live objects of ``cls``, as lazy, live results."""
        from .results import Results

        self._model(cls)
        return Results(self, cls)

    # -- reading state ---------------------------------------------------------------------

    def _refresh(self) -> None:
        """Drop cached bodies when another connection (thread or process) committed."""
        txn = self._txn
        if txn is not None and self._txn_thread == threading.get_ident():
            self._flush_pending(txn)
            return
        now = time.monotonic()
        if now - self._checked_at < 0.002:
            return
        self._checked_at = now
        self._catch_up_with_file()

    def _catch_up_with_file(self) -> None:
        """If another connection committed since this one last looked (``PRAGMA data_version``),
        drop the cached bodies and count a new generation (what listeners compare their
        snapshots against)."""
        dv = self._engine.data_version()
        if dv != self._seen_data_version:
            if self._seen_data_version != -1:
                self._generation += 1
            self._seen_data_version = dv
            self._cache.clear()

    def _body_of(self, ref: Ref) -> dict[str, Plain] | None:
        """The live body of a document (the write transaction's view inside ``write()``)."""
        with self._lock:
            if self._closed:
                self._check_open()
            txn = self._txn
            if txn is not None and self._txn_thread == threading.get_ident():
                d = txn.docs.get(ref)
                if d is not None:
                    return d.state.body if d.state.live else None
                if ref in txn.loop_keys:
                    txn._unloop()  # an assignment of the loop's: read from the row, flushed below
                p = txn._pending.get(ref)
                if p is not None:
                    if not p.flushed:
                        self._flush_pending(txn)
                    # Its fast-path writes are in the file now; the cache holds the committed body.
                    rows = self._engine.query("SELECT body FROM documents WHERE collection = ? AND pk = ? AND live = 1",
                                              ref)
                    return loads_json(rows[0][0]) if rows else None
            elif time.monotonic() - self._checked_at >= 0.002:  # _refresh's own test, without the call
                self._refresh()
            cached = self._cache.get(ref, _UNCACHED)
            if cached is not _UNCACHED:
                return cached  # type: ignore[no-any-return]
            rows = self._engine.query("SELECT body FROM documents WHERE collection = ? AND pk = ? AND live = 1", ref)
            body = loads_json(rows[0][0]) if rows else None
            if len(self._cache) > _CACHE_LIMIT:
                self._cache.clear()
            if txn is None:
                self._cache[ref] = body
            return body

    def _body_of_checked(self, binding: ObjectBinding) -> dict[str, Plain]:
        body = self._body_of(binding.ref)
        if body is None:
            raise InvalidatedObjectError(f"this {binding.collection} object was deleted")
        return body

    def _prime(self, ref: Ref, body: dict[str, Plain]) -> None:
        if self._txn is None:
            if len(self._cache) > _CACHE_LIMIT:
                self._cache.clear()
            self._cache[ref] = body

    def _to_python(self, binding: ObjectBinding, path: tuple[str, ...], t: FieldType, plain: Plain) -> Any:
        k = t.kind
        if k == "list":
            return ManagedList(binding, path, t, binding.schema.name)
        if k == "set":
            return ManagedSet(binding, path, t, binding.schema.name)
        if k == "dict":
            return ManagedDict(binding, path, t, binding.schema.name)
        if plain is None:
            return Counter(0) if k == "counter" and not t.nullable else None
        if k == "counter":
            return bind_counter(binding, path, int(plain) if isinstance(plain, int) else 0)
        if k == "object":
            target = self.schema[t.target or ""]
            cls = self._models_or_registry(target.name)
            return make_managed(self, cls, ObjectBinding(self, binding.collection, binding.key, binding.ref, path, target))
        if k == "link":
            return self._resolve_link(t.target or "", plain)
        return self._decode_scalar(t, plain)

    def _decode_scalar(self, t: FieldType, plain: Plain) -> Any:
        value = from_plain(plain)
        if t.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def _decode_element(self, t: FieldType, plain: Plain) -> Any:
        if plain is None:
            return None
        if t.kind == "link":
            return self._resolve_link(t.target or "", plain)
        if t.kind == "object":
            cls = self._models_or_registry(t.target or "")
            s = schema_of(cls)
            return cls(**{n: self._decode_element(f.type, plain.get(n)) for n, f in s.fields.items()
                          if isinstance(plain, dict) and n in plain})
        return self._decode_scalar(t, plain)

    def _resolve_link(self, target: str, plain: Plain) -> Any:
        cls = self._models.get(target)
        if cls is None:
            return None
        ref = (target, canonical_json(plain))
        if self._body_of(ref) is None:
            return None  # unresolved: the target was deleted or has not arrived yet
        return make_managed(self, cls, ObjectBinding(self, target, plain, ref, (), self.schema[target]))

    def _listener_hub(self) -> Any:
        from .listeners import ListenerHub

        with self._lock:
            self._check_open()
            if self._listeners is None:
                self._listeners = ListenerHub(self)
            return self._listeners

    # -- replication -----------------------------------------------------------------------

    def export_transactions(self, since: int = 0, limit: int | None = None) -> list[Transaction]:
        """The transactions integrated here after local sequence number ``since``, oldest first.

        Raises:
            UsageError: some of them were dropped from the log (``log_keep``, ``compact_log``).
        """
        self._check_open()
        with self._lock:
            floor = self.log_floor()
            if since < floor:
                raise UsageError(f"the transactions after {since} are no longer all in the log: it was trimmed "
                                 f"up to {floor} (log_keep or compact_log)",
                                 advice="ask for transactions after the trimmed ones, or sync the peer over a "
                                        "Link: one this far behind bootstraps from document states")
            rows = self._engine.query("SELECT data FROM log WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (since, -1 if limit is None else limit))
        return [Transaction.from_stored(msgpack.unpackb(r[0], raw=False)) for r in rows]

    @property
    def last_seq(self) -> int:
        """The local change sequence number of the newest transaction here (0 when none; it
        stays where it was when older entries are dropped from the log)."""
        return self.head_seq()

    def integrate(self, transactions: Iterable[Transaction | Mapping[str, Any]], *, peer: str | None = None,
                  peer_seq: int | None = None, preloaded: Preloaded | None = None,
                  first: Sequence[Transaction] = (), recheck: bool = False,
                  wait: bool = True) -> IntegrateResult:
        """Merge transactions from another replica (idempotent: known ones are skipped).

        All of them are applied in one local transaction; when ``peer`` is given, the checkpoint
        recording that this replica holds ``peer``'s log up to ``peer_seq`` moves in the same
        transaction, so a crash can never separate the data from the checkpoint.

        ``preloaded``: :meth:`preload` of transactions that include these (their documents,
        used if nothing was written since).

        ``first``: transactions integrated before them in the same local transaction, not
        from ``peer`` (a server's compensating transaction for the writes it refused of the
        batch): all or nothing with the batch. The result is the batch's.

        ``recheck``: the caller decided something on the ``preloaded`` documents (a server's
        rules): if another connection wrote the file since they were read, raise instead of
        reading them again. (Writes through this connection are the caller's to order: the
        server's document writes take its rules lock; its acknowledgements write no document.)

        ``wait``: False to raise :class:`~tidesync.store.engine.WriteLockBusy` at once, with
        nothing applied, when another connection (another process) holds the file's write lock,
        instead of waiting for it (up to ``BUSY_TIMEOUT``): for a server's event loop.

        Raises:
            MergeError: a transaction is malformed (nothing is applied).
            StaleReadError: ``recheck``, and another connection committed since ``preloaded``
                was read (nothing is applied).
            WriteLockBusy: ``wait=False`` and the write lock is held elsewhere (nothing is
                applied).
        """
        txns: list[Transaction] = []
        for t in transactions:
            if isinstance(t, Transaction):
                txns.append(t)
            else:
                try:
                    txns.append(Transaction.from_wire(t))
                except ValueError as exc:
                    raise MergeError(f"malformed transaction: {exc}") from exc
        self._check_open()
        with self._lock:
            if self._txn is not None:
                raise UsageError("cannot integrate inside a write transaction")
            self._logged = []
            changes_before = self._engine.total_changes()
            hand = self.on_logged
            # Always collected: the log cache is seeded with these transactions (not only
            # their bytes), and with the scopes their documents were written in.
            handed: list[tuple[int, Transaction]] = []
            self._handed_txns = handed
            written_scopes: dict[Ref, str | None] = {}
            self._written_scopes = written_scopes
            hand_rows = self.on_written
            rows: list[tuple[tuple[Any, ...], dict[str, Plain]]] | None = [] if hand_rows is not None else None
            self._written_rows = rows
            pending: list[tuple[Any, ...]] = []
            self._rows_pending = pending
            self._rows_checked = None
            try:
                with self._engine.atomic(wait=wait):
                    # The file's version, read inside the write transaction (where no other
                    # connection commits), not before it: BEGIN may have waited for another
                    # connection's commit, which voids what was read before it (the preloaded
                    # documents, the kept rows, the rows handed over so far).
                    version = (self._engine.total_changes(), self._engine.data_version())
                    if version != self._rows_at:
                        self._rows_cache.clear()   # another write since the rows were kept
                        self._rows_at = None
                    self._rows_checked = version[1]
                    docs = preloaded.take(version) if preloaded is not None else None
                    if docs is None and recheck and preloaded is not None and preloaded.written_elsewhere(version):
                        raise StaleReadError("another connection wrote the file since the batch's documents "
                                             "were read", advice="read them again and check the batch again")
                    if first:
                        # Its writes are read by the batch's: the preloaded documents and the
                        # kept rows predate them (its rows are kept with the batch's, after).
                        self._integrate_locked(first, None, None)
                        docs = None
                        self._rows_cache.clear()
                    scopes = preloaded.scopes if preloaded is not None and docs is not None else None
                    result = self._integrate_locked(txns, peer, peer_seq, docs, scopes)
            except BaseException as exc:
                self._rows_pending = None
                self._rows_cache.clear()
                self._rows_at = None
                self._origin_ids = None  # may hold the rolled-back entries (see _origin_range)
                if isinstance(exc, UnicodeEncodeError):  # packing a log entry: a lone surrogate
                    raise not_text_error(exc) from None
                raise
            finally:
                self._handed_txns = None
                self._written_rows = None
                self._written_scopes = None
            self._rows_pending = None
            after = (self._engine.total_changes(), self._engine.data_version())
            self._keep_rows(pending, after)
            self._seed_log_cache(changes_before, self._logged, handed, written_scopes)
            self._logged = []
            if hand is not None and handed:
                hand(handed)
            if hand_rows is not None and rows is not None:
                hand_rows(rows, version, after)
            self._after_remote(result.applied > 0 or bool(first))
        return result

    #: The most document rows :attr:`_rows_cache` keeps.
    ROWS_CACHE = 50_000

    def _keep_rows(self, rows: list[tuple[Any, ...]], after: tuple[int, int]) -> None:
        """After :meth:`integrate`'s commit (``after``: the file's version then): keep the
        document rows it wrote in :attr:`_rows_cache` (what the cache held was current when
        it began: it checked that inside its write transaction, or emptied
        it) unless another connection committed since that check; then empty the cache."""
        cache = self._rows_cache
        checked = self._rows_checked
        self._rows_checked = None
        if checked is None or after[1] != checked:
            # Not checked inside the transaction, or another connection committed since.
            cache.clear()
            self._rows_at = None
            return
        # What the cache held was current as the integration began (else it was emptied
        # then), and these rows are what it wrote over it.
        if len(cache) + len(rows) > self.ROWS_CACHE:
            cache.clear()
        if len(rows) <= self.ROWS_CACHE:
            for r in rows:
                cache[(r[0], r[1])] = r
        self._rows_at = after

    def _integrate_download(self, txns: Sequence[Transaction], peer: str, peer_seq: int, *,
                            acked: int | None = None, before: Callable[[], None] | None = None,
                            after: Callable[[], None] | None = None) -> IntegrateResult:
        """:meth:`integrate` for a sync session's download: listeners are woken as soon as the
        transaction is committed, and the fsync that makes it durable follows, outside the
        lock (so the notifier can read meanwhile). It returns once the batch is durable, so the
        ``Ack`` that follows still means "durably integrated". Until then a power loss rolls
        the batch back together with its checkpoint (one SQLite transaction), and the batch is
        downloaded again (docs/sync.md, "Durability of downloads"). ``acked``: the peer's
        latest ``Ack`` of our log, not yet stored (:meth:`_record_sync_checkpoint`), written
        in the same transaction. ``before``: more work of the same transaction, done first
        (flexible sync: the batch's view part); ``after``: called once it committed, before
        anything reads through this database (its lock still held) or the listeners wake."""
        self._check_open()
        with self._lock:
            if self._txn is not None:
                raise UsageError("cannot integrate inside a write transaction")
            written: list[tuple[str, str, str, int]] = []
            self._written = written
            try:
                with self._engine.unsynced(), self._engine.atomic():
                    if before is not None:
                        before()
                        written = []  # the view part's documents are not among them: no hand-off
                        self._written = None
                    result = self._integrate_locked(txns, peer, peer_seq)
                    if acked is not None:
                        self._engine.execute("UPDATE checkpoints SET acked = ? WHERE peer = ?", (acked, peer))
            except BaseException:
                self._origin_ids = None  # may hold the rolled-back entries (see _origin_range)
                raise
            finally:
                self._written = None
            if after is not None:
                after()
            self._logged = []  # not put in the log cache: a device sends no downloaded entry on
            self._cache.clear()
            self._generation += 1
            if 0 < len(written) <= self._HANDED_MAX:
                # The committed rows of a small download, parsed once: the cache holds them (the
                # listener's callback reads them) and the notifier takes them instead of reading
                # them back (for this generation only: see ListenerHub).
                handed: dict[Ref, dict[str, Plain] | None] = {}
                for coll, pk, body, live in written:
                    handed[(coll, pk)] = self._cache[(coll, pk)] = loads_json(body) if live else None
                self._handed = (self._generation, handed)
            else:
                self._handed = None
            engine = self._engine
        # Woken once the lock is free: the notifier reads at once instead of waking to wait for it.
        self._wake_after_remote(result.applied > 0)
        engine.sync_wal()
        return result

    #: Downloads writing at most this many documents hand them to the cache and the notifier.
    _HANDED_MAX = 64

    def _record_sync_checkpoint(self, peer: str, received: int | None, acked: int | None) -> None:
        """Store a sync session's checkpoint values that were kept in memory: ``received``
        moved by downloads that carried no transaction, ``acked`` by the peer's ``Ack``s.
        Not fsync'd (the next durable commit makes it durable): neither value is needed
        for correctness after a power loss (docs/sync.md, "Checkpoints kept in memory").
        Also while :meth:`close` stops the session (the file stays open until it has)."""
        with self._lock:
            if self._txn is not None:
                raise UsageError("cannot record a checkpoint inside a write transaction")
            with self._engine.unsynced(), self._engine.atomic():
                if received is not None:
                    self._engine.execute(
                        "INSERT INTO checkpoints (peer, received) VALUES (?, ?) ON CONFLICT(peer) "
                        "DO UPDATE SET received = excluded.received", (peer, received))
                if acked is not None:
                    self._engine.execute(
                        "INSERT INTO checkpoints (peer, acked) VALUES (?, ?) ON CONFLICT(peer) "
                        "DO UPDATE SET acked = excluded.acked", (peer, acked))
        if acked is not None:
            self._trim_log(acked)

    def _after_remote(self, changed: bool) -> None:
        """After integrating from a peer: refresh caches, wake listeners and other peers."""
        self._cache.clear()
        self._generation += 1
        self._wake_after_remote(changed)

    def _wake_after_remote(self, changed: bool) -> None:
        if changed:
            listeners = self._listeners
            if listeners is not None:
                listeners.notify()
                if listeners.listening:
                    # Let the notifier take the GIL now: otherwise it waits until this thread
                    # (the sync session's, with its acknowledgement and next read still to do)
                    # blocks, about 0.7 ms later, and the app sees the change that much later.
                    time.sleep(0)
            hook = self._on_remote_commit
            if hook is not None:
                hook()

    def preload(self, txns: Sequence[Transaction]) -> Preloaded | None:
        """Read the documents ``txns`` touch, with their scopes, in one batch (see
        :class:`Preloaded`); None if an operation is malformed (:meth:`integrate` says why)."""
        self._check_open()
        with self._lock:
            if self._txn is not None:
                raise UsageError("cannot preload inside a write transaction")
            scopes: dict[Ref, str | None] = {}
            # The version before the reads: a commit of another connection while they run
            # (each query reads the file as it is then) makes it differ from the file's.
            version = (self._engine.total_changes(), self._engine.data_version())
            try:
                docs = self._load_docs_of_txns(txns, scopes)
            except (ValueError, TypeError, KeyError):
                return None
            return Preloaded(docs, scopes, version)

    def _integrate_locked(self, txns: Sequence[Transaction], peer: str | None, peer_seq: int | None,
                          preloaded: dict[Ref, Any] | None = None,
                          preloaded_scopes: dict[Ref, str | None] | None = None) -> IntegrateResult:
        known: set[str] = set()
        ids = [t.id for t in txns]
        if len(ids) <= self._PRELUDE_MAX:
            # A small batch (a device's download): the stored clock, the next log seq and the
            # known ids in one query instead of three.
            last, next_seq = self._integrate_prelude(ids, known)
            start = len(ids)
        else:
            last, next_seq, start = self._setting("clock"), 0, 0
        if last:
            self._clock.observe(Stamp(last))
        for i in range(start, len(ids), 500):
            chunk = ids[i:i + 500]
            # Descriptors, not the log: compaction drops log entries but keeps descriptors
            # (with the seq they were integrated at), so a replay of a compacted transaction
            # is still a duplicate.
            known.update(r[0] for r in self._engine.query(
                f"SELECT id FROM descriptors WHERE seq IS NOT NULL AND id IN ({','.join('?' * len(chunk))})", chunk))
        lean: dict[Ref, Any] | None = None
        if preloaded is not None and not known:
            # The documents of these transactions and maybe more (refused ones), which stay
            # unwritten. With duplicates, read again: rows go in the first-touch order of the
            # transactions integrated.
            docs = preloaded
            scopes = preloaded_scopes
        else:
            read_scopes: dict[Ref, str | None] = {}
            scopes = read_scopes
            if not known and txns and _lean_fits(txns, self._policies):
                try:
                    lean = self._lean_rows(txns, read_scopes)
                except (ValueError, TypeError, KeyError):
                    lean = None  # a malformed key: the general path reports it
            if lean is not None:
                docs = lean
            else:
                try:
                    docs = self._load_docs_of_txns([t for t in txns if t.id not in known], scopes)
                except (ValueError, TypeError, KeyError):
                    docs = {}  # a malformed operation: the loop below reports it as a MergeError
        if not next_seq:
            next_seq = self._next_log_seq() if len(known) < len(txns) else 0
        if lean is not None:
            done = self._integrate_lean(txns, lean, read_scopes, peer, next_seq)
            if done is not None:
                last_seq, latest = done
                return self._integrate_end(peer, peer_seq, latest, len(txns), 0, 0, last_seq)
            docs = self._loaded_of_rows(lean)
        applied = dups = nconf = 0
        last_seq = 0
        # Log entries are written together (seqs assigned here, in order) unless something
        # must read the log in between (a concurrent-overwrite check).
        unlogged: list[Transaction] = []
        # Stamps are fixed-width lowercase hex (checked on the way in): the largest string is
        # the latest, so one observation for the batch does (nothing here reads the clock).
        latest = Stamp("")
        for t in txns:
            if t.id in known:
                dups += 1
                continue
            known.add(t.id)
            conflicts: list[merge.Conflict] = []
            touched: list[LoadedDoc | _Fresh] = []
            try:
                for op, ref in zip(t.ops, t.refs()):
                    d = docs.get(ref)
                    if d is None or d is _ABSENT:
                        if d is _ABSENT and type(op) is CreateDoc:
                            # A new document: its row comes straight from the op, as the
                            # merge's create of a document never seen would make it.
                            body, meta = fast_create(op)
                            fresh = docs[ref] = _Fresh(op.collection, op.key, ref, op.base, body, meta)
                            touched.append(fresh)
                            if op.stamp > latest:
                                latest = op.stamp
                            continue
                        d = (LoadedDoc(op.collection, op.key, ref, merge.new_state(), False, False, None)
                             if d is _ABSENT else self._load_doc(op.collection, op.key, ref))
                        docs[ref] = d
                    elif type(d) is _Fresh:
                        d = docs[ref] = d.loaded()
                    overwritten = _register_write(d.state, op)
                    d.state, c = merge.integrate(d.state, op, self._policies)
                    if overwritten is not None:
                        if unlogged:
                            self._append_logs(unlogged, peer, next_seq - len(unlogged))
                            unlogged.clear()
                        c = c + self._concurrent_overwrite(t, op, d.state, *overwritten)
                    d.dirty = True
                    touched.append(d)
                    if c:
                        conflicts.extend(c)
                    if op.stamp > latest:
                        latest = op.stamp
            except (ValueError, TypeError, KeyError) as exc:
                raise MergeError(f"transaction {t.id} cannot be integrated: {exc}") from exc
            unlogged.append(t)
            last_seq = next_seq
            next_seq += 1
            for d in touched:
                d.seq = last_seq
            if conflicts:
                self._record_conflicts(t.id, conflicts)
                nconf += len(conflicts)
            applied += 1
        if unlogged:
            self._append_logs(unlogged, peer, next_seq - len(unlogged))
        # One statement for the batch, in first-touch order (new documents' rowids as before),
        # each document with the seq of the last transaction that touched it.
        self._write_docs(docs.values(), None, scopes)
        return self._integrate_end(peer, peer_seq, latest, applied, dups, nconf, last_seq)

    def _integrate_end(self, peer: str | None, peer_seq: int | None, latest: Stamp, applied: int, dups: int,
                       nconf: int, last_seq: int) -> IntegrateResult:
        """The end of :meth:`_integrate_locked`: the clock and the peer's checkpoint."""
        self._clock.observe(latest)
        if peer is not None and peer_seq is not None:
            self._engine.execute(
                "INSERT INTO checkpoints (peer, received) VALUES (?, ?) ON CONFLICT(peer) "
                "DO UPDATE SET received = excluded.received", (peer, peer_seq))
        self._set_setting("clock", self._clock.last)
        return IntegrateResult(applied, dups, (), nconf, last_seq)

    def _lean_rows(self, txns: Sequence[Transaction], scopes: dict[Ref, str | None]) -> dict[Ref, Any] | None:
        """For :meth:`_integrate_lean`: the stored rows of the documents ``txns`` touch, by
        ref in :meth:`_load_docs_of_txns`'s order, as ``[key, body text, meta text, epoch,
        live]`` (``scopes`` gets their scope column); None if the file lacks one of them
        (then nothing was read: the general path loads them)."""
        by_collection = _keys_by_collection(txns)
        refs = [ref for keys in by_collection.values() for ref in keys]
        cache = self._rows_cache
        if cache and self._rows_pending is not None:   # (current: integrate checked it)
            # The rows the last integrations wrote, as the file holds them (nothing else wrote
            # since): read only the others.
            found = self._states_of([ref for ref in refs if ref not in cache], scopes)
            for ref in refs:
                r = cache.get(ref)
                if r is not None:
                    found[ref] = (r[2], r[3], r[4], r[5])
                    if r[7] is not None:   # (None: the scope column kept what it held)
                        scopes[ref] = r[7]
        else:
            found = self._states_of(refs, scopes)
        out: dict[Ref, Any] = {}
        for keys in by_collection.values():
            for ref, key in keys.items():
                row = found.get(ref)
                if row is None:
                    return self._lean_missing(by_collection, found)
                out[ref] = [key, *row]
        return out

    def _lean_missing(self, by_collection: dict[str, dict[Ref, Plain]],
                      found: dict[Ref, tuple[str, str, str, int]]) -> dict[Ref, Any]:
        """:meth:`_lean_rows` when a document is not in the file: the rows as the general
        path loads them (:data:`_ABSENT` for the missing), marked as not lean."""
        out: dict[Ref, Any] = {_NOT_LEAN: None}
        for keys in by_collection.values():
            for ref, key in keys.items():
                row = found.get(ref)
                out[ref] = _ABSENT if row is None else [key, *row]
        return out

    def _loaded_of_rows(self, rows: dict[Ref, Any]) -> dict[Ref, Any]:
        """The documents of :meth:`_lean_rows` as :meth:`_load_docs_of_txns` gives them."""
        docs: dict[Ref, Any] = {}
        for ref, row in rows.items():
            if ref is _NOT_LEAN:
                continue
            if row is _ABSENT:
                docs[ref] = _ABSENT
                continue
            key, body_text, meta_text, epoch, live = row
            state = merge.DocState(epoch=Stamp(epoch), live=bool(live), body=loads_json(body_text),
                                   meta=loads_json(meta_text))
            docs[ref] = LoadedDoc(ref[0], key, ref, state, True, bool(live), body_text if live else None)
        return docs

    def _integrate_lean(self, txns: Sequence[Transaction], rows: dict[Ref, Any], scopes: dict[Ref, str | None],
                        peer: str | None, first_seq: int) -> tuple[int, Stamp] | None:
        """:meth:`_integrate_locked`'s loop for a batch that :func:`_lean_fits` (top-level
        register writes, each transaction new here) whose documents the file holds, live, in
        their compact form (:func:`~tidesync.core.merge.overlay_write`): every write of the
        batch wins and replaces a value of its own replica (or a default), so no conflict and
        no concurrent overwrite can come of it, and each write is what ``merge.integrate``
        would do (its overlay path) on the parsed body and meta, without the document
        objects. Writes the log, its descriptors and the rows; returns (last seq, latest
        stamp). None, having written nothing, when a document or a write does not fit (the
        general path then integrates the batch from ``rows``)."""
        if _NOT_LEAN in rows:
            return None
        for _, _, meta_text, _, live in rows.values():
            if not live or not meta_text.startswith('{"*":'):
                return None
        # Each document parsed when the loop first reaches it, after its operation's base was
        # found to be its epoch: a batch that does not fit stops before parsing what it need not.
        parsed: dict[Ref, list[Any]] = {}
        latest = ""
        seq = first_seq
        # Documents whose value columns (store/tables.py) this batch may change: their update
        # is checked by the trigger; the others' vouches for them (UPDATE_DOCUMENT_VALUES_KEPT).
        value_fields = self.value_fields
        touched_values: set[Ref] = set()
        for t in txns:
            for op, ref in zip(cast("tuple[SetValue, ...]", t.ops), t.refs()):   # (as _lean_fits found)
                d = parsed.get(ref)
                if d is None:
                    _, body_text, meta_text, epoch, _ = rows[ref]
                    if op.base != epoch:
                        return None
                    meta = loads_json(meta_text)
                    overlay = meta.get("r")
                    if overlay is None:
                        overlay = meta["r"] = {}
                    if type(meta.get("*")) is not str or type(overlay) is not dict:
                        return None  # not a compact meta after all: the general path reads it
                    # [body, meta, overlay, epoch, seq, the create's key, containers made by the
                    # create (kinds), fields it filled in from defaults]: what compact_key reads
                    d = parsed[ref] = [loads_json(body_text), meta, overlay, epoch, 0, meta["*"], meta.get("*k") or (),
                                       meta.get("*d") or ()]
                elif op.base != d[3]:
                    return None
                name = op.path[0]
                if name in d[6]:
                    return None  # a container: not a register of the compact form
                stamp = op.stamp
                body, overlay = d[0], d[2]
                cur = overlay.get(name) or ("0" if name in d[7] else "1") + d[5]
                if name in body and cur[0] == "1":
                    old = cur[1:]
                    if old[18:] != stamp[18:] and old < stamp:
                        return None  # it may overwrite a concurrent write: the general path checks
                key = ("0" if op.default else "1") + stamp
                if key <= cur:
                    return None  # it loses: a conflict to record
                body[name] = op.value
                overlay[name] = key
                d[4] = seq
                if name in value_fields:
                    touched_values.add(ref)
                if stamp > latest:
                    latest = stamp
            seq += 1
        self._append_logs(txns, peer, first_seq)
        pkey = self.partition_key
        out: list[tuple[Any, ...]] = []
        bodies: list[dict[str, Plain]] = []
        for ref in rows:   # (every one reached: the rows are the operations' documents)
            d = parsed[ref]
            body = d[0]
            bodies.append(body)
            if pkey is None:
                scope = None
            else:
                # (A plain alphanumeric string needs no escaping: what the encoder writes.)
                value = body.get(pkey)
                scope = f'"{value}"' if type(value) is str and value.isalnum() and value.isascii() else _dumps(value)
            out.append((ref[0], ref[1], _dumps(body), _dumps(d[1]), d[3], 1, d[4], scope))
        self._write_doc_rows(out, [True] * len(out), bodies, scopes,
                             [ref not in touched_values for ref in rows] if value_fields else None)
        return seq - 1, Stamp(latest)

    #: Batches of at most this many transactions use :meth:`_integrate_prelude`.
    _PRELUDE_MAX = 500

    #: The seq the next log entry gets (AUTOINCREMENT: after the largest ever used).
    _NEXT_SEQ = ("max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'log'), 0), "
                 "coalesce((SELECT max(seq) FROM log), 0)) + 1")

    #: :meth:`_integrate_prelude`'s first row: the stored clock and the next log seq.
    _PRELUDE = f"SELECT 0, (SELECT value FROM settings WHERE key = 'clock'), {_NEXT_SEQ}"

    def _integrate_prelude(self, ids: Sequence[str], known: set[str]) -> tuple[str | None, int]:
        """The stored clock and :meth:`_next_log_seq`, and into ``known`` those of ``ids``
        (at most 500) already integrated here (see :meth:`_integrate_locked`): one query."""
        sql = self._PRELUDE
        if ids:
            sql += (" UNION ALL SELECT 1, id, NULL FROM descriptors WHERE seq IS NOT NULL AND id IN "
                    f"({','.join('?' * len(ids))})")
        last: str | None = None
        next_seq = 1
        for tag, value, seq in self._engine.query(sql, ids):
            if tag:
                known.add(value)
            else:
                last, next_seq = value, int(seq)
        return last, next_seq

    def _next_log_seq(self) -> int:
        """The seq the next log entry gets (AUTOINCREMENT: after the largest ever used)."""
        return int(self._engine.query(f"SELECT {self._NEXT_SEQ}")[0][0])

    def _append_logs(self, txns: Sequence[Transaction], via: str | None, first_seq: int) -> None:
        """:meth:`_append_log` for several transactions, numbered from ``first_seq``: a few
        statements in all. Heads change as they would one transaction after the other."""
        log_rows = []
        desc_rows = []
        # One packer for the batch: packb makes one per call, a cost per transaction.
        pack = msgpack.Packer(use_bin_type=True).pack
        logged = self._logged
        handed = self._handed_txns
        for seq, t in enumerate(txns, first_seq):
            data = pack(t.wire())
            log_rows.append((seq, t.id, t.origin, t.stamp, data, via))
            logged.append((seq, t.origin, via, data))
            if handed is not None:
                packed = t._packed
                if packed is None:
                    object.__setattr__(t, "_packed", data)   # what packed() returns: these bytes
                    handed.append((seq, t))
                elif packed == data:
                    handed.append((seq, t))
                # (else other bytes of the same map: the entry is read back from the log when needed)
            desc_rows.append((t.id, t.origin, t.user, t.stamp, pack(t.descriptor_wire(len(data))), seq))
        self._run_values("INSERT INTO log (seq, id, origin, stamp, data, via) VALUES (?, ?, ?, ?, ?, ?)",
                         log_rows, 6)
        self._run_values(
            "INSERT INTO descriptors (id, origin, user, stamp, data, seq) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq", desc_rows, 6)
        added: dict[str, None] = {}
        removed: set[str] = set()
        for t in txns:
            for p in t.parents:
                removed.add(p)
                added.pop(p, None)
            added[t.id] = None
            removed.discard(t.id)
        if len(removed) > 8:
            # A chain of many transactions: one statement, not one execution per parent.
            self._engine.run("DELETE FROM heads WHERE id IN (SELECT value FROM json_each(?))",
                             (_dumps(list(removed)),))
        elif removed:
            self._engine.run_rows("DELETE FROM heads WHERE id = ?", [(p,) for p in removed])
        self._engine.run_rows("INSERT OR IGNORE INTO heads (id) VALUES (?)", [(i,) for i in added])

    def _load_docs_of_txns(self, txns: Sequence[Transaction],
                           scopes: dict[Ref, str | None] | None = None) -> dict[Ref, Any]:
        """:meth:`_load_doc` for every document ``txns`` touch, a few hundred per query; a
        document the file does not hold is :data:`_ABSENT` (its place kept: rows are written
        in this order). ``scopes``, if given, gets the scope column of those it holds."""
        by_collection = _keys_by_collection(txns)
        docs: dict[Ref, Any] = {}
        for coll, keys in by_collection.items():
            found = self._load_docs(coll, [(key, ref) for ref, key in keys.items()], scopes)
            for ref in keys:
                docs[ref] = found.get(ref, _ABSENT)
        return docs

    def _concurrent_overwrite(self, t: Transaction, op: Any, state: merge.DocState, old_stamp: str,
                              old_value: Plain) -> list[merge.Conflict]:
        """A conflict record when ``op`` (of ``t``) replaced a value its writer had not seen.

        The merge core records a conflict when the losing write arrives last; when the
        winner arrives last it cannot tell a later edit from a concurrent one. Here the log can:
        the overwritten write was concurrent unless its transaction is an ancestor of ``t``.
        """
        name = op.path[0]
        new_value = state.body.get(name)
        if not state.live or new_value == old_value or new_value != (op.value if isinstance(op, SetValue) else None):
            return []
        if self._is_ancestor(old_stamp, t):
            return []
        return [merge.Conflict(op.collection, op.key, (name,), "lww", new_value, op.stamp, old_value, Stamp(old_stamp))]

    def _origin_range(self, origin: str) -> list[str] | None:
        """[lowest, highest] id of the transactions of ``origin`` this file holds a descriptor
        of, or None (none). Descriptors have no index by origin, so a look-up by origin would
        scan them back from the stamp, all of them when the origin wrote nothing here. So this
        is kept in memory: read whole once, when first needed (one pass over the descriptors,
        against one per look-up), then brought up to date from the log entries
        appended since (each descriptor written comes with one). Read whole again when that
        cannot be trusted: entries trimmed from the log before they were seen here, or the
        last entry seen no longer there (its transaction rolled back). An integration that
        rolls back drops them too: what was read inside it may name its entries, and a later
        batch can log the last of them again at the same seq, which the mark would trust.
        Called inside an integration's transaction."""
        engine = self._engine
        ids, seq, mark = self._origin_ids, self._origin_ids_seq, self._origin_ids_mark
        if ids is not None:
            [(head, first, at)] = engine.query(
                "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'log'), (SELECT min(seq) FROM log), "
                "(SELECT seq FROM descriptors WHERE id = ?)", (mark,))
            head = head or 0
            if mark is not None and at != seq:
                ids = None
            elif head > seq:
                if first is None or first > seq + 1:
                    ids = None
                else:
                    for o, low, high in engine.query(
                            "SELECT origin, min(id), max(id) FROM log WHERE seq > ? GROUP BY origin", (seq,)):
                        have = ids.get(o)
                        ids[o] = [low, high] if have is None else [min(have[0], low), max(have[1], high)]
                    seq = head
                    mark = engine.query("SELECT id FROM log WHERE seq = ?", (head,))[0][0]
        if ids is None:
            ids = {o: [low, high] for o, low, high in engine.query(
                "SELECT origin, min(id), max(id) FROM descriptors GROUP BY origin")}
            [(seq, mark)] = engine.query(
                "SELECT coalesce(seq, 0), (SELECT id FROM log WHERE log.seq = sqlite_sequence.seq) "
                "FROM (SELECT 0) LEFT JOIN sqlite_sequence ON name = 'log'")
        self._origin_ids, self._origin_ids_seq, self._origin_ids_mark = ids, seq, mark
        return ids.get(origin)

    def _is_ancestor(self, stamp: str, t: Transaction, budget: int = 2000) -> bool:
        """Is the write stamped ``stamp`` in the causal past of transaction ``t``?"""
        origin = stamp[18:]
        if origin == t.origin:
            return True  # a replica's own writes are causally ordered
        # The transaction that wrote it: the origin's last one up to the stamp. Asked of the
        # descriptors, which stay when entries are trimmed from the log (log_keep,
        # compact_log): in the log, a trimmed entry's place would go to an older one. Their
        # only index is the id, so first the few just before the stamp (where that transaction
        # is, when it was integrated here), and only then the origin's kept range: a look-up
        # by origin would scan back over every descriptor when the origin wrote nothing here.
        near = self._engine.query("SELECT id FROM (SELECT id, origin FROM descriptors WHERE id <= ? ORDER BY id DESC "
                                  "LIMIT 64) WHERE origin = ? LIMIT 1", (stamp, origin))
        if near:
            target = near[0][0]
        else:
            held = self._origin_range(origin)
            if held is None or held[0] > stamp:
                # Never seen here as a transaction: the document came in a bootstrap's snapshot.
                # Whether ``t``'s writer had seen it cannot be told, so, as when the walk below
                # runs out of budget, no conflict is claimed (a replica holding the history
                # records it).
                return True
            if held[1] <= stamp:
                target = held[1]
            else:  # rare: the origin wrote both long before the stamp and after it
                target = self._engine.query("SELECT id FROM descriptors WHERE origin = ? AND id <= ? "
                                            "ORDER BY id DESC LIMIT 1", (origin, stamp))[0][0]
        todo = list(t.parents)
        seen: set[str] = set()
        while todo and budget > 0:
            tid = todo.pop()
            if tid in seen or tid < target:
                continue
            seen.add(tid)
            budget -= 1
            if tid[18:] == origin and tid >= stamp:
                return True  # the writer's later transaction, or a "seen" stamp reaching the write
            found = self._engine.query("SELECT data FROM descriptors WHERE id = ?", (tid,))
            if found:
                if tid[18:] == origin:
                    return True  # the writer's transaction that made the write (tid >= target)
                todo.extend(msgpack.unpackb(found[0][0], raw=False).get("parents", []))
            # Else a "seen" stamp (no transaction's id): the writer's writes up to it only, which
            # may stop inside the transaction that made this write (its writes are stamped one
            # after the other), or a transaction not held here.
        return budget <= 0  # out of budget: assume it was seen rather than report a false conflict

    # -- history and revert ----------------------------------------------------------------

    def history(self, limit: int = 50, *, collection: str | None = None) -> list[HistoryEntry]:
        """The newest ``limit`` transactions, newest first."""
        self._check_open()
        with self._lock:
            rows = self._engine.query("SELECT seq, data FROM log ORDER BY seq DESC LIMIT ?", (limit,))
        out = []
        for seq, data in rows:
            t = Transaction.from_stored(msgpack.unpackb(data, raw=False))
            changes = _changes_of(t)
            if collection is not None and not any(c.collection == collection for c in changes):
                continue
            out.append(HistoryEntry(t.id, seq, t.stamp, t.origin, t.user, t.parents, changes,
                                    t.meta.get("reverts")))
        return out

    def revert(self, txn_id: str) -> RevertResult:
        """Write a new transaction restoring what ``txn_id`` changed, where nothing changed it since.

        Returns what was restored and, for everything else, why not (overwritten by a later
        transaction, or the document was deleted or re-created since).

        Raises:
            RevertError: no transaction with that id is in the log.
        """
        self._check_open()
        with self._lock:
            rows = self._engine.query("SELECT seq, data FROM log WHERE id = ?", (txn_id,))
            if not rows:
                raise RevertError(f"no transaction {txn_id!r} in this database's log",
                                  advice="see db.history() for ids; with log_keep, older transactions are dropped")
            seq, data = rows[0]
            target = Transaction.from_stored(msgpack.unpackb(data, raw=False))
            touched_refs = {(c, canonical_json(k)) for c, k in target.touches()}
            later_fields: dict[Ref, set[str]] = {}
            later_whole: set[Ref] = set()
            for (ldata,) in self._engine.query("SELECT data FROM log WHERE seq > ? ORDER BY seq", (seq,)):
                lt = Transaction.from_stored(msgpack.unpackb(ldata, raw=False))
                for op in lt.ops:
                    ref = (op.collection, canonical_json(op.key))
                    if ref not in touched_refs:
                        continue
                    if isinstance(op, (CreateDoc, DeleteDoc)):
                        later_whole.add(ref)
                    else:
                        later_fields.setdefault(ref, set()).add(op.path[0])
            befores = {(b.collection, canonical_json(b.key)): b for b in target.before}
            created = {(op.collection, canonical_json(op.key)) for op in target.ops if isinstance(op, CreateDoc)}
            restored: list[tuple[str, Any, str]] = []
            skipped: list[tuple[str, Any, str, str]] = []
            with self._write_block({"reverts": txn_id}):
                txn = self._current_txn()
                for collection, key in target.touches():
                    ref = (collection, canonical_json(key))
                    pyk = from_plain(key)
                    b = befores.get(ref)
                    d = txn.doc(collection, key, ref)
                    if b is None:
                        if ref not in created:
                            continue
                        if ref in later_whole or ref in later_fields:
                            skipped.append((collection, pyk, "*", "changed by a later transaction"))
                        elif d.state.live:
                            txn.delete(d)
                            restored.append((collection, pyk, "*"))
                        continue
                    if b.deleted:
                        if ref in later_whole or d.state.live:
                            skipped.append((collection, pyk, "*", "re-created or changed since"))
                            continue
                        obj = self._merged_schema.get(collection)
                        assert b.fields is not None
                        self._create_plain(txn, obj, collection, key, b.fields)
                        restored.append((collection, pyk, "*"))
                        continue
                    if ref in later_whole or not d.state.live:
                        skipped.append((collection, pyk, "*", "deleted or re-created since"))
                        continue
                    assert b.fields is not None
                    for name, old in b.fields.items():
                        if name in later_fields.get(ref, set()):
                            skipped.append((collection, pyk, name, "overwritten by a later transaction"))
                            continue
                        self._assign_plain(txn, d, collection, name, old)
                        restored.append((collection, pyk, name))
            rev = self.history(1)[0].id if restored else None
        return RevertResult(rev, tuple(restored), tuple(skipped))

    def _assign_plain(self, txn: WriteTransaction, d: LoadedDoc, collection: str, name: str, plain: Plain) -> None:
        obj = self._merged_schema.get(collection)
        f = obj.fields.get(name) if obj is not None else None
        if plain == MISSING_FIELD:
            txn.unset(d, (name,))
            return
        if f is None:
            txn.assign_plain(d, (name,), None, plain)
        else:
            txn.assign_plain(d, (name,), f.type, plain)

    def _create_plain(self, txn: WriteTransaction, obj: ObjectSchema | None, collection: str, key: Plain,
                      fields: dict[str, Plain]) -> None:
        schema_obj = obj or ObjectSchema(collection, {})
        txn.create(schema_obj, key, dict(fields), ())

    def conflicts(self, limit: int = 100, *, before: int | None = None) -> list[dict[str, Any]]:
        """The newest resolved conflicts: what lost, what won, their stamps and the rule.
        ``before``: only records whose ``id`` is lower (the next page after a list's last)."""
        self._check_open()
        with self._lock:
            rows = self._engine.query(
                "SELECT id, txn, collection, pk, path, rule, winner, winner_stamp, loser, loser_stamp "
                "FROM conflicts WHERE id < ? ORDER BY id DESC LIMIT ?",
                (INT64_MAX if before is None else before, limit))
        return [{"id": r[0], "transaction": r[1], "collection": r[2], "key": json.loads(r[3]), "path": r[4],
                 "rule": r[5], "winner": json.loads(r[6]) if r[6] else None, "winner_stamp": r[7],
                 "loser": json.loads(r[8]) if r[8] else None, "loser_stamp": r[9]} for r in rows]

    # -- schema --------------------------------------------------------------------------

    @property
    def stored_schema(self) -> Schema:
        """The file's schema: this client's models plus anything earlier clients declared."""
        return self._merged_schema


#: In :meth:`Database._lean_rows`'s answer: a document was missing (the general path loads).
_NOT_LEAN: Any = object()


def _lean_fits(txns: Sequence[Transaction], policies: merge.Policies | None) -> bool:
    """Whether every operation of ``txns`` is a write of a scalar to a top-level field other
    than ``_id``, under the ``lww`` policy, and no transaction comes twice: the shape
    :meth:`Database._integrate_lean` takes (whether the documents fit is decided there)."""
    lww: dict[tuple[str, str], bool] = {}
    ids = set()
    for t in txns:
        ids.add(t.id)
        for op in t.ops:
            if type(op) is not SetValue:
                return False
            path = op.path
            if type(path) is not tuple or len(path) != 1 or op.epochs != ():
                return False
            name = path[0]
            value = op.value
            if type(name) is not str or not name or name == "_id" or type(value) is dict or type(value) is list:
                return False
            if policies is not None:
                k = (op.collection, name)
                ok = lww.get(k)
                if ok is None:
                    ok = lww[k] = policies.lookup(op.collection, path) == "lww"
                if not ok:
                    return False
    return len(ids) == len(txns)


def _register_write(state: merge.DocState, op: Any) -> tuple[str, Plain] | None:
    """For a top-level field write that would replace another replica's value: (its stamp, value)."""
    if not isinstance(op, (SetValue, Unset)) or len(op.path) != 1 or not state.live:
        return None
    name = op.path[0]
    meta = state.meta
    if "*" in meta:
        if name not in state.body:
            return None
        # The key the expanded meta would hold (a default's is a "0" key, as below).
        key = merge.compact_key(meta, name)
        if key is None or key[:1] != "1":
            return None
        old = key[1:]
    else:
        key = (meta.get("r") or {}).get(name)
        if not key or key[0] != "1" or name in (meta.get("c") or {}):
            return None
        old = key[1:]
    if old[18:] == op.stamp[18:] or old >= op.stamp:
        return None
    return old, state.body.get(name)


class _NotBulk(Exception):
    """An item that ``create_many``'s bulk path leaves to the general path."""


def _make_bulk_builder(cls: type[_ModelBase], obj: ObjectSchema) -> Any:
    """The bulk path's item builder for a model whose fields are all registers (None for any
    other): generated code checking each field's value in a line or two (the exact type, an
    int in 64 bits, a finite float) and handing anything else to ``coerce`` and
    ``value_to_plain``, as ``create`` does. It returns ``(plain body in field order, the names
    filled in from defaults or None)``; an item ``create`` would refuse raises."""
    fields = obj.fields
    if "_id" not in fields or any(f.type.kind in _NOT_BULK_KINDS for f in fields.values()):
        return None
    names = list(fields)
    owner = cls.__name__
    specs = [(n, fields[n]) for n in names]
    absent: Any = object()

    def given(item: Any) -> dict[str, Any]:
        return Database._given_of(cls, item)

    def slow(i: int, v: Any, d: list[str] | None) -> tuple[Plain, list[str] | None]:
        name, f = specs[i]
        if v is absent:
            v = default_of(cls, name)
            if v is MISSING:
                raise _NotBulk(name)
            d = [name] if d is None else d + [name]
        return value_to_plain(f.type, coerce(owner, f, v)), d

    lines = ["def build(item):",
             "    if type(item) is not dict:",
             "        item = given(item)",
             "    if not item.keys() <= names:",
             "        raise NotBulk()",
             "    d = None"]
    for i, name in enumerate(names):
        kind = fields[name].type.kind
        if kind == "str":  # (not ASCII: coerce, which refuses half of a surrogate pair)
            cond = f"type(v{i}) is not str or not v{i}.isascii()"
        elif kind == "bool":
            cond = f"type(v{i}) is not {kind}"
        elif kind == "int":
            cond = f"type(v{i}) is not int or not {-(1 << 63)} <= v{i} <= {(1 << 63) - 1}"
        elif kind == "float":
            cond = f"type(v{i}) is not float or v{i} - v{i} != 0.0"
        else:
            cond = "True"
        lines += [f"    v{i} = item.get({name!r}, absent)", f"    if {cond}:", f"        v{i}, d = slow({i}, v{i}, d)"]
    lines.append("    return {" + ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names)) + "}, d")
    scope: dict[str, Any] = {"given": given, "names": frozenset(names), "NotBulk": _NotBulk, "absent": absent,
                             "slow": slow}
    exec("\n".join(lines), scope)  # noqa: S102 - code made from the schema's field names, shown above
    return scope["build"]


def _keys_by_collection(txns: Sequence[Transaction]) -> dict[str, dict[Ref, Plain]]:
    """The documents ``txns`` touch, by collection: ref -> key, in first-touch order."""
    by_collection: dict[str, dict[Ref, Plain]] = {}
    for t in txns:
        for op, ref in zip(t.ops, t.refs()):
            keys = by_collection.get(ref[0])
            if keys is None:
                keys = by_collection[ref[0]] = {}
            if ref not in keys:
                keys[ref] = op.key
    return by_collection


def _changes_of(t: Transaction) -> tuple[Change, ...]:
    out: dict[Ref, tuple[str, Any, str, list[str]]] = {}
    for op in t.ops:
        ref = (op.collection, canonical_json(op.key))
        entry = out.get(ref)
        if entry is None:
            entry = (op.collection, from_plain(op.key), "update", [])
            out[ref] = entry
        coll, key, kind, fields = entry
        if isinstance(op, CreateDoc):
            out[ref] = (coll, key, "create", fields + [f for f in op.fields if f not in fields])
        elif isinstance(op, DeleteDoc):
            out[ref] = (coll, key, "delete", fields)
        else:
            if op.path[0] not in fields:
                fields.append(op.path[0])
    return tuple(Change(c, k, kind, tuple(f)) for c, k, kind, f in out.values())  # type: ignore[arg-type]


_ = (BeforeImage, to_plain, overload)
