"""The server's authority over one sync session: rules and schemas on upload, filters on download.

:class:`Enforcer` sits between the replicator's ``Integrate`` and storage (upload), and
:class:`SessionReplica` between the replicator's reads and storage (download, bootstrap).
Both are per session: the user's role in each collection is chosen when the session starts.

**Upload.** Each uploaded transaction is judged per document, by its *effect*: the document
before (the server's state, plus what earlier transactions of the same batch were allowed to
do) and after (the transaction's operations for that document applied to a copy with
:func:`tidesync.core.merge.integrate`). A document is refused when its partition, the user's
role (``core.rules``) or the collection's JSON Schema forbids the change; the transaction is
integrated with the operations of the allowed documents only (same id), so other documents of
the same transaction are unaffected (Device Sync's CR-29).

For the refused documents the server writes one *compensating transaction* of its own (origin:
the server, stamped by its clock after observing the refused stamps), which resets the device
to the authoritative state, and sends ``CompensatingWrite`` (collection, key, operation, rule
code, message) for the app's error handler:

* the user may read the server's document: every top-level field the refused operations
  touched is written back to the server's value (``SetValue``, or ``SetContainer`` and its
  contents, or ``Unset``); a refused delete (or any refused change that started a new
  incarnation on the device) re-creates the document with ``CreateDoc`` whose base is the
  device's incarnation and whose body is the server's. These operations are applied on the
  server too (same values, later stamps), so every replica converges;
* the user may not read the document, or the server has none (a refused create): the
  device must end up without it, but the server must not change. The compensating
  transaction then carries, in its ``meta``, operations *for the uploading device only*
  (a ``DeleteDoc`` of the device's incarnation; an ``Unset`` of a field it may not read),
  which :class:`SessionReplica` adds when it sends that transaction to that device. The
  server never applies them, and nothing about the hidden document leaves the server.

**Download and bootstrap.** :class:`SessionReplica` wraps the backend for one session: log
entries keep only operations on documents the user may read (judged on the server's current
document; a delete on the document as it was before the delete), operations on fields it may
not read are dropped (``CreateDoc`` fields too), before-images are cut the same way, and
transactions left empty are not sent. Snapshot documents the user may not read are left out,
and unreadable fields are removed from their bodies and merge metadata.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..core import merge
from ..core.merge.create import expand
from ..core.operations import (
    CreateDoc, DeleteDoc, DictPut, ListInsert, Op, SetAdd, SetContainer, SetValue, Unset, op_from_wire, op_to_wire,
)
from ..core.rules import CollectionAccess, SessionRules, UserContext, Verdict
from ..core.stamp import ZERO, ReplicaId, Stamp
from ..core.transaction import BeforeImage, Transaction
from ..core.values import Plain, canonical_json
from ..protocol.messages import CompensatedWrite, Scope, SnapshotDoc
from ..protocol.replica import DescriptorBatch, IntegrateResult, LogBatch, SnapshotPage, SnapshotResult
from ..store.database import Preloaded, StaleReadError, _gc_paused
from .schemas import validate

if TYPE_CHECKING:
    from ..store.database import Database
    from .app import ServerState

__all__ = ["Enforcer", "SessionReplica", "user_context", "query_compiler", "strip_meta_fields",
           "compensation_ops", "readable_conflicts"]

log = logging.getLogger("tidesync.server.rules")

Ref = tuple[str, str]
_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(backend: Any) -> threading.Lock:
    """One lock per backend: a check and the integration it allows are not interleaved with
    another session's."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(backend)
        if lock is None:
            lock = _LOCKS[backend] = threading.Lock()
        return lock


#: An upload batch of at least this many operations leaves the WAL checkpoint of its commit
#: to a background thread (``Database.deferred_checkpoint``): its ``Ack`` does not wait for the
#: copy of the WAL into the file. Smaller ones (a few documents, propagation) commit as usual.
DEFER_CHECKPOINT_OPS = 1000
#: ... and of at least this many, what lives on when its integration ends is promoted past the
#: young collections (``_gc_paused(promote=True)``): the next batch, decoded meanwhile, and
#: what the event loop made during the pause (a flexible server's 500-transaction batches).
PROMOTE_OPS = 100


def _is_large(txns: Sequence[Transaction], at_least: int | None = None) -> bool:
    """Whether the batch holds at least ``at_least`` (default :data:`DEFER_CHECKPOINT_OPS`)
    operations."""
    limit = DEFER_CHECKPOINT_OPS if at_least is None else at_least
    ops = 0
    for txn in txns:
        ops += len(txn.ops)
        if ops >= limit:
            return True
    return False


def _checkpoint_later(backend: Any, txns: Sequence[Transaction]) -> AbstractContextManager[Any]:
    """``backend.deferred_checkpoint()`` for a large batch, else a no-op context."""
    defer = getattr(backend, "deferred_checkpoint", None)
    if defer is None or not _is_large(txns):
        return nullcontext()
    return defer()  # type: ignore[no-any-return]


