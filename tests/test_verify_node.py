"""``atomicsig verify`` answers as a node does (issue 11): the ``tag@digest`` form, multi-arch images judged by
the instance a node pulls, accepted / rejected / error told apart, batch output, and typos that used to fail
silently. Every verdict that a node can give is checked against real skopeo and a real docker-registry."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from atomicsig.errors import InputError
from atomicsig.format import platforms, reference
from atomicsig.format.manifest import Instance
from tests.infra import (
    GpgHome,
    Registry,
    insecure_policy,
    make_oci_layout,
    push_image,
    registries_d,
    signed_by_policy,
    skopeo,
    skopeo_pull,
)

HEX = "9" * 64
DIG = "sha256:" + HEX


@pytest.fixture
def env(signer: GpgHome) -> dict[str, str]:
    return {"GNUPGHOME": str(signer.path)}


def _images(out: str) -> list[dict]:  # type: ignore[type-arg]
    return list(json.loads(out)["images"])


# ---- 1. repo:tag@digest --------------------------------------------------------------------------------------


def test_tag_at_digest_signed_then_verified(cli, signer: GpgHome, signer_pub: Path, env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The README's pair: sign ``repo:tag@digest`` then verify the same string. Both mean "the tag identity,
    with this digest pinned", so the signature sign wrote is the one verify looks for."""
    store = tmp_path / "store"
    ref = f"quay.io/team/app:1.0@{DIG}"
    code, _, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(store), ref, env=env)
    assert code == 0, err
    code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), "--json", ref, env=env)
    assert code == 0, out + err
    img = _images(out)[0]
    assert img["outcome"] == "accepted" and img["accepted"] is True
    assert img["digest"] == DIG and img["reference"] == ref and img["intended"] == "quay.io/team/app:1.0"
    # the digest is pinned: the same tag on another digest is not vouched for by this signature
    other = f"quay.io/team/app:1.0@sha256:{'1' * 64}"
    code, out, _ = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), "--json", other, env=env)
    assert code == 1 and _images(out)[0]["outcome"] == "rejected"
    # the tag is checked too: a signature for tag 1.0 does not vouch for tag 2.0 at the same digest
    code, out, _ = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), "--json",
                       f"quay.io/team/app:2.0@{DIG}", env=env)
    assert code == 1 and "does not match" in _images(out)[0]["reason"]
    # while a pull by digest alone accepts any identity of the repository (matchRepoDigestOrExact)
    code, _, _ = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), f"quay.io/team/app@{DIG}",
                     env=env)
    assert code == 0


# ---- 2. multi-arch: the instance a node pulls ------------------------------------------------------------------


def push_multiarch(registry_host: str, repo_tag: str, seed: str, workdir: Path) -> tuple[str, dict[str, str]]:
    """Push an OCI index with a linux/amd64 and a linux/arm64 instance (``skopeo copy --all``).

    Returns the index digest and {platform: instance digest}.
    """
    layout = Path(tempfile.mkdtemp(dir=workdir, prefix="oci-index-"))
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    entries = []
    for arch in ("amd64", "arm64"):
        single = make_oci_layout(Path(tempfile.mkdtemp(dir=workdir, prefix=f"oci-{arch}-")), f"{seed}-{arch}",
                                 arch=arch)
        for blob in (single / "blobs" / "sha256").iterdir():
            shutil.copy(blob, blobs / blob.name)
        desc = json.loads((single / "index.json").read_text())["manifests"][0]
        desc.pop("annotations")
        desc["platform"] = {"os": "linux", "architecture": arch}
        entries.append(desc)
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    index_hex = hashlib.sha256(index).hexdigest()
    (blobs / index_hex).write_bytes(index)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + index_hex,
         "size": len(index), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    policy = insecure_policy(workdir / "insecure-policy.json")
    skopeo("--policy", str(policy), "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
           f"oci:{layout}:latest", f"docker://{registry_host}/{repo_tag}")
    return "sha256:" + index_hex, {f"linux/{e['platform']['architecture']}": e["digest"] for e in entries}


