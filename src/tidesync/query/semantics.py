"""What a query test means on one stored value: the reference semantics every compiler keeps.

A query compares *plain-form* values (:mod:`tidesync.core.values`). This module is the
single definition of those comparisons, written in Python. :mod:`.to_predicate` calls it
directly; :mod:`.to_sql` emits SQL that gives the same answers (and uses it to fold
constants, e.g. "does this test hold on a missing value?"); the property test
``tests/query/test_compilers_agree.py`` checks the two agree.

Rules:

* Every plain value has a **family**: ``null`` (JSON null, or the field is missing),
  ``bool``, ``number`` (JSON int/float, ``$float`` and finite ``$decimal``), ``string``,
  ``date``, ``oid``, ``uuid``, ``binary``; anything else (lists, embedded objects,
  non-finite decimals) is ``other``. Values of different families are never equal and never
  ordered; a comparison across families is simply false (``!=`` is then true).
* Numbers compare by value across int, float and decimal. A decimal compares as the nearest
  float (SQLite's ``CAST(... AS REAL)``), so decimals beyond 15-17 significant digits lose
  precision. ``nan`` equals ``nan`` and is never ordered; ``-inf``/``inf`` order as expected.
* Strings order by code point. Case-insensitive tests fold **ASCII letters only** (SQLite's
  ``lower()`` without ICU): ``'É'`` and ``'é'`` stay different.
* ``!=`` is exactly ``not ==``. Ordered tests (``< <= > >=``) hold only within a family
  that has an order (number, string, date, oid, uuid); ``null``, ``bool`` and ``binary``
  support ``==``/``!=`` only (the node constructors reject the rest).
* ``LIKE`` patterns: ``*`` matches any run of characters (also empty), ``?`` exactly one;
  every other character matches itself.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ..core.values import Plain

__all__ = [
    "MISSING",
    "Family",
    "family",
    "number_key",
    "ORDERED_FAMILIES",
    "compare",
    "compare_values",
    "value_at",
    "compare_numbers",
    "string_test",
    "size_of",
    "TYPE_NAMES",
    "TAGGED_TYPES",
    "type_name",
    "type_names",
    "fold_ascii",
    "fold_diacritics",
    "fold_text",
    "unaccent_sql",
    "like_regex",
]

Family = str
"""One of ``null bool number string date oid uuid binary other``."""

ORDERED_FAMILIES: Final = frozenset({"number", "string", "date", "oid", "uuid"})

_TAG_FAMILY: Final = {"$date": "date", "$oid": "oid", "$uuid": "uuid", "$binary": "binary",
                      "$float": "number", "$decimal": "number"}


class _Missing:
    """The value of a key path that leads nowhere (an absent key, or a step past a scalar)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""Sentinel for "this key path has no value". Every test treats it like JSON null, except
