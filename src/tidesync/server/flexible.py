"""Flexible sync on the server: query subscriptions, per-device views, routing changes.

A device syncing with ``SyncConfig(flexible=True)`` names its subscription set (queries on
*queryable fields*) in its ``Hello`` and in ``Subscribe`` messages. For each such session the
server keeps the device's **view**: the documents it has decided the device holds, which are
those matching one of the set's queries *and* readable by the user (the rules engineer's
per-session read filter, :class:`~tidesync.server.enforcement.SessionReplica`). Everything
else follows from keeping the view right:

* **Subscribing** (:meth:`FlexibleSession.subscribe`): the set is validated (a field that is
  not queryable, or ``@count``/``@size``, puts it in the ``error`` state and the previous set
  stays in force); each query is compiled twice from the same AST, to SQL over the backend's
  ``documents`` table (:func:`tidesync.query.compile_sql`: the bootstrap) and to a predicate
  (:func:`tidesync.query.to_predicate`: routing). The new view is computed on the backend and
  compared with the current one: only documents the device does not hold are sent (whole, in
  pages of ``page_size`` with progress), only those it should no longer hold are removed
  (``ViewUpdate.leave``, which the device applies without deleting anything). Then
  ``SubscriptionState(complete)``.
* **Routing** (:meth:`FlexibleSession.read_log`, the replicator's reads for the peer): each
  transaction touching a document the device holds, or that may now match its queries, is
  judged per document: *stays* (the operations go in ``Changes``), *enters* (the whole
  document goes in a ``ViewUpdate`` before the batch) or *leaves* (a ``ViewUpdate.leave``; its
  operations are left out). To a device that announced ``changes_view`` the entering and
  leaving documents go in the batch's own ``Changes`` instead (its ``view`` part,
  :meth:`FlexibleSession.attach`), which the device applies with the batch and acknowledges
  with its ``Ack``. A shared :class:`Router` decodes every new log entry once and,
  through an index of the sessions' equality conditions and of which session holds which
  document, finds the few sessions a change concerns, so a change costs work only for them.
* **Uploads** (:class:`FlexibleEnforcer`): a write to a document that is in none of the
  writer's subscriptions (neither before nor after the write, and not in its view) is refused
  with a compensating write (``outside_subscriptions``), unless the config accepts it. After
  an upload, documents the device itself moved out of its view leave it.

**Persistence and reconnection.** The view is stored per device replica in
``data_dir/flexible.db`` (:class:`ViewStore`), each row with the ``view_seq`` of the
``ViewUpdate`` that last changed it, written *before* the update is sent. The device applies
each update atomically with its ``view_seq`` and names the last one in its next ``Hello``:
rows changed after it are *uncertain* (the device may or may not have applied them) and are
settled again (sent whole, or removed) on connection; everything else is known exactly, so a
reconnection, or a restart of either side in the middle of a bootstrap, sends only what may
have been lost. The device's checkpoint in the server's log is unchanged by all this.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, cast

import msgpack

from ..client.subscriptions import field_comparison_in, query_paths, subquery_in
from ..core import merge
from ..core.operations import DeleteDoc
from ..core.rules import Verdict
from ..core.stamp import ReplicaId
from ..core.transaction import Transaction, doc_ref
from ..core.values import Plain, loads_json
from ..errors import PermissionDeniedError, QueryError, SyncError, UsageError
from ..protocol.codes import ErrorCode
from ..protocol.messages import (
    FEATURE_CHANGES_VIEW, Changes, CompensatedWrite, Hello, Message, Progress, Scope, SnapshotDoc, Subscribe,
    SubscriptionQuery, SubscriptionState, SubscriptionStatus, ViewAck, ViewPart, ViewUpdate,
)
from ..protocol.replica import LogBatch
from ..query import And, In, Node, Query, compile_sql, node_from_json, parse_query, to_predicate
from ..query.ast import Compare, Path, Value
from ..store.database import _gc_paused
from .enforcement import Enforcer

if TYPE_CHECKING:
    from ..store.database import Database
    from .app import ServerState

__all__ = ["FlexibleConfig", "flexible_config_from_toml", "FlexibleSession", "FlexibleEnforcer", "Router",
           "admit_flexible", "compile_set", "SubscriptionInvalid"]

log = logging.getLogger("tidesync.server.flexible")

Ref = tuple[str, str]

_TABLES = (
    """CREATE TABLE IF NOT EXISTS flexible_peers (
        peer TEXT PRIMARY KEY,
        version INTEGER NOT NULL DEFAULT 0,
        queries TEXT NOT NULL DEFAULT '[]',
        view_seq INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS flexible_views (
        peer TEXT NOT NULL,
        collection TEXT NOT NULL,
        pk TEXT NOT NULL,
        present INTEGER NOT NULL,
        view_seq INTEGER NOT NULL,
        PRIMARY KEY (peer, collection, pk)
    ) WITHOUT ROWID""",
)


# ----------------------------------------------------------------------------- config


@dataclass
class FlexibleConfig:
    """``[sync.flexible]`` of tidesync.toml.

    Attributes:
        enabled: serve flexible sync (partition sync is served as well, on other sessions).
        queryable_fields: fields any collection may be queried on (``_id`` always may).
        collections: per collection, more queryable fields (``"site.city"`` style key paths
            allowed; a listed field also allows the key paths below it).
        all_fields: every field is queryable (development mode).
        accept_writes_outside_subscriptions: accept a write to a document outside every
            subscription of the writer (default: refuse it with a compensating write).
        page_size: documents per ``ViewUpdate`` page of a bootstrap.
        window: ``ViewUpdate`` pages sent ahead of the device's ``ViewAck``.
        advance_interval: changes that concern a device are sent at once; an idle device is
            told that the log moved on once it has been quiet this many seconds (no commit,
            and no routing round on its way)...
        max_advance_interval: ... or after this many seconds under a steady stream of changes
            (then together with the next routing round when one is on its way).
        max_queries: the most queries one subscription set may hold.
        max_round_delay: under a sustained stream of changes for many devices, routing rounds
            are spaced by up to this many seconds (a change may reach a device that much
            later; a lone change after a quiet moment is not delayed): a longer delay sends
            fewer, larger ``changes`` (each costs the server about 0.3 ms with its ``ack``).
        indexed_fields: top-level fields to index on the backend (an expression index on the
            field's value, and a partial one of the documents where it is a list): a subscription with an equality condition on
            one (``owner == $0``, ``status IN {...}``, also inside an AND) is bootstrapped
            through the index instead of a scan of its collection. In development mode
            (``all_fields``) every field such a condition uses is indexed on first use.
    """

    enabled: bool = True
    queryable_fields: tuple[str, ...] = ()
    collections: dict[str, tuple[str, ...]] = field(default_factory=dict)
    all_fields: bool = False
    accept_writes_outside_subscriptions: bool = False
    page_size: int = 500
    window: int = 4
    advance_interval: float = 0.2
    max_advance_interval: float = 10.0
    max_queries: int = 1000
    indexed_fields: tuple[str, ...] = ()
    max_round_delay: float = 2.0

    def queryable(self, collection: str, names: Sequence[str]) -> bool:
        if self.all_fields or names[0] == "_id":
            return True
        allowed = set(self.queryable_fields) | set(self.collections.get(collection, ()))
        return any(".".join(names[:i]) in allowed for i in range(1, len(names) + 1))

    def describe_queryable(self, collection: str) -> str:
        names = sorted(set(self.queryable_fields) | set(self.collections.get(collection, ())) | {"_id"})
        return ", ".join(names)


def flexible_config_from_toml(table: Any) -> FlexibleConfig:
    """Parse ``[sync.flexible]``::

        [sync.flexible]
        queryable_fields = ["owner_id", "status"]         # every collection
        writes_outside_subscriptions = "refuse"           # or "accept"
        [sync.flexible.collections.WorkOrder]
        queryable_fields = ["priority", "site.city"]

    Raises:
        UsageError: the table is malformed.
    """
    if not isinstance(table, dict):
        raise UsageError("[sync.flexible] must be a table")

    def names(value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{where} must be a list of field names")
        return tuple(value)

    cfg = FlexibleConfig(enabled=bool(table.get("enabled", True)))
    cfg.queryable_fields = names(table.get("queryable_fields", []), "sync.flexible.queryable_fields")
    colls = table.get("collections", {})
    if not isinstance(colls, dict):
        raise UsageError("[sync.flexible.collections] must be a table of [sync.flexible.collections.<Name>]")
    for name, sub in colls.items():
        if not isinstance(sub, dict):
            raise UsageError(f"[sync.flexible.collections.{name}] must be a table")
        cfg.collections[str(name)] = names(sub.get("queryable_fields", []),
                                           f"sync.flexible.collections.{name}.queryable_fields")
    outside = table.get("writes_outside_subscriptions", "refuse")
    if outside not in ("refuse", "accept"):
        raise UsageError("sync.flexible.writes_outside_subscriptions must be 'refuse' or 'accept'")
    cfg.accept_writes_outside_subscriptions = outside == "accept"
    cfg.all_fields = bool(table.get("all_fields_queryable", False))
    cfg.indexed_fields = names(table.get("indexed_fields", []), "sync.flexible.indexed_fields")
    bad = [f for f in cfg.indexed_fields if not _FIELD.fullmatch(f)]
    if bad:
        raise UsageError(f"sync.flexible.indexed_fields must be plain top-level field names, not {bad}")
    if "max_round_delay" in table:
        delay = table["max_round_delay"]
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0.05 <= delay <= 60:
            raise UsageError("sync.flexible.max_round_delay must be a number of seconds from 0.05 to 60")
        cfg.max_round_delay = float(delay)
    for key in ("page_size", "window", "max_queries"):
        if key in table:
            value = table[key]
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"sync.flexible.{key} must be a positive integer")
            setattr(cfg, key, value)
    return cfg


def config_for(state: ServerState) -> FlexibleConfig | None:
    """The server's flexible-sync config: the configured one, or in development mode (no
    config file) one where every field is queryable. None: flexible sync is off."""
    cfg = getattr(state.config, "flexible", None)
    if isinstance(cfg, FlexibleConfig):
        return cfg if cfg.enabled else None
    if state.config.development_mode:
        return FlexibleConfig(all_fields=True)
    return None


# ----------------------------------------------------------------------------- compiling


class SubscriptionInvalid(Exception):
    """A subscription set the server cannot serve (the message is for the device)."""


Predicate = Any
IndexKey = tuple[str, Any]


def _vkey(plain: Any) -> IndexKey | None:
    """The equality-index key of a plain value, so that values the query language calls
    equal (1, 1.0, Decimal 1) share a key; None when the value cannot be indexed."""
    if plain is None:
        return None
    if isinstance(plain, bool):
        return ("b", plain)
    if isinstance(plain, (int, float)):
        return ("n", float(plain))
    if isinstance(plain, str):
        return ("s", plain)
    if isinstance(plain, dict) and len(plain) == 1:
        if "$decimal" in plain:
            try:
                d = Decimal(str(plain["$decimal"]))
            except (InvalidOperation, ValueError):
                return None
            return ("n", float(d)) if d.is_finite() else None
        return ("t", json.dumps(plain, sort_keys=True))
    return None


def _body_keys(value: Any) -> Iterable[IndexKey]:
    if isinstance(value, list):
        for item in value:
            k = _vkey(item)
            if k is not None:
                yield k
    else:
        k = _vkey(value)
        if k is not None:
            yield k


def _index_of(node: Node) -> tuple[str, frozenset[IndexKey]] | None:
    """An equality condition every match must satisfy: (top-level field, the keys it may
    have). None when the query has none (it is then checked against every change)."""
    found = _equality_of(node)
    if found is None:
        return None
    keys = [_vkey(v) for v in found[1]]
    if not keys or any(k is None for k in keys):
        return None
    return (found[0], frozenset(k for k in keys if k is not None))


def _equality_of(node: Node) -> tuple[str, list[Any]] | None:
    """(top-level field, the plain values it must equal one of), from ``field == v``,
    ``field IN {...}`` or either inside an AND; None when there is none."""
    if isinstance(node, Compare) and node.op == "==" and not node.case_insensitive \
            and not node.diacritic_insensitive \
            and isinstance(node.left, Path) and len(node.left.names) == 1 and isinstance(node.right, Value):
        return (node.left.names[0], [node.right.plain]) if node.right.plain is not None else None
    if isinstance(node, In) and isinstance(node.left, Path) and len(node.left.names) == 1 \
            and isinstance(node.values, Value) and isinstance(node.values.plain, list):
        values = list(node.values.plain)
        return (node.left.names[0], values) if values and None not in values else None
    if isinstance(node, And):
        for item in node.items:
            found = _equality_of(item)
            if found is not None:
                return found
    return None


_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _prefilter(sub: CompiledSub) -> tuple[str, list[Any]] | None:
    """For a query with an equality condition on a plain top-level field whose values are
    strings or booleans: (field, values), to narrow the backend query through an expression
    index on the field (see :meth:`Router.ensure_index`). Not for numbers: a number also
    equals a decimal, which is stored as a tagged object the index does not compare."""
    found = _equality_of(sub.node)
    if found is None or not _FIELD.fullmatch(found[0]):
        return None
    if not all(isinstance(v, (str, bool)) for v in found[1]):
        return None
    return found


@dataclass
class CompiledSub:
    """One subscription query, compiled for the backend (SQL) and for routing (predicate)."""

    name: str
    collection: str
    node: Node
    text: str
    sql: str
    params: list[Any]
    predicate: Predicate
    index: tuple[str, frozenset[IndexKey]] | None
    #: The query's identity for routing (collection and AST): sessions with the same query
    #: share one test of its predicate per change (see :class:`_QueryGroup`).
    key: str = ""

    def wire(self) -> SubscriptionQuery:
        from ..query import node_to_json

        return SubscriptionQuery(self.name, self.collection, self.text, node_to_json(self.node))


def compile_set(queries: Sequence[SubscriptionQuery], config: FlexibleConfig) -> list[CompiledSub]:
    """Validate and compile a subscription set.

    Raises:
        SubscriptionInvalid: with a message naming the subscription and the problem.
    """
    if len(queries) > config.max_queries:
        raise SubscriptionInvalid(f"a subscription set may hold at most {config.max_queries} queries")
    out: list[CompiledSub] = []
    for q in queries:
        label = f"subscription {q.name!r}" if q.name else "an unnamed subscription"
        where = f"{label} on {q.collection} ({q.query if isinstance(q.query, str) else json.dumps(q.query)})"
        try:
            if q.ast is not None:
                query = Query(node_from_json(q.ast), q.query if isinstance(q.query, str) else None)
            else:
                query = parse_query(q.query)
            if query.params:
                raise SubscriptionInvalid(f"{where}: the query has unbound arguments "
                                          f"({', '.join('$' + str(i) for i in sorted(query.params))})")
            pair = field_comparison_in(query.node)
            if pair is not None:
                raise SubscriptionInvalid(f"{where}: comparing two fields ({pair.left} {pair.op} {pair.right}) is "
                                          "not supported in subscriptions: the server has no schema to type them")
            subquery = subquery_in(query.node)
            if subquery is not None:
                raise SubscriptionInvalid(f"{where}: {subquery} is not supported in subscriptions (as in Device "
                                          "Sync); subscribe on the document's own fields")
            for path, counted in query_paths(query.node):
                if counted:
                    raise SubscriptionInvalid(
                        f"{where}: {path}.@count / @size is not supported in subscriptions "
                        "(as in Device Sync, aggregates cannot be synced on); query the field itself")
                if not config.queryable(q.collection, path.names):
                    raise SubscriptionInvalid(
                        f"{where}: field {str(path)!r} is not queryable on this server; queryable "
                        f"fields of {q.collection}: {config.describe_queryable(q.collection)} "
                        "(see [sync.flexible] in tidesync.toml)")
            sql, params = compile_sql(query, q.collection, None)
            predicate = to_predicate(query, q.collection, None)
        except QueryError as exc:
            raise SubscriptionInvalid(f"{where}: {exc.message if hasattr(exc, 'message') else exc}") from None
        text = q.query if isinstance(q.query, str) else json.dumps(q.query, sort_keys=True)
        out.append(CompiledSub(q.name, q.collection, query.node, text, sql, params, predicate,
                               _index_of(query.node), _query_key(q.collection, query.node)))
    return out


def _query_key(collection: str, node: Node) -> str:
    """What identifies a compiled query for routing: its collection and AST (the predicate
    depends on nothing else). A query whose AST has no JSON form gets a key of its own."""
    from ..query import node_to_json

    try:
        return collection + "\x00" + json.dumps(node_to_json(node), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return f"{collection}\x00#{id(node)}"


# ----------------------------------------------------------------------------- the view store


class ViewBatch:
    """View rows written together at the end of a routing round's slice (:meth:`ViewStore.begin`),
    and the payloads of the sessions that wrote them, sent once they are."""

    __slots__ = ("thread", "rows", "sends")

    def __init__(self, thread: int) -> None:
        self.thread = thread
        self.rows: list[tuple[str, Sequence[tuple[Ref, int, int]], Sequence[Ref], int, int | None, str | None]] = []
        #: (the ServerSession, its payloads), in the order they were held.
        self.sends: list[tuple[Any, list[bytes]]] = []


class ViewStore:
    """Each device replica's view (``flexible_views``: document, present, view_seq) and set
    (``flexible_peers``: the version and queries served, the last view_seq), in
    ``data_dir/flexible.db``.

    Its own file, in WAL mode with ``synchronous=NORMAL``: a view row must be written before
    its ``ViewUpdate`` is sent, and that happens for every document entering or leaving a
    view, so it must not wait for a disk flush nor hold the backend. A committed row survives
    a crash of the server process (the WAL is written before the commit returns); only a power
    loss can take the last ones, which the device's ``view_seq`` then reveals (it is ahead of
    the stored one): those documents are settled again on connection.
    """

    def __init__(self, path: Any) -> None:
        from ..store.engine import Engine

        self.engine = Engine(path, check_same_thread=False)
        self.engine.execute("PRAGMA synchronous = NORMAL")
        self.lock = threading.Lock()
        #: The rows of a routing round's slice, written together (see :meth:`begin`).
        self.batch: ViewBatch | None = None
        with self.lock, self.engine.atomic():
            for stmt in _TABLES:
                self.engine.execute(stmt)

    def load(self, peer: str) -> tuple[list[Any], list[Any]]:
        with self.lock:
            row = self.engine.query("SELECT version, queries, view_seq FROM flexible_peers WHERE peer = ?", (peer,))
            rows = self.engine.query(
                "SELECT collection, pk, present, view_seq FROM flexible_views WHERE peer = ?", (peer,))
        return row, rows

    def write(self, peer: str, changes: Sequence[tuple[Ref, int, int]], forget: Sequence[Ref], view_seq: int,
              version: int | None, queries: str | None, *, blocking: bool = True) -> bool:
        """Write view rows and the peer's row, atomically. ``blocking=False``: write nothing and
        return False when another thread is writing; within a :meth:`begin` batch of the
        calling thread, add them to it (written by :meth:`commit`, before anything is sent)."""
        batch = self.batch
        if not blocking and batch is not None and batch.thread == threading.get_ident():
            batch.rows.append((peer, changes, forget, view_seq, version, queries))
            return True
        if not self.lock.acquire(blocking):
            return False
        try:
            self._write(peer, changes, forget, view_seq, version, queries)
        finally:
            self.lock.release()
        return True

    def begin(self) -> ViewBatch | None:
        """Gather the rows this thread writes without blocking (a routing round's inline
        reads) into one transaction, holding the store meanwhile; None when another thread
        is writing. End it with :meth:`commit`."""
        if not self.lock.acquire(blocking=False):
            return None
        self.batch = batch = ViewBatch(threading.get_ident())
        return batch

    def commit(self, batch: ViewBatch) -> bool:
        """Write a batch's rows in one transaction and release the store. False: they could
        not be written (nothing was)."""
        try:
            if batch.rows:
                with self.engine.atomic():
                    self._batch_rows(batch.rows)
            return True
        except Exception:  # noqa: BLE001 - reported; the caller ends the sessions concerned
            log.exception("writing the view rows of a routing round failed")
            return False
        finally:
            self.batch = None
            self.lock.release()

    def _write(self, peer: str, changes: Sequence[tuple[Ref, int, int]], forget: Sequence[Ref], view_seq: int,
               version: int | None, queries: str | None) -> None:
        with self.engine.atomic():
            self._rows(peer, changes, forget, view_seq, version, queries)

    def _batch_rows(self, rows: Sequence[tuple[str, Sequence[tuple[Ref, int, int]], Sequence[Ref], int, int | None,
                                          str | None]]) -> None:
        """:meth:`_rows` of each of ``rows``, in order: the view rows of all of them in one
        statement, their peers' rows in another (the two tables are independent, and within
        each the rows keep their order), instead of two statements per session. Rows that
        forget documents are written one by one."""
        if any(forget for _, _, forget, _, _, _ in rows):
            for row in rows:
                self._rows(*row)
            return
        views = [(peer, c, pk, present, vs) for peer, changes, _, _, _, _ in rows
                 for (c, pk), present, vs in changes]
        if views:
            self.engine.executemany(_VIEW_UPSERT, views)
        self.engine.executemany(_PEER_UPSERT, [(peer, version, queries, view_seq, version, queries)
                                               for peer, _, _, view_seq, version, queries in rows])

    def _rows(self, peer: str, changes: Sequence[tuple[Ref, int, int]], forget: Sequence[Ref], view_seq: int,
              version: int | None, queries: str | None) -> None:
        if changes:
            self.engine.executemany(_VIEW_UPSERT, [(peer, c, pk, present, vs) for (c, pk), present, vs in changes])
        if forget:
            self.engine.executemany("DELETE FROM flexible_views WHERE peer = ? AND collection = ? AND pk = ?",
                                    [(peer, c, pk) for c, pk in forget])
        self.engine.execute(_PEER_UPSERT, (peer, version, queries, view_seq, version, queries))


_VIEW_UPSERT = ("INSERT INTO flexible_views (peer, collection, pk, present, view_seq) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(peer, collection, pk) DO UPDATE SET present = excluded.present, "
                "view_seq = excluded.view_seq")
_PEER_UPSERT = ("INSERT INTO flexible_peers (peer, version, queries, view_seq) VALUES (?, coalesce(?, 0), "
                "coalesce(?, '[]'), ?) ON CONFLICT(peer) DO UPDATE SET view_seq = excluded.view_seq, "
                "version = coalesce(?, flexible_peers.version), queries = coalesce(?, flexible_peers.queries)")


# ----------------------------------------------------------------------------- the router


class _Routed:
    """One log entry as the router saw it: decoded once, with the touched documents' states
    right after the router read it."""

    __slots__ = ("seq", "origin", "via", "txn", "size", "refs", "states", "verdicts", "comp_for", "has_meta",
                 "one_ref", "one_state", "one_verdicts")

    def __init__(self, seq: int, origin: str, via: str | None, txn: Transaction, size: int) -> None:
        self.seq, self.origin, self.via, self.txn, self.size = seq, origin, via, txn, size
        # (Transaction.refs(): doc_ref of each operation, usually made by the integration already.)
        self.refs: list[Ref] = list(txn.refs())
        self.states: dict[Ref, tuple[bool, dict[str, Any] | None]] = {}
        # By document (every one in ``states``, once routed): the queries (CompiledSub.key)
        # the router tested on that state, and whether each matched. A session judging the
        # entry reuses them instead of testing its queries again.
        self.verdicts: dict[Ref, dict[str, bool]] = {}
        meta = txn.meta
        comp = meta.get("compensation") if meta else None
        self.comp_for: str | None = comp.get("for") if isinstance(comp, dict) else None
        self.has_meta = bool(meta)
        # An entry of one document (most are): its ref, and once routed (Router._route) its
        # state and verdicts, kept here as well as in ``states`` and ``verdicts``. A session
        # judges many entries, long after they were routed, each in memory no longer in the
        # CPU's caches: read from here it touches three objects fewer per entry (the list and
        # the two dicts), about a sixth of the judging's CPU in the routing benchmark.
        self.one_ref: Ref | None = self.refs[0] if len(self.refs) == 1 else None
        self.one_state: tuple[bool, dict[str, Any] | None] = _GONE   # (read only with one_verdicts)
        self.one_verdicts: dict[str, bool] | None = None


_ROUTERS: dict[int, Router] = {}
_ROUTERS_GUARD = threading.Lock()


class Router:
    """Finds, for each new log entry, the flexible sessions it may concern (one per backend).

    It reads and decodes every entry once, with the current state of the documents it
    touches, and appends its seq to the ``relevant`` queue of every session that holds one of
    those documents or has a query that may match one: queries with an equality condition on
    a top-level field (``status == 'open'``, ``owner IN {...}``, also inside an AND) are found
    through an index on (collection, field, value); others are checked against every change of
    their collection. Sessions then judge exactly (:meth:`FlexibleSession.read_log`).
    """

    CACHE = 20_000
    FULL_CACHE = 50_000
    #: ... and at most about this many bytes of them (JSON text), whichever comes first.
    FULL_CACHE_BYTES = 64 * 1024 * 1024

    def __init__(self, backend: Database, views: ViewStore) -> None:
        self.backend = backend
        self.views = views
        self.lock = threading.RLock()
        self.sessions: set[FlexibleSession] = set()
        self.processed_to = backend.head_seq()
        self.holders: dict[Ref, set[FlexibleSession]] = {}
        # Per collection: (field -> value key -> query key -> the query and the sessions with
        # it), and query key -> the same for queries without an equality condition. Only those
        # queries are tested against a change (the others cannot match it), each once for all
        # the sessions that share it (a team's query, held by each of its devices).
        self.eq_index: dict[str, dict[str, dict[IndexKey, dict[str, _QueryGroup]]]] = {}
        self.scan: dict[str, dict[str, _QueryGroup]] = {}
        self.cache: OrderedDict[int, _Routed] = OrderedDict()
        # The merge state (epoch, body JSON, meta JSON) of recently routed live documents as
        # of ``processed_to`` (a deleted one is dropped): a document entering a view is sent
        # from here, without reading the backend (see FlexibleSession._apply_decisions).
        self.full: OrderedDict[Ref, tuple[str, str, str]] = OrderedDict()
        self.full_bytes = 0  # the lengths of the bodies and metas in ``full``
        # Documents entering views, as made from ``full`` (see FlexibleSession._entering):
        # ref -> (the ``full`` tuple they were made from, the document, its body parsed, the
        # queries tested on that body by key). A round lets a document into the views of every
        # session whose query it now matches (a team's ten devices): made and tested once.
        self.entering: dict[Ref, tuple[tuple[str, str, str], SnapshotDoc, dict[str, Any], dict[str, bool]]] = {}
        self._task: asyncio.Future[int] | None = None
        self._dirty = True
        # Waking: sessions that got entries since the last round; one debounced advance for
        # every idle session (see announce).
        self._woken: set[FlexibleSession] = set()
        self.pending: set[FlexibleSession] = set()   # woken by the last round, not read yet
        self._pending_until = 0.0
        self._next_round_at = 0.0
        self._round_began: float | None = None
        self._last_began = 0.0
        # When the log last grew, and the usual time between such announcements under the
        # current stream (smoothed): a silence several times as long means the stream ended.
        self._announced_at = 0.0
        self._announce_gap = 0.0
        #: The sessions whose peers are in the middle of an upload (``ServerState.uploading``,
        #: shared by for_state): while any is, a silence is not the end of the stream.
        self.uploading: set[Any] = set()
        self._round_task: asyncio.Task[None] | None = None
        self._advance_due: float | None = None
        self._advance_timer: asyncio.TimerHandle | None = None
        self._last_advance = 0.0
        self._advance_in_round = False   # the advance is due: the next round wakes idle sessions
        self.config = FlexibleConfig()
        # Entries the backend's integrations just logged, by seq, as they were integrated
        # (decoded, with their stored bytes): routed without decoding them again. Written and
        # read with the backend's lock held (Database.on_logged, catch_up).
        self._handed: dict[int, Transaction] = {}
        # The document rows those integrations wrote, by ref, as stored ((body JSON, meta JSON,
        # epoch, live); the latest write of each), and the file's version after the last of
        # them (Database.on_written): while the file is still at that version they are the
        # documents' current states, and the catch-up takes them instead of reading them
        # back. Written and read with the backend's lock held.
        self._written: dict[Ref, tuple[str, str, str, int, dict[str, Any]]] = {}
        self._written_at: tuple[int, int] | None = None
        with backend._lock:
            backend.on_logged = self._hand
            backend.on_written = self._hand_rows
            names = {r[0] for r in backend._engine.query(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name GLOB 'flexible_i*'")}
            # Files indexed before the values had columns (see ensure_index): a field's
            # expression index on its value and its index of lists (flexible_ia_, earlier a full
            # index on its type, flexible_it_) replaced once by its value column.
            for fieldname in sorted({n[12:] for n in names if n[:12] in ("flexible_ix_", "flexible_ia_", "flexible_it_")}):
                if backend.add_value_column(fieldname):
                    for kind in ("ix", "ia", "it"):
                        if f"flexible_{kind}_{fieldname}" in names:
                            backend._engine.execute(f'DROP INDEX IF EXISTS "flexible_{kind}_{fieldname}"')
            self.indexed: set[str] = set(backend.value_fields)

    AUTO_INDEX_LIMIT = 16
    #: The longest a routing round waits for the sessions it woke to read (see announce),
    #: and how often it looks.
    ROUND_WAIT = 1.0
    ROUND_POLL = 0.005
    #: Under a stream of commits, rounds that woke n sessions are at least
    #: min(config.max_round_delay, n * ROUND_COST) seconds apart (see announce).
    ROUND_COST = 0.004
    #: ... and at least ROUND_LOAD times as long as the last round took (at most
    #: config.max_round_delay): routing then takes at most about a third of the time under load.
    ROUND_LOAD = 3.0
    #: A round wakes its sessions in slices of about this many seconds (see _round).
    WAKE_SLICE = 0.02
    #: A round waiting out its spacing starts at once when no commit has been announced for
    #: QUIET_GAPS times the usual time between announcements of the stream (and at least
    #: QUIET_MIN seconds) and no peer is in the middle of an upload (its last batch ended
    #: before its head): the stream ended, and nothing is left for routing to make way for.
    QUIET_GAPS = 3.0
    QUIET_MIN = 0.05

    def ensure_index(self, fieldname: str, config: FlexibleConfig) -> bool:
        """Whether ``fieldname`` has the backend's index (its value column, see
        ``Database.add_value_column``), creating it when the config lists the field (or, in
        development mode, on first use, up to ``AUTO_INDEX_LIMIT`` fields)."""
        if fieldname in self.indexed:
            return True
        wanted = fieldname in config.indexed_fields or (
            config.all_fields and len(self.indexed) < self.AUTO_INDEX_LIMIT)
        if not wanted or not _FIELD.fullmatch(fieldname):
            return False
        backend = self.backend
        t0 = time.perf_counter()
        with backend._lock:
            if not backend.add_value_column(fieldname):
                return False
        self.indexed.add(fieldname)
        log.info("indexed field %s for flexible sync in %.2f s", fieldname, time.perf_counter() - t0)
        return True

    @classmethod
    def for_state(cls, state: ServerState) -> Router:
        """The router of a server (one per backend; made on first use)."""
        backend = state.backend
        with _ROUTERS_GUARD:
            router = _ROUTERS.get(id(backend))
            if router is None or router.backend is not backend:
                from pathlib import Path

                views = ViewStore(Path(state.config.data_dir) / "flexible.db")
                router = _ROUTERS[id(backend)] = cls(backend, views)
                router.uploading = state.uploading
            return router

    # -- sessions -------------------------------------------------------------------------

    def register(self, s: FlexibleSession) -> None:
        with self.lock:
            self.config = s.config
            self.sessions.add(s)
            s.routed_from = self.processed_to
            for ref in s.held:
                self.holders.setdefault(ref, set()).add(s)
            self._index(s)

    def unregister(self, s: FlexibleSession) -> None:
        with self.lock:
            self.sessions.discard(s)
            self._unindex(s)
            self._woken.discard(s)
            self.pending.discard(s)
            for ref in s.held:
                hs = self.holders.get(ref)
                if hs is not None:
                    hs.discard(s)
                    if not hs:
                        del self.holders[ref]
            if not self.sessions:
                self.cache.clear()

    def reindex(self, s: FlexibleSession) -> None:
        with self.lock:
            if s in self.sessions:
                self._unindex(s)
                self._index(s)

    def _index(self, s: FlexibleSession) -> None:
        for sub in s.subs:
            if sub.index is None:
                _group_add(self.scan.setdefault(sub.collection, {}), sub, s)
                continue
            fieldname, keys = sub.index
            by_value = self.eq_index.setdefault(sub.collection, {}).setdefault(fieldname, {})
            for k in keys:
                _group_add(by_value.setdefault(k, {}), sub, s)
        s.indexed = list(s.subs)
        # Every entry after this one is routed with these queries in the index (routing and
        # this run under the lock): the session may trust the router's verdicts on its states,
        # a query the index did not reach included (see FlexibleSession._judge).
        s.indexed_at, s.indexed_of = self.processed_to, s.subs

    def _unindex(self, s: FlexibleSession) -> None:
        for sub in s.indexed:
            if sub.index is None:
                scan = self.scan.get(sub.collection)
                if scan is not None:
                    _group_remove(scan, sub, s)
                    if not scan:
                        del self.scan[sub.collection]
                continue
            fieldname, keys = sub.index
            by_value = self.eq_index.get(sub.collection, {}).get(fieldname, {})
            for k in keys:
                got = by_value.get(k)
                if got is not None:
                    _group_remove(got, sub, s)
                    if not got:
                        del by_value[k]
        s.indexed = []
        s.indexed_at, s.indexed_of = None, None

    def hold(self, s: FlexibleSession, refs: Iterable[Ref]) -> None:
        with self.lock:
            for ref in refs:
                s.held.add(ref)
                self.holders.setdefault(ref, set()).add(s)

    def watch(self, s: FlexibleSession, refs: Iterable[Ref]) -> list[Ref]:
        """Route every change of ``refs`` to ``s`` as if it held them, before it reads their
        state to let them enter its view: routing matches a change against the sessions'
        queries on the state it sees, so a change that takes a document out of the queries
        between that read and :meth:`hold` would otherwise not reach ``s``. Returns the refs
        to :meth:`unwatch` once they are held or not entered."""
        out: list[Ref] = []
        with self.lock:
            for ref in refs:
                if ref not in s.held:
                    self.holders.setdefault(ref, set()).add(s)
                    out.append(ref)
        return out

    def unwatch(self, s: FlexibleSession, refs: Iterable[Ref]) -> None:
        with self.lock:
            for ref in refs:
                if ref in s.held:
                    continue
                hs = self.holders.get(ref)
                if hs is not None:
                    hs.discard(s)
                    if not hs:
                        del self.holders[ref]

    def release(self, s: FlexibleSession, refs: Iterable[Ref]) -> None:
        with self.lock:
            for ref in refs:
                s.held.discard(ref)
                hs = self.holders.get(ref)
                if hs is not None:
                    hs.discard(s)
                    if not hs:
                        del self.holders[ref]

    # -- catching up with the log ---------------------------------------------------------

    #: The most entries kept handed over and not yet routed (more: the oldest are decoded
    #: from the log instead).
    HANDED_MAX = 20_000

    def _hand(self, logged: list[tuple[int, Transaction]]) -> None:
        """Database.on_logged: keep what an integration just logged for the next catch-up
        (the backend's lock is held)."""
        handed = self._handed
        if not self.sessions or len(handed) + len(logged) > self.HANDED_MAX:
            handed.clear()
            if not self.sessions:
                return
        for seq, t in logged:
            handed[seq] = t

    def _hand_rows(self, rows: list[tuple[tuple[Any, ...], dict[str, Any]]], before: tuple[int, int],
                   after: tuple[int, int]) -> None:
        """Database.on_written: keep the document rows an integration just wrote for the next
        catch-up (the backend's lock is held). Any other write in between (``before`` is not
        the version after the last hand-over) makes the rows kept so far unreliable: dropped."""
        written = self._written
        if before != self._written_at or not self.sessions or len(written) + len(rows) > self.HANDED_MAX:
            written.clear()
        if self.sessions:
            for (coll, pk, text, meta, epoch, live, *_), body in rows:
                written[(coll, pk)] = (text, meta, epoch, live, body)
        self._written_at = after

    def states_now(self, refs: set[Ref]) -> dict[Ref, tuple[bool, Any]]:
        """:func:`read_states` of ``refs``, taking those the integrations handed over while
        the file is still as the last one left it (a device's view after its own upload)."""
        with self.backend._lock:
            return self._states(refs, None)

    def _states(self, refs: set[Ref], full: dict[Ref, tuple[str, str, str]] | None) -> dict[Ref, tuple[bool, Any]]:
        """:func:`read_states` of ``refs`` (with ``full``), taking those the integrations
        handed over (:meth:`_hand_rows`) while the file is still as the last one left it
        (the backend's lock is held)."""
        written = self._written
        if not written:
            return read_states(self.backend, refs, full)
        engine = self.backend._engine
        if (engine.total_changes(), engine.data_version()) != self._written_at:
            written.clear()
            return read_states(self.backend, refs, full)
        out: dict[Ref, tuple[bool, Any]] = {}
        missing: set[Ref] = set()
        for ref in refs:
            got = written.get(ref)
            if got is None:
                missing.add(ref)
            elif got[3]:
                out[ref] = (True, got[4])
                if full is not None:
                    full[ref] = (got[2], got[0], got[1])
            else:
                out[ref] = (False, None)
        if missing:
            out.update(read_states(self.backend, missing, full))
        return out

    def mark_dirty(self) -> None:
        self._dirty = True

    def announce(self) -> None:
        """The log grew (event loop): route the new entries once, in a worker thread, then
        wake only the sessions they concern.

        Every other session only has to move its device's checkpoint past them eventually
        (for its ``wait_for_download_completion``): that *advance* is debounced for all of
        them together, once the log has been quiet for ``advance_interval`` seconds, and at
        least every ``max_advance_interval`` under a steady stream of changes, so an idle
        device costs nothing per change.

        Commits announced while a round runs are routed by the next one, which starts once
        the sessions woken by this one have read (or after ``ROUND_WAIT`` seconds), and no
        sooner than ``n * ROUND_COST`` seconds, nor ``ROUND_LOAD`` times as long as this one
        took (both at most ``config.max_round_delay``), after it when it woke n sessions: under a stream of uploads each device then gets one larger
        ``Changes`` per round instead of one per upload batch, and the cost of routing grows
        with the number of devices concerned, not with the number of commits. A lone commit
        is routed at once, and so is the end of a stream: once the log has been quiet for
        ``QUIET_GAPS`` times the usual time between its commits and no peer is in the middle
        of an upload, the waiting round starts."""
        self._note_commit()
        self._dirty = True
        self._arm_advance(slack=0.01)   # the log is not quiet (once per commit, not per session)
        if self._round_task is None:
            self._round_task = asyncio.get_running_loop().create_task(self._round())

    def _note_commit(self) -> None:
        """Keep the pace of the stream of commits (see ``QUIET_GAPS``)."""
        now = time.monotonic()
        gap = now - self._announced_at
        self._announced_at = now
        if gap < self.config.max_round_delay:   # a stream's pace, not the first commit of one
            self._announce_gap = gap if not self._announce_gap else 0.75 * self._announce_gap + 0.25 * gap
        else:
            self._announce_gap = 0.0

    async def _spacing(self) -> None:
        """Wait until the next round is due (``_next_round_at``), or until the stream of
        commits that spaces the rounds has ended (see ``QUIET_GAPS``): a silence while a peer
        is in the middle of an upload (``uploading``) is not its end."""
        while True:
            now = time.monotonic()
            wait = self._next_round_at - now
            if wait <= 0:
                return
            quiet = max(self.QUIET_MIN, self.QUIET_GAPS * self._announce_gap)
            silent = now - self._announced_at
            if silent >= quiet:
                if not self.uploading:
                    return
                # A silence in the middle of an upload (the event loop busy, the uploader
                # waiting for its Ack): the stream has not ended, look again later.
                silent = 0.0
            await asyncio.sleep(max(0.001, min(wait, quiet - silent)))   # (no spin on rounding)

    async def _round(self) -> None:
        try:
            while True:
                # After a round that woke many sessions: their reads first, then the spacing.
                while self.pending and time.monotonic() < self._pending_until:
                    await asyncio.sleep(self.ROUND_POLL)
                self.pending = set()
                if self._round_began is not None:
                    # What the last round took (routing, then its sessions' reads and sends),
                    # measured: on a loaded server rounds are spaced further apart, so that
                    # routing leaves time to the uploads that feed it.
                    took = time.monotonic() - self._round_began
                    self._round_began = None
                    self._next_round_at = max(self._next_round_at, self._last_began + min(
                        self.config.max_round_delay, took * self.ROUND_LOAD))
                await self._spacing()
                started = self._round_began = self._last_began = time.monotonic()
                await self.catch_up_async()
                woken = self._take_woken()
                if woken is None:
                    woken = await asyncio.to_thread(self._take_woken, True)
                assert woken is not None
                advance = self._advance_in_round
                if advance:
                    self._advance_in_round = False
                    self._last_advance = time.monotonic()
                processed = self.processed_to
                for s in list(self.sessions):
                    if s.resync or s.read_to < s.routed_from:
                        woken.add(s)
                    elif advance and s.read_to < processed and s not in woken:
                        s.advance_now = True      # the debounced advance, due (see _advance)
                        woken.add(s)
                self.pending = set(woken)
                # Streaming to a thousand sessions takes a while: other work of the event loop
                # (the upload that feeds routing: its Changes, its integration's end, its Ack)
                # is let through every WAKE_SLICE seconds instead of waiting for the last one.
                # The view rows of a slice's sessions are written in one commit at its end,
                # before their Changes go out (see ViewBatch), instead of one commit each.
                slice_end = time.monotonic() + self.WAKE_SLICE
                self.views.begin()
                try:
                    for s in woken:
                        s.wake()
                        if time.monotonic() >= slice_end:
                            self.flush_views()
                            await asyncio.sleep(0)
                            slice_end = time.monotonic() + self.WAKE_SLICE
                            self.views.begin()
                finally:
                    self.flush_views()
                self._arm_advance()
                self._pending_until = started + self.ROUND_WAIT
                # A round costs about ROUND_COST per session it wakes (a read, a Changes, its
                # Ack): rounds of many sessions are spaced so that each covers more commits.
                self._next_round_at = started + min(self.config.max_round_delay, len(woken) * self.ROUND_COST)
                if not self._dirty:
                    self._round_began = None   # measured only while rounds follow each other
                    return
        except Exception:  # noqa: BLE001 - never leave the router without rounds
            log.exception("routing round failed")
            for s in list(self.sessions):
                s.wake()       # each session catches up by itself (FlexibleSession.read_log)
        finally:
            self._round_task = None

    def hold_sends(self, server: Any, payloads: list[bytes]) -> bool:
        """Keep a woken session's payloads until the view rows of the current slice are
        written (:meth:`flush_views`); False when no slice batch of this thread is open."""
        batch = self.views.batch
        if batch is None or batch.thread != threading.get_ident():
            return False
        batch.sends.append((server, payloads))
        return True

    def flush_views(self, reopen: bool = False) -> bool:
        """Write the open slice batch's view rows (one commit), then send what its sessions
        held; if they cannot be written, those sessions' connections end instead (their
        devices reconnect and settle their views from the rows as they were). ``reopen``:
        open a new batch for the rest of the slice. False: the rows could not be written."""
        views = self.views
        batch = views.batch
        if batch is None or batch.thread != threading.get_ident():
            return True
        ok = views.commit(batch)
        for server, payloads in batch.sends:
            if ok:
                server.send_held(payloads)
            else:
                server.lose()
        if not ok:
            for s in list(self.sessions):
                if s.held_back:
                    s.held_back = False
                    s.server.lose()
        if reopen:
            views.begin()
        return ok

    def _take_woken(self, blocking: bool = False) -> set[FlexibleSession] | None:
        if not self.lock.acquire(blocking=blocking):
            return None
        try:
            woken, self._woken = self._woken, set()
        finally:
            self.lock.release()
        return woken

    def _arm_advance(self, slack: float = 0.0) -> None:
        now = time.monotonic()
        due = self._advance_due
        new_due = min(now + self.config.advance_interval,
                      max(now, self._last_advance + self.config.max_advance_interval))
        if due is None or abs(new_due - due) > slack:
            self._advance_due = new_due
            if self._advance_timer is not None:
                self._advance_timer.cancel()
            self._advance_timer = asyncio.get_running_loop().call_later(new_due - now, self._advance)

    def _advance(self) -> None:
        self._advance_timer = None
        self._advance_due = None
        now = time.monotonic()
        if self._round_task is not None:
            # Commits are still being routed (a round is on its way or waking its sessions):
            # the log is not quiet. The round arms the advance again when it has woken its
            # sessions; waking every idle one meanwhile would send each a Changes (and get an
            # Ack) per upload batch that a round then follows anyway. When it is due all the
            # same (max_advance_interval), the next round wakes the idle sessions with its own
            # (one read, one Changes each for both).
            if now >= self._last_advance + self.config.max_advance_interval:
                self._advance_in_round = True
            return
        self._advance_in_round = False
        self._last_advance = now
        processed = self.processed_to
        for s in list(self.sessions):
            if s.read_to < processed:
                s.advance_now = True
                s.wake()

    async def catch_up_async(self) -> None:
        """:meth:`catch_up` in a worker thread, shared by every session woken by one commit."""
        while True:
            task = self._task
            if task is None:
                if not self._dirty:
                    return
                task = self._task = asyncio.ensure_future(asyncio.to_thread(self.catch_up))
            try:
                await asyncio.shield(task)
            finally:
                if self._task is task and task.done():
                    self._task = None

    def catch_up(self) -> int:
        """Route every log entry integrated since the last call. Returns the new position.

        Locks: the backend's first, then the router's (never the other way round), so that a
        session reading on the event loop while holding the backend cannot deadlock with one
        catching up in a worker thread. Log entries and document states are read in one
        consistent view of the backend (its lock is held throughout); the router's lock only
        while they are routed, so that sessions reading on the event loop
        (:meth:`FlexibleSession.read_inline`, which never waits for it) are not sent to a
        worker thread while entries are decoded."""
        backend = self.backend
        with backend._lock:
            with self.lock:
                self._dirty = False
                head = backend.head_seq()
                if head <= self.processed_to:
                    return self.processed_to
                if not self.sessions:
                    self.processed_to = head
                    self._handed.clear()
                    self._written.clear()
                    return head
            while self.processed_to < head:
                upto = min(head, self.processed_to + 1000)
                rows = self._log_rows(upto)
                # The decoded entries stay in the cache: decoded with the cyclic GC paused and
                # promoted past the young collections (as an upload batch is, _gc_paused),
                # which would otherwise scan them all again for nothing.
                with _gc_paused(promote=True):
                    self._route_rows(rows, upto)
            self._written.clear()   # (all routed now)
            return self.processed_to

    def _log_rows(self, upto: int) -> list[tuple[int, str, str | None, Transaction | bytes, int]]:
        """The log entries after ``processed_to`` up to ``upto``: (seq, origin, via, the
        transaction handed over for it, or its stored bytes when none was, size). A handed-over
        transaction is that entry when its id is the entry's: the integration hands over only
        transactions whose :meth:`~Transaction.packed` is what it logged (Database._append_logs),
        and log rows are never rewritten, so their bytes are not read back (the backend's lock
        held)."""
        engine = self.backend._engine
        after = self.processed_to
        handed = self._handed
        if not handed:
            return [(seq, origin, via, data, len(data)) for seq, origin, via, data in engine.query(
                "SELECT seq, origin, via, data FROM log WHERE seq > ? AND seq <= ? ORDER BY seq", (after, upto))]
        out: list[tuple[int, str, str | None, Transaction | bytes, int]] = []
        missing: list[int] = []
        for seq, origin, via, tid, size in engine.query(
                "SELECT seq, origin, via, id, length(data) FROM log WHERE seq > ? AND seq <= ? ORDER BY seq",
                (after, upto)):
            t = handed.pop(seq, None)
            if t is None or t.id != tid:    # (not handed over, or not that entry)
                missing.append(len(out))
                out.append((seq, origin, via, b"", size))
            else:
                out.append((seq, origin, via, t, size))
        for i in range(0, len(missing), 500):
            chunk = missing[i:i + 500]
            data: dict[int, bytes] = dict(engine.query(
                f"SELECT seq, data FROM log WHERE seq IN ({','.join('?' * len(chunk))})", [out[j][0] for j in chunk]))
            for j in chunk:
                seq, origin, via, _, size = out[j]
                got = data.get(seq)
                if got is not None:
                    out[j] = (seq, origin, via, got, size)
        # (An entry compacted away between the two reads: dropped, as if the first had not found it.)
        return [row for row in out if type(row[3]) is not bytes or row[3]] if missing else out

    def _route_rows(self, rows: list[tuple[int, str, str | None, Transaction | bytes, int]], upto: int) -> None:
        """Decode (unless handed over) and route the log entries ``rows`` (:meth:`_log_rows`, up
        to ``upto``), with their documents' states (:meth:`catch_up`, the backend's lock held)."""
        handed = self._handed
        routed = []
        for seq, origin, via, t, size in rows:
            if type(t) is bytes:
                t = Transaction.from_stored(msgpack.unpackb(t, raw=False), t)
            routed.append(_Routed(seq, origin, via, cast(Transaction, t), size))
        if handed and next(iter(handed)) <= upto:
            for seq in [seq for seq in handed if seq <= upto]:
                del handed[seq]       # (compacted away before it was routed)
        full: dict[Ref, tuple[str, str, str]] = {}
        touched = {ref for r in routed for ref in r.refs}
        states = self._states(touched, full)
        for r in routed:
            for ref in r.refs:
                r.states[ref] = states.get(ref, (False, None))
        with self.lock:
            cache = self.cache
            for r in routed:
                self._route(r)
                cache[r.seq] = r
            while len(cache) > self.CACHE:
                cache.popitem(last=False)
            known = self.full
            size = self.full_bytes
            for ref in touched:
                got = full.get(ref)
                old = known.pop(ref, None)
                if old is not None:
                    size -= len(old[1]) + len(old[2])
                if got is not None:
                    known[ref] = got
                    size += len(got[1]) + len(got[2])
            while known and (len(known) > self.FULL_CACHE or size > self.FULL_CACHE_BYTES):
                _, gone = known.popitem(last=False)
                size -= len(gone[1]) + len(gone[2])
            self.full_bytes = size
            if len(rows) < upto - self.processed_to:
                # Entries compacted away under us: every session settles its view again.
                for s in self.sessions:
                    s.resync = True
            self.processed_to = upto

    def _route(self, r: _Routed) -> None:
        targets: set[FlexibleSession] = set()
        refs: Iterable[Ref] = r.refs
        if len(r.refs) > 1:
            refs = dict.fromkeys(refs)      # (each document once, in first-touch order)
        holders, states, all_verdicts = self.holders, r.states, r.verdicts
        for ref in refs:
            hs = holders.get(ref)
            if hs:
                targets |= hs
            verdicts: dict[str, bool] = {}
            all_verdicts[ref] = verdicts
            live, body = state = states[ref]
            if r.one_ref is not None:
                r.one_state, r.one_verdicts = state, verdicts
            if not live or body is None:
                continue         # a deleted document matters only to those holding it
            # Sessions with a query that may match (through the equality index, or checked
            # against every change), kept only when one of their queries matches the state:
            # one that does not hold the document would otherwise read the entry for nothing
            # (and its device get an empty Changes).
            coll = ref[0]
            scan = self.scan.get(coll)
            if scan:
                _add_matching(targets, scan, body, verdicts)
            index = self.eq_index.get(coll)
            if not index:
                continue
            for fieldname, by_value in index.items():
                value = body.get(fieldname)
                if type(value) is str:    # (the usual case: _body_keys's one key, without it)
                    got = by_value.get(("s", value))
                    if not got:
                        continue
                    # _add_matching(exact=True), inline (a call per field and change): the groups
                    # found under the string the state's field holds; an exact one matches untested.
                    for key, group in got.items():
                        ok = verdicts.get(key)
                        if ok is None:
                            if group.exact:
                                ok = verdicts[key] = True
                            else:
                                try:
                                    ok = verdicts[key] = bool(group.predicate(body))
                                except Exception:  # noqa: BLE001 - a predicate never raises on plain data
                                    log.exception("subscription predicate failed")
                                    continue
                        if ok:
                            targets.update(group.sessions)
                    continue
                for k in _body_keys(value):
                    got = by_value.get(k)
                    if got:
                        _add_matching(targets, got, body, verdicts)
        if r.comp_for is not None:
            targets |= {s for s in self.sessions if s.peer == r.comp_for}
        for s in targets:
            s.relevant.append(r.seq)
        self._woken |= targets

    def states_of(self, refs: Sequence[Ref]) -> dict[Ref, SnapshotDoc]:
        """The full merge states of live documents among ``refs`` (for documents entering a
        view), as of the last routed entry: from :attr:`full`, the backend only for those it
        no longer holds. Call after :meth:`watch`: a later change then reaches the session."""
        out: dict[Ref, SnapshotDoc] = {}
        missing: list[Ref] = []
        with self.lock:
            known = self.full
            for ref in refs:
                got = known.get(ref)
                if got is None:
                    missing.append(ref)
                else:
                    out[ref] = SnapshotDoc.from_json_form(ref[0], json.loads(ref[1]), got[0], True, got[1], got[2])
        if missing:
            out.update(read_full(self.backend, missing))
        return out

    def routed(self, seq: int) -> _Routed | None:
        with self.lock:
            return self.cache.get(seq)


class _QueryGroup:
    """The sessions that have one query (same collection and AST: :attr:`CompiledSub.key`)
    under one entry of the router's index, with how many of their subscriptions it is."""

    __slots__ = ("predicate", "sessions", "exact")

    def __init__(self, predicate: Predicate, exact: bool = False) -> None:
        self.predicate = predicate
        self.sessions: dict[FlexibleSession, int] = {}
        #: The query is nothing but ``field == 'a string'`` (:func:`_is_str_equality`): under its
        #: string key of the equality index, it matches every state the index finds it for.
        self.exact = exact


def _group_add(groups: dict[str, _QueryGroup], sub: CompiledSub, s: FlexibleSession) -> None:
    group = groups.get(sub.key)
    if group is None:
        group = groups[sub.key] = _QueryGroup(sub.predicate, _is_str_equality(sub.node))
    group.sessions[s] = group.sessions.get(s, 0) + 1


def _group_remove(groups: dict[str, _QueryGroup], sub: CompiledSub, s: FlexibleSession) -> None:
    group = groups.get(sub.key)
    if group is None:
        return
    n = group.sessions.pop(s, 0) - 1
    if n > 0:
        group.sessions[s] = n
    elif not group.sessions:
        del groups[sub.key]


def _is_str_equality(node: Node) -> bool:
    """``field == 'text'`` on a top-level field, case and diacritics sensitive, and nothing else:
    a state whose field holds that very string (all the equality index's string key finds)
    matches it."""
    return (isinstance(node, Compare) and node.op == "==" and not node.case_insensitive
            and not node.diacritic_insensitive and isinstance(node.left, Path) and len(node.left.names) == 1
            and isinstance(node.right, Value) and type(node.right.plain) is str)


def _add_matching(targets: set[FlexibleSession], groups: dict[str, _QueryGroup], body: dict[str, Any],
                  verdicts: dict[str, bool], *, exact: bool = False) -> None:
    """Add to ``targets`` the sessions of every group whose query matches ``body``, each query
    tested once; ``verdicts`` gets each tested query's result (by its key), for the sessions'
    judging of the same state (:meth:`FlexibleSession.matches_subs`). ``exact``: the groups
    were found under the string ``body``'s field holds, so an ``exact`` group matches untested."""
    for key, group in groups.items():
        ok = verdicts.get(key)
        if ok is None:
            if exact and group.exact:
                ok = verdicts[key] = True
            else:
                try:
                    ok = verdicts[key] = bool(group.predicate(body))
                except Exception:  # noqa: BLE001 - a predicate never raises on plain data; be safe
                    log.exception("subscription predicate failed")
                    continue
        if ok:
            targets.update(group.sessions)


def read_states(backend: Database, refs: Iterable[Ref],
                full: dict[Ref, tuple[str, str, str]] | None = None) -> dict[Ref, tuple[bool, dict[str, Any] | None]]:
    """(live, body) of documents, in one query per few hundred. ``full``: also filled with
    (epoch, body JSON, meta JSON) of the live ones (their merge state, as stored)."""
    if full is not None:
        return _read_states_full(backend, refs, full)
    items = list(refs)
    out: dict[Ref, tuple[bool, dict[str, Any] | None]] = {}
    by_coll: dict[str, list[str]] = {}
    for coll, pk in items:
        by_coll.setdefault(coll, []).append(pk)
    with backend._lock:
        for coll, pks in by_coll.items():
            for i in range(0, len(pks), 500):
                chunk = pks[i:i + 500]
                for pk, body, live in backend._engine.query(
                        f"SELECT pk, body, live FROM documents WHERE collection = ? AND pk IN ({','.join('?' * len(chunk))})",
                        [coll, *chunk]):
                    out[(coll, pk)] = (bool(live), json.loads(body) if live else None)
    return out


def _read_states_full(backend: Database, refs: Iterable[Ref],
                      full: dict[Ref, tuple[str, str, str]]) -> dict[Ref, tuple[bool, dict[str, Any] | None]]:
    out: dict[Ref, tuple[bool, dict[str, Any] | None]] = {}
    with backend._lock:
        rows = backend._states_of(list(refs))
    for ref, (body, meta, epoch, live) in rows.items():
        if live:
            out[ref] = (True, json.loads(body))
            full[ref] = (epoch, body, meta)
        else:
            out[ref] = (False, None)
    return out


def read_full(backend: Database, refs: Sequence[Ref]) -> dict[Ref, SnapshotDoc]:
    """The full merge states of live documents (for documents entering a view)."""
    with backend._lock:
        rows = backend._states_of(refs)
    return {(coll, pk): SnapshotDoc(coll, json.loads(pk), {
                "epoch": epoch, "live": True, "body": json.loads(body), "meta": json.loads(meta)})
            for (coll, pk), (body, meta, epoch, live) in rows.items() if live}


# ----------------------------------------------------------------------------- one session


STAY, ENTER, LEAVE, SKIP = "stay", "enter", "leave", "skip"
#: The state of a document no routed entry showed (judged as deleted).
_GONE: tuple[bool, None] = (False, None)


class FlexibleSession:
    """Flexible sync for one connection (see the module docstring). Made by
    :func:`admit_flexible`; its storage work runs in worker threads, one step at a time."""

    #: The longest :meth:`read_inline` waits for the router's lock (seconds).
    INLINE_LOCK_WAIT = 0.002
    #: The device announced ``changes_view`` (set by :func:`admit_flexible`): routed view
    #: changes go in the next ``Changes`` (:attr:`folded`, :meth:`attach`), not a ``ViewUpdate``.
    fold: bool = False
    #: The view part decided by the read whose ``Changes`` is about to be sent.
    folded: ViewPart | None = None
    #: View rows of this session wait in the routing slice's batch (ViewBatch): what it sends
    #: meanwhile waits for them (ServerSession._stream_now).
    held_back: bool = False
    #: The router's ``processed_to`` when it indexed :attr:`indexed_of` (this session's
    #: queries then, the very list): entries after it were routed with them (Router._index).
    indexed_at: int | None = None
    indexed_of: list[CompiledSub] | None = None

    def __init__(self, server: Any, config: FlexibleConfig, peer: ReplicaId, requested: dict[str, Any]) -> None:
        self.server = server                      # the ServerSession (sync_endpoint.py)
        self.state: ServerState = server.state
        self.backend: Database = server.state.backend
        self.config = config
        self.peer = peer
        self.requested = requested                # the Hello's set: version, view_seq, queries
        self.router = Router.for_state(self.state)
        self.reader: Any = None                   # the rules' SessionReplica, set by wrap()
        self.rules: Any = None
        # the view
        self.held: set[Ref] = set()
        self.uncertain: set[Ref] = set()
        self.left: set[Ref] = set()
        self.indexed: list[CompiledSub] = []
        self.subs: list[CompiledSub] = []
        self.by_coll: dict[str, list[CompiledSub]] = {}
        self.keys_by_coll: dict[str, tuple[str, ...]] = {}   # each list of by_coll, as query keys
        self.version = 0                          # the active (served) set version
        self.view_seq = 0                         # the last view_seq allocated for this peer
        # routing
        self.relevant: deque[int] = deque()
        self.routed_from = 0
        self.read_to = 0
        self._first_read = True
        self.resync = False
        self.advance_now = False                  # woken by the router's advance (see Router.announce)
        self.registered = False
        # bootstrap work and messages
        self.enter_todo: deque[Ref] = deque()
        self.leave_todo: deque[Ref] = deque()
        self.boot_version: int | None = None
        self.boot_set_id = 1
        self.boot_total = 0
        self.boot_sent = 0
        self.unacked: deque[int] = deque()
        self.outbox: deque[Message] = deque()
        self._step_queued = False
        self._closed = False
        self.sent_docs = 0
        self.sent_leaves = 0

    # -- wiring ---------------------------------------------------------------------------

    def wrap(self, enforcer: Enforcer, reader: Any) -> tuple[Enforcer, Any]:
        """Wrap the rules engineer's per-session enforcer and read filter."""
        self.reader = reader
        self.rules = getattr(reader, "rules", None)
        flex_enforcer = FlexibleEnforcer(self.state, enforcer.rules, enforcer.partition, enforcer.has_partition,
                                         flexible=self)
        return flex_enforcer, _FlexibleReader(self, reader)

    async def connect(self) -> None:
        """Load the persisted view, settle what may have been lost, start serving the set.

        The session is registered with the router first, so that no change integrated while
        the view is being computed can slip between the two."""
        self.router.register(self)
        self.registered = True
        await asyncio.to_thread(self._connect_sync)
        self.schedule()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.registered = False
            self.router.unregister(self)

    # -- matching -------------------------------------------------------------------------

    def _set_subs(self, subs: list[CompiledSub], version: int) -> None:
        self.subs = subs
        self.version = version
        by: dict[str, list[CompiledSub]] = {}
        for s in subs:
            by.setdefault(s.collection, []).append(s)
        self.by_coll = by
        self.keys_by_coll = {coll: tuple(sub.key for sub in group) for coll, group in by.items()}

    def matches_subs(self, collection: str, body: dict[str, Any], verdicts: dict[str, bool] | None = None,
                     complete: bool = False) -> bool:
        """Whether one of the set's queries matches ``body``; ``verdicts``: results the router
        already found for this very state, by query key (:attr:`_Routed.verdicts`).
        ``complete``: the router routed that state with these queries in its index, so a
        query without a verdict is one whose equality condition the state does not meet
        (the index did not reach it): no match, without testing it."""
        if verdicts is not None and complete:
            # Every query that could match was tested by the router: its verdicts decide.
            return any(map(verdicts.get, self.keys_by_coll.get(collection, ())))
        for sub in self.by_coll.get(collection, ()):
            if verdicts is not None:
                known = verdicts.get(sub.key)
                if known is not None:
                    if known:
                        return True
                    continue
            try:
                if sub.predicate(body):
                    return True
            except Exception:  # noqa: BLE001 - a predicate never raises on plain data; be safe
                log.exception("subscription predicate failed")
        return False

    def readable(self, collection: str, body: dict[str, Any]) -> bool:
        if self.rules is None:
            return True
        return bool(self.rules.collection(collection).can_read(body))

    def matches(self, collection: str, body: dict[str, Any] | None, verdicts: dict[str, bool] | None = None,
                complete: bool = False) -> bool:
        return (body is not None and self.matches_subs(collection, body, verdicts, complete)
                and self.readable(collection, body))

    def _shown(self, doc: SnapshotDoc) -> SnapshotDoc | None:
        if self.rules is None or self.reader is None:
            return doc
        shown: SnapshotDoc | None = self.reader.filter_snapshot_doc(doc)
        return shown

    # -- the desired view -----------------------------------------------------------------

    def desired(self) -> set[Ref]:
        """Every document the active set asks for and the user may read, computed on the
        backend with the compiled SQL."""
        out: set[Ref] = set()
        backend = self.backend
        for coll, subs in self.by_coll.items():
            access = self.rules.collection(coll) if self.rules is not None else None
            if access is not None and access.role is None:
                continue
            need_body = access is not None and not access.read_all
            cols = "documents.pk, documents.body" if need_body else "documents.pk"
            queries: list[tuple[str, list[Any]]] = []
            scan: list[CompiledSub] = []
            for sub in subs:
                pre = _prefilter(sub)
                if pre is None or not self.router.ensure_index(pre[0], self.config):
                    scan.append(sub)
                    continue
                # Through the field's value index: its scalar values equal to one of the values,
                # plus documents where it may be a list (their elements count: a list's value is
                # its JSON text, so it starts with "["; a string may too), then the exact test.
                f, values = pre
                marks = ",".join("?" * len(values))
                queries.append((f"documents.v_{f} IN ({marks}) AND ({sub.sql})",
                                [*values, *sub.params]))
                queries.append((f"documents.v_{f} >= '[' AND documents.v_{f} < '\\' AND ({sub.sql})",
                                list(sub.params)))
            if scan:
                queries.append((" OR ".join(f"({s.sql})" for s in scan), [p for s in scan for p in s.params]))
            for where, params in queries:
                with backend._lock:
                    rows = backend._engine.query(
                        f"SELECT {cols} FROM documents WHERE documents.collection = ? AND ({where}) "
                        "AND documents.live = 1", [coll, *params])
                if need_body:
                    assert access is not None
                    out.update((coll, r[0]) for r in rows if access.can_read(json.loads(r[1])))
                else:
                    out.update((coll, r[0]) for r in rows)
        return out

    # -- persistence ----------------------------------------------------------------------

    def _next_view_seq(self) -> int:
        self.view_seq += 1
        return self.view_seq

    def _persist(self, changes: Sequence[tuple[Ref, int, int]], *, set_row: bool = False,
                 forget: Sequence[Ref] = (), blocking: bool = True) -> bool:
        """Write view rows ``(ref, present, view_seq)`` and this peer's counters, atomically
        (``blocking=False``: nothing, returning False, when another thread is writing)."""
        queries = json.dumps([s.wire().to_wire() for s in self.subs], separators=(",", ":")) if set_row else None
        views = self.router.views
        done = views.write(self.peer, changes, forget, self.view_seq, self.version if set_row else None,
                           queries, blocking=blocking)
        batch = views.batch
        if done and not blocking and batch is not None and batch.thread == threading.get_ident():
            self.held_back = True
        return done

    # -- connecting -----------------------------------------------------------------------

    def _connect_sync(self) -> None:
        req = self.requested
        row, rows = self.router.views.load(self.peer)
        active_version, active_queries, last_seq = (int(row[0][0]), row[0][1], int(row[0][2])) if row else (0, "[]", 0)
        self.view_seq = last_seq
        known = min(int(req.get("view_seq", 0)), last_seq)
        forget: list[Ref] = []
        held: list[Ref] = []
        for coll, pk, present, vs in rows:
            ref = (coll, pk)
            if vs <= known:
                if present:
                    held.append(ref)
                else:
                    forget.append(ref)
            else:
                self.uncertain.add(ref)
                if not present:
                    self.left.add(ref)
        self.router.hold(self, held)
        # The set to serve: the device's latest if it is valid, else the one served before.
        previous: list[CompiledSub] = []
        try:
            previous = compile_set([SubscriptionQuery.from_wire(q) for q in json.loads(active_queries)], self.config)
        except (SubscriptionInvalid, ValueError) as exc:
            log.warning("the stored subscription set of %s no longer compiles: %s", self.peer, exc)
        self._set_subs(previous, active_version)
        version = int(req.get("version", 0))
        try:
            queries = [SubscriptionQuery.from_wire(q) for q in req.get("queries", [])]
        except ValueError as exc:
            self.outbox.append(SubscriptionState(_set_id(req), version, SubscriptionStatus.ERROR, str(exc)))
            queries = None
        if queries is not None:
            self._activate(_set_id(req), version, queries, forget=forget)
        else:
            self._replan(_set_id(req), self.version, forget)

    # -- subscribing ----------------------------------------------------------------------

    def _activate(self, set_id: int, version: int, queries: Sequence[SubscriptionQuery],
                  forget: Sequence[Ref] = ()) -> None:
        try:
            subs = compile_set(queries, self.config)
        except SubscriptionInvalid as exc:
            log.info("subscription set v%d of %s refused: %s", version, self.peer, exc)
            self.outbox.append(SubscriptionState(set_id, version, SubscriptionStatus.ERROR, str(exc)))
            self._replan(set_id, self.version, forget)
            return
        self._set_subs(subs, version)
        # Re-index first: a change routed from now on is judged with the new queries, and
        # one integrated before is in the desired view computed next.
        self.router.reindex(self)
        self._replan(set_id, version, forget, set_row=True)

    def _replan(self, set_id: int, version: int, forget: Sequence[Ref] = (), set_row: bool = False) -> None:
        """Compare the desired view with what the device holds: what to send and to remove."""
        want = self.desired()
        enters = sorted(want - self.held)
        leaves = sorted((self.held | self.uncertain) - want)
        self.enter_todo = deque(enters)
        self.leave_todo = deque(leaves)
        self.boot_version = version
        self.boot_set_id = set_id
        self.boot_total = len(enters) + len(leaves)
        self.boot_sent = 0
        self._persist([], set_row=set_row, forget=forget)
        self.outbox.append(SubscriptionState(set_id, version, SubscriptionStatus.BOOTSTRAPPING
                                             if self.boot_total else SubscriptionStatus.COMPLETE))
        if not self.boot_total:
            self.boot_version = None

    def subscribe(self, message: Subscribe) -> None:
        """A new subscription set version from the device (worker thread)."""
        if message.version <= self.version:
            return  # an old version: nothing to do
        self._activate(message.set_id, message.version, message.queries)

    # -- bootstrap steps ------------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(self.enter_todo or self.leave_todo or self.boot_version is not None)

    def idle(self) -> bool:
        """Whether :meth:`pump` has nothing to do: no view message queued, no bootstrap
        step pending (the session's 1 s timer then need not wake its task)."""
        return not self.outbox and not self.has_work()

    def schedule(self) -> None:
        """Queue a bootstrap step on the session's loop when there is work and room."""
        if self._closed or self._step_queued or not self.has_work() or len(self.unacked) >= self.config.window:
            return
        self._step_queued = True
        self.server._inbox.put_nowait(("flex", None))

    async def step(self) -> None:
        self._step_queued = False
        if self._closed or not self.has_work() or len(self.unacked) >= self.config.window:
            return
        await asyncio.to_thread(self._step_sync)
        self.schedule()

    def _step_sync(self) -> None:
        page = self.config.page_size
        leaves: list[Ref] = []
        while self.leave_todo and len(leaves) < page * 10:
            ref = self.leave_todo.popleft()
            if ref in self.held or ref in self.uncertain:
                leaves.append(ref)
        refs: list[Ref] = []
        while self.enter_todo and len(refs) < page:
            ref = self.enter_todo.popleft()
            if ref not in self.held:
                refs.append(ref)
        watched = self.router.watch(self, refs)
        docs = read_full(self.backend, refs) if refs else {}
        enters: list[SnapshotDoc] = []
        entered: list[Ref] = []
        for ref in refs:
            doc = docs.get(ref)
            body = doc.state["body"] if doc is not None else None
            if doc is None or not self.matches(ref[0], body):
                if ref in self.uncertain:
                    leaves.append(ref)   # it stopped matching meanwhile: make sure it is gone
                continue
            shown = self._shown(doc)
            if shown is None:
                if ref in self.uncertain:
                    leaves.append(ref)
                continue
            enters.append(shown)
            entered.append(ref)
        self.boot_sent += len(refs) + len(leaves)
        if enters or leaves:
            self._send_view(entered, enters, leaves, self.boot_version or 0,
                            Progress(self.boot_sent, max(self.boot_total, self.boot_sent)))
        self.router.unwatch(self, watched)
        if not self.enter_todo and not self.leave_todo and self.boot_version is not None:
            self.outbox.append(SubscriptionState(self.boot_set_id, self.boot_version,
                                                 SubscriptionStatus.COMPLETE))
            self.boot_version = None

    def _send_view(self, entered: Sequence[Ref], enters: Sequence[SnapshotDoc], leaves: Sequence[Ref],
                   version: int, progress: Progress | None = None, *, inline: bool = False,
                   fold: bool = False) -> bool:
        """Persist, then queue, one ViewUpdate (worker thread; ``inline``: on the event loop,
        doing nothing and returning False when the view store is busy). ``fold``: the view
        part of the ``Changes`` the read that decided it is about to send (:meth:`attach`)."""
        if fold and self.folded is not None:
            self._unfold()  # (not expected: each read's part goes with its own Changes)
        vs = self._next_view_seq()
        changes = [(ref, 1, vs) for ref in entered] + [(ref, 0, vs) for ref in leaves]
        if not self._persist(changes, blocking=not inline):
            self.view_seq -= 1
            return False
        self.router.hold(self, entered)
        self.router.release(self, leaves)
        for ref in entered:
            self.uncertain.discard(ref)
            self.left.discard(ref)
        for ref in leaves:
            self.uncertain.discard(ref)
            self.left.add(ref)
        self.sent_docs += len(enters)
        self.sent_leaves += len(leaves)
        leave_keys = tuple((c, json.loads(pk)) for c, pk in leaves)
        if fold:
            # Acknowledged by the Changes' Ack: no ViewAck, and not in the bootstrap's window.
            self.folded = ViewPart(vs, tuple(enters), leave_keys)
            return True
        self.unacked.append(vs)
        self.outbox.append(ViewUpdate(vs, version, tuple(enters), leave_keys, progress or Progress()))
        return True

    def attach(self, message: Message) -> Message:
        """``message`` with the pending view part (:attr:`folded`) when it is the ``Changes``
        it belongs to (event loop, before :meth:`pump` sends the earlier view updates)."""
        part = self.folded
        if part is None or type(message) is not Changes:
            return message
        self.folded = None
        return message.with_view(part)

    def _unfold(self) -> None:
        """A view part no ``Changes`` took goes out as a ``ViewUpdate`` (in view_seq order)."""
        part = self.folded
        if part is not None:
            self.folded = None
            self.outbox.append(ViewUpdate(part.view_seq, 0, part.enter, part.leave))

    # -- messages -------------------------------------------------------------------------

    async def on_message(self, message: Message) -> None:
        if isinstance(message, Subscribe):
            await asyncio.to_thread(self.subscribe, message)
            self.schedule()
        elif isinstance(message, ViewAck):
            self.view_acked(message)

    def view_acked(self, message: ViewAck) -> None:
        """The device applied the view updates up to ``message.view_seq`` (event loop)."""
        while self.unacked and self.unacked[0] <= message.view_seq:
            self.unacked.popleft()
        self.schedule()

    def pump(self) -> None:
        """Send what is queued, in order, when the connection allows it (event loop)."""
        self._unfold()
        self.schedule()
        link = self.server.link
        while self.outbox:
            message = self.outbox[0]
            if not link.can_send(message):
                return
            self.outbox.popleft()
            link.send(message)

    # -- waking ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Make the session read the log (event loop; see :meth:`Router.announce`): at once,
        from here, when its task is idle and the read needs no storage (the router's round
        then reads, encodes and sends for every session it woke without a task switch each),
        else through its task."""
        if self._closed:
            return
        try:
            if self.server._stream_now():
                return
        except Exception:  # noqa: BLE001 - the session's task reads again
            log.exception("streaming to %s failed", self.peer)
            self.held_back = False   # (rows it wrote meanwhile are written with the batch)
        self.server._inbox.put_nowait(("commit", None))

    def wants_log(self) -> bool:
        """Whether a commit wake should make the replicator read the log now: an entry
        routed by the last round concerns this device, it is still catching up, or the
        router's debounced advance woke it (see :meth:`Router.announce`)."""
        if not self.registered:
            # Not connected to the router yet (its Hello is being handled): the read
            # catches up by itself.
            return True
        if self.relevant or self.resync or self.read_to < self.routed_from:
            return True
        if self.advance_now:
            self.advance_now = False
            return True
        self.router.pending.discard(self)
        return False

    # -- routing (the replicator's ReadLog for this peer; worker thread) -------------------

    def read_log(self, after: int, limit: int, max_bytes: int, exclude_origin: Any) -> LogBatch:
        try:
            return self._read_log(after, limit, max_bytes, exclude_origin)
        finally:
            self.router.pending.discard(self)

    def _read_log(self, after: int, limit: int, max_bytes: int, exclude_origin: Any) -> LogBatch:
        backend = self.backend
        if self._first_read:
            self._first_read = False
            head = backend.head_seq()
            if after < head and _needs_snapshot(backend, after, exclude_origin):
                # First contact (the server bootstraps from states, not history), or the log
                # the device needs was compacted away: the view computed at connection covers
                # the log up to ``routed_from``, so the checkpoint jumps there. What the device
                # held before may be stale: it is sent again whole (read after the jump) or
                # removed.
                if self.held:
                    self._resync()
                if after < self.routed_from:
                    self.read_to = self.routed_from
                    return LogBatch((), self.routed_from, max(self.routed_from, head), 0)
        elif self.resync:
            # Compacted while connected (rare): jump to the head, settle every held document.
            self.resync = False
            processed = self.router.catch_up()
            self._resync()
            with self.router.lock:
                self.relevant.clear()
            self.read_to = max(after, processed)
            return LogBatch((), self.read_to, self.read_to, 0)
        # Up to what the router has routed: routing new commits is the next round's work
        # (Router.announce), which is what gathers them into one read per round.
        processed = self.router.processed_to
        if processed < after:
            processed = self.router.catch_up()
        if after < self.routed_from:
            return self._read_slow(after, min(self.routed_from, processed), limit, max_bytes, exclude_origin)
        seqs, truncated = self._relevant_after(after, processed, limit)
        if not seqs and self.router._round_task is None and backend.head_seq() > processed:
            # Nothing routed for us yet, but the log moved on and no routing round is on its
            # way (a commit that announced nothing): route it now.
            processed = self.router.catch_up()
            seqs, truncated = self._relevant_after(after, processed, limit)
        upto = seqs[-1] if truncated else processed
        routed: list[_Routed] = []
        for seq in seqs:
            r = self.router.routed(seq)
            if r is None:
                r = _load_routed(backend, seq)
            if r is None:
                self.resync = True   # compacted away before this session read it
                continue
            routed.append(r)
        batch = self._judge(routed, after, upto, limit, max_bytes, exclude_origin)
        assert batch is not None
        with self.router.lock:
            while self.relevant and self.relevant[0] <= batch.scanned_to:
                self.relevant.popleft()
        self.read_to = batch.scanned_to
        return batch

    def read_inline(self, after: int, limit: int, max_bytes: int, exclude_origin: Any) -> LogBatch | None:
        """:meth:`read_log` on the event loop, when it needs no backend read: the router has
        routed every entry committed so far and still holds them, and the states of documents
        entering the view (:attr:`Router.full`). Documents entering or leaving write their view
        rows from here (a small commit to ``flexible.db``, unless another thread is writing
        there) and queue their ViewUpdate, which goes out before the changes. None: read in a
        worker thread.

        A thread hop per session and per routing round costs more than such a read, and with
        hundreds of sessions woken by one commit the hops queue behind each other."""
        router = self.router
        if (self._first_read or self.resync or after < self.routed_from
                or router.processed_to < after or self.rules is not None):
            return None
        # Worker threads hold the router's lock only briefly (a session's bookkeeping, or the
        # routing of a batch): waiting a moment costs less than a worker-thread read.
        if not router.lock.acquire(timeout=self.INLINE_LOCK_WAIT):
            return None      # the router is busy routing in a worker thread
        try:
            processed = router.processed_to
            seqs, truncated = self._relevant_after(after, processed, limit)
            if not seqs:
                # Nothing for this device up to what the router has routed (the debounced
                # advance): only its checkpoint moves, unless the log moved on unrouted with no
                # round on its way (then _read_log routes it in a worker thread).
                if router._round_task is None and not self._routed_all(processed):
                    return None
                self.read_to = max(after, processed)
                router.pending.discard(self)
                return LogBatch((), self.read_to, self.read_to, 0)
            routed: list[_Routed] = []
            for seq in seqs:
                r = router.cache.get(seq)
                if r is None:
                    return None
                routed.append(r)
            batch = self._judge(routed, after, seqs[-1] if truncated else processed, limit, max_bytes,
                                exclude_origin, inline=True)
            if batch is None:
                return None
            while self.relevant and self.relevant[0] <= batch.scanned_to:
                self.relevant.popleft()
        finally:
            router.lock.release()
        self.read_to = batch.scanned_to
        router.pending.discard(self)
        return batch

    def _routed_all(self, processed: int) -> bool:
        """Whether the backend's head is ``processed``, found without waiting for its lock
        (False when it is busy)."""
        with self.backend.unless_busy() as free:
            return free and self.backend.head_seq() <= processed

    def _relevant_after(self, after: int, processed: int, limit: int) -> tuple[list[int], bool]:
        seqs: list[int] = []
        truncated = False
        with self.router.lock:
            while self.relevant and self.relevant[0] <= after:
                self.relevant.popleft()
            for seq in self.relevant:
                if seq > processed:
                    break
                if len(seqs) >= limit:
                    truncated = True
                    break
                if not seqs or seq != seqs[-1]:
                    seqs.append(seq)
        return seqs, truncated

    def _resync(self) -> None:
        self.uncertain |= self.held
        self.router.release(self, list(self.held))
        self._replan(self.boot_set_id, self.version)

    def _read_slow(self, after: int, upto: int, limit: int, max_bytes: int, exclude_origin: Any) -> LogBatch:
        """Entries the router did not route for this session (it connected later): read and
        judged here."""
        backend = self.backend
        with backend._lock:
            rows = backend._engine.query(
                "SELECT seq, origin, via, data FROM log WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after, upto, max(1, min(limit, 500))))
        routed = [_Routed(seq, origin, via, Transaction.from_stored(msgpack.unpackb(data, raw=False), data), len(data))
                  for seq, origin, via, data in rows
                  if not (exclude_origin is not None and (origin == exclude_origin or via == exclude_origin))]
        last = rows[-1][0] if rows and len(rows) >= max(1, min(limit, 500)) else upto
        states = read_states(backend, {ref for r in routed for ref in r.refs})
        for r in routed:
            for ref in r.refs:
                r.states[ref] = states.get(ref, (False, None))
        batch = self._judge(routed, after, last, limit, max_bytes, exclude_origin)
        assert batch is not None
        self.read_to = batch.scanned_to
        return batch

    def _judge(self, routed: Sequence[_Routed], after: int, upto: int, limit: int, max_bytes: int,
               exclude_origin: Any, inline: bool = False) -> LogBatch | None:
        """Decide stays / enters / leaves for a batch and build what the device gets.

        ``inline``: on the event loop; returns None, having changed nothing, when the batch
        needs storage (a document enters or leaves the view)."""
        decisions: dict[Ref, str] = {}
        # Each document is judged once per batch, on the newest state the router saw for it
        # (entries read later carry fresher states): judging on an older one could send
        # operations that take the document out of the view and keep it, or skip those that
        # bring it in.
        # The last entry of the batch touching each document: its state there, and the router's
        # verdicts on that state (a routed entry has them for each of its states; one read and
        # judged here has none).
        last: dict[Ref, _Routed] = {}
        for r in routed:
            one = r.one_ref
            if one is not None:
                last[one] = r
            else:
                for ref in r.refs:
                    last[ref] = r
        # Routed with this session's queries in the router's index (and every state has its
        # verdicts): a query without a verdict cannot match (see matches_subs). Not for a batch
        # reaching back before the session's queries were indexed (a new subscription set).
        floor = self.indexed_at
        complete = (floor is not None and self.indexed_of is self.subs
                    and (not routed or routed[0].seq > floor))
        entries: list[tuple[int, Transaction]] = []
        nbytes = 0
        scanned = upto
        decide = self._decide
        filtered = self.reader is not None
        # Without read rules, a document with the router's complete verdicts is decided here
        # (as _decide would: the usual case, one per entry read), and what enters or leaves
        # is listed on the way.
        fast = complete and self.rules is None
        uncertain, held_set = self.uncertain, self.held
        keys_of = self.keys_by_coll
        enter: list[Ref] = []
        leave: list[Ref] = []
        for r in routed:
            if entries and (nbytes >= max_bytes or len(entries) >= limit):
                scanned = r.seq - 1
                break
            if exclude_origin is not None and (r.origin == exclude_origin or r.via == exclude_origin):
                continue
            # Most entries are one document written once: decided by ref, and the transaction
            # sent as it is when every document in it stays.
            one = r.one_ref
            refs = r.refs if one is None else (one,)
            stays = 0
            for ref in refs:
                d = decisions.get(ref)
                if d is None:
                    lr = last[ref]
                    verdicts = lr.one_verdicts
                    if verdicts is not None:
                        state = lr.one_state
                    else:
                        verdicts = lr.verdicts.get(ref) if lr.verdicts else None
                        state = lr.states.get(ref, _GONE)
                    if not fast or verdicts is None or ref in uncertain:
                        d = decide(ref, state, verdicts, complete)
                    else:
                        live, body = state
                        if not live:
                            d = STAY if ref in held_set else SKIP
                        elif body is None:
                            d = LEAVE if ref in held_set else SKIP
                        else:
                            matched = False
                            for key in keys_of.get(ref[0], ()):
                                if verdicts.get(key):
                                    matched = True
                                    break
                            if ref in held_set:
                                d = STAY if matched else LEAVE
                            else:
                                d = ENTER if matched else SKIP
                    decisions[ref] = d
                    if d is ENTER:
                        enter.append(ref)
                    elif d is LEAVE:
                        leave.append(ref)
                if d is STAY:
                    stays += 1
            mine = r.comp_for is not None and r.comp_for == self.peer
            if not stays and not mine:
                continue
            txn = r.txn
            if stays != len(refs):
                kept = tuple(op for op, ref in zip(txn.ops, refs, strict=True) if decisions[ref] is STAY)
                keep_refs = {ref for ref in refs if decisions[ref] is STAY}
                before = tuple(b for b in txn.before if doc_ref(b.collection, b.key) in keep_refs)
                txn = Transaction(txn.id, txn.origin, txn.stamp, txn.parents, kept, before, txn.user, txn.meta)
            if filtered and (self.rules is not None or r.has_meta):
                shown = self.reader.filter_transaction(txn, exclude_origin)
                if shown is None:
                    continue
                txn = shown
                if mine:
                    # Operations the compensation adds for this device only: a delete is safe on
                    # a document it may not hold; anything else only on one it holds.
                    ops = tuple(op for op in txn.ops if isinstance(op, DeleteDoc)
                                or doc_ref(op.collection, op.key) in self.held)
                    if not ops:
                        continue
                    if len(ops) != len(txn.ops):
                        txn = Transaction(txn.id, txn.origin, txn.stamp, txn.parents, ops, txn.before, txn.user,
                                          txn.meta)
            if not txn.ops:
                continue
            entries.append((r.seq, txn))
            nbytes += r.size
        if (enter or leave) and not self._apply_decisions(decisions, inline, enter, leave):
            return None
        return LogBatch(tuple(entries), max(after, scanned), max(after, upto, scanned), nbytes)

    def _decide(self, ref: Ref, state: tuple[bool, dict[str, Any] | None],
                verdicts: dict[str, bool] | None = None, complete: bool = False) -> str:
        if ref in self.uncertain:
            return SKIP          # settled by the bootstrap work list (sent whole, or removed)
        live, body = state
        held = ref in self.held
        if held and not live:
            # A deleted document stays in the view (as a tombstone): the device gets the
            # delete itself, and a re-create if there is one.
            return STAY
        if not live or body is None:
            return LEAVE if held else SKIP
        matched = self.matches(ref[0], body, verdicts, complete)
        if held:
            return STAY if matched else LEAVE
        return ENTER if matched else SKIP

    #: At most this many documents in :attr:`Router.entering` (then it starts again).
    ENTERING_MAX = 4096

    def _entering(self, refs: Sequence[Ref]) -> list[tuple[Ref, SnapshotDoc, dict[str, Any], dict[str, bool]]]:
        """For documents entering the view (after :meth:`Router.watch`), live ones only, in
        order: each one's full merge state as of the last routed entry
        (:meth:`Router.states_of`), its body parsed, and the verdicts of queries already
        tested on that body (to be noted there, :meth:`_matches_noting`). Made once per state
        for all sessions (:attr:`Router.entering`), as long as :attr:`Router.full` holds that
        very state; the backend read for those it no longer holds."""
        router = self.router
        out: list[tuple[Ref, SnapshotDoc, dict[str, Any], dict[str, bool]]] = []
        missing: list[Ref] = []
        with router.lock:
            known, cache = router.full, router.entering
            for ref in refs:
                got = known.get(ref)
                if got is None:
                    missing.append(ref)
                    continue
                hit = cache.get(ref)
                if hit is None or hit[0] is not got:
                    if len(cache) >= self.ENTERING_MAX:
                        cache.clear()
                    doc = SnapshotDoc.from_json_form(ref[0], json.loads(ref[1]), got[0], True, got[1], got[2])
                    hit = cache[ref] = (got, doc, loads_json(got[1]), {})
                out.append((ref, hit[1], hit[2], hit[3]))
        if missing:
            docs = read_full(self.backend, missing)
            order = {ref: i for i, ref in enumerate(refs)}
            out.extend((ref, doc, doc.state["body"], {}) for ref, doc in docs.items())
            out.sort(key=lambda x: order[x[0]])
        return out

    def _matches_noting(self, collection: str, body: dict[str, Any], verdicts: dict[str, bool]) -> bool:
        """:meth:`matches` on ``body``, taking the verdicts of queries already tested on it by
        key and noting there those it tests (for the next session with the same query)."""
        subs = self.by_coll.get(collection, ())
        if verdicts and any(map(verdicts.get, self.keys_by_coll.get(collection, ()))):
            return self.readable(collection, body)   # (a shared query another session tested)
        for sub in subs:
            ok = verdicts.get(sub.key)
            if ok is None:
                try:
                    ok = bool(sub.predicate(body))
                except Exception:  # noqa: BLE001 - a predicate never raises on plain data; be safe
                    log.exception("subscription predicate failed")
                    continue
                verdicts[sub.key] = ok
            if ok:
                return self.readable(collection, body)
        return False

    def _apply_decisions(self, decisions: dict[Ref, str], inline: bool = False,
                         enter: list[Ref] | None = None, leave: list[Ref] | None = None) -> bool:
        """Let documents enter or leave the view (a ViewUpdate). ``inline``: on the event loop,
        the router's lock held (no entry is routed meanwhile); False, having changed nothing,
        when that needs storage other than the view rows (a state the router no longer holds)
        or the view store is busy. ``enter``, ``leave``: the refs ``decisions`` says enter and
        leave, in its order, when the caller listed them."""
        if enter is None or leave is None:
            enter = [ref for ref, d in decisions.items() if d == ENTER]
            leave = [ref for ref, d in decisions.items() if d == LEAVE]
        if not enter and not leave:
            return True
        if inline:
            known = self.router.full
            if any(ref not in known for ref in enter):
                return False
        watched = self.router.watch(self, enter)
        entered: list[Ref] = []
        enters: list[SnapshotDoc] = []
        for ref, doc, body, verdicts in self._entering(enter) if enter else ():
            # Tested again on the state that is sent (only the body: its meta is sent as the
            # JSON text it is, never parsed).
            if not self._matches_noting(ref[0], body, verdicts):
                continue         # changed again since the router looked: a later entry decides
            shown = self._shown(doc)
            if shown is not None:
                entered.append(ref)
                enters.append(shown)
        done = True
        if entered or leave:
            done = self._send_view(entered, enters, leave, 0, inline=inline, fold=self.fold)
        self.router.unwatch(self, watched)
        return done

    # -- uploads (FlexibleEnforcer; worker thread) ------------------------------------------

    def write_allowed(self, collection: str, key: Plain, before: merge.DocState, after: merge.DocState) -> bool:
        ref = doc_ref(collection, key)
        if ref in self.held or ref in self.uncertain or ref in self.left:
            return True
        if before.live and self.matches_subs(collection, before.body):
            return True
        return after.live and self.matches_subs(collection, after.body)

    def after_upload(self, refs: set[Ref], existed: set[Ref], refused: Sequence[CompensatedWrite]) -> None:
        """The device's own writes may move documents in or out of its view."""
        if not refs:
            return
        refused_refs = {doc_ref(w.collection, w.key) for w in refused}
        watched = self.router.watch(self, refs)
        try:
            self._after_upload(refs, existed, refused_refs)
        finally:
            self.router.unwatch(self, watched)

    def _after_upload(self, refs: set[Ref], existed: set[Ref], refused_refs: set[Ref]) -> None:
        states = self.router.states_now(refs)
        silent: list[Ref] = []
        enter: list[Ref] = []
        leave: list[Ref] = []
        for ref in sorted(refs):
            if ref in self.uncertain:
                continue
            live, body = states.get(ref, (False, None))
            m = live and self.matches(ref[0], body)
            if ref in self.held:
                if live and not m:
                    leave.append(ref)
            elif m:
                if ref not in existed and ref not in refused_refs and ref not in self.left:
                    silent.append(ref)     # the device created it: it has it exactly
                else:
                    enter.append(ref)
            else:
                leave.append(ref)          # a copy the device may keep outside its view
        if silent:
            self._persist([(ref, 1, 0) for ref in silent])
            self.router.hold(self, silent)
            for ref in silent:
                self.left.discard(ref)
        if enter or leave:
            docs = read_full(self.backend, enter) if enter else {}
            shown = [(ref, self._shown(docs[ref])) for ref in enter if ref in docs]
            entered = [(ref, d) for ref, d in shown if d is not None]
            self._send_view([ref for ref, _ in entered], [d for _, d in entered if d is not None], leave, 0)

    def existing(self, refs: set[Ref]) -> set[Ref]:
        """Which of ``refs`` the backend has ever seen (live or tombstone)."""
        out: set[Ref] = set()
        by_coll: dict[str, list[str]] = {}
        for coll, pk in refs:
            by_coll.setdefault(coll, []).append(pk)
        with self.backend._lock:
            for coll, pks in by_coll.items():
                for i in range(0, len(pks), 500):
                    chunk = pks[i:i + 500]
                    out.update((coll, r[0]) for r in self.backend._engine.query(
                        f"SELECT pk FROM documents WHERE collection = ? AND pk IN ({','.join('?' * len(chunk))})",
                        [coll, *chunk]))
        return out

    def describe(self) -> str:
        if not self.subs:
            return "it has no subscriptions"
        return "its subscriptions: " + "; ".join(
            f"{s.name or '(unnamed)'}: {s.collection} where {s.text}" for s in self.subs[:5]) + (
            "; ..." if len(self.subs) > 5 else "")


def _set_id(req: dict[str, Any]) -> int:
    v = req.get("set_id", 1)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 1


def _needs_snapshot(backend: Database, after: int, exclude_origin: Any) -> bool:
    """Whether the backend would bootstrap this peer from states (first contact, or its log
    after ``after`` was compacted away) rather than send its log."""
    return backend.read_log(after, limit=1, max_bytes=1, scope={}, exclude_origin=exclude_origin).snapshot_required


def _load_routed(backend: Database, seq: int) -> _Routed | None:
    with backend._lock:
        rows = backend._engine.query("SELECT seq, origin, via, data FROM log WHERE seq = ?", (seq,))
    if not rows:
        return None
    s, origin, via, data = rows[0]
    r = _Routed(s, origin, via, Transaction.from_stored(msgpack.unpackb(data, raw=False), data), len(data))
    states = read_states(backend, set(r.refs))
    for ref in r.refs:
        r.states[ref] = states.get(ref, (False, None))
    return r


class _FlexibleReader:
    """The backend as a flexible session reads it: the log through the view (routing); every
    other call goes to the rules' per-session reader."""

    def __init__(self, flexible: FlexibleSession, inner: Any) -> None:
        self._flexible = flexible
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read_log(self, after: int, *, limit: int, max_bytes: int, scope: Scope, exclude_origin: Any) -> LogBatch:
        return self._flexible.read_log(after, limit, max_bytes, exclude_origin)

    def read_descriptors(self, after: int, *, limit: int, scope: Scope, exclude_origin: Any) -> Any:
        from ..protocol.replica import DescriptorBatch

        return DescriptorBatch((), after, after)


class FlexibleEnforcer(Enforcer):
    """The rules engineer's upload checks plus flexible sync's: a write to a document outside
    every subscription of the writer is refused (code ``outside_subscriptions``) unless the
    config accepts it; after each upload the writer's view follows its own writes."""

    def __init__(self, state: ServerState, rules: Any, partition: Any = None, has_partition: bool = False, *,
                 flexible: FlexibleSession) -> None:
        super().__init__(state, rules, partition, has_partition)
        self.flexible = flexible
        self.full = True  # judge every document by its effect (the base class's full path)
        # The documents of the batch being integrated, and those of them the backend held
        # before it (live or tombstone): found by the batch's one read (_preloaded).
        self._refs: set[Ref] = set()
        self._existed: set[Ref] = set()

    def _preloaded(self, txns: Sequence[Transaction], pre: Any) -> None:
        refs = self._refs
        if not refs:
            return
        # The preload holds the scope of every touched document the file holds; without it
        # (a malformed operation, which the integration then reports) they are read here.
        self._existed = refs & pre.scopes.keys() if pre is not None else self.flexible.existing(refs)

    def decide(self, collection: str, key: Plain, before: merge.DocState, after: merge.DocState) -> Verdict | None:
        verdict = super().decide(collection, key, before, after)
        flex = self.flexible
        if verdict is not None or flex.config.accept_writes_outside_subscriptions:
            return verdict
        if before.live == after.live and before.epoch == after.epoch and (not after.live or before.body == after.body):
            return None
        if flex.write_allowed(collection, key, before, after):
            return None
        operation = "create" if not before.live else "delete" if not after.live else "update"
        return Verdict(operation, "outside_subscriptions",
                       f"{collection} {key!r} is outside every subscription of this device ({flex.describe()}); "
                       "as in Device Sync, a device may only write documents its subscriptions match")

    def integrate(self, txns: Sequence[Transaction], peer: str, peer_seq: int, *,
                  wait: bool = True) -> tuple[Any, list[CompensatedWrite], bool]:
        refs = {doc_ref(op.collection, op.key) for t in txns for op in t.ops}
        self._refs, self._existed = refs, set()
        try:
            result, refused, compensated = super().integrate(txns, peer, peer_seq, wait=wait)
            existed = self._existed
        finally:
            self._refs = self._existed = set()
        try:
            self.flexible.after_upload(refs, existed, refused)
        except Exception:  # noqa: BLE001 - never lose an integration over view bookkeeping
            log.exception("updating the view of %s after its upload failed", peer)
        return result, refused, compensated


# ----------------------------------------------------------------------------- admission


def admit_flexible(server: Any, hello: Hello) -> SyncError | None:
    """Check a flexible ``Hello`` and set ``server.flexible`` (a :class:`FlexibleSession`).
    Returns the error to fail the connection with, if any."""
    config = config_for(server.state)
    if config is None:
        return PermissionDeniedError("flexible sync is not enabled on this server",
                                     code=ErrorCode.BAD_SCOPE, advice="enable [sync.flexible] in tidesync.toml")
    items = hello.scope.get("subscriptions") or []
    requested: dict[str, Any] = {}
    if items:
        if len(items) != 1 or not isinstance(items[0], dict):
            return PermissionDeniedError("a flexible scope holds one subscription set",
                                         code=ErrorCode.BAD_SCOPE)
        requested = items[0]
        for key in ("version", "view_seq"):
            v = requested.get(key, 0)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                return PermissionDeniedError(f"subscription set {key} must be an int >= 0", code=ErrorCode.BAD_SCOPE)
        if not isinstance(requested.get("queries", []), list):
            return PermissionDeniedError("subscription set queries must be a list", code=ErrorCode.BAD_SCOPE)
    server.flexible = FlexibleSession(server, config, hello.replica_id, requested)
    server.flexible.fold = FEATURE_CHANGES_VIEW in hello.features
    return None

