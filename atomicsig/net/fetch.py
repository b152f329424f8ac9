"""The one HTTP client of atomicsig: every request of the registry client, the HTTP lookaside, the extension-API
client and the sync follower goes through a :class:`Fetcher` (issue 13 #3), so they all get the same

* **User-Agent** ``atomicsig/<version>`` on every request (token requests included);
* **session**: keep-alive connections reused across requests, one ``requests.Session`` per thread (a Session is
  not documented as thread-safe, and ``verify``/``sign`` read from thread pools);
* **bounded body reads** (:func:`read_body`, the one loop): a body over its cap is refused with :class:`TooLarge`
  ("<what> is larger than <limit> bytes", SPEC §8), one ``recv`` per read so a per-read timeout really bounds a
  dripping peer, a body shorter than its ``Content-Length`` is an error, never a silently short signature;
* **timeouts**: ``(connect, read)`` seconds per request; a caller with a total deadline (the sync pass) shortens
  them per read and cuts every exchange in flight with :meth:`Fetcher.abort_inflight`; a caller with a deadline
  of its own (a webhook review) wraps its work in :func:`deadline`, which caps every request of its thread —
  connect, each read, each retry's backoff — at the time left, whatever fetcher makes it;
* **retries** with exponential backoff and jitter on connection errors, 429 and 5xx, for safe methods only (a
  retried signature PUT could store it twice, or fail as 409 after the first one landed); ``Retry-After`` is
  honoured up to :data:`RETRY_AFTER_CAP` seconds, a longer one ends the retries at once;
* **redirects**: followed (at most :data:`MAX_REDIRECTS`, as Go's ``http.Client`` that containers/image uses), or
  refused per fetcher; requests drops ``Authorization`` when a redirect leaves the host;
* **TLS**: ``verify`` (bool or CA file) passed with every request, because requests lets ``$REQUESTS_CA_BUNDLE``
  override a Session's own (psf/requests#3829); :func:`tls_settings` reads a containers-certs.d(5) directory.

What differs per caller is chosen where the fetcher is built, and why:

==================  =======  =========  ==================================================================
caller              retries  redirects  reason
==================  =======  =========  ==================================================================
registry client     3        follow     registries redirect blob/manifest GETs to storage; a registry
                                        behind a load balancer has transient 502/503s
HTTP lookaside      0        follow     c/image reads it once with its ``http.Client`` (SPEC §3.2): any
                                        non-404 failure fails the pull, so verify must fail too
extension client    0        follow     c/image's registry client (SPEC §6.2); the PUT must not repeat
sync source         0        refuse     one origin per source (docs/sync.md); the daemon retries the pass
==================  =======  =========  ==================================================================

Errors never leak ``requests``/``urllib3`` types: no answer is :class:`NetError`, a broken body
:class:`TransferError`, an oversized one :class:`TooLarge` — all :class:`~atomicsig.errors.RegistryError` (exit 3),
each carrying what a caller needs to word its own message.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import re
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
import urllib3

from atomicsig.errors import RegistryError
from atomicsig.version import __version__

USER_AGENT = f"atomicsig/{__version__}"
#: Bytes per read of a body (one ``recv`` at most).
CHUNK = 65536
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Methods retried: safe ones only (RFC 9110 §9.2.1); a signature PUT is never sent twice.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Go's ``http.Client`` stops after 10 redirects; c/image uses it for registry, lookaside and extension requests.
MAX_REDIRECTS = 10
#: Longest ``Retry-After`` we wait for; a server asking more gets its error answer reported at once.
RETRY_AFTER_CAP = 10.0
#: An unread body at most this large is drained on release, so the connection can be reused (a 404 page).
DRAIN_LIMIT = 65536

#: What :meth:`Fetcher.request` returns (callers outside ``net/`` never import requests).
Response = requests.Response

#: :func:`deadline`'s per-thread bound (``at``: a time.monotonic() value, or absent).
_bound = threading.local()


@contextlib.contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Every request this thread makes inside the block ends by ``at`` (``time.monotonic()``; None: no bound).

    The fetchers' own timeouts (a registry's 30 s per attempt, and 3 retries) are right for a CLI run, but a
    caller that has already given up at its own deadline (a webhook review answers "not decided within the
    deadline") would otherwise keep a worker thread on a hanging registry for minutes after answering. Inside
    the block the connect and read timeouts are the time left (when shorter), a retry whose backoff would end
    past ``at`` is not made, and a request started after ``at`` fails at once with a timed-out
    :class:`NetError`. Nested blocks keep the earlier bound."""
    prev: float | None = getattr(_bound, "at", None)
    _bound.at = at if prev is None else prev if at is None else min(prev, at)
    try:
        yield
    finally:
        _bound.at = prev


