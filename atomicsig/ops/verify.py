"""Decide whether an image passes a ``signedBy`` requirement, signature by signature (SPEC §2.1–2.4).

Order of checks for each signature is c/image's: recognize the blob, verify it cryptographically against the
trusted keys (subkeys map to their primary; expired/revoked keys and expired signatures fail), parse the payload
strictly, compare the digest, then the identity. One accepted signature is enough for the image.

Every image gets one of three outcomes, never two at once: ``accepted``, ``rejected`` (a decided negative answer:
no acceptable signature, or no image to pull — the registry answered 404, or a manifest list has no instance for
the platform) or ``error`` (the answer could not be computed: registry or store unreachable, 5xx, auth refused).
A pipeline must be able to tell "rejected" from "couldn't check" (exit 1 vs 3).

Several signers, all required (issue 14 #5): an :class:`AllOf` names key sets that must *each* have signed, as a
policy with one ``signedBy`` per key set (c/image ANDs a scope's requirements, SPEC §5.5); the image is accepted
only if every signer has an accepted signature, and each missing one is named (:func:`missing_signer`).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from atomicsig.errors import (
    EXIT_NEGATIVE,
    EXIT_OK,
    EXIT_UNDECIDED,
    AtomicsigError,
    InputError,
    NotFound,
    SignatureFormatError,
)
from atomicsig.format import identity, payload, reference
from atomicsig.format.blob import SIGSTORE_FORMAT, simple_signing_body
from atomicsig.format.identity import DEFAULT, IdentityMatcher
from atomicsig.format.reference import Reference
from atomicsig.store.base import SignatureStore, StoredSignature
from atomicsig.store.directory import DirectoryStore

__all__ = [
    "ACCEPTED",
    "ERROR",
    "MATCH_RULES",
    "REJECTED",
    "AllOf",
    "ImageVerdict",
    "RequiredSigner",
    "SignatureResult",
    "SignerOutcome",
    "Verifier",
    "backends_note",
    "check_signature",
    "exit_code",
    "identity_matcher",
    "missing_signer",
    "missing_store_warning",
    "unrecognized_blob",
    "verify_error_verdict",
    "verify_image",
    "verify_image_all",
    "verify_many",
    "verify_one",
]

if TYPE_CHECKING:
    from atomicsig.ops.resolve import Resolver

ACCEPTED, REJECTED, ERROR = "accepted", "rejected", "error"
_EXIT = {ACCEPTED: EXIT_OK, REJECTED: EXIT_NEGATIVE, ERROR: EXIT_UNDECIDED}

#: ``verify --match``: the signedIdentity rules that need no argument (SPEC §2.3), by their CLI names.
MATCH_RULES: dict[str, type[IdentityMatcher]] = {
    "repo-digest-or-exact": identity.MatchRepoDigestOrExact, "exact": identity.MatchExact,
    "repository": identity.MatchRepository}


def identity_matcher(match: str = "repo-digest-or-exact", *, exact_reference: str | None = None,
                     exact_repository: str | None = None, remap: str | None = None) -> IdentityMatcher:
    """The signedIdentity rule ``verify`` applies, as a node's ``signedBy`` would (SPEC §2.3).

    ``exact_reference``, ``exact_repository`` or ``remap`` (``PREFIX=SIGNED_PREFIX``) name a rule with its
    argument and replace ``match``; at most one of them may be given (InputError, exit 2).
    """
    chosen = sum(x is not None for x in (exact_reference, exact_repository, remap))
    if chosen > 1:
        raise InputError("use only one of --exact-reference, --exact-repository, --remap")
    if exact_reference:
        return identity.ExactReference(exact_reference)
    if exact_repository:
        return identity.ExactRepository(exact_repository)
    if remap:
        prefix, sep, signed = remap.partition("=")
        if not sep:
            raise InputError("--remap takes PREFIX=SIGNED_PREFIX")
        return identity.RemapIdentity(prefix, signed)
    if match not in MATCH_RULES:
        raise InputError(f"unknown identity rule {match!r}; use one of {', '.join(MATCH_RULES)}")
    return MATCH_RULES[match]()


def missing_store_warning(store: SignatureStore, *, explicit: bool) -> str | None:
    """A directory sigstore that does not exist: an input error when the user named it (a typo would otherwise
    report every image "rejected"), a warning for the built-in default (no image can have a signature there)."""
    if not isinstance(store, DirectoryStore) or store.root.is_dir():
        return None
    if explicit:
        raise InputError(f"sigstore {store.root} does not exist (or is not a directory)",
                         hint="check the --sigstore path; nothing was verified")
    return f"the default sigstore {store.root} does not exist; no image can have a signature there"


class Verifier(Protocol):
    """Cryptographic verification against a fixed set of trusted keys."""

    fingerprints: frozenset[str]

    def verify(self, blob: bytes) -> Any:
        """Return an object with ``payload`` (bytes) and ``signer`` (primary fpr); raise SignatureFormatError."""
        ...


@dataclass
class SignatureResult:
    index: int
    location: str
    accepted: bool
    reason: str
    signer: str | None = None
    identity: str | None = None
    digest: str | None = None
    timestamp: int | None = None
    #: Only when containers/image's GPGME and Sequoia backends would decide differently (issue 16 #5), e.g.
    #: ``{"gpgme": "accept", "sequoia": "refuse: SHA-1 data signature …"}``: what changes at a node upgrade.
    backends: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if out["backends"] is None:
            del out["backends"]
        return out


def backends_note(backends: dict[str, str]) -> str:
    """The reason's words for an accepted signature that one containers/image backend would refuse, e.g. "nodes on
    containers/image's Sequoia backend refuse it: SHA-1 data signature …" (the accepting one goes without saying)."""
    names = {"gpgme": "GPGME", "sequoia": "Sequoia"}
    return "; ".join(f"nodes on containers/image's {names.get(b, b)} backend refuse it: {v.removeprefix('refuse: ')}"
                     for b, v in sorted(backends.items()) if v.startswith("refuse"))


