"""Bundles for air-gapped fleets (issue 15 item 3): ``bundle export`` and ``bundle import``.

A bundle carries a sigstore's signatures across a gap no HTTP crosses (a ship, a factory, a regulated site): one
file (:mod:`atomicsig.format.bundle`) holding the signatures under their lookaside paths, the journal ``add``
records that named them, public keys and optionally the policy YAML, behind a sha256 manifest.

Export reads the source store through its journal (atomicsig.store.journal): replaying the lines gives the
signatures the store holds now, each with the sequence number of the line that added it, so ``--since SEQ``
(or ``EPOCH:SEQ``, which also checks that the journal was not rebuilt meanwhile) exports what was added after an
earlier bundle, and the bundle's records keep the source's order. A file whose bytes no longer match its record
(changed by a writer outside atomicsig since the last ``atomicsig index``) is skipped and counted. Export only
reads the store: it may run against a read-only copy. ``bundle.json`` records the source journal's epoch, its last
sequence number and the byte offset after that line: what a follower's cursor is made of (atomicsig.sync.follower),
so a full bundle can seed a node that then follows the source's journal from there.

Import is trust before write, the same path as sync and mirror (:class:`atomicsig.ops.intake.Intake`):

1. the whole bundle is read and checked first — manifest, every member's sum, order, sizes, names, the journal
   records against the signature members — and a bundle that fails any check is refused with nothing stored
   (exit 2): a truncated or damaged copy never half-imports;
2. then it is read again and every signature is offered to the intake: verified against the keys the *importer*
   names with ``--key`` (the keys inside the bundle are never trusted by being there; a bundle cannot bring its
   own trust), its payload digest compared with its path, and stored at the next free index of its digest
   directory, deduplicated by bytes, journaled so that this node's followers receive it. Signatures are stored
   :data:`BATCH` at a time (:meth:`Intake.offer_batch`: one flush and one journal write per batch, not 5 fsyncs
   per signature). Each store is atomic and gap-free (a file's name appears only once its bytes are complete;
   a file linked but not yet journaled is journaled by the next writer), so an import killed midway leaves a
   consistent sigstore and a re-run stores the rest; re-importing stores nothing (every signature is a
   duplicate). Refused signatures are counted by reason.

Stored signatures are recorded (atomicsig.store.origin) as delivered by :data:`ORIGIN`: no sync peer delivered
them, so no peer's ``del`` record can remove them; ``atomicsig prune`` can.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig import fsutil
from atomicsig.errors import InputError, StorageError
from atomicsig.format import bundle as wire
from atomicsig.format.blob import MAX_SIGNATURE_SIZE
from atomicsig.format.durations import parse_duration
from atomicsig.format.jsonstrict import DuplicateKeyError, no_duplicate_keys
from atomicsig.format.sigpath import repo_path
from atomicsig.gnupg.keyring import KeyInfo, temporary_home
from atomicsig.ops.intake import Intake
from atomicsig.store.journal import HEADER_LEN, Journal, JournalError, Record, iter_lines, parse_header, parse_line

__all__ = ["BundleContents", "ExportResult", "ImportResult", "Since", "bundle_keys", "export_bundle",
           "import_bundle", "parse_since", "read_bundle"]

FORMAT = "atomicsig-bundle"
VERSION = 1
#: The origin (atomicsig.store.origin) of every imported signature. Not a URL, so no sync source is ever it; one
#: name for all bundles, because an origin is added to a signature's record each time a new one delivers it, and a
#: name per bundle would grow every record with each (weekly, full) bundle.
ORIGIN = "bundle"
#: Signatures offered to the intake at once (:meth:`Intake.offer_batch`: one filesystem flush and one journal write
#: per batch, the bulk first sync's path). Bounds memory (at most this many signatures held) and what a kill can
#: leave for the next run to redo.
BATCH = 512
#: Refusals listed one by one in a summary (all are counted).
MAX_LISTED = 100
_INFO_KEYS = {"format", "version", "signatures", "journal", "filters", "keys", "policy"}


# ---- export -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Since:
    """``--since``: a journal position (``SEQ``, or ``EPOCH:SEQ`` to insist on the same journal), or a time
    (signature files stored at or after it)."""

    seq: int | None = None
    epoch: str | None = None
    time: float | None = None
    text: str = ""


def parse_since(text: str, now: float | None = None) -> Since:
    """``SEQ`` | ``EPOCH:SEQ`` | ``YYYY-MM-DD`` (UTC) | a duration back from now (``7d``, ``12h``)."""
    t = text.strip()
    if t.isdigit():
        return Since(seq=int(t), text=t)
    m = re.fullmatch(r"([a-f0-9]{32}):([0-9]{1,18})", t)
    if m:
        return Since(seq=int(m[2]), epoch=m[1], text=t)
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", t):
        try:
            when = float(calendar.timegm(time.strptime(t, "%Y-%m-%d")))
        except ValueError:
            raise InputError(f"--since {text}: not a valid date") from None
        return Since(time=when, text=t)
    try:
        ago = parse_duration(t, "--since", minimum=0)
    except InputError:
        raise InputError(f"--since {text!r}: expected a journal position (SEQ or EPOCH:SEQ, as the last export "
                         "printed), a date (YYYY-MM-DD) or a duration (7d, 12h)") from None
    return Since(time=(time.time() if now is None else now) - ago, text=t)


@dataclass
class ExportResult:
    path: str
    signatures: int
    skipped: int
    epoch: str
    last_seq: int
    keys: list[str]
    policy: bool
    bytes: int

    @property
    def next_since(self) -> str:
        """What the next incremental export passes as ``--since``."""
        return f"{self.epoch}:{self.last_seq}"

    def as_dict(self) -> dict[str, Any]:
        return {"bundle": self.path, "signatures": self.signatures, "skipped": self.skipped,
                "journal": {"epoch": self.epoch, "last_seq": self.last_seq}, "next_since": self.next_since,
                "keys": self.keys, "policy": self.policy, "bytes": self.bytes}


def live_records(root: Path) -> tuple[str, int, int, list[Record]]:
    """(epoch, last seq, byte offset after its line, the ``add`` records of the signatures the journal says the
    store holds, in seq order).

    Replays the lines as the journal defines (atomicsig.store.journal: ``add i s`` puts bytes ``s`` at index
    ``i`` and nowhere else in that directory, ``del i s`` removes bytes ``s``)."""
    path = Journal(root).path
    try:
        with open(path, "rb") as f:
            epoch = parse_header(f.read(HEADER_LEN))
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"{root} has no sync journal ({path})",
                         hint=f"a store written only by skopeo or podman has none: run `atomicsig index {root}` "
                              "first") from None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    dirs: dict[str, dict[int, Record]] = {}
    last, offset = 0, HEADER_LEN
    try:
        for line, end in iter_lines(data, HEADER_LEN):
            rec = parse_line(line, end)
            last, offset = rec.seq, end
            view = dirs.setdefault(rec.path.dirname, {})
            for i in [i for i, r in view.items() if r.sha256 == rec.sha256]:
                del view[i]
            if rec.op == "add":
                view[rec.path.index] = rec
    except (JournalError, InputError) as exc:
        raise StorageError(f"{path}: {exc.message}", hint=f"run `atomicsig index {root}`") from exc
    return epoch, last, offset, sorted((r for v in dirs.values() for r in v.values()), key=lambda r: r.seq)


def _read_signature(root: Path, rel: str) -> tuple[bytes, float] | None:
    """(bytes, mtime) of a stored signature, confined like every store read (no links, regular, bounded);
    None when it is gone or unsafe."""
    try:
        fd = fsutil.open_regular_file(root, rel)
    except (FileNotFoundError, NotADirectoryError, fsutil.UnsafeFileError):
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {root / rel}: {exc.strerror}") from exc
    try:
        mtime = os.fstat(fd).st_mtime
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_SIGNATURE_SIZE + 1)
    finally:
        os.close(fd)
    return (data, mtime) if len(data) <= MAX_SIGNATURE_SIZE else None


def _split_keys(key_blobs: Sequence[bytes]) -> dict[str, bytes]:
    """One binary public key per primary fingerprint, exported by gpg (what ``keys/<FPR>.gpg`` holds)."""
    if not key_blobs:
        return {}
    with temporary_home() as home:
        for blob in key_blobs:
            home.import_keys(blob)
        return {k.fingerprint: home.export_public([k.fingerprint], armor=False) for k in home.list_keys()}


def _selected(rec: Record, repos: Sequence[str]) -> bool:
    return not repos or any(rec.path.repo == r or rec.path.repo.startswith(r + "/") for r in repos)


def export_bundle(root: str | os.PathLike[str], out: str | os.PathLike[str], *, key_blobs: Sequence[bytes] = (),
                  policy: bytes | None = None, repos: Sequence[str] = (), since: Since | None = None,
                  compress: bool = True, on_progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Write the bundle of ``root``'s signatures (filtered by ``repos`` prefixes and ``since``) to ``out``
    atomically (temp + fsync + rename: a killed export leaves no partial file under ``out``'s name)."""
    root, target = Path(root), Path(out)
    if not root.is_dir():
        raise InputError(f"sigstore {root} is not a directory")
    if not target.parent.is_dir():
        raise InputError(f"cannot write {target}: {target.parent} is not a directory")
    for r in repos:
        repo_path(r)
    epoch, last_seq, last_offset, records = live_records(root)
    if since is not None and since.epoch is not None and since.epoch != epoch:
        raise InputError(f"--since {since.text}: the journal of {root} is now epoch {epoch} (rebuilt by "
                         "`atomicsig index` since that export)", hint="export by date, or everything (importing "
                                                                       "what is already there stores nothing)")
    chosen: list[Record] = []
    skipped = 0
    for rec in records:
        if not _selected(rec, repos) or (since is not None and since.seq is not None and rec.seq <= since.seq):
            continue
        got = _read_signature(root, str(rec.path))
        if got is None or wire.sha256_hex(got[0]) != rec.sha256:
            skipped += 1
            continue
        if since is not None and since.time is not None and got[1] < since.time:
            continue
        chosen.append(rec)
    if len(chosen) > wire.MAX_SIGNATURES:
        raise InputError(f"{len(chosen)} signatures match; one bundle carries at most {wire.MAX_SIGNATURES}",
                         hint="split it with --repo or --since")
    keys = _split_keys(key_blobs)
    if len(keys) > wire.MAX_KEYS:
        raise InputError(f"{len(keys)} keys given; one bundle carries at most {wire.MAX_KEYS}")
    # What the importer would refuse is refused here, before the file is written.
    big = next((fpr for fpr, blob in keys.items() if len(blob) > wire.MAX_KEY), None)
    if big is not None:
        raise InputError(f"key {big} is {len(keys[big])} bytes exported; a bundle carries keys of at most "
                         f"{wire.MAX_KEY}", hint="export it without foreign certifications")
    if policy is not None and len(policy) > wire.MAX_POLICY:
        raise InputError(f"the policy is {len(policy)} bytes; a bundle carries at most {wire.MAX_POLICY}")
    info = {"format": FORMAT, "version": VERSION, "signatures": len(chosen),
            "journal": {"epoch": epoch, "last_seq": last_seq, "last_offset": last_offset},
            "filters": {"repos": sorted(repos), "since": since.text if since else None},
            "keys": sorted(keys), "policy": policy is not None}
    info_bytes = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    journal = "".join(f"{r.seq} add {r.path} {r.sha256}\n" for r in chosen).encode()
    entries = [(wire.INFO, wire.sha256_hex(info_bytes))]
    entries += [(f"{wire.KEYS_DIR}{fpr}.gpg", wire.sha256_hex(keys[fpr])) for fpr in sorted(keys)]
    if policy is not None:
        entries.append((wire.POLICY, wire.sha256_hex(policy)))
    entries.append((wire.JOURNAL, wire.sha256_hex(journal)))
    entries += [(wire.SIGSTORE_DIR + str(r.path), r.sha256) for r in chosen]
    # The writer is closed even on an error (into the temp file, which then goes), so nothing flushes later.
    with fsutil.atomic_stream(target, 0o644) as f, contextlib.closing(wire.Writer(f, compress=compress)) as w:
        w.add(wire.MANIFEST, wire.build_manifest(entries))
        w.add(wire.INFO, info_bytes)
        for fpr in sorted(keys):
            w.add(f"{wire.KEYS_DIR}{fpr}.gpg", keys[fpr])
        if policy is not None:
            w.add(wire.POLICY, policy)
        w.add(wire.JOURNAL, journal)
        for n, rec in enumerate(chosen, 1):
            got = _read_signature(root, str(rec.path))
            if got is None or wire.sha256_hex(got[0]) != rec.sha256:
                # Files are immutable once named; only a prune (renumbering) changes one. Do not ship a manifest
                # that lies: fail, and the temp file goes.
                raise StorageError(f"{root / str(rec.path)} changed during the export", hint="run it again")
            w.add(wire.SIGSTORE_DIR + str(rec.path), got[0])
            if on_progress is not None:
                on_progress(n, len(chosen))
    return ExportResult(str(target), len(chosen), skipped, epoch, last_seq, sorted(keys), policy is not None,
                        target.stat().st_size)


