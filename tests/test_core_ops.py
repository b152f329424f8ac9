"""Unit tests of the core functions the CLI calls (issue 13 #4: parse, call the core, render)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atomicsig.errors import InputError
from atomicsig.format import identity
from atomicsig.format.reference import parse
from atomicsig.ops import sign as signing
from atomicsig.ops import verify as v
from atomicsig.ops.keys import key_file
from atomicsig.ops.resolve import Target, parse_reference_list
from atomicsig.signers.factory import signing_subkey
from atomicsig.store.directory import DirectoryStore


def test_identity_matcher_rules() -> None:
    assert isinstance(v.identity_matcher(), identity.MatchRepoDigestOrExact)
    assert isinstance(v.identity_matcher("repository"), identity.MatchRepository)
    assert isinstance(v.identity_matcher("exact", exact_reference="r.example/a:1"), identity.ExactReference)
    remap = v.identity_matcher(remap="mirror.example/x=vendor.example/x")
    assert remap.matches(parse("mirror.example/x/app:1"), "vendor.example/x/app:1")
    with pytest.raises(InputError, match="PREFIX=SIGNED_PREFIX"):
        v.identity_matcher(remap="no-equals-sign")
    with pytest.raises(InputError, match="use only one of"):
        v.identity_matcher(exact_reference="r.example/a:1", exact_repository="r.example/a")
    with pytest.raises(InputError, match="unknown identity rule"):
        v.identity_matcher("nonsense")


def test_verdict_accepted_is_derived_from_outcome() -> None:
    """One state, not two: ``accepted`` cannot disagree with ``outcome`` (issue 13 #4)."""
    verdict = v.ImageVerdict("r.example/a:1", "sha256:" + "0" * 64, "dir")
    assert verdict.outcome == v.REJECTED and not verdict.accepted and verdict.exit_code == 1
    verdict.outcome = v.ACCEPTED
    assert verdict.accepted and verdict.as_dict()["accepted"] is True and verdict.exit_code == 0
    verdict.outcome = v.ERROR
    assert not verdict.accepted and verdict.exit_code == 3


def test_missing_store_is_an_error_only_when_named(tmp_path: Path) -> None:
    absent = DirectoryStore(tmp_path / "absent")
    with pytest.raises(InputError, match="does not exist"):
        v.missing_store_warning(absent, explicit=True)
    assert "default sigstore" in (v.missing_store_warning(absent, explicit=False) or "")
    assert v.missing_store_warning(DirectoryStore(tmp_path), explicit=True) is None


def test_reference_list_comments_and_blanks() -> None:
    assert parse_reference_list("a.example/x:1\n\n  # note\nb.example/y:2  # trailing\n") == [
        "a.example/x:1", "b.example/y:2"]


def test_key_spec_file_or_keyring(tmp_path: Path) -> None:
    """The one reading of --key FPR|EMAIL|FILE (sign, verify, prune)."""
    f = tmp_path / "k.gpg"
    f.write_bytes(b"x")
    assert key_file(str(f)) == f
    assert key_file("someone@example.com") is None
    assert key_file("0123456789ABCDEF0123456789ABCDEF01234567") is None
    with pytest.raises(InputError, match="does not exist"):
        key_file(str(tmp_path / "missing.asc"))


def test_sign_exit_code_input_errors_first() -> None:
    t = Target(parse("r.example/a:1"), "sha256:" + "0" * 64, "r.example/a:1")
    ok = signing.Outcome(t, "a", "signed")
    assert signing.exit_code([ok]) == 0
    undecided = signing.Outcome(t, "b", "failed", exit_code=3)
    wrong = signing.Outcome(None, "c", "failed", exit_code=2)
    assert signing.exit_code([ok, undecided]) == 3
    assert signing.exit_code([ok, undecided, wrong]) == 2


def test_signing_subkey_looks_through_auto_wrapper() -> None:
    class Inner:
        fingerprint = "AA" * 20
        signing_key = "BB" * 20

    class Wrapper:
        fingerprint = "AA" * 20
        agent: object = Inner()

    assert signing_subkey(Inner()) == "BB" * 20
    assert signing_subkey(Wrapper()) == "BB" * 20
    Wrapper.agent = None
    assert signing_subkey(Wrapper()) is None
    Inner.signing_key = "aa" * 20
    assert signing_subkey(Inner()) is None


def test_compile_policy_one_pipeline(tmp_path: Path) -> None:
    """validate, apply and render share compile_policy: the same spec, keys and compiled files (issue 13 #4)."""
    from atomicsig.policy import render
    from atomicsig.policy.compile import compile_policy

    src = tmp_path / "policy.yaml"
    src.write_text("default: reject\nscopes:\n  registry.example.com/open: {action: accept}\n"
                   "  registry.example.com/mirror:\n    action: reject\n    lookaside: https://sigs.example.com\n")
    policy = compile_policy(src, None)
    doc = json.loads(policy.node_files()[render.POLICY_PATH])
    assert doc["default"] == [{"type": "reject"}]
    assert doc["transports"]["docker"]["registry.example.com/open"] == [{"type": "insecureAcceptAnything"}]
    assert render.REGISTRIES_FILE in policy.node_files()
    root = tmp_path / "node"
    plan = policy.plan(root)
    assert plan.pending and {c["path"] for c in plan.summary()} >= {render.POLICY_PATH}
    assert not (root / "etc").exists()  # planning writes nothing


def test_demo_node_policy_comes_from_the_compiler(tmp_path: Path, signer_pub: Path) -> None:
    """The demo writes its node files through policy.compile + apply (issue 13 #4), not by hand: signedBy with the
    demo key's keyring under the demo root, and the lookaside in registries.d."""
    import yaml

    from atomicsig.demo.run import write_node_policy

    pub = tmp_path / "demo-pubkey.gpg"
    pub.write_bytes(signer_pub.read_bytes())
    sigstore = tmp_path / "sigstore"
    policy, regd = write_node_policy(tmp_path / "node", "127.0.0.1:5000", pub, sigstore)
    doc = json.loads(policy.read_text())
    assert doc["default"] == [{"type": "reject"}]
    (req,) = doc["transports"]["docker"]["127.0.0.1:5000"]
    assert req["type"] == "signedBy" and req["keyType"] == "GPGKeys"
    keyring = Path(req["keyPath"])
    assert keyring.is_relative_to(tmp_path / "node") and keyring.read_bytes()
    regs = yaml.safe_load((regd / "atomicsig.yaml").read_text())
    assert regs["docker"]["127.0.0.1:5000"]["lookaside"] == sigstore.as_uri()


def test_deletion_targets_checks_before_anything(tmp_path: Path) -> None:
    from atomicsig.errors import KeyNotFound
    from atomicsig.gnupg.keyring import Keyring
    from atomicsig.ops.keys import deletion_targets

    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    kr = Keyring(str(home))
    with pytest.raises(InputError, match="full 40-hex fingerprint"):
        deletion_targets(kr, ["A" * 40, "alice@example.com"])
    with pytest.raises(KeyNotFound, match="no key " + "A" * 40):
        deletion_targets(kr, ["0x" + "a" * 40])
    assert deletion_targets(kr, []) == []
