"""``atomicsig sync`` (daemon, ``--once``, ``status``), ``atomicsig index`` and ``atomicsig prune``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from atomicsig.cli.common import F, emit_json, gnupghome_option, json_option, table
from atomicsig.errors import EXIT_NEGATIVE, EXIT_OK, EXIT_UNDECIDED, AtomicsigError, InputError

if TYPE_CHECKING:
    from atomicsig.sync.daemon import SyncDaemon

DEFAULT_CONFIG = "/etc/atomicsig/sync.yaml"


def _setup_logging(verbose: bool, log_format: str) -> None:
    from atomicsig.logfmt import formatter

    logger = logging.getLogger("atomicsig.sync")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter(log_format))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def _config_option(f: F) -> F:
    return click.option("--config", "config_path", metavar="FILE", default=DEFAULT_CONFIG, show_default=True,
                        envvar="ATOMICSIG_SYNC_CONFIG", help="Sync configuration (YAML, see docs/sync.md).")(f)


@click.group(invoke_without_command=True)
@_config_option
@click.option("--once", is_flag=True, help="Sync every source until caught up (at most --passes bounded passes "
              "each), then exit (3 if any source failed).")
@click.option("--from", "only", metavar="URL", multiple=True,
              help="Only these configured sources (repeatable); for --once. With --sigstore: the sources of a "
                   "one-off copy, no config file read.")
@click.option("--sigstore", "adhoc_sigstore", metavar="DIR", default=None,
              help="With --once --from URL --key FILE: copy into DIR without a config file (like rsync); every "
                   "signature is verified against the --key files before it is stored, and re-running resumes.")
@click.option("--key", "adhoc_keys", metavar="FILE", multiple=True,
              help="With --sigstore: a trusted public key file (binary or armored; repeatable).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log lines on stdout: JSON lines (ts, level, msg, fields) or text [default: the config's "
                   "log-format, else json].")
@click.option("--passes", type=click.IntRange(1, 1_000_000), default=None, metavar="N",
              help="With --once: at most N bounded passes per source (each within pass-limit) [default: 10].")
@click.option("--user", "run_as", metavar="NAME", default=None,
              help="When started as root: become this user after the config and keys are read and the metrics "
                   "port is bound.")
@click.pass_context
def sync(ctx: click.Context, config_path: str, once: bool, only: tuple[str, ...], adhoc_sigstore: str | None,
         adhoc_keys: tuple[str, ...], verbose: bool, log_format: str | None = None, passes: int | None = None,
         run_as: str | None = None) -> int:
    """Keep a local sigstore identical to upstream sigstores (follow their journals, verify, append).

    Without a subcommand this runs the daemon (SIGHUP reloads, SIGTERM stops). Every source has its own worker
    and every pass is bounded (pass-limit, timeout), so one slow or hostile peer cannot stall the others.
    Logs are JSON lines (or text) on stdout.
    """
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    from atomicsig.sync import config as config_mod
    from atomicsig.sync.daemon import ONCE_PASSES, SyncDaemon

    if passes is not None and not once:
        raise InputError("--passes is for --once")
    if adhoc_sigstore is not None or adhoc_keys:
        daemon = _adhoc_daemon(ctx, once, only, adhoc_sigstore, adhoc_keys)
        _setup_logging(verbose, log_format or "text")
        daemon.load()
    else:
        # The config's log-format applies from the first line (the flag wins); the daemon starts from the same read.
        cfg = config_mod.load(config_path)
        _setup_logging(verbose, log_format or cfg.log_format)
        daemon = SyncDaemon(config_path)
        daemon.load(cfg)
        if only:
            daemon.restrict_to(only)

    def _drop() -> None:
        if run_as:
            from atomicsig.privdrop import drop_privileges

            who = drop_privileges(run_as)
            logging.getLogger("atomicsig.sync").info("privileges dropped", extra={"fields": {
                "user": who.user, "uid": who.uid, "gid": who.gid}})

    if once:
        _drop()
        try:
            results = daemon.run_once(passes or ONCE_PASSES)
        finally:
            daemon.close()
        failed = [u for u, r in results.items() if isinstance(r, AtomicsigError)]
        return EXIT_UNDECIDED if failed else EXIT_OK
    daemon.install_signals()
    daemon.after_bind = _drop
    return daemon.run()


def _adhoc_daemon(ctx: click.Context, once: bool, sources: tuple[str, ...], sigstore: str | None,
                  keys: tuple[str, ...]) -> SyncDaemon:
    """``sync --once --from URL --sigstore DIR --key FILE``: a one-off copy without a config file, through the
    same config model (:func:`atomicsig.sync.config.adhoc`) and the same daemon as ``sync --once --config``."""
    from atomicsig.sync import config as config_mod
    from atomicsig.sync.daemon import SyncDaemon

    if ctx.get_parameter_source("config_path") not in (click.core.ParameterSource.DEFAULT, None):
        raise click.UsageError("--sigstore/--key make a one-off copy without a config file; drop --config "
                               "(or ATOMICSIG_SYNC_CONFIG), or drop --sigstore/--key to use it")
    missing = [flag for flag, given in (("--once", once), ("--from URL", sources), ("--sigstore DIR", sigstore),
                                        ("--key FILE", keys)) if not given]
    if missing:
        raise click.UsageError(f"a one-off copy needs --once --from URL --sigstore DIR --key FILE; missing: "
                               f"{', '.join(missing)}")
    assert sigstore is not None
    return SyncDaemon(config_mod.ADHOC_ORIGIN, config=config_mod.adhoc(sigstore, list(sources), list(keys)))


@sync.command("status")
@_config_option
@json_option
def sync_status(config_path: str, as_json: bool) -> int:
    """Show each source's persisted cursor, lag, counts and last error (reads the state file only)."""
    from atomicsig.sync.daemon import status

    st = status(config_path)
    bad = any(s.get("last_error") for s in st["sources"])
    if as_json:
        emit_json(st)
        return EXIT_UNDECIDED if bad else EXIT_OK  # the same answer as the table's
    rows = []
    for s in st["sources"]:
        if s.get("never_synced"):
            rows.append([s["url"], "-", "-", "-", "-", "never synced"])
            continue
        rej = sum(s["rejected"].values())
        ago = "-" if s["seconds_since_success"] is None else f"{s['seconds_since_success']:.0f}s ago"
        rows.append([s["url"], str(s["seq"]), str(s["lag_bytes"] if s["lag_bytes"] is not None else "?"),
                     str(s["synced"]), str(rej), s["last_error"] or f"ok ({ago})"])
    click.echo(f"sigstore {st['sigstore']}  state {st['state']}")
    click.echo(table(rows, ["SOURCE", "SEQ", "LAG(bytes)", "SYNCED", "REJECTED", "STATUS"]))
    return EXIT_UNDECIDED if bad else EXIT_OK


