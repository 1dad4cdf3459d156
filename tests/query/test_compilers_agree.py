"""Property: a query selects the same documents as SQL on SQLite and as a Python predicate.

Random documents (typed per the schema, or anything at all without one) and random query
trees (every node type, every operator, typed values, nulls, lists, links, quantifiers)
are run through ``compile_sql`` on a real in-memory SQLite database and through
``to_predicate``. Both must select the same ``_id`` set, or both must reject the query.
Any failure found here becomes a named regression test in ``test_regressions.py``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from query_harness import SCHEMA, Store

from tidesync.errors import QueryError
from tidesync.query import (Aggregate, And, Between, Compare, CompareFields, Count, Exists, FalsePredicate, In, Not, Or, Path,
                            Quantified, Size, StringOp, TruePredicate, TypeOf, Value)
from tidesync.query.semantics import TYPE_NAMES

# -- values ----------------------------------------------------------------------------
# Small pools, shared by documents and queries, so that equality tests hit; plus some
# random values for breadth.

_ALPHABET = "aAbBzZéÉ*?[]%_'\"\\ \n"
TEXT_POOL = ["", "a", "A", "ab", "aB", "Ab", "b", "é", "É", "a*", "a?b", "[a]", "%_", "it's", "\\", "zz"]
INT_POOL = [-1, 0, 1, 2, 3, 2**53 + 1, -(2**63), 2**63 - 1]
FLOAT_POOL = [0.5, -0.0, 1.0, 2.5, -3.0, 0.1, 1e300, 2.0**53, 1 / 3]
SPECIAL_POOL = [{"$float": "inf"}, {"$float": "-inf"}, {"$float": "nan"}]
DECIMAL_POOL = [{"$decimal": d} for d in ["1", "1.0", "0.5", "-2.25", "1E+1", "2", "0.1", "-0"]]
BAD_DECIMAL_POOL = [{"$decimal": "NaN"}, {"$decimal": "-Infinity"}]
DATE_POOL = [{"$date": n} for n in (-1, 0, 1, 10**15)]
OID_POOL = [{"$oid": h} for h in ("000000000000000000000001", "65f0aa0000000000000000ff", "ffffffffffffffffffffffff")]
UUID_POOL = [{"$uuid": u} for u in ("00000000-0000-0000-0000-000000000001", "123e4567-e89b-12d3-a456-426614174000")]
BINARY_POOL = [{"$binary": b} for b in ("", "AA==", "YWJj")]
TECH_IDS = ["t1", "t2", "t'é", "gone"]  # "gone" is deleted; "t9" never exists
LINK_POOL = TECH_IDS + ["t9"]

texts = st.sampled_from(TEXT_POOL)
random_texts = st.text(alphabet=_ALPHABET, max_size=4)
ints = st.sampled_from(INT_POOL)
floats = st.sampled_from(FLOAT_POOL)
specials = st.sampled_from(SPECIAL_POOL)
decimals = st.sampled_from(DECIMAL_POOL)
random_scalars = st.one_of(
    random_texts, st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**63 - 1),
    st.decimals(allow_nan=False, allow_infinity=False, places=2).map(lambda d: {"$decimal": str(d)}))
dates, oids, uuids, binaries = (st.sampled_from(p) for p in (DATE_POOL, OID_POOL, UUID_POOL, BINARY_POOL))
numbers = st.one_of(ints, floats, specials, decimals)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, dates, oids, uuids, binaries, random_scalars)

KIND_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "str": texts, "int": ints, "counter": ints, "float": st.one_of(floats, specials, ints),
    "decimal": decimals, "bool": st.booleans(), "datetime": dates, "uuid": uuids, "objectid": oids,
    "bytes": binaries, "link": st.sampled_from(LINK_POOL),
}

# -- documents ---------------------------------------------------------------------------
# One drawn seed per document keeps generation cheap (hypothesis draws cost ~0.1 ms each
# here); a failure still replays exactly, and the query is what shrinks.

SCALAR_POOLS = [TEXT_POOL, INT_POOL, FLOAT_POOL, SPECIAL_POOL, DECIMAL_POOL, DATE_POOL, OID_POOL,
                UUID_POOL, BINARY_POOL, [None, True, False]]


class Maker:
    """Random plain values from the pools, driven by one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, pool: list[Any]) -> Any:
        return self.rng.choice(pool)

    def maybe(self, make: Callable[[], Any]) -> Any:
        return None if self.rng.random() < 0.2 else make()

    def many(self, make: Callable[[], Any], most: int = 3) -> list[Any]:
        return [make() for _ in range(self.rng.randint(0, most))]

    def text(self) -> str:
        if self.rng.random() < 0.1:
            return "".join(self.pick(list(_ALPHABET)) for _ in range(self.rng.randint(0, 3)))
        return str(self.pick(TEXT_POOL))

    def scalar(self) -> Any:
        pool = self.pick(SCALAR_POOLS + [BAD_DECIMAL_POOL])
        return self.text() if pool is TEXT_POOL else self.pick(pool)

    def site(self) -> dict[str, Any]:
        site: dict[str, Any] = {"city": self.text()}
        if self.rng.random() < 0.5:
            site["zip"] = self.maybe(self.text)
        if self.rng.random() < 0.5:
            site["hours"] = self.maybe(lambda: self.pick(self.pick([FLOAT_POOL, INT_POOL, SPECIAL_POOL])))
        return site

    def wild(self, depth: int = 0) -> Any:
        roll = self.rng.random()
        if depth < 2 and roll < 0.25:
            return self.many(lambda: self.wild(depth + 1))
        if depth < 2 and roll < 0.4:
            keys = self.rng.sample(["city", "x", "name", "a"], self.rng.randint(0, 2))
            return {k: self.wild(depth + 1) for k in keys}
        return self.scalar()

    def typed_task(self, i: int) -> dict[str, Any]:
        number = lambda: self.pick(self.pick([FLOAT_POOL, SPECIAL_POOL, INT_POOL]))  # noqa: E731
        fields: dict[str, Callable[[], Any]] = {
            "title": self.text, "status": self.text, "priority": lambda: self.pick(INT_POOL),
            "estimate": lambda: self.maybe(number), "price": lambda: self.maybe(lambda: self.pick(DECIMAL_POOL)),
            "done": lambda: self.pick([True, False]), "due": lambda: self.maybe(lambda: self.pick(DATE_POOL)),
            "ref": lambda: self.maybe(lambda: self.pick(UUID_POOL)),
            "owner": lambda: self.maybe(lambda: self.pick(OID_POOL)),
            "blob": lambda: self.maybe(lambda: self.pick(BINARY_POOL)),
            "tags": lambda: self.many(self.text), "scores": lambda: self.many(lambda: self.pick(INT_POOL)),
            "labels": lambda: sorted(set(self.many(self.text))),
            "site": lambda: self.maybe(self.site), "technician": lambda: self.maybe(lambda: self.pick(LINK_POOL)),
            "helpers": lambda: self.many(lambda: self.pick(LINK_POOL)),
            "notes": lambda: {k: self.maybe(self.text) for k in self.rng.sample(["a", "b"], self.rng.randint(0, 2))},
            "visits": lambda: self.many(self.site, 2),
            "extra": lambda: self.maybe(self.wild), "hits": lambda: self.pick(INT_POOL),
        }
        body: dict[str, Any] = {"_id": i}
        for name, make in fields.items():
            if self.rng.random() < 0.85:
                body[name] = make()
        return body

    def technician(self, tid: str) -> dict[str, Any]:
        return {"_id": tid, "name": self.text(), "level": self.pick(INT_POOL),
                "site": self.maybe(self.site), "mentor": self.maybe(lambda: self.pick(LINK_POOL))}

    def wild_task(self, i: int) -> dict[str, Any]:
        body: dict[str, Any] = {"_id": i}
        for name in ("title", "status", "priority", "tags", "site", "technician", "helpers", "notes", "extra"):
            if self.rng.random() < 0.8:
                body[name] = self.wild()
        return body


