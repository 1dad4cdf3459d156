"""The codec: every message round-trips; every bad payload is a typed ProtocolError."""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidesync.core.transaction import Transaction
from tidesync.errors import ProtocolError, UsageError, VersionMismatchError
from tidesync.protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FLAG_ZLIB,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Ack,
    Changes,
    Error,
    ErrorAction,
    ErrorCode,
    Hello,
    Message,
    Ping,
    Progress,
    decode,
    encode,
)
from tidesync.protocol import codec

from .strategies import messages, transactions

RID = "00000000000000aa"

def fast(max_examples: int = 100) -> settings:
    """Hypothesis settings for these tests (no deadline: CI machines are busy)."""
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def envelope(*items: Any) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)  # type: ignore[no-any-return]


def raw(tag: str, body: Any, *, version: int = PROTOCOL_VERSION, flags: int = 0) -> bytes:
    return envelope(version, tag, flags, body)


def code_of(payload: bytes, **kwargs: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(payload, **kwargs)
    return info.value.code


# ---------------------------------------------------------------- round trips


@fast()
@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    assert decode(encode(message)) == message


@fast(50)
@given(messages)
def test_round_trip_with_compression_forced(message: Message) -> None:
    payload = encode(message, compress_threshold=0)
    assert decode(payload) == message


@fast(50)
@given(messages)
def test_encoding_is_deterministic(message: Message) -> None:
    assert encode(message) == encode(decode(encode(message)))


@fast(25)
@given(st.lists(transactions(), min_size=1, max_size=3))
def test_changes_round_trip_preserves_transactions(txns: list[Any]) -> None:
    entries = tuple((i + 1, t) for i, t in enumerate(txns))
    message = Changes(0, len(txns), len(txns), entries, Progress(len(txns), len(txns), 0, 0))
    decoded = decode(encode(message))
    assert isinstance(decoded, Changes)
    assert decoded.transactions == txns
    assert [t.to_wire() for t in decoded.transactions] == [t.to_wire() for t in txns]


@fast(25)
@given(st.lists(transactions(), min_size=1, max_size=20), st.integers(0, 2**40), st.booleans())
def test_changes_of_log_entries_splice_their_stored_bytes_into_the_same_payload(
        txns: list[Any], start: int, forced: bool) -> None:
    """Entries read from a log carry their stored msgpack (``Transaction.packed``); the
    payload made by splicing it in is byte for byte the one encoding them would give."""
    from tidesync.core.transaction import Transaction

    stored = [Transaction.from_stored(t.to_wire(), msgpack.packb(t.to_wire(), use_bin_type=True)) for t in txns]
    entries = tuple((start + i + 1, t) for i, t in enumerate(stored))
    plain = tuple((start + i + 1, t) for i, t in enumerate(txns))
    head = start + len(txns) + 5
    threshold = 0 if forced else None
    for n in (1, len(entries)):
        spliced = Changes(start, start + n, head, entries[:n], Progress(n, 9, 100, 200))
        rebuilt = Changes(start, start + n, head, plain[:n], Progress(n, 9, 100, 200))
        assert encode(spliced, compress_threshold=threshold) == encode(rebuilt, compress_threshold=threshold)
        assert decode(encode(spliced)) == rebuilt


def test_a_spliced_changes_body_counts_its_entries_in_every_msgpack_array_size() -> None:
    from tidesync.core.operations import DeleteDoc
    from tidesync.core.transaction import Transaction

    for n in (15, 16, 65_535, 65_536):
        ops = (DeleteDoc("Doc", "k", "0" * 16 + "01" + RID, ""),)
        t = Transaction(ops[0].stamp, RID, ops[0].stamp, (), ops)
        stored = Transaction.from_stored(t.to_wire(), msgpack.packb(t.to_wire(), use_bin_type=True))
        spliced = Changes(0, n, n, tuple((i + 1, stored) for i in range(n)))
        rebuilt = Changes(0, n, n, tuple((i + 1, t) for i in range(n)))
        assert encode(spliced, compress_threshold=None, max_size=1 << 30) == \
            encode(rebuilt, compress_threshold=None, max_size=1 << 30)


@fast(300)
@given(st.one_of(st.integers(min_value=-(1 << 70), max_value=1 << 70),
                 st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x100000000,
                                  (1 << 63) - 1, (1 << 64) - 1, 1 << 64, -1, -32, -33])))
def test_a_changes_bodys_ints_are_packed_as_msgpack_packs_them(n: int) -> None:
    if -(1 << 63) <= n < 1 << 64:
        assert codec._uint(n) == msgpack.packb(n)
    assert codec._uint(True) == msgpack.packb(True)


@fast()
@given(st.lists(transactions(), min_size=1, max_size=4),
       st.integers(min_value=0, max_value=(1 << 63) - 14), st.integers(min_value=0, max_value=8),
       st.tuples(*[st.integers(min_value=0, max_value=(1 << 63) - 1)] * 4))
