"""A WebSocket client connection that the sync session's own thread reads.

``websockets``' threaded client reads the socket in a thread of its own and hands each message
over: one more thread wake-up (and GIL hand-off) per download before the session sees it. Here
the session thread waits on the socket itself (``select`` on the socket and on a wake-up pipe
that its inbox writes to), and parses frames with ``websockets``' sans-I/O ``ClientProtocol``.

Used when no proxy applies to the URL (behind a proxy the session uses ``websockets``' own
client, which speaks to proxies).
"""

from __future__ import annotations

import os
import queue
import selectors
import socket
import ssl
import threading
import time
from typing import Any

__all__ = ["SocketConnection", "WakeInbox", "direct_socket_usable"]

#: How long a send, or the rest of a TLS record after the socket was readable, may block.
IO_TIMEOUT = 30.0


def direct_socket_usable(url: str) -> bool:
    """Whether :class:`SocketConnection` can reach ``url`` (a ws:// or wss:// URL for which
    no proxy is configured)."""
    try:
        from websockets.uri import parse_uri

        uri = parse_uri(url)
    except Exception:  # noqa: BLE001 - let the usual client report a bad URL
        return False
    try:
        from websockets.proxy import get_proxy

        return get_proxy(uri) is None
    except ImportError:  # websockets < 15 does not use proxies either
        return True


class WakeInbox:
    """The session's inbox: a queue whose ``put`` also wakes a ``select`` on :attr:`wake_fd`."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    def put(self, item: tuple[str, Any]) -> None:
        self._queue.put(item)
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # the pipe is full: a wake-up is pending anyway

    def get(self, timeout: float | None = None) -> tuple[str, Any]:
        return self._queue.get(timeout=timeout)

    def get_nowait(self) -> tuple[str, Any]:
        return self._queue.get_nowait()

    def drain_wake(self) -> None:
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except OSError:
            pass

    def __del__(self) -> None:
        # Only once nothing can put any more: closing earlier could let a late put() write
        # into whatever file reuses the descriptor.
        for fd in (self.wake_fd, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class SocketConnection:
    """One client WebSocket connection, opened (handshake done) by the constructor.

    The owning thread calls :meth:`receive` when the socket is readable (:meth:`fileno`);
    :meth:`send` and :meth:`close` may be called from any thread.

    Raises (constructor):
        OSError, ssl.SSLError, TimeoutError: the connection or TLS failed.
        websockets.exceptions.InvalidHandshake: the server refused the upgrade.
    """

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None, open_timeout: float) -> None:
        from websockets.client import ClientProtocol
        from websockets.http11 import USER_AGENT
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        deadline = time.monotonic() + open_timeout
        sock = socket.create_connection((uri.host, uri.port), timeout=open_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if uri.secure:
                context = ssl_context if ssl_context is not None else ssl.create_default_context()
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock = context.wrap_socket(sock, server_hostname=uri.host)
            self._protocol = ClientProtocol(uri, max_size=None)
            request = self._protocol.connect()
            request.headers.setdefault("User-Agent", USER_AGENT)
            self._protocol.send_request(request)
            sock.sendall(b"".join(self._protocol.data_to_send()))
            self._early: list[bytes] = []
            self._fragments: list[bytes] | None = None
            response = None
            while response is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out while waiting for the WebSocket handshake")
                sock.settimeout(remaining)
                data = sock.recv(65536)
                if data:
                    self._protocol.receive_data(data)
                else:
                    self._protocol.receive_eof()
                for event in self._protocol.events_received():
                    if response is None:
                        response = event
                    else:
                        self._take(event, self._early)
                if response is None and not data:
                    break
            if self._protocol.handshake_exc is not None:
                raise self._protocol.handshake_exc
            if response is None:
                raise ConnectionError("the server closed the connection during the WebSocket handshake")
            sock.settimeout(IO_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._lock = threading.Lock()
        self._ended = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def early_messages(self) -> list[bytes]:
        """Messages that arrived together with the handshake response (taken once)."""
        early, self._early = self._early, []
        return early

    def _take(self, event: Any, out: list[bytes]) -> None:
        """Collect a received data frame (whole messages into ``out``; fragments joined)."""
        from websockets.frames import Frame, Opcode

        if not isinstance(event, Frame):
            return
        op = event.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if event.fin:
                out.append(bytes(event.data))
            else:
                self._fragments = [bytes(event.data)]
        elif op is Opcode.CONT and self._fragments is not None:
            self._fragments.append(bytes(event.data))
            if event.fin:
                out.append(b"".join(self._fragments))
                self._fragments = None

    def receive(self) -> list[bytes] | None:
        """Read what the socket has (call when it is readable): the whole messages received,
        in order, or None once the connection has ended (then call :meth:`close`)."""
        if self._ended:
            return None
        out: list[bytes] = []
        try:
            data = self._sock.recv(65536)
            pending = getattr(self._sock, "pending", None)
            while data and pending is not None and pending() > 0:  # the rest of a TLS record
                data += self._sock.recv(pending())
        except (OSError, ValueError):
            data = b""
        with self._lock:
            if data:
                self._protocol.receive_data(data)
            else:
                self._protocol.receive_eof()
            for event in self._protocol.events_received():
                self._take(event, out)
            self._write_locked()  # pongs, the answer to a close
            from websockets.protocol import State

            if not data or self._protocol.state is State.CLOSED:
                self._ended = True
        if self._ended and not out:
            return None
        return out

    def send(self, payload: bytes) -> None:
        """Send one binary message.

        Raises:
            OSError (or websockets' ConnectionClosed): the connection is gone.
        """
        with self._lock:
            if self._ended:
                raise ConnectionError("the connection is closed")
            self._protocol.send_binary(payload)
            self._write_locked()

    def _write_locked(self) -> None:
        for chunk in self._protocol.data_to_send():
            if chunk:
                self._sock.sendall(chunk)
            else:  # end of stream: the protocol is done with the connection
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def close(self) -> None:
        """Start the closing handshake (best effort) and stop the connection: the reading
        thread then sees the end. Safe to call from any thread, more than once."""
        from websockets.protocol import State

        with self._lock:
            try:
                if self._protocol.state is State.OPEN:
                    self._protocol.send_close(1000)
                    self._write_locked()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
            self._ended = True
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self) -> None:
        """Close the socket itself (by the reading thread, once it stopped selecting on it)."""
        self.close()
        self._sock.close()


def wait_readable(selector: selectors.BaseSelector, timeout: float) -> list[Any]:
    """The ``data`` of the registered objects that are ready within ``timeout`` seconds."""
    return [key.data for key, _ in selector.select(timeout)]
