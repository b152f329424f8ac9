"""The public Python API: what ``atomicsig.__all__`` promises resolves, stays cheap to import, and the README's
"Library use" example runs as typed against a real GnuPG home."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import atomicsig
from tests.infra import GpgHome

README = Path(__file__).resolve().parent.parent / "README.md"


def test_all_names_resolve_and_match_the_export_table() -> None:
    exports = atomicsig._EXPORTS
    assert set(atomicsig.__all__) == {"__version__", *exports}
    for name in atomicsig.__all__:
        assert getattr(atomicsig, name) is not None, name
    assert atomicsig.open_store is atomicsig.__getattr__("open_store")
    assert "sign_many" in dir(atomicsig)


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        atomicsig.not_a_name  # type: ignore[attr-defined]
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_lazy() -> None:
    """``import atomicsig`` loads no layer below it: the CLI's start-up and a verifying script pay for nothing
    they do not use."""
    code = ("import sys, atomicsig; "
            "print(sorted(m for m in sys.modules if m.startswith('atomicsig.') or m in ('requests', 'gnupg')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['atomicsig.version']"


def readme_example() -> str:
    section = README.read_text().split("## Library use", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "README 'Library use' should hold exactly one python example"
    return blocks[0]


def test_readme_example_runs_as_typed(tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                    "--quick-gen-key", "Release <release@example.com>", "ed25519", "sign", "never"],
                   check=True, capture_output=True)
    (tmp_path / "example.py").write_text(readme_example())
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        res = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    digest_dir = "app@sha256=" + "ab" * 32
    assert lines == [f"signed sigstore/{digest_dir}/signature-1",
                     "registry.example.com/app@sha256:" + "ab" * 32 + " accepted"], res.stdout
    assert (tmp_path / "sigstore" / digest_dir / "signature-1").stat().st_size > 0


def test_mirror_and_bundles_through_the_public_names(tmp_path: Path, signer: GpgHome, signer_pub: Path) -> None:
    """Issue 15's copying operations as a script uses them, with nothing but ``atomicsig.<name>``: sign into a
    store, mirror it (every signature checked by an Intake trusting the key) into a second store, carry that in a
    bundle to a third, and read the bundle back."""
    images = [f"registry.example.com/app/{n}@sha256:" + c * 64 for n, c in (("web", "a"), ("db", "b"))]
    upstream_dir = tmp_path / "upstream"
    resolver = atomicsig.Resolver()
    with atomicsig.open_signers([signer.fingerprint], gnupghome=str(signer.path), passphrase=None) as signers:
        signed = list(atomicsig.sign_many(images, resolver=resolver, signer=signers[0],
                                          store=atomicsig.open_store(str(upstream_dir))))
    assert [o.status for o in signed] == ["signed", "signed"]
    with atomicsig.trusted_verifier([str(signer_pub)], gnupghome=None) as keys:
        mirrored = atomicsig.mirror_many(
            images, upstream=atomicsig.open_upstream(str(upstream_dir)), resolver=None,
            intake=atomicsig.Intake(atomicsig.DirectoryStore(tmp_path / "mirror"), keys),
            prefixes=[atomicsig.parse_prefix_map("registry.example.com/app=mirror.example.com/app")])
        assert all(isinstance(r, atomicsig.MirrorResult) for r in mirrored)
        assert [(r.stored_as, r.stored, r.exit_code) for r in mirrored] == [("app/web", 1, 0), ("app/db", 1, 0)]
        exported = atomicsig.export_bundle(tmp_path / "mirror", tmp_path / "b.tgz",
                                           since=atomicsig.parse_bundle_since("0"))
        assert isinstance(exported, atomicsig.BundleExportResult) and exported.signatures == 2
        contents = atomicsig.read_bundle(tmp_path / "b.tgz")
        assert isinstance(contents, atomicsig.BundleContents) and len(contents.records) == 2
        imported = atomicsig.import_bundle(tmp_path / "b.tgz",
                                           atomicsig.Intake(atomicsig.DirectoryStore(tmp_path / "site"), keys))
    assert isinstance(imported, atomicsig.BundleImportResult)
    assert (imported.stored, imported.duplicates, imported.refused_total) == (2, 0, 0)
    for store in ("mirror", "site"):
        assert sorted(p.relative_to(tmp_path / store).parts[:2] for p in (tmp_path / store).rglob("signature-1")) \
            == [("app", "db@sha256=" + "b" * 64), ("app", "web@sha256=" + "a" * 64)]
