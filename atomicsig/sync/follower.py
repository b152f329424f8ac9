"""One pass over one source: read new journal records, fetch and check each new signature, store it.

Cursor rules (the "why" of the design in docs/sync.md):

* the cursor is (epoch, byte offset just after the last fully handled record, that record's seq); it only moves
  past a record once the record's signature is stored, rejected for good, or known to be gone;
* a transient failure (network, 5xx, disk) stops the pass *before* the failing record, so nothing is skipped;
  the record is retried next pass and content dedup makes the retry harmless;
* a different epoch (``atomicsig index`` on the peer) or a sequence jump restarts at 0 — again harmless.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import InputError, StorageError
from atomicsig.format.sigpath import SigPath
from atomicsig.ops.intake import Intake
from atomicsig.store.journal import HEADER_LEN, Journal, JournalError, iter_lines, parse_header, parse_line, sha256_hex
from atomicsig.store.prune import remove_blob
from atomicsig.store.sigdir import lock_dir, read_dir
from atomicsig.sync import packsync
from atomicsig.sync.source import Gone, HTTPSource, TooLarge
from atomicsig.sync.state import SourceState

log = logging.getLogger("atomicsig.sync")
#: Persist the cursor at least this often during a long initial sync.
SAVE_EVERY = 200
#: Signature GETs kept in flight ahead of the record being verified (network overlaps gpg).
PREFETCH = 8


@dataclass
class PassReport:
    source: str
    new_records: int = 0
    created: int = 0
    duplicates: int = 0
    deleted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    restarted: bool = False
    caught_up: bool = False


class Follower:
    def __init__(self, source: HTTPSource, intake: Intake, state: SourceState, *, propagate_deletes: bool,
                 save: Callable[[], None], should_stop: Callable[[], bool] = lambda: False,
                 on_progress: Callable[[], None] = lambda: None) -> None:
        self.source = source
        self.intake = intake
        self.st = state
        self.propagate_deletes = propagate_deletes
        self.save = save
        self.should_stop = should_stop
        self.on_progress = on_progress
        self._recovering = False
        #: Read the peer's pack when the cursor is empty (docs/sync.md, "Bulk first sync").
        self.use_pack = True
        self._pool: ThreadPoolExecutor | None = None
        #: The sync process's check worker (atomicsig.sync.checkworker), set by the daemon; None: check here.
        self.checker: Any = None
        self._ahead: dict[str, Future[bytes]] = {}

    @property
    def url(self) -> str:
        return self.source.endpoint.url

    def run_pass(self) -> PassReport:
        """Read until caught up (or stopped). Raises SourceError/StorageError on transient failures."""
        rep = PassReport(self.url)
        # After a failed pass a signature may be stored but not journaled (disk full between the two writes).
        self._recovering = self.st.last_error is not None
        # A follower killed between storing a signature and its journal line left a pending record: finish it
        # now, so nodes following this one still receive that signature.
        self.intake.store.recover()
        if self.use_pack and packsync.wanted(self):
            # A joining node: the whole journal so far in one streaming request (atomicsig.sync.packsync).
            packsync.run(self, rep)
        with ThreadPoolExecutor(PREFETCH, thread_name_prefix="sync-fetch") as pool:
            self._pool = pool
            try:
                while not self.should_stop():
                    more = self._one_chunk(rep)
                    self.save()
                    if not more:
                        rep.caught_up = True
                        break
            finally:
                for f in self._ahead.values():
                    f.cancel()
                self._ahead.clear()
                self._pool = None
        self.st.last_success = time.time()
        self.st.last_error = None
        self.save()
        return rep

    def _restart(self, rep: PassReport, why: str) -> None:
        if rep.restarted:  # twice in one pass: the peer's journal is inconsistent, not merely rebuilt
            raise JournalError(f"{self.source.journal_url}: {why} again after a restart; journal corrupt?")
        log.info("journal restart", extra={"fields": {"source": self.url, "reason": why}})
        self.st.restart()
        rep.restarted = True

    def _one_chunk(self, rep: PassReport) -> bool:
        """Handle one journal response. True if there may be more to read right away."""
        st = self.st
        chunk = self.source.journal(st.offset, st.etag)
        if chunk.total is not None:
            st.remote_size = chunk.total
        if chunk.unchanged:
            if chunk.total is not None and st.offset:  # 416: size ≤ offset; a rebuilt, shorter journal?
                epoch = parse_header(self.source.header())
                if epoch != st.epoch or chunk.total < st.offset:
                    self._restart(rep, "journal replaced")
                    return True
            return False
        header_epoch = parse_header(chunk.header) if chunk.header is not None else None
        if st.offset == 0 or st.epoch is None:
            if header_epoch is None:
                raise JournalError(f"{self.source.journal_url}: no header at offset 0")
            st.epoch, st.seq = header_epoch, 0
            data, base = chunk.data, chunk.base
            if base < HEADER_LEN:
                data, base = data[HEADER_LEN - base:], HEADER_LEN
            st.offset = base
        else:
            epoch = header_epoch if header_epoch is not None else parse_header(self.source.header())
            if epoch != st.epoch:
                self._restart(rep, "new journal epoch")
                return True
            data, base = chunk.data, chunk.base
        consumed = base
        handled = 0
        lines: list[tuple[bytes, int]] = []
        broken: JournalError | None = None
        try:
            lines.extend(iter_lines(data, base))
        except JournalError as exc:  # handle the good records before it, then fail the pass
            broken = exc
        batched = len(lines) > packsync.TAIL_BATCH_MIN  # a long backlog: stored in batches like the pack
        if batched:
            handled = packsync.run_tail(self, rep, lines)
            if st.offset == 0:  # restarted inside
                return True
            if handled:
                consumed = lines[handled - 1][1]
        ahead = 0  # lines[:ahead] have been looked at for prefetching
        for i, (line, end) in enumerate([] if batched else lines):
            if self.should_stop():
                break
            if ahead < i + 1 + PREFETCH:
                self._prefetch(lines[max(ahead, i + 1):i + 1 + PREFETCH])
                ahead = i + 1 + PREFETCH
            self._handle_line(line, end, rep)
            if st.offset == 0:  # restarted inside
                return True
            consumed = end
            handled += 1
            self.on_progress()
            if handled % SAVE_EVERY == 0:
                self.save()
        if broken is not None and not self.should_stop() and handled == len(lines):
            self._skip_overlong(data, base, consumed, broken, rep)
            return True
        st.etag = chunk.etag if chunk.total is not None and consumed >= chunk.total else None
        return bool(chunk.total is not None and consumed < chunk.total and handled > 0)

    def _skip_overlong(self, data: bytes, base: int, start: int, why: JournalError, rep: PassReport) -> None:
        """Resynchronise after a run of more than MAX_LINE bytes without a newline (garbage from a broken or
        hostile peer): continue after its next newline, reporting it once with its offset.

        Safe because of the journal format: every record is one line of at most MAX_LINE bytes, and a torn
        tail (a writer killed mid-append) is a *prefix* of one record, so never longer than MAX_LINE: such a run
        is neither a record nor the start of one. Stopping there instead (as before) failed the source at the
        same offset on every pass, forever. Skipped records are not lost by our choice — they never existed in a
        readable form; the rest of the journal is checked record by record as usual.
        """
        rel = start - base
        nl = data.find(b"\n", rel)
        resume = base + (nl + 1 if nl != -1 else len(data))
        self._reject(rep, "journal-line", f"{why.message}; skipped {resume - start} bytes to offset {resume}",
                     f"offset {start}")
        self.st.offset = resume
        self.st.seq = 0  # the skipped records' seqs are unknown; accept whatever follows
        self.save()

    def _handle_line(self, line: bytes, end: int, rep: PassReport) -> None:
        st = self.st
        try:
            rec = parse_line(line, end)
        except (JournalError, InputError) as exc:
            # A line we can never accept (bad path, traversal, garbage): count it and move on.
            self._reject(rep, "journal-line" if isinstance(exc, JournalError) else "path", exc.message,
                         line[:200].decode("ascii", "replace"))
            st.offset = end
            st.seq = 0  # the skipped line's seq is unknown; accept whatever follows
            return
        if st.seq and rec.seq != st.seq + 1:
            self._restart(rep, f"sequence jump {st.seq} -> {rec.seq}")
            return
        rep.new_records += 1
        if rec.op == "del":
            if self.propagate_deletes:
                # Only the source that delivered these bytes may delete them (atomicsig.sync.origin).
                done = remove_blob(Path(self.intake.store.root), rec.path.dirname, rec.sha256, self.url)
                if done == "deleted":
                    rep.deleted += 1
                    st.deleted += 1
                    log.info("deleted", extra={"fields": {"source": self.url, "path": str(rec.path)}})
                elif done == "not-origin":
                    self._reject(rep, "delete-not-origin", "this source did not deliver these bytes; delete "
                                 "refused", str(rec.path))
                elif done == "withdrawn":
                    log.info("kept: other sources delivered it too", extra={"fields": {"source": self.url,
                                                                                     "path": str(rec.path)}})
        else:
            self._add(rec.path, rec.sha256, rep)
        st.offset, st.seq = end, rec.seq

    def _add(self, path: SigPath, sha: str, rep: PassReport) -> None:
        rel = str(path)
        if self._have(path, sha):
            self.intake.also_delivered(path, sha, self.url)
            if self._recovering:
                self._journal_if_missing(path, sha)
            rep.duplicates += 1
            self.st.duplicates += 1
            return
        try:
            pending = self._ahead.pop(f"{rel} {sha}", None)
            blob = pending.result() if pending is not None else self.source.signature(rel)
        except Gone:
            self._reject(rep, "gone", "404 (pruned or renumbered on the peer since)", rel)
            return
        except TooLarge as exc:
            self._reject(rep, "too-large", exc.message, rel)
            return
        if sha256_hex(blob) != sha:
            self._reject(rep, "content-changed", "bytes differ from the journal's sha256", rel)
            return
        out = self.intake.offer(path, blob, self.url)
        if out.status == "rejected":
            self._reject(rep, out.reason, out.detail, rel)
        elif out.status == "created":
            rep.created += 1
            self.st.synced += 1
            log.info("synced", extra={"fields": {"source": self.url, "path": rel, "stored": out.location}})
        else:
            rep.duplicates += 1
            self.st.duplicates += 1

    def _prefetch(self, upcoming: list[tuple[bytes, int]]) -> None:
        """Start GETs for the next few ``add`` records; results are consumed strictly in journal order."""
        if self._pool is None:
            return
        for line, end in upcoming:
            try:
                rec = parse_line(line, end)
            except (JournalError, InputError):
                continue
            key = f"{rec.path} {rec.sha256}"  # by content too: a path can be reused after a renumbering
            if rec.op == "add" and key not in self._ahead and not self._have(rec.path, rec.sha256):
                self._ahead[key] = self._pool.submit(self.source.signature, str(rec.path))

    def _journal_if_missing(self, path: SigPath, sha: str) -> None:
        """After a failed pass: make the journal's lines for this directory match its files, under the directory's
        lock like every writer (atomicsig.lookaside), so the line is added once and never twice."""
        root = Path(self.intake.store.root)
        journal = Journal(root)
        if journal.has_recent(sha):
            return
        d = root / path.dirname
        with lock_dir(d):
            if journal.resync(path.dirname):
                log.info("journaled after failure", extra={"fields": {"path": str(d)}})

    def _have(self, path: SigPath, sha: str) -> bool:
        """Skip the GET when identical bytes are already stored locally (cheap re-sync after a restart)."""
        d = f"{self.intake.store.root}/{path.dirname}"  # a string: one per signature checked, Path costs more
        if not os.path.isdir(d):  # one stat: the common answer in a first sync (read_dir opens every level)
            return False
        try:
            return any(sha256_hex(s.blob) == sha for s in read_dir(Path(d)))
        except StorageError:
            return False

    def _reject(self, rep: PassReport, reason: str, detail: str, what: str) -> None:
        rep.rejected[reason] = rep.rejected.get(reason, 0) + 1
        self.st.rejected[reason] = self.st.rejected.get(reason, 0) + 1
        log.warning("rejected", extra={"fields": {"source": self.url, "path": what, "reason": reason,
                                                  "detail": detail}})
