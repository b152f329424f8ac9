"""Sign images: resolve what to sign, make the payloads, sign them in parallel, store them.

The library half of ``atomicsig sign``. It never prints; progress is reported through a callback so the CLI can
draw a bar on a tty and stay quiet in CI. A failure on one image is recorded in its result and never stops the
others (batch semantics of issue #2).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import AtomicsigError, SignatureFormatError
from atomicsig.format import payload
from atomicsig.openpgp import packets as openpgp
from atomicsig.ops.resolve import Resolver, Target
from atomicsig.signers.base import Signer, signer_fingerprints
from atomicsig.store.base import SignatureStore, StoredSignature
from atomicsig.store.directory import DirectoryStore

__all__ = ["Outcome", "Planned", "already_signed_by", "exit_code", "plan", "sign_many", "signed_among"]


@dataclass
class Outcome:
    """The result for one target."""

    target: Target | None
    input: str
    status: str = "pending"  # signed | exists | failed
    location: str | None = None
    error: str | None = None
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        t = self.target
        return {"input": self.input, "status": self.status, "identity": t.identity if t else None,
                "digest": t.digest if t else None, "location": self.location, "error": self.error,
                "note": t.note if t else None}


def already_signed_by(store: SignatureStore, target: Target, fingerprints: frozenset[str] | str) -> str | None:
    """Location of an existing signature by one of ``fingerprints`` claiming the same identity and digest.

    ``fingerprints`` holds the signer's primary and subkey fingerprints: a signature made by a signing subkey names
    the subkey as issuer, so comparing with the primary alone would re-sign such images on every run.

    Read without verifying: this only decides whether to skip work, never whether to trust.
    """
    return signed_among(store.read(target.ref, target.digest), target, fingerprints)


def signed_among(sigs: list[StoredSignature], target: Target, fingerprints: frozenset[str] | str) -> str | None:
    """:func:`already_signed_by` on signatures already read (the store's locked re-check passes them in)."""
    for sig in sigs:
        try:
            msg = openpgp.parse_message(sig.blob)
            claimed = payload.parse(msg.literal)
        except SignatureFormatError:
            continue
        issuer = (msg.signatures[0].issuer_fingerprint or msg.signatures[0].issuer_keyid or "").upper()
        fprs = {fingerprints.upper()} if isinstance(fingerprints, str) else {f.upper() for f in fingerprints}
        if issuer and any(f.endswith(issuer) for f in fprs) and claimed.docker_reference == target.identity \
                and claimed.manifest_digest == target.digest:
            return sig.location
    return None


def sign_many(inputs: Iterable[str], *, resolver: Resolver, signer: Signer, store: SignatureStore,
              force: bool = False, workers: int | None = None,
              progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Resolve, sign and store every input; one Outcome per target (or per input that failed to resolve)."""
    items = [i for i in inputs if i.strip() and not i.lstrip().startswith("#")]
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    lock = threading.Lock()
    own_keys = signer_fingerprints(signer) if not force else frozenset()
    if isinstance(store, DirectoryStore):
        # Journal lines a killed earlier run (or a concurrent one that died) left out. Housekeeping only: if the
        # store cannot be written, every append below fails with that error for its own image anyway.
        with contextlib.suppress(AtomicsigError):
            store.recover()

    def one(text: str) -> list[Outcome]:
        try:
            targets = resolver.resolve(text)
        except AtomicsigError as exc:
            return [Outcome(None, text, "failed", error=exc.message, exit_code=exc.exit_code)]
        out = []
        for t in targets:
            o = Outcome(t, text)
            try:
                existing = None if force else already_signed_by(store, t, own_keys)
                if existing:
                    o.status, o.location = "exists", existing
                else:
                    blob = signer.sign(payload.build(t.identity, t.digest))
                    if force:
                        res = store.append(t.ref, t.digest, blob)
                    else:
                        # A racing signer may have stored one since the check above: re-check and append in one
                        # step (atomic for directories), and drop our signature if it did.
                        res = store.append_unless(t.ref, t.digest, blob,
                                                  functools.partial(signed_among, target=t, fingerprints=own_keys))
                    o.status, o.location = ("signed" if res.created else "exists"), res.location
            except AtomicsigError as exc:
                o.status, o.error, o.exit_code = "failed", exc.message, exc.exit_code
            out.append(o)
        return out

    # ``progress`` sees each input's outcomes as soon as that input is done (completion order, so a CLI can print
    # a line per image while the batch runs); the returned list keeps input order. If the caller is interrupted
    # (Ctrl-C, SIGTERM raised as KeyboardInterrupt) the queued inputs are cancelled, the ones already running
    # finish, and their outcomes are still passed to ``progress``: every stored signature gets reported.
    batches: list[list[Outcome] | None] = [None] * len(items)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    futures = {pool.submit(one, text): i for i, text in enumerate(items)}

    def report(fut: concurrent.futures.Future[list[Outcome]]) -> None:
        i = futures[fut]
        if batches[i] is not None:
            return
        batch = fut.result()
        with lock:
            batches[i] = batch
            if progress:
                for o in batch:
                    progress(o)

    try:
        for fut in concurrent.futures.as_completed(futures):
            report(fut)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                report(fut)
        raise
    pool.shutdown(wait=True)
    return [o for batch in batches if batch for o in batch]


@dataclass(frozen=True)
class Planned:
    """What ``sign --dry-run`` reports for one target: would it be signed, or is it signed already."""

    input: str
    target: Target
    status: str  # would-sign | exists

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.input, "identity": self.target.identity, "digest": self.target.digest,
                "note": self.target.note, "status": self.status}


def plan(inputs: Iterable[str], *, resolver: Resolver, store: SignatureStore, keys: list[frozenset[str]],
         force: bool = False) -> list[tuple[str, list[Planned]]]:
    """Per input, its targets and whether each would be signed: a target is done when every key in ``keys``
    (each a key's primary and subkey fingerprints, :func:`atomicsig.ops.keys.secret_key_fingerprints`) already
    signed it, unless ``force``. Nothing is written and no key is unlocked. Resolution errors propagate: a dry
    run answers for the whole batch or not at all.
    """
    out: list[tuple[str, list[Planned]]] = []
    for text in inputs:
        rows = []
        for t in resolver.resolve(text):
            missing = keys if force else [k for k in keys if not already_signed_by(store, t, k)]
            rows.append(Planned(text, t, "would-sign" if missing else "exists"))
        out.append((text, rows))
    return out


def exit_code(outcomes: Iterable[Outcome]) -> int:
    """The exit code of a signing batch: 0 if nothing failed; else 2 if any input was wrong (the caller fixes
    the input first), else the highest failure code (3: could not sign)."""
    failed = [o.exit_code for o in outcomes if o.status == "failed"]
    if not failed:
        return 0
    return min(failed) if 2 in failed else max(failed)