def query_compiler(doc: Any) -> Any:
    """The filter compiler the rules use: a MongoDB filter -> a predicate over plain bodies."""
    from ..query import parse_query, to_predicate

    return to_predicate(parse_query(doc))


def user_context(user: Any, custom_data: Any = None) -> UserContext:
    """The ``%%user`` of an authenticated user: id, data (its profile), and custom data
    (``custom_data``, as ``[auth.custom_data]`` finds it when the session starts)."""
    data = dict(getattr(user, "data", None) or {})
    custom = custom_data
    if custom is None:
        custom = getattr(user, "custom_data", None) or data.get("custom_data")
    return UserContext(str(user.id), data, dict(custom) if isinstance(custom, dict) else {})


def _ref(collection: str, key: Plain) -> Ref:
    return (collection, canonical_json(key))


def readable_conflicts(state: ServerState, user: Any, conflicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conflict records (``Database.conflicts``) that ``user`` may read under the config's
    rules, as sync would show it their documents: a live document it may read (its
    collection's read rule, and its partition's when partitions have rules) and a field it
    may read; a deleted one where its role reads every document and partitions have no rules.
    Judged on each document's current state. Blocking: call it from a worker thread."""
    config_rules = state.config.rules
    if config_rules is None or (config_rules.unrestricted and config_rules.partitions is None):
        return conflicts
    finder = getattr(state, "custom_data", None)   # [auth.custom_data]
    custom = finder.for_user(user.id) if finder is not None else None
    rules = config_rules.for_user(user_context(user, custom), query_compiler)
    pkey = state.config.partition_key
    shown: dict[Ref, bool] = {}
    out: list[dict[str, Any]] = []
    for c in conflicts:
        collection, key, path = c["collection"], c["key"], c["path"]
        access = rules.collection(collection)
        ref = _ref(collection, key)
        ok = shown.get(ref)
        if ok is None:
            doc = state.backend.document_state(collection, key)
            if doc.live:
                ok = access.can_read(doc.body) and rules.can_read_partition(doc.body.get(pkey))
            else:
                ok = access.read_all and config_rules.partitions is None
            shown[ref] = ok
        if ok and (not path or access.field_readable(path.split(".", 1)[0])):
            out.append(c)
    return out


@dataclass(slots=True)
class Refusal:
    """One document of one transaction that the server refused."""

    txn_id: Stamp
    collection: str
    key: Plain
    verdict: Verdict
    ops: list[Op] = field(default_factory=list)


# ----------------------------------------------------------------------------- compensation


class _Stamps:
    def __init__(self, stamps: list[Stamp]) -> None:
        self._stamps = stamps
        self._i = 0

    def next(self) -> Stamp:
        stamp = self._stamps[self._i]
        self._i += 1
        return stamp


def _count_restore(value: Any) -> int:
    """How many stamps restoring ``value`` can take (an upper bound)."""
    if isinstance(value, dict):
        return 1 + sum(_count_restore(v) for v in value.values())
    if isinstance(value, list):
        return 1 + len(value)
    return 1


def _restore(state: merge.DocState, path: tuple[str, ...], epochs: tuple[Stamp, ...], value: Plain,
             stamps: _Stamps, out: list[Op], collection: str, key: Plain) -> None:
    """Operations that make the field at ``path`` show ``value`` as ``state`` shows it."""
    base = state.epoch
    kind = merge.container_kind(state, path) if value is not None else None
    if kind is None:
        out.append(SetValue(collection, key, stamps.next(), base, path, epochs, value))
        return
    s = stamps.next()
    if kind == "counter":
        out.append(SetContainer(collection, key, s, base, path, epochs, "counter", s, value))
        return
    out.append(SetContainer(collection, key, s, base, path, epochs, kind, s))  # type: ignore[arg-type]
    inner = (*epochs, s)
    if kind == "list" and isinstance(value, list):
        after: str | None = None
        for v in value:
            st = stamps.next()
            elem = merge.new_element_id(st)
            out.append(ListInsert(collection, key, st, base, path, inner, elem, after, v))
            after = elem
    elif kind == "set" and isinstance(value, list):
        for v in value:
            out.append(SetAdd(collection, key, stamps.next(), base, path, inner, v))
    elif kind == "dict" and isinstance(value, dict):
        for k, v in value.items():
            out.append(DictPut(collection, key, stamps.next(), base, path, inner, k, v))
    elif kind == "object" and isinstance(value, dict):
        for name, sub in value.items():
            _restore(state, (*path, name), inner, sub, stamps, out, collection, key)


def _create_kinds(state: merge.DocState, body: dict[str, Plain], prefix: tuple[str, ...] = ()) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for name, value in body.items():
        if not prefix and name == "_id":
            continue
        path = (*prefix, name)
        kind = merge.container_kind(state, path) if value is not None else None
        if kind is not None:
            kinds[".".join(path)] = kind
            if kind == "object" and isinstance(value, dict):
                kinds.update(_create_kinds(state, value, path))
    return kinds


def _device_epoch(ops: Sequence[Op]) -> Stamp:
    """The incarnation the device is at after its operations on one document."""
    epoch = ZERO
    for op in ops:
        epoch = max(epoch, op.base)
        if isinstance(op, DeleteDoc):
            epoch = max(epoch, op.stamp)
    return Stamp(epoch)


def _touched_fields(ops: Sequence[Op]) -> list[str]:
    seen: dict[str, None] = {}
    for op in ops:
        if isinstance(op, CreateDoc):
            for name in op.fields:
                seen[name] = None
        elif not isinstance(op, DeleteDoc):
            seen[op.path[0]] = None
    seen.pop("_id", None)
    return list(seen)


def compensation_ops(state: merge.DocState, refused: Sequence[Op], readable: bool,
                     field_readable: Any, stamps: _Stamps) -> tuple[list[Op], list[Op]]:
    """The operations that reset a device which applied ``refused`` to the authoritative ``state``.

    Args:
        state: the server's state of the document (after the batch).
        refused: the device's operations on it that were refused.
        readable: whether the user may read the server's document.
        field_readable: ``name -> bool``.
        stamps: fresh server stamps, later than every refused one.

    Returns:
        (operations for every replica, operations for the uploading device only).
    """
    coll, key = refused[0].collection, refused[0].key
    device_epoch = _device_epoch(refused)
    device_live = not isinstance(refused[-1], DeleteDoc)
    if not readable or not state.live:
        if not device_live:
            return [], []
        return [], [DeleteDoc(coll, key, stamps.next(), device_epoch)]
    if device_epoch > state.epoch:
        body = json.loads(json.dumps(state.body))
        return [CreateDoc(coll, key, stamps.next(), device_epoch, body, _create_kinds(state, state.body))], []
    shared: list[Op] = []
    mine: list[Op] = []
    for name in _touched_fields(refused):
        if not field_readable(name):
            mine.append(Unset(coll, key, stamps.next(), state.epoch, (name,), ()))
        elif name not in state.body:
            shared.append(Unset(coll, key, stamps.next(), state.epoch, (name,), ()))
        else:
            _restore(state, (name,), (), state.body[name], stamps, shared, coll, key)
    return shared, mine


def _all_fields(_name: str) -> bool:
    return True


def _stamps_needed(state: merge.DocState, refused: Sequence[Op]) -> int:
    return 2 + len(_touched_fields(refused)) + sum(_count_restore(v) for v in state.body.values())


# ----------------------------------------------------------------------------- upload


def _without(t: Transaction, bad: set[Ref], deleted: dict[Ref, BeforeImage] | None = None) -> Transaction | None:
    """``t`` without the operations (and before-images) of the documents in ``bad``; the
    same id. None when nothing is left.

    ``deleted`` replaces the device's before-images of deleted documents with the server's
    (readers are chosen by them: a device must not be able to hide a delete from them)."""
    if not bad and not deleted:
        return t
    ops = tuple(op for op in t.ops if _ref(op.collection, op.key) not in bad)
    if not ops:
        return None
    before = [b for b in t.before if _ref(b.collection, b.key) not in bad]
    if deleted:
        before = [b for b in before if _ref(b.collection, b.key) not in deleted] + list(deleted.values())
    return Transaction(t.id, t.origin, t.stamp, t.parents, ops, tuple(before), t.user, t.meta)


class Enforcer:
    """Judges one session's uploads and integrates what it allows (see the module docstring).

    Args:
        state: the server's shared state (backend, config, schema learner).
        rules: the session's rules (None: no collection rules).
        partition: the session's partition value (plain), or None.
    """

    def __init__(self, state: ServerState, rules: SessionRules | None, partition: Any = None,
                 has_partition: bool = False) -> None:
        self.state = state
        self.backend: Database = state.backend
        self.config = state.config
        self.rules = rules
        self.partition = partition
        self.has_partition = has_partition
        self._want = canonical_json(partition) if has_partition else None
        self.schemas = state.config.schemas
        self.full = bool(self.schemas) or (rules is not None and not rules.rules.unrestricted)
        self.partition_writable = rules is None or not has_partition or rules.can_write_partition(partition)

    def _access(self, collection: str) -> CollectionAccess | None:
        if self.rules is None or self.rules.rules.unrestricted:
            return None
        return self.rules.collection(collection)

    # -- deciding -------------------------------------------------------------------------

    def decide(self, collection: str, key: Plain, before: merge.DocState, after: merge.DocState) -> Verdict | None:
        """Is the change of one document from ``before`` to ``after`` allowed? (None: yes)."""
        if before.live == after.live and before.epoch == after.epoch and (
                not after.live or before.body == after.body):
            return None  # no visible effect
        operation = ("create" if not before.live else "delete" if not after.live else "update")
        if self.has_partition:
            pkey = self.config.partition_key
            if not self.partition_writable:
                return Verdict(operation, "partition_write_denied",
                               f"this user may read but not write partition {self.partition!r}")
            if before.live and canonical_json(before.body.get(pkey)) != self._want:
                return Verdict(operation, "partition", "document belongs to another partition")
            if after.live and canonical_json(after.body.get(pkey)) != self._want:
                if before.live:
                    return Verdict(operation, "partition", "the partition key cannot change")
                return Verdict(operation, "partition",
                               f"document is in partition {after.body.get(pkey)!r}, not {self.partition!r}")
        access = self._access(collection)
        if access is not None:
            bb = before.body if before.live else None
            ab = after.body if after.live else None
            if bb is not None and ab is not None and after.epoch > before.epoch:
                verdict = access.check_write(bb, None) or access.check_write(None, ab)
                if verdict is not None:
                    return replace(verdict, operation="update")
            else:
                verdict = access.check_write(bb, ab)
                if verdict is not None:
                    return verdict
        schema = self.schemas.get(collection)
        if schema is not None and after.live:
            error = validate(after.body, schema)
            if error is not None:
                return Verdict(operation, "schema", f"{collection} {key!r} does not match its JSON Schema: {error}")
        return None

    def _check_full(self, txns: Sequence[Transaction],
                    pre: Preloaded | None = None) -> tuple[list[Transaction], list[Refusal]]:
        """Judge every document by its effect. ``pre``: ``backend.preload(txns)``, whose states
        it reads instead of querying each document."""
        policies = self.config.policies
        states: dict[Ref, merge.DocState] = {}  # the server's states plus what was allowed so far
        allowed: list[Transaction] = []
        refused: list[Refusal] = []
        for t in txns:
            by_doc: dict[Ref, list[Op]] = {}
            for op in t.ops:
                by_doc.setdefault(_ref(op.collection, op.key), []).append(op)
            bad: set[Ref] = set()
            deleted: dict[Ref, BeforeImage] = {}
            for ref, ops in by_doc.items():
                coll, key = ops[0].collection, ops[0].key
                before = states.get(ref)
                if before is None:
                    before = pre.state(ref) if pre is not None else None
                    if before is None:
                        before = self.backend.document_state(coll, key)
                    states[ref] = before
                try:
                    after, _ = merge.integrate_all(before.copy(), ops, policies)
                except Exception:  # noqa: BLE001 - malformed: the backend's integrate reports it
                    continue
                verdict = self.decide(coll, key, before, after)
                access = self._access(coll) if verdict is None and before.live else None
                if access is not None:
                    # Also a write that changed nothing: else the device keeps its own value.
                    verdict = access.check_fields_written(
                        op.path[0] for op in ops if not isinstance(op, (CreateDoc, DeleteDoc)))
                if (verdict is None and self.has_partition and not before.live and before.epoch
                        and any(isinstance(op, CreateDoc) for op in ops)):
                    verdict = self._tombstone_elsewhere(ref)
                if verdict is None:
                    states[ref] = after
                    if before.live and not after.live:
                        deleted[ref] = BeforeImage(coll, key, before.body, True)
                else:
                    bad.add(ref)
                    refused.append(Refusal(t.id, coll, key, verdict, ops))
            kept = _without(t, bad, deleted)
            if kept is not None:
                allowed.append(kept)
        return allowed, refused

    def _tombstone_elsewhere(self, ref: Ref) -> Verdict | None:
        """A create over another partition's tombstone loses to its delete on the server, while
        the device, which never receives that delete, would keep its document: refused."""
        scope = self.backend.document_scopes([ref]).get(ref)
        if scope is not None and scope != self._want:
            return Verdict("create", "partition", "document belongs to another partition")
        return None

    def _check_partition_only(self, txns: Sequence[Transaction],
                              pre: Preloaded | None = None) -> tuple[list[Transaction], list[Refusal]]:
        """The cheap check of a partition session without collection rules or schemas.
        ``pre``: ``backend.preload(txns)``, whose scopes it reads instead of querying them."""
        key = self.config.partition_key
        allowed: list[Transaction] = []
        refused: list[Refusal] = []
        scopes: dict[Ref, str | None] = {}
        # Documents of another partition (live or deleted): a create would merge into them (one
        # namespace per collection), moving another partition's document, or losing to its
        # delete on the server while the device, which never sees that delete, keeps it.
        held = pre.scopes if pre is not None else self.backend.document_scopes(
            ref for t in txns for op, ref in zip(t.ops, t.refs()) if isinstance(op, CreateDoc))
        elsewhere = {ref: scope for ref, scope in held.items() if scope is not None and scope != self._want}
        want, mine = self._want, self.partition
        by_str = type(mine) is str
        for t in txns:
            refs = t.refs()
            if self.partition_writable:
                # The common upload: creates in this partition of documents no other holds.
                for op, ref in zip(t.ops, refs):
                    if type(op) is not CreateDoc or ref in elsewhere:
                        break
                    value = op.fields.get(key)
                    if not ((by_str and type(value) is str and value == mine) or canonical_json(value) == want):
                        break
                else:
                    for ref in refs:
                        scopes[ref] = want
                    allowed.append(t)
                    continue
            by_doc: dict[Ref, list[Op]] = {}
            for op, ref in zip(t.ops, refs):
                by_doc.setdefault(ref, []).append(op)
            bad: set[Ref] = set()
            for ref, ops in by_doc.items():
                verdict: Verdict | None = None
                for op in ops:
                    if not self.partition_writable:
                        verdict = Verdict("update", "partition_write_denied",
                                          f"this user may read but not write partition {self.partition!r}")
                    elif isinstance(op, CreateDoc):
                        value = op.fields.get(key)
                        if canonical_json(value) != self._want:
                            verdict = Verdict("create", "partition",
                                              f"document is in partition {value!r}, not {self.partition!r}")
                        elif ref in elsewhere:
                            verdict = Verdict("create", "partition", "document belongs to another partition")
                    else:
                        if ref not in scopes:
                            scopes[ref] = (held.get(ref) if pre is not None
                                           else self.backend.document_scope(op.collection, op.key))
                        scope = scopes[ref]
                        if scope is not None and scope != self._want:
                            verdict = Verdict("update", "partition", "document belongs to another partition")
                        elif getattr(op, "path", (None,))[0] == key:
                            verdict = Verdict("update", "partition", "the partition key cannot change")
                    if verdict is not None:
                        break
                if verdict is not None:
                    bad.add(ref)
                    refused.append(Refusal(t.id, ops[0].collection, ops[0].key, verdict, ops))
                else:
                    for op in ops:
                        if isinstance(op, CreateDoc):
                            scopes[ref] = self._want
            kept = _without(t, bad)
            if kept is not None:
                allowed.append(kept)
        return allowed, refused

    # -- integrating ----------------------------------------------------------------------

    #: How many times an upload is read, judged and integrated again when another process
    #: wrote the file in between (then StaleReadError reaches the session, which ends: the
    #: device uploads the batch again).
    STALE_TRIES = 5

    def integrate(self, txns: Sequence[Transaction], peer: str, peer_seq: int, *,
                  wait: bool = True) -> tuple[IntegrateResult, list[CompensatedWrite], bool]:
        """Check ``txns`` from ``peer``, integrate what is allowed and write the compensating
        transaction for what is not.

        ``wait``: False to raise :class:`~tidesync.store.engine.WriteLockBusy` at once, with
        nothing written, when another process holds the file's write lock (the event loop's
        integrations; see ``Database.integrate``).

        Returns:
            The integration result, the ``CompensatedWrite`` messages to send, and whether a
            compensating transaction was written (the server's log grew).
        """
        # A batch allocates many objects that form no cycles: collections in between would
        # scan them all (about a fifth of the CPU of a large batch), for nothing. After a large
        # one, what lives on (the next batch, decoded meanwhile by the session's reader) is
        # promoted rather than scanned; small ones (propagation) leave the young generations
        # to the collector, whose full collections would otherwise come ever more rarely.
        with _gc_paused(promote=_is_large(txns, PROMOTE_OPS)):
            return self._integrate(txns, peer, peer_seq, wait)

    def _integrate(self, txns: Sequence[Transaction], peer: str, peer_seq: int,
                   wait: bool = True) -> tuple[IntegrateResult, list[CompensatedWrite], bool]:
        learner = getattr(self.state, "schema_learner", None)
        if not self.full and not self.has_partition:
            with _checkpoint_later(self.backend, txns):
                result = self.backend.integrate(txns, peer=peer, peer_seq=peer_seq, wait=wait)
            if learner is not None:
                learner.observe_transactions(txns)
            return result, [], False
        with _lock_for(self.backend), _checkpoint_later(self.backend, txns):
            for attempt in range(self.STALE_TRIES):
                # One read of the batch's documents serves the check and the integration.
                pre = self.backend.preload(txns)
                self._preloaded(txns, pre)
                if self.full:
                    allowed, refused = self._check_full(txns, pre)
                else:
                    allowed, refused = self._check_partition_only(txns, pre)
                compensation = self._compensation(refused, peer) if refused else None
                # The compensation in the batch's storage transaction, before it: a batch that
                # fails (a transaction the merge core refuses) writes no compensation either, and
                # the device, whose checkpoint did not move, uploads it again and is refused again.
                try:
                    result = self.backend.integrate(allowed, peer=peer, peer_seq=peer_seq, preloaded=pre,
                                                    first=(compensation,) if compensation is not None else (),
                                                    recheck=pre is not None, wait=wait)
                except StaleReadError:
                    # Another process wrote the file between the read and the integration
                    # (which waited for its lock): the checks judged what is no longer there.
                    if attempt + 1 == self.STALE_TRIES:
                        raise
                    continue
                break
        if learner is not None:
            learner.observe_transactions(allowed)
        uid = self.rules.user.id if self.rules is not None else None
        for r in refused:
            log.info("refused %s of %s %r by user %s: %s (%s)", r.verdict.operation, r.collection, r.key,
                     uid, r.verdict.message, r.verdict.code)
        messages = [CompensatedWrite(r.txn_id, r.collection, r.key, r.verdict.operation, r.verdict.code,
                                     r.verdict.message) for r in refused]
        return result, messages, compensation is not None

    def _preloaded(self, txns: Sequence[Transaction], pre: Any) -> None:
        """Called with the batch's one read (``Database.preload``: None if an operation is
        malformed) before anything is checked or written; the backend's lock is held."""

    def _readable(self, collection: str, state: merge.DocState) -> bool:
        if not state.live:
            return False
        if self.has_partition and canonical_json(state.body.get(self.config.partition_key)) != self._want:
            return False
        access = self._access(collection)
        return access is None or access.can_read(state.body)

    def _compensation(self, refused: Sequence[Refusal], peer: str) -> Transaction | None:
        """The server's transaction that resets the device (see the module docstring)."""
        by_doc: dict[Ref, list[Refusal]] = {}
        for r in refused:
            by_doc.setdefault(_ref(r.collection, r.key), []).append(r)
        observed = [op.stamp for r in refused for op in r.ops]
        shared: list[Op] = []
        mine: list[Op] = []
        for items in by_doc.values():
            coll, key = items[0].collection, items[0].key
            state = self.backend.document_state(coll, key)
            ops = [op for r in items for op in r.ops]
            access = self._access(coll)
            stamps = _Stamps(self.backend.next_stamps(_stamps_needed(state, ops), observed))
            s, m = compensation_ops(state, ops, self._readable(coll, state),
                                    access.field_readable if access is not None else _all_fields, stamps)
            shared.extend(s)
            mine.extend(m)
        if not shared and not mine:
            return None
        first = shared[0].stamp if shared else self.backend.next_stamps(1, observed)[0]
        comp: dict[str, Any] = {"txns": sorted({r.txn_id for r in refused}), "for": peer}
        if mine:
            comp["extra"] = [op_to_wire(op) for op in mine]
        if self.rules is not None:
            comp["user"] = self.rules.user.id
        # Parents: the refused transactions, so on the device the correction follows them
        # causally (no conflict is recorded for values it puts back).
        return Transaction(first, self.backend.replica_id, first, tuple(sorted({r.txn_id for r in refused})),
                           tuple(shared), (), None, {"compensation": comp})

    # -- snapshots from the device --------------------------------------------------------

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: ReplicaId,
                           as_of_seq: int | None) -> SnapshotResult:
        """A device's snapshot (it compacted its log): documents whose join would change
        something the user may not change are left out."""
        if not self.full and not self.has_partition:
            return self.backend.integrate_snapshot(docs, peer=peer, as_of_seq=as_of_seq)
        kept: list[SnapshotDoc] = []
        dropped = 0
        with _lock_for(self.backend):
            for doc in docs:
                before = self.backend.document_state(doc.collection, doc.key)
                incoming = merge.DocState(doc.state["epoch"], bool(doc.state["live"]), doc.state["body"],
                                          doc.state["meta"])
                try:
                    after = merge.join(before.copy(), incoming, self.config.policies)
                except Exception:  # noqa: BLE001
                    dropped += 1
                    continue
                if self.decide(doc.collection, doc.key, before, after) is None:
                    kept.append(doc)
                else:
                    dropped += 1
            result = self.backend.integrate_snapshot(kept, peer=peer, as_of_seq=as_of_seq)
        if dropped:
            log.warning("left out %d snapshot document(s) from %s that its user may not write", dropped, peer)
        return SnapshotResult(result.changed, result.unchanged + dropped)