# ---- import -----------------------------------------------------------------------------------------------------


@dataclass
class BundleContents:
    """What the first, checking pass read: everything but the signatures' bytes."""

    manifest_sha: str
    info: dict[str, Any]
    keys: dict[str, bytes]
    policy: bytes | None
    records: list[Record]


def _parse_info(data: bytes) -> dict[str, Any]:
    try:
        info = json.loads(data, object_pairs_hook=no_duplicate_keys)
    except (ValueError, DuplicateKeyError) as exc:
        raise wire.BundleError(f"{wire.INFO} is not valid JSON: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise wire.BundleError(f"{wire.INFO} does not describe an {FORMAT}")
    if info.get("version") != VERSION:
        raise wire.BundleError(f"bundle format version {info.get('version')!r}; this atomicsig reads {VERSION}")
    unknown = set(info) - _INFO_KEYS
    if unknown:
        raise wire.BundleError(f"{wire.INFO} has unknown key {sorted(unknown)[0]!r}")
    journal = info.get("journal")
    if type(info.get("signatures")) is not int or not isinstance(journal, dict) \
            or not isinstance(journal.get("epoch"), str) or type(journal.get("last_seq")) is not int:
        raise wire.BundleError(f"{wire.INFO} lacks its signature count or journal position")
    return info


def _parse_records(data: bytes) -> list[Record]:
    out: list[Record] = []
    try:
        lines = list(iter_lines(data, 0))
        if sum(len(line) + 1 for line, _ in lines) != len(data):
            raise wire.BundleError(f"bundle {wire.JOURNAL} ends inside a line")
        for line, end in lines:
            rec = parse_line(line, end)
            if rec.op != "add" or (out and rec.seq <= out[-1].seq):
                raise wire.BundleError(f"bundle {wire.JOURNAL}: record {rec.seq} is not an add in sequence")
            out.append(rec)
    except (JournalError, InputError) as exc:
        if isinstance(exc, wire.BundleError):
            raise
        raise wire.BundleError(f"bundle {wire.JOURNAL}: {exc.message}") from None
    return out


def _walk(path: str | os.PathLike[str], on_signature: Callable[[Record, bytes], None] | None = None,
          manifest_sha: str = "") -> BundleContents:
    """Read the whole bundle with every check (module docstring, step 1); with ``on_signature``, hand it each
    signature in journal order as it streams (step 2), after checking that the manifest is still the one of
    step 1 (``manifest_sha``): the file was not replaced in between."""
    if not os.path.isfile(path):  # before open: a FIFO would block it
        raise InputError(f"bundle {path} {'is not a regular file' if os.path.exists(path) else 'does not exist'}")
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as exc:
        raise InputError(f"cannot read bundle {path}: {exc.strerror}") from None
    with f:
        info: dict[str, Any] | None = None
        keys: dict[str, bytes] = {}
        policy: bytes | None = None
        records: list[Record] | None = None
        sigs = 0
        for member, sha in wire.members(f):
            k = wire.kind(member.name)
            if k == "manifest":
                if manifest_sha and wire.sha256_hex(member.data) != manifest_sha:
                    raise wire.BundleError(f"bundle {path} changed while it was imported", hint="import it again")
                manifest_sha = wire.sha256_hex(member.data)
            elif k == "info":
                info = _parse_info(member.data)
            elif k == "key":
                keys[member.name[len(wire.KEYS_DIR):-len(".gpg")]] = member.data
            elif k == "policy":
                policy = member.data
            elif k == "journal":
                records = _parse_records(member.data)
            else:
                if records is None or sigs >= len(records):
                    raise wire.BundleError(f"bundle member {member.name} has no record in {wire.JOURNAL}")
                rec = records[sigs]
                sigs += 1
                if member.name != wire.SIGSTORE_DIR + str(rec.path) or sha != rec.sha256:
                    raise wire.BundleError(f"bundle member {member.name} does not match record {rec.seq} of "
                                           f"{wire.JOURNAL}")
                if on_signature is not None:
                    on_signature(rec, member.data)
    assert info is not None and records is not None  # parse_manifest requires both members
    if sigs != len(records) or info["signatures"] != sigs:
        raise wire.BundleError(f"bundle holds {sigs} signatures; its {wire.JOURNAL} has {len(records)} records "
                               f"and {wire.INFO} says {info['signatures']}")
    return BundleContents(manifest_sha, info, keys, policy, records)


def read_bundle(path: str | os.PathLike[str]) -> BundleContents:
    """Check the whole bundle without storing anything (BundleError, exit 2, on any damage)."""
    return _walk(path)


def bundle_keys(contents: BundleContents) -> list[KeyInfo]:
    """The public keys the bundle carries, as gpg lists them (``import --show-keys``): for an operator deciding
    what to pass as ``--key``; never trusted by being in the bundle."""
    if not contents.keys:
        return []
    with temporary_home() as home:
        for blob in contents.keys.values():
            try:
                home.import_keys(blob)
            except InputError as exc:
                raise wire.BundleError(f"a key in the bundle is not an OpenPGP public key: {exc.message}") from None
        return home.list_keys()


@dataclass
class ImportResult:
    bundle: str
    sigstore: str
    signatures: int
    stored: int = 0
    duplicates: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    refusals: list[dict[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def as_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "sigstore": self.sigstore, "signatures": self.signatures,
                "stored": self.stored, "duplicates": self.duplicates, "refused": dict(sorted(self.refused.items())),
                "refused_total": self.refused_total, "refusals": self.refusals, "source": self.source}


def import_bundle(path: str | os.PathLike[str], intake: Intake, *, batch: int = BATCH,
                  on_progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Check the bundle, then offer its signatures to ``intake`` ``batch`` at a time (module docstring).
    BundleError (exit 2) with nothing stored if the bundle is damaged; StorageError (exit 3) if the sigstore
    cannot be written — what was stored before is complete and journaled, and a re-run stores the rest."""
    if batch < 1:
        raise InputError(f"batch size {batch}: must be at least 1")
    contents = read_bundle(path)
    res = ImportResult(str(path), str(intake.store.root), len(contents.records),
                       source=dict(contents.info["journal"]))
    intake.store.recover()  # journal what an import (or any writer) killed earlier left unjournaled
    pending: list[tuple[Record, bytes]] = []
    done = 0

    def flush() -> None:
        nonlocal done
        outcomes = intake.offer_batch([(rec.path, blob) for rec, blob in pending], ORIGIN)
        for (rec, _), out in zip(pending, outcomes, strict=True):
            if out.status == "created":
                res.stored += 1
            elif out.status == "duplicate":
                res.duplicates += 1
            else:
                res.refused[out.reason] = res.refused.get(out.reason, 0) + 1
                if len(res.refusals) < MAX_LISTED:
                    res.refusals.append({"path": str(rec.path), "reason": out.reason, "detail": out.detail})
            done += 1
            if on_progress is not None:
                on_progress(done, res.signatures)
        pending.clear()

    def offer(rec: Record, blob: bytes) -> None:
        pending.append((rec, blob))
        if len(pending) >= batch:
            flush()

    _walk(path, offer, contents.manifest_sha)
    if pending:
        flush()
    return res


def iter_refusals(res: ImportResult) -> Iterator[str]:
    """One line per listed refusal, for the CLI."""
    for r in res.refusals:
        yield f"refused {r['path']}: {r['reason']}: {r['detail']}"
