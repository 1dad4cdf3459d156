"""The one door to SQLite: a connection, its settings, transactions, tracing and error translation.

Rules of this module (the rest of ``tidesync.store`` relies on them):

* Every statement goes through :meth:`Engine.execute`, :meth:`Engine.executemany` or
  :meth:`Engine.query`, so the tracer sees all SQL and no ``sqlite3``/``sqlcipher3`` exception
  escapes: each becomes a :class:`~tidesync.errors.StorageError` (or a subclass), chained with
  ``from``. Rows fetched later from a returned :class:`Cursor` are translated the same way.
* Transactions are only opened by :meth:`Engine.atomic`: ``BEGIN IMMEDIATE`` at the outermost
  level, ``SAVEPOINT`` when nested. The connection runs with ``isolation_level=None``, so the
  driver never opens or commits a transaction behind our back.
* One Engine per thread. The driver's same-thread check stays on; using an Engine from another
  thread raises :class:`~tidesync.errors.UsageError`. Threads and processes that write the same
  file serialize on SQLite's write lock, waiting up to :data:`BUSY_TIMEOUT` seconds.

Durability: the file runs in WAL mode with ``synchronous=FULL`` (and ``fullfsync`` where the OS
has it), so a transaction is on stable storage when ``COMMIT`` (and so ``atomic()``) returns.
``synchronous=NORMAL``, the usual WAL pairing, can lose the last commits on power loss, which
would break "nothing acknowledged is lost". (A sync session's download is the one exception:
:meth:`Engine.unsynced` then :meth:`Engine.sync_wal` before it is acknowledged; docs/sync.md,
"Durability of downloads". ``synchronous`` returns to FULL before the next statement outside
such a block and outside a transaction, so before any other commit.)

Encryption: with ``encryption_key`` the file is opened with SQLCipher; the 64-byte key is turned
into SQLCipher's 32-byte raw key with HKDF-SHA256 (:func:`derive_sqlcipher_key`). See
``docs/encryption.md`` for the reasons and for what is and is not encrypted.
"""

from __future__ import annotations

import hmac
import importlib
import math
import os
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, cast

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from . import mapadvice
from ..errors import (
    CorruptFileError,
    DatabaseClosedError,
    EncryptionError,
    MissingExtraError,
    StorageError,
    TidesyncError,
    UsageError,
    ValidationError,
)
from ..core.values import NOT_TEXT_ADVICE
from ..query.to_sql import SQL_FUNCTIONS

#: The oldest SQLite tidesync runs on: the ``->`` and ``->>`` JSON operators arrived in 3.38.
MIN_SQLITE = (3, 38, 0)

__all__ = [
    "MIN_SQLITE",
    "BUSY_TIMEOUT",
    "AUTOCHECKPOINT_PAGES",
    "CACHE_SIZE_KIB",
    "DEFAULT_MMAP_SIZE",
    "KEY_SIZE",
    "Cursor",
    "Engine",
    "WriteLockBusy",
    "remove_file_set",
    "Params",
    "Row",
    "Tracer",
    "derive_sqlcipher_key",
]

Params = Sequence[Any]
"""Positional parameters for ``?`` placeholders."""

Row = tuple[Any, ...]

Tracer = Callable[[str, Params | None], None]
"""Called with ``(sql, params)`` before each statement runs; ``params`` is None for statements
the engine issues itself (pragmas, BEGIN/COMMIT/SAVEPOINT)."""

KEY_SIZE = 64
"""Length in bytes of an encryption key (the same as Realm's)."""

BUSY_TIMEOUT = 10.0
"""Seconds a statement waits for another connection's write lock before failing."""

AUTOCHECKPOINT_PAGES = 1000
"""SQLite's automatic WAL checkpoint threshold (its default), in WAL pages: what a connection
has again after ``Engine.unsynced(checkpoint=False)``."""

CACHE_SIZE_KIB = 8192
"""Page cache per connection, in KiB (SQLite's default is 2 MiB)."""

DEFAULT_MMAP_SIZE = 0
"""Bytes of a plain (unencrypted) file an :class:`Engine` reads through a memory map (SQLite's
``mmap_size``) unless the caller asks otherwise: none. A database (``tidesync.open``) asks for
:func:`default_mmap_size`; see docs/architecture.md, "Reading through a memory map"."""

ADVISED_MMAP_SIZE = 1 << 30
"""Bytes mapped by default where the map can be advised for random access (Linux)."""

_ADVISE_RETRY = 0.02
"""Seconds between two looks for a mapping SQLite has not made yet (see Engine._prime_map)."""

_STEP_ROUND = 10_000
"""SQLite virtual-machine steps between two looks at a :meth:`Engine.query_within` budget."""

_ADVISE_REFRESH = 1.0
"""Seconds after which :meth:`Engine.data_version` advises the mapping again in any case."""


def default_mmap_size() -> int:
    """The ``mmap_size`` a database uses when the caller gives none: :data:`ADVISED_MMAP_SIZE`
    where the engine can advise SQLite's mapping for random access (Linux, 64-bit), else 0.

    Without that advice a page fault on a file the OS does not hold reads ahead by the device's
    ``read_ahead_kb`` (megabytes for one 4 KiB page), which a map of a cold file cannot afford.
    """
    return ADVISED_MMAP_SIZE if sys.maxsize > 2 ** 32 and mapadvice.possible() else 0