def time_left() -> float | None:
    """Seconds until this thread's :func:`deadline` (may be <= 0), or None outside one."""
    at: float | None = getattr(_bound, "at", None)
    return None if at is None else at - time.monotonic()


def _capped(timeout: float | tuple[float, float], left: float | None) -> float | tuple[float, float]:
    if left is None:
        return timeout
    left = max(left, 0.001)
    if isinstance(timeout, tuple):
        return (min(timeout[0], left), min(timeout[1], left))
    return min(timeout, left)


class NetError(RegistryError):
    """No usable answer: connection refused or reset, a timeout, a TLS failure. Callers word their own message."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url = url
        self.cause_name = cause.__class__.__name__
        self.reason = short_reason(cause)
        self.tls = isinstance(cause, requests.exceptions.SSLError)
        self.timed_out = isinstance(cause, requests.Timeout | TimeoutError | urllib3.exceptions.TimeoutError)
        super().__init__(f"cannot reach {url}: {self.reason}")


class TooLarge(RegistryError):
    """A body over its cap: refused (SPEC §8), the same way for every caller."""


class TransferError(RegistryError):
    """The body broke off: fewer bytes than ``Content-Length``, a reset, or no byte within the read timeout."""

    def __init__(self, message: str, *, got: str, timed_out: bool) -> None:
        super().__init__(message)
        self.got = got  # "N bytes" or "N of M bytes (Content-Length)"
        self.timed_out = timed_out


def short_reason(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 error ("Connection refused", "certificate verify failed"...)."""
    text = str(exc)
    m = re.search(r"\] ([^'\]]+)", text) or re.search(r"Caused by \w+\('([^']+)", text)
    return (m.group(1) if m else text.splitlines()[0] if text else exc.__class__.__name__)[:200]


# ---- TLS ---------------------------------------------------------------------------------------------------------


def tls_settings(host: str, *, tls_verify: bool = True,
                 cert_dir: str | None = None) -> tuple[bool | str, tuple[str, str] | None]:
    """(verify, client cert) for ``host`` as containers-certs.d(5): ``*.crt`` CAs, ``*.cert``/``*.key`` pairs
    from ``cert_dir`` or ``/etc/containers/certs.d/<host>``; ``tls_verify=False`` turns verification off."""
    if not tls_verify:
        return False, None
    certs = Path(cert_dir) if cert_dir else Path("/etc/containers/certs.d") / host
    verify: bool | str = True
    cert: tuple[str, str] | None = None
    if certs.is_dir():
        cas = sorted(certs.glob("*.crt"))
        if cas:
            verify = str(cas[0]) if len(cas) == 1 else _bundle(cas)
        pairs = sorted(certs.glob("*.cert"))
        if pairs:
            cert = (str(pairs[0]), str(pairs[0].with_suffix(".key")))
    return verify, cert


