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


@pytest.mark.parametrize("doc", [
    {"default": []},
    {"default": [{"type": "reject"}], "transports": {"docker": {"x.example.com": [{"type": "signedBy"}]}}},
    {"default": [{"type": "insecureAcceptAnything", "extra": 1}]},
])
def test_policy_c_image_refuses_is_an_input_error(doc: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        Evaluator(doc, DirectoryStore(tmp_path), policy_source="/etc/containers/policy.json")
    assert info.value.exit_code == 2 and info.value.message.startswith("/etc/containers/policy.json: ")
