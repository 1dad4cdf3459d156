"""tidesync: offline-first sync for Python.

An embedded database on every device, a sync server, and automatic merging of what was
changed while peers were apart. Start with :func:`open`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .client.app import App, Credentials, User
from .client.session import Progress, SyncConfig, SyncSession
from .core.merge import Policies
from .core.models import Counter, EmbeddedModel, Mixed, Model, backlinks, field
from .core.objectid import ObjectId
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .store.database import Change, Database, HistoryEntry, IntegrateResult, RevertResult
from .store.listeners import ChangeSet, ListenerToken, ObjectChange
from .store.results import Results

__version__ = "0.1.0"

__all__ = [
    "open",
    "Database",
    "Model",
    "EmbeddedModel",
    "field",
    "backlinks",
    "Counter",
    "Mixed",
    "ObjectId",
    "Results",
    "ChangeSet",
    "ObjectChange",
    "ListenerToken",
    "HistoryEntry",
    "Change",
    "RevertResult",
    "IntegrateResult",
    "Policies",
    "App",
    "Credentials",
    "User",
    "SyncConfig",
    "SyncSession",
    "Progress",
    *_errors_all,
]


def open(path: str | os.PathLike[str], schema: Sequence[type[Model]] = (), *,  # noqa: A001
         encryption_key: bytes | None = None, sync: Any = None, policies: Policies | None = None,
         log_keep: int | None = None, compact_on_open: Callable[[int, int], bool] | None = None,
         mmap_size: int | None = None) -> Database:
    """Open (or create) a tidesync database file.

    Args:
        path: the file. Sidecar files ``-wal`` and ``-shm`` appear beside it.
        schema: the model classes stored in it (embedded and linked models are found from them).
        encryption_key: 64 bytes to encrypt the file with SQLCipher (``tidesync[encryption]``).
        sync: a ``SyncConfig`` to keep the database in sync with a server.
        policies: per-field conflict policies (default: last writer wins).
        log_keep: keep only about the newest this many transactions in the file's log (its
            history: ``db.history()``, ``db.revert()``, what a peer catches up from); older
            ones are dropped once the server has them (with ``sync``), at most a tenth (at
            least 100) over. None (the default): keep them all. See docs/data-model.md.
        compact_on_open: ``f(total_bytes, used_bytes) -> bool``, called once as the file
            opens (Realm's ``should_compact_on_launch``); True compacts it (``db.compact()``)
            before anything else reads or syncs.
        mmap_size: read up to this many bytes of the file through a memory map; 0: no map.
            None (the default): 1 GiB on Linux (64-bit), turned on at the first filtered
            query and advised for random access so that reads of a file the OS does not hold
            read no more from the disk than without it; no map elsewhere. Reads of a file the OS holds in its cache cost
            less CPU through the map; the pages read count in the process's resident memory,
            and a disk error under a mapped read ends the process (SIGBUS). Encrypted files
            are never mapped. See docs/architecture.md, "Reading through a memory map".

    Returns:
        The database; use it as a context manager or call ``close()``.
    """
    db = Database(path, schema, encryption_key=encryption_key, policies=policies, log_keep=log_keep,
                  mmap_size=mmap_size)
    if compact_on_open is not None:
        try:
            if compact_on_open(*db._file_bytes()):
                db.compact()
        except BaseException:
            db.close()
            raise
    if sync is not None:
        from .client.session import attach_sync

        try:
            attach_sync(db, sync)
        except BaseException:
            db.close()
            raise
    return db
