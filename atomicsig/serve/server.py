"""``atomicsig serve``: a sigstore directory over HTTP, as a lookaside and as the signature extension API.

Three audiences read or write here, and each dictates a rule:

* nodes (podman, CRI-O, skopeo) read ``/<repo path>@sha256=<hex>/signature-N`` as an HTTP lookaside (SPEC §3.2):
  an absent object must be **404**, never 403, or the whole pull fails; a body they cannot sniff also fails it,
  so only what is on disk is served, byte for byte;
* signers use the extension API (SPEC §6.2): ``GET /extensions/v2/<repo>/signatures/<digest>`` lists,
  ``PUT`` adds one signature; success is exactly 201. A PUT is validated as strictly as a node would read it
  (binary OpenPGP signed message, payload for that digest) because a bad blob breaks every later pull;
* sync peers read the append-only journal at ``/.atomicsig/journal`` with Range requests.

Paths come from the network, so a request path is decoded once and must match the reference path grammar plus a
digest and a ``signature-N`` name before it is joined to the root; every read then goes through
:func:`fsutil.read_regular_file` (no symlink below the root, regular files only, 4 MiB). There are no listings and
no other file under the root is reachable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from atomicsig import fsutil
from atomicsig.errors import AtomicsigError, InputError, SignatureFormatError
from atomicsig.format import blob as blobmod
from atomicsig.format import payload, reference, sigpath
from atomicsig.format.extension_wire import SCHEMA_VERSION, SIGNATURE_TYPE, encode_entry
from atomicsig.openpgp import packets as openpgp
from atomicsig.store import directory as lookaside
from atomicsig.store import sigdir

log = logging.getLogger("atomicsig.server")


access_log = logging.getLogger("atomicsig.access")


#: PUT bodies: a 4 MiB signature (c/image's read bound) grows by 4/3 in base64; the issue caps the body at 4 MiB.
MAX_PUT_BODY = 4 * 1024 * 1024


JOURNAL_PATH = "/.atomicsig/journal"


JOURNAL_FILE = Path(".atomicsig") / "journal"
#: The sync pack (atomicsig.store.pack): the journal with every signature inlined, for a joining node.
PACK_PATH = "/.atomicsig/pack"
#: Rebuild the pack on a request once the journal has grown this much past it (~6,000 records): a joining node
#: then fetches at most that much record by record.
PACK_STALE_BYTES = 1024 * 1024


class _FileBody:
    """A response body streamed from an open file (the pack is tens of MiB: never held in memory)."""

    def __init__(self, fh: Any, start: int, length: int) -> None:
        self.fh, self.start, self.length = fh, start, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Any:
        try:
            self.fh.seek(self.start)
            left = self.length
            while left > 0:
                chunk = self.fh.read(min(left, 256 * 1024))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
        finally:
            self.fh.close()

    def close(self) -> None:
        self.fh.close()


#: SPEC §6.2; the repository path and the digest are carved with the lookaside grammar's shapes, then validated.
_EXTENSION_RE = re.compile(
    rf"^/extensions/v2/(?P<repo>{sigpath.REPO_SHAPE})/signatures/(?P<digest>{sigpath.DIGEST_SHAPE})\Z")


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 206: "Partial Content", 304: "Not Modified",
            400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
            413: "Payload Too Large", 416: "Range Not Satisfiable", 500: "Internal Server Error"}


@dataclass
class ServerConfig:
    """Everything ``atomicsig serve`` needs; filled from the YAML config file and CLI flags (docs/serve.md)."""

    sigstore: Path
    write_token: str | None = None  # None: the extension PUT is disabled (405)
    read_token: str | None = None  # None: reads are anonymous
    trusted_keys: list[bytes] = field(default_factory=list)  # keyrings; empty: any signer is accepted
    max_body: int = MAX_PUT_BODY


class _Metrics:
    """Prometheus counters in a registry of their own, so two servers in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("atomicsig_serve_requests", "HTTP requests by method and status",
                                ["method", "status"], registry=self.registry)
        self.stored = Counter("atomicsig_serve_signatures_stored", "Signatures stored through PUT",
                              registry=self.registry)
        self.rejects = Counter("atomicsig_serve_rejects", "Refused PUTs by reason", ["reason"],
                               registry=self.registry)


