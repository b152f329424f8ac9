"""The bulk first sync (issue 15 item 4): a joining node reads the peer's pack in one request, verifies every
signature, stores in batches, then follows the journal tail. Real ``atomicsig serve``, real nginx, kill -9."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atomicsig.format import payload
from atomicsig.format.sigpath import digest_dirname
from atomicsig.gnupg.keyring import Keyring
from atomicsig.signers.memory import memory_signer
from atomicsig.store.journal import Journal
from atomicsig.store.pack import pack_path, write_pack
from tests.infra import (
    FakeServer,
    GpgHome,
    Reply,
    SyncNode,
    kill_group,
    nginx,
    sigstore_contents,
    sync_nodes,
    sync_once,
)
from tests.infra import serve_sigstore as serve
from tests.test_recovery import unlocked_slots

Node = SyncNode
contents = sigstore_contents

pytestmark = pytest.mark.slow
ATOMICSIG = [sys.executable, "-m", "atomicsig"]


@pytest.fixture
def node(tmp_path: Path, signer_pub: Path) -> Callable[[str], Node]:
    return sync_nodes(tmp_path, signer_pub, Node)


def fill(root: Path, signer: GpgHome | Keyring, fpr: str, n: int, start: int = 0) -> None:
    """``n`` real signatures (in-process memory signer: gpg per signature would take minutes) under 20
    repositories, written as ``atomicsig sign`` would leave them, then journaled by ``index``."""
    kr = signer if isinstance(signer, Keyring) else Keyring(str(signer.path))
    s = memory_signer(kr, fpr, None)
    for i in range(start, start + n):
        digest = "sha256:" + hashlib.sha256(f"pack-{i}".encode()).hexdigest()
        d = root / digest_dirname(f"ns/r{i % 20}", digest)
        d.mkdir(parents=True, exist_ok=True)
        (d / "signature-1").write_bytes(s.sign(payload.build(f"example.com/ns/r{i % 20}:v{i}", digest)))
    Journal(root).rebuild()


def add_one(root: Path, signer: GpgHome, i: int) -> None:
    from atomicsig.format.reference import parse
    from atomicsig.store.directory import DirectoryStore

    digest = "sha256:" + hashlib.sha256(f"extra-{i}".encode()).hexdigest()
    blob = memory_signer(Keyring(str(signer.path)), signer.fingerprint, None).sign(
        payload.build(f"example.com/ns/extra:v{i}", digest))
    DirectoryStore(root).append(parse("example.com/ns/extra"), digest, blob)


def pack_requests(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if "/.atomicsig/pack" in line)


def journal_lines(root: Path) -> list[str]:
    return Journal(root).path.read_text().splitlines()[1:]


def test_first_sync_from_serve_and_from_nginx_identical(cli: Any, node: Callable[[str], Node],
                                                        signer: GpgHome) -> None:
    a, b, c = node("a"), node("b"), node("c")
    fill(a.sigstore, signer, signer.fingerprint, 400)
    code, out, _ = cli("pack", str(a.sigstore), "--json")
    assert code == 0 and json.loads(out)["records"] == 400
    with nginx(a.sigstore, b.dir / "nginx") as (url_n, log), serve(a.sigstore) as url_s:
        b.configure([url_n])
        c.configure([url_s])
        assert sync_once(cli, b)[0] == 0
        assert sync_once(cli, c)[0] == 0
        want = contents(a.sigstore)
        assert len(want) == 400 and contents(b.sigstore) == want == contents(c.sigstore)
        # One pack request, not one GET per signature (header, pack, alignment check, journal tail).
        requests = log.read_text().splitlines()
        assert pack_requests(log) == 1 and len(requests) < 10, requests
        for n, url in ((b, url_n), (c, url_s)):
            st = n.state()["sources"][url]
            assert st["synced"] == 400 and st["rejected"] == {}
            assert st["offset"] == Journal(a.sigstore).path.stat().st_size
            assert st["pack_offset"] == 0
            # The follower journaled every signature once, so nodes following it get them too.
            assert len(journal_lines(n.sigstore)) == 400

        # Caught up: one new signature costs the journal tail and one GET; the pack is never fetched again.
        add_one(a.sigstore, signer, 1)
        before = len(log.read_text().splitlines())
        assert sync_once(cli, b)[0] == 0
        new = log.read_text().splitlines()[before:]
        assert contents(b.sigstore) == contents(a.sigstore) and pack_requests(log) == 1
        assert len(new) <= 3, new

        # A pack from an earlier epoch (index since) is not used: record by record, same result.
        cli("index", str(a.sigstore))
        d = node("d")
        d.configure([url_n])
        assert sync_once(cli, d)[0] == 0
        assert contents(d.sigstore) == contents(a.sigstore)
        assert d.state()["sources"][url_n]["synced"] == 401


def _tamper(pack: Path, index: int, fix: Callable[[bytes], tuple[bytes, bytes]]) -> None:
    """Replace the ``index``-th record's line and blob by ``fix(blob)``; recompute nothing else."""
    data = pack.read_bytes()
    lines_end = data.index(b"\n") + 1 + 53
    pos, k = lines_end, 0
    while True:
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        nl2 = data.index(b"\n", nl + 1)
        size = int(data[nl + 1:nl2])
        blob = data[nl2 + 1:nl2 + 1 + size]
        end = nl2 + 1 + size
        if k == index:
            new_line, new_blob = fix(blob)
            new_line = new_line or line
            data = data[:pos] + new_line + b"\n" + b"%d\n" % len(new_blob) + new_blob + data[end:]
            break
        pos, k = end, k + 1
    pack.write_bytes(data)


