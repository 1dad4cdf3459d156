"""Results: lazy, live query results over one collection.

A :class:`Results` object holds a query, not objects: ``len()``, iteration, indexing and
``first()`` run SQL against the file each time, so results always reflect the latest commit.
Filters compile to SQL that SQLite runs (and that uses indexes); rows are never all loaded
into Python to be filtered. Iteration walks a snapshot of matching row ids taken when it
starts, reading bodies in pages, so memory stays flat on large results.
"""

from __future__ import annotations

from array import array
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from itertools import islice, repeat
from operator import lt
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ..core.models import _ModelBase
from ..core.schema import Schema
from ..core.values import loads_json
from ..errors import QueryError
from ..query import (DistinctDescriptor, LimitDescriptor, Query, SortDescriptor, compile_distinct, compile_order,
                     compile_sql, parse_query, parse_rql_query)
from .database import _CACHE_LIMIT
from .managed import ObjectBinding

if TYPE_CHECKING:
    from .database import Database
    from .listeners import ChangeSet, ListenerToken

__all__ = ["Results"]

M = TypeVar("M", bound=_ModelBase)

_PAGE = 1000

# SQLite virtual-machine steps a whole collection's first rows may take with one plan before the
# other is tried (see Results._first_rows): about 10,000 rows of the collection, a few ms.
_PLAN_BUDGET = 200_000


def _key_of(pk_text: str) -> Any:
    """The primary key (plain form) from its canonical JSON text."""
    if pk_text[:1] == '"' and "\\" not in pk_text:
        return pk_text[1:-1]  # a JSON string without escapes holds its text as it is
    return loads_json(pk_text)


# RQL text -> its parse with ``$n`` left unbound: a query run again with other arguments is only
# bound, not parsed again.
_PARSED: dict[str, Query] = {}
_PARSED_LIMIT = 512


def _link_value(value: Any) -> Any:
    """A query argument or filter value with each object of a model (not an embedded one)
    replaced by its primary key, which is what a link field holds: ``technician == $0`` with
    a ``Technician`` object, as in Realm. Lists, tuples, sets and a filter's maps are walked."""
    if isinstance(value, _ModelBase):
        return value if value.__ts_embedded__ else value._ts_primary_key()
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(_link_value(v) for v in value) if any(
            isinstance(v, (_ModelBase, list, tuple, set, frozenset, dict)) for v in value) else value
    if isinstance(value, dict):
        return {k: _link_value(v) for k, v in value.items()}
    return value


def _parse(query: str | Mapping[str, Any] | Query, args: Sequence[Any]) -> Query:
    """``parse_query(query, args)``, parsing RQL text once; objects of models in ``args``
    (and in a filter document) stand for their primary keys."""
    args = [_link_value(a) for a in args]
    if type(query) is not str:
        return parse_query(_link_value(query) if isinstance(query, dict) else query, args)
    template = _PARSED.get(query)
    if template is None:
        try:
            template = parse_rql_query(query, None)
        except QueryError:
            return parse_query(query, args)  # raises the parser's own error
        if len(_PARSED) >= _PARSED_LIMIT:
            _PARSED.clear()
        _PARSED[query] = template
    if not template.params:
        return template
    try:
        return template.bind(args)
    except QueryError:
        return parse_query(query, args)  # the error as the parser reports it (pointing at the $n)


# (RQL text, collection, id(schema), argument count) -> (the schema, how compile_sql's output is
# made from string arguments: (fragment, per parameter (argument index, None) or (-1, constant)),
# or None when it is not made that way). Found once per text by compiling it again with other
# strings (see _recipe); a query run again with other strings is then bound, not compiled.
_COMPILED: dict[tuple[str, str, int, int], tuple[Schema, tuple[str, tuple[tuple[int, Any], ...]] | None]] = {}
_COMPILED_LIMIT = 512
# Differs from any plain string an argument is compared as: upper case, LIKE and GLOB wildcards.
_PROBE = "Zq\u00c9%_*?[\\"


