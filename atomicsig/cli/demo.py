"""``atomicsig demo``: the whole story on throwaway parts — key, registry, sign, node policy, real skopeo."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from atomicsig.cli.common import emit_json, json_option
from atomicsig.errors import EXIT_NEGATIVE, EXIT_OK, Undecided

_quiet = False  # --json: the steps' prose stays off stdout, which carries only the final document


def _step(n: int, text: str) -> None:
    if not _quiet:
        click.secho(f"\n[{n}] {text}", bold=True)


def _say(text: str) -> None:
    if not _quiet:
        click.echo(text)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


@click.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (key, sigstore, policy) for inspection.")
@click.option("--signer", "signer_mode", type=click.Choice(["auto", "agent", "gpg"]), default="auto", show_default=True,
              help="How to sign: through gpg-agent directly, one gpg process per signature, or auto.")
@json_option
def demo(keep: bool, signer_mode: str, as_json: bool) -> int:
    """Run the end-to-end demo on a throwaway key, sigstore and local registry.

    \b
    Generates a key, pushes two tiny images to a docker-registry on 127.0.0.1, signs one of them, writes a
    node policy.json + registries.d, and pulls both with the real `skopeo copy`: the signed image must be
    ACCEPTED and the unsigned one REJECTED. Exit 0 only if both happen; everything is cleaned up afterwards.
    --json prints only a final document: {"ok", "key", "signed": [...], "pulls": [...], "kept"}.
    """
    global _quiet
    _quiet = as_json
    report: dict[str, Any] = {"ok": False, "key": None, "signed": [], "pulls": [], "kept": None}
    from atomicsig import fsutil
    from atomicsig.demo import env
    from atomicsig.gnupg import keyring as gpg
    from atomicsig.ops import resolve
    from atomicsig.ops import sign as signing
    from atomicsig.signers import factory as agentsign
    from atomicsig.store import directory as lookaside

    env.find_tool("skopeo")
    env.find_tool(*env.DOCKER_REGISTRY_CANDIDATES)
    work = Path(tempfile.mkdtemp(prefix="atomicsig-demo-"))
    home = work / "gnupg"
    registry = env.LocalRegistry(work / "registry")
    try:
        _step(1, f"Throwaway workspace {work}; generating an ed25519 signing key")
        keyring = gpg.Keyring(str(home))
        key = keyring.generate(name="atomicsig demo", email="demo@atomicsig.invalid", comment=None,
                               algorithm="ed25519", expire="1d", passphrase=None)
        report["key"] = key.fingerprint
        _say(f"    key {key.fingerprint}")

        _step(2, "Starting docker-registry on 127.0.0.1")
        registry.start()
        _say(f"    registry at http://{registry.host}")

        _step(3, "Building and pushing two tiny OCI images with skopeo")
        insecure = work / "insecure-policy.json"
        fsutil.atomic_write(insecure, b'{"default":[{"type":"insecureAcceptAnything"}]}')
        images = {"signed": f"{registry.host}/demo/signed:1.0", "unsigned": f"{registry.host}/demo/unsigned:1.0"}
        for name, ref in images.items():
            layout = env.oci_layout(work / f"oci-{name}", name)
            res = env.skopeo(["--policy", str(insecure), "copy", "--quiet", "--dest-tls-verify=false",
                              f"oci:{layout}:latest", f"docker://{ref}"])
            if res.returncode != 0:
                raise Undecided(f"skopeo could not push {ref}: {_last_line(res.stderr)}")
            _say(f"    pushed {ref}")

        _step(4, f"Signing {images['signed']} by tag (the digest comes from the registry)")
        sigstore = work / "sigstore"
        signer = agentsign.make_signer(keyring, key.fingerprint, None, signer_mode)
        try:
            outcomes = signing.sign_many([images["signed"]], resolver=resolve.Resolver(tls_verify=False),
                                         signer=signer, store=lookaside.DirectoryStore(sigstore))
        finally:
            agentsign.close_signer(signer)
        for o in outcomes:
            if o.status == "failed":
                raise Undecided(f"signing failed: {o.error}")
            report["signed"].append(o.as_dict())
            _say(f"    {o.status} {o.target.identity if o.target else o.input} "
                 f"{o.target.digest if o.target else ''}\n    -> {o.location}")

        _step(5, "Writing the node configuration: policy.json (signedBy) and registries.d (lookaside)")
        pubkey = work / "demo-pubkey.gpg"
        fsutil.atomic_write(pubkey, keyring.export_public([key.fingerprint], armor=False))
        policy = work / "policy.json"
        fsutil.atomic_write(policy, json.dumps({
            "default": [{"type": "reject"}],
            "transports": {"docker": {registry.host: [
                {"type": "signedBy", "keyType": "GPGKeys", "keyPath": str(pubkey)}]}}}, indent=2).encode())
        regd = work / "registries.d"
        fsutil.makedirs(regd, 0o755)
        fsutil.atomic_write(regd / "demo.yaml",
                            f"docker:\n  {registry.host}:\n    lookaside: file://{sigstore}\n".encode())
        _say(f"    {policy}\n    {regd / 'demo.yaml'}")

        _step(6, "Pulling both images with skopeo copy under that policy (what a node does)")
        outcome_ok = True
        for name, ref in images.items():
            dest = work / f"pulled-{name}"
            res = env.skopeo(["--policy", str(policy), "--registries.d", str(regd), "copy", "--quiet",
                              "--src-tls-verify=false", f"docker://{ref}", f"dir:{dest}"])
            accepted = res.returncode == 0
            want = name == "signed"
            verdict = "ACCEPTED" if accepted else "REJECTED"
            expected = "as expected" if accepted == want else "UNEXPECTED"
            report["pulls"].append({"reference": ref, "accepted": accepted, "expected": want,
                                    "skopeo": None if accepted else _last_line(res.stderr)})
            _say(f"    {verdict:8} {ref} ({expected})")
            if not accepted:
                _say(f"             skopeo: {_last_line(res.stderr)}")
            outcome_ok = outcome_ok and accepted == want
    finally:
        registry.stop()
        env.kill_gpg_agent(home)
        if keep:
            report["kept"] = str(work)
            _say(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["ok"] = outcome_ok
    if as_json:
        emit_json(report)
        return EXIT_OK if outcome_ok else EXIT_NEGATIVE
    if outcome_ok:
        click.secho("\ndemo OK: the signed image was accepted, the unsigned one rejected.", fg="green")
        return EXIT_OK
    click.secho("\ndemo FAILED: skopeo did not decide as expected.", fg="red", err=True)
    return EXIT_NEGATIVE
