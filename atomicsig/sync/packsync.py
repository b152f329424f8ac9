"""The bulk first sync: a follower with an empty cursor reads the peer's pack (atomicsig.store.pack) in one
streaming request instead of one GET per signature, then continues with the journal tail (docs/sync.md).

Same rules as the record-by-record path (atomicsig.sync.follower), batched:

* every inlined blob passes the same trust check (:func:`atomicsig.ops.intake.check_blob`: size, format, a
  trusted key, strict payload, payload digest = path digest) and must have the sha256 its journal line names;
  rejects are counted by reason and quarantined, the rest of the batch is stored;
* a batch is stored with :meth:`Intake.store_checked` (one filesystem flush and one journal write per batch, not
  ~4 fsyncs per signature), and the cursor moves past the batch only after that: ``st.offset`` is never ahead of
  what is stored, even for an instant (the daemon may save the state of every source at any time). A ``kill -9``
  mid-pack resumes at the last saved batch; what the killed batch linked is deduplicated by content and its
  missing journal lines are added from the pending records (atomicsig.store.journal);
* the cursor is computed from the journal lines read, never taken from the pack's first line; a pack from another
  epoch is not used; when the pack is left (complete, cut short, malformed, or inconsistent), the live journal must
  end the last packed line at the cursor (one small Range request) — else the follower restarts at offset 0 in
  record mode, which content dedup makes safe. So a stale, truncated or tampered pack costs requests, never a
  gap or a wrong cursor;
* a pass cut by its pass-limit resumes the pack where it stopped (``Range`` + ``If-Range``), so a 100,000-signature
  first sync also works with the default limits;
* from the second full batch on, a batch's trust check runs in the sync process's worker
  (atomicsig.sync.checkworker) while the batch before it is stored (:class:`_Pipe`): at most one batch is checked
  ahead, and it is stored, and the cursor moved past it, only after the one before — in journal order, each with
  its own verdicts. A stored batch's flush and journal write run in a committer thread while the next batch is
  linked; the cursor moves past a batch only once its commit is done. A ``del`` record, a sequence break, a pass
  limit or an error first stores and commits what is pending.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import InputError
from atomicsig.format.sigpath import SigPath
from atomicsig.ops.intake import Outcome, StagedIntake, check_blob
from atomicsig.store.journal import HEADER_LEN, JournalError, parse_header, parse_line, sha256_hex
from atomicsig.store.pack import PackEntry, PackError, PackReader
from atomicsig.sync.checkworker import CheckWorker
from atomicsig.sync.source import Gone, TooLarge

#: The follower (atomicsig.sync.follower.Follower) and its PassReport. Not imported, not even for type checking:
#: the follower imports this module, and tests/test_layers.py counts every import towards a cycle.
Follower = Any
PassReport = Any

log = logging.getLogger("atomicsig.sync")
#: Records per stored batch: one filesystem flush, one journal write and one cursor save each.
BATCH = 512


class _Leave(Exception):
    """Stop reading the pack; the journal continues from the cursor (after the alignment check)."""


def wanted(f: Follower) -> bool:
    """Fresh cursor (never synced from this source), or a pack cut by an earlier pass's limit."""
    st = f.st
    return (st.offset == 0 and st.epoch is None) or (st.pack_offset > 0 and st.epoch is not None)


