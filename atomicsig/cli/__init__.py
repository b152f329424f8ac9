"""The ``atomicsig`` command line: parse, call the library, render. Nothing else lives here.

Subcommands are imported lazily (one module per noun) so ``atomicsig --help`` and ``--version`` start fast.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from atomicsig.cli.common import run_main
from atomicsig.version import __version__

#: command name -> (module under atomicsig.cli, attribute, one-line help shown in `atomicsig --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "keys": ("keys", "keys", "Create, list, import, export, retire and delete GnuPG signing keys in batch."),
    "sign": ("sign", "sign", "Sign images by digest into a sigstore (lookaside dir, registry extension)."),
    "verify": ("verify", "verify", "Check whether images carry an accepted signature."),
    "policy": ("policy", "policy", "Compile, apply, show and explain node trust policy."),
    "audit": ("audit", "audit", "Report which images a node's policy (or an unapplied one) would refuse."),
    "serve": ("serve", "serve", "Serve a sigstore over HTTP: lookaside GETs and the signature extension API."),
    "sync": ("sync", "sync", "Keep a local sigstore identical to upstream sigstores."),
    "mirror": ("mirror", "mirror", "Copy images' signatures from an upstream lookaside or registry, verified."),
    "index": ("sync", "index", "Rebuild the static sync index of a sigstore directory."),
    "pack": ("pack", "pack", "Write the sync pack a joining node reads in one request (fast first sync)."),
    "prune": ("sync", "prune", "Remove signatures made by a retired key from a sigstore."),
    "webhook": ("webhook", "webhook", "Kubernetes admission webhook: check pods' images against the policy at deploy."),
    "bundle": ("bundle", "bundle", "Carry signatures, keys and policy across an air gap in one checked file."),
    "demo": ("demo", "demo", "Run the end-to-end demo on a throwaway key, sigstore and local registry."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n, (mod, _, _) in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None or not _module_exists(entry[0]):
            return None
        module = importlib.import_module(f"atomicsig.cli.{entry[0]}")
        cmd: click.Command = getattr(module, entry[1])
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, COMMANDS[n][2]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _module_exists(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(f"atomicsig.cli.{name}") is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="atomicsig")
def cli() -> None:
    """Sign container images with GPG simple signing and make nodes refuse images nobody trusted.

    \b
    Exit codes: 0 success, 1 a negative answer (rejected, changes pending),
                2 usage or input error, 3 could not decide (registry down, gpg failure).
    """


def main(argv: list[str] | None = None) -> Any:
    return run_main(cli, argv if argv is not None else sys.argv[1:])
