"""core.rules: role choice, document filters, field permissions, partitions (pure, table-driven)."""

from __future__ import annotations

import pytest

from tidesync.core.rules import Role, Rules, UserContext
from tidesync.server.enforcement import query_compiler

RULES = Rules.from_config(
    {
        "Task": {"roles": [
            {"name": "admin", "apply_when": {"%%user.data.role": "admin"}, "read": True, "write": True},
            {"name": "lead", "apply_when": {"%%user.custom_data.lead": True},
             "read": {"team": "%%user.custom_data.team"}, "write": {"team": "%%user.custom_data.team"}},
            {"name": "owner", "apply_when": {},
             "read": {"$or": [{"owner_id": "%%user.id"}, {"shared": True}]},
             "write": {"owner_id": "%%user.id"}, "delete": False,
             "fields": {"salary": {"read": False}, "approved": {"read": True, "write": False}}},
        ]},
        "Note": {"name": "readonly", "read": True, "write": False},
        "Audit": {"roles": [{"name": "admins-only", "apply_when": {"%%user.data.role": "admin"}, "read": True}]},
    },
    None,
    {"read": ["%%user.id", "public", "%%user.custom_data.projects"], "write": "%%user.id"},
)

ANN = UserContext("ann", {"role": "tech"}, {})
BOB = UserContext("bob", {"role": "tech"}, {})
ADMIN = UserContext("root", {"role": "admin"}, {})
LEAD = UserContext("lee", {}, {"lead": True, "team": "red", "projects": ["p1", "p2"]})

MINE = {"_id": 1, "owner_id": "ann", "title": "t", "approved": False}
THEIRS = {"_id": 2, "owner_id": "bob", "title": "t"}


def access(user: UserContext, collection: str = "Task"):
    return RULES.for_user(user, query_compiler).collection(collection)


def test_the_first_matching_role_applies():
    assert access(ADMIN).role_name == "admin"
    assert access(LEAD).role_name == "lead"
    assert access(ANN).role_name == "owner"
    assert access(ANN, "Note").role_name == "readonly"
    assert access(ANN, "Audit").role_name is None          # no role applies: nothing allowed
    assert access(ANN, "Unlisted").role_name is None       # [rules] given, no default_roles


@pytest.mark.parametrize("user, body, readable", [
    (ANN, MINE, True),
    (ANN, THEIRS, False),
    (ANN, {**THEIRS, "shared": True}, True),
    (BOB, MINE, False),
    (ADMIN, THEIRS, True),
    (LEAD, {"_id": 3, "team": "red"}, True),
    (LEAD, {"_id": 3, "team": "blue"}, False),
])
def test_read_filters(user, body, readable):
    assert access(user).can_read(body) is readable


@pytest.mark.parametrize("user, before, after, code", [
    (ANN, None, {**MINE, "approved": None}, None),                     # create own
    (ANN, None, {"_id": 1, "owner_id": "ann"}, None),
    (ANN, None, MINE, "field_write_denied"),         # a field it may not write: absent or null
    (ANN, None, THEIRS, "write_denied"),                               # create for someone else
    (ANN, None, {**MINE, "approved": True}, "field_write_denied"),     # set a read-only field
    (ANN, MINE, {**MINE, "title": "new"}, None),                       # update own
    (ANN, THEIRS, {**THEIRS, "title": "new"}, "write_denied"),         # update another's
    (ANN, MINE, {**MINE, "owner_id": "bob"}, "write_access_lost"),     # give it away
    (ANN, MINE, {**MINE, "approved": True}, "field_write_denied"),
    (ANN, MINE, None, "delete_denied"),                                # delete: false
    (ANN, THEIRS, None, "write_denied"),
    (ADMIN, THEIRS, None, None),
    (ANN, None, None, None),                                           # no effect
    (ANN, {"_id": 5, "x": 1}, {"_id": 5, "x": 1}, "write_denied"),     # no owner: not writable
])
def test_write_decisions(user, before, after, code):
    verdict = access(user).check_write(before, after)
    assert (verdict.code if verdict else None) == code
    if verdict is not None:
        assert verdict.operation == ("create" if before is None else "delete" if after is None else "update")
        assert "role" in verdict.message