def run(f: Follower, rep: PassReport) -> None:
    """Read the pack as far as this pass may; on return the cursor is consistent and record mode may go on."""
    st = f.st
    resume = st.pack_offset > 0 and st.epoch is not None
    live_epoch = parse_header(f.source.header())
    if resume and live_epoch != st.epoch:
        st.pack_offset, st.pack_etag = 0, None  # record mode sees the new epoch and restarts
        return
    with f.source.pack(st.pack_offset if resume else 0, st.pack_etag if resume else None) as stream:
        if stream is None:
            log.info("no pack offered; syncing record by record", extra={"fields": {"source": f.url}})
            st.pack_offset, st.pack_etag = 0, None
            return
        if resume and stream.start == 0:
            log.info("pack replaced since the last pass; continuing record by record",
                     extra={"fields": {"source": f.url}})
            st.pack_offset, st.pack_etag = 0, None
            return
        reader = PackReader(st.offset if resume else None)
        pipe = _Pipe(f, rep)
        batch: list[PackEntry] = []
        last = [b""]  # the journal line just before the cursor, as handled (for the alignment check)
        started = resume
        try:
            try:
                for chunk in stream.chunks:
                    reader.feed(chunk)
                    if not started:
                        head = reader.head()
                        if head is None:
                            continue
                        if head.epoch != live_epoch:
                            log.info("pack is from another journal epoch; syncing record by record",
                                     extra={"fields": {"source": f.url, "pack_epoch": head.epoch}})
                            return
                        st.epoch, st.seq, st.offset, st.etag = head.epoch, 0, HEADER_LEN, None
                        st.pack_etag = stream.etag
                        started = True
                    for entry in reader.entries():
                        batch.append(entry)
                        if len(batch) >= BATCH:
                            todo, batch = batch, []
                            _flush(f, rep, todo, stream.start, last, pipe=pipe, defer=True)
                            if f.should_stop():
                                return  # pack_offset is saved: the next pass resumes the pack here
                todo, batch = batch, []
                _flush(f, rep, todo, stream.start, last, pipe=pipe)
                if not reader.complete:
                    f._reject(rep, "pack", "pack ended before its trailer (truncated); continuing record by "
                              "record", f.source.pack_url)
            except (PackError, JournalError, _Leave) as exc:
                _flush(f, rep, batch, stream.start, last, pipe=pipe)  # what was parsed before
                if not isinstance(exc, _Leave):
                    f._reject(rep, "pack", f"{exc}; continuing record by record", f.source.pack_url)
        finally:
            pipe.close()  # stop, error, or end of the pack: the cursor never stays behind a checked batch
        st.pack_offset, st.pack_etag = 0, None
        if started:
            _check_aligned(f, rep, last[0])
        f.save()


def _flush(f: Follower, rep: PassReport, batch: list[PackEntry], start: int, memo: list[bytes], *,
           refetch: bool = False, pipe: _Pipe | None = None, defer: bool = False) -> None:
    """Handle ``batch`` in journal order; ``memo[0]`` becomes the journal line just before the cursor. Raises
    _Leave (after storing everything before it) when the pack's sequence breaks. ``refetch``: an entry without
    bytes is fetched on its own (the journal tail's batches, :func:`run_tail`, whose concurrent GET of it was
    refused: the single GET reports why, as record mode would) instead of counted as not in the pack.
    ``pipe``: the batch checked ahead, if any, is stored before anything of this one; ``defer`` (a full batch with
    more to come): this one may become the batch checked ahead, stored by the next call or ``pipe.drain()``."""
    st = f.st
    todo: list[tuple[SigPath, bytes, str]] = []
    offset, seq, pack_end, last = pipe.head(memo) if pipe is not None else \
        (st.offset, st.seq, st.pack_offset, memo[0])

    def store() -> None:
        nonlocal todo
        if pipe is not None:
            pipe.drain()
        _store(f, rep, todo)
        todo = []
        st.offset, st.seq, st.pack_offset = offset, seq, pack_end
        memo[0] = last

    try:
        for e in batch:
            try:
                rec = parse_line(e.line, e.end)
            except (JournalError, InputError) as exc:
                f._reject(rep, "journal-line" if isinstance(exc, JournalError) else "path", exc.message,
                          e.line[:200].decode("ascii", "replace"))
                offset, seq, pack_end, last = e.end, 0, start + e.pack_end, e.line
                continue
            if seq and rec.seq != seq + 1:
                raise _Leave(f"sequence jump {seq} -> {rec.seq} in the pack")
            rep.new_records += 1
            f.on_progress()
            if rec.op == "del":
                store()
                rep.new_records -= 1  # _handle_line counts it
                f._handle_line(e.line, e.end, rep)
                offset, seq, pack_end, last = st.offset, st.seq, start + e.pack_end, e.line
                st.pack_offset, memo[0] = pack_end, last
                continue
            sha = rec.sha256
            if f._have(rec.path, sha):
                f.intake.also_delivered(rec.path, sha, f.url)
                if f._recovering:
                    f._journal_if_missing(rec.path, sha)
                rep.duplicates += 1
                st.duplicates += 1
            elif e.blob is None and refetch:
                blob = _fetch_one(f, rep, rec.path, sha)
                if blob is not None:
                    todo.append((rec.path, blob, sha))
            elif e.blob is None:
                f._reject(rep, "gone", "not in the pack (pruned or renumbered on the peer since)", str(rec.path))
            elif sha256_hex(e.blob) != sha:
                # Damaged in the pack (or on the way): counted, and this one signature is fetched on its own,
                # so a corrupt pack costs one request, not a signature.
                f._reject(rep, "content-changed", "pack bytes differ from the journal's sha256; fetching the file",
                          str(rec.path))
                blob = _fetch_one(f, rep, rec.path, sha)
                if blob is not None:
                    todo.append((rec.path, blob, sha))
            else:
                todo.append((rec.path, e.blob, sha))
            offset, seq, pack_end, last = e.end, rec.seq, start + e.pack_end, e.line
    except BaseException:
        store()  # everything before the failing record, in order (the cursor rules)
        raise
    if defer and pipe is not None and pipe.defer(todo, (offset, seq, pack_end, last), memo):
        return
    store()
    if batch:
        f.save()


