"""Policy YAML parsing: line-numbered errors, unknown keys refused, scopes and identities (docs/policy.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from atomicsig import registries_d
from atomicsig.errors import PolicyError
from atomicsig.policy import policyjson, render, schema
from atomicsig.policy.keymaterial import KeyMaterial

FPR = "A" * 40


def parse(text: str) -> schema.PolicySpec:
    return schema.loads(text, "p.yaml", "/base")


def error_of(text: str) -> str:
    with pytest.raises(PolicyError) as exc:
        parse(text)
    return exc.value.message


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("default: reject\nscopes:\n  quay.io/ns:\n    action: accept\n    lookside: https://x\n", 5,
     "unknown key 'lookside' in scope 'quay.io/ns'; did you mean 'lookaside'?"),
    ("default: reject\nkeyz: {}\n", 2, "unknown key 'keyz' in the policy"),
    ("default: maybe\n", 1, "default must be 'reject' or 'accept'"),
    ("scopes: {}\n", 1, "missing required key 'default'"),
    ("default: reject\nscopes:\n  quay.io/NS: {action: accept}\n", 3, "invalid scope 'quay.io/NS'"),
    ("default: reject\nscopes:\n  ns/app: {action: accept}\n", 3, "must start with the registry host"),
    ("default: reject\nscopes:\n  '*.example.com:5000': {action: accept}\n", 3, "invalid wildcard scope"),
    ("default: reject\nscopes:\n  index.docker.io/x: {action: accept}\n", 3, "normalizes index.docker.io"),
    ("default: reject\nscopes:\n  quay.io: {action: accept}\n  quay.io: {action: reject}\n", 4,
     "duplicate key 'quay.io' (first defined at line 3)"),
    ("default: reject\nscopes:\n  quay.io:\n    signed-by: [nokey]\n", 4, "unknown key 'nokey'"),
    ("default: reject\nscopes:\n  quay.io:\n    action: accept\n    lookaside: https://s.example.com/sigs/\n", 5,
     "remove the trailing '/'"),
    ("default: reject\nscopes:\n  quay.io:\n    action: accept\n    lookaside-staging: https://s.example.com\n", 5,
     "scheme must be file"),
    ("default: reject\nscopes:\n  quay.io:\n    action: accept\n    use-sigstore-attachments: 'yes'\n", 5,
     "must be true or false"),
    (f"default: reject\nkeys:\n  k: {{fingerprint: {FPR}}}\nscopes:\n  quay.io:\n    action: accept\n"
     "    signed-by: k\n", 6, "action accept takes no keys"),
    (f"default: reject\nkeys:\n  k: {{fingerprint: {FPR}}}\nscopes:\n  quay.io:\n    signed-by: k\n"
     "    identity: {type: matchEverything}\n", 7, "unknown signedIdentity type"),
    (f"default: reject\nkeys:\n  k: {{fingerprint: {FPR}}}\nscopes:\n  quay.io:\n    signed-by: k\n"
     "    identity: {type: remapIdentity, prefix: quay.io}\n", 7, "'signedPrefix' missing"),
    ("default: reject\nkeys:\n  k: {fingerprint: 1234}\n", 3, "fingerprint must be 40 hex digits"),
    ("default: reject\nkeys:\n  k: {file: a.gpg, fingerprint: " + FPR + "}\n", 3, "exactly one of"),
    ("default: reject\nkeys:\n  k: {cosign: c.pub}\nscopes:\n  quay.io:\n    signed-by: k\n", 6,
     "signed-by needs an OpenPGP key"),
    ("default: reject\nscopes:\n  quay.io: [\n", 4, "invalid YAML"),
])
def test_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    msg = error_of(text)
    assert msg.startswith(f"p.yaml:{line}:"), msg
    assert fragment in msg


@pytest.mark.parametrize("scope", [
    "quay.io", "localhost", "localhost:5000", "registry.example.com:5000/a/b", "docker.io/library",
    "docker.io/library/busybox:1.36", f"quay.io/ns/app@sha256:{'a' * 64}", "*.example.com", "127.0.0.1:5000/ns",
])
def test_every_scope_level_is_accepted(scope: str) -> None:
    spec = parse(f"default: reject\nscopes:\n  '{scope}': {{action: accept}}\n")
    assert spec.scopes[0].scope == scope


IDENTITIES = {
    "matchExact": "{type: matchExact}",
    "matchRepoDigestOrExact": "{type: matchRepoDigestOrExact}",
    "matchRepository": "{type: matchRepository}",
    "exactReference": "{type: exactReference, dockerReference: 'quay.io/ns/app:1'}",
    "exactRepository": "{type: exactRepository, dockerRepository: quay.io/ns/app}",
    "remapIdentity": "{type: remapIdentity, prefix: 'mirror.example.com:5000/ns', signedPrefix: quay.io/ns}",
}


@pytest.mark.parametrize("kind", sorted(IDENTITIES))
def test_all_six_identity_kinds_compile_to_valid_policy(kind: str) -> None:
    spec = parse(f"default: reject\nkeys:\n  k: {{fingerprint: {FPR}}}\nscopes:\n  quay.io/ns:\n"
                 f"    signed-by: k\n    identity: {IDENTITIES[kind]}\n")
    compiled = render.compile_spec(spec, {"k": KeyMaterial("k", "fingerprint", b"\x99key")})
    doc = render.merge(policyjson.SHIPPED_DEFAULT, compiled, set())
    assert policyjson.problems(doc) == []
    (req,) = doc["transports"]["docker"]["quay.io/ns"]
    assert req["signedIdentity"]["type"] == kind


def test_any_of_keys_is_one_signedby_with_one_combined_keyring() -> None:
    spec = parse(f"default: reject\nkeys:\n  old: {{fingerprint: {FPR}}}\n  new: {{fingerprint: {'B' * 40}}}\n"
                 "scopes:\n  quay.io/ns:\n    signed-by: [old, new]\n")
    keys = {"old": KeyMaterial("old", "fingerprint", b"OLD"), "new": KeyMaterial("new", "fingerprint", b"NEW")}
    compiled = render.compile_spec(spec, keys)
    reqs = compiled.docker_scopes["quay.io/ns"]
    path = f"/etc/pki/containers/atomicsig-new+old-{hashlib.sha256(b'NEWOLD').hexdigest()[:12]}.gpg"
    assert reqs == [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": path}]
    assert compiled.files[path] == b"NEWOLD"


def test_gpg_and_cosign_are_anded_and_attachments_default_on() -> None:
    spec = parse(f"default: reject\nkeys:\n  g: {{fingerprint: {FPR}}}\n  c1: {{cosign: c1.pub}}\n"
                 "  c2: {cosign: c2.pub}\nscopes:\n  quay.io/ns:\n    signed-by: g\n    sigstore-signed-by: [c1, c2]\n"
                 "    lookaside: https://sigs.example.com\n")
    keys = {"g": KeyMaterial("g", "fingerprint", b"G"), "c1": KeyMaterial("c1", "cosign", b"P1"),
            "c2": KeyMaterial("c2", "cosign", b"P2")}
    assert spec.keys["c1"].value == "/base/c1.pub"
    compiled = render.compile_spec(spec, keys, registries_keys="both")
    types = [r["type"] for r in compiled.docker_scopes["quay.io/ns"]]
    assert types == ["signedBy", "sigstoreSigned"]
    assert compiled.docker_scopes["quay.io/ns"][1]["keyPaths"] == [
        f"/etc/pki/containers/atomicsig-c{i}-{hashlib.sha256(b'P%d' % i).hexdigest()[:12]}.pub" for i in (1, 2)]
    regd = compiled.files["/etc/containers/registries.d/atomicsig.yaml"].decode()
    assert "lookaside: https://sigs.example.com\n" in regd and "sigstore: https://sigs.example.com\n" in regd
    assert "use-sigstore-attachments: true" in regd


def test_one_registries_d_file_and_content_addressed_keyrings() -> None:
    """Every lookaside scope in one file (one rename switches them all); a keyring's name changes with its bytes
    only, so an unchanged YAML compiles to the same names and a changed key never overwrites a file in use."""
    text = ("default: reject\nkeys:\n  k: {fingerprint: " + FPR + "}\nscopes:\n"
            "  quay.io/a-b: {action: accept, lookaside: https://x.example}\n"
            "  quay.io/a/b: {action: accept, lookaside: https://y.example}\n"
            "  '*.example.com': {signed-by: k, lookaside: 'file:///srv/sigs'}\n"
            "  registry.example.com:5000/ns: {signed-by: k}\n")
    spec = parse(text)
    one = render.compile_spec(spec, {"k": KeyMaterial("k", "fingerprint", b"K1")})
    assert set(one.registries_files()) == {render.REGISTRIES_FILE}
    cfg = registries_d.RegistriesConfig()
    registries_d.merge_file(cfg, one.files[render.REGISTRIES_FILE].decode(), "atomicsig.yaml")
    assert {s: c.url(write=False) for s, c in cfg.docker.items()} == {
        "quay.io/a-b": "https://x.example", "quay.io/a/b": "https://y.example", "*.example.com": "file:///srv/sigs"}
    again = render.compile_spec(spec, {"k": KeyMaterial("k", "fingerprint", b"K1")})
    changed = render.compile_spec(spec, {"k": KeyMaterial("k", "fingerprint", b"K2")})
    assert again.files == one.files
    assert set(one.key_files()) == {f"/etc/pki/containers/atomicsig-k-{hashlib.sha256(b'K1').hexdigest()[:12]}.gpg"}
    assert set(changed.key_files()).isdisjoint(one.key_files())
    assert changed.registries_files() == one.registries_files()


def test_legacy_sigstore_keys_only() -> None:
    spec = parse("default: accept\nscopes:\n  quay.io: {action: accept, lookaside: https://x.example, "
                 "lookaside-staging: 'file:///srv/s'}\n")
    text = render.compile_spec(spec, {}, registries_keys="sigstore").files[
        "/etc/containers/registries.d/atomicsig.yaml"].decode()
    assert "sigstore: https://x.example" in text and "sigstore-staging: file:///srv/s" in text
    assert "lookaside" not in text.replace("Managed", "")


def test_policyjson_validator_matches_c_image_strictness() -> None:
    assert policyjson.problems({"default": []}) == ["default: requirement list must be a non-empty array"]
    assert "unknown key 'keyPaths2' in signedBy" in policyjson.problems(
        {"default": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k", "keyPaths2": []}]})[0]
    assert policyjson.problems({"default": [{"type": "reject"}],
                                "transports": {"docker-archive": {"x": [{"type": "reject"}]}}})
    with pytest.raises(PolicyError, match="not valid JSON"):
        policyjson.loads('{"default": [], "default": []}', "p.json")


@pytest.mark.parametrize("example", sorted(Path(__file__).parent.parent.joinpath("policies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_examples_compile_to_valid_policy(example: Path) -> None:
    spec = schema.load(example)
    assert spec.scopes
    keys = {n: KeyMaterial(n, d.kind, b"k") for n, d in spec.keys.items()}
    doc = render.merge(policyjson.SHIPPED_DEFAULT, render.compile_spec(spec, keys), set())
    assert policyjson.problems(doc) == []
    for reqs in doc["transports"]["docker"].values():
        assert sum(r["type"] == "signedBy" for r in reqs) <= 1
