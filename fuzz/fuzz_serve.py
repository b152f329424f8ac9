"""Fuzz target: the ``atomicsig serve`` WSGI application, called in-process (no sockets).

An input is a request description, one field per line (latin-1), then the body::

    METHOD \\n REQUEST_URI \\n Range \\n If-None-Match \\n If-Range \\n Content-Length \\n Authorization \\n
    Content-Type \\n BODY-MODE \\n body…

BODY-MODE ``SIG`` replaces the body by an extension-API envelope holding the real seed signature (so PUTs get
past the JSON checks), ``ENV`` wraps the remaining bytes in an envelope as the signature, anything else sends the
bytes as they are. The store is a temp sigstore holding a real signature, its journal, a symlink that points
outside it and a sibling directory ``outside`` that must never change.

Invariants: a well-formed status line with a known code, never 500 (the app turned an exception into one) and
no exception out of the app; HEAD has no body; a 200 lookaside GET returns exactly the bytes of a file inside
the root; a PUT is either 201 with exactly one new file, inside the root, holding the decoded signature, or a
4xx with nothing stored; nothing outside the root ever appears, disappears or changes.
"""

from __future__ import annotations

import atexit
import base64
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris
from _harness import main

with atheris.instrument_imports(include=["atomicsig"]):
    from atomicsig import fsutil
    from atomicsig.format import payload
    from atomicsig.serve.server import ServerConfig, SignatureServer
    from atomicsig.store.directory import DirectoryStore
    from atomicsig.store.journal import Journal

WRITE_TOKEN = "fuzz-write-token-0123456789"  # noqa: S105 - test token of the temp server
READ_TOKEN = "fuzz-read-token-0123456789"  # noqa: S105
SEED_SIG = Path(__file__).parent / "corpus" / "blob" / "uncompressed.sig"
FIELDS = 9


class Fixture:
    """The temp tree every input runs against (built once per process; PUTs that succeed are undone)."""

    def __init__(self) -> None:
        self.top = Path(tempfile.mkdtemp(prefix="atomicsig-fuzz-serve-"))
        # For runs ended from Python; libFuzzer's own exit skips this, so run.py and the tests point TMPDIR at a
        # directory they remove.
        atexit.register(shutil.rmtree, self.top, True)
        self.root = self.top / "store"
        self.outside = self.top / "outside"
        self.sig = SEED_SIG.read_bytes()
        from atomicsig.openpgp import packets as openpgp

        self.digest = payload.parse(openpgp.parse_message(self.sig).literal).manifest_digest
        hexpart = self.digest.split(":", 1)[1]
        DirectoryStore(self.root).append_path("app/web", self.digest, self.sig)
        Journal(self.root).rebuild()
        fsutil.makedirs(self.outside / f"secret@sha256={hexpart}", 0o755)
        fsutil.atomic_write(self.outside / f"secret@sha256={hexpart}" / "signature-1", b"outside\n")
        fsutil.atomic_write(self.outside / "passwd", b"root:x:0:0\n")
        os.symlink(self.outside / f"secret@sha256={hexpart}", self.root / f"evil@sha256={hexpart}")
        os.symlink(self.outside, self.root / "link")
        self.outside_state = self.snapshot(self.outside)
        self.apps = [SignatureServer(ServerConfig(sigstore=self.root, write_token=WRITE_TOKEN)),
                     SignatureServer(ServerConfig(sigstore=self.root, write_token=WRITE_TOKEN,
                                                  read_token=READ_TOKEN))]

    @staticmethod
    def snapshot(where: Path) -> dict[str, bytes | None]:
        """Every path under ``where`` (not following symlinks) with its bytes for regular files."""
        out: dict[str, bytes | None] = {}
        for dirpath, dirnames, files in os.walk(where):
            for name in dirnames + files:
                p = Path(dirpath) / name
                out[str(p)] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
        return out

    def top_names(self) -> set[str]:
        return set(os.listdir(self.top))


FIX: Fixture | None = None


def _fixture() -> Fixture:
    global FIX
    if FIX is None:
        FIX = Fixture()
    return FIX


def _envelope(digest_hint: str, blob: bytes) -> bytes:
    return json.dumps({"schemaVersion": 2, "type": "atomic", "name": f"{digest_hint}@fuzz",
                       "content": base64.b64encode(blob).decode()}).encode()


