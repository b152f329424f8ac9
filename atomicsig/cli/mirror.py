"""``atomicsig mirror``: copy images' signatures from an upstream into a local sigstore, verified (issue 15 #1)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from atomicsig.cli.common import (
    DEFAULT_SIGSTORE,
    echo_line,
    emit_json,
    gnupghome_option,
    install_sigterm_as_interrupt,
    json_option,
    registry_options,
)
from atomicsig.errors import InputError
from atomicsig.ops.resolve import read_reference_list

if TYPE_CHECKING:
    from atomicsig.ops.mirror import ImageResult


@click.command()
@click.argument("references", nargs=-1)
@click.option("--from-file", "from_file", metavar="FILE",
              help="Also read references from FILE, one per line, # comments ('-': stdin).")
@click.option("--from", "source", metavar="URL|DIR",
              help="Upstream lookaside: http(s):// base URL (as in a registries.d `lookaside:`), file:// URL or "
                   "directory. Read as containers/image reads it: signature-1, 2, … until the first missing one.")
@click.option("--from-extension", "extension", metavar="URL",
              help="Upstream signature extension API at this base URL (e.g. an `atomicsig serve`).")
@click.option("--from-registry", is_flag=True,
              help="Upstream: each image's own registry through its signature extension API (OpenShift), with "
                   "the registry credentials (--authfile).")
@click.option("--sigstore", metavar="DIR", default=DEFAULT_SIGSTORE, show_default=True,
              help="Local sigstore directory to store into (created if missing).")
@click.option("--key", "keys", metavar="FPR|EMAIL|FILE", multiple=True,
              help="Trusted public key: fingerprint or e-mail in the keyring, or a key file. Required, repeatable: "
                   "only signatures that verify against one of these keys are stored.")
@click.option("--mirror-prefix", "prefixes", metavar="UPSTREAM=MIRROR", multiple=True,
              help="Images under UPSTREAM (host or host/path) are pulled from MIRROR: store their signatures "
                   "under the mirror's repository path, where nodes pulling from it look. Repeatable.")
@click.option("--no-resolve", is_flag=True,
              help="Take each reference's digest as given, without asking its registry (so without the "
                   "instances of a manifest list). For upstreams whose registry is out of reach.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Images mirrored in parallel.")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True, metavar="SECONDS",
              help="Longest wait for one lookaside signature to arrive whole, headers included (for the "
                   "extension API: for each read).")
@registry_options
@gnupghome_option
@json_option
def mirror(references: tuple[str, ...], from_file: str | None, source: str | None, extension: str | None,
           from_registry: bool, sigstore: str, keys: tuple[str, ...], prefixes: tuple[str, ...], no_resolve: bool,
           jobs: int, timeout: float, tls_verify: bool, cert_dir: str | None, authfile: str | None,
           gnupghome: str | None, as_json: bool) -> int:
    """Copy every signature of images from an upstream into a local sigstore, verifying each first.

    \b
    Images: REFERENCES and/or --from-file. A tag is resolved to its digest at the image's registry; a manifest
    list is mirrored with every instance (the digests containers/image looks up). Each signature must verify
    against a --key and name the digest it is stored under; refused ones are counted by reason and never stored.
    Storage is by content and journaled: a re-run adds nothing, sync followers get what was added. Nothing is
    re-signed: signatures keep the identity upstream signed (nodes pulling from a mirror need remapIdentity or
    matchRepository in policy.json; see docs/mirror.md).

    \b
    Output: one line per digest on stdout as it completes, a summary on stderr (a progress bar when stderr is a
    terminal and stdout is not); --json prints one document at the end.
    Exit 0 all mirrored, 1 some digest had a refused signature or none acceptable, 3 an upstream or registry
    could not be read (3 wins over 1), 2 bad input (nothing stored).
    """
    from atomicsig.ops import mirror as m
    from atomicsig.ops.intake import Intake
    from atomicsig.ops.keys import trusted_verifier
    from atomicsig.ops.resolve import Resolver
    from atomicsig.store.directory import DirectoryStore
    from atomicsig.store.select import open_store

    install_sigterm_as_interrupt()
    if not keys:
        raise click.UsageError("--key is required: mirror stores only signatures that verify against keys you "
                               "trust, never unverified bytes")
    refs = list(references) + (read_reference_list(from_file) if from_file else [])
    if not refs:
        raise click.UsageError("give at least one image reference (or --from-file)")
    maps = [m.parse_prefix_map(p) for p in prefixes]
    upstream = m.open_upstream(source, extension=extension, from_registry=from_registry, tls_verify=tls_verify,
                               cert_dir=cert_dir, authfile=authfile, timeout=timeout)
    store = open_store(sigstore)
    if not isinstance(store, DirectoryStore):
        raise InputError(f"--sigstore {sigstore}: mirror writes a local directory (serve it with `atomicsig serve`)")
    m.plan(refs, maps, resolve=not no_resolve)  # every reference checked before anything is read or stored
    resolver = None if no_resolve else Resolver(tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
                                                all_instances=True)
    show_bar = sys.stderr.isatty() and len(refs) > 1 and (as_json or not sys.stdout.isatty())
    with trusted_verifier(keys, gnupghome) as verifier:
        intake = Intake(store, verifier)

        def run(progress: Any) -> list[ImageResult]:
            return m.mirror_many(refs, upstream=upstream, intake=intake, resolver=resolver, prefixes=maps,
                                 workers=jobs, progress=progress)
        if show_bar:
            with click.progressbar(length=len(refs), label="mirroring", file=sys.stderr) as bar:
                def tick(rs: list[ImageResult]) -> None:
                    if not as_json:
                        _print(rs)
                    bar.update(1)
                results = run(tick)
        else:
            results = run(None if as_json else _print)
    counts = _summary(results)
    if as_json:
        emit_json({"upstream": upstream.describe(), "sigstore": store.describe(), "summary": counts,
                   "images": [r.as_dict() for r in results]})
    else:
        refused = ", ".join(f"{k} {v}" for k, v in counts["refused"].items()) or "none"
        echo_line(f"{counts['digests']} digests: {counts['found']} signatures found, {counts['stored']} stored, "
                  f"{counts['duplicates']} already present, refused: {refused}; {counts['errors']} could not be "
                  f"read ({upstream.describe()} -> {store.describe()})", err=True)
    return m.exit_code(results)


def _print(results: list[ImageResult]) -> None:
    """One line per digest as its input completes, so an interrupted run leaves a record of what was stored."""
    for r in results:
        note = f" ({r.note})" if r.note else ""
        counts = f"found {r.found}, stored {r.stored}, present {r.duplicates}"
        if r.refused:
            counts += ", refused " + ", ".join(f"{k} {v}" for k, v in sorted(r.refused.items()))
        line = f"{r.status:7} {r.reference} {r.digest or '-'}{note}: {counts}"
        if r.status != "ok" or r.refused:
            line += f" — {r.reason}"
        echo_line(line, err=r.status == "error")


def _summary(results: list[ImageResult]) -> dict[str, Any]:
    refused: dict[str, int] = {}
    for r in results:
        for k, v in r.refused.items():
            refused[k] = refused.get(k, 0) + v
    return {"digests": len(results), "found": sum(r.found for r in results),
            "stored": sum(r.stored for r in results), "duplicates": sum(r.duplicates for r in results),
            "refused": dict(sorted(refused.items())), "errors": sum(r.status == "error" for r in results),
            "unsigned": sum(r.status == "refused" for r in results)}


__all__ = ["mirror"]
