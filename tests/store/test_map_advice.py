"""The memory map of a database file: on by default where it can be advised for random access."""

from __future__ import annotations

import os
import time

import pytest

import tidesync
from tests.models import Technician, WorkOrder
from tidesync.store import mapadvice
from tidesync.store.engine import ADVISED_MMAP_SIZE, Engine, default_mmap_size

advisable = pytest.mark.skipif(not mapadvice.available(), reason="needs Linux's /proc and madvise")


def mappings(path) -> list[set[str]]:
    """The VmFlags of each mapping of ``path`` (not its -shm) in this process."""
    ino = os.stat(path).st_ino
    out: list[set[str]] = []
    current = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:
                current = head[4] == str(ino)
            elif current and line.startswith("VmFlags:"):
                out.append(set(head[1:]))
                current = False
    return out


def fill(path, n=3_000):
    with tidesync.open(path, schema=[WorkOrder, Technician]) as d, d.write():
        d.create_many(WorkOrder, [{"title": f"w{i:05d}", "status": "open" if i % 2 else "done",
                                   "priority": i % 7} for i in range(n)])


def test_the_default_map_size_is_the_advised_one_only_where_advice_works():
    assert default_mmap_size() == (ADVISED_MMAP_SIZE if mapadvice.possible() else 0)


def test_a_database_maps_its_file_at_its_first_query_by_default_and_an_explicit_size_wins(tmp_path):
    path = tmp_path / "m.db"
    fill(path, 10)
    with tidesync.open(path, schema=[WorkOrder, Technician]) as d:
        assert d._engine.query("PRAGMA mmap_size") == [(0,)]  # not for opening, nor for get()
        assert d.objects(WorkOrder).first() is not None and d._engine.query("PRAGMA mmap_size") == [(0,)]
        assert [w.title for w in d.objects(WorkOrder).filter("priority == 3")] == ["w00003"]
        expected = ADVISED_MMAP_SIZE if mapadvice.available() else 0
        assert d._engine.query("PRAGMA mmap_size") == [(expected,)]
    with tidesync.open(path, schema=[WorkOrder, Technician], mmap_size=0) as d:
        assert d._engine.query("PRAGMA mmap_size") == [(0,)]
        assert d._engine._advice is None
    with tidesync.open(path, schema=[WorkOrder, Technician], mmap_size=1 << 20) as d:
        assert d._engine.query("PRAGMA mmap_size") == [(1 << 20,)]


@advisable
def test_the_mapping_is_advised_for_random_access_from_the_start(tmp_path):
    path = tmp_path / "m.db"
    fill(path)
    with tidesync.open(path, schema=[WorkOrder, Technician]) as d:
        assert mappings(path) == []  # the map waits for the first query
        assert len(d.objects(WorkOrder).filter("priority == 3")) > 0
        assert mappings(path) == []  # len() is not such a query (it reads no bodies)
        assert d.objects(WorkOrder).filter("priority == 3").first() is not None
        maps = mappings(path)
        assert maps and all("rr" in flags for flags in maps)  # made and advised before its read
        assert [w.title for w in d.objects(WorkOrder).filter("priority == 3")][:1] == ["w00003"]
        assert all("rr" in flags for flags in mappings(path))


@advisable
def test_the_mapping_is_advised_again_after_sqlite_makes_a_new_one(tmp_path):
    path = tmp_path / "m.db"
    fill(path)
    with tidesync.open(path, schema=[WorkOrder, Technician]) as d:
        assert [w.title for w in d.objects(WorkOrder).filter("title == 'w00001'")] == ["w00001"]
        # A whole-collection read runs without the map (mmap_size 0, then back: a new mapping).
        assert len([w.priority for w in d.objects(WorkOrder)]) == 3_000
        assert [w.title for w in d.objects(WorkOrder).filter("title == 'w00010'")] == ["w00010"]
        maps = mappings(path)
        assert maps and all("rr" in flags for flags in maps)
        # Another connection's commit: SQLite drops its mapping at the next read and maps again.
        with tidesync.open(path, schema=[WorkOrder, Technician]) as other, other.write():
            other.objects(WorkOrder).filter("title == 'w00011'").first().status = "held"
        time.sleep(0.01)  # past the 2 ms in which a read trusts its cache without asking the file
        assert [w.status for w in d.objects(WorkOrder).filter("title == 'w00011'")] == ["held"]
        maps = mappings(path)
        assert maps and all("rr" in flags for flags in maps)
        # Writes through this connection that grow the file (checkpointed) keep it advised too.
        with d.write():
            d.create_many(WorkOrder, [{"title": f"x{i:05d}", "status": "open", "priority": 1}
                                      for i in range(3_000)])
        d._engine.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        with d.write():
            d.create(WorkOrder, title="y", status="open", priority=1)
        time.sleep(1.1)  # the engine looks again at most every second when nothing tells it to
        assert [w.title for w in d.objects(WorkOrder).filter("title == 'x02999'")] == ["x02999"]
        assert [w.title for w in d.objects(WorkOrder).filter("title == 'w00012'")] == ["w00012"]
        maps = mappings(path)
        assert maps and all("rr" in flags for flags in maps)


@advisable
def test_an_engine_advises_a_map_it_was_asked_for(tmp_path):
    path = tmp_path / "e.db"
    fill(path)
    with Engine(path, mmap_size=1 << 30) as e:
        assert e.query("SELECT count(*) FROM documents") == [(3_000,)]
        maps = mappings(path)
        assert maps and all("rr" in flags for flags in maps)
    with Engine(path) as e:  # an engine alone maps nothing unless asked
        assert e.query("PRAGMA mmap_size") == [(0,)]
        assert e.query("SELECT count(*) FROM documents") == [(3_000,)]
        assert mappings(path) == []


@advisable
def test_advice_finds_nothing_for_a_file_not_mapped(tmp_path):
    path = tmp_path / "plain.bin"
    path.write_bytes(b"x" * 8192)
    advice = mapadvice.MapAdvice(str(path))
    assert advice.apply() is False and advice.mapped_bytes == 0
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 8192, prot=mmap.PROT_READ) as m:
        assert advice.apply() is True and advice.mapped_bytes == 8192
        assert m[0:1] == b"x"
        assert all("rr" in flags for flags in mappings(path))


@advisable
def test_a_large_result_read_a_page_at_a_time_looks_for_the_mapping_once_after_it(tmp_path, monkeypatch):
    path = tmp_path / "m.db"
    fill(path, 4_500)
    with tidesync.open(path, schema=[WorkOrder, Technician]) as d:
        assert [w.title for w in d.objects(WorkOrder).filter("title == 'w00001'")] == ["w00001"]
        from tidesync.store import engine

        monkeypatch.setattr(engine, "_ADVISE_REFRESH", 1e9)  # no look because a second went by
        looks: list[int] = []
        real = mapadvice.MapAdvice.apply
        monkeypatch.setattr(mapadvice.MapAdvice, "apply", lambda self: looks.append(1) or real(self))
        total = 0
        for w in d.objects(WorkOrder):  # five pages, each read without the map
            total += w.priority
            if w.priority == 6:
                time.sleep(0.0001)  # let the 2 ms data_version checks happen between pages
        assert total == sum(i % 7 for i in range(4_500))
        assert looks == []  # nothing read through the map since the blocks
        assert [w.title for w in d.objects(WorkOrder).filter("title == 'w00010'")] == ["w00010"]
        assert looks == [1]
        assert all("rr" in flags for flags in mappings(path))
