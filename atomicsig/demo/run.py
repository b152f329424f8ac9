"""The ``atomicsig demo`` flow: key, registry, images, signing, node policy, and real ``skopeo copy`` pulls.

Library code like :mod:`atomicsig.demo.env`: it never prints. Each step is announced through a :class:`Narrator`
the CLI supplies (``atomicsig demo`` prints them; ``--json`` stays silent), and the outcome comes back as a
:class:`DemoReport`. The node configuration is made by the policy compiler, exactly as ``policy apply --root``
would write it (issue 13 #4): a policy YAML naming the demo key and the lookaside, compiled and applied into the
demo's throwaway root, so the demo shows the real pipeline rather than a hand-written policy.json.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from atomicsig import fsutil
from atomicsig.demo import env
from atomicsig.errors import Undecided
from atomicsig.gnupg import keyring as gpg
from atomicsig.ops import resolve
from atomicsig.ops import sign as signing
from atomicsig.policy import apply, render, schema
from atomicsig.policy.compile import compiled_from
from atomicsig.signers import factory
from atomicsig.store.directory import DirectoryStore


class Narrator(Protocol):
    """Where the demo's progress goes: numbered steps and detail lines (the CLI prints them, or nothing)."""

    def step(self, n: int, text: str) -> None: ...

    def say(self, text: str) -> None: ...


class Silent:
    """A narrator that says nothing (``demo --json``, Python callers)."""

    def step(self, n: int, text: str) -> None:
        pass

    def say(self, text: str) -> None:
        pass


@dataclass
class DemoReport:
    """The demo's outcome: ``ok`` only if skopeo accepted the signed image and rejected the unsigned one."""

    ok: bool = False
    key: str | None = None
    signed: list[dict[str, Any]] = field(default_factory=list)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    kept: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "key": self.key, "signed": self.signed, "pulls": self.pulls, "kept": self.kept}


def last_line(text: str) -> str:
    """The last non-empty line of a tool's stderr: the one that says why."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def node_policy_yaml(registry_host: str, pubkey: Path, sigstore: Path) -> str:
    """The demo's policy YAML (docs/policy.md): reject by default, the registry signed by the demo key, its
    lookaside the demo sigstore. JSON is YAML, and quoting the ``host:port`` scope is then automatic."""
    return json.dumps({
        "default": "reject",
        "keys": {"demo": {"file": str(pubkey)}},
        "scopes": {registry_host: {"signed-by": ["demo"], "lookaside": sigstore.as_uri()}},
    }, indent=2) + "\n"


def write_node_policy(root: Path, registry_host: str, pubkey: Path, sigstore: Path) -> tuple[Path, Path]:
    """Compile the demo policy and apply it under ``root`` (keyPath values include ``root``, so skopeo can run
    against the tree in place); returns the paths of policy.json and the registries.d directory written."""
    text = node_policy_yaml(registry_host, pubkey, sigstore)
    spec = schema.loads(text, "demo policy", base_dir=pubkey.parent)
    apply.execute(compiled_from(spec, None).plan(root, keypaths_under_root=True))
    return root / render.POLICY_PATH.lstrip("/"), root / render.REGISTRIES_D.lstrip("/")


def run_demo(*, keep: bool = False, signer_mode: str = "auto", narrator: Narrator | None = None) -> DemoReport:
    """Run the whole demo on throwaway parts and clean up (unless ``keep``); Undecided if a tool is missing or a
    step that is not the answer fails (push, signing)."""
    say = narrator or Silent()
    report = DemoReport()
    env.find_tool("skopeo")
    env.find_tool(*env.DOCKER_REGISTRY_CANDIDATES)
    work = Path(tempfile.mkdtemp(prefix="atomicsig-demo-"))
    home = work / "gnupg"
    registry = env.LocalRegistry(work / "registry")
    outcome_ok = False
    try:
        say.step(1, f"Throwaway workspace {work}; generating an ed25519 signing key")
        keyring = gpg.Keyring(str(home))
        key = keyring.generate(name="atomicsig demo", email="demo@atomicsig.invalid", comment=None,
                               algorithm="ed25519", expire="1d", passphrase=None)
        report.key = key.fingerprint
        say.say(f"    key {key.fingerprint}")

        say.step(2, "Starting docker-registry on 127.0.0.1")
        registry.start()
        say.say(f"    registry at http://{registry.host}")

        say.step(3, "Building and pushing two tiny OCI images with skopeo")
        insecure = work / "insecure-policy.json"
        fsutil.atomic_write(insecure, b'{"default":[{"type":"insecureAcceptAnything"}]}')
        images = {"signed": f"{registry.host}/demo/signed:1.0", "unsigned": f"{registry.host}/demo/unsigned:1.0"}
        for name, ref in images.items():
            layout = env.oci_layout(work / f"oci-{name}", name)
            res = env.skopeo(["--policy", str(insecure), "copy", "--quiet", "--dest-tls-verify=false",
                              f"oci:{layout}:latest", f"docker://{ref}"])
            if res.returncode != 0:
                raise Undecided(f"skopeo could not push {ref}: {last_line(res.stderr)}")
            say.say(f"    pushed {ref}")

        say.step(4, f"Signing {images['signed']} by tag (the digest comes from the registry)")
        sigstore = work / "sigstore"
        signer = factory.make_signer(keyring, key.fingerprint, None, signer_mode)
        try:
            outcomes = signing.sign_many([images["signed"]], resolver=resolve.Resolver(tls_verify=False),
                                         signer=signer, store=DirectoryStore(sigstore))
        finally:
            factory.close_signer(signer)
        for o in outcomes:
            if o.status == "failed":
                raise Undecided(f"signing failed: {o.error}")
            report.signed.append(o.as_dict())
            say.say(f"    {o.status} {o.target.identity if o.target else o.input} "
                    f"{o.target.digest if o.target else ''}\n    -> {o.location}")

        say.step(5, "Writing the node configuration: policy.json (signedBy) and registries.d (lookaside)")
        pubkey = work / "demo-pubkey.gpg"
        fsutil.atomic_write(pubkey, keyring.export_public([key.fingerprint], armor=False))
        policy, regd = write_node_policy(work / "node", registry.host, pubkey, sigstore)
        say.say(f"    {policy}\n    {regd / Path(render.REGISTRIES_FILE).name}")

        say.step(6, "Pulling both images with skopeo copy under that policy (what a node does)")
        outcome_ok = True
        for name, ref in images.items():
            dest = work / f"pulled-{name}"
            res = env.skopeo(["--policy", str(policy), "--registries.d", str(regd), "copy", "--quiet",
                              "--src-tls-verify=false", f"docker://{ref}", f"dir:{dest}"])
            accepted = res.returncode == 0
            want = name == "signed"
            verdict = "ACCEPTED" if accepted else "REJECTED"
            expected = "as expected" if accepted == want else "UNEXPECTED"
            report.pulls.append({"reference": ref, "accepted": accepted, "expected": want,
                                 "skopeo": None if accepted else last_line(res.stderr)})
            say.say(f"    {verdict:8} {ref} ({expected})")
            if not accepted:
                say.say(f"             skopeo: {last_line(res.stderr)}")
            outcome_ok = outcome_ok and accepted == want
    finally:
        registry.stop()
        env.kill_gpg_agent(home)
        if keep:
            report.kept = str(work)
            say.say(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report.ok = outcome_ok
    return report


__all__ = ["DemoReport", "Narrator", "Silent", "node_policy_yaml", "run_demo", "write_node_policy"]