def _bundle(cas: list[Path]) -> str:
    fd, path = tempfile.mkstemp(prefix="atomicsig-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as fh:
        for ca in cas:
            fh.write(ca.read_bytes() + b"\n")
    return path


# ---- socket tracking (for abort_inflight) ------------------------------------------------------------------------

_current = threading.local()  # .fetcher: the Fetcher this thread's exchange is for; .socks: its sockets


def _track(conn: urllib3.connection.HTTPConnection) -> None:
    fetcher: Fetcher | None = getattr(_current, "fetcher", None)
    if fetcher is not None and conn.sock is not None:
        with fetcher._inflight_lock:
            fetcher._inflight.add(conn.sock)
        _current.socks.append(conn.sock)


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


# ---- the fetcher -------------------------------------------------------------------------------------------------


class Fetcher:
    """Requests to any host with one set of rules (see the module docstring); safe to share between threads."""

    def __init__(self, *, verify: bool | str = True, cert: tuple[str, str] | None = None,
                 timeout: float | tuple[float, float] = 30.0, retries: int = 0, redirects: bool = True) -> None:
        if verify is True:  # as requests with trust_env: a CA bundle named in the environment replaces certifi's
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.verify, self.cert, self.timeout = verify, cert, timeout
        self.retries, self.redirects = retries, redirects
        if verify is False:  # asked for (--tls-verify=false): no warning per request
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._proxies: dict[tuple[str, str], dict[str, str]] = {}
        self._local = threading.local()
        self._inflight: set[socket.socket] = set()
        self._inflight_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        """This thread's Session (its own keep-alive pool)."""
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["User-Agent"] = USER_AGENT
            s.max_redirects = MAX_REDIRECTS
            # The environment is read once per origin (_proxies_for), not per request: requests' trust_env
            # re-scans os.environ for proxies on every request (about a third of a localhost GET). It also
            # stops ~/.netrc credentials from going to a lookaside (c/image sends none there, SPEC §3.2).
            s.trust_env = False
            s.mount("http://", _Adapter())
            s.mount("https://", _Adapter())
        return s

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                params: dict[str, str] | None = None, data: bytes | None = None,
                auth: tuple[str, str] | None = None, bearer: str | None = None,
                timeout: float | tuple[float, float] | None = None,
                allow_redirects: bool | None = None) -> Response:
        """One request (streamed: read the body with :func:`read_body`), retried per the fetcher's rules.

        The last answer is returned whatever its status (callers decide what 404 or 500 means to them);
        no answer at all raises :class:`NetError`.
        """
        hdrs = dict(headers or {})
        if bearer:
            hdrs["Authorization"] = f"Bearer {bearer}"
        retries = self.retries if method.upper() in SAFE_METHODS else 0
        delay = 0.2
        for attempt in range(retries + 1):
            left = time_left()
            if left is not None and left <= 0:
                raise NetError(url, TimeoutError("the caller's deadline passed before the request was sent"))
            try:
                resp = self.session.request(
                    method, url, headers=hdrs, params=params, data=data, auth=auth, stream=True,
                    proxies=self._proxies_for(url),
                    timeout=_capped(self.timeout if timeout is None else timeout, left), verify=self.verify,
                    cert=self.cert, allow_redirects=self.redirects if allow_redirects is None else allow_redirects)
            except requests.exceptions.SSLError as exc:
                raise NetError(url, exc) from exc  # a TLS failure does not heal on a retry
            except requests.RequestException as exc:
                wait = delay * (1 + random.random())  # noqa: S311 - jitter, not crypto
                left = time_left()
                if attempt == retries or not isinstance(exc, requests.ConnectionError | requests.Timeout) or \
                        (left is not None and left <= wait):
                    raise NetError(url, exc) from exc
            else:
                if resp.status_code not in RETRY_STATUSES or attempt == retries:
                    return resp
                asked = retry_after(resp.headers.get("Retry-After"), delay * (1 + random.random()))  # noqa: S311
                left = time_left()
                if asked is None or (left is not None and left <= asked):
                    return resp  # the server asks for more patience than we have: report its answer now
                release(resp)
                wait = asked
            time.sleep(wait)
            delay *= 2
        raise AssertionError("unreachable")

    def _proxies_for(self, url: str) -> dict[str, str]:
        """``$HTTP(S)_PROXY``/``$NO_PROXY`` for this origin, as containers/image honours them (Go's
        ProxyFromEnvironment), read once per origin."""
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._proxies.get(key)
        if found is None:
            found = self._proxies[key] = dict(requests.utils.get_environ_proxies(url, no_proxy=None))
        return found

    @contextlib.contextmanager
    def exchange(self, method: str, url: str, **kw: Any) -> Iterator[Response]:
        """:meth:`request` whose connection :meth:`abort_inflight` can cut until the block ends (body included);
        the response is released at the end (drained when small, so the connection is reused)."""
        _current.fetcher, _current.socks = self, []
        try:
            resp = self.request(method, url, **kw)
            try:
                yield resp
            finally:
                release(resp)
        finally:
            with self._inflight_lock:
                for sock in _current.socks:
                    self._inflight.discard(sock)
            _current.fetcher, _current.socks = None, []

    def abort_inflight(self) -> int:
        """Shut down the socket of every :meth:`exchange` still in flight (a caller's hard deadline); their
        readers wake at once with an error. Returns how many there were."""
        with self._inflight_lock:
            socks = list(self._inflight)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return len(socks)


