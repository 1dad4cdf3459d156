"""Device Sync's conflict rules CR-01..CR-32, one two-replica example each.

Each test starts A and B from one synced state, lets them write concurrently, and checks the
state every arrival order converges to (``converge`` tries every permutation). Where tidesync
decides differently from Device Sync, the test asserts tidesync's behaviour and its name says
so; docs/merge-rules.md gives the reasons.
"""

from __future__ import annotations

from tidesync.core.clock import HybridClock
from tidesync.core.merge import (
    DocState,
    canonical_state,
    integrate,
    integrate_all,
    join,
    list_element_ids,
    new_state,
)
from tidesync.core.operations import Op, SetValue
from tidesync.core.stamp import ZERO

from tests.helpers.merge_pairs import COLL, REPLICAS, Writer, converge, stamp, start

# -- ordering and clocks --------------------------------------------------------------------------


def test_cr01_last_writer_wins_per_property() -> None:
    base = start({"title": "x"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.set(100, ("title",), "a")], [b.set(200, ("title",), "b")])
    assert got.body["title"] == "b"


def test_cr02_equal_timestamps_broken_by_replica_id() -> None:
    base = start({"title": "x"})
    a, b = Writer("A", base), Writer("B", base)  # A's id ends in 5, B's in 9
    got = converge(base, [a.set(100, ("title",), "a")], [b.set(100, ("title",), "b")])
    assert got.body["title"] == "b"


def test_cr03_hybrid_clock_orders_causal_writes_despite_skew() -> None:
    real = [10 * 3_600_000]
    clock_a = HybridClock(REPLICAS["A"], lambda: real[0] + 3_600_000)  # one hour fast
    clock_b = HybridClock(REPLICAS["B"], lambda: real[0])
    base = start({"title": "x"})
    edit_a = SetValue(COLL, 1, clock_a.now(), ZERO, ("title",), (), "from A")  # real 10:00, stamped 11:00
    real[0] += 1_800_000
    concurrent_b = SetValue(COLL, 1, clock_b.now(), ZERO, ("title",), (), "from B")  # real 10:30
    # Concurrent: as in Device Sync, the fast clock wins.
    assert converge(base, [edit_a], [concurrent_b]).body["title"] == "from A"
    # Causal: B saw A's edit first; its hybrid clock then stamps after A's, so B's edit wins.
    clock_b.observe(edit_a.stamp)
    later_b = SetValue(COLL, 1, clock_b.now(), ZERO, ("title",), (), "B after seeing A")
    assert converge(base, [edit_a], [later_b]).body["title"] == "B after seeing A"


def test_cr04_property_granularity() -> None:
    base = start({"title": "x", "done": False})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.set(100, ("title",), "a")], [b.set(50, ("done",), True)])
    assert got.body == {"_id": 1, "title": "a", "done": True}


def test_cr05_defaults_lose_to_explicit_writes() -> None:
    a, b = Writer("A"), Writer("B")
    got = converge(None, [a.create(200, {"priority": 0}, defaults=["priority"])],
                   [b.create(100, {"priority": 5})])
    assert got.body["priority"] == 5
    # Also for a default written by SetValue, whatever the stamps.
    base = start({"priority": 1})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.set(300, ("priority",), 0, default=True)], [b.set(100, ("priority",), 7)])
    assert got.body["priority"] == 7


# -- objects and identity -------------------------------------------------------------------------


def test_cr06_creates_of_one_key_merge_field_by_field() -> None:
    a, b = Writer("A", key="u1"), Writer("B", key="u1")
    got = converge(None, [a.create(100, {"name": "Ann", "tags": ["x"]}, {"tags": "list"})],
                   [b.create(200, {"email": "a@x", "name": "Anne", "tags": ["y"]}, {"tags": "list"})])
    assert got.live
    assert got.body["name"] == "Anne"  # both set it: B's later create wins
    assert got.body["email"] == "a@x"
    assert sorted(got.body["tags"]) == ["x", "y"]  # containers made at create merge their contents


def test_cr07_delete_wins_over_concurrent_edits() -> None:
    base = start({"walk": "10:00", "tags": ["a"]}, {"tags": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.delete(100)], [b.set(200, ("walk",), "11:00"), b.append(201, ("tags",), "b")])
    assert not got.live and got.body == {}


def test_cr07_the_discarded_edit_is_recorded_as_delete_wins() -> None:
    base = start({"walk": "10:00"})
    a, b = Writer("A", base), Writer("B", base)
    delete = a.delete(100)
    edit = b.set(200, ("walk",), "11:00")
    s, conflicts = integrate_all(base.copy(), [delete, edit])
    assert [(c.rule, c.loser, c.winner_stamp) for c in conflicts] == [("delete-wins", "11:00", delete.stamp)]


