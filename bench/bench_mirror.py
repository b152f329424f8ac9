"""Mirror rate: ``atomicsig mirror`` of N images (2 signatures each) from an nginx lookaside into an empty store.

    python bench/bench_mirror.py [--n 500] [--jobs 1,8] [--json out.json]

The upstream is nginx serving a lookaside tree (no listing, as registry.redhat.io's): per image ``signature-1``,
``signature-2`` and the ``signature-3`` 404 that ends the list, as containers/image reads it. References carry
their digest and ``--no-resolve`` is given, so no registry is involved: the figure is the lookaside read, the
verification of every signature and the journaled, gap-free store. Signing is the slow part of building the tree,
so ``n // 10`` digests are signed twice each (two identities) and placed under ten repositories (the payload digest
matches the directory, so Intake's checks run on every copy, as in bench/bench_sync.py).

Peer: ``wget -i`` of exactly the same URLs into a directory (one process, keep-alive, nothing verified): what a
scripted copy of a lookaside without a listing costs at best.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sync import ATOMICSIG, Nginx, make_key, run_child

from atomicsig.format import payload
from atomicsig.format.sigpath import digest_dirname, signature_relpath
from atomicsig.gnupg.keyring import Keyring

REPOS = 10


def build_tree(root: Path, home: Path, fpr: str, n: int) -> list[str]:
    """The upstream tree with ``n`` images of 2 signatures each; returns the image references."""
    import hashlib

    kr = Keyring(str(home))
    refs = []
    for i in range(max(1, n // REPOS)):
        digest = "sha256:" + hashlib.sha256(f"bench-mirror-{i}".encode()).hexdigest()
        blobs = [kr.sign(payload.build(f"vendor.example.com/bench/app:v{i}-{k}", digest), fpr, None) for k in (1, 2)]
        for j in range(REPOS):
            d = root / digest_dirname(f"bench/r{j}", digest)
            d.mkdir(parents=True, exist_ok=True)
            for k, blob in enumerate(blobs, start=1):
                (d / f"signature-{k}").write_bytes(blob)
            refs.append(f"vendor.example.com/bench/r{j}@{digest}")
    return refs[:n]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--jobs", default="1,8")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    home = work / "gnupg"
    home.mkdir(mode=0o700)
    out: dict[str, Any] = {"images": args.n, "signatures": 2 * args.n}
    try:
        fpr, pub = make_key(home)
        keyfile = work / "key.gpg"
        keyfile.write_bytes(pub)
        refs = build_tree(work / "www", home, fpr, args.n)
        (work / "refs.txt").write_text("\n".join(refs) + "\n")
        ng = Nginx(work / "www", work / "nginx")
        try:
            if shutil.which("wget"):
                urls = [f"{ng.url}/{signature_relpath(r.split('/', 1)[1].split('@')[0], r.split('@')[1], k)}"
                        for r in refs for k in (1, 2, 3)]
                (work / "urls.txt").write_text("\n".join(urls) + "\n")
                t0 = time.perf_counter()
                subprocess.run(["wget", "-q", "-x", "-nH", "-P", str(work / "wget"), "-i", str(work / "urls.txt")],
                               check=False)
                wall = time.perf_counter() - t0
                out["wget"] = {"wall_s": round(wall, 2), "img_per_s": round(args.n / wall, 1)}
            for jobs in (int(j) for j in args.jobs.split(",")):
                dest = work / f"local-j{jobs}"
                before = ng.requests()
                wall, code, rss = run_child([*ATOMICSIG, "mirror", "--no-resolve", "--from", ng.url, "--sigstore",
                                             str(dest), "--key", str(keyfile), "-j", str(jobs), "--from-file",
                                             str(work / "refs.txt")])
                stored = sum(1 for _ in dest.rglob("signature-*"))
                out[f"atomicsig_j{jobs}"] = {
                    "wall_s": round(wall, 2), "exit": code, "stored": stored, "requests": ng.requests() - before,
                    "img_per_s": round(args.n / wall, 1), "sig_per_s": round(stored / wall, 1),
                    "peak_rss_mib": round(rss / 1024, 1)}
                if code != 0 or stored != 2 * args.n:
                    print(json.dumps(out, indent=2))
                    print(f"atomicsig mirror -j {jobs} failed: exit {code}, {stored} stored", file=sys.stderr)
                    return 3
        finally:
            ng.stop()
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
