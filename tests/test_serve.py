"""`atomicsig serve` against real clients: raw sockets, requests, skopeo, and the atomicsig CLI itself."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from atomicsig.errors import InputError
from atomicsig.format import payload
from atomicsig.format.reference import parse
from atomicsig.gnupg.keyring import Keyring
from atomicsig.net.tokens import read_token_file
from atomicsig.serve.config import load as load_serve_config
from atomicsig.serve.config import load_file as load_config
from atomicsig.serve.server import ServerConfig, SignatureServer
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.sigdir import read_dir
from tests.conftest import needs_registry
from tests.infra import GpgHome, push_image, registries_d, run_wsgi, signed_by_policy, skopeo_pull

pytestmark = pytest.mark.slow

TOKEN = "write-token-" + "x" * 20
DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
REPO = "ns/app"


@pytest.fixture(scope="module")
def blobs(signer: GpgHome) -> list[bytes]:
    """Ten distinct real signatures for DIGEST (distinct identities)."""
    return [signer.sign_image(f"registry.example/ns/app:v{i}", DIGEST) for i in range(10)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, SignatureServer]]:
    root = tmp_path_factory.mktemp("served")
    app = SignatureServer(ServerConfig(sigstore=root, write_token=TOKEN))
    with run_wsgi(app) as base:
        yield base, root, app


def put_body(blob: bytes, digest: str = DIGEST, **over: object) -> bytes:
    doc: dict[str, object] = {"schemaVersion": 2, "name": f"{digest}@{'0' * 32}", "type": "atomic",
                              "content": base64.b64encode(blob).decode()}
    doc.update(over)
    return json.dumps(doc).encode()


def ext_url(base: str, repo: str = REPO, digest: str = DIGEST) -> str:
    return f"{base}/extensions/v2/{repo}/signatures/{digest}"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def raw_request(base: str, request_line: str, extra: str = "") -> tuple[int, bytes]:
    """Send bytes exactly as given (requests would normalize the path)."""
    u = urllib.parse.urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"{request_line}\r\nHost: {u.netloc}\r\nConnection: close\r\n{extra}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


# ---- lookaside GET ----------------------------------------------------------------------------------------------


def test_lookaside_get_head_etag(server: tuple[str, Path, SignatureServer], blobs: list[bytes]) -> None:
    base, root, _ = server
    ref = parse(f"registry.example/{REPO}:v0")
    DirectoryStore(root).append(ref, OTHER_DIGEST, blobs[0])
    url = f"{base}/{REPO}@sha256={'cd' * 32}/signature-1"
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == blobs[0]
    assert r.headers["Content-Length"] == str(len(blobs[0]))
    assert r.headers["Cache-Control"] and r.headers["ETag"].startswith('"')
    assert requests.get(url, headers={"If-None-Match": r.headers["ETag"]}, timeout=10).status_code == 304
    h = requests.head(url, timeout=10)
    assert h.status_code == 200 and h.content == b"" and h.headers["Content-Length"] == str(len(blobs[0]))
    # Absent objects are 404 (never 403): a gap ends the list for c/image.
    assert requests.get(url.replace("signature-1", "signature-2"), timeout=10).status_code == 404
    assert requests.get(f"{base}/{REPO}@sha256={'ef' * 32}/signature-1", timeout=10).status_code == 404
    for listing in ("/", f"/{REPO}", f"/{REPO}@sha256={'cd' * 32}", f"/{REPO}@sha256={'cd' * 32}/"):
        assert requests.get(base + listing, timeout=10).status_code == 404, listing


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/ns/%2e%2e/%2e%2e/%2e%2e/etc/passwd@sha256=" + "cd" * 32 + "/signature-1",
    "/ns/..%2f..%2f..%2fetc@sha256=" + "cd" * 32 + "/signature-1",
    "//etc/passwd",
    "//ns/app@sha256=" + "cd" * 32 + "/signature-1",
    "/ns//app@sha256=" + "cd" * 32 + "/signature-1",
    "/ns/app@sha256=" + "cd" * 32 + "/../../../../etc/passwd",
    "/ns/app@sha256=" + "cd" * 32 + "/signature-0",
    "/ns/app@sha256=" + "CD" * 32 + "/signature-1",
    "/ns/app@sha256:" + "cd" * 32 + "/signature-1",
    "/.atomicsig/",
    "/.atomicsig/lock",
    "/.atomicsig/journal/../../etc/passwd",
    "/extensions/v2/../../etc/signatures/" + DIGEST,
])
def test_traversal_raw_socket(server: tuple[str, Path, SignatureServer], blobs: list[bytes], path: str) -> None:
    base, root, _ = server
    (root / ".atomicsig").mkdir(exist_ok=True)
    (root / ".atomicsig" / "lock").write_text("secret")
    DirectoryStore(root).append(parse(f"registry.example/{REPO}:v0"), OTHER_DIGEST, blobs[0])
    status, body = raw_request(base, f"GET {path} HTTP/1.1")
    assert status in (400, 404), (path, status)
    assert b"root:" not in body and b"secret" not in body


def test_symlink_out_of_root_is_404(server: tuple[str, Path, SignatureServer], tmp_path: Path,
                                    blobs: list[bytes]) -> None:
    base, root, _ = server
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "signature-1").write_bytes(blobs[1])
    (root / "evil").mkdir(exist_ok=True)
    link = root / "evil" / f"app@sha256={'12' * 32}"
    link.symlink_to(outside)
    assert requests.get(f"{base}/evil/app@sha256={'12' * 32}/signature-1", timeout=10).status_code == 404
    assert requests.get(ext_url(base, "evil/app", "sha256:" + "12" * 32), timeout=10).status_code == 404


# ---- extension API ----------------------------------------------------------------------------------------------


def test_put_then_list_and_duplicate(server: tuple[str, Path, SignatureServer], blobs: list[bytes]) -> None:
    base, root, _ = server
    repo = "put/one"
    assert requests.get(ext_url(base, repo), timeout=10).status_code == 404
    r = requests.put(ext_url(base, repo), data=put_body(blobs[2]), headers=AUTH, timeout=30)
    assert r.status_code == 201, r.text
    assert (root / f"{repo}@sha256={'ab' * 32}" / "signature-1").read_bytes() == blobs[2]
    r = requests.put(ext_url(base, repo), data=put_body(blobs[2]), headers=AUTH, timeout=30)
    assert r.status_code == 409
    listing = requests.get(ext_url(base, repo), timeout=10)
    assert listing.status_code == 200
    entries = listing.json()["signatures"]
    assert [base64.b64decode(e["content"]) for e in entries] == [blobs[2]]
    assert entries[0]["schemaVersion"] == 2 and entries[0]["type"] == "atomic"
    assert entries[0]["name"].startswith(DIGEST + "@") and len(entries[0]["name"].split("@")[1]) == 32
    assert not (root / f"{repo}@sha256={'ab' * 32}" / "signature-2").exists()


def test_put_needs_the_token(server: tuple[str, Path, SignatureServer], blobs: list[bytes]) -> None:
    base, root, _ = server
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        r = requests.put(ext_url(base, "tok/x"), data=put_body(blobs[3]), headers=headers, timeout=30)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert not (root / "tok").exists()


def _armored(home: GpgHome) -> bytes:
    import subprocess

    return subprocess.run(["gpg", "--homedir", str(home.path), "--batch", "--armor", "--local-user",
                           home.fingerprint, "--sign"], input=payload.build("r.example/a:1", DIGEST),
                          capture_output=True, check=True).stdout


@pytest.mark.parametrize("case", ["not-json", "array", "schema1", "type", "name-digest", "bad-b64", "not-openpgp",
                                  "armored", "other-digest", "empty-content", "payload-garbage"])
def test_put_rejects_bad_input(server: tuple[str, Path, SignatureServer], signer: GpgHome, blobs: list[bytes],
                               case: str) -> None:
    base, root, app = server
    other = signer.sign_image("registry.example/ns/app:v1", OTHER_DIGEST)
    garbage_payload = Keyring(str(signer.path)).sign(b'{"critical":{}}', signer.fingerprint, None)
    body = {
        "not-json": b"{not json",
        "array": b"[1,2]",
        "schema1": put_body(blobs[4], schemaVersion=1),
        "type": put_body(blobs[4], type=""),
        "name-digest": put_body(blobs[4], name=f"{OTHER_DIGEST}@{'0' * 32}"),
        "bad-b64": put_body(blobs[4], content="!!!"),
        "not-openpgp": put_body(b"<html>hello</html>"),
        "armored": put_body(_armored(signer)),
        "other-digest": put_body(other),
        "empty-content": put_body(b"", content=""),
        "payload-garbage": put_body(garbage_payload),
    }[case]
    before = app.metrics.rejects.labels("SIGNATURE_INVALID")._value.get()
    r = requests.put(ext_url(base, f"bad/{case}"), data=body, headers=AUTH, timeout=30)
    assert r.status_code == 400, (case, r.text)
    assert r.json()["errors"][0]["code"] == "SIGNATURE_INVALID"
    assert app.metrics.rejects.labels("SIGNATURE_INVALID")._value.get() == before + 1
    assert not (root / "bad" / f"{case}@sha256={'ab' * 32}").exists()


def test_put_oversized_body(server: tuple[str, Path, SignatureServer]) -> None:
    base, _, _ = server
    r = requests.put(ext_url(base, "big/x"), data=b"x" * (4 * 1024 * 1024 + 1), headers=AUTH, timeout=60)
    assert r.status_code == 413
    # Chunked (no Content-Length) is bounded too.
    r = requests.put(ext_url(base, "big/x"), data=iter([b"y" * 1024 * 1024] * 5), headers=AUTH, timeout=60)
    assert r.status_code == 413


def test_concurrent_puts_one_digest(server: tuple[str, Path, SignatureServer], blobs: list[bytes]) -> None:
    """Eight writers at once: all stored, numbered 1..8 without gaps, nothing overwritten."""
    base, root, _ = server
    repo = "race/app"
    codes: list[int] = []
    barrier = threading.Barrier(8)

    def put(b: bytes) -> None:
        barrier.wait()
        codes.append(requests.put(ext_url(base, repo), data=put_body(b), headers=AUTH, timeout=60).status_code)

    threads = [threading.Thread(target=put, args=(b,)) for b in blobs[:8]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [201] * 8
    stored = read_dir(root / f"{repo}@sha256={'ab' * 32}")
    assert [s.index for s in stored] == list(range(1, 9))
    assert sorted(s.blob for s in stored) == sorted(blobs[:8])
    assert not any(n.startswith(".tmp") for n in os.listdir(root / f"{repo}@sha256={'ab' * 32}"))
    # Every upload is in the sync journal exactly once, so followers of this server receive it.
    journal = (root / ".atomicsig" / "journal").read_text()
    for n in range(1, 9):
        assert journal.count(f" add {repo}@sha256={'ab' * 32}/signature-{n} ") == 1, journal


def test_trusted_key_restriction(tmp_path: Path, signer: GpgHome, signer_pub: Path, other_signer: GpgHome) -> None:
    app = SignatureServer(ServerConfig(sigstore=tmp_path, write_token=TOKEN, trusted_keys=[signer_pub.read_bytes()]))
    try:
        with run_wsgi(app) as base:
            ok = signer.sign_image("registry.example/ns/app:t", DIGEST)
            bad = other_signer.sign_image("registry.example/ns/app:t", DIGEST)
            r = requests.put(ext_url(base), data=put_body(bad), headers=AUTH, timeout=30)
            assert r.status_code == 403 and r.json()["errors"][0]["code"] == "untrusted-signer"
            assert requests.put(ext_url(base), data=put_body(ok), headers=AUTH, timeout=30).status_code == 201
    finally:
        app.close()


def test_read_token_and_disabled_writes(tmp_path: Path, blobs: list[bytes]) -> None:
    DirectoryStore(tmp_path).append(parse(f"registry.example/{REPO}:v0"), DIGEST, blobs[0])
    app = SignatureServer(ServerConfig(sigstore=tmp_path, read_token="read-token-" + "r" * 20))
    with run_wsgi(app) as base:
        url = f"{base}/{REPO}@sha256={'ab' * 32}/signature-1"
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer read-token-" + "r" * 20},
                            timeout=10).content == blobs[0]
        assert requests.put(ext_url(base), data=put_body(blobs[1]), timeout=10).status_code == 405


# ---- journal, health, metrics -----------------------------------------------------------------------------------


def test_journal_range_etag(tmp_path: Path) -> None:
    app = SignatureServer(ServerConfig(sigstore=tmp_path))
    with run_wsgi(app) as base:
        url = f"{base}/.atomicsig/journal"
        assert requests.get(url, timeout=10).status_code == 404
        (tmp_path / ".atomicsig").mkdir()
        (tmp_path / ".atomicsig" / "journal").write_bytes(b"line one\nline two\n")
        full = requests.get(url, timeout=10)
        assert full.status_code == 200 and full.content == b"line one\nline two\n"
        etag = full.headers["ETag"]
        assert requests.get(url, headers={"If-None-Match": etag}, timeout=10).status_code == 304
        part = requests.get(url, headers={"Range": "bytes=9-"}, timeout=10)
        assert part.status_code == 206 and part.content == b"line two\n"
        assert part.headers["Content-Range"] == "bytes 9-17/18"
        assert requests.get(url, headers={"Range": "bytes=-4"}, timeout=10).content == b"two\n"
        assert requests.get(url, headers={"Range": "bytes=18-"}, timeout=10).status_code == 416
        with open(tmp_path / ".atomicsig" / "journal", "ab") as fh:
            fh.write(b"line three\n")
        grown = requests.get(url, headers={"If-None-Match": etag, "Range": "bytes=18-"}, timeout=10)
        assert grown.status_code == 206 and grown.content == b"line three\n"
        assert requests.head(url, timeout=10).headers["Content-Length"] == "29"


def test_health_and_metrics(server: tuple[str, Path, SignatureServer]) -> None:
    base, _, _ = server
    assert requests.get(base + "/healthz", timeout=10).text == "ok\n"
    requests.get(base + "/nope", timeout=10)
    text = requests.get(base + "/metrics", timeout=10).text
    assert 'atomicsig_serve_requests_total{method="GET",status="404"}' in text
    assert "atomicsig_serve_signatures_stored_total" in text
    assert "atomicsig_serve_rejects_total" in text


def test_config_file_and_token_file(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("sigstore: /srv/sigs\nlisten: 0.0.0.0:8443\ntrusted-keys: [/etc/k.gpg]\n")
    assert load_config(str(cfg))["listen"] == "0.0.0.0:8443"
    cfg.write_text("sigstore: /srv/sigs\nlisten-port: 1\n")
    with pytest.raises(Exception, match="unknown key"):
        load_config(str(cfg))
    tok = tmp_path / "tok"
    tok.write_text("short\n")
    with pytest.raises(Exception, match="shorter"):
        read_token_file(str(tok))
    tok.write_text(TOKEN + "\n")
    assert read_token_file(str(tok)) == TOKEN


def test_serve_config_merge_flags_over_file_over_defaults(tmp_path: Path) -> None:
    """The core owns the merge (issue 13 #4): a given flag wins, an absent one (None, no --trusted-key) keeps
    the file's value, and what neither sets gets the documented default."""
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("sigstore: /srv/sigs\nlisten: 0.0.0.0:8443\nthreads: 4\ntrusted-keys: [/etc/k.gpg]\n"
                   "max-body: 1000\n")
    merged = load_serve_config(str(cfg), {"listen": "127.0.0.1:0", "threads": None, "trusted-keys": [],
                                          "header-timeout": 2.5})
    assert merged.listen == "127.0.0.1:0" and merged.sigstore == Path("/srv/sigs")
    assert merged.limits.threads == 4 and merged.limits.header_timeout == 2.5
    assert merged.limits.request_timeout == 30.0 and merged.limits.max_body == merged.max_body == 1000
    assert merged.trusted_keys == ("/etc/k.gpg",) and not merged.tls
    plain = load_serve_config(None)
    assert plain.sigstore == Path("/var/lib/atomic/sigstore") and plain.listen == "127.0.0.1:8080"


@pytest.mark.parametrize(("text", "message"), [
    ("sigstore: /a\nsigstore: /b\n", r"serve.yaml:2: .*duplicate key 'sigstore'"),
    ("sigstore: /a\nthreads: many\n", r"serve.yaml:2: threads has the wrong type"),
    ("sigstore: /a\nlisen: x\n", r"serve.yaml:2: unknown key 'lisen'.*did you mean 'listen'"),
    ("- sigstore\n", r"serve.yaml:1: top level must be a mapping"),
])
def test_serve_config_file_refused_with_line(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(str(cfg))


def test_serve_config_checks_files_only_when_asked(tmp_path: Path) -> None:
    """Loading never touches the sigstore, keys or tokens (``--user`` is checked first); server_config() does."""
    merged = load_serve_config(None, {"sigstore": str(tmp_path / "absent"), "trusted-keys": ["/nonexistent.gpg"]})
    with pytest.raises(InputError, match="is not a directory"):
        merged.server_config()
    merged = load_serve_config(None, {"sigstore": str(tmp_path), "trusted-keys": [str(tmp_path / "k.gpg")]})
    with pytest.raises(InputError, match="cannot read trusted key"):
        merged.server_config()


# ---- real clients -----------------------------------------------------------------------------------------------


@needs_registry
def test_skopeo_reads_lookaside_from_serve(registry, signer: GpgHome, signer_pub: Path, tmp_path: Path,
                                           cli) -> None:  # type: ignore[no-untyped-def]
    """skopeo with `lookaside: http://…` on atomicsig serve: signed image accepted, unsigned rejected."""
    push_image(registry.host, "serve/signed:1", "serve-signed", tmp_path)
    push_image(registry.host, "serve/unsigned:1", "serve-unsigned", tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    code, _out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore",
                         str(store), "--tls-verify=false", f"{registry.host}/serve/signed:1")
    assert code == 0, err
    app = SignatureServer(ServerConfig(sigstore=store))
    with run_wsgi(app) as base:
        regd = registries_d(tmp_path / "regd", base)
        policy = signed_by_policy(tmp_path / "policy.json", signer_pub)
        ok = skopeo_pull(f"{registry.host}/serve/signed:1", policy, regd, tmp_path)
        assert ok.returncode == 0, ok.stderr
        bad = skopeo_pull(f"{registry.host}/serve/unsigned:1", policy, regd, tmp_path)
        assert bad.returncode != 0 and "signature" in bad.stderr.lower()


@needs_registry
def test_atomicsig_put_then_verify_via_lookaside(registry, signer: GpgHome, signer_pub: Path, tmp_path: Path,
                                                 cli) -> None:  # type: ignore[no-untyped-def]
    """One atomicsig PUTs through the extension API, a second verifies through lookaside GETs."""
    digest = push_image(registry.host, "serve/put:1", "serve-put", tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    tokfile = tmp_path / "token"
    tokfile.write_text(TOKEN)
    app = SignatureServer(ServerConfig(sigstore=store, write_token=TOKEN))
    with run_wsgi(app) as base:
        ref = f"{registry.host}/serve/put:1"
        code, out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore",
                             base, "--sigstore-token-file", str(tokfile), "--tls-verify=false", ref)
        assert code == 0, err
        assert (store / f"serve/put@{digest.replace(':', '=')}" / "signature-1").is_file()
        # A second sign with the same key is recognized as already done (read through lookaside GET).
        code, out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore",
                             base, "--sigstore-token-file", str(tokfile), "--tls-verify=false", ref)
        assert code == 0 and "1 already signed" in err
        code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", base, "--tls-verify=false", ref)
        assert code == 0, out + err
        code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", base, "--tls-verify=false",
                             f"{registry.host}/serve/other:1@sha256:{hashlib.sha256(b'x').hexdigest()}")
        assert code == 1, out + err


