"""Query → SQL over tidesync's SQLite ``documents`` table.

The store runs::

    SELECT ... FROM documents
    WHERE collection = ? AND live = 1 AND (<fragment>)
    ORDER BY <compile_order(...)>

with ``fragment, params = compile_sql(query, collection, schema)``; the fragment's ``?``
placeholders take ``params`` in order, after the store's own. ``documents.body`` is the
document's plain form as JSON text (written with :func:`tidesync.core.values.canonical_json`
or at least ``ensure_ascii=False``), ``documents.pk`` the canonical JSON of its primary key.

How it stays fast and safe:

* A field is always read with one expression, ``json_extract(documents.body, '$.<path>')``,
  or its typed sub-path (``'$.due."$date"'``, ``'$.owner."$oid"'``, ``'$.id."$uuid"'``,
  ``CAST(json_extract(documents.body, '$.price."$decimal"') AS REAL)``).
  :func:`index_expression` returns the same expression (with a bare ``body``, as
  ``CREATE INDEX`` requires; SQLite matches the two), so
  ``CREATE INDEX ... ON documents(collection, <expr>) WHERE live = 1`` is used by equality
  and range tests on that field.
* Values always travel as parameters. JSON paths are written into the SQL text, but their
  names were validated by :class:`~tidesync.query.ast.Path` (no ``"``, ``.``, leading ``$``
  or control characters), are quoted when not plain identifiers, and ``'`` is doubled.
  String operators use ``substr``/``instr``/``GLOB`` with ``[`` escaped, so text in an
  argument is never a wildcard.
* Without a schema (or on ``mixed`` fields) the argument's type picks the sub-path and a
  ``json_type`` guard keeps families apart (a string is never ``> 5``). With a schema, each
  field's type picks it and guards are dropped where the type makes them redundant.
* Lists fan out with ``json_each`` (ANY); ``ALL``/``NONE`` are ``NOT EXISTS``; links are an
  ``EXISTS`` subquery on ``documents`` (aliased ``q_lN``) matching ``pk`` against
  ``documents.body -> '$.<link>'`` (SQLite's ``->`` returns the canonical JSON of the stored
  key, as long as the body was written with ``ensure_ascii=False``).

Caveats: case-insensitive tests fold ASCII letters only (SQLite's ``lower()``); decimals
compare as the nearest double (``CAST(... AS REAL)``), so two decimals that differ beyond
~15 significant digits compare equal; string functions stop at an embedded NUL character.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from ..core.schema import Schema
from ..errors import QueryError
from .ast import (Aggregate, And, Between, Compare, CompareFields, Count, DictPart, Exists, FalsePredicate, In, Node, Not, Or,
                  Path, Quantified, Query, StringOp, SubqueryCount, TruePredicate, TypeOf, bound_plain, type_test)
from .paths import (LIST_KINDS, TAGGED_KINDS, Step, backlink_sources, check_leaf, dict_member_kind, resolve,
                    resolve_field_pair, subquery_elements)
from .semantics import MISSING, TAGGED_TYPES, compare_numbers, family, fold_text, number_key, unaccent_sql
from .to_predicate import leaf_test

__all__ = ["compile_sql", "compile_order", "compile_distinct", "index_expression", "sql_text", "SQL_FUNCTIONS",
           "UNACCENT"]

#: The SQL function ``[d]`` compiles to: :func:`~tidesync.query.semantics.fold_diacritics` of a
#: text (NULL otherwise). Register every entry of :data:`SQL_FUNCTIONS` on a connection that
#: runs compiled SQL (``conn.create_function(name, nargs, fn, deterministic=True)``); tidesync's
#: engine does so on every connection it opens.
UNACCENT: Final = "tidesync_unaccent"
SQL_FUNCTIONS: Final[dict[str, tuple[int, Callable[..., Any]]]] = {UNACCENT: (1, unaccent_sql)}

_BODY: Final = "documents.body"
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MARK: Final = re.compile("\x00(\\d+)\x00")
_SQL_OP: Final = {"==": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}

# SQLite parses with a fixed stack (100 entries; "parser stack overflow" beyond). What each
# construct the compiler nests costs there, measured on SQLite 3.40 (tests/query/
# test_hostile_input.py checks the estimate stays on the safe side):
_COST_GROUP: Final = 5  # ( a AND b ), ( a OR b )
_COST_NOT: Final = 5  # NOT coalesce( ..., 0)
_COST_EXISTS: Final = 8  # EXISTS (SELECT 1 FROM ... WHERE ...)
_COST_POSITIONS: Final = 10  # EXISTS (SELECT 1 FROM (SELECT ... UNION ALL SELECT ...) AS p WHERE ...)
_COST_HOP: Final = 15  # EXISTS (SELECT 1 FROM documents AS l WHERE <match> AND ...)
_COST_LEAF: Final = 14  # a comparison or string test
_COST_SIZE_LEAF: Final = 24  # @count on a value of unknown type (CASE with subqueries)
_BUDGET: Final = 96
_FAMILY_TAG: Final = {"date": "$date", "oid": "$oid", "uuid": "$uuid", "binary": "$binary"}


def sql_text(value: str) -> str:
    """``value`` as an SQL string literal (``a'b`` becomes ``'a''b'``)."""
    return "'" + value.replace("'", "''") + "'"


def _key(name: str) -> str:
    return "." + (name if _IDENTIFIER.match(name) else f'"{name}"')


@dataclass(frozen=True, slots=True)
class _JPath:
    """A JSON path: a static text (``$.a."b c"``) or a SQL expression (``q_j1.fullkey``)
    followed by static text."""

    prefix: str | None = None
    suffix: str = ""

    def child(self, name: str) -> _JPath:
        return _JPath(self.prefix, self.suffix + _key(name))

    def descend(self, names: Sequence[str]) -> _JPath:
        """The path of ``names`` below this one, one key each."""
        return _JPath(self.prefix, self.suffix + "".join(map(_key, names)))

    def tag(self, tag: str) -> _JPath:
        return _JPath(self.prefix, f'{self.suffix}."{tag}"')

    def sql(self) -> str:
        if self.prefix is None:
            return sql_text("$" + self.suffix)
        if not self.suffix:
            return self.prefix
        return f"{self.prefix} || {sql_text(self.suffix)}"


def _extract(base: str, path: _JPath) -> str:
    return f"json_extract({base}, {path.sql()})"


def _comparable(base: str, path: _JPath, kind: str | None) -> str:
    """The one expression a field of ``kind`` is compared, indexed and sorted by."""
    if kind == "decimal":
        return f"CAST({_extract(base, path.tag('$decimal'))} AS REAL)"
    tag = TAGGED_KINDS.get(kind or "")
    return _extract(base, path.tag(tag) if tag else path)


_Leaf: TypeAlias = Callable[[str, _JPath, "str | None"], str]


class _Compiler:
    def __init__(self, collection: str | None, schema: Schema | None) -> None:
        self.collection = collection
        self.schema = schema
        self.params: list[Any] = []
        self.aliases = 0
        self.depth = 0  # estimated SQLite parser depth where SQL is being emitted
        self.peak = 0
        self.leaf_cost = _COST_LEAF
        # Where key paths start: the document's body, or (inside a SUBQUERY) an element of
        # a list, as the JSON value at a path of some body.
        self.root: tuple[str, _JPath] = (_BODY, _JPath())

    # -- plumbing ----------------------------------------------------------------------

    def param(self, value: Any) -> str:
        # A marker, turned into "?" in text order by finish(): fragments are built inside
        # out, so parameters cannot simply be appended as they are met.
        self.params.append(value)
        return f"\x00{len(self.params) - 1}\x00"

    @contextmanager
    def nested(self, cost: int) -> Iterator[None]:
        self.depth += cost
        self.peak = max(self.peak, self.depth)
        try:
            yield
        finally:
            self.depth -= cost

    def finish(self, sql: str) -> tuple[str, list[Any]]:
        if self.peak > _BUDGET:
            raise QueryError("the query nests too deeply for SQLite to parse",
                             advice="use shorter key paths through lists and links, or fewer nested NOTs")
        ordered: list[Any] = []

        def take(m: re.Match[str]) -> str:
            ordered.append(self.params[int(m.group(1))])
            return "?"

        return _MARK.sub(take, sql), ordered

    def alias(self, letter: str) -> str:
        self.aliases += 1
        return f"q_{letter}{self.aliases}"

    # -- predicates --------------------------------------------------------------------

    def node(self, node: Node) -> str:
        if isinstance(node, TruePredicate):
            return "1"
        if isinstance(node, FalsePredicate):
            return "0"
        if isinstance(node, (And, Or)):
            if not node.items:
                return "1" if isinstance(node, And) else "0"
            with self.nested(_COST_GROUP):
                parts = [self.node(i) for i in node.items]
            return "(" + (" AND " if isinstance(node, And) else " OR ").join(parts) + ")"
        if isinstance(node, Not):
            with self.nested(_COST_NOT):
                return f"NOT coalesce({self.node(node.item)}, 0)"
        if isinstance(node, Quantified):
            if node.quantifier == "any":
                return self.path_test(node.predicate)
            with self.nested(_COST_NOT):  # ALL's inner NOT is charged with its leaf
                inner = self.path_test(node.predicate, negate=node.quantifier == "all")
            return f"NOT coalesce({inner}, 0)"
        if isinstance(node, CompareFields):
            return self.fields_test(node)
        return self.path_test(node)

    def fields_test(self, node: CompareFields) -> str:
        """Two typed scalar fields of one document (checked by ``resolve_field_pair``), as
        :func:`~tidesync.query.semantics.compare_values` compares them: null equals null,
        nan equals nan, a number of any kind compares by value, nothing else crosses kinds."""
        sides = resolve_field_pair(node, self.collection, self.schema)
        self.peak = max(self.peak, self.depth + _COST_LEAF + _COST_GROUP)
        (left, left_null, left_nan), (right, right_null, right_nan) = (
            _field_key(steps, node.case_insensitive, *self.root) for steps in sides)
        if node.op in ("==", "!="):
            same = f"({left_null} AND {right_null})"
            if left_nan is not None and right_nan is not None:
                same += f" OR ({left_nan} AND {right_nan})"
            equal = f"({same} OR coalesce({left} = {right}, 0))"
            return equal if node.op == "==" else f"NOT {equal}"
        return f"coalesce({left} {_SQL_OP[node.op]} {right}, 0)"

    def path_test(self, node: Compare | In | Between | StringOp | Exists, negate: bool = False) -> str:
        """SQL for "the leaf test (or its negation) holds for some value the path leads to"."""
        target = node.path if isinstance(node, Exists) else node.left
        names = target.path.names if isinstance(target, (Count, DictPart, TypeOf)) else target.names
        steps = resolve(self.collection, self.schema, names)
        check_leaf(node, steps, self.collection, self.schema)
        fan_leaf = not isinstance(node, Exists) and not isinstance(target, (Count, DictPart, TypeOf))
        leaf = self.leaf(node, steps[-1])
        on_missing = leaf_test(node, steps[-1].kind)(MISSING)
        unknown_size = isinstance(target, Count) and steps[-1].kind in (None, "mixed")
        costly = unknown_size or isinstance(target, (Aggregate, SubqueryCount, DictPart, TypeOf))
        self.leaf_cost = (_COST_SIZE_LEAF if costly else _COST_LEAF) + (_COST_NOT if negate else 0)
        if negate:
            positive = leaf

            def leaf(base: str, path: _JPath, kind: str | None) -> str:
                return f"NOT coalesce({positive(base, path, kind)}, 0)"

            on_missing = not on_missing
        if isinstance(target, DictPart):
            leaf = self.members(target, dict_member_kind(target, steps, self.collection, self.schema), leaf)
            on_missing = False  # a missing dictionary has no members
        if steps[0].kind == "backlinks":
            return self.backlinks(node, steps, leaf, fan_leaf, on_missing)
        return self.walk(*self.root, steps, 0, leaf, fan_leaf, on_missing)

    def backlinks(self, node: Compare | In | Between | StringOp | Exists, steps: Sequence[Step], leaf: _Leaf,
                  fan_leaf: bool, on_missing: bool) -> str:
        """``@links.Origin.field...``: the test holds for some object of Origin whose ``field``
        links to this document; ``...@count``: how many such objects (``@links.@count``: of
        every model and link field pointing here)."""
        base, path = self.root
        if not base.endswith(".body") or path != _JPath():
            raise QueryError("@links finds the objects linking to the queried object, not to an embedded object")
        me = base[: -len(".body")] + ".pk"
        first = steps[0]
        if isinstance(node, Exists):
            raise QueryError("@links cannot be tested for existence: count it (@links...@count > 0)")
        if len(steps) == 1:  # @links...@count: the leaf gets the number of linking objects
            sources: list[tuple[str, str, bool | None]] = []
            if first.target is not None and first.via is not None:
                sources.append((first.target, first.via, None))
            elif self.schema is not None and self.collection is not None:
                sources.extend(backlink_sources(self.schema, self.collection))
            terms = [self.linking(origin, via, many, me) for origin, via, many in sources]
            counts = " + ".join(f"(SELECT count(*) FROM documents AS {b} WHERE {match})" for b, match in terms)
            value = f"({counts})" if counts else "0"
            assert not isinstance(node, StringOp)   # check_leaf let a count through only
            count_leaf = self.number_leaf(node, lambda base, path, kind: value, self.size_test)
            self.peak = max(self.peak, self.depth + _COST_HOP + self.leaf_cost)
            return count_leaf(base, path, "backlinks")
        assert first.target is not None and first.via is not None
        b, match = self.linking(first.target, first.via, None, me)
        with self.nested(_COST_HOP):
            rest = self.walk(f"{b}.body", _JPath(), steps, 1, leaf, fan_leaf, on_missing)
        return f"EXISTS (SELECT 1 FROM documents AS {b} WHERE {match} AND {rest})"

    def linking(self, origin: str, via: str, many: bool | None, me: str) -> tuple[str, str]:
        """An alias for ``documents`` and the condition that it is a live object of ``origin``
        whose link field ``via`` (``many``: a list or set of links; None: look it up) holds
        the primary key ``me``."""
        if many is None:
            field = self.schema[origin].field(via) if self.schema is not None else None
            many = field is not None and field.type.kind in LIST_KINDS
        b = self.alias("b")
        at = _JPath().child(via)
        if many:
            e = self.alias("e")
            holds = (f"EXISTS (SELECT 1 FROM json_each({b}.body, {at.sql()}) AS {e} "
                     f"WHERE ({b}.body -> {e}.fullkey) = {me})")
        else:
            holds = f"({b}.body -> {at.sql()}) = {me}"
        return b, f"{b}.collection = {self.param(origin)} AND {b}.live = 1 AND {holds}"

    def members(self, part: DictPart, member_kind: str | None, test: _Leaf) -> _Leaf:
        """The leaf at a dictionary for ``notes.@keys`` / ``@values``: some member passes
        ``test`` (a key as a JSON string, a value where it is stored). A tagged value
        (``{"$date": ...}``) of a field of unknown type is a scalar, not a dictionary."""
        def leaf(base: str, path: _JPath, kind: str | None) -> str:
            m = self.alias("m")
            if part.part == "keys":
                inner = test(f"json_quote({m}.key)", _JPath(), "str")
            else:
                inner = test(base, _JPath(f"{m}.fullkey"), member_kind)
            is_dict = f"json_type({base}, {path.sql()}) = 'object'"
            if kind != "dict":
                k = self.alias("k")
                is_dict += (f" AND NOT EXISTS (SELECT 1 FROM json_each({base}, {path.sql()}) AS {k} "
                            f"WHERE {k}.key GLOB '[$]*')")
            return f"({is_dict} AND EXISTS (SELECT 1 FROM json_each({base}, {path.sql()}) AS {m} WHERE {inner}))"
        return leaf

    def walk(self, base: str, path: _JPath, steps: Sequence[Step], i: int, leaf: _Leaf, fan_leaf: bool,
             on_missing: bool) -> str:
        """SQL for "the leaf test holds for some value steps[i:] lead to from (base, path)".

        ``on_missing`` is the leaf test's result on a missing value, which is what every
        remaining step yields from a null, missing or dangling link.
        """
        step = steps[i]
        last = i == len(steps) - 1
        child = path.child(step.name)
        fan = step.may_fan_out and (fan_leaf or not last)

        def after(at_base: str, at: _JPath, kind: str | None) -> str:
            if last:
                self.peak = max(self.peak, self.depth + self.leaf_cost)
                return leaf(at_base, at, None if kind == "mixed" else kind)
            if step.is_link:
                assert step.target is not None
                return self.hop(at_base, at, step.target, steps, i + 1, leaf, fan_leaf, on_missing)
            return self.walk(at_base, at, steps, i + 1, leaf, fan_leaf, on_missing)

        if not fan:
            return after(base, child, step.kind)
        j = self.alias("j")
        json_type = f"json_type({base}, {child.sql()})"
        if step.kind in (None, "mixed") and not last:
            at = self.alias("p")
            # Type unknown and more steps to come: continue from each element of a list, or
            # from the value itself. One positions subquery keeps the SQL linear in the path
            # length (a branch for each case would double it at every step).
            positions = (f"SELECT {j}.fullkey AS p FROM json_each({base}, {child.sql()}) AS {j} "
                         f"WHERE {json_type} = 'array' UNION ALL SELECT {child.sql()} "
                         f"WHERE {json_type} IS NOT 'array'")
            with self.nested(_COST_POSITIONS):
                rest = after(base, _JPath(f"{at}.p"), None)
            return f"EXISTS (SELECT 1 FROM ({positions}) AS {at} WHERE {rest})"
        with self.nested(_COST_EXISTS + _COST_GROUP):
            each = (f"EXISTS (SELECT 1 FROM json_each({base}, {child.sql()}) AS {j} "
                    f"WHERE {after(base, _JPath(f'{j}.fullkey'), step.item_kind)})")
        if step.kind in LIST_KINDS:
            # The schema says it is a list: a null or missing one has no elements.
            return f"({json_type} = 'array' AND {each})"
        return (f"(({json_type} = 'array' AND {each}) OR "
                f"({json_type} IS NOT 'array' AND {after(base, child, step.kind)}))")

    def hop(self, base: str, path: _JPath, target: str, steps: Sequence[Step], i: int, leaf: _Leaf,
            fan_leaf: bool, on_missing: bool) -> str:
        link = self.alias("l")
        with self.nested(_COST_HOP + (_COST_NOT if on_missing else 0)):
            rest = self.walk(f"{link}.body", _JPath(), steps, i, leaf, fan_leaf, on_missing)
        match = (f"{link}.collection = {self.param(target)} AND {link}.live = 1 "
                 f"AND {link}.pk = ({base} -> {path.sql()})")
        if on_missing:
            # No linked document (null, missing or dangling link) counts as missing: true.
            return f"NOT EXISTS (SELECT 1 FROM documents AS {link} WHERE {match} AND NOT coalesce({rest}, 0))"
        return f"EXISTS (SELECT 1 FROM documents AS {link} WHERE {match} AND {rest})"

    # -- leaf tests ----------------------------------------------------------------------

    def leaf(self, node: Compare | In | Between | StringOp | Exists, last: Step) -> _Leaf:
        if isinstance(node, Exists):
            return lambda base, path, kind: f"json_type({base}, {path.sql()}) IS NOT NULL"
        if isinstance(node, StringOp):
            op, arg, ci, di = node.op, bound_plain(node.right), node.case_insensitive, node.diacritic_insensitive
            return lambda base, path, kind: self.string_test(base, path, kind, op, arg, ci, di)
        if isinstance(node.left, SubqueryCount):
            subquery = node.left
            return self.number_leaf(node, lambda base, path, kind: self.subquery_count(base, path, subquery, last),
                                    self.size_test)
        if isinstance(node.left, Aggregate):
            return self.aggregate_leaf(node, node.left.op, last)
        if isinstance(node.left, Count):
            return self.count_leaf(node)
        if isinstance(node.left, TypeOf):
            return self.type_leaf(node)
        if isinstance(node, Compare):
            cop, value, ci, di = node.op, bound_plain(node.right), node.case_insensitive, node.diacritic_insensitive
            return lambda base, path, kind: self.value_test(base, path, kind, cop, value, ci, di)
        if isinstance(node, In):
            options = bound_plain(node.values)
            return lambda base, path, kind: self.in_test(base, path, kind, options)
        low, high = bound_plain(node.low), bound_plain(node.high)
        return lambda base, path, kind: (f"({self.value_test(base, path, kind, '>=', low, False)} AND "
                                         f"{self.value_test(base, path, kind, '<=', high, False)})")

    def type_leaf(self, node: Compare | In | Between) -> _Leaf:
        """``x.@type == 'int'``, ``!=``, ``IN {...}``: the value's type name
        (:func:`~tidesync.query.semantics.type_name`, from ``json_type`` and the tag of a
        tagged value) among the named. The names are tidesync's own, so they are written as
        literals."""
        names, negate = type_test(node)
        listed = ", ".join(sql_text(n) for n in sorted(names))

        def leaf(base: str, path: _JPath, kind: str | None) -> str:
            tags = " ".join(f"WHEN json_type({base}, {path.tag(tag).sql()}) IS NOT NULL THEN {sql_text(name)}"
                            for tag, name in TAGGED_TYPES)
            name = (f"CASE json_type({base}, {path.sql()}) WHEN 'object' THEN CASE {tags} ELSE 'dictionary' END "
                    f"WHEN 'true' THEN 'bool' WHEN 'false' THEN 'bool' WHEN 'integer' THEN 'int' "
                    f"WHEN 'real' THEN 'double' WHEN 'text' THEN 'string' WHEN 'array' THEN 'list' "
                    f"ELSE 'null' END")
            return f"({name}) {'NOT IN' if negate else 'IN'} ({listed})"
        return leaf

    def value_test(self, base: str, path: _JPath, kind: str | None, op: str, arg: Any, ci: bool,
                   di: bool = False) -> str:
        if op == "!=":
            return f"NOT coalesce({self.value_test(base, path, kind, '==', arg, ci, di)}, 0)"
        fam = family(arg)
        value = _extract(base, path)
        json_type = f"json_type({base}, {path.sql()})"
        if fam == "null":
            if kind in TAGGED_KINDS:
                return f"{_comparable(base, path, kind)} IS NULL"
            return f"{value} IS NULL"
        sql_op = _SQL_OP[op]
        if fam == "bool":
            test = f"{value} = {self.param(1 if arg else 0)}"
            return test if kind == "bool" else f"({test} AND {json_type} IN ('true', 'false'))"
        if fam == "string":
            if ci or di:
                test = f"{_folded(value, ci, di)} {sql_op} {self.param(fold_text(arg, ci, di))}"
            else:
                test = f"{value} {sql_op} {self.param(arg)}"
            return test if kind == "str" else f"({test} AND {json_type} = 'text')"
        if fam in _FAMILY_TAG:
            tag = _FAMILY_TAG[fam]
            return f"{_extract(base, path.tag(tag))} {sql_op} {self.param(arg[tag])}"
        return self.number_test(base, path, kind, op, number_key(arg))

    def number_test(self, base: str, path: _JPath, kind: str | None, op: str, number: int | float) -> str:
        sql_op = _SQL_OP[op]
        finite = not isinstance(number, float) or math.isfinite(number)
        # A finite stored number compares with a non-finite argument the same way whatever
        # its value, so that case folds to "is a finite number".
        finite_holds = compare_numbers(0, op, number)
        value = _extract(base, path)
        is_number = f"json_type({base}, {path.sql()}) IN ('integer', 'real')"
        parts: list[str] = []
        if kind in (None, "int", "counter", "float", "link"):
            if finite:
                test = f"{value} {sql_op} {self.param(number)}"
                # JSON text (strings, tagged values) sorts after every number in SQLite and
                # true/false read as 1/0: guard unless the schema rules those out.
                guard = kind in (None, "link") or (kind == "float" and op in (">", ">="))
                parts.append(f"({test} AND {is_number})" if guard else test)
            elif finite_holds:
                parts.append(f"{value} IS NOT NULL" if kind in ("int", "counter") else is_number)
        if kind in (None, "float"):
            specials = [s for s in ("inf", "-inf", "nan") if compare_numbers(float(s), op, number)]
            if specials:
                listed = ", ".join(sql_text(s) for s in specials)
                parts.append(f"{_extract(base, path.tag('$float'))} IN ({listed})")
        if kind in (None, "decimal"):
            text = _extract(base, path.tag("$decimal"))
            finite_decimal = f"NOT ({text} GLOB '*[IN]*')"
            if finite:
                parts.append(f"({_comparable(base, path, 'decimal')} {sql_op} {self.param(number)} "
                             f"AND {finite_decimal})")
            elif finite_holds:
                parts.append(f"({text} IS NOT NULL AND {finite_decimal})")
        if not parts:
            return "0"
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def in_test(self, base: str, path: _JPath, kind: str | None, options: list[Any]) -> str:
        if not options:
            return "0"
        families = {family(o) for o in options} - {"null"}
        simple = {"str": "string", "int": "number", "counter": "number", "bool": "bool",
                  "datetime": "date", "objectid": "oid", "uuid": "uuid"}
        if kind in simple and families <= {simple[kind]} and all(
                not isinstance(o, dict) or "$float" not in o for o in options):
            # One typed field, one family: a plain IN the planner can serve from an index.
            expr = _comparable(base, path, kind)
            values = [o for o in options if o is not None]
            tag = TAGGED_KINDS.get(kind or "")
            if tag:
                values = [o[tag] for o in values]
            elif kind == "bool":
                values = [1 if o else 0 for o in values]
            else:
                values = [number_key(o) if kind in ("int", "counter") else o for o in values]
            parts = []
            if values:
                parts.append(f"{expr} IN ({', '.join(self.param(v) for v in values)})")
            if len(values) < len(options):
                parts.append(f"{expr} IS NULL")
            return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
        return "(" + " OR ".join(self.value_test(base, path, kind, "==", o, False) for o in options) + ")"

    def string_test(self, base: str, path: _JPath, kind: str | None, op: str, arg: str, ci: bool,
                    di: bool = False) -> str:
        value = _extract(base, path)
        subject = _folded(value, ci, di)
        needle = fold_text(arg, ci, di)
        test: str | None
        if op == "like":
            # GLOB is case-sensitive and knows only * ? [ ; "[" is escaped as "[[]" so that
            # only Realm's two wildcards act.
            test = f"{subject} GLOB {self.param(needle.replace('[', '[[]'))}"
        elif not needle:
            test = None
        elif op == "beginswith":
            test = f"substr({subject}, 1, {len(needle)}) = {self.param(needle)}"
        elif op == "endswith":
            test = f"substr({subject}, {-len(needle)}) = {self.param(needle)}"
        else:
            test = f"instr({subject}, {self.param(needle)}) > 0"
        is_text = f"json_type({base}, {path.sql()}) = 'text'"
        if test is None:
            return is_text
        return test if kind == "str" else f"({test} AND {is_text})"

    def count_leaf(self, node: Compare | In | Between) -> _Leaf:
        return self.number_leaf(node, self.size, self.size_test)

    def aggregate_leaf(self, node: Compare | In | Between, op: str, last: Step) -> _Leaf:
        assert isinstance(node.left, Aggregate)
        of = node.left.of
        links = last.target if of and last.item_kind == "link" else None
        return self.number_leaf(node, lambda base, path, kind: self.aggregate(base, path, op, of, links),
                                self.aggregate_test)

    def number_leaf(self, node: Compare | In | Between, value_of: Callable[[str, _JPath, str | None], str],
                    test: Callable[[str, str, Any], str]) -> _Leaf:
        """The leaf of a comparison, IN or BETWEEN on a number the path's value gives
        (``value_of``: its size or an aggregate), each test made by ``test(value, op, arg)``."""
        def leaf(base: str, path: _JPath, kind: str | None) -> str:
            value = value_of(base, path, kind)
            if isinstance(node, Compare):
                return test(value, node.op, bound_plain(node.right))
            if isinstance(node, In):
                options = bound_plain(node.values)
                return "(" + " OR ".join(test(value, "==", o) for o in options) + ")" if options else "0"
            return f"({test(value, '>=', bound_plain(node.low))} AND {test(value, '<=', bound_plain(node.high))})"
        return leaf

    def aggregate(self, base: str, path: _JPath, op: str, of: tuple[str, ...] = (), links: str | None = None) -> str:
        """``@min`` ``@max`` ``@sum`` ``@avg`` of the numbers in a list, or (``of``) of the
        numbers at that key path in its elements (semantics.aggregate); ``links``: the
        elements are links to that collection, and ``of`` is read in the linked documents (a
        missing or deleted one has no number)."""
        e = self.alias("e")
        if links is not None:
            linked = self.alias("l")
            inner = _JPath().descend(of)
            number = _extract(f"{linked}.body", inner)
            rows = (f"FROM json_each({base}, {path.sql()}) AS {e} JOIN documents AS {linked} "
                    f"ON {linked}.collection = {self.param(links)} AND {linked}.live = 1 "
                    f"AND {linked}.pk = ({base} -> {e}.fullkey) "
                    f"WHERE json_type({linked}.body, {inner.sql()}) IN ('integer', 'real')")
        elif of:
            inner = _JPath(f"{e}.fullkey").descend(of)
            number = _extract(base, inner)
            rows = (f"FROM json_each({base}, {path.sql()}) AS {e} "
                    f"WHERE json_type({base}, {inner.sql()}) IN ('integer', 'real')")
        else:
            number = f"{e}.value"
            rows = (f"FROM json_each({base}, {path.sql()}) AS {e} WHERE {e}.type IN ('integer', 'real')")
        of_sql = {"sum": f"total({number})", "avg": f"total({number}) / count({number})",
                  "min": f"min({number})", "max": f"max({number})"}[op]
        otherwise = " ELSE 0.0" if op == "sum" else ""
        return f"(CASE WHEN json_type({base}, {path.sql()}) = 'array' THEN (SELECT {of_sql} {rows}){otherwise} END)"

    def subquery_count(self, base: str, path: _JPath, subquery: SubqueryCount, last: Step) -> str:
        """How many elements of the list at (base, path) pass the SUBQUERY's predicate: the
        predicate compiled with its key paths starting at the element (or at the linked
        document, joined as a hop is)."""
        collection, link = subquery_elements(last)
        e = self.alias("e")
        rows = f"FROM json_each({base}, {path.sql()}) AS {e}"
        if link is not None:
            linked = self.alias("l")
            rows += (f" JOIN documents AS {linked} ON {linked}.collection = {self.param(link)} AND {linked}.live = 1 "
                     f"AND {linked}.pk = ({base} -> {e}.fullkey)")
            root = (f"{linked}.body", _JPath())
        else:
            root = (base, _JPath(f"{e}.fullkey"))
        saved = self.collection, self.schema, self.root, self.leaf_cost
        self.collection, self.root = collection, root
        if collection is None:
            self.schema = None
        try:
            # The leaf's own cost (charged by walk() as a peak, not as depth) plus the subquery.
            with self.nested(_COST_SIZE_LEAF + (_COST_HOP if link is not None else _COST_EXISTS)):
                inner = self.node(subquery.predicate)
        finally:
            self.collection, self.schema, self.root, self.leaf_cost = saved
        return (f"(CASE WHEN json_type({base}, {path.sql()}) = 'array' THEN "
                f"(SELECT count(*) {rows} WHERE {inner}) ELSE 0 END)")

    def aggregate_test(self, value: str, op: str, arg: Any) -> str:
        if arg is None:
            return f"{value} IS NULL" if op == "==" else f"{value} IS NOT NULL"
        return self.size_test(value, op, arg)

    def size_test(self, size: str, op: str, arg: Any) -> str:
        if op == "!=":
            return f"NOT coalesce({self.size_test(size, '==', arg)}, 0)"
        number = number_key(arg)
        if isinstance(number, float) and not math.isfinite(number):
            return f"{size} IS NOT NULL" if compare_numbers(0, op, number) else "0"
        return f"{size} {_SQL_OP[op]} {self.param(number)}"

    def size(self, base: str, path: _JPath, kind: str | None) -> str:
        json_type = f"json_type({base}, {path.sql()})"
        array = f"json_array_length({base}, {path.sql()})"
        text = f"length({_extract(base, path)})"
        members = f"(SELECT count(*) FROM json_each({base}, {path.sql()}))"
        if kind in LIST_KINDS:  # a null or missing list is empty
            return f"CASE WHEN {json_type} = 'array' THEN {array} ELSE 0 END"
        if kind == "str":
            return text
        if kind == "dict":
            return f"CASE WHEN {json_type} = 'object' THEN {members} ELSE 0 END"
        # unknown: a tagged value ({"$date": ...}) is a scalar, not an object with one key
        k = self.alias("k")
        tagged = f"EXISTS (SELECT 1 FROM json_each({base}, {path.sql()}) AS {k} WHERE {k}.key GLOB '[$]*')"
        return (f"CASE {json_type} WHEN 'array' THEN {array} WHEN 'text' THEN {text} "
                f"WHEN 'object' THEN CASE WHEN {tagged} THEN NULL ELSE {members} END END")

    # -- ordering and indexes ------------------------------------------------------------

    def scalar(self, base: str, path: _JPath, steps: Sequence[Step], i: int, purpose: str,
               inline: bool) -> str:
        """The comparable expression of a path that does not fan out (sorting, indexing)."""
        step = steps[i]
        child = path.child(step.name)
        last = i == len(steps) - 1
        where = ".".join(s.name for s in steps[:i + 1])
        if step.kind in LIST_KINDS:
            raise QueryError(f"cannot {purpose} {where}: it is a {step.kind}")
        if last:
            kind = step.kind
            if kind in ("object", "dict"):
                raise QueryError(f"cannot {purpose} {where}: it is an {'embedded object' if kind == 'object' else kind}")
            if kind == "link" and self.schema is not None and step.target is not None:
                pk = self.schema[step.target].primary_key
                pk_field = self.schema[step.target].field(pk) if pk else None
                kind = pk_field.type.kind if pk_field is not None else None
            return _comparable(base, child, None if kind == "mixed" else kind)
        if step.is_link:
            if not inline:
                raise QueryError(f"cannot {purpose} {where}.…: it follows a link")
            assert step.target is not None
            link = self.alias("l")
            rest = self.scalar(f"{link}.body", _JPath(), steps, i + 1, purpose, inline)
            return (f"(SELECT {rest} FROM documents AS {link} WHERE {link}.collection = {sql_text(step.target)} "
                    f"AND {link}.live = 1 AND {link}.pk = ({base} -> {child.sql()}))")
        return self.scalar(base, child, steps, i + 1, purpose, inline)


def _folded(value: str, ci: bool, di: bool) -> str:
    """A text expression as ``[c]`` / ``[d]`` compare it (``fold_text`` in SQL)."""
    if di:
        value = f"{UNACCENT}({value})"
    return f"lower({value})" if ci else value


def _field_key(steps: Sequence[Step], case_insensitive: bool, base: str = _BODY,
               root: _JPath = _JPath()) -> tuple[str, str, str | None]:
    """For a typed scalar field (its path from ``root`` in ``base``): the SQL value it
    compares by (NULL when it is null or has no order), the test that it is null or missing,
    and (a float field) the test that it is nan."""
    path = root.descend([step.name for step in steps])
    kind = steps[-1].kind
    value = _extract(base, path)
    is_null = f"{value} IS NULL"
    if kind == "float":
        special = _extract(base, path.tag("$float"))
        key = (f"(CASE {special} WHEN 'inf' THEN 9e999 WHEN '-inf' THEN -9e999 ELSE CASE WHEN "
               f"json_type({base}, {path.sql()}) IN ('integer', 'real') THEN {value} END END)")
        return key, is_null, f"{special} IS 'nan'"
    key = _comparable(base, path, kind)
    if kind == "decimal":  # NaN and Infinity are no numbers here: no key
        key = f"(CASE WHEN {_extract(base, path.tag('$decimal'))} GLOB '*[IN]*' THEN NULL ELSE {key} END)"
    elif kind == "str" and case_insensitive:
        key = f"lower({key})"
    return key, is_null, None


def _names(field_path: str | Sequence[str] | Path) -> tuple[str, ...]:
    if isinstance(field_path, Path):
        return field_path.names
    if isinstance(field_path, str):
        return Path.parse(field_path).names
    return Path(tuple(field_path)).names


def compile_sql(query: Query | Node, collection: str, schema: Schema | None = None) -> tuple[str, list[Any]]:
    """Compile a bound query into a WHERE fragment over ``documents`` and its parameters.

    Put the fragment in parentheses after the store's own conditions:
    ``WHERE collection = ? AND live = 1 AND (<fragment>)``, parameters after the store's.

    Args:
        query: a bound :class:`Query` (or node).
        collection: the queried collection; with ``schema``, fields are resolved from it.
        schema: field types pick the comparable sub-paths, allow links to be followed and
            let unknown fields and ill-typed comparisons fail here.

    Raises:
        QueryError: unknown field, comparison that does not fit the field, unbound ``$n``.
    """
    node = query.node if isinstance(query, Query) else query
    compiler = _Compiler(collection, schema)
    return compiler.finish(compiler.node(node))


def compile_order(collection: str, sort_keys: Sequence[tuple[str, bool]], schema: Schema | None = None) -> str:
    """The ORDER BY terms (without ``ORDER BY``) for ``(key_path, descending)`` pairs.

    Typed fields sort by their comparable sub-path (datetimes by micros, decimals as REAL);
    a to-one link can be followed (``technician.name``). Nulls and missing values sort
    first ascending. Without a schema, mixed types sort as SQLite orders them (numbers <
    text, where tagged values and lists count as text). Add a tie-breaker (e.g.
    ``documents.rowid``) for a stable order. Returns ``""`` for no keys.

    Raises:
        QueryError: unknown field, or a key path through a list.
    """
    compiler = _Compiler(collection, schema)
    terms = []
    for key, descending in sort_keys:
        steps = resolve(collection, schema, _names(key))
        expr = compiler.scalar(_BODY, _JPath(), steps, 0, "sort by", inline=True)
        terms.append(f"{expr} {'DESC' if descending else 'ASC'}")
    return ", ".join(terms)


def compile_distinct(collection: str, key_paths: Sequence[str], schema: Schema | None = None) -> list[str]:
    """One SQL expression per key path whose values tell objects apart for ``DISTINCT``
    (the expressions sorting uses: datetimes by micros, decimals as REAL; values of different
    types stay different). For ``PARTITION BY`` or ``GROUP BY``.

    Raises:
        QueryError: unknown field, or a key path through a list.
    """
    compiler = _Compiler(collection, schema)
    return [compiler.scalar(_BODY, _JPath(), resolve(collection, schema, _names(key)), 0, "distinct on", inline=True)
            for key in key_paths]


def index_expression(collection: str, field_path: str | Sequence[str] | Path, schema: Schema | None) -> str:
    """The expression :func:`compile_sql` reads ``field_path`` with, for ``CREATE INDEX``.

    It names the column as a bare ``body`` (``CREATE INDEX`` rejects ``documents.body``;
    SQLite still matches it with the queries' ``documents.body``). Create the index as::

        CREATE INDEX ix_Task_status ON documents(collection, <expr>) WHERE live = 1

    Equality, IN and range tests on the field then use it (see the EXPLAIN QUERY PLAN test
    in ``tests/query/test_index_use.py``).

    Raises:
        QueryError: unknown field, or a path through a list or link (not indexable), or to an
            embedded object or dictionary.
    """
    steps = resolve(collection, schema, _names(field_path))
    return _Compiler(collection, schema).scalar("body", _JPath(), steps, 0, "index", inline=False)
