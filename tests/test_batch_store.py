"""The batch writer's cheaper bookkeeping (issue 15 item 4, "first sync under 60 s"): one pending record per
batch, origin records written once per new directory, signatures written unnamed (``O_TMPFILE``) and linked —
and still nothing lost after a ``kill -9`` (the dead batch's record lets the next writer journal every linked
file). Crashes are real: the child SIGKILLs itself (tests/test_recovery.py's crash_child)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from atomicsig.format.sigpath import digest_dirname
from atomicsig.store import directory, origin
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import PENDING_NAME, Journal, _parse_pending
from atomicsig.store.sigdir import append_to_dir, read_dir
from tests.test_recovery import D1, REPO, crash_child, journal_adds, seeded_store, sha, unlocked_slots

D3 = "sha256:" + "3" * 64
D4 = "sha256:" + "4" * 64
PEER = "https://peer.example"


def batch_items() -> list[tuple[str, str, bytes]]:
    """Two new signatures in an existing directory, two in one new directory, one in another, one duplicate."""
    return [(REPO, D1, b"a1"), (REPO, D1, b"a2"), (REPO, D3, b"c1"), (REPO, D3, b"c2"), (REPO, D4, b"d1"),
            (REPO, D3, b"c1")]


def files_of(root: Path) -> set[tuple[str, str]]:
    out = set()
    for d in (root / digest_dirname(REPO, x) for x in (D1, D3, D4)):
        out |= {(f"{d.relative_to(root)}/signature-{s.index}", sha(s.blob)) for s in read_dir(d)}
    return out


def test_killed_batch_leaves_one_record_and_next_writer_journals_every_linked_file(tmp_path: Path) -> None:
    """The state a kill between the links and the journal write leaves, built deterministically: the child
    dies where the batch would write its journal lines. One record names the whole batch (before: one slot
    file per signature), and the next journal writer adds exactly the missing lines."""
    root, store = seeded_store(tmp_path)
    before = set(os.listdir(root / ".atomicsig" / PENDING_NAME))
    crash_child(root, f"""
        journal.Journal.commit_batch = lambda *a, **k: die()
        DirectoryStore(root).append_batch({batch_items()!r}, origin={PEER!r})
    """)
    linked = files_of(root)
    assert len(linked) == 1 + 5  # the seeded signature, and 5 distinct new ones
    assert len(journal_adds(root)) == 1  # none of the batch's lines
    new = sorted(set(os.listdir(root / ".atomicsig" / PENDING_NAME)) - before)
    assert len(new) == 1, new  # one record for the batch
    named = set(_parse_pending((root / ".atomicsig" / PENDING_NAME / new[0]).read_bytes()))
    assert {(rel.rsplit("/", 1)[0], h) for rel, h in linked if not rel.endswith(f"{D1[7:]}/signature-1")} <= named
    store.append_path(REPO, D1, b"later")  # any later journal writer reconciles first
    adds = journal_adds(root)
    assert len(adds) == len(set(adds)) == 7
    assert files_of(root) == set(adds)
    assert unlocked_slots(root) == []


def test_torn_batch_record_keeps_its_complete_lines(tmp_path: Path) -> None:
    """A kill while a big record is written leaves complete lines, then a torn one, then the blank padding.
    Nothing of that batch was linked yet, but the reader must not discard the complete lines of a record that
    has more than one line (before: any record with more than one line was dropped as malformed)."""
    root, store = seeded_store(tmp_path)
    d3, d4 = digest_dirname(REPO, D3), digest_dirname(REPO, D4)
    for d, blob in ((d3, b"x3"), (d4, b"x4")):
        (root / d).mkdir(parents=True)
        append_to_dir(root / d, blob)  # linked, never journaled: what a dead batch writer leaves
    record = f"{d3} {sha(b'x3')}\n{d4} {sha(b'x4')}\n{d3} {sha(b'x')[:20]}".encode().ljust(2048, b" ")
    assert _parse_pending(record) == [(d3, sha(b"x3")), (d4, sha(b"x4"))]
    (root / ".atomicsig" / PENDING_NAME / "1-1-deadbeef0000").write_bytes(record)
    assert store.recover() == 2
    assert {(f"{d3}/signature-1", sha(b"x3")), (f"{d4}/signature-1", sha(b"x4"))} <= set(journal_adds(root))
    assert unlocked_slots(root) == []


@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "temp-and-link"])
def test_batch_modes_origins_and_no_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              unnamed: bool) -> None:
    """Files 0644 and directories 0755 whatever the umask (nginx and podman read them as other users), the
    origin record of a new directory lists every signature the batch put there, an existing directory's record
    gets all of its new ones, and no temp file is left — with O_TMPFILE and with the named-temp fallback."""
    root, store = seeded_store(tmp_path)
    store.append_path(REPO, D1, b"a0", origin=PEER)
    if not unnamed:
        monkeypatch.setattr(directory, "_tmpfile_ok", False)
    old = os.umask(0o077)
    try:
        res = store.append_batch(batch_items(), origin=PEER)
    finally:
        os.umask(old)
    assert [getattr(r, "created", None) for r in res] == [True, True, True, True, True, False]
    assert (res[5].location, res[5].index) == (res[2].location, res[2].index)  # type: ignore[union-attr]
    for path in (root / REPO).rglob("*"):
        want = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == want, path
        assert not path.name.startswith(".tmp"), path
    for digest, blobs in ((D1, [b"a0", b"a1", b"a2"]), (D3, [b"c1", b"c2"]), (D4, [b"d1"])):
        dirname = digest_dirname(REPO, digest)
        assert origin.records(root, dirname) == {sha(b): [PEER] for b in blobs}
        # kept on the directory (atomicsig.store.origin), not in a file of its own
        assert json.loads(os.getxattr(root / dirname, origin.XATTR)) == {sha(b): [PEER] for b in blobs}
    assert not (root / ".atomicsig" / "origins").exists()
    assert files_of(root) == set(journal_adds(root))


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_batch_system_calls_per_signature(tmp_path: Path) -> None:
    """The cost that bounded a first sync of 100,000 signatures is system calls per stored signature (each
    openat ~64 µs in the kernel on the bench machine; docs/performance.md). Counted with strace for 300 new
    digest directories in one batch: was ~26 (4.5 openat, 3 fchmod, 2 pwrite64, 2 unlinkat, getpids, ...)."""
    root = tmp_path / "store"
    DirectoryStore(root).append_path(REPO, D1, b"seed", origin=PEER)
    n = 300
    body = textwrap.dedent(f"""
        from atomicsig.store.directory import DirectoryStore
        items = [("{REPO}", "sha256:%064x" % (i + 16), b"sig-%d" % i) for i in range({n})]
        DirectoryStore({str(root)!r}).append_batch(items[:1], origin="{PEER}")  # imports and first-use work
        import os
        os.write(2, b"--start--\\n")
        DirectoryStore({str(root)!r}).append_batch(items[1:], origin="{PEER}")
        os.write(2, b"--end--\\n")
    """)
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-o", str(trace), sys.executable, "-c", body], check=True,
                   env=os.environ, timeout=60, capture_output=True)
    text = trace.read_text()
    lines = text[text.index("--start--"):text.index("--end--")].splitlines()
    calls = [ln for ln in lines if "(" in ln and "resumed>" not in ln]
    per_sig = len(calls) / (n - 1)
    assert per_sig <= 13, f"{per_sig:.1f} system calls per signature"
    assert len(journal_adds(root)) == n + 1
    assert sum(1 for ln in calls if "getpid" in ln) < 10
    assert Journal(root).epoch() is not None


def test_staged_batch_commits_in_another_thread_in_order(tmp_path: Path) -> None:
    """The bulk first sync links batch k+1 while batch k is flushed and journaled in another thread
    (atomicsig.sync.packsync): a staged batch holds its directories' locks until its commit, a writer of one of
    them waits for that commit (no deadlock, no lost file), and the journal lists both batches in order."""
    import threading

    from atomicsig.store.sigdir import lock_dir

    root, store = seeded_store(tmp_path)
    first = store.stage_batch([(REPO, D3, b"c1"), (REPO, D3, b"c2")], origin=PEER)
    assert first.journaled and first.dirs == frozenset({digest_dirname(REPO, D3)})
    assert [getattr(r, "created", None) for r in first.results] == [True, True]
    assert len(journal_adds(root)) == 1  # linked, not yet journaled
    second = store.stage_batch([(REPO, D4, b"d1")], origin=PEER)  # other directories: no wait
    got: list[int] = []

    def writer() -> None:  # a writer of the first batch's directory must wait for its commit
        with lock_dir(root / digest_dirname(REPO, D3)):
            got.append(len(journal_adds(root)))

    t = threading.Thread(target=writer)
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got  # the directory is still locked by the staged batch
    committer = threading.Thread(target=first.commit)
    committer.start()
    committer.join(30)
    t.join(30)
    assert got == [3]  # the writer got the lock only once the first batch was journaled
    second.commit()
    adds = journal_adds(root)
    assert [p.rsplit("/", 2)[1][-4:] + "/" + p.rsplit("/", 1)[1] for p, _ in adds[1:]] == \
        ["3333/signature-1", "3333/signature-2", "4444/signature-1"]
    assert files_of(root) == set(adds) and unlocked_slots(root) == []
    # A store's first batch rebuilds the journal from a scan of the store, which would list a batch linked
    # meanwhile too: it says so, and the sync commits it before linking the next.
    fresh = DirectoryStore(tmp_path / "fresh").stage_batch([(REPO, D3, b"c1")], origin=PEER)
    assert not fresh.journaled
    fresh.commit()
    again = DirectoryStore(tmp_path / "fresh").stage_batch([(REPO, D4, b"d1")])
    assert again.journaled
    again.commit()


def test_aborted_staged_batch_loses_no_line(tmp_path: Path) -> None:
    """A staged batch given up (its predecessor's commit failed) keeps what it linked and leaves its pending
    record for the next journal writer, exactly as a kill would: nothing is lost, nothing journaled twice."""
    root, store = seeded_store(tmp_path)
    staged = store.stage_batch(batch_items(), origin=PEER)
    staged.abort()
    staged.abort()  # idempotent
    assert len(journal_adds(root)) == 1 and unlocked_slots(root)  # the record is there, its lock dropped
    store.append_path(REPO, D1, b"later")  # any later journal writer reconciles first
    adds = journal_adds(root)
    assert len(adds) == len(set(adds)) == 7 and files_of(root) == set(adds)
    assert unlocked_slots(root) == []