def retry_after(value: str | None, default: float) -> float | None:
    """Seconds to wait before retrying: ``Retry-After`` (seconds or an HTTP date, RFC 9110 §10.2.3) when given,
    else ``default``; None when the server asks for more than :data:`RETRY_AFTER_CAP`."""
    if not value:
        return default
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value) if len(value) < 10 else RETRY_AFTER_CAP + 1
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return default
    return None if seconds > RETRY_AFTER_CAP else max(0.0, seconds)


_shared: dict[tuple[Any, ...], Fetcher] = {}
_shared_lock = threading.Lock()


def shared(*, verify: bool | str = True, retries: int = 0, redirects: bool = True) -> Fetcher:
    """One fetcher per rule set per process, so connections are reused across stores opened per image."""
    key = (verify, retries, redirects)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Fetcher(verify=verify, retries=retries, redirects=redirects)
        return _shared[key]


# ---- bodies ------------------------------------------------------------------------------------------------------


def read_body(resp: Response, limit: int, what: str, *, truncate: bool = False,
              on_chunk: Callable[[int], None] | None = None,
              read_timeout: Callable[[], float] | None = None) -> bytes:
    """The body of ``resp``, at most ``limit`` bytes: beyond, :class:`TooLarge` (or, with ``truncate``, the first
    ``limit`` bytes). ``on_chunk(n)`` is called per piece received; ``read_timeout()`` gives the socket timeout
    before each read (a caller's shrinking deadline). c/image reads bodies with ``iolimits.ReadAtMost`` (SPEC §8)."""
    buf = bytearray()
    try:
        while True:
            if read_timeout is not None:
                _set_read_timeout(resp, read_timeout())
            elif (left := time_left()) is not None:  # deadline(): a dripping peer is cut off at the bound too
                if left <= 0:
                    raise TimeoutError("the caller's deadline passed")
                _set_read_timeout(resp, min(left, _read_timeout_of(resp)))
            chunk = resp.raw.read1(CHUNK, decode_content=True)
            if not chunk:
                break
            buf += chunk
            if on_chunk is not None:
                on_chunk(len(chunk))
            if len(buf) > limit:
                if truncate:
                    return bytes(buf[:limit])
                raise TooLarge(f"{what} is larger than {limit} bytes")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        declared = resp.headers.get("Content-Length")
        got = f"{len(buf)} of {declared} bytes (Content-Length)" if declared else f"{len(buf)} bytes"
        if isinstance(exc, TimeoutError | urllib3.exceptions.TimeoutError):
            raise TransferError(f"{what}: the peer stopped sending after {got}", got=got, timed_out=True) from exc
        raise TransferError(f"{what}: transfer failed after {got} ({exc.__class__.__name__})", got=got,
                            timed_out=False) from exc
    declared = resp.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) != len(buf) \
            and "gzip" not in resp.headers.get("Content-Encoding", ""):
        got = f"{len(buf)} of {declared} bytes"
        raise TransferError(f"{what}: truncated response ({got})", got=got, timed_out=False)
    return bytes(buf)


def release(resp: Response) -> None:
    """Close ``resp``; a small unread body (a 404 page, an error document) is drained first so the keep-alive
    connection goes back to the pool instead of being closed. Never raises."""
    with contextlib.suppress(Exception):
        declared = resp.headers.get("Content-Length", "")
        if not resp.raw.closed and declared.isdigit() and int(declared) <= DRAIN_LIMIT:
            _set_read_timeout(resp, min(1.0, _read_timeout_of(resp)))
            resp.raw.drain_conn()
    with contextlib.suppress(Exception):
        resp.close()


def _connection_socket(resp: Response) -> socket.socket | None:
    return getattr(getattr(resp.raw, "_connection", None), "sock", None)


def _read_timeout_of(resp: Response) -> float:
    sock = _connection_socket(resp)
    timeout = sock.gettimeout() if sock is not None else None
    return timeout if timeout is not None else 1.0


def _set_read_timeout(resp: Response, seconds: float) -> None:
    """Set the socket timeout of a streaming response (urllib3 keeps the connection on the response while the
    body is read): how a caller's total deadline bounds every read."""
    sock = _connection_socket(resp)
    if sock is not None:
        sock.settimeout(seconds)
