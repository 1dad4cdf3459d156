"""Flexible sync on the device: query subscriptions, their versions and states, the view.

A database opened with ``SyncConfig(user=..., flexible=True)`` syncs exactly the documents
that match its *subscriptions* (and that its user may read)::

    with db.subscriptions.update() as subs:
        subs.add(db.objects(WorkOrder).filter("status == $0", "open"), name="open-orders")
    db.subscriptions.wait_for_synchronization(timeout=10)

**Versions.** Every ``update()`` block that changes something commits a new *version* of the
subscription set (1, 2, 3...; version 0 is the empty set a fresh file starts with). Each
version is persisted in the file's ``subscriptions`` table with its state, so sets survive a
restart, and goes through Device Sync's states:

``pending``        committed here, not yet acknowledged by the server
``bootstrapping``  the server is sending what the new set adds (and removing what it drops)
``complete``       everything the set asks for (and the user may read) is here
``error``          the server cannot serve the set (``.error`` says why); it keeps serving the
                   previous good set, so the device keeps its data and its other subscriptions
``superseded``     a newer version replaced this one before it completed, or after

**The view.** The server decides which documents the device holds (its *view*) and sends
``ViewUpdate`` messages: documents entering the view arrive whole (merged into what the device
has), documents leaving it are removed from the file *without being deleted* (no delete is
logged or uploaded). Each update is applied in one local transaction together with its number
(``view_seq``, in the ``settings`` table), which the next connection's ``Hello`` names, so a
reconnection (or a restart in the middle of a bootstrap) re-sends only what may have been lost.
Documents a routed change moves in or out come instead as the ``view`` part of the ``Changes``
that carries the change (feature ``changes_view``), applied in the batch's own transaction.
Changing subscriptions is incremental: documents already here are not downloaded again.

Threads: the app calls the public API on any thread; the sync session thread calls
:meth:`Subscriptions._on_message` and friends. One condition variable guards the state.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from ..core.stamp import ReplicaId
from ..errors import ConnectionClosedError, SubscriptionError, TimeoutError, UsageError
from ..protocol.actions import DOWNLOAD, Action, ReportProgress, Send
from ..protocol.messages import (
    Message, Subscribe, SubscriptionQuery, SubscriptionState, ViewAck, ViewPart, ViewUpdate,
)
from ..query import And, Node, Query, TruePredicate, node_from_json, node_to_json, to_rql
from ..query.ast import (Between, Compare, CompareFields, Count, DictPart, Exists, In, Not, Or, Path, Quantified, StringOp,
                         SubqueryCount, TypeOf)

if TYPE_CHECKING:
    from ..store.database import Database
    from ..store.results import Results

__all__ = ["Subscription", "SubscriptionSet", "MutableSubscriptionSet", "Subscriptions", "SubscriptionError",
           "SET_ID", "query_paths", "field_comparison_in", "subquery_in", "VIEW_SEQ_SETTING"]

#: The id of a device's subscription set on the wire (one set per file).
SET_ID = 1
#: The ``settings`` key holding the number of the last ViewUpdate applied.
VIEW_SEQ_SETTING = "flexible_view_seq"

State = Literal["pending", "bootstrapping", "complete", "error", "superseded"]
WaitFor = Literal["first_time", "always", "never"]


def _leaves(node: Node) -> Iterator[Any]:
    """The leaf tests of a query node: what And, Or, Not and quantifiers hold, depth first."""
    stack: list[Any] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (And, Or)):
            stack.extend(n.items)
        elif isinstance(n, Not):
            stack.append(n.item)
        elif isinstance(n, Quantified):
            stack.append(n.predicate)
        else:
            yield n


def query_paths(node: Node) -> Iterator[tuple[Path, bool]]:
    """Every key path a query node reads, with whether it is counted (``@count``/``@size``)."""
    for n in _leaves(node):
        if isinstance(n, (Compare, In, Between, StringOp)):
            left = n.left
            if isinstance(left, Count):
                yield left.path, True
            elif isinstance(left, (DictPart, TypeOf)):
                yield left.path, False
            else:
                yield left, False
        elif isinstance(n, Exists):
            yield n.path, False
        elif isinstance(n, CompareFields):
            yield n.left, False
            yield n.right, False


def field_comparison_in(node: Node) -> CompareFields | None:
    """The first comparison of two fields in a query node (``price > cost``), if any: the
    server matches subscriptions without a schema, so it cannot serve one."""
    return next((n for n in _leaves(node) if isinstance(n, CompareFields)), None)


def subquery_in(node: Node) -> SubqueryCount | None:
    """The first ``SUBQUERY(...)`` in a query node, if any: as in Device Sync, flexible sync
    cannot subscribe with one (the server matches documents one at a time, without links)."""
    return next((n.left for n in _leaves(node)
                 if isinstance(n, (Compare, In, Between)) and isinstance(n.left, SubqueryCount)), None)


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Subscription:
    """One query subscription: a name (None: unnamed), a model and a bound query.

    Attributes:
        name: the name given to ``add`` (unnamed subscriptions are identified by their query).
        object_type: the model's (collection's) name.
        query: the bound query (:class:`tidesync.query.Query`).
        query_string: the query as RQL text, for display.
        created_at, updated_at: when it was added and last changed (UTC).
    """

    name: str | None
    object_type: str
    query: Query
    query_string: str
    created_at: datetime
    updated_at: datetime

    def same_query(self, object_type: str, query: Query) -> bool:
        return self.object_type == object_type and self.query.node == query.node

    def to_wire(self) -> SubscriptionQuery:
        return SubscriptionQuery(self.name or "", self.object_type, self.query_string,
                                 node_to_json(self.query.node))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "collection": self.object_type, "ast": node_to_json(self.query.node),
                "text": self.query_string, "created": self.created_at.timestamp(),
                "updated": self.updated_at.timestamp()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Subscription:
        node = node_from_json(data["ast"])
        return cls(data.get("name"), data["collection"], Query(node, data.get("text")), data.get("text") or "",
                   datetime.fromtimestamp(data["created"], timezone.utc),
                   datetime.fromtimestamp(data["updated"], timezone.utc))

    def __repr__(self) -> str:
        return f"<Subscription {self.name or '(unnamed)'}: {self.object_type} where {self.query_string}>"


def _describe(node: Node) -> str:
    try:
        text, args = to_rql(node)
    except Exception:  # noqa: BLE001 - display only
        return repr(node)
    if args:
        text += "  with " + ", ".join(f"${i} = {a!r}" for i, a in enumerate(args))
    return text


class SubscriptionSet:
    """One version of the subscription set (read-only). ``db.subscriptions`` is the latest one;
    ``update()`` yields a :class:`MutableSubscriptionSet` that becomes the next."""

    def __init__(self, owner: Subscriptions, version: int, subs: Sequence[Subscription]) -> None:
        self._owner = owner
        self._version = version
        self._subs: list[Subscription] = list(subs)

    @property
    def version(self) -> int:
        """This set's version (0: the empty set a new file starts with)."""
        return self._version

    @property
    def state(self) -> State:
        """``pending``, ``bootstrapping``, ``complete``, ``error`` or ``superseded``."""
        return self._owner._state_of(self._version)[0]

    @property
    def error(self) -> str | None:
        """Why the server refused this set (state ``error``), else None."""
        return self._owner._state_of(self._version)[1]

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._subs))

    def __len__(self) -> int:
        return len(self._subs)

    def __contains__(self, item: object) -> bool:
        return any(s is item or s == item for s in self._subs)

    def find(self, results_or_name: Results[Any] | str) -> Subscription | None:
        """The subscription with this name, or the (named or unnamed) one with the query of
        these results; None when there is none."""
        if isinstance(results_or_name, str):
            return next((s for s in self._subs if s.name == results_or_name), None)
        object_type, query = _query_of(results_or_name)
        return next((s for s in self._subs if s.same_query(object_type, query)), None)

    def wait_for_synchronization(self, timeout: float | None = None) -> None:
        """Block until this set is ``complete`` (or ``superseded`` by a newer one).

        Raises:
            SubscriptionError: the server put the set in the error state.
            tidesync.TimeoutError: not done within ``timeout`` seconds.
        """
        self._owner._wait_version(self._version, timeout)

    def __repr__(self) -> str:
        return f"<SubscriptionSet v{self._version} {self.state}: {len(self._subs)} subscriptions>"


