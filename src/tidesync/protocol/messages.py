"""The messages two replicas exchange, as small frozen dataclasses.

Each message validates its fields in its constructor (raising :class:`ValueError` with a
message saying what is wrong), so a message that exists is well formed whether it was built
locally or decoded from a peer. Each has a wire ``TAG`` and converts to and from its *body*, a
map of plain values (:mod:`tidesync.core.values`); :mod:`tidesync.protocol.codec` puts the body
in the envelope. Receivers ignore body keys they do not know; optional keys may be left out.

Sequence numbers (``seq``) are positions in the *sender's* local log: every replica numbers
the transactions it integrates 1, 2, 3... whatever their origin; 0 means "nothing". Ranges are
half-open: a :class:`Changes` with ``from_seq=10, to_seq=20`` covers the sender's entries 11..20.

The messages, in the order a session meets them:

================== ====================== ==================================================
tag                class                  meaning
================== ====================== ==================================================
``hello``          :class:`Hello`         initiator -> acceptor: who I am, my token, my scope,
                                          how much of your log I hold
``welcome``        :class:`Welcome`       acceptor -> initiator: who I am, how much of your log
                                          I hold, my scope
``descriptors``    :class:`Descriptors`   summaries of transactions whose data follows later
``changes``        :class:`Changes`       a batch of the sender's log, with progress
``snapshot``       :class:`Snapshot`      one page of document states (bootstrap after the
                                          sender compacted its log)
``ack``            :class:`Ack`           the receiver has durably integrated up to ``seq``
``compensating_write`` :class:`CompensatingWrite` the sender undid writes of the receiver's
``subscribe``      :class:`Subscribe`     (flexible sync) a new subscription set
``subscription_state`` :class:`SubscriptionState` (flexible sync) a set's state changed
``view_update``    :class:`ViewUpdate`    (flexible sync) documents entering the receiver's
                                          view (whole) and leaving it (keys)
``view_ack``       :class:`ViewAck`       (flexible sync) a ViewUpdate is durably applied
``ping``/``pong``  :class:`Ping`/:class:`Pong` heartbeat
``error``          :class:`Error`         the connection failed; what to do about it
``close``          :class:`Close`         the sender will send nothing more
================== ====================== ==================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from ..core.stamp import ReplicaId, Stamp, are_compact_metas, is_replica_id, is_stamp
from ..core.transaction import Descriptor, Transaction
from ..core.values import (Plain, compact_json, loads_json, loads_json_scalars_checked, loads_json_strict,
                           plain_scalars)
from .codes import ErrorAction, ErrorCode, action_of

__all__ = [
    "MAX_SEQ",
    "FEATURE_SNAPSHOT_JSON",
    "FEATURE_SNAPSHOT_COLUMNS",
    "COLUMN_SEPARATOR",
    "FEATURE_PARTS",
    "FEATURE_CHANGES_VIEW",
    "FEATURES",
    "Scope",
    "check_scope",
    "check_plain",
    "Progress",
    "Hello",
    "Welcome",
    "Changes",
    "ViewPart",
    "Descriptors",
    "Ack",
    "SnapshotDoc",
    "DocColumns",
    "Snapshot",
    "CompensatedWrite",
    "CompensatingWrite",
    "SubscriptionQuery",
    "SubscriptionStatus",
    "Subscribe",
    "SubscriptionState",
    "ViewUpdate",
    "ViewAck",
    "Error",
    "Ping",
    "Pong",
    "Close",
    "Message",
    "MESSAGE_TYPES",
]

#: The largest sequence number, nonce or counter a message may carry (signed 64-bit).
MAX_SEQ = 2**63 - 1
#: Deepest nesting of lists and maps a plain value may have.
MAX_DEPTH = 64

#: Feature (``Hello``/``Welcome`` ``features``): this side accepts ``snapshot`` documents in
#: their JSON-text form, ``[collection, key, epoch, live, body_json, meta_json]``.
FEATURE_SNAPSHOT_JSON = "snapshot_json"
#: Feature: this side accepts a ``snapshot`` page as columns (``cols`` instead of ``docs``:
#: one string per column, the documents' values joined by U+001E, which JSON text never
#: holds; the keys as one JSON array text; see :meth:`DocColumns.columns_wire`). A sender
#: reads and encodes such a page without a Python object (nor a msgpack value) per document
#: and value.
FEATURE_SNAPSHOT_COLUMNS = "snapshot_columns"
#: Feature: this side accepts a payload larger than its maximum message size sent as
#: consecutive ``part`` payloads (see :mod:`tidesync.protocol.codec`); the Link handles it.
FEATURE_PARTS = "parts"
#: Feature: this side (a flexible-sync device) accepts documents entering and leaving its view
#: as the ``view`` part of a ``changes`` message (:class:`ViewPart`), applied with the batch and
#: acknowledged by its ``ack``, instead of a separate ``view_update`` and ``view_ack``.
FEATURE_CHANGES_VIEW = "changes_view"
#: The optional features this implementation announces.
FEATURES: tuple[str, ...] = (FEATURE_SNAPSHOT_JSON, FEATURE_PARTS, FEATURE_CHANGES_VIEW, FEATURE_SNAPSHOT_COLUMNS)

#: What a replica wants to receive: ``{}`` (everything), ``{"partition": {"key": field,
#: "value": plain}}`` or ``{"subscriptions": [...]}`` (flexible sync).
Scope: TypeAlias = dict[str, Any]


# ------------------------------------------------------------------------ field checks


def _int(name: str, value: object, *, lo: int = 0, hi: int = MAX_SEQ) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], not {value!r}")
    return value


def _opt_int(name: str, value: object) -> int | None:
    return None if value is None else _int(name, value)


def _str(name: str, value: object, *, empty: bool = True, max_len: int = 1 << 20) -> str:
    if not isinstance(value, str) or (not empty and not value) or len(value) > max_len:
        raise ValueError(f"{name} must be a {'' if empty else 'non-empty '}str, not {value!r:.80}")
    return value


def _opt_str(name: str, value: object) -> str | None:
    return None if value is None else _str(name, value)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, not {value!r:.80}")
    return value


def _replica(name: str, value: object) -> ReplicaId:
    if not is_replica_id(value):
        raise ValueError(f"{name} must be a replica id (16 lowercase hex digits), not {value!r:.80}")
    return ReplicaId(str(value))


def _map(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a map, not {type(value).__name__}")
    check_plain(value, name)
    return value


def _list(name: str, value: object) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list, not {type(value).__name__}")
    return value


def _features(value: object) -> tuple[str, ...]:
    items = _list("features", value)
    if len(items) > 64 or not all(isinstance(f, str) and 0 < len(f) <= 100 for f in items):
        raise ValueError("features must be at most 64 non-empty str of at most 100 characters")
    return tuple(items)


def _json_map(name: str, text: object) -> dict[str, Any]:
    """A JSON text that must hold a plain map: parsed and checked."""
    if type(text) is not str:
        raise ValueError(f"{name} must be a str of JSON, not {type(text).__name__}")
    try:
        value = loads_json_strict(text)
    except RecursionError:
        raise ValueError(f"{name}: nested more than {MAX_DEPTH} deep") from None
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, not {type(value).__name__}")
    if not plain_scalars(value.values()):
        check_plain(value, name)
    return value


def _get(body: Mapping[str, Any], key: str) -> Any:
    try:
        return body[key]
    except KeyError:
        raise ValueError(f"missing field {key!r}") from None


def check_plain(value: object, where: str = "value") -> None:
    """Check that ``value`` is a plain-form tree: None, bool, int (signed 64-bit), finite float,
    str, and lists and str-keyed maps of those, at most :data:`MAX_DEPTH` deep.

    Raises:
        ValueError: naming the first offending item.
    """
    if not _plain_fast(value):
        _check_plain_walk(value, where)


def _check_plain_walk(value: object, where: str) -> None:
    """:func:`check_plain`'s exact walk, which names what is wrong."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if item is None or isinstance(item, (bool, str)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{where}: a non-finite float must be written {{'$float': ...}}")
            continue
        if isinstance(item, int):
            if not -(2**63) <= item <= 2**63 - 1:
                raise ValueError(f"{where}: int out of the 64-bit range")
            continue
        if depth >= MAX_DEPTH:
            raise ValueError(f"{where}: nested more than {MAX_DEPTH} deep")
        if isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise ValueError(f"{where}: map keys must be str, not {type(k).__name__}")
                stack.append((v, depth + 1))
        else:
            raise ValueError(f"{where}: {type(item).__name__} is not a plain value")


