"""A read-only HTTP(S) lookaside, read exactly as containers/image reads one."""

from __future__ import annotations

import threading
import time
import urllib.parse

from atomicsig.errors import InputError, RegistryError
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.reference import Reference
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, signature_relpath
from atomicsig.net import fetch
from atomicsig.store.base import AppendResult, SignatureStore, StoredSignature, TooManySignatures

#: HTTP statuses that carry a ``Location`` to follow (RFC 9110 §15.4).
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class HTTPLookaside(SignatureStore):
    """A read-only HTTP(S) lookaside, read exactly as containers/image does (404 ends the list, else error).

    c/image reads it with one plain ``GET`` per ``signature-N``, no retries, redirects followed, no registry
    credentials (SPEC §3.2): the fetcher's lookaside rules. The fetcher is shared per TLS setting, so reading
    ``signature-1..N`` of many images reuses the same keep-alive connection(s).

    ``same_origin`` and ``deadline`` are for ``atomicsig mirror``, which copies from an upstream it does not
    control into a store nodes trust (issue 15, "Bad input"): a redirect is followed only within the scheme and
    host:port of ``base_url`` (a redirect elsewhere is an error naming the host), and each signature must arrive
    whole within ``deadline`` seconds, so a dripping server cannot hold a worker (c/image has neither rule). A
    per-read timeout cannot bound a peer that sends one byte just before each read times out, in the headers as
    in the body, so with a deadline a watchdog cuts the connection of every request past it
    (:meth:`fetch.Fetcher.abort_inflight`); each thread then has its own fetcher, so the cut hits only its own
    request.
    """

    def __init__(self, base_url: str, fetcher: fetch.Fetcher | None = None, *, verify: bool | str = True,
                 same_origin: bool = False, deadline: float | None = None) -> None:
        self.base_url = base_url
        self.verify = verify
        self.same_origin, self.deadline = same_origin, deadline
        self.fetcher = fetcher or fetch.shared(verify=verify, retries=0, redirects=not same_origin)
        self._local = threading.local()
        self._watchdog = _Watchdog()

    def describe(self) -> str:
        return self.base_url

    def url(self, ref: Reference, digest: str, n: int) -> str:
        u = urllib.parse.urlsplit(self.base_url)
        path = f"{u.path}/{signature_relpath(ref.path, digest, n)}"
        return urllib.parse.urlunsplit(u._replace(path=path))

    def read(self, ref: Reference, digest: str) -> list[StoredSignature]:
        out: list[StoredSignature] = []
        for n in range(1, MAX_LOOKASIDE_SIGNATURES + 1):
            url = self.url(ref, digest, n)
            data = self._get(url)
            if data is None:
                break
            if n == MAX_LOOKASIDE_SIGNATURES:
                raise TooManySignatures(f"{url}: server provided {n} signatures; containers/image refuses that many")
            out.append(StoredSignature(n, data, url))
        return out

    def _get(self, url: str) -> bytes | None:
        """The body of ``url``, or None for 404 (the end of the list); any other answer is an error."""
        if self.deadline is None:
            return self._exchange(self.fetcher, url, 30.0, None)
        fetcher, end = self._own_fetcher(), time.monotonic() + self.deadline
        cut = self._watchdog.watch(end, fetcher)
        try:
            data = self._exchange(fetcher, url, self.deadline, end)
        except RegistryError as exc:
            if cut.is_set():
                raise RegistryError(f"{url}: no whole answer within {self.deadline:g} s") from exc
            raise
        finally:
            self._watchdog.done(cut)
        # A connection cut in the headers can still parse as a complete answer (a 200 without a length, ending at
        # the cut): after the cut nothing that arrived counts.
        if cut.is_set():
            raise RegistryError(f"{url}: no whole answer within {self.deadline:g} s")
        return data

    def _exchange(self, fetcher: fetch.Fetcher, url: str, timeout: float, end: float | None) -> bytes | None:
        """One GET of ``url`` (and, with ``same_origin``, its redirects within the upstream)."""
        for _ in range(fetch.MAX_REDIRECTS + 1):
            try:
                with fetcher.exchange("GET", url, timeout=timeout) as resp:
                    if resp.status_code == 404:
                        return None
                    if self.same_origin and resp.status_code in _REDIRECTS:
                        url = self._follow(url, resp.headers.get("Location", ""))
                        continue
                    if resp.status_code != 200:
                        raise RegistryError(f"reading {url}: HTTP {resp.status_code}", status=resp.status_code)
                    if end is None:
                        return fetch.read_body(resp, MAX_SIGNATURE_SIZE, url)
                    return fetch.read_body(resp, MAX_SIGNATURE_SIZE, url,
                                           read_timeout=lambda: max(0.001, end - time.monotonic()))
            except fetch.NetError as exc:
                raise RegistryError(f"cannot read {url}: {exc.cause_name}") from exc
        raise RegistryError(f"reading {url}: more than {fetch.MAX_REDIRECTS} redirects")

    def _own_fetcher(self) -> fetch.Fetcher:
        """This thread's fetcher (see the class docstring: a deadline's cut must not hit other threads)."""
        f: fetch.Fetcher | None = getattr(self._local, "fetcher", None)
        if f is None:
            f = self._local.fetcher = fetch.Fetcher(verify=self.verify, retries=0, redirects=not self.same_origin,
                                                    timeout=self.deadline or 30.0)
        return f

    def _follow(self, url: str, location: str) -> str:
        """Where a redirect of ``url`` leads, if it stays on the upstream's scheme and host:port; else an error."""
        target = urllib.parse.urljoin(url, location)
        here, there = urllib.parse.urlsplit(self.base_url), urllib.parse.urlsplit(target)
        if not location or (there.scheme, there.netloc) != (here.scheme, here.netloc):
            raise RegistryError(f"{url} redirects to {there.scheme}://{there.netloc or '?'}, not {here.scheme}://"
                                f"{here.netloc}; refusing to read signatures from another host",
                                hint="mirror reads only from the upstream named with --from; name the host it "
                                     "redirects to if that is the real lookaside")
        return target

    def append(self, ref: Reference, digest: str, blob: bytes) -> AppendResult:
        raise InputError(f"writing directly to an HTTP lookaside ({self.base_url}) is not supported; "
                         "use a file: sigstore or a registry with the signature extension")


class _Watchdog:
    """One thread that cuts each watched request once its deadline passes (a timer thread per request cost more
    than the request itself on a loaded machine). It runs only while something is watched."""

    TICK = 0.05

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, tuple[float, fetch.Fetcher, threading.Event]] = {}
        self._running = False

    def watch(self, end: float, fetcher: fetch.Fetcher) -> threading.Event:
        """Start watching; the returned event is set when the request was cut."""
        cut = threading.Event()
        with self._lock:
            self._active[id(cut)] = (end, fetcher, cut)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="lookaside-deadline", daemon=True).start()
        return cut

    def done(self, cut: threading.Event) -> None:
        with self._lock:
            self._active.pop(id(cut), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:  # cut under the lock: a request that ended (done) meanwhile is never cut
                if not self._active:
                    self._running = False
                    return
                for key, (end, fetcher, cut) in list(self._active.items()):
                    if end <= now:
                        del self._active[key]
                        cut.set()
                        fetcher.abort_inflight()
