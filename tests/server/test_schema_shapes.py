"""The schema learner's shortcut: a transaction parsed from the wire carries the shapes of its
creates (found by the parse), and the learner skips one whose shapes it has learned. It must
learn exactly what observing every operation learns."""

from __future__ import annotations

import random

from tidesync.core.operations import CreateDoc, SetValue, creates_from_wire, op_to_wire
from tidesync.core.transaction import Transaction
from tidesync.server.schemas import SchemaLearner

ORIGIN = "00000000000000aa"
_VALUES = [1, -5, "x", "", 2.5, True, None, [1, 2], ["a"], {"$date": "2024-01-01T00:00:00Z"},
           {"a": 1}, {"$float": "NaN"}]


def _stamp(n: int) -> str:
    return f"{n:016x}00{ORIGIN}"


def _create(rng: random.Random, n: int) -> CreateDoc:
    names = rng.sample(["a", "b", "c", "d"], rng.randint(0, 4))
    fields = {k: rng.choice(_VALUES[:9] if rng.random() < 0.8 else _VALUES) for k in names}
    kinds = {k: rng.choice(["counter", "set", "list"]) for k in names if rng.random() < 0.2}
    return CreateDoc(rng.choice(["Note", "Task"]), f"k{n}", _stamp(n), "", fields, kinds, ())


def _wire_txn(ops: list) -> dict:
    s = ops[0].stamp if ops else _stamp(10**6)
    return {"id": s, "origin": ORIGIN, "stamp": s, "parents": [], "ops": [op_to_wire(o) for o in ops],
            "before": []}


def test_shapes_learn_what_every_operation_teaches() -> None:
    rng = random.Random(7)
    for _ in range(60):
        plain, short = SchemaLearner(None), SchemaLearner(None)
        n = 0
        for _ in range(rng.randint(1, 6)):
            batch = []
            for _ in range(rng.randint(0, 4)):
                ops: list = []
                shape = _create(rng, n)
                for _ in range(rng.randint(0, 5)):
                    n += 1
                    op = _create(rng, n) if rng.random() < 0.3 else CreateDoc(
                        shape.collection, f"k{n}", _stamp(n), "", dict(shape.fields), dict(shape.kinds), ())
                    ops.append(op)
                if rng.random() < 0.1:
                    n += 1
                    ops.append(SetValue("Note", "k0", _stamp(n), "", ("a",), (), rng.choice(_VALUES[:9])))
                batch.append(Transaction.from_wire(_wire_txn(ops)))
            plain.observe(op for t in batch for op in t.ops)
            short.observe_transactions(batch)
            assert short._schema == plain._schema
            assert short._shapes == plain._shapes


def test_create_shapes() -> None:
    a = CreateDoc("Note", "k1", _stamp(1), "", {"a": 1, "b": "x"}, {}, ())
    b = CreateDoc("Note", "k2", _stamp(2), "", {"a": 2, "b": "y"}, {}, ())
    c = CreateDoc("Note", "k3", _stamp(3), "", {"b": 2, "a": "y"}, {"b": "counter"}, ())
    t = Transaction.from_wire(_wire_txn([a, b, c, b]))
    assert t.create_shapes() == (("Note", ("a", "b"), (int, str), ()),
                                 ("Note", ("b", "a"), (int, str), (("b", "counter"),)),
                                 ("Note", ("a", "b"), (int, str), ()))
    m = CreateDoc("Note", "k4", _stamp(4), "", {"a": {"$date": "2024-01-01T00:00:00Z"}}, {}, ())
    assert Transaction.from_wire(_wire_txn([a, m, b])).create_shapes() is None
    s = SetValue("Note", "k1", _stamp(5), "", ("a",), (), 3)
    assert Transaction.from_wire(_wire_txn([a, s])).create_shapes() is None
    assert Transaction(a.stamp, ORIGIN, a.stamp, (), (a,)).create_shapes() is None
    out: list = []
    assert creates_from_wire([op_to_wire(a), ["C"]], out) is None


