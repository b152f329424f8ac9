"""``atomicsig verify``: does an image carry a signature the given keys and identity rule accept?"""

from __future__ import annotations

import click

from ..errors import EXIT_NEGATIVE, EXIT_OK, EXIT_UNDECIDED, AtomicsigError, InputError
from ..identity import IdentityMatcher
from ..keys import trusted_key_blobs
from .common import emit_json, gnupghome_option, json_option, registry_options, sigstore_option, table


def identity_matcher(match: str, exact_reference: str | None, exact_repository: str | None,
                     remap: str | None) -> IdentityMatcher:
    from .. import identity

    chosen = sum(x is not None for x in (exact_reference, exact_repository, remap))
    if chosen > 1:
        raise click.UsageError("use only one of --exact-reference, --exact-repository, --remap")
    if exact_reference:
        return identity.ExactReference(exact_reference)
    if exact_repository:
        return identity.ExactRepository(exact_repository)
    if remap:
        prefix, sep, signed = remap.partition("=")
        if not sep:
            raise click.UsageError("--remap takes PREFIX=SIGNED_PREFIX")
        return identity.RemapIdentity(prefix, signed)
    return {"repo-digest-or-exact": identity.MatchRepoDigestOrExact(), "exact": identity.MatchExact(),
            "repository": identity.MatchRepository()}[match]


@click.command()
@click.argument("references", nargs=-1, required=True)
@click.option("--key", "keys", multiple=True, required=True, metavar="FPR|EMAIL|FILE",
              help="Trusted public key(s): key files (binary or armored) or fingerprints/e-mails from the "
                   "keyring. Repeat: any one of them may sign.")
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
@registry_options
@gnupghome_option
@json_option
def verify(references: tuple[str, ...], keys: tuple[str, ...], sigstore: str, registries_dir: str | None,
           match: str,
           exact_reference: str | None, exact_repository: str | None, remap: str | None,
           manifest_file: str | None, tls_verify: bool, cert_dir: str | None, authfile: str | None,
           gnupghome: str | None, as_json: bool) -> int:
    """Verify images against trusted keys, exactly as a signedBy policy would on a node.

    Exit 0 if every image is accepted, 1 if any is rejected, 3 if any could not be checked.
    """
    from .. import reference, signing
    from .. import verify as v
    from ..extension import choose_store
    from ..nativeverify import trusted_keys

    matcher = identity_matcher(match, exact_reference, exact_repository, remap)
    store = choose_store(sigstore, registries_dir=registries_dir, tls_verify=tls_verify, cert_dir=cert_dir,
                         authfile=authfile)
    resolver = signing.Resolver(tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
                                manifest_file=manifest_file)
    verdicts: list[v.ImageVerdict] = []
    codes: list[int] = []
    with trusted_keys(trusted_key_blobs(keys, gnupghome)) as trusted:
        if not trusted.fingerprints:
            raise InputError("no public keys found in the given --key values")
        for text in references:
            intended = reference.parse(text)
            intended = intended.with_tag_default() if intended.name_only else intended
            try:
                target = resolver.resolve(text)[0]
                verdict = v.verify_image(intended, target.digest, store, trusted, matcher)
                codes.append(EXIT_OK if verdict.accepted else EXIT_NEGATIVE)
            except AtomicsigError as exc:
                if exc.exit_code == 2:
                    raise
                verdict = v.verify_error_verdict(intended, intended.digest or "", store.describe(), exc)
                codes.append(EXIT_UNDECIDED)
            verdicts.append(verdict)
    if as_json:
        emit_json({"images": [x.as_dict() for x in verdicts]})
    else:
        for vd in verdicts:
            click.echo(f"{'ACCEPTED' if vd.accepted else 'REJECTED'}  {vd.reference}  {vd.digest}")
            if vd.signatures:
                rows = [[f"signature-{s.index}", "ok" if s.accepted else "no", s.signer or "-", s.identity or "-",
                         s.reason] for s in vd.signatures]
                click.echo(table(rows, ["  SIGNATURE", "OK", "SIGNER", "IDENTITY", "REASON"]).replace("\n", "\n  "))
            if not vd.accepted:
                click.echo(f"  reason: {vd.reason}")
    return max(codes) if EXIT_UNDECIDED in codes else (EXIT_NEGATIVE if EXIT_NEGATIVE in codes else EXIT_OK)
