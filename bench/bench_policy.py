"""Policy compilation: ``atomicsig policy apply`` of a many-scope YAML against a ``podman image trust set`` loop.

Without atomicsig, an admin scripts one ``podman image trust set`` per scope (it edits policy.json in place and
writes nothing else). atomicsig's apply does more work per scope — a registries.d file each, the key files, a
diff, a backup and a state record, all written atomically — in one process. The row compares scopes per second;
the issue's absolute target (a 500-scope YAML applies in under a second) is shown in the TARGET column for the
full size. The re-apply of an unchanged YAML (nothing written) is a second row against the same loop.

Sizes: 500 scopes (full) or 100 (quick); the podman loop runs over at most ``ctx.peer_n`` scopes, since its
per-scope cost is the same at any count (it re-reads and rewrites the whole file each time, so if anything it
gets slower as the file grows: the extrapolation favours podman).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from harness import Context, Row, compare, make_row, run_checked, run_measured, set_target, timed

FULL_SCOPES, QUICK_SCOPES = 500, 100


def _write_yaml(d: Path, scopes: int, keyfile: Path) -> Path:
    lines = ["default: reject", "keys:", f"  release: {{file: {keyfile}}}", "scopes:"]
    for i in range(scopes):
        lines.append(f"  registry{i % 7}.example.com/team{i}: "
                     f"{{signed-by: release, lookaside: 'https://sigstore{i % 3}.example.com/sigs'}}")
    path = d / "policy.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(ctx: Context) -> list[Row]:
    if not shutil.which("podman"):
        return []
    scopes = QUICK_SCOPES if ctx.quick else FULL_SCOPES
    work = ctx.fresh_dir("policy")
    keyfile = work / "release.gpg"
    keyfile.write_bytes(_public_key(ctx))
    yml = _write_yaml(work, scopes, keyfile)
    peer_scopes = min(scopes, ctx.peer_n)
    last_root: list[Path] = []

    def ours(i: int) -> float:
        root = ctx.fresh_dir(f"policy-root-{i}")
        last_root[:] = [root]
        return run_measured([*ctx.atomicsig, "policy", "apply", "-f", str(yml), "--root", str(root)], ctx,
                            "policy.apply")

    def reapply(i: int) -> float:
        return run_measured([*ctx.atomicsig, "policy", "apply", "-f", str(yml), "--root", str(last_root[0])], ctx,
                            "policy.reapply")

    def podman(i: int) -> float:
        d = ctx.fresh_dir(f"podman-{i}")
        policy = d / "policy.json"
        policy.write_text('{"default": [{"type": "reject"}]}\n', encoding="utf-8")

        def loop() -> None:
            for j in range(peer_scopes):
                run_checked(["podman", "image", "trust", "set", "--policypath", str(policy), "-t", "signedBy",
                             "-f", str(keyfile), f"registry{j % 7}.example.com/team{j}"], ctx)
        return timed(loop) * scopes / peer_scopes

    rates = compare(ctx.runs, scopes, {"apply": ours, "reapply": reapply, "podman": podman})
    first = make_row("policy.apply.vs_podman_trust", f"policy apply, {scopes} scopes", "scopes/s", scopes,
                     rates["apply"], "podman image trust set loop", rates["podman"], ctx=ctx,
                     peak_key="policy.apply")
    again = make_row("policy.reapply.vs_podman_trust", f"policy re-apply, {scopes} scopes, unchanged",
                     "scopes/s", scopes, rates["reapply"], "podman image trust set loop", rates["podman"],
                     ctx=ctx, peak_key="policy.reapply")
    if scopes == FULL_SCOPES:
        for row in (first, again):
            seconds = scopes / row.ours
            set_target(row, f"{seconds:.2f} s < 1 s", seconds < 1.0)
    return [first, again]


def _public_key(ctx: Context) -> bytes:
    """The bench's Ed25519 public key if the key suites ran, else a fresh throwaway one."""
    fpr = ctx.keys.get("ed25519")
    if fpr:
        return run_checked(["gpg", "--homedir", str(ctx.gnupghome), "--export", fpr], ctx).stdout
    home = ctx.fresh_dir("policy-gnupg")
    home.chmod(0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                    "--quick-gen-key", "bench-policy@example.com", "ed25519", "sign", "0"],
                   capture_output=True, check=True, env=ctx.env)
    key = run_checked(["gpg", "--homedir", str(home), "--export"], ctx).stdout
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)
    return key
