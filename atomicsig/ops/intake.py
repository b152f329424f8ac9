"""Trust before write: every signature from a peer is checked before it may enter the local store.

Order (SPEC §2.1 steps 3–6, minus identity which is a node-policy question): size cap (SPEC §8), first-byte
recognition (§1.3), cryptographic verification against the keys the sync config trusts, strict payload parse
(§1.2), then the payload digest must equal the digest in the path it arrived under — otherwise a valid signature
for image X could be planted under image Y. Only then :meth:`DirectoryStore.append_path` stores it at the next
free index (dedup by bytes, never overwrite, no gaps — SPEC §3.3), under the digest directory's lock, remembering
which source delivered it (atomicsig.store.origin). Peers' journals name sha256 paths only
(:func:`atomicsig.store.journal.parse_sigpath`), like every other writer of the store (atomicsig.store.directory).

The verifier is the :class:`atomicsig.ops.verify.Verifier` protocol, so an in-process verifier can replace the
gpg-subprocess one without touching this module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atomicsig import fsutil
from atomicsig.errors import SignatureFormatError, StorageError
from atomicsig.format import payload
from atomicsig.format.blob import MAX_SIGNATURE_SIZE, simple_signing_body
from atomicsig.format.sigpath import MAX_LOOKASIDE_SIGNATURES, SigPath
from atomicsig.ops.verify import Verifier
from atomicsig.store.directory import DirectoryStore, StagedBatch
from atomicsig.store.journal import sha256_hex
from atomicsig.store.origin import also_delivered, recorded
from atomicsig.store.sigdir import lock_dir, read_dir


@dataclass(frozen=True)
class Outcome:
    status: str  # "created" | "duplicate" | "rejected"
    reason: str = ""  # short label for metrics, e.g. "untrusted-key"
    detail: str = ""  # one-line explanation for logs
    location: str = ""


def classify(message: str) -> str:
    m = message.lower()
    if "untrusted key" in m or "no public key" in m:
        return "untrusted-key"
    if "expired" in m or "revoked" in m:
        return "expired-or-revoked"
    return "bad-signature"


def check_blob(verifier: Verifier, path: SigPath, blob: bytes) -> Outcome | None:
    """None if ``blob`` may be stored under ``path``; else the rejection. A function of its arguments only, so
    the bulk first sync can run it in worker processes (atomicsig.sync.packsync)."""
    if len(blob) > MAX_SIGNATURE_SIZE:
        return Outcome("rejected", "too-large", f"{len(blob)} bytes")
    try:
        simple_signing_body(blob)
    except SignatureFormatError as exc:
        return Outcome("rejected", "format", exc.message)
    try:
        verified = verifier.verify(blob)
    except SignatureFormatError as exc:
        return Outcome("rejected", classify(exc.message), exc.message)
    try:
        claimed = payload.parse(verified.payload)
    except SignatureFormatError as exc:
        return Outcome("rejected", "payload", exc.message)
    if claimed.manifest_digest != path.digest:
        return Outcome("rejected", "digest-mismatch",
                       f"payload is for {claimed.manifest_digest}, path is {path.digest}")
    return None


class Intake:
    def __init__(self, store: DirectoryStore, verifier: Verifier, quarantine: Path | None = None) -> None:
        self.store = store
        self.verifier = verifier
        self.quarantine = quarantine

    def check(self, path: SigPath, blob: bytes) -> Outcome | None:
        """None if ``blob`` may be stored under ``path``; else the rejection."""
        return check_blob(self.verifier, path, blob)

    def store_checked(self, items: list[tuple[SigPath, bytes]], origin: str) -> list[Outcome]:
        """Store signatures that passed :func:`check_blob` (the caller ran it, possibly in worker processes: the
        bulk first sync), as one batch: :meth:`DirectoryStore.append_batch` (one flush and one journal write
        for the batch). Same outcomes as :meth:`offer`, in order: created, duplicate, or digest-full."""
        staged = self.stage_checked(items, origin)
        staged.commit()
        return staged.outcomes()

    def stage_checked(self, items: list[tuple[SigPath, bytes]], origin: str) -> StagedIntake:
        """:meth:`store_checked` in two steps, so that the bulk first sync can link the next batch while this
        one is flushed (:class:`StagedIntake`)."""
        staged = self.store.stage_batch([(p.repo, p.digest, b) for p, b in items], origin=origin)
        return StagedIntake(self, items, origin, staged)

    def offer_batch(self, items: Sequence[tuple[SigPath, bytes]], origin: str) -> list[Outcome]:
        """:meth:`offer` for many signatures at once, same checks and outcomes, in order: each is checked
        (:func:`check_blob`; a refused one is quarantined), then those that passed are stored together by
        :meth:`store_checked` (one filesystem flush and one journal write for the batch, instead of 5 fsyncs
        per signature: what capped ``bundle import`` at ~70-90 signatures/s, docs/performance.md)."""
        checked = [self.check(path, blob) for path, blob in items]
        for (path, blob), rejected in zip(items, checked, strict=True):
            if rejected is not None:
                self._quarantine(path, blob, origin, rejected)
        ok = [item for item, rejected in zip(items, checked, strict=True) if rejected is None]
        stored = iter(self.store_checked(ok, origin) if ok else [])
        return [rejected if rejected is not None else next(stored) for rejected in checked]

    def reject(self, path: SigPath, blob: bytes, origin: str, outcome: Outcome) -> None:
        """A rejection decided outside :meth:`offer` (a batch checked elsewhere): quarantine it like offer does."""
        self._quarantine(path, blob, origin, outcome)

    def offer(self, path: SigPath, blob: bytes, origin: str | None) -> Outcome:
        """Check ``blob`` and store it under ``path`` (or say why not). ``origin``: the sync source delivering it,
        recorded so only that source may delete it; None (``mirror``) stores it like a local signature, which no
        peer can delete (atomicsig.store.origin) — and skips one fsynced record per signature."""
        rejected = self.check(path, blob)
        if rejected is not None:
            self._quarantine(path, blob, origin, rejected)
            return rejected
        d = self.store.root / path.dirname
        try:
            present = read_dir(d) if d.is_dir() else []
        except StorageError as exc:  # 128+ files: c/image would refuse the whole directory
            return Outcome("rejected", "digest-full", exc.message)
        if len(present) >= MAX_LOOKASIDE_SIGNATURES - 1 and all(s.blob != blob for s in present):
            return Outcome("rejected", "digest-full", f"{d} already holds {len(present)} signatures")
        # ``origin`` is remembered with the bytes: only this source may later delete them (atomicsig.store.origin).
        res = self.store.append_path(path.repo, path.digest, blob, origin=origin)
        if not res.created and origin is not None:
            self.also_delivered(path, sha256_hex(blob), origin)
        return Outcome("created" if res.created else "duplicate", location=res.location)

    def also_delivered(self, path: SigPath, sha: str, origin: str) -> None:
        """``origin`` offers bytes we already hold: if another source delivered them, ``origin`` becomes one of
        their sources too (atomicsig.store.origin). Read first; the lock and a write only when that changes."""
        root = self.store.root
        sources = recorded(root, path.dirname, sha)
        if not sources or origin in sources:
            return
        d = root / path.dirname
        with lock_dir(d):
            also_delivered(root, path.dirname, sha, origin)

    def _quarantine(self, path: SigPath, blob: bytes, origin: str | None, outcome: Outcome) -> None:
        """Keep the refused bytes for an operator, outside the sigstore (never read by podman)."""
        if self.quarantine is None or outcome.reason == "too-large":
            return
        sha = sha256_hex(blob)
        fsutil.makedirs(self.quarantine, 0o750)
        fsutil.atomic_write(self.quarantine / f"{sha}.sig", blob, 0o640)
        meta = {"path": str(path), "origin": origin, "reason": outcome.reason, "detail": outcome.detail,
                "time": int(time.time())}
        fsutil.atomic_write(self.quarantine / f"{sha}.json", json.dumps(meta, sort_keys=True).encode(), 0o640)


class StagedIntake:
    """Checked signatures, linked but not yet durable (:class:`atomicsig.store.directory.StagedBatch`):
    :meth:`commit` (from any thread; it releases the batch's directory locks), then :meth:`outcomes` in the
    caller's thread. Outcomes wait for the commit because a duplicate may add its source to the directory's
    origin record, which takes that directory's lock."""

    def __init__(self, intake: Intake, items: list[tuple[SigPath, bytes]], origin: str, staged: StagedBatch) -> None:
        self._intake, self._items, self._origin, self._staged = intake, items, origin, staged

    @property
    def paths(self) -> list[SigPath]:
        """Where the items go, in order (as :meth:`outcomes`)."""
        return [p for p, _ in self._items]

    @property
    def dirs(self) -> frozenset[str]:
        """Digest directories (relative to the store) locked until :meth:`commit` returns."""
        return self._staged.dirs

    @property
    def journaled(self) -> bool:
        """False for a store's first batch: it must be committed before another batch is staged
        (:attr:`StagedBatch.journaled`)."""
        return self._staged.journaled

    def commit(self) -> None:
        self._staged.commit()

    def abort(self) -> None:
        self._staged.abort()

    def outcomes(self) -> list[Outcome]:
        """Per item, in order: created, duplicate (its source recorded) or rejected (digest-full)."""
        out: list[Outcome] = []
        for (path, blob), res in zip(self._items, self._staged.results, strict=True):
            if isinstance(res, StorageError):
                out.append(Outcome("rejected", "digest-full", res.message))
            elif res.created:
                out.append(Outcome("created", location=res.location))
            else:
                self._intake.also_delivered(path, sha256_hex(blob), self._origin)
                out.append(Outcome("duplicate", location=res.location))
        return out