class MutableSubscriptionSet(SubscriptionSet):
    """The set inside ``with db.subscriptions.update() as subs:``. Changes commit together
    as a new version when the block ends (nothing is committed if it raises)."""

    def __init__(self, owner: Subscriptions, version: int, subs: Sequence[Subscription]) -> None:
        super().__init__(owner, version, subs)
        self._open = True
        self._changed = False

    def _check(self) -> None:
        if not self._open:
            raise UsageError("this subscription set was committed; open db.subscriptions.update() again")

    def add(self, results: Results[Any], name: str | None = None, update_existing: bool = False) -> Subscription:
        """Subscribe to ``results`` (a query on one model: ``db.objects(M).filter(...)``).

        Args:
            results: what to sync. Filters combine with AND; ``sort`` does not matter here and
                ``limit`` is not allowed.
            name: a name to find, update or remove it by. Without a name, the query itself
                identifies the subscription (adding the same query twice keeps one).
            update_existing: with a ``name`` that exists for another query, replace that query
                (else ``UsageError``).

        Returns:
            The subscription (the existing one if nothing changed).
        """
        self._check()
        object_type, query = _query_of(results, self._owner._db)
        now = _now()
        text = _describe(query.node)
        if name is not None:
            for i, s in enumerate(self._subs):
                if s.name != name:
                    continue
                if s.same_query(object_type, query):
                    return s
                if not update_existing:
                    raise UsageError(f"a subscription named {name!r} already exists for another query "
                                     f"({s.object_type} where {s.query_string})",
                                     advice="pass update_existing=True to replace its query, or pick another name")
                new = Subscription(name, object_type, query, text, s.created_at, now)
                self._subs[i] = new
                self._changed = True
                return new
        else:
            for s in self._subs:
                if s.name is None and s.same_query(object_type, query):
                    return s
        sub = Subscription(name, object_type, query, text, now, now)
        self._subs.append(sub)
        self._changed = True
        return sub

    def remove(self, name_or_results: str | Results[Any] | Subscription) -> bool:
        """Remove the subscription with this name, or the one(s) with this query (named or not),
        or this :class:`Subscription`. Returns whether something was removed."""
        self._check()
        before = len(self._subs)
        if isinstance(name_or_results, Subscription):
            self._subs = [s for s in self._subs if s != name_or_results]
        elif isinstance(name_or_results, str):
            self._subs = [s for s in self._subs if s.name != name_or_results]
        else:
            object_type, query = _query_of(name_or_results)
            self._subs = [s for s in self._subs if not s.same_query(object_type, query)]
        removed = len(self._subs) != before
        self._changed = self._changed or removed
        return removed

    def remove_all(self) -> int:
        """Remove every subscription; returns how many there were."""
        self._check()
        n = len(self._subs)
        self._subs = []
        self._changed = self._changed or n > 0
        return n

    def remove_by_model(self, model: type[Any]) -> int:
        """Remove every subscription on ``model``; returns how many."""
        self._check()
        name = getattr(model, "__name__", str(model))
        before = len(self._subs)
        self._subs = [s for s in self._subs if s.object_type != name]
        n = before - len(self._subs)
        self._changed = self._changed or n > 0
        return n


