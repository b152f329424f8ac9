"""Reading a peer over HTTP: its journal by byte range, and single signature files with a size cap.

One small class behind which all network access sits (as python-tuf's fetcher), so the follower logic does not
care whether the peer is ``atomicsig serve`` or nginx; its requests go through the one
:class:`atomicsig.net.fetch.Fetcher` (User-Agent, keep-alive, bounded reads). Every body is read with a hard cap:
a hostile or broken peer cannot make us buffer more than :data:`JOURNAL_CHUNK` or 4 MiB per signature (SPEC §8).
Redirects are not followed (a source is one origin) and nothing is retried here (the daemon retries the pass).

Every request is also bounded in *time*, because a peer that sends ``Content-Length: 1000`` and then 10 bytes, or
one byte every few seconds (of the body or of the headers), would otherwise hold the reader for the whole read
timeout per read, on every pass: connect and each read wait at most ``timeout`` seconds; bodies are read with
``read1`` (one ``recv`` per call) under socket timeouts that shrink as the pass's hard ``deadline`` (set by the
daemon) nears; and at that deadline :meth:`HTTPSource.abort_requests` shuts down the sockets of every request
still in flight, header phase included (:meth:`~atomicsig.net.fetch.Fetcher.abort_inflight`). Such a pass
fails (SourceError), is reported and backed off.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import RegistryError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.net import fetch
from atomicsig.store.journal import HEADER_LEN, JOURNAL_NAME, META_DIR
from atomicsig.store.pack import PACK_NAME
from atomicsig.sync.config import Endpoint

#: At most this many journal bytes per request (≈ 60,000 records); a pass loops until caught up.
JOURNAL_CHUNK = 8 * 1024 * 1024
#: Default seconds for connect and for each read (config ``timeout:``).
TIMEOUT = 30.0
# ASCII digits, at most 18 (int() refuses > 4300 digits with ValueError: fuzz finding), and \Z not $.
_CONTENT_RANGE = re.compile(r"^bytes (?:([0-9]{1,18})-([0-9]{1,18})|\*)/([0-9]{1,18}|\*)\Z")


class SourceError(RegistryError):
    """The peer could not be reached or answered something unusable (retried with backoff)."""


class TooLarge(SourceError, fetch.TooLarge):
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


@dataclass(frozen=True)
class _Answer:
    """Status and headers of a finished exchange, with the body read (empty unless 200/206)."""

    status_code: int
    headers: Any


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
        self.requests_made = 0
        # No retries (the daemon backs off and retries the pass) and no redirects (a source is one origin);
        # keep-alive per thread (the follower prefetches signatures from a thread pool).
        self.fetcher = fetch.Fetcher(verify=endpoint.tls_verify, timeout=timeout, retries=0, redirects=False)

    def abort_requests(self) -> int:
        """Shut down the socket of every request of this source still in flight (the pass's hard deadline);
        their readers wake at once with an error. Returns how many there were."""
        return self.fetcher.abort_inflight()

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
    def journal_url(self) -> str:
        return f"{self.endpoint.url}/{META_DIR}/{JOURNAL_NAME}"

    def _received(self, n: int) -> None:
        self.bytes_read += n
        self.on_data()

    def _get(self, url: str, headers: dict[str, str], limit: int, truncate: bool = False) -> tuple[_Answer, bytes]:
        """GET with a hard cap on the body: over ``limit`` → TooLarge, or (``truncate``) just stop reading."""
        self.requests_made += 1
        wait = self._wait(url)
        try:
            with self.fetcher.exchange("GET", url, headers=headers, bearer=self.endpoint.token(),
                                       timeout=(wait, wait)) as resp:
                self.on_data()
                answer = _Answer(resp.status_code, resp.headers)
                if resp.status_code not in (200, 206):
                    return answer, b""
                return answer, fetch.read_body(resp, limit, url, truncate=truncate, on_chunk=self._received,
                                               read_timeout=lambda: self._wait(url))
        except fetch.NetError as exc:
            if self._overdue():
                raise SourceError(f"{url}: cut at this pass's time limit before a complete answer") from exc
            if exc.timed_out:
                raise SourceError(f"cannot reach {url}: no answer within {wait:g}s") from exc
            raise SourceError(f"cannot reach {url}: {exc.cause_name}") from exc
        except fetch.TooLarge as exc:
            raise TooLarge(str(exc)) from exc
        except fetch.TransferError as exc:
            if self._overdue():
                raise SourceError(f"{url}: cut at this pass's time limit after {exc.got}") from exc
            raise SourceError(str(exc)) from exc

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

    @property
    def pack_url(self) -> str:
        return f"{self.endpoint.url}/{META_DIR}/{PACK_NAME}"

    @contextlib.contextmanager
    def pack(self, start: int = 0, etag: str | None = None) -> Iterator[PackStream | None]:
        """Stream ``.atomicsig/pack`` (atomicsig.store.pack) from byte ``start`` (with ``If-Range: etag``, so a
        replaced pack is not spliced onto the old one: the server then sends all of it, ``start`` 0). None: the
        peer offers no pack (404/403/405/416): the caller syncs record by record. Reads are bounded like every
        other request of the pass (``timeout`` per read, cut at the pass deadline); there is no size cap because
        the body is parsed as it arrives and never held whole."""
        headers = {"Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
            if etag:
                headers["If-Range"] = etag
        self.requests_made += 1
        url = self.pack_url
        wait = self._wait(url)
        try:
            with self.fetcher.exchange("GET", url, headers=headers, bearer=self.endpoint.token(),
                                       timeout=(wait, wait)) as resp:
                self.on_data()
                if resp.status_code in (403, 404, 405, 410, 416):
                    yield None
                    return
                if resp.status_code == 206 and start:
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
                    if not m or m.group(1) is None or int(m.group(1)) != start:
                        raise SourceError(f"{url}: asked for bytes from {start}, got "
                                          f"{resp.headers.get('Content-Range')!r}")
                elif resp.status_code == 200:
                    start = 0
                else:
                    raise _status_error(url, resp)
                yield PackStream(start, resp.headers.get("ETag"), _pack_chunks(self, resp, url))
        except fetch.NetError as exc:
            if self._overdue():
                raise SourceError(f"{url}: cut at this pass's time limit before a complete answer") from exc
            raise SourceError(f"cannot reach {url}: {exc.cause_name}") from exc

    def journal_bytes(self, start: int, end: int) -> bytes:
        """Journal bytes ``[start, end)`` (a short Range request): how a follower checks that a pack was the
        journal's prefix (atomicsig.sync.packsync)."""
        resp, body = self._get(self.journal_url, {"Range": f"bytes={start}-{end - 1}",
                                                  "Accept-Encoding": "identity"}, end, truncate=True)
        if resp.status_code == 206:
            return body
        if resp.status_code == 200:
            return body[start:end]
        if resp.status_code == 416:
            return b""
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


@dataclass
class PackStream:
    """An open pack response: ``start`` is the pack byte its first chunk begins at, ``etag`` names the file (to
    resume it with ``If-Range``), ``chunks`` yields the body as it arrives."""

    start: int
    etag: str | None
    chunks: Iterator[bytes]


def _pack_chunks(src: HTTPSource, resp: Any, url: str) -> Iterator[bytes]:
    while True:
        try:
            fetch._set_read_timeout(resp, src._wait(url))
            chunk = resp.raw.read1(fetch.CHUNK, decode_content=False)
        except SourceError:
            raise
        except Exception as exc:  # urllib3/socket errors: the pass fails and is retried (resuming the pack)
            raise SourceError(f"{url}: transfer failed ({exc.__class__.__name__})") from exc
        if not chunk:
            return
        src._received(len(chunk))
        yield chunk


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
