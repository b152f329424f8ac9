"""The cheroot server under ``atomicsig serve``, with the limits a shared sigstore needs (docs/serve.md, "Limits").

cheroot hands a connection to a worker thread as soon as *one byte* is readable, and a worker then waits for the
rest of the request with a per-``recv`` timeout. A client sending one header byte per second therefore holds a
worker forever, and 16 such clients stop the server — /healthz included. Measured with bench/load_serve.py, 20
slowloris connections against stock cheroot left every probe unanswered until the load ended. So:

* **Complete heads only reach workers.** New and keep-alive connections are parked in a :class:`_Guard` thread
  (one selector) until ``MSG_PEEK`` shows the whole request head (``CRLF CRLF``). Heads that do not complete
  within ``header_timeout`` get 408, heads over ``max_header_bytes`` get 431, both without costing a worker.
  A slow client now costs one file descriptor, not a thread. (TLS: the guard drives the handshake without
  blocking, under the same head deadline — cheroot would run it in its accept loop, where one stalled handshake
  held every new connection back; the bytes after it are encrypted, peeking cannot see the head, so a connection
  goes to a worker once its first request bytes arrive and only the request deadline below protects it.)
* **A deadline per exchange.** Once a worker holds a connection, body read + handler + response write must end
  within ``request_timeout``; the guard then shuts the socket's read side, which ends a body that never arrives
  (the worker still answers 400), and both sides a second later, which wakes a worker blocked in ``send``. This
  bounds slow body senders and clients that read responses very slowly.
* **A connection cap, with eviction.** At ``max_connections`` open connections, a new one evicts the connection
  that has waited longest for its head (408); only if none is waiting (all busy or keep-alive) is the new one
  answered 503 and closed. Without eviction one client holding the cap with partial heads made 12 of 13 health
  probes fail (issue 12 #5). Below the cap every connection may stay keep-alive (cheroot keeps only 10 by default
  and closes the rest after each response, which made 50 clients reconnect per request).
* **A reserved health thread.** A complete bodiless ``GET``/``HEAD /healthz`` head is handled by its own thread,
  not queued behind the workers, so health answers even while every worker is held.
* Bodies over ``max_body`` are refused by cheroot (Content-Length) and by the application (chunked), 413; the
  listen backlog is raised from cheroot's 5 (50 clients connecting at once hit SYN retransmits of 1 s) to 512; the
  worker queue stays unbounded because the cap already bounds it and a bounded one blocks the accept loop.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from cheroot import server as cheroot_server
from cheroot import wsgi
from cheroot.errors import MaxSizeExceeded
from cheroot.ssl.builtin import BuiltinSSLAdapter

from atomicsig.errors import InputError

#: Whole request heads arrive in one segment from every real client; 16 KiB is ample for a bearer token.
MAX_HEADER_BYTES = 16 * 1024
_TICK = 0.05  # guard wake-up period: re-peeks partial heads, enforces deadlines
#: After the exchange deadline the read side is shut first, so a worker waiting for a body sees its end and can
#: still answer (400); if it is still busy this much later (blocked writing to a client that does not read), the
#: write side goes too.
_CUT_GRACE = 1.0
#: Heads answered by the reserved health thread: GET/HEAD /healthz without a body. Anything else, or a head that
#: announces a body, goes to the shared pool.
_HEALTH_LINES = (b"GET /healthz HTTP/1.", b"HEAD /healthz HTTP/1.")
_BODY_HEADERS = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:")


#: What an application's ``environ["wsgi.input"].read()`` raises for a refused, malformed, truncated or stalled
#: body (cheroot raises ValueError for a bad chunk size, OSError when the connection breaks or times out).
BODY_READ_ERRORS: tuple[type[BaseException], ...] = (MaxSizeExceeded, OSError, ValueError)


def body_over_limit(exc: BaseException) -> bool:
    """Whether a :data:`BODY_READ_ERRORS` error is cheroot's own cap (``max_request_body_size``) tripping while a
    chunked body is read: cheroot 11 raises MaxSizeExceeded for the chunk-size lines but a bare OSError for the
    chunk data."""
    return isinstance(exc, MaxSizeExceeded) or exc.args == ("Request Entity Too Large",)


def check_tls_files(cert: str, key: str) -> None:
    """Load the certificate and key as :func:`use_tls` would, for a caller that must know they load before it
    builds a server (the ``--processes`` supervisor, before forking); OSError/ValueError if they do not."""
    _DeferredHandshake(cert, key)


def use_tls(server: HardenedServer, cert: str, key: str) -> None:
    """Serve TLS with the certificate and key files (cheroot's builtin ``ssl`` adapter, handshake deferred to the
    guard: :class:`_DeferredHandshake`)."""
    server.ssl_adapter = _DeferredHandshake(cert, key)


class _DeferredHandshake(BuiltinSSLAdapter):  # type: ignore[misc]
    """cheroot's builtin adapter without the handshake in the accept loop.

    Stock cheroot completes each TLS handshake inside ``wrap()``, in the one thread that accepts connections, with
    the idle timeout (10 s) as its only bound: a client that sends three bytes of a ClientHello and stops held every
    new connection back for 10 s, and 40 of them stopped admission for minutes (measured: the webhook's
    test_slow_clients_do_not_stop_reviews timed out at 60 s). Here ``wrap()`` only wraps; the :class:`_Guard`
    drives the handshake without blocking, under the head deadline, like a plain-HTTP head.
    """

    def wrap(self, sock: socket.socket) -> tuple[Any, dict[str, str]]:
        s = self.context.wrap_socket(sock, do_handshake_on_connect=False, server_side=True)
        return s, {"wsgi.url_scheme": "https", "HTTPS": "on"}


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (the ``listen`` setting of ``serve`` and ``webhook``)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InputError(f"invalid listen address {value!r}; use HOST:PORT")
    return host.strip("[]"), int(port)


class TLSReloader:
    """Reload a server's certificate and key when their files change, without a restart (the webhook, issue 17 #3).

    cert-manager and kubelet's projected Secrets replace the files in place (a symlink swap); cheroot reads its SSL
    adapter per accepted connection, so a new adapter built from the new files serves every later handshake while
    open connections keep theirs. A file's (mtime, size, inode) is polled every ``interval`` seconds; a pair that
    does not load (mid-rotation: new certificate, old key) keeps the previous adapter and is retried next tick, so
    a rotation never leaves the server without a working certificate.
    """

    def __init__(self, server: HardenedServer, cert: str, key: str, *, interval: float = 2.0) -> None:
        self.server, self.cert, self.key, self.interval = server, cert, key, interval
        self.reloads = 0  # adapters replaced (exposed for tests and metrics)
        self.failures = 0  # changed files that did not load (kept the previous certificate)
        self.last_error = ""
        self._seen = self._stamp()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="atomicsig-tls-reload", daemon=True)

    def _stamp(self) -> tuple[tuple[float, int, int], ...]:
        out = []
        for f in (self.cert, self.key):
            try:
                st = os.stat(f)
                out.append((st.st_mtime, st.st_size, st.st_ino))
            except OSError:
                out.append((0.0, -1, -1))
        return tuple(out)

    def check(self) -> bool:
        """Reload now if either file changed since the last load; True if a new certificate is in use."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        try:
            use_tls(self.server, self.cert, self.key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.failures += 1
            self.last_error = str(exc)
            return False
        self._seen = stamp
        self.reloads += 1
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()


class ListenError(InputError):
    """The listen address cannot be bound (in use, not local, port < 1024 without privilege): the configured
    ``listen`` value is what must change, so it is an input error (exit 2), reported before anything is announced."""


def _listen_error(address: str, cause: OSError) -> ListenError:
    reason = cause.strerror or str(cause)
    return ListenError(f"cannot listen on {address}: {reason[:1].lower()}{reason[1:]}")


def listen_socket(bind_addr: tuple[str, int], *, backlog: int = 512) -> socket.socket:
    """A bound, listening TCP socket that no server runs yet, for ``webhook --processes N``: the supervisor binds
    once (so port 0 resolves to one real port, and a busy port is one :class:`ListenError` before any worker
    exists), then forks; every worker runs a :class:`HardenedServer` on the inherited socket (``sock=``).

    Options as cheroot sets them on the socket it binds itself: SO_REUSEADDR except for port 0 (where it could
    take a port another socket still holds in TIME_WAIT), TCP_NODELAY (inherited by accepted sockets). No
    SO_REUSEPORT: with it a second, stale webhook of the same user on the same port would silently share the
    traffic instead of being a busy port (the measured spread between workers: atomicsig/webhook/prefork.py)."""
    host, port = bind_addr
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise _listen_error(address, OSError(exc.errno, exc.strerror)) from None
    last: OSError = OSError("no address to bind")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if port != 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise _listen_error(address, last)


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
    #: Holds a whole wave of reconnects: a flood of max_connections heads expiring together reconnects at once,
    #: and an overflowing accept queue drops SYNs, which costs an honest client (a health probe) a 1 s retransmit.
    backlog: int = 512


def _raw_answer(sock: socket.socket, status: str, extra: str = "") -> None:
    """A minimal response written without blocking (best effort), for connections no worker will see."""
    if isinstance(sock, ssl.SSLSocket):  # TLS not (or not known to be) set up: plain bytes would break the stream
        return
    msg = (f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n").encode()
    with contextlib.suppress(OSError):
        sock.send(msg, socket.MSG_DONTWAIT)


class _Request(cheroot_server.HTTPRequest):  # type: ignore[misc]
    """cheroot's request, but an application's ``Connection: close`` really closes the connection.

    cheroot otherwise keeps the connection and first *drains* the unread rest of the body — from a client whose
    body just timed out or was malformed (server.SignatureServer answers those 408/400 with ``Connection:
    close``), which blocked the worker again and logged a traceback.
    """

    def send_headers(self) -> None:
        if any(k.lower() == b"connection" and v.strip().lower() == b"close" for k, v in self.outheaders):
            self.close_connection = True
        super().send_headers()


class _TrackedConnection(cheroot_server.HTTPConnection):
    """An HTTPConnection that tells the guard when it is closed (by a worker, cheroot's expiry or shutdown)."""

    RequestHandlerClass = _Request

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
        self._cut: set[Any] = set()  # active conns whose read side was shut at the deadline (grace running)
        self._evicting: list[Any] = []  # parked conns chosen to make room at the cap; closed by the guard thread
        self._incoming: list[Any] = []  # parked by other threads, registered by the guard thread
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="atomicsig-guard", daemon=True)
        self._started = False
        self.refused = 0  # connections answered 503 at the cap (exposed for tests and metrics)
        self.evicted = 0  # connections without a complete head closed (408) to make room for a new one

    # ---- called from cheroot's threads ----------------------------------------------------------------------

    def admit(self, conn: Any) -> bool:
        """Count a new connection; at the cap, make room by evicting the connection that has waited longest for
        its head, or (when every connection is busy or keep-alive) answer 503 and close the new one.

        Eviction is what keeps /healthz answering under a connection flood (issue 12 #5): one client holding
        ``max_connections`` partial heads and reconnecting after each 408 used to fill the cap, so every probe
        got 503. Now a newcomer displaces the oldest head-less connection; a real client's head arrives within
        microseconds of its connect, so it is never the oldest, while the flood only displaces itself.
        """
        with self._lock:
            if len(self._open) >= self.limits.max_connections and self._parked:
                victim = next(iter(self._parked))  # insertion order: parked longest
                del self._parked[victim]
                self._partial.discard(victim)
                self._open.discard(victim)
                self._evicting.append(victim)  # the guard thread unregisters and closes it (it owns the selector)
                self.evicted += 1
            admitted = len(self._open) < self.limits.max_connections
            if admitted:
                self._open.add(conn)
            else:
                self.refused += 1
            wake = bool(self._evicting)
        if wake:
            self._wake()
        if admitted:
            return True
        _raw_answer(conn.socket, "503 Service Unavailable", "Retry-After: 1\r\n")
        conn.close()
        return False

    def known(self, conn: Any) -> bool:
        with self._lock:
            return conn in self._open

    def dispatch(self, conn: Any, *, health: bool = False) -> None:
        """Give a connection whose head is complete to the worker pool (``health``: to the reserved health
        thread), under the exchange deadline."""
        with self._lock:
            self._active[conn] = time.monotonic() + self.limits.request_timeout
        self.server.dispatch(conn, health=health)

    def park(self, conn: Any) -> None:
        with self._lock:
            self._parked[conn] = time.monotonic() + self.limits.header_timeout
            self._incoming.append(conn)
        self._wake()

    def idle(self, conn: Any) -> None:
        """A worker finished an exchange and hands the connection back for keep-alive."""
        with self._lock:
            self._active.pop(conn, None)
            self._cut.discard(conn)

    def forget(self, conn: Any) -> None:
        with self._lock:
            self._open.discard(conn)
            self._active.pop(conn, None)
            self._cut.discard(conn)
            self._parked.pop(conn, None)
            self._partial.discard(conn)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    # ---- head inspection ------------------------------------------------------------------------------------

    def head_state(self, conn: Any) -> str:
        """``complete``, ``health`` (a complete bodiless GET/HEAD /healthz), ``partial``, ``empty`` (nothing yet),
        ``eof``, ``too-large`` — by peeking, never reading."""
        if not self.peek:
            return self._tls_state(conn)
        if conn.rfile.has_data():
            return "complete"  # a pipelined request already buffered: the worker deadline applies
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
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end + 2].lower()
            if data.startswith(_HEALTH_LINES) and not any(h in head for h in _BODY_HEADERS):
                return "health"
            return "complete"
        if len(data) > self.limits.max_header_bytes:
            return "too-large"
        return "partial"

    def _tls_state(self, conn: Any) -> str:
        """TLS: finish the handshake without blocking (``empty``/``partial`` while it needs bytes), then wait for
        the first encrypted bytes of a request. The head itself cannot be peeked (it is encrypted), so once bytes
        arrive the connection goes to a worker and the exchange deadline bounds the rest."""
        sock = conn.socket
        if not getattr(conn, "_atomicsig_tls_ready", False):
            sock.settimeout(0.0)
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                return "empty"
            except ssl.SSLWantWriteError:
                return "partial"
            except (OSError, ValueError):  # a failed handshake (ssl.SSLError is an OSError) or a closed socket
                return "eof"
            finally:
                with contextlib.suppress(OSError):
                    sock.settimeout(self.server.timeout)
            conn._atomicsig_tls_ready = True
        if conn.rfile.has_data() or sock.pending():
            return "complete"
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return "eof"
        return "complete" if readable else "empty"

    def route(self, conn: Any) -> None:
        """Dispatch, park or refuse a connection that has (or may soon have) a request."""
        state = self.head_state(conn)
        if state in ("complete", "health"):
            self.dispatch(conn, health=state == "health")
        elif state in ("empty", "partial"):
            self.park(conn)
        else:
            self._reject(conn, state)

    def _reject(self, conn: Any, state: str) -> None:
        if state == "too-large":
            _raw_answer(conn.socket, "431 Request Header Fields Too Large")
        elif state in ("timeout", "evicted"):
            _raw_answer(conn.socket, "408 Request Timeout")
        conn.close()

    # ---- the guard thread -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._started:  # a server whose bind failed never started its guard
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
                evicting, self._evicting = self._evicting, []
                incoming, self._incoming = self._incoming, []
                incoming = [c for c in incoming if c in self._parked]  # not evicted or dispatched meanwhile
                partial = list(self._partial)
            for conn in evicting:
                self._unregister(conn)
                self._reject(conn, "evicted")
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
            if self._parked.pop(conn, None) is None:
                return  # evicted by admit() meanwhile: the eviction closes it
            self._partial.discard(conn)
        if state in ("complete", "health"):
            self.dispatch(conn, health=state == "health")
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
            first_cut = [c for c in late_exchanges if c not in self._cut]
            for c in late_exchanges:
                if c in self._cut:
                    del self._active[c]
                    self._cut.discard(c)
                else:
                    self._active[c] = now + _CUT_GRACE
                    self._cut.add(c)
        for conn in late_heads:
            self._unregister(conn)
            self._reject(conn, "timeout")
        for conn in late_exchanges:
            # Read side first: a worker blocked reading a body sees its end and still answers (400, Connection:
            # close). Both sides after the grace: wakes a worker blocked writing to a client that does not read.
            with contextlib.suppress(OSError):
                conn.socket.shutdown(socket.SHUT_RD if conn in first_cut else socket.SHUT_RDWR)


