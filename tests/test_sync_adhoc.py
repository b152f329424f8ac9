"""``atomicsig sync --once --from URL --sigstore DIR --key FILE``: a one-off copy without a config file (issue 15
item 5), built through the same config model as ``sync.yaml`` (sync/config.py ``adhoc`` → ``parse``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from atomicsig.format.reference import parse as parse_ref
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import Journal
from atomicsig.sync import config
from tests.infra import GpgHome, serve_sigstore

D1, D2, D3 = (f"sha256:{c * 64}" for c in "123")


def _signatures(root: Path) -> list[Path]:
    return sorted(root.rglob("signature-*"))


@pytest.mark.slow
def test_one_off_copy_from_serve_verifies_and_resumes(cli: Any, tmp_path: Path, signer: GpgHome,
                                                      other_signer: GpgHome, signer_pub: Path) -> None:
    src = DirectoryStore(tmp_path / "src")
    for ident, digest, home in (("example.com/ns/a:1", D1, signer), ("example.com/ns/b:1", D2, signer),
                                ("example.com/ns/c:1", D3, other_signer)):  # c: a key --key does not trust
        src.append(parse_ref(ident), digest, home.sign_image(ident, digest))
    dst = tmp_path / "dst"  # does not exist yet: created, as rsync creates its destination
    with serve_sigstore(src.root) as url:
        code, out, err = cli("sync", "--once", "--from", url, "--sigstore", str(dst), "--key", str(signer_pub))
        assert code == 0, out + err
        copied = _signatures(dst)
        assert [p.relative_to(dst).as_posix() for p in copied] == [
            f"ns/a@sha256={'1' * 64}/signature-1", f"ns/b@sha256={'2' * 64}/signature-1"]
        assert 'rejected source=' in out and "reason=untrusted-key" in out  # counted, never stored
        for p in copied:
            assert p.read_bytes() == (src.root / p.relative_to(dst)).read_bytes()
        assert len(Journal(dst).path.read_text().splitlines()) >= 2  # journaled: followers of dst get them
        # Again: the saved cursor resumes, nothing is added or duplicated.
        code, out, err = cli("sync", "--once", "--from", url, "--sigstore", str(dst), "--key", str(signer_pub))
        assert code == 0, out + err
        assert _signatures(dst) == copied


@pytest.mark.parametrize(("args", "message"), [
    (["--once", "--from", "ftp://peer.example.com", "--key", "K"], "--from: 'ftp://peer.example.com' must be an"),
    (["--once", "--from", "http://127.0.0.1:9", "--from", "http://127.0.0.1:9", "--key", "K"], "listed twice"),
    (["--once", "--from", "http://127.0.0.1:9"], "missing: --key FILE"),
    (["--from", "http://127.0.0.1:9", "--key", "K"], "missing: --once"),
    (["--once", "--key", "K"], "missing: --from URL"),
    (["--once", "--from", "http://127.0.0.1:9", "--key", "K", "--config", "sync.yaml"], "drop --config"),
    (["--once", "--from", "http://127.0.0.1:9", "--key", "missing.gpg"], "cannot read trusted key missing.gpg"),
])
def test_one_off_copy_refuses_bad_flags(cli: Any, tmp_path: Path, signer_pub: Path, args: list[str],
                                        message: str) -> None:
    args = [str(signer_pub) if a == "K" else a for a in args]
    code, out, err = cli("sync", "--sigstore", str(tmp_path / "dst"), *args)
    assert code == 2 and message in out + err, out + err
    assert not (tmp_path / "dst").exists()  # nothing written


def test_one_off_config_is_the_file_config(tmp_path: Path) -> None:
    """Built by the one parser: the same object a sync.yaml with those three settings gives."""
    doc = {"sigstore": str(tmp_path), "sources": [{"url": "https://a.example.com/s"}, {"url": "http://b:8080"}],
           "trusted-keys": ["/k1.gpg", "/k2.asc"]}
    assert config.adhoc(str(tmp_path), ["https://a.example.com/s", "http://b:8080"], ["/k1.gpg", "/k2.asc"]) == \
        config.loads(yaml.safe_dump(doc))
