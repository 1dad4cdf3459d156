"""The server's ``/api/<app_id>/sync`` WebSocket: one :class:`ServerSession` per connection.

A thin asyncio driver around the same sans-I/O :class:`~tidesync.protocol.link.Link` and
:class:`~tidesync.protocol.replicator.Replicator` a device runs. Authority lives here, between
events and actions, never inside the protocol:

* the ``Hello``'s token is verified before the ``Hello`` reaches the replicator;
* the requested scope is checked (partition sync needs a partition of the configured key, and
  one the user's rules let it read);
* every :class:`~tidesync.protocol.actions.Integrate` is checked before it reaches storage by
  the session's :class:`~tidesync.server.enforcement.Enforcer` (partition, rules, JSON
  Schema): a refused document gets a compensating transaction and a ``CompensatingWrite``
  (the rest of the batch is integrated);
* every read for the peer goes through the session's
  :class:`~tidesync.server.enforcement.SessionReplica`, so what the user may not read never
  leaves the server;
* after each integration the other sessions are woken (fan-out).

Storage calls run in a worker thread (``asyncio.to_thread``) so a slow disk never stalls the
event loop; the backend serializes them. Two exceptions, made only while the backend is free:
small reads of the log's tail (``_read_now``), and the integration of a small upload when the
backend's commits are quick (``_integrates_inline``: a few milliseconds at most, fsync
included), where the two thread hand-offs cost about as much as the call. That integration
never waits for another process's write lock on the file: it goes to a worker thread instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..core.values import canonical_json
from ..errors import AuthError, MergeError, PermissionDeniedError, ProtocolError, SyncError
from ..protocol.actions import (
    Announce, Fail, Integrate, Notify, ReadLog, ReadSnapshot, RecordAck, ReportProgress, Send,
)
from ..protocol.codec import encode, is_compressed
from ..protocol.codes import ErrorCode
from ..protocol.events import Closed, Connected, Failed, MessageReceived
from ..protocol.link import Link
from ..protocol.messages import Ack, Changes, CompensatingWrite, Hello, Snapshot, ViewAck
from ..protocol.replicator import Replicator, perform
from ..protocol.states import Role
from ..store.database import _gc_paused
from ..store.engine import WriteLockBusy
from .enforcement import Enforcer, SessionReplica, _lock_for, query_compiler, user_context

if TYPE_CHECKING:
    from .app import ServerState

__all__ = ["sync_endpoint", "ServerSession", "download_wanted"]

log = logging.getLogger("tidesync.server.sync")


async def sync_endpoint(state: ServerState, websocket: WebSocket) -> None:
    if websocket.path_params.get("app_id") != state.config.app_id:
        await websocket.close(code=4404)
        return
    await websocket.accept()
    session = ServerSession(state, websocket)
    state.sessions.add(session)
    try:
        await session.run()
    finally:
        state.sessions.discard(session)
        state.uploading.discard(session)


class _Shared:
    """What the sessions of one server share for fan-out.

    ``head``: the server's head as of the last integration (a hint: sessions woken by it read
    the log without first asking the backend for its head).

    Acknowledgements: a peer's ``Ack`` only moves ``checkpoint(peer).acked``, which the server
    never reads back (a reconnecting peer says in ``Hello`` how much of our log it holds), so
    instead of one durable write per ``Ack`` -- a thousand fsyncs, each holding the backend,
    when a write fans out to a thousand clients -- they are gathered and written together,
    without an fsync of their own (the next integration's durable commit makes them durable).
    """

    ACK_DELAY = 0.25
    #: Ticks (seconds) between two checks whether the log needs compacting (``log_keep``).
    COMPACT_TICKS = 60

    def __init__(self) -> None:
        self.head = 0
        #: The server whose sessions these are (set by _shared).
        self.state: ServerState | None = None
        self._ticks = 0
        self._compacting = False
        #: The log entries in ``(blind, head]`` were all written by integrations announced
        #: with the one partition they can concern, recorded in ``touched_at`` (partition ->
        #: the last seq of such an integration): see :meth:`account` and :meth:`skip_to`.
        self.blind = 0
        self.touched_at: dict[str, int] = {}
        #: While sessions are woken for an integration: the canonical partition values its
        #: entries can concern (None: any).
        self.touched: set[str] | None = None
        self._acks: dict[str, int] = {}
        self._flushing = False
        self._checks: dict[Any, tuple[Any, asyncio.Future[Any]]] = {}
        self._checking = False
        #: Sessions whose periodic account recheck is due, checked together by the ticker.
        self._rechecks: set[ServerSession] = set()
        self._rechecking = False
        #: Sessions ticked by the shared 1 s timer (heartbeats and deadlines).
        self._ticked: set[ServerSession] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_loop: asyncio.AbstractEventLoop | None = None
        self._payloads: dict[tuple[Any, ...], tuple[Any, bytes]] = {}
        #: Admitted partition sessions by canonical partition value (woken first when a
        #: write concerns their partition).
        self.partitions: dict[str, set[ServerSession]] = {}
        #: Sessions with a later wake-up scheduled (ServerSession.local_commit): a write of
        #: another partition need not visit them.
        self.lazy: set[ServerSession] = set()

    def account(self, partition: str | None, before: int, last: int, applied: int) -> None:
        """Record what the integration that just moved the head from ``before`` to ``last``
        can concern: ``partition`` (None: unknown). Its entries are known only when they are
        exactly the ``applied`` ones right after ``before`` (nothing else, no other process,
        wrote in between); anything else makes everything up to the head unknown."""
        if partition is not None and applied > 0 and last - applied == before and last == self.head:
            self.touched_at[partition] = last
            return
        if self.head > self.blind:
            self.blind = self.head
            # Entries at or below ``blind`` decide nothing any more.
            self.touched_at = {p: seq for p, seq in self.touched_at.items() if seq > self.blind}

    def skip_to(self, partition: str, after: int) -> int:
        """Where a read of the log for ``partition``'s sessions can start instead of
        ``after``: the head, when every entry after ``after`` is known to concern other
        partitions (written by their sessions; see :meth:`account`), else ``after``. A lazily
        woken session of an idle partition (:meth:`ServerSession.local_commit`) then reads
        nothing instead of filtering every entry written since its last wake-up."""
        if after >= self.blind and after < self.head and self.touched_at.get(partition, 0) <= after:
            return self.head
        return after

    def start_ticks(self, session: ServerSession) -> None:
        """Tick ``session`` every second until :meth:`stop_ticks`. One timer for all of
        them: a thousand per-session timers kept the event loop's timer heap large, and
        reordering it cost more than the ticks themselves."""
        loop = asyncio.get_running_loop()
        if self._tick_loop is not loop:
            # The server runs on another loop than before (tests): what ticked on the old one
            # is gone with it.
            self._tick_loop, self._ticker, self._ticked = loop, None, set()
        self._ticked.add(session)
        if self._ticker is None:
            self._ticker = loop.call_later(1.0, self._tick_all)

    def stop_ticks(self, session: ServerSession) -> None:
        self._ticked.discard(session)
        if not self._ticked and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _tick_all(self) -> None:
        self._ticker = asyncio.get_running_loop().call_later(1.0, self._tick_all)
        for session in list(self._ticked):
            try:
                session._tick()
            except Exception:  # noqa: BLE001 - one session's failure must not stop the others' ticks
                log.exception("session tick failed")
        try:
            self._check_written_elsewhere()
        except Exception:  # noqa: BLE001 - the next tick checks again
            log.exception("checking for another process's writes failed")
        self._ticks += 1
        if self._ticks % self.COMPACT_TICKS == 0:
            self._compact_soon()
        elif self._ticks % self.COMPACT_TICKS == self.COMPACT_TICKS - 1:
            self._wake_lazy()

    def _wake_lazy(self) -> None:
        """A second before the log may be compacted (``log_keep``): make the lazy wake-ups of
        idle sessions (ServerSession.local_commit) now, so that their devices' positions are
        not left behind the new floor (which would cost them a bootstrap)."""
        state = self.state
        if state is None or state.config.log_keep is None:
            return
        for session in list(self.lazy):
            try:
                session._wake_now()
            except Exception:  # noqa: BLE001 - one session's failure must not stop the others'
                log.exception("session wake-up failed")

    def download_wanted(self, uid: Any, head: int) -> None:
        """User ``uid`` asked for the server's head (``GET sync/head``): its sessions'
        downloads are to reach ``head`` soon (:meth:`ServerSession.download_wanted`)."""
        state = self.state
        if state is None:
            return
        for session in list(state.sessions):
            user = getattr(session, "user", None)
            if user is not None and getattr(user, "id", None) == uid and isinstance(session, ServerSession):
                session.download_wanted(head)

    def _compact_soon(self) -> None:
        """Compact the log to the config's ``log_keep`` in a worker thread, once it holds a
        tenth (at least 100 entries) more than that: a few large deletes rather than one per
        write."""
        state = self.state
        keep = state.config.log_keep if state is not None else None
        if state is None or keep is None or self._compacting:
            return
        backend = state.backend
        self._compacting = True

        def compact() -> None:
            try:
                backend.compact_log(keep, min_drop=max(100, keep // 10))
            except Exception:  # noqa: BLE001 - retried at the next check
                log.exception("compacting the log failed")
            finally:
                self._compacting = False

        asyncio.get_running_loop().run_in_executor(None, compact)

    def _check_written_elsewhere(self) -> None:
        """Wake every session when another process committed to the backend's file since the
        last tick (``tidesync revert`` on the server's file, a second server process): its
        entries are in the log, but no integration here announced them."""
        state = self.state
        if state is None:
            return
        head = state.backend.written_elsewhere()
        if head is None:
            return
        before = self.head
        self.head = max(self.head, head)
        self.account(None, before, self.head, 0)  # what those entries concern is unknown
        with state.backend.read_round():
            state.notify_commit()

    def payload(self, message: Any, link: Link) -> bytes | None:
        """The encoding of a ``Changes`` that other sessions already sent, or None (then
        encoded here and remembered). On fan-out the sessions of one scope read the same batch
        (store/replica.py's read memo) and, with the same progress figures, send the same bytes.
        """
        if not isinstance(message, Changes) or message.view is not None:
            return None
        entries = message.entries
        key = (message.from_seq, message.to_seq, message.head, message.progress, id(entries),
               link.compress_threshold, link.max_message_size, link.max_send_size)
        hit = self._payloads.get(key)
        if hit is not None and hit[0] is entries:
            return hit[1]
        payload = encode(message, compress_threshold=link.compress_threshold, max_size=link.max_send_size)
        if len(self._payloads) >= 256:
            self._payloads.clear()
        self._payloads[key] = (entries, payload)  # holds entries: its id stays unique meanwhile
        return payload

    async def still_valid(self, tokens: Any, user: Any) -> Any:
        """``tokens.still_valid(user)``, checked together with those of every other session
        that asks meanwhile, in one worker thread and once per login session. A thousand
        connections rechecking every few seconds would otherwise make hundreds of thread hops
        a second, and each makes the event loop wait for the GIL (fan-out latency)."""
        key = _user_key(user)
        entry = self._checks.get(key)
        if entry is None:
            loop = asyncio.get_running_loop()
            entry = self._checks[key] = (user, loop.create_future())
            if not self._checking:
                self._checking = True
                loop.create_task(self._run_checks(tokens))
        return await asyncio.shield(entry[1])

    def recheck_soon(self, session: ServerSession) -> None:
        """Recheck ``session``'s user (its periodic ``auth.session_recheck_interval`` check)
        without waking its task: with the others due, in one worker thread and once per
        login session. Only a session whose check fails is woken, to check again itself and
        close (:meth:`ServerSession.recheck_auth`). A thousand idle connections otherwise
        woke two hundred tasks a second for nothing."""
        self._rechecks.add(session)
        if not self._rechecking:
            self._rechecking = True
            asyncio.get_running_loop().create_task(self._run_rechecks(session.state.tokens))

    async def _run_rechecks(self, tokens: Any) -> None:
        try:
            while self._rechecks:
                batch, self._rechecks = self._rechecks, set()
                users = {_user_key(s.user): s.user for s in batch if s.user is not None}

                def check_all() -> dict[Any, bool]:
                    lapsed: dict[Any, bool] = {}
                    for key, user in users.items():
                        try:
                            lapsed[key] = tokens.still_valid(user) is not None
                        except Exception:  # noqa: BLE001 - the session checks again and reports it
                            lapsed[key] = True
                    return lapsed

                try:
                    lapsed = await asyncio.to_thread(check_all)
                except Exception:  # noqa: BLE001 - every session checks again itself
                    lapsed = {key: True for key in users}
                for session in batch:
                    if session.user is not None and lapsed.get(_user_key(session.user), True):
                        session.recheck_auth()
        finally:
            self._rechecking = False

    async def _run_checks(self, tokens: Any) -> None:
        try:
            while self._checks:
                batch, self._checks = self._checks, {}

                def check_all() -> dict[Any, tuple[Any, BaseException | None]]:
                    out: dict[Any, tuple[Any, BaseException | None]] = {}
                    for key, (user, _) in batch.items():
                        try:
                            out[key] = (tokens.still_valid(user), None)
                        except Exception as exc:  # noqa: BLE001 - handed to the session that asked
                            out[key] = (None, exc)
                    return out

                try:
                    results = await asyncio.to_thread(check_all)
                except BaseException as exc:
                    for _, fut in batch.values():
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                    raise
                for key, (_, fut) in batch.items():
                    value, error = results[key]
                    if fut.done():
                        continue
                    if error is not None:
                        fut.set_exception(error)
                    else:
                        fut.set_result(value)
        finally:
            self._checking = False

    def record_ack(self, backend: Any, peer: str, seq: int) -> None:
        self._acks[peer] = max(seq, self._acks.get(peer, seq))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush_acks(backend))

    async def _flush_acks(self, backend: Any) -> None:
        try:
            while self._acks:
                await asyncio.sleep(self.ACK_DELAY)
                acks, self._acks = self._acks, {}
                # Unsynced: the server never reads them back, and the next integration's
                # durable commit carries them (no fsync of their own beside the uploads').
                await asyncio.to_thread(backend.record_acks, acks, durable=False)
        except Exception as exc:  # noqa: BLE001 - the server is closing; acks are advisory
            log.debug("acknowledgements not recorded: %r", exc)
        finally:
            self._flushing = False


@dataclasses.dataclass(slots=True)
class _Started:
    """An :class:`Integrate` whose storage call already runs in a worker thread (begun by the
    WebSocket layer's receive hook, see ``ServerSession._receive_now``)."""

    action: Integrate
    future: asyncio.Future[Any] | None = None
    #: The other sessions were woken as soon as the integration ended (see _announce_early).
    announced: bool = False
    error: BaseException | None = None
    #: An integration made on the event loop (ServerSession._integrates_inline): its result,
    #: until the receive hook has queued the rest for run() and wakes the other sessions.
    inline: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class _SendEncoded:
    """A :class:`Send` whose payload was already encoded (a snapshot page, encoded in the
    worker thread that read it: see ``ServerSession._read_snapshot``)."""

    message: Any
    payload: bytes


def download_wanted(state: ServerState, uid: Any, head: int) -> None:
    """User ``uid``'s devices wait for their downloads to reach ``head``, the server's head
    just answered to ``GET sync/head`` (``wait_for_download_completion``): their idle sessions
    are woken now rather than at their lazy wake-up (called on the event loop)."""
    shared: _Shared | None = getattr(state, "_ts_sync_shared", None)
    if shared is not None:  # else no sync session ever connected
        shared.download_wanted(uid, head)


def _user_key(user: Any) -> tuple[Any, Any, Any]:
    """What identifies a login session for its checks."""
    return (getattr(user, "id", None), getattr(user, "sid", None), getattr(user, "expires", None))


def _shared(state: ServerState) -> _Shared:
    shared: _Shared | None = getattr(state, "_ts_sync_shared", None)
    if shared is None:
        shared = _Shared()
        shared.state = state
        shared.head = shared.blind = state.backend.head_seq()
        state.backend.written_elsewhere()  # takes note of the file as it is now
        state._ts_sync_shared = shared  # type: ignore[attr-defined]
    return shared


#: A payload of at least this size (an upload batch) is decoded with the cyclic GC paused.
LARGE_PAYLOAD = 64 * 1024


def _large_payload(payload: bytes) -> bool:
    """Whether ``payload`` is decoded with the cyclic GC paused: at least
    :data:`LARGE_PAYLOAD` bytes, or compressed (its body is then several times larger, and at
    least the sender's compression threshold, 4 KiB by default: a device's upload batch of 500
    one-field edits, 115 KB of msgpack, arrives as a 12 KB payload)."""
    return len(payload) >= LARGE_PAYLOAD or is_compressed(payload)


def _receive(link: Link, payload: bytes) -> None:
    """``link.receive(payload)``; a large one (an upload batch, :func:`_large_payload`) is
    decoded with the cyclic GC paused: its many new objects form no cycles, and collections
    meanwhile would scan them and the server's whole heap several times, for nothing. They
    live on until the batch is integrated, so they are promoted past the young collections
    (``_gc_paused(promote=True)``)."""
    if not _large_payload(payload):
        link.receive(payload)
        return
    with _gc_paused(promote=True):
        link.receive(payload)


class ServerSession:
    """One client connection."""

    #: Reads of at most this many log entries may run on the event loop (see _read_now).
    INLINE_READ = 64
    #: An upload of at most this many operations may be integrated on the event loop when the
    #: backend is free and its commits take less than INLINE_BELOW seconds on average (see
    #: _integrates_inline).
    INLINE_INTEGRATION = 32
    INLINE_BELOW = 0.003
    #: Documents per snapshot page once a bootstrap is under way (see _execute).
    MAX_SNAPSHOT_PAGE = 5000
    #: Snapshot pages sent ahead of the device's Acks: one being stored, one being decoded
    #: (a device stores a page while it decodes the next: client/session.py), one on its way.
    SNAPSHOT_WINDOW = 3
    #: About how many seconds after which a session is woken for entries of other partitions
    #: (local_commit). Sooner when its device asks for the server's head (download_wanted),
    #: and before the log is compacted (_Shared._tick_all).
    LAZY_COMMIT = 10.0
    #: Seconds after which the uploading session is woken for the entries of its own upload
    #: (own_commit): one checkpoint-only ``Changes`` for all its uploads meanwhile. Sooner when
    #: its device asks for the server's head (download_wanted).
    ECHO_DELAY = 1.0

    def __init__(self, state: ServerState, websocket: WebSocket) -> None:
        self.state = state
        self.ws = websocket
        self.link = Link(Role.ACCEPTOR, max_message_size=state.config.max_message_size,
                         max_assembled_size=state.config.max_assembled_size)
        from .config import named_policies

        self.replicator = Replicator(state.backend.replica_id, Role.ACCEPTOR,
                                     info={"server": "tidesync", "app_id": state.config.app_id,
                                           "policies": json.dumps(named_policies(state.config.policies))},
                                     snapshot_window=self.SNAPSHOT_WINDOW)
        self.user: Any = None
        self.partition: Any = None
        self._partition_json = ""  # canonical_json(self.partition), once admitted
        # Rules and filters of this session's user (set when the Hello is admitted).
        self.enforcer = Enforcer(state, None)
        self.reader = SessionReplica(state.backend, None, self.enforcer)
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        #: True while run() waits for its inbox: no step of the session is under way, so a
        #: message can be handled where it arrives (see _receive_now).
        self._parked = False
        #: The rest of a send begun by _send_now that had to wait, if any.
        self._sending: asyncio.Future[None] | None = None
        #: The WebSocket layer's immediate send (server/runner.py), if it has one.
        self._direct_send: Any = (getattr(websocket, "scope", None) or {}).get("extensions", {}).get("tidesync.send_now")
        self._closing = False
        self._snapshot_pages = 0
        self._lazy_commit = False
        #: The wake-up scheduled by local_commit or own_commit, while _lazy_commit.
        self._lazy_timer: asyncio.TimerHandle | None = None
        #: A head its device asked for (GET sync/head) that no wake-up has reached yet, or 0:
        #: while set, entries of other partitions wake the session at once (download_wanted).
        self._wanted = 0
        self._auth_checked_at = time.monotonic()
        self.flexible: Any = None  # flexible sync (server/flexible.py), set by a flexible Hello

    def local_commit(self) -> None:
        """The server's log grew: stream the new entries (called on the event loop).

        A partition session that the new entries cannot concern (they were written by a
        session of another partition) is woken about a second later, once for any number of
        such commits: it only has to move its peer's checkpoint past them, and doing that at once
        for every session on every write makes each write cost O(connections). A flexible
        session leaves it to the router, which wakes only the sessions the entries concern
        (``Router.announce`` in server/flexible.py)."""
        if self.flexible is not None and self.flexible.registered:
            self.flexible.router.announce()   # wakes only the sessions the new entries concern
            return
        if self.concerned():
            self._stream_commits()
        elif self._wanted:
            self._wake_now()
        elif not self._lazy_commit:
            # Spread over the interval: no burst of every idle session at once.
            self._wake_later(self.LAZY_COMMIT * (0.5 + random.random()))

    def download_wanted(self, head: int) -> None:
        """Its device asked for the server's head, ``head`` (``GET sync/head``, made by
        ``wait_for_download_completion``), and waits until its download reaches it: a lazy
        wake-up (:meth:`local_commit`) is made now instead of up to :data:`LAZY_COMMIT`
        seconds later, and until a wake-up has reached ``head`` (entries the head counts may
        still be on their way to being announced) every commit wakes the session at once.
        Called on the event loop."""
        if self.flexible is not None or self.partition is None:
            return  # woken for every commit anyway (a flexible session: by its router)
        if self._lazy_commit:
            self._wanted = max(self._wanted, head)
            self._wake_now()  # forgets the head when it reads up to it
        elif head > _shared(self.state).head:
            # Not lazy: woken for every entry announced so far; these are still to come.
            self._wanted = max(self._wanted, head)

    def _wake_now(self) -> None:
        """Make the scheduled lazy wake-up now (or one, when none is scheduled)."""
        timer = self._lazy_timer
        if timer is not None:
            timer.cancel()
        self._commit_later()

    def own_commit(self) -> None:
        """The log grew by this session's own upload, just integrated (called on the event
        loop after the other sessions were woken: ``ServerState.notify_commit``).

        A partition session's peer gets nothing from those entries but a checkpoint past them
        (its own transactions are filtered out): a ``Changes`` with no transaction, answered by
        an ``Ack``. Sent at once for every upload, that round trip reached the device while its
        change propagated to the others (one more message to handle on each side), so it is sent
        :data:`ECHO_DELAY` later instead, once for all the uploads meanwhile, or as soon as the
        device asks for the server's head (:meth:`download_wanted`). The upload's own
        ``Ack`` is not delayed; a later write that concerns the peer wakes the session at once
        (:meth:`local_commit`), checkpoint included. Immediate as before for a compensated
        upload (the restored documents must reach the device), a flexible session, and
        development mode without a partition (``_Shared.touched`` is None then)."""
        shared = _shared(self.state)
        if (self.flexible is not None or self.partition is None or shared.touched is None
                or self._partition_json not in shared.touched):
            self.local_commit()
            return
        if self._wanted:
            self._wake_now()  # its device waits for a head not reached yet
            return
        timer = self._lazy_timer
        if self._lazy_commit and timer is not None:
            if timer.when() <= asyncio.get_running_loop().time() + self.ECHO_DELAY:
                return  # a wake-up at least as soon is already scheduled
            timer.cancel()  # a lazy one, seconds away: sooner
            self._lazy_commit = False
        self._wake_later(self.ECHO_DELAY)

    def _wake_later(self, delay: float) -> None:
        self._lazy_commit = True
        _shared(self.state).lazy.add(self)
        self._lazy_timer = asyncio.get_running_loop().call_later(delay, self._commit_later)

    def concerned(self) -> bool:
        """Whether the entries of the integration being announced (``_Shared.touched``) can
        concern this session's peer; if not, :meth:`local_commit` only schedules a later
        wake-up. (A flexible session's router decides for itself: True.)"""
        if self.flexible is not None or self.partition is None:
            return True
        touched = _shared(self.state).touched
        return touched is None or self._partition_json in touched

    def _commit_later(self) -> None:
        self._lazy_commit = False
        self._lazy_timer = None
        _shared(self.state).lazy.discard(self)
        self._stream_commits()

    def _stream_commits(self) -> None:
        """Stream the log up to its head (here, or from run()); a head the device asked for
        that this reaches is forgotten."""
        if self._wanted and _shared(self.state).head >= self._wanted:
            self._wanted = 0  # this wake-up streams up to the head at least
        if not self._stream_now():
            self._inbox.put_nowait(("commit", None))

    def _stream_now(self) -> bool:
        """Stream the new entries from here, without waking the session's task, when run() is
        parked on an empty inbox: on fan-out every woken session then reads (once for all: the
        read memo), encodes (once: _Shared.payload) and sends in the notifier's own loop, and
        the last connection no longer waits for a thousand task switches. Whatever needs an
        ``await`` goes to run() as a ``resume`` item, in order. Returns False (nothing done)
        when not applicable.

        A flexible session streams from here when the router's round wakes it
        (``FlexibleSession.wake``) and no view message waits to go before the changes."""
        if (not self._parked or not self._inbox.empty() or self._sending is not None
                or not self.replicator.active or self.link.finished or not self._recheck_deferred()):
            return False  # (an expired token: run() checks it before streaming)
        flexible = self.flexible
        if flexible is not None:
            if not flexible.registered or flexible.outbox:
                return False
            if not flexible.wants_log():
                return True       # nothing for its device: as run() would, nothing to do
            actions = self.replicator.local_commit(flexible.router.processed_to)
            if not actions:
                return True
        else:
            actions = self.replicator.local_commit(_shared(self.state).head)
            if not actions:
                return False  # run() asks the backend for its real head
        rest = self._execute_now(actions)
        if flexible is not None:
            flexible.pump()   # a view update the read queued (documents entering or leaving)
        payloads = self.link.data_to_send()
        events = self.link.events_received()
        if flexible is not None and flexible.held_back:
            # Its view rows wait in the routing slice's batch: nothing of it goes out before
            # they are written. Held with the batch when nothing else is left to do here (else
            # the batch is written now).
            flexible.held_back = False
            if rest or events or self.link.finished or flexible.outbox or not flexible.router.hold_sends(self, payloads):
                if not flexible.router.flush_views(reopen=True):
                    self.lose()   # its view rows could not be written: nothing is sent
                    return True
            else:
                payloads = []
        while payloads and self._sending is None:
            self._send_now(payloads.pop(0))
        if payloads or rest or events or self.link.finished or (flexible is not None and flexible.outbox):
            self._inbox.put_nowait(("resume", (payloads, rest, events)))
        if flexible is not None:
            flexible.schedule()   # as run()'s _flush would: a bootstrap step, if one is due
        return True

    def send_held(self, payloads: list[bytes]) -> None:
        """Send payloads a routing round held until its view rows were written
        (``Router.flush_views``); what cannot go at once goes through run(), in order."""
        while payloads and self._sending is None:
            self._send_now(payloads.pop(0))
        if payloads:
            self._inbox.put_nowait(("resume", (payloads, [], [])))

    def lose(self) -> None:
        """End the connection (from outside its task): run() reports it lost."""
        self._inbox.put_nowait(("lost", None))

    def _send_now(self, payload: bytes) -> None:
        """Send a payload without awaiting when the transport takes it at once (the usual case:
        the send coroutine then completes on its first step). If it has to wait (the transport
        is paused for writing), the rest of it runs in a task, ``_sending``, which every later
        send waits for."""
        direct = self._direct_send
        try:
            if direct is not None and direct(payload):
                return
        except Exception:  # noqa: BLE001 - the reader reports the loss
            self.link.connection_lost()
            return
        coro = self.ws.send_bytes(payload)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001 - the reader reports the loss
            self.link.connection_lost()
            return
        self._sending = asyncio.ensure_future(self._finish_send(coro, waiting))

    async def _finish_send(self, coro: Any, waiting: Any) -> None:
        try:
            while True:
                try:
                    if waiting is None:
                        await asyncio.sleep(0)
                    else:
                        await waiting
                except BaseException as exc:  # noqa: BLE001 - handed to the send, as a task would
                    waiting = coro.throw(exc)
                else:
                    waiting = coro.send(None)
        except StopIteration:
            pass
        except Exception:  # noqa: BLE001 - the reader reports the loss
            self.link.connection_lost()
        finally:
            self._sending = None

    def _tick(self) -> None:
        # Heartbeats and deadlines (_Shared.start_ticks): a timer instead of a timeout on
        # every get().
        now = int(time.monotonic() * 1000)
        flexible = self.flexible
        if ((flexible is None or (flexible.idle() and flexible.folded is None))
                and (self.user is None or not self._auth_due()) and self.link.tick_idle(now)):
            return   # the usual idle connection: the Link noted the time, nothing else is due
        deadline = self.link.next_deadline()
        if ((self.flexible is None or self.flexible.idle())
                and deadline is not None and now < deadline):
            # Nothing is due (no Ping to send, no timeout, no auth check): the Link only
            # notes the time, which needs no wake-up of the session's task (a thousand idle
            # connections made a thousand task switches a second). The periodic recheck of
            # the account is made for all sessions together (_Shared.recheck_soon).
            user = self.user
            if user is None or not self._auth_due():
                self.link.tick(now)
                return
            if not time.time() >= getattr(user, "expires", 0.0) > 0 and self._parked and not self.link.finished:
                self._auth_checked_at = time.monotonic()
                _shared(self.state).recheck_soon(self)
                self.link.tick(now)
                return
        self._inbox.put_nowait(("tick", None))

    def _recheck_deferred(self) -> bool:
        """Whether nothing about the user stops streaming from here: no check is due, or only
        the periodic recheck of the account, which is then handed to the shared batch
        (:meth:`_Shared.recheck_soon`, as the ticker does; a failed check wakes the session to
        close it). An expired token is run()'s to report."""
        if not self._auth_due():
            return True
        user = self.user
        if user is None or time.time() >= getattr(user, "expires", 0.0) > 0:
            return False
        self._auth_checked_at = time.monotonic()
        _shared(self.state).recheck_soon(self)
        return True

    def _auth_due(self) -> bool:
        """Whether :meth:`_auth_lapsed` has something to check now."""
        user = self.user
        if user is None:
            return False
        return (time.time() >= getattr(user, "expires", 0.0) > 0
                or time.monotonic() - self._auth_checked_at >= self.state.config.auth.session_recheck_interval)

    def recheck_auth(self) -> None:
        """Check the user's token and account again now (log out, disabled user...)."""
        self._auth_checked_at = 0.0
        self._inbox.put_nowait(("recheck", None))

    async def _auth_lapsed(self) -> bool:
        """Once admitted, a connection lives only as long as its access token and its user:
        when the token expires the client is told ``token_expired`` (it refreshes and
        reconnects); a disabled or deleted user or an ended login session (checked every
        ``auth.session_recheck_interval`` seconds, or at once on :meth:`recheck_auth`) gets
        ``auth_failed``. Returns True when the connection was failed."""
        user = self.user
        if user is None or self.link.finished:
            return False
        error = None
        if time.time() >= getattr(user, "expires", 0.0) > 0:
            error = AuthError("the access token expired", code=ErrorCode.TOKEN_EXPIRED)
        elif time.monotonic() - self._auth_checked_at >= self.state.config.auth.session_recheck_interval:
            self._auth_checked_at = time.monotonic()
            lapsed = await _shared(self.state).still_valid(self.state.tokens, user)
            if lapsed is not None:
                code = ErrorCode.TOKEN_EXPIRED if lapsed.code == "expired_token" else ErrorCode.AUTH_FAILED
                error = AuthError(lapsed.message, code=code)
        if error is None:
            return False
        self.link.fail(error)
        await self._flush()
        return True

    async def shutdown(self) -> None:
        self._closing = True
        self._inbox.put_nowait(("stop", None))

    def _receive_direct(self, data: bytes) -> bool:
        """The WebSocket layer's hook (server/runner.py): a message arriving while nothing is
        queued before it, handled at once when run() is parked (see _receive_now)."""
        if not (self._parked and self._inbox.empty()):
            return False
        try:
            return self._receive_now(data)
        except Exception:  # noqa: BLE001 - as an error in the reader task: the connection ends
            log.exception("sync session: cannot handle a message")
            self._inbox.put_nowait(("lost", None))
            return True

    async def run(self) -> None:
        hook = (getattr(self.ws, "scope", None) or {}).get("extensions", {}).get("tidesync.receive_hook")
        if hook is not None:
            hook(self._receive_direct)
        reader = asyncio.create_task(self._read())
        _shared(self.state).start_ticks(self)
        self.replicator.start()
        try:
            while True:
                if await self._auth_lapsed():
                    break
                self._parked = True
                try:
                    kind, item = await self._inbox.get()
                finally:
                    self._parked = False
                if kind == "tick":
                    self.link.tick(int(time.monotonic() * 1000))
                    await self._flush()
                    if self.link.finished:
                        break
                    continue
                if kind == "stop":
                    break
                if kind == "lost":
                    self.link.connection_lost()
                elif kind == "decoded":  # a payload _read decoded while run() was busy (or None)
                    self.link.receive(item[0], decoded=item[1])
                elif kind == "resume":  # what _receive_now left: payloads, actions, events
                    payloads, actions, events = item
                    for payload in payloads:
                        if not await self._send_payload(payload):
                            break
                    await self._execute(actions)
                    for event in events:
                        await self._on_event(event)
                elif kind == "flex":  # flexible sync: the next page of a subscription bootstrap
                    if self.flexible is not None:
                        await self.flexible.step()
                elif kind == "commit":
                    if self.replicator.active and (self.flexible is None or self.flexible.wants_log()):
                        # The head the last integration reached saves a thread hop per session
                        # on fan-out; read the real head only when that one brings nothing.
                        head = _shared(self.state).head
                        if self.flexible is not None and self.flexible.registered:
                            # What the router has routed is all a flexible read returns; later
                            # commits come with the router's next round.
                            head = self.flexible.router.processed_to
                        actions = self.replicator.local_commit(head)
                        if not actions and self.flexible is None:
                            actions = self.replicator.local_commit(
                                await asyncio.to_thread(self.state.backend.head_seq))
                        await self._execute(actions)
                for event in self.link.events_received():
                    await self._on_event(event)
                await self._flush()
                if self.link.finished:
                    break
        finally:
            if hook is not None:
                hook(None)
            shared = _shared(self.state)
            shared.stop_ticks(self)
            shared.lazy.discard(self)
            group = shared.partitions.get(self._partition_json)
            if group is not None:
                group.discard(self)
                if not group:
                    del shared.partitions[self._partition_json]
            self.replicator.stop()
            if self.flexible is not None:
                self.flexible.close()
            reader.cancel()
            try:
                await self.ws.close()
            except Exception:  # noqa: BLE001 - already closed
                pass

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes")
                if data is None:
                    text = msg.get("text")
                    data = text.encode() if isinstance(text, str) else b""
                if not (self._parked and self._inbox.empty() and self._receive_now(data)):
                    # run() is busy, often integrating the previous upload batch in a worker
                    # thread: decode this payload now, while that thread is in SQLite or waits
                    # for its commit's fsync (both without the GIL), not when run() gets to it.
                    if self.link.finished:
                        decoded = None
                    elif not _large_payload(data):
                        decoded = self.link.decode_ahead(data)
                    else:
                        with _gc_paused(promote=True):
                            decoded = self.link.decode_ahead(data)
                    self._inbox.put_nowait(("decoded", (data, decoded)))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self._inbox.put_nowait(("lost", None))

    def _receive_now(self, data: bytes) -> bool:
        """Handle a payload in the reader task while run() is parked on an empty inbox.

        On fan-out every connection answers each ``Changes`` with an ``Ack`` (and a flexible
        one each ``ViewUpdate`` with a ``ViewAck``), whose handling needs no I/O (the
        acknowledgement is recorded later, with the others): doing it here saves a queue hand-off and a task switch per connection and write. Whatever needs an
        ``await`` (a send, a storage call, any other message) is handed to run() as a
        ``resume`` item, in order; an upload integrated here on the loop is answered here too
        (:meth:`_finish_inline`). Returns False (nothing done) when not applicable (for a
        flexible session, also while a view message waits to go before any changes).
        """
        if self.link.finished or not self.replicator.active or (
                self.flexible is not None and (not self.flexible.registered or self.flexible.outbox)):
            return False
        actions: list[Any] = []
        ack = self.link.receive_ack(data)
        if ack is not None:
            # A plain Ack (one per device and batch sent): what receive() and the loop below
            # would do with it, without the general decode and the event on the way.
            events: list[Any] = []
            actions = self._execute_now(self.replicator.handle(ack))
        else:
            _receive(self.link, data)
            events = self.link.events_received()
        while events and not actions:
            event = events[0]
            if not isinstance(event, MessageReceived):
                break
            message = event.message
            if isinstance(message, Ack):
                events.pop(0)
                actions = self._execute_now(self.replicator.handle(message))
            elif isinstance(message, ViewAck) and self.flexible is not None:
                events.pop(0)
                self.flexible.view_acked(message)
            else:
                break
        if not actions and events and self.flexible is None and not self._auth_due():
            event = events[0]
            if isinstance(event, MessageReceived) and isinstance(event.message, Changes):
                # An upload: its integration starts here, in a worker thread, while run() is
                # being woken for the rest (run() would only have handed it to the thread).
                events.pop(0)
                actions = self._start_integration(self.replicator.handle(event.message))
        payloads = self.link.data_to_send()
        started = actions[0] if actions else None
        if isinstance(started, _Started) and started.inline is not None and not started.inline[1]:
            actions = self._finish_inline(started, actions, payloads)
        if payloads or actions or events or self.link.finished:
            self._inbox.put_nowait(("resume", (payloads, actions, events)))
        if isinstance(started, _Started) and started.inline is not None:
            # Integrated here: the other sessions are woken now, after run() has the rest
            # queued (so this session's own wake-up comes after its Integrate and its Ack,
            # as when the integration ends in a worker thread).
            out, started.inline = started.inline, None
            self._announce_early(started, out)
        return True

    def _finish_inline(self, started: _Started, actions: list[Any], payloads: list[bytes]) -> list[Any]:
        """An upload integrated on the event loop (:meth:`_integrates_inline`) with nothing
        refused: wake the other sessions, then answer the uploader (its ``Ack``) from here, as
        :meth:`_integrate` would once run() resumed, without that task switch and the loop
        iteration it yields (two resumes of the session's task per small upload). Meanwhile
        this session counts as busy, so that its own wake-up, if the integration makes one at
        once, queues behind the ``Ack`` (run() streams it) as it would have. Sends in order:
        ``payloads`` (what the Link had to send before) first, taken from the list. Returns
        what is left for run(), in order."""
        out, started.inline = started.inline, None
        self._parked = False
        try:
            self._announce_early(started, out)
            if started.error is not None:
                return actions  # raised by run()'s _integrate, as before
            rest = self._execute_now([*self._integrated(out[0]), *actions[1:]])
            payloads.extend(self.link.data_to_send())
            while payloads and self._sending is None:
                self._send_now(payloads.pop(0))
            return rest
        finally:
            self._parked = True

    def _start_integration(self, actions: list[Any]) -> list[Any]:
        """``actions`` with a leading :class:`Integrate` already running in a worker thread
        (:class:`_Started`; :meth:`_integrate` awaits it). Anything else is left as it is."""
        if not actions or not isinstance(actions[0], Integrate):
            return actions
        action = actions[0]
        loop = asyncio.get_running_loop()
        started = _Started(action)
        if self._small(action) and self._integrates_inline():
            try:
                out = self.enforcer.integrate(action.txns, action.peer, action.peer_seq, wait=False)
            except WriteLockBusy:
                # Another process holds the file's write lock (a `tidesync revert`, a second
                # server on the file): nothing was written; a worker thread waits for it.
                pass
            except Exception as exc:  # noqa: BLE001 - raised in _integrate, as from a worker thread
                started.future = done = loop.create_future()
                done.set_exception(exc)
                done.add_done_callback(lambda f: f.cancelled() or f.exception())
                return [started, *actions[1:]]
            else:
                started.future = done = loop.create_future()
                done.set_result(out)
                started.inline = out
                return [started, *actions[1:]]

        def integrate() -> Any:
            out = self.enforcer.integrate(action.txns, action.peer, action.peer_seq)
            # Scheduled before the future's own completion callback (FIFO): the sessions are
            # woken in the first loop iteration after the commit, not when run() resumes.
            try:
                loop.call_soon_threadsafe(self._announce_early, started, out)
            except RuntimeError:  # the loop is closing: nobody to wake
                pass
            return out

        started.future = future = loop.run_in_executor(None, integrate)
        # Retrieved by _integrate; if the session ends before that, not an unretrieved error.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return [started, *actions[1:]]

    def _small(self, action: Integrate) -> bool:
        """Whether ``action`` holds at most :attr:`INLINE_INTEGRATION` operations."""
        budget = self.INLINE_INTEGRATION
        for t in action.txns:
            budget -= len(t.ops)
            if budget < 0:
                return False
        return True

    def _integrates_inline(self) -> bool:
        """Whether a small upload is integrated on the event loop instead of in a worker
        thread: when the backend's commits take less than :attr:`INLINE_BELOW` (a moving
        average, fsync included: about 0.1 ms on tmpfs, 1 ms on a quiet SSD) and no other
        storage call is under way. Two thread hand-offs (to the worker, and back for the
        wake-up of the other sessions) are then saved on the path of every small write to
        the devices that receive it, and the executor's machinery; the loop waits for that
        one commit meanwhile. When commits get slower (a busy or slow disk), integrations go
        back to worker threads, so a slow disk does not stall the loop; a busy backend
        (another integration, a snapshot page) too, so the loop never waits behind another
        call. Nor behind another process's write lock on the file: the integration then
        takes the lock without waiting (``wait=False``) and, when it is held, goes to a worker
        thread too (:meth:`_start_integration`)."""
        if not self.state.backend._engine.commit_seconds < self.INLINE_BELOW:
            return False
        check = _lock_for(self.state.backend)
        if not check.acquire(blocking=False):
            return False
        check.release()
        with self.state.backend.unless_busy() as free:
            return bool(free)

    def _announce_early(self, started: _Started, out: Any) -> None:
        """Wake the other sessions for an integration that just ended in a worker thread,
        from the event loop's callback, one loop iteration before run() resumes (or on the
        loop itself, from the receive hook). A batch with
        refused writes (a CompensatingWrite to send first) is left to :meth:`_integrate`."""
        result, refused, _ = out
        if refused:
            return
        started.announced = True
        try:
            self._announce(result, False)
        except BaseException as exc:  # noqa: BLE001 - raised again in _integrate, as before
            started.error = exc

    def _execute_now(self, actions: list[Any]) -> list[Any]:
        """Execute the leading actions that need no ``await``; return the rest, unexecuted."""
        todo = list(actions)
        while todo:
            follow = self._execute_step(todo[0])
            if follow is None:
                break
            todo[0:1] = follow
        return todo

    def _execute_step(self, action: Any) -> list[Any] | None:
        """Execute ``action`` if it needs no ``await``: the actions it leads to (to execute
        next), or None, with nothing done, when :meth:`_execute` must await it."""
        kind = type(action)
        if kind is RecordAck:   # (the actions' classes are final: the usual ones by identity first)
            _shared(self.state).record_ack(self.state.backend, action.peer, action.seq)
            return []
        if kind is ReportProgress:
            return []
        if kind is ReadLog:
            batch = self._read_now(action)
            return None if batch is None else self.replicator.log_read(batch)
        if isinstance(action, Send):
            message = action.message
            if self.flexible is not None:
                message = self.flexible.attach(message)  # a routed view part rides in the Changes
                self.flexible.pump()  # views first: they precede the changes that rely on them
                # (Each flexible read builds its own entries: no other session sends its bytes.)
                if self.link.can_send(message):
                    self.link.send(message)
            elif self.link.can_send(message):
                self.link.send(message, encoded=_shared(self.state).payload(message, self.link))
        elif isinstance(action, Fail):
            self.link.fail(action.error)
        elif isinstance(action, Notify) and self.flexible is not None:
            return None  # FlexibleSession.on_message
        elif isinstance(action, (ReportProgress, Announce, Notify)) or type(action).__name__ in (
                "UploadComplete", "DownloadComplete"):
            pass
        elif isinstance(action, RecordAck):
            _shared(self.state).record_ack(self.state.backend, action.peer, action.seq)
        elif isinstance(action, ReadLog) and (batch := self._read_now(action)) is not None:
            return self.replicator.log_read(batch)
        else:
            return None
        return []

    async def _send_payload(self, payload: bytes) -> bool:
        while self._sending is not None:  # a send begun by _send_now comes first
            await asyncio.wait({self._sending})
        try:
            if self._direct_send is None or not self._direct_send(payload):
                await self.ws.send_bytes(payload)
        except Exception:  # noqa: BLE001 - the reader reports the loss
            self.link.connection_lost()
            return False
        return True

    async def _flush(self) -> None:
        if self.flexible is not None:
            self.flexible.pump()
        for payload in self.link.data_to_send():
            if not await self._send_payload(payload):
                return

    async def _on_event(self, event: Any) -> None:
        if isinstance(event, MessageReceived):
            message = event.message
            if isinstance(message, Hello):
                error = self._admit(message)
                if error is not None:
                    self.link.fail(error)
                    return
                if self.flexible is not None:
                    await self.flexible.connect()
            await self._execute(self.replicator.handle(message))
        elif isinstance(event, Connected):
            log.debug("session for user %s connected", getattr(self.user, "id", None))
        elif isinstance(event, (Failed, Closed)):
            self.replicator.stop()

    def _admit(self, hello: Hello) -> SyncError | None:
        """Authenticate the Hello and check its scope. Returns the error to fail with, if any."""
        try:
            self.user = self.state.tokens.verify(hello.token)
        except AuthError as exc:
            code = ErrorCode.TOKEN_EXPIRED if exc.code == "expired_token" else ErrorCode.AUTH_FAILED
            return AuthError(exc.message, code=code)
        owner = self.state.users.claim_replica(hello.replica_id, self.user.id)
        if owner != self.user.id:
            # Another user's device (or a copy of its file): it must not move that device's
            # checkpoints, or the device would skip uploading what it wrote.
            return PermissionDeniedError(
                f"replica {hello.replica_id} syncs as another user", code=ErrorCode.PERMISSION_DENIED,
                advice="open a separate database file for each user (as Device Sync did)")
        scope = hello.scope
        part = scope.get("partition")
        if part is not None:
            if part["key"] != self.state.config.partition_key:
                return PermissionDeniedError(
                    f"this server partitions by {self.state.config.partition_key!r}, not {part['key']!r}",
                    code=ErrorCode.BAD_SCOPE)
            self.partition = part["value"]
            self._partition_json = canonical_json(self.partition)
        elif scope.get("subscriptions") is not None:
            from .flexible import admit_flexible

            error = admit_flexible(self, hello)
            if error is not None:
                return error
        elif not self.state.config.development_mode:
            return PermissionDeniedError("a partition is required", code=ErrorCode.BAD_SCOPE)
        rules = None
        if self.state.config.rules is not None:
            finder = getattr(self.state, "custom_data", None)  # [auth.custom_data], frozen per session
            custom = finder.for_user(self.user.id) if finder is not None else None
            rules = self.state.config.rules.for_user(user_context(self.user, custom), query_compiler)
            if part is not None and not rules.can_read_partition(self.partition):
                return PermissionDeniedError(
                    f"user {self.user.id} may not read partition {self.partition!r}",
                    code=ErrorCode.PERMISSION_DENIED, advice="sync a partition the rules allow this user")
        self.enforcer = Enforcer(self.state, rules, self.partition, part is not None)
        self.reader = SessionReplica(self.state.backend, rules, self.enforcer)
        if self.flexible is not None:
            self.enforcer, self.reader = self.flexible.wrap(self.enforcer, self.reader)
        elif self.partition is not None:
            _shared(self.state).partitions.setdefault(self._partition_json, set()).add(self)
        return None

    async def _execute(self, actions: list[Any]) -> None:
        todo = list(actions)
        while todo:
            action = todo.pop(0)
            follow = self._execute_step(action)
            if follow is not None:
                todo[0:0] = follow
            elif isinstance(action, Notify) and self.flexible is not None:
                await self.flexible.on_message(action.message)
            elif isinstance(action, Integrate):
                todo[0:0] = await self._integrate(action)
            elif isinstance(action, _Started):
                todo[0:0] = await self._integrate(action.action, action)
            elif isinstance(action, ReadSnapshot):
                # The first two pages small (the device shows progress and data soon), then
                # each twice the one before, up to MAX_SNAPSHOT_PAGE, still bounded by
                # batch_bytes: fewer commits on the device, its pipeline full sooner.
                self._snapshot_pages += 1
                if self._snapshot_pages > 2:
                    grown = action.limit << min(4, self._snapshot_pages - 2)
                    action = dataclasses.replace(action, limit=min(grown, self.MAX_SNAPSHOT_PAGE))
                todo[0:0] = await asyncio.to_thread(self._read_snapshot, action)
            elif isinstance(action, _SendEncoded):
                if self.flexible is not None:
                    self.flexible.pump()
                if self.link.can_send(action.message):
                    self.link.send(action.message, encoded=action.payload)
            else:
                if isinstance(action, ReadLog):
                    action = self._unconcerned_skipped(action)
                todo[0:0] = await asyncio.to_thread(perform, action, self.reader, self.replicator)

    def _read_snapshot(self, action: ReadSnapshot) -> list[Any]:
        """(In a worker thread.) Read a snapshot page and encode the message that sends it,
        with the cyclic GC paused: a page is thousands of rows and lists that form no cycles,
        which collections meanwhile would scan, and the event loop is left only the send."""
        with _gc_paused():
            follow = perform(action, self.reader, self.replicator)
            link = self.link
            return [_SendEncoded(a.message, encode(a.message, compress_threshold=link.compress_threshold,
                                                   max_size=link.max_send_size))
                    if isinstance(a, Send) and isinstance(a.message, Snapshot) else a for a in follow]

    def _unconcerned_skipped(self, action: ReadLog) -> ReadLog:
        """``action`` reading from the head when the entries since its ``after`` are known to
        concern only other partitions (:meth:`_Shared.skip_to`): the same answer (those
        entries would all be filtered out), without decoding and filtering them. Not for a
        device at 0 (its first read decides whether it needs a snapshot)."""
        if self.partition is None or self.flexible is not None or action.after <= 0:
            return action
        start = _shared(self.state).skip_to(self._partition_json, action.after)
        return action if start == action.after else dataclasses.replace(action, after=start)

    def _read_now(self, action: ReadLog) -> Any:
        """A small read of the log's tail, made on the event loop when the backend is free.

        On fan-out every session reads the same few new entries (decoded once: see the log
        cache in store/replica.py); a thread hop per session would cost more than the read,
        and a thousand of them queue behind each other for the GIL. Anything larger, or a busy
        backend, goes to a worker thread as usual. A flexible session reads here when the
        router has already done the work (``FlexibleSession.read_inline``). Returns None when
        not done here.
        """
        if self.flexible is not None:
            return self.flexible.read_inline(action.after, action.limit, action.max_bytes, action.exclude_origin)
        action = self._unconcerned_skipped(action)
        if _shared(self.state).head - action.after > self.INLINE_READ:
            return None
        with self.state.backend.unless_busy() as free:
            if not free:
                return None
            return self.reader.read_log(action.after, limit=min(action.limit, self.INLINE_READ),
                                        max_bytes=min(action.max_bytes, 256 * 1024), scope=action.scope,
                                        exclude_origin=action.exclude_origin)

    async def _integrate(self, action: Integrate, started: _Started | None = None) -> list[Any]:
        # Rules, partition and schema checks, compensating transaction (server/enforcement.py).
        try:
            if started is None or started.future is None:
                result, refused, compensated = await asyncio.to_thread(
                    self.enforcer.integrate, action.txns, action.peer, action.peer_seq)
            else:
                result, refused, compensated = await started.future
        except MergeError as exc:
            # A well-framed batch holding a transaction the merge core refuses: the peer's
            # fault. The batch's storage transaction rolled back; tell the peer and close.
            self.link.fail(ProtocolError(f"cannot integrate the batch: {exc.message}",
                                         code=ErrorCode.MALFORMED_MESSAGE))
            return []
        if refused:
            self.link.send(CompensatingWrite(tuple(refused)))
        follow = self._integrated(result)
        if result.applied or compensated:
            if started is not None and started.announced:
                if started.error is not None:
                    raise started.error
            else:
                self._announce(result, compensated)
            # Let the sessions just woken stream the new entries before this one answers its
            # own peer (the Ack, then its own wake-up): the propagation to the others does not
            # wait for those sends.
            await asyncio.sleep(0)
        return follow

    def _integrated(self, result: Any) -> list[Any]:
        """The replicator's actions after an integration, noting whether the peer is in the
        middle of an upload (``ServerState.uploading``)."""
        follow = self.replicator.integrated(result)
        if self.replicator.download_complete:
            self.state.uploading.discard(self)
        else:
            self.state.uploading.add(self)
        return follow

    def _announce(self, result: Any, compensated: bool) -> None:
        """Wake the sessions after an integration of this session's upload (fan-out)."""
        if not (result.applied or compensated):
            return
        shared = _shared(self.state)
        before = shared.head
        last = getattr(result, "last_seq", 0) or 0
        shared.head = max(before, last)
        # What the new entries can concern: this session's partition (the enforcer let
        # nothing else in), unless a compensating transaction restored other documents.
        first: set[ServerSession] = set()
        skip: set[ServerSession] = set()
        known = self.partition is not None and self.flexible is None and not compensated
        shared.account(self._partition_json if known else None, before, last, getattr(result, "applied", 0) or 0)
        if known:
            shared.touched = {self._partition_json}
            # This partition's sessions first; those of other partitions with a later
            # wake-up already scheduled need no visit (see local_commit).
            first = shared.partitions.get(self._partition_json, first)
            skip = shared.lazy
        try:
            # One check for another process's writes for all the reads the wake-up makes.
            with self.state.backend.read_round():
                self.state.notify_commit(self, first, skip)
        finally:
            shared.touched = None
