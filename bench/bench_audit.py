"""Audit throughput (issue 14 "Measured"): ``atomicsig audit`` of N images against a ``skopeo copy`` loop.

Two rows, both against the same ``skopeo copy`` loop:

  * ``audit.storage``: the node case, ``audit --storage`` of the N images a node holds in containers-storage
    (names and manifest digests read from the store, no registry round trip; the store is written in the
    on-disk format :mod:`atomicsig.store.images` documents: ``vfs-images/images.json`` plus each image's
    ``manifest`` big-data file, for the same N images the registry serves);
  * ``audit.refs``: ``audit --from-file`` of the N tags, each resolved at the registry as a pull resolves it.

Without atomicsig, the only way to learn which images a node's policy would refuse is to pull each one under
that policy: ``skopeo copy --policy P --registries.d R docker://IMAGE dir:…`` per image (exit 0 = accepted).
Both sides here judge the same N images in a local docker-registry (distinct manifests over one shared layer),
signed into a local lookaside the way the sign suite signs (``atomicsig sign --from-file`` by digest), under one
policy.json (``signedBy`` for the repository, reject everything else) and one registries.d file, laid out as a
node tree (``--root``):

  * atomicsig: ONE ``audit --root NODE --storage --storage-root STORE --json`` (or ``--from-file refs.txt``),
    every signature read from the lookaside and verified; exit 0 only if every image is accepted;
  * skopeo:    one ``skopeo copy`` per image over a sample (20 images, 5 in quick mode: a loop's rate does not
    depend on its length), extrapolated to N.

The row reports images/s, the ratio (goal >= 50x at N=1,000) and audit's peak RSS (``os.wait4`` of the child:
its own ``ru_maxrss``, like RUSAGE_CHILDREN but for this one process).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from harness import TARGET_N, BenchError, Context, Row, compare, make_row, run_checked, run_measured, timed

from atomicsig.demo.env import DOCKER_REGISTRY_CANDIDATES, LocalRegistry, oci_layout
from atomicsig.format import manifest

REPO = "bench/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FULL_SAMPLE, QUICK_SAMPLE = 20, 5


def _have_tools() -> bool:
    return shutil.which("skopeo") is not None and any(shutil.which(n) or Path(f"/usr/bin/{n}").exists()
                                                      for n in DOCKER_REGISTRY_CANDIDATES)


def _push_images(ctx: Context, work: Path, host: str, n: int) -> list[tuple[str, str, bytes]]:
    """N distinct tagged images in the registry: the base image pushed once by skopeo, then N manifests that
    differ by one annotation (same config and layer), PUT directly. Returns (tag reference, digest, manifest)."""
    layout = oci_layout(work / "oci", "bench-audit")
    insecure = work / "insecure.json"
    insecure.write_text('{"default": [{"type": "insecureAcceptAnything"}]}', encoding="utf-8")
    run_checked(["skopeo", "copy", "--quiet", "--policy", str(insecure), "--dest-tls-verify=false",
                 f"oci:{layout}:latest", f"docker://{host}/{REPO}:base"], ctx)
    index = json.loads((layout / "index.json").read_text(encoding="utf-8"))
    base_hex = index["manifests"][0]["digest"].split(":", 1)[1]
    base = json.loads((layout / "blobs/sha256" / base_hex).read_bytes())
    out = []
    for i in range(n):
        body = json.dumps({**base, "annotations": {"org.example.bench": str(i)}}).encode()
        req = urllib.request.Request(f"http://{host}/v2/{REPO}/manifests/t{i}", data=body, method="PUT",
                                     headers={"Content-Type": OCI_MANIFEST})
        with urllib.request.urlopen(req, timeout=30) as resp:  # our own registry on 127.0.0.1
            if resp.status != 201:
                raise BenchError(f"registry answered {resp.status} to a manifest PUT")
        out.append((f"{host}/{REPO}:t{i}", manifest.digest(body), body))
    return out


def _node_storage(work: Path, images: list[tuple[str, str, bytes]]) -> Path:
    """A vfs containers-storage holding the N images under their tags, as podman records a pull (images.json:
    id, digest, names, big-data names and digests; the manifest as ``manifest-<digest>`` and ``manifest``)."""
    from atomicsig.store.images import bigdata_filename

    graphroot = work / "storage"
    images_dir = graphroot / "vfs-images"
    records = []
    for ref, digest, body in images:
        image_id = hashlib.sha256(b"image " + digest.encode()).hexdigest()
        keys = [f"manifest-{digest}", "manifest"]
        (images_dir / image_id).mkdir(parents=True)
        for key in keys:
            (images_dir / image_id / bigdata_filename(key)).write_bytes(body)
        records.append({"id": image_id, "digest": digest, "names": [ref], "big-data-names": keys,
                        "big-data-sizes": {k: len(body) for k in keys},
                        "big-data-digests": {k: digest for k in keys}, "created": "2026-01-01T00:00:00Z"})
    (images_dir / "images.json").write_text(json.dumps(records), encoding="utf-8")
    return graphroot


def _key(ctx: Context, work: Path) -> tuple[Path, str]:
    """(GnuPG home, fingerprint): the bench's Ed25519 key if the key suites ran, else a fresh one."""
    if ctx.keys.get("ed25519"):
        return ctx.gnupghome, ctx.keys["ed25519"]
    from atomicsig.gnupg.keyring import Keyring

    home = work / "gnupg"
    home.mkdir(mode=0o700)
    info = Keyring(str(home)).generate(name="Bench audit", email="bench-audit@example.com", comment=None,
                                       algorithm="ed25519", expire="0", passphrase=None)
    return home, info.fingerprint


