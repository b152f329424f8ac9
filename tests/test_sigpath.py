"""The one lookaside path grammar (atomicsig/format/sigpath.py) and every consumer agreeing with it.

``<repo path>@sha256=<hex>/signature-N`` is built by the directory store, the HTTP lookaside, ``prune`` and the
journal, and parsed by ``serve``'s routes, the journal, sync and the origin records. Before there was one grammar they
disagreed on the length of a repository path (so a valid reference could be stored but not journaled, or journaled but
not served), on N and on trailing newlines; these tests hold them to one definition (issue 13, "one path grammar").
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomicsig.errors import InputError
from atomicsig.format import reference, sigpath
from atomicsig.serve.server import ServerConfig, SignatureServer
from atomicsig.store import journal
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.http import HTTPLookaside
from atomicsig.store.sigdir import read_dir

HEX = "ab" * 32
DIG = f"sha256:{HEX}"


def _get(app: SignatureServer, path: str) -> tuple[int, bytes]:
    """One GET through the WSGI application (the same object cheroot calls), without a socket."""
    status: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": path}, lambda s, h: status.append(s)))
    return int(status[0].split()[0]), body


# ---- strategies ----------------------------------------------------------------------------------------------

_alnum = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6)
_sep = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(lambda first, rest: first + "".join(s + a for s, a in rest),
                       _alnum, st.lists(st.tuples(_sep, _alnum), max_size=2))
_repo = st.lists(_component, min_size=1, max_size=4).map("/".join)
_digest = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h),
    st.sampled_from(["sha384:" + "c" * 96, "sha512:" + "d" * 128]))
_index = st.integers(1, sigpath.MAX_LOOKASIDE_SIGNATURES)


def _mutations(valid: str) -> st.SearchStrategy[str]:
    """Strings close to a valid path: the places where consumers used to disagree."""
    return st.sampled_from([
        valid, valid + "\n", valid + "/", "/" + valid, valid.upper(), "." + valid, valid[:1] + " " + valid[1:],
        valid + " ", valid.replace("/", "//", 1), valid.replace("/", "/./", 1), valid.replace("/", "/../", 1),
        valid.replace("sha256=", "sha256:"), valid.replace("sha256=", "sha384="), valid.replace("@", "@@"),
        valid.replace("signature-1", "signature-01"), valid.replace("signature-1", "signature-0"),
        valid.replace("signature-1", "signature-127"), valid.replace("signature-1", "signature-128"),
        valid.replace("signature-1", "signature-129"), valid.replace("signature-1", "signature-1000"),
        "x" * 200 + "/" + valid, "a/" * 118 + valid, "a/" * 130 + valid,
    ])


# ---- the grammar alone ---------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(_repo, _digest, _index)
def test_build_then_parse_round_trips(repo: str, digest: str, index: int) -> None:
    rel = sigpath.signature_relpath(repo, digest, index)
    assert rel == f"{repo}@{digest.replace(':', '=', 1)}/signature-{index}"
    assert sigpath.parse_read_path(rel) == sigpath.SigPath(repo, digest, index)
    assert str(sigpath.parse_read_path(rel)) == rel
    assert sigpath.parse_digest_dirname(sigpath.digest_dirname(repo, digest)) == (repo, digest)
    assert sigpath.signature_index(sigpath.signature_name(index)) == index
    lookaside = HTTPLookaside("https://sigs.example.com/base")  # what a node's GET asks a web server for
    assert lookaside.url(reference.parse(f"quay.io/{repo}"), digest, index) == f"https://sigs.example.com/base/{rel}"
    stored = digest.startswith("sha256:") and index < sigpath.MAX_LOOKASIDE_SIGNATURES
    if stored:
        assert sigpath.parse_sigpath(rel) == sigpath.SigPath(repo, digest, index)
    else:
        with pytest.raises(InputError):
            sigpath.parse_sigpath(rel)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["a.b", "quay.io", "localhost:5000", "docker.io", "registry.example.com:5000"]),
       st.lists(_component, min_size=1, max_size=3), st.integers(0, 250))
def test_every_reference_path_is_a_repository_path(domain: str, parts: list[str], pad: int) -> None:
    """Whatever the reference parser accepts, the lookaside grammar accepts as a repository path (SPEC §7.2)."""
    path = "/".join(parts)
    path += "/" + "p" * pad if pad else ""
    try:
        ref = reference.parse(f"{domain}/{path}")
    except InputError as exc:
        assert "longer than 255" in exc.message  # the only refusal these inputs can meet
        return
    assert sigpath.repo_path(ref.path) == ref.path
    assert sigpath.parse_sigpath(sigpath.signature_relpath(ref.path, DIG, 1)).repo == ref.path


def test_repository_path_limit_is_the_longest_reference_path() -> None:
    longest = "a" * 120 + "/" + "b" * 120 + "/" + "c" * (sigpath.MAX_REPO_PATH - 242)
    assert len(longest) == sigpath.MAX_REPO_PATH == 251
    assert reference.parse(f"a.b/{longest}").path == longest  # the shortest host leaves 251 characters
    assert sigpath.repo_path(longest) == longest
    with pytest.raises(InputError):
        sigpath.repo_path(longest + "c")
    for bad in ("", "/abs", "a//b", "a/./b", "../x", "a/..", "A/b", "a b", "a@b", "a/b/", ".a", "a\n"):
        with pytest.raises(InputError):
            sigpath.repo_path(bad)


def test_signature_names() -> None:
    assert sigpath.signature_name(1) == "signature-1" and sigpath.signature_name(128) == "signature-128"
    for bad in (0, -1, 129, True):
        with pytest.raises(InputError):
            sigpath.signature_name(bad)
    for name in ("signature-0", "signature-01", "signature-129", "signature-1\n", "signature-", "sig-1",
                 "signature-1 ", "signature-+1", "signature-١"):
        with pytest.raises(InputError):
            sigpath.signature_index(name)


# ---- every consumer agrees -----------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.data())
def test_journal_server_and_store_accept_the_same_paths(tmp_path_factory: Any, data: Any) -> None:
    """A path the journal accepts is one the server serves and the directory store reads; what the grammar refuses,
    the server does not serve even when a file of that name exists, and the journal does not take."""
    rel = data.draw(_mutations(f"{data.draw(_repo)}@sha256={HEX}/signature-1"))
    root = tmp_path_factory.mktemp("store")
    target = Path(root, rel)
    made = False
    if ".." not in rel.split("/") and not rel.startswith("/") and rel.strip() == rel and rel:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"\xa3sig")
            made = target.resolve().is_relative_to(Path(root).resolve())
        except OSError:
            made = False
    app = SignatureServer(ServerConfig(sigstore=root))
    try:
        read_ok = sigpath.parse_read_path(rel)
    except InputError:
        read_ok = None
    status, body = _get(app, "/" + rel)
    assert (status == 200) == (read_ok is not None and made), (rel, status)
    if status == 200:
        assert body == b"\xa3sig"
    line = f"7 add {rel} {'e' * 64}".encode()
    try:
        stored = sigpath.parse_sigpath(rel)
    except InputError:
        with pytest.raises((journal.JournalError, InputError)):
            journal.parse_line(line, 0)
        return
    assert read_ok == stored and journal.parse_line(line, 0).path == stored
    d = DirectoryStore(root).path_dir(stored.repo, stored.digest)
    assert d / stored.name == target  # the store names the same file
    if stored.index == 1:  # (a reader stops at the first gap, so only signature-1 alone is read back)
        assert [s.blob for s in read_dir(d, root)] == [b"\xa3sig"]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_journal_writers_shortcut_is_parse_sigpath(data: Any) -> None:
    """``is_stored_path`` (the check a batch writer makes on each journal line it built) says yes exactly when
    ``parse_sigpath`` accepts: never for a path the grammar refuses, and for every valid one the grammar's own
    strategies produce (sha256, index 1–127), so the shortcut neither lets a bad line in nor sends good ones to the
    slow path."""
    valid = f"{data.draw(_repo)}@sha256={data.draw(st.text('0123456789abcdef', min_size=64, max_size=64))}/" \
            f"signature-{data.draw(st.integers(1, sigpath.MAX_LOOKASIDE_SIGNATURES - 1))}"
    rel = data.draw(st.one_of(st.just(valid), _mutations(valid)))
    try:
        sigpath.parse_sigpath(rel)
        accepted = True
    except InputError:
        accepted = False
    assert sigpath.is_stored_path(rel) == accepted, rel


# ---- regressions: disagreements found while unifying ---------------------------------------------------------

def test_longest_reference_path_is_stored_journaled_and_served(tmp_path: Path) -> None:
    """Regression: a valid reference whose repository path is 246–251 characters long was stored by ``sign`` but
    refused by the journal ("signature stored … but not recorded in the sync journal", the command failed), and
    ``serve`` answered 404 for it (its own limit was 238): nodes reading through ``serve`` saw no signature."""
    path = "a" * 120 + "/" + "b" * 120 + "/" + "c" * 7
    ref = reference.parse(f"a.b/{path}:1")
    assert ref.path == path
    res = DirectoryStore(tmp_path).append(ref, DIG, b"\xa3one")
    assert res.created and res.index == 1
    rel = f"{path}@sha256={HEX}/signature-1"
    assert [line for line, _ in journal.scan(tmp_path)] == [rel]
    journal_text = (tmp_path / journal.META_DIR / journal.JOURNAL_NAME).read_text()
    sha = hashlib.sha256(b"\xa3one").hexdigest()
    assert f" add {rel} {sha}\n" in journal_text
    app = SignatureServer(ServerConfig(sigstore=tmp_path))
    assert _get(app, "/" + rel) == (200, b"\xa3one")
    assert _get(app, f"/extensions/v2/{path}/signatures/{DIG}")[0] == 200


def test_journal_and_server_share_the_repository_path_limit(tmp_path: Path) -> None:
    """Regression: the journal (and so sync) took repository paths up to 245 characters, ``serve`` only up to 238,
    so a follower was told of signatures its source then refused to serve."""
    path = "a" * 120 + "/" + "b" * 119
    rel = f"{path}@sha256={HEX}/signature-1"
    assert sigpath.parse_sigpath(rel).repo == path
    assert sigpath.repo_path(path) == path
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes(b"\xa3x")
    assert _get(SignatureServer(ServerConfig(sigstore=tmp_path)), "/" + rel) == (200, b"\xa3x")


def test_server_serves_no_name_beyond_the_one_a_reader_probes(tmp_path: Path) -> None:
    """Regression: ``serve`` answered ``signature-129`` … ``signature-9999`` (and a path with a trailing newline),
    names no store holds and containers/image never asks for; ``signature-128`` is still served, so a node reading
    an overfull directory through ``serve`` fails exactly as reading it from disk (SPEC §3.2)."""
    d = tmp_path / f"ns/app@sha256={HEX}"
    d.mkdir(parents=True)
    for n in (1, 128, 129, 1000):
        (d / f"signature-{n}").write_bytes(b"\xa3%d" % n)
    app = SignatureServer(ServerConfig(sigstore=tmp_path))
    base = f"/ns/app@sha256={HEX}/signature-"
    assert _get(app, base + "1")[0] == 200 and _get(app, base + "128")[0] == 200
    assert _get(app, base + "129")[0] == 404 and _get(app, base + "1000")[0] == 404
    assert _get(app, base + "1\n")[0] == 404
