"""Query nodes: small frozen dataclasses shared by both parsers and all three compilers.

A query is a tree of *predicates* (:data:`Node`) over *key paths* (:class:`Path`) and
*operands* (:class:`Value` holding a plain-form value, or :class:`Param` for an unbound
``$n`` argument). Nodes validate in their constructors and raise
:class:`~tidesync.errors.QueryError`; :func:`bind` turns ``$n`` params into values.

Meaning of a key path (the rule every compiler keeps):

* Each step looks a key up in an embedded object or dictionary; a step past anything else
  (a scalar, a tagged value, null, or a missing key) gives *missing*, which every test
  treats as null (except :class:`Exists`).
* A step whose value is a **list** (or set) *fans out*: the rest of the path applies to each
  element, and a test holds if it holds for **any** element. This is Realm's implicit ANY
  (``tags == 'x'``) and MongoDB's array matching (``{"tags": "x"}``). Each step fans out
  at most once (a list inside a list is one element). Where the schema says a field is a
  list or set, a null or missing one is empty (as in Realm); where the type is not known
  (no schema, ``mixed``), a null or missing value is just that, so ``tags == nil`` holds
  (as in MongoDB).
* A step through a **link** (known from the schema) continues in the linked document; a
  null, missing or dangling link continues as *missing*.
* :class:`Quantified` makes the quantifier explicit over every fan-out of its predicate's
  path: ``ANY`` (the default), ``ALL`` (vacuously true on an empty list), ``NONE``.
* :class:`Count` (``@count``/``@size``), :class:`TypeOf` (``@type``) and :class:`Exists`
  look at the value the path ends at without fanning it out; a null or missing list, set or dictionary known from the
  schema counts 0.

Values are compared as :mod:`tidesync.query.semantics` describes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal, TypeAlias

from ..core.values import Plain, canonical_json, from_plain, to_plain
from ..errors import QueryError
from .semantics import ORDERED_FAMILIES, family, type_names

__all__ = [
    "CompareOp",
    "StringOpName",
    "QuantifierName",
    "MAX_DEPTH",
    "COMPARE_OPS",
    "STRING_OPS",
    "QUANTIFIERS",
    "Path",
    "Count",
    "Size",
    "Aggregate",
    "AggregateName",
    "SubqueryCount",
    "DictPart",
    "DictPartName",
    "TypeOf",
    "AGGREGATES",
    "Value",
    "Param",
    "Operand",
    "Compare",
    "CompareFields",
    "In",
    "Between",
    "StringOp",
    "Exists",
    "Quantified",
    "And",
    "Or",
    "Not",
    "TruePredicate",
    "FalsePredicate",
    "Node",
    "LeafNode",
    "Query",
    "SortDescriptor",
    "DistinctDescriptor",
    "LimitDescriptor",
    "Descriptor",
    "bind",
    "params_of",
    "bound_plain",
    "bind_value",
    "type_test",
    "node_to_json",
    "node_from_json",
]

CompareOp: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">="]
StringOpName: TypeAlias = Literal["beginswith", "endswith", "contains", "like"]
QuantifierName: TypeAlias = Literal["any", "all", "none"]
AggregateName: TypeAlias = Literal["min", "max", "sum", "avg"]
DictPartName: TypeAlias = Literal["keys", "values"]

MAX_DEPTH: Final = 64
"""How deeply parsers let predicates nest (parentheses, NOT, $and/$or/$not): deeper input
from a peer is a :class:`~tidesync.errors.QueryError`, not a ``RecursionError``."""

COMPARE_OPS: Final = ("==", "!=", "<", "<=", ">", ">=")
STRING_OPS: Final = ("beginswith", "endswith", "contains", "like")
QUANTIFIERS: Final = ("any", "all", "none")
AGGREGATES: Final = ("min", "max", "sum", "avg")


# -- paths and operands ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Path:
    """A key path: field names from the queried document, through embedded objects,
    dictionaries and links, e.g. ``Path(("site", "city"))``.

    Names are checked so that they can be written safely into a JSON path: not empty, no
    ``.``, not starting with ``$``, no ``"`` or control characters.
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        names = self.names
        if isinstance(names, str) or not isinstance(names, (tuple, list)):
            raise QueryError(f"a key path is a sequence of field names, not {names!r}")
        object.__setattr__(self, "names", tuple(names))
        if not self.names:
            raise QueryError("a key path needs at least one field name")
        for name in self.names:
            _check_name(name)

    @classmethod
    def parse(cls, dotted: str) -> Path:
        """``Path.parse("site.city") == Path(("site", "city"))``."""
        return cls(tuple(dotted.split(".")))

    def __str__(self) -> str:
        return ".".join(self.names)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise QueryError(f"a field name must be a non-empty str, not {name!r}")
    if "." in name or name.startswith("$") or '"' in name or any(ord(c) < 32 for c in name):
        raise QueryError(f"invalid field name {name!r}: it may not contain '.', '\"' or control "
                         f"characters, nor start with '$'")