@click.command()
@click.argument("sigstore", type=click.Path(file_okay=False))
@json_option
def index(sigstore: str, as_json: bool) -> int:
    """Rebuild SIGSTORE/.atomicsig/journal from a full scan (new epoch: followers restart and dedup).

    Run it after skopeo, podman or anything else wrote into the sigstore without going through atomicsig.
    """
    from atomicsig.store.journal import Journal

    root = Path(sigstore)
    if not root.is_dir():
        raise InputError(f"{sigstore} is not a directory")
    j = Journal(root)
    n = j.rebuild()
    out = {"sigstore": str(root), "journal": str(j.path), "signatures": n, "epoch": j.epoch()}
    if as_json:
        emit_json(out)
    else:
        click.echo(f"indexed {n} signatures into {j.path} (epoch {out['epoch']})")
    return EXIT_OK


@click.command()
@click.option("--sigstore", metavar="PATH", required=True, help="The sigstore directory to prune.")
@click.option("--key", "keys", metavar="FPR|EMAIL|FILE", multiple=True, required=True,
              help="The retired key: fingerprint (40 hex) or key ID (16 hex), an e-mail in the keyring, or a "
                   "public key file; an e-mail or file must name exactly one key. Repeatable.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing. Exit 1 if anything "
                                               "would be removed, 0 if nothing.")
@gnupghome_option
@json_option
def prune(sigstore: str, keys: tuple[str, ...], dry_run: bool, gnupghome: str | None, as_json: bool) -> int:
    """Remove every signature claiming to be made by a retired key, renumbering without gaps.

    Matches the issuer a signature *claims* (a retired key may no longer verify). Removals are journaled, so
    followers with propagate-deletes repeat them. A fingerprint matches only that key (a subkey signature only
    by the subkey's own FPR); an e-mail or key file matches its primary key and all its subkeys.
    """
    from atomicsig.ops.keys import retired_key_fingerprints
    from atomicsig.store.prune import prune_keys

    root = Path(sigstore)
    if not root.is_dir():
        raise InputError(f"{sigstore} is not a directory")
    res = prune_keys(root, retired_key_fingerprints(keys, gnupghome), dry_run=dry_run)
    if as_json:
        emit_json({"removed": res.removed, "directories": res.directories, "dry_run": dry_run})
    else:
        verb = "would remove" if dry_run else "removed"
        for r in res.removed:
            click.echo(f"{verb} {r}")
        click.echo(f"{verb} {len(res.removed)} signatures in {res.directories} directories")
    return EXIT_NEGATIVE if dry_run and res.removed else EXIT_OK


__all__ = ["index", "prune", "sync"]
