"""``atomicsig policy validate|apply|show|explain|render`` against real gpg keys and real files under --root."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from atomicsig.policy import policyjson
from tests.infra import GpgHome

POLICY = "etc/containers/policy.json"
REGD = "etc/containers/registries.d"


def write_yaml(tmp: Path, signer_pub: Path, fingerprint: str, extra: str = "", name: str = "p.yaml") -> Path:
    (tmp / "keys").mkdir(exist_ok=True)
    (tmp / "keys" / "prod.gpg").write_bytes(signer_pub.read_bytes())
    text = (f"# test policy\ndefault: reject\nkeys:\n  prod: {{file: keys/prod.gpg}}\n"
            f"  byfpr: {{fingerprint: {fingerprint}}}\n"
            "scopes:\n"
            "  registry.example.com/prod:\n    signed-by: [prod]\n    lookaside: https://sigs.example.com/sigs\n"
            "  docker.io/library: {action: accept}\n" + extra)
    p = tmp / name
    p.write_text(text)
    return p


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def setup(tmp_path: Path, signer: GpgHome, signer_pub: Path):  # type: ignore[no-untyped-def]
    root = tmp_path / "root"
    root.mkdir()
    yml = write_yaml(tmp_path, signer_pub, signer.fingerprint)
    return root, yml, signer


def apply(cli, yml: Path, root: Path, signer: GpgHome, *extra: str):  # type: ignore[no-untyped-def]
    return cli("policy", "apply", "-f", str(yml), "--root", str(root), "--gnupghome", str(signer.path), *extra)


def test_apply_writes_valid_files_then_is_unchanged(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    code, out, err = apply(cli, yml, root, signer)
    assert code == 0, err
    assert out.strip().endswith("changed (4 files)")
    doc = json.loads((root / POLICY).read_text())
    assert policyjson.problems(doc) == []
    assert doc["default"] == [{"type": "reject"}]
    assert doc["transports"]["docker-daemon"] == {"": [{"type": "insecureAcceptAnything"}]}
    assert doc["transports"]["docker"]["registry.example.com/prod"] == [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/containers/atomicsig-prod.gpg"}]
    keyring = root / "etc/pki/containers/atomicsig-prod.gpg"
    first = keyring.read_bytes()[0]
    assert first == 0xC6 or (first & 0xC0 == 0x80 and (first >> 2) & 0xF == 6)  # binary public-key packet
    assert keyring.stat().st_mode & 0o777 == 0o644
    regd = yaml.safe_load((root / REGD / "atomicsig-registry.example.com-prod.yaml").read_text())
    assert regd == {"docker": {"registry.example.com/prod": {"lookaside": "https://sigs.example.com/sigs"}}}
    state = json.loads((root / "var/lib/atomicsig/policy-state.json").read_text())
    assert state["docker_scopes"] == ["docker.io/library", "registry.example.com/prod"]
    before = snapshot(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    code, out, _ = apply(cli, yml, root, signer)
    assert (code, out.strip()) == (0, "unchanged")
    assert snapshot(root) == before
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes


def test_dry_run_prints_diff_changes_nothing_and_exits_1(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    code, out, err = apply(cli, yml, root, signer, "--dry-run")
    assert code == 1
    assert "+++ b/etc/containers/policy.json" in out and '+            "registry.example.com/prod": [' in out
    assert "changes pending" in err
    assert snapshot(root) == {}
    assert apply(cli, yml, root, signer)[0] == 0
    code, out, err = apply(cli, yml, root, signer, "--dry-run")
    assert (code, out, err.strip().splitlines()[-1]) == (0, "", "unchanged")
    assert apply(cli, yml, root, signer, "--check")[0] == 0


def test_unmanaged_scopes_transports_files_and_unknown_fields_survive(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    (root / REGD).mkdir(parents=True)
    (root / REGD / "vendor.yaml").write_text("docker:\n  quay.io/vendor:\n    lookaside: https://v.example\n")
    existing = {"default": [{"type": "insecureAcceptAnything"}], "x-site-note": {"keep": True},
                "transports": {"docker": {"quay.io/vendor": [{"type": "reject"}]},
                               "oci": {"/srv/images": [{"type": "reject"}]},
                               "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}
    (root / POLICY).write_text(json.dumps(existing))
    code, _, err = apply(cli, yml, root, signer)
    assert code == 0, err
    doc = json.loads((root / POLICY).read_text())
    assert doc["x-site-note"] == {"keep": True}
    assert doc["transports"]["docker"]["quay.io/vendor"] == [{"type": "reject"}]
    assert doc["transports"]["oci"] == existing["transports"]["oci"]
    assert (root / REGD / "vendor.yaml").read_text().startswith("docker:\n  quay.io/vendor")
    backups = list((root / "etc/containers").glob("policy.json.atomicsig-bak.*"))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == existing


def test_removing_a_scope_removes_exactly_its_files(cli, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    extra = ("  quay.io/team:\n    signed-by: byfpr\n    lookaside: https://team.example\n")
    big = write_yaml(tmp_path, Path(tmp_path / "keys" / "prod.gpg"), signer.fingerprint, extra, name="big.yaml")
    (root / "etc/containers").mkdir(parents=True)
    (root / POLICY).write_text(json.dumps({"default": [{"type": "reject"}],
                                           "transports": {"docker": {"unmanaged.example.com": [{"type": "reject"}]}}}))
    assert apply(cli, big, root, signer)[0] == 0
    assert (root / REGD / "atomicsig-quay.io-team.yaml").exists()
    assert (root / "etc/pki/containers/atomicsig-byfpr.gpg").exists()
    code, out, err = apply(cli, yml, root, signer)
    assert code == 0, err
    assert "delete  /etc/containers/registries.d/atomicsig-quay.io-team.yaml" in out
    doc = json.loads((root / POLICY).read_text())
    assert set(doc["transports"]["docker"]) == {"unmanaged.example.com", "registry.example.com/prod",
                                                "docker.io/library"}
    assert not (root / REGD / "atomicsig-quay.io-team.yaml").exists()
    assert not (root / "etc/pki/containers/atomicsig-byfpr.gpg").exists()
    assert list((root / REGD).glob("atomicsig-quay.io-team.yaml.atomicsig-bak.*"))
    assert list((root / "etc/pki/containers").glob("atomicsig-byfpr.gpg.atomicsig-bak.*"))


@pytest.mark.parametrize("content", [b"{not json", b'{"default": [], "default": []}', b"[]"])
def test_existing_policy_that_does_not_parse_is_never_overwritten(cli, setup, content: bytes) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    (root / "etc/containers").mkdir(parents=True)
    (root / POLICY).write_bytes(content)
    before = snapshot(root)
    code, _, err = apply(cli, yml, root, signer)
    assert code == 2
    assert "refusing to touch it" in err
    assert snapshot(root) == before


def test_registries_d_conflict_is_refused_naming_both_files(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    (root / REGD).mkdir(parents=True)
    (root / REGD / "site.yaml").write_text("docker:\n  registry.example.com/prod:\n    lookaside: https://old\n")
    before = snapshot(root)
    code, _, err = apply(cli, yml, root, signer)
    assert code == 2
    assert str(root / REGD / "site.yaml") in err
    assert str(root / REGD / "atomicsig-registry.example.com-prod.yaml") in err
    assert snapshot(root) == before
    code, _, err = cli("policy", "validate", "-f", str(yml), "--root", str(root), "--gnupghome", str(signer.path))
    assert code == 2 and "site.yaml" in err


def test_unmanaged_file_with_our_name_is_refused(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    (root / REGD).mkdir(parents=True)
    (root / REGD / "atomicsig-registry.example.com-prod.yaml").write_text("{}\n")
    code, _, err = apply(cli, yml, root, signer)
    assert code == 2 and "not managed by atomicsig" in err


def test_root_that_is_a_file_is_a_write_error(cli, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, yml, signer = setup
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    code, _, err = apply(cli, yml, f, signer)
    assert code == 3 and "is not a directory" in err
    assert f.read_text() == "x"


def test_unwritable_subtree_is_a_write_error_and_policy_untouched(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    (root / "etc/pki").mkdir(parents=True)
    (root / "etc/pki/containers").write_text("a file where the key directory should be")
    code, _, err = apply(cli, yml, root, signer)
    assert code == 3, err
    assert not (root / POLICY).exists()  # keys are written first, so policy.json never points at missing keys


@pytest.mark.parametrize(("content", "fragment"), [(None, "cannot read"), (b"hello, not a key\n",
                                                                          "is not an OpenPGP public key")])
def test_bad_key_files(cli, setup, content: bytes | None, fragment: str) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    key = yml.parent / "keys" / "prod.gpg"
    if content is None:
        key.unlink()
    else:
        key.write_bytes(content)
    code, _, err = apply(cli, yml, root, signer)
    assert code == 2
    assert f"{yml}:4: key 'prod'" in err and fragment in err
    assert snapshot(root) == {}


def test_unknown_fingerprint(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    yml.write_text(yml.read_text().replace(signer.fingerprint, "0" * 40))
    code, _, err = apply(cli, yml, root, signer)
    assert code == 2 and "not found in GnuPG home" in err


def test_validate_warnings(cli, setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, yml, signer = setup
    yml.write_text(yml.read_text().replace("default: reject", "default: accept") +
                   "  quay.io/nolookaside:\n    signed-by: prod\n")
    code, out, err = cli("policy", "validate", "-f", str(yml), "--root", str(tmp_path / "r"),
                         "--gnupghome", str(signer.path))
    assert code == 0, err
    assert "default is accept" in err
    assert "scope 'quay.io/nolookaside' requires signatures but no lookaside" in err
    assert "registry.example.com/prod' requires" not in err
    assert f"key prod: {signer.fingerprint}" in out


def test_validate_warns_about_a_key_expiring_soon(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from atomicsig.gpg import Keyring

    home = tmp_path / "gh"
    kr = Keyring(str(home))
    key = kr.generate(name="Soon", email="soon@example.com", comment=None, algorithm="ed25519", expire="10d",
                      passphrase=None)
    (tmp_path / "soon.gpg").write_bytes(kr.export_public([key.fingerprint], armor=True))
    (tmp_path / "p.yaml").write_text("default: reject\nkeys:\n  soon: {file: soon.gpg}\nscopes:\n"
                                     "  quay.io: {signed-by: soon, lookaside: 'https://s.example'}\n")
    code, _, err = cli("policy", "validate", "-f", str(tmp_path / "p.yaml"), "--root", str(tmp_path / "r"))
    GpgHome(home).kill_agent()
    assert code == 0
    assert f"key 'soon' ({key.fingerprint}) expires on" in err


def test_keypaths_under_root_and_legacy_registries_keys(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    code, _, err = apply(cli, yml, root, signer, "--keypaths-under-root", "--registries-keys", "both")
    assert code == 0, err
    req = json.loads((root / POLICY).read_text())["transports"]["docker"]["registry.example.com/prod"][0]
    assert req["keyPath"] == f"{root}/etc/pki/containers/atomicsig-prod.gpg"
    assert Path(req["keyPath"]).is_file()
    regd = yaml.safe_load((root / REGD / "atomicsig-registry.example.com-prod.yaml").read_text())
    assert regd["docker"]["registry.example.com/prod"] == {"lookaside": "https://sigs.example.com/sigs",
                                                           "sigstore": "https://sigs.example.com/sigs"}


def test_show_and_explain(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    assert apply(cli, yml, root, signer)[0] == 0
    code, out, err = cli("policy", "show", "--root", str(root))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["TRANSPORT", "NAME", "TYPE", "ID", "STORE"]
    row = next(ln for ln in lines if "registry.example.com/prod" in ln).split()
    assert row == ["repository", "registry.example.com/prod", "signed", signer.email, "https://sigs.example.com/sigs"]
    code, out, _ = cli("policy", "show", "--root", str(root), "--json")
    assert {r["name"] for r in json.loads(out)} >= {"default", "docker.io/library", "registry.example.com/prod"}

    code, out, err = cli("policy", "explain", "--root", str(root), "--json", "registry.example.com/prod/app")
    assert code == 0, err
    info = json.loads(out)
    assert info["reference"] == "registry.example.com/prod/app:latest"
    assert info["scope"] == "transports.docker['registry.example.com/prod']"
    assert info["requirements"][0]["keys"][0]["fingerprint"] == signer.fingerprint
    assert info["lookaside"] == "https://sigs.example.com/sigs"
    code, out, _ = cli("policy", "explain", "--root", str(root), "--json", "docker://quay.io/other:1")
    info = json.loads(out)
    assert (info["scope"], info["requirements"][0]["type"]) == ("default", "reject")
    assert info["lookaside_from"] == "built-in default"
    code, out, _ = cli("policy", "explain", "--root", str(root), "busybox")
    assert "transports.docker['docker.io/library']" in out and "insecureAcceptAnything" in out
    code, out, _ = cli("policy", "explain", "--root", str(root), "docker-daemon:busybox:latest")
    assert 'transports.docker-daemon[""]' in out


@pytest.mark.parametrize("fmt", ["machineconfig", "butane"])
def test_render(cli, setup, fmt: str) -> None:  # type: ignore[no-untyped-def]
    _, yml, signer = setup
    code, out, err = cli("policy", "render", "-f", str(yml), "--format", fmt, "--gnupghome", str(signer.path))
    assert code == 0, err
    doc = yaml.safe_load(out)
    files = doc["spec"]["config"]["storage"]["files"] if fmt == "machineconfig" else doc["storage"]["files"]
    if fmt == "machineconfig":
        assert doc["kind"] == "MachineConfig" and doc["spec"]["config"]["ignition"]["version"] == "3.2.0"
    else:
        assert doc["variant"] == "openshift"
    by_path = {f["path"]: f for f in files}
    assert set(by_path) == {"/etc/containers/policy.json", "/etc/pki/containers/atomicsig-prod.gpg",
                            "/etc/containers/registries.d/atomicsig-registry.example.com-prod.yaml"}
    assert all(f["mode"] == 420 and f["overwrite"] is True for f in files)
    src = by_path["/etc/containers/policy.json"]["contents"]["source"]
    assert src.startswith("data:;base64,")
    policy = json.loads(base64.b64decode(src.split(",", 1)[1]))
    assert policyjson.problems(policy) == []


def test_500_scopes_apply_and_reapply(cli, tmp_path: Path, signer: GpgHome, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    lines = ["default: reject", "keys:", "  k: {file: k.gpg}", "scopes:"]
    for i in range(500):
        lines.append(f"  registry{i % 7}.example.com/team{i}: {{signed-by: k, lookaside: 'https://s{i}.example'}}")
    (tmp_path / "k.gpg").write_bytes(signer_pub.read_bytes())
    (tmp_path / "big.yaml").write_text("\n".join(lines) + "\n")
    root = tmp_path / "root"
    code, out, err = cli("policy", "apply", "-f", str(tmp_path / "big.yaml"), "--root", str(root))
    assert code == 0, err
    assert len(json.loads((root / POLICY).read_text())["transports"]["docker"]) == 500
    assert len(list((root / REGD).glob("*.yaml"))) == 500
    assert len(list((root / "etc/pki/containers").iterdir())) == 1  # one keyring shared by all scopes
    code, out, _ = cli("policy", "apply", "-f", str(tmp_path / "big.yaml"), "--root", str(root))
    assert (code, out.strip()) == (0, "unchanged")


def test_interrupted_apply_leaves_old_policy_then_completes(cli, setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from atomicsig import fsutil
    from atomicsig.errors import StorageError

    root, yml, signer = setup
    (root / "etc/containers").mkdir(parents=True)
    old = json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
    (root / POLICY).write_text(old)
    real = fsutil.atomic_write

    def failing(path, data, mode=0o644, **kw):  # type: ignore[no-untyped-def]
        if str(path).endswith("policy.json"):
            raise StorageError(f"cannot write {path}: simulated crash")
        return real(path, data, mode, **kw)

    monkeypatch.setattr(fsutil, "atomic_write", failing)
    code, _, err = apply(cli, yml, root, signer)
    assert code == 3 and "simulated crash" in err
    assert (root / POLICY).read_text() == old  # nodes still enforce the complete old policy
    assert (root / "etc/pki/containers/atomicsig-prod.gpg").exists()  # written before policy.json
    intent = json.loads((root / "var/lib/atomicsig/policy-state.json").read_text())
    assert "/etc/pki/containers/atomicsig-prod.gpg" in intent["files"]  # claimed before writing: no orphans
    monkeypatch.setattr(fsutil, "atomic_write", real)
    code, out, err = apply(cli, yml, root, signer)
    assert code == 0, err
    assert "update  /etc/containers/policy.json" in out
    assert json.loads((root / POLICY).read_text())["default"] == [{"type": "reject"}]


def test_files_from_an_interrupted_apply_are_cleaned_up_later(cli, setup, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from atomicsig import fsutil
    from atomicsig.errors import StorageError

    root, yml, signer = setup
    real = fsutil.atomic_write

    def failing(path, data, mode=0o644, **kw):  # type: ignore[no-untyped-def]
        if str(path).endswith("policy.json"):
            raise StorageError("simulated crash")
        return real(path, data, mode, **kw)

    monkeypatch.setattr(fsutil, "atomic_write", failing)
    assert apply(cli, yml, root, signer)[0] == 3
    assert (root / REGD / "atomicsig-registry.example.com-prod.yaml").exists()
    monkeypatch.setattr(fsutil, "atomic_write", real)
    small = tmp_path / "small.yaml"
    small.write_text("default: reject\nscopes:\n  docker.io/library: {action: accept}\n")
    code, _, err = apply(cli, small, root, signer)
    assert code == 0, err
    assert not (root / REGD / "atomicsig-registry.example.com-prod.yaml").exists()
    assert not (root / "etc/pki/containers/atomicsig-prod.gpg").exists()
    assert json.loads((root / "var/lib/atomicsig/policy-state.json").read_text())["files"] == []
