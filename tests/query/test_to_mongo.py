"""to_mongo: AST → MongoDB filter, where MongoDB can say the same thing."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
from query_harness import SCHEMA

from tidesync.core.objectid import ObjectId
from tidesync.errors import QueryError
from tidesync.query import parse_query, to_mongo

WHEN = datetime(2024, 1, 1, tzinfo=timezone.utc)


def mongo(text: str | dict[str, Any], *args: Any, schema: Any = SCHEMA) -> dict[str, Any]:
    return to_mongo(parse_query(text, args), "Task", schema)


@pytest.mark.parametrize(("text", "expected"), [
    ("status == 'open'", {"status": {"$eq": "open"}}),
    ("status == nil", {"status": {"$eq": None}}),
    ("priority > 2", {"priority": {"$gt": 2}}),
    ("priority <= 2", {"priority": {"$lte": 2}}),
    ("status != 'open'", {"status": {"$ne": "open"}}),
    ("priority IN {1, 2}", {"priority": {"$in": [1, 2]}}),
    ("priority BETWEEN {1, 3}", {"priority": {"$gte": 1, "$lte": 3}}),
    ("site.city == 'Oslo'", {"site.city": {"$eq": "Oslo"}}),
    ("tags == 'x'", {"tags": {"$eq": "x"}}),
    ("ANY tags == 'x'", {"tags": {"$eq": "x"}}),
    ("NONE tags == 'x'", {"$nor": [{"tags": {"$eq": "x"}}]}),
    ("tags.@count == 2", {"tags": {"$size": 2}}),
    ("status == 'a' AND priority == 1", {"$and": [{"status": {"$eq": "a"}}, {"priority": {"$eq": 1}}]}),
    ("status == 'a' OR priority == 1", {"$or": [{"status": {"$eq": "a"}}, {"priority": {"$eq": 1}}]}),
    ("NOT status == 'a'", {"$nor": [{"status": {"$eq": "a"}}]}),
    ("TRUEPREDICATE", {}),
    ("FALSEPREDICATE", {"_id": {"$exists": False}}),
    ("title BEGINSWITH 'a.b'", {"title": {"$regex": r"\Aa\.b"}}),
    ("title ENDSWITH[c] 'x'", {"title": {"$regex": r"x\z", "$options": "i"}}),
    ("title CONTAINS '('", {"title": {"$regex": r"\("}}),
    ("title LIKE 'a*b?'", {"title": {"$regex": r"\Aa.*b.\z", "$options": "s"}}),
    ("status ==[c] 'Open'", {"status": {"$regex": r"\AOpen\z", "$options": "i"}}),
    ("tags != 'x'", {"$or": [{"tags": {"$not": {"$type": "array"}, "$ne": "x"}},
                             {"tags": {"$elemMatch": {"$ne": "x"}}}]}),
    ("ALL tags == 'x'", {"$or": [{"tags": {"$type": "array", "$not": {"$elemMatch": {"$not": {"$eq": "x"}}}}},
                                 {"$and": [{"tags": {"$not": {"$type": "array"}}}, {"tags": {"$eq": "x"}}]}]}),
    ("tags.@count > 1", {"$expr": {"$and": [{"$isArray": "$tags"}, {"$gt": [{"$size": "$tags"}, 1]}]}}),
])
def test_translations(text: str, expected: dict[str, Any]) -> None:
    assert mongo(text) == expected


def test_values_go_through_the_encoder() -> None:
    got = mongo("due < $0 AND owner == $1 AND price > $2", WHEN, ObjectId("65f0aa0000000000000000ff"), Decimal("1.5"))
    assert got == {"$and": [{"due": {"$lt": WHEN}}, {"owner": {"$eq": ObjectId("65f0aa0000000000000000ff")}},
                            {"price": {"$gt": Decimal("1.5")}}]}
    tagged = to_mongo(parse_query("due < $0", [WHEN]), encode=lambda plain: ("bson", plain))
    assert tagged == {"due": {"$lt": ("bson", {"$date": 1704067200000000})}}


def test_mongo_filters_round_trip_through_the_ast() -> None:
    flt = {"status": "open", "priority": {"$gte": 2}}
    assert mongo(flt, schema=None) == {"$and": [{"status": {"$eq": "open"}}, {"priority": {"$gte": 2}}]}
    assert mongo({"due": {"$exists": True}}) == {"due": {"$exists": True}}


@pytest.mark.parametrize(("text", "message"), [
    ("technician.name == 'Ann'", "follows a link"),
    ("visits.city != 'Oslo'", "through a list"),
    ("ALL visits.city == 'Oslo'", "through a list"),
    ("ALL tags.@count == 1", "@count"),
])
def test_what_mongodb_cannot_express_is_refused(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        mongo(text)