def _compile(query: str | Mapping[str, Any], args: Sequence[Any], q: Query, name: str,
             schema: Schema) -> tuple[str, list[Any]]:
    """``compile_sql(q, name, schema)`` of ``q``, the parse of ``query`` bound to ``args``;
    for RQL text whose arguments are all strings, made from a recipe found the first time."""
    if type(query) is not str or not args or any(type(a) is not str for a in args):
        return compile_sql(q, name, schema)
    key = (query, name, id(schema), len(args))
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is schema:
        if hit[1] is None:
            return compile_sql(q, name, schema)
        frag, slots = hit[1]
        return frag, [args[i] if i >= 0 else c for i, c in slots]
    sql = compile_sql(q, name, schema)
    if len(_COMPILED) >= _COMPILED_LIMIT:
        _COMPILED.clear()
    _COMPILED[key] = (schema, _recipe(query, args, sql, name, schema))
    return sql


def _recipe(query: str, args: Sequence[str], sql: tuple[str, list[Any]], name: str,
            schema: Schema) -> tuple[str, tuple[tuple[int, Any], ...]] | None:
    """How ``sql`` (compiled from ``query`` with ``args``) is made from any string arguments:
    compiled again with two other sets (distinct marked strings, empty strings), the fragment
    must stay the same, each parameter must be one argument itself (the same object) in every
    set or a constant equal in all three. None otherwise (the SQL depends on the values)."""
    probes = (tuple(f"{_PROBE}{i}" for i in range(len(args))), ("",) * len(args))
    try:
        others = [compile_sql(_parse(query, probe), name, schema) for probe in probes]
    except QueryError:
        return None
    frag, params = sql
    if any(f != frag or len(p) != len(params) for f, p in others):
        return None
    slots: list[tuple[int, Any]] = []
    for n, value in enumerate(params):
        marked, empty = others[0][1][n], others[1][1][n]
        i = next((j for j, a in enumerate(args) if value is a), -1)
        if i >= 0 and marked is probes[0][i] and empty == "" and type(empty) is str:
            slots.append((i, None))
        elif (i < 0 and not any(marked is a for a in probes[0]) and type(value) is type(marked) is type(empty)
              and value == marked == empty):
            slots.append((-1, value))
        else:
            return None
    return frag, tuple(slots)


