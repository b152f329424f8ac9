"""Interop with the real clients (SPEC §2, §3): skopeo and podman accept atomicsig signatures under a signedBy
policy and reject what they must; atomicsig verify agrees with skopeo case by case (differential)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from atomicsig.cli import cli as group
from atomicsig.cli.common import run_main
from atomicsig.format import payload, reference
from atomicsig.gnupg.keyring import Keyring
from atomicsig.store.directory import DirectoryStore
from tests.conftest import HAVE_PODMAN
from tests.infra import GpgHome, Registry, podman_pull, push_image, registries_d, signed_by_policy, skopeo, skopeo_pull

pytestmark = pytest.mark.slow


def _atomicsig(*args: str, gnupghome: Path) -> int:
    import os

    old = os.environ.get("GNUPGHOME")
    os.environ["GNUPGHOME"] = str(gnupghome)
    try:
        return run_main(group, list(args))
    finally:
        if old is None:
            os.environ.pop("GNUPGHOME", None)
        else:
            os.environ["GNUPGHOME"] = old


@pytest.fixture(scope="module")
def world(registry: Registry, signer: GpgHome, other_signer: GpgHome, signer_pub: Path,
          tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    w = tmp_path_factory.mktemp("interop")
    store = w / "sigstore"
    h = registry.host
    digests: dict[str, str] = {}
    for repo in ("app", "ns/app", "a/b/app", "ns/unsigned", "ns/otherkey", "ns/wrongrepo", "ns/wrongtag",
                 "ns/wrongdigest"):
        digests[repo] = push_image(h, f"{repo}:1", f"interop-{repo}", w)
    for repo in ("app", "ns/app", "a/b/app"):
        assert _atomicsig("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--tls-verify=false",
                          f"{h}/{repo}:1", gnupghome=signer.path) == 0
    assert _atomicsig("sign", "--key", other_signer.fingerprint, "--sigstore", str(store), "--tls-verify=false",
                      f"{h}/ns/otherkey:1", gnupghome=other_signer.path) == 0
    ds, kr = DirectoryStore(store), Keyring(str(signer.path))

    def put(repo: str, identity: str, digest: str) -> None:
        blob = kr.sign(payload.build(identity, digest), signer.fingerprint, None)
        ds.append(reference.parse(f"{h}/{repo}:1"), digests[repo], blob)

    put("ns/wrongrepo", f"{h}/ns/app:1", digests["ns/wrongrepo"])
    put("ns/wrongtag", f"{h}/ns/wrongtag:2", digests["ns/wrongtag"])
    put("ns/wrongdigest", f"{h}/ns/wrongdigest:1", digests["ns/app"])
    policy = signed_by_policy(w / "policy.json", signer_pub)
    regd = registries_d(w / "registries.d", f"file://{store}")
    return {"w": w, "store": store, "host": h, "digests": digests, "policy": policy, "regd": regd}


ACCEPT = [(repo, by) for repo in ("app", "ns/app", "a/b/app") for by in ("tag", "digest")]
REJECT = [
    ("ns/unsigned", "tag", "signature was required, but no signature exists|A signature was required"),
    ("ns/otherkey", "tag", "not trusted|untrusted|Invalid GPG signature|no public key|key"),
    ("ns/wrongrepo", "tag", "not accepted|does not match|Signature for identity"),
    ("ns/wrongtag", "tag", "not accepted|does not match|Signature for identity"),
    ("ns/wrongrepo", "digest", "not accepted|does not match|Signature for identity"),
    ("ns/wrongdigest", "tag", "[Dd]igest"),
]


def _ref(world, repo: str, by: str) -> str:  # type: ignore[no-untyped-def]
    h = world["host"]
    return f"{h}/{repo}:1" if by == "tag" else f"{h}/{repo}@{world['digests'][repo]}"


def _atomicsig_verdict(world, signer_pub: Path, ref: str) -> int:  # type: ignore[no-untyped-def]
    return run_main(group, ["verify", "--key", str(signer_pub), "--sigstore", str(world["store"]),
                            "--tls-verify=false", "--json", ref])


@pytest.mark.parametrize(("repo", "by"), ACCEPT)
def test_skopeo_accepts(world, signer_pub: Path, repo: str, by: str) -> None:  # type: ignore[no-untyped-def]
    ref = _ref(world, repo, by)
    res = skopeo_pull(ref, world["policy"], world["regd"], world["w"])
    assert res.returncode == 0, res.stderr
    assert _atomicsig_verdict(world, signer_pub, ref) == 0  # differential: atomicsig agrees


@pytest.mark.parametrize(("repo", "by", "reason"), REJECT)
def test_skopeo_rejects(world, signer_pub: Path, repo: str, by: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    import re

    ref = _ref(world, repo, by)
    res = skopeo_pull(ref, world["policy"], world["regd"], world["w"])
    assert res.returncode != 0
    assert re.search(reason, res.stderr), res.stderr
    assert _atomicsig_verdict(world, signer_pub, ref) == 1  # differential: atomicsig agrees


def _manifest(world, repo: str) -> Path:  # type: ignore[no-untyped-def]
    out = world["w"] / f"manifest-{repo.replace('/', '_')}.json"
    out.write_text(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{world['host']}/{repo}:1").stdout)
    return out


def test_skopeo_standalone_verify_accepts_atomicsig(world, signer: GpgHome) -> None:  # type: ignore[no-untyped-def]
    repo = "ns/app"
    sig = world["store"] / f"{repo}@sha256={world['digests'][repo].split(':')[1]}" / "signature-1"
    res = skopeo("standalone-verify", str(_manifest(world, repo)), f"{world['host']}/{repo}:1", signer.fingerprint,
                 str(sig), env={"GNUPGHOME": str(signer.path)})
    # skopeo 1.9 prints "Signature verified, digest …"; newer ones add "using fingerprint <FPR>".
    assert res.stdout.startswith("Signature verified") and world["digests"][repo] in res.stdout
    # and skopeo refuses it for another identity
    bad = skopeo("standalone-verify", str(_manifest(world, repo)), f"{world['host']}/{repo}:2", signer.fingerprint,
                 str(sig), env={"GNUPGHOME": str(signer.path)}, check=False)
    assert bad.returncode != 0


def test_atomicsig_verify_accepts_skopeo_signature(world, signer: GpgHome, signer_pub: Path,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    repo = "ns/unsigned"
    sig = tmp_path / "skopeo.sig"
    skopeo("standalone-sign", "-o", str(sig), str(_manifest(world, repo)), f"{world['host']}/{repo}:1",
           signer.fingerprint, env={"GNUPGHOME": str(signer.path)})
    store = tmp_path / "store"
    DirectoryStore(store).append(reference.parse(f"{world['host']}/{repo}:1"), world["digests"][repo],
                                 sig.read_bytes())
    code = run_main(group, ["verify", "--key", str(signer_pub), "--sigstore", str(store), "--tls-verify=false",
                            f"{world['host']}/{repo}:1"])
    assert code == 0


def test_podman_agrees(world) -> None:  # type: ignore[no-untyped-def]
    if not HAVE_PODMAN:
        pytest.skip("podman not installed")
    w = world["w"]
    ok = podman_pull(_ref(world, "ns/app", "tag"), world["policy"], world["regd"], w)
    if ok.returncode != 0 and "signature" not in ok.stderr.lower():
        pytest.skip(f"podman cannot run in this sandbox: {ok.stderr.strip().splitlines()[-1:]}")
    assert ok.returncode == 0, ok.stderr
    ok2 = podman_pull(_ref(world, "a/b/app", "digest"), world["policy"], world["regd"], w)
    assert ok2.returncode == 0, ok2.stderr
    for repo, by, _ in REJECT[:3]:
        bad = podman_pull(_ref(world, repo, by), world["policy"], world["regd"], w)
        assert bad.returncode != 0, (repo, bad.stdout)
        assert "signature" in bad.stderr.lower() or "Source image rejected" in bad.stderr, bad.stderr


def test_policy_file_is_what_we_think(world, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    pol = json.loads(world["policy"].read_text())
    assert pol["default"][0] == {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(signer_pub)}
    assert subprocess.run(["true"]).returncode == 0


def test_demo_command() -> None:
    """`atomicsig demo` end to end, as a user runs it: exit 0, both verdicts shown, nothing left behind."""
    import re
    import socket

    res = subprocess.run(["atomicsig", "demo"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"ACCEPTED +\S+/demo/signed:1\.0 \(as expected\)", res.stdout)
    assert re.search(r"REJECTED +\S+/demo/unsigned:1\.0 \(as expected\)", res.stdout)
    assert "no signature exists" in res.stdout
    work = Path(re.search(r"workspace (\S+);", res.stdout).group(1))  # type: ignore[union-attr]
    assert not work.exists()
    port = int(re.search(r"registry at http://127\.0\.0\.1:(\d+)", res.stdout).group(1))  # type: ignore[union-attr]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the registry was stopped