# ----------------------------------------------------------------------------- download


def strip_meta_fields(meta: dict[str, Any], hidden: Iterable[str]) -> dict[str, Any]:
    """The root merge meta of a document without the top-level fields ``hidden``."""
    hidden = set(hidden)
    if not hidden:
        return meta
    out = dict(meta)
    if "*" in out:
        for key in ("*k",):
            if out.get(key):
                kept = {p: k for p, k in out[key].items() if p.split(".", 1)[0] not in hidden}
                if kept:
                    out[key] = kept
                else:
                    out.pop(key)
        if out.get("*d"):
            kept_d = [p for p in out["*d"] if p.split(".", 1)[0] not in hidden]
            if kept_d:
                out["*d"] = kept_d
            else:
                out.pop("*d")
        # The overlay of fields written since the create names fields too.
        over = out.get("r")
        if over and any(f in over for f in hidden):
            kept_r = {f: v for f, v in over.items() if f not in hidden}
            if kept_r:
                out["r"] = kept_r
            else:
                out.pop("r")
        return out
    for key in ("r", "c", "n", "u"):
        m = out.get(key)
        if m and any(f in m for f in hidden):
            kept_m = {f: v for f, v in m.items() if f not in hidden}
            if kept_m:
                out[key] = kept_m
            else:
                out.pop(key)
    return out


