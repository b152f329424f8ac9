"""The follower's persisted cursors: per source URL the journal epoch, byte offset, last seq, and counters.

Written with :func:`fsutil.atomic_write` after each batch, so ``kill -9`` leaves either the old or the new state.
Resuming from an older cursor is safe because intake dedups by content (SPEC §3.3): re-reading records only
costs requests, it never duplicates or loses a signature.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from atomicsig import fsutil
from atomicsig.errors import StorageError

STATE_VERSION = 1


@dataclass
class SourceState:
    epoch: str | None = None
    offset: int = 0
    seq: int = 0
    etag: str | None = None
    remote_size: int | None = None
    synced: int = 0
    duplicates: int = 0
    deleted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    last_error: str | None = None
    last_error_time: float | None = None
    last_success: float | None = None
    #: While a bulk first sync is under way (atomicsig.sync.packsync): the pack byte just after the record at
    #: ``offset`` (0: not in a pack) and the pack's ETag, so a cut pass resumes the pack with a Range request.
    pack_offset: int = 0
    pack_etag: str | None = None

    @property
    def lag_bytes(self) -> int | None:
        return None if self.remote_size is None else max(0, self.remote_size - self.offset)

    def restart(self) -> None:
        """Forget the position (new epoch or a corrupt journal); counters stay."""
        self.epoch, self.offset, self.seq, self.etag = None, 0, 0, None
        self.pack_offset, self.pack_etag = 0, None


@dataclass
class SyncState:
    path: Path
    sources: dict[str, SourceState] = field(default_factory=dict)
    push: SourceState = field(default_factory=SourceState)

    def source(self, url: str) -> SourceState:
        return self.sources.setdefault(url, SourceState())

    def as_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "sources": {u: asdict(s) for u, s in self.sources.items()},
                "push": asdict(self.push)}

    def save(self) -> None:
        fsutil.makedirs(self.path.parent, 0o755)
        fsutil.atomic_write(self.path, json.dumps(self.as_dict(), indent=1, sort_keys=True).encode(), 0o644)

    @classmethod
    def load(cls, path: Path) -> SyncState:
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read sync state {path}: {exc}",
                               hint="delete it to resync from scratch (content dedup makes that safe)") from exc
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            raise StorageError(f"sync state {path} has an unknown format")
        known = set(SourceState.__dataclass_fields__)
        srcs = {u: SourceState(**{k: v for k, v in s.items() if k in known})
                for u, s in (raw.get("sources") or {}).items()}
        push = SourceState(**{k: v for k, v in (raw.get("push") or {}).items() if k in known})
        return cls(path, srcs, push)
