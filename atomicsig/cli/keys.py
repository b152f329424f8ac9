"""``atomicsig keys``: batch key management, GnuPG homes and Sequoia homes (v6 keys)."""

from __future__ import annotations

import datetime
import sys

import click

from atomicsig.cli.common import (
    creatable_gnupghome_option,
    emit_json,
    gnupghome_option,
    json_option,
    passphrase_options,
    passphrase_source,
    sequoia_home_option,
    table,
)
from atomicsig.errors import InputError
from atomicsig.format import durations


def _keyring(gnupghome: str | None):  # type: ignore[no-untyped-def]
    from atomicsig.gnupg.keyring import Keyring

    return Keyring(gnupghome)


def _date(ts: int | None) -> str:
    if not ts:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d")


@click.group()
def keys() -> None:
    """Create, list, import, export, rotate, retire and delete signing keys (GnuPG, or a Sequoia home for v6
    keys), without prompts."""


@keys.command("generate")
@click.option("-f", "--file", "--batch", "path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Signers YAML (see README 'Signers file'); '-' for stdin.")
@creatable_gnupghome_option
@sequoia_home_option
@json_option
def generate_cmd(path: str, gnupghome: str | None, sequoia_home: str | None, as_json: bool) -> None:
    """Generate every key listed in a signers YAML file; existing identities are reported, not duplicated.

    Signers with 'profile: rfc9580' (OpenPGP v6, post-quantum algorithms) go to the Sequoia home
    (--sequoia-home), where skopeo --sign-by-sq-fingerprint finds them; the others to the GnuPG home.
    """
    from atomicsig.keystore.sequoia_home import SequoiaHome
    from atomicsig.ops import keys as keylib

    specs = keylib.load_specs_file(path)
    keyring = _keyring(gnupghome) if any(s.keystore == "gnupg" for s in specs) else None
    sequoia = SequoiaHome(sequoia_home) if any(s.keystore == "sequoia" for s in specs) else None
    results = keylib.generate(keyring, specs, sequoia)
    if as_json:
        emit_json({"keys": [r.as_dict() for r in results]})
        return
    rows = [[r.status, r.key.fingerprint, _algorithm(r.key.algorithm, r.version), _date(r.key.expires),
             r.key.uids[0] if r.key.uids else ""] for r in results]
    click.echo(table(rows, ["STATUS", "FINGERPRINT", "ALGORITHM", "EXPIRES", "UID"]))


@keys.command("rotate")
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Signers YAML (the same file as keys generate); '-' for stdin.")
@click.option("--overlap", default="30d", show_default=True, metavar="DURATION",
              help="How long the previous key stays valid after the new one exists.")
@click.option("--min-age", default="1d", show_default=True, metavar="DURATION",
              help="Leave keys younger than this alone (re-running a rotation changes nothing).")
@click.option("--export-dir", type=click.Path(file_okay=False),
              help="Write <email>.gpg with the new and the old public key (the policy's 'any of these keys' file).")
@click.option("--dry-run", is_flag=True, help="Show which signers are due; change nothing.")
@gnupghome_option
@sequoia_home_option
@json_option
def rotate_cmd(path: str, overlap: str, min_age: str, export_dir: str | None, dry_run: bool, gnupghome: str | None,
               sequoia_home: str | None, as_json: bool) -> int:
    """Give every signer in the file a new key; the old key expires after --overlap.

    Publish both public keys to nodes (--export-dir, then policy apply) before signing with the new key, re-sign
    what must outlive the overlap, and let the old key expire. `sign --key EMAIL` uses the new key meanwhile.
    Exit 1 with --dry-run when a rotation is due. Signers with 'keystore: sequoia' (v6) rotate in the Sequoia
    home (--sequoia-home), the others in the GnuPG home.
    """
    from atomicsig.keystore.sequoia_home import SequoiaHome
    from atomicsig.ops import keys as keylib

    overlap = durations.gpg_expire(overlap, "--overlap", allow_never=False)  # the old key must expire
    specs = keylib.load_specs_file(path)
    kr = _keyring(gnupghome) if any(s.keystore == "gnupg" for s in specs) else None
    sequoia = SequoiaHome(sequoia_home) if any(s.keystore == "sequoia" for s in specs) else None
    results = keylib.rotate(kr, specs, overlap=overlap, min_age_seconds=_seconds(min_age, "--min-age"),
                            dry_run=dry_run, sequoia=sequoia)
    if export_dir and not dry_run:
        keylib.export_rotated(kr, results, export_dir, sequoia)
    if as_json:
        emit_json({"dry_run": dry_run, "keys": [r.as_dict() for r in results]})
    else:
        rows = [[r.status, r.spec.email, r.new.fingerprint if r.new else "-", r.old.fingerprint if r.old else "-",
                 _date(r.old_expires) if r.old_expires else "-"] for r in results]
        click.echo(table(rows, ["STATUS", "EMAIL", "NEW", "OLD", "OLD EXPIRES"]))
    return 1 if dry_run and any(r.status == "planned" for r in results) else 0


