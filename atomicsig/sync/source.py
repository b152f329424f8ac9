"""Reading a peer over HTTP: its journal by byte range, and single signature files with a size cap.

One small class behind which all network access sits (as python-tuf's fetcher), so the follower logic does not
care whether the peer is ``atomicsig serve`` or nginx. Every body is read with a hard cap: a hostile or broken
peer cannot make us buffer more than :data:`JOURNAL_CHUNK` or 4 MiB per signature (SPEC §8). Redirects are not
followed: a source is one origin.

Every request is also bounded in *time*, because a peer that sends ``Content-Length: 1000`` and then 10 bytes, or
one byte every few seconds (of the body or of the headers), would otherwise hold the reader for the whole read
timeout per read, on every pass: connect and each read wait at most ``timeout`` seconds; bodies are read with
``read1`` (one ``recv`` per call) under socket timeouts that shrink as the pass's hard ``deadline`` (set by the
daemon) nears; and at that deadline :meth:`HTTPSource.abort_requests` shuts down the sockets of every request
still in flight, header phase included (the pools' connection classes register their socket before reading a
response). Such a pass fails (SourceError), is reported and backed off.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from atomicsig.errors import RegistryError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.store.journal import HEADER_LEN, JOURNAL_NAME, META_DIR
from atomicsig.sync.config import Endpoint

#: At most this many journal bytes per request (≈ 60,000 records); a pass loops until caught up.
JOURNAL_CHUNK = 8 * 1024 * 1024
#: Default seconds for connect and for each read (config ``timeout:``).
TIMEOUT = 30.0
# ASCII digits, at most 18 (int() refuses > 4300 digits with ValueError: fuzz finding), and \Z not $.
_CONTENT_RANGE = re.compile(r"^bytes (?:([0-9]{1,18})-([0-9]{1,18})|\*)/([0-9]{1,18}|\*)\Z")


_current = threading.local()  # .source: the HTTPSource this thread's request is for; .sock: its socket


def _track(conn: urllib3.connection.HTTPConnection) -> None:
    src: HTTPSource | None = getattr(_current, "source", None)
    if src is not None and conn.sock is not None:
        with src._inflight_lock:
            src._inflight.add(conn.sock)
        _current.sock = conn.sock


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _track(self)  # before the status line and headers are read: a dripping peer can be cut there too
        return super().getresponse()


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        _track(self)
        return super().getresponse()


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with pools whose connections register their socket (see :func:`_track`)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class SourceError(RegistryError):
    """The peer could not be reached or answered something unusable (retried with backoff)."""


class TooLarge(SourceError):
    """A body over its cap: a permanent refusal for a signature (SPEC §8), not a reason to retry."""


class Gone(SourceError):
    """404 for a signature file the journal named (pruned or renumbered since)."""


@dataclass(frozen=True)
class JournalChunk:
    """What one journal request gave: ``data`` starts at file offset ``base``; ``total`` is the file size."""

    unchanged: bool
    base: int = 0
    data: bytes = b""
    total: int | None = None
    etag: str | None = None
    header: bytes | None = None  # the header bytes, when the response started at 0


class HTTPSource:
    def __init__(self, endpoint: Endpoint, timeout: float = TIMEOUT,
                 on_data: Callable[[], None] = lambda: None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        #: time.monotonic() after which requests are cut (None: only ``timeout`` applies); set per pass.
        self.deadline: float | None = None
        #: Body bytes received so far (all threads); the daemon's per-pass byte budget reads it.
        self.bytes_read = 0
        #: Called whenever a response or a piece of body arrives: the daemon's "this source is alive" signal.
        self.on_data = on_data
        self._local = threading.local()  # one keep-alive Session per thread (the follower prefetches)
        self.requests_made = 0
        self._inflight: set[socket.socket] = set()
        self._inflight_lock = threading.Lock()

    def abort_requests(self) -> int:
        """Shut down the socket of every request of this source still in flight (the pass's hard deadline);
        their readers wake at once with an error. Returns how many there were."""
        with self._inflight_lock:
            socks = list(self._inflight)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(socks)

    def _overdue(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def _wait(self, url: str) -> float:
        """Seconds the next connect/read may block: ``timeout``, less once the pass deadline is near."""
        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SourceError(f"{url}: cut at this pass's time limit (a slow or stalled peer)")
        return min(self.timeout, max(0.05, left))

    @property
    def session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.mount("http://", _Adapter())
            s.mount("https://", _Adapter())
        return s

    @property
    def journal_url(self) -> str:
        return f"{self.endpoint.url}/{META_DIR}/{JOURNAL_NAME}"

    def _get(self, url: str, headers: dict[str, str], limit: int,
             truncate: bool = False) -> tuple[requests.Response, bytes]:
        """GET with a hard cap on the body: over ``limit`` → TooLarge, or (``truncate``) just stop reading."""
        token = self.endpoint.token()
        if token:
            headers = {**headers, "Authorization": f"Bearer {token}"}
        self.requests_made += 1
        wait = self._wait(url)
        _current.source, _current.sock = self, None
        try:
            return self._get_tracked(url, headers, limit, truncate, wait)
        finally:
            with self._inflight_lock:
                self._inflight.discard(_current.sock)
            _current.source = _current.sock = None

    def _get_tracked(self, url: str, headers: dict[str, str], limit: int, truncate: bool,
                     wait: float) -> tuple[requests.Response, bytes]:
        try:
            resp = self.session.get(url, headers=headers, stream=True, timeout=(wait, wait),
                                    verify=self.endpoint.tls_verify, allow_redirects=False)
        except requests.RequestException as exc:
            if self._overdue():
                raise SourceError(f"{url}: cut at this pass's time limit before a complete answer") from exc
            if isinstance(exc, requests.Timeout):
                raise SourceError(f"cannot reach {url}: no answer within {wait:g}s") from exc
            raise SourceError(f"cannot reach {url}: {exc.__class__.__name__}") from exc
        self.on_data()
        with resp:
            if resp.status_code not in (200, 206):
                return resp, b""
            buf = bytearray()
            try:
                while True:
                    _set_read_timeout(resp, self._wait(url))
                    chunk = resp.raw.read1(65536, decode_content=True)
                    if not chunk:
                        break
                    buf += chunk
                    self.bytes_read += len(chunk)
                    self.on_data()
                    if len(buf) > limit:
                        if truncate:
                            return resp, bytes(buf[:limit])
                        raise TooLarge(f"{url}: body exceeds the {limit}-byte limit")
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                declared = resp.headers.get("Content-Length")
                got = f"{len(buf)} of {declared} bytes (Content-Length)" if declared else f"{len(buf)} bytes"
                if self._overdue():
                    raise SourceError(f"{url}: cut at this pass's time limit after {got}") from exc
                if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
                    raise SourceError(f"{url}: the peer stopped sending after {got}") from exc
                raise SourceError(f"{url}: transfer failed after {got} ({exc.__class__.__name__})") from exc
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) != len(buf) \
                    and "gzip" not in resp.headers.get("Content-Encoding", ""):
                raise SourceError(f"{url}: truncated response ({len(buf)} of {declared} bytes)")
            return resp, bytes(buf)

    def journal(self, offset: int, etag: str | None) -> JournalChunk:
        """``GET journal`` with ``Range: bytes=<offset>-``; 304/416 mean nothing new past ``offset``."""
        headers = {"Range": f"bytes={offset}-{offset + JOURNAL_CHUNK - 1}", "Accept-Encoding": "identity"}
        if etag and offset:
            headers["If-None-Match"] = etag
        # A server that ignores Range sends the whole file; allow for it up to offset + one chunk.
        resp, body = self._get(self.journal_url, headers, offset + JOURNAL_CHUNK, truncate=True)
        tag = resp.headers.get("ETag")
        if resp.status_code == 304:
            return JournalChunk(True, offset, etag=etag)
        if resp.status_code == 416:
            total = _total(resp.headers.get("Content-Range"))
            return JournalChunk(True, offset, total=total, etag=None)
        if resp.status_code == 206:
            start, total = _range(resp.headers.get("Content-Range"), len(body))
            if start != offset:
                raise SourceError(f"{self.journal_url}: asked for bytes from {offset}, got from {start}")
            return JournalChunk(False, start, body, total, tag, body[:HEADER_LEN] if start == 0 else None)
        if resp.status_code == 200:
            whole = len(body) < offset + JOURNAL_CHUNK  # else we stopped reading; size unknown
            return JournalChunk(False, offset, body[offset:offset + JOURNAL_CHUNK], len(body) if whole else None,
                                tag if whole else None, body[:HEADER_LEN])
        raise _status_error(self.journal_url, resp)

    def header(self) -> bytes:
        resp, body = self._get(self.journal_url, {"Range": f"bytes=0-{HEADER_LEN - 1}",
                                                  "Accept-Encoding": "identity"}, JOURNAL_CHUNK)
        if resp.status_code in (200, 206):
            return body[:HEADER_LEN]
        raise _status_error(self.journal_url, resp)

    def signature(self, relpath: str) -> bytes:
        """One ``signature-N``; only 200 is acceptable (as c/image, anything else is not a signature)."""
        url = f"{self.endpoint.url}/{relpath}"
        resp, body = self._get(url, {"Accept-Encoding": "identity"}, MAX_SIGNATURE_SIZE)
        if resp.status_code == 200:
            return body
        if resp.status_code == 404:
            raise Gone(f"{url}: 404", status=404)
        raise _status_error(url, resp)


def _set_read_timeout(resp: requests.Response, seconds: float) -> None:
    """Shorten the socket timeout of a streaming response as the pass deadline nears (urllib3 keeps the connection
    on the response while the body is read). Without it the bound is one more ``timeout`` per request."""
    sock = getattr(getattr(resp.raw, "_connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _status_error(url: str, resp: Any) -> SourceError:
    return SourceError(f"{url}: HTTP {resp.status_code}", status=resp.status_code)


def _range(value: str | None, length: int) -> tuple[int, int | None]:
    m = _CONTENT_RANGE.match(value or "")
    if not m or m.group(1) is None:
        raise SourceError(f"206 without a usable Content-Range ({value!r})")
    start, end = int(m.group(1)), int(m.group(2))
    if end - start + 1 != length:
        raise SourceError(f"truncated range response ({length} of {end - start + 1} bytes)")
    return start, int(m.group(3)) if m.group(3) != "*" else None


def _total(value: str | None) -> int | None:
    m = _CONTENT_RANGE.match(value or "")
    return int(m.group(3)) if m and m.group(3) != "*" else None