def test_a_changes_body_is_the_msgpack_of_its_wire_form(txns: list[Any], start: int, gap: int,
                                                        progress: tuple[int, int, int, int]) -> None:
    """Spliced or not, seqs and progress of any size: the very bytes ``packb(to_body())`` gives."""
    entries = tuple((start + i + 1, t) for i, t in enumerate(txns))
    stored = tuple((seq, Transaction.from_stored(t.to_wire(), msgpack.packb(t.to_wire(), use_bin_type=True)))
                   for seq, t in entries)
    for batch in (entries, stored):
        m = Changes(start, start + len(txns) + gap, start + len(txns) + gap + 1, batch, Progress(*progress))
        assert codec._changes_body(m) == msgpack.packb(m.to_body(), use_bin_type=True)
        assert encode(m, compress_threshold=None) == msgpack.packb(
            [PROTOCOL_VERSION, "changes", 0, m.to_body()], use_bin_type=True)


def test_large_bodies_are_compressed_and_small_ones_not() -> None:
    small = encode(Ping(1))
    assert msgpack.unpackb(small)[2] == 0
    big = Hello(RID, "x" * 50_000)
    payload = encode(big)
    assert msgpack.unpackb(payload)[2] == FLAG_ZLIB
    assert len(payload) < 1_000
    assert decode(payload) == big
    assert msgpack.unpackb(encode(big, compress_threshold=None))[2] == 0


def test_envelope_shape_is_version_type_flags_body() -> None:
    assert msgpack.unpackb(encode(Ack(7))) == [PROTOCOL_VERSION, "ack", 0, {"seq": 7}]


def test_tags_are_unique_and_registered() -> None:
    assert set(MESSAGE_TYPES) == {
        "hello", "welcome", "changes", "descriptors", "ack", "snapshot", "compensating_write",
        "subscribe", "subscription_state", "view_update", "view_ack", "error", "ping", "pong", "close"}


def test_unknown_body_keys_are_ignored() -> None:
    assert decode(raw("ack", {"seq": 3, "future_field": [1, 2]})) == Ack(3)


# ---------------------------------------------------------------- local misuse


def test_encoding_a_message_over_the_limit_is_a_usage_error() -> None:
    with pytest.raises(UsageError) as info:
        encode(Hello(RID, "x" * 2000), max_size=1000, compress_threshold=None)
    assert info.value.code == "message_too_large"


