"""The cheroot server under ``atomicsig serve``, with the limits a shared sigstore needs (docs/serve.md, "Limits").

cheroot hands a connection to a worker thread as soon as *one byte* is readable, and a worker then waits for the
rest of the request with a per-``recv`` timeout. A client sending one header byte per second therefore holds a
worker forever, and 16 such clients stop the server — /healthz included. Measured with bench/load_serve.py, 20
slowloris connections against stock cheroot left every probe unanswered until the load ended. So:

* **Complete heads only reach workers.** New and keep-alive connections are parked in a :class:`_Guard` thread
  (one selector) until ``MSG_PEEK`` shows the whole request head (``CRLF CRLF``). Heads that do not complete
  within ``header_timeout`` get 408, heads over ``max_header_bytes`` get 431, both without costing a worker.
  A slow client now costs one file descriptor, not a thread. (TLS: the bytes are encrypted, peeking cannot see
  the head, so TLS connections go to workers directly and only the request deadline below protects them.)
* **A deadline per exchange.** Once a worker holds a connection, body read + handler + response write must end
  within ``request_timeout``; the guard then shuts the socket down, which wakes the worker's blocked ``recv`` or
  ``send``. This bounds slow body senders and clients that read responses very slowly.
* **A connection cap.** More than ``max_connections`` open connections are answered 503 at accept and closed,
  so descriptors and the guard's work are bounded. Below the cap every connection may stay keep-alive (cheroot
  keeps only 10 by default and closes the rest after each response, which made 50 clients reconnect per request).
* Bodies over ``max_body`` are refused by cheroot (Content-Length) and by the application (chunked), 413; the
  listen backlog is raised from cheroot's 5 (50 clients connecting at once hit SYN retransmits of 1 s); the
  worker queue stays unbounded because the cap already bounds it and a bounded one blocks the accept loop.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi

#: Whole request heads arrive in one segment from every real client; 16 KiB is ample for a bearer token.
MAX_HEADER_BYTES = 16 * 1024
_TICK = 0.05  # guard wake-up period: re-peeks partial heads, enforces deadlines


@dataclass(frozen=True)
class Limits:
    """Resource limits of one server; the defaults are what docs/serve.md documents."""

    threads: int = 16
    max_connections: int = 512
    header_timeout: float = 10.0  # request head complete within this (from connect / keep-alive wake-up)
    request_timeout: float = 30.0  # body + handler + response, once a worker holds the connection
    idle_timeout: int = 10  # keep-alive connections idle this long are closed (cheroot ``timeout``)
    max_header_bytes: int = MAX_HEADER_BYTES
    max_body: int = 4 * 1024 * 1024
    backlog: int = 128


def _raw_answer(sock: socket.socket, status: str, extra: str = "") -> None:
    """A minimal response written without blocking (best effort), for connections no worker will see."""
    msg = (f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n").encode()
    with contextlib.suppress(OSError):
        sock.send(msg, socket.MSG_DONTWAIT)


class _TrackedConnection(cheroot_server.HTTPConnection):
    """An HTTPConnection that tells the guard when it is closed (by a worker, cheroot's expiry or shutdown)."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            guard = getattr(self.server, "guard", None)
            if guard is not None:
                guard.forget(self)


class _Guard:
    """Connection admission, head gating and exchange deadlines, in one thread with one selector."""

    def __init__(self, server: HardenedServer, limits: Limits, *, peek: bool) -> None:
        self.server = server
        self.limits = limits
        self.peek = peek
        self._lock = threading.Lock()
        self._open: set[Any] = set()  # every admitted, not yet closed connection
        self._parked: dict[Any, float] = {}  # conn -> head deadline (waiting for a complete head)
        self._partial: set[Any] = set()  # parked conns with some bytes but no complete head: re-peeked each tick
        self._active: dict[Any, float] = {}  # conn -> exchange deadline (a worker holds it)
        self._incoming: list[Any] = []  # parked by other threads, registered by the guard thread
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="atomicsig-guard", daemon=True)
        self.refused = 0  # connections answered 503 at the cap (exposed for tests and metrics)

    # ---- called from cheroot's threads ----------------------------------------------------------------------

    def admit(self, conn: Any) -> bool:
        """Count a new connection, or answer 503 and close it when the cap is reached."""
        with self._lock:
            if len(self._open) < self.limits.max_connections:
                self._open.add(conn)
                return True
            self.refused += 1
        _raw_answer(conn.socket, "503 Service Unavailable", "Retry-After: 1\r\n")
        conn.close()
        return False

    def known(self, conn: Any) -> bool:
        with self._lock:
            return conn in self._open

    def dispatch(self, conn: Any) -> None:
        """Give a connection whose head is complete to the worker pool, under the exchange deadline."""
        with self._lock:
            self._active[conn] = time.monotonic() + self.limits.request_timeout
        self.server.dispatch(conn)

    def park(self, conn: Any) -> None:
        with self._lock:
            self._parked[conn] = time.monotonic() + self.limits.header_timeout
            self._incoming.append(conn)
        self._wake()

    def idle(self, conn: Any) -> None:
        """A worker finished an exchange and hands the connection back for keep-alive."""
        with self._lock:
            self._active.pop(conn, None)

    def forget(self, conn: Any) -> None:
        with self._lock:
            self._open.discard(conn)
            self._active.pop(conn, None)
            self._parked.pop(conn, None)
            self._partial.discard(conn)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    # ---- head inspection ------------------------------------------------------------------------------------

    def head_state(self, conn: Any) -> str:
        """``complete``, ``partial``, ``empty`` (nothing yet), ``eof``, ``too-large`` — by peeking, never reading."""
        if not self.peek or conn.rfile.has_data():
            return "complete"  # TLS, or a pipelined request already buffered: the worker deadline applies
        sock = conn.socket
        # A Python socket with a timeout polls for that long before recv, MSG_DONTWAIT or not; this runs in
        # cheroot's accept thread and in the guard, which must never wait.
        sock.settimeout(0.0)
        try:
            data = sock.recv(self.limits.max_header_bytes + 4, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return "empty"
        except OSError:
            return "eof"
        finally:
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.settimeout(self.server.timeout)
        if not data:
            return "eof"
        if b"\r\n\r\n" in data:
            return "complete"
        if len(data) > self.limits.max_header_bytes:
            return "too-large"
        return "partial"

    def route(self, conn: Any) -> None:
        """Dispatch, park or refuse a connection that has (or may soon have) a request."""
        state = self.head_state(conn)
        if state == "complete":
            self.dispatch(conn)
        elif state in ("empty", "partial"):
            self.park(conn)
        else:
            self._reject(conn, state)

    def _reject(self, conn: Any, state: str) -> None:
        if state == "too-large":
            _raw_answer(conn.socket, "431 Request Header Fields Too Large")
        elif state == "timeout":
            _raw_answer(conn.socket, "408 Request Timeout")
        conn.close()

    # ---- the guard thread -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout=5)
        with self._lock:
            parked = list(self._parked)
        for conn in parked:
            conn.close()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake (buffer full) or stopping
            self._wake_w.send(b"x", socket.MSG_DONTWAIT)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=_TICK):
                if key.data is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                    continue
                self._unregister(key.data)
                self._recheck(key.data)
            with self._lock:
                incoming, self._incoming = self._incoming, []
                partial = list(self._partial)
            for conn in incoming:
                self._register(conn)
            for conn in partial:
                self._recheck(conn)
            self._enforce_deadlines()

    def _register(self, conn: Any) -> None:
        try:
            self._sel.register(conn.socket.fileno(), selectors.EVENT_READ, conn)
        except KeyError:
            pass  # already waiting in the selector
        except (ValueError, OSError):
            with self._lock:
                self._parked.pop(conn, None)
            conn.close()  # its socket is gone; nothing to wait for

    def _unregister(self, conn: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.socket.fileno())

    def _recheck(self, conn: Any) -> None:
        """Peek a parked connection again: dispatch it, keep waiting, or close it."""
        with self._lock:
            if conn not in self._parked:
                return
        state = self.head_state(conn)
        if state == "empty":
            with self._lock:
                self._partial.discard(conn)
            self._register(conn)  # level-triggered: wait for bytes in the selector
            return
        if state == "partial":
            with self._lock:
                self._partial.add(conn)  # bytes are waiting, so the selector would spin: re-peek next tick
            return
        with self._lock:
            self._parked.pop(conn, None)
            self._partial.discard(conn)
        if state == "complete":
            self.dispatch(conn)
        else:
            self._reject(conn, state)

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        with self._lock:
            late_heads = [c for c, t in self._parked.items() if t <= now]
            for c in late_heads:
                del self._parked[c]
                self._partial.discard(c)
            late_exchanges = [c for c, t in self._active.items() if t <= now]
            for c in late_exchanges:
                del self._active[c]
        for conn in late_heads:
            self._unregister(conn)
            self._reject(conn, "timeout")
        for conn in late_exchanges:
            # Wakes the worker blocked in recv/send on this socket; it then closes the connection.
            with contextlib.suppress(OSError):
                conn.socket.shutdown(socket.SHUT_RDWR)