def build_environ(data: bytes, fix: Fixture) -> tuple[dict[str, Any], bytes]:
    parts = data.split(b"\n", FIELDS)
    fields = [p.decode("latin-1") for p in parts[:FIELDS]] + [""] * (FIELDS - min(len(parts), FIELDS))
    body = parts[FIELDS] if len(parts) > FIELDS else b""
    method, uri, rng, inm, if_range, length, auth, ctype, mode = fields
    digest = uri.rsplit("/", 1)[-1] if uri.startswith("/extensions/") else fix.digest
    if mode == "SIG":
        body = _envelope(digest, fix.sig)
    elif mode == "ENV":
        body = _envelope(digest, body)
    environ: dict[str, Any] = {"REQUEST_METHOD": method or "GET", "wsgi.input": io.BytesIO(body),
                               "REMOTE_ADDR": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1"}
    if uri.startswith("PATH_INFO:"):  # some WSGI servers give only the decoded path
        environ["PATH_INFO"] = uri.removeprefix("PATH_INFO:")
    else:
        environ["REQUEST_URI"] = uri
    for key, value in (("HTTP_RANGE", rng), ("HTTP_IF_NONE_MATCH", inm), ("HTTP_IF_RANGE", if_range),
                       ("CONTENT_LENGTH", length), ("HTTP_AUTHORIZATION", auth), ("CONTENT_TYPE", ctype)):
        if value:
            environ[key] = value
    if auth == "WRITE":
        environ["HTTP_AUTHORIZATION"] = f"Bearer {WRITE_TOKEN}"
    return environ, body


def _is_sig_file(path: str, snap: dict[str, bytes | None]) -> bool:
    """A regular ``signature-N`` file (a repository may well have a directory called ``signature-x``)."""
    return snap.get(path) is not None and re.fullmatch(r"signature-[0-9]+", Path(path).name) is not None


def check_request(data: bytes) -> None:
    fix = _fixture()
    app = fix.apps[len(data) % 2]
    environ, sent = build_environ(data, fix)
    before = fix.snapshot(fix.root)
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.append((status, headers))

    body = b"".join(app(environ, start_response))
    assert len(seen) == 1, "start_response must be called exactly once"
    status_line, headers = seen[0]
    code = int(status_line.split(" ", 1)[0])
    assert 200 <= code < 500 and len(status_line.split(" ", 1)) == 2, status_line
    method = environ["REQUEST_METHOD"].upper()
    if method == "HEAD":
        assert body == b""
    after = fix.snapshot(fix.root)
    created = sorted(set(after) - set(before))
    if method == "PUT" and code == 201:
        sigs = [p for p in created if _is_sig_file(p, after)]
        assert len(sigs) == 1, created
        new = Path(sigs[0])
        assert fsutil.is_within(fix.root, new), new
        assert new.read_bytes() == base64.b64decode(json.loads(sent)["content"]), "stored bytes differ from the PUT"
        location = dict(headers)["Location"]
        assert (fix.root / location.lstrip("/")).resolve() == new.resolve(), (location, new)
        new.unlink()  # keep the store as it was, so every input sees the same tree
    else:
        changed = [p for p in before if p in after and after[p] != before[p] and not p.endswith("journal")]
        assert not changed, changed
        new_files = [p for p in created if _is_sig_file(p, after)]
        assert not new_files, (status_line, new_files)
    # Only a lookaside path serves a stored signature; the query string is not part of the path (a "/metrics?x@1"
    # is the metrics page, whatever its query says).
    path = environ.get("REQUEST_URI", "").split("?", 1)[0]
    if code == 200 and method == "GET" and "@" in path and not path.startswith("/extensions/"):
        served = [p for p, content in before.items() if content == body and _is_sig_file(p, before)]
        assert served and all(fsutil.is_within(fix.root, p) for p in served), "served bytes not from the store"
    assert fix.snapshot(fix.outside) == fix.outside_state, "something outside the root changed"
    assert fix.top_names() == {"store", "outside"}, fix.top_names()


def TestOneInput(data: bytes) -> None:
    check_request(data)


if __name__ == "__main__":
    _fixture()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    main(TestOneInput)