class HardenedServer(wsgi.Server):  # type: ignore[misc]
    """cheroot's WSGI server with :class:`Limits` enforced by a :class:`_Guard` (see the module docstring)."""

    ConnectionClass = _TrackedConnection

    def __init__(self, bind_addr: tuple[str, int], app: Any, limits: Limits, *, tls: bool,
                 sock: socket.socket | None = None) -> None:
        """``sock``: a listening socket bound elsewhere (:func:`listen_socket`, inherited by a pre-forked worker)
        to serve on instead of binding ``bind_addr``."""
        super().__init__(bind_addr, app, numthreads=limits.threads, server_name="atomicsig",
                         request_queue_size=limits.backlog, timeout=int(limits.idle_timeout), accepted_queue_size=-1)
        self.limits = limits
        self.max_request_header_size = limits.max_header_bytes
        self.max_request_body_size = limits.max_body
        # The guard caps every open connection at max_connections, keep-alive ones included; cheroot's own
        # keep-alive cap would count its selector under a lock after every request (webhook profile).
        self.keep_alive_conn_limit = None  # type: ignore[assignment]  # cheroot reads None as "no cap"
        self.guard = _Guard(self, limits, peek=not tls)
        self._bind_error: OSError | None = None
        self._adopted = sock
        # The reserved health worker: /healthz must answer while every pool worker is held (slow bodies, slow
        # readers) — the promise docs/serve.md makes. Only bodiless GET/HEAD /healthz heads reach it.
        self._health_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._health_thread = threading.Thread(target=self._serve_health, name="atomicsig-health", daemon=True)

    @property
    def address(self) -> str:
        """``HOST:PORT`` actually bound (the real port when 0 was asked for), ``[v6]:PORT`` for IPv6."""
        host, port = self.bind_addr[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def bind(self, family: int, type: int, proto: int = 0) -> None:  # cheroot's signature
        if self._adopted is not None:  # cheroot's prepare() asks for a socket: the one we were given
            self.socket = self._adopted
            self.bind_addr = self._adopted.getsockname()[:2]
            return
        try:
            super().bind(family, type, proto)
        except OSError as exc:
            self._bind_error = exc  # cheroot folds it into a message string; keep the errno for ours
            raise

    def prepare(self) -> None:
        """Bind and listen, then start the guard and the health worker; a failed bind is a :class:`ListenError`."""
        try:
            super().prepare()
        except OSError as exc:
            raise _listen_error(self.address, self._bind_error or exc) from None
        if self._adopted is not None:
            # A socket shared with other processes: each new connection wakes every process's accept loop and
            # one wins. The losers' accept() must fail at once (EAGAIN, which cheroot skips), not wait in it for
            # cheroot's 1 s socket timeout while their keep-alive connections, served by the same loop, stall.
            self.socket.settimeout(0.0)
        self.guard.start()
        self._health_thread.start()

    def stop(self) -> None:
        adopted = self._adopted if self.ready else None
        if adopted is not None:
            # cheroot's stop() "touches" its listening port with a connect() to wake its own accept(); on a shared
            # socket another worker would accept that empty connection. Our accept loop does not block in
            # accept(), so no touch is needed: close our copy of the socket ourselves.
            self.socket = None
        super().stop()
        if adopted is not None:
            adopted.close()
        self.guard.stop()
        if self._health_thread.is_alive():
            self._health_queue.put(None)
            self._health_thread.join(timeout=5)

    def process_conn(self, conn: Any) -> None:
        """cheroot's hand-off point (new connection, or keep-alive connection readable): go through the guard."""
        if not self.guard.known(conn) and not self.guard.admit(conn):
            return
        self.guard.route(conn)

    def dispatch(self, conn: Any, *, health: bool = False) -> None:
        if health:
            self._health_queue.put(conn)
        else:
            super().process_conn(conn)

    def put_conn(self, conn: Any) -> None:
        self.guard.idle(conn)
        super().put_conn(conn)

    def _serve_health(self) -> None:
        """One request per hand-off, like a cheroot worker; a keep-alive connection goes back through the guard,
        so its next request is classified again."""
        while (conn := self._health_queue.get()) is not None:
            keep = False
            try:
                keep = conn.communicate()
            except Exception:  # a broken client must not end the health thread
                keep = False
            finally:
                if keep:
                    self.put_conn(conn)
                else:
                    conn.close()