@dataclass
class _Checked:
    """A batch whose check was started ahead: the cursor it moves to once stored."""
    todo: list[tuple[SigPath, bytes, str]]
    verdicts: Future[list[Outcome | None]] | None  # None: checked in process when stored
    cursor: tuple[int, int, int, bytes]  # offset, seq, pack_offset, the journal line before the cursor
    memo: list[bytes]


@dataclass
class _Committing:
    """A batch linked and being flushed and journaled in the pipe's committer thread: counted, and the cursor
    moved past it, only once that is done (:meth:`_Pipe.settle`)."""
    staged: StagedIntake
    done: Future[None]
    span: tuple[str, str]  # first and last path, for the log line
    cursor: tuple[int, int, int, bytes]
    memo: list[bytes]


class _Pipe:
    """Three stages over consecutive full batches: while the check worker (atomicsig.sync.checkworker) checks
    batch k+1 and a committer thread flushes and journals batch k-1 (:meth:`StagedIntake.commit`: one
    ``syncfs`` each; 9.9 s of a 69 s first sync in line), this process links batch k. The cursor moves
    only in :meth:`settle`, after a batch is committed, in order.

    The first full batch is not sent to the worker (it is checked in process when stored); the second starts the
    worker, whose start-up then overlaps the first batch's check and store. So a pack of less than two full
    batches (the one-new-signature case) never starts a process.

    A batch is linked while the one before it may still hold its directories' locks. A batch that shares a
    digest directory with it (a directory's signatures split by the batch boundary) waits for that commit
    before it takes any lock, rather than blocking on the shared one with others already taken; so does every
    batch while the store has no journal (the first commit rebuilds it from a scan that must not see the next
    batch). At most one batch commits at a time, so journal lines stay in batch order."""

    def __init__(self, f: Follower, rep: PassReport) -> None:
        self.f, self.rep = f, rep
        self.worker: CheckWorker | None = getattr(f, "checker", None)
        self.pending: _Checked | None = None
        self.committing: _Committing | None = None
        self.full = 0
        self._committer: ThreadPoolExecutor | None = None

    def head(self, memo: list[bytes]) -> tuple[int, int, int, bytes]:
        """Where the next batch starts: after the pending or committing one, or at the cursor."""
        if self.pending is not None:
            return self.pending.cursor
        if self.committing is not None:
            return self.committing.cursor
        st = self.f.st
        return st.offset, st.seq, st.pack_offset, memo[0]

    def defer(self, todo: list[tuple[SigPath, bytes, str]], cursor: tuple[int, int, int, bytes],
              memo: list[bytes]) -> bool:
        """Make this batch the pending one (its check started in the worker) and store the one before it. False if
        there is no worker to use: the caller stores the batch now, as without a pipe."""
        if self.worker is None or not self.worker.usable:
            return False
        self.full += 1
        fut = self.worker.submit([(p, b) for p, b, _ in todo]) if todo and self.full >= 2 else None
        ahead = _Checked(todo, fut, cursor, memo)
        try:
            self._advance()
        except BaseException:
            if fut is not None:
                fut.cancel()
            raise
        self.pending = ahead
        return True

    def drain(self) -> None:
        """Store the pending batch and wait until everything is committed: the cursor is then current."""
        try:
            self._advance()
        finally:
            self.settle()

    def close(self) -> None:
        """:meth:`drain`, then stop the committer thread."""
        try:
            self.drain()
        finally:
            if self._committer is not None:
                self._committer.shutdown(wait=True)
                self._committer = None

    def settle(self) -> None:
        """Wait for the batch being committed, count it and move the cursor past it (raises its error)."""
        c, self.committing = self.committing, None
        if c is None:
            return
        c.done.result()
        self._stored(c.staged, c.span, c.cursor, c.memo)

    def _stored(self, staged: StagedIntake | None, span: tuple[str, str], cursor: tuple[int, int, int, bytes],
                memo: list[bytes]) -> None:
        if staged is not None:
            _finish(self.f, self.rep, staged, *span)
        st = self.f.st
        st.offset, st.seq, st.pack_offset = cursor[:3]
        memo[0] = cursor[3]
        self.f.save()

    def _advance(self) -> None:
        """Link the pending batch with its verdicts (the worker's, else checked here) and start its commit;
        the batch committing before it is settled first."""
        p, self.pending = self.pending, None
        if p is None:
            return
        verdicts: list[Outcome | None] | None = None
        if p.verdicts is not None:
            try:
                verdicts = p.verdicts.result()
            except Exception as exc:  # died (BrokenProcessPool), cancelled, or its answer could not come back
                assert self.worker is not None
                self.worker.failed(exc)
        c = self.committing
        if c is not None and (not c.staged.journaled or not c.staged.dirs.isdisjoint(x.dirname for x, _, _ in p.todo)):
            self.settle()
        try:
            staged = _stage(self.f, self.rep, p.todo, verdicts)
        except BaseException:
            self.settle()  # the batch before this one is stored: the cursor moves past it before the error
            raise
        try:
            self.settle()
        except BaseException:
            if staged is not None:
                staged.abort()
            raise
        if staged is None:  # nothing to link (refused, or already stored): only the cursor moves
            self._stored(None, ("", ""), p.cursor, p.memo)
            return
        span = (str(p.todo[0][0]), str(p.todo[-1][0]))
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="atomicsig-commit")
        self.committing = _Committing(staged, self._committer.submit(staged.commit), span, p.cursor, p.memo)


