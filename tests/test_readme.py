"""What users read runs as written (issue 15 item 5): the README's command blocks and the example policies.

Every ```` ```sh ```` block of README.md carries a marker on the line before it: ``<!-- readme: run -->`` (this test
runs it with bash, as typed, in a scratch directory holding a copy of ``policies/``, with ``atomicsig`` on PATH)
or ``<!-- readme: skip (why) -->`` (needs root, a registry, the network, or a user's own files). An unmarked block
fails the test, so a new example is either run or says why not. The ``atomicsig`` lines of skipped blocks are still
parsed by the real click commands, so a renamed or removed flag shows up here too.

Every ``policies/*.yaml`` must pass ``policy validate`` with the example keys it ships (policies/keys/README.md),
which are public keys only.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from atomicsig.cli import cli as group
from atomicsig.demo.env import kill_gpg_agent
from atomicsig.gnupg import keyring as gpg

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
POLICIES = REPO / "policies"
_BLOCK = re.compile(r"(?:^(?P<marker><!-- readme: (?P<what>run|skip \([^)]+\)) -->)\n)?^```sh\n(?P<body>.*?)^```$",
                    re.M | re.S)
_FENCE = re.compile(r"^```sh$", re.M)


def _blocks() -> list[tuple[str | None, str, int]]:
    text = README.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        out.append((m["what"], m["body"], text.count("\n", 0, m.start("body"))))
    assert len(out) == len(_FENCE.findall(text))
    return out


def test_every_sh_block_says_whether_it_runs() -> None:
    unmarked = [line for what, _, line in _blocks() if what is None]
    assert not unmarked, (f"README.md: ```sh blocks at lines {unmarked} need <!-- readme: run --> or "
                          f"<!-- readme: skip (reason) --> on the line before")
    assert any(what == "run" for what, _, _ in _blocks())


def _atomicsig_wrapper(bindir: Path) -> None:
    """``atomicsig`` on PATH as a user has it, running this checkout (PYTHONPATH is inherited)."""
    bindir.mkdir()
    exe = bindir / "atomicsig"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m atomicsig \"$@\"\n")
    exe.chmod(0o755)


#: Run a block as typed; any command failing fails the block, except ``--dry-run`` answering 1 ("changes
#: pending", the documented answer). The agent a block's GNUPGHOME started is stopped at the end.
_HARNESS = """\
trap 'rc=$?; if [[ $BASH_COMMAND == *--dry-run* && $rc -eq 1 ]]; then :; else \
echo "README command failed (exit $rc): $BASH_COMMAND" >&2; exit 97; fi' ERR
trap '[ -n "${GNUPGHOME:-}" ] && gpgconf --kill gpg-agent >/dev/null 2>&1; true' EXIT
"""


@pytest.mark.parametrize("index", [i for i, (what, _, _) in enumerate(_blocks()) if what == "run"])
def test_readme_block_runs_as_typed(tmp_path: Path, index: int) -> None:
    _, body, line = _blocks()[index]
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(POLICIES, work / "policies")
    _atomicsig_wrapper(tmp_path / "bin")
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
           "TMPDIR": str(tmp_path / "tmp"), "PYTHONPATH": str(REPO)}
    env.pop("GNUPGHOME", None)
    proc = subprocess.run(["bash", "-c", _HARNESS + body + "true\n"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"README.md block at line {line}:\n{proc.stderr[-3000:]}"
    if "atomicsig verify" in body:
        assert "ACCEPTED" in proc.stdout
    if "policy validate -f policies/production.yaml" in body:
        assert "policies/production.yaml: valid" in proc.stdout


def _parse(args: list[str]) -> None:
    """Parse ``atomicsig ARGS`` with the real click commands, without running anything."""
    ctx = group.make_context("atomicsig", list(args))
    cmd: click.Command = group
    while isinstance(cmd, click.Group):
        # The subcommand name click kept back: ``_protected_args`` since click 8.2, ``protected_args`` before
        # (8.1 is the lower bound the minimum-versions run checks; 8.2 deprecates the public name).
        held = getattr(ctx, "_protected_args", None)
        rest = [*(ctx.protected_args if held is None else held), *ctx.args]
        if not rest:
            return
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub


def _command_lines() -> list[tuple[int, list[str]]]:
    out = []
    for _, body, first in _blocks():
        for i, text in enumerate(body.splitlines()):
            if text.startswith("atomicsig ") and "$(" not in text:
                out.append((first + i + 1, shlex.split(text, comments=True)[1:]))
    return out


@pytest.mark.parametrize(("line", "args"), _command_lines(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_readme_command_parses(line: int, args: list[str]) -> None:
    try:
        _parse(args)
    except click.ClickException as exc:
        pytest.fail(f"README.md:{line}: atomicsig {' '.join(args)}: {exc.format_message()}")


# ---- policies/ ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_gnupghome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A GnuPG home holding the example key key-rotation.yaml names by fingerprint, imported as its comment says."""
    home = tmp_path_factory.mktemp("example-gnupg")
    home.chmod(0o700)
    gpg.Keyring(str(home)).import_keys((POLICIES / "keys/release-2025.asc").read_bytes())
    yield home
    kill_gpg_agent(home)


@pytest.mark.parametrize("example", sorted(p.name for p in POLICIES.glob("*.yaml")))
def test_example_policy_validates(cli: Any, tmp_path: Path, example_gnupghome: Path, example: str) -> None:
    code, out, err = cli("policy", "validate", "-f", str(POLICIES / example), "--root", str(tmp_path),
                         "--gnupghome", str(example_gnupghome))
    assert code == 0, err
    assert f"{example}: valid" in out


def test_example_keys_are_public_and_labelled(tmp_path: Path) -> None:
    keys = sorted((POLICIES / "keys").glob("*.asc"))
    assert keys
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    kr = gpg.Keyring(str(home))
    try:
        for k in keys:
            kr.import_keys(k.read_bytes())
        assert kr.list_keys(secret=True) == []
        listed = kr.list_keys()
        assert len(listed) == len(keys)
        assert all(uid.startswith("EXAMPLE ") and "not for use" in uid for key in listed for uid in key.uids)
    finally:
        kill_gpg_agent(home)
    for f in (POLICIES / "keys").iterdir():
        assert b"PRIVATE" not in f.read_bytes(), f
    assert (POLICIES / "keys/cosign.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
