"""Messages to bytes and back: the msgpack envelope, size limits and compression.

Every message travels as one binary WebSocket message (the *payload*), a msgpack array::

    [version, type, flags, body]

``version`` (uint)
    The protocol version, :data:`PROTOCOL_VERSION`. A receiver that does not speak it answers
    ``Error(version_mismatch)`` and closes.
``type`` (str)
    The message's tag (``"hello"``, ``"changes"``...; see :mod:`tidesync.protocol.messages`).
``flags`` (uint)
    Bit 0 (:data:`FLAG_ZLIB`): ``body`` is a bin holding the zlib stream (RFC 1950) of the
    msgpack-encoded body map. Every other bit must be 0.
``body`` (map or bin)
    The message's fields, a map of plain values (str keys; no bin, no ext, finite floats,
    ints within signed 64 bits) or, with :data:`FLAG_ZLIB`, that map compressed.

A payload larger than the maximum message size travels, between peers that both announced
the ``parts`` feature, as consecutive ``part`` payloads (:func:`split`): ``[version, "part",
flags, chunk]`` with ``chunk`` a bin slice of the whole payload and flag :data:`FLAG_MORE` on
every part but the last. The receiver joins the chunks and decodes the result as one payload
(:func:`part_of` reads one part).

The envelope shape and the ``error`` body are frozen for all versions: a decoder accepts an
``error`` message whatever its version, so that a peer always learns why it was refused.

:func:`decode` never trusts its input: it caps the payload size, the decompressed size (a
zip bomb cannot expand past the cap), string, array and map lengths (msgpack is told to refuse
lengths larger than the payload itself), and nesting depth; it refuses ext types and bin
values in bodies. Every failure raises :class:`~tidesync.errors.ProtocolError` whose ``code`` is
an :class:`~tidesync.protocol.codes.ErrorCode` value (or its subclass
:class:`~tidesync.errors.VersionMismatchError`).
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack

from ..errors import ProtocolError, UsageError, VersionMismatchError
from .codes import ErrorCode
from .messages import MESSAGE_TYPES, Ack, Changes, Error, Message, Snapshot, ViewUpdate, check_plain

__all__ = [
    "PROTOCOL_VERSION",
    "FLAG_ZLIB",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_COMPRESS_THRESHOLD",
    "encode",
    "decode",
    "encoded_size",
    "FLAG_MORE",
    "PART_TAG",
    "DEFAULT_MAX_ASSEMBLED_SIZE",
    "split",
    "part_of",
    "is_compressed",
    "is_part",
]

#: The protocol version this module speaks.
PROTOCOL_VERSION = 1
#: Envelope flag: the body is zlib-compressed.
FLAG_ZLIB = 1
#: Default cap on a payload, and separately on a decompressed body (16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Flag of a ``part`` payload: more parts of the same payload follow.
FLAG_MORE = 2
#: The type of a payload that carries a slice of a larger one (feature ``parts``).
PART_TAG = "part"
#: Default cap on a payload received in parts, and on its decompressed body (64 MiB).
DEFAULT_MAX_ASSEMBLED_SIZE = 64 * 1024 * 1024
#: Default size of an encoded body from which it is compressed (4 KiB).
DEFAULT_COMPRESS_THRESHOLD = 4 * 1024
#: zlib level of a compressed body. Level 1 costs about a third of level 6's CPU per byte
#: (which a snapshot page or an upload batch spends on every document) for about 15% more
#: bytes; any level decompresses the same way.
COMPRESS_LEVEL = 1

_FIXARRAY_4 = b"\x94"


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _unpack(data: bytes, what: str) -> Any:
    n = len(data)
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, ext_hook=_reject_ext,
            max_str_len=n, max_bin_len=n, max_array_len=n, max_map_len=n // 2, max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise ProtocolError(f"{what} has trailing bytes", code=ErrorCode.MALFORMED_MESSAGE) from None
    except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, UnicodeDecodeError...
        raise ProtocolError(f"{what} is not valid msgpack: {exc}",
                            code=ErrorCode.MALFORMED_MESSAGE) from exc


def _inflate(data: bytes, max_size: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_size + 1)
    except zlib.error as exc:
        raise ProtocolError(f"compressed body is not valid zlib data: {exc}",
                            code=ErrorCode.BAD_COMPRESSION) from exc
    if len(out) > max_size or inflater.unconsumed_tail:
        raise ProtocolError(f"decompressed body exceeds {max_size} bytes",
                            code=ErrorCode.MESSAGE_TOO_LARGE)
    if not inflater.eof or inflater.unused_data:
        raise ProtocolError("compressed body is truncated or has trailing bytes",
                            code=ErrorCode.BAD_COMPRESSION)
    return out


def encoded_size(wire: Any) -> int:
    """The msgpack-encoded size in bytes of a wire form (e.g. ``txn.to_wire()``).

    Replica implementations use it to honour ``max_bytes`` and to report sizes.
    """
    packed: bytes = msgpack.packb(wire, use_bin_type=True)
    return len(packed)


_CHANGES_KEYS = [msgpack.packb(k) for k in ("from_seq", "to_seq", "head", "entries", "progress", "view")]
_FIXINTS = [bytes((n,)) for n in range(0x80)]
#: How a ``progress`` map begins, then each of its keys after the first (Progress.to_wire's order).
_PROGRESS_KEYS = [b"\x84" + msgpack.packb("sent"), *(msgpack.packb(k) for k in ("total", "sent_bytes", "total_bytes"))]


def _uint(n: int) -> bytes:
    """``msgpack.packb(n)`` for an int (the smallest form, as msgpack packs it), without making
    a packer per call: the seqs of a ``changes`` batch, one per entry."""
    if type(n) is not int or n < 0 or n >= 1 << 64:
        return msgpack.packb(n)  # type: ignore[no-any-return]
    if n < 0x80:
        return _FIXINTS[n]
    if n < 0x100:
        return b"\xcc" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xcd" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xce" + n.to_bytes(4, "big")
    return b"\xcf" + n.to_bytes(8, "big")


#: ``[seq, `` as msgpack (how an entry of a ``changes`` body begins), by seq: a routed entry goes
#: to many devices, in one round. Started over once it holds 65,536.
_ENTRY_HEADS: dict[int, bytes] = {}


def _changes_body(message: Changes) -> bytes:
    """``packb(message.to_body())``, where each entry whose transaction carries its packed form
    (log entries, ``Transaction.packed``) is spliced in as those bytes, not decoded and encoded
    again; any other entry (one stored with columns records, say) is packed from its
    ``wire()``, the map ``to_body``'s ``to_wire()`` builds. The same bytes, key for key."""
    k_from, k_to, k_head, k_entries, k_progress, k_view = _CHANGES_KEYS
    entries = message.entries
    n = len(entries)
    header = (bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big") if n < 0x10000
              else b"\xdd" + n.to_bytes(4, "big"))
    pack = msgpack.packb
    parts = [b"\x85" if message.view is None else b"\x86", k_from, _uint(message.from_seq), k_to,
             _uint(message.to_seq), k_head, _uint(message.head), k_entries, header]
    append = parts.append
    heads = _ENTRY_HEADS
    if len(heads) > 1 << 16:
        heads.clear()
    for seq, txn in entries:
        head: bytes | None
        if type(seq) is not int:    # (True == 1: not the same bytes)
            head = b"\x92" + _uint(seq)
        else:
            head = heads.get(seq)
            if head is None:
                # (_uint(seq), inline for the usual seqs: 0x100 <= seq < 2**32)
                head = heads[seq] = (b"\x92\xcd" + seq.to_bytes(2, "big") if 0x100 <= seq < 0x10000
                                     else b"\x92\xce" + seq.to_bytes(4, "big") if 0x10000 <= seq < 0x100000000
                                     else b"\x92" + _uint(seq))
        append(head)
        data = txn.packed()
        append(data if data is not None else pack(txn.wire(), use_bin_type=True))
    append(k_progress)
    progress = message.progress
    append(b"".join((_PROGRESS_KEYS[0], _uint(progress.sent), _PROGRESS_KEYS[1], _uint(progress.total),
                     _PROGRESS_KEYS[2], _uint(progress.sent_bytes), _PROGRESS_KEYS[3], _uint(progress.total_bytes))))
    if message.view is not None:
        parts.append(k_view)
        parts.append(pack(message.view.to_wire(), use_bin_type=True))
    return b"".join(parts)