def _algorithm(name: str, version: int) -> str:
    """The ALGORITHM column: a v6 key says so (its fingerprint is 64 hex digits, GnuPG 2.2 cannot use it)."""
    return f"{name} (v6)" if version == 6 else name


def _seconds(text: str, option: str) -> int:
    return round(durations.parse_duration(text, option))  # the one duration grammar (atomicsig/durations.py)


@keys.command("list")
@click.option("--secret", is_flag=True, help="Only keys whose secret part is present (usable for signing).")
@gnupghome_option
@sequoia_home_option
@json_option
def list_cmd(secret: bool, gnupghome: str | None, sequoia_home: str | None, as_json: bool) -> None:
    """List keys with fingerprint, user IDs, algorithm and expiry.

    With --sequoia-home (or $SEQUOIA_HOME) the keys of that Sequoia home are listed after GnuPG's.
    """
    import os

    from atomicsig.ops.keys import sequoia_keys

    listed = [(k, 4, "gnupg") for k in _keyring(gnupghome).list_keys(secret=secret)]
    if sequoia_home or os.environ.get("SEQUOIA_HOME"):
        listed += [(k, v, "sequoia") for k, v in sequoia_keys(sequoia_home, secret=secret)]
    if as_json:
        emit_json({"keys": [{**k.as_dict(), "version": v, "keystore": store} for k, v, store in listed]})
        return
    rows = []
    for k, v, _ in listed:
        state = "revoked" if k.revoked else "expired" if k.expired else ("sec" if k.secret else "pub")
        rows.append([k.fingerprint, _algorithm(k.algorithm, v), _date(k.created), _date(k.expires), state,
                     "; ".join(k.uids)])
    click.echo(table(rows, ["FINGERPRINT", "ALGORITHM", "CREATED", "EXPIRES", "TYPE", "UIDS"]))


@keys.command("export")
@click.argument("key", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here (atomically) instead of stdout.")
@click.option("--armor", is_flag=True, help="ASCII armor (default: binary, what /etc/pki/containers expects).")
@click.option("--secret", is_flag=True, help="Export the secret key (e.g. for a Kubernetes Secret); file mode 0600.")
@passphrase_options
@gnupghome_option
@sequoia_home_option
def export_cmd(key: tuple[str, ...], output: str | None, armor: bool, secret: bool, passphrase_file: str | None,
               passphrase_env: str | None, passphrase_stdin: bool, gnupghome: str | None,
               sequoia_home: str | None) -> None:
    """Export public (or --secret) keys named by fingerprint or e-mail.

    Keys of a Sequoia home (v6 fingerprints, or any key with --sequoia-home) are exported as stored: a secret
    key stays protected by its passphrase.
    """
    from atomicsig.fsutil import atomic_write
    from atomicsig.gnupg.passphrase import read_cached
    from atomicsig.ops.keys import export_keys

    pw = read_cached(passphrase_source(passphrase_file, passphrase_env, passphrase_stdin)) if secret else None
    data, count = export_keys(key, gnupghome, sequoia_home, secret=secret, armor=armor, passphrase=pw)
    if output:
        atomic_write(output, data, 0o600 if secret else 0o644)
        click.echo(f"exported {count} {'secret' if secret else 'public'} key(s) to {output}", err=True)
    else:
        if not armor and sys.stdout.isatty():
            raise InputError("refusing to write binary key data to a terminal; use -o FILE or --armor")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@keys.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--keystore", type=click.Choice(["auto", "gnupg", "sequoia"]), default="auto", show_default=True,
              help="Where keys go: auto = v4 keys into the GnuPG home, v6 keys into the Sequoia home "
                   "(--sequoia-home or $SEQUOIA_HOME); gnupg or sequoia = all there.")