_HKDF_INFO = b"tidesync/sqlcipher-raw-key/v1"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_REDACTED_KEY_PRAGMA = "PRAGMA key = <redacted>"

# Primary SQLite result codes (the low byte of the extended code the driver reports).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_INTERRUPT = 9
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_TOOBIG = 18
_SQLITE_CONSTRAINT = 19
_SQLITE_NOTADB = 26

# result code -> (error class, tidesync code, advice); unlisted codes become a plain StorageError.
_ERROR_TABLE: dict[int, tuple[type[StorageError], str | None, str | None]] = {
    _SQLITE_BUSY: (StorageError, "busy",
                   "another connection held the write lock too long; retry, and keep write transactions short"),
    _SQLITE_LOCKED: (StorageError, "locked",
                     "a statement on this connection still uses the table; finish reading its rows first"),
    _SQLITE_READONLY: (StorageError, "readonly",
                       "the database was opened read-only, or the file or its folder is not writable"),
    _SQLITE_INTERRUPT: (StorageError, "interrupted", None),
    _SQLITE_IOERR: (StorageError, "io", "check the disk and the file's permissions"),
    _SQLITE_CORRUPT: (CorruptFileError, None, "restore the file from a backup or sync it again from the server"),
    _SQLITE_FULL: (StorageError, "disk_full", "free some disk space and retry"),
    _SQLITE_CANTOPEN: (StorageError, "cant_open", "check that the path exists and its folder is writable"),
    _SQLITE_TOOBIG: (StorageError, "too_big", None),
    _SQLITE_CONSTRAINT: (StorageError, "constraint", None),
    _SQLITE_NOTADB: (CorruptFileError, None, "restore the file from a backup or sync it again from the server"),
}


class WriteLockBusy(StorageError):
    """``Engine.atomic(wait=False)``: another connection (another process) holds the file's write
    lock right now. Nothing was begun or written: try again, or call without ``wait=False`` to
    wait for the lock (up to :data:`BUSY_TIMEOUT`)."""

    code = "busy"


def remove_file_set(path: str | os.PathLike[str]) -> None:
    """Remove a database file and its ``-wal``, ``-shm`` and ``-journal`` sidecars, those that
    exist (a partly written copy, see :meth:`Engine.write_copy`)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(os.fspath(path) + suffix)
        except OSError:
            pass


def derive_sqlcipher_key(key: bytes) -> bytes:
    """Turn a 64-byte tidesync key into the 32-byte raw key SQLCipher encrypts with.

    HKDF-SHA256 (RFC 5869) with an empty salt and a fixed ``info`` label. To open a tidesync
    file with the ``sqlcipher`` shell: ``PRAGMA key = "x'<derive_sqlcipher_key(key).hex()>'";``
    then ``PRAGMA cipher_compatibility = 4;``.

    Raises:
        UsageError: ``key`` is not exactly :data:`KEY_SIZE` bytes.
    """
    if not isinstance(key, (bytes, bytearray)):
        raise UsageError(f"encryption_key must be {KEY_SIZE} bytes, not {type(key).__name__}",
                         advice=f"pass {KEY_SIZE} random bytes, e.g. secrets.token_bytes({KEY_SIZE})")
    if len(key) != KEY_SIZE:
        raise UsageError(f"encryption_key must be exactly {KEY_SIZE} bytes, got {len(key)}",
                         advice=f"pass {KEY_SIZE} random bytes, e.g. secrets.token_bytes({KEY_SIZE})")
    return _hkdf_sha256(bytes(key), salt=b"", info=_HKDF_INFO, length=32)


def _hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 extract-then-expand (RFC 5869); the stdlib has HMAC but no HKDF."""
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        okm += block
    return okm[:length]


def _load_sqlcipher() -> ModuleType:
    try:
        return importlib.import_module("sqlcipher3.dbapi2")
    except ImportError as exc:
        raise MissingExtraError(
            "an encryption_key needs SQLCipher, and the sqlcipher3 package is not installed",
            advice="pip install tidesync[encryption]",
        ) from exc


class Cursor:
    """The result of :meth:`Engine.execute`; fetching translates driver errors like execute does."""

    __slots__ = ("_cursor", "_engine", "_sql")

    def __init__(self, cursor: sqlite3.Cursor, engine: Engine, sql: str) -> None:
        self._cursor = cursor
        self._engine = engine
        self._sql = sql

    @property
    def lastrowid(self) -> int | None:
        """Rowid of the last row inserted by this cursor."""
        return self._cursor.lastrowid

    @property
    def rowcount(self) -> int:
        """Rows changed by an INSERT/UPDATE/DELETE (-1 for other statements)."""
        return self._cursor.rowcount

    @property
    def description(self) -> Any:
        """Column names of a SELECT, as in DB-API (the first item of each 7-tuple)."""
        return self._cursor.description

    def fetchone(self) -> Row | None:
        with self._engine._translated(self._sql):
            return cast("Row | None", self._cursor.fetchone())

    def fetchmany(self, size: int | None = None) -> list[Row]:
        with self._engine._translated(self._sql):
            rows = self._cursor.fetchmany() if size is None else self._cursor.fetchmany(size)
            return cast("list[Row]", rows)

    def fetchall(self) -> list[Row]:
        with self._engine._translated(self._sql):
            return cast("list[Row]", self._cursor.fetchall())

    def __iter__(self) -> Iterator[Row]:
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        with self._engine._translated(self._sql):
            self._cursor.close()


