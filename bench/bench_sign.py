"""Signing throughput: one ``atomicsig sign --from-file`` process against per-signature loops.

For each key type, N distinct images (one small manifest file each, so skopeo can hash it) are signed by
  * atomicsig: ONE process, ``sign --from-file refs.txt --key FPR --sigstore DIR`` (digests given, no registry),
    with its default signer (gpg-agent sessions, ``--signer auto``) and, as the "before" row, ``--signer gpg``
    (one gpg process per signature);
  * skopeo:    ``skopeo standalone-sign MANIFEST REF FPR -o SIG`` once per image (what a shell loop does),
  * gpg:       ``gpg --batch --sign --local-user FPR`` once per image over the same payload bytes (the floor any
               one-process-per-signature tool pays).
The two loops run over the first ``ctx.peer_n`` images (their rate does not depend on the count).
All three use the same key, the same GnuPG home and the same warm gpg-agent. The last atomicsig sigstore is kept
in ``ctx.shared["signed"][key type]`` for the verification suite.
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness import KEY_TYPES, TARGET_N, BenchError, Context, Row, compare, make_row, run_checked, run_measured, timed

from atomicsig.format import manifest, payload
from atomicsig.format.sigpath import digest_dirname

REPO = "registry.example.com/bench/app"
IDENTITY = f"{REPO}:1.0"
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True)
class Image:
    manifest_path: Path
    digest: str
    payload_path: Path

    @property
    def ref(self) -> str:
        return f"{IDENTITY}@{self.digest}"


def make_images(ctx: Context, n: int) -> list[Image]:
    """N small, distinct schema2 manifests (random config digest) plus the payload atomicsig would sign."""
    d = ctx.fresh_dir("images")
    images = []
    for i in range(n):
        doc = {"schemaVersion": 2, "mediaType": SCHEMA2,
               "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1234,
                          "digest": f"sha256:{secrets.token_hex(32)}"},
               "layers": []}
        data = json.dumps(doc, indent=3).encode()
        mpath = d / f"manifest-{i}.json"
        mpath.write_bytes(data)
        digest = manifest.digest(data)
        ppath = d / f"payload-{i}.json"
        ppath.write_bytes(payload.build(IDENTITY, digest))
        images.append(Image(mpath, digest, ppath))
    return images


def run(ctx: Context) -> list[Row]:
    images = make_images(ctx, ctx.n)
    ctx.shared["images"] = images
    refs_file = ctx.root / "refs.txt"
    refs_file.write_text("".join(f"{im.ref}\n" for im in images), encoding="utf-8")
    ctx.shared.setdefault("signed", {})
    rows: list[Row] = []
    peers = images[:ctx.peer_n]  # what the one-process-per-signature loops sign
    signers = _signer_modes(ctx)
    kept: dict[str, Path] = ctx.shared["signed"]  # key type -> the latest atomicsig sigstore (older ones removed)
    for kt in KEY_TYPES:
        fpr = ctx.keys[kt]
        _warm_agent(ctx, fpr, images[0])

        def ours(i: int, kt: str = kt, fpr: str = fpr, signer: str | None = None) -> float:
            store = ctx.fresh_dir(f"sigstore-{kt}-{signer or 'default'}-{i}")
            argv = [*ctx.atomicsig, "sign", "--from-file", str(refs_file), "--key", fpr, "--sigstore", str(store),
                    "--gnupghome", str(ctx.gnupghome)]
            if ctx.jobs:
                argv += ["-j", str(ctx.jobs)]
            if signer:
                argv += ["--signer", signer]
            seconds = run_measured(argv, ctx, f"sign.{kt}.{signer or 'default'}")
            _check_all_signed(store, images)
            if signer is None:
                if kt in kept:
                    shutil.rmtree(kept[kt], ignore_errors=True)
                kept[kt] = store
            else:
                shutil.rmtree(store, ignore_errors=True)
            return seconds

        def skopeo(i: int, kt: str = kt, fpr: str = fpr) -> float:
            out = ctx.fresh_dir(f"skopeo-{kt}")

            def loop() -> None:
                for j, im in enumerate(peers):
                    run_checked(["skopeo", "standalone-sign", str(im.manifest_path), IDENTITY, fpr,
                                 "-o", str(out / f"sig-{j}")], ctx)
            return timed(loop) * len(images) / len(peers)

        def gpg(i: int, kt: str = kt, fpr: str = fpr) -> float:
            out = ctx.fresh_dir(f"gpg-{kt}")

            def loop() -> None:
                for j, im in enumerate(peers):
                    run_checked(["gpg", "--homedir", str(ctx.gnupghome), "--batch", "--no-tty", "--yes",
                                 "--sign", "--local-user", fpr, "--digest-algo", "SHA256",
                                 "-o", str(out / f"sig-{j}"), str(im.payload_path)], ctx)
            return timed(loop) * len(images) / len(peers)

        contenders = {"atomicsig": ours, "skopeo": skopeo, "gpg": gpg}
        if "gpg" in signers and not ctx.quick:
            contenders["gpgpath"] = lambda i, kt=kt, fpr=fpr: ours(i, kt, fpr, "gpg")  # type: ignore[misc]
        if "memory" in signers:
            contenders["memory"] = lambda i, kt=kt, fpr=fpr: ours(i, kt, fpr, "memory")  # type: ignore[misc]
        rates = compare(ctx.runs, len(images), contenders)
        label = f"sign {kt} (N={len(images)})"
        peak = f"sign.{kt}.default"
        full = len(images) >= TARGET_N
        rows.append(make_row(f"sign.{kt}.vs_skopeo", label, "sig/s", len(images), rates["atomicsig"],
                             "skopeo standalone-sign loop", rates["skopeo"], ctx=ctx, peak_key=peak,
                             min_ratio=10 if full else None))
        rows.append(make_row(f"sign.{kt}.vs_gpg", label, "sig/s", len(images), rates["atomicsig"],
                             "gpg --sign loop", rates["gpg"], ctx=ctx, peak_key=peak,
                             min_ratio=2 if full else None))
        if "memory" in rates:
            mlabel, mpeak = f"sign {kt} --signer memory (opt-in)", f"sign.{kt}.memory"
            rows.append(make_row(f"sign.{kt}.memory_vs_skopeo", mlabel, "sig/s", len(images), rates["memory"],
                                 "skopeo standalone-sign loop", rates["skopeo"], ctx=ctx, peak_key=mpeak,
                                 min_ratio=10 if full else None))
            rows.append(make_row(f"sign.{kt}.memory_vs_gpg", mlabel, "sig/s", len(images), rates["memory"],
                                 "gpg --sign loop", rates["gpg"], ctx=ctx, peak_key=mpeak,
                                 min_ratio=2 if full else None))
        if "gpgpath" in rates:
            rows.append(make_row(f"sign.{kt}.gpgpath_vs_gpg", f"sign {kt} --signer gpg (before)", "sig/s",
                                 len(images), rates["gpgpath"], "gpg --sign loop", rates["gpg"], ctx=ctx,
                                 peak_key=f"sign.{kt}.gpg"))
    return rows


def _signer_modes(ctx: Context) -> set[str]:
    """The ``--signer`` modes this atomicsig offers besides its default: ``gpg`` (the gpg-process path, kept for
    smartcards: the "before" row) and ``memory`` (opt-in, the secret key held in the process)."""
    text = run_checked([*ctx.atomicsig, "sign", "--help"], ctx).stdout.decode()
    if "--signer" not in text:
        return set()
    return {m for m in ("gpg", "memory") if m in text.split("--signer", 1)[1][:200]}


def _warm_agent(ctx: Context, fpr: str, image: Image) -> None:
    """Start gpg-agent and load the key before timing, so whichever contender runs first pays no start-up."""
    run_checked(["gpg", "--homedir", str(ctx.gnupghome), "--batch", "--no-tty", "--yes", "--sign", "--local-user",
                 fpr, "-o", "/dev/null", str(image.payload_path)], ctx)


def _check_all_signed(store: Path, images: list[Image]) -> None:
    """A fast run that signed nothing would look like a win: require signature-1 for every image."""
    missing = [im.ref for im in images
               if not (store / digest_dirname("bench/app", im.digest) / "signature-1").is_file()]
    if missing:
        raise BenchError(f"atomicsig sign left {len(missing)} of {len(images)} images unsigned, e.g. {missing[0]}")
