"""``atomicsig verify``: does an image carry a signature the given keys and identity rule accept?"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from atomicsig.cli.common import (
    emit_json,
    emit_json_line,
    gnupghome_option,
    install_sigterm_as_interrupt,
    json_option,
    registry_options,
    sigstore_option,
    table,
)
from atomicsig.errors import InputError
from atomicsig.ops.resolve import read_reference_list

if TYPE_CHECKING:
    from atomicsig.ops.verify import ImageVerdict


@click.command()
@click.argument("references", nargs=-1)
@click.option("--key", "keys", multiple=True, required=True, metavar="FPR|EMAIL|FILE",
              help="Trusted public key(s): key files (binary or armored) or fingerprints/e-mails from the "
                   "keyring. Repeat: any one of them may sign (see --require-all).")
@click.option("--require-all", is_flag=True,
              help="Every --key must have signed: each --key is one required signer (one signedBy each, as "
                   "`signed-by-all` in a policy YAML); a keyring FILE holding several keys is one signer any of whose "
                   "keys may sign. A missing signer is named: 'required signer KEY (FPR): no valid signature'.")
@sigstore_option(help_="Where signatures live: a directory, file://, http(s):// lookaside, or 'auto' "
                 "(registry extension API if advertised, else the registries.d lookaside, as podman).")
@click.option("--registries.d", "registries_dir", metavar="DIR",
              help="registries.d directory for --sigstore auto (default: as containers/image).")
@click.option("--match", type=click.Choice(["repo-digest-or-exact", "exact", "repository"]),
              default="repo-digest-or-exact", show_default=True,
              help="signedIdentity rule (matchRepoDigestOrExact, matchExact, matchRepository).")
@click.option("--exact-reference", metavar="REF", help="signedIdentity exactReference: the signature must claim REF.")
@click.option("--exact-repository", metavar="REPO", help="signedIdentity exactRepository.")
@click.option("--remap", metavar="PREFIX=SIGNED", help="signedIdentity remapIdentity (mirrors).")
@click.option("--manifest", "manifest_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Take the digest from this manifest file instead of the reference or the registry.")
@click.option("--from-file", "from_file", metavar="FILE",
              help="Also read references from FILE, one per line, # comments ('-': stdin).")
@click.option("--platform", "platform_text", metavar="OS/ARCH[/VARIANT]",
              help="For a manifest list, check the instance a node of this platform pulls (default: this "
                   "machine's, linux/<arch>, as containers/image).")
@click.option("--all", "all_instances", is_flag=True,
              help="For a manifest list, check every instance (one result each), as nodes of every platform would.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Images checked in parallel (default: 2 x cores, at most 8). Results print as they complete.")
@click.option("--json-lines", "json_lines", is_flag=True,
              help="One JSON object per image on stdout as each completes (instead of --json's final document).")
@registry_options
@gnupghome_option
@json_option
@click.pass_context
def verify(ctx: click.Context, references: tuple[str, ...], keys: tuple[str, ...], require_all: bool,
           sigstore: str, registries_dir: str | None, match: str, exact_reference: str | None,
           exact_repository: str | None,
           remap: str | None, manifest_file: str | None, from_file: str | None, platform_text: str | None,
           all_instances: bool, jobs: int | None, json_lines: bool, tls_verify: bool, cert_dir: str | None,
           authfile: str | None, gnupghome: str | None, as_json: bool) -> int:
    """Verify images against trusted keys, exactly as a signedBy policy would on a node.

    \b
    References are judged as `sign` writes them and a node checks them:
      host/repo:tag          the manifest the tag points to now, identity host/repo:tag
      host/repo@sha256:…     that digest; a signature claiming any tag of host/repo fits
      host/repo:tag@sha256:… that digest, identity host/repo:tag: "will a node pulling the tag accept it
                             once the tag points to this digest?" (the pair `sign` writes for this form)
    A digest is taken as the image's own, offline; give --platform or --all to have a manifest list's
    instances looked up. A tag naming a manifest list is judged by the instance a node pulls (this
    machine's platform, --platform, or every instance with --all), never by the list's own signature.

    \b
    Each image gets one line as soon as its check completes: ACCEPTED, REJECTED (a decided no: no
    acceptable signature, manifest unknown to the registry, no instance for the platform) or ERROR
    (could not check: registry or store unreachable, HTTP 5xx, credentials refused). --json prints
    {"images": [...]} at the end, in input order, each with "outcome" (accepted|rejected|error),
    "reason" and "accepted"; --json-lines prints the same objects one per line as they complete.

    \b
    --require-all: accepted only if every --key has an accepted signature on the image (as a node with one
    signedBy per key set, which c/image ANDs); each missing signer is listed, and the exit code is 1.

    Exit 0 if every image is accepted, 1 if any is rejected, 3 if any could not be checked.
    """
    from atomicsig.format import platforms, reference
    from atomicsig.ops import resolve
    from atomicsig.ops import verify as v
    from atomicsig.ops.keys import required_signers, trusted_verifier
    from atomicsig.store.select import choose_store

    install_sigterm_as_interrupt()
    refs = list(references) + (read_reference_list(from_file) if from_file else [])
    if not refs:
        raise click.UsageError("give at least one image reference (or --from-file)")
    if as_json and json_lines:
        raise click.UsageError("use only one of --json, --json-lines")
    if all_instances and platform_text:
        raise click.UsageError("use only one of --all, --platform")
    if manifest_file and len(refs) > 1:
        raise click.UsageError("--manifest applies to exactly one reference")
    if sum(x is not None for x in (exact_reference, exact_repository, remap)) > 1:
        raise click.UsageError("use only one of --exact-reference, --exact-repository, --remap")
    for text in refs:  # every input error before the first result, so a typo never leaves a half-done batch
        reference.parse(text.strip())
        warning = reference.implicit_docker_hub_warning(text)
        if warning:
            click.echo(f"atomicsig: warning: {warning}", err=True)
    try:
        matcher = v.identity_matcher(match, exact_reference=exact_reference, exact_repository=exact_repository,
                                     remap=remap)
    except InputError as exc:  # a malformed flag value: shown with the usage line, as click shows its own errors
        raise click.UsageError(exc.message) from exc
    store = choose_store(sigstore, registries_dir=registries_dir, tls_verify=tls_verify, cert_dir=cert_dir,
                         authfile=authfile)
    warning = v.missing_store_warning(store, explicit=ctx.get_parameter_source("sigstore") != ParameterSource.DEFAULT)
    if warning:
        click.echo(f"atomicsig: warning: {warning}", err=True)
    resolver = resolve.Resolver(tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
                                manifest_file=manifest_file, all_instances=all_instances,
                                platform=platforms.parse(platform_text) if platform_text else None)
    workers = jobs or min(8, (os.cpu_count() or 2) * 2)
    verdicts: list[v.ImageVerdict] = []
    with required_signers(keys, gnupghome) if require_all else trusted_verifier(keys, gnupghome) as trusted:
        for vd in v.verify_many(refs, resolver=resolver, store=store, verifier=trusted, matcher=matcher,
                                workers=min(workers, len(refs))):
            verdicts.append(vd)
            if json_lines:
                emit_json_line(vd.as_dict())
            elif not as_json:
                _print_verdict(vd)
    if as_json:
        emit_json({"images": [x.as_dict() for x in sorted(verdicts, key=lambda x: x.position)]})
    return v.exit_code(verdicts)


def _print_verdict(vd: ImageVerdict) -> None:
    """The human record of one image: an outcome line, its signatures, and why if not accepted."""
    note = f"  ({vd.note})" if vd.note else ""
    click.echo(f"{vd.outcome.upper():8}  {vd.reference}  {vd.digest or '-'}{note}")
    if vd.signatures:
        rows = [[f"signature-{s.index}", "ok" if s.accepted else "no", s.signer or "-", s.identity or "-",
                 s.reason] for s in vd.signatures]
        click.echo(table(rows, ["  SIGNATURE", "OK", "SIGNER", "IDENTITY", "REASON"]).replace("\n", "\n  "))
    for r in vd.required:
        click.echo(f"  required signer {r.label}: {'signed' if r.accepted else 'no valid signature'}")
    if not vd.accepted:
        click.echo(f"  reason: {vd.reason}")
    sys.stdout.flush()
