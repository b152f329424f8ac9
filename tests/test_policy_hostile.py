"""``policy apply`` against a hostile tree, state record and YAML (issue 12 #8, #9, #13): it never writes or deletes
outside what it manages, and unsafe names and URLs are refused with ``file:line`` before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra import GpgHome


def snapshot(top: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under ``top`` without following links: files by content, links by target, dirs by name."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for p in sorted(top.rglob("*")):
        rel = str(p.relative_to(top))
        if p.is_symlink():
            out[rel] = ("link", str(p.readlink()))
        elif p.is_file():
            out[rel] = ("file", p.read_bytes())
        else:
            out[rel] = ("dir", "")
    return out


# ---- #13: control characters in names and URLs ------------------------------------------------------------------


@pytest.mark.parametrize(("body", "line"), [
    ('keys:\n  "prod\\n": {file: k.gpg}\nscopes:\n  quay.io: {signed-by: "prod\\n"}\n', 4),
    ('keys:\n  "pr\\0od": {file: k.gpg}\n', 4),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside: "https://s.example.com/a\\nb"\n', 6),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside: "https://s.example.com/x\\0"\n', 6),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside: "file:///var/sigs\\x7f"\n', 6),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside: "https://s.example.com/%0d%0aX: y"\n', 6),
    ('scopes:\n  quay.io:\n    action: accept\n    lookaside-staging: "file:///var/s\\u2028x"\n', 6),
])
def test_unsafe_names_and_urls_exit_2_with_file_line(cli, tmp_path: Path, signer_pub: Path, body: str,
                                                     line: int) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "k.gpg").write_bytes(signer_pub.read_bytes())
    yml = tmp_path / "p.yaml"
    yml.write_text("# hostile\ndefault: reject\n" + body)
    root = tmp_path / "root"
    for cmd in ("validate", "apply"):
        code, out, err = cli("policy", cmd, "-f", str(yml), "--root", str(root))
        assert code == 2, (cmd, out, err)
        assert err.startswith(f"atomicsig: error: {yml}:{line}: ") and err.count("\n") == 1, err
    assert not root.exists()
