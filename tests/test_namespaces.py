"""Per-namespace CRI-O policies (issue 14 item 3): ``namespaces:`` in the policy YAML compiles to
``<signature_policy_dir>/<namespace>.json`` = the node's policy.json plus the namespace's scopes, as OpenShift's
machine-config operator writes them; apply manages them like policy.json; ``explain``/``audit --namespace`` read the
file CRI-O would read (or the global policy when there is none). The slow test has real skopeo load every generated
file against a real docker-registry."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from atomicsig.policy import schema
from atomicsig.policy.schema import scope_within
from tests.infra import POLICY, STATE, GpgHome, Registry, push_image, skopeo_pull

NSDIR = "etc/crio/policies"
HOST = "registry.example.com"


def _yaml(tmp: Path, signer_pub: Path, namespaces: str, scopes: str = "") -> Path:
    (tmp / "prod.gpg").write_bytes(signer_pub.read_bytes())
    p = tmp / "ns.yaml"
    p.write_text("default: reject\nkeys:\n  prod: {file: prod.gpg}\nscopes:\n"
                 f"  {HOST}/shared: {{signed-by: [prod], lookaside: https://sigs.example.com}}\n"
                 f"{scopes}namespaces:\n{namespaces}")
    return p


NAMESPACES = (f"  team-a:\n    scopes:\n      {HOST}/team-a: {{signed-by: [prod]}}\n"
              f"  team-b:\n    scopes:\n      {HOST}/team-b: {{action: accept}}\n")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["Team-a", "-team", "team-", "team_a", "team.a", "a" * 64, "..", "ns/x", "ns\u200b"])
def test_bad_namespace_name_is_exit_2_with_file_and_line(cli, tmp_path: Path, signer_pub: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    yml = _yaml(tmp_path, signer_pub, f"  {json.dumps(name)}:\n    scopes:\n      {HOST}/x: {{action: accept}}\n")
    root = tmp_path / "root"
    code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root))
    assert code == 2 and f"{yml}:7:" in err and "namespace" in err, err
    assert len(err.strip().splitlines()) == 1 and not root.exists()


@pytest.mark.parametrize(("block", "line", "fragment"), [
    (f"  team-a:\n    scopes:\n      {HOST}/a: {{signed-by: [nokey]}}\n", 9, "unknown key 'nokey'"),
    ("  team-a:\n    default: accept\n", 8, "unknown key 'default'"),
    (f"  team-a:\n    scopes:\n      {HOST}/shared: {{action: accept}}\n", 9, "is cluster scope"),
    (f"  team-a:\n    scopes:\n      {HOST}/shared/app: {{action: accept}}\n", 9, "is inside cluster scope"),
    (f"  team-a:\n    scopes:\n      {HOST}/a: {{action: accept, lookaside: https://one.example.com}}\n"
     f"  team-b:\n    scopes:\n      {HOST}/a: {{action: accept, lookaside: https://two.example.com}}\n", 12,
     "lookaside settings differ from line 9"),
    (f"  team-a:\n    scopes:\n      {HOST}/a: {{signed-by: [prod], enforce: false}}\n", 9,
     "enforce: false (audit mode) is only for cluster scopes"),
])
def test_bad_namespace_block_is_exit_2_with_file_and_line(cli, tmp_path: Path, signer_pub: Path, block: str,  # type: ignore[no-untyped-def]
                                                          line: int, fragment: str) -> None:
    yml = _yaml(tmp_path, signer_pub, block)
    root = tmp_path / "root"
    for args in (("policy", "validate", "-f", str(yml)), ("policy", "apply", "-f", str(yml), "--root", str(root))):
        code, _, err = cli(*args)
        assert code == 2 and f"{yml}:{line}:" in err and fragment in err, err
    assert not root.exists()


def test_scope_within_follows_the_mco() -> None:
    assert scope_within("a.example.com/x", "a.example.com/x") and scope_within("a.example.com/x/y", "a.example.com")
    assert not scope_within("a.example.com/xy", "a.example.com/x")
    assert not scope_within("a.example.com", "a.example.com/x")
    assert scope_within("b.a.example.com/x", "*.example.com") and scope_within("*.a.example.com", "*.example.com")
    assert scope_within("b.example.com:5000/x", "*.example.com") and not scope_within("example.com/x", "*.example.com")


def test_same_scope_in_two_namespaces_and_registries_d(tmp_path: Path, signer_pub: Path) -> None:
    yml = _yaml(tmp_path, signer_pub, f"  team-a:\n    scopes:\n      {HOST}/a: {{action: accept, lookaside: https://l.example.com}}\n"
                                     f"  team-b:\n    scopes:\n      {HOST}/a: {{action: reject, lookaside: https://l.example.com}}\n")
    spec = schema.load(yml)
    assert [s.action for ns in spec.namespaces.values() for s in ns.scopes] == ["accept", "reject"]


def _ns(root: Path, name: str) -> dict[str, Any]:
    doc = json.loads((root / NSDIR / f"{name}.json").read_text())
    assert isinstance(doc, dict)
    return doc


def test_apply_writes_manages_and_removes_namespace_files(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    """dry-run writes nothing; apply writes one file per namespace = policy.json + its scopes; a second apply
    changes nothing; a namespace file apply does not own is never touched; dropping a namespace removes its file
    (backed up)."""
    yml = _yaml(tmp_path, signer_pub, NAMESPACES)
    root = tmp_path / "root"
    (root / NSDIR).mkdir(parents=True)
    (root / NSDIR / "other.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    before = _snapshot(root)
    code, out, err = cli("policy", "apply", "-f", str(yml), "--root", str(root), "--dry-run")
    assert code == 1, err
    assert "+++ b/etc/crio/policies/team-a.json" in out and "+++ b/etc/crio/policies/team-b.json" in out
    assert _snapshot(root) == before
    code, out, err = cli("policy", "apply", "-f", str(yml), "--root", str(root))
    assert code == 0, err
    assert str(root / NSDIR / "team-a.json") in out
    policy = json.loads((root / POLICY).read_text())
    docker = policy["transports"]["docker"]
    assert f"{HOST}/shared" in docker and f"{HOST}/team-a" not in docker and f"{HOST}/team-b" not in docker
    a, b = _ns(root, "team-a"), _ns(root, "team-b")
    assert a["default"] == policy["default"] == [{"type": "reject"}]
    for doc, own in ((a, "team-a"), (b, "team-b")):
        assert {k: v for k, v in doc["transports"]["docker"].items() if "team" not in k} == docker  # inherited
        assert {k for k in doc["transports"]["docker"] if "team" in k} == {f"{HOST}/{own}"}
        assert doc["transports"].get("docker-daemon") == policy["transports"].get("docker-daemon")
    assert a["transports"]["docker"][f"{HOST}/team-a"][0]["type"] == "signedBy"
    assert b["transports"]["docker"][f"{HOST}/team-b"] == [{"type": "insecureAcceptAnything"}]
    state = json.loads((root / STATE).read_text())
    assert "/etc/crio/policies/team-a.json" in state["files"] and "/etc/crio/policies/other.json" not in state["files"]
    applied = _snapshot(root)
    code, out, err = cli("policy", "apply", "-f", str(yml), "--root", str(root))
    assert code == 0 and out.strip().endswith("unchanged"), (out, err)
    assert cli("policy", "apply", "-f", str(yml), "--root", str(root), "--dry-run")[0] == 0
    assert _snapshot(root) == applied
    # a staged file left by a killed apply is ours by its name and goes with the next apply
    (root / NSDIR / "team-a.json.atomicsig-next").write_text("{}")
    assert cli("policy", "apply", "-f", str(yml), "--root", str(root))[0] == 0
    assert _snapshot(root) == applied
    # team-b leaves the YAML: its file goes (with a backup), team-a's and the admin's other.json stay
    yml.write_text(yml.read_text().replace(f"  team-b:\n    scopes:\n      {HOST}/team-b: {{action: accept}}\n", ""))
    code, out, err = cli("policy", "apply", "-f", str(yml), "--root", str(root))
    assert code == 0, err
    assert not (root / NSDIR / "team-b.json").exists() and (root / NSDIR / "team-a.json").exists()
    assert len(list((root / NSDIR).glob("team-b.json.atomicsig-bak.*"))) == 1
    assert (root / NSDIR / "other.json").read_bytes() == before[f"{NSDIR}/other.json"]


def test_unmanaged_namespace_file_is_refused_and_nothing_written(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    yml = _yaml(tmp_path, signer_pub, NAMESPACES)
    root = tmp_path / "root"
    (root / NSDIR).mkdir(parents=True)
    (root / NSDIR / "team-a.json").write_text('{"default": [{"type": "reject"}]}\n')  # e.g. the MCO's
    before = _snapshot(root)
    code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root))
    assert code == 2 and "team-a.json exists but is not managed by atomicsig" in err, err
    assert _snapshot(root) == before
    # a state record naming a file apply could never have written does not make it removable
    (root / NSDIR / "team-a.json").unlink()
    (root / "etc/containers").mkdir(parents=True)
    (root / POLICY).write_text('{"default": [{"type": "reject"}]}\n')
    assert cli("policy", "apply", "-f", str(yml), "--root", str(root))[0] == 0
    state = json.loads((root / STATE).read_text())
    state["files"].append("/etc/containers/policy.json")
    (root / STATE).write_text(json.dumps(state))
    code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root), "--signature-policy-dir",
                       "/etc/containers")
    assert code == 2 and "--signature-policy-dir" in err
    assert (root / POLICY).exists()


def test_unmanaged_scope_of_the_same_name_is_anded_like_the_mco(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    """A scope the node's policy.json already has (not from the YAML): the namespace's requirements are appended
    to it (updateNamespacedPolicyJSONs), so c/image requires both."""
    yml = _yaml(tmp_path, signer_pub, NAMESPACES)
    root = tmp_path / "root"
    (root / "etc/containers").mkdir(parents=True)
    (root / POLICY).write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        f"{HOST}/team-a": [{"type": "insecureAcceptAnything"}]}}}))
    assert cli("policy", "apply", "-f", str(yml), "--root", str(root))[0] == 0
    reqs = _ns(root, "team-a")["transports"]["docker"][f"{HOST}/team-a"]
    assert [r["type"] for r in reqs] == ["insecureAcceptAnything", "signedBy"]
    assert _ns(root, "team-b")["transports"]["docker"][f"{HOST}/team-a"] == [{"type": "insecureAcceptAnything"}]


def test_custom_signature_policy_dir_and_render(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    yml = _yaml(tmp_path, signer_pub, NAMESPACES)
    root = tmp_path / "root"
    code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root), "--signature-policy-dir", "/srv/pol")
    assert code == 0, err
    assert (root / "srv/pol/team-a.json").is_file() and not (root / NSDIR).exists()
    for bad in ("relative/dir", "/etc/pki/containers", "/srv/../etc", "//srv/pol", "/srv/./pol", "/",
                "/etc/containers"):
        code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root), "--signature-policy-dir", bad)
        assert code == 2 and "--signature-policy-dir" in err, (bad, err)
    import base64

    for fmt in ("machineconfig", "butane"):
        code, out, err = cli("policy", "render", "-f", str(yml), "--format", fmt)
        assert code == 0, err
        doc = yaml.safe_load(out)
        files = (doc["spec"]["config"]["storage"] if fmt == "machineconfig" else doc["storage"])["files"]
        by_path = {f["path"]: base64.b64decode(f["contents"]["source"].split(",", 1)[1]) for f in files}
        policy = json.loads(by_path["/etc/containers/policy.json"])
        team_a = json.loads(by_path["/etc/crio/policies/team-a.json"])
        assert set(team_a["transports"]["docker"]) == set(policy["transports"]["docker"]) | {f"{HOST}/team-a"}
        assert "/etc/crio/policies/team-b.json" in by_path


def test_explain_namespace_reads_its_file_or_falls_back(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    yml = _yaml(tmp_path, signer_pub, NAMESPACES)
    root = tmp_path / "root"
    assert cli("policy", "apply", "-f", str(yml), "--root", str(root))[0] == 0
    ref = f"{HOST}/team-b/app:1"
    code, out, _ = cli("policy", "explain", ref, "--root", str(root), "--namespace", "team-b", "--json")
    info = json.loads(out)
    assert code == 0 and info["policy"] == str(root / NSDIR / "team-b.json")
    assert info["scope"] == f"transports.docker['{HOST}/team-b']" and "CRI-O reads" in info["namespace_note"]
    code, out, _ = cli("policy", "explain", ref, "--root", str(root), "--namespace", "team-c")
    assert code == 0 and f"policy:      {root / POLICY}" in out
    assert "namespace:   namespace team-c: no /etc/crio/policies/team-c.json, CRI-O falls back" in out
    assert "scope:       default" in out
    code, _, err = cli("policy", "explain", ref, "--root", str(root), "--namespace", "../../etc/x")
    assert code == 2 and "Kubernetes namespace name" in err


# ---- real skopeo ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_namespace_file_is_enforced_by_skopeo_and_audit_agrees(cli, registry: Registry, signer: GpgHome,  # type: ignore[no-untyped-def]
                                                                      signer_pub: Path, tmp_path: Path) -> None:
    """A scope allowed in team-a is refused in team-b and in the global policy; the inherited cluster scope applies
    in every file; an unsigned image in team-a's scope is refused there. skopeo loads each generated file
    (``--policy <ns>.json``), and ``audit --namespace`` gives the same answer; a namespace without a file is judged
    by the global policy, as CRI-O does."""
    from atomicsig.cli import cli as group
    from atomicsig.cli.common import run_main

    host = registry.host
    store = tmp_path / "sigstore"
    refs = {k: f"{host}/{k}" for k in ("shared/base:1", "team-a/app:1", "team-a/unsigned:1", "team-b/app:1")}
    for name, ref in refs.items():
        push_image(host, name, "ns-" + name, tmp_path)
        if "unsigned" not in name:
            old = os.environ.get("GNUPGHOME")
            os.environ["GNUPGHOME"] = str(signer.path)
            try:
                assert run_main(group, ["sign", "--key", signer.fingerprint, "--sigstore", str(store),
                                        "--tls-verify=false", ref]) == 0
            finally:
                os.environ.pop("GNUPGHOME") if old is None else os.environ.__setitem__("GNUPGHOME", old)
    (tmp_path / "prod.gpg").write_bytes(signer_pub.read_bytes())
    look = f"file://{store}"
    yml = tmp_path / "ns.yaml"
    yml.write_text(yaml.safe_dump({
        "default": "reject", "keys": {"prod": {"file": "prod.gpg"}},
        "scopes": {f"{host}/shared": {"signed-by": ["prod"], "lookaside": look}},
        "namespaces": {
            "team-a": {"scopes": {f"{host}/team-a": {"signed-by": ["prod"], "lookaside": look}}},
            "team-b": {"scopes": {f"{host}/team-b": {"signed-by": ["prod"], "lookaside": look}}}}}))
    root = tmp_path / "node"
    code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root), "--keypaths-under-root")
    assert code == 0, err
    expected = {
        "team-a": {"shared/base:1": True, "team-a/app:1": True, "team-a/unsigned:1": False, "team-b/app:1": False},
        "team-b": {"shared/base:1": True, "team-a/app:1": False, "team-a/unsigned:1": False, "team-b/app:1": True},
        None: {"shared/base:1": True, "team-a/app:1": False, "team-a/unsigned:1": False, "team-b/app:1": False}}
    regd = root / "etc/containers/registries.d"
    for ns, want in expected.items():
        policy = root / (f"{NSDIR}/{ns}.json" if ns else POLICY)
        for name, accepted in want.items():
            assert (skopeo_pull(refs[name], policy, regd, tmp_path).returncode == 0) == accepted, (ns, name)
        for asked in ([ns] if ns else ["team-c"]):  # team-c has no file: CRI-O uses the global policy
            code, out, err = cli("audit", "--tls-verify=false", "--json", "--root", str(root), "--namespace", asked,
                                 *refs.values())
            doc = json.loads(out)
            assert code == 1, err
            assert doc["namespace_policy"] == str(policy) and doc["namespace"] == asked
            decided = {img["reference"]: img["decision"] == "accepted" for img in doc["images"]}
            assert decided == {refs[k]: v for k, v in want.items()}, asked
    # -f before apply on a fresh node answers as after it
    fresh = tmp_path / "fresh"
    code, out, err = cli("audit", "--tls-verify=false", "--json", "--root", str(fresh), "-f", str(yml),
                         "--namespace", "team-b", *refs.values())
    assert code == 1, err
    assert {img["reference"]: img["decision"] == "accepted" for img in json.loads(out)["images"]} == \
        {refs[k]: v for k, v in expected["team-b"].items()}
    assert json.loads(out)["namespace_policy"] == str(fresh / NSDIR / "team-b.json")  # where apply puts it
    assert not fresh.exists()
    code, out, err = cli("audit", "--tls-verify=false", "--root", str(root), "--namespace", "team-c",
                         refs["shared/base:1"])
    assert code == 0 and "namespace team-c: no /etc/crio/policies/team-c.json, CRI-O falls back" in err


def test_validate_warns_when_a_namespace_admits_what_the_cluster_refuses(cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                         signer_pub: Path) -> None:
    yml = _yaml(tmp_path, signer_pub, NAMESPACES + f"  team-c:\n    scopes:\n      {HOST}/team-c: {{action: reject}}\n")
    code, _, err = cli("policy", "validate", "-f", str(yml), "--root", str(tmp_path / "root"))
    assert code == 0, err
    assert f"{yml}:9: namespace 'team-a' admits images the cluster policy refuses" in err
    assert f"{yml}:12: namespace 'team-b'" in err and "team-c" not in err
    assert f"{yml}:9: scope '{HOST}/team-a' requires signatures but no lookaside" in err


def test_namespace_scope_over_a_broken_policy_json_scope_is_exit_2(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    yml = _yaml(tmp_path, signer_pub, NAMESPACES)
    root = tmp_path / "root"
    (root / "etc/containers").mkdir(parents=True)
    (root / POLICY).write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        f"{HOST}/team-a": {"type": "insecureAcceptAnything"}}}}))
    before = _snapshot(root)
    code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root))
    assert code == 2 and "is not a list of requirements" in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(root) == before


def test_namespace_file_that_is_a_link_out_of_the_root_is_never_written_through(cli, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                                signer_pub: Path) -> None:
    yml = _yaml(tmp_path, signer_pub, NAMESPACES)
    root = tmp_path / "root"
    outside = tmp_path / "outside.json"
    outside.write_text("precious\n")
    (root / NSDIR).mkdir(parents=True)
    (root / NSDIR / "team-a.json").symlink_to(outside)
    code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root))
    assert code == 2 and "team-a.json" in err, err
    assert outside.read_text() == "precious\n" and not (root / POLICY).exists()
    # recorded by a (forged) state record: still not written through, still not removed
    (root / NSDIR / "team-a.json").unlink()
    assert cli("policy", "apply", "-f", str(yml), "--root", str(root))[0] == 0
    (root / NSDIR / "team-a.json").unlink()
    (root / NSDIR / "team-a.json").symlink_to(outside)
    code, _, err = cli("policy", "apply", "-f", str(yml), "--root", str(root))
    assert code == 2 and outside.read_text() == "precious\n", err
    assert (root / NSDIR / "team-a.json").is_symlink()