seeds = st.integers(0, 2**32 - 1)


# -- queries ---------------------------------------------------------------------------

PATHS = {
    "_id": "int", "title": "str", "status": "str", "priority": "int", "estimate": "float", "price": "decimal",
    "done": "bool", "due": "datetime", "ref": "uuid", "owner": "objectid", "blob": "bytes", "tags": "str",
    "scores": "int", "labels": "str", "site": None, "site.city": "str", "site.zip": "str",
    "technician": "link", "technician.name": "str", "technician.level": "int",
    "technician.site.city": "str", "technician.mentor.name": "str", "helpers": "link",
    "helpers.name": "str", "helpers.level": "int", "helpers.mentor.level": "int", "notes": None,
    "notes.a": "str", "visits": None, "visits.city": "str", "visits.hours": "float", "extra": None, "extra.x": None, "hits": "counter",
    "nothing": None,
}
SIZE_PATHS = ["tags", "scores", "labels", "notes", "title", "helpers", "extra", "site", "visits", "status"]


VALUES_FOR = {path: scalars if kind is None else st.one_of(KIND_VALUES[kind], KIND_VALUES[kind], st.none(), scalars)
              for path, kind in PATHS.items()}


def value_for(path: str) -> st.SearchStrategy[Any]:
    return VALUES_FOR[path]


