"""Several signers, all required (issue 14 #5): ``signed-by-all`` in the policy YAML, ``verify --require-all``,
and ``audit`` / ``policy explain --check`` naming the required signer that has no valid signature.

The YAML compiles to one ``signedBy`` per required key set (c/image ANDs a scope's requirements, SPEC §5.5); the
slow tests hold that against real skopeo: signed by both → accepted, by either one alone → refused, and audit,
verify and explain give skopeo's answer and name the missing signer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomicsig.errors import PolicyError
from atomicsig.format import keyfile_name, policyjson
from atomicsig.policy import render, schema
from atomicsig.policy.keymaterial import KeyMaterial
from tests.infra import GpgHome, Registry, push_image, skopeo_pull

FPRS = {"build": "B" * 40, "sec1": "C" * 40, "sec2": "D" * 40, "old": "E" * 40}
KEYS = "".join(f"  {n}: {{fingerprint: {f}}}\n" for n, f in FPRS.items()) + "  ci: {cosign: c.pub}\n"
HEAD = f"default: reject\nkeys:\n{KEYS}scopes:\n  quay.io/ns:\n"  # the scope is line 9, its keys from line 10


def parse(text: str) -> schema.PolicySpec:
    return schema.loads(text, "p.yaml", "/base")


def material(**fprs: tuple[str, ...]) -> dict[str, KeyMaterial]:
    """Key bytes per name (the name itself) with the given fingerprints (default: the name's own, FPRS)."""
    return {n: KeyMaterial(n, "fingerprint", n.encode(), fprs.get(n, (FPRS[n],))) for n in FPRS}


def keyring(names: tuple[str, ...]) -> str:
    data = b"".join(n.encode() for n in sorted(names))
    return f"/etc/pki/containers/atomicsig-{'+'.join(sorted(names))}-{hashlib.sha256(data).hexdigest()[:12]}.gpg"


# ---- schema and render ------------------------------------------------------------------------------------------


def test_each_required_signer_is_one_signedby_with_its_own_keyring() -> None:
    spec = parse(HEAD + "    signed-by-all: [build, [sec1, sec2]]\n    identity: {type: matchRepository}\n")
    assert spec.scopes[0].signed_by_all == (("build",), ("sec1", "sec2"))
    compiled = render.compile_spec(spec, material())
    reqs = compiled.docker_scopes["quay.io/ns"]
    assert reqs == [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": keyring(names),
                     "signedIdentity": {"type": "matchRepository"}} for names in (("build",), ("sec1", "sec2"))]
    assert set(compiled.key_files()) == {keyring(("build",)), keyring(("sec1", "sec2"))}
    assert compiled.files[keyring(("sec1", "sec2"))] == b"sec1sec2"  # the any-of group: one combined keyring
    assert policyjson.problems(render.merge(policyjson.SHIPPED_DEFAULT, compiled, set())) == []


def test_signed_by_comes_first_and_key_files_are_shared_with_any_of() -> None:
    """``signed-by`` keeps compiling exactly as before (its requirement first, same file name), and a signer of
    ``signed-by-all`` that another scope lists in ``signed-by`` uses the same keyring file."""
    spec = parse(HEAD + "    signed-by: [sec1, sec2]\n    signed-by-all: [build]\n"
                 "  quay.io/other:\n    signed-by: build\n")
    compiled = render.compile_spec(spec, material())
    assert [r["keyPath"] for r in compiled.docker_scopes["quay.io/ns"]] == [keyring(("sec1", "sec2")),
                                                                          keyring(("build",))]
    assert compiled.docker_scopes["quay.io/other"] == [compiled.docker_scopes["quay.io/ns"][1]]
    assert len(compiled.key_files()) == 2


