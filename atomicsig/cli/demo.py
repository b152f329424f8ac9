"""``atomicsig demo``: the whole story on throwaway parts — key, registry, sign, node policy, real skopeo.

The flow lives in :mod:`atomicsig.demo.run`; this module only narrates it and renders the outcome.
"""

from __future__ import annotations

import click

from atomicsig.cli.common import emit_json, json_option
from atomicsig.errors import EXIT_NEGATIVE, EXIT_OK


class _Printer:
    """Prints the demo's steps (bold) and details on stdout."""

    def step(self, n: int, text: str) -> None:
        click.secho(f"\n[{n}] {text}", bold=True)

    def say(self, text: str) -> None:
        click.echo(text)


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (key, sigstore, policy) for inspection.")
@click.option("--signer", "signer_mode", type=click.Choice(["auto", "agent", "gpg"]), default="auto", show_default=True,
              help="How to sign: through gpg-agent directly, one gpg process per signature, or auto.")
@json_option
def demo(keep: bool, signer_mode: str, as_json: bool) -> int:
    """Run the end-to-end demo on a throwaway key, sigstore and local registry.

    \b
    Generates a key, pushes two tiny images to a docker-registry on 127.0.0.1, signs one of them, writes a
    node policy.json + registries.d with the policy compiler, and pulls both with the real `skopeo copy`: the
    signed image must be ACCEPTED and the unsigned one REJECTED. Exit 0 only if both happen; everything is
    cleaned up afterwards.
    --json prints only a final document: {"ok", "key", "signed": [...], "pulls": [...], "kept"}.
    """
    from atomicsig.demo.run import Silent, run_demo

    # --json: the steps' prose stays off stdout, which carries only the final document.
    report = run_demo(keep=keep, signer_mode=signer_mode, narrator=Silent() if as_json else _Printer())
    if as_json:
        emit_json(report.as_dict())
        return EXIT_OK if report.ok else EXIT_NEGATIVE
    if report.ok:
        click.secho("\ndemo OK: the signed image was accepted, the unsigned one rejected.", fg="green")
        return EXIT_OK
    click.secho("\ndemo FAILED: skopeo did not decide as expected.", fg="red", err=True)
    return EXIT_NEGATIVE
