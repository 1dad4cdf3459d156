"""The server's record of which partitions the log's recent entries can concern
(``_Shared.account``), and the read start it allows for a session of another partition
(``_Shared.skip_to``): the head only when every entry after the session's position is known to
concern other partitions."""

from __future__ import annotations

from tidesync.server.sync_endpoint import _Shared


def _shared(head: int) -> _Shared:
    shared = _Shared()
    shared.head = shared.blind = head
    return shared


def _integrated(shared: _Shared, partition: str | None, applied: int, last: int) -> None:
    before = shared.head
    shared.head = max(before, last)
    shared.account(partition, before, last, applied)


def test_entries_of_other_partitions_are_skipped_up_to_the_head() -> None:
    shared = _shared(10)
    _integrated(shared, '"p"', 1, 11)
    _integrated(shared, '"p"', 2, 13)
    assert shared.skip_to('"x"', 10) == 13
    assert shared.skip_to('"x"', 12) == 13
    assert shared.skip_to('"p"', 10) == 10 and shared.skip_to('"p"', 12) == 12
    assert shared.skip_to('"p"', 13) == 13  # nothing after it anyway
    _integrated(shared, '"x"', 1, 14)
    assert shared.skip_to('"x"', 13) == 13  # its own partition's entry: read it
    assert shared.skip_to('"x"', 14) == 14
    _integrated(shared, '"p"', 1, 15)
    assert shared.skip_to('"x"', 14) == 15


def test_nothing_is_skipped_before_the_start_or_past_an_unknown_entry() -> None:
    shared = _shared(10)
    _integrated(shared, '"p"', 1, 11)
    assert shared.skip_to('"x"', 9) == 9  # entries written before this server knew
    _integrated(shared, None, 1, 12)  # flexible, development mode, a compensation
    assert shared.skip_to('"x"', 11) == 11
    assert shared.skip_to('"x"', 12) == 12
    _integrated(shared, '"p"', 1, 13)
    assert shared.skip_to('"x"', 12) == 13


def test_a_gap_before_an_integration_makes_its_entries_unknown() -> None:
    shared = _shared(10)
    _integrated(shared, '"p"', 1, 12)  # seq 11 was written by someone else (another process)
    assert shared.skip_to('"x"', 10) == 10
    assert shared.skip_to('"p"', 10) == 10
    _integrated(shared, '"p"', 3, 15)  # three entries, right after 12
    assert shared.skip_to('"x"', 12) == 15
    _integrated(shared, '"p"', 1, 17)  # one entry counted, two written: not all known
    assert shared.skip_to('"x"', 15) == 15


def test_announcements_out_of_order_make_both_unknown() -> None:
    shared = _shared(10)
    _integrated(shared, '"p"', 1, 12)  # announced before the integration that wrote 11
    _integrated(shared, '"q"', 1, 11)
    assert shared.head == 12
    assert shared.skip_to('"x"', 10) == 10
    _integrated(shared, '"p"', 1, 13)
    assert shared.skip_to('"x"', 12) == 13
    assert '"q"' not in shared.touched_at  # at or below the unknown part: forgotten