def _plain_scalar(value: object) -> bool:
    """True if ``value`` is a plain scalar of an exact type (a str, bool, None, signed 64-bit
    int or finite float)."""
    t = type(value)
    return t in _SCALARS or (t is int and -(2**63) <= value <= 2**63 - 1) or (t is float and math.isfinite(value))  # type: ignore[operator, arg-type]


_SCALARS = frozenset((str, bool, type(None)))
_CONTAINERS = frozenset((list, dict))


def _plain_fast(value: object) -> bool:
    """True if ``value`` is certainly plain; False on any doubt (a subclass, a tuple, something
    wrong): :func:`check_plain` then decides and says why. Exact types, one level at a time."""
    scalars, containers = _SCALARS, _CONTAINERS
    lo, hi, isfinite = -(2**63), 2**63 - 1, math.isfinite
    t = type(value)
    if t not in containers:
        return t in scalars or (t is int and lo <= value <= hi) or (t is float and isfinite(value))  # type: ignore[operator, arg-type]
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        deeper: list[Any] = []
        for container in level:
            if type(container) is dict:
                for k in container:
                    if type(k) is not str:
                        return False
                items = container.values()
            else:
                items = container
            for v in items:
                t = type(v)
                if t in scalars:
                    continue
                if t is int:
                    if not lo <= v <= hi:
                        return False
                elif t is float:
                    if not isfinite(v):
                        return False
                elif t in containers:
                    deeper.append(v)
                else:
                    return False
        if not deeper:
            return True
        level = deeper
    return False


def check_scope(scope: object) -> Scope:
    """Validate a scope and return it.

    A scope is ``{}`` (everything), ``{"partition": {"key": <field name>, "value": <plain>}}``
    or ``{"subscriptions": [<plain>, ...]}``; nothing else, so that a peer never silently syncs
    more than it was asked for because it did not understand the request.

    Raises:
        ValueError: the scope is malformed.
    """
    scope = _map("scope", scope)
    if len(scope) > 1 or (scope and next(iter(scope)) not in ("partition", "subscriptions")):
        raise ValueError(f"scope must be {{}}, {{'partition': ...}} or {{'subscriptions': ...}}, not {scope!r:.200}")
    if "partition" in scope:
        part = scope["partition"]
        if not isinstance(part, dict) or set(part) != {"key", "value"}:
            raise ValueError("scope partition must be {'key': field, 'value': value}")
        _str("scope partition key", part["key"], empty=False)
    if "subscriptions" in scope:
        _list("scope subscriptions", scope["subscriptions"])
    return scope


