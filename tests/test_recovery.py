"""Recovery after kills (issue #7): pending records finish lost journal lines, stale temp files are swept, racing
signers store one signature per (key, identity, digest).

Crashes are real: a child process does part of a write and SIGKILLs itself, so its flocks die exactly as they
would under ``kill -9``; the parent then checks what the next writer makes of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from atomicsig import fsutil
from atomicsig.format.reference import parse as parse_ref
from atomicsig.format.sigpath import digest_dirname
from atomicsig.store.base import StoredSignature
from atomicsig.store.directory import DirectoryStore
from atomicsig.store.journal import (
    HEADER_LEN,
    PENDING_NAME,
    PENDING_TORN_SECONDS,
    Journal,
    begin_pending,
    iter_lines,
    parse_line,
)
from atomicsig.store.sigdir import append_to_dir, read_dir
from tests.infra import GpgHome

REPO = "ns/app"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def journal_adds(root: Path) -> list[tuple[str, str]]:
    """(path, sha256) of every add record, in order; asserts consecutive seqs."""
    data = (root / ".atomicsig" / "journal").read_bytes()
    out, seq = [], 0
    for line, end in iter_lines(data[HEADER_LEN:], HEADER_LEN):
        rec = parse_line(line, end)
        assert rec.seq == seq + 1
        seq = rec.seq
        out.append((str(rec.path), rec.sha256))
    return out


def pending_files(root: Path) -> list[str]:
    d = root / ".atomicsig" / PENDING_NAME
    return sorted(os.listdir(d)) if d.is_dir() else []


def crash_child(root: Path, body: str) -> int:
    """Run ``body`` in a new Python process that then SIGKILLs itself; returns the child's pid."""
    prelude = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from atomicsig.store.directory import DirectoryStore
        from atomicsig.store.sigdir import append_to_dir
        from atomicsig.store import journal
        root = Path({str(root)!r})
        def die():
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(body) + "\ndie()\n"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    return proc.pid


def seeded_store(tmp_path: Path) -> tuple[Path, DirectoryStore]:
    """A store with a journal and one signature, so later appends take the append (not rebuild) path."""
    root = tmp_path / "store"
    store = DirectoryStore(root)
    store.append_path(REPO, D1, b"first")
    assert journal_adds(root) == [(f"{digest_dirname(REPO, D1)}/signature-1", sha(b"first"))]
    return root, store


# ---- pending records ---------------------------------------------------------------------------------------------


def test_kill_between_link_and_journal_line_is_finished_by_the_next_append(tmp_path: Path) -> None:
    root, store = seeded_store(tmp_path)
    dirname = digest_dirname(REPO, D1)
    crash_child(root, f"""
        d = root / {dirname!r}
        journal.begin_pending(root, {dirname!r}, {sha(b"orphan")!r})
        append_to_dir(d, b"orphan")   # linked as signature-2 ...
        die()                         # ... and killed before the journal line
    """)
    assert (root / dirname / "signature-2").read_bytes() == b"orphan"
    assert len(journal_adds(root)) == 1  # the line is missing: what followers would never see
    assert len(unlocked_slots(root)) == 1  # but the dead writer's record says so
    store.append_path(REPO, D2, b"next")  # any later journal writer reconciles first
    assert journal_adds(root) == [(f"{dirname}/signature-1", sha(b"first")),
                                  (f"{dirname}/signature-2", sha(b"orphan")),
                                  (f"{digest_dirname(REPO, D2)}/signature-1", sha(b"next"))]
    assert unlocked_slots(root) == []  # the dead writer's record is gone; only this process's own slot is left


def unlocked_slots(root: Path) -> list[str]:
    return [n for n in pending_files(root) if not _locked(root / ".atomicsig" / PENDING_NAME / n)]


def _locked(p: Path) -> bool:
    """Whether someone (this process's own slot pool, here) holds the slot's lock."""
    import fcntl

    fd = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.parametrize("how", ["recover", "index", "rebuild-on-first-append"])
def test_other_reconcilers(tmp_path: Path, how: str) -> None:
    """recover() (start of sign and of a follower pass), ``index``, and the first append to a store whose
    journal was removed all leave every file journaled and no dead record behind."""
    root, store = seeded_store(tmp_path)
    dirname = digest_dirname(REPO, D2)
    crash_child(root, f"""
        d = root / {dirname!r}
        d.mkdir(parents=True)
        journal.begin_pending(root, {dirname!r}, {sha(b"orphan")!r})
        append_to_dir(d, b"orphan")
    """)
    if how == "recover":
        assert store.recover() == 1
        assert store.recover() == 0  # idempotent
    elif how == "index":
        Journal(root).rebuild()
    else:
        (root / ".atomicsig" / "journal").unlink()
        store.append_path(REPO, D1, b"second")
    paths = {p for p, _ in journal_adds(root)}
    assert f"{dirname}/signature-1" in paths and f"{digest_dirname(REPO, D1)}/signature-1" in paths
    assert unlocked_slots(root) == []


