"""Two models of one name in one process (two modules of an app, two test modules): a model's
link and embedded fields reach the class its annotations name, as Python resolves the name in
its module, and one database refuses two different classes of one name, since a model's name
is its collection."""

from __future__ import annotations

import pytest

import tidesync
from tests.store.test_backlinks import _module
from tidesync.core.models import model_registry

_TECH = ("class NmTech(tidesync.Model):\n"
         "    _id: str = tidesync.field(primary_key=True)\n"
         "    {field}\n"
         "class NmAddress(tidesync.EmbeddedModel):\n"
         "    {address}\n")


def _modules(future: bool) -> tuple[object, object]:
    head = "from __future__ import annotations\n" if future else ""
    mine = _module(f"names_mine_{future}", head + "import tidesync\n" + _TECH.format(
        field="name: str = ''", address="city: str = ''") + (
        "class NmOrder(tidesync.Model):\n"
        "    _id: str = tidesync.field(primary_key=True)\n"
        "    tech: NmTech | None = None\n"
        "    crew: list[NmTech] = tidesync.field(default_factory=list)\n"
        "    site: NmAddress | None = None\n"))
    # Declared after: the registry's entry for each name is now this module's class.
    other = _module(f"names_other_{future}", head + "import tidesync\n" + _TECH.format(
        field="level: int = 0", address="zip: int = 0"))
    return mine, other


@pytest.mark.parametrize("future", [True, False], ids=["string annotations", "class annotations"])
def test_links_and_embedded_objects_reach_the_class_their_module_names(tmp_path, future):
    mine, other = _modules(future)
    assert model_registry()["NmTech"] is other.NmTech  # type: ignore[attr-defined]
    with tidesync.open(tmp_path / "n.db", schema=[mine.NmOrder]) as db:  # type: ignore[attr-defined]
        assert db._models["NmTech"] is mine.NmTech  # type: ignore[attr-defined]
        with db.write():
            ann = db.create(mine.NmTech, _id="ann", name="Ann")  # type: ignore[attr-defined]
            db.create(mine.NmOrder, _id="o1", tech=ann, crew=[ann],  # type: ignore[attr-defined]
                      site=mine.NmAddress(city="Oslo"))  # type: ignore[attr-defined]
        order = db.get(mine.NmOrder, "o1")  # type: ignore[attr-defined]
        assert type(order.tech) is mine.NmTech and order.tech.name == "Ann"  # type: ignore[attr-defined]
        assert [type(t) for t in order.crew] == [mine.NmTech]  # type: ignore[attr-defined]
        assert order.site.city == "Oslo"
        with pytest.raises(tidesync.ValidationError, match="NmOrder.tech"):
            with db.write():
                db.get(mine.NmOrder, "o1").tech = "ann"  # type: ignore[attr-defined]


def test_one_database_refuses_two_classes_of_one_name(tmp_path):
    mine, other = _modules(True)
    with pytest.raises(tidesync.SchemaError, match=r"two models are named NmTech .*reached from NmOrder") as info:
        tidesync.open(tmp_path / "two.db", schema=[mine.NmOrder, other.NmTech])  # type: ignore[attr-defined]
    assert "names_mine_True.NmTech" in str(info.value) and "names_other_True.NmTech" in str(info.value)
    assert not (tmp_path / "two.db").exists()
