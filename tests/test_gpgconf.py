"""gpgconf run from one place (atomicsig.gnupg.gpgconf, issue 13 item 3), against the real gpgconf."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from atomicsig.gnupg import assuan, gpgconf


def test_run_and_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    sock = gpgconf.run(home, ["--list-dirs", "agent-socket"]).strip()
    assert sock.endswith("S.gpg-agent")
    assert assuan.agent_socket(str(home)).endswith("S.gpg-agent")
    with pytest.raises(gpgconf.GpgconfError, match=r"^gpgconf --no-such-option failed: "):
        gpgconf.run(home, ["--no-such-option"])
    # The agent connection reports a gpgconf failure as "agent unreachable", as before.
    with pytest.raises(assuan.AssuanConnectionError, match=r"^gpgconf --no-such-option failed: "):
        assuan._gpgconf(str(home), ["--no-such-option"])
    gpgconf.kill_agents(tmp_path / "never-created")  # best effort: no error for a home that does not exist


def test_only_the_gpgconf_module_runs_gpgconf() -> None:
    """No other module of the package spells the gpgconf command (keyring, assuan and demo each did)."""
    root = Path(__file__).resolve().parent.parent / "atomicsig"
    offenders = []
    for f in sorted(root.rglob("*.py")):
        if f == root / "gnupg" / "gpgconf.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.List) and any(isinstance(e, ast.Constant) and e.value == "gpgconf"
                                                  for e in node.elts):
                offenders.append(f"{f.relative_to(root)}:{node.lineno}")
    assert offenders == []