class SessionReplica:
    """The backend as one session may read it (see the module docstring). Everything that
    is not a read is passed through to the backend."""

    def __init__(self, backend: Database, rules: SessionRules | None, enforcer: Enforcer | None = None) -> None:
        self.backend = backend
        self.rules = rules if rules is not None and not rules.rules.unrestricted else None
        self.enforcer = enforcer
        self.peer: Any = None  # the peer's replica id, learned from the first read

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    # -- log ------------------------------------------------------------------------------

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope,
                 exclude_origin: Any) -> LogBatch:
        self.peer = exclude_origin
        batch = self.backend.read_log(after, limit=limit, max_bytes=max_bytes, scope=scope,
                                      exclude_origin=exclude_origin)
        if not batch.entries:
            return batch
        entries: list[tuple[int, Transaction]] = []
        changed = False
        for seq, txn in batch.entries:
            shown = self.filter_transaction(txn, exclude_origin)
            if shown is not txn:
                changed = True
            if shown is not None:
                entries.append((seq, shown))
        if not changed:
            return batch
        return LogBatch(tuple(entries), batch.scanned_to, batch.head, batch.nbytes, batch.snapshot_required)

    def read_descriptors(self, after: int, *, limit: int, scope: Scope, exclude_origin: Any) -> DescriptorBatch:
        if self.rules is None:
            return self.backend.read_descriptors(after, limit=limit, scope=scope, exclude_origin=exclude_origin)
        batch = self.read_log(after, limit=limit, max_bytes=1 << 20, scope=scope, exclude_origin=exclude_origin)
        if batch.snapshot_required:
            return DescriptorBatch((), after, batch.head)
        return DescriptorBatch(tuple((seq, t.descriptor()) for seq, t in batch.entries), batch.scanned_to, batch.head)

    def filter_transaction(self, txn: Transaction, peer: Any) -> Transaction | None:
        """``txn`` as this session's user may see it (None: nothing of it)."""
        meta = txn.meta
        extra: tuple[Op, ...] = ()
        comp = meta.get("compensation") if meta else None
        if comp is not None:
            if isinstance(comp, dict) and comp.get("for") == peer:
                try:
                    extra = tuple(op_from_wire(o) for o in comp.get("extra", ()))
                except ValueError:
                    extra = ()
            meta = {k: v for k, v in meta.items() if k not in ("compensation", "user")}
            meta["compensates"] = comp.get("txns", []) if isinstance(comp, dict) else []
        if self.rules is None:
            ops, before = txn.ops, txn.before
        else:
            ops, before = self._readable_ops(txn)
        if extra:
            ops = (*ops, *extra)
        if ops is txn.ops and meta is txn.meta:
            return txn
        if not ops:
            return None
        return Transaction(txn.id, txn.origin, txn.stamp, txn.parents, tuple(ops), tuple(before), txn.user, meta)

    def _readable_ops(self, txn: Transaction) -> tuple[tuple[Op, ...], tuple[BeforeImage, ...]]:
        assert self.rules is not None
        rules = self.rules
        states: dict[Ref, merge.DocState] = {}
        visible: dict[Ref, bool] = {}
        deleted_before = {_ref(b.collection, b.key): b for b in txn.before if b.deleted}
        ops: list[Op] = []
        changed = False
        for op in txn.ops:
            ref = _ref(op.collection, op.key)
            access = rules.collection(op.collection)
            seen = visible.get(ref)
            if seen is None:
                if isinstance(op, DeleteDoc) or ref in deleted_before:
                    b = deleted_before.get(ref)
                    seen = access.read_all or (b is not None and b.fields is not None and access.can_read(b.fields))
                    if not seen:
                        st = states.get(ref) or self.backend.document_state(op.collection, op.key)
                        seen = st.live and access.can_read(st.body)
                else:
                    st = states[ref] = self.backend.document_state(op.collection, op.key)
                    seen = st.live and access.can_read(st.body)
                visible[ref] = seen
            if not seen:
                changed = True
                continue
            if isinstance(op, CreateDoc):
                hidden = [f for f in op.fields if not access.field_readable(f)]
                if hidden:
                    changed = True
                    h = set(hidden)
                    op = CreateDoc(op.collection, op.key, op.stamp, op.base,
                                   {k: v for k, v in op.fields.items() if k not in h},
                                   {p: k for p, k in op.kinds.items() if p.split(".", 1)[0] not in h},
                                   tuple(p for p in op.defaults if p.split(".", 1)[0] not in h))
            elif not isinstance(op, DeleteDoc) and not access.field_readable(op.path[0]):
                changed = True
                continue
            ops.append(op)
        before: list[BeforeImage] = []
        for b in txn.before:
            if not visible.get(_ref(b.collection, b.key), False):
                changed = True
                continue
            if b.fields is None:
                before.append(b)
                continue
            access = rules.collection(b.collection)
            fields = {k: v for k, v in b.fields.items() if access.field_readable(k)}
            if len(fields) != len(b.fields):
                changed = True
            if fields or b.deleted:
                before.append(BeforeImage(b.collection, b.key, fields, b.deleted))
            elif b.fields:
                changed = True
        if not changed and len(before) == len(txn.before):
            return txn.ops, txn.before
        return tuple(ops), tuple(before)

    # -- snapshots ------------------------------------------------------------------------

    def read_snapshot(self, scope: Scope, *, cursor: object | None, limit: int, max_bytes: int) -> SnapshotPage:
        page = self.backend.read_snapshot(scope, cursor=cursor, limit=limit, max_bytes=max_bytes)
        extra = self._compensations_for_peer(page.as_of_seq) if page.cursor is None else []
        if self.rules is None and not extra:
            return page
        docs: list[SnapshotDoc] = []
        for doc in page.docs:
            shown = self.filter_snapshot_doc(doc) if self.rules is not None else doc
            if shown is not None:
                docs.append(shown)
        docs = _apply_extras(docs, extra)
        return SnapshotPage(tuple(docs), page.cursor, page.as_of_seq, page.nbytes, page.estimate)

    def _compensations_for_peer(self, as_of: int) -> list[Op]:
        """The device-only operations of compensating transactions addressed to this peer
        (up to ``as_of``): a snapshot replaces the log they travel in, so the last page
        carries them instead (a refused create is then a tombstone, say)."""
        enforcer = self.enforcer
        if self.peer is None or enforcer is None or not (enforcer.full or enforcer.has_partition):
            return []  # this session's uploads are never refused: no compensation is for it
        db = self.backend
        with db._lock:
            rows = db._engine.query("SELECT data FROM log WHERE origin = ? AND seq <= ? ORDER BY seq",
                                    (db.replica_id, as_of))
        import msgpack

        out: list[Op] = []
        for (data,) in rows:
            meta = msgpack.unpackb(data, raw=False).get("meta") or {}
            comp = meta.get("compensation")
            if isinstance(comp, dict) and comp.get("for") == self.peer:
                try:
                    out.extend(op_from_wire(o) for o in comp.get("extra", ()))
                except ValueError:
                    continue
        return out

    def filter_snapshot_doc(self, doc: SnapshotDoc) -> SnapshotDoc | None:
        assert self.rules is not None
        access = self.rules.collection(doc.collection)
        state = doc.state
        if not state["live"]:
            return doc if access.read_all else None
        body = state["body"]
        if not access.can_read(body):
            return None
        hidden = [f for f in body if not access.field_readable(f)]
        meta = state["meta"]
        if not hidden:
            # Fields never shown may still have merge metadata (an unset, say): strip it too.
            hidden_meta = [f for f in _meta_fields(meta) if not access.field_readable(f)]
            if not hidden_meta:
                return doc
            hidden = hidden_meta
        h = set(hidden)
        return SnapshotDoc(doc.collection, doc.key, {
            "epoch": state["epoch"], "live": True,
            "body": {k: v for k, v in body.items() if k not in h},
            "meta": strip_meta_fields(meta, h)})

    # -- writes from the device -----------------------------------------------------------

    def integrate_snapshot(self, docs: Sequence[SnapshotDoc], *, peer: Any, as_of_seq: int | None) -> SnapshotResult:
        if self.enforcer is None:
            return self.backend.integrate_snapshot(docs, peer=peer, as_of_seq=as_of_seq)
        return self.enforcer.integrate_snapshot(docs, peer=peer, as_of_seq=as_of_seq)


