"""The signature extension API client, and store choice (extension API over registries.d) with real clients.

The "registry with the extension" is a spec-faithful front (SPEC §6): a FakeServer (tests/infra.py) that proxies
/v2/ to the real docker-registry, answers ``X-Registry-Supports-Signatures: 1``, serves the extension endpoints with
atomicsig's own server handler, and hands out the write token through a Bearer challenge's realm.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from atomicsig.errors import RegistryError
from atomicsig.format.extension_wire import decode_list, encode_entry, new_signature_name
from atomicsig.format.reference import parse
from atomicsig.net import registry as registry_mod
from atomicsig.net.registry import RegistryClient
from atomicsig.serve.server import ServerConfig, SignatureServer
from atomicsig.store.extension import ExtensionStore
from atomicsig.store.select import AutoStore
from atomicsig.store.sigdir import read_dir
from tests.conftest import needs_registry
from tests.infra import (
    FakeRequest,
    FakeServer,
    Reply,
    call_wsgi,
    push_image,
    registries_d,
    signed_by_policy,
    skopeo_pull,
)

TOKEN = "front-write-token-" + "z" * 16
DIGEST = "sha256:" + "ab" * 32


# ---- pure helpers ------------------------------------------------------------------------------------------------


def test_entry_roundtrip_and_filtering() -> None:
    name = new_signature_name(DIGEST)
    assert name.startswith(DIGEST + "@") and len(name.split("@")[1]) == 32
    assert new_signature_name(DIGEST) != name
    entry = encode_entry(name, b"\xa3blob")
    assert list(entry) == ["schemaVersion", "name", "type", "content"]
    body = json.dumps({"signatures": [entry, {**entry, "type": "sigstore"}, {**entry, "schemaVersion": 1},
                                      "junk"]}).encode()
    assert decode_list(body, "x") == [(name, b"\xa3blob")]
    assert decode_list(b"{}", "x") == []
    with pytest.raises(RegistryError):
        decode_list(b"not json", "x")
    with pytest.raises(RegistryError):
        decode_list(json.dumps({"signatures": [{**entry, "content": "!!"}]}).encode(), "x")


# ---- the fake registry front -------------------------------------------------------------------------------------


class RegistryFront(FakeServer):
    """Proxy /v2/ to a real registry; extension endpoints from atomicsig.serve.server; /token hands out TOKEN."""

    HOP = frozenset({"connection", "transfer-encoding", "keep-alive", "content-encoding"})
    SIG_HEADER = ("X-Registry-Supports-Signatures", "1")

    def __init__(self, upstream: str, sigstore: Path) -> None:
        super().__init__()
        self.upstream = upstream
        self.sigs = SignatureServer(ServerConfig(sigstore=sigstore, write_token=TOKEN))
        self.extension_calls: list[str] = []
        self.script("/token", Reply(200, json.dumps({"token": TOKEN}).encode(), {"Content-Type": "application/json"}))

    def handle(self, req: FakeRequest) -> Reply:
        if req.route.startswith("/extensions/"):
            authed = "authed" if req.headers.get("Authorization") else "anonymous"
            self.extension_calls.append(f"{req.command} {req.route} {authed}")
            reply = call_wsgi(self.sigs, req)
            challenge = f'Bearer realm="{self.url}/token",service="front"'
            reply.headers = [*((k, challenge if k == "WWW-Authenticate" else v) for k, v in reply.headers),
                             self.SIG_HEADER]
            return reply
        headers = {k: v for k, v in req.joined_headers().items()
                   if k.lower() not in ("host", "connection", "content-length")}
        data = req.body() if req.command not in ("GET", "HEAD") else None
        url = f"{self.upstream}{req.route}" + (f"?{req.query}" if req.query else "")
        resp = requests.request(req.command, url, headers=headers, data=data or None, stream=True,
                                allow_redirects=False, timeout=60)
        out = [(k, v) for k, v in resp.headers.items() if k.lower() not in self.HOP]
        return Reply(resp.status_code, resp.raw.stream(65536, decode_content=False), [*out, self.SIG_HEADER])


@pytest.fixture(scope="module")
def front(registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryFront, str]]:  # type: ignore[no-untyped-def]
    with RegistryFront(f"http://{registry.host}", tmp_path_factory.mktemp("front-sigs")) as app:
        yield app, app.host


@pytest.fixture(autouse=True)
def _fresh_clients() -> None:
    registry_mod._clients.clear()


# ---- ExtensionStore against the front ----------------------------------------------------------------------------


@pytest.mark.slow
@needs_registry
def test_extension_store_put_skip_read(front: tuple[RegistryFront, str], signer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app, host = front
    client = RegistryClient(host, tls_verify=False)
    assert client.supports_signatures
    store = ExtensionStore(client)
    ref = parse(f"{host}/ext/unit:1")
    assert store.read(ref, DIGEST) == []
    blob = signer.sign_image(str(ref), DIGEST)
    res = store.append(ref, DIGEST, blob)
    assert res.created
    again = store.append(ref, DIGEST, blob)
    assert not again.created and again.index == 1
    assert [s.blob for s in store.read(ref, DIGEST)] == [blob]
    puts = [c for c in app.extension_calls if c.startswith("PUT") and c.endswith(" authed")]
    assert len(puts) == 1  # the duplicate was skipped client-side, not sent


@pytest.mark.slow
@needs_registry
def test_extension_store_put_refused(front: tuple[RegistryFront, str]) -> None:
    """Anything but 201 is a failure (here: 400 for a blob that is not a signature)."""
    _, host = front
    store = ExtensionStore(RegistryClient(host, tls_verify=False))
    with pytest.raises(RegistryError, match="HTTP 400"):
        store.append(parse(f"{host}/ext/bad:1"), DIGEST, b"\xa3not really")


# ---- store choice with real skopeo and the CLI ------------------------------------------------------------------


@pytest.mark.slow
@needs_registry
def test_sign_auto_prefers_extension_and_skopeo_reads_it(front: tuple[RegistryFront, str], registry, signer,
                                                         signer_pub: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    app, host = front
    digest = push_image(registry.host, "ext/app:1", "ext-app", tmp_path)
    push_image(registry.host, "ext/unsigned:1", "ext-unsigned", tmp_path)
    staging = tmp_path / "staging"
    regd = tmp_path / "regd"
    regd.mkdir()
    (regd / "x.yaml").write_text(f"default-docker:\n  lookaside-staging: file://{staging}\n"
                                 f"  lookaside: file://{staging}\n")
    ref = f"{host}/ext/app:1"
    code, out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore", "auto",
                         "--registries.d", str(regd), "--tls-verify=false", ref)
    assert code == 0, err
    assert not staging.exists()  # registries.d ignored: the registry advertises the extension
    stored = read_dir(app.sigs.root / f"ext/app@{digest.replace(':', '=')}")
    assert len(stored) == 1
    assert any(c.startswith("PUT /extensions/v2/ext/app/signatures/") for c in app.extension_calls)
    code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", "auto", "--registries.d", str(regd),
                         "--tls-verify=false", ref)
    assert code == 0, out + err
    # skopeo (c/image) itself reads the signature through the extension API and accepts the image…
    policy = signed_by_policy(tmp_path / "policy.json", signer_pub)
    empty_regd = registries_d(tmp_path / "regd-empty", f"file://{tmp_path / 'nowhere'}")
    ok = skopeo_pull(ref, policy, empty_regd, tmp_path)
    assert ok.returncode == 0, ok.stderr
    # …and refuses the unsigned one.
    bad = skopeo_pull(f"{host}/ext/unsigned:1", policy, empty_regd, tmp_path)
    assert bad.returncode != 0


@pytest.mark.slow
@needs_registry
def test_sign_auto_without_extension_uses_registries_d(registry, signer, signer_pub: Path, tmp_path: Path,
                                                       cli) -> None:  # type: ignore[no-untyped-def]
    digest = push_image(registry.host, "auto/app:1", "auto-app", tmp_path)
    staging = tmp_path / "staging"
    regd = tmp_path / "regd"
    regd.mkdir()
    (regd / "x.yaml").write_text(f"docker:\n  {registry.host}/auto:\n    lookaside-staging: file://{staging}\n"
                                 f"    lookaside: file://{staging}\n")
    ref = f"{registry.host}/auto/app:1"
    code, out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore", "auto",
                         "--registries.d", str(regd), "--tls-verify=false", ref)
    assert code == 0, err
    assert (staging / f"auto/app@{digest.replace(':', '=')}" / "signature-1").is_file()
    code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", "auto", "--registries.d", str(regd),
                         "--tls-verify=false", ref)
    assert code == 0, out + err
    # An http lookaside is not writable: a clear input error, exit 2.
    (regd / "x.yaml").write_text(f"docker:\n  {registry.host}/auto:\n    lookaside: http://127.0.0.1:1/sigs\n")
    code, out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore", "auto",
                         "--registries.d", str(regd), "--tls-verify=false", "--force", ref)
    assert code == 2 and "only file: can be written" in err


def test_auto_store_describe(tmp_path: Path) -> None:
    assert "registries.d" in AutoStore(registries_dir=tmp_path).describe()


def test_b64_is_standard_alphabet() -> None:
    # c/image decodes Go []byte = standard base64 with padding; '+' and '/' must survive.
    entry = encode_entry("n", b"\xfb\xff\xfe")
    assert entry["content"] == base64.b64encode(b"\xfb\xff\xfe").decode() == "+//+"
