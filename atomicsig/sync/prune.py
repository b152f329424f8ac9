"""Removing signatures from a sigstore without leaving a gap (SPEC §3.3: readers stop at the first gap).

A digest directory is rewritten as a whole: the kept blobs go to ``signature-1 … signature-k`` in a fresh
sibling directory, which is then swapped in. With ``renameat2(RENAME_EXCHANGE)`` the swap is one atomic step;
without it (old kernels, some filesystems) it is two renames with a short window in which the directory is
absent, so a pull at that instant sees "no signature" and fails. Either way a reader that has already read
``signature-1`` of the old directory and then opens ``signature-2`` of the new one may see a mixed set; at worst
one signature is missed or seen twice for that one read (documented in docs/sync.md).

Changes are recorded in the journal (``del`` for removed blobs, ``add`` for ones that moved to a new index) so
followers that propagate deletes can repeat them, and followers that don't can still find moved files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import fsutil, openpgp
from ..errors import StorageError
from ..lookaside import read_dir
from .journal import Journal, scan, sha256_hex

_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2; False if the kernel/libc/filesystem cannot."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def rewrite_dir(d: Path, keep: list[bytes]) -> None:
    """Make ``d`` hold exactly ``keep`` as signature-1…k, swapping a complete new directory in."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-prune-", dir=d.parent))
    try:
        os.chmod(tmp, 0o755)  # noqa: S103 (a sigstore dir must be world-readable, like podman's)
        for i, blob in enumerate(keep, 1):
            if not fsutil.create_exclusive(tmp / f"signature-{i}", blob, 0o644):
                raise StorageError(f"unexpected file in {tmp}")
        fsutil.fsync_dir(tmp)
        if not _exchange(tmp, d):
            old = d.parent / f".tmp-old-{tmp.name}"
            os.rename(d, old)
            os.rename(tmp, d)
            tmp = old
        fsutil.fsync_dir(d.parent)
    except OSError as exc:
        raise StorageError(f"cannot rewrite {d}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    """Remove every signature for which ``predicate(blob)`` is true, renumbering each touched directory."""
    journal = Journal(root)
    result = PruneResult()
    with journal.locked() if not dry_run else contextlib.nullcontext():
        dirs = sorted({rel.rsplit("/", 1)[0] for rel, _sha in scan(root)})
        entries: list[tuple[str, str, str]] = []
        for rel_dir in dirs:
            d = root / rel_dir
            sigs = read_dir(d)
            kept = [s for s in sigs if not predicate(s.blob)]
            if len(kept) == len(sigs):
                continue
            result.directories += 1
            for s in sigs:
                if predicate(s.blob):
                    result.removed.append(f"{rel_dir}/signature-{s.index}")
                    entries.append(("del", f"{rel_dir}/signature-{s.index}", sha256_hex(s.blob)))
            for i, s in enumerate(kept, 1):
                if s.index != i:
                    entries.append(("add", f"{rel_dir}/signature-{i}", sha256_hex(s.blob)))
            if not dry_run:
                rewrite_dir(d, [s.blob for s in kept])
        if entries and not dry_run:
            if journal.path.exists():
                journal._append_locked(entries)
            else:
                journal._rebuild_locked()
    return result


def prune_keys(root: Path, fingerprints: set[str], *, dry_run: bool = False) -> PruneResult:
    """``atomicsig prune --key FPR``: by the key a signature *claims* (retired keys may no longer verify)."""
    return remove_matching(root, _claims(fingerprints), dry_run=dry_run)


def remove_blob(root: Path, dirname: str, sha256: str) -> bool:
    """Apply a peer's ``del`` record: drop the blob with this hash from one directory (no-op if absent)."""
    d = root / dirname
    if not d.is_dir() or not fsutil.is_within(root, d):
        return False
    sigs = read_dir(d)
    kept = [s.blob for s in sigs if sha256_hex(s.blob) != sha256]
    if len(kept) == len(sigs):
        return False
    journal = Journal(root)
    with journal.locked():
        rewrite_dir(d, kept)
        if journal.path.exists():
            journal._append_locked([("del", f"{dirname}/signature-{s.index}", sha256)
                                    for s in sigs if sha256_hex(s.blob) == sha256])
    return True
