"""A TCP proxy on 127.0.0.1 that can cut connections mid-stream, for network-fault tests.

Put it between a client and a real server (``tidesync.App(base_url=proxy.url)``): every byte of
HTTP and WebSocket traffic goes through it, so a test can

* :meth:`ChaosProxy.cut_after` -- let exactly ``n`` more bytes through in one direction, then
  reset the connection: the cut lands wherever the byte count says, mid-frame included;
* :meth:`ChaosProxy.cut_all` -- reset every open connection now;
* :meth:`ChaosProxy.set_offline` -- refuse new connections (and cut the open ones), as when a
  device loses the network;
* :meth:`ChaosProxy.truncate_http_bodies` -- end every plain HTTP response a few bytes into
  its body with an orderly close (FIN), as when a server process dies mid-response.

``up`` is client -> server, ``down`` is server -> client. Cuts armed with ``websocket_only``
(the default) only hit connections that asked for a WebSocket upgrade, so short HTTP requests
(login, head) pass untouched unless a test wants them cut too.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Literal

__all__ = ["ChaosProxy"]

Direction = Literal["up", "down"]


def _finish(sock: socket.socket) -> None:
    """An orderly close (FIN): the peer reads end-of-stream, not an error."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), the way a dead network path looks to the peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked in recv() on it
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Conn:
    def __init__(self, proxy: ChaosProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.websocket = False
        self.dead = False
        self.lock = threading.Lock()
        self.bytes = {"up": 0, "down": 0}
        self.body_left: int | None = None  # truncate_http_bodies: body bytes still to let through

    def kill(self, graceful: bool = False) -> None:
        with self.lock:
            if self.dead:
                return
            self.dead = True
        close = _finish if graceful else _reset
        close(self.client)
        close(self.server)
        self.proxy._forget(self)

    def pump(self, direction: Direction) -> None:
        src, dst = (self.client, self.server) if direction == "up" else (self.server, self.client)
        try:
            while not self.dead:
                data = src.recv(65536)
                if not data:
                    break
                if direction == "up" and not self.websocket and b"upgrade: websocket" in data.lower():
                    self.websocket = True
                    self.proxy.websockets += 1
                keep = self.proxy._truncate_http
                if direction == "down" and not self.websocket and keep is not None:
                    if self.body_left is None and b"\r\n\r\n" in data:
                        self.body_left = keep + data.index(b"\r\n\r\n") + 4
                    if self.body_left is not None:
                        if self.body_left < len(data):
                            dst.sendall(data[:self.body_left])
                            self.proxy.cuts_done += 1
                            self.kill(graceful=True)
                            return
                        self.body_left -= len(data)
                allowed = self.proxy._budget(self, direction, len(data))
                if allowed is None:
                    dst.sendall(data)
                    self.bytes[direction] += len(data)
                    continue
                if allowed:
                    dst.sendall(data[:allowed])
                    self.bytes[direction] += allowed
                self.proxy.cuts_done += 1
                self.proxy._cut_event.set()
                break
        except OSError:
            pass
        self.kill()


class ChaosProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target_port``, with faults on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._offline = False
        self._closed = False
        self._armed: tuple[Direction, int, bool] | None = None
        self._truncate_http: int | None = None
        self._cut_event = threading.Event()
        #: How many connections an armed cut has reset so far.
        self.cuts_done = 0
        #: How many connections were accepted (and forwarded) so far.
        self.accepted = 0
        #: How many of them asked for a WebSocket upgrade.
        self.websockets = 0
        self._thread = threading.Thread(target=self._accept_loop, name="chaos-proxy", daemon=True)
        self._thread.start()

    # -- faults ------------------------------------------------------------------------------

    def cut_after(self, nbytes: int, direction: Direction = "down", *, websocket_only: bool = True) -> None:
        """Let ``nbytes`` more bytes through in ``direction`` (on whichever connection carries
        them first), then reset that connection. Replaces a cut armed earlier."""
        with self._lock:
            self._armed = (direction, nbytes, websocket_only)
            self._cut_event.clear()

    def disarm(self) -> None:
        with self._lock:
            self._armed = None
            self._truncate_http = None

    def truncate_http_bodies(self, keep: int | None) -> None:
        """From now on, end each plain HTTP response ``keep`` bytes into its body with an
        orderly close (None: stop). WebSocket connections are not affected."""
        self._truncate_http = keep

    @property
    def armed(self) -> bool:
        return self._armed is not None

    def wait_cut(self, timeout: float) -> bool:
        """Wait until an armed cut has fired."""
        return self._cut_event.wait(timeout)

    def cut_all(self) -> int:
        """Reset every open connection; return how many there were."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.kill()
        return len(conns)

    def set_offline(self, offline: bool) -> None:
        """Offline: cut every open connection and refuse new ones until set back online."""
        self._offline = offline
        if offline:
            self.cut_all()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        self.cut_all()
        self._thread.join(5)

    def __enter__(self) -> ChaosProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _budget(self, conn: _Conn, direction: Direction, n: int) -> int | None:
        """None: forward all ``n`` bytes. An int: forward that many, then cut."""
        with self._lock:
            armed = self._armed
            if armed is None or armed[0] != direction or (armed[2] and not conn.websocket):
                return None
            left = armed[1]
            if n <= left:
                self._armed = (armed[0], left - n, armed[2])
                return None
            self._armed = None
            return left

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._offline or self._closed:
                _reset(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)  # the server is down: the client sees a refused/reset connection
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, client, server)
            with self._lock:
                self._conns.add(conn)
                self.accepted += 1
            for direction in ("up", "down"):
                threading.Thread(target=conn.pump, args=(direction,), name=f"chaos-proxy-{direction}",
                                 daemon=True).start()