@passphrase_options
@creatable_gnupghome_option
@sequoia_home_option
@json_option
def import_cmd(files: tuple[str, ...], keystore: str, passphrase_file: str | None, passphrase_env: str | None,
               passphrase_stdin: bool, gnupghome: str | None, sequoia_home: str | None, as_json: bool) -> None:
    """Import public or secret keys (binary or armored) from files ('-' for stdin).

    OpenPGP v6 keys go to the Sequoia home (GnuPG 2.2 cannot hold them): certificates merged into pgp.cert.d,
    secret keys into the soft-key store as they are (a protected key stays protected). Importing again changes
    nothing.
    """
    from atomicsig.gnupg.passphrase import read_cached
    from atomicsig.ops.keys import import_keys

    pw = read_cached(passphrase_source(passphrase_file, passphrase_env, passphrase_stdin))
    inputs: list[tuple[str, bytes]] = []
    for f in files:
        try:
            data = sys.stdin.buffer.read() if f == "-" else open(f, "rb").read()  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"cannot read {f}: {exc.strerror}") from exc
        inputs.append((f, data))
    results = import_keys(inputs, gnupghome, sequoia_home, keystore=keystore, passphrase=pw)
    if as_json:
        emit_json({"imported": [r["fingerprint"] for r in results if r["status"] != "unchanged"], "keys": results})
    else:
        for r in results:
            where = " (Sequoia home)" if r["keystore"] == "sequoia" else ""
            click.echo(f"{r['status']} {r['fingerprint']}{where}")


@keys.command("delete")
@click.argument("key", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@passphrase_options
@gnupghome_option
@sequoia_home_option
@json_option
def delete_cmd(key: tuple[str, ...], yes: bool, passphrase_file: str | None, passphrase_env: str | None,
               passphrase_stdin: bool, gnupghome: str | None, sequoia_home: str | None, as_json: bool) -> None:
    """Delete keys (secret and public part) by fingerprint. E-mails are refused: too easy to hit the wrong key.

    With --sequoia-home the keys are deleted from that Sequoia home (40- or 64-hex fingerprints) instead.
    """
    if sequoia_home:
        _delete_sequoia(key, yes, sequoia_home, as_json)
        return
    from atomicsig.gnupg.passphrase import read_cached
    from atomicsig.ops.keys import deletion_targets

    kr = _keyring(gnupghome)
    targets = deletion_targets(kr, key)
    if not yes:
        if not sys.stdin.isatty():
            raise InputError("refusing to delete keys without --yes when not on a terminal")
        click.confirm(f"Delete {len(targets)} key(s) including secret parts?", abort=True)
    pw = read_cached(passphrase_source(passphrase_file, passphrase_env, passphrase_stdin))
    deleted: list[str] = []
    for t in targets:
        kr.delete(t.fingerprint, passphrase=pw)
        deleted.append(t.fingerprint)
        if not as_json:
            click.echo(f"deleted {t.fingerprint}")
    if as_json:
        emit_json({"deleted": deleted})


def _delete_sequoia(key: tuple[str, ...], yes: bool, sequoia_home: str, as_json: bool) -> None:
    from atomicsig.keystore.sequoia_home import SequoiaHome
    from atomicsig.ops.keys import sequoia_deletion_targets

    home = SequoiaHome(sequoia_home)
    targets = sequoia_deletion_targets(home, key)
    if not yes:
        if not sys.stdin.isatty():
            raise InputError("refusing to delete keys without --yes when not on a terminal")
        click.confirm(f"Delete {len(targets)} key(s) including secret parts?", abort=True)
    for t in targets:
        home.delete(t)
        if not as_json:
            click.echo(f"deleted {t.info.fingerprint}")
    if as_json:
        emit_json({"deleted": [t.info.fingerprint for t in targets]})


@keys.command("retire")
@click.argument("key", nargs=-1, required=True)
@click.option("--revoke", is_flag=True, help="Revoke instead of expiring (signatures stop verifying at once).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="With --revoke: also save the revocation certificate here.")
@passphrase_options
@gnupghome_option
@sequoia_home_option
@json_option
def retire_cmd(key: tuple[str, ...], revoke: bool, output: str | None, passphrase_file: str | None,
               passphrase_env: str | None, passphrase_stdin: bool, gnupghome: str | None, sequoia_home: str | None,
               as_json: bool) -> None:
    """Stop a key from being used: set its expiry to tomorrow, or --revoke it.

    Export the public key again afterwards and redistribute it (policy apply) so nodes learn of the change;
    containers/image rejects signatures by expired or revoked keys. Keys of a Sequoia home (v6 fingerprints, or
    any key with --sequoia-home) are retired there; Sequoia keeps accepting signatures made before an expiry,
    so use --revoke to stop those too (docs/keys-sequoia.md).
    """
    from atomicsig.gnupg.passphrase import read_cached
    from atomicsig.ops.keys import retire_key

    pw = read_cached(passphrase_source(passphrase_file, passphrase_env, passphrase_stdin))
    results: list[dict[str, object]] = []
    for k in key:
        done = retire_key(k, gnupghome, sequoia_home, revoke=revoke, passphrase=pw, certificate=output)
        results.append(done)
        if not as_json:
            click.echo(f"revoked {done['fingerprint']}" if revoke else f"{done['fingerprint']} now expires in one day")
    if as_json:
        emit_json({"keys": results})
