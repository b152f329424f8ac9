"""Sync building blocks without servers: journal format and repair, path validation, intake, prune, state."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from atomicsig import fsutil
from atomicsig.errors import InputError, StorageError
from atomicsig.format.reference import parse
from atomicsig.format.sigpath import parse_sigpath
from atomicsig.gnupg.keyring import TrustedKeys
from atomicsig.ops.intake import Intake
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import HEADER_LEN, Journal, JournalError, iter_lines, parse_line
from atomicsig.store.prune import prune_keys, rewrite_dir
from atomicsig.store.sigdir import read_dir
from atomicsig.sync import config as sync_config
from atomicsig.sync.state import SyncState
from tests.infra import GpgHome

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


TS = 1700000000  # fixed, so that equal inputs give equal payloads


@pytest.fixture(scope="module")
def blobs(signer: GpgHome, other_signer: GpgHome) -> dict[str, bytes]:
    return {"a1": signer.sign_image("example.com/ns/app:1", D1, timestamp=TS),
            "a1b": signer.sign_image("example.com/ns/app:2", D1, timestamp=TS),
            "a2": signer.sign_image("example.com/ns/app:1", D2, timestamp=TS),
            "o1": other_signer.sign_image("example.com/ns/app:1", D1, timestamp=TS)}


@pytest.fixture(scope="module")
def trusted(signer_pub: Path):  # type: ignore[no-untyped-def]
    tk = TrustedKeys([signer_pub.read_bytes()])
    yield tk
    tk.close()


# ---- paths and journal lines --------------------------------------------------------------------------------

@pytest.mark.parametrize("rel", [
    "ns/app@sha256=" + "a" * 64 + "/signature-1",
    "library/busybox@sha256=" + "0" * 64 + "/signature-127",
    "a/b/c-d_e.f@sha256=" + "f" * 64 + "/signature-12",
])
def test_valid_sigpaths(rel: str) -> None:
    assert str(parse_sigpath(rel)) == rel


@pytest.mark.parametrize("rel", [
    "../etc@sha256=" + "a" * 64 + "/signature-1",
    "ns/../../x@sha256=" + "a" * 64 + "/signature-1",
    "/abs@sha256=" + "a" * 64 + "/signature-1",
    "NS/app@sha256=" + "a" * 64 + "/signature-1",
    "ns/app@sha256=" + "A" * 64 + "/signature-1",
    "ns/app@sha512=" + "a" * 128 + "/signature-1",
    "ns/app@sha256=" + "a" * 64 + "/signature-0",
    "ns/app@sha256=" + "a" * 64 + "/signature-128",
    "ns/app@sha256=" + "a" * 64 + "/signature-01",
    "ns/app@sha256=" + "a" * 64 + "/../../signature-1",
    "ns//app@sha256=" + "a" * 64 + "/signature-1",
    "ns/app@sha256=" + "a" * 64 + "/signature-1/x",
    "",
])
def test_hostile_sigpaths_refused(rel: str) -> None:
    with pytest.raises(InputError):
        parse_sigpath(rel)


def test_parse_line_rejects_garbage() -> None:
    good = f"7 add ns/app@sha256={'a' * 64}/signature-1 {'b' * 64}".encode()
    assert parse_line(good, 100).seq == 7
    for bad in [b"7 add x", b"x add ns/app@sha256=" + b"a" * 64 + b"/signature-1 " + b"b" * 64,
                good.replace(b"add", b"mv"), good + b" extra", "7 add ü".encode()]:
        with pytest.raises((JournalError, InputError)):
            parse_line(bad, 0)


def test_iter_lines_keeps_partial_tail_and_caps_length() -> None:
    assert list(iter_lines(b"a\nbb\ncc", 10)) == [(b"a", 12), (b"bb", 15)]
    with pytest.raises(JournalError):
        list(iter_lines(b"x" * 5000, 0))


# ---- the journal on disk ------------------------------------------------------------------------------------

def test_append_hook_creates_and_extends_journal(tmp_path: Path, blobs: dict[str, bytes]) -> None:
    store = DirectoryStore(tmp_path)
    ref = parse("example.com/ns/app:1")
    store.append(ref, D1, blobs["a1"])
    store.append(ref, D1, blobs["a1"])  # duplicate: not journaled twice
    store.append(ref, D2, blobs["a2"])
    j = Journal(tmp_path)
    epoch, data = j.read_from(0)
    recs = [parse_line(line, end) for line, end in iter_lines(data, HEADER_LEN)]
    assert [(r.seq, r.op, str(r.path)) for r in recs] == [
        (1, "add", f"ns/app@sha256={'1' * 64}/signature-1"), (2, "add", f"ns/app@sha256={'2' * 64}/signature-1")]
    assert recs[0].sha256 == hashlib.sha256(blobs["a1"]).hexdigest()
    assert len(epoch) == 32


def test_existing_store_gets_full_journal_on_first_append(tmp_path: Path, blobs: dict[str, bytes]) -> None:
    d = tmp_path / f"ns/app@sha256={'1' * 64}"
    d.mkdir(parents=True)
    (d / "signature-1").write_bytes(blobs["a1"])  # written by skopeo, say
    DirectoryStore(tmp_path).append(parse("example.com/ns/app:1"), D2, blobs["a2"])
    _, data = Journal(tmp_path).read_from(0)
    assert len(list(iter_lines(data, HEADER_LEN))) == 2


def test_torn_last_line_is_cut_before_append(tmp_path: Path, blobs: dict[str, bytes]) -> None:
    store = DirectoryStore(tmp_path)
    store.append(parse("example.com/ns/app:1"), D1, blobs["a1"])
    j = Journal(tmp_path)
    with open(j.path, "ab") as f:
        f.write(b"2 add ns/app@sha256=")  # crash mid-append
    store.append(parse("example.com/ns/app:1"), D2, blobs["a2"])
    _, data = j.read_from(0)
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert [parse_line(line, 0).seq for line in lines[:-1]] == [1, 2]


def test_rebuild_changes_epoch_atomically(tmp_path: Path, blobs: dict[str, bytes]) -> None:
    store = DirectoryStore(tmp_path)
    store.append(parse("example.com/ns/app:1"), D1, blobs["a1"])
    j = Journal(tmp_path)
    e1 = j.epoch()
    assert j.rebuild() == 1
    assert j.epoch() != e1
    assert not [p for p in j.meta.iterdir() if p.name.startswith(".tmp-")]


def test_disk_full_during_signature_write_leaves_nothing(tmp_path: Path, blobs: dict[str, bytes],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryStore(tmp_path)
    store.append(parse("example.com/ns/app:1"), D1, blobs["a1"])

    real_write = os.write

    def full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(fsutil.os, "write", full)
    with pytest.raises(StorageError):
        store.append(parse("example.com/ns/app:1"), D1, blobs["a1b"])
    monkeypatch.setattr(fsutil.os, "write", real_write)
    d = tmp_path / f"ns/app@sha256={'1' * 64}"
    assert sorted(p.name for p in d.iterdir()) == ["signature-1"]
    _, data = Journal(tmp_path).read_from(0)
    assert len(list(iter_lines(data, HEADER_LEN))) == 1


def test_read_only_sigstore_is_a_storage_error(tmp_path: Path, blobs: dict[str, bytes]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(StorageError):
            DirectoryStore(tmp_path).append(parse("example.com/ns/app:1"), D1, blobs["a1"])
    finally:
        os.chmod(tmp_path, 0o755)


# ---- intake: trust before write -----------------------------------------------------------------------------

def test_intake_accepts_dedups_and_rejects(tmp_path: Path, blobs: dict[str, bytes], trusted: TrustedKeys) -> None:
    q = tmp_path / "quarantine"
    intake = Intake(DirectoryStore(tmp_path / "store"), trusted, q)
    p1 = parse_sigpath(f"ns/app@sha256={'1' * 64}/signature-5")
    assert intake.offer(p1, blobs["a1"], "test").status == "created"
    assert intake.offer(p1, blobs["a1"], "test").status == "duplicate"
    assert intake.offer(p1, blobs["o1"], "test").reason == "untrusted-key"
    assert intake.offer(p1, blobs["a2"], "test").reason == "digest-mismatch"
    assert intake.offer(p1, b"<html>oops</html>", "test").reason == "format"
    assert intake.offer(p1, b"\xa3" + b"\0" * (5 << 20), "test").reason == "too-large"
    assert intake.offer(p1, blobs["a1b"], "test").status == "created"
    sigs = read_dir(tmp_path / "store" / f"ns/app@sha256={'1' * 64}")
    assert [s.blob for s in sigs] == [blobs["a1"], blobs["a1b"]]  # next free index, no gaps
    reasons = sorted(json.loads(p.read_text())["reason"] for p in q.glob("*.json"))
    assert reasons == ["digest-mismatch", "format", "untrusted-key"]


def test_intake_refuses_a_full_digest_directory(tmp_path: Path, blobs: dict[str, bytes],
                                                trusted: TrustedKeys) -> None:
    d = tmp_path / f"ns/app@sha256={'1' * 64}"
    d.mkdir(parents=True)
    for i in range(1, 128):
        (d / f"signature-{i}").write_bytes(b"\xa3" + str(i).encode())
    intake = Intake(DirectoryStore(tmp_path), trusted)
    out = intake.offer(parse_sigpath(f"ns/app@sha256={'1' * 64}/signature-1"), blobs["a1"], "test")
    assert out.reason == "digest-full" and not (d / "signature-128").exists()


# ---- prune ----------------------------------------------------------------------------------------------------

def test_prune_removes_and_renumbers_and_journals(tmp_path: Path, blobs: dict[str, bytes],
                                                  other_signer: GpgHome) -> None:
    store = DirectoryStore(tmp_path)
    ref = parse("example.com/ns/app:1")
    for k in ("a1", "o1", "a1b"):
        store.append(ref, D1, blobs[k])
    res = prune_keys(tmp_path, {other_signer.fingerprint})
    assert res.removed == [f"ns/app@sha256={'1' * 64}/signature-2"]
    d = tmp_path / f"ns/app@sha256={'1' * 64}"
    assert [s.blob for s in read_dir(d)] == [blobs["a1"], blobs["a1b"]]
    assert sorted(p.name for p in d.parent.iterdir()) == [d.name]  # no temp dirs left
    _, data = Journal(tmp_path).read_from(0)
    ops = [(r.op, r.path.index) for r in (parse_line(line, e) for line, e in iter_lines(data, HEADER_LEN))]
    assert ops[-2:] == [("del", 2), ("add", 2)]


def test_rewrite_dir_to_empty(tmp_path: Path) -> None:
    d = tmp_path / "x@sha256=" / "d"
    d.mkdir(parents=True)
    (d / "signature-1").write_bytes(b"\xa3x")
    rewrite_dir(d, [])
    assert d.is_dir() and list(d.iterdir()) == []


# ---- config and state -----------------------------------------------------------------------------------------

def test_config_validation(tmp_path: Path) -> None:
    ok = sync_config.parse({"sigstore": str(tmp_path), "sources": [{"url": "http://a:1/s/"}],
                            "trusted-keys": ["/k.gpg"], "metrics": "127.0.0.1:9464"})
    assert ok.sources[0].url == "http://a:1/s" and ok.metrics == ("127.0.0.1", 9464)
    for bad in [{"sigstore": "x", "typo": 1}, {"sources": []},
                {"sigstore": "x", "sources": [{"url": "ftp://a"}], "trusted-keys": ["k"]},
                {"sigstore": "x", "sources": [{"url": "http://a"}]},
                {"sigstore": "x", "sources": [{"url": "http://u:p@a"}], "trusted-keys": ["k"]},
                {"sigstore": "x", "interval": 0}]:
        with pytest.raises(InputError):
            sync_config.parse(bad)


def test_state_roundtrip_and_corrupt_state(tmp_path: Path) -> None:
    st = SyncState(tmp_path / "s.json")
    st.source("http://a").offset = 99
    st.source("http://a").rejected["path"] = 2
    st.save()
    again = SyncState.load(tmp_path / "s.json")
    assert again.source("http://a").offset == 99 and again.source("http://a").rejected == {"path": 2}
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(StorageError):
        SyncState.load(tmp_path / "s.json")


# ---- CLI input errors and status without a network ------------------------------------------------------------

def test_cli_usage_errors_and_status(cli, tmp_path: Path, signer_pub: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "sync.yaml"
    cfg.write_text(f"sigstore: {tmp_path / 'store'}\nsources: [{{url: 'http://127.0.0.1:9'}}]\n"
                   f"trusted-keys: [{signer_pub}]\n")
    code, _, err = cli("sync", "--config", str(cfg), "--once", "--from", "http://elsewhere")
    assert code == 2 and "not a source" in err
    code, _, err = cli("sync", "--config", str(tmp_path / "missing.yaml"), "--once")
    assert code == 2 and "cannot read sync config" in err
    code, _, err = cli("index", str(tmp_path / "nope"))
    assert code == 2
    (tmp_path / "gnupg").mkdir(mode=0o700)
    code, _, err = cli("prune", "--sigstore", str(tmp_path), "--key", "alice@example.com",
                       "--gnupghome", str(tmp_path / "gnupg"))
    assert code == 2 and "alice@example.com" in err and "no key" in err
    code, out, _ = cli("sync", "status", "--config", str(cfg))
    assert code == 0 and "never synced" in out
    code, out, _ = cli("sync", "--config", str(cfg), "--once")  # port 9: nothing listens
    assert code == 3
    code, out, _ = cli("sync", "status", "--config", str(cfg))
    assert code == 3 and "cannot reach" in out
    code, out, _ = cli("sync", "status", "--config", str(cfg), "--json")
    st = json.loads(out)["sources"][0]
    assert st["errors"] == 1 and st["offset"] == 0 and st["synced"] == 0


def test_daemon_public_surface_restrict_and_close(tmp_path: Path, signer_pub: Path) -> None:
    """What ``sync --once --from`` needs, as public methods instead of the daemon's private attributes."""
    from atomicsig.sync.daemon import SyncDaemon

    cfg = tmp_path / "sync.yaml"
    cfg.write_text(f"sigstore: {tmp_path / 'store'}\nsources: [{{url: 'http://127.0.0.1:9/a'}}, "
                   f"{{url: 'http://127.0.0.1:9/b'}}]\ntrusted-keys: [{signer_pub}]\n")
    daemon = SyncDaemon(str(cfg))
    daemon.load()
    try:
        assert daemon.sources == ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
        with pytest.raises(InputError, match="http://elsewhere is not a source"):
            daemon.restrict_to(["http://elsewhere"])
        daemon.restrict_to(["http://127.0.0.1:9/b"])
        assert daemon.sources == ["http://127.0.0.1:9/b"]
    finally:
        daemon.close()
    daemon.close()  # twice is harmless


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    from atomicsig.sync.daemon import MAX_BACKOFF, backoff

    for n, base in [(1, 1.0), (3, 4.0), (5, 16.0)]:
        assert all(base / 2 <= backoff(n) <= base for _ in range(50))
    assert all(MAX_BACKOFF / 2 <= backoff(40) <= MAX_BACKOFF for _ in range(50))
    assert len({backoff(4) for _ in range(20)}) > 1  # jitter: retries of many nodes do not align