def test_constructors_validate() -> None:
    with pytest.raises(ValueError):
        Ack(-1)
    with pytest.raises(ValueError):
        Ack(True)
    with pytest.raises(ValueError):
        Changes(5, 4, 6)
    with pytest.raises(ValueError):
        Hello("not-a-replica")
    with pytest.raises(ValueError):
        Hello(RID, checkpoint=3)  # a checkpoint needs the acceptor it refers to
    with pytest.raises(ValueError):
        Hello(RID, scope={"everything": True})
    with pytest.raises(ValueError):
        Error("")


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "malformed_message"),
        (b"\xc1", "malformed_message"),                      # never-used msgpack byte
        (b"\x93\x01", "malformed_message"),                  # truncated array
        (envelope(1, "ack", 0, {"seq": 1}) + b"\x00", "malformed_message"),  # trailing bytes
        (msgpack.packb({"v": 1}), "malformed_message"),       # not an array
        (msgpack.packb([]), "malformed_message"),
        (msgpack.packb(["1", "ack", 0, {}]), "malformed_message"),  # version not an int
        (envelope(1, "ack", 0), "malformed_message"),         # three items
        (envelope(1, 7, 0, {}), "malformed_message"),         # tag not a str
        (envelope(1, "ack", 2, {"seq": 1}), "malformed_message"),   # unknown flag
        (envelope(1, "ack", "0", {"seq": 1}), "malformed_message"),  # flags not an int
        (envelope(1, "ack", 0, [1]), "malformed_message"),    # body not a map
        (envelope(1, "bogus", 0, {}), "unknown_message_type"),
        (raw("ack", {}), "malformed_message"),                # missing field
        (raw("ack", {"seq": "1"}), "malformed_message"),      # wrong type
        (raw("ack", {"seq": -1}), "malformed_message"),       # out of range
        (raw("ack", {"seq": True}), "malformed_message"),     # bool is not an int
        (raw("ack", {"seq": 2**64 - 1}), "malformed_message"),  # beyond int64
        (raw("ping", {"nonce": 1, "x": float("nan")}), "malformed_message"),
        (raw("ping", {"nonce": 1, "x": b"bin"}), "malformed_message"),  # bin in a body
        (raw("ping", {"nonce": 1, "x": msgpack.ExtType(5, b"x")}), "malformed_message"),
        (msgpack.packb([1, "ping", 0, {1: 2}]), "malformed_message"),  # int map key
        (raw("changes", {"from_seq": 5, "to_seq": 3, "head": 9}), "malformed_message"),
        (raw("changes", {"from_seq": 0, "to_seq": 3, "head": 3, "entries": [[1, {"id": "x"}]]}),
         "malformed_message"),
        (raw("changes", {"from_seq": 0, "to_seq": 3, "head": 3, "entries": [[5, {}]]}),
         "malformed_message"),
        (raw("hello", {"replica_id": "ZZ"}), "malformed_message"),
        (raw("hello", {"replica_id": RID, "scope": {"partition": "x"}}), "malformed_message"),
        (raw("error", {"code": "x", "action": "panic"}), "malformed_message"),
        (raw("subscription_state", {"set_id": 1, "version": 1, "state": "maybe"}), "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["c", "k", {"live": True}]], "as_of_seq": 1,
                          "done": True}), "malformed_message"),
        # snapshot and view_update documents are checked once, in the body: still refused
        (raw("snapshot", {"page": 0, "docs": [["c", "k", {"epoch": "", "live": True, "body": {"x": 2**64 - 1},
                                                          "meta": {}}]], "as_of_seq": 1, "done": True}),
         "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["c", "k", {"epoch": "", "live": True, "body": {},
                                                          "meta": {"x": float("inf")}}]], "as_of_seq": 1,
                          "done": True}), "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["c", b"k", {"epoch": "", "live": True, "body": {}, "meta": {}}]],
                          "as_of_seq": 1, "done": True}), "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["", "k", {"epoch": "", "live": True, "body": {}, "meta": {}}]],
                          "as_of_seq": 1, "done": True}), "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["c", "k", {"epoch": "x", "live": True, "body": {}, "meta": {}}]],
                          "as_of_seq": 1, "done": True}), "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["c", "k", ["epoch"]]], "as_of_seq": 1, "done": True}),
         "malformed_message"),
        (raw("view_update", {"view_seq": 1, "enter": [["c", "k", {"epoch": "", "live": 1, "body": {},
                                                                  "meta": {}}]]}), "malformed_message"),
        # the JSON-text form of snapshot documents: malformed or non-plain JSON is refused
        *[(raw("snapshot", {"page": 0, "docs": [["c", "k", "", True, body, meta]], "as_of_seq": 1, "done": True}),
           "malformed_message") for body, meta in [
            ("{", "{}"), ("[]", "{}"), ("{}", "1"), ({}, "{}"), ("{}", None),
            ('{"x":NaN}', "{}"), ('{"x":Infinity}', "{}"), ("{}", '{"x":-Infinity}'),
            ('{"x":1e999}', "{}"), ('{"x":18446744073709551615}', "{}"),
            ('{"x":' + "[" * 70 + "]" * 70 + "}", "{}"), ('{"x":' + "[" * 5000 + "]" * 5000 + "}", "{}"),
            ('{"x":1} trailing', "{}"), ('{"x":1,"x":2}', "{}"), ('{"x":{"y":1,"y":1}}', "{}"),
            ("{}", '{"x":"' + "0" * 34 + '","x":"' + "0" * 34 + '"}')]],
        (raw("snapshot", {"page": 0, "docs": [["c", "k", "x", True, "{}", "{}"]], "as_of_seq": 1, "done": True}),
         "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["c", "k", "", 1, "{}", "{}"]], "as_of_seq": 1, "done": True}),
         "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["", "k", "", True, "{}", "{}"]], "as_of_seq": 1, "done": True}),
         "malformed_message"),
        (raw("snapshot", {"page": 0, "docs": [["c", 2**64 - 1, "", True, "{}", "{}"]], "as_of_seq": 1,
                          "done": True}), "malformed_message"),
        (raw("hello", {"replica_id": RID, "features": "snapshot_json"}), "malformed_message"),
        (raw("hello", {"replica_id": RID, "features": [1]}), "malformed_message"),
        (raw("welcome", {"replica_id": RID, "features": [""]}), "malformed_message"),
        (raw("ack", b"\x00\x01", flags=FLAG_ZLIB), "bad_compression"),
        (raw("ack", {"seq": 1}, flags=FLAG_ZLIB), "malformed_message"),  # flagged but a map
    ],
)
def test_malformed_payloads_raise_typed_errors(payload: bytes, code: str) -> None:
    assert code_of(payload) == code


@fast(300)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64) | st.floats()
    | st.text(max_size=3) | st.binary(max_size=2) | st.tuples(st.integers(0, 1)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2) | st.integers(0, 2), inner,
                                                                 max_size=3),
    max_leaves=20))
def test_check_plain_fast_path_agrees_with_the_full_walk(value: Any) -> None:
    from tidesync.protocol import messages

    try:
        messages._check_plain_walk(value, "value")
        ok = True
    except ValueError:
        ok = False
    if messages._plain_fast(value):
        assert ok, "the fast path accepted a value the full walk refuses"


def test_check_plain_depth_limit_is_exact() -> None:
    from tidesync.protocol.messages import MAX_DEPTH, check_plain

    value: Any = 1
    for i in range(MAX_DEPTH):
        value = [value] if i % 2 else {"k": value}
    check_plain(value)
    with pytest.raises(ValueError, match="deep"):
        check_plain([value])


