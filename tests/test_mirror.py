"""``atomicsig mirror`` against hostile and broken upstreams (issue 15 #1, "Bad input"): real gpg signatures, real
HTTP on 127.0.0.1 (FakeServer), the real CLI. Every signature must pass Intake before it is stored; an upstream that
cannot be read stores nothing for that digest and exits 3, a refused signature exits 1 and is never stored.

The end-to-end runs with docker-registry, nginx, ``atomicsig serve`` and skopeo are in tests/test_mirror_e2e.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atomicsig.format.sigpath import digest_dirname, signature_relpath
from atomicsig.store.journal import Journal
from atomicsig.store.sigdir import read_dir
from tests.infra import FakeRequest, FakeServer, GpgHome, Reply

HOST = "127.0.0.1:9"  # never contacted: these tests mirror by digest with --no-resolve
REPO = "ns/app"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
BASE = "/containers/sigstore"  # a base path like Red Hat's lookaside (…/containers/sigstore/<repo>@sha256=…)


class Upstream(FakeServer):
    """A lookaside web server: ``files`` maps a path under :data:`BASE` to its reply (or a raw handler)."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, Reply | Callable[[FakeRequest], None]] = {}

    def put(self, digest: str, *replies: Reply | Callable[[FakeRequest], None] | bytes, repo: str = REPO) -> None:
        for n, r in enumerate(replies, start=1):
            self.files[f"{BASE}/{signature_relpath(repo, digest, n)}"] = Reply(200, r) if isinstance(r, bytes) else r

    def handle(self, req: FakeRequest) -> Reply | None:
        found = self.files.get(req.route)
        if found is None:
            return Reply(404, b"<html><body>404 Not Found</body></html>", {"Content-Type": "text/html"})
        if isinstance(found, Reply):
            return found
        found(req)
        return None

    def sig_hits(self) -> int:
        return sum(1 for h in self.hits if "/signature-" in h.path)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as u:
        yield u


@pytest.fixture(scope="module")
def sigs(signer: GpgHome, other_signer: GpgHome) -> dict[str, bytes]:
    return {"a": signer.sign_image(f"vendor.example.com/{REPO}:1", D1),
            "b": signer.sign_image(f"vendor.example.com/{REPO}:2", D1),
            "c": signer.sign_image(f"vendor.example.com/{REPO}:1", D2),
            "other": other_signer.sign_image(f"vendor.example.com/{REPO}:1", D1),
            "wrong-digest": signer.sign_image(f"vendor.example.com/{REPO}:1", D2)}


def stored(root: Path, digest: str = D1, repo: str = REPO) -> list[bytes]:
    return [s.blob for s in read_dir(root / digest_dirname(repo, digest))]


def journaled(root: Path) -> list[str]:
    j = Journal(root)
    return [ln for ln in j.path.read_text().splitlines() if " add " in ln] if j.path.exists() else []


@pytest.fixture
def mirror(cli: Any, signer_pub: Path, tmp_path: Path) -> Callable[..., tuple[int, dict[str, Any], str]]:
    """Run ``atomicsig mirror --json`` by digest into tmp_path/local; returns (exit code, JSON document, stderr)."""
    def run(source: str, *refs: str, extra: tuple[str, ...] = ()) -> tuple[int, dict[str, Any], str]:
        code, out, err = cli("mirror", "--json", "--no-resolve", "--from", source, "--sigstore",
                             str(tmp_path / "local"), "--key", str(signer_pub), *extra,
                             *(refs or (f"{HOST}/{REPO}@{D1}",)))
        return code, json.loads(out) if out.strip() else {}, err
    return run


def test_verified_signatures_stored_refused_counted_rerun_adds_nothing(
        mirror: Any, upstream: Upstream, sigs: dict[str, bytes], tmp_path: Path) -> None:
    upstream.put(D1, sigs["a"], sigs["other"], sigs["wrong-digest"], sigs["b"])
    code, doc, err = mirror(upstream.url + BASE)
    assert code == 1, err  # some refused: a decided "no", not "could not check"
    (img,) = doc["images"]
    assert (img["found"], img["stored"], img["duplicates"]) == (4, 2, 0)
    assert img["refused"] == {"digest-mismatch": 1, "untrusted-key": 1}
    assert img["digest"] == D1 and img["stored_as"] == REPO
    local = tmp_path / "local"
    assert stored(local) == [sigs["a"], sigs["b"]]  # upstream order, refused ones left out, no gap
    assert len(journaled(local)) == 2  # followers (atomicsig sync) get them
    code, doc, err = mirror(upstream.url + BASE)
    (img,) = doc["images"]
    assert code == 1 and (img["stored"], img["duplicates"]) == (0, 2), err
    assert stored(local) == [sigs["a"], sigs["b"]] and len(journaled(local)) == 2  # stored by content


