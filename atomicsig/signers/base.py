"""What a signer is: anything that turns payload bytes into one binary OpenPGP signed message."""

from __future__ import annotations

from typing import Protocol


class Signer(Protocol):
    """Anything that turns payload bytes into one binary OpenPGP signed message."""

    fingerprint: str

    def sign(self, data: bytes) -> bytes: ...


def signer_fingerprints(signer: Signer) -> frozenset[str]:
    """Fingerprints a signature by ``signer`` may name as its issuer (primary, signing subkey)."""
    fprs = getattr(signer, "key_fingerprints", None)
    return frozenset(fprs) if fprs else frozenset({signer.fingerprint.upper()})