@dataclass(frozen=True, slots=True)
class Count:
    """``path.@count``: the number of elements of a list or set, keys of a dictionary or
    embedded object, or characters of a string."""

    path: Path

    def __str__(self) -> str:
        return f"{self.path}.@count"


@dataclass(frozen=True, slots=True)
class Size(Count):
    """``path.@size``: Realm's other spelling of :class:`Count` (same meaning)."""

    def __str__(self) -> str:
        return f"{self.path}.@size"


@dataclass(frozen=True, slots=True)
class Aggregate(Count):
    """``path.@min``, ``@max``, ``@sum``, ``@avg``: of the numbers (ints and finite floats)
    in a list or set of int or float; other elements and nulls are skipped. Of none: ``@sum``
    is 0, the others null. ``@sum`` and ``@avg`` are computed in double precision.

    With ``of`` (``items.@sum.price``): of that key path in each element of a list of embedded
    objects (Realm's aggregate of a property); elements without a number there are skipped."""

    op: AggregateName = "sum"
    of: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.op not in AGGREGATES:
            raise QueryError(f"unknown aggregate @{self.op}; expected one of "
                             f"{', '.join('@' + a for a in AGGREGATES)}")
        of = self.of
        if isinstance(of, str) or not isinstance(of, (tuple, list)):
            raise QueryError(f"an aggregate's element path is a sequence of field names, not {of!r}")
        object.__setattr__(self, "of", tuple(of))
        for name in self.of:
            _check_name(name)

    def __str__(self) -> str:
        return f"{self.path}.@{self.op}" + "".join("." + n for n in self.of)


@dataclass(frozen=True, slots=True)
class SubqueryCount(Count):
    """``SUBQUERY(lines, $line, $line.qty > 1 AND $line.price < 5).@count``: how many elements
    of a list of embedded objects, or of a list of links, pass ``predicate`` (Realm's
    SUBQUERY). The predicate's key paths start at the element (``Path(("qty",))`` for
    ``$line.qty``); a link whose document is missing or deleted is not an element. A number,
    compared like ``@count``. ``variable`` is the name the RQL text gave the element (for
    writing it back; it takes no part in equality)."""

    predicate: Node
    variable: str = field(default="x", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.predicate, _NODE_TYPES):
            raise QueryError(f"SUBQUERY needs a predicate over the elements, got {self.predicate!r}")
        if not isinstance(self.variable, str) or not _VARIABLE.fullmatch(self.variable):
            raise QueryError(f"a SUBQUERY variable is a name such as 'line' (written $line), not {self.variable!r}")

    def __str__(self) -> str:
        return f"SUBQUERY({self.path}, ${self.variable}, ...).@count"


_VARIABLE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class DictPart:
    """``notes.@keys`` or ``notes.@values``: each key (a string), or each value, of a
    dictionary, tested like the elements of a list: a test holds if it holds for some
    member (``ANY``, the default), for every member (``ALL``, true for an empty or missing
    dictionary) or for none (``NONE``)."""

    path: Path
    part: DictPartName = "values"

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):
            raise QueryError(f"@{self.part} needs the key path of a dictionary, got {self.path!r}")
        if self.part not in ("keys", "values"):
            raise QueryError(f"unknown dictionary part @{self.part}; expected @keys or @values")

    def __str__(self) -> str:
        return f"{self.path}.@{self.part}"


