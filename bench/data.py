"""The benchmark models and documents (deterministic: document ``i`` is always the same)."""

from __future__ import annotations

from typing import Any

import tidesync
from tidesync import field

CATEGORIES = 10_000
"""Distinct ``category`` values: on 1,000,000 documents each one matches exactly 100."""


class Note(tidesync.Model):
    """About 200 bytes of JSON; no secondary index (the raw baseline has only a primary key)."""

    _id: str = field(primary_key=True)
    category: str
    title: str
    status: str = "open"
    priority: int = 0
    score: float = 0.0
    note: str = ""


class Item(tidesync.Model):
    """The same fields, with ``category`` indexed (for the query benchmarks; the raw baseline of
    the write benchmark then gets the same expression index on category)."""

    _id: str = field(primary_key=True)
    category: str = field(indexed=True)
    title: str
    status: str = "open"
    priority: int = 0
    score: float = 0.0
    note: str = ""


_STATUS = ("open", "done", "hold")


def make_doc(i: int) -> dict[str, Any]:
    """Document ``i``: about 200 bytes as JSON, every field given."""
    return {
        "_id": f"item-{i:07d}",
        "category": category(i % CATEGORIES),
        "title": f"Work order {i}: inspect pump station",
        "status": _STATUS[i % 3],
        "priority": i % 5,
        "score": round((i % 1000) / 7, 3),
        "note": "Replace the seal, check the pressure gauge; manual section 4.",
    }


def category(c: int) -> str:
    return f"cat-{c:05d}"