# ------------------------------------------------------------------------ shared parts


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a transfer has got, as seen by the sender.

    Attributes:
        sent: items (transactions or documents) sent on this connection, this message included.
        total: estimate of ``sent`` plus what remains to send (an upper bound for transactions:
            entries filtered out on the way are counted until they are skipped).
        sent_bytes: approximate encoded size of what was sent.
        total_bytes: estimate of ``sent_bytes`` plus what remains.
    """

    sent: int = 0
    total: int = 0
    sent_bytes: int = 0
    total_bytes: int = 0

    def __post_init__(self) -> None:
        a, b, c, d = self.sent, self.total, self.sent_bytes, self.total_bytes
        if (type(a) is int and type(b) is int and type(c) is int and type(d) is int
                and 0 <= a <= MAX_SEQ and 0 <= b <= MAX_SEQ and 0 <= c <= MAX_SEQ and 0 <= d <= MAX_SEQ):
            return   # (one made per message sent: the checks below without a call and a name each)
        for name in ("sent", "total", "sent_bytes", "total_bytes"):
            _int(f"progress {name}", getattr(self, name))

    def to_wire(self) -> dict[str, int]:
        return {"sent": self.sent, "total": self.total,
                "sent_bytes": self.sent_bytes, "total_bytes": self.total_bytes}

    @classmethod
    def from_wire(cls, data: object) -> Progress:
        if not isinstance(data, dict):
            raise ValueError("progress must be a map")
        return cls(data.get("sent", 0), data.get("total", 0),
                   data.get("sent_bytes", 0), data.get("total_bytes", 0))


def _entries_to_wire(entries: tuple[tuple[int, Any], ...]) -> list[list[Any]]:
    return [[seq, item.to_wire()] for seq, item in entries]


def _check_entries(name: str, entries: object, after: int, upto: int, kind: type[Any]) -> None:
    if not isinstance(entries, tuple):
        raise ValueError(f"{name} must be a tuple")
    last = after
    for entry in entries:
        if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[1], kind):
            raise ValueError(f"{name} must hold (seq, {kind.__name__}) pairs")
        seq = entry[0]
        if type(seq) is not int or not last < seq <= upto:  # (0 <= after, upto <= MAX_SEQ)
            seq = _int(f"{name} seq", seq)
            if not last < seq <= upto:
                raise ValueError(f"{name} seq {seq} out of order or outside ({after}, {upto}]")
        last = seq


def _entries_from_wire(name: str, data: object, parse: Any) -> tuple[tuple[int, Any], ...]:
    out = []
    for entry in _list(name, data):
        if not isinstance(entry, list) or len(entry) != 2:
            raise ValueError(f"each of {name} is [seq, item]")
        out.append((entry[0], parse(entry[1])))
    return tuple(out)


# ------------------------------------------------------------------------ handshake


@dataclass(frozen=True, slots=True)
class Hello:
    """Initiator -> acceptor, the first message of every connection.

    Attributes:
        replica_id: the initiator's replica id.
        token: an access token for the acceptor's driver to check, or None.
        scope: what the initiator wants to receive (see :func:`check_scope`).
        acceptor_id: the replica the initiator believes it is talking to (remembered from a
            previous session), or None on first contact.
        checkpoint: the last seq of ``acceptor_id``'s log the initiator has durably
            integrated; the acceptor streams from there if ``acceptor_id`` is its own id,
            from 0 otherwise. Must be 0 when ``acceptor_id`` is None.
        client_info: free-form str -> str facts for logs (app name and version, platform).
        features: optional protocol features the initiator supports (see :data:`FEATURES`).
    """

    TAG: ClassVar[str] = "hello"

    replica_id: ReplicaId
    token: str | None = None
    scope: Scope = field(default_factory=dict)
    acceptor_id: ReplicaId | None = None
    checkpoint: int = 0
    client_info: dict[str, str] = field(default_factory=dict)
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _replica("replica_id", self.replica_id)
        _opt_str("token", self.token)
        check_scope(self.scope)
        if self.acceptor_id is not None:
            _replica("acceptor_id", self.acceptor_id)
        _int("checkpoint", self.checkpoint)
        if self.acceptor_id is None and self.checkpoint:
            raise ValueError("a checkpoint needs the acceptor_id it refers to")
        if not isinstance(self.client_info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.client_info.items()):
            raise ValueError("client_info must map str to str")
        if not isinstance(self.features, tuple):
            raise ValueError("features must be a tuple")
        _features(self.features)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"replica_id": self.replica_id, "token": self.token, "scope": self.scope,
                "acceptor_id": self.acceptor_id, "checkpoint": self.checkpoint,
                "client_info": self.client_info}
        if self.features:
            body["features"] = list(self.features)
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Hello:
        return cls(_get(body, "replica_id"), body.get("token"), body.get("scope", {}),
                   body.get("acceptor_id"), body.get("checkpoint", 0), body.get("client_info", {}),
                   _features(body.get("features", [])))


@dataclass(frozen=True, slots=True)
class Welcome:
    """Acceptor -> initiator: the handshake succeeded.

    Attributes:
        replica_id: the acceptor's replica id.
        checkpoint: the last seq of the initiator's log the acceptor has durably integrated;
            the initiator streams from there.
        scope: what the acceptor wants to receive (``{}``: everything, the usual server answer).
        session: free-form facts about the session for the initiator (session id, user id...).
        features: optional protocol features the acceptor supports (see :data:`FEATURES`).
    """

    TAG: ClassVar[str] = "welcome"

    replica_id: ReplicaId
    checkpoint: int = 0
    scope: Scope = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _replica("replica_id", self.replica_id)
        _int("checkpoint", self.checkpoint)
        check_scope(self.scope)
        _map("session", self.session)
        if not isinstance(self.features, tuple):
            raise ValueError("features must be a tuple")
        _features(self.features)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"replica_id": self.replica_id, "checkpoint": self.checkpoint,
                "scope": self.scope, "session": self.session}
        if self.features:
            body["features"] = list(self.features)
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Welcome:
        return cls(_get(body, "replica_id"), body.get("checkpoint", 0), body.get("scope", {}),
                   body.get("session", {}), _features(body.get("features", [])))


# ------------------------------------------------------------------------ replication


@dataclass(frozen=True, slots=True)
class Changes:
    """A batch of the sender's log: its entries in ``(from_seq, to_seq]`` the receiver wants.

    The receiver integrates the batch atomically, records ``to_seq`` as its checkpoint for the
    sender, then answers :class:`Ack`. A batch may carry no entries and still advance
    ``to_seq`` (everything in the range was filtered out, or was the receiver's own).

    Attributes:
        from_seq: where the batch starts (exclusive); equals the previous batch's ``to_seq``
            on this connection, or the receiver's checkpoint for the first batch.
        to_seq: where it ends (inclusive): the sender scanned its log up to here.
        head: the sender's latest seq when it sent the batch; ``to_seq == head`` means the
            sender had nothing more to send.
        entries: ``(seq, transaction)`` pairs in increasing seq order, within the range.
        progress: the sender's counters for this connection.
        view: (flexible sync, :data:`FEATURE_CHANGES_VIEW`) documents entering and leaving
            the receiver's view with this batch, applied in the same local transaction before
            its entries; the batch's :class:`Ack` acknowledges it (and every earlier
            ``view_seq``). None: no view part.
    """

    TAG: ClassVar[str] = "changes"

    from_seq: int
    to_seq: int
    head: int
    entries: tuple[tuple[int, Transaction], ...] = ()
    progress: Progress = field(default_factory=Progress)
    view: ViewPart | None = None

    def __post_init__(self) -> None:
        a, b, c = self.from_seq, self.to_seq, self.head
        if not (type(a) is int and type(b) is int and type(c) is int and 0 <= a <= b <= c <= MAX_SEQ):
            _int("from_seq", a)   # (the fast check failed: these name what is wrong)
            _int("to_seq", b)
            _int("head", c)
        if not self.from_seq <= self.to_seq <= self.head:
            raise ValueError(f"need from_seq <= to_seq <= head, got {self.from_seq}, {self.to_seq}, {self.head}")
        _check_entries("entries", self.entries, self.from_seq, self.to_seq, Transaction)
        if not isinstance(self.progress, Progress):
            raise ValueError("progress must be a Progress")
        if self.view is not None and not isinstance(self.view, ViewPart):
            raise ValueError("view must be a ViewPart or None")

    def with_view(self, view: ViewPart) -> Changes:
        """This batch with ``view`` as its view part. Its other fields were checked when it was
        made, so only ``view`` is (a batch of many entries is not walked again)."""
        if not isinstance(view, ViewPart):
            raise ValueError("view must be a ViewPart")
        out = object.__new__(Changes)
        for name, value in (("from_seq", self.from_seq), ("to_seq", self.to_seq), ("head", self.head),
                            ("entries", self.entries), ("progress", self.progress), ("view", view)):
            object.__setattr__(out, name, value)
        return out

    @property
    def transactions(self) -> list[Transaction]:
        """The batch's transactions, in order."""
        return [txn for _, txn in self.entries]

    def to_body(self) -> dict[str, Any]:
        body = {"from_seq": self.from_seq, "to_seq": self.to_seq, "head": self.head,
                "entries": _entries_to_wire(self.entries), "progress": self.progress.to_wire()}
        if self.view is not None:
            body["view"] = self.view.to_wire()
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, plain: bool = False) -> Changes:
        """Parse a body; ``plain``: it already passed :func:`check_plain` (``codec.decode``)."""
        view = body.get("view")
        return cls(_get(body, "from_seq"), _get(body, "to_seq"), _get(body, "head"),
                   _entries_from_wire("entries", body.get("entries", []), Transaction.from_wire),
                   Progress.from_wire(body.get("progress", {})),
                   None if view is None else ViewPart.from_wire(view, plain=plain))

    @classmethod
    def from_unchecked(cls, body: object) -> Changes | None:
        """:meth:`from_body` of a decoded body not yet through :func:`check_plain`, when every
        item is certainly plain: scalars at the top and in ``progress``, and each entry a
        ``[seq, transaction]`` that :meth:`Transaction.from_unchecked` accepts (an upload of
        creates: their fields' values are checked while parsed, not walked again). None on any
        doubt: ``codec.decode`` then checks the whole body and calls :meth:`from_body`, which
        names what is wrong. Its ValueErrors say nothing of the plainness of later items."""
        if type(body) is not dict:
            return None
        for k, v in body.items():
            if k == "entries":
                if type(v) is not list:
                    return None
            elif k == "view":
                return None  # documents: the whole walk, then from_body
            elif k == "progress":
                if type(v) is not dict:
                    return None
                for pk, pv in v.items():
                    if type(pk) is not str or not _plain_scalar(pv):
                        return None
            elif type(k) is not str or not _plain_scalar(v):
                return None
        raw = body.get("entries", ())
        for entry in raw:
            if type(entry) is not list or len(entry) != 2 or not _plain_scalar(entry[0]):
                return None
        # A batch of transactions of new documents in one pass; else one by one.
        txns = Transaction.many_from_unchecked([entry[1] for entry in raw])
        if txns is not None:
            entries = [(entry[0], txn) for entry, txn in zip(raw, txns)]
        else:
            entries = []
            for entry in raw:
                txn = Transaction.from_unchecked(entry[1])
                if txn is None:
                    return None
                entries.append((entry[0], txn))
        return cls(_get(body, "from_seq"), _get(body, "to_seq"), _get(body, "head"), tuple(entries),
                   Progress.from_wire(body.get("progress", {})))


@dataclass(frozen=True, slots=True)
class ViewPart:
    """(Flexible sync, :data:`FEATURE_CHANGES_VIEW`) The view part of a :class:`Changes`:
    documents entering the receiver's view (whole, *joined* into what it has) and leaving it
    (removed **without** a delete), as a routed :class:`ViewUpdate` would carry them. The
    receiver applies it, then the batch's entries, then persists ``view_seq`` and the
    checkpoint, all in one local transaction; the batch's :class:`Ack` acknowledges it.

    Attributes:
        view_seq: as :attr:`ViewUpdate.view_seq` (numbered with them, increasing).
        enter: documents entering the view, whole (sent in the JSON-text form).
        leave: ``(collection, key)`` of documents leaving it.
    """

    view_seq: int
    enter: tuple[SnapshotDoc, ...] = ()
    leave: tuple[tuple[str, Plain], ...] = ()

    def __post_init__(self) -> None:
        _int("view_seq", self.view_seq, lo=1)
        if not isinstance(self.enter, tuple) or not all(isinstance(d, SnapshotDoc) for d in self.enter):
            raise ValueError("view enter must be a tuple of SnapshotDoc")
        if not isinstance(self.leave, tuple):
            raise ValueError("view leave must be a tuple of (collection, key)")
        for item in self.leave:
            _doc_key(item)

    def to_wire(self) -> dict[str, Any]:
        return {"view_seq": self.view_seq, "enter": [d.to_json_wire() for d in self.enter],
                "leave": [[c, k] for c, k in self.leave]}

    @classmethod
    def from_wire(cls, data: object, *, plain: bool = False) -> ViewPart:
        """Parse and validate; ``plain``: ``data`` already passed :func:`check_plain`."""
        if not isinstance(data, dict):
            raise ValueError("view must be a map")
        if not plain:
            check_plain(data, "view")
        enter = _list("view enter", data.get("enter", []))
        docs = _json_docs_from_wire(enter) if enter else []
        return cls(_get(data, "view_seq"), tuple(docs),
                   tuple(_doc_key(k) for k in _list("view leave", data.get("leave", []))))