@pytest.mark.parametrize(("body", "line", "fragment"), [
    ("    signed-by-all: []\n", 10, "signed-by-all must be a non-empty list of required signers"),
    ("    signed-by-all: build\n", 10, "signed-by-all must be a non-empty list"),
    ("    signed-by-all:\n", 10, "signed-by-all must be a non-empty list"),
    ("    signed-by-all: [build, []]\n", 10, "an empty group requires no signer"),
    ("    signed-by-all:\n    - build\n    - nokey\n", 12, "unknown key 'nokey' (declare it under 'keys:')"),
    ("    signed-by-all: [build, ci]\n", 10, "'ci' is a cosign key (use sigstore-signed-by)"),
    ("    signed-by-all:\n    - [sec1, build]\n    - build\n", 12,
     "key 'build' is listed twice in signed-by-all (first at line 11)"),
    ("    signed-by-all: [sec1, sec1]\n", 10, "listed twice"),
    ("    signed-by: [build, old]\n    signed-by-all:\n    - sec1\n    - [sec2, old]\n", 13,
     "key 'old' is in both signed-by (any one of its keys is enough) and signed-by-all (every entry is required)"),
    ("    signed-by-all: [build, [[sec1]]]\n", 10, "groups do not nest"),
    ("    action: accept\n    signed-by-all: [build, sec1]\n", 10, "action accept takes no keys"),
])
def test_bad_all_of_names_the_line(body: str, line: int, fragment: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse(HEAD + body)
    assert exc.value.message.startswith(f"p.yaml:{line}:"), exc.value.message
    assert fragment in exc.value.message, exc.value.message


def test_two_signers_holding_one_key_are_refused() -> None:
    """Two names for one key (or a keyring holding the other's key): one signature would pass both signedBy
    requirements, so "build AND sec1" would quietly mean "either"; refused with the scope's line."""
    spec = parse(HEAD + "    signed-by-all: [build, [sec1, sec2]]\n")
    with pytest.raises(PolicyError, match=r"^p\.yaml:9: scope 'quay.io/ns': required signers 'build' and "
                                          r"'sec1\+sec2' both hold key B{40}"):
        render.compile_spec(spec, material(sec2=(FPRS["sec2"], FPRS["build"])))
    # a shared key inside one any-of group is fine: the group is one signer
    render.compile_spec(spec, material(sec2=(FPRS["sec1"],)))


@given(st.lists(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True), min_size=1, max_size=4, unique=True),
       st.binary(max_size=8), st.sampled_from(["gpg", "pub"]))
def test_keyring_file_names_read_back_as_their_key_set(names: list[str], data: bytes, ext: str) -> None:
    name = keyfile_name.build(tuple(names), data, ext)
    assert name == render.keyring_name(tuple(names), data, ext)
    assert keyfile_name.key_names(name) == tuple(sorted(names))


@pytest.mark.parametrize("name", ["release.gpg", "atomicsig-build.gpg", "atomicsig-build-0123456789ab.gpg\n",
                                  "atomicsig-Build-0123456789ab.gpg", "atomicsig-build-0123456789ab.asc"])
def test_foreign_keyring_names_carry_no_key_set(name: str) -> None:
    assert keyfile_name.key_names(name) is None


def test_validate_refuses_bad_all_of_with_exit_2(cli, signer_pub: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Through the CLI with real key files: one line naming file and line, exit 2, nothing written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"default: reject\nkeys:\n  build: {{file: {signer_pub}}}\nscopes:\n  quay.io/ns:\n"
                   "    signed-by-all: []\n")
    code, _, err = cli("policy", "validate", "-f", str(bad), "--root", str(tmp_path / "node"))
    assert code == 2 and f"{bad}:6:" in err and len(err.strip().splitlines()) == 1, err
    same = tmp_path / "same.yaml"  # the same public key file under two names
    same.write_text(f"default: reject\nkeys:\n  build: {{file: {signer_pub}}}\n  security: {{file: {signer_pub}}}\n"
                    "scopes:\n  quay.io/ns:\n    signed-by-all: [build, security]\n")
    code, _, err = cli("policy", "apply", "-f", str(same), "--root", str(tmp_path / "node"))
    assert code == 2 and f"{same}:6:" in err and "both hold key" in err, err
    assert not (tmp_path / "node").exists()


