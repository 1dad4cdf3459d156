"""Realm Query Language text → query nodes (and nodes → text, for display and round trips).

Grammar (keywords are case-insensitive)::

    query      := or descriptor* EOF
    descriptor := "SORT" "(" keypath [dir] ("," keypath [dir])* ")"
                | "DISTINCT" "(" keypath ("," keypath)* ")" | "LIMIT" "(" int ")"
    dir        := "ASC" | "ASCENDING" | "DESC" | "DESCENDING"
    or         := and (("OR" | "||") and)*
    and        := not (("AND" | "&&") not)*
    not        := ("NOT" | "!") not | primary
    primary    := "(" or ")" | "TRUEPREDICATE" | "FALSEPREDICATE"
                | [ "ANY" | "SOME" | "ALL" | "NONE" ] comparison
    comparison := operand op ["[c]" | "[d]" | "[cd]"] operand
                | keypath "IN" ( "{" [value ("," value)*] "}" | $n )
                | value "IN" keypath                   (the list field holds the value)
                | keypath "BETWEEN" "{" value "," value "}"
    op         := "==" | "=" | "!=" | "<>" | "<" | "<=" | "=<" | ">" | ">=" | "=>"
                | "BEGINSWITH" | "ENDSWITH" | "CONTAINS" | "LIKE"
    operand    := keypath | value | subquery
    subquery   := "SUBQUERY" "(" keypath "," $var "," or ")" "." ("@count" | "@size")
    keypath    := ([$var "."] name | "@links" ["." name "." name]) ("." name)*
                  ["." ("@count" | "@size" | "@keys" | "@values" | "@type"
                        | ("@min" | "@max" | "@sum" | "@avg") ("." name)*)]
    value      := int | float | 'string' | "string" | true | false | nil | null
                | oid(<24 hex>) | uuid(<8-4-4-4-12>) | $n

Inside ``SUBQUERY(list, $x, predicate)`` every key path starts with ``$x.`` (the element);
``SUBQUERY`` is not a keyword either (it is read as one before ``(``).

``SORT``, ``DISTINCT`` and ``LIMIT`` are not keywords (a field may be named so): they are
recognised after a complete predicate, followed by ``(``. :func:`parse_rql` returns the
predicate only and refuses them; :func:`parse_rql_query` returns a
:class:`~tidesync.query.ast.Query` with them as descriptors. A ``SORT`` or ``DISTINCT`` after a
``LIMIT``, or a second ``DISTINCT``, is refused (tidesync limits last and keeps one DISTINCT).

Strings take the escapes ``\\\\ \\' \\" \\/ \\b \\f \\n \\r \\t \\uXXXX`` (two ``\\u`` escapes of
a UTF-16 surrogate pair, as JSON writes a character beyond the BMP, are that one character; a
lone half is an error). ``$n`` refers to
the n-th argument (any Python value tidesync stores: datetime, Decimal, ObjectId, UUID,
bytes, ..., or a list after IN). Errors are :class:`~tidesync.errors.QueryError` with the
position of the offending token, shown with a caret.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Final, TypeVar
from uuid import UUID

from ..core.objectid import ObjectId
from ..core.values import from_plain, micros_to_datetime
from ..errors import QueryError
from .paths import BACKLINKS
from .ast import (Aggregate, AggregateName, And, Between, Compare, CompareFields, CompareOp, Count, Descriptor, DictPart, DistinctDescriptor, Exists,
                  FalsePredicate, In, LimitDescriptor, Node, Not, Or, Param, Path, Quantified, QuantifierName,
                  Query, Size, SortDescriptor, StringOp, StringOpName, SubqueryCount, TruePredicate, TypeOf, Value, MAX_DEPTH,
                  bind_value)

__all__ = ["parse_rql", "parse_rql_query", "to_rql", "KEYWORDS"]

_DESCRIPTORS: Final = ("sort", "distinct", "limit")
_KEYPATHS: Final = (Path, Count, DictPart, TypeOf)
_AGGREGATES: Final[dict[str, AggregateName]] = {"@min": "min", "@max": "max", "@sum": "sum", "@avg": "avg"}
_DIRECTIONS: Final = {"asc": False, "ascending": False, "desc": True, "descending": True}

KEYWORDS: Final = frozenset({
    "and", "or", "not", "any", "some", "all", "none", "in", "between", "beginswith", "endswith",
    "contains", "like", "truepredicate", "falsepredicate", "true", "false", "nil", "null",
})

_OPERATORS: Final = ("==", "!=", "<>", "<=", ">=", "=<", "=>", "&&", "||", "=", "<", ">", "!")
_COMPARE: Final[dict[str, CompareOp]] = {"==": "==", "=": "==", "!=": "!=", "<>": "!=", "<": "<",
                                         "<=": "<=", "=<": "<=", ">": ">", ">=": ">=", "=>": ">="}
_FLIP: Final[dict[CompareOp, CompareOp]] = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<",
                                            ">=": "<="}
_STRING_OPS: Final[dict[str, StringOpName]] = {"beginswith": "beginswith", "endswith": "endswith",
                                               "contains": "contains", "like": "like"}
_QUANTIFIERS: Final[dict[str, QuantifierName]] = {"any": "any", "some": "any", "all": "all", "none": "none"}
_NUMBER: Final = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# Realm's timestamp literals, read as UTC: 2024-01-10@12:30:00 (or with T), with an optional
# :nanoseconds, and T<seconds>:<nanoseconds> since 1970.
_DATE_TIME: Final = re.compile(r"(\d+)-(\d+)-(\d+)[@T](\d+):(\d+):(\d+)(?::(\d+))?")
_EPOCH_TIME: Final = re.compile(r"T([+-]?\d+):([+-]?\d+)")
_BASE64: Final = re.compile(r'B64"([A-Za-z0-9/+=]*)"')
_SPECIAL_FLOAT: Final = re.compile(r"[+-]?(?:infinity|inf|nan)\b", re.IGNORECASE)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_ESCAPES: Final = {"\\": "\\", "'": "'", '"': '"', "/": "/", "b": "\b", "f": "\f", "n": "\n",
                   "r": "\r", "t": "\t"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # name, number, special (inf, nan), string, arg, op, punct, at, modifier, oid, uuid, datetime, bytes, end
    text: str
    pos: int
    value: Any = None

    @property
    def keyword(self) -> str | None:
        return self.text.lower() if self.kind == "name" and self.text.lower() in KEYWORDS else None

    def describe(self) -> str:
        return "the end of the query" if self.kind == "end" else repr(self.text)


def _is_name_start(ch: str) -> bool:
    return ch == "_" or ch.isalpha()


def _is_name_char(ch: str) -> bool:
    return ch == "_" or ch.isalnum()


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, message: str, pos: int) -> QueryError:
        return QueryError(message, position=pos, query=self.text)

    def tokens(self) -> list[_Token]:
        text, pos, out = self.text, 0, []
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                out.append(_Token("end", "", pos))
                return out
            token = self.token(pos)
            out.append(token)
            pos = token.pos + len(token.text)

    def token(self, pos: int) -> _Token:
        text = self.text
        ch = text[pos]
        if ch in "'\"":
            return self.string(pos)
        if ch == "$":
            m = re.compile(r"\$(\d+)").match(text, pos)
            if m and not (m.end() < len(text) and _is_name_char(text[m.end()])):
                return _Token("arg", m.group(0), pos, int(m.group(1)))
            m = re.compile(r"\$([A-Za-z_]\w*)").match(text, pos)
            if not m:
                raise self.error("expected an argument number after '$' (e.g. $0), or a SUBQUERY variable "
                                 "($item)", pos)
            return _Token("var", m.group(0), pos, m.group(1))
        if ch == "@":
            m = re.compile(r"@\w+").match(text, pos)
            word = m.group(0) if m else "@"
            if word.lower() not in ("@count", "@size", "@min", "@max", "@sum", "@avg", "@keys", "@values", "@type",
                                    "@links"):
                raise self.error(f"unsupported {word}: expected @count, @size, @min, @max, @sum, @avg, @keys, "
                                 f"@values, @type or @links", pos)
            return _Token("at", word, pos)
        if ch == "[":
            m = re.compile(r"\[\s*(\w*)\s*\]").match(text, pos)
            if not m or m.group(1).lower() not in ("c", "d", "cd", "dc"):
                what = f"[{m.group(1)}]" if m else "'['"
                raise self.error(f"unsupported modifier {what}: expected [c] (case-insensitive), [d] "
                                 f"(diacritic-insensitive) or [cd]", pos)
            return _Token("modifier", m.group(0), pos, m.group(1).lower())
        if ch.isdigit():
            m = _DATE_TIME.match(text, pos)
            if m:
                return self.timestamp(m, pos)
        if ch == "T" and (m := _EPOCH_TIME.match(text, pos)) is not None:
            return self.timestamp(m, pos)
        if ch == "B" and (m := _BASE64.match(text, pos)) is not None:
            try:
                data = base64.b64decode(m.group(1), validate=True)
            except (binascii.Error, ValueError):
                raise self.error('malformed B64"..." literal: expected base64 text', pos) from None
            return _Token("bytes", m.group(0), pos, data)
        if ch in "+-iInN" and (m := _SPECIAL_FLOAT.match(text, pos)) is not None:
            word = m.group(0)
            if word[0] in "+-" or not (m.end() < len(text) and _is_name_char(text[m.end()])):
                return _Token("special", word, pos, float(word.lower().replace("infinity", "inf")))
        if ch.isdigit() or (ch in "-." and pos + 1 < len(text) and (text[pos + 1].isdigit() or text[pos + 1] == ".")):
            m = _NUMBER.match(text, pos)
            if not m:
                raise self.error("malformed number", pos)
            word = m.group(0)
            end = m.end()
            if end < len(text) and _is_name_char(text[end]):
                raise self.error(f"malformed number {word + text[end]!r}…", pos)
            is_float = any(c in word for c in ".eE")
            return _Token("number", word, pos, float(word) if is_float else int(word))
        if _is_name_start(ch):
            end = pos + 1
            while end < len(text) and _is_name_char(text[end]):
                end += 1
            word = text[pos:end]
            after = end
            while after < len(text) and text[after].isspace():
                after += 1
            if word.lower() in ("oid", "uuid") and after < len(text) and text[after] == "(":
                return self.constructor(word.lower(), pos, after)
            return _Token("name", word, pos)
        for op in _OPERATORS:
            if text.startswith(op, pos):
                return _Token("op", op, pos)
        if ch in "(){},.":
            return _Token("punct", ch, pos)
        raise self.error(f"unexpected character {ch!r}", pos)

    def string(self, pos: int) -> _Token:
        text, quote = self.text, self.text[pos]
        i, chars = pos + 1, list[str]()
        while True:
            if i >= len(text):
                raise self.error("unterminated string: expected a closing " + quote, pos)
            ch = text[i]
            if ch == quote:
                value = "".join(chars)
                if not value.isascii() and _SURROGATE.search(value):
                    value = self._paired(value, pos)
                return _Token("string", text[pos:i + 1], pos, value)
            if ch == "\\":
                if i + 1 >= len(text):
                    raise self.error("unterminated string: expected a closing " + quote, pos)
                esc = text[i + 1]
                if esc in _ESCAPES:
                    chars.append(_ESCAPES[esc])
                    i += 2
                    continue
                if esc == "u":
                    digits = text[i + 2:i + 6]
                    if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
                        chars.append(chr(int(digits, 16)))
                        i += 6
                        continue
                    raise self.error("expected 4 hex digits after \\u", i)
                raise self.error(f"unknown escape \\{esc} in string", i)
            chars.append(ch)
            i += 1

    def _paired(self, value: str, pos: int) -> str:
        """``value`` with each UTF-16 surrogate pair (``\\ud83d\\ude00``, as JSON writes a
        character beyond the BMP) as its one character; a lone half is an error."""
        try:
            return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        except UnicodeDecodeError:
            raise self.error("the string holds half of a UTF-16 surrogate pair (\\ud800-\\udfff "
                             "without its other half), which is not text", pos) from None

    def timestamp(self, m: re.Match[str], pos: int) -> _Token:
        """A Realm timestamp literal (UTC) as an aware datetime; tidesync keeps microseconds,
        so nanoseconds must be whole microseconds."""
        groups = m.groups()
        try:
            if len(groups) == 2:
                seconds, nanos = int(groups[0]), int(groups[1])
                if (seconds < 0 < nanos) or (nanos < 0 < seconds):
                    raise ValueError("seconds and nanoseconds must have the same sign")
                when = micros_to_datetime(seconds * 1_000_000)
            else:
                year, month, day, hour, minute, second = map(int, groups[:6])
                nanos = int(groups[6] or 0)
                when = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
            if nanos % 1000:
                raise ValueError("tidesync keeps datetimes to the microsecond: give nanoseconds in whole "
                                 "thousands")
            when += timedelta(microseconds=nanos // 1000)
        except (ValueError, OverflowError) as exc:
            raise self.error(f"malformed timestamp {m.group(0)!r}: {exc}", pos) from None
        return _Token("datetime", m.group(0), pos, when)

    def constructor(self, word: str, pos: int, paren: int) -> _Token:
        close = self.text.find(")", paren)
        if close < 0:
            raise self.error(f"expected ')' to close {word}(", paren)
        inner = self.text[paren + 1:close].strip()
        if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
            inner = inner[1:-1]
        try:
            value: Any = ObjectId(inner) if word == "oid" else UUID(inner)
        except (ValueError, TypeError):
            expected = "24 hex digits" if word == "oid" else "a UUID like 123e4567-e89b-12d3-a456-426614174000"
            raise self.error(f"malformed {word}(...): expected {expected}", paren + 1) from None
        return _Token(word, self.text[pos:close + 1], pos, value)


_N = TypeVar("_N")


class _Parser:
    def __init__(self, text: str, args: Sequence[Any] | None) -> None:
        self.text = text
        self.args = args
        self.tokens = _Lexer(text).tokens()
        self.i = 0
        self.depth = 0
        self.variables: list[str] = []  # the SUBQUERY variables in scope, innermost last

    # -- helpers -------------------------------------------------------------------------

    @property
    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "end":
            self.i += 1
        return token

    def error(self, message: str, token: _Token | None = None) -> QueryError:
        token = token or self.peek
        return QueryError(message, position=token.pos, query=self.text)

    def expected(self, what: str, after: str | None = None) -> QueryError:
        where = f" after {after}" if after else ""
        return self.error(f"expected {what}{where}, found {self.peek.describe()}")

    def at_punct(self, ch: str) -> bool:
        return self.peek.kind == "punct" and self.peek.text == ch

    def expect_punct(self, ch: str, after: str | None = None) -> _Token:
        if not self.at_punct(ch):
            raise self.expected(repr(ch), after)
        return self.next()

    def build(self, token: _Token, make: Callable[[], _N]) -> _N:
        """Construct a node; a validation error points at ``token``."""
        try:
            return make()
        except QueryError as exc:
            if exc.position is not None:
                raise
            raise QueryError(exc.message, position=token.pos, query=self.text, advice=exc.advice) from None

    # -- grammar -------------------------------------------------------------------------

    def parse(self) -> tuple[Node, tuple[Descriptor, ...]]:
        if self.peek.kind == "end":
            raise self.error("empty query: expected a condition such as `status == 'open'` or TRUEPREDICATE")
        node = self.or_expr()
        descriptors: list[Descriptor] = []
        while self.at_descriptor():
            descriptors.append(self.descriptor(descriptors))
        if self.peek.kind != "end":
            raise self.expected("AND, OR, SORT, DISTINCT, LIMIT or the end of the query")
        return node, tuple(descriptors)

    def at_descriptor(self) -> bool:
        token = self.peek
        after = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else token
        return (token.kind == "name" and token.text.lower() in _DESCRIPTORS
                and after.kind == "punct" and after.text == "(")

    def descriptor(self, earlier: list[Descriptor]) -> Descriptor:
        token = self.next()
        word = token.text.upper()
        self.expect_punct("(", word)
        if word != "LIMIT" and any(isinstance(d, LimitDescriptor) for d in earlier):
            raise self.error(f"{word} after LIMIT is not supported: tidesync limits last, so write "
                             f"LIMIT at the end", token)
        if word == "LIMIT":
            count = self.peek
            if count.kind != "number" or type(count.value) is not int or count.value < 0:
                raise self.expected("a whole number >= 0", "LIMIT(")
            self.next()
            self.expect_punct(")", "the LIMIT count")
            return LimitDescriptor(count.value)
        if word == "DISTINCT" and any(isinstance(d, DistinctDescriptor) for d in earlier):
            raise self.error("one DISTINCT per query: list several key paths in it", token)
        keys: list[tuple[Path, bool]] = []
        while True:
            if not (self.peek.kind == "name" and self.peek.keyword is None):
                raise self.expected("a key path", f"{word}(" if not keys else "','")
            path = self.keypath()
            if not isinstance(path, Path):
                raise self.error(f"{word} takes key paths, not @count or @size", token)
            descending = False
            if word == "SORT" and self.peek.kind == "name" and self.peek.text.lower() in _DIRECTIONS:
                descending = _DIRECTIONS[self.next().text.lower()]
            keys.append((path, descending))
            if self.at_punct(","):
                self.next()
                continue
            break
        self.expect_punct(")", f"the {word} key paths")
        if word == "SORT":
            return SortDescriptor(tuple(keys))
        return DistinctDescriptor(tuple(p for p, _ in keys))

    def or_expr(self) -> Node:
        items = [self.and_expr()]
        while self.peek.keyword == "or" or (self.peek.kind == "op" and self.peek.text == "||"):
            self.next()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.not_expr()]
        while self.peek.keyword == "and" or (self.peek.kind == "op" and self.peek.text == "&&"):
            self.next()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"the query nests deeper than {MAX_DEPTH} levels of parentheses and NOT")

    def not_expr(self) -> Node:
        if self.peek.keyword == "not" or (self.peek.kind == "op" and self.peek.text == "!"):
            self.next()
            self.nest()
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Node:
        token = self.peek
        if self.at_punct("("):
            self.next()
            self.nest()
            node = self.or_expr()
            self.depth -= 1
            if not self.at_punct(")"):
                raise self.expected("')' to close the '(' at position " + str(token.pos))
            self.next()
            return node
        if token.keyword == "truepredicate":
            self.next()
            return TruePredicate()
        if token.keyword == "falsepredicate":
            self.next()
            return FalsePredicate()
        if token.keyword in _QUANTIFIERS:
            self.next()
            quantifier = _QUANTIFIERS[token.keyword]
            predicate = self.comparison()
            if not isinstance(predicate, (Compare, In, Between, StringOp)):
                raise self.error(f"{token.text.upper()} needs a comparison on a key path", token)
            return self.build(token, lambda: Quantified(quantifier, predicate))
        return self.comparison()

    def comparison(self) -> Compare | CompareFields | In | Between | StringOp:
        start = self.peek
        left = self.operand("a key path or a value")
        op_token = self.peek
        word = op_token.keyword
        if word == "in":
            self.next()
            return self.in_rest(start, left, op_token)
        if word == "between":
            self.next()
            if not isinstance(left, _KEYPATHS):
                raise self.error("BETWEEN needs a key path on its left", start)
            return self.between_rest(left, op_token)
        if word in _STRING_OPS:
            self.next()
            ci, di = self.modifier()
            right = self.operand("a string after " + op_token.text.upper())
            if not isinstance(left, (Path, DictPart)) or isinstance(right, _KEYPATHS):
                raise self.error(f"{op_token.text.upper()} needs a key path on its left and a string "
                                 f"on its right", start)
            string_op, subject, needle = _STRING_OPS[word], left, right
            return self.build(op_token, lambda: StringOp(string_op, subject, needle, ci, di))
        if op_token.kind == "op" and op_token.text in _COMPARE:
            self.next()
            op = _COMPARE[op_token.text]
            ci, di = self.modifier()
            right = self.operand(f"a value after {op_token.text!r}")
            if isinstance(left, _KEYPATHS) and isinstance(right, _KEYPATHS):
                if not isinstance(left, Path) or not isinstance(right, Path):
                    counted = right if isinstance(left, Path) else left
                    raise self.error(f"{counted} can only be compared with a value, not with another key path",
                                     start)
                if di:
                    raise self.error("[d] (diacritic-insensitive) compares a field with a string, not two fields",
                                     op_token)
                fields_left, fields_right, fields_op = left, right, op
                return self.build(op_token, lambda: CompareFields(fields_op, fields_left, fields_right, ci))
            if not isinstance(left, _KEYPATHS):
                if not isinstance(right, _KEYPATHS):
                    raise self.error("a comparison needs a key path on one side", start)
                left, right, op = right, left, _FLIP[op]
            assert isinstance(left, _KEYPATHS) and isinstance(right, (Value, Param))
            lhs, rhs, cop = left, right, op
            return self.build(op_token, lambda: Compare(cop, lhs, rhs, ci, di))
        raise self.expected("a comparison operator (==, !=, <, <=, >, >=, BEGINSWITH, ENDSWITH, "
                            "CONTAINS, LIKE, IN or BETWEEN)", f"{start.text!r}")

    def modifier(self) -> tuple[bool, bool]:
        """``[c]``, ``[d]`` or ``[cd]`` after an operator: (case-, diacritic-insensitive)."""
        if self.peek.kind == "modifier":
            flags = self.next().value
            return "c" in flags, "d" in flags
        return False, False

    def in_rest(self, start: _Token, left: Path | Count | DictPart | TypeOf | Value | Param, op_token: _Token) -> Compare | In:
        if not isinstance(left, _KEYPATHS):
            # `'x' IN tags`: the list field holds the value
            right = self.operand("a list key path after IN")
            if not isinstance(right, Path):
                raise self.error("IN needs a key path on one side", start)
            value = left
            return self.build(op_token, lambda: Compare("==", right, value))
        if self.peek.kind == "arg":
            token = self.next()
            values: Value | Param = self.arg(token, want_list=True)
        else:
            brace = self.expect_punct("{", "IN")
            items: list[Any] = []
            if not self.at_punct("}"):
                while True:
                    item = self.value("a value in the IN list")
                    if isinstance(item, Param):
                        raise self.error("an argument inside an IN list must be a value; use `IN $n` "
                                         "with a list argument instead", self.tokens[self.i - 1])
                    items.append(item.plain)
                    if self.at_punct(","):
                        self.next()
                        continue
                    break
            self.expect_punct("}", "the IN list")
            values = self.build(brace, lambda: Value(items))
        return self.build(op_token, lambda: In(left, values))

    def between_rest(self, left: Path | Count | DictPart | TypeOf, op_token: _Token) -> Between:
        self.expect_punct("{", "BETWEEN")
        low = self.value("the lower bound of BETWEEN")
        self.expect_punct(",", "the lower bound of BETWEEN")
        high = self.value("the upper bound of BETWEEN")
        self.expect_punct("}", "the upper bound of BETWEEN")
        return self.build(op_token, lambda: Between(left, low, high))

    def operand(self, what: str) -> Path | Count | DictPart | TypeOf | Value | Param:
        token = self.peek
        if token.kind == "name" and token.text.lower() == "subquery" and self.following_punct("("):
            return self.subquery()
        if token.kind == "var":
            return self.element_keypath()
        if token.kind == "at" and token.text.lower() == "@links" and not self.variables:
            return self.keypath()
        if token.kind == "name" and token.keyword is None:
            if self.variables:
                raise self.error(f"inside SUBQUERY, key paths start with its variable: "
                                 f"${self.variables[-1]}.{token.text}")
            return self.keypath()
        return self.value(what)

    def following_punct(self, ch: str) -> bool:
        after = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else self.peek
        return after.kind == "punct" and after.text == ch

    def element_keypath(self) -> Path | Count | DictPart | TypeOf:
        """``$x.field...`` inside ``SUBQUERY(..., $x, ...)``: a key path from the element."""
        token = self.next()
        if not self.variables:
            raise self.error(f"{token.text} is not defined here: variables are declared by "
                             f"SUBQUERY(list, {token.text}, ...)", token)
        if token.value != self.variables[-1]:
            raise self.error(f"{token.text} is not this SUBQUERY's variable (${self.variables[-1]}): a "
                             f"SUBQUERY's predicate tests its own elements only", token)
        if not self.at_punct("."):
            raise self.expected(f"'.' and a field of the element ({token.text}.field)", token.text)
        self.next()
        if not (self.peek.kind == "name" and self.peek.keyword is None):
            raise self.expected("a field name", f"{token.text}.")
        return self.keypath()

    def subquery(self) -> SubqueryCount:
        token = self.next()
        self.expect_punct("(", "SUBQUERY")
        self.nest()
        if not (self.peek.kind in ("name", "var") and self.peek.keyword is None):
            raise self.expected("the key path of a list", "SUBQUERY(")
        target = self.operand("the key path of a list")
        if not isinstance(target, Path):
            raise self.error("SUBQUERY's first argument is the key path of a list, not a count or aggregate", token)
        self.expect_punct(",", "the list of SUBQUERY")
        variable = self.peek
        if variable.kind != "var":
            raise self.expected("a variable for the elements, such as $item", "SUBQUERY's first ','")
        self.next()
        self.expect_punct(",", variable.text)
        self.variables.append(variable.value)
        try:
            predicate = self.or_expr()
        finally:
            self.variables.pop()
        self.expect_punct(")", "the predicate of SUBQUERY")
        self.depth -= 1
        self.expect_punct(".", "SUBQUERY(...): expected .@count")
        counted = self.peek
        if counted.kind != "at" or counted.text.lower() not in ("@count", "@size"):
            raise self.expected("@count or @size", "SUBQUERY(...).")
        self.next()
        name = variable.value
        return self.build(token, lambda: SubqueryCount(target, predicate, name))

    def keypath(self) -> Path | Count | DictPart | TypeOf:
        first = self.next()
        names = [first.text.lower() if first.kind == "at" else first.text]   # @links
        while self.at_punct("."):
            self.next()
            token = self.peek
            if token.kind == "at":
                if token.text.lower() == "@links":
                    raise self.error("@links starts a key path (@links.Model.field...)", token)
                self.next()
                path = self.build(first, lambda: Path(tuple(names)))
                word = token.text.lower()
                of: list[str] = []
                while self.at_punct("."):
                    dot = self.next()
                    if word in ("@count", "@size", "@keys", "@values", "@type"):
                        raise self.error(f"{word} ends a key path: nothing can follow it", dot)
                    field = self.peek
                    if field.kind != "name" or field.keyword is not None:
                        raise self.expected(f"a field name of the elements after {word}.", None)
                    of.append(self.next().text)
                if word in ("@keys", "@values"):
                    return DictPart(path, "keys" if word == "@keys" else "values")
                if word == "@type":
                    return TypeOf(path)
                if word == "@count":
                    return Count(path)
                if word == "@size":
                    return Size(path)
                op_name = _AGGREGATES[word]
                return self.build(token, lambda: Aggregate(path, op_name, tuple(of)))
            if token.kind != "name":
                raise self.expected("a field name, @count, @size, @min, @max, @sum or @avg", "'.'")
            if token.keyword is not None:
                raise self.error(f"{token.text!r} is a keyword and cannot be a field name here", token)
            names.append(self.next().text)
        return self.build(first, lambda: Path(tuple(names)))

    def value(self, what: str) -> Value | Param:
        token = self.peek
        if token.kind == "arg":
            self.next()
            return self.arg(token, want_list=False)
        if token.kind in ("number", "string"):
            self.next()
            return self.build(token, lambda: Value(token.value))
        if token.kind in ("oid", "uuid", "datetime", "bytes", "special"):
            self.next()
            return self.build(token, lambda: Value.of(token.value))
        word = token.keyword
        if word in ("true", "false"):
            self.next()
            return Value(word == "true")
        if word in ("nil", "null"):
            self.next()
            return Value(None)
        raise self.expected(what + " (a number, 'string', true, false, nil, oid(...), uuid(...), a timestamp, "
                                   "B64\"...\" or $n)")

    def arg(self, token: _Token, *, want_list: bool) -> Value | Param:
        param = Param(token.value, token.pos)
        if self.args is None:
            return param
        return self.build(token, lambda: bind_value(param, self.args or (), want_list=want_list))


def parse_rql(text: str, args: Sequence[Any] | None = ()) -> Node:
    """Parse a Realm Query Language string.

    Args:
        text: the query, e.g. ``"status == $0 AND priority >= 2"``.
        args: the ``$n`` arguments, bound while parsing (errors point at the ``$n``). Pass
            ``None`` to keep :class:`~tidesync.query.ast.Param` nodes and bind later.

    Raises:
        QueryError: the text does not parse, or an argument is missing or does not fit;
            the message shows the query with a caret at the failing position.
    """
    if not isinstance(text, str):
        raise QueryError(f"a query is a str, not {type(text).__name__}")
    node, descriptors = _Parser(text, args).parse()
    if descriptors:
        raise QueryError("SORT, DISTINCT and LIMIT shape results, they are not part of a predicate",
                         advice="pass the text to Results.filter() or parse_query()")
    return node


def parse_rql_query(text: str, args: Sequence[Any] | None = ()) -> Query:
    """Parse a Realm Query Language string with its result descriptors (``SORT(...)``,
    ``DISTINCT(...)``, ``LIMIT(n)``), as :func:`parse_rql` parses the predicate."""
    if not isinstance(text, str):
        raise QueryError(f"a query is a str, not {type(text).__name__}")
    node, descriptors = _Parser(text, args).parse()
    return Query(node, text, descriptors)


# -- formatting --------------------------------------------------------------------------


def _format_name(name: str) -> str:
    if not (_is_name_start(name[0]) and all(_is_name_char(c) for c in name)) or name.lower() in KEYWORDS:
        raise QueryError(f"field name {name!r} cannot be written in RQL")
    return name


def _modifier(case_insensitive: bool, diacritic_insensitive: bool) -> str:
    flags = ("c" if case_insensitive else "") + ("d" if diacritic_insensitive else "")
    return f"[{flags}]" if flags else ""


class _Formatter:
    def __init__(self) -> None:
        self.args: list[Any] = []
        self.prefix = ""  # "$x." inside a SUBQUERY over $x

    def path(self, left: Path | Count | DictPart | TypeOf) -> str:
        if isinstance(left, DictPart):
            return f"{self.path(left.path)}.@{left.part}"
        if isinstance(left, TypeOf):
            return f"{self.path(left.path)}.@type"
        if isinstance(left, SubqueryCount):
            outer = self.path(left.path)
            saved, self.prefix = self.prefix, f"${left.variable}."
            try:
                inner = self.node(left.predicate)
            finally:
                self.prefix = saved
            return f"SUBQUERY({outer}, ${left.variable}, {inner}).@count"
        if isinstance(left, Aggregate):
            return f"{self.path(left.path)}.@{left.op}" + "".join("." + _format_name(n) for n in left.of)
        if isinstance(left, Count):
            return f"{self.path(left.path)}.{'@size' if isinstance(left, Size) else '@count'}"
        names = left.names
        head = [BACKLINKS] if names[0] == BACKLINKS else []
        return self.prefix + ".".join(head + [_format_name(n) for n in names[len(head):]])

    def operand(self, operand: Value | Param) -> str:
        if isinstance(operand, Param):
            return f"${operand.index}"
        return self.literal(operand.plain)

    def literal(self, plain: Any) -> str:
        if plain is None:
            return "nil"
        if plain is True:
            return "true"
        if plain is False:
            return "false"
        if isinstance(plain, (int, float)):
            return repr(plain)
        if isinstance(plain, str):
            return json.dumps(plain, ensure_ascii=False)
        if isinstance(plain, dict) and "$oid" in plain:
            return f"oid({plain['$oid']})"
        if isinstance(plain, dict) and "$uuid" in plain:
            return f"uuid({plain['$uuid']})"
        if isinstance(plain, dict) and "$float" in plain:
            return str(plain["$float"])
        if isinstance(plain, dict) and "$binary" in plain:
            return f'B64"{plain["$binary"]}"'
        if isinstance(plain, dict) and "$date" in plain and isinstance(plain["$date"], int):
            micros = plain["$date"]
            seconds, rest = divmod(micros, 1_000_000)
            if 0 <= micros < 253402300800 * 1_000_000:  # years 1970..9999: the readable form
                when = micros_to_datetime(seconds * 1_000_000)
                return f"{when:%Y-%m-%d@%H:%M:%S}" + (f":{rest * 1000}" if rest else "")
            if micros < 0 and rest:  # T<s>:<ns> needs one sign for both parts
                seconds, rest = seconds + 1, rest - 1_000_000
            return f"T{seconds}:{rest * 1000}"
        # no RQL literal (decimal): pass it as an argument
        self.args.append(from_plain(plain))
        return f"${len(self.args) - 1}"

    def node(self, node: Node, nested: bool = False) -> str:
        if isinstance(node, TruePredicate):
            return "TRUEPREDICATE"
        if isinstance(node, FalsePredicate):
            return "FALSEPREDICATE"
        if isinstance(node, (And, Or)):
            if not node.items:
                return "TRUEPREDICATE" if isinstance(node, And) else "FALSEPREDICATE"
            joiner = " AND " if isinstance(node, And) else " OR "
            text = joiner.join(self.node(i, nested=True) for i in node.items)
            return f"({text})" if nested else text
        if isinstance(node, Not):
            return f"NOT ({self.node(node.item)})"
        if isinstance(node, Quantified):
            return f"{node.quantifier.upper()} {self.node(node.predicate)}"
        if isinstance(node, Compare):
            ci = _modifier(node.case_insensitive, node.diacritic_insensitive)
            return f"{self.path(node.left)} {node.op}{ci} {self.operand(node.right)}"
        if isinstance(node, CompareFields):
            ci = "[c]" if node.case_insensitive else ""
            return f"{self.path(node.left)} {node.op}{ci} {self.path(node.right)}"
        if isinstance(node, StringOp):
            ci = _modifier(node.case_insensitive, node.diacritic_insensitive)
            return f"{self.path(node.left)} {node.op.upper()}{ci} {self.operand(node.right)}"
        if isinstance(node, In):
            if isinstance(node.values, Param):
                return f"{self.path(node.left)} IN ${node.values.index}"
            return f"{self.path(node.left)} IN {{{', '.join(self.literal(v) for v in node.values.plain)}}}"
        if isinstance(node, Between):
            return f"{self.path(node.left)} BETWEEN {{{self.operand(node.low)}, {self.operand(node.high)}}}"
        assert isinstance(node, Exists)
        raise QueryError(f"$exists ({node.path}) has no RQL form; compare with nil instead "
                         f"(which also matches null)")


def to_rql(node: Node) -> tuple[str, list[Any]]:
    """Write a node as RQL text plus the arguments it needs.

    Values without an RQL literal (datetime, Decimal, bytes, inf/nan) become ``$n``
    arguments, so ``parse_rql(*to_rql(node)) == node`` for bound nodes without
    :class:`~tidesync.query.ast.Param`. (Unbound params keep their numbers and must not be
    mixed with values that need arguments.)

    Raises:
        QueryError: the node uses :class:`~tidesync.query.ast.Exists` or a field name that
            is not an RQL identifier.
    """
    formatter = _Formatter()
    text = formatter.node(node)
    return text, formatter.args