@dataclass(frozen=True, slots=True)
class Descriptors:
    """Summaries of transactions the sender will send later, so the receiver knows of them
    before it holds them. Every transaction's descriptor is sent before the transaction.

    Attributes:
        entries: ``(seq, descriptor)`` pairs in increasing seq order (sender's log positions).
    """

    TAG: ClassVar[str] = "descriptors"

    entries: tuple[tuple[int, Descriptor], ...]

    def __post_init__(self) -> None:
        _check_entries("entries", self.entries, 0, MAX_SEQ, Descriptor)

    def to_body(self) -> dict[str, Any]:
        return {"entries": _entries_to_wire(self.entries)}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Descriptors:
        return cls(_entries_from_wire("entries", _get(body, "entries"), Descriptor.from_wire))


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver has durably integrated the sender's log up to ``seq``.

    Attributes:
        seq: the receiver's checkpoint for the sender, after integrating a batch.
        snapshot_page: set when acknowledging a :class:`Snapshot` page rather than a
            :class:`Changes` batch; ``seq`` is then the checkpoint (unchanged until the final
            page is integrated).
    """

    TAG: ClassVar[str] = "ack"

    seq: int
    snapshot_page: int | None = None

    def __post_init__(self) -> None:
        seq = self.seq
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            _int("seq", seq)
        if self.snapshot_page is not None:
            _int("snapshot_page", self.snapshot_page)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"seq": self.seq}
        if self.snapshot_page is not None:
            body["snapshot_page"] = self.snapshot_page
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Ack:
        return cls(_get(body, "seq"), body.get("snapshot_page"))


def _check_doc_state(name: str, state: object, *, plain: bool = False) -> dict[str, Any]:
    if not plain:
        state = _map(name, state)
    elif not isinstance(state, dict):
        raise ValueError(f"{name} must be a map, not {type(state).__name__}")
    for key, kind in (("epoch", str), ("live", bool), ("body", dict), ("meta", dict)):
        if not isinstance(state.get(key), kind):
            raise ValueError(f"{name} needs {key!r} of type {kind.__name__}")
    if not (state["epoch"] == "" or is_stamp(state["epoch"])):
        raise ValueError(f"{name} epoch must be a stamp or ''")
    return state


@dataclass(frozen=True, slots=True)
class SnapshotDoc:
    """One document's full merge state: ``{"epoch", "live", "body", "meta"}`` (plain form).

    ``json_form`` is ``(epoch, live, body_json, meta_json)``, body and meta as the compact JSON
    text a replica stores, when the document was read from storage or received in that form
    (see :data:`FEATURE_SNAPSHOT_JSON`); a document made with ``json_form`` alone
    (:meth:`from_json_form`) parses ``state`` from it only when ``state`` is first read.
    """

    collection: str
    key: Plain
    state: dict[str, Any]
    json_form: tuple[str, bool, str, str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _str("collection", self.collection, empty=False)
        check_plain(self.key, "key")
        _check_doc_state("state", self.state)

    if not TYPE_CHECKING:
        def __getattr__(self, name):
            # Only an unset slot gets here: the state of a document made from its JSON form.
            if name == "state":
                form = object.__getattribute__(self, "json_form")
                if form is not None:
                    state = {"epoch": form[0], "live": form[1], "body": loads_json(form[2]),
                             "meta": loads_json(form[3])}
                    object.__setattr__(self, "state", state)
                    return state
            raise AttributeError(name)

    def to_wire(self) -> list[Any]:
        return [self.collection, self.key, self.state]

    def to_json_wire(self) -> list[Any]:
        """The JSON-text wire form, ``[collection, key, epoch, live, body_json, meta_json]``."""
        form = self.json_form
        if form is None:
            state = self.state
            form = (state["epoch"], state["live"], compact_json(state["body"]), compact_json(state["meta"]))
        return [self.collection, self.key, *form]

    @classmethod
    def from_json_form(cls, collection: str, key: Plain, epoch: str, live: bool, body_json: str,
                       meta_json: str) -> SnapshotDoc:
        """A document read back from a replica's own storage (trusted, not validated), kept as
        its JSON text: sending it in the JSON-text form costs no parsing."""
        doc = object.__new__(cls)
        object.__setattr__(doc, "collection", collection)
        object.__setattr__(doc, "key", key)
        object.__setattr__(doc, "json_form", (epoch, live, body_json, meta_json))
        return doc

    @classmethod
    def from_json_wire(cls, data: object, *, plain: bool = False) -> SnapshotDoc:
        """Parse and validate ``[collection, key, epoch, live, body_json, meta_json]``: body and
        meta must be JSON objects of plain values (no NaN or Infinity, 64-bit ints, at most
        :data:`MAX_DEPTH` deep). ``plain``: the list itself already passed :func:`check_plain`."""
        if not isinstance(data, list) or len(data) != 6:
            raise ValueError("a snapshot document is [collection, key, epoch, live, body_json, meta_json]")
        collection, key, epoch, live, body_json, meta_json = data
        if type(collection) is not str or not collection:
            _str("collection", collection, empty=False)
        if not plain:
            check_plain(key, "key")
        if not (epoch == "" or is_stamp(epoch)):
            raise ValueError("state epoch must be a stamp or ''")
        if live is not True and live is not False:
            raise ValueError(f"state live must be a bool, not {live!r:.80}")
        if (type(meta_json) is str and len(meta_json) == 42 and meta_json.startswith('{"*":"')
                and meta_json.endswith('"}') and is_stamp(meta_json[6:40])):
            meta: dict[str, Any] = {"*": meta_json[6:40]}  # a fresh document's compact meta
        else:
            meta = _json_map("state meta_json", meta_json)
        body = _json_map("state body_json", body_json)
        doc = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(doc, "collection", collection)
        setattr_(doc, "key", key)
        setattr_(doc, "state", {"epoch": epoch, "live": live, "body": body, "meta": meta})
        setattr_(doc, "json_form", (epoch, live, body_json, meta_json))
        return doc

    @classmethod
    def from_wire(cls, data: object, *, plain: bool = False) -> SnapshotDoc:
        """Parse ``[collection, key, state]``.

        Args:
            data: the wire form.
            plain: ``data`` already passed :func:`check_plain` (as a decoded message body
                does): only its shape is checked, each value is not walked again.
        """
        if not isinstance(data, list) or len(data) != 3:
            raise ValueError("a snapshot document is [collection, key, state]")
        if not plain:
            return cls(data[0], data[1], data[2])
        _str("collection", data[0], empty=False)
        return cls.trusted(data[0], data[1], _check_doc_state("state", data[2], plain=True))

    @classmethod
    def trusted(cls, collection: str, key: Plain, state: dict[str, Any]) -> SnapshotDoc:
        """A document whose parts are known to be valid (read back from a replica's own
        storage, or already checked), made without validating them again."""
        doc = object.__new__(cls)
        object.__setattr__(doc, "collection", collection)
        object.__setattr__(doc, "key", key)
        object.__setattr__(doc, "state", state)
        object.__setattr__(doc, "json_form", None)
        return doc


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One page of a state-based bootstrap, sent instead of :class:`Changes` when the sender
    no longer holds the log after the receiver's checkpoint (it was compacted).

    Pages are numbered from 0. The receiver joins each page's documents into its own (a merge,
    never an overwrite: its unsynced work is kept), acknowledges each page with
    ``Ack(snapshot_page=page)``, and, once the page with ``done`` is integrated, takes
    ``as_of_seq`` as its checkpoint; the sender then continues with :class:`Changes` from
    ``as_of_seq``.

    Attributes:
        page: this page's number.
        docs: the documents of this page.
        as_of_seq: a seq of the sender's log that every page so far reflects; only the value on
            the ``done`` page is used.
        done: True on the last page.
        progress: documents sent so far and an estimate of the total.
        json_docs: send the documents in their JSON-text form (only to a peer that announced
            :data:`FEATURE_SNAPSHOT_JSON`); set on a received page that used it.
        columns: send a page read as :class:`DocColumns` as columns (``cols``; only to a peer
            that announced :data:`FEATURE_SNAPSHOT_COLUMNS`).
    """

    TAG: ClassVar[str] = "snapshot"

    page: int
    docs: tuple[SnapshotDoc, ...] | DocColumns
    as_of_seq: int
    done: bool
    progress: Progress = field(default_factory=Progress)
    json_docs: bool = field(default=False, compare=False)
    columns: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        _int("page", self.page)
        if type(self.docs) is not DocColumns and (
                not isinstance(self.docs, tuple) or not all(isinstance(d, SnapshotDoc) for d in self.docs)):
            raise ValueError("docs must be a tuple of SnapshotDoc")
        _int("as_of_seq", self.as_of_seq)
        _bool("done", self.done)
        if not isinstance(self.progress, Progress):
            raise ValueError("progress must be a Progress")

    def to_body(self) -> dict[str, Any]:
        cols = self.docs.columns_wire() if type(self.docs) is DocColumns and self.columns else None
        if cols is not None:
            return {"page": self.page, "cols": cols, "as_of_seq": self.as_of_seq, "done": self.done,
                    "progress": self.progress.to_wire()}
        if type(self.docs) is DocColumns and self.json_docs:
            docs = self.docs.json_wire()
        elif self.json_docs:
            docs = [d.to_json_wire() for d in self.docs]
        else:
            docs = [d.to_wire() for d in self.docs]
        return {"page": self.page, "docs": docs,
                "as_of_seq": self.as_of_seq, "done": self.done, "progress": self.progress.to_wire()}

    @classmethod
    def from_received(cls, body: Mapping[str, Any]) -> Snapshot:
        """:meth:`from_body` of a body not yet through :func:`check_plain` (``codec.decode``):
        a page of common JSON-text documents is checked column by column (:class:`DocColumns`,
        which checks each of its values' types itself), anything else by :func:`check_plain`
        first. The same message, or a ValueError."""
        if "cols" in body:
            return cls._from_cols(body)
        items = body.get("docs")
        if type(items) is list and items and type(items[0]) is list and len(items[0]) == 6:
            check_plain({k: v for k, v in body.items() if k != "docs"}, f"{cls.TAG} body")
            columns = DocColumns.from_json_wire(items, plain=False)
            if columns is not None:
                return cls(_get(body, "page"), columns, _get(body, "as_of_seq"), _get(body, "done"),
                           Progress.from_wire(body.get("progress", {})), True)
        check_plain(body, f"{cls.TAG} body")
        return cls.from_body(body, plain=True, columns=False)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, plain: bool = False, columns: bool = True) -> Snapshot:
        """Parse a body; ``plain``: it already passed :func:`check_plain` (``codec.decode``).
        Each document may be in either wire form. ``columns``: try :class:`DocColumns` first."""
        if "cols" in body:
            return cls._from_cols(body)
        docs: list[SnapshotDoc] = []
        json_docs = False
        items = _list("docs", _get(body, "docs"))
        if plain and columns and items and type(items[0]) is list and len(items[0]) == 6:
            page = DocColumns.from_json_wire(items)
            if page is not None:
                return cls(_get(body, "page"), page, _get(body, "as_of_seq"), _get(body, "done"),
                           Progress.from_wire(body.get("progress", {})), True)
            docs, json_docs = _json_docs_from_wire(items), True
        else:
            for d in items:
                if isinstance(d, list) and len(d) == 6:
                    docs.append(SnapshotDoc.from_json_wire(d, plain=plain))
                    json_docs = True
                else:
                    docs.append(SnapshotDoc.from_wire(d, plain=plain))
        return cls(_get(body, "page"), tuple(docs), _get(body, "as_of_seq"), _get(body, "done"),
                   Progress.from_wire(body.get("progress", {})), json_docs)

    @classmethod
    def _from_cols(cls, body: Mapping[str, Any]) -> Snapshot:
        """A page sent as columns (:data:`FEATURE_SNAPSHOT_COLUMNS`): split into the documents'
        JSON-text values (a ValueError if the columns do not fit together), then checked as
        :class:`DocColumns` checks a page of JSON-text documents; a page it declines goes
        document by document as the same page sent as ``docs`` would, with the same result or
        error."""
        if "docs" in body:
            raise ValueError("a snapshot body has docs or cols, not both")
        rest = {k: v for k, v in body.items() if k != "cols"}
        check_plain(rest, f"{cls.TAG} body")
        collections, keys, epochs, lives, bodies, metas = _split_cols(body["cols"])
        page = DocColumns.from_columns(collections, keys, epochs, lives, bodies, metas)
        if page is None:
            items = [list(d) for d in zip(collections, keys, epochs, lives, bodies, metas)]
            return cls.from_received({**rest, "docs": items})
        return cls(_get(body, "page"), page, _get(body, "as_of_seq"), _get(body, "done"),
                   Progress.from_wire(body.get("progress", {})), True)


