"""``atomicsig sign``: sign images by digest into a sigstore."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from atomicsig.cli.common import (
    agent_cache_option,
    echo_line,
    emit_json,
    emit_json_line,
    gnupghome_option,
    install_sigterm_as_interrupt,
    json_lines_option,
    json_option,
    passphrase_options,
    passphrase_source,
    registry_options,
    sequoia_home_option,
    sigstore_option,
    table,
)
from atomicsig.errors import EXIT_NEGATIVE, EXIT_OK
from atomicsig.ops.resolve import Resolver, Target, read_reference_list

if TYPE_CHECKING:
    from atomicsig.ops.sign import Outcome
    from atomicsig.signers.base import Signer


@click.command()
@click.argument("references", nargs=-1)
@click.option("--key", "keys", multiple=True, required=True, metavar="FPR|EMAIL|FILE",
              help="Signing key: fingerprint or e-mail in the keyring (or, for v6/post-quantum keys, the "
                   "Sequoia home), or a secret key file. Repeat to sign with several keys.")
@sigstore_option(help_="Where signatures live: a directory, file://, http(s):// lookaside, or 'auto' "
                 "(registry extension API if advertised, else the registries.d lookaside, as podman).")
@click.option("--registries.d", "registries_dir", metavar="DIR",
              help="registries.d directory for --sigstore auto (default: as containers/image).")
@click.option("--sigstore-token-file", metavar="FILE",
              help="Bearer token for PUTs to an `atomicsig serve` --sigstore URL (extension API).")
@click.option("--from-file", "from_file", metavar="FILE", help="Read references from FILE, one per line ('-': stdin).")
@click.option("--manifest", "manifest_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Take the digest from this manifest file instead of asking the registry.")
@click.option("--all", "all_instances", is_flag=True,
              help="For a manifest list / OCI index also sign every per-platform instance (what podman and "
                   "CRI-O verify).")
@click.option("--force", is_flag=True, help="Sign even if the same key already signed this identity and digest.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None, help="Parallel signers (default: 2 x cores).")
@click.option("--dry-run", is_flag=True,
              help="Resolve references and the signing keys, show what would be signed; write nothing. Exit 1 if "
                   "something would be signed, 0 if everything already is.")
@click.option("--signer", "signer_mode", type=click.Choice(["auto", "agent", "gpg", "memory"]), default="auto",
              show_default=True,
              help="agent: ask gpg-agent directly (fast; RSA, Ed25519, ECDSA NIST keys); gpg: one gpg process per "
                   "signature; auto: agent when it can, else gpg; memory: holds the secret key in this process "
                   "for the run (fastest for RSA; never written to disk; not for smartcards).")
@registry_options
@passphrase_options
@agent_cache_option
@gnupghome_option
@sequoia_home_option
@json_option
@json_lines_option
def sign(references: tuple[str, ...], keys: tuple[str, ...], sigstore: str, registries_dir: str | None,
         sigstore_token_file: str | None, from_file: str | None,
         manifest_file: str | None, all_instances: bool, force: bool, jobs: int | None, dry_run: bool,
         signer_mode: str, tls_verify: bool, cert_dir: str | None, authfile: str | None, passphrase_file: str | None,
         passphrase_env: str | None, passphrase_stdin: bool, agent_cache: bool, gnupghome: str | None,
         sequoia_home: str | None, as_json: bool, json_lines: bool) -> int:
    """Sign images (host/repo:tag, host/repo@sha256:…, or host/repo:tag@sha256:…).

    \b
    The signature claims the tag when one is given (host/repo:tag@sha256:… signs the tag identity with that
    digest); a tag without digest is resolved by fetching the manifest from the registry and hashing it.
    Signatures go to <sigstore>/<repository path>@sha256=<hex>/signature-N (first free N, never overwritten).

    \b
    Output: one line per image on stdout as it completes ("signed|exists IDENTITY DIGEST -> LOCATION"; failures
    as "FAILED INPUT: REASON" on stderr), so an interrupted run leaves a record of what was stored; a summary
    line on stderr at the end. --json prints one document at the end ({"sigstore", "summary", "results"});
    --json-lines prints one JSON object per result as it completes. The progress bar appears only when stderr
    is a terminal and stdout is not (or with --json).
    """
    from atomicsig.format import reference
    from atomicsig.gnupg.passphrase import read_cached
    from atomicsig.ops import sign as signing
    from atomicsig.ops.keys import open_signers
    from atomicsig.store.select import choose_store

    install_sigterm_as_interrupt()
    if as_json and json_lines:
        raise click.UsageError("use only one of --json, --json-lines")
    refs = list(references) + (read_reference_list(from_file) if from_file else [])
    if not refs:
        raise click.UsageError("give at least one image reference (or --from-file)")
    if manifest_file and len(refs) > 1:
        raise click.UsageError("--manifest applies to exactly one reference")
    if passphrase_stdin and from_file == "-":
        raise click.UsageError("--passphrase-stdin and --from-file - cannot both read stdin")
    for text in dict.fromkeys(refs):
        warning = reference.implicit_docker_hub_warning(text.strip())
        if warning:
            echo_line(f"atomicsig: warning: {warning}", err=True)
    store = choose_store(sigstore, registries_dir=registries_dir, tls_verify=tls_verify, cert_dir=cert_dir,
                         authfile=authfile, token_file=sigstore_token_file)
    resolver = Resolver(tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
                        all_instances=all_instances, manifest_file=manifest_file)
    if dry_run:
        return _dry_run(refs, keys, gnupghome, resolver, store, force, as_json, json_lines, sequoia_home)

    pw = read_cached(passphrase_source(passphrase_file, passphrase_env, passphrase_stdin))
    outcomes: list[signing.Outcome] = []
    printer = _OutcomePrinter("json" if as_json else "json-lines" if json_lines else "text")
    with open_signers(keys, gnupghome, pw, signer_mode, agent_cache=agent_cache,
                      sequoia_home=sequoia_home) as signers:
        for signer in signers:
            _warn_if_subkey(signer)
            total = len(refs)
            show_bar = sys.stderr.isatty() and total > 1 and (as_json or not sys.stdout.isatty())
            if show_bar:
                with click.progressbar(length=total, label=f"signing with {signer.fingerprint[-16:]}",
                                       file=sys.stderr) as bar:
                    tick = _progress_ticker(bar)

                    def both(o: signing.Outcome, tick: Any = tick) -> None:
                        printer(o)
                        tick(o)
                    outcomes += signing.sign_many(refs, resolver=resolver, signer=signer, store=store, force=force,
                                                  workers=jobs, progress=both)
            else:
                outcomes += signing.sign_many(refs, resolver=resolver, signer=signer, store=store, force=force,
                                              workers=jobs, progress=printer)
    return _report(outcomes, as_json, store.describe())


def _list_warning(text: str, target: Target | None) -> str | None:
    """The warning for a manifest list signed without --all (the Resolver names its unsigned instances).

    A node evaluates the per-platform instance it pulls, not the list (SPEC §2.2, c/image ``copy`` of a list):
    signing only the list digest gives an image every node refuses. The list is only visible when the manifest is
    read anyway (a tag, or --manifest); a reference by digest is signed without asking the registry, as before.
    """
    if target is None or not target.unsigned_instances:
        return None
    platforms = ", ".join(target.unsigned_instances)
    return (f"warning: {text} is a manifest list ({len(target.unsigned_instances)} instances: {platforms}); nodes "
            "evaluate the per-platform instance they pull and will refuse the image unless the instances are "
            "signed too (SPEC §2.2): sign with --all")


class _OutcomePrinter:
    """The progress callback that prints one record per outcome as it completes (text, or JSON Lines).

    With --json the records are kept for the final document and nothing is printed per image. Failures go to
    stderr as "FAILED …" in text mode, as today; a manifest-list warning is printed before its image's line.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._warned: set[str] = set()

    def __call__(self, o: Outcome) -> None:
        if o.input not in self._warned:
            self._warned.add(o.input)
            warning = _list_warning(o.input, o.target)
            if warning:
                echo_line(warning, err=True)
        if self.mode == "json":
            return
        if self.mode == "json-lines":
            emit_json_line(o.as_dict())
        elif o.status == "failed":
            echo_line(f"FAILED  {o.input}: {o.error}", err=True)
        else:
            echo_line(_outcome_text(o))


