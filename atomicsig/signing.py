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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import manifest, openpgp, payload, platforms, reference
from .errors import AtomicsigError, InputError, Rejected, SignatureFormatError
from .lookaside import DirectoryStore, SignatureStore, StoredSignature
from .reference import Reference


class Signer(Protocol):
    """Anything that turns payload bytes into one binary OpenPGP signed message."""

    fingerprint: str

    def sign(self, data: bytes) -> bytes: ...


@dataclass
class GPGSigner:
    """Signs through the user's GnuPG keyring/agent (smartcards work), one gpg process per signature."""

    keyring: Any
    fingerprint: str
    passphrase: str | None = field(default=None, repr=False)  # never in a repr or traceback

    def sign(self, data: bytes) -> bytes:
        blob: bytes = self.keyring.sign(data, self.fingerprint, self.passphrase)
        return blob

    @property
    def key_fingerprints(self) -> frozenset[str]:
        """The primary and every subkey: gpg may sign with any signing subkey, and the issuer names that one."""
        try:
            info = self.keyring.resolve(self.fingerprint, secret=False)
        except AtomicsigError:
            return frozenset({self.fingerprint.upper()})
        return frozenset({self.fingerprint.upper(), *(s.upper() for s in info.subkeys)})


def signer_fingerprints(signer: Signer) -> frozenset[str]:
    """Fingerprints a signature by ``signer`` may name as its issuer (primary, signing subkey)."""
    fprs = getattr(signer, "key_fingerprints", None)
    return frozenset(fprs) if fprs else frozenset({signer.fingerprint.upper()})


@dataclass(frozen=True)
class Target:
    """One thing to sign: the identity to claim and the manifest digest to bind it to."""

    ref: Reference  # as given (normalized)
    digest: str
    identity: str
    note: str = ""  # e.g. "linux/arm64 instance of …"
    #: For a manifest list resolved without ``all_instances``: the platforms of the instances left unsigned. Nodes
    #: evaluate the instance they pull, not the list (SPEC §2.2), so ``sign`` warns when this is not empty.
    unsigned_instances: tuple[str, ...] = ()


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


@dataclass
class Resolver:
    """Turns user references into targets, asking registries for digests when needed."""

    tls_verify: bool = True
    cert_dir: str | None = None
    authfile: str | None = None
    all_instances: bool = False
    manifest_file: str | None = None
    #: For :meth:`resolve_pulled`: the platform whose instance a node pulls (None: this machine's, as c/image).
    platform: platforms.Platform | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, text: str) -> list[Target]:
        """What ``sign`` signs for ``text``: the digest it names or the registry serves (and with ``all_instances``
        every instance of a list), each under the identity of :meth:`Reference.identity`."""
        ref, identity = self._parse(text)
        if ref.digest and not self.all_instances and not self.manifest_file:
            return [Target(ref, ref.digest, identity)]
        digest, data = self._fetch(ref)
        return self._with_instances(ref, identity, digest, data)

    def resolve_pulled(self, text: str) -> list[Target]:
        """What a node pulling ``text`` evaluates its policy on (SPEC §2.2): the per-platform instance of a manifest
        list (every instance with ``all_instances``), never the list itself, under the identity ``sign`` claims.

        A digest in ``text`` is taken as the image's own digest without asking the registry, so checks by digest
        work offline; with ``all_instances`` or an explicit ``platform`` the manifest is fetched (by that digest)
        to learn whether it is a list. Raises :class:`Rejected` if a list has no instance a node could pull.
        """
        ref, identity = self._parse(text)
        if ref.digest and not self.all_instances and self.platform is None and not self.manifest_file:
            return [Target(ref, ref.digest, identity)]
        digest, data = self._fetch(ref)
        instances = manifest.list_instances(data)
        if not instances:
            return [Target(ref, digest, identity)]
        of_list = f"of list {digest[:19]}…"
        if self.all_instances:
            return [Target(ref, reference.validate_digest(i.digest), identity, f"{i.platform or 'instance'} {of_list}")
                    for i in instances]
        chosen = platforms.choose(instances, self.platform)
        if chosen is None:
            want = self.platform or platforms.current()
            have = ", ".join(i.platform or "(no platform)" for i in instances)
            raise Rejected(f"manifest list {digest} has no instance for {want} (it has {have}); "
                           "a node on that platform cannot pull it")
        return [Target(ref, reference.validate_digest(chosen.digest), identity, f"{chosen.platform} {of_list}")]

    @staticmethod
    def _parse(text: str) -> tuple[Reference, str]:
        ref = reference.parse(text.strip())
        if ref.name_only:
            ref = ref.with_tag_default()
        return ref, ref.identity()

    def _fetch(self, ref: Reference) -> tuple[str, bytes]:
        """The manifest digest and bytes: from --manifest, else from the registry (by digest if ``ref`` has one)."""
        if self.manifest_file:
            try:
                data = Path(self.manifest_file).read_bytes()
            except OSError as exc:
                raise InputError(f"cannot read manifest {self.manifest_file}: {exc.strerror}") from exc
            digest = manifest.digest(data)
            if ref.digest and ref.digest != digest:
                raise InputError(f"{self.manifest_file} has digest {digest}, not {ref.digest}")
            return digest, data
        from .registry import client_for

        client = client_for(ref.domain, tls_verify=self.tls_verify, cert_dir=self.cert_dir, authfile=self.authfile)
        fetched = client.get_manifest(ref)
        return fetched.digest, fetched.data

    def _with_instances(self, ref: Reference, identity: str, digest: str, data: bytes) -> list[Target]:
        instances = manifest.list_instances(data)
        unsigned = () if self.all_instances else tuple(i.platform or "instance" for i in instances)
        targets = [Target(ref, digest, identity, unsigned_instances=unsigned)]
        if instances and self.all_instances:
            for inst in instances:
                note = f"{inst.platform or 'instance'} of {digest[:19]}"
                targets.append(Target(ref, reference.validate_digest(inst.digest), identity, note))
        return targets


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
