"""``atomicsig audit`` (issue 14 item 1) decides as containers/image does: every answer is compared with what real
skopeo does under the same policy.json and registries.d (accept ⇔ ``skopeo copy`` succeeds), for images in a
real docker-registry that are signed, unsigned, signed for another repository, signed by an untrusted key, and in
scopes that accept or reject everything. ``-f policy.yaml`` before ``policy apply`` answers as after it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra import GpgHome, Registry, free_port, push_image, skopeo_pull
from tests.test_openreports import SCHEMA
from tests.test_openreports import validate as _validate


def validate_report(doc: Any) -> None:
    _validate(doc, SCHEMA)

pytestmark = pytest.mark.slow


def _audit(cli: Any, *args: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = cli("audit", "--tls-verify=false", "--json", *args)
    return code, (json.loads(out) if out.strip().startswith("{") else {}), err


@pytest.fixture(scope="module")
def world(registry: Registry, signer: GpgHome, other_signer: GpgHome, signer_pub: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The registry's images, their signatures in a lookaside directory, and the policy YAML over them."""
    from atomicsig.cli import cli as group
    from atomicsig.cli.common import run_main

    work = tmp_path_factory.mktemp("audit")
    store = work / "sigstore"
    host = registry.host
    refs = {name: f"{host}/{name}" for name in (
        "app/signed:1", "app/unsigned:1", "app/wrongrepo:1", "app/untrusted:1", "open/any:1", "other/x:1")}
    for name, ref in refs.items():
        push_image(host, name, "audit-" + name.split("/")[1].split(":")[0], work)
    push_image(host, "app/decoy:1", "audit-wrongrepo", work)  # same content as app/wrongrepo:1 (same digest)

    def sign(home: GpgHome, ref: str) -> None:
        import os

        old = os.environ.get("GNUPGHOME")
        os.environ["GNUPGHOME"] = str(home.path)
        try:
            assert run_main(group, ["sign", "--key", home.fingerprint, "--sigstore", str(store),
                                    "--tls-verify=false", ref]) == 0
        finally:
            if old is None:
                os.environ.pop("GNUPGHOME", None)
            else:
                os.environ["GNUPGHOME"] = old

    sign(signer, refs["app/signed:1"])
    sign(signer, refs["other/x:1"])  # signed, but its scope is the default: reject
    sign(other_signer, refs["app/untrusted:1"])
    sign(signer, f"{host}/app/decoy:1")  # then moved to app/wrongrepo: a signature claiming another repository
    decoy = next((store / "app").glob("decoy@*"))
    shutil.copytree(decoy, store / "app" / decoy.name.replace("decoy", "wrongrepo"))
    shutil.copy(signer_pub, work / "trusted.gpg")
    policy = work / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "default": "reject",
        "keys": {"trusted": {"file": "trusted.gpg"}},
        "scopes": {f"{host}/app": {"signed-by": "trusted", "lookaside": f"file://{store}"},
                   f"{host}/open": {"action": "accept"}}}))
    return {"refs": refs, "policy": policy, "work": work, "store": store, "host": host}


def _skopeo_accepts(ref: str, root: Path, work: Path) -> bool:
    proc = skopeo_pull(ref, root / "etc/containers/policy.json", root / "etc/containers/registries.d", work)
    return proc.returncode == 0


