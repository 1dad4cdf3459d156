"""Bad input against a real running server, over a raw WebSocket (``websockets.sync.client``).

Each bad connection must get an ``Error`` message with a code (decoded with
``tidesync.protocol.codec``) and then be closed; the server must keep serving a normal synced
client meanwhile and afterwards; and nothing on the server may change (log head, documents).
"""

from __future__ import annotations

import json
import secrets
import time
import zlib
from typing import Any

import jwt
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import tidesync
from tests.helpers.servers import running_server, synced_db
from tests.models import Technician
from tidesync.core.clock import HybridClock
from tidesync.core.operations import CreateDoc, ListInsert
from tidesync.core.stamp import ZERO, ReplicaId, Stamp
from tidesync.core.transaction import Transaction
from tidesync.protocol.codec import PROTOCOL_VERSION, decode, encode
from tidesync.protocol.messages import Ack, Changes, Error, Hello, Message, Snapshot, Welcome

pytestmark = pytest.mark.slow
T = 20
MAX_MESSAGE = 64 * 1024  # the server's limit in these tests, so "oversized" stays cheap


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One server, one anonymous user, one normal synced client that keeps syncing throughout."""
    tmp = tmp_path_factory.mktemp("bad_input")
    with running_server(tmp / "server", max_message_size=MAX_MESSAGE) as server:
        good = synced_db(tmp / "good.db", server.url, [Technician], partition="p1")
        watcher = synced_db(tmp / "watcher.db", server.url, [Technician], partition="p1")
        app = tidesync.App("default", base_url=server.url, storage_dir=tmp / "raw-users")
        user = app.log_in(tidesync.Credentials.anonymous())
        try:
            with good.write():
                good.create(Technician, _id="seed", name="before any bad input")
            good.sync_session.wait_for_upload_completion(timeout=T)
            yield _Env(server, good, watcher, user, app.sync_url)
        finally:
            good.close()
            watcher.close()


class _Env:
    def __init__(self, server: Any, good: tidesync.Database, watcher: tidesync.Database, user: Any, url: str) -> None:
        self.server, self.good, self.watcher, self.user, self.url = server, good, watcher, user, url
        self.n = 0

    @property
    def backend(self) -> Any:
        return self.server.app.state.tidesync.backend

    def server_state(self) -> tuple[int, list[tuple[Any, ...]], int]:
        b = self.backend
        with b._lock:
            docs = b._engine.query("SELECT collection, pk, body, meta, epoch, live FROM documents ORDER BY collection, pk")
            nlog = b._engine.query("SELECT count(*) FROM log")[0][0]
        return b.head_seq(), docs, nlog

    def hello(self, **kw: Any) -> Hello:
        args: dict[str, Any] = {"replica_id": ReplicaId(secrets.token_hex(8)), "token": self.user.access_token,
                                "scope": {"partition": {"key": "_partition", "value": "p1"}}}
        args.update(kw)
        return Hello(**args)

    def still_serving(self) -> None:
        """The normal client's next write reaches the server and the other normal client."""
        self.n += 1
        key = f"good-{self.n}"
        with self.good.write():
            self.good.create(Technician, _id=key, name="written while bad input arrives")
        self.good.sync_session.wait_for_upload_completion(timeout=T)
        self.watcher.sync_session.wait_for_download_completion(timeout=T)
        assert self.watcher.get(Technician, key) is not None
        assert self.good.sync_session.last_error is None and self.watcher.sync_session.last_error is None


def exchange(url: str, frames: list[bytes | str]) -> tuple[list[Message], Any]:
    """Send ``frames``, then read until the server closes. Returns (messages, close frame)."""
    received: list[Message] = []
    with connect(url, max_size=None, compression=None, open_timeout=T, close_timeout=T) as ws:
        for f in frames:
            try:
                ws.send(f)
            except ConnectionClosed:
                break  # the server already refused an earlier frame
        deadline = time.monotonic() + T
        try:
            while True:
                payload = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
                assert isinstance(payload, bytes), "the server sent a text frame"
                received.append(decode(payload))
        except ConnectionClosed:
            pass
        except TimeoutError:
            pytest.fail(f"the server did not close the connection within {T} s; it sent {received}")
        close = ws.protocol.close_rcvd
    return received, close


