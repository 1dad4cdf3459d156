"""Running the server: in the foreground (``tidesync serve``) or in-process on a free port.

In-process use (tests, notebooks, an app that embeds a server)::

    from tidesync.server import ServerConfig, start_server
    server = start_server(ServerConfig(data_dir=tmp_path, port=0))
    ... tidesync.App("default", base_url=server.url) ...
    server.stop()
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from ..errors import TidesyncError
from .app import create_app
from .config import ServerConfig

__all__ = ["start_server", "RunningServer", "serve_forever"]

#: The attributes of uvicorn's sans-I/O WebSocket protocol that _ws_protocol() relies on, to
#: receive and to send.
_UVICORN_RECEIVING = ("frames", "curr_msg_data_type", "queue", "read_paused", "transport", "close_sent")
#: The attributes of websockets' sans-I/O protocol (uvicorn's ``conn``) that the small-frame path
#: of _ws_protocol() reads.
_WEBSOCKETS_RECEIVING = ("state", "current_size", "extensions", "parser_exc", "reader", "parser",
                         "max_message_size", "max_fragment_size")
#: ... and that its sending side (_send_now) reads.
_WEBSOCKETS_SENDING = ("writes", "state", "extensions", "expect_continuation_frame", "side")
#: A frame's second byte for a payload of fewer than 126 bytes (unmasked).
_LENGTH7 = [bytes((n,)) for n in range(126)]
_UVICORN_SENDING = ("conn", "writable", "disconnected", "handshake_complete", "close_sent",
                    "initial_response", "transport")


def _uvicorn_config(app: Any, config: ServerConfig, sock_port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=config.host, port=sock_port, log_level="warning", lifespan="on",
        ws=_ws_protocol(),
        ws_max_size=config.max_message_size + 1024, ws_ping_interval=None,
        ssl_certfile=config.tls_cert, ssl_keyfile=config.tls_key,
    )


def _ws_protocol() -> Any:
    """uvicorn's sans-I/O WebSocket protocol (where this uvicorn has it), made to pause reading
    only once the app falls behind.

    uvicorn pauses reading after every message it queues for the app and resumes once the app
    took it: two ``epoll_ctl`` calls and their bookkeeping for each message, which on fan-out
    is every client's ``Ack`` of every write. Here a small message (at most ``SMALL`` bytes)
    that finds nothing else queued leaves reading on; anything larger, or a second message
    the app has not taken yet, pauses it as before (so at most one small message is held
    beyond uvicorn's own bound).

    And the app may take a binary message where it arrives, before it is queued (the
    ``tidesync.receive_hook`` scope extension; server/sync_endpoint.py uses it for the
    ``Ack`` of an idle session), saving the hand-over to the task reading the queue; and send
    one at once when nothing could make that wait (``tidesync.send_now``)."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
        from websockets.exceptions import InvalidState
        from websockets.frames import apply_mask  # type: ignore[attr-defined]
        from websockets.protocol import Side, State
        from websockets.streams import StreamReader
    except ImportError:
        return "websockets"
    open_state = State.OPEN
    server_side = Side.SERVER
    at_eof = StreamReader.at_eof.__code__

    class SyncWebSocketProtocol(WebSocketsSansIOProtocol):
        SMALL = 64 * 1024
        #: Set by the app through the ASGI scope's ``tidesync.receive_hook`` extension: called
        #: with a binary message when nothing is queued before it; True if it took the message
        #: (then it is not queued: no task switch to hand it over).
        direct: Callable[[bytes], bool] | None = None
        #: True when uvicorn's internals differ from what this class expects (None: not checked
        #: yet), to receive and to send.
        plain: bool | None = None
        plain_send: bool | None = None
        #: True when websockets' internals differ from what data_received() expects.
        plain_frames: bool | None = None
        #: False when websockets' internals differ from what _send_now() expects to frame a
        #: message itself.
        frames_send: bool | None = None

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope = getattr(self, "scope", None)
            if scope is not None:
                scope["extensions"]["tidesync.receive_hook"] = self._set_direct
                scope["extensions"]["tidesync.send_now"] = self._send_now

        def _set_direct(self, direct: Callable[[bytes], bool] | None) -> None:
            self.direct = direct

        def _send_now(self, data: bytes) -> bool:
            """Send a binary message at once, as ``websocket.send`` would, when nothing could
            make that wait or fail (the transport takes it, the connection is open): no
            coroutine and no ASGI message on the way. False: use ``websocket.send``."""
            if self.plain_send is None:
                type(self).plain_send = not all(hasattr(self, a) for a in _UVICORN_SENDING)
            if (self.plain_send or not self.writable.is_set() or self.disconnected
                    or not self.handshake_complete or self.close_sent or self.initial_response is not None):
                return False
            conn = self.conn
            if self.frames_send is None:
                type(self).frames_send = all(hasattr(conn, a) for a in _WEBSOCKETS_SENDING)
            if (self.frames_send and not conn.writes and conn.state is open_state and not conn.extensions
                    and not conn.expect_continuation_frame and conn.side is server_side):
                # The frame websockets' send_binary() would make (a server's is not masked),
                # made here: nothing else is queued before it.
                n = len(data)
                head = (b"\x82" + _LENGTH7[n] if n < 126 else b"\x82\x7e" + n.to_bytes(2, "big") if n < 0x10000
                        else b"\x82\x7f" + n.to_bytes(8, "big"))
                self.transport.write(head + data)
                return True
            try:
                conn.send_binary(data)
            except InvalidState:
                return False  # websocket.send reports it
            self.transport.write(b"".join(conn.data_to_send()))
            return True

        def data_received(self, data: bytes) -> None:
            """What uvicorn does with ``data``, but a chunk that is exactly one small masked
            binary frame (what a device's ``Ack`` is) arriving where websockets' parser waits
            for the next frame (the connection open, no fragmented message under way, no
            extension, nothing buffered) is unmasked here and handed to the app's receive
            hook, without the parser's generators, the frame event and uvicorn's dispatch on
            the way. Anything else, or a message the hook does not take, goes to uvicorn as
            before (the parser then sees exactly what it would have)."""
            direct = self.direct
            if self.plain_frames is None and self.plain is False:
                conn = getattr(self, "conn", None)
                type(self).plain_frames = not (
                    conn is not None and all(hasattr(conn, a) for a in _WEBSOCKETS_RECEIVING)
                    and all(hasattr(conn.reader, a) for a in ("buffer", "eof"))
                    and hasattr(conn.parser, "gi_yieldfrom"))
            if (direct is not None and self.plain_frames is False and 6 <= len(data) <= 131 and data[0] == 0x82
                    and len(data) == 6 + (data[1] ^ 0x80) and not self.close_sent and self.queue.empty()):
                conn = self.conn
                reader = conn.reader
                if (conn.state is open_state and conn.current_size is None and not conn.extensions
                        and conn.parser_exc is None and not reader.buffer and not reader.eof
                        and (conn.max_message_size is None or len(data) - 6 <= conn.max_message_size)
                        and (conn.max_fragment_size is None or len(data) - 6 <= conn.max_fragment_size)):
                    parser: Any = conn.parser
                    while parser.gi_yieldfrom is not None:
                        parser = parser.gi_yieldfrom
                    if parser.gi_code is at_eof:
                        # At a frame boundary (at_eof() suspends only there, with nothing
                        # buffered): this chunk is the whole next frame.
                        self.curr_msg_data_type = "bytes"
                        if direct(apply_mask(data[6:], data[2:6])):
                            return
            super().data_received(data)

        def send_receive_event_to_app(self) -> None:
            if self.plain is None:
                # Written for uvicorn's internals as of 0.54: where they differ, uvicorn's own
                # behaviour for good (a slower server, not a broken one).
                type(self).plain = not all(hasattr(self, a) for a in _UVICORN_RECEIVING)
            if self.plain:
                super().send_receive_event_to_app()
                return
            self._send_receive_event_to_app()

        def _send_receive_event_to_app(self) -> None:
            direct = self.direct
            if (direct is not None and self.curr_msg_data_type == "bytes" and not self.close_sent
                    and len(self.frames) == 1 and self.queue.empty() and direct(self.frames[0])):
                self.frames = []
                return
            paused = self.read_paused
            size = sum(len(f) for f in self.frames)
            self.read_paused = True  # keeps uvicorn from pausing: decided below
            try:
                super().send_receive_event_to_app()
            finally:
                self.read_paused = paused
            if not paused and (size > self.SMALL or self.queue.qsize() > 1):
                self.read_paused = True
                self.transport.pause_reading()

    return SyncWebSocketProtocol


@dataclass
class RunningServer:
    """A server running in a background thread of this process."""

    config: ServerConfig
    url: str
    _server: uvicorn.Server
    _thread: threading.Thread
    app: Any = field(default=None)

    def stop(self, timeout: float = 10) -> None:
        """Stop accepting, close every session, wait for the thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(config: ServerConfig | None = None, *, timeout: float = 20) -> RunningServer:
    """Start a server in a background thread; return once it accepts connections.

    With ``config.port == 0`` a free port is picked; ``RunningServer.url`` says which.
    """
    config = config or ServerConfig(port=0)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.tls_cert:
        pass  # binding elsewhere is the operator's explicit choice
    port = config.port
    if port == 0:
        with socket.socket() as s:
            s.bind((config.host, 0))
            port = s.getsockname()[1]
    config.port = port
    app = create_app(config)
    server = uvicorn.Server(_uvicorn_config(app, config, port))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="tidesync-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise TidesyncError(f"the server did not start on {config.host}:{port}")
        time.sleep(0.01)
    scheme = "https" if config.tls_cert else "http"
    return RunningServer(config, f"{scheme}://{config.host}:{port}", server, thread, app)


def serve_forever(config: ServerConfig) -> None:
    """Run the server in the foreground until interrupted (``tidesync serve``)."""
    config.ensure_dirs()
    app = create_app(config)
    scheme = "https" if config.tls_cert else "http"
    if config.development_mode:
        print("tidesync: DEVELOPMENT MODE (no config file): app id 'default', anonymous login on, "
              "every user may read and write all data, partition key '_partition'", flush=True)
    else:
        if config.rules is None:
            print("tidesync: no [rules] in the config: every user may read and write all data", flush=True)
        if config.schemas:
            print(f"tidesync: enforcing the JSON Schema of {', '.join(sorted(config.schemas))}", flush=True)
    providers = app.state.tidesync.providers
    print(f"tidesync: login providers: {', '.join(providers.enabled) or 'none'}", flush=True)
    ep = config.auth.email_password
    if ep.enabled and ep.sender == "log":
        print("tidesync: email/password tokens are written to the log (sender = \"log\"): "
              "set [auth.email_password] sender for real mail", flush=True)
    print(f"tidesync: serving app '{config.app_id}' at {scheme}://{config.host}:{config.port} "
          f"(data in {config.data_dir})", flush=True)
    uvicorn.Server(_uvicorn_config(app, config, config.port)).run()
