"""``read_log`` filtered to a partition: entries of other partitions are skipped, mixed ones
reduced to the partition's documents (the log cache filters a whole read with one query), and
the same read is served to every peer whose own entries it does not hold, until the next write."""

from __future__ import annotations

from tidesync.core.operations import CreateDoc, SetValue
from tidesync.core.transaction import Transaction
from tidesync.store.database import Database

ORIGIN = "a1b2c3d4e5f60718"


def _stamp(i: int) -> str:
    return f"{0x18f000000000 + i:012x}000000{ORIGIN}"


def _create(i: int, key: str, partition: str) -> CreateDoc:
    return CreateDoc("Job", key, _stamp(i), "", {"_id": key, "_partition": partition, "n": i}, {})


def test_entries_are_filtered_to_the_partition_in_one_read(tmp_path):
    server = Database(tmp_path / "server.db", (), partition_key="_partition")
    try:
        txns = [
            Transaction(_stamp(1), ORIGIN, _stamp(1), (), (_create(1, "a", "p1"),)),
            Transaction(_stamp(2), ORIGIN, _stamp(2), (), (_create(2, "b", "p2"),)),
            Transaction(_stamp(3), ORIGIN, _stamp(3), (), (_create(3, "c", "p1"), _create(3, "d", "p2"))),
            Transaction(_stamp(4), ORIGIN, _stamp(4), (), (SetValue("Job", "b", _stamp(4), "", ("n",), (), 9),)),
            Transaction(_stamp(5), ORIGIN, _stamp(5), (), (SetValue("Job", "a", _stamp(5), "", ("n",), (), 7),)),
        ]
        for t in txns:
            server.integrate([t])
        scope = {"partition": {"key": "_partition", "value": "p1"}}
        batches = []
        for peer in (None, None, "f" * 16):  # filtered, then the same read for any other peer
            batch = server.read_log(0, limit=100, max_bytes=1 << 20, scope=scope, exclude_origin=peer)
            batches.append(batch)
            assert batch.scanned_to == batch.head == 5
            assert [seq for seq, _ in batch.entries] == [1, 3, 5]
            assert [[op.key for op in t.ops] for _, t in batch.entries] == [["a"], ["c"], ["a"]]
        other = server.read_log(0, limit=100, max_bytes=1 << 20,
                                scope={"partition": {"key": "_partition", "value": "p2"}}, exclude_origin=None)
        assert [[op.key for op in t.ops] for _, t in other.entries] == [["b"], ["d"], ["b"]]
        assert batches[1] is batches[0] and batches[2] is batches[0]  # read once, served to all
        # The writer's own entries are not sent back to it: not the shared read.
        mine = server.read_log(0, limit=100, max_bytes=1 << 20, scope=scope, exclude_origin=ORIGIN)
        assert mine.entries == () and mine.scanned_to == 5
        # Any write makes the shared reads stale.
        server.integrate([Transaction(_stamp(6), ORIGIN, _stamp(6), (), (_create(6, "e", "p1"),))])
        later = server.read_log(0, limit=100, max_bytes=1 << 20, scope=scope, exclude_origin=None)
        assert [seq for seq, _ in later.entries] == [1, 3, 5, 6]
    finally:
        server.close()


def test_a_read_round_checks_for_other_writers_once(tmp_path):
    """Inside ``read_round`` (the server waking its sessions) the file is checked for other
    connections' writes once, at the start; writes through the replica itself are seen at
    once, and another connection's write is seen by the first read after the round."""
    server = Database(tmp_path / "server.db", (), partition_key="_partition")
    other = Database(tmp_path / "server.db", (), partition_key="_partition")  # e.g. `tidesync revert`
    scope = {"partition": {"key": "_partition", "value": "p1"}}

    def seqs() -> list[int]:
        batch = server.read_log(0, limit=100, max_bytes=1 << 20, scope=scope, exclude_origin=None)
        return [seq for seq, _ in batch.entries]

    try:
        server.integrate([Transaction(_stamp(1), ORIGIN, _stamp(1), (), (_create(1, "a", "p1"),))])
        assert seqs() == [1]
        with server.read_round():
            assert seqs() == [1]
            server.integrate([Transaction(_stamp(2), ORIGIN, _stamp(2), (), (_create(2, "b", "p1"),))])
            assert seqs() == [1, 2]  # its own write: at once
            other.integrate([Transaction(_stamp(3), ORIGIN, _stamp(3), (), (_create(3, "c", "p1"),))])
            assert seqs() == [1, 2]  # another connection's: not looked for again inside the round
        assert seqs() == [1, 2, 3]  # but by the first read after it
        other.integrate([Transaction(_stamp(4), ORIGIN, _stamp(4), (), (_create(4, "d", "p1"),))])
        assert seqs() == [1, 2, 3, 4]  # outside a round: every read checks
        with server.read_round():  # a round opened while another is open changes nothing
            with server.read_round():
                assert seqs() == [1, 2, 3, 4]
            other.integrate([Transaction(_stamp(5), ORIGIN, _stamp(5), (), (_create(5, "e", "p1"),))])
            assert seqs() == [1, 2, 3, 4]
        assert seqs() == [1, 2, 3, 4, 5]
    finally:
        other.close()
        server.close()