def test_serve_command_tls_config_access_log(tmp_path: Path, blobs: list[bytes]) -> None:
    """The real `atomicsig serve` process: YAML config + flags, TLS, token file, access log, SIGTERM."""
    import subprocess

    from tests.infra import free_port, kill_group, wait_http
    from tests.tokenserver import self_signed

    cert, key, _ = self_signed(tmp_path / "tls")
    store = tmp_path / "store"
    store.mkdir()
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    port = free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"sigstore: {store}\nlisten: 127.0.0.1:1\ntls-cert: {cert}\ntls-key: {key}\n"
                   f"token-file: {tok}\naccess-log: {tmp_path / 'access.log'}\n")
    proc = subprocess.Popen(["atomicsig", "serve", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        base = f"https://127.0.0.1:{port}"
        wait_http(base + "/healthz", ok=(200,), cafile=cert)
        r = requests.put(ext_url(base), data=put_body(blobs[5]), headers=AUTH, verify=str(cert), timeout=30)
        assert r.status_code == 201, r.text
        got = requests.get(f"{base}/{REPO}@sha256={'ab' * 32}/signature-1", verify=str(cert), timeout=10)
        assert got.content == blobs[5]
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(base + "/healthz", timeout=10, verify="/etc/ssl/certs/ca-certificates.crt")
    finally:
        kill_group(proc)
    assert proc.returncode == 0
    log = (tmp_path / "access.log").read_text()
    assert f'"PUT /extensions/v2/{REPO}/signatures/{DIGEST}" 201' in log
    assert TOKEN not in log


def test_serve_command_bad_input(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("serve", "--sigstore", str(tmp_path / "missing"))
    assert code == 2 and "not a directory" in err
    code, _, err = cli("serve", "--sigstore", str(tmp_path), "--tls-cert", str(tmp_path / "c.pem"))
    assert code == 2 and "both" in err
    (tmp_path / "short").write_text("abc\n")
    code, _, err = cli("serve", "--sigstore", str(tmp_path), "--token-file", str(tmp_path / "short"))
    assert code == 2 and "shorter" in err
    code, _, err = cli("serve", "--sigstore", str(tmp_path), "--listen", "nonsense")
    assert code == 2 and "HOST:PORT" in err


# ---- confined store reads (issue 12 #7): links, FIFOs, devices, oversize files ----------------------------------

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}'
M_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
HOSTILE = ["link-outside", "link-dev-zero", "fifo", "oversize", "dir-link"]


def _plant(kind: str, root: Path, outside: Path, good: bytes, other_good: bytes) -> Path:
    """A store for ``ns/app@M_DIGEST`` with a valid ``signature-1`` and a hostile ``signature-2`` (for
    ``dir-link``: the repository directory ``ns`` itself is a link to a directory outside holding a valid
    signature). Returns the digest directory."""
    digest_dir = root / f"ns/app@{M_DIGEST.replace(':', '=')}"
    outside.mkdir(exist_ok=True)
    if kind == "dir-link":
        real = outside / "ns" / digest_dir.name
        real.mkdir(parents=True)
        (real / "signature-1").write_bytes(good)
        root.mkdir(exist_ok=True)
        (root / "ns").symlink_to(outside / "ns")
        return digest_dir
    digest_dir.mkdir(parents=True)
    (digest_dir / "signature-1").write_bytes(good)
    hostile = digest_dir / "signature-2"
    if kind == "link-outside":
        (outside / "secret-signature").write_bytes(other_good)  # a *valid* signature, so verify would accept it
        hostile.symlink_to(outside / "secret-signature")
    elif kind == "link-dev-zero":
        hostile.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(hostile)
    elif kind == "oversize":
        hostile.write_bytes(other_good + b"\0" * (4 * 1024 * 1024 + 1 - len(other_good)))
    return digest_dir


def _release_fifo(digest_dir: Path) -> None:
    """A reader blocked opening the FIFO (the defect) is released, so a failing run ends instead of hanging."""
    fifo = digest_dir / "signature-2"
    if fifo.exists() and not fifo.is_file() and not fifo.is_symlink():
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.fixture(scope="module")
def manifest_blobs(signer: GpgHome, other_signer: GpgHome) -> tuple[bytes, bytes]:
    return (signer.sign_image("registry.example/ns/app:1", M_DIGEST),
            signer.sign_image("registry.example/ns/app:2", M_DIGEST))


@pytest.mark.parametrize("kind", HOSTILE)
def test_serve_routes_read_only_regular_files(tmp_path: Path, manifest_blobs: tuple[bytes, bytes],
                                              kind: str) -> None:
    """Both routes agree: the hostile entry is 404 on the lookaside GET, and the extension listing ends before it
    (what a node reading the lookaside sees). Nothing outside the store is served, nothing blocks or explodes."""
    good, other = manifest_blobs
    root = tmp_path / "store"
    digest_dir = _plant(kind, root, tmp_path / "outside", good, other)
    app = SignatureServer(ServerConfig(sigstore=root))
    try:
        with run_wsgi(app) as base:
            hexpart = M_DIGEST.split(":")[1]
            sig = f"{base}/ns/app@sha256={hexpart}/signature-"
            listing = requests.get(ext_url(base, "ns/app", M_DIGEST), timeout=10)
            if kind == "dir-link":
                assert requests.get(sig + "1", timeout=10).status_code == 404
                assert listing.status_code == 404, listing.text[:200]
            else:
                assert requests.get(sig + "1", timeout=10).content == good
                assert requests.get(sig + "2", timeout=10).status_code == 404
                assert requests.head(sig + "2", timeout=10).status_code == 404
                assert listing.status_code == 200
                assert [base64.b64decode(e["content"]) for e in listing.json()["signatures"]] == [good]
            assert base64.b64encode(other).decode() not in listing.text
    finally:
        _release_fifo(digest_dir)
        app.close()


def test_serve_journal_under_a_linked_directory_is_404(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "journal").write_text("outside the store\n")
    (root / ".atomicsig").symlink_to(outside)
    app = SignatureServer(ServerConfig(sigstore=root))
    with run_wsgi(app) as base:
        r = requests.get(f"{base}/.atomicsig/journal", timeout=10)
        assert r.status_code == 404 and b"outside" not in r.content


@pytest.mark.parametrize("kind", HOSTILE)
def test_verify_directory_sigstore_refuses_hostile_entries(tmp_path: Path, manifest_blobs: tuple[bytes, bytes],
                                                           signer_pub: Path, cli, kind: str,  # type: ignore[no-untyped-def]
                                                           ) -> None:
    """verify --sigstore DIR: c/image would follow the link (or block on the FIFO) and we will not, so we cannot
    tell what a node decides: exit 3 with the entry named, never ACCEPTED on a planted link, never a hang."""
    good, other = manifest_blobs
    root = tmp_path / "store"
    digest_dir = _plant(kind, root, tmp_path / "outside", good, other)
    mf = tmp_path / "manifest.json"
    mf.write_bytes(MANIFEST)
    try:
        code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", str(root), "--manifest", str(mf),
                             f"registry.example/ns/app@{M_DIGEST}")
    finally:
        _release_fifo(digest_dir)
    assert code == 3, (code, out, err)
    assert "refusing to read" in out + err or "outside the sigstore" in out + err, out + err
    # The same store without the hostile entry verifies: the refusal is about that entry, not the store.
    if kind != "dir-link":
        (digest_dir / "signature-2").unlink()
        code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", str(root), "--manifest", str(mf),
                             f"registry.example/ns/app@{M_DIGEST}")
        assert code == 0, out + err