def _outcome_text(o: Outcome) -> str:
    ident = o.target.identity if o.target else o.input
    extra = f" ({o.target.note})" if o.target and o.target.note else ""
    return f"{o.status:7} {ident} {o.target.digest if o.target else ''}{extra} -> {o.location}"


def _dry_run(refs: list[str], keys: tuple[str, ...], gnupghome: str | None, resolver: Resolver,
             store: Any, force: bool, as_json: bool, json_lines: bool, sequoia_home: str | None = None) -> int:
    """Render :func:`atomicsig.ops.sign.plan`: exit 1 if anything would be signed, else 0.

    The keys are looked up as a real run would (a mistyped --key must fail here, exit 2), but not unlocked: no
    passphrase is read.
    """
    from atomicsig.ops import sign as signing
    from atomicsig.ops.keys import secret_key_fingerprints

    key_fprs = secret_key_fingerprints(keys, gnupghome, sequoia_home)
    rows = []
    for r, planned in signing.plan(refs, resolver=resolver, store=store, keys=key_fprs, force=force):
        rows += [p.as_dict() for p in planned]
        warning = _list_warning(r, planned[0].target if planned else None)
        if warning:
            echo_line(warning, err=True)
    pending = any(x["status"] == "would-sign" for x in rows)
    if as_json:
        emit_json({"dry_run": True, "would_sign": [x for x in rows if x["status"] == "would-sign"],
                   "results": rows, "sigstore": store.describe()})
    elif json_lines:
        for x in rows:
            emit_json_line({"dry_run": True, **x})
    else:
        click.echo(table([[x["status"], x["identity"], x["digest"], x["note"]] for x in rows],
                         ["STATUS", "IDENTITY", "DIGEST", "NOTE"]))
        n = sum(x["status"] == "would-sign" for x in rows)
        click.echo(f"dry run: {n} would be signed, {len(rows) - n} already signed", err=True)
    return EXIT_NEGATIVE if pending else EXIT_OK