def missing_signer(signer: str, why: str) -> str:
    """The one wording for a required signer without an accepted signature, shared by ``verify --require-all``,
    ``audit`` and ``policy explain --check`` so a script can look for it."""
    return f"required signer {signer}: no valid signature; {why}"


@dataclass(frozen=True)
class RequiredSigner:
    """One signer an :class:`AllOf` requires: ``name`` is how reports call it (a ``--key`` value, a key set)."""

    name: str
    verifier: Verifier


@dataclass(frozen=True)
class AllOf:
    """Every signer must have signed (each is one ``signedBy``; any key of its own keyring may sign for it)."""

    signers: tuple[RequiredSigner, ...]


@dataclass
class SignerOutcome:
    """Whether one required signer has an accepted signature on the image, and why not."""

    name: str
    fingerprints: tuple[str, ...]
    accepted: bool
    reason: str
    signatures: list[SignatureResult] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``name (FPR, …)``: the key set and the keys it trusts, as messages name the signer."""
        return f"{self.name} ({', '.join(self.fingerprints)})" if self.fingerprints else self.name

    def as_dict(self) -> dict[str, Any]:
        return {"signer": self.name, "fingerprints": list(self.fingerprints), "accepted": self.accepted,
                "reason": self.reason, "signatures": [s.as_dict() for s in self.signatures]}


@dataclass
class ImageVerdict:
    """The answer for one image a node would pull: one ``outcome``; ``accepted`` is derived from it (kept in the
    JSON for callers that predate ``outcome``), so the two can never disagree."""

    reference: str  # the reference checked, normalized (tag and digest as given)
    digest: str  # the manifest digest whose signatures were judged ("" if it could not be learned)
    store: str
    outcome: str = REJECTED  # accepted | rejected | error
    signatures: list[SignatureResult] = field(default_factory=list)
    reason: str = ""
    intended: str = ""  # the identity a signature must fit (the tag when one is given)
    note: str = ""  # e.g. "linux/arm64 of list sha256:…" for an instance of a manifest list
    position: int = 0  # index of the input this verdict answers, for printing in input order
    required: list[SignerOutcome] = field(default_factory=list)  # per signer of an AllOf (else empty)

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED

    @property
    def exit_code(self) -> int:
        return _EXIT[self.outcome]

    def as_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "digest": self.digest, "store": self.store, "accepted": self.accepted,
                "outcome": self.outcome, "reason": self.reason, "intended": self.intended or self.reference,
                "note": self.note or None, "signatures": [s.as_dict() for s in self.signatures],
                **({"required": [r.as_dict() for r in self.required]} if self.required else {})}


def check_signature(sig: StoredSignature, verifier: Verifier, intended: Reference, digest: str,
                    matcher: IdentityMatcher = DEFAULT) -> SignatureResult:
    """Apply every check to one stored signature and say why it is accepted or not."""
    res = SignatureResult(sig.index, sig.location, False, "")
    try:
        verified = verifier.verify(sig.blob)
        res.signer = verified.signer
        claimed = payload.parse(verified.payload)
    except SignatureFormatError as exc:
        res.reason = exc.message
        res.backends = getattr(exc, "backends", None)
        return res
    res.backends = getattr(verified, "backends", None)
    res.identity, res.digest, res.timestamp = claimed.docker_reference, claimed.manifest_digest, claimed.timestamp
    if claimed.manifest_digest != digest:
        res.reason = f"signature is for digest {claimed.manifest_digest}, not {digest}"
        return res
    if not matcher.matches(intended, claimed.docker_reference):
        res.reason = f"signature claims identity {claimed.docker_reference!r}, which does not match " \
                     f"{intended} ({matcher.describe()})"
        return res
    res.accepted, res.reason = True, "accepted"
    if res.backends:
        res.reason = f"accepted; {backends_note(res.backends)}"
    return res


def unrecognized_blob(sigs: list[StoredSignature]) -> str | None:
    """Why the first blob c/image's ``FromBlob`` would not recognize is unusable, or None.

    Such a blob (armor, HTML, empty file, unknown framing) makes c/image fail the *whole* read, so one good
    signature after it does not rescue the image (SPEC §1.3, §3.2; found by tests/test_differential.py). A framed
    sigstore blob is recognized there and only skipped by ``signedBy``, and the extension API does not sniff at
    all (SPEC §1.3), so neither is a reason here.
    """
    for sig in sigs:
        if not sig.sniffed or sig.blob.startswith(b"\x00" + SIGSTORE_FORMAT + b"\n"):
            continue
        try:
            simple_signing_body(sig.blob)
        except SignatureFormatError as exc:
            return f"signature-{sig.index} is unreadable: {exc.message}"
    return None


def verify_image(intended: Reference, digest: str, store: SignatureStore, verifier: Verifier,
                 matcher: IdentityMatcher = DEFAULT) -> ImageVerdict:
    """Read all signatures of ``digest`` and decide. Store/network errors propagate (exit 3), as in c/image."""
    return _judge(intended, digest, store.read(intended, digest), store.describe(), verifier, matcher)


def _judge(intended: Reference, digest: str, sigs: list[StoredSignature], store: str, verifier: Verifier,
           matcher: IdentityMatcher) -> ImageVerdict:
    verdict = ImageVerdict(str(intended), digest, store, REJECTED, intended=str(intended))
    if not sigs:
        verdict.reason = "a signature was required, but no signature exists"
        return verdict
    for sig in sigs:
        verdict.signatures.append(check_signature(sig, verifier, intended, digest, matcher))
    unreadable = unrecognized_blob(sigs)
    if unreadable:
        verdict.reason = f"{unreadable}; containers/image fails the whole signature read, so nodes reject the image"
        return verdict
    verdict.outcome = ACCEPTED if any(s.accepted for s in verdict.signatures) else REJECTED
    verdict.reason = "accepted" if verdict.accepted else "no signature was accepted: " + \
        "; ".join(f"signature-{s.index}: {s.reason}" for s in verdict.signatures)
    return verdict


def verify_image_all(intended: Reference, digest: str, store: SignatureStore, required: AllOf,
                     matcher: IdentityMatcher = DEFAULT) -> ImageVerdict:
    """:func:`verify_image` for several required signers: the signatures are read once and judged per signer (as
    c/image judges each ``signedBy``); accepted only if every signer has an accepted signature. ``signatures`` holds
    each signature once (as some signer accepted it, else as the first signer saw it); ``required`` the detail."""
    sigs = store.read(intended, digest)
    verdict = ImageVerdict(str(intended), digest, store.describe(), REJECTED, intended=str(intended))
    for signer in required.signers:
        part = _judge(intended, digest, sigs, store.describe(), signer.verifier, matcher)
        verdict.required.append(SignerOutcome(signer.name, tuple(sorted(signer.verifier.fingerprints)),
                                              part.accepted, part.reason, part.signatures))
    for i, first in enumerate(verdict.required[0].signatures if verdict.required else []):
        verdict.signatures.append(next((r.signatures[i] for r in verdict.required if r.signatures[i].accepted),
                                       first))
    missing = [r for r in verdict.required if not r.accepted]
    verdict.outcome = REJECTED if missing or not verdict.required else ACCEPTED
    verdict.reason = "; ".join(missing_signer(r.label, r.reason) for r in missing) if missing else \
        "accepted" if verdict.required else "no required signer was given"
    return verdict


def _verify_target(intended: Reference, digest: str, store: SignatureStore, verifier: Verifier | AllOf,
                   matcher: IdentityMatcher) -> ImageVerdict:
    if isinstance(verifier, AllOf):
        return verify_image_all(intended, digest, store, verifier, matcher)
    return verify_image(intended, digest, store, verifier, matcher)


def verify_error_verdict(intended: Reference, digest: str, store: str, exc: AtomicsigError) -> ImageVerdict:
    """The verdict for an image whose check raised ``exc``.

    A 404 for the manifest (:class:`NotFound`) and a list without an instance for the platform (exit code 1) are
    decided negative answers about that image — a node pulling it fails too — so they are ``rejected``; anything
    else (unreachable, 5xx, auth, store unreadable) is ``error``.
    """
    negative = isinstance(exc, NotFound) or exc.exit_code == EXIT_NEGATIVE
    reason = exc.message
    if isinstance(exc, NotFound) and not reason.startswith("manifest unknown"):
        reason = f"manifest unknown: {reason}"
    return ImageVerdict(str(intended), digest, store, REJECTED if negative else ERROR, reason=reason,
                        intended=str(intended))


def verify_one(text: str, *, resolver: Resolver, store: SignatureStore, verifier: Verifier | AllOf,
               matcher: IdentityMatcher = DEFAULT, position: int = 0) -> list[ImageVerdict]:
    """Every verdict for one user reference: one image, or each instance of a list a node would pull.

    Input errors (exit 2) propagate: a wrong flag or reference is the caller's to fix, not a property of the image.
    """
    given = reference.parse(text.strip()).with_tag_default()  # the name a node pulls (":latest" if none)
    try:
        targets = resolver.resolve_pulled(text)
    except AtomicsigError as exc:
        if exc.exit_code == 2:
            raise
        verdict = verify_error_verdict(given, given.digest or "", store.describe(), exc)
        verdict.intended, verdict.position = given.identity(), position
        return [verdict]
    out: list[ImageVerdict] = []
    for t in targets:
        intended = reference.parse(t.identity)
        try:
            verdict = _verify_target(intended, t.digest, store, verifier, matcher)
        except AtomicsigError as exc:
            if exc.exit_code == 2:
                raise
            verdict = verify_error_verdict(intended, t.digest, store.describe(), exc)
        verdict.reference, verdict.intended, verdict.note, verdict.position = str(given), t.identity, t.note, position
        out.append(verdict)
    return out


def verify_many(inputs: Sequence[str], *, resolver: Resolver, store: SignatureStore, verifier: Verifier | AllOf,
                matcher: IdentityMatcher = DEFAULT, workers: int = 1) -> Iterator[ImageVerdict]:
    """Verdicts for every input, yielded as each input's check completes (so a caller can record each at once).

    With ``workers`` > 1 the order is completion order; ``ImageVerdict.position`` gives the input order back.
    Stopping the iteration early cancels the checks not yet started.
    """
    if workers <= 1:
        for i, text in enumerate(inputs):
            yield from verify_one(text, resolver=resolver, store=store, verifier=verifier, matcher=matcher,
                                  position=i)
        return
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(verify_one, text, resolver=resolver, store=store, verifier=verifier,
                               matcher=matcher, position=i) for i, text in enumerate(inputs)]
        for fut in concurrent.futures.as_completed(futures):
            yield from fut.result()
    finally:
        # Normally every future is done here. On an exception (Ctrl-C, a closed stdout, an input error) the checks
        # not started are dropped and the caller is not held up by ones still waiting on the network.
        pool.shutdown(wait=False, cancel_futures=True)


def exit_code(verdicts: Sequence[ImageVerdict]) -> int:
    """3 if any image could not be checked, else 1 if any was rejected, else 0."""
    codes = {v.exit_code for v in verdicts}
    return EXIT_UNDECIDED if EXIT_UNDECIDED in codes else EXIT_NEGATIVE if EXIT_NEGATIVE in codes else EXIT_OK
