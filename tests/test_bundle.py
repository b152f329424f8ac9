"""``atomicsig bundle export|import`` (issue 15 item 3): real gpg keys, real files, the real CLI.

Hostile bundles are built here with tarfile directly (so they can hold what ``bundle export`` never writes: links,
``../`` names, unlisted members, a gzip bomb); each must be refused with exit 2 and nothing stored.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from atomicsig.cli import cli
from atomicsig.cli.common import run_main
from atomicsig.errors import InputError, StorageError
from atomicsig.format import bundle as wire
from atomicsig.format.blob import simple_signing_body
from atomicsig.format.sigpath import digest_dirname
from atomicsig.gnupg.keyring import TrustedKeys
from atomicsig.gnupg.trusted import NativeTrustedKeys, trusted_keys
from atomicsig.ops.bundle import Since, export_bundle, parse_since
from atomicsig.store import origin
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import HEADER_LEN, Journal, iter_lines, parse_line, sha256_hex
from atomicsig.store.sigdir import read_dir
from tests.conftest import needs_registry
from tests.infra import GpgHome, Registry, cli_runner, push_image, registries_d, signed_by_policy, skopeo_pull

ATOMICSIG = [sys.executable, "-m", "atomicsig"]


def _digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(f"bundle-{i}".encode()).hexdigest()


def _fill(store: Path, home: GpgHome, items: range, repo: str = "app") -> None:
    st = DirectoryStore(store)
    for i in items:
        st.append_path(f"{repo}{i % 3}", _digest(i), home.sign_image(f"example.com/{repo}{i % 3}:v{i}", _digest(i)))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, signer: GpgHome, other_signer: GpgHome) -> Path:
    """A sigstore with 12 signatures by ``signer`` and 3 by ``other_signer`` (one digest signed by both)."""
    root = tmp_path_factory.mktemp("bundle-src") / "sigstore"
    _fill(root, signer, range(12))
    _fill(root, other_signer, range(10, 13))
    return root


@pytest.fixture(scope="module")
def other_pub(other_signer: GpgHome, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return other_signer.export_public(tmp_path_factory.mktemp("other") / "other.gpg")


def run(*args: str) -> tuple[int, str, str]:
    """The real CLI in process, exit code as a user's shell sees it (the ``cli`` fixture's way, usable in
    module-scoped fixtures too)."""
    with cli_runner().isolation() as (out, err, *_):
        code = run_main(cli, list(args))
        return code, out.getvalue().decode(), err.getvalue().decode()


def files(root: Path) -> dict[str, bytes]:
    """Every ``signature-N`` under ``root`` (relative path → bytes)."""
    out = {}
    for p in sorted(root.rglob("signature-*")):
        out[str(p.relative_to(root))] = p.read_bytes()
    return out


def journal_adds(root: Path) -> list[tuple[str, str]]:
    data = Journal(root).path.read_bytes()[HEADER_LEN:]
    recs = [parse_line(line, end) for line, end in iter_lines(data, HEADER_LEN)]
    assert all(r.op == "add" for r in recs)
    return [(str(r.path), r.sha256) for r in recs]


def by_dir(root: Path) -> dict[str, set[bytes]]:
    out: dict[str, set[bytes]] = {}
    for rel, blob in files(root).items():
        out.setdefault(rel.rsplit("/", 1)[0], set()).add(blob)
    return out


# ---- round trip ---------------------------------------------------------------------------------------------------


def test_round_trip_idempotent_and_json(tmp_path: Path, source: Path, signer_pub: Path, other_pub: Path) -> None:
    out = tmp_path / "b.tar.gz"
    code, stdout, _ = run("bundle", "export", "--sigstore", str(source), "-o", str(out), "--key", str(signer_pub),
                          "--json")
    assert code == 0
    exp = json.loads(stdout)
    assert exp["signatures"] == 15 and exp["skipped"] == 0 and exp["next_since"].endswith(":15")
    dst = tmp_path / "dst"
    code, stdout, _ = run("bundle", "import", str(out), "--sigstore", str(dst), "--key", str(signer_pub),
                          "--key", str(other_pub), "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert set(doc) == {"bundle", "sigstore", "signatures", "stored", "duplicates", "refused", "refused_total",
                        "refusals", "source"}
    assert (doc["signatures"], doc["stored"], doc["duplicates"], doc["refused"]) == (15, 15, 0, {})
    assert doc["source"] == {"epoch": Journal(source).epoch(), "last_seq": 15,
                             "last_offset": Journal(source).path.stat().st_size}
    assert by_dir(dst) == by_dir(source)
    # Journaled for this node's followers: one add line per stored file, nothing else.
    assert sorted(journal_adds(dst)) == sorted((rel, sha256_hex(b)) for rel, b in files(dst).items())
    # Idempotent: the second import stores nothing and changes no file or journal line.
    before, lines = files(dst), journal_adds(dst)
    code, stdout, _ = run("bundle", "import", str(out), "--sigstore", str(dst), "--key", str(signer_pub),
                          "--key", str(other_pub), "--json")
    doc = json.loads(stdout)
    assert code == 0 and (doc["stored"], doc["duplicates"], doc["refused_total"]) == (0, 15, 0)
    assert files(dst) == before and journal_adds(dst) == lines


def test_origin_record_does_not_grow_with_each_bundle(tmp_path: Path, signer: GpgHome, signer_pub: Path) -> None:
    """Imported signatures are recorded as delivered by one origin, ``bundle`` (atomicsig.store.origin: no sync
    peer can delete them). One per bundle instead made every weekly full bundle add an entry to every signature's
    record, until the 1 MiB record stopped parsing and was read as empty."""
    src = tmp_path / "src"
    _fill(src, signer, range(3))
    dst = tmp_path / "dst"
    policy = tmp_path / "p.yaml"
    for week in range(3):
        policy.write_text(f"# week {week}\n")
        out = tmp_path / f"week{week}.tgz"
        assert run("bundle", "export", "--sigstore", str(src), "-o", str(out), "--policy", str(policy))[0] == 0
        assert run("bundle", "import", str(out), "--sigstore", str(dst), "--key", str(signer_pub))[0] == 0
    dirs = sorted({p.parent.relative_to(dst).as_posix() for p in dst.rglob("signature-*")})
    assert len(dirs) == 3
    for dirname in dirs:
        assert list(origin.records(dst, dirname).values()) == [["bundle"]]


def test_export_is_deterministic_and_a_plain_tar_gz(tmp_path: Path, source: Path, signer_pub: Path) -> None:
    a, b = tmp_path / "a.tgz", tmp_path / "b.tgz"
    for out in (a, b):
        assert run("bundle", "export", "--sigstore", str(source), "-o", str(out), "--key", str(signer_pub))[0] == 0
        time.sleep(1.1)  # a second apart: no time may leak into the bytes
    assert a.read_bytes() == b.read_bytes()
    # Readable by stock tools: tar lists it, sha256sum -c checks it.
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "-xzf", str(a), "-C", str(x)], check=True)
    subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=x, check=True)
    names = [line.split("  ", 1)[1] for line in (x / "MANIFEST.sha256").read_text().splitlines()]
    assert names[0] == "bundle.json" and names[1].startswith("keys/") and names[2] == "journal"
    assert len([n for n in names if n.startswith("sigstore/")]) == 15


def test_untrusted_bundle_refused_with_counts(tmp_path: Path, source: Path, signer_pub: Path,
                                             other_pub: Path, signer: GpgHome) -> None:
    """Keys in the bundle bring no trust: only --key decides. A bundle by nobody trusted stores nothing (exit 1);
    a mixed one stores what verifies and counts the rest by reason."""
    only_other = tmp_path / "other-src"
    _fill(only_other, GpgHome(tmp_path / "stranger", email="stranger@example.com").create(), range(4))
    out = tmp_path / "b.tgz"
    stranger_pub = tmp_path / "stranger.gpg"
    GpgHome(tmp_path / "stranger", email="stranger@example.com",
            fingerprint=_only_fpr(tmp_path / "stranger")).export_public(stranger_pub)
    assert run("bundle", "export", "--sigstore", str(only_other), "-o", str(out), "--key", str(stranger_pub))[0] == 0
    dst = tmp_path / "dst"
    code, stdout, stderr = run("bundle", "import", str(out), "--sigstore", str(dst), "--key", str(signer_pub))
    assert code == 1, stderr
    assert "4 refused (untrusted-key 4)" in stdout and "--show-keys" in stderr
    assert files(dst) == {}
    # The mixed source: 12 by signer stored, 3 by other_signer refused.
    mixed = tmp_path / "mixed.tgz"
    assert run("bundle", "export", "--sigstore", str(source), "-o", str(mixed))[0] == 0
    code, stdout, _ = run("bundle", "import", str(mixed), "--sigstore", str(dst), "--key", str(signer_pub), "--json")
    doc = json.loads(stdout)
    assert code == 1 and (doc["stored"], doc["refused"]) == (12, {"untrusted-key": 3})
    assert len(doc["refusals"]) == 3 and all(r["reason"] == "untrusted-key" for r in doc["refusals"])
    assert len(files(dst)) == 12
    keys = TrustedKeys([signer_pub.read_bytes()])
    try:
        assert all(keys.verify(b).signer == signer.fingerprint for b in files(dst).values())
    finally:
        keys.close()


def test_batches_keep_outcomes_order_progress_and_quarantine(tmp_path: Path, source: Path,
                                                              signer_pub: Path) -> None:
    """Import stores in batches (Intake.offer_batch); whatever the batch size, a mixed bundle gives the same
    counts, the refusals in journal order, one progress call per signature, and refused bytes quarantined as
    Intake.offer does (a batch of 4 over 15 signatures: refused and stored ones share batches)."""
    from atomicsig.ops.bundle import import_bundle
    from atomicsig.ops.intake import Intake

    mixed = tmp_path / "mixed.tgz"
    assert run("bundle", "export", "--sigstore", str(source), "-o", str(mixed))[0] == 0
    code, stdout, _ = run("bundle", "import", str(mixed), "--sigstore", str(tmp_path / "one"), "--key",
                          str(signer_pub), "--json")
    assert code == 1
    whole = json.loads(stdout)
    seen: list[tuple[int, int]] = []
    with trusted_keys([signer_pub.read_bytes()]) as keys:
        res = import_bundle(mixed, Intake(DirectoryStore(tmp_path / "four"), keys, tmp_path / "quarantine"),
                            batch=4, on_progress=lambda done, total: seen.append((done, total)))
        with pytest.raises(InputError):
            import_bundle(mixed, Intake(DirectoryStore(tmp_path / "zero"), keys), batch=0)
    doc = res.as_dict()
    assert (doc["stored"], doc["duplicates"], doc["refused"]) == (12, 0, {"untrusted-key": 3})
    assert doc["refusals"] == whole["refusals"]
    assert seen == [(n, 15) for n in range(1, 16)]
    assert by_dir(tmp_path / "four") == by_dir(tmp_path / "one")
    assert len(list((tmp_path / "quarantine").glob("*.sig"))) == 3


def _only_fpr(home: Path) -> str:
    from atomicsig.gnupg.keyring import Keyring

    (key,) = Keyring(str(home)).list_keys()
    return key.fingerprint


def test_show_keys_and_key_required(tmp_path: Path, source: Path, signer_pub: Path, other_pub: Path,
                                    signer: GpgHome, other_signer: GpgHome) -> None:
    out = tmp_path / "b.tgz"
    policy = tmp_path / "policy.yaml"
    policy.write_text("# reviewed by the security team\ndefault: reject\n")
    assert run("bundle", "export", "--sigstore", str(source), "-o", str(out), "--key", str(signer_pub),
               "--key", str(other_pub), "--policy", str(policy))[0] == 0
    dst = tmp_path / "dst"
    code, stdout, _ = run("bundle", "import", str(out), "--show-keys", "--json")
    doc = json.loads(stdout)
    assert code == 0 and doc["policy"] is True and doc["signatures"] == 15
    assert sorted(k["fingerprint"] for k in doc["keys"]) == sorted([signer.fingerprint, other_signer.fingerprint])
    code, stdout, _ = run("bundle", "import", str(out), "--show-keys")
    assert code == 0 and signer.fingerprint in stdout and "signer@example.com" in stdout
    code, _, stderr = run("bundle", "import", str(out), "--sigstore", str(dst))
    assert code == 2 and "cannot bring its own trust" in stderr
    assert not dst.exists()
    with tarfile.open(out) as tf:
        member = tf.extractfile("policy.yaml")
        assert member is not None and member.read() == policy.read_bytes()


def test_incremental_export_by_journal_position_and_repo(tmp_path: Path, signer: GpgHome, signer_pub: Path) -> None:
    src = tmp_path / "src"
    _fill(src, signer, range(5))
    first = tmp_path / "1.tgz"
    code, stdout, _ = run("bundle", "export", "--sigstore", str(src), "-o", str(first), "--json")
    since = json.loads(stdout)["next_since"]
    _fill(src, signer, range(5, 9))
    _fill(src, signer, range(9, 11), repo="vendor/tool")
    second = tmp_path / "2.tgz"
    code, stdout, _ = run("bundle", "export", "--sigstore", str(src), "-o", str(second), "--since", since, "--json")
    assert code == 0 and json.loads(stdout)["signatures"] == 6
    dst = tmp_path / "dst"
    for b in (first, second):
        assert run("bundle", "import", str(b), "--sigstore", str(dst), "--key", str(signer_pub))[0] == 0
    assert by_dir(dst) == by_dir(src)
    third = tmp_path / "3.tgz"
    code, stdout, _ = run("bundle", "export", "--sigstore", str(src), "-o", str(third), "--repo", "vendor", "--json")
    assert code == 0 and json.loads(stdout)["signatures"] == 2
    code, _, stderr = run("bundle", "export", "--sigstore", str(src), "-o", str(third), "--since",
                          "0" * 32 + ":3")
    assert code == 2 and "rebuilt" in stderr
    code, stdout, _ = run("bundle", "export", "--sigstore", str(src), "-o", str(third), "--since", "1d", "--json")
    assert code == 0 and json.loads(stdout)["signatures"] == 11


def test_export_is_atomic_and_skips_files_changed_behind_the_journal(tmp_path: Path, signer: GpgHome) -> None:
    """A file rewritten by a writer outside atomicsig no longer matches its journal record: skipped and counted,
    never exported under a sum it does not have. A file that changes during the export fails it, and the previous
    bundle under the output name is left as it was, with no temp file beside it."""
    src = tmp_path / "src"
    _fill(src, signer, range(4))
    rel = sorted(files(src))[0]
    (src / rel).write_bytes(b"rewritten by someone else")
    out = tmp_path / "out.tgz"
    code, stdout, _ = run("bundle", "export", "--sigstore", str(src), "-o", str(out), "--json")
    assert code == 0 and (json.loads(stdout)["signatures"], json.loads(stdout)["skipped"]) == (3, 1)
    before = out.read_bytes()
    victim = next(r for r in sorted(files(src), reverse=True) if r != rel)

    def prune_meanwhile(done: int, total: int) -> None:
        (src / victim).unlink(missing_ok=True)
    with pytest.raises(StorageError, match="changed during the export"):
        export_bundle(src, out, on_progress=prune_meanwhile)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# ---- hostile and damaged bundles ----------------------------------------------------------------------------------


def _members(bundle: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(bundle) as tf:
        out = []
        for m in tf.getmembers():
            f = tf.extractfile(m)
            assert f is not None
            out.append((m.name, f.read()))
    return out


def _craft(path: Path, members: list[tuple[str, bytes]], *, manifest: list[tuple[str, str]] | None = None,
           extra: list[tarfile.TarInfo] | None = None, compress: bool = True) -> Path:
    """A bundle of ``members`` (not counting the manifest, which lists them unless given) plus raw ``extra``."""
    listed = manifest if manifest is not None else [(n, hashlib.sha256(d).hexdigest()) for n, d in members]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in [(wire.MANIFEST, wire.build_manifest(listed)), *members]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for ti in extra or []:
            tf.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.size else None)
    path.write_bytes(gzip.compress(buf.getvalue()) if compress else buf.getvalue())
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, source: Path) -> list[tuple[str, bytes]]:
    out = tmp_path_factory.mktemp("good") / "good.tgz"
    assert run("bundle", "export", "--sigstore", str(source), "-o", str(out))[0] == 0
    members = _members(out)
    assert members[0][0] == wire.MANIFEST
    return members[1:]


def _tampered(members: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    sig = next(i for i, (n, _) in enumerate(members) if n.startswith("sigstore/"))
    name, data = members[sig]
    return [*members[:sig], (name, data[:-1] + bytes([data[-1] ^ 1])), *members[sig + 1:]]


def _link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, target
    return ti


HOSTILE: dict[str, Any] = {
    # the bytes of a signature differ from the manifest's sum
    "tampered member": lambda p, m: _craft(p, _tampered(m), manifest=_sums(m)),
    # a member the manifest does not list (after the listed ones)
    "unlisted member": lambda p, m: _craft(p, m, extra=[_file("sigstore/app0@sha256=" + "a" * 64 + "/signature-1",
                                                              10)]),
    # a listed member that is missing
    "missing member": lambda p, m: _craft(p, m[:-1], manifest=_sums(m)),
    # members whose names leave the sigstore, listed in the manifest
    "path traversal": lambda p, m: _craft(p, [*m, ("sigstore/../../x", b"evil")]),
    "absolute path": lambda p, m: _craft(p, [*m, ("/etc/cron.d/x", b"evil")]),
    "symlink member": lambda p, m: _craft(p, m, extra=[_link("sigstore/app0@sha256=" + "b" * 64 + "/signature-1",
                                                             tarfile.SYMTYPE)]),
    "hardlink member": lambda p, m: _craft(p, m, extra=[_link("journal", tarfile.LNKTYPE, "bundle.json")]),
    "device member": lambda p, m: _craft(p, m, extra=[_link("sigstore/x", tarfile.CHRTYPE, "")]),
    "truncated": lambda p, m: _truncate(_craft(p, m)),
    # the journal may hold at most 512 bytes per signature listed (read into memory)
    "journal over its cap": lambda p, m: _craft(p, [(n, d + b"1 " * 512 * len(m) if n == "journal" else d)
                                                    for n, d in m]),
    "not a bundle": lambda p, m: _write(p, b"<html>not found</html>\n" * 40),
}


def _sums(members: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    return [(n, hashlib.sha256(d).hexdigest()) for n, d in members]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _file(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    return ti


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bundle_refused_nothing_stored(case: str, tmp_path: Path, good: list[tuple[str, bytes]],
                                               signer_pub: Path) -> None:
    bundle = HOSTILE[case](tmp_path / "b.tgz", good)
    dst = tmp_path / "dst"
    code, _, stderr = run("bundle", "import", str(bundle), "--sigstore", str(dst), "--key", str(signer_pub))
    assert code == 2, stderr
    assert stderr.startswith("atomicsig: error: ") and len(stderr.strip().splitlines()) <= 2, stderr
    assert files(dst) == {}
    assert not (tmp_path / "x").exists() and not Path("/etc/cron.d/x").exists()
    code, _, _ = run("bundle", "import", str(bundle), "--show-keys")
    assert code == 2


def test_consistent_but_forged_bundle_is_refused_by_verification(tmp_path: Path, good: list[tuple[str, bytes]],
                                                                 signer_pub: Path, other_pub: Path) -> None:
    """The manifest is integrity, not trust: a forger who rebuilds the journal and the manifest around a changed
    signature, or moves a valid signature under another image's digest, gets past the structure checks and is then
    refused per signature by the intake (exit 1, counted by reason); the honest ones are stored."""
    sigs = [(n, d) for n, d in good if n.startswith("sigstore/")]
    (n0, d0), (n1, _) = sigs[0], sigs[1]
    elsewhere = next(d for n, d in sigs if n.split("@sha256=")[1][:64] != n1.split("@sha256=")[1][:64])
    forged = {n0: d0[:-1] + bytes([d0[-1] ^ 1]),  # a flipped bit in the signature value
              n1: elsewhere}  # a valid signature, but for another image's digest
    members = [(n, forged.get(n, d)) for n, d in good]
    lines = []
    for line in dict(members)["journal"].splitlines():
        seq, op, path, sha = line.decode().split(" ")
        if "sigstore/" + path in forged:
            sha = hashlib.sha256(forged["sigstore/" + path]).hexdigest()
        lines.append(f"{seq} {op} {path} {sha}\n")
    journal = "".join(lines).encode()
    members = [(n, journal if n == "journal" else d) for n, d in members]
    bundle = _craft(tmp_path / "forged.tgz", members)
    dst = tmp_path / "dst"
    code, stdout, _ = run("bundle", "import", str(bundle), "--sigstore", str(dst), "--key", str(signer_pub),
                          "--key", str(other_pub), "--json")
    doc = json.loads(stdout)
    assert code == 1, doc
    assert doc["refused"] == {"bad-signature": 1, "digest-mismatch": 1}, doc
    assert doc["stored"] == len(sigs) - 2
    refused = {r["path"] for r in doc["refusals"]}
    assert refused == {n0[len("sigstore/"):], n1[len("sigstore/"):]}
    assert not any(b in (forged[n0], forged[n1]) for b in files(dst).values())


def test_huge_member_refused_at_its_header(tmp_path: Path, good: list[tuple[str, bytes]],
                                           signer_pub: Path) -> None:
    """A gzip bomb: a 'signature' of 512 MiB of zeros (500 KiB compressed) is refused before its data is read."""
    name = "sigstore/app0@sha256=" + "c" * 64 + "/signature-1"
    size = 512 * 1024 * 1024
    body = b""
    for n, d in [(wire.MANIFEST, wire.build_manifest([*_sums(good), (name, "0" * 64)])), *good]:
        body += _file(n, len(d)).tobuf(format=tarfile.PAX_FORMAT) + d + bytes(-len(d) % 512)
    bomb = tmp_path / "bomb.tgz"
    with gzip.open(bomb, "wb", compresslevel=1) as gz:
        gz.write(body + _file(name, size).tobuf(format=tarfile.PAX_FORMAT))
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            gz.write(chunk)
        gz.write(bytes(1024))
    assert bomb.stat().st_size < 4 * 1024 * 1024
    t0 = time.monotonic()
    code, _, stderr = run("bundle", "import", str(bomb), "--sigstore", str(tmp_path / "dst"), "--key",
                          str(signer_pub))
    assert code == 2 and "at most" in stderr, stderr
    assert time.monotonic() - t0 < 5
    assert files(tmp_path / "dst") == {}


def test_reader_limits_are_checked_before_reading() -> None:
    """Names outside the format and manifests out of order are refused by the pure reader."""
    for bad in ("sigstore/app@sha512=" + "a" * 128 + "/signature-1", "sigstore/App@sha256=" + "a" * 64
                + "/signature-1", "sigstore/app@sha256=" + "a" * 64 + "/signature-128", "keys/../x.gpg",
                "keys/abc.gpg", "policy.yml"):
        with pytest.raises(wire.BundleError):
            wire.kind(bad)
    ok = [("bundle.json", "a" * 64), ("journal", "b" * 64)]
    assert wire.parse_manifest(wire.build_manifest(ok)) == ok
    with pytest.raises(wire.BundleError, match="out of order"):
        wire.parse_manifest(wire.build_manifest(ok[::-1]))
    with pytest.raises(wire.BundleError, match="twice"):
        wire.parse_manifest(wire.build_manifest([*ok, ok[1]]))
    with pytest.raises(wire.BundleError, match="truncated"):
        wire.parse_manifest(wire.build_manifest(ok)[:-1])


# ---- real skopeo reads what was imported --------------------------------------------------------------------------


@pytest.mark.slow
@needs_registry
def test_skopeo_accepts_imported_signature(tmp_path: Path, registry: Registry, signer: GpgHome,
                                           signer_pub: Path, other_signer: GpgHome, other_pub: Path) -> None:
    """Across the gap: signed on one side, exported, imported on the other, and the node's skopeo pull accepts the
    image through a file lookaside of the importing sigstore; a signature by a key the importer did not name never
    arrives, so an image only that key signed is refused."""
    digest = push_image(registry.host, "bundle/app:1", "bundle-e2e", tmp_path)
    digest2 = push_image(registry.host, "bundle/other:1", "bundle-e2e-2", tmp_path)
    ref, ref2 = f"{registry.host}/bundle/app:1", f"{registry.host}/bundle/other:1"
    src = DirectoryStore(tmp_path / "src")
    src.append_path("bundle/app", digest, signer.sign_image(ref, digest))
    src.append_path("bundle/other", digest2, other_signer.sign_image(ref2, digest2))
    out = tmp_path / "b.tgz"
    assert run("bundle", "export", "--sigstore", str(src.root), "-o", str(out))[0] == 0
    dst = tmp_path / "dst"
    code, stdout, _ = run("bundle", "import", str(out), "--sigstore", str(dst), "--key", str(signer_pub), "--json")
    assert code == 1 and json.loads(stdout)["stored"] == 1
    policy = signed_by_policy(tmp_path / "policy.json", signer_pub)
    regd = registries_d(tmp_path / "registries.d", f"file://{dst}")
    pulled = skopeo_pull(ref, policy, regd, tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    policy2 = signed_by_policy(tmp_path / "policy2.json", other_pub)
    assert skopeo_pull(ref2, policy2, regd, tmp_path).returncode != 0
    assert read_dir(dst / digest_dirname("bundle/app", digest))[0].blob == \
        read_dir(src.root / digest_dirname("bundle/app", digest))[0].blob


# ---- killed midway ------------------------------------------------------------------------------------------------


N_BIG = 120


@pytest.fixture
def big_bundle(tmp_path: Path, signer: GpgHome) -> Path:
    src = tmp_path / "big-src"
    st = DirectoryStore(src)
    from atomicsig.format import payload
    from atomicsig.gnupg.keyring import Keyring

    kr = Keyring(str(signer.path))
    for i in range(N_BIG):
        d = _digest(1000 + i % 40)
        st.append_path(f"crash/app{i % 4}", d, kr.sign(payload.build(f"example.com/crash/app{i % 4}:v{i}", d),
                                                       signer.fingerprint, None))
    out = tmp_path / "big.tgz"
    assert run("bundle", "export", "--sigstore", str(src), "-o", str(out))[0] == 0
    return out


def _audit(root: Path, keys: NativeTrustedKeys | TrustedKeys) -> int:
    """What a reader sees after a kill: every directory gap-free, every file a complete signature for its
    directory's digest (verified), no bytes twice in one directory, every journal line naming a file with its
    bytes, never two lines for one file. Returns the number of files."""
    n = 0
    for d in [p for p in root.rglob("*@sha256=*") if p.is_dir()]:
        names = sorted(int(p.name.split("-", 1)[1]) for p in d.iterdir() if p.name.startswith("signature-"))
        assert names == list(range(1, len(names) + 1)), f"gap in {d}: {names}"
        blobs = [s.blob for s in read_dir(d)]
        assert len(blobs) == len(set(blobs))
        for b in blobs:
            simple_signing_body(b)
            assert keys.verify(b).payload  # complete and valid
        n += len(blobs)
    if Journal(root).path.exists():
        adds = journal_adds(root)
        assert len(adds) == len(set(adds)), "a file journaled twice"
        for rel, sha in adds:
            assert sha256_hex((root / rel).read_bytes()) == sha
    return n


def _journal_lines(root: Path) -> int:
    try:
        return Journal(root).path.read_bytes().count(b"\n") - 1
    except FileNotFoundError:
        return 0


#: ``bundle import`` as the CLI runs it, but 8 signatures per batch, so that kills land between and inside the
#: batches of a 120-signature bundle (the default, atomicsig.ops.bundle.BATCH, would store it in one batch).
SMALL_BATCHES = ("import sys\n"
                 "from atomicsig.ops.bundle import import_bundle\n"
                 "from atomicsig.ops.intake import Intake\n"
                 "from atomicsig.ops.keys import trusted_verifier\n"
                 "from atomicsig.store.directory import DirectoryStore\n"
                 "with trusted_verifier([sys.argv[3]], None) as v:\n"
                 "    import_bundle(sys.argv[1], Intake(DirectoryStore(sys.argv[2]), v), batch=8)\n")


@pytest.mark.slow
def test_import_killed_midway_is_consistent_and_rerun_completes(tmp_path: Path, big_bundle: Path,
                                                                signer_pub: Path) -> None:
    """SIGKILL the import once before it stores anything, then each time right after a randomly chosen number of
    signatures is journaled (polling, so every kill lands inside the storing loop, in small batches); after each
    kill the store reads consistently, and a final run (the CLI, default batch) stores exactly the rest."""
    dst = tmp_path / "dst"
    args = [*ATOMICSIG, "bundle", "import", str(big_bundle), "--sigstore", str(dst), "--key", str(signer_pub)]
    killed = [sys.executable, "-c", SMALL_BATCHES, str(big_bundle), str(dst), str(signer_pub)]
    probe = tmp_path / "probe"
    subprocess.run([*args[:7], str(probe), *args[8:]], check=True, capture_output=True)
    rng = random.Random(int(os.environ.get("ATOMICSIG_CRASH_SEED", "15")))
    keys = trusted_keys([signer_pub.read_bytes()])
    seen, mid = 0, 0
    try:
        for it in range(6):
            proc = subprocess.Popen(killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            # At most a third of what is left (kills land at the end of a batch, up to 8 later): room for 5 kills.
            target = 0 if it == 0 else rng.randint(seen + 1, seen + max(1, (N_BIG - 8 - seen) // 3))
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if (target == 0 and time.monotonic() > deadline - 59.7) or _journal_lines(dst) >= target > 0:
                    break
                time.sleep(0.002)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            now = _audit(dst, keys)
            assert now >= seen
            mid += seen < now < N_BIG
            seen = now
        assert mid >= 3, f"only {mid} kills landed while signatures were being stored"
        done = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["stored"] + doc["duplicates"] == N_BIG and doc["refused_total"] == 0
        assert doc["stored"] == N_BIG - seen
        assert _audit(dst, keys) == N_BIG
        assert by_dir(dst) == by_dir(probe)
        # After the final run the journal lists every file exactly once (what killed runs left is reconciled).
        assert sorted(journal_adds(dst)) == sorted((rel, sha256_hex(b)) for rel, b in files(dst).items())
    finally:
        keys.close()
    print(f"\nbundle import: {mid} of 6 kills landed while storing; {seen} of {N_BIG} stored before the last run")


def test_since_forms_and_bad_input(tmp_path: Path, signer_pub: Path) -> None:
    assert parse_since("42") == Since(seq=42, text="42")
    assert parse_since("a" * 32 + ":7") == Since(seq=7, epoch="a" * 32, text="a" * 32 + ":7")
    assert parse_since("2026-11-30").time == 1795996800.0  # midnight UTC
    assert parse_since("7d", now=1_000_000.0).time == 1_000_000.0 - 7 * 86400
    for bad in ("yesterday", "2026-13-45", "abc:1"):
        with pytest.raises(InputError):
            parse_since(bad)
    code, _, stderr = run("bundle", "import", str(tmp_path / "nope.tgz"), "--sigstore", str(tmp_path / "d"),
                          "--key", str(signer_pub))
    assert code == 2 and "does not exist" in stderr
    code, _, stderr = run("bundle", "export", "--sigstore", str(tmp_path), "-o", str(tmp_path / "x.tgz"))
    assert code == 2 and "atomicsig index" in stderr  # a store without a journal: told how to make one