def test_snapshot_documents_in_json_text_form_round_trip_and_keep_their_text() -> None:
    from tidesync.protocol import Snapshot, SnapshotDoc

    state = {"epoch": "", "live": True, "body": {"t": "é", "n": 1, "f": 0.5, "l": [1, {"a": None}]},
             "meta": {"*": "0" * 18 + "a" * 16}}
    docs = (SnapshotDoc("c", "k1", state),
            SnapshotDoc.from_json_form("c", {"$oid": "0" * 24}, "", False, "{}", "{}"))
    message = Snapshot(0, docs, 5, True, Progress(2, 2), json_docs=True)
    decoded = decode(encode(message))
    assert decoded == message and decoded.json_docs
    assert [d.state for d in decoded.docs] == [d.state for d in docs]
    assert decoded.docs[0].json_form == ("", True, '{"t":"é","n":1,"f":0.5,"l":[1,{"a":null}]}',
                                         '{"*":"' + "0" * 18 + "a" * 16 + '"}')
    # a receiver also takes the map form, and both forms in one page
    mixed = raw("snapshot", {"page": 0, "as_of_seq": 1, "done": True,
                             "docs": [["c", 1, state], ["c", 2, "", True, '{"n":1}', "{}"]]})
    assert [d.state["body"] for d in decode(mixed).docs] == [state["body"], {"n": 1}]


@pytest.mark.parametrize("meta_json", [
    '{"*":"' + "0" * 18 + "a" * 16 + '"}',      # a fresh document's compact meta (read directly)
    '{"*":"' + "Z" * 34 + '"}',                 # same length, not a stamp: parsed as JSON
    '{"*":"' + "0" * 17 + 'a' * 16 + '"} ',      # trailing space: parsed as JSON
    '{"*":"' + "0" * 18 + "a" * 16 + '","x":1}',
])
def test_snapshot_meta_json_reads_as_json_would(meta_json: str) -> None:
    import json

    payload = raw("snapshot", {"page": 0, "as_of_seq": 1, "done": True,
                               "docs": [["c", 1, "", True, "{}", meta_json]]})
    [doc] = decode(payload).docs
    assert doc.state["meta"] == json.loads(meta_json)


_FRESH_META = '{"*":"' + "0" * 18 + "a" * 16 + '"}'
_GOOD_JSON_DOC = ["c", "good", "", True, '{"n":1}', _FRESH_META]


@pytest.mark.parametrize("bad", [
    ["c", "k", "", True, body, _FRESH_META] for body in [
        "{", "[]", "1", "null", {}, None, '{"x":NaN}', '{"x":Infinity}', '{"x":1e999}',
        '{"x":18446744073709551615}', '{"x":' + "[" * 70 + "]" * 70 + "}",
        '{"x":' + "[" * 5000 + "]" * 5000 + "}", '{"x":1} trailing', '{"x":1,"x":2}', '{"x":1, "x":1}',
        '{"x":"\\":","x":1}', '{"x":{"y":1,"y":2}}', '{"x":[{"y":1,"y":2}]}']
] + [
    ["c", "k", "x", True, "{}", _FRESH_META], ["c", "k", "", 1, "{}", _FRESH_META],
    ["", "k", "", True, "{}", _FRESH_META], [1, "k", "", True, "{}", _FRESH_META],
    ["c", "k", "", True, "{}", '{"*":"' + "Z" * 34 + '"'], ["c", "k", "", True, "{}", b"x" * 42],
    ["c", "k", "", True, "{}"], ["c", "k", {"epoch": "x", "live": True, "body": {}, "meta": {}}], "doc",
])
def test_a_bad_json_text_snapshot_document_anywhere_in_a_page_is_refused(bad: Any) -> None:
    # The receiver checks a page's common documents inline (the first one decides that the
    # page is in the JSON-text form): a bad one is refused wherever it stands.
    for docs in ([bad], [_GOOD_JSON_DOC, bad], [_GOOD_JSON_DOC, _GOOD_JSON_DOC, bad, _GOOD_JSON_DOC]):
        payload = raw("snapshot", {"page": 0, "docs": docs, "as_of_seq": 1, "done": True})
        assert code_of(payload) == "malformed_message", docs


def test_a_page_of_json_text_documents_decodes_as_each_document_alone_would() -> None:
    from tidesync.protocol import SnapshotDoc

    state = {"epoch": "", "live": True, "body": {"n": 1}, "meta": {"*": "0" * 18 + "a" * 16}}
    docs = [_GOOD_JSON_DOC, ["c", 2, "0" * 18 + "b" * 16, False, "{}", "{}"],
            ["c", 3, "", True, '{"l":[1,{"a":null}],"s":"\u00e9"}', _FRESH_META], ["c", 4, state],
            ["c", 5, "", True, '{ "n" : 1 }', '{"*":"' + "0" * 18 + 'a' * 16 + '"} ']]
    decoded = decode(raw("snapshot", {"page": 0, "docs": docs, "as_of_seq": 1, "done": True}))
    alone = [SnapshotDoc.from_json_wire(d) if len(d) == 6 else SnapshotDoc.from_wire(d) for d in docs]
    assert list(decoded.docs) == alone
    assert [d.json_form for d in decoded.docs] == [d.json_form for d in alone]


def test_hello_and_welcome_features_are_optional_and_round_trip() -> None:
    from tidesync.protocol import Welcome

    assert "features" not in Hello(RID).to_body()  # an older peer sees the body it knows
    assert decode(raw("hello", {"replica_id": RID})).features == ()
    hello = Hello(RID, features=("snapshot_json", "later"))
    assert decode(encode(hello)) == hello
    welcome = Welcome(RID, features=("snapshot_json",))
    assert decode(encode(welcome)) == welcome