#: What joins the values of a column in a ``cols`` map: a control character, which JSON text
#: never holds (a raw one is invalid JSON, and insignificant whitespace is only space, tab, CR
#: and LF).
COLUMN_SEPARATOR = "\x1e"


def _split_cols(cols: Any) -> tuple[list[str], list[Any], list[str], list[bool], list[str], list[str]]:
    """The six columns of a ``cols`` map (collections, keys, epochs, lives, body texts, meta
    texts), one value per document each (the values are checked later); a ValueError when
    the map's shape is wrong: a field missing or of the wrong type, or columns that do not
    hold ``n`` values each."""
    if type(cols) is not dict:
        raise ValueError("cols must be a map")
    try:
        n, collections, keys_json, epochs, lives = cols["n"], cols["c"], cols["k"], cols["e"], cols["l"]
        bodies, metas = cols["b"], cols["m"]
    except KeyError as exc:
        raise ValueError(f"cols lacks {exc.args[0]!r}") from None
    if type(n) is not int or n < 1:
        raise ValueError("cols n must be a positive int")
    if {type(collections), type(keys_json), type(epochs), type(lives), type(bodies), type(metas)} != {str}:
        raise ValueError("cols c, k, e, l, b and m must be str")
    if len(lives) != n or lives.strip("01"):
        raise ValueError("cols l must hold one 0 or 1 per document")
    sep = COLUMN_SEPARATOR
    split = [collections.split(sep), epochs.split(sep), bodies.split(sep), metas.split(sep)]
    if set(map(len, split)) != {n}:
        raise ValueError("cols c, e, b and m must each hold n values")
    try:
        keys = loads_json_strict(keys_json)
    except (ValueError, RecursionError):
        raise ValueError("cols k must be a JSON array") from None
    if type(keys) is not list or len(keys) != n:
        raise ValueError("cols k must be a JSON array of n keys")
    return split[0], keys, split[1], list(map("1".__eq__, lives)), split[2], split[3]


_LIVE_FLAG = {True: "1", False: "0"}
_NONE_TYPE = type(None)
_FLAT_TYPES = frozenset((str, bool, _NONE_TYPE, int, float))


