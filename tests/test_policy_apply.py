"""``atomicsig policy validate|apply|show|explain|render`` against real gpg keys and real files under --root."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from atomicsig.format import policyjson
from atomicsig.policy import apply as policy_apply
from atomicsig.policy import keymaterial, schema
from atomicsig.store import registries_d
from tests.infra import KEYDIR, POLICY, REGD, REGFILE, STATE, GpgHome, legacy_layout


def keyring(root: Path, names: str, ext: str = "gpg") -> Path:
    """The one live keyring for ``names``; its name must carry the first 12 hex of its content's sha256."""
    found = [p for p in (root / KEYDIR).glob(f"atomicsig-{names}-*.{ext}") if ".atomicsig-bak." not in p.name]
    assert len(found) == 1, found
    assert found[0].name == f"atomicsig-{names}-{hashlib.sha256(found[0].read_bytes()).hexdigest()[:12]}.{ext}"
    return found[0]


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
    kr = keyring(root, "prod")
    assert doc["transports"]["docker"]["registry.example.com/prod"] == [
        {"type": "signedBy", "keyType": "GPGKeys", "keyPath": f"/etc/pki/containers/{kr.name}"}]
    first = kr.read_bytes()[0]
    assert first == 0xC6 or (first & 0xC0 == 0x80 and (first >> 2) & 0xF == 6)  # binary public-key packet
    assert kr.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in (root / REGD).iterdir()) == ["atomicsig.yaml"]
    regd = yaml.safe_load((root / REGFILE).read_text())
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
    assert "quay.io/team" in registries_d.load_dir(root / REGD).docker
    byfpr = keyring(root, "byfpr")
    code, out, err = apply(cli, yml, root, signer)
    assert code == 0, err
    assert f"update  {root}/etc/containers/registries.d/atomicsig.yaml" in out
    assert f"delete  {root}/etc/pki/containers/{byfpr.name}" in out
    doc = json.loads((root / POLICY).read_text())
    assert set(doc["transports"]["docker"]) == {"unmanaged.example.com", "registry.example.com/prod",
                                                "docker.io/library"}
    assert set(registries_d.load_dir(root / REGD).docker) == {"registry.example.com/prod"}
    assert not byfpr.exists()
    assert [p for p in (root / KEYDIR).iterdir() if ".atomicsig-bak." not in p.name] == [keyring(root, "prod")]
    backup = list((root / REGD).glob("atomicsig.yaml.atomicsig-bak.*"))
    assert len(backup) == 1 and "quay.io/team" in yaml.safe_load(backup[0].read_text())["docker"]
    assert list((root / KEYDIR).glob(f"{byfpr.name}.atomicsig-bak.*"))


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
    assert str(root / REGFILE) in err
    assert snapshot(root) == before
    code, _, err = cli("policy", "validate", "-f", str(yml), "--root", str(root), "--gnupghome", str(signer.path))
    assert code == 2 and "site.yaml" in err


def test_unmanaged_file_with_our_name_is_refused(cli, setup) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    (root / REGD).mkdir(parents=True)
    (root / REGFILE).write_text("{}\n")
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
    from atomicsig.gnupg.keyring import Keyring

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
    assert req["keyPath"] == str(keyring(root, "prod"))
    regd = yaml.safe_load((root / REGFILE).read_text())
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
    shown = json.loads(out)  # {"lookup", "warnings", "rows"} since issue 14 item 4 (was the bare list of rows)
    assert {r["name"] for r in shown["rows"]} >= {"default", "docker.io/library", "registry.example.com/prod"}
    assert shown["lookup"]["policy"] == str(root / POLICY) and shown["warnings"] == []

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
    assert {p for p in by_path if not p.startswith("/etc/pki/")} == {"/etc/containers/policy.json",
                                                                    "/etc/containers/registries.d/atomicsig.yaml"}
    [key_path] = [p for p in by_path if p.startswith("/etc/pki/containers/atomicsig-prod-")]
    key = base64.b64decode(by_path[key_path]["contents"]["source"].split(",", 1)[1])
    assert key_path.endswith(f"-{hashlib.sha256(key).hexdigest()[:12]}.gpg")
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
    assert [p.name for p in (root / REGD).glob("*.yaml")] == ["atomicsig.yaml"]
    assert len(registries_d.load_dir(root / REGD).docker) == 500
    assert len(list((root / "etc/pki/containers").iterdir())) == 1  # one keyring shared by all scopes
    code, out, _ = cli("policy", "apply", "-f", str(tmp_path / "big.yaml"), "--root", str(root))
    assert (code, out.strip()) == (0, "unchanged")


