"""``atomicsig sign``: sign images by digest into a sigstore."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_OK, InputError
from .common import (
    agent_cache_option,
    emit_json,
    gnupghome_option,
    install_sigterm_as_interrupt,
    json_option,
    passphrase_options,
    passphrase_source,
    registry_options,
    sigstore_option,
    table,
)


def read_reference_list(path: str) -> list[str]:
    """One reference per line; blank lines and # comments ignored; '-' reads stdin."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]


@click.command()
@click.argument("references", nargs=-1)
@click.option("--key", "keys", multiple=True, required=True, metavar="FPR|EMAIL|FILE",
              help="Signing key: fingerprint or e-mail in the keyring, or a secret key file. Repeat to sign "
                   "with several keys.")
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
@click.option("--dry-run", is_flag=True, help="Resolve references and show what would be signed; write nothing.")
@click.option("--signer", "signer_mode", type=click.Choice(["auto", "agent", "gpg", "memory"]), default="auto",
              show_default=True,
              help="agent: ask gpg-agent directly (fast; RSA, Ed25519, ECDSA NIST keys); gpg: one gpg process per "
                   "signature; auto: agent when it can, else gpg; memory: holds the secret key in this process "
                   "for the run (fastest for RSA; never written to disk; not for smartcards).")
@registry_options
@passphrase_options
@agent_cache_option
@gnupghome_option
@json_option
def sign(references: tuple[str, ...], keys: tuple[str, ...], sigstore: str, registries_dir: str | None,
         sigstore_token_file: str | None, from_file: str | None,
         manifest_file: str | None, all_instances: bool, force: bool, jobs: int | None, dry_run: bool,
         signer_mode: str, tls_verify: bool, cert_dir: str | None, authfile: str | None, passphrase_file: str | None,
         passphrase_env: str | None, passphrase_stdin: bool, gnupghome: str | None, as_json: bool) -> int:
    """Sign images (host/repo:tag, host/repo@sha256:…, or host/repo:tag@sha256:…).

    \b
    The signature claims the tag when one is given (host/repo:tag@sha256:… signs the tag identity with that
    digest); a tag without digest is resolved by fetching the manifest from the registry and hashing it.
    Signatures go to <sigstore>/<repository path>@sha256=<hex>/signature-N (first free N, never overwritten).
    """
    from .. import signing
    from ..extension import choose_store
    from ..passphrase import read_cached

    install_sigterm_as_interrupt()
    refs = list(references) + (read_reference_list(from_file) if from_file else [])
    if not refs:
        raise click.UsageError("give at least one image reference (or --from-file)")
    if manifest_file and len(refs) > 1:
        raise click.UsageError("--manifest applies to exactly one reference")
    if passphrase_stdin and from_file == "-":
        raise click.UsageError("--passphrase-stdin and --from-file - cannot both read stdin")
    store = choose_store(sigstore, registries_dir=registries_dir, tls_verify=tls_verify, cert_dir=cert_dir,
                         authfile=authfile, token_file=sigstore_token_file)
    resolver = signing.Resolver(tls_verify=tls_verify, cert_dir=cert_dir, authfile=authfile,
                                all_instances=all_instances, manifest_file=manifest_file)
    if dry_run:
        rows = []
        for r in refs:
            for t in resolver.resolve(r):
                rows.append({"identity": t.identity, "digest": t.digest, "note": t.note})
        if as_json:
            emit_json({"dry_run": True, "would_sign": rows, "sigstore": store.describe()})
        else:
            click.echo(table([[x["identity"], x["digest"], x["note"]] for x in rows], ["IDENTITY", "DIGEST", "NOTE"]))
        return EXIT_OK

    pw = read_cached(passphrase_source(passphrase_file, passphrase_env, passphrase_stdin))
    outcomes: list[signing.Outcome] = []
    with _signers(keys, gnupghome, pw, signer_mode) as signers:
        for signer in signers:
            _warn_if_subkey(signer)
            total = len(refs)
            show_bar = sys.stderr.isatty() and not as_json and total > 1
            if show_bar:
                with click.progressbar(length=total, label=f"signing with {signer.fingerprint[-16:]}",
                                       file=sys.stderr) as bar:
                    tick = _progress_ticker(bar)
                    outcomes += signing.sign_many(refs, resolver=resolver, signer=signer, store=store, force=force,
                                                  workers=jobs, progress=tick)
            else:
                outcomes += signing.sign_many(refs, resolver=resolver, signer=signer, store=store, force=force,
                                              workers=jobs)
    return _report(outcomes, as_json, store.describe())