def _warn_if_subkey(signer: Signer) -> None:
    """Say before signing that older containers/image releases reject this key's subkey signatures."""
    from atomicsig.signers.factory import signing_subkey

    if getattr(signer, "version", 4) == 6:  # a Sequoia-home key (atomicsig.signers.sequoia)
        click.echo(f"warning: key {signer.fingerprint} is an OpenPGP v6 key: only nodes whose containers/image "
                   "uses the Sequoia backend verify its signatures; GPGME nodes (skopeo/podman in Debian 12, "
                   "RHEL 9) refuse them — sign with a v4 key as well while such nodes remain", err=True)
        return
    sub = signing_subkey(signer)
    if sub:
        click.echo(f"warning: key {signer.fingerprint} signs with its subkey {sub}; older containers/image "
                   "releases (e.g. skopeo 1.9 in Debian 12) reject subkey signatures — use a signing primary key "
                   "if such nodes must accept these images", err=True)


def _progress_ticker(bar: Any) -> Any:
    """A progress callback advancing ``bar`` once per input (an input may yield several targets with --all)."""
    seen: set[str] = set()

    def tick(o: Any) -> None:
        if o.input not in seen:
            seen.add(o.input)
            bar.update(1)
    return tick


def _report(outcomes: list[Outcome], as_json: bool, where: str) -> int:
    """The end of a run: the --json document, or the summary line (per-image lines were printed as they came)."""
    from atomicsig.ops.sign import exit_code as signing_exit_code

    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("signed", "exists", "failed")}
    if as_json:
        emit_json({"sigstore": where, "summary": counts, "results": [o.as_dict() for o in outcomes]})
    else:
        click.echo(f"{counts['signed']} signed, {counts['exists']} already signed, {counts['failed']} failed "
                   f"({where})", err=True)
    return signing_exit_code(outcomes)
