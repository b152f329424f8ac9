"""The compiled policy, enforced by the real client: ``policy apply --root`` then ``skopeo copy --policy …
--registries.d …`` against a real docker-registry, with signatures made by ``atomicsig sign``.

The tree is applied with ``--keypaths-under-root`` so the generated keyPath values point at the keyrings inside
the temporary root; everything else (scopes, requirements, registries.d files) is byte-for-byte what a node gets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from atomicsig.cli import cli as group
from atomicsig.cli.common import run_main
from tests.conftest import HAVE_PODMAN
from tests.infra import (
    GpgHome,
    PolicyRoot,
    Registry,
    apply_policy,
    assert_pulled,
    legacy_layout,
    podman_pull,
    push_image,
    skopeo_pull,
)

pytestmark = pytest.mark.slow


@dataclass
class World(PolicyRoot):
    host: str


def _sign(home: GpgHome, sigstore: Path, ref: str) -> None:
    code = run_main(group, ["sign", "--gnupghome", str(home.path), "--key", home.fingerprint, "--sigstore",
                            str(sigstore), "--tls-verify=false", ref])
    assert code == 0, f"signing {ref} failed"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, registry: Registry, signer: GpgHome,
          other_signer: GpgHome) -> World:
    work = tmp_path_factory.mktemp("policy-e2e")
    h = registry.host
    sigstore = work / "sigstore"
    sigstore.mkdir()
    digests = {name: push_image(h, f"{name}:1", seed=name, workdir=work) for name in (
        "prod/app", "prod/unsigned", "prod/wrongkey", "prod/wrongid", "open/app", "mirror/app", "mirror/own",
        "rot/old", "rot/new", "other/app")}
    _sign(signer, sigstore, f"{h}/prod/app:1")
    _sign(other_signer, sigstore, f"{h}/prod/wrongkey:1")
    _sign(signer, sigstore, f"{h}/prod/wrongid:2@{digests['prod/wrongid']}")  # claims :2, pulled as :1
    _sign(signer, sigstore, f"vendor.example.com/mirror/app:1@{digests['mirror/app']}")  # upstream identity
    _sign(signer, sigstore, f"{h}/mirror/own:1")  # the mirror's own name: not what the remap expects
    _sign(other_signer, sigstore, f"{h}/rot/old:1")
    _sign(signer, sigstore, f"{h}/rot/new:1")
    _sign(signer, sigstore, f"{h}/other/app:1")
    signer.export_public(work / "new.gpg")
    other_signer.export_public(work / "old.gpg", armor=True)
    lookaside = f"file://{sigstore}"
    (work / "policy.yaml").write_text(f"""\
default: reject
keys:
  new: {{file: new.gpg}}
  old: {{file: old.gpg}}
scopes:
  {h}/prod:
    signed-by: new
    lookaside: {lookaside}
  {h}/open:
    action: accept
  {h}/mirror:
    signed-by: new
    identity: {{type: remapIdentity, prefix: '{h}/mirror', signedPrefix: vendor.example.com/mirror}}
    lookaside: {lookaside}
  {h}/rot:
    signed-by: [old, new]
    lookaside: {lookaside}
