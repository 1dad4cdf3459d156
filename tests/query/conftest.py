"""Fixtures for the query tests (the harness itself is in ``query_harness.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from query_harness import SCHEMA, Store

from tidesync.core.schema import Schema


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store()
    yield s
    s.db.close()


@pytest.fixture
def schema() -> Schema:
    return SCHEMA