@dataclass(frozen=True, slots=True)
class TypeOf:
    """``extra.@type``: the type of the value the key path leads to, compared with ``==``,
    ``!=`` or ``IN`` against type names (:data:`~tidesync.query.semantics.TYPE_NAMES`,
    matched whatever their case: ``'string'``, ``'int'``, ``'numeric'``, ...). The value is
    not fanned out: a list is a ``list``; a list crossed on the way fans out as usual."""

    path: Path

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):
            raise QueryError(f"@type needs a key path, got {self.path!r}")

    def __str__(self) -> str:
        return f"{self.path}.@type"


@dataclass(frozen=True, slots=True, eq=False)
class Value:
    """A constant operand, in plain form (``{"$date": micros}``, ``{"$oid": hex}``, ...).

    Equality and hashing go by canonical JSON, so ``Value(1) != Value(1.0)`` and values
    holding lists or tagged objects are hashable.
    """

    plain: Plain

    def __post_init__(self) -> None:
        _check_operand_plain(self.plain, allow_list=True)

    @classmethod
    def of(cls, python_value: Any) -> Value:
        """The value of a Python object (datetime, Decimal, ObjectId, UUID, bytes, ...).

        Raises:
            QueryError: the object has no plain form (e.g. a naive datetime).
        """
        try:
            plain = to_plain(python_value)
        except (ValueError, TypeError) as exc:
            raise QueryError(f"cannot use {python_value!r} in a query: {exc}") from None
        return cls(plain)

    @property
    def family(self) -> str:
        """The comparison family of the value (see :mod:`.semantics`)."""
        return family(self.plain)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Value) and canonical_json(self.plain) == canonical_json(other.plain)

    def __hash__(self) -> int:
        return hash(canonical_json(self.plain))

    def __repr__(self) -> str:
        return f"Value({self.plain!r})"


def _check_operand_plain(plain: Plain, *, allow_list: bool) -> None:
    if isinstance(plain, list):
        if not allow_list:
            raise QueryError("a list is only allowed after IN")
        for item in plain:
            _check_operand_plain(item, allow_list=False)
        return
    if isinstance(plain, float) and not math.isfinite(plain):
        raise QueryError("non-finite floats are written {'$float': 'nan' | 'inf' | '-inf'} in plain form")
    if isinstance(plain, int) and not isinstance(plain, bool) and not -(2**63) <= plain < 2**63:
        raise QueryError(f"int {plain} does not fit in 64 bits")
    if plain is None or isinstance(plain, (bool, int, float, str)):
        return
    if isinstance(plain, dict):
        if len(plain) == 1 and next(iter(plain)).startswith("$"):
            try:
                from_plain(plain)
            except ValueError as exc:
                raise QueryError(str(exc)) from None
            if family(plain) == "other":
                raise QueryError(f"cannot query with {plain!r}: NaN and infinite decimals are not "
                                 f"comparable (use a float)")
            return
        raise QueryError("cannot compare with an embedded object: compare its fields with a key path "
                         "(e.g. site.city == 'Oslo')")
    raise QueryError(f"not a plain-form value: {plain!r}")


@dataclass(frozen=True, slots=True)
class Param:
    """An unbound ``$index`` argument; :func:`bind` replaces it with a :class:`Value`.

    ``position`` (where it appeared in the query text, if known) is for error messages and
    takes no part in equality.
    """

    index: int
    position: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or isinstance(self.index, bool) or self.index < 0:
            raise QueryError(f"argument index must be an int >= 0, not {self.index!r}")

    def __str__(self) -> str:
        return f"${self.index}"


Operand: TypeAlias = Value | Param


def _check_left(left: object, *, allow_count: bool = True) -> None:
    if isinstance(left, DictPart):
        return
    if isinstance(left, TypeOf):
        if not allow_count:
            raise QueryError(f"{left} is compared with type names by ==, != or IN, not by string operators")
        return
    if isinstance(left, Count):
        if not allow_count:
            raise QueryError(f"{left} is a number: string operators need a string field")
        return
    if not isinstance(left, Path):
        raise QueryError(f"expected a key path, got {left!r}")


def _check_operand(right: object) -> None:
    if not isinstance(right, (Value, Param)):
        raise QueryError(f"expected a Value or Param operand, got {right!r}")