def test_deep_nesting_is_refused() -> None:
    body: Any = 1
    for _ in range(200):
        body = [body]
    assert code_of(raw("ping", {"nonce": 1, "x": body})) == "malformed_message"
    # far deeper than msgpack's own stack: still a ProtocolError, not a crash
    assert code_of(b"\x91" * 100_000 + b"\xc0") == "malformed_message"


def test_oversized_payload_is_refused_before_parsing() -> None:
    payload = encode(Hello(RID, "x" * 5000), compress_threshold=None)
    assert code_of(payload, max_size=1000) == "message_too_large"
    assert decode(payload, max_size=len(payload)) == Hello(RID, "x" * 5000)


def test_zip_bomb_is_capped() -> None:
    inner = msgpack.packb({"nonce": 1, "pad": "0" * (DEFAULT_MAX_MESSAGE_SIZE + 1024)})
    bomb = zlib.compress(inner, 1)
    payload = raw("ping", bomb, flags=FLAG_ZLIB)
    assert len(payload) < DEFAULT_MAX_MESSAGE_SIZE // 100
    assert code_of(payload) == "message_too_large"
    assert code_of(payload, max_size=1 << 20) == "message_too_large"


def test_truncated_and_trailing_compressed_streams() -> None:
    packed = zlib.compress(msgpack.packb({"seq": 1}))
    assert decode(raw("ack", packed, flags=FLAG_ZLIB)) == Ack(1)
    assert code_of(raw("ack", packed[:-3], flags=FLAG_ZLIB)) == "bad_compression"
    assert code_of(raw("ack", packed + b"junk", flags=FLAG_ZLIB)) == "bad_compression"
    assert code_of(raw("ack", zlib.compress(b"\xc1"), flags=FLAG_ZLIB)) == "malformed_message"


def test_every_truncation_of_a_valid_payload_is_a_protocol_error() -> None:
    payload = encode(Hello(RID, "token", {"partition": {"key": "_partition", "value": "p"}}))
    for n in range(len(payload)):
        with pytest.raises(ProtocolError):
            decode(payload[:n])


def test_other_version_is_a_version_mismatch() -> None:
    payload = raw("ack", {"seq": 1}, version=PROTOCOL_VERSION + 1)
    with pytest.raises(VersionMismatchError) as info:
        decode(payload)
    assert info.value.code == ErrorCode.VERSION_MISMATCH == "version_mismatch"
    assert info.value.peer_version == PROTOCOL_VERSION + 1  # type: ignore[attr-defined]
    # even a shape this version cannot read is reported as a version problem first
    with pytest.raises(VersionMismatchError):
        decode(envelope(PROTOCOL_VERSION + 1, "something", {"new": "layout"}))


def test_an_error_from_any_version_is_readable() -> None:
    payload = raw("error", {"code": "version_mismatch", "message": "speak 7", "action": "stop"},
                  version=7)
    assert decode(payload) == Error("version_mismatch", "speak 7", ErrorAction.STOP)


def test_error_defaults_its_action_from_the_code() -> None:
    assert decode(raw("error", {"code": "token_expired"})).action is ErrorAction.REAUTHENTICATE  # type: ignore[union-attr]
    assert decode(raw("error", {"code": "from_the_future"})).action is ErrorAction.RETRY  # type: ignore[union-attr]