def assert_refused(env: _Env, frames: list[bytes | str], code: str) -> list[Message]:
    """The server answers ``frames`` with Error(code), closes, serves others, changes nothing."""
    before = env.server_state()
    received, _ = exchange(env.url, frames)
    errors = [m for m in received if isinstance(m, Error)]
    assert errors, f"no Error message; received {received}"
    assert received[-1] is errors[-1] and len(errors) == 1, f"the Error must be the last message: {received}"
    assert errors[0].code == code, f"expected {code}, got {errors[0]}"
    assert errors[0].action is not None
    assert env.server_state() == before, "bad input changed the server's state"
    env.still_serving()
    return received


_clocks: dict[str, HybridClock] = {}


def txn(rid: ReplicaId, *ops_of: Any) -> Transaction:
    """A transaction of replica ``rid`` (one clock per replica: ids never repeat)."""
    clock = _clocks.setdefault(rid, HybridClock(rid, lambda: int(time.time() * 1000), Stamp("")))
    ops = []
    for make in ops_of:
        ops.append(make(clock.now()))
    return Transaction(ops[0].stamp, rid, ops[0].stamp, (), tuple(ops))


def create_op(key: str, partition: str = "p1") -> Any:
    return lambda s: CreateDoc("Technician", key, s, ZERO, {"_id": key, "_partition": partition, "name": "bad"}, {})


# -- framing and codec -----------------------------------------------------------------------


def test_malformed_bytes(env):
    assert_refused(env, [b"\xc1\xc1 not msgpack at all"], "malformed_message")


def test_a_valid_msgpack_value_that_is_no_envelope(env):
    assert_refused(env, [msgpack.packb({"hello": "world"})], "malformed_message")