def _build(make: Any) -> Any:
    """The node, or (when the random combination is not a valid query) an Exists leaf:
    cheaper than filtering and re-drawing."""
    try:
        return make()
    except QueryError:
        return Exists(Path(("title",)))


OPS = st.sampled_from(["==", "==", "!=", "<", "<=", ">", ">="])
paths = st.sampled_from(sorted(PATHS))


@st.composite
def compare(draw: st.DrawFn) -> Any:
    path = draw(paths)
    return _build(lambda: Compare(draw(OPS), Path.parse(path), Value(draw(value_for(path))), draw(st.booleans())))


@st.composite
def field_pair(draw: st.DrawFn) -> Any:
    """Two key paths compared (``price > estimate``): mostly of one family, where the
    compilers accept them."""
    left = draw(paths)
    same = [p for p, k in PATHS.items() if k is not None and PATHS[left] is not None
            and (k == PATHS[left] or {k, PATHS[left]} <= {"int", "counter", "float", "decimal"})]
    right = draw(st.sampled_from(same)) if same and draw(st.integers(0, 3)) else draw(paths)
    return _build(lambda: CompareFields(draw(OPS), Path.parse(left), Path.parse(right), draw(st.booleans())))


@st.composite
def count(draw: st.DrawFn) -> Any:
    path = Path.parse(draw(st.sampled_from(SIZE_PATHS)))
    left = draw(st.sampled_from([Count(path), Size(path)]))
    number = draw(st.one_of(st.integers(0, 3), specials, st.just(1.5)))
    kind = draw(st.sampled_from(["cmp", "in", "between"]))
    if kind == "cmp":
        return _build(lambda: Compare(draw(OPS), left, Value(number)))
    if kind == "in":
        return _build(lambda: In(left, Value(draw(st.lists(st.integers(0, 3), max_size=3)))))
    return _build(lambda: Between(left, Value(draw(st.integers(0, 2))), Value(draw(st.integers(0, 3)))))


@st.composite
def extreme(draw: st.DrawFn) -> Any:
    """``@min``/``@max`` (exact in both compilers; ``@sum``/``@avg`` add in double precision,
    which SQLite versions do differently: tests/query/test_aggregates.py checks them on exact
    values)."""
    over = draw(st.sampled_from(["scores", "tags", "extra", "title", "visits.hours", "visits.city"]))
    path, _, of = over.partition(".")
    left = Aggregate(Path.parse(path), draw(st.sampled_from(["min", "max"])), tuple(of.split(".")) if of else ())
    number = draw(st.one_of(ints, floats, specials, st.none()))
    kind = draw(st.sampled_from(["cmp", "in", "between"]))
    if kind == "cmp":
        return _build(lambda: Compare(draw(OPS), left, Value(number)))
    if kind == "in":
        return _build(lambda: In(left, Value(draw(st.lists(st.one_of(ints, floats), max_size=3)))))
    return _build(lambda: Between(left, Value(draw(ints)), Value(draw(ints))))


TYPE_WORDS = sorted(TYPE_NAMES) + ["String", "OBJECTID", "Numeric"]


@st.composite
def type_of(draw: st.DrawFn) -> Any:
    """``x.@type == 'int'`` (or ``!=``, ``IN``) on any path, type names in any case."""
    left = TypeOf(Path.parse(draw(paths)))
    if draw(st.booleans()):
        return _build(lambda: In(left, Value(draw(st.lists(st.sampled_from(TYPE_WORDS), max_size=3)))))
    return _build(lambda: Compare(draw(st.sampled_from(["==", "!="])), left, Value(draw(st.sampled_from(TYPE_WORDS)))))


@st.composite
def membership(draw: st.DrawFn) -> Any:
    path = draw(paths)
    return _build(lambda: In(Path.parse(path), Value(draw(st.lists(value_for(path), max_size=3)))))


@st.composite
def between(draw: st.DrawFn) -> Any:
    path = draw(paths)
    low, high = draw(value_for(path)), draw(value_for(path))
    return _build(lambda: Between(Path.parse(path), Value(low), Value(high)))