@fast()
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_anything_but_protocol_errors(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass


@fast(60)
@given(messages, st.data())
def test_corrupted_payloads_decode_or_raise_protocol_error(message: Message, data: st.DataObject) -> None:
    payload = bytearray(encode(message, compress_threshold=data.draw(st.sampled_from([0, None]))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    try:
        result = decode(bytes(payload))
    except ProtocolError:
        return
    assert type(result) in MESSAGE_TYPES.values()


def test_default_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 16 * 1024 * 1024


def test_a_page_of_common_json_text_documents_is_checked_as_columns_with_the_same_result() -> None:
    # A page whose documents are all in the common form (compact fresh meta, flat body) is
    # checked column by column (DocColumns); any other page goes document by document. Either
    # way: the same documents, or malformed_message.
    import json
    import random

    from tidesync.protocol import DocColumns, Snapshot, SnapshotDoc

    def meta(i: int) -> str:
        return '{"*":"' + f"{i:018x}" + "a" * 16 + '"}'

    def common(i: int) -> list[Any]:
        body = {"_id": f"k{i}", "n": i, "f": i / 4, "b": i % 2 == 0, "z": None, "s": "é\"\\"}
        key = [f"k{i}", i, {"$oid": f"{i:024x}"}, [1, "x"]][i % 4]  # any plain key
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False) if i % 7 else json.dumps(body)
        return ["c" if i % 3 else "d", key, "" if i % 4 else "0" * 18 + "b" * 16, i % 5 != 0,
                text, meta(i)]

    uncommon = [  # valid, not in the common form
        lambda d: d[:4] + ['{"l":[1,2]}', d[5]], lambda d: d[:4] + ['{"m":{}}', d[5]],
        lambda d: d[:5] + [meta(1).upper()],  # "*" is no stamp: not a fresh document's meta
        lambda d: d[:5] + ['{"r":{"n":"' + "0" * 18 + 'a' * 16 + '"}}'], lambda d: d[:5] + ["{}"],
    ]
    also_common = [  # flat, checked the long way (what the text alone cannot rule out)
        lambda d: d[:4] + ['{"s":"{x}","t":"a]"}', d[5]], lambda d: d[:4] + ['{"n":1000000000000000000}', d[5]],
        lambda d: d[:4] + ['{"n":-9223372036854775808,"f":1e100,"g":1.5E+300,"h":-2e-310}', d[5]],
    ]
    bad = [  # refused wherever they stand
        lambda d: d[:4] + ['{"x":18446744073709551616}', d[5]], lambda d: d[:4] + ['{"x":1e999}', d[5]],
        lambda d: d[:4] + ['{"x":NaN}', d[5]], lambda d: d[:4] + ["[1]", d[5]], lambda d: d[:3] + [1, *d[4:]],
        lambda d: [True, *d[1:]], lambda d: [["c"], *d[1:]], lambda d: d[:2] + [["x"], *d[3:]],
        lambda d: d[:2] + ["0" * 33 + "g", *d[3:]], lambda d: d[:5] + [meta(1)[:-2] + "x}"],
        lambda d: d[:4] + [b"{}", d[5]], lambda d: d[:5], lambda d: [d[0], float("nan"), *d[2:]],
        lambda d: [d[0], 2**64 - 1, *d[2:]], lambda d: [d[0], [1.5, float("inf")], *d[2:]],
        lambda d: d[:4] + ['{"n":9223372036854775808}', d[5]], lambda d: d[:4] + ['{"n":-1e309}', d[5]],
    ]
    rng = random.Random(3)
    for round_ in range(300):
        docs = [common(rng.randint(0, 50)) for _ in range(rng.randint(1, 8))]
        kind = round_ % 3
        if kind:
            at = rng.randrange(len(docs))
            docs[at] = rng.choice(uncommon if kind == 1 else bad)(docs[at])
        elif round_ % 2:
            at = rng.randrange(len(docs))
            docs[at] = rng.choice(also_common)(docs[at])
        payload = raw("snapshot", {"page": 0, "docs": docs, "as_of_seq": 1, "done": True})
        if kind == 2:
            assert code_of(payload) == "malformed_message", docs
            continue
        decoded = decode(payload)
        alone = [SnapshotDoc.from_json_wire(d) for d in docs]
        assert (type(decoded.docs) is DocColumns) == (kind == 0), docs
        assert list(decoded.docs) == alone and len(decoded.docs) == len(alone)
        assert [d.json_form for d in decoded.docs] == [d.json_form for d in alone]
        assert decoded == Snapshot(0, tuple(alone), 1, True, json_docs=True)
        assert decode(encode(decoded)) == decoded  # sent on as received
    # Not plain beside the documents: refused as before.
    payload = raw("snapshot", {"page": 0, "docs": [common(1)], "as_of_seq": 1, "done": True,
                               "progress": {"sent": float("nan")}})
    assert code_of(payload) == "malformed_message"
    # An int out of range beside a float equal to it is still seen.
    docs = [common(1)[:4] + ['{"x":1.8446744073709552e19}', meta(1)],
            common(2)[:4] + ['{"x":18446744073709551616}', meta(2)]]
    assert code_of(raw("snapshot", {"page": 0, "docs": docs, "as_of_seq": 1, "done": True})) == "malformed_message"


def _as_cols(docs: list[list[Any]]) -> dict[str, Any]:
    """A page of JSON-text documents as the ``cols`` map (FEATURE_SNAPSHOT_COLUMNS)."""
    import json

    sep = "\x1e"
    return {"n": len(docs), "c": sep.join(d[0] for d in docs),
            "k": json.dumps([d[1] for d in docs], separators=(",", ":")), "e": sep.join(d[2] for d in docs),
            "l": "".join("1" if d[3] else "0" for d in docs), "b": sep.join(d[4] for d in docs),
            "m": sep.join(d[5] for d in docs)}


def test_a_page_sent_as_columns_decodes_as_the_same_page_sent_as_docs() -> None:
    # A page as ``cols`` (one str per column) gives exactly what the same page as ``docs``
    # gives: the same documents (as DocColumns when all are common), or malformed_message; a
    # cols map whose columns do not fit together is malformed_message too.
    import json
    import random

    from tidesync.protocol import DocColumns, Snapshot

    def meta(i: int) -> str:
        return '{"*":"' + f"{i:018x}" + "a" * 16 + '"}'

    def common(i: int) -> list[Any]:
        body = {"_id": f"k{i}", "n": i, "f": i / 4, "b": i % 2 == 0, "z": None, "s": "é\"\\"}
        key = [f"k{i}", i, {"$oid": f"{i:024x}"}, f"q\x1e{i}"][i % 4]  # any plain key
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False) if i % 7 else json.dumps(body)
        return ["c" if i % 3 else "d", key, "" if i % 4 else "0" * 18 + "b" * 16, i % 5 != 0, text, meta(i)]

    other = [  # valid but not common, or refused: either way as the docs form decides
        lambda d: d[:4] + ['{"l":[1,2]}', d[5]], lambda d: d[:5] + ["{}"], lambda d: d[:4] + ['{"n":1e300}', d[5]],
        lambda d: d[:4] + ['{"x":18446744073709551616}', d[5]], lambda d: d[:4] + ['{"x":1e999}', d[5]],
        lambda d: d[:4] + ['{"x":NaN}', d[5]], lambda d: d[:4] + ["[1]", d[5]], lambda d: d[:4] + ["", d[5]],
        lambda d: d[:2] + ["0" * 33 + "g", *d[3:]], lambda d: d[:5] + [meta(1)[:-2] + "x}"],
        lambda d: [d[0], 2**64 - 1, *d[2:]], lambda d: d[:4] + ['{"a":1,"a":2}', d[5]],
    ]
    rng = random.Random(5)
    for round_ in range(200):
        docs = [common(rng.randint(0, 50)) for _ in range(rng.randint(1, 8))]
        if round_ % 2:
            at = rng.randrange(len(docs))
            docs[at] = rng.choice(other)(docs[at])
        rest = {"page": 0, "as_of_seq": 1, "done": True}
        as_docs = raw("snapshot", {**rest, "docs": docs})
        as_cols = raw("snapshot", {**rest, "cols": _as_cols(docs)})
        try:
            expected = decode(as_docs)
        except ProtocolError as exc:
            assert code_of(as_cols) == exc.code, docs
            continue
        decoded = decode(as_cols)
        assert type(decoded.docs) is type(expected.docs) and decoded == expected, docs
        assert [d.json_form for d in decoded.docs] == [d.json_form for d in expected.docs]
        if type(decoded.docs) is DocColumns:  # sent on as columns: the same page again
            again = Snapshot(0, decoded.docs, 1, True, json_docs=True, columns=True)
            assert "cols" in again.to_body() and decode(encode(again)) == expected
    good = _as_cols([common(1), common(2)])
    assert type(decode(raw("snapshot", {"page": 0, "cols": good, "as_of_seq": 1, "done": True})).docs) is DocColumns
    for bad in ({**good, "n": 3}, {**good, "n": 0}, {**good, "l": "12"}, {**good, "l": "1"}, {**good, "k": "[1"},
                {**good, "k": '["k1"]'}, {**good, "k": '{"a":1}'}, {**good, "b": good["b"] + "\x1e{}"},
                {**good, "c": ["c", "c"]}, {k: v for k, v in good.items() if k != "m"}, [good], "cols"):
        assert code_of(raw("snapshot", {"page": 0, "cols": bad, "as_of_seq": 1, "done": True})) == "malformed_message", bad
    both = {"page": 0, "cols": good, "docs": [common(1), common(2)], "as_of_seq": 1, "done": True}
    assert code_of(raw("snapshot", both)) == "malformed_message"


def test_a_page_whose_values_hold_the_column_separator_is_sent_as_docs() -> None:
    from tidesync.protocol import DocColumns, Snapshot

    meta = '{"*":"' + "0" * 18 + "a" * 16 + '"}'
    docs = DocColumns(["c\x1ed"], ["k"], [""], [True], ['{"a":1}'], [meta])
    body = Snapshot(0, docs, 1, True, json_docs=True, columns=True).to_body()
    assert "cols" not in body and body["docs"] == [["c\x1ed", "k", "", True, '{"a":1}', meta]]
    assert decode(encode(Snapshot(0, docs, 1, True, json_docs=True, columns=True))).docs == docs


@pytest.mark.parametrize("bodies", [
    ['{"a":"', '"}', '{"c":1},{"d":1}'],       # a string swallowing a separator, made up for
    ['{"a":"', '"}', '{"c":1}', '{"d":1}'],    # a string swallowing a separator
    ['{"a":1},{"b":2}', '{"c":3}'], ['{"a":1}', ""], ['{"a":1}', " "], ['{"a":1} {"b":1}'],
    ['{"a":1}', '{"b":NaN}'], ['{"a":"]"}'], ['{"a":"["}', '{"b":1}'], ['{"a":1}', '{"b":"x"} '],
    ['{"a":1}', '{"b":"\\u005d,\\u005b"}'], ['{"a":"', '"}'],
    # a key twice (each text alone is refused too); with a backslash, spacing, nesting, and a
    # value holding the '":' that ends a key
    ['{"a":1,"a":2}'], ['{"a":1}', '{"b":1,"b":1}'], ['{"a":1 ,"a":2}'], ['{"a":"\\"","a":2}'],
    ['{"a":{"b":1,"b":2}}'], ['{"a":"x\\":y","b":1}'], ['{"a":"x\\":y","a":1}'], ['{"a":1,"b":{"a":1}}'],
])
def test_page_bodies_parsed_together_give_what_each_alone_gives(bodies: list[str]) -> None:
    from tidesync.core.values import loads_json_strict
    from tidesync.protocol.messages import _parse_all

    try:
        alone: Any = [loads_json_strict(b) for b in bodies]
    except ValueError:
        alone = None
    assert _parse_all(bodies) == alone
    docs = [["c", i, "", True, b, _FRESH_META] for i, b in enumerate(bodies)]
    payload = raw("snapshot", {"page": 0, "docs": docs, "as_of_seq": 1, "done": True})
    if alone is None or not all(type(v) is dict for v in alone):
        assert code_of(payload) == "malformed_message"
    else:
        assert [d.state["body"] for d in decode(payload).docs] == alone


def _general_decode(payload: bytes) -> Any:
    """``decode`` without its shortcut for a plain ``ack``: the message, or the error's code."""
    saved = codec._ACK_MAX
    codec._ACK_MAX = -1
    try:
        return decode(payload)
    except ProtocolError as exc:
        return ("error", exc.code)
    finally:
        codec._ACK_MAX = saved


def _decoded(payload: bytes) -> Any:
    try:
        return decode(payload)
    except ProtocolError as exc:
        return ("error", exc.code)


@given(st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1), st.binary(max_size=3))
def test_a_plain_ack_decodes_as_the_general_path_does(seq: int, tail: bytes) -> None:
    # An Ack of any seq (some refused), its msgpack int forms, trailing or missing bytes.
    body = msgpack.packb({"seq": seq})
    head = b"\x94" + msgpack.packb(1) + msgpack.packb("ack") + msgpack.packb(0)
    for payload in (head + body, head + body + tail, (head + body)[:-1], head + body[:-1] + tail,
                    head + b"\x81\xa3seq\xcf" + seq.to_bytes(8, "big", signed=seq < 0),
                    head + b"\x81\xa3seq\xce" + (seq % 2 ** 32).to_bytes(4, "big")):
        assert _decoded(payload) == _general_decode(payload)
    if 0 <= seq <= 2 ** 63 - 1:
        assert decode(encode(Ack(seq))) == Ack(seq)