def test_readonly_and_no_role_collections():
    assert access(ANN, "Note").can_read({"_id": 1})
    assert access(ANN, "Note").check_write(None, {"_id": 1}).code == "insert_denied"
    assert access(ANN, "Audit").check_write(None, {"_id": 1}).code == "no_role"
    assert not access(ANN, "Audit").can_read({"_id": 1})


def test_field_permissions():
    a = access(ANN)
    assert a.field_readable("_id") and a.field_readable("title") and a.field_readable("approved")
    assert not a.field_readable("salary")
    assert a.readable_fields({"_id": 1, "salary": 9, "title": "t"}) == {"_id": 1, "title": "t"}
    assert not a.field_writable("approved") and a.field_writable("title")
    assert access(ADMIN).field_readable("salary")


@pytest.mark.parametrize("user, partition, read, write", [
    (ANN, "ann", True, True),
    (ANN, "public", True, False),
    (ANN, "bob", False, False),
    (LEAD, "p2", True, False),          # from custom data (a list is flattened)
    (LEAD, "p3", False, False),
    (BOB, 7, False, False),
])
def test_partition_permissions(user, partition, read, write):
    s = RULES.for_user(user, query_compiler)
    assert s.can_read_partition(partition) is read
    assert s.can_write_partition(partition) is write


def test_a_partition_filter_over_the_user():
    rules = Rules.from_config(None, None, {"read": {"%%partition": {"$in": ["a", "%%user.id"]}}, "write": False})
    s = rules.for_user(ANN, query_compiler)
    assert s.can_read_partition("a") and s.can_read_partition("ann") and not s.can_read_partition("b")
    assert not s.can_write_partition("ann")
    assert rules.unrestricted  # only partitions restrict: every collection is open


@pytest.mark.parametrize("hostile", [
    '{"$ne": null}', "ann' OR 1=1 --", '" || true', "$gt", "%%user.id", "ann\\", "{$where: 1}",
])
def test_a_hostile_user_id_is_only_ever_a_literal(hostile):
    user = UserContext(hostile, {"role": "tech"}, {})
    a = access(user)
    assert a.role_name == "owner"
    assert not a.can_read(MINE) and not a.can_read(THEIRS)
    assert a.can_read({"_id": 9, "owner_id": hostile})
    assert a.check_write(None, {"_id": 9, "owner_id": "ann"}).code == "write_denied"
    assert not RULES.for_user(user, query_compiler).can_read_partition("ann")


def test_custom_data_that_looks_like_an_operator_matches_nothing():
    # A map in the user's data would read as an operator: the filter matches nothing instead.
    sneaky = UserContext("x", {}, {"lead": True, "team": {"$ne": None}, "projects": {"$exists": True}})
    a = access(sneaky)
    assert a.role_name == "lead"
    assert not a.can_read({"_id": 1, "team": "red"})
    assert not a.can_read({"_id": 1})
    assert not RULES.for_user(sneaky, query_compiler).can_read_partition("p1")


def test_apply_when_cannot_be_tricked_by_data_keys():
    # "role" holding a list matches by element (MongoDB semantics), an operator map does not.
    assert access(UserContext("a", {"role": ["tech", "admin"]})).role_name == "admin"
    assert access(UserContext("a", {"role": {"$ne": "nobody"}})).role_name == "owner"


@pytest.mark.parametrize("table, message", [
    ({"Task": {"read": "yes"}}, "rules.Task.read must be true, false or a document filter"),
    ({"Task": {"roles": [{"name": "a", "raed": True}]}}, "unknown key"),
    ({"Task": {"roles": [{"name": "a"}, {"name": "a"}]}}, "unique"),
    ({"Task": {"fields": {"x": {"read": "no"}}}}, "read must be true or false"),
    ({"Task": {"read": {"owner": "%%usr.id"}}}, "unknown placeholder"),
    ({"Task": {"read": {"owner": {"$regex": "a"}}}}, "not valid"),
])
def test_malformed_rules_are_refused_with_a_pointer(table, message):
    with pytest.raises(ValueError, match=message):
        Rules.from_config(table).check(query_compiler)


def test_write_implies_read():
    role = Role("w", read=False, write={"owner_id": "%%user.id"})
    rules = Rules({"T": (role,)})
    a = rules.for_user(ANN, query_compiler).collection("T")
    assert a.can_read({"owner_id": "ann"}) and not a.can_read({"owner_id": "bob"})
    assert Role.from_config({"fields": {"f": {"write": True}}}, "r").fields["f"].read
