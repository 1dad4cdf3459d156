"""Query → Python callable over a plain-form document body.

The server matches each integrated change against the subscriptions of connected sessions
with these predicates. They follow exactly the semantics documented in
:mod:`tidesync.query.ast` and :mod:`tidesync.query.semantics`, and agree with the SQL that
:func:`~tidesync.query.compile_sql` emits (``tests/query/test_compilers_agree.py``).

Usage::

    match = to_predicate(query, "Task", schema, resolve_link=backend.get_body)
    if match(body): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

from ..core.schema import Schema
from ..core.values import Plain
from ..errors import QueryError
from .ast import (Aggregate, And, bound_plain as _value, Between, Compare, CompareFields, Count, DictPart, Exists,
                  FalsePredicate,
                  In, Node, Not, Or, Quantified, Query, StringOp, SubqueryCount, TruePredicate, TypeOf, type_test)
from .paths import Step, backlink_sources, check_leaf, dict_member_kind, resolve, resolve_field_pair, subquery_elements
from .semantics import (MISSING, aggregate, compare, compare_values, family, size_of, string_test, type_name, value_at)

__all__ = ["to_predicate", "LinkResolver", "BacklinkResolver", "Predicate", "leaf_test"]

LinkResolver: TypeAlias = Callable[[str, Plain], "Mapping[str, Any] | None"]
"""``resolve_link(collection, primary_key_plain)`` → the linked document's body, or
``None`` when it does not exist (or is deleted)."""

BacklinkResolver: TypeAlias = Callable[[str, str, Plain], "Sequence[Mapping[str, Any]]"]
"""``resolve_backlinks(origin, field, primary_key_plain)`` → the bodies of the live documents of
``origin`` whose link field ``field`` (a link, or a list or set of links) holds that key."""

Predicate: TypeAlias = Callable[[Mapping[str, Any]], bool]
_Test: TypeAlias = Callable[[Any], bool]


def leaf_test(node: Compare | In | Between | StringOp | Exists, kind: str | None = None,
              element: Callable[[Any], bool] | None = None) -> Callable[[Any], bool]:
    """The test a leaf node applies to one value its path leads to (``MISSING`` included).

    For :class:`Count` comparisons the test receives the un-fanned value and takes its size;
    ``kind`` is the schema kind of that value, and a null or missing list, set or
    dictionary has size 0. For a :class:`~tidesync.query.ast.SubqueryCount` it counts the
    elements of a list that pass ``element`` (none without it).

    Raises:
        QueryError: the node still holds an unbound :class:`Param`.
    """
    if isinstance(node, Exists):
        return lambda v: v is not MISSING
    if isinstance(node, StringOp):
        arg = _value(node.right)
        op, ci, di = node.op, node.case_insensitive, node.diacritic_insensitive
        return lambda v: string_test(v, op, arg, ci, di)
    if isinstance(node.left, TypeOf):
        return _type_test(node)
    test: _Test
    if isinstance(node, Compare):
        arg = _value(node.right)
        cop, ci, di = node.op, node.case_insensitive, node.diacritic_insensitive
        if isinstance(arg, str) and not ci and not di and cop in ("==", "!="):
            # What compare() concludes for a string argument, without its dispatch: only a
            # string stored value is of the same family, and strings compare as they are.
            # The server runs this per routed change and subscription.
            text: str = arg
            if cop == "==":
                def test(v: Any) -> bool:
                    return isinstance(v, str) and v == text
            else:
                def test(v: Any) -> bool:
                    return not (isinstance(v, str) and v == text)
        else:
            def test(v: Any) -> bool:
                return compare(v, cop, arg, ci, di)
    elif isinstance(node, In):
        options = _value(node.values)
        assert isinstance(options, list)

        def test(v: Any) -> bool:
            return any(compare(v, "==", o) for o in options)
    else:
        low, high = _value(node.low), _value(node.high)

        def test(v: Any) -> bool:
            return compare(v, ">=", low) and compare(v, "<=", high)
    if isinstance(node.left, SubqueryCount):
        counted, passes = test, element

        def count_passing(v: Any) -> bool:
            if passes is None or not isinstance(v, list):
                return counted(0)
            return counted(sum(1 for e in v if passes(e)))
        return count_passing
    if isinstance(node.left, Aggregate):
        of_numbers, agg_op, of = test, node.left.op, node.left.of
        return lambda v: of_numbers(aggregate(v, agg_op, of))
    if isinstance(node.left, Count):
        value_test = test
        if kind in ("list", "set", "dict"):
            return lambda v: value_test(size_of(v) if isinstance(v, (list, dict)) else 0)
        return lambda v: value_test(size_of(v))
    return test


def _type_test(node: Compare | In | Between) -> _Test:
    """``x.@type == 'int'``, ``!=``, ``IN {...}``: whether the value's type is among the named."""
    names, negate = type_test(node)
    if negate:
        return lambda v: type_name(v) not in names
    return lambda v: type_name(v) in names