def test_an_entrys_head_is_the_same_bytes_from_the_memo_and_the_memo_starts_over() -> None:
    """A routed entry goes to many devices: the ``[seq`` of its entry is made once per seq
    (``codec._ENTRY_HEADS``); the bytes are those made without it, and the memo is bounded."""
    made = _some_txn()
    txn = Transaction.from_stored(made.to_wire(), msgpack.packb(made.to_wire(), use_bin_type=True))
    for seq in (1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF, 1 << 32, 1 << 40):
        m = Changes(seq - 1, seq, seq, ((seq, txn),))
        codec._ENTRY_HEADS.clear()
        cold = encode(m)
        assert encode(m) == cold == msgpack.packb([PROTOCOL_VERSION, "changes", 0, m.to_body()],
                                                  use_bin_type=True)
    codec._ENTRY_HEADS.update((i, b"") for i in range((1 << 16) + 1))
    m = Changes(0, 1, 1, ((1, txn),))
    assert encode(m) == msgpack.packb([PROTOCOL_VERSION, "changes", 0, m.to_body()], use_bin_type=True)
    assert len(codec._ENTRY_HEADS) == 1


def _some_txn() -> Transaction:
    from tidesync.core.clock import HybridClock
    from tidesync.core.operations import SetValue
    from tidesync.core.stamp import ZERO

    clock = HybridClock(RID, lambda: 1_700_000_000_000)
    s = clock.now()
    return Transaction(s, RID, s, (), (SetValue("Task", "t1", s, ZERO, ("n",), (), 1),))


