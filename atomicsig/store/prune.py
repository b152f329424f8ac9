"""Removing signatures from a sigstore without leaving a gap (SPEC §3.3: readers stop at the first gap).

Every removal — ``atomicsig prune`` and a peer's ``del`` record applied by sync — is one locked rewrite of one
digest directory (:func:`rewrite_locked`): take the directory's lock (the one every atomicsig writer takes,
atomicsig.lookaside), read the directory, decide what goes, renumber in place, journal, release. A signature linked
by a concurrent ``sign``, PUT or sync is therefore either read by the rewrite (and kept, unless it is one the
rewrite decided to drop) or linked after the rewrite released the lock, at the next free index; it can no longer
vanish the way it did when the directory was rebuilt from a snapshot and swapped in.

Renumbering in place, in this order, keeps ``signature-1 … signature-m`` present at every instant:

1. for i = 1 … k (k = number kept), if ``signature-i`` does not already hold the i-th kept blob, write that blob to
   a temp file and ``rename`` it over ``signature-i`` (atomic replace: a reader opens the old or the new file,
   both complete);
2. unlink ``signature-n``, ``signature-n-1``, … ``signature-k+1``, highest first, so no lower index is ever
   missing while a higher one exists;
3. fsync the directory, then journal (``del`` per removed blob, ``add`` per kept blob at its new index).

A reader that lists the directory *during* a renumbering may see one kept blob twice or miss one for that single
read (it read ``signature-i`` before step 1 replaced it and ``signature-j`` after); it never sees a gap or a partial
file. A kill between the steps can leave one blob at two indices: the directory is still gap-free, every later
rewrite drops the repeat (identical bytes are stored once, SPEC §3.3), and the writer's pending record makes the
next journal writer resync the directory's journal lines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from atomicsig import fsutil
from atomicsig.errors import StorageError
from atomicsig.format.sigpath import signature_name
from atomicsig.openpgp import packets as openpgp
from atomicsig.store.base import StoredSignature
from atomicsig.store.directory import commit_dir, journal_epoch
from atomicsig.store.journal import begin_pending, scan, sha256_hex
from atomicsig.store.sigdir import lock_dir, read_dir


def rewrite_dir(d: Path, keep: list[bytes]) -> None:
    """Make ``d`` hold exactly ``keep`` as signature-1…k, renumbering in place (module docstring, steps 1–2 and
    the fsync of 3). The caller holds ``d``'s lock."""
    current = read_dir(d)
    try:
        for i, blob in enumerate(keep, 1):
            if i > len(current) or current[i - 1].blob != blob:
                fsutil.atomic_write(d / signature_name(i), blob, 0o644, sync_dir=False)
        for s in reversed(current[len(keep):]):
            (d / signature_name(s.index)).unlink()
        fsutil.fsync_dir(d)
    except OSError as exc:
        raise StorageError(f"cannot rewrite {d}: {exc.strerror or exc}") from exc


def rewrite_locked(root: Path, rel_dir: str, drop: Callable[[StoredSignature], bool], *,
                   dry_run: bool = False) -> list[StoredSignature]:
    """Drop from ``root/rel_dir`` the signatures ``drop`` picks, as one locked read-decide-rewrite-journal step.

    Returns the dropped signatures (with their indices before the rewrite). A repeat of bytes stored at a lower
    index (left by a killed rewrite) is dropped too, silently: a ``del`` line names bytes, and the bytes stay."""
    d = root / rel_dir
    if not d.is_dir() or not fsutil.is_within(root, d):
        return []
    if dry_run:
        return [s for s in read_dir(d) if drop(s)]
    with lock_dir(d):
        seen = journal_epoch(root)
        fsutil.sweep_stale_temps(d)
        sigs = read_dir(d)
        dropped = [s for s in sigs if drop(s)]
        kept: list[StoredSignature] = []
        for s in sigs:
            if s not in dropped and all(k.blob != s.blob for k in kept):
                kept.append(s)
        if len(kept) == len(sigs):
            return []
        lines = [("del", f"{rel_dir}/{signature_name(s.index)}", sha256_hex(s.blob)) for s in dropped]
        lines += [("add", f"{rel_dir}/{signature_name(i)}", sha256_hex(s.blob)) for i, s in enumerate(kept, 1)
                  if s.index != i]
        what = sha256_hex(dropped[0].blob) if dropped else hashlib.sha256(b"").hexdigest()
        with begin_pending(root, rel_dir, what):  # a kill mid-rewrite: the next journal writer resyncs rel_dir
            rewrite_dir(d, [s.blob for s in kept])
            commit_dir(root, d, seen, lines)
        return dropped


@dataclass
class PruneResult:
    removed: list[str] = field(default_factory=list)
    directories: int = 0


def _claims(fingerprints: set[str]) -> Callable[[bytes], bool]:
    fprs = {f.upper().removeprefix("0X") for f in fingerprints}

    def match(blob: bytes) -> bool:
        try:
            who = openpgp.untrusted_signer(blob)
        except Exception:  # an unparsable blob is not "by this key"
            return False
        if not who:
            return False
        who = who.upper()
        return any(f == who or f.endswith(who) or who.endswith(f) for f in fprs)
    return match


def remove_matching(root: Path, predicate: Callable[[bytes], bool], *, dry_run: bool = False) -> PruneResult:
    """Remove every signature for which ``predicate(blob)`` is true, renumbering each touched directory.

    Directory by directory, each under its own lock (:func:`rewrite_locked`); writers of other directories
    are never held up, and a directory's signatures are judged as they are when its lock is taken."""
    result = PruneResult()
    for rel_dir in sorted({rel.rsplit("/", 1)[0] for rel, _sha in scan(root)}):
        dropped = rewrite_locked(root, rel_dir, lambda s: predicate(s.blob), dry_run=dry_run)
        if dropped:
            result.directories += 1
            result.removed += [f"{rel_dir}/{signature_name(s.index)}" for s in dropped]
    return result


def prune_keys(root: Path, fingerprints: set[str], *, dry_run: bool = False) -> PruneResult:
    """``atomicsig prune --key FPR``: by the key a signature *claims* (retired keys may no longer verify)."""
    return remove_matching(root, _claims(fingerprints), dry_run=dry_run)


def remove_blob(root: Path, dirname: str, sha256: str, origin: str) -> str:
    """Apply a peer's ``del`` record from source ``origin``: drop the blob with this hash from one directory, if
    ``origin`` delivered it and no other source did (atomicsig.sync.origin, SECURITY.md).

    Returns ``"deleted"``, ``"absent"`` (nothing with that hash here), ``"not-origin"`` (refused: ``origin`` never
    delivered it) or ``"withdrawn"`` (kept: other sources delivered it too; ``origin`` is no longer one of them).
    The origin check is made under the directory's lock, together with the decision."""
    from atomicsig.store.origin import recorded, withdraw

    outcome = "absent"

    def drop(s: StoredSignature) -> bool:
        nonlocal outcome
        if sha256_hex(s.blob) != sha256:
            return False
        sources = recorded(root, dirname, sha256)
        if origin not in sources:
            outcome = "not-origin"
            return False
        if len(sources) > 1:
            withdraw(root, dirname, sha256, origin)
            outcome = "withdrawn"
            return False
        return True
    if rewrite_locked(root, dirname, drop):
        return "deleted"
    return outcome