def run(ctx: Context) -> list[Row]:
    if not _have_tools():
        return []
    n = ctx.n
    work = ctx.fresh_dir("audit")
    registry = LocalRegistry(work / "registry").start()
    home: Path | None = None
    try:
        images = _push_images(ctx, work, registry.host, n)
        home, fpr = _key(ctx, work)
        store = work / "sigstore"
        sign_refs = work / "sign-refs.txt"
        sign_refs.write_text("".join(f"{ref}@{digest}\n" for ref, digest, _ in images), encoding="utf-8")
        run_checked([*ctx.atomicsig, "sign", "--from-file", str(sign_refs), "--key", fpr, "--sigstore", str(store),
                     "--gnupghome", str(home)], ctx)
        pub = work / "trusted.gpg"
        pub.write_bytes(run_checked(["gpg", "--homedir", str(home), "--export", fpr], ctx).stdout)
        node = work / "node"
        policy = node / "etc/containers/policy.json"
        regd = node / "etc/containers/registries.d"
        regd.mkdir(parents=True)
        policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
            f"{registry.host}/{REPO}": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(pub)}]}}}),
            encoding="utf-8")
        (regd / "bench.yaml").write_text(f"docker:\n  {registry.host}/{REPO}:\n    lookaside: file://{store}\n",
                                         encoding="utf-8")
        refs = work / "refs.txt"
        refs.write_text("".join(f"{ref}\n" for ref, _, _ in images), encoding="utf-8")
        sample = [ref for ref, _, _ in images[:QUICK_SAMPLE if ctx.quick else FULL_SAMPLE]]
        graphroot = _node_storage(work, images)
        common = [*ctx.atomicsig, "audit", "--root", str(node), "--tls-verify=false", "--gnupghome", str(home),
                  "--json"]

        def stored(i: int) -> float:  # exit 0 only if every image is accepted
            return run_measured([*common, "--storage", "--storage-root", str(graphroot)], ctx, "audit.storage")

        def by_ref(i: int) -> float:
            return run_measured([*common, "--from-file", str(refs)], ctx, "audit.refs")

        def skopeo(i: int) -> float:
            def loop() -> None:
                for j, ref in enumerate(sample):
                    dest = ctx.fresh_dir(f"audit-copy-{j}")
                    run_checked(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--policy", str(policy),
                                 "--registries.d", str(regd), f"docker://{ref}", f"dir:{dest}"], ctx)
            return timed(loop) * n / len(sample)

        _check_skopeo_refuses_unsigned(ctx, work, registry.host, policy, regd)
        rates = compare(ctx.runs, n, {"stored": stored, "refs": by_ref, "skopeo": skopeo})
        peer = f"skopeo copy to dir: loop ({len(sample)} sampled)"
        target = 50 if n >= TARGET_N else None
        return [make_row("audit.storage.vs_skopeo_copy", f"audit --storage, {n} images on the node", "images/s", n,
                         rates["stored"], peer, rates["skopeo"], ctx=ctx, peak_key="audit.storage",
                         min_ratio=target),
                make_row("audit.refs.vs_skopeo_copy", f"audit of {n} tags (resolved at the registry)", "images/s",
                         n, rates["refs"], peer, rates["skopeo"], ctx=ctx, peak_key="audit.refs", min_ratio=target)]
    finally:
        registry.stop()
        if home is not None and home != ctx.gnupghome:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


def _check_skopeo_refuses_unsigned(ctx: Context, work: Path, host: str, policy: Path, regd: Path) -> None:
    """The reference loop must be judging signatures, not just copying: an unsigned image must fail it."""
    dest = ctx.fresh_dir("audit-unsigned")
    proc = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--policy", str(policy),
                           "--registries.d", str(regd), f"docker://{host}/{REPO}:base", f"dir:{dest}"],
                          capture_output=True, env=ctx.env, check=False, timeout=120)
    if proc.returncode == 0:
        raise BenchError("skopeo copied an unsigned image under the bench policy: the loop would measure nothing")