def test_dead_record_without_a_link_and_idle_slots_are_just_removed(tmp_path: Path) -> None:
    root, store = seeded_store(tmp_path)
    dirname = digest_dirname(REPO, D2)
    crash_child(root, f"journal.begin_pending(root, {dirname!r}, {sha(b'never linked')!r})")
    crash_child(root, f"journal.begin_pending(root, {dirname!r}, {sha(b'x')!r}).done()")  # idle slot
    assert len(unlocked_slots(root)) == 2
    assert store.recover() == 0
    assert unlocked_slots(root) == []
    assert len(journal_adds(root)) == 1 and not (root / dirname).exists()


def test_killed_after_its_journal_line_is_not_journaled_twice(tmp_path: Path) -> None:
    root, store = seeded_store(tmp_path)
    crash_child(root, f"""
        journal.PendingRecord.done = lambda self: die()   # killed after the line, before blanking the record
        DirectoryStore(root).append_path({REPO!r}, {D2!r}, b"journaled")
    """)
    assert len(unlocked_slots(root)) == 1
    assert store.recover() == 0
    assert [p for p, _ in journal_adds(root)].count(f"{digest_dirname(REPO, D2)}/signature-1") == 1
    assert unlocked_slots(root) == []


def test_live_writers_records_are_left_alone(tmp_path: Path) -> None:
    root, store = seeded_store(tmp_path)
    dirname = digest_dirname(REPO, D2)
    (root / dirname).mkdir()
    rec = begin_pending(root, dirname, sha(b"in flight"))  # ours: alive and locked
    append_to_dir(root / dirname, b"in flight")
    store.recover()  # must not journal it: the owner will (a second line would be a harmless duplicate)
    slot = rec.path
    assert len(journal_adds(root)) == 1 and slot.read_bytes().startswith(dirname.encode())
    Journal(root).append([("add", f"{dirname}/signature-1", sha(b"in flight"))])
    rec.done()
    assert len(journal_adds(root)) == 2
    assert slot.read_bytes().strip() == b""  # blanked, kept (locked) for this process's next signature
    assert _locked(slot)


def test_empty_slot_is_kept_until_old(tmp_path: Path) -> None:
    """An empty slot is one being created (open before flock); only an old one is a dead creator's."""
    root, store = seeded_store(tmp_path)
    pending = root / ".atomicsig" / PENDING_NAME
    pending.mkdir(exist_ok=True)
    empty = pending / "4242-4242-abc"
    empty.write_bytes(b"")
    store.recover()
    assert empty.exists()
    old = empty.stat().st_mtime - PENDING_TORN_SECONDS - 5
    os.utime(empty, (old, old))
    store.recover()
    assert not empty.exists()


# ---- stale temp files ------------------------------------------------------------------------------------------


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not fsutil.pid_alive(p.pid)
    return p.pid


def aged(p: Path, seconds: float, data: bytes = b"x") -> Path:
    p.write_bytes(data)
    t = p.stat().st_mtime - seconds
    os.utime(p, (t, t))
    return p


def test_sweep_rules(tmp_path: Path) -> None:
    d = tmp_path / f"{REPO.replace('/', '_')}@sha256={'3' * 64}"
    d.mkdir()
    gone, me = dead_pid(), os.getpid()
    keep = [aged(d / f".tmp-{gone}-young", 10),  # dead writer, but maybe a container's live one: wait 60 s
            aged(d / f".tmp-{me}-working", 600),  # live pid (ours) and younger than an hour
            aged(d / ".tmp-legacy", 600),  # no pid: only the hour rule
            aged(d / "signature-1", 7200)]
    prune_dir = d / ".tmp-prune-dir"
    prune_dir.mkdir()
    drop = [aged(d / f".tmp-{gone}-old", fsutil.STALE_DEAD_PID_SECONDS + 5),
            aged(d / f".tmp-{me}-ancient", fsutil.STALE_ANY_SECONDS + 5),
            aged(d / ".tmp-legacy-ancient", fsutil.STALE_ANY_SECONDS + 5)]
    os.utime(prune_dir, (0, 0))
    assert fsutil.sweep_stale_temps(d) == len(drop)
    assert all(p.exists() for p in keep) and prune_dir.is_dir()
    assert not any(p.exists() for p in drop)


def test_writers_and_index_sweep(tmp_path: Path) -> None:
    root, store = seeded_store(tmp_path)
    d1 = root / digest_dirname(REPO, D1)
    gone = dead_pid()
    stale = aged(d1 / f".tmp-{gone}-abc", 120)
    store.append_path(REPO, D1, b"second")  # a writer listing the directory
    assert not stale.exists()
    stale = aged(d1 / f".tmp-{gone}-def", 120)
    meta_stale = aged(root / ".atomicsig" / f".tmp-{gone}-state", 120)
    Journal(root).rebuild()  # atomicsig index
    assert not stale.exists() and not meta_stale.exists()
    assert [s.blob for s in read_dir(d1)] == [b"first", b"second"]


