"""``codec.decode`` of a ``Changes`` body checks an upload's plainness while it parses the
creates (``Changes.from_unchecked``). Any body must decode to the same message, or fail with
the same error, as the whole-body walk (``check_plain``) followed by ``Changes.from_body``."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import msgpack
import pytest

from tidesync.core.operations import CreateDoc, op_to_wire
from tidesync.core.transaction import Transaction
from tidesync.errors import ProtocolError
from tidesync.protocol import codec
from tidesync.protocol.messages import Changes, check_plain

ORIGIN = "00000000000000aa"


def _stamp(n: int) -> str:
    return f"{n:016x}00{ORIGIN}"


def _body(rng: random.Random) -> dict[str, Any]:
    entries = []
    n = 1
    for seq in range(1, rng.randint(1, 4) + 1):
        ops = []
        for _ in range(rng.randint(1, 4)):
            n += 1
            fields = {"_id": f"k{n}", "a": n, "b": rng.choice([1.5, "x", None, True, -3])}
            ops.append(op_to_wire(CreateDoc("Note", f"k{n}", _stamp(n), "", fields, {}, ())))
        t = {"id": _stamp(n), "origin": ORIGIN, "stamp": _stamp(n), "parents": [], "ops": ops, "before": []}
        entries.append([seq, t])
    return {"from_seq": 0, "to_seq": len(entries), "head": len(entries), "entries": entries,
            "progress": {"sent": 1, "total": 2, "sent_bytes": 3, "total_bytes": 4}}


_BAD = [math.nan, math.inf, 2**63, -(2**63) - 1, [1, 2], {"x": 1}, {"$date": "2024-01-01T00:00:00Z"},
        b"bin", "", 0, -1, None, [math.nan], {"x": [math.inf]}, 1.5, True]


def _containers(value: Any, out: list) -> None:
    if isinstance(value, dict):
        for k in value:
            out.append((value, k))
            _containers(value[k], out)
    elif isinstance(value, list):
        for i in range(len(value)):
            out.append((value, i))
            _containers(value[i], out)


def _reference(body: Any) -> Any:
    try:
        check_plain(body, "changes body")
        return Changes.from_body(body)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return f"malformed changes message: {exc}"


def _decoded(body: Any) -> Any:
    payload = msgpack.packb([codec.PROTOCOL_VERSION, "changes", 0, body], use_bin_type=True)
    try:
        return codec.decode(payload)
    except ProtocolError as exc:
        return str(exc)


def test_a_plain_upload_takes_the_quick_path() -> None:
    body = _body(random.Random(1))
    fast = Changes.from_unchecked(copy.deepcopy(body))
    assert fast is not None
    assert fast == _reference(body)
    assert [t.create_shapes() for t in fast.transactions] == [t.create_shapes() for t in _reference(body).transactions]
    assert _decoded(body) == fast


@pytest.mark.parametrize("seed", range(40))
def test_any_change_decodes_as_the_whole_walk_says(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(25):
        body = _body(rng)
        for _ in range(rng.randint(1, 2)):
            places: list = []
            _containers(body, places)
            where, key = rng.choice(places)
            if rng.random() < 0.15 and isinstance(where, dict):
                where[rng.choice([1, "extra", "user", "meta", "before", b"k"])] = rng.choice(_BAD)
            else:
                where[key] = copy.deepcopy(rng.choice(_BAD))
        try:
            received = msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False,
                                       strict_map_key=True, use_list=True)
        except (TypeError, ValueError, OverflowError):
            continue  # msgpack cannot carry it (an int key, a too large int): nothing to compare
        expected = _reference(received)
        got = _decoded(body)
        assert got == expected or (isinstance(got, str) and isinstance(expected, str) and got.endswith(expected)), body
        if isinstance(expected, Changes):
            assert [t.wire() for t in got.transactions] == [t.wire() for t in expected.transactions]


@pytest.mark.parametrize("part", ["before", "meta", "key", "field", "progress", "seq", "top"])
def test_a_non_plain_item_anywhere_is_named(part: str) -> None:
    body = _body(random.Random(3))
    txn = body["entries"][-1][1]
    if part == "before":
        txn["before"] = [["Note", "k1", {"a": math.nan}, False]]
    elif part == "meta":
        txn["meta"] = {"m": math.inf}
    elif part == "key":
        txn["ops"][0][2] = [math.nan]
    elif part == "field":
        txn["ops"][-1][5]["a"] = 2**64 - 1
    elif part == "progress":
        body["progress"]["sent"] = math.nan
    elif part == "seq":
        body["entries"][0][0] = math.inf
    else:
        body["extra"] = [math.nan]
    got = _decoded(body)
    assert isinstance(got, str) and got == _reference(msgpack.unpackb(msgpack.packb(body), raw=False))
    assert "non-finite" in got or "64-bit" in got


def test_a_semantic_error_before_a_non_plain_item_names_the_latter() -> None:
    body = _body(random.Random(4))
    body["entries"].append([99, copy.deepcopy(body["entries"][0][1])])
    body["entries"][0][1]["id"] = "not a stamp"
    body["entries"][-1][1]["ops"][0][5]["a"] = math.nan
    assert _decoded(body) == "malformed changes message: changes body: a non-finite float must be written {'$float': ...}"
