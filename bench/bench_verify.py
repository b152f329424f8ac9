"""Verification throughput: one ``atomicsig verify`` of M images against a ``skopeo standalone-verify`` loop.

Uses the sigstore the signing suite left behind (M = N images, one signature each). atomicsig exports the
trusted key from the GnuPG home into its ephemeral verification home once, then checks every image in the same
process; skopeo is started once per signature, as a shell loop over a directory of signatures would (over the first
``ctx.peer_n`` signatures: a loop's rate does not depend on its length).
"""

from __future__ import annotations

import resource
from pathlib import Path

from harness import KEY_TYPES, TARGET_N, BenchError, Context, Row, compare, make_row, run_checked, run_measured, timed

from atomicsig.format.sigpath import digest_dirname

IDENTITY = "registry.example.com/bench/app:1.0"  # what the signatures claim (skopeo wants it exactly)
#: atomicsig verifies digest references, as a node pulling by digest would: matchRepoDigestOrExact then accepts
#: the tag-claiming signatures by repository (SPEC §2.4; name:tag@digest would demand the exact string).
REPO = "registry.example.com/bench/app"


def run(ctx: Context) -> list[Row]:
    images = ctx.shared.get("images")
    signed = ctx.shared.get("signed") or {}
    if not images or not signed:
        raise BenchError("the verify suite needs the sign suite's sigstores (run both)")
    rows: list[Row] = []
    for kt in KEY_TYPES:
        store, fpr = signed[kt], ctx.keys[kt]
        sigs = [store / digest_dirname("bench/app", im.digest) / "signature-1" for im in images]

        def ours(i: int, store: Path = store, fpr: str = fpr, kt: str = kt) -> float:
            argv = [*ctx.atomicsig, "verify", "--key", fpr, "--gnupghome", str(ctx.gnupghome),
                    "--sigstore", str(store), *(f"{REPO}@{im.digest}" for im in images)]
            return run_measured(argv, ctx, f"verify.{kt}")  # exit 0 only if every image is accepted

        def skopeo(i: int, fpr: str = fpr, sigs: list[Path] = sigs) -> float:
            def loop() -> None:
                for im, sig in list(zip(images, sigs, strict=True))[:ctx.peer_n]:
                    run_checked(["skopeo", "standalone-verify", str(im.manifest_path), IDENTITY, fpr, str(sig)], ctx)
            return timed(loop) * len(images) / ctx.peer_n

        rates = compare(ctx.runs, len(images), {"atomicsig": ours, "skopeo": skopeo})
        rows.append(make_row(f"verify.{kt}.vs_skopeo", f"verify {kt} (M={len(images)})", "sig/s", len(images),
                             rates["atomicsig"], "skopeo standalone-verify loop", rates["skopeo"], ctx=ctx,
                             peak_key=f"verify.{kt}", min_ratio=30 if len(images) >= TARGET_N else None))
    return rows + run_v6(ctx)


def run_v6(ctx: Context, n: int = 400) -> list[Row]:
    """v6 verification in process (issue 16): atomicsig's verifier (parse gate, then Sequoia) against pysequoia's own
    ``verify`` on the same ML-DSA-65+Ed25519 and Ed25519 signatures, so the row shows what atomicsig adds on top of
    the engine. Keys and signatures are made at run time by pysequoia; one thread."""
    import pysequoia as sq

    from atomicsig.format import payload
    from atomicsig.gnupg.trusted import NativeTrustedKeys

    rows: list[Row] = []
    for label, suite in (("ML-DSA-65+Ed25519", sq.CipherSuite.MLDSA65_Ed25519), ("Ed25519", sq.CipherSuite.Cv25519)):
        key = sq.Tsk.generate("bench <bench@example.com>", profile=sq.Profile.RFC9580, cipher_suite=suite)
        cert = key.extract_certificate()
        blobs = [sq.sign(key.signer(), payload.build(IDENTITY, f"sha256:{i:064x}", timestamp=1700000000),
                         mode=sq.SignatureMode.INLINE, armor=False) for i in range(n)]
        with NativeTrustedKeys([bytes(cert)]) as verifier:

            def ours(i: int, verifier: NativeTrustedKeys = verifier, blobs: list[bytes] = blobs) -> float:
                return timed(lambda: [verifier.verify(b) for b in blobs])

            def engine(i: int, cert: sq.Cert = cert, blobs: list[bytes] = blobs) -> float:
                return timed(lambda: [sq.verify(bytes=b, store=lambda _ids: [cert]) for b in blobs])

            rates = compare(ctx.runs, n, {"atomicsig": ours, "sequoia": engine})
        key_name = label.lower().replace("+", "_").replace("-", "")
        row = make_row(f"verify.v6.{key_name}.vs_pysequoia", f"verify v6 {label} in process (N={n})", "sig/s",
                       n, rates["atomicsig"], "pysequoia.verify", rates["sequoia"])
        # Measured in this (the runner's) process: its own peak RSS bounds the verifier's (Linux: KiB).
        row.peak_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        rows.append(row)
    return rows