def test_a_read_round_on_another_thread_changes_nothing_here(tmp_path):
    import threading

    server = Database(tmp_path / "server.db", (), partition_key="_partition")
    other = Database(tmp_path / "server.db", (), partition_key="_partition")
    scope = {"partition": {"key": "_partition", "value": "p1"}}
    try:
        server.integrate([Transaction(_stamp(1), ORIGIN, _stamp(1), (), (_create(1, "a", "p1"),))])
        inside, done = threading.Event(), threading.Event()

        def hold_round() -> None:
            with server.read_round():
                inside.set()
                done.wait(10)

        t = threading.Thread(target=hold_round)
        t.start()
        try:
            assert inside.wait(10)
            other.integrate([Transaction(_stamp(2), ORIGIN, _stamp(2), (), (_create(2, "b", "p1"),))])
            batch = server.read_log(0, limit=100, max_bytes=1 << 20, scope=scope, exclude_origin=None)
            assert [seq for seq, _ in batch.entries] == [1, 2]
        finally:
            done.set()
            t.join(10)
    finally:
        other.close()
        server.close()


def test_a_read_round_on_a_closed_replica_lets_the_reads_report_it(tmp_path):
    import pytest

    from tidesync.errors import DatabaseClosedError

    server = Database(tmp_path / "server.db", (), partition_key="_partition")
    server.close()
    with server.read_round():
        with pytest.raises(DatabaseClosedError):
            server.read_log(0, limit=10, max_bytes=1 << 20, scope={}, exclude_origin=None)


def test_a_commit_seeds_the_log_cache_and_reads_stay_exact(tmp_path):
    """After an integration (or a local commit) through the replica, the entries it wrote
    and the new head come from the log cache: the read that follows does not read the log
    back, and returns what a fresh replica on the same file reads. Another connection's
    write in between is still seen."""
    server = Database(tmp_path / "server.db", (), partition_key="_partition")
    other: Database | None = None
    seen: list[str] = []
    try:
        scope = {"partition": {"key": "_partition", "value": "p1"}}

        def read(db: Database, after: int = 0) -> list[tuple[int, list[object]]]:
            batch = db.read_log(after, limit=100, max_bytes=1 << 20, scope=scope, exclude_origin=None)
            return [(seq, [op.key for op in t.ops]) for seq, t in batch.entries] + [("head", batch.head)]

        server.integrate([Transaction(_stamp(1), ORIGIN, _stamp(1), (), (_create(1, "a", "p1"),))])
        assert read(server) == [(1, ["a"]), ("head", 1)]  # the cache is current from here
        server._engine._tracer = lambda sql, params: seen.append(sql)
        for i in range(2, 5):
            server.integrate([Transaction(_stamp(i), ORIGIN, _stamp(i), (), (_create(i, f"k{i}", "p1"),))])
            seen.clear()
            got = read(server, i - 1)
            assert not [q for q in seen if "FROM log" in q or "sqlite_sequence" in q or "settings" in q], seen
            assert got == [(i, [f"k{i}"]), ("head", i)]
        server._engine._tracer = None
        fresh = Database(tmp_path / "server.db", (), partition_key="_partition")
        try:
            assert read(fresh) == read(server)
        finally:
            fresh.close()
        # Another connection writes: the next write through the replica cannot vouch for the
        # cache's head, and the read sees both entries.
        other = Database(tmp_path / "server.db", (), partition_key="_partition")
        other.integrate([Transaction(_stamp(5), ORIGIN, _stamp(5), (), (_create(5, "x", "p1"),))])
        server.integrate([Transaction(_stamp(6), ORIGIN, _stamp(6), (), (_create(6, "y", "p1"),))])
        assert read(server, 4) == [(5, ["x"]), (6, ["y"]), ("head", 6)]
    finally:
        if other is not None:
            other.close()
        server.close()