def test_audit_agrees_with_skopeo_before_and_after_apply(cli, world: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    refs, policy = world["refs"], str(world["policy"])
    root = tmp_path / "node"
    root.mkdir()
    code, before, err = _audit(cli, "--root", str(root), "-f", policy, *refs.values())
    assert code == 1, err
    assert not (root / "etc").exists()  # -f stages the applied files elsewhere: nothing written under --root
    code, _, err = cli("policy", "apply", "-f", policy, "--root", str(root), "--keypaths-under-root")
    assert code == 0, err
    code, after, err = _audit(cli, "--root", str(root), *refs.values())
    assert code == 1, err
    decided = {img["reference"]: img["decision"] for img in after["images"]}
    assert decided == {img["reference"]: img["decision"] for img in before["images"]}
    expected = {"app/signed:1": "accepted", "open/any:1": "accepted", "app/unsigned:1": "rejected",
                "app/wrongrepo:1": "rejected", "app/untrusted:1": "rejected", "other/x:1": "rejected"}
    assert decided == {refs[k]: v for k, v in expected.items()}
    for ref, decision in decided.items():  # the node's own answer, case by case
        assert _skopeo_accepts(ref, root, tmp_path) == (decision == "accepted"), ref
    by_ref = {img["reference"]: img for img in after["images"]}
    host = world["host"]
    assert by_ref[refs["other/x:1"]]["scope"] == "default"
    assert by_ref[refs["open/any:1"]]["scope"] == f"transports.docker['{host}/open']"
    assert "no signature exists" in by_ref[refs["app/unsigned:1"]]["reason"]
    assert "does not match" in by_ref[refs["app/wrongrepo:1"]]["reason"]
    assert by_ref[refs["app/wrongrepo:1"]]["requirements"][0]["signatures"][0]["identity"] == f"{host}/app/decoy:1"
    signed = by_ref[refs["app/signed:1"]]["requirements"][0]
    assert signed["outcome"] == "pass" and signed["signatures"][0]["accepted"]
    assert signed["signatures"][0]["index"] == 1 and len(signed["signatures"][0]["signer"]) == 40


def test_report_and_table(cli, world: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    refs = world["refs"]
    report = tmp_path / "report.yaml"
    code, out, err = cli("audit", "--tls-verify=false", "-f", str(world["policy"]), "--root", str(tmp_path),
                         "--report", str(report), *refs.values())
    assert code == 1, err
    assert out.splitlines()[0].split() == ["IMAGE", "DECISION", "SCOPE", "REQUIREMENTS", "REASON"]
    assert any(line.startswith(refs["app/signed:1"]) and "ACCEPTED" in line for line in out.splitlines())
    doc = yaml.safe_load(report.read_text())
    validate_report(doc)
    assert doc["summary"]["pass"] == 2 and doc["summary"]["fail"] == 4
    untrusted = next(r for r in doc["results"] if r["properties"]["image"] == refs["app/untrusted:1"])
    assert untrusted["rule"] == "signedBy[0]" and untrusted["result"] == "fail"
    assert untrusted["properties"]["signatureIndex"] == "1" and "keyFingerprint" not in untrusted["properties"]
    code, _, _ = cli("audit", "--tls-verify=false", "-f", str(world["policy"]), "--root", str(tmp_path),
                     "--report", str(tmp_path / "r.json"), refs["app/signed:1"])
    assert code == 0
    validate_report(json.loads((tmp_path / "r.json").read_text()))


def test_exit_codes(cli, world: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """0 all accepted; 1 some refused; 3 some undecided (wins over 1): a sigstoreSigned requirement is "not
    evaluated", never a pass; 2 a broken policy.json, with the file named."""
    refs, host = world["refs"], world["host"]
    root = tmp_path / "node"
    (root / "etc/containers").mkdir(parents=True)
    pol = root / "etc/containers/policy.json"
    pol.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        f"{host}/open": [{"type": "insecureAcceptAnything"}],
        f"{host}/app": [{"type": "sigstoreSigned", "keyPath": "/nonexistent.pub"}]}}}))
    code, doc, _ = _audit(cli, "--root", str(root), refs["open/any:1"])
    assert code == 0 and doc["images"][0]["decision"] == "accepted"
    code, doc, _ = _audit(cli, "--root", str(root), refs["open/any:1"], refs["other/x:1"])
    assert code == 1
    code, doc, _ = _audit(cli, "--root", str(root), refs["other/x:1"], refs["app/signed:1"])
    assert code == 3
    req = doc["images"][1]["requirements"][0]
    assert doc["images"][1]["decision"] == "error" and req["outcome"] == "not evaluated"
    down = f"127.0.0.1:{free_port()}/down/x:1"
    code, doc, _ = _audit(cli, "--root", str(root), refs["other/x:1"], down)
    assert code == 1 and doc["images"][1]["decision"] == "rejected"  # unreachable, but its scope rejects all
    pol.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    code, doc, _ = _audit(cli, "--root", str(root), refs["other/x:1"], down)
    assert code == 3 and doc["images"][1]["decision"] == "error"  # registry unreachable: could not check
    pol.write_text('{"default": [{"type": "reject"}], "transports": {"docker": {"x": []}}}')
    code, _, err = cli("audit", "--root", str(root), refs["open/any:1"])
    assert code == 2 and str(pol) in err and len(err.strip().splitlines()) == 1