def test_temp_names_carry_the_writers_pid(tmp_path: Path) -> None:
    """A writer killed before its cleanup leaves ``.tmp-<its pid>-…``, which the sweep can then attribute."""
    target = tmp_path / "policy.json"
    pid = crash_child(tmp_path, f"""
        from atomicsig import fsutil
        os.replace = lambda *a: die()
        fsutil.atomic_write({str(target)!r}, b"{{}}")
    """)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == 1 and left[0].startswith(f".tmp-{pid}-")
    os.utime(tmp_path / left[0], (0, 0))
    assert fsutil.sweep_stale_temps(tmp_path) == 1


# ---- racing signers ----------------------------------------------------------------------------------------------


def test_append_unless_is_atomic_across_writers(tmp_path: Path) -> None:
    """Eight writers each with their own (different) blob for the same identity: exactly one is stored.

    The re-check is slowed down on purpose so that, without the directory lock, every writer would see an
    empty directory and store its blob."""
    store = DirectoryStore(tmp_path / "store")
    ref = parse_ref(f"example.com/{REPO}:1")
    barrier = threading.Barrier(8)

    def present(sigs: list[StoredSignature]) -> str | None:
        threading.Event().wait(0.05)
        return sigs[0].location if sigs else None

    def one(i: int) -> bool:
        barrier.wait()
        return store.append_unless(ref, D1, f"blob {i}".encode(), present).created
    results: list[bool] = []
    threads = [threading.Thread(target=lambda i=i: results.append(one(i))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(read_dir(store.digest_dir(ref, D1))) == 1
    assert len(journal_adds(store.root)) == 1


@pytest.mark.slow
def test_racing_sign_processes_sign_each_identity_once(tmp_path: Path, signer: GpgHome) -> None:
    """Two real ``atomicsig sign`` runs with the same key over the same 40 identities."""
    store = tmp_path / "store"
    refs = tmp_path / "refs.txt"
    refs.write_text("".join(f"example.com/race/app{i % 3}:v{i}@sha256:{sha(str(i).encode())}\n" for i in range(40)))
    args = [sys.executable, "-m", "atomicsig", "sign", "--key", signer.fingerprint, "--gnupghome",
            str(signer.path), "--sigstore", str(store), "--from-file", str(refs), "--json"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        outs.append(json.loads(out)["summary"])
    assert sum(o["signed"] for o in outs) == 40 and sum(o["exists"] for o in outs) == 40
    sigs = list(store.rglob("signature-*"))
    assert len(sigs) == 40
    # Exactly one line per file, although the first append to a store without a journal rebuilds it by a scan
    # that can list the other signer's file just before that signer journals it (the epoch check in
    # Journal.commit_dir; before it, such a file got two lines).
    assert sorted(p for p, _ in journal_adds(store)) == sorted(str(p.relative_to(store)) for p in sigs)


def test_failed_journal_append_leaves_the_record_for_a_later_writer(tmp_path: Path) -> None:
    """The journal append fails after the link (here: a corrupt last line; in life: a full disk). The record is
    abandoned, not removed, so once the journal is writable again the next writer adds the missing line."""
    from atomicsig.errors import StorageError

    root, store = seeded_store(tmp_path)
    jpath = root / ".atomicsig" / "journal"
    good = jpath.read_bytes()
    jpath.write_bytes(good + b"garbage\n")
    with pytest.raises(StorageError, match="not recorded in the sync journal"):
        store.append_path(REPO, D2, b"stored, not journaled")
    assert (root / digest_dirname(REPO, D2) / "signature-1").exists()
    assert len(unlocked_slots(root)) == 1
    jpath.write_bytes(good)  # repaired (in life: space freed)
    assert store.recover() == 1
    assert journal_adds(root)[-1] == (f"{digest_dirname(REPO, D2)}/signature-1", sha(b"stored, not journaled"))
    assert unlocked_slots(root) == []


def test_writer_seen_alive_then_killed_is_reconciled_by_a_later_append(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Appends skip slots they recently found alive (QUICK_RECHECK_SECONDS); a writer that dies after such a
    check is picked up by the first append after the re-check interval (0 here, 1 s in life)."""
    from atomicsig.store import journal as journal_mod

    root, store = seeded_store(tmp_path)
    dirname = digest_dirname(REPO, D2)
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from atomicsig.store.sigdir import append_to_dir
        from atomicsig.store import journal
        root = Path({str(root)!r})
        (root / {dirname!r}).mkdir(parents=True)
        journal.begin_pending(root, {dirname!r}, {sha(b"late")!r})
        append_to_dir(root / {dirname!r}, b"late")
        print("linked", flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "linked\n"
        store.append_path(REPO, D1, b"while alive")  # sees the child's slot, locked: leaves it alone
        assert (f"{dirname}/signature-1", sha(b"late")) not in journal_adds(root)
    finally:
        child.kill()
        child.wait()
    monkeypatch.setattr(journal_mod, "QUICK_RECHECK_SECONDS", 0.0)
    store.append_path(REPO, D1, b"after the kill")
    assert (f"{dirname}/signature-1", sha(b"late")) in journal_adds(root)
    assert unlocked_slots(root) == []
