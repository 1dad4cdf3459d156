"""The client's sync session: a background thread that keeps a database in sync with a server.

The session is a thin driver (STYLE.md rule 1): it owns the WebSocket (``websockets``' sync
client), a reader thread, timers and reconnection. Every decision is made by the sans-I/O
:class:`~tidesync.protocol.link.Link` and :class:`~tidesync.protocol.replicator.Replicator`;
the session executes their actions against the database, which is a
:class:`~tidesync.protocol.replica.Replica`.

Threads: ``tidesync-sync`` runs the session and reads the socket itself (it waits on the
socket and on its inbox at once: client/_wsconn.py), so a download is handled on the thread
that received it. Behind a proxy the session uses ``websockets``' threaded client, whose socket
thread puts each received message straight into the session's inbox (with an older
``websockets``, a ``tidesync-sync-reader`` thread takes them from ``websockets``' queue).
Nothing here blocks the app: local writes commit to the file and return; the session notices
(``local_commit``) and uploads in the background. Downloads are integrated one batch per local
transaction, and the database's change listeners fire for them.
"""

from __future__ import annotations

import collections
import functools
import http.client
import json
import logging
import queue
import random
import selectors
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..core.values import to_plain
from ..errors import (
    AuthError, CertificateError, CompensatingWriteError, ConnectionClosedError, SyncError, TimeoutError, UsageError,
)
from ..protocol.actions import (
    DOWNLOAD, Announce, DownloadComplete, Fail, Integrate, IntegrateSnapshot, Notify, RecordAck, ReportProgress, Send,
    UploadComplete,
)
from ..protocol.codes import ErrorCode
from ..protocol.events import Closed, Connected, Failed, MessageReceived
from ..protocol.link import Link
from ..protocol.messages import CompensatingWrite
from ..protocol.replica import IntegrateResult, SnapshotResult
from ..protocol.replicator import Replicator, perform
from ..protocol.states import Role
from ..store.database import _gc_paused
from ._wsconn import SocketConnection, WakeInbox, direct_socket_usable, wait_readable
from .app import User

if TYPE_CHECKING:
    from ..store.database import Database

__all__ = ["SyncConfig", "SyncSession", "Progress", "attach_sync"]

log = logging.getLogger("tidesync.sync")

ConnectionState = Literal["disconnected", "connecting", "connected"]
SessionState = Literal["active", "paused", "inactive"]


@dataclass(frozen=True, slots=True)
class Progress:
    """Transfer progress in one direction, as Realm reports it.

    ``transferred`` and ``transferable`` count transactions (documents during a snapshot
    bootstrap); ``estimate`` is transferred / transferable, 1.0 when there is nothing to do.
    """

    direction: Literal["upload", "download"]
    transferred: int
    transferable: int
    transferred_bytes: int = 0
    transferable_bytes: int = 0

    @property
    def estimate(self) -> float:
        if self.transferable <= 0:
            return 1.0
        return min(1.0, self.transferred / self.transferable)


@dataclass
class SyncConfig:
    """How a database syncs.

    Args:
        user: the logged-in user (``app.log_in(...)``).
        partition: the partition value to sync (partition-based sync). Every document carries
            it in ``partition_key``; tidesync fills it in when a write omits it, and refuses a
            write of another partition with ``PartitionError`` before anything is uploaded.
        partition_key: the partition field (``_partition``, the server's default).
        flexible: flexible (query subscription) sync instead of a partition: the database
            syncs what ``db.subscriptions`` asks for (see docs/flexible-sync.md).
        initial_subscriptions: (flexible) ``f(subs, db)`` (or ``f(subs)``) run in a
            ``db.subscriptions.update()`` block the first time the file is opened with
            flexible sync.
        rerun_initial_subscriptions: (flexible) run ``initial_subscriptions`` on every open.
        error_handler: called as ``error_handler(session, error)`` on the session thread for
            every sync error (compensating writes included).
        min_backoff, max_backoff: reconnection delay bounds in seconds (full jitter between).
        batch_limit: transactions per upload batch.
        max_message_size: the largest sync message (WebSocket message) sent or accepted;
            keep it equal to the server's ``max_message_size``.
        max_assembled_size: the largest message sent or accepted in parts (a transaction
            larger than ``max_message_size``; the server announces the ``parts`` feature),
            as the server's ``max_assembled_size``.
    """

    user: User
    partition: Any = None
    partition_key: str = "_partition"
    flexible: bool = False
    error_handler: Callable[[SyncSession, SyncError], None] | None = None
    min_backoff: float = 0.25
    max_backoff: float = 30.0
    batch_limit: int = 500
    batch_bytes: int = 1 << 20
    heartbeat_interval_ms: int = 20_000
    max_message_size: int = 16 * 1024 * 1024
    max_assembled_size: int = 64 * 1024 * 1024
    initial_subscriptions: Callable[[Any], None] | None = None
    rerun_initial_subscriptions: bool = False

    def scope(self) -> dict[str, Any]:
        if self.flexible:
            return {"subscriptions": []}
        if self.partition is None:
            return {}
        return {"partition": {"key": self.partition_key, "value": to_plain(self.partition)}}