class _Reject(Exception):
    """An HTTP error answer with a short reason (also the metrics label)."""

    def __init__(self, status: int, reason: str, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers or []


def _repo_path(text: str) -> str:
    """A repository path from a request URL; anything the one grammar refuses is a plain 404 (no oracle)."""
    try:
        return sigpath.repo_path(text)
    except InputError:
        raise _Reject(404, "bad-path", "not found") from None


class SignatureServer:
    """The WSGI application. Thread-safe: appends to one digest directory are serialized per process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.root = Path(config.sigstore)
        self.metrics = _Metrics()
        self._locks: dict[str, threading.Lock] = {}
        self._pack_lock = threading.Lock()
        self._locks_guard = threading.Lock()
        self._trusted: Any = None
        if config.trusted_keys:
            from atomicsig.gnupg.trusted import trusted_keys

            self._trusted = trusted_keys(config.trusted_keys)
            if not self._trusted.fingerprints:
                raise InputError("no public keys found in the trusted keyrings")

    def close(self) -> None:
        if self._trusted is not None:
            self._trusted.close()

    # ---- WSGI entry -------------------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET").upper()
        try:
            status, headers, body = self._dispatch(environ, method)
        except _Reject as rej:
            if method == "PUT" and rej.status not in (401, 404):
                self.metrics.rejects.labels(rej.reason).inc()
            status, headers = rej.status, [("Content-Type", "application/json"), *rej.headers]
            if method == "PUT" and ("Connection", "close") not in headers:
                # A refused upload may leave body bytes unread or misframed (cheroot takes a chunk size of "-5"
                # for the last chunk): close rather than parse the rest as a next request (request smuggling).
                headers.append(("Connection", "close"))
            body = json.dumps({"errors": [{"code": rej.reason, "message": rej.message}]}).encode()
        except AtomicsigError as exc:
            log.error("request failed: %s", exc.message)
            status, headers, body = 500, [("Content-Type", "text/plain")], b"internal error\n"
        self.metrics.requests.labels(method, str(status)).inc()
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {_REASONS.get(status, 'Unknown')}", headers)
        if isinstance(body, _FileBody):
            access_log.info('%s "%s %s" %d %d %.1fms', environ.get("REMOTE_ADDR", "-"), method,
                            environ.get("REQUEST_URI") or environ.get("PATH_INFO", ""), status, len(body),
                            (time.monotonic() - started) * 1000)
            if method == "HEAD":
                body.close()
                return [b""]
            return body
        access_log.info('%s "%s %s" %d %d %.1fms', environ.get("REMOTE_ADDR", "-"), method,
                        environ.get("REQUEST_URI") or environ.get("PATH_INFO", ""), status, len(body),
                        (time.monotonic() - started) * 1000)
        return [b"" if method == "HEAD" else body]

    def _dispatch(self, environ: dict[str, Any], method: str) -> tuple[int, list[tuple[str, str]], Any]:
        raw = environ.get("REQUEST_URI") or urllib.parse.quote(environ.get("PATH_INFO", ""))
        path = urllib.parse.unquote(raw.split("?", 1)[0])
        if path == "/healthz":
            return 200, [("Content-Type", "text/plain")], b"ok\n"
        if path == "/metrics":
            return 200, [("Content-Type", CONTENT_TYPE_LATEST)], generate_latest(self.metrics.registry)
        m = _EXTENSION_RE.match(path)
        if m:
            if method in ("GET", "HEAD"):
                self._check_read(environ)
                return self._list(_repo_path(m["repo"]), _digest(m["digest"]))
            if method == "PUT":
                return self._put(environ, _repo_path(m["repo"]), _digest(m["digest"]))
            raise _Reject(405, "method", "method not allowed", [("Allow", "GET, HEAD, PUT")])
        if method not in ("GET", "HEAD"):
            raise _Reject(405, "method", "method not allowed", [("Allow", "GET, HEAD")])
        self._check_read(environ)
        if path == JOURNAL_PATH:
            return self._journal(environ)
        if path == PACK_PATH:
            return self._pack(environ)
        return self._signature(environ, _lookaside_path(path))

    # ---- auth -------------------------------------------------------------------------------------------------

    @staticmethod
    def _bearer_ok(environ: dict[str, Any], token: str) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def _check_read(self, environ: dict[str, Any]) -> None:
        tok = self.config.read_token
        if tok is not None and not self._bearer_ok(environ, tok) and not (
                self.config.write_token and self._bearer_ok(environ, self.config.write_token)):
            raise _Reject(401, "unauthorized", "a bearer token is required",
                          [("WWW-Authenticate", 'Bearer realm="atomicsig"')])

    # ---- lookaside reads --------------------------------------------------------------------------------------

    def _digest_dir(self, repo: str, digest: str) -> Path:
        d = self.root / sigpath.digest_dirname(repo, digest)
        if d.exists() and not fsutil.is_within(self.root, d):
            raise _Reject(404, "bad-path", "not found")
        return d

    def _signature(self, environ: dict[str, Any], wanted: sigpath.SigPath) -> tuple[int, list[tuple[str, str]], bytes]:
        """One ``signature-N``, read with :func:`fsutil.read_regular_file`: a link (in the name or in any directory
        below the root), a FIFO, a device or a file over 4 MiB is "not found" — 404, the answer that ends a node's
        list (SPEC §3.2) without leaking or hanging on what the link points to."""
        rel = str(wanted)
        try:
            data = fsutil.read_regular_file(self.root, rel, blobmod.MAX_SIGNATURE_SIZE)
        except fsutil.UnsafeFileError as exc:
            log.warning("refused to serve %s: %s", rel, exc.why)
            raise _Reject(404, "not-found", "not found") from None
        except OSError:
            raise _Reject(404, "not-found", "not found") from None
        etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'
        headers = [("ETag", etag), ("Cache-Control", "no-cache")]
        if _etag_matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
            return 304, headers, b""
        return 200, [("Content-Type", "application/octet-stream"), *headers], data

    def _journal(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """The sync journal, append-only: ETag from inode+size+mtime, single byte ranges (RFC 9110 §14)."""
        try:
            fd = fsutil.open_regular_file(self.root, JOURNAL_FILE.as_posix())
        except (OSError, fsutil.UnsafeFileError):  # absent, or refused (a link anywhere below the root, a FIFO)
            raise _Reject(404, "not-found", "not found") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            size = st.st_size
            etag = f'"{st.st_ino:x}-{size:x}-{st.st_mtime_ns:x}"'
            headers = [("ETag", etag), ("Cache-Control", "no-cache"), ("Accept-Ranges", "bytes"),
                       ("Content-Type", "text/plain; charset=utf-8")]
            if _etag_matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
                return 304, headers, b""
            rng = _parse_range(environ.get("HTTP_RANGE"), size)
            if_range = environ.get("HTTP_IF_RANGE")
            if rng is not None and if_range and if_range != etag:
                rng = None
            if rng == "unsatisfiable":
                return 416, [("Content-Range", f"bytes */{size}"), *headers], b""
            if isinstance(rng, tuple):
                start, end = rng
                fh.seek(start)
                data = fh.read(end - start + 1)
                return 206, [("Content-Range", f"bytes {start}-{start + len(data) - 1}/{size}"), *headers], data
            return 200, headers, fh.read(size)

    def _pack(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], Any]:
        """The sync pack for a joining node (docs/sync.md, "Bulk first sync"), streamed, with single byte ranges
        and ``If-Range`` (a follower cut by its pass limit resumes it). Rebuilt here first when missing, from
        another epoch, or :data:`PACK_STALE_BYTES` behind the journal, so serve offers one without a timer;
        concurrent requests wait for one rebuild. A store serve cannot write keeps whatever pack it has."""
        from atomicsig.store.journal import Journal
        from atomicsig.store.pack import PACK_NAME, read_head, write_pack

        with self._pack_lock:
            try:
                size = (self.root / JOURNAL_FILE).stat().st_size
                head = read_head(self.root)
                if head is None or head.epoch != Journal(self.root).epoch() or size - head.offset > PACK_STALE_BYTES:
                    write_pack(self.root)
            except FileNotFoundError:
                raise _Reject(404, "not-found", "not found") from None  # no journal yet: nothing to pack
            except (OSError, AtomicsigError) as exc:
                log.warning("cannot refresh the sync pack: %s", getattr(exc, "message", None) or exc)
        try:
            fd = fsutil.open_regular_file(self.root, (JOURNAL_FILE.parent / PACK_NAME).as_posix())
        except (OSError, fsutil.UnsafeFileError):
            raise _Reject(404, "not-found", "not found") from None
        fh = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fd)
            size = st.st_size
            etag = f'"{st.st_ino:x}-{size:x}-{st.st_mtime_ns:x}"'
            headers = [("ETag", etag), ("Cache-Control", "no-cache"), ("Accept-Ranges", "bytes"),
                       ("Content-Type", "application/octet-stream")]
            if _etag_matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
                fh.close()
                return 304, headers, b""
            rng = _parse_range(environ.get("HTTP_RANGE"), size)
            if_range = environ.get("HTTP_IF_RANGE")
            if rng is not None and if_range and if_range != etag:
                rng = None
            if rng == "unsatisfiable":
                fh.close()
                return 416, [("Content-Range", f"bytes */{size}"), *headers], b""
            if isinstance(rng, tuple):
                start, end = rng
                return 206, [("Content-Range", f"bytes {start}-{end}/{size}"), *headers], \
                    _FileBody(fh, start, end - start + 1)
            return 200, headers, _FileBody(fh, 0, size)
        except BaseException:
            fh.close()
            raise

    # ---- extension API ----------------------------------------------------------------------------------------

    def _list(self, repo: str, digest: str) -> tuple[int, list[tuple[str, str]], bytes]:
        # Up to the first entry the lookaside GET would not serve (404), so both routes show the same list.
        sigs = sigdir.read_dir(self.root / sigpath.digest_dirname(repo, digest), self.root, stop_at_unsafe=True)
        if not sigs:
            raise _Reject(404, "not-found", "no signatures for this image")
        # Stable names: the same blob is always listed under the same <digest>@<32 hex>.
        entries = [encode_entry(f"{digest}@{hashlib.sha256(s.blob).hexdigest()[:32]}", s.blob) for s in sigs]
        body = json.dumps({"signatures": entries}).encode()
        return 200, [("Content-Type", "application/json; charset=utf-8")], body

    def _put(self, environ: dict[str, Any], repo: str, digest: str) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.config.write_token is None:
            raise _Reject(405, "writes-disabled", "this server accepts no signatures (no write token configured)")
        if not self._bearer_ok(environ, self.config.write_token):
            self.metrics.rejects.labels("unauthorized").inc()
            raise _Reject(401, "unauthorized", "a valid bearer token is required to store signatures",
                          [("WWW-Authenticate", 'Bearer realm="atomicsig"')])
        if not digest.startswith(sigpath.STORED_ALGORITHM + ":"):
            # Refused before anything is stored: nodes look signatures up and match them by sha256 only, and the
            # sync journal cannot name other digests (atomicsig.lookaside, SPEC §2.3, §3.1).
            raise _Reject(400, "DIGEST_UNSUPPORTED", f"only sha256 digests can be signed here, not "
                          f"{digest.split(':', 1)[0]}: nodes look signatures up by the image's sha256 digest")
        sig = self._validated_blob(self._read_body(environ), digest)
        d = self._digest_dir(repo, digest)
        with self._lock_for(str(d)):
            try:
                # Through the store, not append_to_dir: the store also records the new file in the sync journal,
                # so followers of this server receive uploads (atomicsig.sync.journal).
                res = lookaside.DirectoryStore(self.root).append_path(repo, digest, sig)
            except AtomicsigError as exc:
                if "outside the sigstore" in exc.message:
                    raise _Reject(404, "bad-path", "not found") from exc
                raise
        if not res.created:
            raise _Reject(409, "SIGNATURE_EXISTS", f"identical signature already stored as signature-{res.index}")
        self.metrics.stored.inc()
        rel = sigpath.signature_relpath(repo, digest, res.index or 0)  # created, so append_path named its index
        log.info("stored %s", rel)
        return 201, [("Location", f"/{rel}")], b""

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        length = environ.get("CONTENT_LENGTH") or ""
        limit = self.config.max_body
        if length:
            if not (length.isascii() and length.isdigit()):  # "²".isdigit() is True but int() fails (fuzz)
                raise _Reject(400, "bad-length", "invalid Content-Length")
            if len(length) > 18 or int(length) > limit:
                raise _Reject(413, "too-large", f"body larger than {limit} bytes")
        from atomicsig.net.httpd import BODY_READ_ERRORS, body_over_limit

        stream = environ["wsgi.input"]
        try:
            data: bytes = stream.read(int(length)) if length else stream.read(limit + 1)
        except BODY_READ_ERRORS as exc:
            # cheroot's own cap (max_request_body_size) tripped while reading a chunked body.
            if body_over_limit(exc):
                raise _Reject(413, "too-large", f"body larger than {limit} bytes") from None
            # The rest of the body is unread, so the connection cannot carry another request (atomicsig.httpd
            # closes it on "Connection: close" instead of draining the body first, as cheroot would).
            close = [("Connection", "close")]
            if isinstance(exc, TimeoutError):  # the client stopped sending for the socket's idle timeout
                raise _Reject(408, "body-timeout", "the request body stopped arriving", close) from None
            # A malformed or truncated chunked body (cheroot raises ValueError), or the connection went away
            # (or was cut at the exchange deadline, atomicsig.httpd): the client's fault, never a 500.
            raise _Reject(400, "incomplete-body", f"malformed or truncated body: {exc}"[:200], close) from None
        if len(data) > limit:
            raise _Reject(413, "too-large", f"body larger than {limit} bytes")
        if length and len(data) != int(length):
            # The client went away (or was cut by the exchange deadline) mid-body: a prefix can still be valid
            # JSON, and storing it would report failure to the client while keeping the signature.
            raise _Reject(400, "incomplete-body", "body shorter than Content-Length", [("Connection", "close")])
        return data

    def _validated_blob(self, body: bytes, digest: str) -> bytes:
        """The checks a node would make when reading, so nothing stored here can break a pull (SPEC §1.3, §6.2)."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[…" (fuzz finding)
            raise _Reject(400, "SIGNATURE_INVALID", "body is not JSON") from None
        if not isinstance(doc, dict):
            raise _Reject(400, "SIGNATURE_INVALID", "body is not a JSON object")
        if doc.get("schemaVersion") != SCHEMA_VERSION:
            raise _Reject(400, "SIGNATURE_INVALID", "only schemaVersion=2 is supported")
        if doc.get("type") != SIGNATURE_TYPE:
            raise _Reject(400, "SIGNATURE_INVALID", 'type must be "atomic"')
        name = doc.get("name")
        if not isinstance(name, str) or name.count("@") != 1 or name.split("@")[0] != digest \
                or not name.split("@")[1]:
            raise _Reject(400, "SIGNATURE_INVALID", "name must be <digest>@<suffix> for this digest")
        content = doc.get("content")
        if not isinstance(content, str) or not content:
            raise _Reject(400, "SIGNATURE_INVALID", "content must be non-empty base64")
        try:
            sig = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise _Reject(400, "SIGNATURE_INVALID", "content is not valid base64") from None
        if len(sig) > blobmod.MAX_SIGNATURE_SIZE:
            raise _Reject(413, "too-large", "signature larger than 4 MiB")
        try:
            msg = openpgp.parse_message(blobmod.simple_signing_body(sig))
            if sig[0] == blobmod.FRAMED_PREFIX:
                raise SignatureFormatError("framed blobs are not stored; send the raw OpenPGP message")
            if len(msg.signatures) != 1:
                raise SignatureFormatError(f"expected exactly one signature packet, found {len(msg.signatures)}")
            claimed = payload.parse(msg.literal)
        except SignatureFormatError as exc:
            raise _Reject(400, "SIGNATURE_INVALID", exc.message) from None
        if claimed.manifest_digest != digest:
            raise _Reject(400, "SIGNATURE_INVALID", f"signature is for {claimed.manifest_digest}, not {digest}")
        if self._trusted is not None:
            try:
                self._trusted.verify(sig)
            except SignatureFormatError as exc:
                raise _Reject(403, "untrusted-signer", exc.message) from None
        return sig

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())


