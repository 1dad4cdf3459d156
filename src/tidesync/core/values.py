"""The value model and its one portable encoding, the *plain form*.

Every value tidesync stores or sends is first turned into its plain form: a JSON-compatible
tree (``None``, ``bool``, ``int``, ``float``, ``str``, ``list``, ``dict``) in which the types
JSON lacks are tagged objects, as in MongoDB Extended JSON:

=================  =========================================  ==============================
Python             plain form                                 note
=================  =========================================  ==============================
Decimal            ``{"$decimal": "12.50"}``                  exact text
bytes              ``{"$binary": "<base64>"}``
datetime (aware)   ``{"$date": <int microseconds since epoch, UTC>}``  orders as an int
ObjectId           ``{"$oid": "<24 hex digits>"}``            orders as its bytes do
UUID               ``{"$uuid": "<8-4-4-4-12 hex>"}``
float nan/inf      ``{"$float": "nan" | "inf" | "-inf"}``     JSON has no such numbers
=================  =========================================  ==============================

The plain form is the same in the SQLite store (as JSON text), in the log and on the wire (as
msgpack), so one encoder serves all three and a replica without a schema (the server) can
store, compare and query values it did not declare. Embedded documents are plain objects
whose keys never start with ``$`` (reserved for tags) and never contain ``.`` (path
separator); the same rule holds for dictionary keys, as in Realm.
"""

from __future__ import annotations

import base64
import json
import json.encoder
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, TypeAlias
from uuid import UUID

from .objectid import ObjectId

__all__ = [
    "Plain",
    "to_plain",
    "from_plain",
    "canonical_json",
    "compact_json",
    "compact_encoder",
    "loads_json",
    "loads_json_strict",
    "loads_json_scalars_checked",
    "datetime_to_micros",
    "micros_to_datetime",
    "TAGS",
    "check_key",
    "surrogate_at",
    "not_text_message",
    "NOT_TEXT_ADVICE",
]

Plain: TypeAlias = Any  # None | bool | int | float | str | list[Plain] | dict[str, Plain]

TAGS = ("$decimal", "$binary", "$date", "$oid", "$uuid", "$float")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def plain_scalars(values: Iterable[Any]) -> bool:
    """True when every one of ``values`` is a plain scalar: str, bool, None, a signed 64-bit
    int or a finite float (a flat document's field values); False on anything else."""
    lo, hi, isfinite = INT64_MIN, INT64_MAX, math.isfinite
    for v in values:
        t = type(v)
        if t is str or v is None or t is bool:
            continue
        if t is int:
            if lo <= v <= hi:
                continue
            return False
        if t is float:
            if isfinite(v):
                continue
            return False
        return False
    return True


def datetime_to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_datetime(micros: int) -> datetime:
    """The aware UTC datetime ``micros`` microseconds after the Unix epoch."""
    from datetime import timedelta

    return _EPOCH + timedelta(microseconds=micros)


NOT_TEXT_ADVICE = ("combine each pair into its character (s.encode('utf-16', 'surrogatepass').decode('utf-16')) "
                   "or remove the lone half")
"""What to do about a str that :func:`surrogate_at` finds a surrogate in."""


def surrogate_at(text: str) -> int:
    """The index of the first UTF-16 surrogate code point (U+D800-U+DFFF: half of a surrogate
    pair) in ``text``, or -1 when there is none. Such a str is not Unicode text: UTF-8, and so
    SQLite and msgpack, cannot encode it. An ASCII str is answered at once."""
    if text.isascii():
        return -1
    try:
        text.encode()  # (in C, quicker than a regular expression's search; only a surrogate fails)
    except UnicodeEncodeError as exc:
        return exc.start
    return -1


def not_text_message(text: str, index: int) -> str:
    """What is wrong with ``text``, whose ``index``-th code point is a surrogate."""
    shown = repr(text) if len(text) <= 40 else repr(text[:37]) + "..."
    return (f"the str {shown} holds {text[index]!r} (at index {index}), half of a UTF-16 surrogate pair: "
            "that is not Unicode text, so it cannot be stored")


def check_key(key: object) -> str:
    """Check a dictionary or embedded-document key; return it.

    Raises:
        ValueError: the key is not a str, starts with ``$``, contains ``.`` or holds half of a
            UTF-16 surrogate pair (:func:`surrogate_at`).
    """
    if not isinstance(key, str):
        raise ValueError(f"keys must be str, not {type(key).__name__}")
    if key.startswith("$") or "." in key:
        raise ValueError(f"key {key!r} may not start with '$' or contain '.'")
    if not key.isascii() and (at := surrogate_at(key)) >= 0:
        raise ValueError(f"key: {not_text_message(key, at)} ({NOT_TEXT_ADVICE})")
    return key