def test_seq_continues_across_a_long_journal_and_torn_tail(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.rebuild()
    rel = f"ns/app@sha256={'1' * 64}/signature-1"
    for i in range(100):
        j.append([("add", rel, hashlib.sha256(str(i).encode()).hexdigest())])
    with open(j.path, "ab") as f:
        f.write(b"101 add ns/ap")
    j.append([("del", rel, "c" * 64)])
    _, data = j.read_from(0)
    recs = [parse_line(line, e) for line, e in iter_lines(data, HEADER_LEN)]
    assert [r.seq for r in recs] == list(range(1, 102)) and recs[-1].op == "del"
    assert data.endswith(b"\n")


def test_push_watch_falls_back_to_polling_without_inotify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of inotify instances (a per-user limit), the pusher still wakes on journal changes, by polling."""
    import watchdog.observers

    from atomicsig.sync.config import Endpoint
    from atomicsig.sync.push import Pusher
    from atomicsig.sync.state import SourceState

    class NoInotify(watchdog.observers.Observer):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", NoInotify)
    pusher = Pusher(tmp_path, Endpoint("http://127.0.0.1:9"), SourceState())
    pusher.watch()
    try:
        assert type(pusher._observer).__name__ == "PollingObserver"
        DirectoryStore(tmp_path).append(parse("example.com/a/b:1"), "sha256:" + "a" * 64, b"\xa3x")
        assert pusher.wake.wait(10), "a journal change did not wake the pusher"
    finally:
        pusher.stop()
