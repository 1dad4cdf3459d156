"""``Transaction.many_from_unchecked`` parses an upload batch's transactions of new documents in
one pass. It must make exactly the transactions ``Transaction.from_unchecked`` makes, one by
one, and give up (None) on anything it is not certain of, so that the one-by-one path decides."""

from __future__ import annotations

import copy
import random
from typing import Any

import msgpack
import pytest

from tidesync.core.operations import CreateDoc, SetValue, op_to_wire
from tidesync.core.transaction import Transaction
from tidesync.protocol import codec
from tidesync.protocol.messages import Changes

ORIGINS = ("00000000000000aa", "00000000000000bb")


def _stamp(n: int, origin: str = ORIGINS[0]) -> str:
    return f"{n:016x}00{origin}"


def _txns(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out = []
    n = 1
    prev: str | None = None
    for _ in range(count):
        origin = rng.choice(ORIGINS)
        ops = []
        for _ in range(rng.randint(1, 4)):
            n += 1
            fields = {"_id": f"k{n}", "a": n, "b": rng.choice([1.5, "x", None, True, -3])}
            if rng.random() < 0.3:
                fields["c"] = rng.choice(["y", 7])
            kinds = {"n": "counter"} if rng.random() < 0.2 else {}
            if kinds:
                fields["n"] = 3
            ops.append(op_to_wire(CreateDoc("Note", f"k{n}", _stamp(n, origin), "", fields, kinds, ())))
        tid = _stamp(n, origin)
        t: dict[str, Any] = {"id": tid, "origin": origin, "stamp": tid, "parents": [prev] if prev else [],
                             "ops": ops, "before": []}
        if rng.random() < 0.4:
            t["user"] = "u1"
        out.append(t)
        prev = tid
    return out


def _same(got: list[Transaction], expected: list[Transaction]) -> None:
    assert got == expected
    for g, e in zip(got, expected):
        assert g.wire() == e.wire() and g.wire() is not None
        assert g.create_shapes() == e.create_shapes()
        assert g.refs() == e.refs() and g.touches() == e.touches() and g.descriptor(5) == e.descriptor(5)
        assert g.packed() is None and g.meta == {} and g.before == ()
        assert msgpack.packb(g.wire()) == msgpack.packb(g.to_wire()) == msgpack.packb(e.to_wire())


def test_a_batch_makes_what_one_by_one_makes() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        datas = _txns(rng, rng.randint(1, 12))
        expected = [Transaction.from_unchecked(copy.deepcopy(d)) for d in datas]
        got = Transaction.many_from_unchecked(datas)
        assert got is not None and None not in expected
        _same(got, expected)  # type: ignore[arg-type]
        assert all(t.wire() is d for t, d in zip(got, datas))


def _spoil(datas: list[dict[str, Any]], how: str) -> None:
    t = datas[-1]
    if how == "meta":
        t["meta"] = {}
    elif how == "user none":
        t["user"] = None
    elif how == "key order":
        t["ops"] = t.pop("ops")
    elif how == "before":
        t["before"] = [["Note", "k1", None, 0]]  # deleted not a bool: to_wire() would differ
    elif how == "nested before":
        t["before"] = [["Note", "k1", {"a": {"x": [1]}}, False]]
    elif how == "update":
        t["ops"].append(op_to_wire(SetValue("Note", "k2", _stamp(999), "", ("a",), (), 5)))
    elif how == "bad stamp":
        t["ops"][0][3] = "zz"
    elif how == "bad id":
        t["id"] = t["id"].upper()
    elif how == "bad parent":
        t["parents"] = ["nope"]
    elif how == "bad origin":
        t["origin"] = "xyz"
    elif how == "int user":
        t["user"] = 5


def test_any_doubt_leaves_it_to_one_by_one() -> None:
    for how in ("meta", "user none", "key order", "before", "nested before", "update", "bad stamp", "bad id", "bad parent",
                "bad origin", "int user"):
        datas = _txns(random.Random(7), 5)
        _spoil(datas, how)
        assert Transaction.many_from_unchecked(datas) is None, how
        # The whole message still decodes as the one-by-one path says (or fails as it does).
        body = {"from_seq": 0, "to_seq": 5, "head": 5, "entries": [[i + 1, d] for i, d in enumerate(datas)],
                "progress": {}}
        payload = msgpack.packb([codec.PROTOCOL_VERSION, "changes", 0, body], use_bin_type=True)
        try:
            got: Any = codec.decode(payload)
        except Exception as exc:  # noqa: BLE001 - compared below
            got = str(exc)
        try:
            expected: Any = Changes.from_body(copy.deepcopy(body))
        except Exception as exc:  # noqa: BLE001
            expected = str(exc)
        if isinstance(expected, Changes):
            assert got == expected, how
        else:
            assert isinstance(got, str) and got.endswith(expected), how


def _edits(rng: random.Random, count: int) -> list[dict[str, Any]]:
    from tidesync.core.operations import CounterAdd, DeleteDoc, Unset

    out = []
    n = 10
    for _ in range(count):
        origin = rng.choice(ORIGINS)
        ops = []
        for _ in range(rng.randint(1, 3)):
            n += 1
            key = f"k{rng.randrange(5)}"
            path = rng.choice([("a",), ("b",), ("a", "x")])
            epochs = tuple(rng.choice(["", _stamp(3)]) for _ in path[1:])
            base = rng.choice(["", _stamp(2)])
            kind = rng.random()
            if kind < 0.5:
                op: Any = SetValue("Note", key, _stamp(n, origin), base, path, epochs,
                                   rng.choice([1, -2, 2.5, "s", None, True]), rng.random() < 0.2)
            elif kind < 0.8:
                op = CounterAdd("Note", key, _stamp(n, origin), base, path, epochs, rng.randint(-9, 9))
            elif kind < 0.9:
                op = Unset("Note", key, _stamp(n, origin), base, path, epochs)
            else:
                op = DeleteDoc("Note", key, _stamp(n, origin), base)
            ops.append(op_to_wire(op))
        tid = _stamp(n, origin)
        t: dict[str, Any] = {"id": tid, "origin": origin, "stamp": tid, "parents": [], "ops": ops, "before": []}
        if rng.random() < 0.4:
            t["user"] = "u1"
        out.append(t)
    return out


def test_a_batch_of_edits_makes_what_from_wire_makes() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        datas = _edits(rng, rng.randint(1, 10)) + (_txns(rng, 2) if seed % 3 == 0 else [])
        rng.shuffle(datas)
        expected = [Transaction.from_wire(copy.deepcopy(d)) for d in datas]
        got = Transaction.many_from_unchecked(copy.deepcopy(datas))
        assert got is not None
        assert got == expected
        for g, e in zip(got, expected):
            assert g.wire() == e.wire() and g.to_wire() == e.to_wire()
            assert msgpack.packb(g.wire()) == msgpack.packb(e.to_wire())  # the log entry's bytes
            assert g.create_shapes() == e.create_shapes() and g.refs() == e.refs()
            assert [type(op) for op in g.ops] == [type(op) for op in e.ops]
            assert g.meta == {} and g.before == () and g.packed() is None


@pytest.mark.parametrize("seed", range(25))
def test_any_change_to_edits_decodes_as_the_whole_walk_says(seed: int) -> None:
    """Random damage anywhere in a batch of edits: the same message or the same error as
    check_plain + from_body."""
    import math

    bad = [math.nan, 2**63, -(2**63) - 1, [1], {"x": 1}, {"$date": "2024-01-01T00:00:00Z"}, "", 0, -1, None,
           1.5, True, "zz", ["a", ""], [], ["a", "b"], [""], 7]
    rng = random.Random(seed)
    for _ in range(20):
        datas = _edits(rng, rng.randint(1, 4))
        t = rng.choice(datas)
        op = rng.choice(t["ops"])
        if rng.random() < 0.8:
            op[rng.randrange(len(op))] = copy.deepcopy(rng.choice(bad))
        else:
            op.append(rng.choice(bad))
        _decode_agrees(datas)


def _with_befores(rng: random.Random, datas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Before-images as a device's edits carry them: the old values of the fields set, the
    missing-field marker, a deleted document's whole body, a document that did not exist."""
    for t in datas:
        before = []
        for op in t["ops"]:
            kind = rng.random()
            if kind < 0.5:
                fields: Any = {op[5][0] if op[0] != "D" else "a": rng.choice([1, "s", None, 2.5, False])}
            elif kind < 0.7:
                fields = {"a": {"$missing": 1}, "b": [1, "x"]}
            elif kind < 0.85:
                fields = {"_id": op[2], "a": 3, "b": "x"}
            else:
                fields = None
            before.append([op[1], op[2], fields, op[0] == "D"])
        t["before"] = before
    return datas


def test_edits_with_before_images_make_what_from_wire_makes() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        datas = _with_befores(rng, _edits(rng, rng.randint(1, 10)))
        expected = [Transaction.from_wire(copy.deepcopy(d)) for d in datas]
        got = Transaction.many_from_unchecked(copy.deepcopy(datas))
        assert got is not None
        assert got == expected
        for g, e in zip(got, expected):
            assert g.before == e.before and g.before
            assert g.wire() == e.wire() and g.to_wire() == e.to_wire()
            assert msgpack.packb(g.wire()) == msgpack.packb(e.to_wire())  # the log entry's bytes
        body = {"from_seq": 0, "to_seq": len(datas), "head": len(datas),
                "entries": [[i + 1, d] for i, d in enumerate(datas)], "progress": {}}
        payload = msgpack.packb([codec.PROTOCOL_VERSION, "changes", 0, body], use_bin_type=True)
        assert codec.decode(payload) == Changes.from_body(copy.deepcopy(body))


@pytest.mark.parametrize("seed", range(25))
def test_any_change_to_before_images_decodes_as_the_whole_walk_says(seed: int) -> None:
    """Random damage in a batch's before-images: the same message or the same error as
    check_plain + from_body."""
    import math

    bad = [math.nan, 2**63, -(2**63) - 1, [1], {"x": 1}, {"x": [1]}, {"x": {"y": 1}}, {1: 2}, {"x": math.inf},
           [math.nan], "", 0, 1, None, 1.5, True, False, "zz", [], ["a"], 7]
    rng = random.Random(seed)
    for _ in range(20):
        datas = _with_befores(rng, _edits(rng, rng.randint(1, 4)))
        t = rng.choice(datas)
        b = rng.choice(t["before"])
        where = rng.random()
        if where < 0.5:
            b[rng.randrange(len(b))] = copy.deepcopy(rng.choice(bad))
        elif where < 0.8 and isinstance(b[2], dict) and b[2]:
            b[2][rng.choice(list(b[2]))] = copy.deepcopy(rng.choice(bad))
        elif where < 0.9:
            b.append(rng.choice(bad))
        else:
            t["before"].append(copy.deepcopy(rng.choice(bad)))
        _decode_agrees(datas, int_keys=True)


def _decode_agrees(datas: list[dict[str, Any]], *, int_keys: bool = False) -> None:
    """``codec.decode`` of a ``changes`` of ``datas`` gives what the full check and parse give:
    the same message, or the same error (``int_keys``: ``datas`` may hold int map keys, which
    msgpack refuses before either). Data msgpack cannot pack is skipped."""
    body = {"from_seq": 0, "to_seq": len(datas), "head": len(datas),
            "entries": [[i + 1, d] for i, d in enumerate(datas)], "progress": {}}
    try:
        payload = msgpack.packb([codec.PROTOCOL_VERSION, "changes", 0, body], use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return
    received = msgpack.unpackb(payload, raw=False, strict_map_key=not int_keys, use_list=True)[3]
    try:
        from tidesync.protocol.messages import check_plain

        check_plain(received, "changes body")
        expected: Any = Changes.from_body(received)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        expected = f"malformed changes message: {exc}"
    try:
        got: Any = codec.decode(payload)
    except Exception as exc:  # noqa: BLE001 - compared below
        got = str(exc)
    if isinstance(expected, Changes):
        assert got == expected
        assert [x.wire() for x in got.transactions] == [x.wire() for x in expected.transactions]
    elif int_keys and "map keys must be str" in expected:
        assert isinstance(got, str)  # an int map key: msgpack refuses it first (strict_map_key)
    else:
        assert isinstance(got, str) and got.endswith(expected), (got, expected)
