"""The SQLite door: settings, atomic(), tracing, error translation, concurrency. Real files only."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tidesync.errors import DatabaseClosedError, StorageError, UsageError
from tidesync.store.engine import BUSY_TIMEOUT, CACHE_SIZE_KIB, DEFAULT_MMAP_SIZE, Engine


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "local.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    e = Engine(db_path)
    e.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    yield e
    e.close()


def names(engine: Engine) -> list[str]:
    return [row[0] for row in engine.query("SELECT name FROM items ORDER BY id")]


# -- settings ----------------------------------------------------------------------------------


def test_pragmas_favour_durability_and_concurrency(engine: Engine) -> None:
    assert engine.query("PRAGMA journal_mode") == [("wal",)]
    assert engine.query("PRAGMA synchronous") == [(2,)]  # FULL: a commit is durable on return
    assert engine.query("PRAGMA foreign_keys") == [(1,)]
    assert engine.query("PRAGMA busy_timeout") == [(int(BUSY_TIMEOUT * 1000),)]
    assert engine.query("PRAGMA temp_store") == [(2,)]  # MEMORY
    assert engine.query("PRAGMA cache_size") == [(-CACHE_SIZE_KIB,)]


def test_a_plain_file_is_read_through_a_memory_map_only_when_asked(engine: Engine, db_path: Path) -> None:
    assert engine.mmap_size == DEFAULT_MMAP_SIZE == 0
    assert engine.query("PRAGMA mmap_size") == [(0,)]
    mapped = Engine(db_path, mmap_size=1 << 20)
    try:
        assert mapped.mmap_size == 1 << 20
        assert mapped.query("PRAGMA mmap_size") == [(1 << 20,)]
        assert mapped.query("SELECT count(*) FROM items") == [(0,)]
    finally:
        mapped.close()


@pytest.mark.parametrize("bad", [-1, 1.5, "1024", True])
def test_mmap_size_must_be_a_whole_number_of_bytes(db_path: Path, bad: Any) -> None:
    with pytest.raises(UsageError, match="mmap_size"):
        Engine(db_path, mmap_size=bad)
    assert not db_path.exists()  # refused before anything was opened


def test_unmapped_turns_the_map_off_for_its_block_and_nests(engine: Engine, db_path: Path) -> None:
    engine.execute("INSERT INTO items (name) VALUES ('a')")
    with engine.unmapped():  # no map to turn off: nothing to do
        assert names(engine) == ["a"]
    assert engine.query("PRAGMA mmap_size") == [(0,)]
    with Engine(db_path, mmap_size=1 << 30) as mapped:
        with mapped.unmapped():
            assert mapped.query("PRAGMA mmap_size") == [(0,)]
            with mapped.unmapped():
                assert names(mapped) == ["a"]
            assert mapped.query("PRAGMA mmap_size") == [(0,)]
        assert mapped.query("PRAGMA mmap_size") == [(1 << 30,)]
        with pytest.raises(RuntimeError), mapped.unmapped():
            raise RuntimeError("boom")
        assert mapped.query("PRAGMA mmap_size") == [(1 << 30,)]


def test_connection_is_in_autocommit_mode_so_only_atomic_opens_transactions(engine: Engine) -> None:
    assert engine.connection.isolation_level is None
    engine.execute("INSERT INTO items (name) VALUES ('a')")
    assert not engine.in_transaction()


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    engine.execute("CREATE TABLE tags (item INTEGER NOT NULL REFERENCES items(id))")
    with pytest.raises(StorageError) as info:
        engine.execute("INSERT INTO tags VALUES (42)")
    assert info.value.code == "constraint"


# -- atomic ------------------------------------------------------------------------------------


def test_atomic_commits_on_exit(engine: Engine, db_path: Path) -> None:
    with engine.atomic():
        assert engine.in_transaction()
        engine.execute("INSERT INTO items (name) VALUES ('a')")
    assert not engine.in_transaction()
    with Engine(db_path) as other:
        assert names(other) == ["a"]


def test_atomic_rolls_back_and_reraises(engine: Engine) -> None:
    with pytest.raises(ValueError, match="boom"):
        with engine.atomic():
            engine.execute("INSERT INTO items (name) VALUES ('a')")
            raise ValueError("boom")
    assert names(engine) == []
    assert not engine.in_transaction()


def test_nested_atomic_is_a_savepoint_that_can_fail_alone(engine: Engine) -> None:
    with engine.atomic():
        engine.execute("INSERT INTO items (name) VALUES ('outer')")
        with pytest.raises(KeyError):
            with engine.atomic():
                engine.execute("INSERT INTO items (name) VALUES ('inner')")
                raise KeyError("inner fails")
        with engine.atomic():
            engine.execute("INSERT INTO items (name) VALUES ('second inner')")
        assert engine.in_transaction()
    assert names(engine) == ["outer", "second inner"]


def test_failure_escaping_nested_blocks_undoes_everything(engine: Engine) -> None:
    with pytest.raises(RuntimeError):
        with engine.atomic():
            engine.execute("INSERT INTO items (name) VALUES ('outer')")
            with engine.atomic():
                with engine.atomic():
                    engine.execute("INSERT INTO items (name) VALUES ('deep')")
                    raise RuntimeError
    assert names(engine) == []


def test_atomic_statements_are_begin_immediate_and_savepoints(db_path: Path) -> None:
    seen: list[str] = []
    with Engine(db_path, tracer=lambda sql, params: seen.append(sql)) as e:
        seen.clear()
        with e.atomic():
            with e.atomic():
                pass
        with e.atomic(immediate=False):
            pass
    assert seen == ["BEGIN IMMEDIATE", "SAVEPOINT tidesync_sp1", "RELEASE tidesync_sp1", "COMMIT",
                    "BEGIN DEFERRED", "COMMIT"]


def test_error_that_sqlite_already_rolled_back_is_not_hidden(engine: Engine) -> None:
    # If SQLite ends the transaction by itself (disk full, I/O error), atomic() must not try a
    # second ROLLBACK whose "no transaction is active" error would replace the real one.
    with pytest.raises(ZeroDivisionError):
        with engine.atomic():
            engine.execute("INSERT INTO items (name) VALUES ('a')")
            engine.execute("ROLLBACK")
            raise ZeroDivisionError
    assert names(engine) == []
    assert not engine.in_transaction()


# -- tracer ------------------------------------------------------------------------------------


def test_tracer_sees_every_statement_with_its_parameters(db_path: Path) -> None:
    seen: list[tuple[str, Sequence[Any] | None]] = []
    with Engine(db_path, tracer=lambda sql, params: seen.append((sql, params))) as e:
        opening = [sql for sql, _ in seen]
        assert opening[0] == "SELECT count(*) FROM sqlite_master"
        assert "PRAGMA journal_mode = WAL" in opening and "PRAGMA synchronous = FULL" in opening
        seen.clear()
        e.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        with e.atomic():
            e.executemany("INSERT INTO items (name) VALUES (?)", (("a",), ("b",)))
        e.query("SELECT name FROM items WHERE name = ?", ["b"])
        e.data_version()
    assert seen == [
        ("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)", ()),
        ("BEGIN IMMEDIATE", None),
        ("INSERT INTO items (name) VALUES (?)", ("a",)),
        ("INSERT INTO items (name) VALUES (?)", ("b",)),
        ("COMMIT", None),
        ("SELECT name FROM items WHERE name = ?", ["b"]),
        ("PRAGMA data_version", ()),
    ]


def test_tracer_sees_a_statement_that_fails(db_path: Path) -> None:
    seen: list[str] = []
    with Engine(db_path, tracer=lambda sql, params: seen.append(sql)) as e:
        with pytest.raises(StorageError):
            e.execute("SELEC 1")
    assert seen[-1] == "SELEC 1"


# -- error translation -------------------------------------------------------------------------


def test_syntax_error_becomes_storage_error_chained_from_sqlite(engine: Engine) -> None:
    with pytest.raises(StorageError) as info:
        engine.execute("SELEC name FROM items")
    assert type(info.value) is StorageError
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert "syntax error" in str(info.value) and "SELEC name FROM items" in str(info.value)


def test_errors_never_show_parameters(engine: Engine) -> None:
    with pytest.raises(StorageError) as info:
        engine.execute("INSERT INTO items (id, name) VALUES (?, ?)", (1, None))
    assert info.value.code == "constraint"
    with pytest.raises(StorageError) as info:
        engine.execute("INSERT INTO items (name) VALUES (?)", ("secret value", "extra"))
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert "secret value" not in str(info.value)


def test_two_statements_in_one_call_are_refused_as_storage_error(engine: Engine) -> None:
    with pytest.raises(StorageError) as info:
        engine.execute("SELECT 1; SELECT 2")
    assert isinstance(info.value.__cause__, (sqlite3.Warning, sqlite3.ProgrammingError))


def test_an_error_while_fetching_later_rows_is_translated(engine: Engine) -> None:
    engine.executemany("INSERT INTO items (name) VALUES (?)", [("a",), ("b",)])
    # abs() of the smallest integer overflows, on the second row only: after execute() returned.
    cursor = engine.execute(
        "SELECT CASE id WHEN 2 THEN abs(-9223372036854775808) ELSE id END FROM items ORDER BY id")
    with pytest.raises(StorageError) as info:
        cursor.fetchall()
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_cursor_gives_rows_rowcount_and_lastrowid(engine: Engine) -> None:
    cursor = engine.execute("INSERT INTO items (name) VALUES ('a')")
    assert cursor.lastrowid == 1 and cursor.rowcount == 1
    engine.execute("INSERT INTO items (name) VALUES ('b')")
    assert list(engine.execute("SELECT id, name FROM items ORDER BY id")) == [(1, "a"), (2, "b")]
    cursor = engine.execute("SELECT name FROM items ORDER BY id")
    assert cursor.description[0][0] == "name"
    assert cursor.fetchone() == ("a",)
    assert cursor.fetchmany(5) == [("b",)]
    assert cursor.fetchone() is None


def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        Engine(tmp_path / "no such folder" / "local.db")
    assert info.value.code == "cant_open"


def test_readonly_engine_reads_and_refuses_writes(engine: Engine, db_path: Path) -> None:
    engine.execute("INSERT INTO items (name) VALUES ('a')")
    with Engine(db_path, readonly=True) as reader:
        assert names(reader) == ["a"]
        with pytest.raises(StorageError) as info:
            reader.execute("INSERT INTO items (name) VALUES ('b')")
        assert info.value.code == "readonly"


def test_readonly_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        Engine(tmp_path / "missing.db", readonly=True)
    assert info.value.code == "cant_open"
    assert not (tmp_path / "missing.db").exists()


def test_closed_engine_refuses_work_and_closes_twice(engine: Engine) -> None:
    engine.close()
    engine.close()
    assert engine.closed
    with pytest.raises(DatabaseClosedError):
        engine.query("SELECT 1")
    with pytest.raises(DatabaseClosedError):
        with engine.atomic():
            pass


def test_engine_belongs_to_the_thread_that_opened_it(engine: Engine) -> None:
    errors: list[BaseException] = []

    def use() -> None:
        try:
            engine.query("SELECT 1")
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            errors.append(exc)

    worker = threading.Thread(target=use)
    worker.start()
    worker.join()
    assert len(errors) == 1 and isinstance(errors[0], UsageError)


def test_quote_identifier_round_trips_awkward_names(engine: Engine) -> None:
    q = Engine.quote_identifier
    assert q('we"ird') == '"we""ird"'
    table, column = q('my "table"; DROP TABLE items'), q("select")
    engine.execute(f"CREATE TABLE {table} ({column} TEXT)")
    engine.execute(f"INSERT INTO {table} ({column}) VALUES ('ok')")
    assert engine.query(f"SELECT {column} FROM {table}") == [("ok",)]
    assert engine.query("SELECT count(*) FROM items") == [(0,)]
    with pytest.raises(UsageError):
        q("a\x00b")


# -- several connections -----------------------------------------------------------------------


def test_data_version_changes_only_when_another_connection_commits(engine: Engine, db_path: Path) -> None:
    before = engine.data_version()
    engine.execute("INSERT INTO items (name) VALUES ('mine')")
    assert engine.data_version() == before
    with Engine(db_path) as other:
        other.execute("INSERT INTO items (name) VALUES ('theirs')")
    after = engine.data_version()
    assert after != before
    assert engine.data_version() == after


def test_data_version_sees_a_commit_from_another_thread(engine: Engine, db_path: Path) -> None:
    before = engine.data_version()

    def write() -> None:
        with Engine(db_path) as other, other.atomic():
            other.execute("INSERT INTO items (name) VALUES ('from thread')")

    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert engine.data_version() != before
    assert names(engine) == ["from thread"]


def _increment(path: Path, times: int) -> None:
    """Read-modify-write a counter; loses updates unless writers serialize."""
    with Engine(path) as e:
        for _ in range(times):
            with e.atomic():
                (value,) = e.query("SELECT value FROM counter")[0]
                e.execute("UPDATE counter SET value = ?", (value + 1,))


def test_writers_in_two_threads_serialize(db_path: Path) -> None:
    with Engine(db_path) as setup:
        setup.execute("CREATE TABLE counter (value INTEGER NOT NULL)")
        setup.execute("INSERT INTO counter VALUES (0)")
    start = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            _increment(db_path, 200)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Engine(db_path) as check:
        assert check.query("SELECT value FROM counter") == [(400,)]


def test_writers_in_two_processes_serialize(db_path: Path) -> None:
    with Engine(db_path) as setup:
        setup.execute("CREATE TABLE counter (value INTEGER NOT NULL)")
        setup.execute("INSERT INTO counter VALUES (0)")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tests.store.test_engine import _increment\n"
        "_increment(Path(sys.argv[1]), int(sys.argv[2]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(db_path), "100"], cwd=root)
             for _ in range(2)]
    _increment(db_path, 100)
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    with Engine(db_path) as check:
        assert check.query("SELECT value FROM counter") == [(300,)]


def test_writer_that_waits_past_the_busy_timeout_gets_a_busy_error(engine: Engine, db_path: Path) -> None:
    with Engine(db_path) as impatient:
        impatient.execute("PRAGMA busy_timeout = 0")
        with engine.atomic():
            engine.execute("INSERT INTO items (name) VALUES ('held')")
            with pytest.raises(StorageError) as info:
                with impatient.atomic():
                    pass
        assert info.value.code == "busy"
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert not impatient.in_transaction()
        with impatient.atomic():  # the lock is free again
            impatient.execute("INSERT INTO items (name) VALUES ('after')")
    assert names(engine) == ["held", "after"]


def test_an_sqlite_older_than_3_38_is_refused_with_a_clear_error(tmp_path, monkeypatch):
    import sqlite3

    import tidesync
    from tidesync.errors import StorageError

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 37, 2))
    with pytest.raises(StorageError, match=r"needs SQLite 3\.38\.0 or later.*uses SQLite 3\.37\.2"):
        tidesync.open(tmp_path / "old.db")
    assert not (tmp_path / "old.db").exists()  # nothing created


def test_commit_seconds_is_a_moving_average_of_the_commits(tmp_path):
    with Engine(tmp_path / "x.db") as engine:
        engine.execute("CREATE TABLE IF NOT EXISTS t (a)")
        assert engine.commit_seconds == float("inf")  # no commit through atomic() yet
        with engine.atomic():
            engine.execute("INSERT INTO t VALUES (1)")
        first = engine.commit_seconds
        assert 0 < first < 60
        with engine.atomic():
            with engine.atomic():  # a savepoint: not a commit
                engine.execute("INSERT INTO t VALUES (2)")
        assert engine.commit_seconds != first and 0 < engine.commit_seconds < 60


def test_atomic_without_wait_refuses_at_once_while_another_connection_holds_the_write_lock(
        engine: Engine, db_path: Path) -> None:
    import time

    from tidesync.store.engine import WriteLockBusy

    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        for _ in range(3):  # (again: SQLite applies a PRAGMA when it prepares it, the cached one too)
            begun = time.monotonic()
            with pytest.raises(WriteLockBusy) as caught:
                with engine.atomic(wait=False):
                    engine.execute("INSERT INTO items (name) VALUES ('never')")
            assert time.monotonic() - begun < 1.0
        assert caught.value.code == "busy" and isinstance(caught.value, StorageError)
        assert not engine.in_transaction()
        # The busy timeout is back for everything else.
        assert engine.query("PRAGMA busy_timeout") == [(int(BUSY_TIMEOUT * 1000),)]
    finally:
        other.execute("ROLLBACK")
        other.close()
    with engine.atomic(wait=False):
        engine.execute("INSERT INTO items (name) VALUES ('now')")
    assert names(engine) == ["now"]
    assert engine.query("PRAGMA busy_timeout") == [(int(BUSY_TIMEOUT * 1000),)]