# ---- verify --require-all (offline: a digest reference and a directory sigstore) ---------------------------------

DIG = "sha256:" + "7" * 64
REF = f"quay.io/team/app@{DIG}"


def test_verify_require_all(cli, signer: GpgHome, other_signer: GpgHome, signer_pub: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    other_pub = other_signer.export_public(tmp_path / "other.gpg")
    code, _, err = cli("sign", "--gnupghome", str(signer.path), "--key", signer.fingerprint, "--sigstore",
                       str(store), REF)
    assert code == 0, err
    args = ("verify", "--sigstore", str(store), "--key", str(signer_pub), "--key", str(other_pub))
    code, out, err = cli(*args, REF)
    assert code == 0, out + err  # without --require-all: any one key is enough (unchanged)
    code, out, err = cli(*args, "--require-all", "--json", REF)
    assert code == 1, out + err
    img = json.loads(out)["images"][0]
    assert img["outcome"] == "rejected"
    assert img["reason"].startswith(f"required signer {other_pub} ({other_signer.fingerprint}): no valid signature")
    assert [(r["signer"], r["accepted"]) for r in img["required"]] == [(str(signer_pub), True),
                                                                       (str(other_pub), False)]
    assert img["signatures"][0]["accepted"] and img["signatures"][0]["signer"] == signer.fingerprint
    code, out, _ = cli(*args, "--require-all", REF)
    assert code == 1
    assert f"required signer {other_pub} ({other_signer.fingerprint}): no valid signature" in out
    assert f"required signer {signer_pub} ({signer.fingerprint}): signed" in out
    code, _, err = cli("sign", "--gnupghome", str(other_signer.path), "--key", other_signer.fingerprint,
                       "--sigstore", str(store), REF)
    assert code == 0, err
    code, out, err = cli(*args, "--require-all", "--json", REF)
    assert code == 0, out + err
    assert [r["accepted"] for r in json.loads(out)["images"][0]["required"]] == [True, True]
    # the same key under two --key values would let one signature count twice: exit 2
    code, _, err = cli("verify", "--sigstore", str(store), "--key", str(signer_pub), "--key", signer.fingerprint,
                       "--gnupghome", str(signer.path), "--require-all", REF)
    assert code == 2 and "both trust key" in err, err


# ---- against real skopeo --------------------------------------------------------------------------------------


def _sign(cli: Any, home: GpgHome, store: Path, ref: str) -> None:
    code, _, err = cli("sign", "--gnupghome", str(home.path), "--key", home.fingerprint, "--sigstore", str(store),
                       "--tls-verify=false", ref)
    assert code == 0, err


@pytest.mark.slow
def test_all_of_agrees_with_skopeo(cli, registry: Registry, signer: GpgHome, other_signer: GpgHome,  # type: ignore[no-untyped-def]
                                   tmp_path: Path) -> None:
    """build AND security (and build AND any of [security, third]): accepted only with every required signature;
    ``audit``, ``verify --require-all`` and ``policy explain --check`` say what skopeo does and name the signer
    that is missing."""
    third = GpgHome(tmp_path / "third", email="third@example.com").create()
    h, store = registry.host, tmp_path / "sigstore"
    images = {f"{h}/two/{n}:1": push_image(h, f"two/{n}:1", seed=f"allof-{n}", workdir=tmp_path)
              for n in ("both", "build", "security", "none")}
    images |= {f"{h}/grp/{n}:1": push_image(h, f"grp/{n}:1", seed=f"allof-grp-{n}", workdir=tmp_path)
               for n in ("third", "build")}
    for ref in (f"{h}/two/both:1", f"{h}/two/build:1", f"{h}/grp/third:1", f"{h}/grp/build:1"):
        _sign(cli, signer, store, ref)
    for ref in (f"{h}/two/both:1", f"{h}/two/security:1"):
        _sign(cli, other_signer, store, ref)
    _sign(cli, third, store, f"{h}/grp/third:1")
    pubs = {"build": signer.export_public(tmp_path / "build.gpg"),
            "security": other_signer.export_public(tmp_path / "security.gpg"),
            "third": third.export_public(tmp_path / "third.gpg")}
    policy = tmp_path / "policy.yaml"
    policy.write_text("default: reject\nkeys:\n" + "".join(f"  {n}: {{file: {p}}}\n" for n, p in pubs.items()) +
                      f"scopes:\n  {h}/two:\n    signed-by-all: [build, security]\n    lookaside: file://{store}\n"
                      f"  {h}/grp:\n    signed-by-all: [build, [security, third]]\n    lookaside: file://{store}\n")
    root = tmp_path / "node"
    code, _, err = cli("policy", "apply", "-f", str(policy), "--root", str(root), "--keypaths-under-root")
    assert code == 0, err
    node_policy = root / "etc/containers/policy.json"
    assert [len(reqs) for reqs in json.loads(node_policy.read_text())["transports"]["docker"].values()] == [2, 2]
    missing = {f"{h}/two/both:1": None, f"{h}/two/build:1": "security", f"{h}/two/security:1": "build",
               f"{h}/two/none:1": "build", f"{h}/grp/third:1": None, f"{h}/grp/build:1": "security or third"}
    group = tmp_path / "security+third.gpg"
    group.write_bytes(pubs["security"].read_bytes() + pubs["third"].read_bytes())
    fpr = {"build": signer.fingerprint, "security": other_signer.fingerprint,
           "security or third": ", ".join(sorted((other_signer.fingerprint, third.fingerprint)))}

    code, out, err = cli("audit", "--tls-verify=false", "--json", "--root", str(root), *missing)
    assert code == 1, err
    audited = {img["reference"]: img for img in json.loads(out)["images"]}
    for ref, who in missing.items():
        accepted = skopeo_pull(ref, node_policy, root / "etc/containers/registries.d", tmp_path).returncode == 0
        assert accepted == (who is None), ref  # skopeo: both present → accept; either missing → refuse
        img = audited[ref]
        assert img["decision"] == ("accepted" if who is None else "rejected"), (ref, img["reason"])
        assert [q["signer"] for q in img["requirements"]] == (
            ["build", "security"] if "/two/" in ref else ["build", "security or third"])
        if who is not None:
            assert f"required signer {who} ({fpr[who]}): no valid signature" in img["reason"], img["reason"]
            if ref.endswith("/two/build:1"):
                assert [q["outcome"] for q in img["requirements"]] == ["pass", "fail"]

        # one --key per required signer; the any-of group [security, third] as one keyring file
        second = pubs["security"] if "/two/" in ref else group
        code, out, err = cli("verify", "--tls-verify=false", "--sigstore", str(store), "--require-all", "--json",
                             "--key", str(pubs["build"]), "--key", str(second), ref)
        assert code == (0 if who is None else 1), out + err
        verdict = json.loads(out)["images"][0]
        assert verdict["digest"] == images[ref]
        if who is not None:
            name = str(pubs[who]) if who in pubs else str(group)
            assert f"required signer {name} ({fpr[who]}): no valid signature" in verdict["reason"], verdict

        code, out, err = cli("policy", "explain", "--root", str(root), "--check", "--tls-verify=false", ref)
        assert code == (0 if who is None else 1), out + err
        assert "required signer: build" in out
        if who is None:
            assert "decision:    ACCEPTED" in out
        else:
            assert "decision:    REJECTED" in out and f"(required signer {who}): fail: required signer {who}" in out
    code, out, _ = cli("policy", "explain", "--root", str(root), "--check", "--tls-verify=false", "--json",
                       f"{h}/two/security:1")
    assert code == 1
    info = json.loads(out)
    assert [r.get("signer") for r in info["requirements"]] == ["build", "security"]
    assert info["evaluations"][0]["decision"] == "rejected"
    assert info["evaluations"][0]["requirements"][0]["signer"] == "build"
