"""Where podman/skopeo read policy.json, registries.d and storage.conf (issue 14 item 4).

Unit tests pin each generation's order to the rules read in containers/image (see the module docstring); the
slow tests prove the installed skopeo (Debian 12: 1.9.3, containers/image v5.23.1 = the "old" generation) reads
policy.json and registries.d from exactly where :mod:`atomicsig.format.containers_paths` says, by giving each
location a different policy and watching what skopeo does. /etc and /usr/share are replaced inside a private
mount namespace (``unshare -m``, root only), so the host's files are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from atomicsig.errors import InputError
from atomicsig.format.containers_paths import (
    Candidate,
    UserEnv,
    first_existing,
    generation_for_c_image,
    hidden_dropins,
    merge_dropins,
    policy_json_candidates,
    registries_d_candidates,
    registries_d_files,
    shadowed,
    storage_conf_candidates,
)
from tests.infra import make_oci_layout, push_image

ROOTLESS = UserEnv(home="/home/u", uid=1000, xdg_config_home="/xdg")
ROOT = UserEnv(home="/root", uid=0)


def _paths(cands: list[Candidate]) -> list[str]:
    return [c.path for c in cands]


def test_generation_from_version() -> None:
    assert generation_for_c_image("5.23.1") == "old"
    assert generation_for_c_image("v5.39.2") == "old"
    assert generation_for_c_image("5.40.0-dev") == "new"
    assert generation_for_c_image("6.0.0") == "new"
    with pytest.raises(InputError):
        generation_for_c_image("five")


def test_policy_old_ignores_xdg_and_usr_share() -> None:
    assert _paths(policy_json_candidates(ROOTLESS, "old")) == [
        "/home/u/.config/containers/policy.json", "/etc/containers/policy.json"]
    assert _paths(policy_json_candidates(ROOT, "old", root="/sysroot")) == [
        "/root/.config/containers/policy.json", "/sysroot/etc/containers/policy.json"]


def test_policy_new_order_and_env() -> None:
    assert _paths(policy_json_candidates(ROOTLESS, "new", root="/r")) == [
        "/xdg/containers/policy.json", "/r/etc/containers/policy.json", "/r/usr/share/containers/policy.json"]
    env = UserEnv(home="/home/u", uid=1000, containers_policy_json="/p.json")
    (only,) = policy_json_candidates(env, "new")
    assert only.path == "/p.json" and only.must_exist
    # --policy beats everything in both generations
    for gen in ("old", "new"):
        assert _paths(policy_json_candidates(env, gen, override="/cli.json")) == ["/cli.json"]  # type: ignore[arg-type]


def test_first_existing() -> None:
    cands = policy_json_candidates(ROOTLESS, "new")
    assert first_existing(cands, lambda p: p.startswith("/usr")) == cands[2]
    assert first_existing(cands, lambda p: False) is None
    old = policy_json_candidates(ROOTLESS, "old")
    # old: the /etc file is used even when absent (skopeo then fails to open it)
    assert first_existing(old, lambda p: False) == old[1]


def test_registries_d_new_dropin_order() -> None:
    assert _paths(registries_d_candidates(ROOT, "new")) == [
        "/root/.config/containers/registries.d",
        "/etc/containers/registries.rootful.d", "/etc/containers/registries.d",
        "/usr/share/containers/registries.rootful.d", "/usr/share/containers/registries.d"]
    assert _paths(registries_d_candidates(ROOTLESS, "new"))[:3] == [
        "/xdg/containers/registries.d", "/etc/containers/registries.rootless.d/1000",
        "/etc/containers/registries.rootless.d"]


def test_registries_d_merge_by_name() -> None:
    tree = {"/xdg/containers/registries.d": ["b.yaml", "x.yml"],
            "/etc/containers/registries.d": ["a.yaml", "b.yaml"],
            "/usr/share/containers/registries.d": ["a.yaml", "c.yaml"]}
    files = registries_d_files(ROOTLESS, "new", tree.get)
    assert files == ["/etc/containers/registries.d/a.yaml", "/xdg/containers/registries.d/b.yaml",
                     "/usr/share/containers/registries.d/c.yaml"]
    # old: the user directory, once it exists, hides /etc entirely (even when it is empty)
    old_tree = {"/home/u/.config/containers/registries.d": [], "/etc/containers/registries.d": ["a.yaml"]}
    assert registries_d_files(ROOTLESS, "old", old_tree.get) == []
    assert registries_d_files(ROOTLESS, "old", {"/etc/containers/registries.d": ["a.yaml"]}.get) == [
        "/etc/containers/registries.d/a.yaml"]
    cands = registries_d_candidates(ROOTLESS, "new")
    assert merge_dropins([(cands[0], ["z.yaml"]), (cands[3], ["z.yaml"])]) == ["/xdg/containers/registries.d/z.yaml"]


def test_shadowed_and_hidden_files_for_warnings() -> None:
    cands = policy_json_candidates(ROOTLESS, "new")
    everything = shadowed(cands, lambda p: True)
    assert [c.role for c in everything] == ["admin", "vendor"]
    assert shadowed(cands, lambda p: p.startswith("/usr")) == []
    regd = registries_d_candidates(ROOTLESS, "new")
    listing = [(regd[0], ["a.yaml", "b.yaml"]), (regd[3], ["a.yaml", "c.yaml"]), (regd[6], ["a.yaml"])]
    assert hidden_dropins(listing) == [
        ("/etc/containers/registries.d/a.yaml", "/xdg/containers/registries.d/a.yaml"),
        ("/usr/share/containers/registries.d/a.yaml", "/xdg/containers/registries.d/a.yaml")]


def test_storage_conf_order() -> None:
    assert _paths(storage_conf_candidates(ROOT, "old")) == [
        "/etc/containers/storage.conf", "/usr/share/containers/storage.conf"]
    assert _paths(storage_conf_candidates(ROOTLESS, "old"))[0] == "/xdg/containers/storage.conf"
    no_xdg = UserEnv(home="/home/u", uid=1000)
    assert _paths(storage_conf_candidates(no_xdg, "old"))[0] == "/home/u/.config/containers/storage.conf"
    env = UserEnv(home="/home/u", uid=1000, containers_storage_conf="/s.conf")
    assert _paths(storage_conf_candidates(env, "new")) == ["/s.conf"]


# ---- the installed skopeo (old generation) ---------------------------------------------------------------------

REJECT = {"default": [{"type": "reject"}]}
ACCEPT = {"default": [{"type": "insecureAcceptAnything"}]}


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def _skopeo_copy(env_home: Path, layout: Path, dest: Path, *, xdg: Path | None = None, etc: Path | None = None,
                 usr_share: Path | None = None, debug_src: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run skopeo copy in a private mount namespace where /etc/containers and /usr/share/containers are ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env["HOME"] = str(env_home)
    if xdg is not None:
        env["XDG_CONFIG_HOME"] = str(xdg)
    script = ["set -e"]
    if etc is not None:
        script.append(f"mount --bind '{etc}' /etc/containers")
    if usr_share is not None:
        script.append(f"mkdir -p /usr/share/containers && mount --bind '{usr_share}' /usr/share/containers")
    src = debug_src or f"oci:{layout}:latest"
    flags = "--debug " if debug_src else ""
    script.append(f"exec skopeo {flags}copy --quiet --src-tls-verify=false '{src}' 'dir:{dest}'")
    return subprocess.run(["unshare", "-m", "sh", "-c", "\n".join(script)], capture_output=True, text=True,
                          env=env, timeout=120)


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.mark.slow
@pytest.mark.skipif(not (_can_unshare() and shutil.which("skopeo")), reason="needs root, unshare -m and skopeo")
def test_installed_skopeo_reads_policy_where_old_generation_says(tmp_path: Path) -> None:
    layout = make_oci_layout(tmp_path / "oci", "paths")
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    etc = tmp_path / "etc"
    usr = tmp_path / "usr-share"
    etc.mkdir()
    usr.mkdir()
    env = UserEnv(home=str(home), uid=0, xdg_config_home=str(xdg))
    user_file, etc_file = policy_json_candidates(env, "old")
    assert user_file.path == str(home / ".config/containers/policy.json")

    # 1. the user file exists: it wins, and $XDG_CONFIG_HOME (accept-all) is not read
    _write(home / ".config/containers/policy.json", REJECT)
    _write(xdg / "containers/policy.json", ACCEPT)
    _write(etc / "policy.json", ACCEPT)
    run = _skopeo_copy(home, layout, tmp_path / "d1", xdg=xdg, etc=etc)
    assert run.returncode != 0 and "rejected by policy" in run.stderr, run.stderr
    # same files, the user policy flipped to accept: now the copy passes (so step 1 failed for the policy reason)
    _write(home / ".config/containers/policy.json", ACCEPT)
    _write(etc / "policy.json", REJECT)
    assert _skopeo_copy(home, layout, tmp_path / "d2", xdg=xdg, etc=etc).returncode == 0

    # 2. no user file: /etc/containers/policy.json decides, as first_existing says
    (home / ".config/containers/policy.json").unlink()
    chosen = first_existing(policy_json_candidates(env, "old"), lambda p: Path(p).exists())
    assert chosen == etc_file
    run = _skopeo_copy(home, layout, tmp_path / "d3", xdg=xdg, etc=etc)
    assert run.returncode != 0 and "rejected by policy" in run.stderr, run.stderr

    # 3. no /etc file: the old generation does not fall back to /usr/share (the new one would)
    (etc / "policy.json").unlink()
    _write(usr / "policy.json", ACCEPT)
    run = _skopeo_copy(home, layout, tmp_path / "d4", xdg=xdg, etc=etc, usr_share=usr)
    assert run.returncode != 0 and "/etc/containers/policy.json" in run.stderr, run.stderr
    new_chosen = first_existing(policy_json_candidates(env, "new", root=None),
                                lambda p: p == "/usr/share/containers/policy.json")
    assert new_chosen is not None and new_chosen.role == "vendor"


@pytest.mark.slow
@pytest.mark.skipif(not (_can_unshare() and shutil.which("skopeo")), reason="needs root, unshare -m and skopeo")
def test_installed_skopeo_reads_registries_d_where_old_generation_says(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    push_image(registry.host, "paths/app:1", "paths-regd", tmp_path)
    home = tmp_path / "home"
    etc = tmp_path / "etc"
    _write(etc / "policy.json", ACCEPT)
    (etc / "registries.d").mkdir()
    env = UserEnv(home=str(home), uid=0)
    src = f"docker://{registry.host}/paths/app:1"

    def used_dir(dest: str) -> str:
        run = _skopeo_copy(home, tmp_path, tmp_path / dest, etc=etc, debug_src=src)
        assert run.returncode == 0, run.stderr
        lines = [ln for ln in run.stderr.splitlines() if "Using registries.d directory" in ln]
        assert lines, run.stderr
        return lines[0].split("Using registries.d directory ", 1)[1].split('"', 1)[0].strip()

    def expected() -> str:
        # the namespace's /etc/containers is our ``etc`` directory
        def exists(path: str) -> bool:
            return Path(path.replace("/etc/containers", str(etc), 1)).is_dir()

        chosen = first_existing(registries_d_candidates(env, "old"), exists)
        assert chosen is not None
        return chosen.path

    # no user directory: /etc/containers/registries.d (ours, bind-mounted)
    assert used_dir("r1") == expected() == "/etc/containers/registries.d"
    # an (empty) user directory hides /etc entirely
    (home / ".config/containers/registries.d").mkdir(parents=True)
    assert used_dir("r2") == expected() == str(home / ".config/containers/registries.d")