def _says_compressed(payload: bytes) -> bool:
    """The envelope's flags as msgpack reads them (what decode acts on)."""
    try:
        envelope_ = msgpack.unpackb(payload)
    except Exception:  # noqa: BLE001 - not a payload at all
        return False
    return (isinstance(envelope_, list) and len(envelope_) == 4 and type(envelope_[2]) is int
            and 0 <= envelope_[2] < 0x80 and bool(envelope_[2] & FLAG_ZLIB))


@fast(100)
@given(messages, st.sampled_from([None, 0, 64, codec.DEFAULT_COMPRESS_THRESHOLD]))
def test_is_compressed_reads_the_envelopes_zlib_flag(message: Message, threshold: int | None) -> None:
    payload = encode(message, compress_threshold=threshold)
    compressed = codec.is_compressed(payload)
    assert compressed is _says_compressed(payload)
    assert compressed or threshold != 0 or payload == encode(message, compress_threshold=None)
    flags_at = 3 + payload[2] - 0xA0
    for n in range(min(len(payload), 24)):       # the head alone says it; never an error
        assert codec.is_compressed(payload[:n]) is (compressed and n > flags_at)


def test_is_compressed_is_false_for_parts_and_other_bytes() -> None:
    big = encode(Hello(RID, "x" * 50_000))
    assert codec.is_compressed(big)
    assert not codec.is_compressed(encode(Hello(RID, "x" * 50_000), compress_threshold=None))
    for part in codec.split(big, 100):
        assert not codec.is_compressed(part)
    assert not codec.is_compressed(raw("ack", {"seq": 1}, flags=FLAG_ZLIB | 2)[:3])
    assert codec.is_compressed(raw("ack", b"", flags=FLAG_ZLIB | 2))
    assert not codec.is_compressed(raw("ack", b"", flags=2))
    for junk in (b"", b"\x94", b"\x94\x01", b"\x94\x01\xa3ack", b"\x93\x01\xa3ack\x01", b"\x94\x01\xd9\x03ack\x01",
                 b"\x94\x01\xa3ack\xcc\x01", bytes(range(256))):
        assert codec.is_compressed(junk) is _says_compressed(junk)