def test_cr08_delete_beats_concurrent_create_but_not_a_later_one() -> None:
    base = start({"color": "red"})
    a, b = Writer("A", base), Writer("B", base)
    delete = a.delete(100)
    upsert = b.create(200, {"color": "red"})
    assert not converge(base, [delete], [upsert]).live
    # B creates again after downloading A's delete: a new incarnation, no conflict.
    b2 = Writer("B", base)
    b2.receive(delete)
    recreate = b2.create(300, {"color": "blue"})
    got = converge(base, [delete], [recreate])
    assert got.live and got.body["color"] == "blue"


def test_cr09_delete_twice_is_delete_once_and_old_erase_cannot_undo_recreate() -> None:
    base = start({"v": 1})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.delete(100)], [b.delete(150)])
    assert not got.live and got.epoch == stamp(150, "B")
    # A erases at t=100; B erases at t=200 then re-creates: A's older erase cannot defeat that pair.
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.delete(100)], [b.delete(200), b.create(210, {"v": 2})])
    assert got.live and got.body["v"] == 2
    # But an erase later than B's, made without seeing the re-creation, wins (CR-08).
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.delete(300)], [b.delete(200), b.create(210, {"v": 2})])
    assert not got.live


def test_cr10_links_stay_and_resolve_again_after_recreate() -> None:
    # The merge core keeps a link as the target's key; a reader resolves it (and hides it
    # while the target is deleted). Deleting the target never edits the list that links it.
    team = start({"members": [3]}, {"members": "list"})
    a = Writer("A", team)
    got_team = converge(team, [a.append(100, ("members",), 7)])
    assert got_team.body["members"] == [3, 7]
    person = Writer("A", key=7)
    person.create(10, {"name": "P"})
    deleted = Writer("B", person.state, key=7)
    deleted.delete(90)
    assert not deleted.state.live  # the link now reads as unresolved
    deleted.create(120, {"name": "P again"})
    assert deleted.state.live  # the same key again: the link resolves


# -- lists ----------------------------------------------------------------------------------------


def test_cr11_concurrent_inserts_at_one_place_keep_both_later_stamp_first() -> None:
    base = start({"l": ["a"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.append(100, ("l",), "x")], [b.append(200, ("l",), "y")])
    # Device Sync orders lower timestamp first ([a, x, y]); RGA puts the later insert first.
    assert got.body["l"] == ["a", "y", "x"]


def test_cr12_inserts_at_different_positions_keep_their_neighbours() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.insert(100, ("l",), 0, "x")], [b.insert(200, ("l",), 3, "y")])
    assert got.body["l"] == ["x", "a", "b", "c", "y"]


def test_cr13_erase_wins_over_set_of_the_element() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.lset(200, ("l",), 1, "B")], [b.erase(100, ("l",), 1)])
    assert got.body["l"] == ["a", "c"]


def test_cr14_two_erases_of_one_element_remove_it_once() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.erase(100, ("l",), 1)], [b.erase(200, ("l",), 1)])
    assert got.body["l"] == ["a", "c"]


def _move(w: Writer, t: int, path: tuple[str, ...], src: int, dst: int) -> list[Op]:
    """A move written as a remove and an insert of the value again (what an app did before
    ``ManagedList.move``; the element loses its identity)."""
    value = w.state.body[path[0]][src]
    ops = [w.erase(t, path, src)]
    ops.append(w.insert(t + 1, path, dst, value))
    return ops


def test_cr15_remove_and_insert_an_update_of_the_removed_element_is_lost() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, _move(a, 100, ("l",), 0, 2), [b.lset(150, ("l",), 0, "A")])
    # Device Sync: [b, c, A] (the update follows the move). Here the set hit the erased copy.
    assert got.body["l"] == ["b", "c", "a"]


def test_cr16_remove_and_insert_twice_leaves_two_copies() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, _move(a, 100, ("l",), 0, 1), _move(b, 200, ("l",), 0, 2))
    # Device Sync: [b, c, a] (the later move wins).
    assert got.body["l"] == ["b", "a", "c", "a"]


def test_cr17_remove_and_insert_vs_erase_keeps_the_inserted_copy() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, _move(a, 100, ("l",), 0, 2), [b.erase(150, ("l",), 0)])
    # Device Sync: [b, c] (erase wins over the move).
    assert got.body["l"] == ["b", "c", "a"]