@pytest.mark.parametrize("kind", ["link-outside", "fifo", "oversize"])
def test_index_skips_hostile_entries(tmp_path: Path, manifest_blobs: tuple[bytes, bytes], cli,  # type: ignore[no-untyped-def]
                                     kind: str) -> None:
    """`atomicsig index` reads the store like serve does: the journal lists signature-1, not the planted entry."""
    good, other = manifest_blobs
    root = tmp_path / "store"
    digest_dir = _plant(kind, root, tmp_path / "outside", good, other)
    try:
        code, out, err = cli("index", str(root))
    finally:
        _release_fifo(digest_dir)
    assert code == 0, out + err
    journal = (root / ".atomicsig" / "journal").read_text()
    assert f"{digest_dir.name}/signature-1 {hashlib.sha256(good).hexdigest()}" in journal
    assert "signature-2" not in journal


# ---- start-up: bind first, then announce (issue 11 #4) ----------------------------------------------------------


def _serve_proc(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "atomicsig", "serve", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_serve_on_a_busy_port_fails_cleanly(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        proc = _serve_proc("--sigstore", str(tmp_path), "--listen", f"127.0.0.1:{port}")
    finally:
        busy.close()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"atomicsig: error: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert proc.stdout == ""


def test_serve_with_unknown_user_fails_before_announcing(tmp_path: Path) -> None:
    proc = _serve_proc("--sigstore", str(tmp_path), "--listen", "127.0.0.1:0", "--user", "no-such-user-xyz")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "atomicsig: error: --user no-such-user-xyz: no such user\n"


def test_serve_announces_the_bound_port(tmp_path: Path) -> None:
    """Port 0 binds a free port; the banner names the real one (it is printed only once the socket is bound)."""
    import sys

    from tests.infra import kill_group

    proc = subprocess.Popen([sys.executable, "-m", "atomicsig", "serve", "--sigstore", str(tmp_path), "--listen",
                             "127.0.0.1:0"], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
        assert banner.startswith(f"atomicsig serve: {tmp_path} on http://127.0.0.1:"), banner
        port = int(banner.split("http://127.0.0.1:", 1)[1].split(" ", 1)[0])
        assert port > 0
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).text == "ok\n"
    finally:
        kill_group(proc)  # type: ignore[arg-type]


def test_read_regular_file_rules(tmp_path: Path) -> None:
    """The one confined-read helper: the root may be a link (an admin's choice), nothing below it may be; names
    are plain relative paths; a missing file is FileNotFoundError (a gap), not an UnsafeFileError."""
    from atomicsig import fsutil

    real = tmp_path / "disk" / "sigstore"
    (real / "ns" / "d").mkdir(parents=True)
    (real / "ns" / "d" / "signature-1").write_bytes(b"sig")
    (tmp_path / "root-link").symlink_to(real)
    assert fsutil.read_regular_file(tmp_path / "root-link", "ns/d/signature-1", 10) == b"sig"
    (real / "alias").symlink_to(real / "ns")  # a link below the root, even one staying inside, is refused
    with pytest.raises(fsutil.UnsafeFileError) as exc:
        fsutil.read_regular_file(real, "alias/d/signature-1", 10)
    assert exc.value.why == "symlink"
    for bad in ("../sigstore/ns/d/signature-1", "/etc/passwd", "ns//d/signature-1", "ns/./d/signature-1", ""):
        with pytest.raises(fsutil.UnsafeFileError) as exc:
            fsutil.read_regular_file(real, bad, 10)
        assert exc.value.why == "bad-name", bad
    with pytest.raises(fsutil.UnsafeFileError) as exc:
        fsutil.read_regular_file(real, "ns/d/signature-1", 2)
    assert exc.value.why == "too-large"
    with pytest.raises(FileNotFoundError):
        fsutil.read_regular_file(real, "ns/d/signature-2", 10)
    with pytest.raises(fsutil.UnsafeFileError) as exc:
        fsutil.read_regular_file(real, "ns/d", 10)
    assert exc.value.why == "not-regular"
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with contextlib.suppress(fsutil.UnsafeFileError, FileNotFoundError):
            fsutil.read_regular_file(real, "alias/d/signature-1", 10)
        fsutil.read_regular_file(real, "ns/d/signature-1", 10)
    assert len(os.listdir("/proc/self/fd")) <= before + 2  # no descriptor leaks on either path
