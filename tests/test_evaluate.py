"""ops/evaluate (issue 14 #1) without a registry: signatures in a lookaside directory, images by digest.

The decisions themselves are checked against real skopeo in tests/test_audit.py; these cover what needs no
registry: requirements that can only refuse, the "not evaluated" outcome, bad policy documents, and that one
verifier serves every image of a key set."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path
from typing import Any

import pytest

from atomicsig.errors import PolicyError
from atomicsig.format import reference
from atomicsig.ops.evaluate import Evaluator, exit_code
from atomicsig.store.directory import DirectoryStore
from tests.infra import GpgHome

DIG = "sha256:" + "ab" * 32
REF = "registry.example.com/team/app:1"


@pytest.fixture
def store(cli, signer: GpgHome, tmp_path: Path) -> DirectoryStore:  # type: ignore[no-untyped-def]
    code, _, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(tmp_path / "store"), f"{REF}@{DIG}",
                       env={"GNUPGHOME": str(signer.path)})
    assert code == 0, err
    return DirectoryStore(tmp_path / "store")


def _policy(*reqs: dict[str, Any]) -> dict[str, Any]:
    return {"default": [{"type": "reject"}], "transports": {"docker": {"registry.example.com/team": list(reqs)}}}


def _signed_by(pub: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(pub), **extra}


def test_outcomes_per_requirement_kind(store: DirectoryStore, signer_pub: Path) -> None:
    ref = reference.parse(REF)
    cases: list[tuple[dict[str, Any], bool | None]] = [
        (_signed_by(signer_pub), True),
        ({"type": "signedBy", "keyType": "GPGKeys", "keyData": base64.b64encode(signer_pub.read_bytes()).decode()},
         True),
        ({"type": "signedBy", "keyType": "GPGKeys", "keyData": "!!not base64"}, False),
        ({"type": "signedBy", "keyType": "GPGKeys",  # wrapped: Go's base64 decoder skips CR and LF
          "keyData": "\r\n".join(textwrap.wrap(base64.b64encode(signer_pub.read_bytes()).decode(), 64))}, True),
        ({"type": "signedBy", "keyType": "X509Certificates", "keyPath": str(signer_pub)}, False),
        ({"type": "signedBaseLayer", "baseLayerIdentity": {"type": "matchRepository"}}, False),
        ({"type": "sigstoreSigned", "keyPath": "/x.pub"}, None),
        (_signed_by(signer_pub, signedIdentity={"type": "exactReference",
                                                "dockerReference": "registry.example.com/team/app:2"}), False),
    ]
    for req, expected in cases:
        with Evaluator(_policy(req), store) as ev:
            result = ev.evaluate(ref, DIG)
        assert result.requirements[0].passed is expected, (req, result.reason)
        assert result.decision == {True: "accepted", False: "rejected", None: "error"}[expected]
    with Evaluator(_policy(_signed_by(signer_pub)), store) as ev:  # another digest: no signature there
        other = ev.evaluate(ref, "sha256:" + "cd" * 32)
    assert other.decision == "rejected" and "no signature exists" in other.reason


def test_every_requirement_is_evaluated_and_3_wins(store: DirectoryStore, signer_pub: Path) -> None:
    """c/image stops at the first refusal; the audit still reports the rest. Undecided (3) wins over refused (1)."""
    ref = reference.parse(REF)
    with Evaluator(_policy({"type": "reject"}, {"type": "sigstoreSigned", "keyPath": "/x.pub"},
                           _signed_by(signer_pub)), store) as ev:
        result = ev.evaluate(ref, DIG)
        accepted_elsewhere = ev.evaluate(reference.parse("registry.example.com/team/app@" + DIG), DIG)
    assert [q.outcome for q in result.requirements] == ["fail", "not evaluated", "pass"]
    assert result.decision == "rejected"  # one failure refuses, whatever the unknown one would say
    with Evaluator(_policy({"type": "sigstoreSigned", "keyPath": "/x.pub"}), store) as ev:
        unknown = ev.evaluate(ref, DIG)
    assert exit_code([result]) == 1 and exit_code([result, unknown]) == 3 and exit_code([]) == 0
    assert accepted_elsewhere.requirements[2].passed is True


def test_one_verifier_per_key_set(store: DirectoryStore, signer_pub: Path) -> None:
    with Evaluator(_policy(_signed_by(signer_pub), _signed_by(signer_pub)), store) as ev:
        for _ in range(3):
            assert ev.evaluate(reference.parse(REF), DIG).decision == "accepted"
        assert len(ev._verifiers) == 1


def test_key_file_is_read_again_when_it_changes(store: DirectoryStore, signer_pub: Path, tmp_path: Path) -> None:
    """The Evaluator keeps keyPath bytes between images (issue 17: uncached webhook cost) but compares the file's
    identity at every use: a key file rewritten in place, replaced by rename, or removed is seen at once."""
    key = tmp_path / "trusted.gpg"
    key.write_bytes(signer_pub.read_bytes())
    with Evaluator(_policy(_signed_by(key)), store) as ev:
        assert ev.evaluate(reference.parse(REF), DIG).decision == "accepted"
        key.write_bytes(b"")  # rewritten in place: no keys
        assert ev.evaluate(reference.parse(REF), DIG).decision == "rejected"
        (tmp_path / "new.gpg").write_bytes(signer_pub.read_bytes())
        (tmp_path / "new.gpg").replace(key)  # policy apply's rename
        assert ev.evaluate(reference.parse(REF), DIG).decision == "accepted"
        key.unlink()
        gone = ev.evaluate(reference.parse(REF), DIG)
        assert gone.decision == "rejected" and "cannot read keyPath" in gone.reason


@pytest.mark.parametrize("doc", [
    {"default": []},
    {"default": [{"type": "reject"}], "transports": {"docker": {"x.example.com": [{"type": "signedBy"}]}}},
    {"default": [{"type": "insecureAcceptAnything", "extra": 1}]},
])
def test_policy_c_image_refuses_is_an_input_error(doc: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        Evaluator(doc, DirectoryStore(tmp_path), policy_source="/etc/containers/policy.json")
    assert info.value.exit_code == 2 and info.value.message.startswith("/etc/containers/policy.json: ")


def test_staged_files_equal_the_applied_ones(cli, signer_pub: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``audit -f`` judges the files ``apply`` would leave: the node's own scopes and registries.d files kept,
    the YAML's laid over them, byte for byte what ``policy apply`` then writes; nothing under the root changes."""
    import json
    import shutil

    from atomicsig.policy.compile import compile_policy
    from atomicsig.policy.preview import stage_applied

    root = tmp_path / "node"
    (root / "etc/containers/registries.d").mkdir(parents=True)
    (root / "etc/containers/policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {"quay.io/theirs": [{"type": "reject"}]}}}))
    (root / "etc/containers/registries.d/theirs.yaml").write_text("docker:\n  quay.io/theirs:\n"
                                                                  "    lookaside: https://sigs.example.com\n")
    shutil.copy(signer_pub, tmp_path / "k.gpg")
    (tmp_path / "p.yaml").write_text("default: reject\nkeys:\n  k: {file: k.gpg}\nscopes:\n"
                                     "  registry.example.com/team: {signed-by: k, lookaside: file:///srv/sigs}\n")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    staged = stage_applied(compile_policy(tmp_path / "p.yaml", None), root, tmp_path / "scratch")
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    code, _, err = cli("policy", "apply", "-f", str(tmp_path / "p.yaml"), "--root", str(root))
    assert code == 0, err
    for rel in ("etc/containers/policy.json", "etc/containers/registries.d/theirs.yaml",
                "etc/containers/registries.d/atomicsig.yaml"):
        assert (staged / rel).read_bytes() == (root / rel).read_bytes(), rel
    keyring = json.loads((root / "etc/containers/policy.json").read_text())[
        "transports"]["docker"]["registry.example.com/team"][0]["keyPath"]
    assert (staged / keyring.lstrip("/")).read_bytes() == (root / keyring.lstrip("/")).read_bytes()
    assert "quay.io/theirs" in json.loads((staged / "etc/containers/policy.json").read_text())["transports"]["docker"]