""")
    root = work / "root"
    apply_policy(work / "policy.yaml", root)
    return World(root, work, h)


@pytest.mark.parametrize(("name", "rejection"), [
    ("prod/app", None),                                   # signed by the right key in a signed scope
    ("prod/unsigned", "no signature exists"),             # no signature
    ("prod/wrongkey", "Source image rejected"),           # signed, but by a key the scope does not trust
    ("prod/wrongid", "prod/wrongid:2 is not accepted"),   # right key, but the signature claims another tag
    ("open/app", None),                                   # accept scope: unsigned is fine
    ("mirror/app", None),                                 # remapIdentity: signature names the upstream
    ("mirror/own", "mirror/own:1 is not accepted"),       # remap: the mirror's own name no longer matches
    ("rot/old", None),                                    # rotation: old key still accepted ...
    ("rot/new", None),                                    # ... and the new one (ONE signedBy, combined keyring)
    ("other/app", "is rejected by policy"),               # outside every scope: default reject, though signed
])
def test_skopeo_enforces_generated_policy(world: World, name: str, rejection: str | None) -> None:
    assert_pulled(skopeo_pull(f"{world.host}/{name}:1", world.policy, world.regd, world.work), rejection)


def test_rotation_scope_has_exactly_one_signedby(world: World) -> None:
    doc = json.loads(world.policy.read_text())
    reqs = doc["transports"]["docker"][f"{world.host}/rot"]
    assert [r["type"] for r in reqs] == ["signedBy"]
    assert re.fullmatch(r".*/etc/pki/containers/atomicsig-new\+old-[0-9a-f]{12}\.gpg", reqs[0]["keyPath"])


@pytest.mark.skipif(not HAVE_PODMAN, reason="needs podman")
def test_podman_reads_generated_policy(world: World, tmp_path: Path) -> None:
    # podman's trust show shells out to gpg2 for key IDs; Debian ships only "gpg".
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(shutil.which("gpg") or "/usr/bin/gpg", bindir / "gpg2")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = subprocess.run(["podman", "image", "trust", "show", "--policypath", str(world.policy)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(ln.split()[:3]) for ln in proc.stdout.splitlines()}
    assert ("repository", f"{world.host}/prod", "signed") in rows
    assert ("repository", f"{world.host}/open", "accept") in rows
    assert ("all", "default", "reject") in rows
    assert "signer@example.com" in proc.stdout


@pytest.mark.skipif(not HAVE_PODMAN, reason="needs podman")
@pytest.mark.parametrize(("name", "rejection"), [("prod/app", None), ("prod/wrongkey", "Source image rejected"),
                                                 ("mirror/app", None)])
def test_podman_pull_enforces_generated_policy(world: World, short_workdir: Path, name: str,
                                               rejection: str | None) -> None:
    assert_pulled(podman_pull(f"{world.host}/{name}:1", world.policy, world.regd, short_workdir), rejection)


def test_node_migrated_from_per_scope_files_and_rotated_still_enforces(world: World, tmp_path: Path) -> None:
    """A tree as an earlier atomicsig wrote it (one registries.d file per scope, keyrings named without a hash),
    then ``apply`` of a YAML that drops the old key: skopeo reads both trees, and the result enforces the new
    key set (content-addressed keyring, one atomicsig.yaml)."""
    root = tmp_path / "root"
    shutil.copytree(world.root, root)
    text = world.policy.read_text().replace(str(world.root), str(root))
    (root / "etc/containers/policy.json").write_text(text)
    legacy = legacy_layout(root)
    assert len(legacy) == 3
    policy, regd = root / "etc/containers/policy.json", root / "etc/containers/registries.d"
    assert skopeo_pull(f"{world.host}/rot/old:1", policy, regd, tmp_path).returncode == 0  # legacy tree is live
    yml = tmp_path / "policy.yaml"
    yml.write_text((world.work / "policy.yaml").read_text().replace("signed-by: [old, new]", "signed-by: new")
                   .replace("new: {file: new.gpg}", f"new: {{file: {world.work / 'new.gpg'}}}")
                   .replace("old: {file: old.gpg}", f"old: {{file: {world.work / 'old.gpg'}}}"))
    apply_policy(yml, root)
    assert sorted(p.name for p in regd.glob("*.yaml")) == ["atomicsig.yaml"]
    for name, accepted in (("prod/app", True), ("rot/new", True), ("rot/old", False), ("mirror/app", True),
                           ("prod/wrongkey", False)):
        proc = skopeo_pull(f"{world.host}/{name}:1", policy, regd, tmp_path)
        assert (proc.returncode == 0) == accepted, (name, proc.stderr)
