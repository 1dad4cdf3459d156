"""The connection state machine, tables only (h11 test_state.py style)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidesync.errors import ProtocolError
from tidesync.protocol import MESSAGE_TYPES, Close, Error, Hello, Welcome
from tidesync.protocol.states import (
    ACCEPTOR,
    ACTIVE,
    CLOSED,
    ERROR,
    HELLO_RECEIVED,
    HELLO_SENT,
    IDLE,
    INITIATOR,
    SESSION_MESSAGES,
    TRANSITIONS,
    ConnectionState,
    diagram,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def active() -> ConnectionState:
    cs = ConnectionState()
    cs.process_message(INITIATOR, Hello)
    cs.process_message(ACCEPTOR, Welcome)
    return cs


def test_handshake() -> None:
    cs = ConnectionState()
    assert cs.states == {INITIATOR: IDLE, ACCEPTOR: IDLE}
    cs.process_message(INITIATOR, Hello)
    assert cs.states == {INITIATOR: HELLO_SENT, ACCEPTOR: HELLO_RECEIVED}
    cs.process_message(ACCEPTOR, Welcome)
    assert cs.states == {INITIATOR: ACTIVE, ACCEPTOR: ACTIVE}


@pytest.mark.parametrize(("role", "message"), [
    (ACCEPTOR, Hello), (INITIATOR, Welcome), (ACCEPTOR, Welcome), (INITIATOR, Close),
    *[(INITIATOR, m) for m in SESSION_MESSAGES], *[(ACCEPTOR, m) for m in SESSION_MESSAGES],
])
def test_nothing_but_hello_and_error_before_the_handshake(role, message) -> None:  # type: ignore[no-untyped-def]
    cs = ConnectionState()
    with pytest.raises(ProtocolError) as info:
        cs.process_message(role, message)
    assert info.value.code == "unexpected_message"
    assert cs.states == {INITIATOR: IDLE, ACCEPTOR: IDLE}  # a refused message changes nothing


@pytest.mark.parametrize("message", SESSION_MESSAGES)
def test_session_messages_flow_both_ways_once_active(message) -> None:  # type: ignore[no-untyped-def]
    cs = active()
    for role in (INITIATOR, ACCEPTOR):
        assert cs.can_send(role, message)
        cs.process_message(role, message)
    assert cs.states == {INITIATOR: ACTIVE, ACCEPTOR: ACTIVE}


def test_no_second_handshake() -> None:
    cs = active()
    assert not cs.can_send(INITIATOR, Hello)
    assert not cs.can_send(ACCEPTOR, Welcome)


def test_only_the_acceptor_welcomes_after_a_hello() -> None:
    cs = ConnectionState()
    cs.process_message(INITIATOR, Hello)
    assert not cs.can_send(INITIATOR, Welcome)
    assert not cs.can_send(INITIATOR, Hello)
    assert not cs.can_send(ACCEPTOR, SESSION_MESSAGES[0])
    assert cs.can_send(ACCEPTOR, Welcome) and cs.can_send(ACCEPTOR, Error)


@pytest.mark.parametrize("closer", [INITIATOR, ACCEPTOR])
def test_close_is_per_party(closer) -> None:  # type: ignore[no-untyped-def]
    cs = active()
    cs.process_message(closer, Close)
    other = closer.peer
    assert cs.states == {closer: CLOSED, other: ACTIVE}
    assert not cs.finished
    assert not any(cs.can_send(closer, m) for m in MESSAGE_TYPES.values())
    assert cs.can_send(other, SESSION_MESSAGES[0])  # the other may still finish what it sends
    cs.process_message(other, Close)
    assert cs.finished and not cs.failed
    cs.process_connection_lost()
    assert cs.states == {INITIATOR: CLOSED, ACCEPTOR: CLOSED}  # a clean close stays clean


@pytest.mark.parametrize("when", ["idle", "hello", "active", "half_closed"])
@pytest.mark.parametrize("who", [INITIATOR, ACCEPTOR])
def test_error_fails_both_machines(when, who) -> None:  # type: ignore[no-untyped-def]
    cs = ConnectionState()
    if when != "idle":
        cs.process_message(INITIATOR, Hello)
    if when in ("active", "half_closed"):
        cs.process_message(ACCEPTOR, Welcome)
    if when == "half_closed":
        cs.process_message(who.peer, Close)
    cs.process_message(who, Error)
    assert cs.states == {INITIATOR: ERROR, ACCEPTOR: ERROR}
    assert cs.failed and cs.finished
    assert not any(cs.can_send(r, m) for r in (INITIATOR, ACCEPTOR) for m in MESSAGE_TYPES.values())


def test_process_error_without_message() -> None:
    cs = active()
    cs.process_error(ACCEPTOR)
    assert cs.states == {INITIATOR: ERROR, ACCEPTOR: ERROR}


@pytest.mark.parametrize("when", ["idle", "hello", "active", "half_closed"])
def test_connection_lost_before_both_closed_is_an_error(when: str) -> None:
    cs = ConnectionState()
    if when != "idle":
        cs.process_message(INITIATOR, Hello)
    if when in ("active", "half_closed"):
        cs.process_message(ACCEPTOR, Welcome)
    if when == "half_closed":
        cs.process_message(INITIATOR, Close)
    cs.process_connection_lost()
    assert cs.states == {INITIATOR: ERROR, ACCEPTOR: ERROR}


def test_table_is_complete_and_role_symmetric_after_handshake() -> None:
    for role in (INITIATOR, ACCEPTOR):
        assert set(TRANSITIONS[role]) == {IDLE, HELLO_SENT, HELLO_RECEIVED, ACTIVE, CLOSED, ERROR} - (
            {HELLO_RECEIVED} if role is INITIATOR else {HELLO_SENT})
        assert TRANSITIONS[role][CLOSED] == {} and TRANSITIONS[role][ERROR] == {}
    assert TRANSITIONS[INITIATOR][ACTIVE] == TRANSITIONS[ACCEPTOR][ACTIVE]
    assert set(SESSION_MESSAGES) | {Hello, Welcome, Error, Close} == set(MESSAGE_TYPES.values())


def test_docs_carry_the_generated_diagrams() -> None:
    text = DOCS.read_text()
    for role in (INITIATOR, ACCEPTOR):
        assert diagram(role) in text, f"regenerate the {role.value} diagram in docs/protocol.md"
