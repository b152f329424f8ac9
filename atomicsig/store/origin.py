"""Which sync sources delivered each signature, so that only they can make us delete it (SECURITY.md).

A peer's ``del`` record names a digest directory and the sha256 of the bytes; anyone can compute both for any
signature it has seen. With ``propagate-deletes: true`` a hostile or compromised peer could otherwise delete
signatures it never served (ones signed here, or synced from an honest peer), by hash alone. So when sync stores a
signature, it records the source's URL (as written in the sync config) for those bytes, and a ``del`` is honoured
only from a recorded source:

* a signature made or uploaded locally has no record: no peer can delete it (``atomicsig prune`` here can);
* a signature several sources delivered records all of them (a source offering bytes we already hold from
  another source is added); a ``del`` from one of them withdraws that source only, and the signature goes when
  the last one withdraws. So a peer that re-serves an honest source's public signatures first cannot delete them
  for everybody: it can only withdraw itself;
* renaming a source's URL in the config orphans its records (its deletes are then refused, logged as
  ``not-origin``): refusing is the safe side.

Stored per digest directory in ``<sigstore>/.atomicsig/origins/<repo path>@sha256=<hex>.json`` (``{sha256: [url,
…]}``), outside what any reader of the lookaside opens, written by temp + rename under the digest directory's lock
(atomicsig.lookaside); for a new signature *before* it is linked: a crash in between leaves an entry for bytes that
are not stored, which nothing acts on, never a stored signature without its origin. The file's data is fsynced, its
directory is not (one flush less per synced signature): a power cut can at worst lose the newest entries, which
makes those signatures undeletable by their source — the safe side, like every other way an entry goes missing.
"""

from __future__ import annotations

import json
from pathlib import Path

from atomicsig import fsutil
from atomicsig.format.sigpath import parse_digest_dirname, stored_digest
from atomicsig.store.journal import META_DIR

ORIGINS_DIR = "origins"
#: ≤ 127 entries of 64 hex + a few URLs each; anything bigger is not ours.
_MAX_BYTES = 1 << 20


def _path(root: Path, dirname: str) -> Path:
    stored_digest(parse_digest_dirname(dirname)[1])  # a digest directory a store holds: no "..", no absolute path
    return root / META_DIR / ORIGINS_DIR / f"{dirname}.json"


def _load(path: Path) -> dict[str, list[str]]:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_BYTES + 1)
        doc = json.loads(data) if len(data) <= _MAX_BYTES else None
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: [u for u in v if isinstance(u, str)] for k, v in doc.items()
            if isinstance(k, str) and isinstance(v, list)}


def _save(path: Path, doc: dict[str, list[str]], sync: bool = True) -> None:
    fsutil.makedirs(path.parent, 0o755, sync=sync)
    fsutil.atomic_write(path, json.dumps(doc, sort_keys=True).encode(), 0o644, sync_dir=False, sync=sync)


def recorded(root: Path, dirname: str, sha256: str) -> list[str]:
    """The sources that delivered these bytes into ``dirname``; empty: local, unknown or unreadable (a delete
    is then refused)."""
    return _load(_path(root, dirname)).get(sha256, [])


def remember(root: Path, dirname: str, sha256: str | list[str], source: str, *, keep: set[str],
             sync: bool = True) -> None:
    """Record ``source`` for new bytes (the caller holds the directory's lock and is about to link them; a batch
    writer names all it is about to link there); entries for bytes no longer in the directory (not in ``keep``)
    are dropped on the way. ``sync=False``: a batch writer flushes the filesystem once for its whole batch
    (atomicsig.store.directory.DirectoryStore.append_batch)."""
    path = _path(root, dirname)
    doc = {k: v for k, v in _load(path).items() if k in keep}
    for sha in [sha256] if isinstance(sha256, str) else sha256:
        doc[sha] = [source]
    _save(path, doc, sync)


def also_delivered(root: Path, dirname: str, sha256: str, source: str) -> bool:
    """``source`` offered bytes we already hold from another source: add it (caller holds the directory's lock).
    Bytes without a record (made or uploaded here) stay local. Returns whether the record changed."""
    path = _path(root, dirname)
    doc = _load(path)
    if sha256 not in doc or source in doc[sha256]:
        return False
    doc[sha256].append(source)
    _save(path, doc)
    return True


def withdraw(root: Path, dirname: str, sha256: str, source: str) -> None:
    """``source`` deleted these bytes but others delivered them too: forget it (caller holds the lock)."""
    path = _path(root, dirname)
    doc = _load(path)
    if source in doc.get(sha256, []):
        doc[sha256] = [u for u in doc[sha256] if u != source]
        _save(path, doc)
