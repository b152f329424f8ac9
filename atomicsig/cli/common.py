"""Shared CLI plumbing: the option set every command spells the same way, output and exit codes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from atomicsig.errors import EXIT_UNDECIDED, EXIT_USAGE, AtomicsigError, InputError
from atomicsig.gnupg.passphrase import PassphraseSource

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SIGSTORE = "/var/lib/atomic/sigstore"


def run_main(group: click.Group, argv: list[str]) -> int:
    """Run click in standalone=False mode and map every outcome to our exit-code contract.

    click's defaults would exit 1 on Ctrl-C and on a broken pipe, which a pipeline would read as "rejected".
    A closed stdout (``… | head -1``) is "could not decide" (3): the caller did not get the whole answer. stdout is
    flushed here, inside the guard, because the interpreter's own flush at exit happens after this returns and
    would turn a lost final write into exit 0 or 120 (issue 11).
    """
    stdout = sys.stdout
    try:
        try:
            rv = group.main(args=argv, prog_name="atomicsig", standalone_mode=False)
        except SystemExit:
            # click catches EPIPE itself (even with standalone_mode=False), wraps sys.stdout and calls
            # sys.exit(1); that replaced stdout is how we can tell it from a command's own exit.
            if sys.stdout is not stdout:
                return _stdout_closed(stdout)
            raise
        code = int(rv or 0)
        stdout.flush()
        return code
    except click.exceptions.Abort:
        click.echo("atomicsig: interrupted", err=True)
        return EXIT_UNDECIDED
    except KeyboardInterrupt:
        click.echo("atomicsig: interrupted", err=True)
        return EXIT_UNDECIDED
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if exc.exit_code == 2 else int(exc.exit_code)
    except AtomicsigError as exc:
        click.echo(f"atomicsig: error: {exc.message}", err=True)
        if exc.diagnostics():
            click.echo(f"  hint: {exc.diagnostics()}", err=True)
        return exc.exit_code
    except BrokenPipeError:
        return _stdout_closed(stdout)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return _stdout_closed(stdout)
        click.echo(f"atomicsig: error: {exc.strerror or exc}", err=True)
        return EXIT_UNDECIDED


def _stdout_closed(stdout: Any) -> int:
    """Say once on stderr that the output was cut off, and make the exit-time flush harmless."""
    _silence_stdout(stdout)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write("atomicsig: stdout closed (broken pipe); results not fully written\n")
        sys.stderr.flush()
    return EXIT_UNDECIDED


def _silence_stdout(stdout: Any = None) -> None:
    # Python flushes stdout at exit; on a closed pipe that raises again, so point it at /dev/null.
    stdout = stdout if stdout is not None else sys.stdout
    try:
        fd = stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file (tests' in-memory streams)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


# ---- options ---------------------------------------------------------------------------------------------------


def gnupghome_option(f: F) -> F:
    """``--gnupghome`` for commands that read keys: the directory must exist.

    gpg (and our Keyring) would create a mistyped home silently and then report "no key", hiding the typo.
    """
    return click.option("--gnupghome", metavar="DIR", envvar="GNUPGHOME", show_envvar=True,
                        callback=_existing_gnupghome,
                        help="GnuPG home holding the keys (default: $GNUPGHOME, else ~/.gnupg); must exist.")(f)


def creatable_gnupghome_option(f: F) -> F:
    """``--gnupghome`` for commands that put keys into a home (keys generate/import): created if absent."""
    return click.option("--gnupghome", metavar="DIR", envvar="GNUPGHOME", show_envvar=True,
                        callback=_announce_new_gnupghome,
                        help="GnuPG home to hold the keys (default: $GNUPGHOME, else ~/.gnupg); created (mode "
                             "0700) if it does not exist.")(f)


def sequoia_home_option(f: F) -> F:
    """``--sequoia-home``: the Sequoia home holding OpenPGP v6 and post-quantum keys (skopeo's and podman's
    Sequoia signer read the same one); atomicsig.keystore.sequoia_home has the layout."""
    return click.option("--sequoia-home", metavar="DIR",
                        help="Sequoia home for v6/post-quantum keys: DIR/data/pgp.cert.d and DIR/data/keystore "
                             "(default: $SEQUOIA_HOME, else ~/.local/share/pgp.cert.d and "
                             "~/.local/share/sequoia/keystore, as Sequoia and skopeo use them).")(f)


def _existing_gnupghome(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value and not os.path.isdir(value):
        what = "is not a directory" if os.path.exists(value) else "does not exist"
        raise InputError(f"GnuPG home {value} {what}",
                         hint="check --gnupghome / $GNUPGHOME; `atomicsig keys generate` or `keys import` "
                              "creates a new home")
    return value


def _announce_new_gnupghome(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value and not os.path.exists(value):
        click.echo(f"atomicsig: creating GnuPG home {value}", err=True)
    return value


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(f)


def node_lookup_options(f: F) -> F:
    """``--user`` and ``--lookup`` for commands that read a node's policy.json and registries.d (``policy show``,
    ``policy explain``, ``audit``): whose view and which containers/image generation's file lookup to reproduce
    (issue 14 item 4, :mod:`atomicsig.store.nodefiles`)."""
    f = click.option("--lookup", type=click.Choice(["auto", "old", "new"]), default="auto", show_default=True,
                     help="Which containers/image file lookup to reproduce: auto (read the installed podman/skopeo/"
                          "crio build), old (every release up to 5.39: ~/.config then /etc, one registries.d) or "
                          "new (Podman 6 line: also /usr/share, registries.d drop-ins merged).")(f)
    return click.option("--user", "as_user", metavar="NAME|UID",
                        help="Find the files as this user's podman would (their home and uid from the node's "
                             "passwd). Default: this process at --root /, root of the node under another --root.")(f)


def sigstore_option(default: str | None = DEFAULT_SIGSTORE, help_: str = "") -> Callable[[F], F]:
    def deco(f: F) -> F:
        return click.option("--sigstore", metavar="PATH|URL", default=default, show_default=default is not None,
                            help=help_ or "Where signatures live: a directory, file://, or http(s):// lookaside.")(f)
    return deco


def passphrase_options(f: F) -> F:
    f = click.option("--passphrase-stdin", is_flag=True, help="Read the passphrase from the first line of stdin.")(f)
    f = click.option("--passphrase-env", metavar="NAME", callback=_mark_secret_env,
                     help="Name of an environment variable holding the passphrase (the name, not the value).")(f)
    f = click.option("--passphrase-file", metavar="FILE", type=click.Path(dir_okay=False),
                     help="File whose first line is the key passphrase.")(f)
    return f


def agent_cache_option(f: F) -> F:
    """``--use-agent-cache``: without it a protected key needs its passphrase given, cached or not (issue 11 #7)."""
    return click.option("--use-agent-cache", "agent_cache", is_flag=True,
                        help="Sign with a protected key without giving its passphrase, using the one gpg-agent "
                             "has cached (default: refused; a given passphrase is always checked).")(f)


def _mark_secret_env(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # At parse time, before any gpg (and the agent it starts) could inherit the variable.
    if value:
        from atomicsig.gnupg.passphrase import mark_secret_env

        mark_secret_env(value)
    return value


def passphrase_source(passphrase_file: str | None, passphrase_env: str | None,
                      passphrase_stdin: bool) -> PassphraseSource:
    given = sum(bool(x) for x in (passphrase_file, passphrase_env, passphrase_stdin))
    if given > 1:
        raise click.UsageError("use only one of --passphrase-file, --passphrase-env, --passphrase-stdin")
    return PassphraseSource(file=passphrase_file, env=passphrase_env, stdin=passphrase_stdin)


def registry_options(f: F) -> F:
    f = click.option("--authfile", metavar="FILE", envvar="REGISTRY_AUTH_FILE",
                     help="Registry credentials (containers-auth.json); default $XDG_RUNTIME_DIR/containers/"
                          "auth.json, then ~/.docker/config.json.")(f)
    f = click.option("--cert-dir", metavar="DIR", help="Directory with *.crt CA files (and *.cert/*.key client "
                                                        "certs) for the registry, like skopeo.")(f)
    f = click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
                     help="Require HTTPS with a valid certificate; --tls-verify=false also allows plain HTTP.")(f)
    return f


def signature_policy_dir_option(f: F) -> F:
    """``--signature-policy-dir``: CRI-O's option of that name (crio.conf ``signature_policy_dir``), where the
    per-namespace ``<namespace>.json`` policies live on the node (docs/policy.md, "Namespaces")."""
    return click.option("--signature-policy-dir", "policy_dir", default="/etc/crio/policies", show_default=True,
                        metavar="DIR", help="CRI-O's signature_policy_dir on the node (per-namespace "
                                            "<namespace>.json policies; under --root).")(f)


def namespace_option(f: F) -> F:
    """``--namespace``: answer for a pod in this Kubernetes namespace, as CRI-O would."""
    return click.option("--namespace", metavar="NS",
                        help="Decide as CRI-O does for a pod in namespace NS: its <signature-policy-dir>/NS.json, "
                             "or the global policy when that file does not exist.")(f)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    return "\n".join(lines)


def install_sigterm_as_interrupt() -> None:
    """SIGTERM during a batch behaves like Ctrl-C: finish nothing half-way (writes are atomic) and exit 3."""
    def _handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _handler)


# ---- streaming output (one record per result as it completes) --------------------------------------------------


def echo_line(text: str, *, err: bool = False) -> None:
    """Print one line and flush at once, so a killed or interrupted batch leaves every finished result on record.

    An EPIPE here propagates to :func:`run_main`, which turns it into exit 3.
    """
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def emit_json_line(obj: Any) -> None:
    """One compact JSON object per line (JSON Lines), flushed: what ``--json-lines`` streams per result."""
    echo_line(json.dumps(obj, separators=(",", ":"), sort_keys=False))


def json_lines_option(f: F) -> F:
    return click.option("--json-lines", "json_lines", is_flag=True,
                        help="One JSON object per result on stdout as each completes (JSON Lines).")(f)
