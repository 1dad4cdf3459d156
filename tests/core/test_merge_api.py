"""The merge core's public surface: states, readers for writers, policies, conflicts, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

import tidesync.core.merge as merge
from tidesync.core.merge import (
    Conflict,
    DocState,
    Policies,
    canonical_state,
    container_kind,
    epochs,
    integrate,
    integrate_all,
    join,
    list_element_ids,
    new_element_id,
    new_state,
    value_order_key,
)
from tidesync.core.operations import CreateDoc, DeleteDoc, ListInsert, Op, SetValue, Unset
from tidesync.core.stamp import ZERO
from tidesync.errors import MergeError

from tests.helpers.merge_pairs import COLL, Writer, converge, stamp, start


def test_exports_match_all() -> None:
    for name in merge.__all__:
        assert hasattr(merge, name), name


def test_new_state_is_empty_and_not_live() -> None:
    s = new_state()
    assert (s.epoch, s.live, s.body, s.meta) == (ZERO, False, {}, {})


def test_copy_is_independent() -> None:
    s = start({"l": ["a"], "o": {"x": 1}}, {"l": "list", "o": "object"})
    w = Writer("A", s)
    w.append(20, ("l",), "b")
    c = w.state.copy()
    w.append(21, ("l",), "c")
    w.set(22, ("o", "x"), 2)
    assert c.body["l"] == ["a", "b"] and c.body["o"] == {"x": 1}
    assert w.state.body["l"] == ["a", "b", "c"]


def test_integrate_does_not_alias_operation_values() -> None:
    op = CreateDoc(COLL, 1, stamp(10), ZERO, {"_id": 1, "l": ["a"], "o": {"x": 1}}, {"l": "list", "o": "object"})
    s1, _ = integrate(None, op)
    w = Writer("A", s1)
    w.append(20, ("l",), "b")
    w.set(21, ("o", "x"), 5)
    assert op.fields == {"_id": 1, "l": ["a"], "o": {"x": 1}}
    s2, _ = integrate(new_state(), op)
    assert s2.body["l"] == ["a"]


def test_new_element_ids_sort_by_stamp_then_index() -> None:
    s1, s2 = stamp(10), stamp(11)
    ids = [new_element_id(s1), new_element_id(s1, 1), new_element_id(s1, 15), new_element_id(s1, 16),
           new_element_id(s1, 4000), new_element_id(s2)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    with pytest.raises(ValueError):
        new_element_id(s1, -1)


def test_readers_agree_on_compact_and_expanded_states() -> None:
    fast = start({"l": ["a", "b"], "site": {"tags": ["x"], "city": "c"}, "n": 1, "v": 3},
                 {"l": "list", "site": "object", "site.tags": "list", "n": "counter"})
    assert "*" in fast.meta
    expanded = join(new_state(), fast)
    assert "*" not in expanded.meta
    for s in (fast, expanded):
        assert epochs(s, ("site", "tags")) == (ZERO, ZERO)
        assert container_kind(s, ("l",)) == "list"
        assert container_kind(s, ("site",)) == "object"
        assert container_kind(s, ("n",)) == "counter"
        assert container_kind(s, ("v",)) is None
        assert container_kind(s, ("l", "x")) is None
        assert list_element_ids(s, ("l",)) == [new_element_id(stamp(10)), new_element_id(stamp(10), 1)]
        with pytest.raises(ValueError):
            epochs(s, ("v",))
        with pytest.raises(ValueError):
            epochs(s, ("n",))
        with pytest.raises(ValueError):
            list_element_ids(s, ("site",))
    assert epochs(fast, ()) == ()


def test_epochs_report_the_assignment_stamp() -> None:
    w = Writer("A", start({"site": None}))
    op = w.assign(20, ("site",), "object")
    assert epochs(w.state, ("site",)) == (op.stamp,)
    with pytest.raises(ValueError):
        epochs(new_state(), ("site",))


def test_malformed_operations_raise_merge_error_and_change_nothing() -> None:
    s = start({"l": ["a"]}, {"l": "list"})
    before = canonical_state(s)
    bad: list[Any] = [
        SetValue(COLL, 1, stamp(20), ZERO, ("_id",), (), 2),
        SetValue(COLL, 1, stamp(20), ZERO, ("a", "b"), (), 2),  # missing an epoch
        ListInsert(COLL, 1, stamp(20), ZERO, ("l",), (ZERO,), "0", "zzz", "x"),  # id below its anchor
        CreateDoc(COLL, 1, stamp(20), ZERO, {"_id": 2}, {}),
        CreateDoc(COLL, 1, stamp(20), ZERO, {"_id": 1, "l": "not a list"}, {"l": "list"}),
        CreateDoc(COLL, 1, stamp(20), ZERO, {"_id": 1, "o": {"t": 1}}, {"o.t": "counter"}),
    ]
    for op in bad:
        with pytest.raises(MergeError):
            integrate(s, op)
        assert canonical_state(s) == before
    with pytest.raises(MergeError):
        integrate(None, CreateDoc(COLL, 1, stamp(20), ZERO, {"_id": 1, "l": {}}, {"l": "list"}))


def test_create_without_id_gets_the_key() -> None:
    s, _ = integrate(None, CreateDoc(COLL, "k", stamp(10), ZERO, {"v": 1}, {}))
    assert s.body == {"_id": "k", "v": 1}


def test_a_write_before_the_create_makes_the_document_live_with_its_key() -> None:
    s, _ = integrate(None, SetValue(COLL, 7, stamp(20), ZERO, ("v",), (), 1))
    assert s.live and s.body == {"_id": 7, "v": 1}
    s, _ = integrate(s, CreateDoc(COLL, 7, stamp(10), ZERO, {"_id": 7, "v": 0, "w": 2}, {}))
    assert s.body == {"_id": 7, "v": 1, "w": 2}


def test_an_operation_from_a_later_incarnation_resets_first() -> None:
    s = start({"v": 1, "w": 2})
    later = SetValue(COLL, 1, stamp(30), stamp(20), ("v",), (), 5)  # made after a delete at 20
    s, _ = integrate(s, later)
    assert s.epoch == stamp(20) and s.body == {"_id": 1, "v": 5}
    s, _ = integrate(s, DeleteDoc(COLL, 1, stamp(20), ZERO))  # the delete arrives: nothing more
    assert s.live and s.body == {"_id": 1, "v": 5}


def test_states_are_json_serializable() -> None:
    w = Writer("A", start({"l": ["a"], "s": ["x"], "d": {"k": 1}, "n": 2, "o": {"p": 1}},
                          {"l": "list", "s": "set", "d": "dict", "n": "counter", "o": "object"}))
    w.append(20, ("l",), "b")
    w.add(21, ("s",), "y")
    w.incr(22, ("n",), 3)
    round_trip = DocState(w.state.epoch, w.state.live, json.loads(json.dumps(w.state.body)),
                          json.loads(json.dumps(w.state.meta)))
    assert canonical_state(round_trip) == canonical_state(w.state)


# -- policies -------------------------------------------------------------------------------------


def test_policies_lookup_by_collection_and_top_level_field() -> None:
    p = Policies({(COLL, "score"): "max", ("other", "*"): "min"})
    assert p.lookup(COLL, ("score",)) == "max"
    assert p.lookup(COLL, ("score", "nested")) == "max"
    assert p.lookup(COLL, ("title",)) == "lww"
    assert p.lookup("other", ("anything",)) == "min"
    assert Policies(default="max").lookup(COLL, ("x",)) == "max"
    with pytest.raises(ValueError):
        Policies({(COLL, "x"): "biggest"})
    with pytest.raises(ValueError):
        Policies().set(COLL, "x", 3)  # type: ignore[arg-type]


def test_max_policy_keeps_the_largest_value_whatever_the_stamps() -> None:
    pol = Policies({(COLL, "score"): "max"})
    base = start({"score": 1}, policies=pol)
    a, b = Writer("A", base, policies=pol), Writer("B", base, policies=pol)
    got = converge(base, [a.set(100, ("score",), 9)], [b.set(200, ("score",), 4)], policies=pol)
    assert got.body["score"] == 9
    s, conflicts = integrate_all(base.copy(), [b.set(200, ("score",), 4), a.set(100, ("score",), 9)], pol)
    assert [(c.rule, c.winner, c.loser) for c in conflicts] == [("max", 9, 4)]


def test_min_policy_and_nulls() -> None:
    pol = Policies({(COLL, "low"): "min"})
    base = start({"low": 5}, policies=pol)
    a, b = Writer("A", base, policies=pol), Writer("B", base, policies=pol)
    got = converge(base, [a.set(100, ("low",), 3)], [b.set(200, ("low",), None), b.set(201, ("low",), 4)],
                   policies=pol)
    assert got.body["low"] == 3
    # A default still loses to an explicit write under a policy.
    a = Writer("A", base, policies=pol)
    got = converge(base, [a.set(300, ("low",), -1, default=True)], policies=pol)
    assert got.body["low"] == 5


def test_custom_policy_function_decides() -> None:
    def longest(field: str, x: Any, y: Any) -> Any:
        assert field == "name"
        return x if (len(x), x) > (len(y), y) else y

    pol = Policies({(COLL, "name"): longest})
    base = start({"name": "Al"}, policies=pol)
    a, b = Writer("A", base, policies=pol), Writer("B", base, policies=pol)
    got = converge(base, [a.set(100, ("name",), "Alexander")], [b.set(200, ("name",), "Alex")], policies=pol)
    assert got.body["name"] == "Alexander"


def test_custom_policy_must_return_one_of_its_arguments() -> None:
    pol = Policies({(COLL, "name"): lambda f, x, y: "neither"})
    base = start({"name": "a"}, policies=pol)
    with pytest.raises(MergeError):
        integrate(base, SetValue(COLL, 1, stamp(50, "B"), ZERO, ("name",), (), "b"), pol)


def test_union_policy_keeps_elements_across_reassignment() -> None:
    pol = Policies({(COLL, "tags"): "union"})
    base = start({"tags": ["a"]}, {"tags": "list"}, policies=pol)
    a, b = Writer("A", base, policies=pol), Writer("B", base, policies=pol)
    got = converge(base, [a.assign(100, ("tags",), "list"), a.append(101, ("tags",), "x")],
                   [b.append(200, ("tags",), "y")], policies=pol)
    assert sorted(got.body["tags"]) == ["a", "x", "y"]
    lww = converge(base, [Writer("A", base).assign(100, ("tags",), "list")], [Writer("B", base).append(200, ("tags",), "y")])
    assert lww.body["tags"] == []


def test_union_policy_hides_contents_under_a_value_and_brings_them_back() -> None:
    pol = Policies({(COLL, "s"): "union"})
    base = start({"s": ["a"]}, {"s": "set"}, policies=pol)
    w = Writer("A", base, policies=pol)
    w.set(100, ("s",), None)
    assert w.state.body["s"] is None
    w.assign(200, ("s",), "set")
    w.add(201, ("s",), "b")
    assert w.state.body["s"] == ["a", "b"]


def test_value_order_key_is_a_total_order_over_kinds() -> None:
    values: list[Any] = [None, False, True, {"$float": "nan"}, -1, 0.5, {"$decimal": "1.5"}, 2,
                         {"$float": "inf"}, "a", "b", {"$date": 5}, {"$oid": "0" * 24}, {"$uuid": "u"},
                         {"$binary": "AA=="}, [1], {"k": 1}]
    keys = [value_order_key(v) for v in values]
    assert keys == sorted(keys)


# -- conflicts ------------------------------------------------------------------------------------


def test_no_conflict_recorded_for_plain_causal_updates() -> None:
    w = Writer("A", start({"title": "x"}))
    w.set(20, ("title",), "y")
    w.set(30, ("title",), "z")
    assert w.conflicts == []


def test_a_losing_write_is_recorded_with_both_values_and_stamps() -> None:
    base = start({"title": "x"})
    win = Writer("B", base).set(200, ("title",), "b")
    lose = Writer("A", base).set(100, ("title",), "a")
    s, conflicts = integrate_all(base.copy(), [win, lose])
    assert conflicts == [Conflict(COLL, 1, ("title",), "lww", "b", win.stamp, "a", lose.stamp)]
    assert conflicts[0].to_plain()["path"] == ["title"]


def test_rules_named_in_conflicts() -> None:
    base = start({"p": 1, "l": ["a", "b"], "o": {"x": 1}, "n": 1}, {"l": "list", "o": "object", "n": "counter"})
    a, b = Writer("A", base), Writer("B", base)
    first = [a.set(300, ("p",), 2), a.erase(301, ("l",), 0), a.set(302, ("o",), None), a.assign(303, ("n",), "counter", 0)]
    later = [b.set(100, ("p",), 9, default=True), b.lset(101, ("l",), 0, "A"), b.set(102, ("o", "x"), 2),
             b.incr(103, ("n",), 1)]
    _, conflicts = integrate_all(base.copy(), first + later)
    assert [c.rule for c in conflicts] == ["default-loses", "erase-wins", "parent-wins", "counter-reset"]
    clear = Writer("A", base).assign(400, ("l",), "list")
    _, conflicts = integrate_all(base.copy(), [clear, Writer("B", base).append(150, ("l",), "z")])
    assert [c.rule for c in conflicts] == ["clear-wins"]


def test_join_takes_the_later_incarnation() -> None:
    base = start({"v": 1})
    deleted = Writer("A", base)
    deleted.delete(50)
    edited = Writer("B", base)
    edited.set(60, ("v",), 2)
    assert not join(deleted.state, edited.state).live
    assert not join(edited.state, deleted.state).live


def test_unset_is_a_write() -> None:
    base = start({"v": 1})
    a = Writer("A", base)
    got = converge(base, [Unset(COLL, 1, stamp(100), ZERO, ("v",), ())],
                   [a.set(50, ("v",), 2)])
    assert "v" not in got.body


def test_join_applies_the_policies_of_the_given_collection() -> None:
    pol = Policies({(COLL, "score"): "max"})
    base = start({"score": 1}, policies=pol)
    high, low = Writer("A", base, policies=pol), Writer("B", base, policies=pol)
    high.set(100, ("score",), 9)
    low.set(200, ("score",), 4)
    assert join(high.state, low.state, pol, collection=COLL).body["score"] == 9
    assert join(low.state, high.state, pol, collection=COLL).body["score"] == 9


def test_latest_stamp_follows_every_kind_of_write() -> None:
    from tidesync.core.merge import latest_stamp

    w = Writer("A", start({"l": ["a"], "s": ["x"], "d": {"k": 1}, "n": 2, "o": {"p": 1}},
                          {"l": "list", "s": "set", "d": "dict", "n": "counter", "o": "object"}))
    assert latest_stamp(w.state) == stamp(10)
    steps: list[Callable[[int], Op]] = [lambda t: w.append(t, ("l",), "b"), lambda t: w.lset(t, ("l",), 0, "A"),
             lambda t: w.add(t, ("s",), "y"), lambda t: w.remove(t, ("s",), "x"),
             lambda t: w.put(t, ("d",), "k", 2), lambda t: w.pop(t, ("d",), "k"), lambda t: w.incr(t, ("n",), 1),
             lambda t: w.set(t, ("o", "p"), 3), lambda t: w.assign(t, ("o",), "object"),
             lambda t: w.set(t, ("v",), 1), lambda t: w.delete(t)]
    for i, step in enumerate(steps):
        op = step(20 + i)
        assert latest_stamp(w.state) == op.stamp
    # An erase keeps no stamp (nothing can beat it), so it leaves the latest stamp as it was.
    w2 = Writer("A", start({"l": ["a"]}, {"l": "list"}))
    w2.erase(50, ("l",), 0)
    assert latest_stamp(w2.state) == stamp(10)
    assert latest_stamp(new_state()) == ZERO


def test_a_malformed_create_after_a_delete_changes_nothing() -> None:
    s = new_state()
    s, _ = integrate(s, DeleteDoc(COLL, 1, stamp(5), ZERO))
    before = canonical_state(s)
    with pytest.raises(MergeError):
        integrate(s, CreateDoc(COLL, 1, stamp(20), stamp(9), {"_id": 1, "l": 3}, {"l": "list"}))
    assert canonical_state(s) == before