class HardenedServer(wsgi.Server):  # type: ignore[misc]
    """cheroot's WSGI server with :class:`Limits` enforced by a :class:`_Guard` (see the module docstring)."""

    ConnectionClass = _TrackedConnection

    def __init__(self, bind_addr: tuple[str, int], app: Any, limits: Limits, *, tls: bool) -> None:
        super().__init__(bind_addr, app, numthreads=limits.threads, server_name="atomicsig",
                         request_queue_size=limits.backlog, timeout=int(limits.idle_timeout), accepted_queue_size=-1)
        self.limits = limits
        self.max_request_header_size = limits.max_header_bytes
        self.max_request_body_size = limits.max_body
        self.keep_alive_conn_limit = limits.max_connections
        self.guard = _Guard(self, limits, peek=not tls)

    def prepare(self) -> None:
        super().prepare()
        self.guard.start()

    def stop(self) -> None:
        super().stop()
        self.guard.stop()

    def process_conn(self, conn: Any) -> None:
        """cheroot's hand-off point (new connection, or keep-alive connection readable): go through the guard."""
        if not self.guard.known(conn) and not self.guard.admit(conn):
            return
        self.guard.route(conn)

    def dispatch(self, conn: Any) -> None:
        super().process_conn(conn)

    def put_conn(self, conn: Any) -> None:
        self.guard.idle(conn)
        super().put_conn(conn)