def _parse_all(texts: Sequence[str]) -> list[Any] | None:
    """``[loads_json_strict(t) for t in texts]`` that also refuses ints beyond 64 bits and
    numbers beyond a float, or None if one of them fails.

    Texts without a bracket are parsed in one call, each wrapped in a list: ``[[t1],[t2],...]``.
    The only brackets are then those added here, and a string cannot swallow them without
    merging two of the lists (fewer than ``len(texts)``), so exactly ``len(texts)`` lists of one
    value each means each text is exactly that one value. (One call shares the decoder's key
    memo across the texts: about half the cost of a call per text.)

    A key twice in one object is refused (see :func:`loads_json_strict`). Text without a
    backslash is parsed without that check first: each ``"`` in it then ends or starts a
    string, and ``":`` follows exactly the keys written without space before their colon, so
    as many ``":`` as keys in the parsed top-level objects means no key was given twice (any
    other count, nested objects included, is parsed again with the check)."""
    joined = "".join(texts)
    if "[" not in joined and "]" not in joined:
        wrapped = "[[" + "],[".join(texts) + "]]"
        unchecked = "\\" not in joined
        try:
            groups = loads_json_scalars_checked(wrapped, unique_keys=not unchecked)
        except (ValueError, RecursionError):
            return None
        if not (type(groups) is list and len(groups) == len(texts) and set(map(type, groups)) == {list}
                and set(map(len, groups)) == {1}):
            return None
        values = list(map(list.pop, groups))
        if unchecked and (set(map(type, values)) != {dict} or joined.count('":') != sum(map(len, values))):
            try:  # the same values, unless a key is given twice
                loads_json_scalars_checked(wrapped)
            except (ValueError, RecursionError):
                return None
        return values
    try:
        return list(map(loads_json_strict, texts))
    except (ValueError, RecursionError):
        return None

class DocColumns(Sequence[SnapshotDoc]):
    """The documents of a snapshot page as columns, body and meta as JSON text.

    Two kinds, told apart by ``parsed``:

    * received (``parsed`` holds the bodies): every document in the common form, a fresh
      document's compact meta (``{"*": stamp}``) and a flat body (plain scalars), checked as
      strictly as :meth:`SnapshotDoc.from_json_wire` checks each one. A receiver stores such a
      page column by column (``store/replica.py``), without one object per document. Built by
      :meth:`from_json_wire`, which declines (None) any page it cannot check as a whole, for
      the per-document path to decide and name what is wrong.
    * read from a replica's own storage (``parsed`` is None: trusted, any form), to be sent
      in the JSON-text form without one object per document.

    Read as a sequence it gives the same :class:`SnapshotDoc` values, made on first use.
    """

    __slots__ = ("collections", "_keys", "epochs", "lives", "bodies", "metas", "parsed", "_docs", "_pks")

    def __init__(self, collections: Sequence[str], keys: Sequence[Plain] | None, epochs: Sequence[str],
                 lives: Sequence[bool], bodies: Sequence[str], metas: Sequence[str],
                 parsed: Sequence[dict[str, Any]] | None = None, *, pks: Sequence[str] | None = None) -> None:
        #: Per document: collection, key, epoch, live, body JSON text, meta JSON text and the
        #: parsed body (``metas[i][6:40]`` is the meta's one stamp). A page read from storage
        #: may give its keys as ``pks`` (each key's canonical JSON) instead: parsed on first use.
        self.collections, self._keys, self.epochs, self.lives = collections, keys, epochs, lives
        self.bodies, self.metas, self.parsed = bodies, metas, parsed
        self._pks = pks
        if keys is None and pks is None:
            raise ValueError("DocColumns needs keys or pks")
        self._docs: tuple[SnapshotDoc, ...] | None = None

    @property
    def keys(self) -> Sequence[Plain]:
        """Each document's key."""
        if self._keys is None:
            pks = self._pks or ()
            keys = loads_json("[" + ",".join(pks) + "]")
            if len(keys) != len(pks):  # only if a stored key were not one JSON value
                keys = list(map(loads_json, pks))
            self._keys = keys
        return self._keys

    def columns_wire(self) -> dict[str, Any] | None:
        """The page as the ``cols`` map of :data:`FEATURE_SNAPSHOT_COLUMNS`: ``n`` (how many
        documents), ``c``, ``e``, ``b`` and ``m`` (collections, epochs, body and meta JSON
        texts: each column's values joined by :data:`COLUMN_SEPARATOR`), ``k`` (the keys as
        one JSON array text) and ``l`` (a ``0`` or ``1`` per document: live). None if a value
        holds the separator (a collection or epoch could): send the page as ``docs``."""
        n = len(self.collections)
        pks = self._pks if self._pks is not None else list(map(compact_json, self.keys))
        sep = COLUMN_SEPARATOR
        cols: dict[str, Any] = {
            "n": n, "c": sep.join(self.collections), "k": "[" + ",".join(pks) + "]", "e": sep.join(self.epochs),
            "l": "".join(map(_LIVE_FLAG.__getitem__, self.lives)), "b": sep.join(self.bodies),
            "m": sep.join(self.metas)}
        if not n or any(cols[k].count(sep) != n - 1 for k in "cebm") or len(cols["l"]) != n:
            return None
        return cols

    @classmethod
    def from_json_wire(cls, items: Sequence[Any], *, plain: bool = True) -> DocColumns | None:
        """The page's documents (``[collection, key, epoch, live, body_json, meta_json]``
        each) as columns, when every one is in the common form and valid; None otherwise
        (nothing is raised here). ``plain``: ``items`` already passed :func:`check_plain`;
        if not, the keys are checked here (every other value's exact type is)."""
        if not items or set(map(type, items)) != {list} or set(map(len, items)) != {6}:
            return None
        collections, keys, epochs, lives, bodies, metas = zip(*items)
        return cls.from_columns(collections, keys, epochs, lives, bodies, metas, plain=plain)

    @classmethod
    def from_columns(cls, collections: Sequence[Any], keys: Sequence[Any], epochs: Sequence[Any],
                     lives: Sequence[Any], bodies: Sequence[Any], metas: Sequence[Any], *,
                     plain: bool = False) -> DocColumns | None:
        """:meth:`from_json_wire` of a page given as its six columns (one value per document
        each, of any type: checked here)."""
        if not plain and set(map(type, keys)) != {str} and not _plain_fast(list(keys)):
            return None
        try:
            # A value of another type than str never equals a str, so a set keeps one of them.
            kinds = set(collections)
            stamps = set(epochs)
        except TypeError:  # an unhashable (list, map) collection or epoch
            return None
        if not all(type(c) is str and c for c in kinds) or not all(
                type(e) is str and (e == "" or is_stamp(e)) for e in stamps):
            return None
        if set(map(type, lives)) != {bool} or not are_compact_metas(metas) or set(map(type, bodies)) != {str}:
            return None
        parsed = _parse_all(bodies)
        if parsed is None:
            return None
        if set(map(type, parsed)) != {dict}:
            return None
        joined = "".join(bodies)
        if joined.count("{") == len(bodies) and "[" not in joined:
            # Each body's own "{" is its only one (a string holding one goes the long way), no
            # array: only scalars, and _parse_all checked the numbers.
            return cls(collections, keys, epochs, lives, bodies, metas, parsed)
        values = [v for body in parsed for v in body.values()]
        found = set(map(type, values))
        if not found <= _FLAT_TYPES:
            return None
        if int in found:
            ints = [v for v in values if type(v) is int]
            if min(ints) < -(2**63) or max(ints) > 2**63 - 1:
                return None
        if float in found and not all(map(math.isfinite, [v for v in values if type(v) is float])):
            return None
        return cls(collections, keys, epochs, lives, bodies, metas, parsed)

    def json_wire(self) -> list[list[Any]]:
        """The documents in the JSON-text wire form, as received."""
        return [list(d) for d in zip(self.collections, self.keys, self.epochs, self.lives, self.bodies, self.metas)]

    def _all(self) -> tuple[SnapshotDoc, ...]:
        docs = self._docs
        if docs is None and self.parsed is None:
            docs = self._docs = tuple(map(SnapshotDoc.from_json_form, self.collections, self.keys, self.epochs,
                                          self.lives, self.bodies, self.metas))
        if docs is None:
            out: list[SnapshotDoc] = []
            new, setattr_ = object.__new__, object.__setattr__
            for collection, key, epoch, live, body_json, meta_json, body in zip(
                    self.collections, self.keys, self.epochs, self.lives, self.bodies, self.metas, self.parsed or ()):
                doc = new(SnapshotDoc)
                setattr_(doc, "collection", collection)
                setattr_(doc, "key", key)
                setattr_(doc, "state", {"epoch": epoch, "live": live, "body": body, "meta": {"*": meta_json[6:40]}})
                setattr_(doc, "json_form", (epoch, live, body_json, meta_json))
                out.append(doc)
            docs = self._docs = tuple(out)
        return docs

    def __len__(self) -> int:
        return len(self.collections)

    def __getitem__(self, index: Any) -> Any:
        return self._all()[index]

    def __iter__(self) -> Iterator[SnapshotDoc]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (DocColumns, tuple)):
            return self._all() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DocColumns({len(self)} documents)"