@pytest.mark.slow
def test_multiarch_judged_by_the_pulled_instance(cli, registry: Registry, signer: GpgHome, signer_pub: Path, env,
                                                 tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Signed by tag without --all, only the list carries a signature: skopeo copy refuses the image (it checks
    the linux/amd64 instance), and verify must say REJECTED too. Signed with --all, both accept."""
    list_digest, inst = push_multiarch(registry.host, "multi/app:1", "multi", tmp_path)
    ref = f"{registry.host}/multi/app:1"
    store = tmp_path / "store"
    sign = ("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--tls-verify=false")
    verify = ("verify", "--key", str(signer_pub), "--sigstore", str(store), "--tls-verify=false", "--json")
    policy = signed_by_policy(tmp_path / "policy.json", signer_pub)
    regd = registries_d(tmp_path / "regd", f"file://{store}")

    code, out, err = cli(*sign, "--json", ref, env=env)
    assert code == 0, err
    assert [r["digest"] for r in json.loads(out)["results"]] == [list_digest]
    node = skopeo_pull(ref, policy, regd, tmp_path)
    assert node.returncode != 0 and "rejected" in node.stderr.lower(), node.stderr
    code, out, err = cli(*verify, ref, env=env)
    assert code == 1, out + err
    (img,) = _images(out)
    assert img["outcome"] == "rejected" and img["digest"] == inst["linux/amd64"], img
    assert "no signature exists" in img["reason"] and "linux/amd64" in img["note"]
    # --platform picks another instance, --all reports each one
    code, out, _ = cli(*verify, "--platform", "linux/arm64", ref, env=env)
    assert code == 1 and _images(out)[0]["digest"] == inst["linux/arm64"]
    code, out, _ = cli(*verify, "--platform", "linux/s390x", ref, env=env)
    assert code == 1 and "no instance for linux/s390x" in _images(out)[0]["reason"]
    code, out, _ = cli(*verify, "--all", ref, env=env)
    assert code == 1 and sorted(i["digest"] for i in _images(out)) == sorted(inst.values())

    code, out, err = cli(*sign, "--all", ref, env=env)
    assert code == 0, err
    node = skopeo_pull(ref, policy, regd, tmp_path)
    assert node.returncode == 0, node.stderr
    code, out, err = cli(*verify, ref, env=env)
    assert code == 0, out + err
    code, out, err = cli(*verify, "--all", ref, env=env)
    assert code == 0 and [i["outcome"] for i in _images(out)] == ["accepted", "accepted"], out + err
    # the list digest with --platform is looked up too: the instance is what a node pulling by digest checks
    code, out, err = cli(*verify, "--platform", "linux/arm64", f"{registry.host}/multi/app@{list_digest}", env=env)
    assert code == 0 and _images(out)[0]["digest"] == inst["linux/arm64"], out + err


# ---- 3. rejected vs could not check ---------------------------------------------------------------------------


@pytest.mark.slow
def test_outcomes_registry_down_and_unknown_tag(cli, signer: GpgHome, signer_pub: Path, env,
                                                tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(tmp_path / "reg").start()
    try:
        digest = push_image(reg.host, "out/app:1", "outcomes", tmp_path)
        store = tmp_path / "store"
        code, _, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(store), "--tls-verify=false",
                           f"{reg.host}/out/app:1", env=env)
        assert code == 0, err
        verify = ("verify", "--key", str(signer_pub), "--sigstore", str(store), "--tls-verify=false", "-j", "1")
        refs = [f"{reg.host}/out/app:1", f"{reg.host}/out/app:nosuchtag", f"{reg.host}/out/nosuchrepo:1"]
        code, out, err = cli(*verify, "--json", *refs, env=env)
        assert code == 1, out + err  # a tag that does not exist is a "no", not "registry down"
        imgs = _images(out)
        assert [i["outcome"] for i in imgs] == ["accepted", "rejected", "rejected"], imgs
        assert imgs[0]["digest"] == digest
        assert all(i["reason"].startswith("manifest unknown") for i in imgs[1:]), imgs
        code, out, _ = cli(*verify, *refs, env=env)
        assert code == 1
        assert [ln.split()[0] for ln in out.splitlines() if not ln.startswith(" ")] == \
            ["ACCEPTED", "REJECTED", "REJECTED"]
        # a registry failing with HTTP 500 (its storage broken under it) could not answer: error, exit 3
        push_image(reg.host, "out/broken:1", "outcomes-broken", tmp_path)
        tags = reg.workdir / "storage/docker/registry/v2/repositories/out/broken/_manifests/tags"
        shutil.rmtree(tags)
        tags.write_text("not a directory")
        code, out, _ = cli(*verify, "--json", refs[0], f"{reg.host}/out/broken:1", env=env)
        assert code == 3, out
        imgs = _images(out)
        assert [i["outcome"] for i in imgs] == ["accepted", "error"] and "HTTP 500" in imgs[1]["reason"], imgs
    finally:
        reg.stop()
    # the registry is down now: every image is "could not check", told apart from "rejected"
    code, out, _ = cli(*verify, "--json", *refs[:2], env=env)
    assert code == 3
    imgs = _images(out)
    assert [i["outcome"] for i in imgs] == ["error", "error"] and not any(i["accepted"] for i in imgs)
    assert all("cannot reach" in i["reason"] for i in imgs), imgs
    code, out, _ = cli(*verify, refs[0], env=env)
    assert code == 3 and out.startswith("ERROR ") and "REJECTED" not in out


# ---- 4. batch: --from-file, -j, --json-lines -------------------------------------------------------------------


def test_batch_from_file_json_lines_and_order(cli, signer: GpgHome, signer_pub: Path, env,
                                              tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    signed = [f"quay.io/batch/app{i}@sha256:{i:064x}" for i in range(1, 13)]
    code, _, err = cli("sign", "--key", signer.fingerprint, "--sigstore", str(store), *signed, env=env)
    assert code == 0, err
    unsigned = f"quay.io/batch/unsigned@sha256:{99:064x}"
    lst = tmp_path / "refs.txt"
    lst.write_text("# what CI deploys\n" + "\n".join(signed[:6]) + f"\n{unsigned}  # not signed\n\n"
                   + "\n".join(signed[6:]) + "\n")
    base = ("verify", "--key", str(signer_pub), "--sigstore", str(store), "--from-file", str(lst))
    code, out, err = cli(*base, "-j", "4", "--json-lines", env=env)
    assert code == 1, err
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert len(lines) == 13 and {x["reference"] for x in lines} == {*signed, unsigned}
    assert [x["outcome"] for x in lines].count("rejected") == 1
    # --json: one document, in input order whatever -j
    code, out, _ = cli(*base, "-j", "4", "--json", env=env)
    assert code == 1 and [x["reference"] for x in _images(out)] == [*signed[:6], unsigned, *signed[6:]]
    # human: one line per image
    code, out, _ = cli(*base, "-j", "1", env=env)
    heads = [ln for ln in out.splitlines() if not ln.startswith(" ")]
    assert [h.split()[1] for h in heads] == [*signed[:6], unsigned, *signed[6:]]
    assert [h.split()[0] for h in heads].count("ACCEPTED") == 12
    # stdin, and a usage error for both JSON forms
    code, out, _ = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), "--from-file", "-",
                       input=signed[0] + "\n", env=env)
    assert code == 0 and out.startswith("ACCEPTED")
    code, _, err = cli(*base, "--json", "--json-lines", env=env)
    assert code == 2 and "--json-lines" in err


def test_json_lines_streams_before_the_run_ends(signer: GpgHome, signer_pub: Path, tmp_path: Path) -> None:
    """A CI log keeps a record of each image as it is checked: the first line is out while later images still
    wait on an unreachable store (a real listening socket that never answers)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    store = tmp_path / "store"
    first = f"quay.io/stream/app@sha256:{1:064x}"
    env = {**os.environ, "GNUPGHOME": str(signer.path)}
    subprocess.run([sys.executable, "-m", "atomicsig", "sign", "--key", signer.fingerprint, "--sigstore", str(store),
                    first], env=env, check=True, capture_output=True)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen([sys.executable, "-m", "atomicsig", "verify", "--key", str(signer_pub),
                                 "--sigstore", str(store), "--tls-verify=false", "-j", "1", "--json-lines",
                                 first, f"{host}/stream/app:1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env)
        try:
            assert proc.stdout is not None
            t0 = time.monotonic()
            line = proc.stdout.readline()
            assert json.loads(line)["outcome"] == "accepted"
            assert proc.poll() is None and time.monotonic() - t0 < 20  # still waiting on the second image
        finally:
            proc.kill()
            proc.wait()


# ---- 5. typos that used to fail silently -----------------------------------------------------------------------


def test_nonexistent_sigstore_and_docker_hub_warning(cli, signer_pub: Path, env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nonexistent"
    for where in (str(missing), f"file://{missing}"):
        code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", where, f"quay.io/a@{DIG}", env=env)
        assert code == 2 and str(missing) in err and "does not exist" in err and out == "", err
    store = tmp_path / "store"
    store.mkdir()
    code, out, err = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), f"team/app@{DIG}", env=env)
    assert code == 1 and f"docker.io/team/app@{DIG}" in err and "warning" in err, err
    code, _, err = cli("verify", "--key", str(signer_pub), "--sigstore", str(store), f"quay.io/team/app@{DIG}",
                       env=env)
    assert code == 1 and "warning" not in err


@pytest.mark.parametrize(("text", "warned"), [
    ("team/app@" + DIG, "docker.io/team/app@" + DIG), ("busybox", "docker.io/library/busybox"),
    ("busybox:1", "docker.io/library/busybox:1"), ("quay.io/team/app:1", None), ("localhost/app:1", None),
    ("localhost:5000/app:1", None), ("docker.io/library/busybox", None), ("Not A Ref", None),
])
def test_implicit_docker_hub_warning(text: str, warned: str | None) -> None:
    msg = reference.implicit_docker_hub_warning(text)
    assert (msg is None) if warned is None else (msg is not None and repr(warned) in msg)


# ---- platform selection (pure; c/image WantedPlatforms + ChooseInstance) ----------------------------------------


def _inst(platform: str, n: int) -> Instance:
    return Instance(f"sha256:{n:064x}", "application/vnd.oci.image.manifest.v1+json", platform)


def test_platform_choice_follows_containers_image() -> None:
    lst = [_inst("", 1), _inst("linux/arm/v6", 2), _inst("linux/arm/v7", 3), _inst("linux/arm64/v8", 4),
           _inst("linux/amd64", 5), _inst("linux/arm64", 6), _inst("windows/amd64", 7)]
    pick = lambda text: platforms.choose(lst, platforms.parse(text))  # noqa: E731
    assert pick("linux/amd64") == lst[4]
    assert pick("windows/amd64") == lst[6]
    assert pick("linux/arm/v7") == lst[2]  # exact variant first…
    assert pick("linux/arm/v8") == lst[2]  # …else the most capable compatible one
    assert pick("linux/arm") == lst[2]  # no variant asked, none variant-less: the most capable known variant
    assert pick("linux/arm64") == lst[5]  # no variant asked: the variant-less instance wins
    assert pick("linux/arm64/v8") == lst[3]
    assert pick("linux/s390x") is None
    assert platforms.wanted(platforms.Platform("linux", "arm", "v7")) == [
        platforms.Platform("linux", "arm", v) for v in ("v7", "v6", "v5", "")]
    assert str(platforms.current()).startswith("linux/")
    for bad in ("linux", "linux/", "Linux/AMD64", "a/b/c/d"):
        with pytest.raises(InputError):
            platforms.parse(bad)