def _check_scalar(left: Path | Count | DictPart | TypeOf, op: str, value: Value, case_insensitive: bool,
                  diacritic_insensitive: bool = False) -> None:
    if isinstance(value.plain, list):
        raise QueryError(f"a list can only be used with IN, not with {op!r}")
    if isinstance(left, TypeOf):
        if op not in ("==", "!="):
            raise QueryError(f"{left} is compared with ==, != or IN, not with {op!r}")
        if not type_names(value.plain):
            raise QueryError(f"{left}: {value.plain!r} is not a type name; expected one such as 'string', 'int', "
                             f"'double', 'numeric', 'bool', 'date', 'decimal', 'objectId', 'uuid', 'binary', "
                             f"'list', 'dictionary' or 'null' (any case)",
                             advice="docs/queries.md lists every name @type accepts")
        return
    fam = value.family
    if isinstance(left, DictPart) and left.part == "keys" and fam != "string":
        raise QueryError(f"{left}: the keys of a dictionary are strings; they cannot be compared with "
                         f"{value.plain!r}")
    if isinstance(left, Aggregate):
        if fam != "number" and not (fam == "null" and left.op != "sum"):
            raise QueryError(f"{left} is a number{'' if left.op == 'sum' else ' or null'}; "
                             f"it cannot be compared with {value.plain!r}")
    elif isinstance(left, Count) and fam != "number":
        raise QueryError(f"{left} is a number; it cannot be compared with {value.plain!r}")
    if fam == "null" and op not in ("==", "!="):
        raise QueryError(f"null can only be compared with == or !=, not {op!r}")
    if op not in ("==", "!=") and fam not in ORDERED_FAMILIES:
        raise QueryError(f"{fam} values have no order: use == or != instead of {op!r}")
    if case_insensitive and fam != "string":
        raise QueryError("[c] (case-insensitive) needs a string to compare with")
    if diacritic_insensitive and fam != "string":
        raise QueryError("[d] (diacritic-insensitive) needs a string to compare with")