def _retrailer(pack: Path) -> None:
    data = pack.read_bytes()
    body = data[:data.rindex(b"end ")]
    pack.write_bytes(body + b"end %s\n" % hashlib.sha256(body).hexdigest().encode())


def test_tampered_or_truncated_pack(cli: Any, node: Callable[[str], Node], signer: GpgHome,
                                    other_signer: GpgHome) -> None:
    a = node("a")
    fill(a.sigstore, signer, signer.fingerprint, 60)
    pack = pack_path(a.sigstore)
    write_pack(a.sigstore)
    good = pack.read_bytes()

    # 1. A byte flipped inside one signature: its sha256 differs from the journal line's, so it is refused
    #    ("content-changed") and that one signature is fetched on its own; the trailer no longer matches ("pack").
    def flip(blob: bytes) -> tuple[bytes, bytes]:
        return b"", blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:]
    _tamper(pack, 7, flip)
    with nginx(a.sigstore, a.dir / "nginx1") as (url, _log):
        b = node("b")
        b.configure([url])
        assert sync_once(cli, b)[0] == 0
        assert contents(b.sigstore) == contents(a.sigstore)
        rej = b.state()["sources"][url]["rejected"]
        assert rej == {"content-changed": 1, "pack": 1}, rej

    # 2. A consistent forgery: another key's signature for the same digest, with the line's sha256 and the
    #    trailer recomputed. The trust check refuses it (counted); every other signature is stored.
    pack.write_bytes(good)
    target: dict[str, bytes] = {}

    def forge(blob: bytes) -> tuple[bytes, bytes]:
        j = journal_lines(a.sigstore)[3].encode()
        seq, op, rel, _sha = j.split(b" ")
        digest = "sha256:" + rel.decode().split("@sha256=")[1].split("/")[0]
        forged = other_signer.sign_image("example.com/ns/r3:v3", digest)
        target["rel"] = rel
        return b" ".join([seq, op, rel, hashlib.sha256(forged).hexdigest().encode()]), forged
    _tamper(pack, 3, forge)
    _retrailer(pack)
    with nginx(a.sigstore, a.dir / "nginx2") as (url, _log):
        c = node("c")
        c.configure([url])
        assert sync_once(cli, c)[0] == 0
        got = contents(c.sigstore)
        rej = c.state()["sources"][url]["rejected"]
        assert rej == {"untrusted-key": 1}, rej
        missing = target["rel"].decode().rsplit("/", 1)[0]
        assert missing not in got and len(got) == 59
        assert {k: v for k, v in contents(a.sigstore).items() if k != missing} == got

    # 3. Truncated half way: the first half from the pack, the rest record by record; nothing lost.
    pack.write_bytes(good[:len(good) // 2])
    with nginx(a.sigstore, a.dir / "nginx3") as (url, log):
        e = node("e")
        e.configure([url])
        assert sync_once(cli, e)[0] == 0
        assert contents(e.sigstore) == contents(a.sigstore)
        st = e.state()["sources"][url]
        assert st["rejected"] == {"pack": 1} and st["synced"] == 60
        gets = [x for x in log.read_text().splitlines() if "/signature-" in x]
        assert 20 < len(gets) < 40  # only the records the pack did not bring


def test_kill_during_pack_then_resume(node: Callable[[str], Node], signer: GpgHome) -> None:
    """kill -9 mid-pack, then run again: nothing lost, no gap, one journal line per signature, cursor at the end.
    No ``atomicsig pack`` here: serve builds the pack itself on the first request."""
    a, b = node("a"), node("b")
    total = 3000
    fill(a.sigstore, signer, signer.fingerprint, total)
    assert not pack_path(a.sigstore).exists()
    with serve(a.sigstore) as url:
        b.configure([url])
        proc = subprocess.Popen([*ATOMICSIG, "sync", "--once", "--config", str(b.config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if sum(1 for _ in b.sigstore.glob("ns/*/signature-1")) >= 700:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "finished before the kill; make the pack bigger"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            kill_group(proc)
        stored = sum(1 for _ in b.sigstore.glob("ns/*/signature-1"))
        assert 0 < stored < total
        contents(b.sigstore)  # no gap, no partial file after the kill
        code = subprocess.run([*ATOMICSIG, "sync", "--once", "--config", str(b.config)],
                              capture_output=True, check=False).returncode
        assert code == 0
        assert contents(b.sigstore) == contents(a.sigstore)
        lines = journal_lines(b.sigstore)
        shas = [line.split(" ")[3] for line in lines]
        assert len(lines) == total and len(set(shas)) == total  # every signature journaled once
        st = b.state()["sources"][url]
        assert st["offset"] == Journal(a.sigstore).path.stat().st_size and st["pack_offset"] == 0
        assert not list((b.sigstore / ".atomicsig" / "pending").glob("*"))
        # what the killed batch had linked is found on disk the second time: counted as duplicates, not lost
        assert st["synced"] + st["duplicates"] >= total and st["rejected"] == {} and pack_path(a.sigstore).exists()


def test_pack_resumed_across_limited_passes(cli: Any, node: Callable[[str], Node], signer: GpgHome) -> None:
    """A pass cut by its pass-limit saves its place in the pack; the next pass resumes it with a Range request
    (nginx here) instead of falling back to one GET per signature."""
    a, b = node("a"), node("b")
    fill(a.sigstore, signer, signer.fingerprint, 1200)
    write_pack(a.sigstore)
    with nginx(a.sigstore, b.dir / "nginx") as (url, log):
        b.configure([url], **{"pass-limit": {"records": 400}})
        assert sync_once(cli, b, "--passes", "10")[0] == 0
        assert contents(b.sigstore) == contents(a.sigstore)
        packs = [x for x in log.read_text().splitlines() if "/.atomicsig/pack" in x]
        # cut after the first stored batch of 512 (the limit is checked between batches), then resumed
        assert len(packs) >= 2 and " 200 " in packs[0] and all(" 206 " in x for x in packs[1:]), packs
        assert not [x for x in log.read_text().splitlines() if "/signature-" in x]
        st = b.state()["sources"][url]
        assert st["synced"] == 1200 and st["pack_offset"] == 0 and st["rejected"] == {}


class FlakyStatic(FakeServer):
    """A static web server over a sigstore (Range on the journal, no pack) that answers 503 for one signature
    while ``broken``: a transient failure in the middle of a long journal tail."""

    def __init__(self, root: Path, fail: str) -> None:
        super().__init__()
        self.root, self.fail, self.broken = root, fail, True

    def handle(self, req: Any) -> Reply | None:
        route = req.route.lstrip("/")
        if route == self.fail and self.broken:
            return Reply(503, b"busy")
        path = self.root / route
        if route.endswith("/pack") or not path.is_file():
            return Reply(404, b"no")
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=([0-9]+)-([0-9]*)", req.headers.get("Range", ""))
        if m is None:
            return Reply(200, data)
        start, end = int(m.group(1)), min(int(m.group(2) or len(data) - 1), len(data) - 1)
        if start >= len(data):
            return Reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        return Reply(206, data[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{len(data)}"})


def test_long_journal_tail_is_stored_in_batches(cli: Any, node: Callable[[str], Node], signer: GpgHome) -> None:
    """A follower more than 64 records behind, without a pack to read, fetches the signatures concurrently and
    stores them in batches (one flush and one journal write each; before: one append with ~4 fsyncs per record,
    ~95 signatures/s). The cursor rules hold: a transient failure (503) on record 150 stores the 149 before it,
    leaves the cursor right after record 149 and fails the pass; the next pass completes, fetching each missing
    signature once."""
    a, b = node("a"), node("b")
    fill(a.sigstore, signer, signer.fingerprint, 300)
    lines = journal_lines(a.sigstore)
    with FlakyStatic(a.sigstore, lines[149].split(" ")[2]) as peer:
        b.configure([peer.url])
        code, _ = sync_once(cli, b)
        assert code != 0
        st = b.state()["sources"][peer.url]
        head = Journal(a.sigstore).path.read_bytes().split(b"\n", 1)[0]
        assert st["seq"] == 149 and st["offset"] == len(head) + 1 + sum(len(x) + 1 for x in lines[:149])
        assert sum(1 for _ in b.sigstore.glob("ns/*/signature-1")) == 149
        peer.broken = False
        code, logs = sync_once(cli, b)
        assert code == 0
        assert contents(b.sigstore) == contents(a.sigstore)
        synced = [r for r in logs if r["msg"] == "synced"]
        assert synced and all("created" in r for r in synced), synced[:3]  # a line per batch, not per signature
        assert sum(r["created"] for r in synced) == 151
        gets = collections.Counter(h.path.lstrip("/") for h in peer.hits if "/signature-" in h.path)
        # Each signature stored by the first pass was fetched once. Those after the refused one were fetched at
        # most once per pass: the first pass's fetch threads may have got some of them before it failed (how
        # many depends on timing: the whole batch is queued on the fetch threads), the second fetched the rest.
        first_pass = {x.split(" ")[2] for x in lines[:149]}
        assert set(gets) == {x.split(" ")[2] for x in lines}
        assert all(gets[p] == 1 for p in first_pass)
        assert all(n <= 2 for p, n in gets.items() if p != lines[149].split(" ")[2])
    mine = journal_lines(b.sigstore)
    assert len(mine) == 300 and len({x.split(" ")[3] for x in mine}) == 300
    st = b.state()["sources"][peer.url]
    assert st["offset"] == Journal(a.sigstore).path.stat().st_size and st["synced"] == 300


def test_forgery_in_a_batch_checked_by_the_worker(cli: Any, node: Callable[[str], Node], signer: GpgHome,
                                                  other_signer: GpgHome) -> None:
    """The second batch is checked in the worker process while the first is stored (issue 15 item 4): a consistent
    forgery in it (another key, line sha256 and trailer recomputed) is refused, quarantined and counted exactly as
    in process; every other signature is stored and the cursor ends at the journal's end."""
    a = node("a")
    fill(a.sigstore, signer, signer.fingerprint, 1300)
    pack = pack_path(a.sigstore)
    write_pack(a.sigstore)
    target: dict[str, str] = {}

    def forge(blob: bytes) -> tuple[bytes, bytes]:
        j = journal_lines(a.sigstore)[700].encode()
        seq, op, rel, _sha = j.split(b" ")
        digest = "sha256:" + rel.decode().split("@sha256=")[1].split("/")[0]
        forged = other_signer.sign_image("example.com/ns/r0:v700", digest)
        target["rel"] = rel.decode()
        return b" ".join([seq, op, rel, hashlib.sha256(forged).hexdigest().encode()]), forged
    _tamper(pack, 700, forge)  # record 701: in the second batch of 512
    _retrailer(pack)
    with nginx(a.sigstore, a.dir / "nginx") as (url, log):
        b = node("b")
        b.configure([url], quarantine=str(b.dir / "quarantine"))
        code, logs = sync_once(cli, b)
        assert code == 0
        assert [r for r in logs if r["msg"] == "check worker started"], "the worker was not used"
        assert not [r for r in logs if r["msg"].startswith("check worker failed")]
        st = b.state()["sources"][url]
        assert st["rejected"] == {"untrusted-key": 1} and st["synced"] == 1299, st
        assert st["offset"] == Journal(a.sigstore).path.stat().st_size and st["pack_offset"] == 0
        missing = target["rel"].rsplit("/", 1)[0]
        want = {k: v for k, v in contents(a.sigstore).items() if k != missing}
        assert contents(b.sigstore) == want and len(want) == 1299
        assert len(list((b.dir / "quarantine").glob("*.sig"))) == 1
        assert pack_requests(log) == 1 and not [x for x in log.read_text().splitlines() if "/signature-" in x]


def test_worker_killed_mid_pack_falls_back(node: Callable[[str], Node], signer: GpgHome) -> None:
    """kill -9 of the check worker mid-pack: the batches it had not answered are checked in the syncing process
    (one warning), and the store, journal and cursor end exactly as without a worker."""
    a, b = node("a"), node("b")
    total = 3000
    fill(a.sigstore, signer, signer.fingerprint, total)
    write_pack(a.sigstore)
    with nginx(a.sigstore, b.dir / "nginx") as (url, _log):
        b.configure([url])
        out = b.dir / "sync.log"
        with out.open("wb") as fh:
            proc = subprocess.Popen([*ATOMICSIG, "sync", "--once", "--config", str(b.config)],
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            pid = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None and pid is None:
                for line in out.read_text().splitlines():
                    if '"check worker started"' in line:
                        pid = json.loads(line)["pid"]
                time.sleep(0.02)
            assert pid is not None, out.read_text()[-2000:]
            os.kill(pid, signal.SIGKILL)
            assert proc.wait(timeout=120) == 0
        finally:
            kill_group(proc)
        logs = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
        assert len([r for r in logs if r["msg"].startswith("check worker failed")]) == 1
        assert sum(1 for _ in b.sigstore.glob("ns/*/signature-1")) == total
        assert contents(b.sigstore) == contents(a.sigstore)
        lines = journal_lines(b.sigstore)
        assert len(lines) == total and len({x.split(" ")[3] for x in lines}) == total
        st = b.state()["sources"][url]
        assert st["synced"] == total and st["rejected"] == {} and st["pack_offset"] == 0
        assert st["offset"] == Journal(a.sigstore).path.stat().st_size


def _second_signatures(root: Path, signer: GpgHome, records: list[str]) -> None:
    """A second signature in the digest directory of each journal record in ``records``, journaled in that order
    (so the pack has a directory's ``signature-2`` a whole batch after its ``signature-1``)."""
    from atomicsig.store.directory import DirectoryStore

    s = memory_signer(Keyring(str(signer.path)), signer.fingerprint, None)
    store = DirectoryStore(root)
    for rec in records:
        repo, hexd = rec.split(" ")[2].rsplit("/", 1)[0].split("@sha256=")
        store.append_path(repo, "sha256:" + hexd, s.sign(payload.build(f"example.com/{repo}:second", "sha256:" + hexd)))


def test_directories_split_across_batches(cli: Any, node: Callable[[str], Node], signer: GpgHome) -> None:
    """Batch k+1 is linked while batch k is flushed and journaled in a thread (atomicsig.sync.packsync._Pipe);
    here every directory of the third batch already got a signature in the second, still locked by the second's
    commit when the third is linked. The third waits for that commit: no deadlock, every file where it belongs,
    each journaled once and in order."""
    a = node("a")
    fill(a.sigstore, signer, signer.fingerprint, 1024)  # batches 1 and 2
    lines = journal_lines(a.sigstore)
    _second_signatures(a.sigstore, signer, lines[512:1024] + lines[:100])  # batch 3 = batch 2's directories
    write_pack(a.sigstore)
    total = 1024 + 512 + 100
    with nginx(a.sigstore, a.dir / "nginx") as (url, _log):
        b = node("b")
        b.configure([url])
        code, logs = sync_once(cli, b)
        assert code == 0
        assert contents(b.sigstore) == contents(a.sigstore)
        mine = journal_lines(b.sigstore)
        assert len(mine) == total and len({x.split(" ")[3] for x in mine}) == total
        assert [x.split(" ", 1)[1] for x in mine] == [x.split(" ", 1)[1] for x in journal_lines(a.sigstore)]
        st = b.state()["sources"][url]
        assert st["synced"] == total and st["offset"] == Journal(a.sigstore).path.stat().st_size
        assert sum(r.get("created", 0) for r in logs if r["msg"] == "synced") == total


def test_failed_commit_in_the_pipe_keeps_the_cursor_and_loses_nothing(cli: Any, node: Callable[[str], Node],
                                                                      signer: GpgHome,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The second batch's flush fails in the committer thread while the third batch is already linked: the pass
    fails (exit 3, the error named), the cursor stays after the first batch (the only one journaled), the
    third batch is given up with its pending record, and the next pass ends with every signature stored and
    journaled exactly once."""
    from atomicsig import fsutil
    from atomicsig.errors import StorageError

    a, b = node("a"), node("b")
    total = 2000  # batches of 512: three full ones and the rest
    fill(a.sigstore, signer, signer.fingerprint, total)
    write_pack(a.sigstore)
    real = fsutil.sync_filesystem
    calls: list[str] = []

    def failing(path: Any) -> None:
        import threading
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise StorageError("injected: cannot flush the filesystem")
        real(path)

    with nginx(a.sigstore, b.dir / "nginx") as (url, _log):
        b.configure([url])
        monkeypatch.setattr(fsutil, "sync_filesystem", failing)
        code, logs = sync_once(cli, b)
        assert code == 3 and len(calls) == 2 and calls[1].startswith("atomicsig-commit"), (code, calls)
        assert any("injected" in json.dumps(r) for r in logs), logs[-3:]
        st = b.state()["sources"][url]
        head = Journal(a.sigstore).path.read_bytes().split(b"\n", 1)[0]
        up = journal_lines(a.sigstore)
        assert st["seq"] == 512 and st["offset"] == len(head) + 1 + sum(len(x) + 1 for x in up[:512])
        assert len(journal_lines(b.sigstore)) == 512
        linked = sum(1 for _ in b.sigstore.glob("ns/*/signature-1"))
        assert 3 * 512 >= linked > 2 * 512, linked  # the third batch was linked before the error reached it
        contents(b.sigstore)  # no gap, no partial file
        monkeypatch.setattr(fsutil, "sync_filesystem", real)
        assert sync_once(cli, b)[0] == 0
        assert contents(b.sigstore) == contents(a.sigstore)
        mine = journal_lines(b.sigstore)
        assert len(mine) == total and len({x.split(" ")[3] for x in mine}) == total
        st = b.state()["sources"][url]
        assert st["offset"] == Journal(a.sigstore).path.stat().st_size and st["pack_offset"] == 0
        # no record left for a reconciler: this (in-process) run's own idle slots are blank until its exit
        assert unlocked_slots(b.sigstore) == []
        assert all(not p.read_bytes().strip() for p in (b.sigstore / ".atomicsig" / "pending").iterdir())