def _lookaside_path(path: str) -> sigpath.SigPath:
    """What a node may ask for (SPEC §3.2), by the one lookaside grammar: any go-digest algorithm, ``signature-1`` …
    ``signature-128`` (the 128th only exists in an overfull directory; serving it makes the node fail as reading the
    directory from disk would). Anything else is a plain 404."""
    if path.startswith("/"):
        try:
            return sigpath.parse_read_path(path[1:])
        except InputError:
            pass
    raise _Reject(404, "not-found", "not found")


def _digest(text: str) -> str:
    try:
        return reference.validate_digest(text)
    except InputError:
        raise _Reject(404, "bad-path", "not found") from None


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    return header.strip() == "*" or etag in [t.strip().removeprefix("W/") for t in header.split(",")]


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """One ``bytes=`` range → (start, end) inclusive; ``"unsatisfiable"``; None to serve the whole file."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[6:].strip().partition("-")
    # ASCII and at most 18 digits: "²".isdigit() is True but int() fails, as does a 4301-digit number (fuzz).
    if not (first + last).isascii() or len(first) > 18 or len(last) > 18:
        return None
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) \
            or (last and not last.isdigit()):
        return None
    if not first:
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1) if size else "unsatisfiable"
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    if end < start:
        return None
    return start, min(end, size - 1)


def make_server(app: Callable[..., Iterable[bytes]], listen: str, *, tls_cert: str | None = None,
                tls_key: str | None = None, threads: int = 16, limits: Any = None) -> Any:
    """A cheroot WSGI server (not started) with the limits of :mod:`atomicsig.httpd`; TLS when both files are given.

    ``limits`` (an :class:`atomicsig.httpd.Limits`) wins over ``threads``; without it the documented defaults apply.
    """
    from atomicsig.net.httpd import HardenedServer, Limits, parse_listen, use_tls

    if bool(tls_cert) != bool(tls_key):
        raise InputError("TLS needs both a certificate and a key")
    server = HardenedServer(parse_listen(listen), app, limits or Limits(threads=threads), tls=bool(tls_cert))
    if tls_cert and tls_key:
        for f in (tls_cert, tls_key):
            if not Path(f).is_file():
                raise InputError(f"TLS file {f} does not exist")
        use_tls(server, tls_cert, tls_key)
    return server