# -- predicates --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right``: ``==`` ``!=`` ``<`` ``<=`` ``>`` ``>=``; ``[c]`` folds ASCII case,
    ``[d]`` removes diacritics (:func:`~tidesync.query.semantics.fold_diacritics`); both
    apply to ``==`` and ``!=`` on strings only."""

    op: CompareOp
    left: Path | Count | DictPart | TypeOf
    right: Value | Param
    case_insensitive: bool = False
    diacritic_insensitive: bool = False

    def __post_init__(self) -> None:
        if self.op not in COMPARE_OPS:
            raise QueryError(f"unknown comparison {self.op!r}; expected one of {', '.join(COMPARE_OPS)}")
        _check_left(self.left)
        _check_operand(self.right)
        if isinstance(self.left, TypeOf) and (self.case_insensitive or self.diacritic_insensitive):
            raise QueryError(f"{self.left} matches type names whatever their case: leave out [c] and [d]")
        if self.case_insensitive and (self.op not in ("==", "!=") or isinstance(self.left, Count)):
            raise QueryError(f"[c] (case-insensitive) only applies to == and != on strings, not {self.op!r}")
        if self.diacritic_insensitive and (self.op not in ("==", "!=") or isinstance(self.left, Count)):
            raise QueryError(f"[d] (diacritic-insensitive) only applies to == and != on strings, not {self.op!r}")
        if isinstance(self.right, Value):
            _check_scalar(self.left, self.op, self.right, self.case_insensitive, self.diacritic_insensitive)


@dataclass(frozen=True, slots=True)
class CompareFields:
    """``left op right`` between two fields of the same document: ``price > cost``.

    Both key paths lead to one typed scalar field each: fields of the document and of its
    embedded objects, not through lists or links, not ``mixed``, both of one value family
    (compilers need the schema for it and raise :class:`~tidesync.errors.QueryError`
    otherwise). The values compare as a value with a constant does
    (:func:`tidesync.query.semantics.compare_values`): different families never match, null
    equals null (a missing field counts as null), and an order holds only in an ordered
    family. ``[c]`` folds ASCII case of strings (``==`` and ``!=`` only).
    """

    op: CompareOp
    left: Path
    right: Path
    case_insensitive: bool = False

    def __post_init__(self) -> None:
        if self.op not in COMPARE_OPS:
            raise QueryError(f"unknown comparison {self.op!r}; expected one of {', '.join(COMPARE_OPS)}")
        for side in (self.left, self.right):
            if isinstance(side, Count):
                raise QueryError(f"{side} can only be compared with a value, not with another key path")
            if not isinstance(side, Path):
                raise QueryError(f"comparing two fields needs a key path on each side, got {side!r}")
        if self.case_insensitive and self.op not in ("==", "!="):
            raise QueryError(f"[c] (case-insensitive) only applies to == and != on strings, not {self.op!r}")


@dataclass(frozen=True, slots=True)
class In:
    """``left IN {v1, v2, ...}``: equal to any of the values (a :class:`Value` holding a
    list, or a :class:`Param` bound to a list)."""

    left: Path | Count | DictPart | TypeOf
    values: Value | Param

    def __post_init__(self) -> None:
        _check_left(self.left)
        _check_operand(self.values)
        if isinstance(self.values, Value):
            if not isinstance(self.values.plain, list):
                raise QueryError(f"IN needs a list of values, not {self.values.plain!r}")
            for item in self.values.plain:
                _check_scalar(self.left, "==", Value(item), False)


@dataclass(frozen=True, slots=True)
class Between:
    """``left BETWEEN {low, high}``: ``low <= left <= high`` (inclusive, on one element)."""

    left: Path | Count | DictPart | TypeOf
    low: Value | Param
    high: Value | Param

    def __post_init__(self) -> None:
        _check_left(self.left)
        _check_operand(self.low)
        _check_operand(self.high)
        for bound in (self.low, self.high):
            if isinstance(bound, Value):
                _check_scalar(self.left, "<=", bound, False)
        if isinstance(self.low, Value) and isinstance(self.high, Value) \
                and self.low.family != self.high.family:
            raise QueryError(f"BETWEEN bounds must be of one type: {self.low.plain!r} and {self.high.plain!r}")


@dataclass(frozen=True, slots=True)
class StringOp:
    """``left BEGINSWITH|ENDSWITH|CONTAINS|LIKE right``, optionally case-insensitive.

    LIKE: ``*`` matches any run of characters, ``?`` exactly one. Non-strings never match.
    ``[c]`` folds ASCII case, ``[d]`` removes diacritics, of both sides.
    """

    op: StringOpName
    left: Path | DictPart
    right: Value | Param
    case_insensitive: bool = False
    diacritic_insensitive: bool = False

    def __post_init__(self) -> None:
        if self.op not in STRING_OPS:
            raise QueryError(f"unknown string operator {self.op!r}; expected one of {', '.join(STRING_OPS)}")
        _check_left(self.left, allow_count=False)
        _check_operand(self.right)
        if isinstance(self.right, Value) and not isinstance(self.right.plain, str):
            raise QueryError(f"{self.op.upper()} needs a string, not {self.right.plain!r}")


@dataclass(frozen=True, slots=True)
class Exists:
    """The key path leads to a value, null included (MongoDB ``$exists``)."""

    path: Path

    def __post_init__(self) -> None:
        _check_left(self.path, allow_count=False)




@dataclass(frozen=True, slots=True)
class Quantified:
    """``ANY``/``ALL``/``NONE`` applied over every list the predicate's key path fans out on.

    ``ANY tags == 'x'`` is the same as ``tags == 'x'``; ``ALL`` holds on an empty list;
    ``NONE`` is ``NOT ANY``.
    """

    quantifier: QuantifierName
    predicate: Compare | In | Between | StringOp

    def __post_init__(self) -> None:
        if self.quantifier not in QUANTIFIERS:
            raise QueryError(f"unknown quantifier {self.quantifier!r}; expected ANY, ALL or NONE")
        if not isinstance(self.predicate, (Compare, In, Between, StringOp)):
            raise QueryError(f"{self.quantifier.upper()} needs a comparison after it")


@dataclass(frozen=True, slots=True)
class And:
    """All of ``items`` hold (an empty And holds)."""

    items: tuple[Node, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _check_items(self.items))


@dataclass(frozen=True, slots=True)
class Or:
    """Any of ``items`` holds (an empty Or does not)."""

    items: tuple[Node, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _check_items(self.items))


@dataclass(frozen=True, slots=True)
class Not:
    """``item`` does not hold."""

    item: Node

    def __post_init__(self) -> None:
        if not isinstance(self.item, _NODE_TYPES):
            raise QueryError(f"NOT needs a predicate, got {self.item!r}")


@dataclass(frozen=True, slots=True)
class TruePredicate:
    """Matches every document (``TRUEPREDICATE``, ``{}``)."""


@dataclass(frozen=True, slots=True)
class FalsePredicate:
    """Matches no document (``FALSEPREDICATE``)."""


Node: TypeAlias = (Compare | CompareFields | In | Between | StringOp | Exists | Quantified | And | Or | Not
                   | TruePredicate | FalsePredicate)
LeafNode: TypeAlias = Compare | In | Between | StringOp
"""A test on the value(s) one key path leads to: what :class:`Quantified` can quantify."""

_NODE_TYPES: Final = (Compare, CompareFields, In, Between, StringOp, Exists, Quantified, And, Or, Not,
                      TruePredicate, FalsePredicate)


def _check_items(items: object) -> tuple[Node, ...]:
    if not isinstance(items, (tuple, list)):
        raise QueryError(f"expected a sequence of predicates, got {items!r}")
    for item in items:
        if not isinstance(item, _NODE_TYPES):
            raise QueryError(f"expected a predicate, got {item!r}")
    return tuple(items)


# -- result descriptors (RQL's SORT, DISTINCT, LIMIT) -------------------------------------


@dataclass(frozen=True, slots=True)
class SortDescriptor:
    """RQL ``SORT(a ASC, b DESC)``: ``(path, descending)`` pairs, the first the primary key."""

    keys: tuple[tuple[Path, bool], ...]

    def __post_init__(self) -> None:
        if not self.keys or not all(isinstance(p, Path) and type(d) is bool for p, d in self.keys):
            raise QueryError("SORT needs at least one key path")


@dataclass(frozen=True, slots=True)
class DistinctDescriptor:
    """RQL ``DISTINCT(a, b)``: of the objects with equal values of these key paths, only
    the first (in the order in effect where it is written) is kept."""

    paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        if not self.paths or not all(isinstance(p, Path) for p in self.paths):
            raise QueryError("DISTINCT needs at least one key path")


@dataclass(frozen=True, slots=True)
class LimitDescriptor:
    """RQL ``LIMIT(n)``: at most ``n`` objects."""

    count: int

    def __post_init__(self) -> None:
        if type(self.count) is not int or self.count < 0:
            raise QueryError(f"LIMIT needs a whole number >= 0, not {self.count!r}")


Descriptor: TypeAlias = SortDescriptor | DistinctDescriptor | LimitDescriptor


# -- the query wrapper -------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A parsed query: the predicate tree, for RQL the text it came from, and the result
    descriptors that text ends with (``SORT``, ``DISTINCT``, ``LIMIT``, in the order written).

    Make one with :func:`tidesync.query.parse_query`. Compile it with
    :func:`~tidesync.query.compile_sql`, :func:`~tidesync.query.to_predicate` or
    :func:`~tidesync.query.to_mongo` (the predicate only; ``Results.filter`` applies the
    descriptors); send its predicate to another replica as :meth:`to_json`.
    """

    node: Node
    text: str | None = field(default=None, compare=False)
    descriptors: tuple[Descriptor, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.node, _NODE_TYPES):
            raise QueryError(f"a Query holds a predicate node, not {self.node!r}")

    @property
    def params(self) -> frozenset[int]:
        """Indices of the ``$n`` arguments still unbound (empty once bound)."""
        return params_of(self.node)

    def bind(self, args: Sequence[Any]) -> Query:
        """This query with its ``$n`` arguments replaced by ``args``."""
        return Query(bind(self.node, args), self.text, self.descriptors)

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible description (values in plain form) that :meth:`from_json` reads:
        the predicate and the text, not the descriptors (a subscription syncs every match)."""
        out: dict[str, Any] = {"node": node_to_json(self.node)}
        if self.text is not None:
            out["text"] = self.text
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Query:
        """Rebuild a query from :meth:`to_json` output.

        Raises:
            QueryError: the data does not describe a valid query.
        """
        if not isinstance(data, Mapping) or "node" not in data:
            raise QueryError("a serialized query is an object with a 'node' key")
        text = data.get("text")
        return cls(node_from_json(data["node"]), text if isinstance(text, str) else None)


# -- binding -----------------------------------------------------------------------------


def _operands(node: Node) -> Iterator[Value | Param]:
    left = getattr(node, "left", None)
    if isinstance(left, SubqueryCount):
        yield from _operands(left.predicate)
    if isinstance(node, (Compare, StringOp)):
        yield node.right
    elif isinstance(node, In):
        yield node.values
    elif isinstance(node, Between):
        yield node.low
        yield node.high
    elif isinstance(node, Quantified):
        yield from _operands(node.predicate)
    elif isinstance(node, (And, Or)):
        for item in node.items:
            yield from _operands(item)
    elif isinstance(node, Not):
        yield from _operands(node.item)


def bound_plain(operand: Value | Param) -> Plain:
    """The plain value of a bound operand.

    Raises:
        QueryError: the operand is an unbound ``$n``.
    """
    if isinstance(operand, Param):
        raise QueryError(f"the query has an unbound argument ${operand.index}: bind it first "
                         f"(parse_query(text, args) or Query.bind(args))")
    return operand.plain


def type_test(node: Compare | In | Between) -> tuple[frozenset[str], bool]:
    """What a test of :class:`TypeOf` asks: the types it names (``'numeric'`` is three) and
    whether the value's type must be outside them (``!=``) rather than among them.

    Raises:
        QueryError: ``BETWEEN``, or an unbound :class:`Param`.
    """
    if isinstance(node, Between):
        raise QueryError(f"{node.left} is compared with ==, != or IN, not BETWEEN")
    if isinstance(node, Compare):
        return type_names(bound_plain(node.right)), node.op == "!="
    options = bound_plain(node.values)
    assert isinstance(options, list)
    return frozenset().union(*(type_names(o) for o in options)), False


def params_of(node: Node) -> frozenset[int]:
    """Indices of the :class:`Param` operands in ``node``."""
    return frozenset(p.index for p in _operands(node) if isinstance(p, Param))


def bind_value(param: Param, args: Sequence[Any], *, want_list: bool) -> Value:
    """The :class:`Value` for ``param`` from ``args``.

    Raises:
        QueryError: no such argument, the argument has no plain form, or a list was
            expected (after IN) and not given (or the reverse).
    """
    if param.index >= len(args):
        given = f"only {len(args)} argument{'s' if len(args) != 1 else ''} were given" if args \
            else "no arguments were given"
        raise QueryError(f"the query uses ${param.index} but {given}")
    arg = args[param.index]
    is_list = isinstance(arg, (list, tuple, set, frozenset))
    if want_list and not is_list:
        raise QueryError(f"IN ${param.index} needs a list argument, got {type(arg).__name__}")
    if not want_list and is_list:
        raise QueryError(f"${param.index} is a {type(arg).__name__}; lists can only be used with IN")
    return Value.of(arg)


def bind(node: Node, args: Sequence[Any]) -> Node:
    """``node`` with each ``$n`` :class:`Param` replaced by ``Value.of(args[n])``.

    Raises:
        QueryError: an argument is missing, has no plain form, or does not fit where it is
            used (e.g. a string after ``>``, a non-list after IN).
    """
    if isinstance(node, (Compare, In, Between)) and isinstance(node.left, SubqueryCount) \
            and params_of(node.left.predicate):
        node = replace(node, left=replace(node.left, predicate=bind(node.left.predicate, args)))
    if isinstance(node, (Compare, StringOp)):
        if isinstance(node.right, Param):
            return replace(node, right=bind_value(node.right, args, want_list=False))
        return node
    if isinstance(node, In):
        if isinstance(node.values, Param):
            return replace(node, values=bind_value(node.values, args, want_list=True))
        return node
    if isinstance(node, Between):
        low, high = node.low, node.high
        if isinstance(low, Param):
            low = bind_value(low, args, want_list=False)
        if isinstance(high, Param):
            high = bind_value(high, args, want_list=False)
        return replace(node, low=low, high=high)
    if isinstance(node, Quantified):
        predicate = bind(node.predicate, args)
        assert isinstance(predicate, (Compare, In, Between, StringOp))
        return replace(node, predicate=predicate)
    if isinstance(node, And):
        return And(tuple(bind(i, args) for i in node.items))
    if isinstance(node, Or):
        return Or(tuple(bind(i, args) for i in node.items))
    if isinstance(node, Not):
        return Not(bind(node.item, args))
    return node


# -- JSON form (for subscriptions on the wire and in the store) --------------------------

_KINDS: Final[dict[str, type[Any]]] = {
    "compare": Compare, "compare_fields": CompareFields, "in": In, "between": Between, "string": StringOp, "exists": Exists,
    "quantified": Quantified, "and": And, "or": Or, "not": Not, "true": TruePredicate,
    "false": FalsePredicate,
}
_KIND_OF: Final = {cls: name for name, cls in _KINDS.items()}


def _part_to_json(part: Any) -> Any:
    if isinstance(part, SubqueryCount):
        return {"subquery": [list(part.path.names), node_to_json(part.predicate), part.variable]}
    if isinstance(part, Aggregate):
        return {"aggregate": [part.op, list(part.path.names), *([list(part.of)] if part.of else [])]}
    if isinstance(part, Size):
        return {"size": list(part.path.names)}
    if isinstance(part, Count):
        return {"count": list(part.path.names)}
    if isinstance(part, DictPart):
        return {part.part: list(part.path.names)}
    if isinstance(part, TypeOf):
        return {"type": list(part.path.names)}
    if isinstance(part, Path):
        return {"path": list(part.names)}
    if isinstance(part, Value):
        return {"value": part.plain}
    if isinstance(part, Param):
        return {"param": part.index}
    if isinstance(part, _NODE_TYPES):
        return node_to_json(part)
    if isinstance(part, tuple):
        return [_part_to_json(p) for p in part]
    return part


def node_to_json(node: Node) -> dict[str, Any]:
    """A JSON-compatible dict describing ``node`` (see :func:`node_from_json`).

    ``diacritic_insensitive`` is written only when set, so a query without ``[d]`` has the
    form peers that predate it read."""
    out: dict[str, Any] = {"kind": _KIND_OF[type(node)]}
    for f in fields(node):
        value = getattr(node, f.name)
        if f.name == "diacritic_insensitive" and not value:
            continue
        out[f.name] = _part_to_json(value)
    return out


def _part_from_json(data: Any, depth: int) -> Any:
    if isinstance(data, list):
        return tuple(_part_from_json(d, depth) for d in data)
    if isinstance(data, dict):
        if "kind" in data:
            return _node_from_json(data, depth + 1)
        if len(data) == 1:
            ((key, inner),) = data.items()
            if key == "path":
                return Path(tuple(inner))
            if key == "count":
                return Count(Path(tuple(inner)))
            if key in ("keys", "values"):
                return DictPart(Path(tuple(inner)), key)
            if key == "type":
                return TypeOf(Path(tuple(inner)))
            if key == "size":
                return Size(Path(tuple(inner)))
            if key == "aggregate" and isinstance(inner, list) and len(inner) in (2, 3):
                of = inner[2] if len(inner) == 3 else []
                if not isinstance(of, list) or (len(inner) == 3 and not of):
                    raise QueryError(f"not a serialized aggregate: {data!r}")
                return Aggregate(Path(tuple(inner[1])), inner[0], tuple(of))
            if key == "subquery" and isinstance(inner, list) and len(inner) == 3 and isinstance(inner[0], list):
                return SubqueryCount(Path(tuple(inner[0])), _node_from_json(inner[1], depth + 1), inner[2])
            if key == "value":
                return Value(inner)
            if key == "param":
                return Param(inner)
        raise QueryError(f"not a serialized query part: {data!r}")
    return data


def node_from_json(data: Any) -> Node:
    """Rebuild a node from :func:`node_to_json` output.

    Raises:
        QueryError: the data does not describe a valid node.
    """
    return _node_from_json(data, 0)


def _node_from_json(data: Any, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise QueryError(f"the query nests deeper than {MAX_DEPTH} levels")
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise QueryError(f"not a serialized query node: {data!r}")
    cls = _KINDS[data["kind"]]
    kwargs = {f.name: _part_from_json(data[f.name], depth) for f in fields(cls) if f.name in data}
    try:
        node: Node = cls(**kwargs)
    except TypeError as exc:
        raise QueryError(f"malformed serialized {data['kind']} node: {exc}") from None
    return node