@st.composite
def string_op(draw: st.DrawFn) -> Any:
    path = draw(paths)
    op = draw(st.sampled_from(["beginswith", "endswith", "contains", "like"]))
    return _build(lambda: StringOp(op, Path.parse(path), Value(draw(texts)), draw(st.booleans())))


@st.composite
def exists(draw: st.DrawFn) -> Any:
    return Exists(Path.parse(draw(paths)))


leaf_tests = st.one_of(compare(), count(), extreme(), membership(), between(), string_op(), type_of())
leaf_nodes = st.one_of(leaf_tests, field_pair())


@st.composite
def quantified(draw: st.DrawFn) -> Any:
    predicate = draw(leaf_tests)
    if isinstance(predicate, Exists):
        return predicate
    return Quantified(draw(st.sampled_from(["any", "all", "none"])), predicate)


leaves = st.one_of(leaf_nodes, quantified(), exists(), st.sampled_from([TruePredicate(), FalsePredicate()]))
queries = st.one_of(leaves, st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=2).map(lambda xs: And(tuple(xs))),
    st.lists(inner, min_size=1, max_size=2).map(lambda xs: Or(tuple(xs))),
    inner.map(Not)), max_leaves=3))


# -- the properties ----------------------------------------------------------------------


def check(store: Store, query: Any, schema: Any) -> None:
    try:
        via_sql = store.sql(query, "Task", schema)
    except QueryError as exc:
        if "nests too deeply for SQLite" in str(exc):
            return  # a limit of SQLite's parser, not a difference in meaning
        try:
            store.predicate(query, "Task", schema)
        except QueryError:
            return
        raise AssertionError("compile_sql rejected a query that to_predicate accepted") from None
    assert via_sql == store.predicate(query, "Task", schema)


@st.composite
def typed_world(draw: st.DrawFn) -> Store:
    store = Store()
    maker = Maker(draw(seeds))
    for tid in TECH_IDS:
        store.put("Technician", maker.technician(tid), live=tid != "gone")
    for i in range(draw(st.integers(1, 6))):
        store.put("Task", Maker(draw(seeds)).typed_task(i))
    return store


@st.composite
def wild_world(draw: st.DrawFn) -> Store:
    store = Store()
    for i in range(draw(st.integers(1, 6))):
        store.put("Task", Maker(draw(seeds)).wild_task(i))
    return store


_SETTINGS = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                            HealthCheck.data_too_large])


@_SETTINGS
@given(typed_world(), queries)
def test_sql_and_predicate_select_the_same_typed_documents_with_a_schema(store: Store, query: Any) -> None:
    try:
        check(store, query, SCHEMA)
    finally:
        store.db.close()


@_SETTINGS
@given(typed_world(), queries)
def test_sql_and_predicate_select_the_same_typed_documents_without_a_schema(store: Store, query: Any) -> None:
    try:
        check(store, query, None)
    finally:
        store.db.close()


@_SETTINGS
@given(wild_world(), queries)
def test_sql_and_predicate_select_the_same_documents_of_any_shape_without_a_schema(store: Store, query: Any) -> None:
    try:
        check(store, query, None)
    finally:
        store.db.close()



_NUMBER_KINDS = {"int", "counter", "float", "decimal"}
_ORDERED_KINDS = _NUMBER_KINDS | {"str", "datetime", "objectid", "uuid"}
# Scalar fields of the document and its embedded object (no list, link or dictionary on the way).
_PAIRABLE = {p: k for p, k in PATHS.items() if k is not None and k != "link" and "." not in p.replace("site.", "")
             and p not in ("tags", "scores", "labels", "helpers", "visits")}


@st.composite
def valid_field_pair(draw: st.DrawFn) -> CompareFields:
    left = draw(st.sampled_from(sorted(_PAIRABLE)))
    kind = _PAIRABLE[left]
    right = draw(st.sampled_from(sorted(p for p, k in _PAIRABLE.items()
                                        if k == kind or {k, kind} <= _NUMBER_KINDS)))
    op = draw(OPS if kind in _ORDERED_KINDS else st.sampled_from(["==", "!="]))
    return CompareFields(op, Path.parse(left), Path.parse(right), kind == "str" and op in ("==", "!=")
                         and draw(st.booleans()))


@_SETTINGS
@given(typed_world(), valid_field_pair(), st.booleans())
def test_two_typed_fields_compare_the_same_in_sql_and_in_python(store: Store, pair: CompareFields,
                                                                negate: bool) -> None:
    query = Not(pair) if negate else pair
    try:
        assert store.sql(query, "Task", SCHEMA) == store.predicate(query, "Task", SCHEMA)
    finally:
        store.db.close()
