"""Mirrors in the policy YAML (``mirror-of:`` → remapIdentity + a registries.d entry, issue 15 item 2) and the
signature URL ``policy explain`` prints (issue 15 item 5).

Fast tests compile YAML and read trees; the slow ones pull with real skopeo and podman from a second
docker-registry that holds ``skopeo copy --all`` copies of upstream images, with the upstream's signatures in the
mirror's lookaside under the mirror's repository path (SPEC §3.1: the physical reference picks the path).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from atomicsig.errors import PolicyError
from atomicsig.format.sigpath import signature_relpath
from atomicsig.policy import schema
from atomicsig.policy.compile import compiled_from
from atomicsig.store.registries_d import signature_location
from tests.conftest import HAVE_PODMAN
from tests.infra import (
    FakeRequest,
    FakeServer,
    GpgHome,
    PolicyRoot,
    Registry,
    Reply,
    apply_policy,
    assert_pulled,
    insecure_policy,
    podman_pull,
    push_image,
    running,
    serve_sigstore,
    skopeo,
    skopeo_pull,
)

HEX = "ab" * 32


def _yaml(keyfile: Path, scope_body: str, scope: str = "mirror.example.com:5000/vendor") -> str:
    return f"default: reject\nkeys:\n  vendor: {{file: {keyfile}}}\nscopes:\n  '{scope}':\n{scope_body}"


# ---- the YAML ------------------------------------------------------------------------------------------------------


def test_mirror_of_compiles_to_remap_identity_and_local_lookaside(signer_pub: Path) -> None:
    spec = schema.loads(_yaml(signer_pub, "    mirror-of: vendor.example.com\n    signed-by: vendor\n"))
    compiled = compiled_from(spec, None).compiled
    (req,) = compiled.docker_scopes["mirror.example.com:5000/vendor"]
    assert req["signedIdentity"] == {"type": "remapIdentity", "prefix": "mirror.example.com:5000/vendor",
                                     "signedPrefix": "vendor.example.com"}
    regd = compiled.files["/etc/containers/registries.d/atomicsig.yaml"].decode()
    assert "mirror.example.com:5000/vendor:\n    lookaside: file:///var/lib/atomic/sigstore\n" in regd
    assert spec.scopes[0].mirror_of == "vendor.example.com"


def test_mirror_of_lookaside_is_configurable(signer_pub: Path) -> None:
    spec = schema.loads(_yaml(signer_pub, "    mirror-of: vendor.example.com/product\n    signed-by: vendor\n"
                                          "    lookaside: https://mirror.example.com/sigstore\n"))
    regd = compiled_from(spec, None).compiled.files["/etc/containers/registries.d/atomicsig.yaml"].decode()
    assert "lookaside: https://mirror.example.com/sigstore" in regd
    assert "/var/lib/atomic/sigstore" not in regd


@pytest.mark.parametrize(("scope", "body", "message"), [
    ("mirror.example.com:5000/vendor:1.0", "    mirror-of: vendor.example.com\n    signed-by: vendor\n",
     "a mirror-of scope must be a host[:port] or host/namespace"),
    ("*.example.com", "    mirror-of: vendor.example.com\n    signed-by: vendor\n",
     "a mirror-of scope must be a host[:port] or host/namespace"),
    ("mirror.example.com/vendor", "    mirror-of: vendor\n    signed-by: vendor\n", "registry host"),
    ("mirror.example.com/vendor", "    mirror-of: vendor.example.com/app:1\n    signed-by: vendor\n",
     "mirror-of 'vendor.example.com/app:1' must be a host[:port] or host/namespace"),
    ("mirror.example.com/vendor", f"    mirror-of: vendor.example.com/app@sha256:{HEX}\n    signed-by: vendor\n",
     "must be a host[:port] or host/namespace"),
    ("mirror.example.com/vendor", "    mirror-of: '*.example.com'\n    signed-by: vendor\n", "mirror-of"),
    ("mirror.example.com/vendor", "    mirror-of: mirror.example.com/vendor\n    signed-by: vendor\n",
     "names the scope itself"),
    ("mirror.example.com/vendor", "    mirror-of: vendor.example.com\n    action: accept\n",
     "takes no keys, identity or mirror-of"),
    ("mirror.example.com/vendor", "    mirror-of: vendor.example.com\n    signed-by: vendor\n"
                                  "    identity: {type: matchRepository}\n", "mirror-of sets the identity"),
    ("mirror.example.com/vendor", "    mirror-of: [vendor.example.com]\n    signed-by: vendor\n", "mirror-of"),
])
def test_mirror_of_refused(signer_pub: Path, scope: str, body: str, message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        schema.loads(_yaml(signer_pub, body, scope), "p.yaml")
    assert message in exc.value.message and exc.value.message.startswith("p.yaml:"), exc.value.message


# ---- the signature URL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "url"), [
    ("https://sigs.example.com/base", f"https://sigs.example.com/base/vendor/app@sha256={HEX}/signature-1"),
    ("https://sigs.example.com/base/", f"https://sigs.example.com/base//vendor/app@sha256={HEX}/signature-1"),
    ("https://h/a%20b?x=1", f"https://h/a%20b/vendor/app@sha256={HEX}/signature-1?x=1"),
    ("HTTP://h:8080", f"http://h:8080/vendor/app@sha256={HEX}/signature-1"),
    ("file:///var/lib/atomic/sigstore", f"file:///var/lib/atomic/sigstore/vendor/app@sha256={HEX}/signature-1"),
])
def test_signature_location(base: str, url: str) -> None:
    assert signature_location(base, "vendor/app", HEX).url == url


@pytest.mark.parametrize(("base", "reason"), [
    ("/mnt/sigstore", "no scheme"),                      # c/image: Unsupported scheme (docs even show this form)
    (":emptyscheme", "missing protocol scheme"),         # url.Parse fails
    ("ftp://h/sigs", "scheme 'ftp'"),
    ("file:relative/dir", "without an absolute path"),
    ("http:///sigs", "no host"),
    ("http://h:port/sigs", "Invalid signature storage URL"),
    ("http://h/%zz", "invalid URL escape"),
    ("http://h/a\x7fb", "control character"),
    ("1http://h/x", "first path segment"),
    (" https://h/x", "first path segment"),          # Go does not trim; Python's urlsplit would
])
def test_signature_location_refused_as_c_image_does(base: str, reason: str) -> None:
    with pytest.raises(PolicyError) as exc:
        signature_location(base, "vendor/app", HEX)
    assert reason in exc.value.message


def _tree(root: Path, policy: dict[str, Any], regd: str) -> None:
    (root / "etc/containers/registries.d").mkdir(parents=True)
    (root / "etc/containers/policy.json").write_text(json.dumps(policy))
    (root / "etc/containers/registries.d/test.yaml").write_text(regd)


def test_explain_reports_a_lookaside_c_image_refuses(cli: Any, tmp_path: Path) -> None:
    """Before: explain printed ':emptyscheme' as the lookaside and exited 0, as if pulls would read it."""
    _tree(tmp_path, {"default": [{"type": "insecureAcceptAnything"}]},
          "docker:\n  r.example.com/bad:\n    lookaside: ':emptyscheme'\n"
          "  r.example.com/plain:\n    lookaside: /mnt/sigstore\n"
          "  r.example.com/good:\n    lookaside: https://sigs.example.com/s\n")
    code, out, err = cli("policy", "explain", "--root", str(tmp_path), "r.example.com/bad/app:1")
    assert code == 2 and "missing protocol scheme" in err and "reads:" not in out, (out, err)
    code, out, err = cli("policy", "explain", "--root", str(tmp_path), "--json", "r.example.com/plain/app:1")
    info = json.loads(out)
    assert code == 2 and info["signature_url"] is None and "no scheme" in info["lookaside_error"]
    code, out, _ = cli("policy", "explain", "--root", str(tmp_path), f"r.example.com/good/app@sha256:{HEX}")
    assert code == 0
    assert f"reads:       https://sigs.example.com/s/good/app@sha256={HEX}/signature-1\n" in out
    assert "(from r.example.com/good (" in out and "test.yaml)" in out


# ---- real pulls from a mirror registry ------------------------------------------------------------------------------


@dataclass
class Mirror(PolicyRoot):
    upstream: str
    mirror: str
    lookaside: Path
    digests: dict[str, str]


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory, registry: Registry, signer: GpgHome,
             other_signer: GpgHome) -> Iterator[Mirror]:
    work = tmp_path_factory.mktemp("mirror-policy")
    up = registry.host
    with running(Registry(work / "mirror-registry")) as mreg:
        m = mreg.host
        insecure = insecure_policy(work / "insecure.json")
        digests = {}
        for name in ("app", "unsigned", "app2"):
            push_image(up, f"product/{name}:1", seed=f"mirror-{name}", workdir=work)
            skopeo("--policy", str(insecure), "copy", "--quiet", "--all", "--src-tls-verify=false",
                   "--dest-tls-verify=false", "--digestfile", str(work / f"{name}.digest"),
                   f"docker://{up}/product/{name}:1", f"docker://{m}/vendor/{name}:1")
            digests[name] = (work / f"{name}.digest").read_text().strip()
        lookaside = work / "lookaside"
        # The upstream's own signature (identity = the upstream name), stored under the MIRROR repo path.
        sigs = {"app": signer.sign_image(f"{up}/product/app:1", digests["app"]),
                # right key, but it vouches for another upstream repository
                "app2": signer.sign_image(f"{up}/product/other:1", digests["app2"])}
        for name, blob in sigs.items():
            path = lookaside / signature_relpath(f"vendor/{name}", digests[name], 1)
            path.parent.mkdir(parents=True)
            path.write_bytes(blob)
        signer.export_public(work / "vendor.gpg")
        (work / "policy.yaml").write_text(f"""\
