"""Waiting in tests for something another thread or process does: bounded, polled."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tidesync import InvalidatedObjectError


def eventually(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> None:
    """Return once ``predicate()`` is true; fail the test if it is not within ``timeout`` s.

    A predicate that reads live objects while a sync session deletes one of them (a document
    leaving a view) can meet ``InvalidatedObjectError`` between listing the results and reading
    an attribute: that counts as "not yet", and the predicate is asked again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except InvalidatedObjectError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")