def fail_staged_policy_write(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make writing the staged policy.json (before its rename) fail, as a crash there would; returns the undo."""
    from atomicsig import fsutil
    from atomicsig.errors import StorageError

    real = fsutil.atomic_write_at

    def failing(dir_fd, name, data, mode=0o644, **kw):  # type: ignore[no-untyped-def]
        if name == "policy.json.atomicsig-next":
            raise StorageError(f"cannot write {name}: simulated crash")
        return real(dir_fd, name, data, mode, **kw)

    monkeypatch.setattr(fsutil, "atomic_write_at", failing)
    return lambda: monkeypatch.setattr(fsutil, "atomic_write_at", real)


def test_interrupted_apply_leaves_old_policy_then_completes(cli, setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    (root / "etc/containers").mkdir(parents=True)
    old = json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
    (root / POLICY).write_text(old)
    restore = fail_staged_policy_write(monkeypatch)
    code, _, err = apply(cli, yml, root, signer)
    assert code == 3 and "simulated crash" in err
    assert (root / POLICY).read_text() == old  # nodes still enforce the complete old policy
    kr = keyring(root, "prod")  # written before policy.json
    intent = json.loads((root / STATE).read_text())
    assert f"/etc/pki/containers/{kr.name}" in intent["files"]  # claimed before writing: no orphans
    restore()
    code, out, err = apply(cli, yml, root, signer)
    assert code == 0, err
    assert f"update  {root}/etc/containers/policy.json" in out
    assert json.loads((root / POLICY).read_text())["default"] == [{"type": "reject"}]


def test_files_from_an_interrupted_apply_are_cleaned_up_later(cli, setup, monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, yml, signer = setup
    restore = fail_staged_policy_write(monkeypatch)
    assert apply(cli, yml, root, signer)[0] == 3
    assert (root / f"{REGFILE}.atomicsig-next").exists() and not (root / REGFILE).exists()
    assert keyring(root, "prod").exists()
    restore()
    small = tmp_path / "small.yaml"
    small.write_text("default: reject\nscopes:\n  docker.io/library: {action: accept}\n")
    code, _, err = apply(cli, small, root, signer)
    assert code == 0, err
    assert not list((root / REGD).iterdir())
    assert not list((root / KEYDIR).glob("atomicsig-prod-*.gpg"))
    assert json.loads((root / STATE).read_text())["files"] == []


# ---- one commit point: what a node reads after every single rename/unlink of an apply ---------------------------




def _lookasides(regd: Path) -> dict[str, str | None]:
    return {scope: sec.url(write=False) for scope, sec in registries_d.load_dir(regd).docker.items()}


class NodeReader:
    """Reads a node the way c/image does and classifies it against the old and the new version of its files."""

    def __init__(self, root: Path, old: Path, new: Path) -> None:
        self.root = root
        self.old, self.new = snapshot(old), snapshot(new)
        self.old_regd, self.new_regd = _lookasides(old / REGD), _lookasides(new / REGD)
        self.views: list[tuple[str, str]] = []

    def trust(self) -> str:
        """policy.json plus every keyring it names: must be exactly the old set or exactly the new set."""
        seen = {POLICY: (self.root / POLICY).read_bytes()}
        doc = policyjson.loads(seen[POLICY], POLICY)
        assert policyjson.problems(doc) == []
        for reqs in doc["transports"]["docker"].values():
            for req in reqs:
                if "keyPath" in req:
                    rel = req["keyPath"].lstrip("/")
                    seen[rel] = (self.root / rel).read_bytes()  # FileNotFoundError = a policy without its keys
        for name, snap in (("old", self.old), ("new", self.new)):
            if all(snap.get(k) == v for k, v in seen.items()):
                return name
        raise AssertionError(f"policy.json and its keyrings are a mix of old and new: {sorted(seen)}")

    def registries(self) -> str:
        files = {p.name for p in (self.root / REGD).iterdir()}
        assert not ("atomicsig.yaml" in files and any(n.startswith("atomicsig-") and n.endswith(".yaml")
                                                      for n in files)), files
        now = _lookasides(self.root / REGD)  # raises PolicyError if a scope is defined in two files
        if now == self.new_regd:
            return "new"
        if now == self.old_regd:
            return "old"
        assert set(now.items()) < set(self.old_regd.items()), now  # only ever scopes missing, nothing foreign
        return "partial"

    def look(self) -> None:
        self.views.append((self.trust(), self.registries()))


def observe_every_step(monkeypatch: pytest.MonkeyPatch, look: Callable[[], None]) -> None:
    """Run ``look`` after every rename and unlink (the only operations that change what a node reads; writes go
    to temp names), one at a time, from whichever thread made it."""
    lock = threading.Lock()
    real_replace, real_unlink, real_os_unlink = os.replace, Path.unlink, os.unlink

    def replace(src, dst, **kw):  # type: ignore[no-untyped-def]
        with lock:
            real_replace(src, dst, **kw)
            look()

    def unlink(path, missing_ok=False):  # type: ignore[no-untyped-def]
        with lock:
            real_unlink(path, missing_ok=missing_ok)
            look()
    def os_unlink(path, **kw):  # type: ignore[no-untyped-def]
        with lock:
            real_os_unlink(path, **kw)
            look()
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(os, "unlink", os_unlink)


@pytest.fixture
def a_to_b(tmp_path: Path, signer: GpgHome, signer_pub: Path, other_signer: GpgHome):  # type: ignore[no-untyped-def]
    """Two policies differing in a keyring's content (same name), a lookaside, an added and a removed scope."""
    other_pub = other_signer.export_public(tmp_path / "other.gpg")
    out = {}
    for v, parts in {"a": [signer_pub], "b": [signer_pub, other_pub]}.items():
        d = tmp_path / v
        (d / "keys").mkdir(parents=True)
        (d / "keys" / "prod.gpg").write_bytes(b"".join(p.read_bytes() for p in parts))
        extra = "  quay.io/gone:\n    signed-by: prod\n    lookaside: https://gone.example\n" if v == "a" else \
            "  quay.io/added:\n    signed-by: prod\n    lookaside: https://added.example\n"
        (d / "p.yaml").write_text("default: reject\nkeys:\n  prod: {file: keys/prod.gpg}\nscopes:\n"
                                  f"  registry.example.com/prod:\n    signed-by: prod\n"
                                  f"    lookaside: https://sigs-{v}.example.com/sigs\n"
                                  "  docker.io/library: {action: accept}\n" + extra)
        spec = schema.load(str(d / "p.yaml"))
        out[v] = (spec, keymaterial.resolve(spec, None))
    return out


def _converge(root: Path, spec, keys) -> None:  # type: ignore[no-untyped-def]
    p = policy_apply.plan(spec, keys, root)
    if p.pending:
        policy_apply.execute(p)


@pytest.mark.parametrize("legacy", [False, True], ids=["current-layout", "from-per-scope-files"])
def test_every_step_of_an_apply_is_all_old_or_all_new(a_to_b, tmp_path: Path, monkeypatch, legacy: bool) -> None:  # type: ignore[no-untyped-def]
    import shutil

    root, expected = tmp_path / "node", tmp_path / "expected"
    _converge(root, *a_to_b["a"])
    if legacy:
        assert len(legacy_layout(root)) == 2
    shutil.copytree(root, expected)
    _converge(expected, *a_to_b["b"])
    old_copy = tmp_path / "old"
    shutil.copytree(root, old_copy)
    reader = NodeReader(root, old_copy, expected)
    assert reader.registries() == "old" and reader.trust() == "old"
    observe_every_step(monkeypatch, reader.look)
    policy_apply.execute(policy_apply.plan(*a_to_b["b"], root))
    monkeypatch.undo()
    views = reader.views
    # Trust switches exactly once (the policy.json rename) and registries.d switches one step before it.
    switch = [t for t, _ in views].index("new")
    assert all(t == "old" for t, _ in views[:switch]) and all(t == "new" for t, _ in views[switch:])
    assert views[switch - 1] == ("old", "new"), views
    assert all(r == "new" for _, r in views[switch:])
    # Before: intent record, backups, keyrings (invisible: nothing names them yet), then registries.d. From
    # per-scope files, their deletions come first (scopes briefly undefined: fail-closed), then one rename.
    regd_steps = "".join(r[0] for _, r in views[:switch])  # o(ld) p(artial) n(ew), one letter per step
    assert re.fullmatch("o+p{2}n" if legacy else "o+n", regd_steps), regd_steps
    assert {k: v for k, v in snapshot(root).items() if ".atomicsig-bak." not in k} == \
        {k: v for k, v in snapshot(expected).items() if ".atomicsig-bak." not in k}
    assert not policy_apply.plan(*a_to_b["b"], root).pending


def test_migration_killed_before_the_rename_rolls_forward(a_to_b, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "node"
    _converge(root, *a_to_b["a"])
    legacy = legacy_layout(root)
    real_replace = os.replace

    def crash(src, dst, **kw):  # type: ignore[no-untyped-def]
        if str(src).endswith(policy_apply.STAGING_SUFFIX):
            raise OSError(5, "simulated crash")
        return real_replace(src, dst, **kw)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Exception, match="simulated crash"):
        policy_apply.execute(policy_apply.plan(*a_to_b["b"], root))
    monkeypatch.undo()
    names = {p.name for p in (root / REGD).iterdir() if ".atomicsig-bak." not in p.name}
    assert names == {"atomicsig.yaml" + policy_apply.STAGING_SUFFIX}  # old files gone, new one not yet live
    assert _lookasides(root / REGD) == {}
    assert all(f"/{REGD}/{n}" in json.loads((root / STATE).read_text())["files"] for n in legacy)
    _converge(root, *a_to_b["b"])
    assert {p.name for p in (root / REGD).iterdir() if ".atomicsig-bak." not in p.name} == {"atomicsig.yaml"}
    assert _lookasides(root / REGD) == {"registry.example.com/prod": "https://sigs-b.example.com/sigs",
                                        "quay.io/added": "https://added.example"}
    state = json.loads((root / STATE).read_text())
    assert state["files"] == sorted([f"/{REGFILE}", f"/{KEYDIR}/{keyring(root, 'prod').name}"])
    assert [p.name for p in (root / KEYDIR).iterdir() if ".atomicsig-bak." not in p.name] == \
        [keyring(root, "prod").name]
    assert not policy_apply.plan(*a_to_b["b"], root).pending


def test_changed_key_gets_a_new_name_and_the_old_one_outlives_the_old_policy(a_to_b, tmp_path: Path,
                                                                          monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from atomicsig.errors import StorageError

    root = tmp_path / "node"
    _converge(root, *a_to_b["a"])
    old_key = keyring(root, "prod")
    old_policy = (root / POLICY).read_bytes()
    fail_staged_policy_write(monkeypatch)
    with pytest.raises(StorageError):
        policy_apply.execute(policy_apply.plan(*a_to_b["b"], root))
    monkeypatch.undo()
    assert (root / POLICY).read_bytes() == old_policy and old_key.exists()  # old policy, old keys: unchanged trust
    live = sorted(p.name for p in (root / KEYDIR).iterdir() if ".atomicsig-bak." not in p.name)
    assert len(live) == 2 and old_key.name in live  # the new keyring waits, unreferenced, under its own name
    _converge(root, *a_to_b["b"])
    new_key = keyring(root, "prod")
    assert new_key.name != old_key.name and not old_key.exists()
    assert f"/etc/pki/containers/{new_key.name}" in (root / POLICY).read_text()
