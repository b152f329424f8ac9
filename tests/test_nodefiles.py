"""Which policy.json and registries.d ``policy show``/``explain`` and ``audit`` judge (issue 14 item 4).

Real files under a temporary node root, for both containers/image lookup generations where they differ; the slow
test at the end runs atomicsig and the installed skopeo in the same private mount namespace and checks that the
file atomicsig names is the file skopeo obeys.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atomicsig.errors import EXIT_USAGE, InputError, PolicyError, StorageError
from atomicsig.format.containers_paths import c_image_from_buildinfo, generation_for_module
from atomicsig.store import nodefiles
from tests.infra import free_port, make_oci_layout

REJECT = {"default": [{"type": "reject"}]}
ACCEPT = {"default": [{"type": "insecureAcceptAnything"}]}


def _write(path: Path, text: str | dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return path


def _node(tmp_path: Path) -> Path:
    root = tmp_path / "node"
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    return root


def test_root_of_a_mounted_node_reads_its_home_first(tmp_path: Path) -> None:
    """--root DIR, no --user: root of that node; DIR/root/.config/containers/policy.json replaces /etc's file in
    both generations (before this change, files under a --root were always taken from /etc)."""
    root = _node(tmp_path)
    etc = _write(root / "etc/containers/policy.json", ACCEPT)
    user = _write(root / "root/.config/containers/policy.json", REJECT)
    for gen in ("old", "new"):
        found = nodefiles.locate(root, generation=gen)
        assert found.policy_path == user and found.policy_role == "user" and found.policy == REJECT
        assert found.shadowed == [str(etc)]
        assert any(str(etc) in w and "is not read" in w for w in found.warnings), found.warnings
    user.unlink()
    found = nodefiles.locate(root, generation="old")
    assert found.policy_path == etc and found.warnings == []


def test_vendor_policy_only_in_the_new_lookup(tmp_path: Path) -> None:
    root = _node(tmp_path)
    vendor = _write(root / "usr/share/containers/policy.json", ACCEPT)
    found = nodefiles.locate(root, generation="new")
    assert (found.policy_path, found.policy_role) == (vendor, "vendor")
    with pytest.raises(PolicyError, match=r"no policy\.json at .*/etc/containers/policy\.json"):
        nodefiles.locate(root, generation="old")  # the released lookup never reads /usr/share
    etc = _write(root / "etc/containers/policy.json", REJECT)
    found = nodefiles.locate(root, generation="new")
    assert found.policy_path == etc and found.shadowed == [str(vendor)]
    assert found.warnings == []  # /etc over /usr/share is the designed override: no warning
    (root / "etc/containers/policy.json").unlink()
    vendor.unlink()
    with pytest.raises(PolicyError, match=r"no policy\.json file found at any of the following"):
        nodefiles.locate(root, generation="new")


def test_user_view_from_the_nodes_passwd(tmp_path: Path) -> None:
    root = _node(tmp_path)
    _write(root / "etc/containers/policy.json", ACCEPT)
    mine = _write(root / "home/alice/.config/containers/policy.json", REJECT)
    found = nodefiles.locate(root, user="alice", generation="new")
    assert found.policy_path == mine and "alice (uid 1000" in found.viewer.label
    assert nodefiles.locate(root, user="1000", generation="old").policy_path == mine
    assert nodefiles.locate(root, generation="old").policy_path == root / "etc/containers/policy.json"
    with pytest.raises(InputError, match="not in"):
        nodefiles.locate(root, user="bob")


def test_old_lookup_user_registries_d_hides_etc(tmp_path: Path) -> None:
    """Released c/image: an existing ~/.config/containers/registries.d is the only directory read; a scope that
    /etc defines too is named in a warning (the administrator's entry is not in force for this user)."""
    root = _node(tmp_path)
    _write(root / "etc/containers/policy.json", ACCEPT)
    etc_file = _write(root / "etc/containers/registries.d/corp.yaml",
                      "docker:\n  reg.example.com/app:\n    lookaside: https://etc.example/sigs\n")
    found = nodefiles.locate(root, generation="old")
    assert found.registries_files == [etc_file]
    user_file = _write(root / "root/.config/containers/registries.d/mine.yaml",
                       "docker:\n  reg.example.com/app:\n    lookaside: https://user.example/sigs\n")
    found = nodefiles.locate(root, generation="old")
    assert found.registries_files == [user_file]
    assert found.registries.docker["reg.example.com/app"].url(write=False) == "https://user.example/sigs"
    assert any("is not read" in w and str(root / "etc/containers/registries.d") in w for w in found.warnings)
    clash = [w for w in found.warnings if "reg.example.com/app" in w]
    assert len(clash) == 1 and str(user_file) in clash[0] and str(etc_file) in clash[0]


def test_new_lookup_merges_dropins_by_name(tmp_path: Path) -> None:
    """Podman 6 line: drop-ins from every directory, a same-named file of higher priority hides a lower one
    (warned), and two *read* files defining one scope are c/image's error, exit 2, naming both files."""
    root = _node(tmp_path)
    _write(root / "etc/containers/policy.json", ACCEPT)
    vendor = _write(root / "usr/share/containers/registries.d/vendor.yaml",
                    "docker:\n  vendor.example.com:\n    lookaside: https://vendor.example/sigs\n")
    hidden = _write(root / "usr/share/containers/registries.d/site.yaml",
                    "docker:\n  site.example.com:\n    lookaside: https://old.example/sigs\n")
    site = _write(root / "etc/containers/registries.d/site.yaml",
                  "docker:\n  site.example.com:\n    lookaside: https://new.example/sigs\n")
    mine = _write(root / "etc/containers/registries.rootless.d/1000/mine.yaml",
                  "default-docker:\n  lookaside: file:///home/alice/sigs\n")
    rootful = _write(root / "etc/containers/registries.rootful.d/root.yaml", "docker: {}\n")
    found = nodefiles.locate(root, user="alice", generation="new")
    assert found.registries_files == [mine, site, vendor]  # sorted by name, rootful.d not read by uid 1000
    assert found.registries.docker["site.example.com"].url(write=False) == "https://new.example/sigs"
    assert any(str(hidden) in w and str(site) in w and "same name" in w for w in found.warnings)
    assert any("site.example.com" in w and "not read" in w for w in found.warnings)
    as_root = nodefiles.locate(root, generation="new")
    assert rootful in as_root.registries_files and mine not in as_root.registries_files
    # the released lookup reads /etc/containers/registries.d only
    assert nodefiles.locate(root, user="alice", generation="old").registries_files == [site]
    _write(root / "etc/containers/registries.d/zz.yaml",
           "docker:\n  vendor.example.com:\n    lookaside: https://dup.example/sigs\n")
    with pytest.raises(PolicyError, match=r'"vendor\.example\.com" defined both in') as err:
        nodefiles.locate(root, user="alice", generation="new")
    assert err.value.exit_code == EXIT_USAGE


def test_unreadable_and_special_files(tmp_path: Path) -> None:
    """A FIFO at policy.json or among registries.d files is refused at once (it used to block forever) as a file
    that cannot be read: exit 3, the configuration may be fine but could not be checked."""
    root = _node(tmp_path)
    (root / "etc/containers").mkdir(parents=True)
    os.mkfifo(root / "etc/containers/policy.json")
    with pytest.raises(StorageError, match="not a regular file"):
        nodefiles.locate(root, generation="old")
    (root / "etc/containers/policy.json").unlink()
    _write(root / "etc/containers/policy.json", ACCEPT)
    (root / "etc/containers/registries.d").mkdir()
    os.mkfifo(root / "etc/containers/registries.d/x.yaml")
    with pytest.raises(StorageError, match="not a regular file"):
        nodefiles.locate(root, generation="old")


def test_generation_from_go_build_info(tmp_path: Path) -> None:
    info = (b"junk\xff Go buildinf:\x08\x02" + b"\0" * 16 + b"\x08go1.24.2\n"
            b"path\tgithub.com/containers/podman/v6/cmd/podman\n"
            b"dep\tgo.podman.io/image/v5\tv5.39.3-0.20260515151312-e2c14667a598\th1:abc=\n"
            b"dep\tgithub.com/containers/image/v5\tv5.23.1\th1:x=\n=>\t./image\tv5.23.2\n")
    assert c_image_from_buildinfo(info) == ("github.com/containers/image/v5", "v5.23.2")
    assert c_image_from_buildinfo(info.split(b"dep\tgithub")[0]) == (
        "go.podman.io/image/v5", "v5.39.3-0.20260515151312-e2c14667a598")
    assert c_image_from_buildinfo(b"no build info") is None
    assert generation_for_module("go.podman.io/image/v5", "v5.39.3-0.20260515151312-e2c14667a598") == "new"
    assert generation_for_module("go.podman.io/image/v5", "v5.39.2") == "old"
    assert generation_for_module("go.podman.io/image/v5", "v5.40.1") == "new"
    assert generation_for_module("github.com/containers/image/v5", "v5.23.1") == "old"
    # a node tree whose podman records a new module: auto picks "new" and says why
    root = _node(tmp_path)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/podman").write_bytes(info.split(b"dep\tgithub")[0])
    gen = nodefiles.installed_generation(root)
    assert gen.name == "new" and "go.podman.io/image/v5" in gen.reason
    if Path("/usr/bin/skopeo").exists():  # Debian 12's skopeo: a GOPATH build, no module list → released
        assert nodefiles.installed_generation("/").name == "old"


def test_cli_names_the_winning_file_and_warns(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = _node(tmp_path)
    etc = _write(root / "etc/containers/policy.json", ACCEPT)
    user = _write(root / "root/.config/containers/policy.json", REJECT)
    code, out, err = cli("policy", "explain", "--root", str(root), "--json", "quay.io/x:1")
    assert code == 0, err
    info = json.loads(out)
    assert info["policy"] == str(user) and info["lookup"]["policy_role"] == "user"
    assert info["requirements"][0]["type"] == "reject"
    assert len(info["warnings"]) == 1 and str(etc) in info["warnings"][0]
    code, out, err = cli("policy", "explain", "--root", str(root), "quay.io/x:1")
    assert f"policy:      {user}" in out and "warning:" in err and str(etc) in err
    code, out, err = cli("policy", "show", "--root", str(root))
    assert code == 0 and out.splitlines()[0].split()[0] == "TRANSPORT"
    assert f"policy.json:  {user} (user;" in err and "warning:" in err
    code, out, err = cli("policy", "show", "--root", str(root), "--json", "--lookup", "new")
    doc = json.loads(out)
    assert doc["lookup"]["generation"] == "new" and doc["lookup"]["policy"] == str(user) and doc["warnings"]
    # audit: a reject-all policy decides without reaching the (absent) registry
    ref = f"127.0.0.1:{free_port()}/x/y:1"
    code, out, err = cli("audit", "--root", str(root), "--json", "--tls-verify=false", ref)
    assert code == 1, err
    doc = json.loads(out)
    assert doc["policy"] == str(user) and doc["lookup"]["policy"] == str(user) and str(etc) in doc["warnings"][0]
    code, out, err = cli("audit", "--root", str(root), "--tls-verify=false", ref)
    assert code == 1 and f"policy.json:  {user}" in err and "warning:" in err


# ---- the installed skopeo obeys the file atomicsig names --------------------------------------------------------


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("skopeo"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def _explain_then_copy(tmp_path: Path, etc: Path, home: Path, ref: str,
                       skopeo_args: str) -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
    """In one private mount namespace with ``etc`` bound over /etc/containers and HOME=``home``: ``policy explain
    --json ref`` (its answer, parsed), then ``skopeo <skopeo_args> dir:…`` (its process): both read the same files,
    so the test can check that the file explain names is the file skopeo obeys. The answer is {} if explain wrote
    none (the namespace failed): the caller's assertion on the process then shows why."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "CONTAINERS_"))}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join(sys.path))
    out = tmp_path / "explain.json"
    out.unlink(missing_ok=True)
    dest = tmp_path / "dest"
    shutil.rmtree(dest, ignore_errors=True)
    script = (f"set -e\nmount --bind '{etc}' /etc/containers\n"
              f"'{sys.executable}' -m atomicsig policy explain --json '{ref}' > '{out}'\n"
              f"exec skopeo {skopeo_args} 'dir:{dest}'")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    return (json.loads(out.read_text()) if out.exists() else {}), proc


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs root, unshare -m and skopeo")
def test_installed_skopeo_obeys_the_file_explain_names(tmp_path: Path) -> None:
    """At --root / with /etc/containers replaced in a private mount namespace: `policy explain` (auto lookup, this
    process's HOME) and `skopeo copy` run side by side; whichever file explain names decides skopeo's answer."""
    layout = make_oci_layout(tmp_path / "oci", "nodefiles")
    home, etc = tmp_path / "home", tmp_path / "etc"
    etc.mkdir()

    def run() -> tuple[dict[str, object], subprocess.CompletedProcess[str]]:
        return _explain_then_copy(tmp_path, etc, home, "docker.io/library/x:1", f"copy --quiet 'oci:{layout}:latest'")

    _write(etc / "policy.json", REJECT)
    info, proc = run()
    assert info["policy"] == "/etc/containers/policy.json" and info["lookup"]["generation"] == "old"  # type: ignore[index]
    assert proc.returncode != 0 and "rejected" in proc.stderr, proc.stderr
    _write(home / ".config/containers/policy.json", ACCEPT)
    info, proc = run()
    assert info["policy"] == str(home / ".config/containers/policy.json") and info["warnings"]
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not _can_unshare(), reason="needs root, unshare -m and skopeo")
def test_installed_skopeo_reads_the_registries_d_explain_names(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    """Same namespace trick for registries.d: the directory skopeo logs ("Using registries.d directory") is the
    one whose files `policy explain` lists, and the lookaside explain prints comes from the file skopeo reads."""
    from tests.infra import push_image

    push_image(registry.host, "nodefiles/app:1", "nodefiles-regd", tmp_path)
    home, etc = tmp_path / "home", tmp_path / "etc"
    _write(etc / "policy.json", ACCEPT)
    etc_sigs, user_sigs = f"file://{tmp_path}/etc-sigs", f"file://{tmp_path}/user-sigs"  # never a remote host
    _write(etc / "registries.d/site.yaml", f"docker:\n  {registry.host}/nodefiles:\n    lookaside: {etc_sigs}\n")
    ref = f"{registry.host}/nodefiles/app:1"

    def run() -> tuple[dict[str, object], str]:
        info, proc = _explain_then_copy(tmp_path, etc, home, ref,
                                        f"--debug copy --quiet --src-tls-verify=false 'docker://{ref}'")
        assert proc.returncode == 0, proc.stderr
        used = [ln.split("Using registries.d directory ", 1)[1].split('"', 1)[0].strip()
                for ln in proc.stderr.splitlines() if "Using registries.d directory" in ln]
        assert used, proc.stderr
        return info, used[0]

    info, used = run()
    assert used == "/etc/containers/registries.d" and info["lookup"]["registries_d"] == [used]  # type: ignore[index]
    assert info["lookaside"] == etc_sigs and info["warnings"] == []
    _write(home / ".config/containers/registries.d/mine.yaml",
           f"docker:\n  {registry.host}/nodefiles:\n    lookaside: {user_sigs}\n")
    info, used = run()
    assert used == str(home / ".config/containers/registries.d") == info["lookup"]["registries_d"][0]  # type: ignore[index]
    assert info["lookaside"] == user_sigs
    assert any("not read" in str(w) and "/etc/containers/registries.d" in str(w) for w in info["warnings"])  # type: ignore[attr-defined]


def test_builtin_default_lookaside_is_the_viewers(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No registries.d entry: c/image reads its built-in default, /var/lib/containers/sigstore for uid 0 and
    ~/.local/share/containers/sigstore of the *pulling* user otherwise (before: always this process's)."""
    root = _node(tmp_path)
    _write(root / "etc/containers/policy.json", ACCEPT)
    code, out, err = cli("policy", "explain", "--root", str(root), "--user", "alice", "--json", "quay.io/x:1")
    assert code == 0, err
    assert json.loads(out)["lookaside"] == "file:///home/alice/.local/share/containers/sigstore"
    code, out, _ = cli("policy", "explain", "--root", str(root), "--json", "quay.io/x:1")
    assert json.loads(out)["lookaside"] == "file:///var/lib/containers/sigstore"


def test_another_users_files_are_read_without_following_links(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--user alice, run by someone else: a symlink in alice's home (to a file only root may read, here a
    policy.json elsewhere) is refused, exit 3, rather than read on her behalf; a FIFO likewise."""
    root = _node(tmp_path)
    _write(root / "etc/containers/policy.json", ACCEPT)
    secret = _write(tmp_path / "root-only.json", REJECT)
    conf = root / "home/alice/.config/containers"
    conf.mkdir(parents=True)
    os.symlink(secret, conf / "policy.json")
    code, out, err = cli("policy", "explain", "--root", str(root), "--user", "alice", "--json", "quay.io/x:1")
    assert code == 3 and "symbolic link" in err and out == "", err
    (conf / "policy.json").unlink()
    _write(conf / "policy.json", REJECT)
    (conf / "registries.d").mkdir()
    os.symlink(secret, conf / "registries.d/x.yaml")
    code, _, err = cli("policy", "explain", "--root", str(root), "--user", "alice", "quay.io/x:1")
    assert code == 3 and "symbolic link" in err and str(conf / "registries.d/x.yaml") in err, err