def test_same_types_under_other_names_are_learned() -> None:
    a = CreateDoc("Note", "k1", _stamp(1), "", {"a": 1, "b": "x"}, {}, ())
    d = CreateDoc("Note", "k2", _stamp(2), "", {"b": 2, "a": "y"}, {}, ())
    e = CreateDoc("Task", "k3", _stamp(3), "", {"b": 2, "a": "y"}, {}, ())
    t = Transaction.from_wire(_wire_txn([a, d, e]))
    assert len(t.create_shapes() or ()) == 3
    plain, short = SchemaLearner(None), SchemaLearner(None)
    plain.observe(t.ops)
    short.observe_transactions([Transaction.from_wire(_wire_txn([a]))])
    short.observe_transactions([t])
    assert short._schema == plain._schema
    assert sorted(short._schema["Note"]["a"]["kinds"]) == sorted(plain._schema["Note"]["a"]["kinds"])
    assert len(short._schema["Note"]["a"]["kinds"]) == 2


def test_a_new_shape_is_learned_from_its_first_create_only(monkeypatch) -> None:
    from tidesync.server import schemas

    calls = [0]
    original = schemas._create_shape

    def counting(op):
        calls[0] += 1
        return original(op)

    monkeypatch.setattr(schemas, "_create_shape", counting)
    ops = [CreateDoc("Note", f"k{i}", _stamp(i + 1), "", {"a": i, "b": "x"}, {}, ()) for i in range(1000)]
    ops.append(CreateDoc("Task", "t", _stamp(5000), "", {"a": "y"}, {}, ()))
    t = Transaction.from_wire(_wire_txn(ops))
    short, plain = SchemaLearner(None), SchemaLearner(None)
    assert short.observe_transactions([t])
    assert calls[0] == 1001  # the Task create comes last: every op up to it is looked at
    calls[0] = 0
    t2 = Transaction.from_wire(_wire_txn(ops[:1000]))
    fresh = SchemaLearner(None)
    assert fresh.observe_transactions([t2])
    assert calls[0] == 1  # one shape, learned from the first create
    plain.observe(ops)
    assert short._schema == plain._schema and short._shapes == plain._shapes
    assert not short.observe_transactions([t2])


def _reference_schema(ops: list) -> dict:
    """What the learner learns, by its rules, without any shortcut."""
    from tidesync.server.schemas import _element_kind, _op_kinds

    schema: dict = {}
    for op in ops:
        for name, kind in _op_kinds(op):
            kinds = schema.setdefault(op.collection, {}).setdefault(name, {"kinds": []})["kinds"]
            if kind not in kinds:
                kinds.append(kind)
                kinds.sort()
        el = _element_kind(op)
        if el is not None:
            entry = schema.setdefault(op.collection, {}).setdefault(el[0], {"kinds": []})
            elements = entry.setdefault("elements", [])
            if el[1] not in elements:
                elements.append(el[1])
                elements.sort()
    return schema


def test_repeated_updates_learn_what_every_operation_teaches() -> None:
    """A stream of edits (the same fields again and again, values of every kind, tagged maps
    among them) is learned as if each operation were looked at."""
    from tidesync.core.operations import CounterAdd, ListInsert, Unset

    rng = random.Random(11)
    for _ in range(40):
        learner = SchemaLearner(None)
        seen: list = []
        n = 0
        for _ in range(rng.randint(1, 8)):
            batch = []
            for _ in range(rng.randint(1, 6)):
                n += 1
                coll = rng.choice(["Note", "Task"])
                path = rng.choice([("a",), ("b",), ("a", "x")])
                epochs = ("",) * (len(path) - 1)
                kind = rng.random()
                if kind < 0.5:
                    op: object = SetValue(coll, "k1", _stamp(n), "", path, epochs, rng.choice(_VALUES))
                elif kind < 0.7:
                    op = CounterAdd(coll, "k1", _stamp(n), "", path, epochs, rng.randint(-3, 3))
                elif kind < 0.8:
                    op = Unset(coll, "k1", _stamp(n), "", path, epochs)
                elif kind < 0.9:
                    op = ListInsert(coll, "k1", _stamp(n), "", path[:1], (_stamp(1),), f"e{n}", None,
                                    rng.choice(_VALUES))
                else:
                    op = _create(rng, n)
                batch.append(op)
            seen.extend(batch)
            learner.observe_transactions([Transaction(_stamp(n), ORIGIN, _stamp(n), (), tuple(batch))])
            assert learner._schema == _reference_schema(seen)