def test_cr15_an_update_follows_a_concurrent_move() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.move(100, ("l",), 0, 2)], [b.lset(150, ("l",), 0, "A")])
    assert got.body["l"] == ["b", "c", "A"]


def test_cr16_of_two_moves_of_one_element_the_later_wins() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.move(100, ("l",), 0, 1)], [b.move(200, ("l",), 0, 2)])
    assert got.body["l"] == ["b", "c", "a"]
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.move(300, ("l",), 0, 1)], [b.move(200, ("l",), 0, 2)])
    assert got.body["l"] == ["b", "a", "c"]


def test_cr16_the_losing_move_is_recorded_as_a_conflict() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    late, early = b.move(200, ("l",), 0, 2), a.move(100, ("l",), 0, 1)
    a.receive(late)
    b.receive(early)
    assert a.state.body["l"] == b.state.body["l"] == ["b", "c", "a"]
    (conflict,) = b.conflicts
    assert conflict.rule == "lww" and conflict.loser_stamp == stamp(100, "A")
    assert conflict.winner == "a" and conflict.winner_stamp == stamp(200, "B")
    assert not a.conflicts     # the later move arrived after: a later edit, not a conflict


def test_cr17_an_erase_wins_over_a_concurrent_move() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.move(100, ("l",), 0, 2)], [b.erase(150, ("l",), 0)])
    assert got.body["l"] == ["b", "c"]
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.move(200, ("l",), 0, 2)], [b.erase(150, ("l",), 0)])
    assert got.body["l"] == ["b", "c"]


def test_a_moved_element_is_anchored_where_it_went() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    # A moves a behind c and inserts after it; B inserts after a where a was.
    got = converge(base, [a.move(100, ("l",), 0, 2), a.insert(110, ("l",), 3, "x")],
                   [b.insert(150, ("l",), 1, "y")])
    assert got.body["l"] == ["y", "b", "c", "a", "x"]


def test_moves_of_a_list_of_embedded_objects_keep_edits_of_their_fields() -> None:
    lines = [{"sku": "p", "qty": 1}, {"sku": "q", "qty": 2}]
    base = start({"lines": lines}, {"lines": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.move(100, ("lines",), 1, 0)], [b.lset(150, ("lines",), 0, {"sku": "p", "qty": 5})])
    assert got.body["lines"] == [{"sku": "q", "qty": 2}, {"sku": "p", "qty": 5}]


def test_cr18_insert_and_move_to_one_position_later_stamp_first() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.append(100, ("l",), "x")], _move(b, 200, ("l",), 0, 2))
    assert got.body["l"] == ["b", "c", "a", "x"]
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.append(100, ("l",), "x")], [b.move(200, ("l",), 0, 2)])
    assert got.body["l"] == ["b", "c", "a", "x"]
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.append(300, ("l",), "x")], [b.move(200, ("l",), 0, 2)])
    assert got.body["l"] == ["b", "c", "x", "a"]


def test_cr19_clear_wins_over_concurrent_element_operations() -> None:
    base = start({"l": ["a", "b"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.assign(100, ("l",), "list")], [b.append(200, ("l",), "c")])
    assert got.body["l"] == []


def test_cr19_of_two_clears_the_later_wins_with_what_its_author_added() -> None:
    base = start({"l": ["a", "b"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.assign(100, ("l",), "list"), a.append(101, ("l",), "x")],
                   [b.assign(200, ("l",), "list"), b.append(201, ("l",), "y")])
    assert got.body["l"] == ["y"]


def test_cr20_element_ids_make_updates_land_on_their_element() -> None:
    lines = [{"qty": 0}, {"qty": 1}, {"qty": 2}]
    base = start({"lines": lines}, {"lines": "list"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.insert(100, ("lines",), 0, {"qty": 9})], [b.lset(150, ("lines",), 2, {"qty": 5})])
    assert got.body["lines"] == [{"qty": 9}, {"qty": 0}, {"qty": 1}, {"qty": 5}]


# -- sets, dictionaries, counters, strings --------------------------------------------------------


def test_cr21_sets_later_of_add_and_remove_wins() -> None:
    base = start({"s": ["r"]}, {"s": "set"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.remove(100, ("s",), "r"), a.add(101, ("s",), "s")],
                   [b.add(200, ("s",), "r"), b.add(201, ("s",), "t")])
    assert got.body["s"] == ["r", "s", "t"]
    a, b = Writer("A", base), Writer("B", base)
    assert converge(base, [a.remove(300, ("s",), "r")], [b.add(200, ("s",), "r")]).body["s"] == []


def test_cr21_set_clear_discards_concurrent_adds() -> None:
    base = start({"s": ["r"]}, {"s": "set"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.assign(100, ("s",), "set")], [b.add(200, ("s",), "q")])
    assert got.body["s"] == []


def test_cr22_dictionaries_per_key_lww_and_removal_is_an_update() -> None:
    base = start({"d": {"favoriteToy": "bone"}}, {"d": "dict"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.pop(100, ("d",), "favoriteToy")], [b.put(200, ("d",), "favoriteToy", "ball")])
    assert got.body["d"] == {"favoriteToy": "ball"}
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.pop(200, ("d",), "favoriteToy")], [b.put(100, ("d",), "favoriteToy", "ball")])
    assert got.body["d"] == {}
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.assign(100, ("d",), "dict")], [b.put(200, ("d",), "k", 1)])
    assert got.body["d"] == {}  # a dictionary clear discards concurrent key writes


