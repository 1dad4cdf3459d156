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
event loop; the backend serializes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import AuthError, MergeError, PermissionDeniedError, ProtocolError, SyncError
from ..protocol.actions import Announce, Fail, Integrate, Notify, ReportProgress, Send
from ..protocol.codes import ErrorCode
from ..protocol.events import Closed, Connected, Failed, MessageReceived
from ..protocol.link import Link
from ..protocol.messages import CompensatingWrite, Hello
from ..protocol.replicator import Replicator, perform
from ..protocol.states import Role
from .enforcement import Enforcer, SessionReplica, query_compiler, user_context

if TYPE_CHECKING:
    from .app import ServerState

__all__ = ["sync_endpoint", "ServerSession"]

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


class ServerSession:
    """One client connection."""

    def __init__(self, state: ServerState, websocket: WebSocket) -> None:
        self.state = state
        self.ws = websocket
        self.link = Link(Role.ACCEPTOR, max_message_size=state.config.max_message_size)
        from .config import named_policies

        self.replicator = Replicator(state.backend.replica_id, Role.ACCEPTOR,
                                     info={"server": "tidesync", "app_id": state.config.app_id,
                                           "policies": json.dumps(named_policies(state.config.policies))})
        self.user: Any = None
        self.partition: Any = None
        # Rules and filters of this session's user (set when the Hello is admitted).
        self.enforcer = Enforcer(state, None)
        self.reader = SessionReplica(state.backend, None, self.enforcer)
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._closing = False
        self._auth_checked_at = time.monotonic()
        self.flexible: Any = None  # flexible sync (server/flexible.py), set by a flexible Hello

    def local_commit(self) -> None:
        """The server's log grew: stream the new entries (called on the event loop)."""
        self._inbox.put_nowait(("commit", None))

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
            lapsed = await asyncio.to_thread(self.state.tokens.still_valid, user)
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

    async def run(self) -> None:
        reader = asyncio.create_task(self._read())
        self.replicator.start()
        try:
            while True:
                if await self._auth_lapsed():
                    break
                try:
                    kind, item = await asyncio.wait_for(self._inbox.get(), timeout=1.0)
                except TimeoutError:
                    self.link.tick(int(time.monotonic() * 1000))
                    await self._flush()
                    if self.link.finished:
                        break
                    continue
                if kind == "stop":
                    break
                if kind == "lost":
                    self.link.connection_lost()
                elif kind == "data":
                    self.link.receive(item)
                elif kind == "flex":  # flexible sync: the next page of a subscription bootstrap
                    if self.flexible is not None:
                        await self.flexible.step()
                elif kind == "commit":
                    if self.replicator.active and (self.flexible is None or await self.flexible.wants_log()):
                        await self._execute(self.replicator.local_commit(
                            await asyncio.to_thread(self.state.backend.head_seq)))
                for event in self.link.events_received():
                    await self._on_event(event)
                await self._flush()
                if self.link.finished:
                    break
        finally:
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
                self._inbox.put_nowait(("data", data))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self._inbox.put_nowait(("lost", None))

    async def _flush(self) -> None:
        if self.flexible is not None:
            self.flexible.pump()
        for payload in self.link.data_to_send():
            try:
                await self.ws.send_bytes(payload)
            except Exception:  # noqa: BLE001 - the reader reports the loss
                self.link.connection_lost()
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
        scope = hello.scope
        part = scope.get("partition")
        if part is not None:
            if part["key"] != self.state.config.partition_key:
                return PermissionDeniedError(
                    f"this server partitions by {self.state.config.partition_key!r}, not {part['key']!r}",
                    code=ErrorCode.BAD_SCOPE)
            self.partition = part["value"]
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
        return None

    async def _execute(self, actions: list[Any]) -> None:
        todo = list(actions)
        while todo:
            action = todo.pop(0)
            if isinstance(action, Send):
                if self.flexible is not None:
                    self.flexible.pump()  # views first: they precede the changes that rely on them
                if self.link.can_send(action.message):
                    self.link.send(action.message)
            elif isinstance(action, Fail):
                self.link.fail(action.error)
            elif isinstance(action, Notify) and self.flexible is not None:
                await self.flexible.on_message(action.message)
            elif isinstance(action, (ReportProgress, Announce, Notify)) or type(action).__name__ in (
                    "UploadComplete", "DownloadComplete"):
                pass
            elif isinstance(action, Integrate):
                todo[0:0] = await self._integrate(action)
            else:
                todo[0:0] = await asyncio.to_thread(perform, action, self.reader, self.replicator)

    async def _integrate(self, action: Integrate) -> list[Any]:
        # Rules, partition and schema checks, compensating transaction (server/enforcement.py).
        try:
            result, refused, compensated = await asyncio.to_thread(
                self.enforcer.integrate, action.txns, action.peer, action.peer_seq)
        except MergeError as exc:
            # A well-framed batch holding a transaction the merge core refuses: the peer's
            # fault. The batch's storage transaction rolled back; tell the peer and close.
            self.link.fail(ProtocolError(f"cannot integrate the batch: {exc.message}",
                                         code=ErrorCode.MALFORMED_MESSAGE))
            return []
        if refused:
            self.link.send(CompensatingWrite(tuple(refused)))
        follow = self.replicator.integrated(result)
        if result.applied or compensated:
            self.state.notify_commit(self)
        return follow