class Results(Generic[M]):
    """Live results of a query on one model. Made by ``db.objects(Model)``."""

    def __init__(self, db: Database, cls: type[M], queries: tuple[Query, ...] = (),
                 sort: tuple[tuple[str, bool], ...] = (), limit: int | None = None,
                 compiled: tuple[tuple[str, list[Any]], ...] = (),
                 distinct: tuple[tuple[str, ...], tuple[tuple[str, bool], ...]] | None = None) -> None:
        self._db = db
        self._cls = cls
        self._queries = queries
        self._sort = sort
        self._limit = limit
        #: RQL's DISTINCT: (key paths, the sort keys in effect where it was written).
        self._distinct = distinct
        # compile_sql of each query, when known (it depends only on the query and the schema)
        self._compiled = compiled if len(compiled) == len(queries) else ()

    @property
    def model(self) -> type[M]:
        return self._cls

    # -- building ----------------------------------------------------------------------------

    def filter(self, query: str | Mapping[str, Any], *args: Any) -> Results[M]:
        """Narrow the results with a Realm Query Language string (``$0``-style args) or a
        MongoDB filter document. Filters combine with AND.

        RQL text may end with ``SORT(key ASC|DESC, ...)``, ``DISTINCT(key, ...)`` and
        ``LIMIT(n)``, as in Realm: a ``SORT`` becomes the primary order (earlier sort keys
        break its ties), ``DISTINCT`` keeps the first object of each group of equal values in
        the order in effect where it is written, ``LIMIT`` caps the count (see docs/queries.md).

        Raises:
            QueryError: the query does not parse or names an unknown field.
        """
        q = _parse(query, args)
        name, schema = self._cls.__name__, self._db.schema
        sql = _compile(query, args, q, name, schema)  # validate now, not on first use
        sort, limit, distinct = self._sort, self._limit, self._distinct
        for d in q.descriptors:
            if isinstance(d, SortDescriptor):
                keys = tuple((str(p), desc) for p, desc in d.keys)
                compile_order(name, list(keys), schema)
                sort = keys + tuple(k for k in sort if k[0] not in {p for p, _ in keys})
            elif isinstance(d, DistinctDescriptor):
                if distinct is not None:
                    raise QueryError("these results already have a DISTINCT: list several key paths in one")
                paths = tuple(str(p) for p in d.paths)
                compile_distinct(name, paths, schema)
                distinct = (paths, sort)
            elif isinstance(d, LimitDescriptor):
                limit = d.count if limit is None else min(limit, d.count)
        return Results(self._db, self._cls, self._queries + (q,), sort, limit, self._compiled + (sql,), distinct)

    def sort(self, key: str, reverse: bool = False) -> Results[M]:
        """Sort by a field (a key path through embedded objects works too); chain for more keys."""
        compile_order(self._cls.__name__, [(key, reverse)], self._db.schema)
        return Results(self._db, self._cls, self._queries, self._sort + ((key, reverse),), self._limit, self._compiled,
                       self._distinct)

    def limit(self, n: int) -> Results[M]:
        """At most ``n`` objects."""
        if n < 0:
            raise ValueError("limit must be >= 0")
        return Results(self._db, self._cls, self._queries, self._sort, n, self._compiled, self._distinct)

    # -- SQL -------------------------------------------------------------------------------

    def _where(self) -> tuple[str, list[Any]]:
        sql = "documents.collection = ? AND documents.live = 1"
        params: list[Any] = [self._cls.__name__]
        for frag, p in self._compiled or [compile_sql(q, self._cls.__name__, self._db.schema) for q in self._queries]:
            sql += f" AND ({frag})"
            params.extend(p)
        if self._distinct is not None:
            # The first row of each group of equal values, in the order DISTINCT was written in.
            paths, order = self._distinct
            name, schema = self._cls.__name__, self._db.schema
            groups = ", ".join(compile_distinct(name, paths, schema))
            first = (compile_order(name, list(order), schema) + ", " if order else "") + "documents.rowid"
            sql += (f" AND documents.rowid IN (SELECT rid FROM (SELECT documents.rowid AS rid, row_number() "
                    f"OVER (PARTITION BY {groups} ORDER BY {first}) AS rn FROM documents WHERE {sql}) "
                    f"WHERE rn = 1)")
            params = params + params
        return sql, params

    def _order(self) -> str:
        if self._sort:
            return " ORDER BY " + compile_order(self._cls.__name__, list(self._sort), self._db.schema) + ", documents.rowid"
        return " ORDER BY documents.rowid"

    def _limit_sql(self, offset: int = 0, count: int | None = None) -> str:
        n = self._limit
        if count is not None:
            n = count if n is None else max(0, min(count, n - offset))
        if n is None and not offset:
            return ""
        return f" LIMIT {-1 if n is None else int(n)} OFFSET {int(offset)}"

    def _select(self, columns: str, offset: int = 0, count: int | None = None) -> list[tuple[Any, ...]]:
        where, params = self._where()
        limit = self._limit_sql(offset, count)
        sql = f"SELECT {columns} FROM documents WHERE {where}{self._order()}{limit}"
        with self._db._lock:
            self._db._check_open()
            self._db._refresh()
            if self._queries:
                engine = self._db._engine
                if engine.map_deferred:
                    engine.map_file()  # a filtered query is where reading through the map pays
                return engine.query(sql, params)
            # A whole collection: SQLite may read all of it (to sort it), so not through the
            # file's memory map, whose pages would stay resident (see Engine.unmapped).
            with self._db._engine.unmapped():
                if count is not None and not self._sort and not self._db._engine.in_transaction():
                    return self._first_rows(columns, where, limit, sql, params)
                return self._db._engine.query(sql, params)

    def _first_rows(self, columns: str, where: str, limit: str, sql: str,
                    params: list[Any]) -> list[tuple[Any, ...]]:
        """The rows of ``sql``: the first few of a whole collection in the default (rowid) order.

        SQLite's plan reads the collection through an index on ``collection`` and sorts all of
        it by rowid before it returns the first row (all 1,000,000 rows of a big collection).
        A scan of the table in rowid order stops after the rows asked for, which is fast when
        the collection is a good share of the file and slow when it is a small one. So one plan
        runs with a budget (about the cost of reading :data:`_PLAN_BUDGET` steps' worth of
        rows) and, when it runs out, the other one runs without: the plan that worked last time
        for this collection goes first. Same rows, same order either way."""
        db, name = self._db, self._cls.__name__
        scan = f"SELECT {columns} FROM documents NOT INDEXED WHERE {where} ORDER BY documents.rowid{limit}"
        scans = db._collection_scans
        first, second = (scan, sql) if name in scans else (sql, scan)
        rows = db._engine.query_within(first, params, _PLAN_BUDGET)
        if rows is not None:
            return rows
        if name in scans:
            scans.discard(name)
        else:
            scans.add(name)
        return db._engine.query(second, params)

    def _only_collection(self) -> str | None:
        """The collection this query reads, when it reads no other (None: a filter or a sort
        follows links into other collections' documents)."""
        where, _ = self._where()
        if "SELECT" in (where + self._order()).upper():  # a subquery: links (conservative)
            return None
        return self._cls.__name__

    def _snapshot_keys(self) -> list[tuple[str, int]]:
        """(pk, seq) of every match, in order: what listeners diff."""
        return [(r[0], r[1]) for r in self._select("documents.pk, documents.seq")]

    def _make(self, pk_text: str, body: dict[str, Any]) -> M:
        ref = (self._cls.__name__, pk_text)
        self._db._prime(ref, body)
        return self._db._managed(self._cls, self._db.schema[self._cls.__name__], _key_of(pk_text), ref)

    def _rowids(self) -> array[int]:
        """The rowids of every match, in order (8 bytes each: no row tuples held)."""
        where, params = self._where()
        sql = f"SELECT documents.rowid FROM documents WHERE {where}{self._order()}{self._limit_sql()}"
        out: array[int] = array("q")
        with self._db._lock:
            self._db._check_open()
            self._db._refresh()
            with self._db._engine.unmapped():
                cursor = self._db._engine.execute(sql, params)
                while rows := cursor.fetchmany(10_000):
                    out.extend([r[0] for r in rows])
        return out

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        where, params = self._where()
        inner = f"SELECT 1 FROM documents WHERE {where}{self._limit_sql()}"
        with self._db._lock:
            self._db._check_open()
            self._db._refresh()
            return int(self._db._engine.query(f"SELECT count(*) FROM ({inner})", params)[0][0])

    def __bool__(self) -> bool:
        return bool(self._select("1", 0, 1))

    def __iter__(self) -> Iterator[M]:
        db = self._db
        # A result of at most one page is read with one statement; a larger one from a
        # snapshot of its rowids, a page of bodies at a time (memory stays flat: these reads
        # bypass the file's memory map, whose pages would stay resident).
        # Inside a write transaction the bodies are not cached (see _managed_page): not read.
        body = "" if db._txn is not None else ", documents.body"
        rows = self._select(f"documents.rowid, documents.pk{body}", 0, _PAGE + 1)
        if len(rows) <= _PAGE:
            yield from self._managed_page(rows)
            return
        del rows
        rowids = self._rowids()
        for i in range(0, len(rowids), _PAGE):
            chunk = rowids[i:i + _PAGE].tolist()
            body = "" if db._txn is not None else ", body"
            # Consecutive rowids (a whole collection in creation order): one range, not an IN
            # list (SQLite would make an index of the list and seek each row from it).
            if chunk[-1] - chunk[0] == len(chunk) - 1 and all(map(lt, chunk, islice(chunk, 1, None))):
                sql, params = f"SELECT rowid, pk{body} FROM documents WHERE rowid BETWEEN ? AND ? AND live = 1", [
                    chunk[0], chunk[-1]]
            else:
                sql, params = (f"SELECT rowid, pk{body} FROM documents WHERE rowid IN ({','.join('?' * len(chunk))}) "
                               "AND live = 1", chunk)
            with db._lock, db._engine.unmapped():
                db._check_open()
                rows = db._engine.query(sql, params)
            by_id = {r[0]: r for r in rows}
            yield from self._managed_page([hit for rid in chunk if (hit := by_id.get(rid)) is not None])

    def _managed_page(self, rows: Sequence[tuple[Any, ...]]) -> list[M]:
        """Managed objects of (rowid, pk, body) rows, their bodies cached (decoded under the
        lock, so a commit cannot clear the cache between the read and the caching), or of
        (rowid, pk) rows (read inside a write transaction), nothing cached."""
        db, cls = self._db, self._cls
        name = cls.__name__
        schema = db.schema[name]
        out: list[M] = []
        append = out.append
        with db._lock:
            # Not inside a write transaction (its changes are not the file's yet), nor without
            # the bodies (a write transaction had begun when the rows were read).
            cache = db._cache if db._txn is None and rows and len(rows[0]) == 3 else None
            if cache is not None and len(cache) + len(rows) > _CACHE_LIMIT:
                cache.clear()
            # The page's bodies decoded with one call of the JSON decoder (the same dicts).
            bodies = loads_json("[" + ",".join([r[2] for r in rows]) + "]") if cache is not None else repeat(None)
            new_binding = ObjectBinding.__new__
            for row, body in zip(rows, bodies):
                pk_text = row[1]
                ref = (name, pk_text)
                if cache is not None:
                    cache[ref] = body
                # ObjectBinding(db, name, key, ref, (), schema), its slots set here (no __init__
                # call per object); the key as _key_of gives it.
                binding = new_binding(ObjectBinding)
                binding.db = db
                binding.collection = name
                binding.key = pk_text[1:-1] if pk_text[:1] == '"' and "\\" not in pk_text else _key_of(pk_text)
                binding.ref = ref
                binding.path = ()
                binding.schema = schema
                obj = cls.__new__(cls)
                obj._ts_binding = binding
                obj._ts_ref = ref
                obj._ts_values = {}
                append(obj)
        return out

    @overload
    def __getitem__(self, index: int) -> M: ...
    @overload
    def __getitem__(self, index: slice) -> list[M]: ...
    def __getitem__(self, index: int | slice) -> M | list[M]:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += len(self)
            if index < 0:
                raise IndexError("results index out of range")
        rows = self._select("documents.pk, documents.body", index, 1)
        if not rows:
            raise IndexError("results index out of range")
        return self._make(rows[0][0], loads_json(rows[0][1]))

    def first(self) -> M | None:
        """The first object, or None when there is none."""
        rows = self._select("documents.pk, documents.body", 0, 1)
        return self._make(rows[0][0], loads_json(rows[0][1])) if rows else None

    def index(self, obj: M) -> int:
        """The position of ``obj`` in the results."""
        ref = getattr(obj, "_ts_ref", None)
        for i, (pk, _) in enumerate(self._snapshot_keys()):
            if ref == (self._cls.__name__, pk):
                return i
        raise ValueError("object is not in the results")

    def __contains__(self, obj: object) -> bool:
        try:
            self.index(obj)  # type: ignore[arg-type]
            return True
        except ValueError:
            return False

    def __repr__(self) -> str:
        return f"<Results of {self._cls.__name__}: {len(self)}>"

    # -- change listeners ------------------------------------------------------------------

    def add_listener(self, callback: Callable[[Results[M], ChangeSet], None], *,
                     key_paths: Sequence[str] | None = None) -> ListenerToken:
        """Call ``callback(results, changes)`` after every commit that changes these results.

        ``changes`` has ``insertions``, ``deletions`` (by old index) and ``modifications`` (by
        new index), as Realm reports them. With ``key_paths``, a modification counts only if one
        of those fields changed. Callbacks run on the database's notifier thread; see
        docs/listeners.md. Returns a token: ``token.remove()`` stops the calls.
        """
        token: ListenerToken = self._db._listener_hub().add_results(self, callback, key_paths)
        return token

    def changes(self, *, key_paths: Sequence[str] | None = None, max_queue: int = 100) -> AsyncIterator[ChangeSet]:
        """An async iterator of change sets: ``async for changes in results.changes(): ...``."""
        changes: AsyncIterator[ChangeSet] = self._db._listener_hub().results_changes(self, key_paths, max_queue)
        return changes

    def subscribe(self, name: str | None = None, *, wait_for: str = "first_time", timeout: float | None = None) -> Results[M]:
        """Subscribe to these results with flexible sync (see the flexible-sync docs)."""
        subs = getattr(self._db, "subscriptions", None)
        if subs is None:
            from ..errors import UsageError

            raise UsageError("results.subscribe() needs a database opened with flexible sync")
        return subs._subscribe_results(self, name, wait_for, timeout)  # type: ignore[no-any-return]