def test_cr23_counter_increments_add_up() -> None:
    base = start({"count": 10}, {"count": "counter"})
    a, b = Writer("A", base), Writer("B", base)
    assert converge(base, [a.incr(100, ("count",), 1)], [b.incr(100, ("count",), 1)]).body["count"] == 12


def test_cr23_later_assignment_drops_earlier_increments_later_increments_add_on() -> None:
    base = start({"count": 10}, {"count": "counter"})
    a, b = Writer("A", base), Writer("B", base)
    assert converge(base, [a.assign(200, ("count",), "counter", 0)], [b.incr(100, ("count",), 5)]).body["count"] == 0
    a, b = Writer("A", base), Writer("B", base)
    assert converge(base, [a.assign(200, ("count",), "counter", 0)], [b.incr(300, ("count",), 5)]).body["count"] == 5


def test_cr23_null_and_non_counter_values_ignore_increments() -> None:
    base = start({"count": 10}, {"count": "counter"})
    a, b = Writer("A", base), Writer("B", base)
    assert converge(base, [a.assign(100, ("count",), "counter", None)], [b.incr(300, ("count",), 5)]).body["count"] is None
    a, b = Writer("A", base), Writer("B", base)
    assert converge(base, [a.set(100, ("count",), "many")], [b.incr(300, ("count",), 5)]).body["count"] == "many"


def test_cr23_default_assignment_never_beats_increments() -> None:
    a, b = Writer("A"), Writer("B")
    created = a.create(200, {"count": 0}, {"count": "counter"}, defaults=["count"])
    b.receive(created)
    got = converge(None, [created], [b.incr(100, ("count",), 3)])
    assert got.body["count"] == 3


def test_cr24_strings_are_atomic() -> None:
    base = start({"s": "hello"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.set(100, ("s",), "hello world")], [b.set(200, ("s",), "Hello")])
    assert got.body["s"] == "Hello"


# -- embedded objects and nested collections ------------------------------------------------------


def test_cr25_parent_assignment_wins_over_nested_edits() -> None:
    base = start({"details": {"color": "black"}}, {"details": "object"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.set(100, ("details",), None)], [b.set(200, ("details", "color"), "brown")])
    assert got.body["details"] is None


def test_cr25_value_vs_new_embedded_object_is_last_writer_wins() -> None:
    base = start({"details": {"color": "black"}}, {"details": "object"})
    a, b = Writer("A", base), Writer("B", base)
    new_obj = [a.assign(200, ("details",), "object")]
    new_obj.append(a.set(201, ("details", "color"), "white"))
    got = converge(base, new_obj, [b.set(100, ("details",), None)])
    # Device Sync: null wins whatever the timestamps. tidesync: the later write wins.
    assert got.body["details"] == {"color": "white"}


def test_cr26_a_later_whole_assignment_replaces_the_embedded_object() -> None:
    base = start({"addr": {"street": "a", "city": "c"}}, {"addr": "object"})
    a, b = Writer("A", base), Writer("B", base)
    ops_a = [a.assign(100, ("addr",), "object"), a.set(101, ("addr", "street"), "s1"),
             a.set(102, ("addr", "city"), "c1")]
    ops_b = [b.assign(200, ("addr",), "object"), b.set(201, ("addr", "street"), "s2")]
    got = converge(base, ops_a, ops_b)
    # Device Sync: {street: s2, city: c1}, a mix nobody wrote. tidesync: B's object whole.
    assert got.body["addr"] == {"street": "s2"}


def test_cr26_edits_inside_the_same_object_still_merge_per_field() -> None:
    base = start({"addr": {"street": "a", "city": "c"}}, {"addr": "object"})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.set(100, ("addr", "street"), "s1")], [b.set(200, ("addr", "city"), "c2")])
    assert got.body["addr"] == {"street": "s1", "city": "c2"}