``$exists`` (null exists, MISSING does not)."""


def _tag(value: Plain) -> tuple[str, Any] | None:
    if isinstance(value, dict) and len(value) == 1:
        ((key, inner),) = value.items()
        if key in _TAG_FAMILY:
            return key, inner
    return None


def _finite_decimal(text: Any) -> bool:
    # A finite decimal's text has only digits, sign, point and exponent; NaN/Infinity have
    # the letters N or I, which is also what the SQL guard looks for (GLOB '*[IN]*').
    if not isinstance(text, str) or "N" in text or "I" in text:
        return False
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


def family(value: Any) -> Family:
    """The family of a plain value (``MISSING`` counts as ``null``)."""
    if value is None or value is MISSING:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    tag = _tag(value)
    if tag is not None:
        if tag[0] == "$decimal" and not _finite_decimal(tag[1]):
            return "other"
        return _TAG_FAMILY[tag[0]]
    return "other"


def number_key(value: Plain) -> int | float:
    """The numeric value of a ``number``-family plain value.

    Decimals become floats (as SQLite's ``CAST(text AS REAL)`` does).
    """
    if isinstance(value, bool):
        raise TypeError("a bool is not a number here")
    if isinstance(value, (int, float)):
        return value
    tag = _tag(value)
    if tag is not None and tag[0] in ("$float", "$decimal"):
        return float(tag[1])
    raise TypeError(f"not a number: {value!r}")


def _ordered_key(value: Plain, fam: Family) -> Any:
    if fam == "number":
        return number_key(value)
    if fam in ("string", "bool"):
        return value
    tag = _tag(value)
    assert tag is not None
    return tag[1]


def compare_numbers(left: int | float, op: str, right: int | float) -> bool:
    """``left op right`` with tidesync's NaN rule: nan == nan; nan is never ordered."""
    left_nan = isinstance(left, float) and math.isnan(left)
    right_nan = isinstance(right, float) and math.isnan(right)
    if op == "!=":
        return not compare_numbers(left, "==", right)
    if left_nan or right_nan:
        return op == "==" and left_nan and right_nan
    return _apply(left, op, right)


def _apply(left: Any, op: str, right: Any) -> bool:
    if op == "==":
        return bool(left == right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    if op == ">=":
        return bool(left >= right)
    raise ValueError(f"unknown comparison {op!r}")


_ASCII_FOLD: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_ascii(text: str) -> str:
    """Lower-case ASCII letters only, exactly as SQLite's built-in ``lower()``."""
    return text.translate(_ASCII_FOLD)


_NO_DECOMPOSITION: Final = str.maketrans("øØłŁđĐħĦı", "oOlLdDhHi")


def fold_diacritics(text: str) -> str:
    """Remove diacritics (RQL's ``[d]``): the text in Unicode compatibility decomposition
    (NFKD) without its combining marks, and the letters with a stroke that do not decompose
    (ø ł đ ħ ı) as their base letter: ``"Crème brûlée"`` → ``"Creme brulee"``. The device's
    and the server's SQL call it too (as ``tidesync_unaccent``, registered on every
    connection tidesync opens), so both sides fold alike."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text.translate(_NO_DECOMPOSITION))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def unaccent_sql(value: Any) -> Any:
    """``tidesync_unaccent(x)`` in SQL: :func:`fold_diacritics` of a text, NULL otherwise."""
    return fold_diacritics(value) if isinstance(value, str) else None


def fold_text(text: str, case_insensitive: bool, diacritic_insensitive: bool) -> str:
    """The text as ``[c]`` / ``[d]`` / ``[cd]`` compare it."""
    if diacritic_insensitive:
        text = fold_diacritics(text)
    return fold_ascii(text) if case_insensitive else text


def compare(stored: Any, op: str, arg: Plain, case_insensitive: bool = False,
            diacritic_insensitive: bool = False) -> bool:
    """Does the stored value ``stored`` (plain, or ``MISSING``) satisfy ``stored op arg``?"""
    if op == "!=":
        return not compare(stored, "==", arg, case_insensitive, diacritic_insensitive)
    arg_family = family(arg)
    stored_family = family(stored)
    if arg_family != stored_family:
        return False
    if arg_family == "null":
        return op == "=="
    if arg_family == "number":
        return compare_numbers(number_key(stored), op, number_key(arg))
    if op != "==" and arg_family not in ORDERED_FAMILIES:
        return False
    left, right = _ordered_key(stored, arg_family), _ordered_key(arg, arg_family)
    if (case_insensitive or diacritic_insensitive) and arg_family == "string":
        left = fold_text(left, case_insensitive, diacritic_insensitive)
        right = fold_text(right, case_insensitive, diacritic_insensitive)
    return _apply(left, op, right)


def compare_values(left: Any, op: str, right: Any, case_insensitive: bool = False) -> bool:
    """``left op right`` for two stored values (plain, or ``MISSING``), as :func:`compare`
    judges a stored value against a constant; a value of family ``other`` (a list, an
    embedded object, a non-finite decimal) equals nothing and has no order."""
    if op == "!=":
        return not compare_values(left, "==", right, case_insensitive)
    if family(left) == "other" or family(right) == "other":
        return False
    return compare(left, op, right, case_insensitive)


def like_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression equivalent of a Realm ``LIKE`` pattern (``*`` and ``?``)."""
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _starts(s: str, a: str) -> bool:
    return s.startswith(a)


def _ends(s: str, a: str) -> bool:
    return s.endswith(a)


def _contains(s: str, a: str) -> bool:
    return a in s


def _like(s: str, a: str) -> bool:
    return like_regex(a).fullmatch(s) is not None


_STRING_TESTS: Final[dict[str, Callable[[str, str], bool]]] = {
    "beginswith": _starts, "endswith": _ends, "contains": _contains, "like": _like}


def string_test(stored: Any, op: str, arg: str, case_insensitive: bool = False,
                diacritic_insensitive: bool = False) -> bool:
    """BEGINSWITH / ENDSWITH / CONTAINS / LIKE on a stored value; false unless it is a str."""
    if not isinstance(stored, str):
        return False
    if case_insensitive or diacritic_insensitive:
        stored = fold_text(stored, case_insensitive, diacritic_insensitive)
        arg = fold_text(arg, case_insensitive, diacritic_insensitive)
    return _STRING_TESTS[op](stored, arg)


def size_of(value: Any) -> int | None:
    """``@count``/``@size``: elements of a list, keys of an embedded object or dictionary,
    characters of a string; ``None`` (matches no size test) for anything else."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        if any(isinstance(k, str) and k.startswith("$") for k in value):
            return None
        return len(value)
    return None


#: What ``@type`` compares with: each accepted name (lower case; a query's name is matched
#: whatever its case) and the value types it stands for. The types are those
#: :func:`type_name` gives: ``null bool int double decimal string binary date objectId uuid
#: list dictionary``.
TYPE_NAMES: Final[dict[str, frozenset[str]]] = {
    "null": frozenset({"null"}),
    "bool": frozenset({"bool"}), "boolean": frozenset({"bool"}),
    "int": frozenset({"int"}), "integer": frozenset({"int"}), "long": frozenset({"int"}),
    "double": frozenset({"double"}), "float": frozenset({"double"}),
    "decimal": frozenset({"decimal"}), "decimal128": frozenset({"decimal"}),
    "numeric": frozenset({"int", "double", "decimal"}), "number": frozenset({"int", "double", "decimal"}),
    "string": frozenset({"string"}),
    "binary": frozenset({"binary"}), "data": frozenset({"binary"}), "bindata": frozenset({"binary"}),
    "date": frozenset({"date"}), "timestamp": frozenset({"date"}),
    "objectid": frozenset({"objectId"}),
    "uuid": frozenset({"uuid"}),
    "list": frozenset({"list"}), "array": frozenset({"list"}),
    "dictionary": frozenset({"dictionary"}), "object": frozenset({"dictionary"}),
}

#: The tagged plain forms, in the order :func:`type_name` (and the SQL compiler) look for
#: them in a JSON object.
TAGGED_TYPES: Final = (("$date", "date"), ("$oid", "objectId"), ("$uuid", "uuid"), ("$binary", "binary"),
                       ("$decimal", "decimal"), ("$float", "double"))


def type_name(value: Any) -> str:
    """``@type``: the type of a plain value, one of ``null bool int double decimal string
    binary date objectId uuid list dictionary`` (``MISSING`` is ``null``; an embedded
    object is a ``dictionary``)."""
    if value is None or value is MISSING:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        for tag, name in TAGGED_TYPES:
            if tag in value:
                return name
        return "dictionary"
    return "null"


def type_names(name: Any) -> frozenset[str]:
    """The types ``@type == name`` accepts (empty when ``name`` is no type name)."""
    return TYPE_NAMES.get(name.lower(), frozenset()) if isinstance(name, str) else frozenset()


def value_at(value: Any, names: Sequence[str]) -> Any:
    """The value a key path of plain names leads to from ``value``, without fanning out over
    lists: each name looks a key up in a map; past anything else, or an absent key, MISSING."""
    for name in names:
        value = value.get(name, MISSING) if isinstance(value, Mapping) else MISSING
    return value


def aggregate(value: Any, op: str, of: tuple[str, ...] = ()) -> int | float | None:
    """``@min``, ``@max``, ``@sum``, ``@avg`` of the numbers (ints and finite floats, not
    bools) in a list; anything else in it, and anything but a list, counts as no numbers.
    With ``of``, of the value at that key path in each element (``items.@sum.price``).
    Of none: ``@sum`` is 0.0, the others None. Sums add in double precision, in list order
    (as SQLite's ``total()``)."""
    items = value if isinstance(value, list) else []
    if of:
        items = [value_at(v, of) for v in items]
    numbers = [v for v in items if type(v) is int or type(v) is float]
    if op == "min" or op == "max":
        return (min(numbers) if op == "min" else max(numbers)) if numbers else None
    total = 0.0
    for v in numbers:
        total += v
    if op == "sum":
        return total
    return total / len(numbers) if numbers else None
