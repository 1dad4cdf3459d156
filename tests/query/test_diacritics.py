"""RQL's [d] and [cd]: diacritic-insensitive (and case-insensitive) string tests. The device's
SQL (through the tidesync_unaccent function every engine connection has) and the server's
predicate fold alike; the AST, its JSON form and RQL text carry the flag."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from query_harness import SCHEMA, Store

import tidesync
from tidesync.errors import QueryError
from tidesync.query import Compare, Path, StringOp, Value, node_from_json, node_to_json, parse_query, to_mongo, to_rql
from tidesync.query.semantics import fold_diacritics

TITLES = ["Crème Brûlée", "creme brulee", "Łódź", "CREME", "Ærøskøbing", "naïve café", "Straße"]


@pytest.fixture
def store(store: Store) -> Store:
    """The query harness's empty store (conftest.py), filled with this module's documents."""
    store.put_all("Task", [{"_id": i, "title": t} for i, t in enumerate(TITLES)] + [{"_id": 99, "title": 7}])
    return store


@pytest.mark.parametrize("text, expected", [
    ("title ==[d] 'Creme Brulee'", [0]),
    ("title ==[cd] 'CREME BRULEE'", [0, 1]),
    ("title ==[c] 'creme brulee'", [1]),                 # [c] alone keeps the accents
    ("title ==[d] 'Lodz'", [2]),                         # ł and ó
    ("title ==[d] 'Ærøskobing'", [4]),                   # ø has no decomposition: folded to o
    ("title !=[d] 'Lodz'", [0, 1, 3, 4, 5, 6, 99]),
    ("title BEGINSWITH[cd] 'CRE'", [0, 1, 3]),
    ("title ENDSWITH[dc] 'ÉE'", [0, 1]),
    ("title CONTAINS[d] 'ive caf'", [5]),
    ("title LIKE[cd] 'l?dz'", [2]),
    ("title ==[d] 'Strasse'", []),                       # ß is a letter, not a diacritic
    ("title IN {'x'} OR title ==[d] $0", [0]),
])
def test_each_test_folds_diacritics_the_same_way_in_sql_and_python(store: Store, text: str,
                                                                   expected: list[int]) -> None:
    args = ("Crème Brulee",) if "$0" in text else ()
    assert store.both(text, *args, schema=SCHEMA) == expected
    assert store.both(text, *args) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(st.sampled_from("aAeEéÉèçÇñÑøØłß-ǅﬁ*?[ \u0301\u0308"), max_size=6), min_size=1, max_size=5),
       st.text(st.sampled_from("aAeEéÉèçñøł*?[ \u0301"), max_size=3),
       st.sampled_from(["==[d]", "==[cd]", "!=[d]", "BEGINSWITH[d]", "ENDSWITH[cd]", "CONTAINS[d]", "LIKE[cd]"]))
def test_sql_and_predicate_agree_on_random_text(titles: list[str], needle: str, op: str) -> None:
    s = Store()
    try:
        s.put_all("Task", [{"_id": i, "title": t} for i, t in enumerate(titles)])
        s.both(f"title {op} $0", needle, schema=SCHEMA)
    finally:
        s.db.close()


def test_the_flag_travels_in_the_ast_json_and_text() -> None:
    node = parse_query("title BEGINSWITH[cd] 'cre' AND status !=[d] $0", ["é"]).node
    assert node.items[0] == StringOp("beginswith", Path(("title",)), Value("cre"), True, True)
    assert node.items[1] == Compare("!=", Path(("status",)), Value("é"), False, True)
    assert node_from_json(node_to_json(node)) == node
    assert "diacritic_insensitive" not in node_to_json(parse_query("title ==[c] 'x'").node)  # older peers read it
    text, args = to_rql(node)
    assert text == 'title BEGINSWITH[cd] "cre" AND status !=[d] "é"' and not args
    assert parse_query(text).node == node
    assert fold_diacritics("Crème ﬁne Łódź") == "Creme fine Lodz"


@pytest.mark.parametrize("text, says", [
    ("priority >[d] 2", r"\[d\] \(diacritic-insensitive\) only applies to == and !="),
    ("priority ==[d] 2", r"\[d\] \(diacritic-insensitive\) needs a string to compare with"),
    ("title ==[d] status", r"\[d\] \(diacritic-insensitive\) compares a field with a string"),
    ("title ==[x] 'a'", r"unsupported modifier \[x\]"),
])
def test_misplaced_modifiers_are_query_errors(text: str, says: str) -> None:
    with pytest.raises(QueryError, match=says):
        parse_query(text)


def test_the_mongodb_translation_refuses_it() -> None:
    with pytest.raises(QueryError, match=r"\[d\] .* cannot be translated to a MongoDB filter"):
        to_mongo(parse_query("title ==[d] 'a'").node, "Task", SCHEMA)


def test_a_real_file_and_a_flexible_subscription_fold_alike(tmp_path) -> None:
    from tests.models import WorkOrder
    from tidesync.protocol.messages import SubscriptionQuery
    from tidesync.server.flexible import FlexibleConfig, compile_set

    with tidesync.open(tmp_path / "d.db", schema=[WorkOrder]) as db:
        with db.write():
            for title in ("Crème", "creme", "Creme"):
                db.create(WorkOrder, title=title)
        assert sorted(o.title for o in db.objects(WorkOrder).filter("title ==[d] 'Creme'")) == ["Creme", "Crème"]
        assert len(db.objects(WorkOrder).filter("title ==[cd] $0", "CRÉME")) == 3
    (sub,) = compile_set([SubscriptionQuery("q", "WorkOrder", "title ==[d] 'Creme'")],
                         FlexibleConfig(all_fields=True))
    assert sub.predicate({"title": "Crème"}) and not sub.predicate({"title": "creme"})
    assert sub.index is None       # not routed by an exact-value index