def _json_docs_from_wire(items: list[Any] | tuple[Any, ...]) -> list[SnapshotDoc]:
    """:meth:`SnapshotDoc.from_json_wire` (``plain=True``) for each of ``items`` in one loop:
    the common case (a stamp or '' for the epoch, a flat body, a fresh document's compact meta)
    is checked inline; anything else goes through ``from_json_wire``, which decides and names
    what is wrong (and a document in the map form goes through ``from_wire``). The same
    documents, or the same error."""
    docs: list[SnapshotDoc] = []
    append, new, setattr_ = docs.append, object.__new__, object.__setattr__
    stamp, loads = is_stamp, loads_json_strict
    for d in items:
        if type(d) is list and len(d) == 6:
            collection, key, epoch, live, body_json, meta_json = d
            if (type(collection) is str and collection and type(epoch) is str
                    and (epoch == "" or stamp(epoch))
                    and (live is True or live is False) and type(body_json) is str
                    and type(meta_json) is str and len(meta_json) == 42
                    and meta_json.startswith('{"*":"') and meta_json.endswith('"}')
                    and stamp(meta_json[6:40])):
                try:
                    body = loads(body_json)
                except (ValueError, RecursionError):
                    body = None
                if type(body) is dict and plain_scalars(body.values()):
                    doc = new(SnapshotDoc)
                    setattr_(doc, "collection", collection)
                    setattr_(doc, "key", key)
                    setattr_(doc, "state", {"epoch": epoch, "live": live, "body": body,
                                            "meta": {"*": meta_json[6:40]}})
                    setattr_(doc, "json_form", (epoch, live, body_json, meta_json))
                    append(doc)
                    continue
        if isinstance(d, list) and len(d) == 6:
            append(SnapshotDoc.from_json_wire(d, plain=True))
        else:
            append(SnapshotDoc.from_wire(d, plain=True))
    return docs


# ------------------------------------------------------------------------ authority


@dataclass(frozen=True, slots=True)
class CompensatedWrite:
    """One write the sender refused, and why.

    The correction itself travels as ordinary transactions (a compensating transaction in the
    sender's log, later than the refused one), so that it merges like any other change;
    ``state`` is the sender's authoritative document state at the time, for display.

    Attributes:
        txn_id: the refused transaction.
        collection, key: the document.
        operation: what was refused: ``"create"``, ``"update"`` or ``"delete"``.
        code: the rule that refused it (e.g. ``"write_filter"``, ``"schema"``).
        message: a human-readable reason.
        state: the document's authoritative state (``{"epoch","live","body","meta"}``), or None.
    """

    txn_id: Stamp
    collection: str
    key: Plain
    operation: str
    code: str
    message: str
    state: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not is_stamp(self.txn_id):
            raise ValueError("txn_id must be a transaction id")
        _str("collection", self.collection, empty=False)
        check_plain(self.key, "key")
        if self.operation not in ("create", "update", "delete"):
            raise ValueError("operation must be create, update or delete")
        _str("code", self.code, empty=False)
        _str("message", self.message)
        if self.state is not None:
            _check_doc_state("state", self.state)

    def to_wire(self) -> dict[str, Any]:
        return {"txn_id": self.txn_id, "collection": self.collection, "key": self.key,
                "operation": self.operation, "code": self.code, "message": self.message,
                "state": self.state}

    @classmethod
    def from_wire(cls, data: object) -> CompensatedWrite:
        if not isinstance(data, dict):
            raise ValueError("a compensated write is a map")
        return cls(_get(data, "txn_id"), _get(data, "collection"), _get(data, "key"),
                   _get(data, "operation"), _get(data, "code"), data.get("message", ""),
                   data.get("state"))


@dataclass(frozen=True, slots=True)
class CompensatingWrite:
    """The sender (normally the server) refused writes of the receiver's; see
    :class:`CompensatedWrite`."""

    TAG: ClassVar[str] = "compensating_write"

    writes: tuple[CompensatedWrite, ...]

    def __post_init__(self) -> None:
        if (not isinstance(self.writes, tuple) or not self.writes
                or not all(isinstance(w, CompensatedWrite) for w in self.writes)):
            raise ValueError("writes must be a non-empty tuple of CompensatedWrite")

    def to_body(self) -> dict[str, Any]:
        return {"writes": [w.to_wire() for w in self.writes]}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CompensatingWrite:
        return cls(tuple(CompensatedWrite.from_wire(w) for w in _list("writes", _get(body, "writes"))))


# ------------------------------------------------------------------------ flexible sync


class SubscriptionStatus(StrEnum):
    """The life of a subscription set (Device Sync's states)."""

    PENDING = "pending"
    BOOTSTRAPPING = "bootstrapping"
    COMPLETE = "complete"
    ERROR = "error"
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class SubscriptionQuery:
    """One named query of a subscription set: RQL text or a MongoDB filter document.

    Attributes:
        name: the subscription's name (``""``: unnamed).
        collection: the queried collection.
        query: RQL text (without unbound ``$n``) or a MongoDB filter document.
        ast: optional: the bound query tree in tidesync's JSON form
            (:func:`tidesync.query.node_to_json`). When present it is authoritative and
            ``query`` is its RQL text for logs and error messages (values RQL has no literal
            for, such as dates, appear there as ``$n``).
    """

    name: str
    collection: str
    query: str | dict[str, Any]
    ast: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _str("name", self.name)
        _str("collection", self.collection, empty=False)
        if not isinstance(self.query, str):
            _map("query", self.query)
        if self.ast is not None:
            _map("ast", self.ast)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "collection": self.collection, "query": self.query}
        if self.ast is not None:
            out["ast"] = self.ast
        return out

    @classmethod
    def from_wire(cls, data: object) -> SubscriptionQuery:
        if not isinstance(data, dict):
            raise ValueError("a subscription query is a map")
        return cls(data.get("name", ""), _get(data, "collection"), _get(data, "query"), data.get("ast"))