def _apply_extras(docs: list[SnapshotDoc], extra: Sequence[Op]) -> list[SnapshotDoc]:
    """Snapshot documents that carry device-only compensation operations: a ``DeleteDoc``
    becomes a tombstone of its stamp, an ``Unset`` an unset write in the document's meta."""
    if not extra:
        return docs
    by_ref = {_ref(d.collection, d.key): i for i, d in enumerate(docs)}
    out = list(docs)
    for op in extra:
        ref = _ref(op.collection, op.key)
        if isinstance(op, DeleteDoc):
            tomb = SnapshotDoc(op.collection, op.key, {"epoch": op.stamp, "live": False, "body": {}, "meta": {}})
            if ref in by_ref:
                current = out[by_ref[ref]]
                if current.state["epoch"] >= op.stamp:
                    continue
                out[by_ref[ref]] = tomb
            else:
                by_ref[ref] = len(out)
                out.append(tomb)
        elif isinstance(op, Unset) and ref in by_ref:
            current = out[by_ref[ref]]
            st = current.state
            if not st["live"] or st["epoch"] != op.base:
                continue
            state = merge.DocState(st["epoch"], True, dict(st["body"]), json.loads(json.dumps(st["meta"])))
            expand(state)
            name = op.path[0]
            r = state.meta.setdefault("r", {})
            if r.get(name, "") < "1" + op.stamp:
                r[name] = "1" + op.stamp
                state.body.pop(name, None)
                (state.meta.get("c") or {}).pop(name, None)
            out[by_ref[ref]] = SnapshotDoc(current.collection, current.key, {
                "epoch": state.epoch, "live": True, "body": state.body, "meta": state.meta})
    return out


def _meta_fields(meta: dict[str, Any]) -> set[str]:
    if "*" in meta:
        return ({p.split(".", 1)[0] for p in (meta.get("*k") or {})}
                | {p.split(".", 1)[0] for p in (meta.get("*d") or ())} | set(meta.get("r") or ()))
    out: set[str] = set()
    for key in ("r", "c", "n", "u"):
        out.update(meta.get(key) or ())
    return out


