"""``policy apply`` against a hostile tree, state record and YAML (issue 12 #8, #9, #13): it never writes or deletes
outside what it manages, and unsafe names and URLs are refused with ``file:line`` before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra import KEYDIR, POLICY, REGD, STATE


def snapshot(top: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under ``top`` without following links: files by content, links by target, dirs by name."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for p in sorted(top.rglob("*")):
        rel = str(p.relative_to(top))
        if p.is_symlink():
            out[rel] = ("link", str(p.readlink()))
        elif p.is_file():
            out[rel] = ("file", p.read_bytes())
        else:
            out[rel] = ("dir", "")
    return out


# ---- #13: control characters in names and URLs ------------------------------------------------------------------


@pytest.mark.parametrize(("body", "line"), [
    ('keys:\n  "prod\\n": {file: k.gpg}\nscopes:\n  quay.io: {signed-by: "prod\\n"}\n', 4),
    ('keys:\n  "pr\\0od": {file: k.gpg}\n', 4),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside: "https://s.example.com/a\\nb"\n', 6),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside: "https://s.example.com/x\\0"\n', 6),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside: "file:///var/sigs\\x7f"\n', 6),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside: "https://s.example.com/%0d%0aX: y"\n', 6),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside-staging: "file:///var/s\\u2028x"\n', 6),
])
def test_unsafe_names_and_urls_exit_2_with_file_line(cli, tmp_path: Path, signer_pub: Path, body: str,
                                                     line: int) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "k.gpg").write_bytes(signer_pub.read_bytes())
    yml = tmp_path / "p.yaml"
    yml.write_text("# hostile\ndefault: reject\n" + body)
    root = tmp_path / "root"
    for cmd in ("validate", "apply"):
        code, out, err = cli("policy", cmd, "-f", str(yml), "--root", str(root))
        assert code == 2, (cmd, out, err)
        assert err.startswith(f"atomicsig: error: {yml}:{line}: ") and err.count("\n") == 1, err
    assert not root.exists()


# ---- #8: symlinks under --root ----------------------------------------------------------------------------------

YAML = ("default: reject\nkeys:\n  prod: {file: k.gpg}\nscopes:\n"
        "  registry.example.com/prod:\n    signed-by: [prod]\n    lookaside: https://sigs.example.com/sigs\n"
        "  docker.io/library: {action: accept}\n")
OUTSIDE_POLICY = b'{"default": [{"type": "insecureAcceptAnything"}]}\n'


@pytest.fixture
def node(tmp_path: Path, signer_pub: Path) -> tuple[Path, Path, Path]:
    """(root, policy YAML, a directory outside the root holding a file and a valid policy.json)."""
    (tmp_path / "k.gpg").write_bytes(signer_pub.read_bytes())
    yml = tmp_path / "p.yaml"
    yml.write_text(YAML)
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "keep").write_text("precious\n")
    (outside / "policy.json").write_bytes(OUTSIDE_POLICY)
    return root, yml, outside


def apply(cli, yml: Path, root: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("policy", "apply", "-f", str(yml), "--root", str(root), *extra)


def _link(root: Path, rel: str, target: str | Path) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).symlink_to(target)


@pytest.mark.parametrize(("rel", "target"), [
    ("etc/pki", "{outside}"),
    ("etc/pki/containers", "../../../outside"),  # relative, leaves the root
    ("var/lib", "{outside}"),
    ("var/lib/atomicsig", "{outside}"),
    ("etc", "{outside}"),
    ("etc/containers", "{outside}"),
    (REGD, "{outside}"),
    (POLICY, "{outside}/policy.json"),
    (STATE, "{outside}/keep"),
    ("etc/pki", "{outside}/missing"),  # dangling: would be created outside
    ("etc/pki", "/usr/share/pki"),  # absolute link written for a chroot: names the host's directory
])
def test_symlink_out_of_the_root_is_refused_and_nothing_outside_changes(cli, node, rel: str,
                                                                        target: str) -> None:  # type: ignore[no-untyped-def]
    root, yml, outside = node
    _link(root, rel, target.format(outside=outside))
    before_out, before_root = snapshot(outside), snapshot(root)
    for extra in ((), ("--dry-run",), ("--check",)):
        code, out, err = apply(cli, yml, root, *extra)
        assert code == 2, (extra, out, err)
        assert err.count("\n") == 1 and "symlink" in err and ("outside" in err or rel == STATE), err
    code, _, err = cli("policy", "validate", "-f", str(yml), "--root", str(root))
    assert code == 2, err
    assert snapshot(outside) == before_out
    assert snapshot(root) == before_root
    assert not (outside / "missing").exists()


def test_symlinks_that_stay_inside_the_root_are_followed(cli, node) -> None:  # type: ignore[no-untyped-def]
    """The ostree/FCOS shape: /etc and /var real or linked within the tree (relative, or absolute into the root)."""
    root, yml, outside = node
    (root / "usr/etc").mkdir(parents=True)
    _link(root, "etc", "usr/etc")
    (root / "sysroot/var").mkdir(parents=True)
    _link(root, "var", root / "sysroot/var")
    (root / "usr/share/containers").mkdir(parents=True)
    (root / "usr/share/containers/policy.json").write_bytes(OUTSIDE_POLICY)
    (root / "etc/containers").mkdir()
    _link(root, POLICY, "../../share/containers/policy.json")  # etc -> usr/etc, so ../../ is usr/
    before_out = snapshot(outside)
    code, _out, err = apply(cli, yml, root)
    assert code == 0, err
    assert (root / "etc").is_symlink() and (root / "var").is_symlink()
    assert (root / "usr/etc/containers/registries.d/atomicsig.yaml").is_file()
    assert list((root / "usr/etc/pki/containers").glob("atomicsig-prod-*.gpg"))
    assert (root / "sysroot/var/lib/atomicsig/policy-state.json").is_file()
    # policy.json: read through the link (inside the root), replaced by a regular file; the target is untouched.
    assert not (root / POLICY).is_symlink() and "registry.example.com/prod" in (root / POLICY).read_text()
    assert (root / "usr/share/containers/policy.json").read_bytes() == OUTSIDE_POLICY
    [backup] = (root / "usr/etc/containers").glob("policy.json.atomicsig-bak.*")
    assert backup.read_bytes() == OUTSIDE_POLICY
    assert snapshot(outside) == before_out
    assert apply(cli, yml, root)[1].strip() == "unchanged"


@pytest.mark.parametrize("kind", ["fifo", "dir", "link-to-own-file"])
def test_special_files_under_managed_names_are_refused(cli, node, kind: str) -> None:  # type: ignore[no-untyped-def]
    """A FIFO must not block apply, a directory must not be read, a link at a name apply owns was not made by it."""
    import os

    root, yml, _ = node
    assert apply(cli, yml, root)[0] == 0
    [kr] = (root / KEYDIR).glob("atomicsig-prod-*.gpg")
    victim = root / POLICY if kind != "link-to-own-file" else kr
    data = victim.read_bytes()
    victim.unlink()
    if kind == "fifo":
        os.mkfifo(victim)
    elif kind == "dir":
        victim.mkdir()
    else:
        (root / "elsewhere.gpg").write_bytes(data)
        victim.symlink_to(root / "elsewhere.gpg")
    before = snapshot(root)
    code, _, err = apply(cli, yml, root)
    assert code == 2 and err.count("\n") == 1, err
    assert ("not a regular file" if kind != "link-to-own-file" else "is a symlink") in err
    assert snapshot(root) == before


# ---- #9: a tampered state record --------------------------------------------------------------------------------


def test_tampered_state_record_deletes_and_drops_nothing_it_did_not_write(cli, node) -> None:  # type: ignore[no-untyped-def]
    import json

    root, yml, outside = node
    code, _, err = apply(cli, yml, root)
    assert code == 0 and "warning" not in err, err
    [kr] = (root / KEYDIR).glob("atomicsig-prod-*.gpg")
    # Files the admin (or nobody) made, in and out of managed directories.
    planted = {"etc/shadow": b"root:x:0:\n", f"{KEYDIR}/site-ca.pem": b"CA\n",
               f"{REGD}/vendor.yaml": b"docker:\n  quay.io/vendor:\n    lookaside: https://v.example\n",
               f"{KEYDIR}/atomicsig-admin-000000000000.gpg": b"admin's own keyring\n"}
    for rel, data in planted.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    doc = json.loads((root / POLICY).read_text())
    doc["transports"]["docker"]["quay.io/admin"] = [{"type": "reject"}]
    (root / POLICY).write_text(json.dumps(doc))
    state = json.loads((root / STATE).read_text())
    state["files"] += ["/" + rel for rel in planted] + [
        str(outside / "keep"), f"/{KEYDIR}/../../../../outside/keep", f"/{KEYDIR}/../../shadow",
        f"/{KEYDIR}//atomicsig-x.gpg", f"/{KEYDIR}/atomicsig-\n.gpg", 42]
    state["sha256"][f"/{KEYDIR}/atomicsig-admin-000000000000.gpg"] = ["0" * 64]
    state["docker_scopes"] += ["quay.io/admin", "docker.io/library", "quay.io/never-there"]
    (root / STATE).write_text(json.dumps(state))
    # The YAML now drops docker.io/library: but the admin edited it after the last apply.
    doc["transports"]["docker"]["docker.io/library"] = [{"type": "reject"}]
    (root / POLICY).write_text(json.dumps(doc))
    yml.write_text(YAML.replace("  docker.io/library: {action: accept}\n", ""))
    before_out = snapshot(outside)

    code, out, err = apply(cli, yml, root)
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "policy-state.json" in warnings[0] and "left in place" in warnings[0], err
    for rel, data in planted.items():
        assert (root / rel).read_bytes() == data, rel
    assert snapshot(outside) == before_out
    docker = json.loads((root / POLICY).read_text())["transports"]["docker"]
    assert docker["quay.io/admin"] == [{"type": "reject"}]
    assert docker["docker.io/library"] == [{"type": "reject"}]
    assert kr.exists()  # still what apply wrote and still compiled
    after = json.loads((root / STATE).read_text())
    assert after["docker_scopes"] == ["registry.example.com/prod"]
    assert after["files"] == sorted([f"/{REGD}/atomicsig.yaml", f"/{KEYDIR}/{kr.name}"])
    # Warned once: the record no longer names them.
    code, out, err = apply(cli, yml, root)
    assert (code, out.strip(), err) == (0, "unchanged", ""), err


def test_a_file_apply_wrote_then_changed_by_the_admin_is_not_removed(cli, node) -> None:  # type: ignore[no-untyped-def]
    root, yml, _ = node
    assert apply(cli, yml, root)[0] == 0
    (root / REGD / "atomicsig.yaml").write_text("docker:\n  registry.example.com/prod:\n    lookaside: https://mine\n")
    yml.write_text(YAML.replace("    lookaside: https://sigs.example.com/sigs\n", ""))
    code, _out, err = apply(cli, yml, root)
    assert code == 0, err
    assert "https://mine" in (root / REGD / "atomicsig.yaml").read_text()
    assert "warning:" in err and "atomicsig.yaml" in err


def test_removed_scope_and_keyring_still_go_when_unchanged(cli, node) -> None:  # type: ignore[no-untyped-def]
    """The defence must not stop ordinary clean-up: what apply wrote and nobody touched is removed."""
    root, yml, _ = node
    assert apply(cli, yml, root)[0] == 0
    [kr] = (root / KEYDIR).glob("atomicsig-prod-*.gpg")
    yml.write_text("default: reject\nscopes:\n  docker.io/library: {action: accept}\n")
    code, _out, err = apply(cli, yml, root)
    assert code == 0 and "warning" not in err, err
    assert not kr.exists() and not (root / REGD / "atomicsig.yaml").exists()
    import json

    assert set(json.loads((root / POLICY).read_text())["transports"]["docker"]) == {"docker.io/library"}


# ---- #8: the tree changes between plan and execute --------------------------------------------------------------


@pytest.mark.parametrize("existed", [True, False], ids=["dir-swapped-for-link", "link-planted-where-nothing-was"])
def test_a_link_planted_after_the_plan_does_not_redirect_writes(node, existed: bool) -> None:  # type: ignore[no-untyped-def]
    """Check-then-write is the race issue 12 #8 found: the plan holds directory descriptors, so a directory
    swapped for a link afterwards is not followed; a link planted where nothing existed is refused at write."""
    from atomicsig.errors import PolicyError
    from atomicsig.policy import apply as policy_apply
    from atomicsig.policy import keymaterial, schema

    root, yml, outside = node
    if existed:
        (root / KEYDIR).mkdir(parents=True)
    spec = schema.load(yml)
    p = policy_apply.plan(spec, keymaterial.resolve(spec, None), root)
    before_out = snapshot(outside)
    if existed:
        (root / KEYDIR).rename(root / "etc/pki/moved")
        _link(root, KEYDIR, outside)
        policy_apply.execute(p)
        assert list((root / "etc/pki/moved").glob("atomicsig-prod-*.gpg"))  # where the plan looked
    else:
        _link(root, "etc/pki", outside)
        with pytest.raises(PolicyError, match="outside"):
            policy_apply.execute(p)
    assert snapshot(outside) == before_out