default: reject
keys:
  vendor: {{file: vendor.gpg}}
scopes:
  {m}/vendor:
    mirror-of: {up}/product
    signed-by: vendor
    lookaside: file://{lookaside}
""")
        root = work / "root"
        apply_policy(work / "policy.yaml", root)
        yield Mirror(root, work, up, m, lookaside, digests)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "rejection"), [
    ("app", None),                                  # mirrored, upstream-signed: accepted via remapIdentity
    ("unsigned", "no signature exists"),            # mirrored without signature
    ("app2", "product/other:1 is not accepted"),    # signed by the right key, for another repository
])
def test_skopeo_pulls_from_mirror(mirrored: Mirror, name: str, rejection: str | None) -> None:
    assert_pulled(skopeo_pull(f"{mirrored.mirror}/vendor/{name}:1", mirrored.policy, mirrored.regd, mirrored.work),
                  rejection)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PODMAN, reason="needs podman")
@pytest.mark.parametrize(("name", "rejection"), [("app", None), ("unsigned", "no signature exists"),
                                                 ("app2", "is not accepted")])
def test_podman_pulls_from_mirror(mirrored: Mirror, short_workdir: Path, name: str,
                                  rejection: str | None) -> None:
    assert_pulled(podman_pull(f"{mirrored.mirror}/vendor/{name}:1", mirrored.policy, mirrored.regd, short_workdir),
                  rejection)


@pytest.mark.slow
def test_explain_on_mirror_shows_remap_and_the_file_the_pull_reads(cli: Any, mirrored: Mirror) -> None:
    code, out, err = cli("policy", "explain", "--root", str(mirrored.root), f"{mirrored.mirror}/vendor/app:1")
    assert code == 0, err
    assert (f"remapIdentity {mirrored.mirror}/vendor -> {mirrored.upstream}/product: signatures must claim "
            f"{mirrored.upstream}/product/app:1\n") in out
    assert "<manifest-sha256>/signature-1   (give REF@sha256:… for the exact URL)" in out
    ref = f"{mirrored.mirror}/vendor/app@{mirrored.digests['app']}"
    code, out, err = cli("policy", "explain", "--root", str(mirrored.root), ref)
    assert f"signatures must claim {mirrored.upstream}/product/app (any tag: pulled by digest)" in out
    code, out, _ = cli("policy", "explain", "--root", str(mirrored.root), "--json", ref)
    info = json.loads(out)
    assert Path(info["signature_path"]).is_file()  # the very file skopeo read in the accepted pull
    assert info["signature_url"] == f"file://{info['signature_path']}"


@pytest.mark.slow
def test_explained_http_url_is_what_serve_answers(cli: Any, mirrored: Mirror, tmp_path: Path) -> None:
    """The URL explain prints for an http lookaside fetches the signature from a real ``atomicsig serve``."""
    with serve_sigstore(mirrored.lookaside) as base:
        _tree(tmp_path, json.loads(mirrored.policy.read_text()),
              f"docker:\n  {mirrored.mirror}/vendor:\n    lookaside: {base}\n")
        code, out, err = cli("policy", "explain", "--root", str(tmp_path), "--json",
                             f"{mirrored.mirror}/vendor/app@{mirrored.digests['app']}")
        assert code == 0, err
        url = json.loads(out)["signature_url"]
        resp = requests.get(url, timeout=10)
    assert resp.status_code == 200
    body = resp.content
    assert body == (mirrored.lookaside / signature_relpath("vendor/app", mirrored.digests["app"], 1)).read_bytes()


class _RawPaths(FakeServer):
    """Records the raw request target (path and query as sent, before any decoding) and answers 404."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[str] = []

    def handle(self, req: FakeRequest) -> Reply | None:
        self.raw.append(req.path)
        return Reply(404, b"")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["/sigs", "/sigs/", "/a%20b;c?x=1&y=%2F"])