def test_all_accepted_exits_0_and_text_output(cli: Any, upstream: Upstream, sigs: dict[str, bytes],
                                              signer_pub: Path, tmp_path: Path) -> None:
    upstream.put(D1, sigs["a"])
    upstream.put(D2, sigs["c"])
    code, out, err = cli("mirror", "--no-resolve", "--from", upstream.url + BASE + "/", "--sigstore",
                         str(tmp_path / "s"), "--key", str(signer_pub), f"{HOST}/{REPO}@{D1}", f"{HOST}/{REPO}@{D2}")
    assert code == 0, err
    assert out.count("ok ") == 2 and "stored 1" in out
    assert "2 digests: 2 signatures found, 2 stored" in err


def test_key_is_required(cli: Any, upstream: Upstream, tmp_path: Path) -> None:
    code, _, err = cli("mirror", "--no-resolve", "--from", upstream.url, "--sigstore", str(tmp_path / "s"),
                       f"{HOST}/{REPO}@{D1}")
    assert code == 2 and "--key is required" in err and "unverified" in err
    assert not (tmp_path / "s").exists() and upstream.sig_hits() == 0


def test_path_escape_or_bad_reference_stores_nothing(mirror: Any, upstream: Upstream, sigs: dict[str, bytes],
                                                    tmp_path: Path) -> None:
    upstream.put(D1, sigs["a"])
    for bad in (f"{HOST}/ns/../../etc@{D1}", f"{HOST}/ns/app@sha256:../../x", f"{HOST}/ns/app:1"):
        code, _, err = mirror(upstream.url + BASE, f"{HOST}/{REPO}@{D1}", bad)
        assert code == 2, (bad, err)
    assert upstream.sig_hits() == 0 and not (tmp_path / "local").exists()  # checked before anything is read
    code, _, err = mirror(upstream.url + BASE, extra=("--mirror-prefix", "vendor=../x"))
    assert code == 2 and "--mirror-prefix" in err


def test_html_instead_of_a_signature_is_refused_per_signature(mirror: Any, upstream: Upstream,
                                                              sigs: dict[str, bytes], tmp_path: Path) -> None:
    html = Reply(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", {"Content-Type": "text/html"})
    upstream.put(D1, html, sigs["a"])
    code, doc, err = mirror(upstream.url + BASE)
    (img,) = doc["images"]
    assert code == 1 and img["refused"] == {"format": 1} and img["stored"] == 1, err
    assert "signature-1 refused (format)" in img["reason"]
    assert stored(tmp_path / "local") == [sigs["a"]]


def test_redirect_followed_on_the_same_host_refused_to_another(mirror: Any, upstream: Upstream,
                                                               sigs: dict[str, bytes], tmp_path: Path) -> None:
    upstream.files["/moved/sig-a"] = Reply(200, sigs["a"])
    upstream.put(D1, Reply(302, b"", {"Location": "/moved/sig-a"}))
    code, doc, err = mirror(upstream.url + BASE)
    assert code == 0 and doc["images"][0]["stored"] == 1, err
    with Upstream() as elsewhere:
        elsewhere.files["/sig"] = Reply(200, sigs["b"])
        upstream.put(D2, sigs["c"], Reply(301, b"", {"Location": elsewhere.url + "/sig"}))
        code, doc, err = mirror(upstream.url + BASE, f"{HOST}/{REPO}@{D2}")
        assert elsewhere.hits == []
    (img,) = doc["images"]
    assert code == 3 and img["status"] == "error", err
    assert "redirects to http://127.0.0.1:" in img["reason"] and "another host" in img["reason"]
    assert stored(tmp_path / "local", D2) == []  # not even the good signature-1: all or nothing per digest


def test_ten_thousand_signatures_are_capped(mirror: Any, upstream: Upstream, sigs: dict[str, bytes],
                                            tmp_path: Path) -> None:
    for n in range(1, 10_001):
        upstream.files[f"{BASE}/{signature_relpath(REPO, D1, min(n, 128))}"] = Reply(200, sigs["a"])
    started = time.monotonic()
    code, doc, err = mirror(upstream.url + BASE)
    (img,) = doc["images"]
    assert code == 1 and img["status"] == "refused" and img["refused"] == {"too-many": 1}, err
    assert "128 signatures" in img["reason"] and "at most 127" in img["reason"]
    assert upstream.sig_hits() == 128 and time.monotonic() - started < 30  # read as c/image does, then stopped
    assert stored(tmp_path / "local") == []


def test_truncated_body_and_5xx_store_nothing_and_exit_3(mirror: Any, upstream: Upstream, sigs: dict[str, bytes],
                                                         tmp_path: Path) -> None:
    upstream.put(D1, sigs["a"], Reply(200, sigs["b"][:20], {"Content-Length": str(len(sigs["b"]))}))
    upstream.put(D2, Reply(503, b"busy"))
    code, doc, err = mirror(upstream.url + BASE, f"{HOST}/{REPO}@{D1}", f"{HOST}/{REPO}@{D2}")
    assert code == 3, err
    one, two = doc["images"]
    assert one["status"] == "error" and "after 20 of" in one["reason"] and one["stored"] == 0
    assert two["status"] == "error" and "HTTP 503" in two["reason"]
    assert stored(tmp_path / "local") == [] and journaled(tmp_path / "local") == []


def test_slow_upstream_times_out(mirror: Any, upstream: Upstream, sigs: dict[str, bytes], tmp_path: Path) -> None:
    def drip(req: FakeRequest) -> None:  # headers, then one byte a second: no single read ever times out
        req.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(sigs["a"]))
        for b in sigs["a"][:40]:
            req.wfile.write(bytes([b]))
            req.wfile.flush()
            if upstream.release.wait(0.5):
                return

    def silent(req: FakeRequest) -> None:  # accepts, never answers
        upstream.release.wait(30)

    def header_drip(req: FakeRequest) -> None:  # a header line that never ends, one byte every half second
        req.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not upstream.release.wait(0.5):
            req.wfile.write(b"a")
            req.wfile.flush()

    upstream.put(D1, drip)
    upstream.put(D2, silent)
    upstream.put(D3, header_drip)
    started = time.monotonic()
    code, doc, err = mirror(upstream.url + BASE, f"{HOST}/{REPO}@{D1}", f"{HOST}/{REPO}@{D2}",
                            f"{HOST}/{REPO}@{D3}", extra=("--timeout", "2"))
    assert code == 3 and time.monotonic() - started < 10, err
    assert [i["status"] for i in doc["images"]] == ["error"] * 3, doc
    assert stored(tmp_path / "local") == []


