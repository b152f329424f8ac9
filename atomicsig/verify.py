"""Decide whether an image passes a ``signedBy`` requirement, signature by signature (SPEC §2.1–2.4).

Order of checks for each signature is c/image's: recognize the blob, verify it cryptographically against the
trusted keys (subkeys map to their primary; expired/revoked keys and expired signatures fail), parse the payload
strictly, compare the digest, then the identity. One accepted signature is enough for the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from . import payload
from .blob import SIGSTORE_FORMAT, simple_signing_body
from .errors import AtomicsigError, SignatureFormatError
from .identity import DEFAULT, IdentityMatcher
from .lookaside import SignatureStore, StoredSignature
from .reference import Reference


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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ImageVerdict:
    reference: str
    digest: str
    store: str
    accepted: bool
    signatures: list[SignatureResult] = field(default_factory=list)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "digest": self.digest, "store": self.store, "accepted": self.accepted,
                "reason": self.reason, "signatures": [s.as_dict() for s in self.signatures]}


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
        return res
    res.identity, res.digest, res.timestamp = claimed.docker_reference, claimed.manifest_digest, claimed.timestamp
    if claimed.manifest_digest != digest:
        res.reason = f"signature is for digest {claimed.manifest_digest}, not {digest}"
        return res
    if not matcher.matches(intended, claimed.docker_reference):
        res.reason = f"signature claims identity {claimed.docker_reference!r}, which does not match " \
                     f"{intended} ({matcher.describe()})"
        return res
    res.accepted, res.reason = True, "accepted"
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
    sigs = store.read(intended, digest)
    verdict = ImageVerdict(str(intended), digest, store.describe(), False)
    if not sigs:
        verdict.reason = "a signature was required, but no signature exists"
        return verdict
    for sig in sigs:
        verdict.signatures.append(check_signature(sig, verifier, intended, digest, matcher))
    unreadable = unrecognized_blob(sigs)
    if unreadable:
        verdict.reason = f"{unreadable}; containers/image fails the whole signature read, so nodes reject the image"
        return verdict
    verdict.accepted = any(s.accepted for s in verdict.signatures)
    verdict.reason = "accepted" if verdict.accepted else "no signature was accepted: " + \
        "; ".join(f"signature-{s.index}: {s.reason}" for s in verdict.signatures)
    return verdict


def verify_error_verdict(intended: Reference, digest: str, store: str, exc: AtomicsigError) -> ImageVerdict:
    return ImageVerdict(str(intended), digest, store, False, reason=exc.message)