def _query_of(results: Any, db: Any = None) -> tuple[str, Query]:
    """(collection, bound query) of a Results object; checks what subscriptions allow."""
    cls = getattr(results, "_cls", None)
    queries = getattr(results, "_queries", None)
    if cls is None or queries is None:
        raise UsageError(f"subscriptions take query results (db.objects(Model).filter(...)), "
                         f"not {type(results).__name__}")
    if db is not None and getattr(results, "_db", db) is not db:
        raise UsageError("these results belong to another database")
    if getattr(results, "_limit", None) is not None:
        raise UsageError("a subscription cannot have a limit: it syncs every match",
                         advice="subscribe without limit() and limit the results you read")
    if getattr(results, "_distinct", None) is not None:
        raise UsageError("a subscription cannot have a DISTINCT: it syncs every match",
                         advice="subscribe without DISTINCT and apply it to the results you read")
    nodes = [q.node for q in queries]
    node: Node = TruePredicate() if not nodes else nodes[0] if len(nodes) == 1 else And(tuple(nodes))
    pair = field_comparison_in(node)
    if pair is not None:
        raise UsageError(f"a subscription cannot compare two fields ({pair.left} {pair.op} {pair.right}): "
                         f"the server matches documents without the models' types",
                         advice="subscribe with conditions on values, and filter the synced results by "
                                "comparing the fields")
    subquery = subquery_in(node)
    if subquery is not None:
        raise UsageError(f"a subscription cannot use {subquery} (as in Device Sync's flexible sync)",
                         advice="subscribe with conditions on the document's own fields, and filter the synced "
                                "results with the SUBQUERY")
    collection = cls.__name__
    schema = getattr(getattr(results, "_db", None), "schema", None)
    if schema is not None:
        from ..query.paths import resolve

        for path, _ in query_paths(node):
            steps = resolve(collection, schema, path.names)
            if steps[0].kind == "backlinks" or any(step.is_link for step in steps[:-1]):
                raise UsageError(f"subscriptions cannot follow links ({path}): the server matches "
                                 "documents one at a time", advice="query a field of the document itself")
    return collection, Query(node, _describe(node))