#: A journal chunk with more records than this is stored in batches (:func:`run_tail`); fewer go record by record,
#: so the one-new-signature case stays one GET and one append.
TAIL_BATCH_MIN = 64


def run_tail(f: Follower, rep: PassReport, lines: list[tuple[bytes, int]]) -> int:
    """Catch up on a long journal tail (``lines``: complete records from the cursor on) the way the pack is
    read: the signatures of up to BATCH records are fetched concurrently (the follower's fetch pool), checked,
    and stored with one flush and one journal write (:meth:`Intake.store_checked`), and the cursor moves past a
    batch only after it is stored. Record by record, each signature cost a GET round trip and ~4 fsyncs (~95
    signatures/s). A transient fetch failure stores what precedes the failing record, then fails the pass
    before it (the follower's cursor rules); a sequence jump restarts the journal. Returns records handled.
    Full batches are checked ahead in the worker like the pack's (:class:`_Pipe`); all is stored on return."""
    handled = 0
    pipe = _Pipe(f, rep)
    try:
        for at in range(0, len(lines), BATCH):
            if f.should_stop():
                break
            part = lines[at:at + BATCH]
            entries, failure = _fetch_all(f, part)
            more = failure is None and len(part) == BATCH and at + BATCH < len(lines)
            try:
                _flush(f, rep, entries, 0, [b""], refetch=True, pipe=pipe, defer=more)
            except _Leave as exc:
                f._restart(rep, str(exc))
                return handled
            handled += len(entries)
            if failure is not None:
                raise failure
    finally:
        pipe.close()
    return handled


def _fetch_all(f: Follower, part: list[tuple[bytes, int]]) -> tuple[list[PackEntry], BaseException | None]:
    """The entries of ``part`` with the bytes of each ``add`` not already stored, fetched concurrently; cut
    before the first record whose GET failed for a reason other than 404 or size (returned, to raise after the
    records before it are stored). A refused GET leaves the entry without bytes (fetched alone, :func:`_flush`)."""
    pool = f._pool
    ahead: dict[str, Any] = {}
    keys: list[str | None] = []
    for line, end in part:
        try:
            rec = parse_line(line, end)
        except (JournalError, InputError):
            keys.append(None)
            continue
        key = f"{rec.path} {rec.sha256}"
        if rec.op != "add" or f._have(rec.path, rec.sha256):
            keys.append(None)
            continue
        if key not in ahead:
            ahead[key] = f._ahead.pop(key, None) or (pool.submit(f.source.signature, str(rec.path))
                                                     if pool is not None else None)
        keys.append(key)
    entries: list[PackEntry] = []
    failure: BaseException | None = None
    for (line, end), want in zip(part, keys, strict=True):
        blob: bytes | None = None
        fut = ahead.get(want) if want is not None else None
        if want is not None:
            try:
                blob = fut.result() if fut is not None else f.source.signature(want.split(" ")[0])
            except (Gone, TooLarge):
                blob = None
            except Exception as exc:  # transient (network, 5xx): stop before this record
                failure = exc
                break
        entries.append(PackEntry(line, end, blob, 0))
    if failure is not None:
        for fut in ahead.values():
            if fut is not None:
                fut.cancel()
    return entries, failure


