"""v6 keys where a node's policy is shown or checked (issue 16 follow-up): a post-quantum v6 key made by
``keys generate`` in a Sequoia home signs an image (by digest) in a real docker-registry; a policy YAML trusting
its exported certificate is applied to a node root; then ``audit`` and ``policy explain --check`` accept the
image, ``policy show``/``explain`` list the v6 key (gpg alone called its keyring "not an OpenPGP keyring"), and a
scope whose keyring holds only a v4 key refuses the same signature, saying whose it is."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from atomicsig.openpgp import sequoia, sqgen
from tests.infra import Registry, push_image

pytestmark = pytest.mark.slow

SIGNERS = """keys:
  - name: Quantum Release
    email: pq-release@example.com
    profile: rfc9580
    algorithm: mldsa65-ed25519
"""


@pytest.fixture(scope="module")
def world(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three repositories holding one image each, every one signed by the v6 key; scopes trusting the v6
    certificate, a v4 key only, and both side by side; the policy applied under a node root."""
    from atomicsig.cli import cli as group
    from atomicsig.cli.common import run_main

    work = tmp_path_factory.mktemp("v6audit")
    host = registry.host
    sq, store, root = work / "sq", work / "sigstore", work / "node"
    (work / "signers.yaml").write_text(SIGNERS)

    def run(*args: str) -> None:
        assert run_main(group, list(args)) == 0, args

    run("keys", "generate", "-f", str(work / "signers.yaml"), "--sequoia-home", str(sq))
    run("keys", "export", "pq-release@example.com", "--sequoia-home", str(sq), "-o", str(work / "release.pgp"))
    v4 = sqgen.generate("Legacy <legacy@example.com>", profile="rfc4880", algorithm="ed25519", validity_seconds=None)
    (work / "legacy.gpg").write_bytes(v4.public)
    refs = {}
    for repo in ("v6", "v4only", "both"):
        digest = push_image(host, f"{repo}/app:1", f"v6audit-{repo}", work)
        refs[repo] = f"{host}/{repo}/app@{digest}"
        run("sign", "--key", "pq-release@example.com", "--sequoia-home", str(sq), "--sigstore", str(store),
            "--tls-verify=false", refs[repo])
    policy = work / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "default": "reject",
        "keys": {"release": {"file": str(work / "release.pgp")}, "legacy": {"file": str(work / "legacy.gpg")}},
        "scopes": {f"{host}/v6": {"signed-by": "release", "lookaside": f"file://{store}"},
                   f"{host}/v4only": {"signed-by": "legacy", "lookaside": f"file://{store}"},
                   f"{host}/both": {"signed-by": ["legacy", "release"], "lookaside": f"file://{store}"}}}))
    run("policy", "apply", "-f", str(policy), "--root", str(root), "--keypaths-under-root")
    (cert,) = sequoia.read_certs((work / "release.pgp").read_bytes())
    assert cert.version == 6 and not cert.secret
    return {"refs": refs, "root": root, "fpr": cert.fingerprint, "v4": v4.fingerprint,
            "subkeys": cert.key_fingerprints - {cert.fingerprint}}


def test_audit_accepts_a_v6_signed_image_and_a_v4_only_scope_refuses_it(cli, world: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    refs, fpr = world["refs"], world["fpr"]
    assert len(fpr) == 64
    code, out, err = cli("audit", "--tls-verify=false", "--json", "--root", str(world["root"]), *refs.values())
    assert code == 1, err  # one image refused
    by_ref = {img["reference"]: img for img in json.loads(out)["images"]}
    assert {r: by_ref[refs[r]]["decision"] for r in refs} == {"v6": "accepted", "v4only": "rejected",
                                                            "both": "accepted"}, out
    accepted = by_ref[refs["v6"]]["requirements"][0]
    assert accepted["outcome"] == "pass" and accepted["fingerprints"] == [fpr]
    assert accepted["signatures"][0]["accepted"] and accepted["signatures"][0]["signer"] == fpr
    refused = by_ref[refs["v4only"]]
    assert refused["requirements"][0]["fingerprints"] == [world["v4"]]
    # The precise reason: the v6 signature is by a key this scope does not trust, named by the fingerprint the
    # signature carries (the v6 signing subkey's: a keyring without the certificate cannot name its primary).
    untrusted = refused["requirements"][0]["signatures"][0]["reason"]
    assert untrusted.startswith("signed by an untrusted key ") and untrusted.split()[5] in world["subkeys"]
    assert untrusted.endswith("(an OpenPGP v6 signature, and every trusted key is v4)"), untrusted
    assert untrusted in refused["reason"]
    assert f"required signer legacy ({world['v4']}): no valid signature" in refused["reason"], refused["reason"]
    both = by_ref[refs["both"]]["requirements"][0]
    assert sorted(both["fingerprints"]) == sorted([fpr, world["v4"]])


def test_policy_explain_check_accepts_it_and_shows_the_v6_key(cli, world: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    refs, root, fpr = world["refs"], str(world["root"]), world["fpr"]
    code, out, err = cli("policy", "explain", "--root", root, "--check", "--tls-verify=false", refs["v6"])
    assert code == 0, out + err
    assert "decision:    ACCEPTED" in out and fpr in out and "not an OpenPGP keyring" not in out
    code, out, err = cli("policy", "explain", "--root", root, "--check", "--tls-verify=false", refs["v4only"])
    assert code == 1 and "decision:    REJECTED" in out, out + err
    assert any(f"signed by an untrusted key {k}" in out for k in world["subkeys"]), out
    code, out, err = cli("policy", "explain", "--root", root, "--json", refs["both"])
    assert code == 0, err
    keys = json.loads(out)["requirements"][0]["keys"]
    assert sorted((k["fingerprint"], k["version"]) for k in keys) == sorted([(fpr, 6), (world["v4"], 4)]), keys
    assert [k["uids"] for k in keys if k["version"] == 6] == [["Quantum Release <pq-release@example.com>"]]
    code, out, err = cli("policy", "show", "--root", root)
    assert code == 0, err
    assert "not an OpenPGP keyring" not in out and "pq-release@example.com" in out, out