class Subscriptions:
    """``db.subscriptions``: the latest subscription set, its updates, states and waits."""

    def __init__(self, db: Database, *, on_change: Callable[[], None] | None = None) -> None:
        self._db = db
        self._cond = threading.Condition(threading.RLock())
        self._update_lock = threading.RLock()
        self._states: dict[int, tuple[State, str | None]] = {0: ("complete", None)}
        self._sets: dict[int, list[Subscription]] = {0: []}
        self._latest = 0
        self._sent_version = -1
        self._on_change = on_change
        self._closed = False
        #: What views brought on this database since it was opened: ``docs_received``
        #: (documents that entered, whole), ``docs_removed`` (left), ``updates`` (messages).
        self.stats = {"docs_received": 0, "docs_removed": 0, "updates": 0}
        self._load()

    # -- the latest set ---------------------------------------------------------------------

    def _latest_set(self) -> SubscriptionSet:
        with self._cond:
            return SubscriptionSet(self, self._latest, self._sets[self._latest])

    @property
    def version(self) -> int:
        """The latest set's version."""
        return self._latest

    @property
    def state(self) -> State:
        """The latest set's state: ``pending``, ``bootstrapping``, ``complete`` or ``error``."""
        return self._state_of(self._latest)[0]

    @property
    def error(self) -> str | None:
        """Why the server refused the latest set (state ``error``), else None."""
        return self._state_of(self._latest)[1]

    def __iter__(self) -> Iterator[Subscription]:
        return iter(self._latest_set())

    def __len__(self) -> int:
        return len(self._latest_set())

    def find(self, results_or_name: Results[Any] | str) -> Subscription | None:
        """The latest set's subscription with this name or this query (None: none)."""
        return self._latest_set().find(results_or_name)

    def state_of(self, version: int) -> State:
        """The state of an earlier (or the latest) version."""
        return self._state_of(version)[0]

    def __repr__(self) -> str:
        return f"<Subscriptions v{self._latest} {self.state}: {len(self)} subscriptions>"

    @contextmanager
    def update(self) -> Iterator[MutableSubscriptionSet]:
        """Change the subscriptions: ``with db.subscriptions.update() as subs: subs.add(...)``.

        The changes are committed as one new version when the block ends (durably, in the
        file) and sent to the server; nothing is committed if the block raises or changes
        nothing. Older versions still pending become ``superseded``.
        """
        with self._update_lock:
            base = self._latest_set()
            mutable = MutableSubscriptionSet(self, base.version, list(base))
            try:
                yield mutable
            finally:
                mutable._open = False
            if mutable._changed:
                mutable._version = self._commit(mutable._subs)
        if mutable._changed and self._on_change is not None:
            self._on_change()

    def wait_for_synchronization(self, timeout: float | None = None) -> None:
        """Block until the latest set (at the time of the call) is ``complete``: everything it
        asks for is here and everything it dropped is gone.

        Raises:
            SubscriptionError: the server put the set in the error state (``.message``).
            tidesync.TimeoutError: not done within ``timeout`` seconds.
        """
        self._wait_version(self._latest, timeout)

    # -- results.subscribe() ----------------------------------------------------------------

    def _subscribe_results(self, results: Results[Any], name: str | None, wait_for: str,
                           timeout: float | None) -> Results[Any]:
        if wait_for not in ("first_time", "always", "never"):
            raise UsageError(f"wait_for must be 'first_time', 'always' or 'never', not {wait_for!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.update() as subs:
            subs.add(results, name=name, update_existing=True)
            created = subs._changed
        if wait_for == "always" or (wait_for == "first_time" and created):
            self._wait_version(self._latest, None if deadline is None else max(0.0, deadline - time.monotonic()))
            if wait_for == "always":
                session = getattr(self._db, "sync_session", None)
                if session is not None:
                    session.wait_for_download_completion(
                        None if deadline is None else max(0.0, deadline - time.monotonic()))
        return results

    # -- state ------------------------------------------------------------------------------

    def _state_of(self, version: int) -> tuple[State, str | None]:
        with self._cond:
            got = self._states.get(version)
            if got is None:
                return ("superseded", None) if version < self._latest else ("pending", None)
            return got

    def _wait_version(self, version: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                state, error = self._state_of(version)
                if state == "complete" or (state == "superseded" and self._done_after(version)):
                    return
                if state == "error":
                    raise SubscriptionError(f"the server refused subscription set version {version}: {error}")
                if self._closed:
                    raise ConnectionClosedError("the database was closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"subscription set version {version} is still {state} after {timeout} s")
                self._cond.wait(0.5 if remaining is None else min(0.5, remaining))

    def _done_after(self, version: int) -> bool:
        """A version superseded by a complete (or errored) later one is as done as it gets."""
        return any(v > version and s in ("complete", "error") for v, (s, _) in self._states.items())

    # -- persistence --------------------------------------------------------------------------

    def _load(self) -> None:
        db = self._db
        with db._lock:
            rows = db._engine.query("SELECT version, state, error, queries FROM subscriptions ORDER BY version")
        for version, state, error, queries in rows:
            subs = [Subscription.from_json(d) for d in json.loads(queries)]
            self._sets[int(version)] = subs
            self._states[int(version)] = (state, error)
            self._latest = max(self._latest, int(version))

    def _commit(self, subs: list[Subscription]) -> int:
        db = self._db
        with self._cond:
            version = self._latest + 1
            text = json.dumps([s.to_json() for s in subs], separators=(",", ":"))
            superseded = [v for v, (s, _) in self._states.items() if s in ("pending", "bootstrapping")]
            with db._lock:
                db._check_open()
                with db._engine.atomic():
                    db._engine.execute("INSERT INTO subscriptions (version, state, error, queries, created) "
                                       "VALUES (?, 'pending', NULL, ?, ?)", (version, text, time.time()))
                    db._engine.executemany("UPDATE subscriptions SET state = 'superseded' WHERE version = ?",
                                           [(v,) for v in superseded])
            for v in superseded:
                self._states[v] = ("superseded", None)
            self._sets[version] = list(subs)
            self._states[version] = ("pending", None)
            self._latest = version
            self._cond.notify_all()
            return version

    def _set_state(self, version: int, state: State, error: str | None) -> None:
        db = self._db
        with self._cond:
            if version not in self._sets:
                return  # not a version of ours (e.g. the file was replaced): ignore
            old = self._states.get(version, ("pending", None))[0]
            if version < self._latest and state in ("pending", "bootstrapping"):
                return  # old news
            if old == "superseded" and state != "error":
                return
            changes: list[tuple[int, State, str | None]] = [(version, state, error)]
            if state == "complete":
                changes += [(v, "superseded", None) for v, (s, _) in self._states.items()
                            if v < version and s in ("pending", "bootstrapping", "complete")]
            with db._lock:
                if db.is_closed:
                    return
                with db._engine.atomic():
                    db._engine.executemany("UPDATE subscriptions SET state = ?, error = ? WHERE version = ?",
                                           [(s, e, v) for v, s, e in changes if v != 0])
            for v, s, e in changes:
                self._states[v] = (s, e)
            self._cond.notify_all()

    def _close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the sync session's side ----------------------------------------------------------------

    def _hello_scope(self) -> dict[str, Any]:
        """The ``Hello`` scope of a new connection: the latest set and the last view update."""
        with self._cond:
            version = self._latest
            subs = self._sets[version]
            self._sent_version = version
        with self._db._lock:
            view_seq = int(self._db._setting(VIEW_SEQ_SETTING) or 0)
        return {"subscriptions": [{"set_id": SET_ID, "version": version, "view_seq": view_seq,
                                   "queries": [s.to_wire().to_wire() for s in subs]}]}

    def _outgoing(self) -> list[Action]:
        """A ``Subscribe`` for a version committed since the last one sent (on this connection)."""
        with self._cond:
            if self._latest <= self._sent_version:
                return []
            version = self._latest
            self._sent_version = version
            queries = tuple(s.to_wire() for s in self._sets[version])
        return [Send(Subscribe(SET_ID, version, queries))]

    def _handles(self, message: Message) -> bool:
        return isinstance(message, (SubscriptionState, ViewUpdate))

    def _on_message(self, message: Message, server: str | None) -> list[Action]:
        """A flexible-sync message from the server (on the session thread, in order with the
        integration of the ``Changes`` around it). Returns the actions to execute."""
        if isinstance(message, SubscriptionState):
            if message.set_id == SET_ID:
                self._set_state(message.version, message.state.value, message.message)
            return []
        if isinstance(message, ViewUpdate):
            return self._apply_view(message, server)
        return []

    def _apply_view(self, update: ViewUpdate, server: str | None) -> list[Action]:
        db = self._db
        with db._lock:
            if db.is_closed:
                return []
            with db._engine.atomic():
                self._apply_view_part(update, server)
            self._count_view_part(update)
        actions: list[Action] = [Send(ViewAck(update.view_seq))]
        p = update.progress
        if p.total:
            actions.append(ReportProgress(DOWNLOAD, p.sent, max(p.total, p.sent), p.sent_bytes,
                                          max(p.total_bytes, p.sent_bytes)))
        return actions

    def _apply_view_part(self, part: ViewPart | ViewUpdate, server: str | None) -> None:
        """The documents entering and leaving a view and its ``view_seq``, inside the caller's
        transaction: a ``view_update``'s own, or (a ``Changes``' view part, ``changes_view``)
        the one that integrates the batch (``Database._integrate_download``'s ``before``), so
        that they commit with the batch and its checkpoint and the batch's ``Ack``
        acknowledges them (no ``ViewAck``). Counted in :attr:`stats` once the caller's
        transaction committed (:meth:`_count_view_part`)."""
        db = self._db
        if part.enter:
            db.integrate_snapshot(part.enter, peer=ReplicaId(server or ""), as_of_seq=None)
        if part.leave:
            db.evict_documents(part.leave)
        db._set_setting(VIEW_SEQ_SETTING, str(part.view_seq))

    def _count_view_part(self, part: ViewPart | ViewUpdate) -> None:
        """Count a view part that :meth:`_apply_view_part` wrote, once its transaction has
        committed (a rolled-back one brought nothing; a reader of :attr:`stats` counts on the
        documents being in the file)."""
        stats = self.stats
        stats["updates"] += 1
        stats["docs_received"] += len(part.enter)
        stats["docs_removed"] += len(part.leave)


def run_initial_subscriptions(subs: Subscriptions, callback: Callable[..., None], rerun: bool) -> None:
    """``SyncConfig(initial_subscriptions=f)``: run ``f(subs, db)`` (or ``f(subs)``) in an
    update the first time the file is opened with flexible sync (no version committed yet), or
    on every open with ``rerun_initial_subscriptions=True``."""
    if subs.version > 0 and not rerun:
        return
    import inspect

    try:
        params = inspect.signature(callback).parameters.values()
        two = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 2 or any(
            p.kind is p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):
        two = False
    with subs.update() as mutable:
        if two:
            callback(mutable, subs._db)
        else:
            callback(mutable)
    if subs.version == 0:
        # The callback subscribed to nothing: remember that it ran, as an (empty) version 1.
        with subs.update() as mutable:
            mutable._changed = True