def _single_step(step: Step, fan_leaf: bool, test: _Test) -> Predicate:
    """``any(test(v) for v in values(body, (step,), 0, fan_leaf))`` for a one-key path,
    without the generators (a top-level field is what most subscriptions test)."""
    name = step.name
    fan = step.may_fan_out and fan_leaf
    only_lists = step.kind is not None and step.kind != "mixed"

    def predicate(body: Mapping[str, Any]) -> bool:
        value = body.get(name, MISSING) if type(body) is dict or isinstance(body, Mapping) else MISSING
        if fan:
            if isinstance(value, list):
                return any(test(v) for v in value)
            if only_lists:
                return False   # the schema says list: a null or missing list has no elements
        return True if test(value) else False

    return predicate


def _child(current: Any, name: str) -> Any:
    if isinstance(current, Mapping):
        return current.get(name, MISSING)
    return MISSING


class _Evaluator:
    def __init__(self, collection: str | None, schema: Schema | None,
                 resolve_link: LinkResolver | None, resolve_backlinks: BacklinkResolver | None = None) -> None:
        self.collection = collection
        self.schema = schema
        self.resolve_link = resolve_link
        self.resolve_backlinks = resolve_backlinks

    def steps(self, names: tuple[str, ...]) -> tuple[Step, ...]:
        steps = resolve(self.collection, self.schema, names)
        if steps[0].kind == "backlinks" and self.resolve_backlinks is None:
            raise QueryError(f"{'.'.join(names)} finds the objects linking here: pass resolve_backlinks= "
                             f"to to_predicate")
        if self.resolve_link is None and any(s.is_link and s.kind != "backlinks" for s in steps[:-1]):
            raise QueryError(f"{'.'.join(names)} follows a link: pass resolve_link= to to_predicate")
        return steps

    def linking(self, current: Any, step: Step) -> list[Any]:
        """The documents whose links point at ``current`` (``@links``), as ``step`` names them."""
        pk = current.get("_id", MISSING) if isinstance(current, Mapping) else MISSING
        if pk is MISSING or self.resolve_backlinks is None:
            return []
        if step.target is not None and step.via is not None:
            sources = [(step.target, step.via)]
        else:
            assert self.schema is not None and self.collection is not None
            sources = [(origin, via) for origin, via, _ in backlink_sources(self.schema, self.collection)]
        return [body for origin, via in sources for body in self.resolve_backlinks(origin, via, pk)]

    def values(self, current: Any, steps: tuple[Step, ...], i: int, fan_leaf: bool) -> Iterator[Any]:
        step = steps[i]
        last = i == len(steps) - 1
        if step.kind == "backlinks":
            linking = self.linking(current, step)
            if last:
                yield linking      # counted: the objects that link here
            else:
                for body in linking:
                    yield from self.values(body, steps, i + 1, fan_leaf)
            return
        value = _child(current, step.name)
        fan = step.may_fan_out and (fan_leaf or not last)
        if not fan:
            items: list[Any] = [value]
        elif isinstance(value, list):
            items = value
        elif step.kind is not None and step.kind != "mixed":
            items = []  # the schema says list: a null or missing list has no elements
        else:
            items = [value]
        for item in items:
            if last:
                yield item
            elif step.is_link:
                yield from self.values(self.follow(step, item), steps, i + 1, fan_leaf)
            else:
                yield from self.values(item, steps, i + 1, fan_leaf)

    def follow(self, step: Step, pk: Any) -> Any:
        # Only what a primary key can be: str, int, ObjectId or UUID (the SQL hop compares
        # canonical JSON text, so nothing else can ever match there either).
        if self.resolve_link is None or not (
                isinstance(pk, str) or (isinstance(pk, int) and not isinstance(pk, bool))
                or family(pk) in ("oid", "uuid")):
            return MISSING
        assert step.target is not None
        body = self.resolve_link(step.target, pk)
        return MISSING if body is None else body

    def members(self, part: DictPart, steps: tuple[Step, ...]) -> Callable[[Any], Iterator[Any]]:
        """``notes.@keys`` / ``@values``: each key, or each value, of every dictionary the
        path leads to (a tagged value of a field of unknown type is no dictionary)."""
        values, keys, known = self.values, part.part == "keys", steps[-1].kind == "dict"

        def members(body: Any) -> Iterator[Any]:
            for d in values(body, steps, 0, False):
                if type(d) is dict and (known or not any(k.startswith("$") for k in d)):
                    yield from (d.keys() if keys else d.values())
        return members

    def tested(self, node: Compare | In | Between | StringOp | Exists
               ) -> tuple[_Test, Callable[[Any], Iterable[Any]], Predicate | None]:
        """What a leaf test applies to a document: the test of one value, the values of a
        body it applies to (every fan-out of its key path, or a dictionary's members), and,
        for a one-key path, the whole ANY test made without the generators."""
        path = node.path if isinstance(node, Exists) else node.left
        if isinstance(path, DictPart):
            assert not isinstance(node, Exists)
            steps = self.steps(path.path.names)
            check_leaf(node, steps, self.collection, self.schema)
            return (leaf_test(node, dict_member_kind(path, steps, self.collection, self.schema)),
                    self.members(path, steps), None)
        names = path.path.names if isinstance(path, (Count, TypeOf)) else path.names
        fan_leaf = not isinstance(node, Exists) and not isinstance(path, (Count, TypeOf))
        steps = self.steps(names)
        check_leaf(node, steps, self.collection, self.schema)
        if isinstance(node, Exists) and steps[0].kind == "backlinks":
            raise QueryError("@links cannot be tested for existence: count it (@links...@count > 0)")
        element = self.subquery_element(path, steps[-1]) if isinstance(path, SubqueryCount) else None
        test = self.through_links(path, steps[-1], leaf_test(node, steps[-1].kind, element))
        single = _single_step(steps[0], fan_leaf, test) if len(steps) == 1 and steps[0].kind != "backlinks" else None
        values = self.values
        return test, lambda body: values(body, steps, 0, fan_leaf), single

    def leaf(self, node: Compare | In | Between | StringOp | Exists) -> Predicate:
        test, subjects, single = self.tested(node)
        if single is not None:
            return single
        return lambda body: any(test(v) for v in subjects(body))

    def through_links(self, left: Any, last: Step, test: Callable[[Any], bool]) -> Callable[[Any], bool]:
        """For ``helpers.@sum.level`` over a list of links: the test of the aggregate of the
        linked documents (a missing or deleted one has no number), instead of the keys."""
        if not (isinstance(left, Aggregate) and left.of and last.item_kind == "link"):
            return test
        if self.resolve_link is None:
            raise QueryError(f"{left} reads linked documents: pass resolve_link= to to_predicate")
        follow = self.follow

        def linked(v: Any) -> bool:
            return test([follow(last, pk) for pk in v] if isinstance(v, list) else v)
        return linked

    def subquery_element(self, subquery: SubqueryCount, last: Step) -> Callable[[Any], bool]:
        """Whether one element of the list ``last`` reaches passes the SUBQUERY's predicate
        (a link is followed first; a missing or deleted document is no element)."""
        collection, link = subquery_elements(last)
        inner = _Evaluator(collection, self.schema if collection is not None else None,
                           self.resolve_link, self.resolve_backlinks).compile(subquery.predicate)
        if link is None:
            return inner
        if self.resolve_link is None:
            raise QueryError(f"{subquery} goes through links: pass resolve_link= to to_predicate")
        follow = self.follow

        def linked(pk: Any) -> bool:
            body = follow(last, pk)
            return body is not MISSING and inner(body)
        return linked

    def compile(self, node: Node) -> Predicate:
        if isinstance(node, TruePredicate):
            return lambda body: True
        if isinstance(node, FalsePredicate):
            return lambda body: False
        if isinstance(node, And):
            parts = [self.compile(i) for i in node.items]
            if len(parts) == 2:
                first, second = parts
                return lambda body: first(body) and second(body)
            return lambda body: all(p(body) for p in parts)
        if isinstance(node, Or):
            parts = [self.compile(i) for i in node.items]
            return lambda body: any(p(body) for p in parts)
        if isinstance(node, Not):
            inner = self.compile(node.item)
            return lambda body: not inner(body)
        if isinstance(node, Quantified):
            return self.quantified(node)
        if isinstance(node, CompareFields):
            return self.fields(node)
        return self.leaf(node)

    def fields(self, node: CompareFields) -> Predicate:
        resolve_field_pair(node, self.collection, self.schema)
        left, right, op, ci = node.left.names, node.right.names, node.op, node.case_insensitive
        return lambda body: compare_values(value_at(body, left), op, value_at(body, right), ci)

    def quantified(self, node: Quantified) -> Predicate:
        test, subjects, _ = self.tested(node.predicate)
        if node.quantifier == "any":
            return lambda body: any(test(v) for v in subjects(body))
        if node.quantifier == "all":
            return lambda body: all(test(v) for v in subjects(body))
        return lambda body: not any(test(v) for v in subjects(body))


def to_predicate(query: Query | Node, collection: str | None = None, schema: Schema | None = None,
                 resolve_link: LinkResolver | None = None,
                 resolve_backlinks: BacklinkResolver | None = None) -> Predicate:
    """Compile a query into ``match(body) -> bool`` over plain-form document bodies.

    Args:
        query: a bound :class:`Query` or node.
        collection: the queried collection (needed with ``schema``).
        schema: when given, field names are checked, typed fields compared by their kind,
            and links followed.
        resolve_link: ``(collection, pk_plain) -> body | None``; needed when a key path
            follows a link (``technician.name == 'Ann'``). Return ``None`` for a missing or
            deleted document.
        resolve_backlinks: ``(origin, field, pk_plain) -> [body, ...]``; needed for key paths
            that start with ``@links`` (the live documents of ``origin`` linking here by
            ``field``).

    Raises:
        QueryError: an unknown field, a comparison that does not fit the field's type, an
            unbound ``$n``, or a link path without ``resolve_link``.
    """
    node = query.node if isinstance(query, Query) else query
    return _Evaluator(collection, schema, resolve_link, resolve_backlinks).compile(node)