def to_plain(value: Any) -> Plain:
    """Encode a Python value into its plain form.

    Sets become sorted lists (by canonical JSON) so equal sets encode equally. Model
    instances are handled by the model layer before they reach here.

    Raises:
        ValueError: the value (or something inside it) has no plain form.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"int {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$binary": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: give a timezone-aware datetime (e.g. tzinfo=timezone.utc)")
        return {"$date": datetime_to_micros(value)}
    if isinstance(value, ObjectId):
        return {"$oid": str(value)}
    if isinstance(value, UUID):
        return {"$uuid": str(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_plain(v) for v in value), key=canonical_json)
    if isinstance(value, Mapping):
        return {check_key(k): to_plain(v) for k, v in value.items()}
    raise ValueError(f"tidesync cannot store a value of type {type(value).__name__}")


def from_plain(plain: Plain) -> Any:
    """Decode a plain-form value into Python values (lists stay lists, objects become dicts)."""
    if isinstance(plain, dict):
        if len(plain) == 1:
            ((tag, inner),) = plain.items()
            if tag.startswith("$"):
                return _decode_tag(tag, inner)
        return {k: from_plain(v) for k, v in plain.items()}
    if isinstance(plain, list):
        return [from_plain(v) for v in plain]
    return plain


def _decode_tag(tag: str, inner: Any) -> Any:
    try:
        if tag == "$date":
            return micros_to_datetime(int(inner))
        if tag == "$oid":
            return ObjectId(inner)
        if tag == "$decimal":
            return Decimal(inner)
        if tag == "$uuid":
            return UUID(inner)
        if tag == "$binary":
            return base64.b64decode(inner)
        if tag == "$float":
            return float(inner)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ValueError(f"malformed {tag} value: {inner!r}") from exc
    raise ValueError(f"unknown tag {tag!r}")


def compact_encoder(*, sort_keys: bool = False) -> Callable[[Any], str]:
    """``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=...).encode``,
    the same text, made once and quicker per call.

    ``JSONEncoder.encode`` builds its C encoder (and a closure, and a dict for the circular
    reference check) on every call; this one builds it once. Plain values form trees, so the
    check is left out (a value holding itself would raise RecursionError instead of
    ValueError, and cannot be a plain value anyway).
    """
    base = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    string = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or string is None:  # pragma: no cover - CPython has the C accelerator
        return base.encode
    iterencode = make(None, base.default, string, None, ":", ",", sort_keys, False, True)
    join = "".join

    def encode(value: Any) -> str:
        return join(iterencode(value, 0))

    return encode


# Made once: ``json.dumps`` with options builds a new encoder on every call.
_canonical_encode = compact_encoder(sort_keys=True)


_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # not in typeshed


def loads_json(text: str) -> Any:
    """``json.loads(text)``, faster for text without surrounding whitespace (as tidesync writes
    it): the same value, or the same error (anything unusual goes to ``json.loads`` itself)."""
    if type(text) is not str:
        return json.loads(text)
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


#: Compact JSON in key order as given, the form a replica stores bodies and meta in.
compact_json = compact_encoder()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a plain value (JSON has no such number; write {{'$float': ...}})")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON allows a key twice in an object; Python keeps the last value, SQLite's JSON
    # functions the first, so a stored text with one would read differently in a query than
    # in the object it returns. Text from a peer must not hold one.
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"the key {key!r:.80} appears twice in one JSON object")
            seen.add(key)
    return value


_strict_decoder = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_keys)
_strict_scan_once = _strict_decoder.scan_once  # type: ignore[attr-defined]  # not in typeshed


def loads_json_strict(text: str) -> Any:
    """``json.loads(text)`` that refuses ``NaN``, ``Infinity``, ``-Infinity`` and an object
    holding one key twice (ValueError),
    for JSON text from a peer (fast for text without surrounding whitespace, like
    :func:`loads_json`). The result may still hold ints beyond 64 bits, numbers that overflow
    to infinity or deep nesting: check it (``protocol.messages.check_plain``)."""
    if type(text) is str:
        try:
            value, end = _strict_scan_once(text, 0)
        except StopIteration:
            pass
        else:
            if end == len(text):
                return value
    return _strict_decoder.decode(text)


def _int64(text: str) -> int:
    value = int(text)
    if -(2**63) <= value <= 2**63 - 1:
        return value
    raise ValueError("an int out of the 64-bit range")


def _finite(text: str) -> float:
    value = float(text)
    if math.isfinite(value):
        return value
    raise ValueError("a number beyond a float")


_checked_scan_once = json.JSONDecoder(parse_constant=_no_constant, parse_int=_int64,  # type: ignore[attr-defined]
                                      parse_float=_finite, object_pairs_hook=_unique_keys).scan_once
_checked_any_keys_scan_once = json.JSONDecoder(  # type: ignore[attr-defined]
    parse_constant=_no_constant, parse_int=_int64, parse_float=_finite).scan_once


def loads_json_scalars_checked(text: str, *, unique_keys: bool = True) -> Any:
    """:func:`loads_json_strict` of text without surrounding whitespace (else ValueError) that
    also refuses ints beyond 64 bits and numbers beyond a float (ValueError): only the nesting
    depth is left to check (``protocol.messages.check_plain``). ``unique_keys=False`` leaves
    a key given twice in an object unchecked (the last value kept), for a caller that checks
    it another way."""
    try:
        value, end = (_checked_scan_once if unique_keys else _checked_any_keys_scan_once)(text, 0)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if end != len(text):
        raise ValueError("not one JSON value")
    return value


def canonical_json(plain: Plain) -> str:
    """One string per plain value: equal values give equal strings (set members, dedup keys)."""
    if type(plain) is str and '"' not in plain and "\\" not in plain and plain.isprintable():
        return f'"{plain}"'  # what the encoder gives: nothing in it needs escaping
    return _canonical_encode(plain)