def test_truncated_msgpack(env):
    full = encode(env.hello())
    assert_refused(env, [full[: len(full) // 2]], "malformed_message")


def test_truncated_changes_after_a_good_handshake(env):
    h = env.hello()
    bad = encode(Changes(0, 1, 1, ((1, txn(h.replica_id, create_op("never-1"))),)))
    received = assert_refused(env, [encode(h), bad[:-7]], "malformed_message")
    assert isinstance(received[0], Welcome)


def test_oversized_frame_gets_message_too_large(env):
    assert_refused(env, [b"\x94" + b"\x00" * MAX_MESSAGE], "message_too_large")


def test_oversized_compressed_body_is_refused_before_it_is_inflated(env):
    bomb = zlib.compress(msgpack.packb({"replica_id": "a" * (8 * MAX_MESSAGE)}), 9)
    assert len(bomb) < MAX_MESSAGE
    assert_refused(env, [msgpack.packb([PROTOCOL_VERSION, "hello", 1, bomb])], "message_too_large")


def test_a_frame_beyond_the_transport_limit_closes_with_1009(env):
    # Past the WebSocket layer's own cap the frame never reaches the protocol: the transport
    # closes with 1009 (message too big) -- still an error code, and nothing else happens.
    before = env.server_state()
    received, close = exchange(env.url, [b"\x00" * (4 * MAX_MESSAGE)])
    assert received == []
    assert close is not None and close.code == 1009
    assert env.server_state() == before
    env.still_serving()


def test_text_frame(env):
    assert_refused(env, ["hello, server"], "malformed_message")


def test_text_frame_holding_json_of_a_hello(env):
    assert_refused(env, [json.dumps([PROTOCOL_VERSION, "hello", 0, env.hello().to_body()])], "malformed_message")


def test_unknown_message_type(env):
    assert_refused(env, [msgpack.packb([PROTOCOL_VERSION, "frobnicate", 0, {}])], "unknown_message_type")


def test_old_protocol_version(env):
    old = msgpack.packb([PROTOCOL_VERSION - 1, "hello", 0, env.hello().to_body()], use_bin_type=True)
    assert_refused(env, [old], "version_mismatch")


def test_newer_protocol_version(env):
    new = msgpack.packb([PROTOCOL_VERSION + 1, "hello", 0, env.hello().to_body()], use_bin_type=True)
    assert_refused(env, [new], "version_mismatch")


# -- out of order ----------------------------------------------------------------------------


def test_changes_before_hello(env):
    rid = ReplicaId(secrets.token_hex(8))
    assert_refused(env, [encode(Changes(0, 1, 1, ((1, txn(rid, create_op("never-2"))),)))], "unexpected_message")


def test_ack_before_hello(env):
    assert_refused(env, [encode(Ack(1))], "unexpected_message")


def test_welcome_from_the_initiator(env):
    assert_refused(env, [encode(Welcome(ReplicaId(secrets.token_hex(8))))], "unexpected_message")


def test_second_hello(env):
    h = env.hello()
    assert_refused(env, [encode(h), encode(h)], "unexpected_message")


def test_ack_for_a_batch_never_sent(env):
    received = assert_refused(env, [encode(env.hello()), encode(Ack(10_000))], "sequence_gap")
    assert isinstance(received[0], Welcome)


def test_ack_of_a_snapshot_page_never_sent(env):
    h = env.hello(acceptor_id=env.backend.replica_id, checkpoint=env.backend.head_seq())
    assert_refused(env, [encode(h), encode(Ack(0, snapshot_page=3))], "sequence_gap")


def test_changes_whose_from_seq_leaves_a_gap(env):
    h = env.hello()
    gap = Changes(5, 6, 6, ((6, txn(h.replica_id, create_op("never-3"))),))
    assert_refused(env, [encode(h), encode(gap)], "sequence_gap")


def test_second_changes_that_does_not_continue_the_first(env):
    h = env.hello()
    first = Changes(0, 0, 0)
    skip = Changes(3, 4, 4, ((4, txn(h.replica_id, create_op("never-4"))),))
    assert_refused(env, [encode(h), encode(first), encode(skip)], "sequence_gap")


def test_snapshot_from_a_client_in_the_middle_of_changes(env):
    h = env.hello()
    assert_refused(env, [encode(h), encode(Changes(0, 0, 0)), encode(Snapshot(1, (), 0, True))], "sequence_gap")


# -- handshake and authority -----------------------------------------------------------------


def test_hello_without_a_token(env):
    assert_refused(env, [encode(env.hello(token=None))], "auth_failed")


def test_hello_with_a_garbage_token(env):
    assert_refused(env, [encode(env.hello(token="not-a-jwt"))], "auth_failed")


def test_hello_with_a_forged_token(env):
    claims = jwt.decode(env.user.access_token, options={"verify_signature": False})
    forged = jwt.encode(claims, "not the server's secret, but long enough for HS256", algorithm="HS256")
    assert_refused(env, [encode(env.hello(token=forged))], "auth_failed")


def test_hello_with_an_expired_token(env):
    secret = env.server.config.secret
    claims = jwt.decode(env.user.access_token, options={"verify_signature": False})
    claims["exp"] = int(time.time()) - 3600
    expired = jwt.encode(claims, secret, algorithm="HS256")
    assert_refused(env, [encode(env.hello(token=expired))], "token_expired")


def test_hello_with_the_servers_own_replica_id(env):
    assert_refused(env, [encode(env.hello(replica_id=env.backend.replica_id))], "same_replica")


def test_hello_claiming_another_devices_replica_id_cannot_move_its_checkpoint(tmp_path):
    with running_server(tmp_path / "server") as server:
        backend = server.app.state.tidesync.backend
        victim = synced_db(tmp_path / "victim.db", server.url, [Technician], partition="p1")
        try:
            with victim.write():
                victim.create(Technician, _id="v0", name="uploaded")
            victim.sync_session.wait_for_upload_completion(timeout=T)
            victim.sync_session.pause()
            for i in range(1, 6):
                with victim.write():
                    victim.create(Technician, _id=f"v{i}", name="written offline")
            # Another user, who learnt the victim's replica id from a stamp, says Hello as it.
            app = tidesync.App("default", base_url=server.url, storage_dir=tmp_path / "other-users")
            other = app.log_in(tidesync.Credentials.anonymous())
            rid = ReplicaId(victim.replica_id)
            forged = Hello(rid, other.access_token, {"partition": {"key": "_partition", "value": "p1"}},
                           backend.replica_id, 0)
            with connect(app.sync_url, max_size=None, compression=None) as ws:
                ws.send(encode(forged))
                welcome = decode(ws.recv(timeout=T))
                if isinstance(welcome, Welcome):
                    start = welcome.checkpoint
                    ws.send(encode(Changes(start, start + 3, start + 3)))
                    try:
                        while not isinstance(decode(ws.recv(timeout=T)), Ack):
                            pass
                    except ConnectionClosed:
                        pass
            victim.sync_session.resume()
            victim.sync_session.wait_for_upload_completion(timeout=T)
            with backend._lock:
                keys = {json.loads(pk) for (pk,) in backend._engine.query(
                    "SELECT pk FROM documents WHERE collection = 'Technician' AND live = 1")}
            assert {f"v{i}" for i in range(6)} <= keys, "the server lost writes the victim saw acknowledged"
        finally:
            victim.close()


def test_hello_with_another_partition_key(env):
    assert_refused(env, [encode(env.hello(scope={"partition": {"key": "owner", "value": "p1"}}))], "bad_scope")


# -- well-framed transactions the server cannot integrate ----------------------------------


def test_regression_a_batch_the_merge_core_refuses_gets_an_error_not_a_crash(env):
    """A batch whose second transaction is malformed for the merge core (a list element id
    that does not sort after its anchor): the connection fails with an Error, and neither
    transaction of the batch is integrated."""
    h = env.hello()
    rid = h.replica_id
    ok = txn(rid, create_op("never-5"))
    bad = txn(rid, lambda s: ListInsert("Technician", "seed", s, ZERO, ("tags",), (ZERO,), "a", "zzzz", "x"))
    received = assert_refused(env, [encode(h), encode(Changes(0, 2, 2, ((1, ok), (2, bad))))], "malformed_message")
    assert isinstance(received[0], Welcome)


def test_a_batch_the_merge_core_refuses_writes_no_compensation_for_its_refused_writes(env):
    """The same malformed batch, but it also holds a write the server refuses (a create in
    another partition): the batch fails as a whole, so the compensating transaction for the
    refused write is not written either (it went to the log and to other devices before the
    batch failed)."""
    h = env.hello()
    rid = h.replica_id
    foreign = txn(rid, create_op("never-6", partition="p2"))
    bad = txn(rid, lambda s: ListInsert("Technician", "seed", s, ZERO, ("tags",), (ZERO,), "a", "zzzz", "x"))
    assert_refused(env, [encode(h), encode(Changes(0, 2, 2, ((1, foreign), (2, bad))))], "malformed_message")


def test_a_write_to_another_partition_is_compensated_not_integrated(env):
    """Not an error: the server refuses the write (CompensatingWrite) and the session goes on."""
    h = env.hello()
    before = env.server_state()
    foreign = txn(h.replica_id, create_op("foreign", partition="p2"))
    with connect(env.url, max_size=None, compression=None) as ws:
        ws.send(encode(h))
        ws.send(encode(Changes(0, 1, 1, ((1, foreign),))))
        got: list[Message] = []
        while not any(m.TAG == "compensating_write" for m in got) or not any(m.TAG == "ack" for m in got):
            got.append(decode(ws.recv(timeout=T)))
    assert not any(isinstance(m, Error) for m in got)
    # The documents are untouched (the server may log its compensating transaction).
    assert env.server_state()[1] == before[1]
    env.still_serving()


def test_bad_connections_while_a_client_syncs_continuously(env):
    """Many bad connections at once, while the normal client writes: all refused, it syncs."""
    import threading

    frames: list[list[bytes | str]] = [
        [b"\xff" * 10], [encode(Ack(3))], ["text"], [msgpack.packb([0, "hello", 0, {}])],
        [encode(env.hello(token="forged"))],
    ] * 4
    failures: list[str] = []

    def bad(fr: list[bytes | str]) -> None:
        try:
            received, _ = exchange(env.url, fr)
            if not received or not isinstance(received[-1], Error):
                failures.append(f"{fr!r:.40}: {received}")
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(f"{fr!r:.40}: {exc!r}")

    threads = [threading.Thread(target=bad, args=(fr,)) for fr in frames]
    for t in threads:
        t.start()
    for _ in range(3):
        env.still_serving()
    for t in threads:
        t.join(T)
    assert not failures
    env.still_serving()