class _Token:
    def __init__(self, registry: list[Any], item: Any) -> None:
        self._registry, self._item = registry, item

    def remove(self) -> None:
        if self._item in self._registry:
            self._registry.remove(self._item)


class SyncSession:
    """The background sync of one database. Reach it as ``db.sync_session``."""

    def __init__(self, db: Database, config: SyncConfig, *, rng: random.Random | None = None) -> None:
        self._db = db
        self.config = config
        self._rng = rng or random.Random()
        self._inbox = WakeInbox()
        self._cond = threading.Condition()
        self.connection_state: ConnectionState = "disconnected"
        self.state: SessionState = "active"
        self._stop = False
        self._wake = threading.Event()
        #: The last "too large to upload" error reported (each is reported once).
        self._too_large: str | None = None
        self._server_id: str | None = db._setting("sync_server_id")
        self._acked = self._checkpoint_acked()
        self._received = self._checkpoint_received()
        # Checkpoint values of the server kept in memory, stored at most once a second
        # (_store_checkpoint): the server's Acks, and downloads that carried no transaction.
        self._unstored_acked: int | None = None
        self._unstored_received: int | None = None
        self._unstored_since = 0.0
        self._download_complete = False
        self._last_error: SyncError | None = None
        self._progress_callbacks: list[tuple[str, Callable[[Progress], None]]] = []
        self._connection_callbacks: list[Callable[[str, str], None]] = []
        self._last_progress: dict[str, Progress] = {}
        self._ws: Any = None
        #: The connection's snapshot page writer (None between connections).
        self._writer: _PageWriter | None = None
        # Flexible sync: db.subscriptions (client/subscriptions.py), attached before we start.
        self._flexible: Any = getattr(db, "subscriptions", None) if config.flexible else None
        self._thread = threading.Thread(target=self._run, name="tidesync-sync", daemon=True)
        self._thread.start()

    # -- public API ------------------------------------------------------------------------

    def pause(self) -> None:
        """Disconnect and stay disconnected until :meth:`resume`. Local work goes on."""
        with self._cond:
            if self.state == "inactive":
                return
            self.state = "paused"
        self._inbox.put(("pause", None))
        self._wake.set()

    def resume(self) -> None:
        """Reconnect after :meth:`pause` (or after a fatal error made the session inactive)."""
        with self._cond:
            if self._stop:
                return
            self.state = "active"
        self._wake.set()

    def wait_for_upload_completion(self, timeout: float | None = None) -> None:
        """Block until every local change made before the call is acknowledged by the server.

        Raises:
            tidesync.TimeoutError: not done within ``timeout`` seconds.
        """
        target = self._local_head()
        self._wait(lambda: self._acked >= target, timeout, "upload")

    def wait_for_download_completion(self, timeout: float | None = None) -> None:
        """Block until every change the server held when the call was made is integrated here.

        Asks the server for its current log position (HTTP), then waits until this database has
        integrated the server's log up to it.

        Raises:
            tidesync.TimeoutError: not done within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        head = None
        while head is None:
            try:
                head = self._server_head()
            except (ConnectionClosedError, AuthError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError("download did not complete: the server cannot be reached") from None
                time.sleep(0.1)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._wait(lambda: self._received >= head and self.connection_state == "connected", remaining, "download")

    def add_progress_notifier(self, callback: Callable[[Progress], None],
                              direction: Literal["upload", "download"] = "download") -> _Token:
        """Call ``callback(progress)`` on the session thread whenever progress is reported."""
        item = (direction, callback)
        self._progress_callbacks.append(item)
        return _Token(self._progress_callbacks, item)

    def add_connection_callback(self, callback: Callable[[str, str], None]) -> _Token:
        """Call ``callback(old_state, new_state)`` when the connection state changes."""
        self._connection_callbacks.append(callback)
        return _Token(self._connection_callbacks, callback)

    @property
    def last_error(self) -> SyncError | None:
        """The last sync error reported (None when none)."""
        return self._last_error

    def close(self) -> None:
        """Stop syncing (the database's ``close()`` does this)."""
        self._stop = True
        self.state = "inactive"
        if self._flexible is not None:
            self._flexible._close()
        self._inbox.put(("stop", None))
        self._wake.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing a socket that may already be gone
                pass
        if self._thread is not threading.current_thread():
            self._thread.join(10)

    # -- called by the database --------------------------------------------------------------

    def local_commit(self) -> None:
        self._inbox.put(("commit", None))

    # -- helpers -----------------------------------------------------------------------------

    def _wait(self, condition: Callable[[], bool], timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not condition():
                if self._stop:
                    raise ConnectionClosedError("the sync session was closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{what} did not complete within {timeout} s "
                                       f"(connection {self.connection_state}, session {self.state})")
                self._cond.wait(remaining if remaining is None else min(remaining, 0.5))

    def _local_head(self) -> int:
        with self._db._lock:
            rows = self._db._engine.query("SELECT max(seq) FROM log WHERE via IS NULL")
        return int(rows[0][0] or 0)

    def _copy_position(self) -> tuple[bool, tuple[str, int, int] | None]:
        """For ``db.write_copy()``: whether the server acknowledged every local write, and
        the sync position to give the copy (the server's id, what was received from it and
        what it acknowledged, as known now; None before the first connection)."""
        if self._local_head() > self._acked:
            return False, None
        if self._server_id is None:
            return True, None
        return True, (self._server_id, self._received, self._acked)

    def _checkpoint_acked(self) -> int:
        return self._db.checkpoint(self._server_id).acked if self._server_id else 0  # type: ignore[arg-type]

    def _checkpoint_received(self) -> int:
        return self._db.checkpoint(self._server_id).received if self._server_id else 0  # type: ignore[arg-type]

    def _server_head(self) -> int:
        app = self.config.user.app
        url = f"{app.base_url}/api/{app.app_id}/sync/head"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.config.user.access_token}"})
        try:
            with urllib.request.urlopen(req, timeout=app.timeout, context=app.ssl_context()) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                self._refresh_token()
            raise ConnectionClosedError(f"server answered {exc.code}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # e.g. IncompleteRead: cut mid-body
            raise ConnectionClosedError(f"cannot reach the server: {exc}") from exc
        return int(data["head"])

    def _set_connection(self, new: ConnectionState) -> None:
        old = self.connection_state
        if old == new:
            return
        with self._cond:
            self.connection_state = new
            self._cond.notify_all()
        for cb in list(self._connection_callbacks):
            try:
                cb(old, new)
            except Exception:
                log.exception("a connection callback raised")

    def _report(self, error: SyncError) -> None:
        self._last_error = error
        handler = self.config.error_handler
        if handler is not None:
            try:
                handler(self, error)
            except Exception:
                log.exception("the sync error handler raised")
        else:
            log.warning("sync error: %s", error)

    def _refresh_token(self) -> bool | None:
        """True: refreshed. False: the server refused (log in again). None: it could not be
        asked (unreachable); the session retries later."""
        try:
            self.config.user.refresh_access_token()
            return True
        except AuthError as exc:
            self._report(exc)
            return False
        except ConnectionClosedError:
            return None

    # -- the session thread ------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop:
            if self.state != "active":
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                connected = self._connect_and_sync()
                attempt = 0 if connected else attempt + 1
            except CertificateError as exc:  # it would fail the same way again: stop, say why
                self._report(exc)
                self.state = "inactive"
                attempt += 1
            except UsageError as exc:
                if exc.code != ErrorCode.MESSAGE_TOO_LARGE.value:
                    log.debug("sync connection ended: %r", exc)
                elif exc.message != self._too_large:
                    # A transaction the server cannot take whole: it stays in the file and
                    # is retried (with the backoff), but the app must learn why nothing moves.
                    self._too_large = exc.message
                    self._report(SyncError(
                        f"cannot upload: {exc.message}", code=ErrorCode.MESSAGE_TOO_LARGE.value, action="retry",
                        advice="split the write into smaller transactions, or raise max_assembled_size "
                               "alike on the server ([sync] in tidesync.toml) and in SyncConfig; the "
                               "transaction stays in this database and is retried"))
                attempt += 1
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                log.debug("sync connection ended: %r", exc)
                attempt += 1
            finally:
                self._ws = None
                self._set_connection("disconnected")
            if self._stop:
                break
            if self.state == "active":
                delay = self._rng.uniform(0, min(self.config.max_backoff,
                                                 self.config.min_backoff * (2 ** min(attempt, 16))))
                self._wake.wait(delay)
                self._wake.clear()

    def _connect_and_sync(self) -> bool:
        """One connection, from connect to close. Returns True if the handshake completed."""
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        app = self.config.user.app
        inbox = self._inbox
        own_socket = direct_socket_usable(app.sync_url)
        direct = None if own_socket else _direct_connection(inbox)
        self._set_connection("connecting")
        try:
            if own_socket:
                ws: Any = SocketConnection(app.sync_url, ssl_context=app.ssl_context(), open_timeout=10)
            else:
                kwargs: dict[str, Any] = {} if direct is None else {"create_connection": direct}
                ws = connect(app.sync_url, ssl=app.ssl_context(), open_timeout=10, close_timeout=2,
                             max_size=None, compression=None, ping_interval=None, **kwargs)
        except (OSError, WebSocketException, TimeoutError) as exc:
            from .http import certificate_error, is_certificate_failure

            if is_certificate_failure(exc):
                raise certificate_error(app.sync_url, exc) from exc
            raise ConnectionClosedError(f"cannot connect to {app.sync_url}: {exc}") from exc
        self._ws = ws

        def reader() -> None:
            try:
                for payload in ws:
                    if isinstance(payload, str):
                        payload = payload.encode()
                    inbox.put(("data", (ws, payload)))
            except Exception:  # noqa: BLE001 - any socket end is a lost connection
                pass
            inbox.put(("lost", ws))

        if not own_socket and direct is None:
            threading.Thread(target=reader, name="tidesync-sync-reader", daemon=True).start()
        next_item = self._socket_reader(ws, inbox) if own_socket else (lambda: inbox.get(timeout=1.0))
        link = Link(Role.INITIATOR, heartbeat_interval_ms=self.config.heartbeat_interval_ms,
                    max_message_size=self.config.max_message_size,
                    max_assembled_size=self.config.max_assembled_size)
        scope = self._flexible._hello_scope() if self._flexible is not None else self.config.scope()
        replicator = Replicator(self._db.replica_id, Role.INITIATOR, scope=scope,
                                token=self.config.user.fresh_access_token(), info={"sdk": "tidesync-python"},
                                expected_peer=self._server_id,  # type: ignore[arg-type]
                                batch_limit=self.config.batch_limit, batch_bytes=self.config.batch_bytes)
        handshake_done = False
        writer = self._writer = _PageWriter(self._db, inbox)
        try:
            self._execute(replicator.start(), link, replicator)
            self._flush(link, ws)
            self._warm_upload()
            while not self._stop:
                try:
                    kind, item = next_item()
                except queue.Empty:
                    self._store_checkpoint()
                    link.tick(int(time.monotonic() * 1000))
                    self._flush(link, ws)
                    if link.finished:
                        return handshake_done
                    continue
                if kind == "pause" and self.state == "active" and not self._stop:
                    continue  # a pause that a resume() already cancelled
                if kind == "stop" or kind == "pause":
                    if link.state.name == "ACTIVE":
                        from ..protocol.messages import Close

                        try:
                            link.send(Close("client closing"))
                            self._flush(link, ws)
                        except SyncError:
                            pass
                    return handshake_done
                if kind == "subscriptions":  # flexible sync: a new subscription set version
                    if handshake_done and self._flexible is not None:
                        self._execute(self._flexible._outgoing(), link, replicator)
                elif kind == "lost":
                    if item is ws:
                        link.connection_lost()
                elif kind == "stored":
                    if item is writer:
                        self._drain(link, replicator, wait=False)
                elif kind == "commit":
                    self._execute(replicator.local_commit(self._db.head_seq()), link, replicator)
                elif kind == "data":
                    source, payload = item
                    if source is not ws:
                        continue  # left over from an earlier connection
                    if len(payload) < self.BULK_PAYLOAD:
                        link.receive(payload)
                    else:
                        # A snapshot page or a large batch: tens of thousands of new objects
                        # that form no cycles, which each collection meanwhile would scan.
                        with _gc_paused():
                            link.receive(payload)
                for event in link.events_received():
                    if isinstance(event, MessageReceived):
                        self._execute(replicator.handle(event.message), link, replicator)
                    elif isinstance(event, Connected):
                        handshake_done = True
                        self._server_id = event.welcome.replica_id
                        self._db._set_setting_atomic("sync_server_id", self._server_id)
                        self._acked = self._checkpoint_acked()
                        self._adopt_policies(event.welcome.session.get("policies"))
                        self._set_connection("connected")
                        if self._flexible is not None:
                            self._execute(self._flexible._outgoing(), link, replicator)
                    elif isinstance(event, Failed):
                        replicator.stop()
                        self._on_failure(event.error)
                    elif isinstance(event, Closed):
                        replicator.stop()
                self._flush(link, ws)
                if link.finished:
                    return handshake_done
                if self._unstored_since and time.monotonic() - self._unstored_since >= self.UNSTORED_FOR:
                    self._store_checkpoint()
            return handshake_done
        finally:
            self._writer = None
            if writer.pending:
                writer.stop()  # pages it stored meanwhile are joined; their Acks are not sent
                try:
                    received = self._checkpoint_received()
                    with self._cond:
                        self._received = received
                        self._cond.notify_all()
                except Exception:  # noqa: BLE001 - e.g. the database closed under us
                    pass
            else:
                writer.stop()
            self._store_checkpoint()
            try:
                if own_socket:
                    ws.release()
                else:
                    ws.close()
            except Exception:  # noqa: BLE001
                pass
            if own_socket:
                next_item.close()  # type: ignore[attr-defined]

    def _warm_upload(self) -> None:
        """While the server answers the ``Hello``: read the first batch of the upload to come
        (from the checkpoint the server acknowledged last), so that its log entries are
        decoded into the log cache by the time the ``Welcome`` starts the upload (the read
        the replicator then asks for finds them decoded). Nothing to upload: two small queries."""
        if self._flexible is not None or self._stop:
            return
        try:
            after = self._checkpoint_acked()
            if self._local_head() <= after:
                return
            # Unscoped, as the server asks (its Welcome's scope): a server takes all we wrote.
            self._db.read_log(after, limit=self.config.batch_limit, max_bytes=self.config.batch_bytes,
                              scope={}, exclude_origin=self._server_id)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - only a head start: the upload reads again anyway
            log.debug("could not read the upload ahead", exc_info=True)

    def _socket_reader(self, ws: SocketConnection, inbox: WakeInbox) -> Callable[[], tuple[str, Any]]:
        """``next_item()``: the next inbox item or message from the socket, waiting for either
        (this thread reads the socket itself); raises ``queue.Empty`` after a second without
        any. ``next_item.close()`` releases the selector."""
        selector = selectors.DefaultSelector()
        selector.register(ws, selectors.EVENT_READ, "socket")
        selector.register(inbox.wake_fd, selectors.EVENT_READ, "wake")
        ready: collections.deque[tuple[str, Any]] = collections.deque(("data", (ws, m)) for m in ws.early_messages())
        reading = [True]

        def next_item() -> tuple[str, Any]:
            deadline = time.monotonic() + 1.0
            while True:
                if ready:
                    return ready.popleft()
                try:
                    return inbox.get_nowait()
                except queue.Empty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise queue.Empty
                for what in wait_readable(selector, remaining):
                    if what == "wake":
                        inbox.drain_wake()
                    elif reading[0]:
                        messages = ws.receive()
                        if messages is None:
                            reading[0] = False
                            selector.unregister(ws)
                            ready.append(("lost", ws))
                        else:
                            ready.extend(("data", (ws, m)) for m in messages)

        next_item.close = selector.close  # type: ignore[attr-defined]
        return next_item

    def _adopt_policies(self, text: Any) -> None:
        """Use the server's named conflict policies when the app set none of its own, so this
        replica merges exactly as the server does."""
        if not isinstance(text, str) or self._db._policies is not None:
            return
        try:
            named = json.loads(text)
        except ValueError:
            return
        if not named:
            return
        from ..core.merge import Policies

        rules = {tuple(k.split(".", 1)): v for k, v in named.items() if isinstance(k, str) and "." in k}
        try:
            self._db._policies = Policies(rules)  # type: ignore[arg-type]
        except ValueError:
            log.warning("the server sent conflict policies this client does not know: %r", named)

    def _on_failure(self, error: SyncError) -> None:
        if isinstance(error, AuthError) or error.action == "reauthenticate":
            if self._refresh_token() is False:
                self._report(error)
                self.state = "inactive"
            return  # refreshed, or the server could not be asked: reconnect and try again
        if error.code == "connection_lost":
            return
        self._report(error)
        if error.action == "stop":
            self.state = "inactive"

    def _flush(self, link: Link, ws: Any) -> None:
        for payload in link.data_to_send():
            try:
                ws.send(payload)
            except Exception:  # noqa: BLE001 - the reader reports the loss
                link.connection_lost()
                return

    def _drain(self, link: Link, replicator: Replicator, *, wait: bool = True) -> None:
        """Feed the Replicator the results of the snapshot pages the writer has stored (all of
        those handed over, with ``wait``), in order, and execute what follows (their Acks)."""
        writer = self._writer
        while writer is not None:
            item = writer.take(wait)
            if item is None:
                return
            action, result = item
            if isinstance(result, BaseException):
                raise result
            follow = replicator.snapshot_integrated(result)
            if action.as_of_seq is not None and action.peer == self._server_id:
                # The last page set the checkpoint to as_of_seq in its own transaction (no need
                # to read it back, behind the lock the writer may hold for the next page).
                with self._cond:
                    self._received = action.as_of_seq
                    self._cond.notify_all()
            self._execute(follow, link, replicator)

    def _execute(self, actions: list[Any], link: Link, replicator: Replicator) -> None:
        todo = list(actions)
        while todo:
            action = todo.pop(0)
            writer = self._writer
            if writer is not None and writer.pending and type(action) not in _BESIDE_THE_WRITER:
                # A storage action: after the snapshot pages issued before it, as issued.
                self._drain(link, replicator)
            if isinstance(action, Send):
                if link.can_send(action.message):
                    link.send(action.message)
                    if self._ws is not None:
                        # Out at once: an upload batch must not wait while the next one is
                        # read and encoded (the server would idle meanwhile).
                        self._flush(link, self._ws)
            elif isinstance(action, Fail):
                link.fail(action.error)
            elif isinstance(action, ReportProgress):
                self._progress(action)
            elif isinstance(action, UploadComplete):
                with self._cond:
                    self._acked = max(self._acked, action.seq)
                    self._cond.notify_all()
            elif isinstance(action, DownloadComplete):
                with self._cond:
                    self._download_complete = True
                    self._cond.notify_all()
            elif isinstance(action, Notify) and self._flexible is not None and self._flexible._handles(action.message):
                todo[0:0] = self._flexible._on_message(action.message, self._server_id)
            elif isinstance(action, Notify):
                self._notify(action.message)
            elif isinstance(action, Announce):
                pass  # descriptors are recorded by the store when data arrives
            elif isinstance(action, IntegrateSnapshot) and writer is not None:
                writer.submit(action)  # its result comes back through the inbox (_drain)
            elif isinstance(action, RecordAck) and action.peer == self._server_id:
                # Informational (the upload starts where the server's Welcome says): kept in
                # memory, stored later with other checkpoint values, never one fsync per Ack.
                self._keep_unstored(acked=action.seq)
                with self._cond:
                    self._acked = max(self._acked, action.seq)
                    self._cond.notify_all()
            elif (isinstance(action, Integrate) and not action.txns and action.peer == self._server_id
                  and self._flexible is None):
                # Nothing to integrate (e.g. the echo of our own upload): only the checkpoint
                # moves, kept in memory; downloading that empty range again is harmless. (Not
                # with flexible sync: there the view's resumption relies on the position.)
                self._keep_unstored(received=action.peer_seq)
                follow = replicator.integrated(IntegrateResult())
                with self._cond:
                    self._received = action.peer_seq
                    self._cond.notify_all()
                todo[0:0] = follow
            else:
                if isinstance(action, Integrate):
                    # Listeners see the download before its fsync; the Ack still waits for it.
                    acked = self._unstored_acked if action.peer == self._server_id else None
                    part, flexible = action.view, self._flexible
                    before: Callable[[], None] | None = None
                    after: Callable[[], None] | None = None
                    if part is not None and flexible is not None:
                        # The view part written with the batch, counted once it committed.
                        before = functools.partial(flexible._apply_view_part, part, self._server_id)
                        after = functools.partial(flexible._count_view_part, part)
                    follow = replicator.integrated(self._db._integrate_download(
                        action.txns, action.peer, action.peer_seq, acked=acked, before=before, after=after))
                    if action.peer == self._server_id:
                        self._unstored_received = None  # superseded by the one just written
                        if acked is not None and self._unstored_acked == acked:
                            self._unstored_acked = None
                        if self._unstored_acked is None:
                            self._unstored_since = 0.0
                else:
                    follow = perform(action, self._db, replicator)
                if isinstance(action, RecordAck):
                    with self._cond:
                        self._acked = max(self._acked, action.seq) if action.peer == self._server_id else self._acked
                        self._cond.notify_all()
                elif type(action).__name__ in ("Integrate", "IntegrateSnapshot"):
                    # An Integrate set the server's checkpoint to its peer_seq in its own
                    # transaction: no need to read it back (a snapshot page's is read).
                    received = (action.peer_seq if isinstance(action, Integrate) and action.peer == self._server_id
                                else self._checkpoint_received())
                    with self._cond:
                        self._received = received
                        self._cond.notify_all()
                todo[0:0] = follow

    #: Payloads of at least this many bytes are decoded with the cyclic GC paused.
    BULK_PAYLOAD = 64 * 1024

    #: Seconds a checkpoint value may stay in memory only, while the session is busy.
    UNSTORED_FOR = 1.0

    def _keep_unstored(self, *, acked: int | None = None, received: int | None = None) -> None:
        if acked is not None:
            self._unstored_acked = acked
        if received is not None:
            self._unstored_received = received
        if not self._unstored_since:
            self._unstored_since = time.monotonic()

    def _store_checkpoint(self) -> None:
        """Write the checkpoint values kept in memory (unsynced: after a power loss the
        older ones are correct too, see docs/sync.md)."""
        if self._unstored_acked is None and self._unstored_received is None:
            return
        server = self._server_id
        acked, received = self._unstored_acked, self._unstored_received
        self._unstored_acked = self._unstored_received = None
        self._unstored_since = 0.0
        if server is None:
            return
        try:
            self._db._record_sync_checkpoint(server, received, acked)
        except Exception:  # noqa: BLE001 - e.g. the database closed under us; nothing is lost
            log.debug("could not store the sync checkpoint", exc_info=True)

    def _progress(self, action: ReportProgress) -> None:
        direction = "download" if action.direction == DOWNLOAD else "upload"
        p = Progress(direction, action.transferred, action.transferable,  # type: ignore[arg-type]
                     getattr(action, "transferred_bytes", 0), getattr(action, "transferable_bytes", 0))
        self._last_progress[direction] = p
        for d, cb in list(self._progress_callbacks):
            if d == direction:
                try:
                    cb(p)
                except Exception:
                    log.exception("a progress notifier raised")

    def _notify(self, message: Any) -> None:
        if isinstance(message, CompensatingWrite):
            # The correction itself arrives as an ordinary (later) transaction of the server's.
            writes = [{"collection": w.collection, "id": w.key, "operation": w.operation, "reason": w.message,
                       "code": w.code} for w in message.writes]
            self._report(CompensatingWriteError(
                "the server undid writes of this device: " + "; ".join(
                    f"{w['operation']} {w['collection']} {w['id']!r}: {w['reason']}" for w in writes),
                writes=writes))


#: Actions the session executes while snapshot pages are still being stored: they touch
#: no storage (or, for IntegrateSnapshot, queue behind those pages).
_BESIDE_THE_WRITER = frozenset((Send, Fail, ReportProgress, UploadComplete, DownloadComplete, Announce,
                                IntegrateSnapshot))


class _PageWriter:
    """Stores a bootstrap's snapshot pages on a thread of its own (``tidesync-sync-store``), in
    the order received, while the session thread goes on receiving and decoding the next page.

    SQLite writes a page in one step without the GIL (store/replica.py, ``_store_columns``), so
    on a machine with two cores the next page's decoding (Python) and this page's insert and
    commit (SQLite and the disk) overlap. Each result goes back to the session thread, which
    alone talks to the Replicator: it feeds ``snapshot_integrated`` in issue order, and the
    ``Ack`` of a page still follows its commit (and, for the last page, its fsync: see
    ``_integrate_snapshot_download``). Any other storage action waits until every page handed
    over is stored (:meth:`SyncSession._drain`): storage actions keep the order the Replicator
    issued them in.
    """

    def __init__(self, db: Database, inbox: WakeInbox) -> None:
        self._db = db
        self._inbox = inbox
        self._jobs: queue.SimpleQueue[IntegrateSnapshot | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[IntegrateSnapshot, SnapshotResult | BaseException]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: Pages handed over whose result the session has not taken yet.
        self.pending = 0

    def submit(self, action: IntegrateSnapshot) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tidesync-sync-store", daemon=True)
            self._thread.start()
        self.pending += 1
        self._jobs.put(action)

    def _run(self) -> None:
        while True:
            action = self._jobs.get()
            if action is None:
                return
            result: SnapshotResult | BaseException
            if self._stopping:
                result = ConnectionClosedError("the connection ended before this page was stored")
            else:
                try:
                    result = self._db._integrate_snapshot_download(action.docs, action.peer, action.as_of_seq)
                except BaseException as exc:  # noqa: BLE001 - raised again on the session thread
                    result = exc
            self._done.put((action, result))
            self._inbox.put(("stored", self))

    def take(self, wait: bool) -> tuple[IntegrateSnapshot, SnapshotResult | BaseException] | None:
        """The next result (waiting for it with ``wait``), or None when there is none."""
        if not self.pending:
            return None
        try:
            item = self._done.get() if wait else self._done.get_nowait()
        except queue.Empty:
            return None
        self.pending -= 1
        return item

    def stop(self) -> None:
        """Store no page not yet begun, and wait for the one being stored, if any."""
        self._stopping = True
        thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            thread.join()


def _direct_connection(inbox: WakeInbox) -> Any:
    """A ``websockets`` client connection class whose socket thread puts each received
    message straight into the session's inbox (and ``("lost", ws)`` when the socket ends),
    instead of handing it to a reader thread through ``websockets``' own queue: one thread
    wake-up less per message. None when this ``websockets`` lacks the hooks (then a reader
    thread does it)."""
    try:
        from websockets.frames import Frame, Opcode
        from websockets.sync.client import ClientConnection
    except ImportError:  # pragma: no cover - websockets < 13 is not supported anyway
        return None
    if not callable(getattr(ClientConnection, "process_event", None)) or \
            not callable(getattr(ClientConnection, "recv_events", None)):
        return None  # pragma: no cover
    data_opcodes = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)

    class _DirectConnection(ClientConnection):
        _fragments: list[bytes] | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # The session holds the connection without a ``with`` block (it closes it in its
            # own ``finally``); websockets >= 17.1 would warn at the first send otherwise.
            self.pending_legacy_warning = False

        def process_event(self, event: Any) -> None:
            # On the socket thread, in the order frames arrive. The first event is the
            # handshake response (self.response still None): websockets handles it.
            if self.response is None or not isinstance(event, Frame) or event.opcode not in data_opcodes:
                super().process_event(event)
                return
            if event.opcode is not Opcode.CONT:
                if event.fin:
                    inbox.put(("data", (self, bytes(event.data))))
                    return
                self._fragments = [bytes(event.data)]
                return
            if self._fragments is None:
                return  # a continuation without a start: the protocol layer rejects it first
            self._fragments.append(bytes(event.data))
            if event.fin:
                payload, self._fragments = b"".join(self._fragments), None
                inbox.put(("data", (self, payload)))

        def recv_events(self) -> None:
            try:
                super().recv_events()
            finally:
                inbox.put(("lost", self))

    return _DirectConnection


def attach_sync(db: Database, config: SyncConfig) -> SyncSession:
    """Start syncing ``db`` as ``config`` says; the session is ``db.sync_session``."""
    if not isinstance(config, SyncConfig):
        raise UsageError("sync= takes a tidesync.SyncConfig")
    if config.partition is not None and not config.flexible:
        db._set_partition(config.partition_key, to_plain(config.partition))
    db._user = config.user.id
    if config.flexible:
        if config.partition is not None:
            raise UsageError("a database syncs either a partition or subscriptions (flexible=True), not both")
        from .subscriptions import Subscriptions, run_initial_subscriptions

        def wake() -> None:
            if db._sync is not None:
                db._sync._inbox.put(("subscriptions", None))

        subs = Subscriptions(db, on_change=wake)
        db.subscriptions = subs  # type: ignore[attr-defined]
        if config.initial_subscriptions is not None:
            run_initial_subscriptions(subs, config.initial_subscriptions, config.rerun_initial_subscriptions)
    session = SyncSession(db, config)
    db._sync = session
    return session