#: ``[version, type, flags`` as msgpack (the envelope before the body), by (type, flags).
_HEADERS: dict[tuple[str, int], bytes] = {}


def encode(message: Message, *, compress_threshold: int | None = DEFAULT_COMPRESS_THRESHOLD,
           max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Encode a message as one payload.

    Args:
        message: the message.
        compress_threshold: compress a body whose encoding is at least this many bytes (when
            that makes it smaller); None never compresses.
        max_size: the largest payload allowed.

    Returns:
        The payload, to send as one binary WebSocket message.

    Raises:
        UsageError: (code ``message_too_large``) the payload would exceed ``max_size``; send
            smaller batches. (code ``usage``) the message holds something msgpack cannot
            encode, a bug in the caller.
    """
    try:
        body: bytes = (_changes_body(message) if type(message) is Changes and message.entries
                       else msgpack.packb(message.to_body(), use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise UsageError(f"cannot encode {type(message).__name__}: {exc}") from exc
    flags = 0
    if compress_threshold is not None and len(body) >= compress_threshold:
        packed = zlib.compress(body, COMPRESS_LEVEL)
        if len(packed) < len(body):
            body, flags = msgpack.packb(packed, use_bin_type=True), FLAG_ZLIB
    header = _HEADERS.get((message.TAG, flags))
    if header is None:
        header = _HEADERS[(message.TAG, flags)] = (_FIXARRAY_4 + msgpack.packb(PROTOCOL_VERSION)
                                                   + msgpack.packb(message.TAG) + msgpack.packb(flags))
    payload = header + body
    if len(payload) > max_size:
        raise UsageError(f"a {message.TAG} message of {len(payload)} bytes exceeds the "
                         f"{max_size}-byte limit", code=ErrorCode.MESSAGE_TOO_LARGE)
    return payload


#: ``[1, "part", ...`` as msgpack: how a part payload begins (the version is a positive fixint).
_PART_PREFIX: bytes = b"\x94" + msgpack.packb(PROTOCOL_VERSION) + msgpack.packb(PART_TAG)
#: Bytes of a part's envelope around its chunk, at most: prefix, flags, bin32 header.
_PART_OVERHEAD = len(_PART_PREFIX) + 1 + 5


def split(payload: bytes, max_size: int) -> list[bytes]:
    """``payload`` as ``part`` payloads of at most ``max_size`` bytes each, to send in order
    (the peer must have announced the ``parts`` feature). A payload that fits is returned
    alone, unchanged."""
    if len(payload) <= max_size:
        return [payload]
    step = max_size - _PART_OVERHEAD
    if step < 1:
        raise UsageError(f"a maximum message size of {max_size} bytes leaves no room for a part")
    view = memoryview(payload)
    n = len(payload)
    return [_PART_PREFIX + msgpack.packb(FLAG_MORE if at + step < n else 0)
            + msgpack.packb(bytes(view[at:at + step]), use_bin_type=True)
            for at in range(0, n, step)]


def is_compressed(payload: bytes | bytearray | memoryview) -> bool:
    """Whether ``payload``'s envelope says its body is zlib-compressed (:data:`FLAG_ZLIB`),
    read from its first bytes without decoding it: its body is then larger than the payload
    (an upload batch of 500 one-field edits, 115 KB of msgpack, travels as 12 KB). False for
    anything else (a ``part``, a malformed payload)."""
    if len(payload) < 4 or payload[0] != 0x94:
        return False
    n = payload[2] - 0xA0         # the type, a fixstr
    if not 0 <= n < 32 or len(payload) <= 3 + n:
        return False
    flags = payload[3 + n]        # a positive fixint
    return flags < 0x80 and bool(flags & FLAG_ZLIB)


def is_part(payload: bytes | bytearray | memoryview) -> bool:
    """Whether ``payload`` says it is a ``part`` payload (without checking the rest)."""
    return bytes(payload[:len(_PART_PREFIX)]) == _PART_PREFIX


def part_of(payload: bytes | bytearray | memoryview) -> tuple[bytes, bool] | None:
    """``(chunk, more)`` when ``payload`` is a ``part`` payload, else None.

    Raises:
        ProtocolError: (``malformed_message``) it says it is a part but is not a valid one.
    """
    if not is_part(payload):
        return None
    data = bytes(payload)
    envelope = _unpack(data, "part payload")
    if (not isinstance(envelope, list) or len(envelope) != 4 or type(envelope[2]) is not int
            or envelope[2] & ~FLAG_MORE or not isinstance(envelope[3], bytes)):
        raise ProtocolError("a part payload is [version, \"part\", flags, chunk: bin]",
                            code=ErrorCode.MALFORMED_MESSAGE)
    return envelope[3], bool(envelope[2] & FLAG_MORE)


#: How an ``ack`` of a ``changes`` batch begins: ``[1, "ack", 0, {"seq": `` (then the seq).
_ACK_PREFIX: bytes = (_FIXARRAY_4 + msgpack.packb(PROTOCOL_VERSION) + msgpack.packb(Ack.TAG) + msgpack.packb(0)
                      + b"\x81" + msgpack.packb("seq"))
#: The msgpack forms of an unsigned int after that prefix: first byte -> the int's length.
_UINT_LENGTHS = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}
_ACK_MAX = len(_ACK_PREFIX) + 9


def _ack_of(data: bytes) -> Ack | None:
    """The ``Ack`` that ``data`` is when it is exactly ``[1, "ack", 0, {"seq": n}]`` with n an
    unsigned int (what every device sends for each ``changes`` batch, one per batch and
    connection): read without the general unpacking and checks. None otherwise (then
    :func:`decode` takes the general path, which also names what is wrong)."""
    start = len(_ACK_PREFIX)
    if len(data) <= start or not data.startswith(_ACK_PREFIX):
        return None
    first = data[start]
    if first < 0x80:
        if len(data) != start + 1:
            return None
        seq = first
    else:
        size = _UINT_LENGTHS.get(first)
        if size is None or len(data) != start + 1 + size:
            return None
        seq = int.from_bytes(data[start + 1:], "big")
    try:
        return Ack(seq)
    except ValueError:
        return None


def decode(payload: bytes | bytearray | memoryview, *,
           max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Message:
    """Decode and validate one payload.

    Args:
        payload: one binary WebSocket message, as received.
        max_size: the largest payload, and separately the largest decompressed body, accepted.

    Returns:
        The message, fully validated.

    Raises:
        VersionMismatchError: the envelope carries another protocol version (``peer_version``
            holds it). An ``error`` message of any version is decoded instead.
        ProtocolError: anything else wrong; ``code`` is an ``ErrorCode`` value.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"a payload is bytes, not {type(payload).__name__}",
                            code=ErrorCode.MALFORMED_MESSAGE)
    data = bytes(payload)
    if len(data) > max_size:
        raise ProtocolError(f"payload of {len(data)} bytes exceeds the {max_size}-byte limit",
                            code=ErrorCode.MESSAGE_TOO_LARGE)
    if len(data) <= _ACK_MAX and (ack := _ack_of(data)) is not None:
        return ack
    envelope = _unpack(data, "payload")
    if not isinstance(envelope, list) or not envelope or type(envelope[0]) is not int:
        raise ProtocolError("a payload is [version, type, flags, body]",
                            code=ErrorCode.MALFORMED_MESSAGE)
    version = envelope[0]
    is_error = len(envelope) == 4 and envelope[1] == Error.TAG
    if version != PROTOCOL_VERSION and not is_error:
        exc = VersionMismatchError(
            f"the peer speaks protocol version {version}, this side speaks {PROTOCOL_VERSION}")
        exc.peer_version = version  # type: ignore[attr-defined]
        raise exc
    if len(envelope) != 4:
        raise ProtocolError("a payload is [version, type, flags, body]",
                            code=ErrorCode.MALFORMED_MESSAGE)
    _, tag, flags, body = envelope
    if not isinstance(tag, str):
        raise ProtocolError("the message type must be a str", code=ErrorCode.MALFORMED_MESSAGE)
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown message type {tag!r:.40}", code=ErrorCode.UNKNOWN_MESSAGE_TYPE)
    if type(flags) is not int or flags & ~FLAG_ZLIB:
        raise ProtocolError(f"unknown envelope flags {flags!r:.20}", code=ErrorCode.MALFORMED_MESSAGE)
    if flags & FLAG_ZLIB:
        if not isinstance(body, bytes):
            raise ProtocolError("a compressed body must be bin", code=ErrorCode.MALFORMED_MESSAGE)
        body = _unpack(_inflate(body, max_size), "decompressed body")
    if not isinstance(body, dict):
        raise ProtocolError(f"a {tag} body must be a map", code=ErrorCode.MALFORMED_MESSAGE)
    try:
        if cls is Snapshot:
            return Snapshot.from_received(body)
        if cls is Changes:
            # An upload's body is checked while its creates are parsed; on any doubt or error,
            # the whole walk first, so that the error is the one it names.
            try:
                changes = Changes.from_unchecked(body)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                changes = None
            if changes is not None:
                return changes
        check_plain(body, f"{tag} body")
        if issubclass(cls, (Snapshot, ViewUpdate, Changes)):  # documents are not walked twice
            return cls.from_body(body, plain=True)
        return cls.from_body(body)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ProtocolError(f"malformed {tag} message: {exc}",
                            code=ErrorCode.MALFORMED_MESSAGE) from exc
