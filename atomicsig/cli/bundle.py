"""``atomicsig bundle export|import``: carry signatures across an air gap in one file (atomicsig.ops.bundle)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from atomicsig.cli.common import emit_json, gnupghome_option, json_option, table
from atomicsig.errors import EXIT_NEGATIVE, EXIT_OK, InputError


def _progress(verb: str) -> Callable[[int, int], None] | None:
    """A one-line counter on stderr when it is a terminal (never in logs or pipes)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            sys.stderr.write(f"\r{verb} {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return show


@click.group()
def bundle() -> None:
    """Carry signatures (with their journal records), public keys and policy across an air gap in one file.

    \b
    export: sigstore -> one .tar.gz with a sha256 manifest (MANIFEST.sha256, sha256sum format)
    import: check the whole file, then verify every signature against the keys YOU name (--key) and store it
            without gaps, journaled for this node's followers; re-importing stores nothing.
    """


@bundle.command("export")
@click.option("--sigstore", metavar="DIR", required=True, type=click.Path(file_okay=False),
              help="The sigstore directory to export (read only).")
@click.option("-o", "--output", metavar="FILE", required=True, type=click.Path(dir_okay=False),
              help="The bundle to write (replaced atomically).")
@click.option("--key", "keys", metavar="FPR|EMAIL|FILE", multiple=True,
              help="A public key to include for the importer to review (repeatable); never trusted by import.")
@gnupghome_option
@click.option("--policy", "policy_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="A policy YAML to include (policy.yaml in the bundle).")
@click.option("--repo", "repos", metavar="PATH", multiple=True,
              help="Only this repository path or those below it, as in the sigstore (no host), e.g. "
                   "library/busybox or vendor (repeatable).")
@click.option("--since", metavar="EPOCH:SEQ|SEQ|DATE|DURATION",
              help="Only signatures added after this journal position (the last export prints the next one), "
                   "or stored since a date (YYYY-MM-DD, UTC) or within a duration (7d).")
@click.option("--no-compress", is_flag=True, help="Write a plain tar instead of gzip.")
@json_option
def export_cmd(sigstore: str, output: str, keys: tuple[str, ...], gnupghome: str | None, policy_file: str | None,
               repos: tuple[str, ...], since: str | None, no_compress: bool, as_json: bool) -> int:
    """Write the signatures of a sigstore into one bundle file.

    Signatures are laid out by their lookaside paths, in the order of the sigstore's journal, with their journal
    records; the manifest lists the sha256 of every member. The same sigstore and options give the same bytes.
    """
    from atomicsig.format import yamlstrict
    from atomicsig.ops.bundle import export_bundle, parse_since
    from atomicsig.ops.keys import trusted_key_blobs

    policy = None
    if policy_file:
        text = yamlstrict.read_file(policy_file, "policy")
        yamlstrict.load(text, policy_file)  # a policy that does not parse is refused here, not at the far side
        policy = text.encode()
    res = export_bundle(Path(sigstore), Path(output), key_blobs=trusted_key_blobs(keys, gnupghome) if keys else [],
                        policy=policy, repos=repos, since=parse_since(since) if since else None,
                        compress=not no_compress, on_progress=_progress("exported"))
    if as_json:
        emit_json(res.as_dict())
        return EXIT_OK
    click.echo(f"wrote {res.path}: {res.signatures} signatures, {len(res.keys)} keys"
               f"{', policy' if res.policy else ''} ({res.bytes} bytes)")
    if res.skipped:
        click.echo(f"skipped {res.skipped} signatures whose files no longer match the journal "
                   f"(run `atomicsig index {sigstore}`)", err=True)
    click.echo(f"next incremental export: --since {res.next_since}")
    return EXIT_OK


@bundle.command("import")
@click.argument("bundle_file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--sigstore", metavar="DIR", type=click.Path(file_okay=False),
              help="The sigstore directory to import into (created if missing).")
@click.option("--key", "keys", metavar="FPR|EMAIL|FILE", multiple=True,
              help="A public key whose signatures are accepted (repeatable). Keys inside the bundle are never "
                   "trusted: pass them here only after checking their fingerprints (--show-keys).")
@gnupghome_option
@click.option("--show-keys", is_flag=True, help="Check the bundle and list the public keys it carries; store "
                                                 "nothing.")
@json_option
def import_cmd(bundle_file: str, sigstore: str | None, keys: tuple[str, ...], gnupghome: str | None,
               show_keys: bool, as_json: bool) -> int:
    """Check a bundle, verify each signature against --key, and store it in a sigstore.

    The whole file is checked first (manifest, sums, sizes, names, order); a damaged bundle stores nothing
    (exit 2). Then each signature is verified and stored atomically without gaps, journaled for followers;
    already present ones count as duplicates. Exit 0 all stored or present, 1 some refused (counted by reason),
    2 bad input, 3 the sigstore could not be written (re-run to complete).
    """
    from atomicsig.ops.bundle import bundle_keys, import_bundle, iter_refusals, read_bundle

    if show_keys:
        contents = read_bundle(bundle_file)
        listed = bundle_keys(contents)
        if as_json:
            emit_json({"bundle": bundle_file, "signatures": len(contents.records), "source": contents.info["journal"],
                       "policy": contents.policy is not None, "keys": [k.as_dict() for k in listed]})
            return EXIT_OK
        click.echo(f"{bundle_file}: {len(contents.records)} signatures, policy: "
                   f"{'yes' if contents.policy is not None else 'no'}")
        rows = [[k.fingerprint, "; ".join(k.uids), k.algorithm] for k in listed]
        click.echo(table(rows, ["FINGERPRINT", "USER ID", "ALGORITHM"]) if rows else "no keys in the bundle")
        return EXIT_OK
    if not sigstore:
        raise InputError("--sigstore is required (where to store the signatures)")
    if not keys:
        raise InputError("--key is required: a bundle cannot bring its own trust",
                         hint="`atomicsig bundle import FILE --show-keys` lists the keys it carries")
    from atomicsig.ops.intake import Intake
    from atomicsig.ops.keys import trusted_verifier
    from atomicsig.store.directory import DirectoryStore

    with trusted_verifier(keys, gnupghome) as verifier:
        res = import_bundle(bundle_file, Intake(DirectoryStore(sigstore), verifier),
                            on_progress=_progress("imported"))
    if as_json:
        emit_json(res.as_dict())
    else:
        for line in iter_refusals(res):
            click.echo(line, err=True)
        counts = ", ".join(f"{r} {n}" for r, n in sorted(res.refused.items()))
        click.echo(f"imported {bundle_file} into {sigstore}: {res.signatures} signatures: {res.stored} stored, "
                   f"{res.duplicates} already present, {res.refused_total} refused{f' ({counts})' if counts else ''}")
        if res.signatures and res.refused.get("untrusted-key") == res.signatures:
            click.echo("none of the signatures is by a key given with --key; `--show-keys` lists the keys the "
                       "bundle carries", err=True)
    return EXIT_NEGATIVE if res.refused_total else EXIT_OK


__all__ = ["bundle"]