def test_cr27_concurrent_new_collections_in_one_field_later_assignment_wins() -> None:
    base = start({"m": None})
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.assign(100, ("m",), "list"), a.append(101, ("m",), "x")],
                   [b.assign(200, ("m",), "list"), b.append(201, ("m",), "y")])
    assert got.body["m"] == ["y"]
    # Of a list and a dictionary, also the later one.
    a, b = Writer("A", base), Writer("B", base)
    got = converge(base, [a.assign(300, ("m",), "dict"), a.put(301, ("m",), "k", 1)],
                   [b.assign(200, ("m",), "list"), b.append(201, ("m",), "y")])
    assert got.body["m"] == {"k": 1}
    # Edits inside one existing nested collection merge with the list rules.
    nested = start({"m": []}, {"m": "list"})
    a, b = Writer("A", nested), Writer("B", nested)
    got = converge(nested, [a.append(100, ("m",), "x")], [b.append(200, ("m",), "y")])
    assert sorted(got.body["m"]) == ["x", "y"]


# -- schema, authority and recovery ---------------------------------------------------------------


def test_cr28_kind_disagreement_between_creates_resolves_deterministically() -> None:
    # Schemas are checked before the merge core; if two creates still disagree on a field's
    # kind, the explicit register beats the container made at creation, in every order.
    a, b = Writer("A"), Writer("B")
    got = converge(None, [a.create(100, {"f": ["x"]}, {"f": "list"})], [b.create(50, {"f": "text"})])
    assert got.body["f"] == "text"


def test_cr29_a_compensating_write_is_a_later_write_that_restores() -> None:
    base = start({"fieldA": 1, "fieldB": 2})
    client = Writer("A", base)
    forbidden = [client.set(100, ("fieldA",), 10), client.set(101, ("fieldB",), 5), client.delete(102)]
    # The server rejects the transaction and answers with writes that restore its state.
    server = Writer("S", base)
    server.receive(*forbidden)
    restore = server.create(200, {"fieldA": 1, "fieldB": 2})
    got = converge(base, forbidden, [restore])
    assert got.live and got.body == {"_id": 1, "fieldA": 1, "fieldB": 2}


def test_cr30_no_client_reset_unsynced_writes_merge_by_the_normal_rules() -> None:
    base = start({"title": "x", "l": ["a"]}, {"l": "list"})
    device, server = Writer("A", base), Writer("B", base)
    got = converge(base, [device.set(100, ("title",), "device"), device.append(101, ("l",), "d")],
                   [server.set(200, ("title",), "server"), server.append(201, ("l",), "s")])
    # Device Sync's recovery lets the device's value win and replaces the list whole; tidesync
    # applies CR-01 (the later write wins) and keeps both list inserts.
    assert got.body["title"] == "server"
    assert got.body["l"] == ["a", "s", "d"]
    device, server = Writer("A", base), Writer("B", base)
    got = converge(base, [device.set(300, ("title",), "device")], [server.delete(200)])
    assert not got.live  # a server-side delete still wins over unsynced edits


def test_cr31_leaving_the_view_is_not_a_delete() -> None:
    base = start({"title": "x"})
    other = Writer("B", base)
    other.set(100, ("title",), "y")
    # The device forgets the document (it left the view): no operation, no tombstone.
    forgotten: DocState = new_state()
    # It comes back into view: the device joins the snapshot and holds the document again.
    back = join(forgotten, other.state)
    assert back.live and canonical_state(back) == canonical_state(other.state)


def test_cr32_convergence_with_empty_and_repeated_transactions() -> None:
    base = start({"l": ["a", "b", "c"]}, {"l": "list"})
    a, b = Writer("A", base), Writer("B", base)
    ops_a = _move(a, 100, ("l",), 0, 2)
    ops_b = _move(b, 110, ("l",), 2, 0)
    got = converge(base, ops_a + ops_a[:1], ops_b)  # duplicates; empty transactions add nothing
    assert got.body["l"] == ["c", "b", "a"]
    again, _ = integrate_all(got.copy(), ops_a + ops_b)
    assert canonical_state(again) == canonical_state(got)


def test_list_element_ids_follow_the_visible_order() -> None:
    base = start({"l": ["a", "b"]}, {"l": "list"})
    w = Writer("A", base)
    w.insert(100, ("l",), 1, "x")
    ids = list_element_ids(w.state, ("l",))
    assert len(ids) == 3 and len(set(ids)) == 3
    s, _ = integrate(w.state.copy(), w.erase(101, ("l",), 0))
    assert list_element_ids(s, ("l",)) == ids[1:]
