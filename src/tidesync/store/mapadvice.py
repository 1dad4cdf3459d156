"""Random-access advice on SQLite's memory map of a database file (Linux).

When SQLite reads a file through a memory map (``PRAGMA mmap_size``), a page the OS does not
hold in its cache is read by a page fault, and on Linux each such fault reads ahead around it
by the device's ``read_ahead_kb`` (8 MiB on some machines): a few scattered reads of a cold file
then read hundreds of megabytes. ``madvise(MADV_RANDOM)`` on the mapping stops that (a fault
reads the page it needs), but SQLite offers no hook for it: :class:`MapAdvice` finds the
file's mappings in ``/proc/self/maps`` and advises each new one. The engine calls it when
SQLite may have made a new mapping (see ``Engine._prime_map``). Elsewhere (no ``/proc``, no
``madvise``) :func:`available` is False and tidesync does not map files unless asked to.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, cast

__all__ = ["MapAdvice", "available", "possible"]

_MADVISE: Callable[[int, int, int], int] | None = None
_MADV_RANDOM = -1
_PROBED = False


def _load() -> Callable[[int, int, int], int] | None:
    """libc's ``madvise`` through ctypes, or None when this platform cannot use it."""
    global _MADVISE, _MADV_RANDOM, _PROBED
    if _PROBED:
        return _MADVISE
    _PROBED = True
    if not possible():
        return None
    try:
        import ctypes
        import mmap

        libc: Any = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        _MADV_RANDOM = int(mmap.MADV_RANDOM)
    except (ImportError, OSError, AttributeError):
        return None
    _MADVISE = cast("Callable[[int, int, int], int]", fn)
    return _MADVISE


def possible() -> bool:
    """True on a platform where mappings can be advised (Linux with ``/proc``), checked without
    loading ``ctypes`` (whose import costs a few milliseconds): :func:`available` decides."""
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/maps")


def available() -> bool:
    """True when mappings can be advised here (Linux with ``/proc`` and libc's ``madvise``).
    The first call loads ``ctypes``."""
    return _load() is not None


class MapAdvice:
    """Advise every mapping of one file in this process for random access.

    Args:
        path: the file whose mappings (SQLite's) are advised; matched by device and inode.

    Raises:
        OSError: the file cannot be examined with ``os.stat``.
    """

    def __init__(self, path: str) -> None:
        st = os.stat(path)
        self._ident = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        #: Bytes of the file mapped at the last :meth:`apply`.
        self.mapped_bytes = 0

    def apply(self) -> bool:
        """Advise every mapping of the file (a mapping SQLite replaced may sit where the old one
        was, so none is skipped); True when the file is mapped at all."""
        madvise = _load()
        if madvise is None:
            return False
        major, minor, ino = self._ident
        found: set[tuple[int, int]] = set()
        try:
            with open("/proc/self/maps", "rb") as f:
                data = f.read()
        except OSError:
            return False
        suffix = b" %d " % ino
        for line in data.splitlines():
            # "start-end perms offset major:minor inode path"; the inode is checked first, cheaply.
            if suffix not in line:
                continue
            parts = line.split(None, 5)
            if len(parts) < 5 or int(parts[4]) != ino:
                continue
            dev_major, _, dev_minor = parts[3].partition(b":")
            if int(dev_major, 16) != major or int(dev_minor, 16) != minor:
                continue
            low, _, high = parts[0].partition(b"-")
            found.add((int(low, 16), int(high, 16)))
        for start, end in found:
            madvise(start, end - start, _MADV_RANDOM)  # a failure leaves the default read-ahead
        self.mapped_bytes = sum(end - start for start, end in found)
        return bool(found)