def test_explained_url_is_what_skopeo_requests(cli: Any, mirrored: Mirror, tmp_path: Path, suffix: str) -> None:
    """Differential: the signature-1 URL explain prints is the request target real skopeo sends (trailing '/',
    escapes and a query included)."""
    ref = f"{mirrored.mirror}/vendor/app@{mirrored.digests['app']}"
    with _RawPaths() as fake:
        _tree(tmp_path, json.loads(mirrored.policy.read_text()),
              f"docker:\n  {mirrored.mirror}/vendor:\n    lookaside: '{fake.url}{suffix}'\n")
        code, out, err = cli("policy", "explain", "--root", str(tmp_path), "--json", ref)
        assert code == 0, err
        url = json.loads(out)["signature_url"]
        proc = skopeo_pull(ref, tmp_path / "etc/containers/policy.json", tmp_path / "etc/containers/registries.d",
                           tmp_path)
        assert proc.returncode != 0 and "no signature exists" in proc.stderr, proc.stderr  # 404 = none
    assert fake.raw and fake.raw[0] == url.removeprefix(fake.url), (fake.raw, url)


@pytest.mark.slow
@pytest.mark.parametrize(("base", "skopeo_says"), [
    (":emptyscheme", "Invalid signature storage URL"),
    # current c/image: "Unsupported scheme"; skopeo 1.9.3 (Debian 12) dereferences nil and panics: fails all the same
    ("/mnt/sigstore", ("Unsupported scheme", "panic: runtime error")),
    ("ftp://127.0.0.1:9/sigs", "Unsupported scheme"),
])
def test_refused_lookaside_fails_skopeo_too(cli: Any, mirrored: Mirror, tmp_path: Path, base: str,
                                            skopeo_says: str | tuple[str, ...]) -> None:
    """Differential: what explain calls an error is what makes real skopeo fail the pull."""
    ref = f"{mirrored.mirror}/vendor/app@{mirrored.digests['app']}"
    _tree(tmp_path, json.loads(mirrored.policy.read_text()),
          f"docker:\n  {mirrored.mirror}/vendor:\n    lookaside: '{base}'\n")
    code, _, err = cli("policy", "explain", "--root", str(tmp_path), ref)
    assert code == 2 and "error:" in err
    proc = skopeo_pull(ref, tmp_path / "etc/containers/policy.json", tmp_path / "etc/containers/registries.d",
                       tmp_path)
    says = (skopeo_says,) if isinstance(skopeo_says, str) else skopeo_says
    assert proc.returncode != 0 and any(s in proc.stderr for s in says), proc.stderr
