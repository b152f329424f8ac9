"""Policy YAML parsing: line-numbered errors, unknown keys refused, scopes and identities (docs/policy.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomicsig.errors import InputError, PolicyError
from atomicsig.format import policyjson, validate
from atomicsig.policy import render, schema
from atomicsig.policy.keymaterial import KeyMaterial
from atomicsig.store import registries_d

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
    # audit mode (issue 14 #2): a boolean, and only on a scope with requirements to audit
    (f"default: reject\nkeys:\n  k: {{fingerprint: {FPR}}}\nscopes:\n  quay.io:\n    signed-by: k\n"
     "    enforce: 'false'\n", 7, "scope 'quay.io' enforce must be true or false"),
    (f"default: reject\nkeys:\n  k: {{fingerprint: {FPR}}}\nscopes:\n  quay.io:\n    signed-by: k\n"
     "    enforce: 0\n", 7, "enforce must be true or false"),
    ("default: reject\nscopes:\n  quay.io:\n    action: accept\n    enforce: false\n", 5,
     "enforce: false (audit mode) needs signature requirements; action accept has none"),
    ("default: reject\nscopes:\n  quay.io:\n    action: reject\n    enforce: false\n", 5,
     "action reject has none to audit"),
    ("default: reject\nscopes:\n  quay.io:\n    enforce: false\n", 4, "give 'action: accept|reject' or 'signed-by:'"),
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


def test_audit_mode_compiles_to_accept_now_and_the_sidecar() -> None:
    """``enforce: false``: policy.json accepts the scope, the sidecar holds its requirements (and parses back), the
    keyring and the lookaside are written as for an enforced scope; ``enforce: true`` is the default."""
    spec = parse(f"default: reject\nkeys:\n  k: {{fingerprint: {FPR}}}\nscopes:\n"
                 "  quay.io/ns: {signed-by: k, lookaside: 'https://sigs.example.com', enforce: false}\n"
                 "  quay.io/other: {signed-by: k, enforce: true}\n")
    assert [s.enforce for s in spec.scopes] == [False, True]
    compiled = render.compile_spec(spec, {"k": KeyMaterial("k", "fingerprint", b"K")})
    assert compiled.docker_scopes["quay.io/ns"] == [{"type": "insecureAcceptAnything"}]
    enforced = compiled.docker_scopes["quay.io/other"]
    assert compiled.audit_scopes == {"quay.io/ns": enforced}
    assert render.parse_audit_file(compiled.files[render.AUDIT_PATH], "x") == {"quay.io/ns": enforced}
    assert set(compiled.key_files()) == {enforced[0]["keyPath"]}
    assert "quay.io/ns:" in compiled.files[render.REGISTRIES_FILE].decode()
    plain = render.compile_spec(parse(f"default: reject\nkeys:\n  k: {{fingerprint: {FPR}}}\nscopes:\n"
                                      "  quay.io/ns: {signed-by: k}\n"), {"k": KeyMaterial("k", "fingerprint", b"K")})
    assert render.AUDIT_PATH not in plain.files and not plain.audit_scopes


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
    for s in spec.scopes:  # one signedBy per required signer: one for signed-by, plus one per signed-by-all entry
        reqs = doc["transports"]["docker"][s.scope]
        assert sum(r["type"] == "signedBy" for r in reqs) == len(s.required_signers)


# ---- atomicsig.validate: one validator per kind of value (issue 12 #13) -----------------------------------------

UNSAFE = ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\u200b", "\ufeff",
          "\ud800", "\ue000"]
_unsafe = st.sampled_from(UNSAFE) | st.characters(whitelist_categories=("Cc", "Cf", "Zl", "Zp"))


def _with_unsafe(valid: str) -> st.SearchStrategy[str]:
    return st.tuples(st.integers(0, len(valid)), _unsafe).map(lambda t: valid[:t[0]] + t[1] + valid[t[0]:])


@given(_with_unsafe("prod-key"))
def test_no_validator_accepts_an_unsafe_character(value: str) -> None:
    checks = [lambda v: validate.check_name("f", v), lambda v: validate.check_key_name("f", v),
              lambda v: validate.check_file_name("f", v), lambda v: validate.check_scope("f", "quay.io/" + v),
              lambda v: validate.check_url("f", "https://s.example.com/" + v),
              lambda v: validate.check_url("f", "file:///var/" + v), lambda v: validate.check_email("f", v + "@a.b")]
    for check in checks:
        with pytest.raises(InputError) as exc:
            check(value)
        assert exc.value.message.startswith("f: ") and "\n" not in exc.value.message  # one line, named field


@given(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,63}", fullmatch=True))
def test_every_key_name_of_the_grammar_is_accepted_and_is_a_file_name(name: str) -> None:
    assert validate.check_key_name("k", name) == name
    validate.check_file_name("f", f"atomicsig-{name}-{'a' * 12}.gpg")


@given(st.text(min_size=1, max_size=80))
def test_key_name_accepts_exactly_the_grammar(name: str) -> None:
    import re

    ok = re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name) is not None
    try:
        validate.check_key_name("k", name)
    except InputError:
        assert not ok
    else:
        assert ok


@given(st.sampled_from(["%00", "%0a", "%0D", "%1f", "%7F", "%e2%80%a8"]))
def test_url_refuses_percent_encoded_controls(enc: str) -> None:
    for base in ("https://s.example.com/sigs", "file:///var/lib/sigs"):
        with pytest.raises(InputError, match="encodes a control character"):
            validate.check_url("u", base + enc)


@pytest.mark.parametrize("value", ["prod\n", "prod\r", "Prod", "-prod", "a" * 65, ""])
def test_key_names_that_used_to_pass_or_never_did(value: str) -> None:
    with pytest.raises(InputError):
        validate.check_key_name("k", value)


@pytest.mark.parametrize(("value", "ok"), [
    ("Release Signer", True), ("Équipe sécurité", True), (" padded", False), ("padded ", False), ("a\tb", False),
    ("x" * 257, False)])
def test_check_name(value: str, ok: bool) -> None:
    if ok:
        assert validate.check_name("name", value) == value
    else:
        with pytest.raises(InputError):
            validate.check_name("name", value)
    with pytest.raises(InputError, match="must not contain"):
        validate.check_name("name", "a <b>", forbid="<>")


@pytest.mark.parametrize(("value", "ok"), [
    ("release@example.com", True), ("a.b+c@sub.example.org", True), ("root@localhost", True),
    ("no-at-sign", False), ("a@b", False), ("a@@b.c", False), ("<a@b.c>", False), ("a b@c.d", False),
    ("a@b.c\n", False), (".a@b.c", False), ("a@-b.c", False)])
def test_check_email(value: str, ok: bool) -> None:
    if ok:
        assert validate.check_email("email", value) == value
    else:
        with pytest.raises(InputError):
            validate.check_email("email", value)


@pytest.mark.parametrize("value", [".", "..", "a/b", "x" * 256, "é" * 128])
def test_check_file_name_refuses(value: str) -> None:
    with pytest.raises(InputError):
        validate.check_file_name("f", value)


def test_fingerprint_with_trailing_newline_is_refused() -> None:
    assert validate.check_fingerprint("k", "0x" + "ab" * 20) == "AB" * 20
    with pytest.raises(InputError):
        validate.check_fingerprint("k", "AB" * 20 + "\n")


@pytest.mark.parametrize(("text", "line"), [
    ('default: reject\nkeys:\n  "prod\\n": {fingerprint: ' + FPR + "}\n", 3),
    ('default: reject\nkeys:\n  k: {fingerprint: "' + FPR + '\\n"}\n', 3),
    ('default: reject\nscopes:\n  quay.io:\n    action: accept\n    lookaside: "https://s.example.com/a\\0b"\n', 5),
    ('default: reject\nscopes:\n  quay.io:\n    action: accept\n    lookaside: "https://s.example.com/a\\nb"\n', 5),
    ('default: reject\nscopes:\n  quay.io:\n    action: accept\n    lookaside: "file:///var/a\\x7fb"\n', 5),
    ('default: reject\nscopes:\n  quay.io:\n    action: accept\n    lookaside-staging: "file:///s%0a"\n', 5),
    ('default: reject\nscopes:\n  "quay.io/a\\u202eb": {action: accept}\n', 3),
])
def test_unsafe_values_in_policy_yaml_name_the_line(text: str, line: int) -> None:
    msg = error_of(text)
    assert msg.startswith(f"p.yaml:{line}:"), msg
    assert "\n" not in msg


def test_render_revalidates_names_and_urls_it_writes() -> None:
    with pytest.raises(InputError):
        render.keyring_name(("prod\n",), b"x")
    with pytest.raises(InputError):
        render.registries_d_file({"quay.io": {"lookaside": "https://s.example.com/\x00"}})
