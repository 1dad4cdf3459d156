"""``Progress``, ``Changes`` and ``Ack`` check their ints on a fast path when they are valid
(protocol/messages.py): they accept exactly what the per-field checks accept, and refuse the
rest with the same error, naming the same field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidesync.protocol.messages import MAX_SEQ, Ack, Changes, Progress

values = st.one_of(
    st.integers(0, 300), st.integers(-(1 << 70), 1 << 70), st.sampled_from([0, MAX_SEQ, MAX_SEQ + 1, -1, True, False]),
    st.none(), st.floats(allow_nan=False), st.text(max_size=3))


def _int_error(name: str, value: object) -> str | None:
    """What the per-field check (``messages._int``) says of ``value``, None when it accepts it."""
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        return f"{name} must be an int in [0, {MAX_SEQ}], not {value!r}"
    return None


def _outcome(make: Any) -> str | None:
    try:
        make()
    except ValueError as exc:
        return str(exc)
    return None


@given(values, values, values, values)
def test_progress_accepts_and_refuses_as_its_per_field_checks(a: Any, b: Any, c: Any, d: Any) -> None:
    want = next((e for e in (_int_error(f"progress {n}", v) for n, v in
                             zip(("sent", "total", "sent_bytes", "total_bytes"), (a, b, c, d), strict=True))
                 if e is not None), None)
    assert _outcome(lambda: Progress(a, b, c, d)) == want


@given(values, values, values)
def test_changes_accepts_and_refuses_as_its_per_field_checks(a: Any, b: Any, c: Any) -> None:
    want = next((e for e in (_int_error(n, v) for n, v in zip(("from_seq", "to_seq", "head"), (a, b, c), strict=True))
                 if e is not None), None)
    if want is None and not a <= b <= c:
        want = f"need from_seq <= to_seq <= head, got {a}, {b}, {c}"
    assert _outcome(lambda: Changes(a, b, c)) == want


@given(values, st.one_of(st.none(), values))
def test_ack_accepts_and_refuses_as_its_per_field_checks(seq: Any, page: Any) -> None:
    want = _int_error("seq", seq) or (None if page is None else _int_error("snapshot_page", page))
    assert _outcome(lambda: Ack(seq, page)) == want


@pytest.mark.parametrize("bad", [True, -1, MAX_SEQ + 1, 1.0, "1", None])
def test_a_bad_progress_field_is_named(bad: Any) -> None:
    with pytest.raises(ValueError, match="progress total_bytes must be an int"):
        Progress(1, 2, 3, bad)