def test_storage_images_pulled_with_podman(cli, world: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``--storage``: the images podman holds (vfs, isolated root) get the answers their references get."""
    from tests.conftest import HAVE_PODMAN
    from tests.infra import insecure_policy
    from tests.test_store_images import Podman

    if not HAVE_PODMAN:
        pytest.skip("needs podman")
    refs = world["refs"]
    graphroot = tmp_path / "storage"
    pm = Podman(tmp_path, graphroot, insecure_policy(tmp_path / "insecure.json"))
    pulled = [refs[k] for k in ("app/signed:1", "app/unsigned:1", "app/untrusted:1", "open/any:1")]
    for ref in pulled:
        pm.pull(ref)
    pm("untag", pm.pull(refs["other/x:1"]))  # a nameless image: no scope can match it, so it is not audited
    node = tmp_path / "node"
    node.mkdir()
    assert cli("policy", "apply", "-f", str(world["policy"]), "--root", str(node))[0] == 0
    code, doc, err = _audit(cli, "--root", str(node), "--storage", "--storage-root", str(graphroot))
    assert code == 1, err  # not 3: the nameless image is left out with a note, not "could not be checked"
    assert "1 stored image(s) without a name were not audited" in err
    got = {img["reference"]: img["decision"] for img in doc["images"]}
    code, by_ref, err = _audit(cli, "--root", str(node), *pulled)
    assert got == {img["reference"]: img["decision"] for img in by_ref["images"]}
    assert got[refs["app/signed:1"]] == "accepted" and got[refs["app/unsigned:1"]] == "rejected"
    assert all(img["source"].startswith("containers-storage ") for img in doc["images"])
    # the same answer from `policy apply --dry-run --audit` on a node where the policy is not applied yet
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    code, out, err = cli("policy", "apply", "-f", str(world["policy"]), "--root", str(fresh), "--dry-run", "--audit",
                         "--storage-root", str(graphroot), "--tls-verify=false", "--json")
    assert code == 1, err
    applied = json.loads(out)
    assert applied["pending"] and {a["reference"]: a["decision"] for a in applied["audit"]} == got
    assert not (fresh / "etc").exists()
    code, _, err = cli("policy", "apply", "-f", str(world["policy"]), "--root", str(fresh), "--audit")
    assert code == 2 and "--dry-run" in err and not (fresh / "etc").exists()


def test_bad_input_exit_2(cli, world: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Not JSON, a broken YAML, an unreadable storage configuration: one line naming the file, exit 2."""
    ref = world["refs"]["open/any:1"]
    root = tmp_path / "node"
    (root / "etc/containers").mkdir(parents=True)
    (root / "etc/containers/policy.json").write_text('{"default": [')
    code, _, err = cli("audit", "--root", str(root), ref)
    assert code == 2 and "policy.json" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: reject\nscopes:\n  x.example.com: {lookside: file:///x}\n")
    code, _, err = cli("audit", "-f", str(bad), "--root", str(tmp_path / "fresh"), ref)
    assert code == 2 and "bad.yaml:3" in err
    (root / "etc/containers/policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (root / "etc/containers/storage.conf").write_text('[storage\ndriver = "vfs"\n')
    code, _, err = cli("audit", "--root", str(root), "--storage")
    assert code == 2 and "storage.conf" in err and len(err.strip().splitlines()) == 1


def test_requirement_kinds_agree_with_skopeo(cli, world: dict[str, Any], other_signer: GpgHome, signer_pub: Path,  # type: ignore[no-untyped-def]
                                             tmp_path: Path) -> None:
    """keyData, keyPaths, two signedBy requirements (c/image ANDs them), a keyPath that does not exist or holds no
    key, an exactRepository identity, accept + reject in one list: each decision equals skopeo's."""
    import base64

    refs, host, store = world["refs"], world["host"], world["store"]
    other_pub = other_signer.export_public(tmp_path / "other.gpg")
    garbage = tmp_path / "garbage.gpg"
    garbage.write_text("not an OpenPGP keyring\n")

    def signed_by(**fields: Any) -> dict[str, Any]:
        return {"type": "signedBy", "keyType": "GPGKeys", **fields}

    root = tmp_path / "node"
    (root / "etc/containers/registries.d").mkdir(parents=True)
    (root / "etc/containers/registries.d/test.yaml").write_text(
        yaml.safe_dump({"default-docker": {"lookaside": f"file://{store}"}}))
    (root / "etc/containers/policy.json").write_text(json.dumps({"default": [{"type": "reject"}], "transports": {
        "docker": {
            refs["app/signed:1"]: [signed_by(keyData=base64.b64encode(signer_pub.read_bytes()).decode())],
            refs["other/x:1"]: [signed_by(keyPath=str(signer_pub)), signed_by(keyPath=str(other_pub))],
            refs["app/untrusted:1"]: [signed_by(keyPaths=[str(signer_pub), str(other_pub)])],
            f"{host}/app/decoy:1": [signed_by(keyPath=str(tmp_path / "missing.gpg"))],
            refs["open/any:1"]: [signed_by(keyPath=str(garbage))],
            refs["app/unsigned:1"]: [{"type": "insecureAcceptAnything"}, {"type": "reject"}],
            refs["app/wrongrepo:1"]: [signed_by(keyPath=str(signer_pub), signedIdentity={
                "type": "exactRepository", "dockerRepository": f"{host}/app/decoy"})]}}}))
    images = [refs[k] for k in ("app/signed:1", "other/x:1", "app/untrusted:1", "app/unsigned:1",
                                "app/wrongrepo:1")] + [f"{host}/app/decoy:1", refs["open/any:1"]]
    code, doc, err = _audit(cli, "--root", str(root), *images)
    assert code == 1, err
    decided = {img["reference"]: img for img in doc["images"]}
    for ref in images:
        assert _skopeo_accepts(ref, root, tmp_path) == (decided[ref]["decision"] == "accepted"), ref
    assert [decided[r]["decision"] for r in images] == ["accepted", "rejected", "accepted", "rejected", "accepted",
                                                        "rejected", "rejected"]
    assert "no public keys" in decided[refs["open/any:1"]]["reason"]
    both = decided[refs["other/x:1"]]["requirements"]
    assert [q["outcome"] for q in both] == ["pass", "fail"]  # every requirement evaluated, the second refuses
    assert [q["outcome"] for q in decided[refs["app/unsigned:1"]]["requirements"]] == ["pass", "fail"]
    assert "missing.gpg" in decided[f"{host}/app/decoy:1"]["reason"]


def test_audit_mode_scope_is_accepted_now_audited_then_enforced(cli, world: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``enforce: false`` (issue 14 #2): real skopeo pulls an unsigned image of the audit-mode scope (policy.json
    accepts it) while ``audit`` reports what enforcing would refuse (mode audit, report ``warn``, metrics, exit 1);
    deleting the line and re-applying removes the sidecar entry and skopeo then refuses that image."""
    from prometheus_client.parser import text_string_to_metric_families

    refs, host, store = world["refs"], world["host"], world["store"]
    shutil.copy(world["work"] / "trusted.gpg", tmp_path / "trusted.gpg")
    yml = tmp_path / "policy.yaml"

    def write(audit_mode: bool) -> None:
        yml.write_text(f"default: reject\nkeys:\n  trusted: {{file: trusted.gpg}}\nscopes:\n  {host}/app:\n"
                       f"    signed-by: trusted\n    lookaside: file://{store}\n"
                       + ("    enforce: false\n" if audit_mode else ""))

    images = [refs[k] for k in ("app/signed:1", "app/unsigned:1", "app/untrusted:1", "other/x:1")]
    root = tmp_path / "node"
    root.mkdir()
    write(audit_mode=True)
    code, before, err = _audit(cli, "--root", str(root), "-f", str(yml), *images)
    assert code == 1, err
    assert cli("policy", "apply", "-f", str(yml), "--root", str(root), "--keypaths-under-root")[0] == 0
    for ref, accepted in zip(images, (True, True, True, False), strict=True):  # the node accepts the scope now
        assert _skopeo_accepts(ref, root, tmp_path) == accepted, ref
    report, metrics = tmp_path / "report.json", tmp_path / "audit.prom"
    code, after, err = _audit(cli, "--root", str(root), "--report", str(report), "--metrics", str(metrics), *images)
    assert code == 1, err  # accepted now, refused once enforced: what audit answers (docs/policy.md)
    got = {img["reference"]: (img["mode"], img["now"], img["decision"]) for img in after["images"]}
    assert got == {refs["app/signed:1"]: ("audit", "accepted", "accepted"),
                   refs["app/unsigned:1"]: ("audit", "accepted", "rejected"),
                   refs["app/untrusted:1"]: ("audit", "accepted", "rejected"),
                   refs["other/x:1"]: ("enforce", "rejected", "rejected")}
    assert got == {img["reference"]: (img["mode"], img["now"], img["decision"]) for img in before["images"]}
    doc = json.loads(report.read_text())
    validate_report(doc)
    results = {r["properties"]["image"]: r for r in doc["results"]}
    assert results[refs["app/unsigned:1"]]["result"] == "warn" and not results[refs["app/unsigned:1"]]["scored"]
    assert results[refs["app/signed:1"]]["result"] == "pass"
    assert results[refs["other/x:1"]]["result"] == "fail" and results[refs["other/x:1"]]["scored"]
    assert doc["summary"] == {"pass": 1, "fail": 1, "warn": 2, "error": 0, "skip": 0}
    scope = f"transports.docker['{host}/app']"
    samples = {(s.labels["scope"], s.labels["mode"], s.labels["result"]): s.value
               for f in text_string_to_metric_families(metrics.read_text()) if f.name == "atomicsig_audit_images"
               for s in f.samples}
    assert samples[(scope, "audit", "pass")] == 1 and samples[(scope, "audit", "fail")] == 2
    assert samples[("default", "enforce", "fail")] == 1
    code, out, _ = cli("audit", "--tls-verify=false", "--root", str(root), refs["app/unsigned:1"])
    assert code == 1 and out.splitlines()[0].split()[:3] == ["IMAGE", "DECISION", "MODE"]
    assert "audit (accepted now)" in out

    write(audit_mode=False)  # enforce: one line deleted; `audit -f` first answers as after the re-apply
    code, preview, err = _audit(cli, "--root", str(root), "-f", str(yml), refs["app/unsigned:1"])
    assert code == 1, err
    assert [(i["mode"], i["now"], i["decision"]) for i in preview["images"]] == [("enforce", "rejected", "rejected")]
    assert cli("policy", "apply", "-f", str(yml), "--root", str(root), "--keypaths-under-root")[0] == 0
    assert not (root / "var/lib/atomicsig/audit-scopes.json").exists()
    for ref, accepted in zip(images, (True, False, False, False), strict=True):
        assert _skopeo_accepts(ref, root, tmp_path) == accepted, ref
    code, after, err = _audit(cli, "--root", str(root), *images)
    assert code == 1, err
    assert {img["reference"]: (img["mode"], img["decision"]) for img in after["images"]}[refs["app/unsigned:1"]] == \
        ("enforce", "rejected")


def test_the_audit_units_privileges_are_enough_and_needed(world: dict[str, Any], tmp_path: Path) -> None:
    """atomicsig-audit.service runs as root with no capability at all, plus the group that owns
    /var/lib/atomicsig (0750, where the sidecar lives). Reproduced with setpriv: podman's root-owned 0700 storage
    is read as its owner; without the group the sidecar is unreadable, a one-line error and exit 2 (never an audit
    that silently drops the audit-mode scopes); with it, the audit-mode answer."""
    import os
    import subprocess
    import sys

    from tests.conftest import HAVE_PODMAN
    from tests.infra import insecure_policy
    from tests.test_store_images import Podman

    if not HAVE_PODMAN or os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs podman, setpriv and root")
    refs, host, store = world["refs"], world["host"], world["store"]
    graphroot = tmp_path / "storage"
    Podman(tmp_path, graphroot, insecure_policy(tmp_path / "insecure.json")).pull(refs["app/unsigned:1"])
    graphroot.chmod(0o700)
    shutil.copy(world["work"] / "trusted.gpg", tmp_path / "trusted.gpg")
    yml = tmp_path / "policy.yaml"
    yml.write_text(f"default: reject\nkeys:\n  trusted: {{file: trusted.gpg}}\nscopes:\n  {host}/app:\n"
                   f"    signed-by: trusted\n    lookaside: file://{store}\n    enforce: false\n")
    node = tmp_path / "node"
    node.mkdir()
    proc = subprocess.run([sys.executable, "-m", "atomicsig", "policy", "apply", "-f", str(yml), "--root",
                           str(node), "--keypaths-under-root"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    state = node / "var/lib/atomicsig"
    os.chown(state, 64999, 64999)  # as tmpfiles.d leaves it: owned by the atomicsig user, 0750
    state.chmod(0o750)

    def audit(*groups: str) -> subprocess.CompletedProcess[str]:
        sandbox = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
                   *(["--groups", *groups] if groups else ["--clear-groups"])]
        return subprocess.run([*sandbox, sys.executable, "-m", "atomicsig", "audit", "--tls-verify=false", "--json",
                               "--root", str(node), "--storage", "--storage-root", str(graphroot)],
                              capture_output=True, text=True, timeout=120)

    denied = audit()
    assert denied.returncode == 2 and "audit-scopes.json" in denied.stderr, denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1, denied.stderr
    granted = audit("64999")
    assert granted.returncode == 1, granted.stderr
    (img,) = json.loads(granted.stdout)["images"]
    assert (img["reference"], img["mode"], img["now"], img["decision"]) == \
        (refs["app/unsigned:1"], "audit", "accepted", "rejected")