def test_directory_upstream_and_mirror_prefix(mirror: Any, sigs: dict[str, bytes], tmp_path: Path) -> None:
    up = tmp_path / "upstream"
    (up / digest_dirname(REPO, D1)).mkdir(parents=True)
    (up / signature_relpath(REPO, D1, 1)).write_bytes(sigs["a"])
    (up / signature_relpath(REPO, D1, 2)).write_bytes(sigs["other"])
    code, doc, err = mirror(str(up), f"vendor.example.com/{REPO}@{D1}",
                            extra=("--mirror-prefix", "vendor.example.com=mirror.example.com:5000/vendor"))
    (img,) = doc["images"]
    assert code == 1 and img["stored_as"] == f"vendor/{REPO}" and img["refused"] == {"untrusted-key": 1}, err
    assert stored(tmp_path / "local", repo=f"vendor/{REPO}") == [sigs["a"]]
    code, _, err = mirror(str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err


def test_unsigned_digest_is_a_decided_no(mirror: Any, upstream: Upstream, sigs: dict[str, bytes]) -> None:
    upstream.put(D1, sigs["a"])
    code, doc, err = mirror(upstream.url + BASE, f"{HOST}/{REPO}@{D1}", f"{HOST}/{REPO}@{D3}")
    assert code == 1, err  # nothing to mirror for D3 upstream: "no", not "could not check"
    ok, unsigned = doc["images"]
    assert ok["status"] == "ok" and unsigned["status"] == "refused" and unsigned["found"] == 0
    assert unsigned["reason"] == "upstream has no signature for this digest"
    assert doc["summary"]["unsigned"] == 1 and doc["summary"]["errors"] == 0


def test_extension_api_list_is_capped_too(cli: Any, sigs: dict[str, bytes], signer_pub: Path, tmp_path: Path) -> None:
    """The extension API has no signature-N index to stop at: a list of 1,000 entries is refused the same way (one of
    10,000 is over the 4 MiB list cap c/image applies, so it is not read at all: exit 3)."""
    from atomicsig.format.extension_wire import encode_entry, extension_path

    with FakeServer() as ext:
        many = {"signatures": [encode_entry(f"{D1}@{i:032x}", sigs["a"]) for i in range(1_000)]}
        ext.script(extension_path(REPO, D1), Reply(200, json.dumps(many).encode()))
        ext.script(extension_path(REPO, D2), Reply(200, json.dumps({"signatures": [
            encode_entry(f"{D2}@{0:032x}", sigs["c"]), encode_entry(f"{D2}@{1:032x}", sigs["other"])]}).encode()))
        code, out, err = cli("mirror", "--json", "--no-resolve", "--from-extension", ext.url, "--sigstore",
                             str(tmp_path / "s"), "--key", str(signer_pub), f"{HOST}/{REPO}@{D1}",
                             f"{HOST}/{REPO}@{D2}")
    capped, two = json.loads(out)["images"]
    assert code == 1 and capped["refused"] == {"too-many": 1} and "1000 signatures" in capped["reason"], err
    assert (two["stored"], two["refused"]) == (1, {"untrusted-key": 1})
    assert stored(tmp_path / "s", D1) == [] and stored(tmp_path / "s", D2) == [sigs["c"]]