@dataclass(frozen=True, slots=True)
class Subscribe:
    """(Flexible sync) The sender's subscription set ``set_id`` is now at ``version``, holding
    ``queries``: the receiver should send what matches (and what the sender's user may read)
    and take away what no longer does. Versions only grow; a receiver ignores an older one."""

    TAG: ClassVar[str] = "subscribe"

    set_id: int
    version: int
    queries: tuple[SubscriptionQuery, ...] = ()

    def __post_init__(self) -> None:
        _int("set_id", self.set_id)
        _int("version", self.version)
        if not isinstance(self.queries, tuple) or not all(isinstance(q, SubscriptionQuery) for q in self.queries):
            raise ValueError("queries must be a tuple of SubscriptionQuery")

    def to_body(self) -> dict[str, Any]:
        return {"set_id": self.set_id, "version": self.version,
                "queries": [q.to_wire() for q in self.queries]}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Subscribe:
        return cls(_get(body, "set_id"), _get(body, "version"),
                   tuple(SubscriptionQuery.from_wire(q) for q in _list("queries", body.get("queries", []))))


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """(Flexible sync) Subscription set ``set_id`` at ``version`` reached ``state``
    (``message``: why, for ``error``). ``complete`` follows every :class:`ViewUpdate` of that
    version's bootstrap."""

    TAG: ClassVar[str] = "subscription_state"

    set_id: int
    version: int
    state: SubscriptionStatus
    message: str | None = None

    def __post_init__(self) -> None:
        _int("set_id", self.set_id)
        _int("version", self.version)
        if not isinstance(self.state, SubscriptionStatus):
            raise ValueError("state must be a SubscriptionStatus")
        _opt_str("message", self.message)

    def to_body(self) -> dict[str, Any]:
        return {"set_id": self.set_id, "version": self.version, "state": self.state.value,
                "message": self.message}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SubscriptionState:
        state = _get(body, "state")
        try:
            status = SubscriptionStatus(state)
        except ValueError:
            raise ValueError(f"unknown subscription state {state!r:.40}") from None
        return cls(_get(body, "set_id"), _get(body, "version"), status, body.get("message"))


def _doc_key(item: object) -> tuple[str, Plain]:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise ValueError("a document key is [collection, key]")
    _str("collection", item[0], empty=False)
    check_plain(item[1], "key")
    return (item[0], item[1])


@dataclass(frozen=True, slots=True)
class ViewUpdate:
    """(Flexible sync) Documents entering and leaving the receiver's *view*: the set of
    documents the sender (the server) has decided the receiver holds.

    ``enter`` carries each entering document whole, as its full merge state, which the
    receiver *joins* into what it has (a merge: its unsynced work stays). ``leave`` names
    documents the receiver must drop from its storage **without deleting them**: no delete is
    logged or uploaded, the document lives on elsewhere. Updates are applied in order with the
    :class:`Changes` around them, each atomically with ``view_seq``, which the receiver
    persists and acknowledges with :class:`ViewAck`; it names the last update applied in its
    next ``Hello`` scope, so that a reconnection sends again exactly what may have been lost.

    Attributes:
        view_seq: this update's number; increasing (not necessarily by 1) per receiver
            replica across connections.
        version: the subscription set version whose bootstrap this update belongs to; 0 when
            it comes from routing a change (a write moved documents in or out of the view).
        enter: documents entering the view, whole.
        leave: ``(collection, key)`` of documents leaving it.
        progress: for a bootstrap, documents sent so far and the total (``sent``/``total``).
    """

    TAG: ClassVar[str] = "view_update"

    view_seq: int
    version: int = 0
    enter: tuple[SnapshotDoc, ...] = ()
    leave: tuple[tuple[str, Plain], ...] = ()
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self) -> None:
        _int("view_seq", self.view_seq, lo=1)
        _int("version", self.version)
        if not isinstance(self.enter, tuple) or not all(isinstance(d, SnapshotDoc) for d in self.enter):
            raise ValueError("enter must be a tuple of SnapshotDoc")
        if not isinstance(self.leave, tuple):
            raise ValueError("leave must be a tuple of (collection, key)")
        for item in self.leave:
            _doc_key(item)
        if not isinstance(self.progress, Progress):
            raise ValueError("progress must be a Progress")

    def to_body(self) -> dict[str, Any]:
        return {"view_seq": self.view_seq, "version": self.version,
                "enter": [d.to_wire() for d in self.enter],
                "leave": [[c, k] for c, k in self.leave], "progress": self.progress.to_wire()}

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, plain: bool = False) -> ViewUpdate:
        """Parse a body; ``plain``: it already passed :func:`check_plain` (``codec.decode``)."""
        return cls(_get(body, "view_seq"), body.get("version", 0),
                   tuple(SnapshotDoc.from_wire(d, plain=plain) for d in _list("enter", body.get("enter", []))),
                   tuple(_doc_key(k) for k in _list("leave", body.get("leave", []))),
                   Progress.from_wire(body.get("progress", {})))


@dataclass(frozen=True, slots=True)
class ViewAck:
    """(Flexible sync) Every :class:`ViewUpdate` up to ``view_seq`` is durably applied."""

    TAG: ClassVar[str] = "view_ack"

    view_seq: int

    def __post_init__(self) -> None:
        _int("view_seq", self.view_seq)

    def to_body(self) -> dict[str, Any]:
        return {"view_seq": self.view_seq}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ViewAck:
        return cls(_get(body, "view_seq"))


# ------------------------------------------------------------------------ connection control


@dataclass(frozen=True, slots=True)
class Error:
    """The connection failed; the sender sends nothing more and will close.

    Its shape is frozen across protocol versions (see :mod:`tidesync.protocol.codec`), so that
    a peer of any version can tell why it was refused.

    Attributes:
        code: an :class:`~tidesync.protocol.codes.ErrorCode` value; a receiver must accept codes
            it does not know (from newer peers) and go by ``action``.
        message: a human-readable explanation (never secrets).
        action: what the receiver should do: retry, reauthenticate or stop.
        retry_after_ms: when ``action`` is retry, the earliest sensible reconnection delay.
    """

    TAG: ClassVar[str] = "error"

    code: str
    message: str = ""
    action: ErrorAction | None = None
    retry_after_ms: int | None = None

    def __post_init__(self) -> None:
        _str("code", self.code, empty=False, max_len=100)
        _str("message", self.message, max_len=10_000)
        if self.action is None:
            object.__setattr__(self, "action", action_of(self.code))
        elif not isinstance(self.action, ErrorAction):
            raise ValueError("action must be an ErrorAction")
        _opt_int("retry_after_ms", self.retry_after_ms)

    @property
    def error_code(self) -> ErrorCode | None:
        """The code as an :class:`ErrorCode`, or None when this version does not know it."""
        try:
            return ErrorCode(self.code)
        except ValueError:
            return None

    def to_body(self) -> dict[str, Any]:
        assert self.action is not None
        return {"code": self.code, "message": self.message, "action": self.action.value,
                "retry_after_ms": self.retry_after_ms}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Error:
        action = body.get("action")
        try:
            parsed = None if action is None else ErrorAction(action)
        except ValueError:
            raise ValueError(f"unknown error action {action!r:.40}") from None
        return cls(_get(body, "code"), body.get("message", ""), parsed, body.get("retry_after_ms"))


@dataclass(frozen=True, slots=True)
class Ping:
    """Heartbeat request; the receiver answers :class:`Pong` with the same ``nonce``."""

    TAG: ClassVar[str] = "ping"

    nonce: int

    def __post_init__(self) -> None:
        _int("nonce", self.nonce)

    def to_body(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Ping:
        return cls(_get(body, "nonce"))


@dataclass(frozen=True, slots=True)
class Pong:
    """Heartbeat answer, echoing the :class:`Ping`'s ``nonce``."""

    TAG: ClassVar[str] = "pong"

    nonce: int

    def __post_init__(self) -> None:
        _int("nonce", self.nonce)

    def to_body(self) -> dict[str, Any]:
        return {"nonce": self.nonce}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Pong:
        return cls(_get(body, "nonce"))


@dataclass(frozen=True, slots=True)
class Close:
    """The sender will send nothing more; the receiver answers with its own ``Close``."""

    TAG: ClassVar[str] = "close"

    reason: str = ""

    def __post_init__(self) -> None:
        _str("reason", self.reason, max_len=10_000)

    def to_body(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Close:
        return cls(body.get("reason", ""))


Message: TypeAlias = (
    Hello | Welcome | Changes | Descriptors | Ack | Snapshot | CompensatingWrite | Subscribe
    | SubscriptionState | ViewUpdate | ViewAck | Error | Ping | Pong | Close
)

#: Every message class by its wire tag.
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TAG: cls
    for cls in (Hello, Welcome, Changes, Descriptors, Ack, Snapshot, CompensatingWrite,
                Subscribe, SubscriptionState, ViewUpdate, ViewAck, Error, Ping, Pong, Close)
}
