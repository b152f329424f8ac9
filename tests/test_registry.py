"""RegistryClient against real registries (htpasswd Basic, token auth, multi-arch) and real misbehaving servers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from atomicsig.errors import InputError, RegistryAuthError, RegistryError
from atomicsig.format import manifest
from atomicsig.format.reference import parse
from atomicsig.net import auth
from atomicsig.net import registry as registry_mod
from atomicsig.net.registry import RegistryClient
from tests.conftest import HAVE_REGISTRY, HAVE_SKOPEO, needs_registry
from tests.infra import (
    FakeServer,
    Registry,
    Reply,
    free_port,
    insecure_policy,
    make_oci_layout,
    push_image,
    registries_d,
    signed_by_policy,
    skopeo,
    skopeo_pull,
)
from tests.tokenserver import TokenServer, self_signed

USER, PASSWORD = "alice", "s3cret-pw"


@pytest.fixture(autouse=True)
def _fresh_clients() -> None:
    registry_mod._clients.clear()


def authfile_for(path: Path, host: str, user: str = USER, pw: str = PASSWORD) -> Path:
    path.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}}}))
    return path


# ---- auth files (pure) -------------------------------------------------------------------------------------------


def test_auth_file_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, xdg = tmp_path / "home", tmp_path / "run"
    (home / ".docker").mkdir(parents=True)
    (xdg / "containers").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    authfile_for(home / ".docker" / "config.json", "r.example", "docker", "pw1")
    assert auth.credentials("r.example", "ns/app") == ("docker", "pw1")
    (xdg / "containers" / "auth.json").write_text(json.dumps({"auths": {
        "r.example": {"auth": base64.b64encode(b"host:pw2").decode()},
        "r.example/ns": {"auth": base64.b64encode(b"ns:pw3").decode()}}}))
    assert auth.credentials("r.example", "ns/app") == ("ns", "pw3")  # most specific key wins
    assert auth.credentials("r.example", "other/app") == ("host", "pw2")
    env_file = authfile_for(tmp_path / "env.json", "r.example", "env", "pw4")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    assert auth.credentials("r.example", "ns/app") == ("env", "pw4")
    explicit = authfile_for(tmp_path / "explicit.json", "r.example", "cli", "pw5")
    assert auth.credentials("r.example", "ns/app", str(explicit)) == ("cli", "pw5")
    assert auth.credentials("elsewhere.example", "x", str(explicit)) is None
    with pytest.raises(InputError):
        auth.credentials("r.example", "x", str(tmp_path / "missing.json"))


# ---- misbehaving servers ------------------------------------------------------------------------------------------


@pytest.fixture
def scripted() -> Iterator[Callable[[dict[str, list[Reply]]], tuple[FakeServer, str]]]:
    """Start a registry-shaped fake answering from a script (replies per request path, the last one repeats)."""
    with contextlib.ExitStack() as stack:

        def start(routes: dict[str, list[Reply]]) -> tuple[FakeServer, str]:
            fake = stack.enter_context(FakeServer())
            for path, replies in routes.items():
                fake.script(path, *replies)
            return fake, fake.host
        yield start


@pytest.mark.slow
def test_retries_5xx_then_succeeds(scripted) -> None:  # type: ignore[no-untyped-def]
    app, host = scripted({"/v2/": [Reply(503), Reply(502), Reply(200, b"{}")]})
    client = RegistryClient(host, tls_verify=False, retries=3)
    client.ping()
    assert app.count("/v2/") == 3  # https fails (plain server), then http is retried twice


@pytest.mark.slow
def test_persistent_5xx_and_401(scripted) -> None:  # type: ignore[no-untyped-def]
    app, host = scripted({"/v2/": [Reply(500)]})
    with pytest.raises(RegistryError, match="HTTP 500"):
        RegistryClient(host, tls_verify=False, retries=2).ping()
    assert app.count("/v2/") == 3
    app, host = scripted({"/v2/": [Reply(200)],
                          "/v2/a/manifests/1": [Reply(401, headers={"WWW-Authenticate": 'Basic realm="x"'})]})
    with pytest.raises(RegistryAuthError, match="credentials"):
        RegistryClient(host, tls_verify=False).get_manifest(parse(f"{host}/a:1"))
    with pytest.raises(RegistryAuthError, match="refused"):
        RegistryClient(host, tls_verify=False, credentials=("u", "p")).get_manifest(parse(f"{host}/a:1"))


@pytest.mark.slow
def test_registry_down() -> None:
    port = free_port()
    with pytest.raises(RegistryError, match="cannot reach"):
        RegistryClient(f"127.0.0.1:{port}", tls_verify=False, retries=1).ping()


@pytest.mark.slow
def test_manifest_too_big_and_digest_mismatch(scripted) -> None:  # type: ignore[no-untyped-def]
    big = b'{"schemaVersion":2,"x":"' + b"a" * manifest.MAX_MANIFEST_SIZE + b'"}'
    good = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
    good_digest = "sha256:" + hashlib.sha256(good).hexdigest()
    other_digest = "sha256:" + "0" * 64
    ct = {"Content-Type": manifest.OCI_MANIFEST}
    _, host = scripted({
        "/v2/": [Reply(200)],
        "/v2/a/manifests/big": [Reply(200, big, ct)],
        "/v2/a/manifests/chunked": [Reply(200, big, ct, chunked=True)],
        f"/v2/a/manifests/{other_digest}": [Reply(200, good, ct)],
        "/v2/a/manifests/lying": [Reply(200, good, {**ct, "Docker-Content-Digest": other_digest})],
        "/v2/a/manifests/ok": [Reply(200, good, {**ct, "Docker-Content-Digest": good_digest})],
    })
    c = RegistryClient(host, tls_verify=False)
    ref = parse(f"{host}/a:1")
    for tag in ("big", "chunked"):
        with pytest.raises(RegistryError, match="larger than"):
            c.get_manifest(ref, tag)
    with pytest.raises(RegistryError, match="served a manifest with digest"):
        c.get_manifest(ref, other_digest)
    with pytest.raises(RegistryError, match="does not match"):
        c.get_manifest(ref, "lying")
    got = c.get_manifest(ref, "ok")
    assert got.digest == good_digest and got.data == good and got.media_type == manifest.OCI_MANIFEST


@pytest.mark.slow
def test_tls_failures_and_cert_dir(tmp_path: Path, scripted) -> None:  # type: ignore[no-untyped-def]
    # https to a plain-http port
    _, plain = scripted({"/v2/": [Reply(200)]})
    with pytest.raises(RegistryError):
        RegistryClient(plain, tls_verify=True, retries=0).ping()
    # a self-signed TLS server: refused, unless its CA is in --cert-dir or verification is off
    cert, key, _ = self_signed(tmp_path / "tls")
    with FakeServer(tls=(cert, key)) as tls_fake:
        tls_fake.script("/v2/", Reply(200, headers={"X-Registry-Supports-Signatures": "1"}))
        host = tls_fake.host
        with pytest.raises(RegistryError, match="TLS") as err:
            RegistryClient(host, retries=0).ping()
        assert "--cert-dir" in err.value.diagnostics()
        certs = tmp_path / "certs"
        certs.mkdir()
        (certs / "ca.crt").write_bytes(cert.read_bytes())
        c = RegistryClient(host, cert_dir=str(certs))
        assert c.supports_signatures and c.base_url().startswith("https://")
        assert RegistryClient(host, tls_verify=False).base_url().startswith("https://")


# ---- real docker-registry with Basic auth and with token auth ------------------------------------------------------


@pytest.mark.slow
@needs_registry
def test_htpasswd_basic_auth_tag_signing(tmp_path: Path, signer, signer_pub: Path, cli) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(tmp_path / "reg", htpasswd=(USER, PASSWORD)).start()
    try:
        digest = push_image(reg.host, "basic/app:1", "basic-app", tmp_path, creds=(USER, PASSWORD))
        good = authfile_for(tmp_path / "auth.json", reg.host)
        bad = authfile_for(tmp_path / "bad.json", reg.host, USER, "wrong")
        ref = parse(f"{reg.host}/basic/app:1")
        assert RegistryClient(reg.host, tls_verify=False, authfile=str(good)).get_manifest(ref).digest == digest
        with pytest.raises(RegistryAuthError, match="refused"):
            RegistryClient(reg.host, tls_verify=False, authfile=str(bad)).get_manifest(ref)
        with pytest.raises(RegistryAuthError, match="requires credentials"):
            RegistryClient(reg.host, tls_verify=False, authfile=str(authfile_for(tmp_path / "o.json", "x.y")),
                           ).get_manifest(ref)
        store = tmp_path / "store"
        code, _out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore",
                             str(store), "--tls-verify=false", "--authfile", str(good), str(ref))
        assert code == 0, err
        assert (store / f"basic/app@{digest.replace(':', '=')}" / "signature-1").is_file()
        code, _out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore",
                             str(store), "--tls-verify=false", "--authfile", str(bad), "--force", str(ref))
        assert code == 3 and "refused" in err
        policy = signed_by_policy(tmp_path / "policy.json", signer_pub)
        regd = registries_d(tmp_path / "regd", f"file://{store}")
        pulled = skopeo_pull(str(ref), policy, regd, tmp_path, creds=(USER, PASSWORD))
        assert pulled.returncode == 0, pulled.stderr
    finally:
        reg.stop()


@pytest.mark.slow
@needs_registry
def test_token_auth_real_registry(tmp_path: Path, signer, cli) -> None:  # type: ignore[no-untyped-def]
    with TokenServer(tmp_path / "token", USER, PASSWORD) as tokens:
        realm_base = tokens.url
        reg = Registry(tmp_path / "reg", token={"realm": f"{realm_base}/token", "service": tokens.service,
                                                "issuer": tokens.issuer, "rootcertbundle": str(tokens.cert)}).start()
        try:
            digest = push_image(reg.host, "tok/app:1", "tok-app", tmp_path, creds=(USER, PASSWORD))
            ref = parse(f"{reg.host}/tok/app:1")
            client = RegistryClient(reg.host, tls_verify=False, credentials=(USER, PASSWORD))
            assert client.get_manifest(ref).digest == digest
            issued = tokens.issued
            assert client.get_manifest(ref, digest).digest == digest
            assert tokens.issued == issued  # the token for the scope is reused
            with pytest.raises(RegistryAuthError):
                RegistryClient(reg.host, tls_verify=False, credentials=(USER, "wrong")).get_manifest(ref)
            authf = authfile_for(tmp_path / "auth.json", reg.host)
            store = tmp_path / "store"
            code, _out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path),
                                 "--sigstore", str(store), "--tls-verify=false", "--authfile", str(authf), str(ref))
            assert code == 0, err
        finally:
            reg.stop()


# ---- multi-arch: a real OCI index pushed with skopeo copy --all ---------------------------------------------------


def multiarch_layout(dest: Path) -> tuple[Path, list[str]]:
    entries = []
    for seed, arch in (("multi-amd64", "amd64"), ("multi-arm64", "arm64")):
        make_oci_layout(dest, seed, tag=arch, arch=arch)
        entry = json.loads((dest / "index.json").read_text())["manifests"][0]
        entry.pop("annotations", None)
        entry["platform"] = {"architecture": arch, "os": "linux"}
        entries.append(entry)
    index = json.dumps({"schemaVersion": 2, "mediaType": manifest.OCI_INDEX, "manifests": entries}).encode()
    h = hashlib.sha256(index).hexdigest()
    (dest / "blobs" / "sha256" / h).write_bytes(index)
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": manifest.OCI_INDEX, "digest": f"sha256:{h}", "size": len(index),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    return dest, [e["digest"] for e in entries]


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_SKOPEO and HAVE_REGISTRY), reason="needs skopeo and docker-registry")
def test_multiarch_index_sign_all(registry, signer, signer_pub: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    layout, instances = multiarch_layout(Path(tempfile.mkdtemp(dir=tmp_path)))
    skopeo("--policy", str(insecure_policy(tmp_path / "p.json")), "copy", "--quiet", "--all",
           "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{registry.host}/multi/app:1")
    ref = f"{registry.host}/multi/app:1"
    fetched = RegistryClient(registry.host, tls_verify=False).get_manifest(parse(ref))
    assert fetched.media_type == manifest.OCI_INDEX
    assert [i.digest for i in manifest.list_instances(fetched.data)] == instances
    store = tmp_path / "store"
    policy = signed_by_policy(tmp_path / "policy.json", signer_pub)
    regd = registries_d(tmp_path / "regd", f"file://{store}")
    code, out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore",
                         str(store), "--tls-verify=false", ref)
    assert code == 0, err
    assert sorted(os.listdir(store / "multi")) == [f"app@{fetched.digest.replace(':', '=')}"]
    # Only the list is signed: a node pulls the per-platform instance and finds no signature (SPEC §2.2).
    arch_ok = skopeo_pull(ref, policy, regd, tmp_path)
    assert arch_ok.returncode != 0
    code, out, err = cli("sign", "--key", signer.fingerprint, "--gnupghome", str(signer.path), "--sigstore",
                         str(store), "--tls-verify=false", "--all", "--json", ref)
    assert code == 0, err
    statuses = {r["digest"]: r["status"] for r in json.loads(out)["results"]}
    assert statuses == {fetched.digest: "exists", instances[0]: "signed", instances[1]: "signed"}
    pulled = skopeo_pull(ref, policy, regd, tmp_path)
    assert pulled.returncode == 0, pulled.stderr