def _fetch_one(f: Follower, rep: PassReport, path: SigPath, sha: str) -> bytes | None:
    """GET one signature as record mode does (atomicsig.sync.follower); None if refused (counted)."""
    try:
        blob = f.source.signature(str(path))
    except Gone:
        f._reject(rep, "gone", "404 (pruned or renumbered on the peer since)", str(path))
        return None
    except TooLarge as exc:
        f._reject(rep, "too-large", exc.message, str(path))
        return None
    if sha256_hex(blob) != sha:
        f._reject(rep, "content-changed", "bytes differ from the journal's sha256", str(path))
        return None
    return blob


def _store(f: Follower, rep: PassReport, todo: list[tuple[SigPath, bytes, str]],
           verdicts: list[Outcome | None] | None = None) -> None:
    """Check and store one batch (``verdicts``: its check_blob results, from the worker; else checked here),
    flushed and journaled before this returns."""
    staged = _stage(f, rep, todo, verdicts)
    if staged is not None:
        staged.commit()
        _finish(f, rep, staged, str(todo[0][0]), str(todo[-1][0]))


def _stage(f: Follower, rep: PassReport, todo: list[tuple[SigPath, bytes, str]],
           verdicts: list[Outcome | None] | None = None) -> StagedIntake | None:
    """Check one batch (``verdicts``: its check_blob results, from the worker; else checked here), quarantine
    and count what is refused, and link the rest (:meth:`Intake.stage_checked`); None if nothing is left to
    store. Not durable, not journaled and not counted until committed and :func:`_finish` ed."""
    if not todo:
        return None
    checks = verdicts if verdicts is not None and len(verdicts) == len(todo) else \
        [check_blob(f.intake.verifier, p, b) for p, b, _ in todo]
    ok = [(p, b) for (p, b, _), c in zip(todo, checks, strict=True) if c is None]
    for (p, b, _), c in zip(todo, checks, strict=True):
        if c is not None:
            f.intake.reject(p, b, f.url, c)
            f._reject(rep, c.reason, c.detail, str(p))
    return f.intake.stage_checked(ok, f.url) if ok else None


def _finish(f: Follower, rep: PassReport, staged: StagedIntake, first: str, last: str) -> None:
    """Count and log a committed batch: one ``synced`` line per batch at info level (a line per signature,
    100,000 for a first sync, only at debug level)."""
    created = duplicates = 0
    debug = log.isEnabledFor(logging.DEBUG)
    for p, out in zip(staged.paths, staged.outcomes(), strict=True):
        if out.status == "rejected":
            f._reject(rep, out.reason, out.detail, str(p))
        elif out.status == "created":
            created += 1
            if debug:
                log.debug("synced", extra={"fields": {"source": f.url, "path": str(p), "stored": out.location}})
        else:
            duplicates += 1
    rep.created += created
    f.st.synced += created
    rep.duplicates += duplicates
    f.st.duplicates += duplicates
    if created or duplicates:
        log.info("synced", extra={"fields": {"source": f.url, "created": created, "duplicates": duplicates,
                                             "first": first, "last": last}})


def _check_aligned(f: Follower, rep: PassReport, last_line: bytes) -> None:
    """The live journal must hold ``last_line`` right before the cursor: else the pack was not this journal's
    prefix (tampered, or built from another store) and its cursor means nothing — restart in record mode."""
    st = f.st
    if not last_line or st.offset <= HEADER_LEN:
        return
    line = last_line + b"\n"
    seen = f.source.journal_bytes(st.offset - len(line), st.offset)
    if seen != line:
        log.warning("pack does not match the journal; restarting record by record",
                    extra={"fields": {"source": f.url, "offset": st.offset}})
        f._restart(rep, "pack does not match the journal")
