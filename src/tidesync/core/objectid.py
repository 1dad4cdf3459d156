"""ObjectId: a 12-byte id compatible with BSON's ObjectId (4 bytes of seconds, 5 random, 3 counter)."""

from __future__ import annotations

import binascii
import itertools
import os
import time
from typing import Any

__all__ = ["ObjectId"]

_random = os.urandom(5)
_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))


class ObjectId:
    """A 12-byte identifier, ordered by creation time, as BSON's ObjectId.

    ``ObjectId()`` makes a new one (like ``uuid.uuid4()``, this reads the clock and the OS
    random source: it is a value constructor, not part of the deterministic core);
    ``ObjectId("65f0...")`` parses 24 hex digits; ``ObjectId(b"...12 bytes")`` wraps bytes.
    """

    __slots__ = ("_bytes",)

    def __init__(self, value: str | bytes | ObjectId | None = None) -> None:
        if value is None:
            seconds = int(time.time()) & 0xFFFFFFFF
            count = next(_counter) & 0xFFFFFF
            self._bytes = seconds.to_bytes(4, "big") + _random + count.to_bytes(3, "big")
        elif isinstance(value, ObjectId):
            self._bytes = value._bytes
        elif isinstance(value, bytes):
            if len(value) != 12:
                raise ValueError(f"an ObjectId is 12 bytes, got {len(value)}")
            self._bytes = value
        elif isinstance(value, str):
            try:
                raw = binascii.unhexlify(value)
            except (binascii.Error, ValueError):
                raise ValueError(f"not an ObjectId: {value!r} (expected 24 hex digits)") from None
            if len(raw) != 12:
                raise ValueError(f"not an ObjectId: {value!r} (expected 24 hex digits)")
            self._bytes = raw
        else:
            raise TypeError(f"cannot make an ObjectId from {type(value).__name__}")

    @property
    def binary(self) -> bytes:
        """The 12 raw bytes."""
        return self._bytes

    def __str__(self) -> str:
        return self._bytes.hex()

    def __repr__(self) -> str:
        return f"ObjectId('{self._bytes.hex()}')"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ObjectId) and other._bytes == self._bytes

    def __lt__(self, other: ObjectId) -> bool:
        return self._bytes < other._bytes

    def __le__(self, other: ObjectId) -> bool:
        return self._bytes <= other._bytes

    def __gt__(self, other: ObjectId) -> bool:
        return self._bytes > other._bytes

    def __ge__(self, other: ObjectId) -> bool:
        return self._bytes >= other._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)