class Engine:
    """One SQLite (or SQLCipher) connection with tidesync's settings.

    By default it belongs to the thread that opened it. With ``check_same_thread=False`` any
    thread may use it, and the caller must serialize that use with a lock of its own (the
    :class:`~tidesync.store.database.Database` does).

    Args:
        path: the database file; created if missing (unless ``readonly``).
        encryption_key: 64 bytes to open or create an encrypted file (needs
            ``tidesync[encryption]``); None for a plain file.
        readonly: open the file read-only (it must exist).
        tracer: called as ``tracer(sql, params)`` before every statement, including the
            engine's own pragmas and transaction statements (the key is never shown).
        check_same_thread: False lets other threads use the connection (serialize them yourself).
        mmap_size: read up to this many bytes of the file through a memory map instead of
            ``read()`` calls (None: :data:`DEFAULT_MMAP_SIZE`, no map). Encrypted files are
            never mapped (SQLCipher must decrypt every page). Where it can (Linux), the engine
            advises the map for random access (see :mod:`tidesync.store.mapadvice`).
        defer_map: read without the map until :meth:`map_file` is called, and map only where
            the map can be advised (a database defers its default map to its first query).

    Raises:
        UsageError: the key is not 64 bytes, or ``mmap_size`` is not a whole number >= 0.
        MissingExtraError: a key was given and sqlcipher3 is not installed.
        EncryptionError: wrong key, no key for an encrypted file, or a key for a plain file.
        CorruptFileError: the file is not a SQLite database.
        StorageError: the file cannot be opened (missing folder, permissions, ...).
    """

    def __init__(self, path: str | os.PathLike[str], *, encryption_key: bytes | None = None,
                 readonly: bool = False, tracer: Tracer | None = None,
                 check_same_thread: bool = True, mmap_size: int | None = None,
                 defer_map: bool = False) -> None:
        if mmap_size is not None and (type(mmap_size) is not int or mmap_size < 0):
            raise UsageError(f"mmap_size must be a whole number of bytes >= 0 or None, not {mmap_size!r}")
        self.path = os.fspath(path)
        self._check_same_thread = check_same_thread
        self.readonly = readonly
        self.encrypted = encryption_key is not None
        #: Bytes of the file read through a memory map (0: none; always 0 when encrypted).
        self.mmap_size = 0 if self.encrypted else DEFAULT_MMAP_SIZE if mmap_size is None else mmap_size
        #: How many :meth:`unmapped` blocks are open.
        self._unmapped_depth = 0
        #: The map waits for :meth:`map_file` (``PRAGMA mmap_size`` is 0 until then).
        self.map_deferred = bool(defer_map and self.mmap_size)
        #: Advises SQLite's mapping of the file for random access (None: no map, or no advice here).
        self._advice: mapadvice.MapAdvice | None = None
        #: SQLite may map the file at any statement now; look for the mapping before the next one
        #: run at or after ``_advise_at`` (monotonic seconds).
        self._advise_pending = False
        #: An :meth:`unmapped` block ended (SQLite dropped its mapping) and no statement ran
        #: since: map and advise again before the next one.
        self._remap_due = False
        self._advise_at = 0.0
        self._advise_wait = _ADVISE_RETRY
        #: When the mapping was last advised (monotonic seconds).
        self._advised_at = 0.0
        #: (statement, page offset, page size): a read of one small page that makes SQLite map
        #: the file (see :meth:`_prime_map`); ("", 0, 0) when the file has no such page.
        self._prime_target: tuple[str, int, int] | None = None
        #: The value :meth:`data_version` returned last.
        self._data_version = -1
        self._tracer = tracer
        self._owner = threading.get_ident()
        self._savepoints = 0
        #: ``synchronous`` is NORMAL, left so by :meth:`unsynced`, and no such block is open:
        #: FULL is restored before the next statement outside a transaction (see there).
        self._lowered = False
        #: ``synchronous`` is NORMAL (inside or after :meth:`unsynced`).
        self._normal = False
        #: How many :meth:`unsynced` blocks are open.
        self._unsynced_depth = 0
        #: ``wal_autocheckpoint`` is 0, left so by ``unsynced(checkpoint=False)``: set back with
        #: ``synchronous`` (see :meth:`unsynced`).
        self._no_checkpoint = False
        #: A moving average of how long an outermost durable ``COMMIT`` took (seconds; fsync
        #: included; commits inside :meth:`unsynced` are not counted).
        self.commit_seconds = float("inf")
        raw_key = None if encryption_key is None else derive_sqlcipher_key(encryption_key)
        self._raw_key = raw_key  # for write_copy(); never traced or shown
        self._driver: ModuleType = sqlite3 if raw_key is None else _load_sqlcipher()
        # UnicodeEncodeError: a str parameter SQLite cannot take (a lone surrogate).
        self._driver_errors: tuple[type[Exception], ...] = (self._driver.Error, self._driver.Warning,
                                                             UnicodeEncodeError)
        linked = tuple(getattr(self._driver, "sqlite_version_info", MIN_SQLITE))
        if linked < MIN_SQLITE:
            raise StorageError(
                f"tidesync needs SQLite {'.'.join(map(str, MIN_SQLITE))} or later (its JSON operators); "
                f"this Python's {self._driver.__name__} uses SQLite {'.'.join(map(str, linked))}",
                advice="use a Python linked with a newer SQLite (python.org builds of 3.11 and later, "
                       "and current Linux distributions, are)")
        self._conn: sqlite3.Connection | None = None
        with self._translated("connect"):
            if readonly:
                target, uri = Path(self.path).absolute().as_uri() + "?mode=ro", True
            else:
                target, uri = self.path, False
            # sqlcipher3's Connection is not a sqlite3.Connection subclass but has the same API.
            self._conn = cast(sqlite3.Connection, self._driver.connect(
                target, isolation_level=None, timeout=BUSY_TIMEOUT, uri=uri,
                check_same_thread=check_same_thread))
        try:
            if raw_key is not None:
                self._unlock(raw_key)
            self._check_readable()
            self._configure()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        flags = "".join([", encrypted" if self.encrypted else "", ", readonly" if self.readonly else ""])
        return f"<Engine {self.path!r} {state}{flags}>"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- opening ---------------------------------------------------------------------------

    def _unlock(self, raw_key: bytes) -> None:
        # The key must be the first statement on the connection. It is traced redacted.
        self._run(f"PRAGMA key = \"x'{raw_key.hex()}'\"", trace_as=_REDACTED_KEY_PRAGMA)
        # SQLCipher logs every failed page decryption to stderr; a wrong key already becomes an
        # EncryptionError, so the log would only be noise. This setting is process-wide.
        self._run("PRAGMA cipher_log_level = NONE").fetchall()
        # Pin the SQLCipher 4 format so a later SQLCipher with new defaults still opens our files.
        self._run("PRAGMA cipher_compatibility = 4").fetchall()

    def _check_readable(self) -> None:
        """Read page 1 and sqlite_master now, so a bad key or file fails here, typed."""
        try:
            self._run("SELECT count(*) FROM sqlite_master").fetchall()
        except CorruptFileError as exc:
            if exc.__cause__ is not None and _primary_code(exc.__cause__) == _SQLITE_NOTADB:
                raise _diagnose_unreadable(self.path, keyed=self.encrypted) from exc.__cause__
            raise

    def _configure(self) -> None:
        for name, (nargs, function) in SQL_FUNCTIONS.items():  # what compiled queries call ([d])
            self._conn.create_function(name, nargs, function, deterministic=True)  # type: ignore[union-attr]
        if not self.readonly:
            # WAL is a property of the file; setting it needs write access.
            self._run("PRAGMA journal_mode = WAL").fetchall()
        self._run("PRAGMA synchronous = FULL")
        self._run("PRAGMA fullfsync = ON")  # macOS: flush the drive's cache too; no-op elsewhere
        self._run("PRAGMA foreign_keys = ON")
        self._run(f"PRAGMA cache_size = -{CACHE_SIZE_KIB}")
        self._run("PRAGMA temp_store = MEMORY")
        if self.map_deferred:
            self._run("PRAGMA mmap_size = 0").fetchall()
            return
        self._run(f"PRAGMA mmap_size = {self.mmap_size}").fetchall()
        if self.mmap_size and mapadvice.available():
            self._advice = self._new_advice()
            self._prime_map()

    def _new_advice(self) -> mapadvice.MapAdvice | None:
        """The advice for this file's mappings (None where it cannot be advised, or the file is
        not a plain file on disk: nothing the kernel reads ahead)."""
        if not mapadvice.available():
            return None
        try:
            return mapadvice.MapAdvice(self.path)
        except OSError:
            return None

    def map_file(self) -> None:
        """Turn on a deferred map (``defer_map``): map the file and advise the mapping, or, where
        the mapping cannot be advised, stay without a map (``mmap_size`` becomes 0). Once."""
        if not self.map_deferred:
            return
        self.map_deferred = False
        advice = self._new_advice()
        if advice is None:
            self.mmap_size = 0  # a map that cannot be advised is not turned on by default
            return
        self._advice = advice
        if self._unmapped_depth:
            self._remap_due = self._advise_pending = True  # turned on when the block ends
            return
        self._run(f"PRAGMA mmap_size = {self.mmap_size}").fetchall()
        self._prime_map()

    def _prime_map(self) -> None:
        """Make SQLite map the file now and advise the mapping for random access.

        SQLite maps the file lazily, at the first read of a page from it (not page 1), and maps
        it anew after another connection's commit or a change of ``mmap_size``; the kernel's
        read-ahead on a fault applies from the first fault on. So the mapping is made here by
        a read of one small page (the first table's root) that the OS was just made to hold
        (one ``pread``), then advised before any other read faults through it. When that page
        is in the WAL (no mapping made), the mapping is looked for again before a later
        statement (``_advise_pending``).
        """
        advice = self._advice
        conn = self._conn
        if advice is None or conn is None:
            return
        if self._unmapped_depth:
            self._remap_due = self._advise_pending = True  # after the block
            return
        try:
            if self._prime_target is None:
                rows = conn.execute("SELECT name, rootpage FROM sqlite_master WHERE type = 'table' AND "
                                    "rootpage > 1 ORDER BY rootpage LIMIT 1").fetchall()
                page_size = int(conn.execute("PRAGMA page_size").fetchall()[0][0])
                self._prime_target = ((f"SELECT 1 FROM {self.quote_identifier(rows[0][0])} LIMIT 1",
                                       (int(rows[0][1]) - 1) * page_size, page_size) if rows else ("", 0, 0))
            sql, offset, size = self._prime_target
            if sql:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.pread(fd, size, offset)
                finally:
                    os.close(fd)
                conn.execute(sql).fetchall()
            # The mapping is SQLite's view as of now: another connection's later commit shows here.
            self._data_version = int(conn.execute("PRAGMA data_version").fetchall()[0][0])
        except OSError:
            pass  # only a missed chance: the mapping is looked for again before a later statement
        except self._driver_errors:
            self._prime_target = None  # the table may be gone (a schema change): found again next time
        self._advise_now()

    def _advise_now(self) -> None:
        """Advise the file's mappings; when there is none yet, look again a little later."""
        assert self._advice is not None
        now = time.monotonic()
        self._advised_at = now
        found = self._advice.apply()
        # Looked for in vain: look again later, less often each time (up to once a second),
        # so that a file SQLite never maps (its pages all in the WAL) costs next to nothing.
        self._advise_wait = _ADVISE_RETRY if found or not self._advise_pending else min(2 * self._advise_wait, 1.0)
        self._advise_pending = not found
        self._advise_at = now + self._advise_wait

    def _advise_due(self) -> None:
        """Before a statement while ``_advise_pending``: after an :meth:`unmapped` block, map
        and advise the file again (:meth:`_prime_map`); else look for the mapping, at most
        every :data:`_ADVISE_RETRY` seconds (a file SQLite never maps costs no more than that)."""
        if self._unmapped_depth:
            return  # no statement in the block reads through a map
        if self._remap_due:
            self._remap_due = False
            self._prime_map()
        elif time.monotonic() >= self._advise_at:
            self._advise_now()

    # -- copies ----------------------------------------------------------------------------

    def write_copy(self, path: str | os.PathLike[str], *, encryption_key: bytes | None = None) -> None:
        """Write the committed state of the file to a new file at ``path``, without free pages,
        encrypted with ``encryption_key`` (64 bytes; None: a plain file), whatever the key of
        this one: SQLite's ``VACUUM INTO`` when the key stays, else SQLCipher's
        ``sqlcipher_export``. Runs on a connection of its own, so it sees one committed
        snapshot and leaves this engine's connection as it was.

        Raises:
            UsageError: ``path`` exists, or the key is not 64 bytes.
            MissingExtraError: a key is involved and sqlcipher3 is not installed.
            StorageError: the copy could not be written (a partial file is removed).
        """
        target = os.fspath(path)
        if os.path.lexists(target):
            raise UsageError(f"{target} already exists: write_copy() makes a new file",
                             advice="choose a new path, or delete the old copy first")
        raw_target = None if encryption_key is None else derive_sqlcipher_key(encryption_key)
        same_key = raw_target is None if self._raw_key is None else \
            raw_target is not None and hmac.compare_digest(raw_target, self._raw_key)
        driver = sqlite3 if same_key and self._raw_key is None else _load_sqlcipher()
        with self._translated("write_copy"):
            conn = cast(sqlite3.Connection, driver.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT))
        try:
            with self._translated("write_copy"):
                if self._raw_key is not None:
                    conn.execute(f"PRAGMA key = \"x'{self._raw_key.hex()}'\"")
                    conn.execute("PRAGMA cipher_compatibility = 4").fetchall()
                if same_key:
                    conn.execute("VACUUM INTO ?", (target,))
                else:
                    key = "" if raw_target is None else f"x'{raw_target.hex()}'"
                    conn.execute(f"ATTACH DATABASE ? AS tidesync_copy KEY \"{key}\"", (target,))
                    if raw_target is not None:
                        conn.execute("PRAGMA tidesync_copy.cipher_compatibility = 4").fetchall()
                    conn.execute("BEGIN")
                    conn.execute("SELECT sqlcipher_export('tidesync_copy')").fetchall()
                    conn.execute("COMMIT")
                    conn.execute("DETACH DATABASE tidesync_copy")
        except BaseException:
            conn.close()
            remove_file_set(target)
            raise
        conn.close()

    # -- the door --------------------------------------------------------------------------

    @property
    def connection(self) -> sqlite3.Connection:
        """The DB-API connection (sqlite3, or sqlcipher3 with the same API).

        Using it directly bypasses the tracer and error translation: prefer the methods here.
        """
        return self._open_connection()

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run one statement and return its cursor.

        Raises:
            StorageError: (or a subclass) the driver refused the statement.
            DatabaseClosedError: the engine was closed.
            UsageError: called from a thread other than the one that opened the engine.
        """
        return Cursor(self._run(sql, params), self, sql)

    def run(self, sql: str, params: Params = ()) -> None:
        """:meth:`execute` for a statement whose cursor is not wanted (none is made)."""
        self._run(sql, params)

    def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> Cursor:
        """Run one statement once per parameter set; the tracer sees each set as it is used."""
        if self._tracer is not None:
            seq_of_params = self._traced_params(sql, seq_of_params)
        conn = self._open_connection()
        if self._lowered:
            self._restore_synchronous(conn)
        if self._advise_pending:
            self._advise_due()
        with self._translated(sql):
            return Cursor(conn.executemany(sql, seq_of_params), self, sql)

    def run_rows(self, sql: str, rows: Sequence[Params]) -> None:
        """:meth:`executemany` whose cursor is not wanted; a single row runs as :meth:`run`
        (no iterator, no cursor: the usual case of a small sync download)."""
        if len(rows) == 1:
            self._run(sql, rows[0])
        elif rows:
            self.executemany(sql, rows)

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement and return all its rows."""
        # The hot path of every read: _run and _translated inlined (no context manager).
        conn = self._open_connection()
        if self._lowered:
            self._restore_synchronous(conn)
        if self._advise_pending:
            self._advise_due()
        if self._tracer is not None:
            self._tracer(sql, params)
        try:
            return cast("list[Row]", conn.execute(sql, params).fetchall())
        except self._driver_errors as exc:
            raise _translate(exc, sql) from exc

    def query_within(self, sql: str, params: Params, steps: int) -> list[Row] | None:
        """:meth:`query`, given up once SQLite has run about ``steps`` steps of its virtual
        machine (counted in rounds of :data:`_STEP_ROUND`): None then, and nothing changed
        (use it for reads outside a transaction only). For trying a plan that is fast when it
        is fast at all before a safe one."""
        conn = self._open_connection()
        if self._lowered:
            self._restore_synchronous(conn)
        if self._advise_pending:
            self._advise_due()
        if self._tracer is not None:
            self._tracer(sql, params)
        rounds = max(1, steps // _STEP_ROUND)
        spent = 0

        def tick() -> bool:
            nonlocal spent
            spent += 1
            return spent > rounds

        conn.set_progress_handler(tick, _STEP_ROUND)
        try:
            return cast("list[Row]", conn.execute(sql, params).fetchall())
        except self._driver_errors as exc:
            if spent > rounds and _primary_code(exc) == _SQLITE_INTERRUPT:
                return None
            raise _translate(exc, sql) from exc
        finally:
            conn.set_progress_handler(None, 0)

    @contextmanager
    def atomic(self, *, immediate: bool = True, wait: bool = True) -> Iterator[None]:
        """Run the block in a transaction: committed on exit, rolled back if it raises.

        The outermost ``atomic()`` begins a transaction; an ``atomic()`` inside another one makes
        a savepoint, so an exception caught inside the outer block undoes only the inner one.

        Args:
            immediate: take the write lock at BEGIN (``BEGIN IMMEDIATE``), waiting up to
                :data:`BUSY_TIMEOUT` for other writers. With False (``BEGIN DEFERRED``) the lock
                is taken at the first write, which can fail with a ``busy`` StorageError if
                another connection committed in between: use False only for read transactions.
                Ignored when nested.
            wait: False (with ``immediate``): do not wait for another connection's write
                lock; raise :class:`WriteLockBusy` at once, with nothing begun, if it is held
                (for a caller that must never block, such as a server's event loop). Ignored
                when nested.
        """
        conn = self._open_connection()
        if not conn.in_transaction:
            if wait or not immediate:
                self._run("BEGIN IMMEDIATE" if immediate else "BEGIN DEFERRED")
            else:
                self._begin_now()
            try:
                yield
            except BaseException:
                self._rollback("ROLLBACK")
                raise
            begun = time.perf_counter()
            try:
                self._run("COMMIT")
            except BaseException:
                self._rollback("ROLLBACK")
                raise
            if not self._unsynced_depth:  # an unsynced commit says nothing of a durable one's cost
                took, last = time.perf_counter() - begun, self.commit_seconds
                self.commit_seconds = took if last == math.inf else last + (took - last) * 0.2
            return
        self._savepoints += 1
        name = f"tidesync_sp{self._savepoints}"
        try:
            self._run(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                self._rollback(f"ROLLBACK TO {name}")
                self._rollback(f"RELEASE {name}")
                raise
            self._run(f"RELEASE {name}")
        finally:
            self._savepoints -= 1

    def _begin_now(self) -> None:
        """``BEGIN IMMEDIATE`` with no busy wait (SQLite's busy timeout 0 for that statement
        only): :class:`WriteLockBusy` if another connection holds the write lock."""
        self._run("PRAGMA busy_timeout = 0")
        try:
            self._run("BEGIN IMMEDIATE")
        except StorageError as exc:
            if exc.code == "busy":
                raise WriteLockBusy("another connection holds the file's write lock",
                                    advice="try again later, or wait for the lock") from exc
            raise
        finally:
            self._run(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")

    @contextmanager
    def unsynced(self, *, checkpoint: bool = True) -> Iterator[None]:
        """Transactions committed inside the block are written to the WAL but not fsync'd
        (``synchronous = NORMAL``): after a power loss they may be rolled back, whole and
        together, never torn. Call :meth:`sync_wal` before anything relies on them being
        durable. Use it only outside a transaction.

        ``synchronous`` stays NORMAL after the block and is set back to FULL before the next
        statement run outside a transaction and outside such a block (the ``BEGIN`` of the next
        :meth:`atomic`, or an autocommit statement): a stream of downloads pays no pragma
        round trips, and every other commit is still durable on return.

        ``checkpoint=False``: the commits also skip SQLite's automatic WAL checkpoint (a copy
        of the WAL into the file, and its fsyncs, inside the commit that takes the WAL past
        1,000 pages): the caller has them checkpointed in the background. The setting comes
        back with ``synchronous``, or at the next block that checkpoints."""
        self._lowered = False
        if not self._normal:
            self._run("PRAGMA synchronous = NORMAL")
            self._normal = True
        if checkpoint == self._no_checkpoint:
            self._run(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES if checkpoint else 0}")
            self._no_checkpoint = not checkpoint
        self._unsynced_depth += 1
        try:
            yield
        finally:
            self._unsynced_depth -= 1
            self._lowered = not self._unsynced_depth

    def _restore_synchronous(self, conn: sqlite3.Connection) -> None:
        """``synchronous = FULL`` again after :meth:`unsynced`, when a statement is about to
        run outside a transaction and outside an unsynced block (inside a transaction the
        ``BEGIN`` already restored it)."""
        if conn.in_transaction:
            return
        for sql in ("PRAGMA synchronous = FULL",
                    *([f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}"] if self._no_checkpoint else [])):
            if self._tracer is not None:
                self._tracer(sql, None)
            try:
                conn.execute(sql)
            except self._driver_errors as exc:
                raise _translate(exc, sql) from exc
        self._lowered = self._normal = self._no_checkpoint = False

    def sync_wal(self) -> None:
        """Flush the WAL file to stable storage: every transaction committed so far, including
        those of :meth:`unsynced`, is durable when this returns. Needs no lock and no
        connection (an fsync of the file), so other threads can read meanwhile."""
        try:
            fd = os.open(self.path + "-wal", os.O_RDWR)
        except FileNotFoundError:
            return  # no WAL: everything was checkpointed, and a checkpoint syncs the file
        try:
            full = getattr(fcntl, "F_FULLFSYNC", None) if fcntl is not None else None
            if full is not None:
                fcntl.fcntl(fd, full)  # macOS: as PRAGMA fullfsync does
            else:
                os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def unmapped(self) -> Iterator[None]:
        """Run the block's statements without the memory map (``mmap_size`` 0, then back).

        For reads that sweep much of the file (iterating a large result): through the map, every
        page they touch would stay in the process's resident set until the map is dropped; read
        through SQLite's page cache instead, their memory stays bounded by ``cache_size``.
        SQLite applies the change only while no statement holds a mapped page (a read still in
        progress keeps the map), so call this between statements. Nested blocks are fine.
        """
        if not self.mmap_size or self.map_deferred:
            yield
            return
        if self._unmapped_depth == 0:
            if self._remap_due:
                # No statement ran since the last block: SQLite has no mapping now.
                self._remap_due = False
                self._advise_pending = False
            self._run("PRAGMA mmap_size = 0").fetchall()
        self._unmapped_depth += 1
        try:
            yield
        finally:
            self._unmapped_depth -= 1
            if self._unmapped_depth == 0 and self._conn is not None:
                self._run(f"PRAGMA mmap_size = {self.mmap_size}").fetchall()
                if self._advice is not None:
                    # SQLite maps the file again at its next read: map and advise it before the
                    # next statement (not now: that may be another such block, as when a large
                    # result is read a page at a time).
                    self._remap_due = True
                    self._advise_pending = True

    def total_changes(self) -> int:
        """Rows changed through this connection since it opened (grows with every write)."""
        return int(self._open_connection().total_changes)

    def in_transaction(self) -> bool:
        """True inside ``atomic()`` (or any open transaction on this connection)."""
        return self._open_connection().in_transaction

    def data_version(self) -> int:
        """A number that changes when another connection (thread or process) commits to the file.

        Commits made through this engine do not change it; compare two readings to learn whether
        someone else wrote in between.
        """
        # Not through query(): this pragma reads no page through the map, so it does not wait
        # for the mapping to be advised (see _advise_due), and it runs between the pages of a
        # large result read without the map.
        conn = self._open_connection()
        if self._tracer is not None:
            self._tracer("PRAGMA data_version", ())
        try:
            version = int(conn.execute("PRAGMA data_version").fetchall()[0][0])
        except self._driver_errors as exc:
            raise _translate(exc, "PRAGMA data_version") from exc
        if self._advice is not None and (version != self._data_version
                                         or time.monotonic() - self._advised_at >= _ADVISE_REFRESH):
            # Another connection's commit makes SQLite drop its mapping at the next read; the
            # pragma's own read did that, so map and advise again now. Also once a second, for
            # a mapping made another way: when a checkpoint through this connection grows the
            # file, SQLite extends its mapping with mremap, which keeps the advice, on Linux
            # builds that have it; without it, the extension would be a new mapping.
            self._prime_map()
        self._data_version = version
        return version

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back). Closing twice is fine."""
        if self._conn is None:
            return
        self._check_thread()
        conn, self._conn = self._conn, None
        with self._translated("close"):
            conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    @staticmethod
    def quote_identifier(name: str) -> str:
        """Quote a table, column or index name for SQL: ``a"b`` becomes ``"a""b"``."""
        if "\x00" in name:
            raise UsageError(f"an identifier cannot contain a NUL character: {name!r}")
        return '"' + name.replace('"', '""') + '"'

    # -- internals -------------------------------------------------------------------------

    def _open_connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DatabaseClosedError(f"the database {self.path!r} is closed")
        self._check_thread()
        return self._conn

    def _check_thread(self) -> None:
        if self._check_same_thread and threading.get_ident() != self._owner:
            raise UsageError(
                f"this Engine for {self.path!r} belongs to another thread",
                advice="open one Engine per thread; they share the file safely")

    def _run(self, sql: str, params: Params | None = None, *, trace_as: str | None = None) -> sqlite3.Cursor:
        conn = self._open_connection()
        if self._lowered:
            self._restore_synchronous(conn)
        if self._advise_pending:
            self._advise_due()
        if self._tracer is not None:
            self._tracer(trace_as or sql, params)
        try:
            return conn.execute(sql, () if params is None else params)
        except self._driver_errors as exc:
            raise _translate(exc, trace_as or sql) from exc

    def _traced_params(self, sql: str, seq_of_params: Iterable[Params]) -> Iterator[Params]:
        assert self._tracer is not None
        for params in seq_of_params:
            self._tracer(sql, params)
            yield params

    def _rollback(self, sql: str) -> None:
        # SQLite may already have rolled the transaction back by itself (disk full, I/O error):
        # a second ROLLBACK would fail and hide the error that caused it.
        if self._conn is not None and self._conn.in_transaction:
            self._run(sql)

    @contextmanager
    def _translated(self, sql: str) -> Iterator[None]:
        try:
            yield
        except self._driver_errors as exc:
            raise _translate(exc, sql) from exc


def _primary_code(exc: BaseException) -> int:
    """The primary SQLite result code of a driver exception, or -1 when it carries none."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else -1


def not_text_error(exc: UnicodeEncodeError) -> ValidationError:
    """The error for a str that UTF-8 cannot encode (half of a UTF-16 surrogate pair), met
    while storing or searching for it."""
    bad = exc.object[exc.start:exc.end]
    return ValidationError(
        f"a str holds {bad!r} (at index {exc.start}), half of a UTF-16 surrogate pair: that is not "
        "Unicode text, so it cannot be stored or searched for",
        advice=NOT_TEXT_ADVICE)


def _translate(exc: Exception, sql: str) -> TidesyncError:
    """The tidesync error for a driver exception raised while running ``sql``."""
    if isinstance(exc, UnicodeEncodeError):
        return not_text_error(exc)
    cls, tidesync_code, advice = _ERROR_TABLE.get(_primary_code(exc), (StorageError, None, None))
    shown = sql if len(sql) <= 200 else sql[:197] + "..."
    return cls(f"{exc} (in: {shown})", advice=advice, code=tidesync_code)


def _diagnose_unreadable(path: str, *, keyed: bool) -> StorageError:
    """Say why SQLite called ``path`` "not a database", from its first page."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        head, size = b"", 0
    if head.startswith(_SQLITE_MAGIC):
        if keyed:
            return EncryptionError(
                f"{path} is not encrypted, but an encryption key was given",
                advice="open it without encryption_key; to encrypt it, open it so and write an encrypted copy "
                       "with db.write_copy(path, encryption_key=key)")
        return CorruptFileError(f"{path} has a SQLite header but cannot be read",
                                advice="restore the file from a backup or sync it again from the server")
    if _looks_encrypted(head, size):
        if keyed:
            return EncryptionError(
                f"{path} cannot be decrypted with this key (wrong key, or not a tidesync database)",
                advice="pass the same 64-byte key the file was created with")
        return EncryptionError(f"{path} is encrypted (or is not a database) and no encryption key was given",
                               advice="pass encryption_key= with the file's 64-byte key")
    return CorruptFileError(f"{path} is not a tidesync database",
                            advice="check the path; the file was not written by tidesync or SQLite")


def _looks_encrypted(head: bytes, size: int) -> bool:
    """An SQLCipher file is whole pages of bytes that look random; text or other formats do not."""
    if size < 512 or size % 512 or len(head) < 512:
        return False
    counts = Counter(head)
    entropy = -sum(n / len(head) * math.log2(n / len(head)) for n in counts.values())
    # Uniform bytes give ~7.95 bits/byte over 4 KiB (~7.6 over 512 bytes); text stays under 5.
    return entropy > 7.0