def _warn_if_subkey(signer: Any) -> None:
    """Subkey signatures are accepted only by containers/image releases that map a subkey to its primary.

    Older releases still in distributions (skopeo 1.9.3 in Debian 12, tested here) compare the signing subkey's
    fingerprint with the policy keyring's primary fingerprints and reject the image, so say so before signing.
    """
    agent = getattr(signer, "agent", signer)
    sub = getattr(agent, "signing_key", None)
    if sub and sub.upper() != signer.fingerprint.upper():
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


class _signers:
    """Context manager yielding one Signer per --key; key files are imported into a throwaway GnuPG home."""

    def __init__(self, keys: tuple[str, ...], gnupghome: str | None, passphrase: str | None,
                 mode: str = "auto") -> None:
        self.keys, self.gnupghome, self.passphrase, self.mode = keys, gnupghome, passphrase, mode
        self._cms: list[object] = []
        self._made: list[object] = []

    def __enter__(self) -> list:  # type: ignore[type-arg]
        from .. import agentsign, gpg

        try:
            return self._open(agentsign, gpg)
        except BaseException:
            self.__exit__(None, None, None)  # a failed --key must not leave a temporary home behind
            raise

    def _open(self, agentsign: Any, gpg: Any) -> list:  # type: ignore[type-arg]
        out = self._made
        keyring = gpg.Keyring(self.gnupghome)
        for k in self.keys:
            if Path(k).is_file():
                cm = gpg.temporary_home()
                tmp = cm.__enter__()
                self._cms.append(cm)
                fprs = tmp.import_keys(Path(k).read_bytes(), self.passphrase)
                secret = [x for x in tmp.list_keys(secret=True) if x.fingerprint in fprs]
                if not secret:
                    raise InputError(f"{k} holds no secret key")
                out.append(agentsign.make_signer(tmp, secret[0].fingerprint, self.passphrase, self.mode))
            else:
                info = keyring.resolve(k, secret=True)
                out.append(agentsign.make_signer(keyring, info.fingerprint, self.passphrase, self.mode))
        return out

    def __exit__(self, *exc: object) -> None:
        from ..agentsign import close_signer

        for s in self._made:
            close_signer(s)
        for cm in reversed(self._cms):
            cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def _report(outcomes: list, as_json: bool, where: str) -> int:  # type: ignore[type-arg]
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {s: sum(1 for o in outcomes if o.status == s) for s in ("signed", "exists", "failed")}
    if as_json:
        emit_json({"sigstore": where, "summary": counts, "results": [o.as_dict() for o in outcomes]})
    else:
        for o in outcomes:
            if o.status == "failed":
                click.echo(f"FAILED  {o.input}: {o.error}", err=True)
            elif len(outcomes) <= 20:
                ident = o.target.identity if o.target else o.input
                extra = f" ({o.target.note})" if o.target and o.target.note else ""
                click.echo(f"{o.status:7} {ident} {o.target.digest if o.target else ''}{extra} -> {o.location}")
        click.echo(f"{counts['signed']} signed, {counts['exists']} already signed, {counts['failed']} failed "
                   f"({where})", err=True)
    if not failed:
        return EXIT_OK
    # Input errors (2) dominate, then undecided (3): the caller fixes the input first.
    return min(o.exit_code for o in failed) if any(o.exit_code == 2 for o in failed) else max(
        o.exit_code for o in failed)
