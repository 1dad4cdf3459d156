"""The local writer: turns what the app does inside ``db.write()`` into stamped operations.

Every local change goes through the same merge code as a change from another replica
(:func:`tidesync.core.merge.integrate`), so a device's own state is, by construction, what
any replica that integrates the same transactions will hold.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from operator import itemgetter
from typing import Any

import msgpack

from ..core import merge
from ..core.merge.state import clone
from ..core.clock import HybridClock
from ..core.models import value_to_plain
from ..core.operations import (
    CounterAdd, CreateDoc, DeleteDoc, DictDel, DictPut, ListErase, ListInsert, ListMove, ListSet, Op,
    SetAdd, SetContainer, SetRemove, SetValue, Unset, create_columns_record, set_columns_record,
    top_level_set,
)
from ..core.schema import FieldType, ObjectSchema, Schema
from ..core.stamp import ZERO, Stamp, stamp_after
from ..core.transaction import MISSING_FIELD, MISSING_FIELD_JSON, BeforeImage, before_columns_record
from ..core.values import Plain, canonical_json

__all__ = ["WriteTransaction", "LoadedDoc", "PendingDoc", "ColumnUpdate", "BulkCreates", "container_kinds",
           "pack_transaction", "packed_set_columns", "packed_creates"]

Ref = tuple[str, str]


@dataclass(slots=True)
class LoadedDoc:
    """A document as the write transaction holds it: its state and what it was at the start.

    ``before_source`` is the body as it was (None when the document was not live): a dict, or
    the JSON text it was loaded from, decoded only if :attr:`body_before` is read.
    """

    collection: str
    key: Plain
    ref: Ref
    state: merge.DocState
    existed_row: bool
    live_before: bool
    before_source: dict[str, Plain] | str | None
    before_fields: dict[str, Plain] = field(default_factory=dict)
    deleted_here: bool = False
    dirty: bool = False
    unflushed: bool = False
    seq: int = 0

    @property
    def body_before(self) -> dict[str, Plain] | None:
        """The body as it was before the transaction (None when the document was not live)."""
        src = self.before_source
        if type(src) is str:
            src = self.before_source = json.loads(src)
        return src  # type: ignore[return-value]


class PendingDoc:
    """Top-level register fields of a document assigned without loading it (the update fast
    path): written into its row when the transaction flushes or commits.

    The row was read when the first field was assigned: the document was live, its meta
    compact (``{"*": stamp, ...}``), the fields plain registers of it. (A plain class: one
    is made per document assigned, and a dataclass's ``__init__`` with factories costs more.)
    """

    __slots__ = ("collection", "key", "ref", "epoch", "meta", "rowid", "before_json", "keys", "fields", "flushed",
                 "seq")

    def __init__(self, collection: str, key: Plain, ref: Ref, epoch: str, meta: str, rowid: int,
                 before_json: dict[str, str | None] | None = None, keys: dict[str, str] | None = None,
                 fields: dict[str, Plain] | None = None) -> None:
        self.collection = collection
        self.key = key
        self.ref = ref
        self.epoch = epoch
        #: The row's rowid in ``documents``.
        self.rowid = rowid
        #: The row's meta as it was before the transaction (JSON text).
        self.meta = meta
        #: The fields' values before the transaction as JSON text (None when absent).
        self.before_json: dict[str, str | None] = {} if before_json is None else before_json
        #: The fields' write keys of this transaction (given when its assignments are stamped).
        self.keys: dict[str, str] = {} if keys is None else keys
        #: The fields written here and stamped: name -> plain value.
        self.fields: dict[str, Plain] = {} if fields is None else fields
        #: True when the row holds ``fields`` already (flushed for a query, or by a bulk update).
        self.flushed = False
        #: The ``seq`` the row was last written with (0 for a flush before the commit; the
        #: commit's predicted seq for a bulk update's rows: the commit then leaves them).
        self.seq = 0

    def before_value(self, name: str) -> Plain:
        """Field ``name`` before the transaction (``MISSING_FIELD`` when absent)."""
        text = self.before_json[name]
        return MISSING_FIELD if text is None else json.loads(text)


class ColumnUpdate:
    """The fast-path writes of one uniform chunk of ``db.create_many(..., update=...)``, kept
    as columns instead of one :class:`PendingDoc` per document: what those pending documents
    would hold, for documents whose rows hold the writes already (written by one set-based
    statement, with the seq the commit's log entry gets). Turned into pending documents
    (:meth:`pending_docs`) only when something else in the write touches one of them; a
    write that does not commits straight from the columns.

    Per document ``k`` (those with at least one write): ``keys[k]``, ``refs[k]``,
    ``epochs[k]``, ``metas[k]`` (the row's meta before, JSON text), ``rowids[k]`` and
    ``names[k]`` (the fields written, in the order they were written: model order for
    ``create_many``, assignment order for a loop committed as columns). Per write, in operation order (a
    document's writes one after the other): ``olds`` (the field before, JSON text, None when
    absent), ``stamps``, ``values``.
    """

    __slots__ = ("collection", "keys", "refs", "epochs", "metas", "rowids", "names", "olds", "stamps", "values",
                 "seq", "decoded", "expanded")

    def __init__(self, collection: str, keys: list[Plain], refs: list[Ref], epochs: list[str], metas: list[str],
                 rowids: list[int], names: list[tuple[str, ...]], olds: list[str | None], stamps: list[str],
                 values: list[Plain], seq: int, decoded: list[Plain] | None = None) -> None:
        self.collection = collection
        self.keys = keys
        self.refs = refs
        self.epochs = epochs
        self.metas = metas
        self.rowids = rowids
        self.names = names
        self.olds = olds
        self.stamps = stamps
        self.values = values
        self.seq = seq
        #: ``olds`` decoded, if known (an absent field as MISSING_FIELD's value).
        self.decoded = decoded
        #: True once turned into pending documents (they then stand for it).
        self.expanded = False

    def pending_docs(self) -> list[PendingDoc]:
        """The pending documents these writes stand for (flushed, with the rows' seq)."""
        out: list[PendingDoc] = []
        coll, olds, stamps, values, seq = self.collection, self.olds, self.stamps, self.values, self.seq
        s = 0
        for key, ref, epoch, meta, rowid, names in zip(self.keys, self.refs, self.epochs, self.metas, self.rowids,
                                                       self.names):
            e = s + len(names)
            p = PendingDoc(coll, key, ref, epoch, meta, rowid, dict(zip(names, olds[s:e])),
                           {n: "1" + st for n, st in zip(names, stamps[s:e])}, dict(zip(names, values[s:e])))
            p.flushed = True
            p.seq = seq
            out.append(p)
            s = e
        return out

    def uniform_names(self) -> bool:
        """True when every document has the same fields written, in the same order."""
        names = self.names
        return bool(names) and names.count(names[0]) == len(names)

    def before_wires(self) -> list[list[Any]]:
        """The before-images of its documents in their stored form, in order: one columns
        record (:func:`~tidesync.core.transaction.before_columns_record`) when every document
        has the same fields written, else each one's wire form (``BeforeImage.to_wire``)."""
        if len(self.keys) >= COLUMNS_MIN_DOCS and self.uniform_names():
            olds_text = self.olds
            present: list[str] = (olds_text if None not in olds_text  # type: ignore[assignment]
                                  else [MISSING_FIELD_JSON if t is None else t for t in olds_text])
            return [before_columns_record(self.collection, list(self.names[0]), self.keys,
                                          "[" + ",".join(present) + "]")]
        olds = self.decoded
        if olds is None:
            texts = [t for t in self.olds if t is not None]
            decoded = iter(json.loads("[" + ",".join(texts) + "]"))
            olds = [MISSING_FIELD if t is None else next(decoded) for t in self.olds]
        coll = self.collection
        names = self.names
        if set(map(len, names)) == {1}:
            return [[coll, key, {n[0]: old}, False] for key, n, old in zip(self.keys, names, olds)]
        out: list[list[Any]] = []
        s = 0
        for key, ns in zip(self.keys, names):
            e = s + len(ns)
            out.append([coll, key, dict(zip(ns, olds[s:e])), False])
            s = e
        return out


@dataclass(slots=True)
class BulkCreates:
    """Documents that ``db.create_many`` created in one step: their rows are in the (uncommitted)
    file already, with the sequence number the commit's log entry will get; the transaction
    keeps only their ``CreateDoc`` operations, packed for the log. (Also a run of top-level
    ``SetValue`` operations of ``create_many(..., update=...)``, packed the same way, with no
    ``refs``: their documents are pending, see :class:`PendingDoc`.)
    """

    #: ``len(ops)`` when they were made: they come before ``ops[at:]`` in the transaction.
    at: int
    count: int
    #: The stamp of the first of them.
    first: str
    #: The msgpack of the operations' wire forms, one after the other (no array header).
    packed: list[bytes]
    refs: list[Ref]
    #: Wire forms not packed yet, after ``packed`` (``db.create``'s run: packed in one call at
    #: commit rather than one call per document).
    wires: list[Any] = field(default_factory=list)
    #: How many items ``packed`` holds in the log entry's ``ops`` list, when not ``count`` (a
    #: columns record stands for many operations; see :func:`packed_set_columns`).
    items: int | None = None


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def array_items(packed: bytes) -> bytes:
    """The items of a msgpack array without its header."""
    b = packed[0]
    return packed[1:] if 0x90 <= b <= 0x9F else packed[3:] if b == 0xDC else packed[5:]


#: The fewest documents a :class:`ColumnUpdate` is logged as a columns record for: a smaller
#: write keeps the wire form in the log, which a device uploads as it is (a columns record is
#: expanded for a peer first).
COLUMNS_MIN_DOCS = 32


#: The columns the update fast path reads ahead for a document (``Database._read_ahead``):
#: ``pk, meta, body, at``, where ``at`` is the rowid of a live document of epoch ``''`` (nearly
#: every one) and else the JSON text ``[rowid, live, epoch]``: one column for three, since
#: pysqlite pays for each column of each row it fetches (it releases the GIL around each).
READ_AHEAD_COLUMNS = ("pk, meta, body, CASE WHEN live AND epoch = '' THEN rowid "
                      "ELSE json_array(rowid, live, epoch) END")


def row_facts(at: int | str) -> tuple[str, bool, int]:
    """The epoch, live flag and rowid of a document read ahead, from its last column ``at``
    (see :data:`READ_AHEAD_COLUMNS`)."""
    if isinstance(at, int):
        return "", True, at
    rowid, live, epoch = json.loads(at)
    return epoch, bool(live), rowid


def packed_set_columns(collection: str, names: list[tuple[str, ...]], keys: list[Plain], epochs: list[str],
                       stamps: list[str], values: list[Plain]) -> tuple[bytes, int]:
    """The ``SetValue`` operations of a :class:`ColumnUpdate`'s columns packed for the log
    (msgpack items without an array header, see :class:`BulkCreates`) and how many items:
    one columns record (:func:`~tidesync.core.operations.set_columns_record`) when every
    document has the same fields written and the stamps are a run from the first (one
    :meth:`~tidesync.core.clock.HybridClock.now_many`: strictly increasing, so the run when
    the last is the run's last), else each operation's wire form (``op_to_wire``'s)."""
    n = len(stamps)
    if len(names) >= COLUMNS_MIN_DOCS and names.count(names[0]) == len(names) and stamps[-1] == stamp_after(
            Stamp(stamps[0]), n - 1):
        bases: str | list[str] = epochs[0] if epochs.count(epochs[0]) == len(epochs) else epochs
        record = set_columns_record(collection, list(names[0]), keys, Stamp(stamps[0]), bases, values)
        return msgpack.packb(record, use_bin_type=True), 1
    empty: list[Any] = []
    if set(map(len, names)) == {1}:
        wires = [["S", collection, k, st, e, list(ns), empty, v, False]
                 for k, st, e, ns, v in zip(keys, stamps, epochs, names, values)]
    else:
        wires = []
        i = 0
        for k, e, ns in zip(keys, epochs, names):
            for name in ns:
                wires.append(["S", collection, k, stamps[i], e, [name], [], values[i], False])
                i += 1
    return array_items(msgpack.packb(wires, use_bin_type=True)), n


def packed_creates(collection: str, built: list[tuple[dict[str, Plain], list[str] | None]], keys: list[Plain],
                   stamps: Sequence[str]) -> tuple[bytes, int]:
    """The ``CreateDoc`` operations of documents created in bulk (``built``: each one's plain
    fields, ``_id`` among them, and the fields filled in from defaults or None; ``keys``: their
    keys; ``stamps``: theirs, one :meth:`~tidesync.core.clock.HybridClock.now_many`) packed
    for the log (msgpack items without an array header, see :class:`BulkCreates`) and how
    many items: one columns record (:func:`~tidesync.core.operations.create_columns_record`)
    for :data:`COLUMNS_MIN_DOCS` documents or more whose fields are the same names in the
    same order, else each operation's wire form (``op_to_wire``'s)."""
    n = len(built)
    if n >= COLUMNS_MIN_DOCS and stamps[-1] == stamp_after(Stamp(stamps[0]), n - 1):
        plains = list(map(itemgetter(0), built))
        shapes = list(map(tuple, map(dict.keys, plains)))
        if shapes.count(shapes[0]) == n:
            dflts = list(map(itemgetter(1), built))
            defaults = None if dflts.count(None) == n else [d or [] for d in dflts]
            record = create_columns_record(collection, list(shapes[0]), Stamp(stamps[0]),
                                           list(chain.from_iterable(map(dict.values, plains))), defaults)
            return msgpack.packb(record, use_bin_type=True), 1
    wire = [["C", collection, key, stamp, "", plain, {}, dflt or []]
            for key, (plain, dflt), stamp in zip(keys, built, stamps)]
    return array_items(msgpack.packb(wire, use_bin_type=True)), n


def pack_transaction(wire: dict[str, Any], bulk: list[BulkCreates]) -> bytes:
    """``msgpack.packb(wire)`` where ``wire["ops"]`` lacks the operations of ``bulk``: the same
    bytes as packing the map with them in their places (an array is its header followed by
    its items, each packed on its own; a columns record is one item standing for many)."""
    packb = msgpack.packb
    ops = wire["ops"]
    parts: list[bytes] = []
    prev = 0
    for b in bulk:
        if b.at > prev:
            parts.append(array_items(packb(ops[prev:b.at], use_bin_type=True)))
        parts.extend(b.packed)
        if b.wires:
            parts.append(array_items(packb(b.wires, use_bin_type=True)))
        prev = b.at
    if prev < len(ops):
        parts.append(array_items(packb(ops[prev:], use_bin_type=True)))
    total = len(ops) + sum(b.count if b.items is None else b.items for b in bulk)
    assert len(wire) < 16
    out = [bytes((0x80 | len(wire),))]
    for k, v in wire.items():
        out.append(packb(k, use_bin_type=True))
        if k == "ops":
            out.append(_array_header(total))
            out.extend(parts)
        else:
            out.append(packb(v, use_bin_type=True))
    return b"".join(out)


_NON_REGISTER = frozenset({"list", "set", "dict", "counter", "object"})


def container_kinds(schema: Schema, obj: ObjectSchema, plain: dict[str, Plain], prefix: str = "") -> dict[str, str]:
    """The ``kinds`` map of a CreateDoc: dotted path -> container kind, for non-register fields."""
    kinds: dict[str, str] = {}
    for name, f in obj.fields.items():
        k = f.type.kind
        path = f"{prefix}{name}"
        if k in ("list", "set", "dict", "counter"):
            if name in plain and plain[name] is not None:
                kinds[path] = k
        elif k == "object":
            sub = plain.get(name)
            if isinstance(sub, dict):
                kinds[path] = "object"
                target = schema.get(f.type.target or "")
                if target is not None:
                    kinds.update(container_kinds(schema, target, sub, path + "."))
    return kinds


class WriteTransaction:
    """The changes of one ``with db.write():`` block, before they commit."""

    def __init__(self, clock: HybridClock, schema: Schema, loader: Any, policies: merge.Policies | None,
                 bulk_loader: Any = None, old_json: Any = None) -> None:
        self.clock = clock
        self.schema = schema
        self._loader = loader  # callable(collection, key_plain, ref) -> LoadedDoc
        # callable(collection, [(key_plain, ref)]) -> {ref: LoadedDoc} of the documents the file holds
        self._bulk_loader = bulk_loader
        # callable(body, field) -> the field's value in the body as JSON text (None: absent)
        self._old_json = old_json
        self.policies = policies
        self.docs: dict[Ref, LoadedDoc] = {}
        # Documents changed by the update fast path only (never also in ``docs``): see ``pending``.
        self._pending: dict[Ref, PendingDoc] = {}
        # The fast path's assignments not stamped yet: see ``unstamped``.
        self._unstamped: list[Any] = []  # flat: document, field, value, document, ...
        #: The assignment loop recorded as columns (one field of one collection, each document
        #: once, nothing else in between): document ref -> plain key, in assignment order, and
        #: flat (read-ahead row ``(pk, meta, body, at)``: see :func:`row_facts`, plain value) per
        #: assignment. What ``pending`` and ``unstamped`` would hold for them; reading either turns
        #: the loop into them first (:meth:`_unloop`).
        self.loop_keys: dict[Ref, Plain] = {}
        self.loop_buf: list[Any] = []
        self.loop_collection = ""
        self.loop_name = ""
        self.loop_ahead: list[Any] | None = None  # read_ahead[(loop_collection, loop_name)]
        #: The schema of the loop's objects, and the type its values have as they are (None:
        #: none), for ObjectBinding.set_field's loop path.
        self.loop_schema: Any = None
        self.loop_type: type | None = None
        #: The latest write key among the loop's documents whose meta is not a create's compact one.
        self.loop_max = ""
        #: The latest stamp among the current write keys of the fields in ``unstamped``.
        self.unstamped_max = ""
        #: The wire form of the fast path's operations, made with them: index in ops -> list.
        self.op_wire: dict[int, list[Any]] = {}
        self._popped: dict[Ref, PendingDoc] = {}  # pending documents loaded inside savepoint()
        #: The update fast path's rows read ahead: (collection, field) -> [{pk: row}, batch size, used].
        self.read_ahead: dict[tuple[str, str], list[Any]] = {}
        self.ops: list[Op] = []
        self.conflicts: list[merge.Conflict] = []
        self._touched: dict[Ref, tuple[str, Plain]] = {}
        # Uniform bulk updates' documents not entered in ``_touched`` yet, in order: (collection,
        # refs, keys) of each. Held only while ``_touched`` is empty (nothing else touched a
        # document); reading ``touched`` enters them, see touches().
        self._touched_columns: list[tuple[str, list[Ref], list[Plain]]] = []
        self._flat: dict[int, tuple[ObjectSchema, bool]] = {}  # id(schema) -> (schema, no containers)
        # Inside savepoint(): the documents loaded since it began, and a copy of every other
        # document's state taken before the savepoint first changed it.
        self._journal: dict[int, tuple[LoadedDoc, merge.DocState, dict[str, Plain], bool, bool, bool]] | None = None
        self._new_refs: set[Ref] = set()
        # Inside savepoint(): what each pending document changed there was before (None: it
        # entered ``pending`` there), see keep_pending.
        self._pending_saved: dict[Ref, tuple[PendingDoc, dict[str, Plain], dict[str, str],
                                             dict[str, str | None]] | None] | None = None
        #: Documents created by ``db.create_many`` in bulk (see :class:`BulkCreates`), in order.
        self.bulk: list[BulkCreates] = []
        self.bulk_refs: set[Ref] = set()
        #: The log seq the bulk rows were written with (the commit's entry must get it).
        self.bulk_seq = 0
        #: Uniform bulk updates kept as columns (see :class:`ColumnUpdate`), in order, and the
        #: refs of their documents not yet turned into pending documents.
        self.columns: list[ColumnUpdate] = []
        self.column_refs: set[Ref] = set()
        self._reordered = False

    @property
    def pending(self) -> dict[Ref, PendingDoc]:
        """Documents changed by the update fast path only (never also in ``docs``)."""
        if self.loop_keys:
            self._unloop()
        return self._pending

    @pending.setter
    def pending(self, value: dict[Ref, PendingDoc]) -> None:
        if self.loop_keys:
            self._unloop()
        self._pending = value

    @property
    def unstamped(self) -> list[Any]:
        """The fast path's assignments not stamped yet, in order: (document, field, plain
        value), flat. :meth:`stamp_pending` turns them into operations before anything else
        reads or extends ``ops`` (every other change, a flush, a savepoint, the commit)."""
        if self.loop_keys:
            self._unloop()
        return self._unstamped

    @unstamped.setter
    def unstamped(self, value: list[Any]) -> None:
        if self.loop_keys:
            self._unloop()
        self._unstamped = value

    def loop_columns(self) -> tuple[str, str, list[Ref], list[Plain], list[tuple[Any, ...]], list[Plain]] | None:
        """The assignment loop as columns (collection, field, refs, keys, read-ahead rows,
        values), taken out of the transaction, when it is all the fast path holds; else None."""
        if not self.loop_keys or self._pending or self._unstamped:
            return None
        keys, buf = self.loop_keys, self.loop_buf
        self.loop_keys, self.loop_buf = {}, []
        if self.loop_max > self.unstamped_max:
            self.unstamped_max = self.loop_max
        self.loop_max = ""
        return self.loop_collection, self.loop_name, list(keys), list(keys.values()), buf[0::2], buf[1::2]

    def _unloop(self) -> None:
        """Turn the assignment loop into the pending documents and unstamped assignments the
        fast path made before it was recorded as columns (the same objects, in the same order)."""
        keys, buf = self.loop_keys, self.loop_buf
        self.loop_keys, self.loop_buf = {}, []
        collection, name = self.loop_collection, self.loop_name
        pending, out = self._pending, self._unstamped
        top = self.loop_max
        self.loop_max = ""
        it = iter(buf)
        old_json = self._old_json
        for (ref, key), row, plain in zip(keys.items(), it, it):
            _, meta, body, at = row
            epoch, _, rowid = row_facts(at)
            p = pending[ref] = PendingDoc(collection, key, ref, epoch, meta, rowid, {name: old_json(body, name)}, {}, {})
            out += (p, name, plain)
            if len(meta) == 42 and meta[:6] == '{"*":"' and meta[6:40] > top:
                top = meta[6:40]
        if top > self.unstamped_max:
            self.unstamped_max = top

    @property
    def touched(self) -> dict[Ref, tuple[str, Plain]]:
        """The documents the operations change, in first-change order (the descriptor's
        touches): ref -> (collection, key)."""
        if self._touched_columns:
            touched = self._touched
            for collection, refs, keys in self._touched_columns:
                touched.update(zip(refs, zip(repeat(collection), keys)))
            self._touched_columns = []
        return self._touched

    @touched.setter
    def touched(self, value: dict[Ref, tuple[str, Plain]]) -> None:
        # Only a savepoint's rollback sets it: the savepoint entered every held bulk update
        # when it began (it read ``touched``), so those held now came after and are undone.
        self._touched, self._touched_columns = value, []

    def touch_columns(self, collection: str, refs: list[Ref], keys: list[Plain]) -> None:
        """Record that a uniform bulk update (just added with :meth:`add_columns`) touches the
        documents ``refs`` (plain keys ``keys``), none of them touched before in this
        transaction. Without other touches, they are held as columns until read."""
        if self._touched:
            self._touched.update(zip(refs, zip(repeat(collection), keys)))
        else:
            self._touched_columns.append((collection, refs, keys))

    def touches(self) -> tuple[tuple[str, Plain], ...]:
        """The descriptor's touches: ``touched``'s (collection, key) pairs in order. Only bulk
        updates kept as columns, each document in one of them (none expanded, their refs all
        distinct): the pairs made from the columns, without entering them in ``touched``."""
        held = self._touched_columns
        if held and not self._touched and len(held) == len(self.columns) and not any(
                c.expanded for c in self.columns) and len(self.column_refs) == sum(len(h[1]) for h in held):
            out: list[tuple[str, Plain]] = []
            for collection, _, keys in held:
                out.extend(zip(repeat(collection), keys))
            return tuple(out)
        return tuple(self.touched.values())

    @property
    def has_ops(self) -> bool:
        """True when the transaction changed anything (it then commits a log entry)."""
        return bool(self.ops or self.bulk)

    @property
    def first_stamp(self) -> str:
        """The stamp of the transaction's first operation (its id)."""
        if self.bulk and self.bulk[0].at == 0:
            return self.bulk[0].first
        return self.ops[0].stamp

    @property
    def op_count(self) -> int:
        return len(self.ops) + sum(b.count for b in self.bulk)

    def add_bulk(self, b: BulkCreates, keys: list[Plain], collection: str) -> None:
        """Record documents created in bulk (``keys``: their plain keys, as ``b.refs``)."""
        b.at = len(self.ops)
        self.bulk.append(b)
        if b.refs:  # none for a bulk update's set-columns record: touch_columns records those
            self.bulk_refs.update(b.refs)
            self.touched.update(zip(b.refs, zip(repeat(collection), keys)))

    def add_created(self, ref: Ref, key: Plain, collection: str, stamp: str, wire: list[Any]) -> None:
        """Record one document created as in bulk (``db.create``'s lean path); ``wire``: its
        ``CreateDoc`` wire form, packed at commit (it must not change until then)."""
        bulk = self.bulk
        if bulk and bulk[-1].at == len(self.ops) and bulk[-1].items is None and self._journal is None:
            b = bulk[-1]  # nothing else happened since: the same run of creates (not a columns record)
            b.count += 1
            b.wires.append(wire)
            b.refs.append(ref)
        else:
            bulk.append(BulkCreates(len(self.ops), 1, stamp, [], [ref], [wire]))
        self.bulk_refs.add(ref)
        (self.touched if self._touched_columns else self._touched)[ref] = (collection, key)  # no property call

    def add_columns(self, c: ColumnUpdate) -> None:
        """Record a uniform bulk update kept as columns (its rows are written already)."""
        self.columns.append(c)
        self.column_refs.update(c.refs)

    def expand_columns(self) -> None:
        """Turn every :class:`ColumnUpdate` into its pending documents (before anything else
        reads or changes one of its documents: the rest of the writer knows only those)."""
        if not self.column_refs:
            return
        pending = self.pending
        if pending:
            self._reordered = True  # pending order is no longer first-change order
        for c in self.columns:
            if not c.expanded:
                c.expanded = True
                pending.update([(p.ref, p) for p in c.pending_docs()])
        self.column_refs = set()

    def _created_here(self, d: LoadedDoc) -> LoadedDoc:
        """A document created in bulk in this transaction, loaded from its row: it did not
        exist before the transaction (no before-image)."""
        d.live_before = False
        d.before_source = None
        return d

    # -- documents -------------------------------------------------------------------------

    def doc(self, collection: str, key: Plain, ref: Ref | None = None) -> LoadedDoc:
        """The loaded document (from the file on first touch)."""
        ref = ref or (collection, canonical_json(key))
        if self.unstamped:
            self.stamp_pending()
        d = self.docs.get(ref)
        if d is None:
            if self.column_refs and ref in self.column_refs:
                self.expand_columns()
            d = self._loader(collection, key, ref)
            if self.bulk_refs and ref in self.bulk_refs:
                self._created_here(d)
            p = self.pending.pop(ref, None) if self.pending else None
            if p is not None:
                self._take_pending(d, p)
                if self._journal is not None:
                    self._popped[ref] = p
            self.docs[ref] = d
            if self._journal is not None:
                self._new_refs.add(ref)
        return d

    def _take_pending(self, d: LoadedDoc, p: PendingDoc) -> None:
        """Turn a just-loaded document with fast-path writes into a fully loaded one: the
        writes applied to its state (unless the row holds them), its before-image restored."""
        if not p.flushed:
            for name, plain in p.fields.items():
                key = p.keys[name]
                if merge.compact_key(d.state.meta, name) == key:
                    continue  # flushed earlier: the row holds this write already
                if not merge.overlay_write(d.state, name, key, plain):
                    raise AssertionError(f"fast-path write of {name!r} does not apply to {d.ref!r}")
        src = d.before_source
        body: dict[str, Plain] = json.loads(src) if isinstance(src, str) else dict(src or {})
        before: dict[str, Plain] = {}
        for name in p.fields:
            old = before[name] = p.before_value(name)
            if old is MISSING_FIELD:
                body.pop(name, None)
            else:
                body[name] = p.before_value(name)
        d.before_source = body
        d.before_fields = before
        d.dirty = True
        d.unflushed = not p.flushed

    def stamp_pending(self) -> None:
        """Stamp the fast path's assignments and append their operations, in the order they
        were made. One clock read for all: the stamps are those consecutive calls of the clock
        would give, later than every write key the assignments replace (``unstamped_max``), so
        each one wins over its field's current value, as a local write must."""
        buf = self.unstamped
        if not buf:
            return
        self.unstamped = []
        if self.unstamped_max:
            self.clock.observe(Stamp(self.unstamped_max))
            self.unstamped_max = ""
        ops = self.ops
        touched = self.touched
        wire = self.op_wire
        i = len(ops)
        it = iter(buf)
        for p, name, plain, stamp in zip(it, it, it, self.clock.now_many(len(buf) // 3)):
            p.keys[name] = "1" + stamp
            p.fields[name] = plain
            coll, key = p.collection, p.key
            ops.append(top_level_set(coll, key, stamp, p.epoch, name, plain))
            wire[i] = ["S", coll, key, stamp, p.epoch, [name], [], plain, False]  # op_to_wire's form
            i += 1
            ref = p.ref
            if ref not in touched:
                touched[ref] = (p.collection, p.key)

    def prefetch(self, collection: str, keys: Iterable[tuple[Plain, Ref]]) -> set[Ref]:
        """Load the documents of ``keys`` not loaded yet, with one query per chunk instead of
        one per document; return the refs of those the file does not hold (not loaded: pass
        them to :meth:`create_new`, or :meth:`doc` loads them as new)."""
        if self.column_refs:
            keys = list(keys)
            if any(ref in self.column_refs for _, ref in keys):
                self.expand_columns()
        if self.pending:
            keys = list(keys)
            for k, ref in keys:
                if ref in self.pending:
                    self.doc(collection, k, ref)
        missing = [(k, ref) for k, ref in keys if ref not in self.docs]
        if not missing:
            return set()
        if self._bulk_loader is None:
            for key, ref in missing:
                self.doc(collection, key, ref)
            return set()
        found: dict[Ref, LoadedDoc] = self._bulk_loader(collection, missing)
        docs = self.docs
        new = self._new_refs if self._journal is not None else None
        absent: set[Ref] = set()
        for key, ref in missing:
            d = found.get(ref)
            if d is None:
                absent.add(ref)
            elif ref not in docs:
                if ref in self.bulk_refs:
                    self._created_here(d)
                docs[ref] = d
                if new is not None:
                    new.add(ref)
        return absent

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo everything the block did to this transaction if it raises (nested: the outer
        savepoint does). The caller pairs it with a SQLite savepoint for what was flushed."""
        if self._journal is not None:
            yield
            return
        self.stamp_pending()
        n_ops, n_conflicts, n_touched = len(self.ops), len(self.conflicts), len(self.touched)
        n_bulk, n_columns = len(self.bulk), len(self.columns)
        self._journal, self._new_refs, self._popped, self._pending_saved = {}, set(), {}, {}
        try:
            yield
        except BaseException:
            for b in self.bulk[n_bulk:]:
                self.bulk_refs.difference_update(b.refs)
            del self.bulk[n_bulk:]
            self.pending.update(self._popped)
            for ref, saved in self._pending_saved.items():
                if saved is None:
                    self.pending.pop(ref, None)
                else:
                    doc, fields, keys, before = saved
                    doc.fields, doc.keys, doc.before_json = fields, keys, before
            if len(self.columns) > n_columns:  # their rows were rolled back with the savepoint
                for c in self.columns[n_columns:]:
                    if c.expanded:
                        for ref in c.refs:
                            self.pending.pop(ref, None)
                del self.columns[n_columns:]
                self.column_refs = {ref for c in self.columns if not c.expanded for ref in c.refs}
            self.unstamped = []
            del self.ops[n_ops:]
            for i in [i for i in self.op_wire if i >= n_ops]:
                del self.op_wire[i]
            del self.conflicts[n_conflicts:]
            self.touched = dict(islice(self.touched.items(), n_touched))
            for ref in self._new_refs:
                self.docs.pop(ref, None)
            for d, state, before, dirty, unflushed, deleted in self._journal.values():
                d.state, d.before_fields, d.dirty, d.unflushed, d.deleted_here = state, before, dirty, unflushed, deleted
            for d in self.docs.values():
                if d.dirty:  # what was flushed inside the savepoint was rolled back with it
                    d.unflushed = True
            for p in self.pending.values():
                p.flushed = False
            raise
        finally:
            self._journal, self._new_refs, self._popped, self._pending_saved = None, set(), {}, None

    def keep_pending(self, ref: Ref, p: PendingDoc | None) -> None:
        """Inside a savepoint: note what pending document ``p`` (None: ``ref`` not pending yet)
        was before a bulk update changes it there, for a rollback to restore."""
        saved = self._pending_saved
        if saved is not None and ref not in saved:
            saved[ref] = None if p is None else (p, dict(p.fields), dict(p.keys), dict(p.before_json))

    def _keep(self, d: LoadedDoc) -> None:
        """Inside a savepoint: copy a document's state before its first change there."""
        journal = self._journal
        if journal is not None and id(d) not in journal and d.ref not in self._new_refs:
            journal[id(d)] = (d, d.state.copy(), dict(d.before_fields), d.dirty, d.unflushed, d.deleted_here)

    def _apply(self, d: LoadedDoc, op: Op) -> None:
        if self.unstamped:
            self.stamp_pending()
        if self._journal is not None:
            self._keep(d)
        d.state, conflicts = merge.integrate(d.state, op, self.policies)
        d.dirty = d.unflushed = True
        if conflicts:
            self.conflicts.extend(conflicts)
        self.ops.append(op)
        if d.ref not in self.touched:
            self.touched[d.ref] = (d.collection, d.key)

    def _remember_before(self, d: LoadedDoc, name: str) -> None:
        if self._journal is not None:
            self._keep(d)
        if d.live_before and name not in d.before_fields and not d.deleted_here and d.before_source is not None:
            # Every change to a top-level field passes here before it applies, so until then the
            # state still holds the field as loaded (copied: merges change containers in place).
            # After a delete, before_images() takes the whole body_before instead.
            value = d.state.body.get(name, MISSING_FIELD)
            d.before_fields[name] = value if value is MISSING_FIELD else clone(value)

    # -- whole documents -------------------------------------------------------------------

    def create(self, obj: ObjectSchema, key: Plain, plain: dict[str, Plain], defaults: Iterable[str],
               ref: Ref | None = None) -> LoadedDoc:
        """Create a document from the plain values of all its fields (``ref``: its ref, if known)."""
        d = self.doc(obj.name, key, ref)
        stamp = self.clock.now()
        flat = self._flat.get(id(obj))
        if flat is None:  # the schema has no container or embedded field: kinds is always empty
            flat = self._flat[id(obj)] = (obj, not any(f.type.kind in _NON_REGISTER for f in obj.fields.values()))
        kinds = {} if flat[1] else container_kinds(self.schema, obj, plain)
        op = CreateDoc(obj.name, key, stamp, d.state.epoch, plain, kinds, tuple(defaults))
        self._apply(d, op)
        return d

    def create_new(self, obj: ObjectSchema, key: Plain, plain: dict[str, Plain], defaults: Iterable[str],
                   ref: Ref) -> None:
        """:meth:`create` of a document that neither the file (see :meth:`prefetch`) nor this
        transaction holds: the same operation and state, without loading it first."""
        if ref in self.docs:
            self.create(obj, key, plain, defaults, ref)
            return
        if self.unstamped:
            self.stamp_pending()
        stamp = self.clock.now()
        flat = self._flat.get(id(obj))
        if flat is None:
            flat = self._flat[id(obj)] = (obj, not any(f.type.kind in _NON_REGISTER for f in obj.fields.values()))
        kinds = {} if flat[1] else container_kinds(self.schema, obj, plain)
        op = CreateDoc(obj.name, key, stamp, ZERO, plain, kinds, tuple(defaults))
        state, conflicts = merge.integrate(None, op, self.policies)
        self.docs[ref] = LoadedDoc(obj.name, key, ref, state, False, False, None, dirty=True, unflushed=True)
        if self._journal is not None:
            self._new_refs.add(ref)
        if conflicts:
            self.conflicts.extend(conflicts)
        self.ops.append(op)
        self.touched[ref] = (obj.name, key)

    def delete(self, d: LoadedDoc) -> None:
        """Delete a document (a tombstone remains)."""
        if self._journal is not None:
            self._keep(d)
        if d.live_before and d.before_source is not None:
            d.deleted_here = True
        self._apply(d, DeleteDoc(d.collection, d.key, self.clock.now(), d.state.epoch))

    # -- fields ----------------------------------------------------------------------------

    def assign(self, d: LoadedDoc, path: tuple[str, ...], ftype: FieldType, value: Any) -> None:
        """Assign a (coerced) Python value to the field at ``path``."""
        self._remember_before(d, path[0])
        self._assign_plain(d, path, ftype, value_to_plain(ftype, value))

    def assign_plain(self, d: LoadedDoc, path: tuple[str, ...], ftype: FieldType | None, plain: Plain) -> None:
        """Assign a value given in plain form; ``ftype`` None: a register (a field no model declares).

        A container value becomes a new container (a new epoch: concurrent additions to the
        old one are discarded) followed by its contents, one operation each."""
        self._remember_before(d, path[0])
        self._assign_plain(d, path, ftype, plain)

    def _assign_plain(self, d: LoadedDoc, path: tuple[str, ...], ftype: FieldType | None, plain: Plain) -> None:
        coll, key = d.collection, d.key
        parents = merge.epochs(d.state, path[:-1])
        kind = ftype.kind if ftype is not None else "mixed"
        if plain is None or kind not in ("object", "list", "set", "dict", "counter"):
            self._apply(d, SetValue(coll, key, self.clock.now(), d.state.epoch, path, parents, plain))
            return
        stamp = self.clock.now()
        self._apply(d, SetContainer(coll, key, stamp, d.state.epoch, path, parents, kind, stamp,  # type: ignore[arg-type]
                                    plain if kind == "counter" else None))
        assert ftype is not None
        if kind == "object" and isinstance(plain, dict):
            target = self.schema.get(ftype.target or "")
            for name, sub in plain.items():
                f = target.fields.get(name) if target is not None else None
                self._assign_plain(d, path + (name,), f.type if f is not None else None, sub)
        elif kind == "list" and isinstance(plain, list):
            after: str | None = None
            for v in plain:
                s = self.clock.now()
                elem = merge.new_element_id(s)
                self._apply(d, ListInsert(coll, key, s, d.state.epoch, path, merge.epochs(d.state, path), elem, after, v))
                after = elem
        elif kind == "set" and isinstance(plain, list):
            for v in plain:
                self._apply(d, SetAdd(coll, key, self.clock.now(), d.state.epoch, path, merge.epochs(d.state, path), v))
        elif kind == "dict" and isinstance(plain, dict):
            for k, v in plain.items():
                self._apply(d, DictPut(coll, key, self.clock.now(), d.state.epoch, path, merge.epochs(d.state, path), k, v))

    def unset(self, d: LoadedDoc, path: tuple[str, ...]) -> None:
        """Remove a field."""
        self._remember_before(d, path[0])
        self._apply(d, Unset(d.collection, d.key, self.clock.now(), d.state.epoch, path,
                             merge.epochs(d.state, path[:-1])))

    # -- collections -----------------------------------------------------------------------

    def list_insert_after(self, d: LoadedDoc, path: tuple[str, ...], etype: FieldType, after: str | None, value: Any) -> str:
        """Insert after element id ``after`` (None: at the head); return the new element id."""
        self._remember_before(d, path[0])
        stamp = self.clock.now()
        elem = merge.new_element_id(stamp)
        self._apply(d, ListInsert(d.collection, d.key, stamp, d.state.epoch, path, merge.epochs(d.state, path),
                                  elem, after, value_to_plain(etype, value)))
        return elem

    def list_insert(self, d: LoadedDoc, path: tuple[str, ...], etype: FieldType, index: int, value: Any) -> None:
        """Insert at ``index`` of the visible list (Python ``list.insert`` semantics)."""
        ids = merge.list_positions(d.state, path)
        n = len(ids)
        if index < 0:
            index = max(0, n + index)
        index = min(index, n)
        self.list_insert_after(d, path, etype, ids[index - 1] if index > 0 else None, value)

    def list_set(self, d: LoadedDoc, path: tuple[str, ...], etype: FieldType, index: int, value: Any) -> None:
        ids = merge.list_element_ids(d.state, path)
        elem = ids[index]  # IndexError as Python's list
        self._remember_before(d, path[0])
        self._apply(d, ListSet(d.collection, d.key, self.clock.now(), d.state.epoch, path,
                               merge.epochs(d.state, path), elem, value_to_plain(etype, value)))

    def list_move(self, d: LoadedDoc, path: tuple[str, ...], index: int, after: int | None) -> None:
        """Move the element at ``index`` of the stored list to right after the element now at
        ``after`` (None: to the head). A move to where it already is writes nothing."""
        ids = merge.list_element_ids(d.state, path)
        positions = merge.list_positions(d.state, path)
        elem = ids[index]  # IndexError as Python's list
        anchor = positions[after] if after is not None else None
        if anchor == (positions[index - 1] if index > 0 else None) or anchor == positions[index]:
            return
        self._remember_before(d, path[0])
        stamp = self.clock.now()
        self._apply(d, ListMove(d.collection, d.key, stamp, d.state.epoch, path, merge.epochs(d.state, path),
                                elem, merge.new_element_id(stamp), anchor))

    def list_erase(self, d: LoadedDoc, path: tuple[str, ...], index: int) -> None:
        ids = merge.list_element_ids(d.state, path)
        elem = ids[index]
        self._remember_before(d, path[0])
        self._apply(d, ListErase(d.collection, d.key, self.clock.now(), d.state.epoch, path,
                                 merge.epochs(d.state, path), elem))

    def clear(self, d: LoadedDoc, path: tuple[str, ...], kind: str) -> None:
        """Empty a list, set or dict (a new epoch: concurrent additions are discarded)."""
        self._remember_before(d, path[0])
        stamp = self.clock.now()
        self._apply(d, SetContainer(d.collection, d.key, stamp, d.state.epoch, path,
                                    merge.epochs(d.state, path[:-1]), kind, stamp))  # type: ignore[arg-type]

    def set_add(self, d: LoadedDoc, path: tuple[str, ...], etype: FieldType, value: Any) -> None:
        self._remember_before(d, path[0])
        self._apply(d, SetAdd(d.collection, d.key, self.clock.now(), d.state.epoch, path,
                              merge.epochs(d.state, path), value_to_plain(etype, value)))

    def set_remove(self, d: LoadedDoc, path: tuple[str, ...], etype: FieldType, value: Any) -> None:
        self._remember_before(d, path[0])
        self._apply(d, SetRemove(d.collection, d.key, self.clock.now(), d.state.epoch, path,
                                 merge.epochs(d.state, path), value_to_plain(etype, value)))

    def dict_put(self, d: LoadedDoc, path: tuple[str, ...], etype: FieldType, key: str, value: Any) -> None:
        self._remember_before(d, path[0])
        self._apply(d, DictPut(d.collection, d.key, self.clock.now(), d.state.epoch, path,
                               merge.epochs(d.state, path), key, value_to_plain(etype, value)))

    def dict_del(self, d: LoadedDoc, path: tuple[str, ...], key: str) -> None:
        self._remember_before(d, path[0])
        self._apply(d, DictDel(d.collection, d.key, self.clock.now(), d.state.epoch, path,
                               merge.epochs(d.state, path), key))

    def counter_add(self, d: LoadedDoc, path: tuple[str, ...], amount: int) -> None:
        self._remember_before(d, path[0])
        self._apply(d, CounterAdd(d.collection, d.key, self.clock.now(), d.state.epoch, path,
                                  merge.epochs(d.state, path[:-1]), amount))

    # -- results ---------------------------------------------------------------------------

    def before_wires(self) -> list[list[Any]]:
        """:meth:`before_images` in wire form; straight from the columns when the write
        changed nothing but uniform bulk updates (their documents' first-change order is theirs)."""
        self.stamp_pending()
        columns = self.columns
        if columns and self.column_refs and not self.docs and not self.pending and not any(
                c.expanded for c in columns):
            out: list[list[Any]] = []
            for c in columns:
                out.extend(c.before_wires())
            return out
        return [b.to_wire() for b in self.before_images()]

    def before_images(self) -> list[BeforeImage]:
        """What the touched documents were before (only documents that existed)."""
        self.stamp_pending()
        self.expand_columns()
        if self.pending:
            return self._before_images_in_touch_order()
        out: list[BeforeImage] = []
        for d in self.docs.values():
            if not d.live_before:
                continue
            if d.deleted_here and d.body_before is not None:
                out.append(BeforeImage(d.collection, d.key, dict(d.body_before), True))
            elif d.before_fields:
                out.append(BeforeImage(d.collection, d.key, dict(d.before_fields)))
        return out

    def _before_images_in_touch_order(self) -> list[BeforeImage]:
        """:meth:`before_images` with fast-path documents: in first-change order, as the
        general path gives them."""
        pending = self.pending
        # Every old value of the fast path decoded with one call of the JSON decoder.
        texts = [t for p in pending.values() for n in p.fields if (t := p.before_json[n]) is not None]
        values = iter(json.loads("[" + ",".join(texts) + "]"))
        fast: list[BeforeImage] = []
        for p in pending.values():
            if p.fields:
                before = p.before_json
                fast.append(BeforeImage(p.collection, p.key, {
                    n: MISSING_FIELD if before[n] is None else next(values) for n in p.fields}))
        if not self.docs and not self._reordered:
            # Only fast-path documents: each entered ``pending`` at its first assignment, and
            # ``touched`` when that assignment was stamped, in the same order.
            return fast
        self.pending = {}
        try:
            images = self.before_images()
        finally:
            self.pending = pending
        by_ref: dict[Ref, BeforeImage] = {}
        for img in images:
            by_ref[(img.collection, canonical_json(img.key))] = img
        for p, img in zip([p for p in pending.values() if p.fields], fast):
            by_ref[p.ref] = img
        out = [by_ref.pop(ref) for ref in self.touched if ref in by_ref]
        out.extend(by_ref.values())
        return out

