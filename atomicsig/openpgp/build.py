"""Build a binary inline-signed OpenPGP message around a signature value computed elsewhere (RFC 4880 §5).

The agent signer asks gpg-agent only for the private-key operation on a digest; everything around it — the
one-pass signature packet, the literal data packet, the v4 signature packet and the hash they commit to — is
assembled here, byte for byte what ``gpg --sign`` emits for a simple signature (minus compression, which
containers/image does not need). Pure: no I/O, no clock.

Layout written (old-format packet headers, like gpg, so the first byte is 0x90, which containers/image
recognizes as a simple-signing blob — SPEC §1.3)::

    one-pass signature (tag 4, v3)  | literal data (tag 11, 'b', no name) | signature (tag 2, v4, type 0x00)

The signature hashes the literal *contents*, then the v4 header through the hashed subpackets, then the trailer
``04 FF <len32>`` (RFC 4880 §5.2.4).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from atomicsig.errors import GPGError, InputError
from atomicsig.openpgp.constants import FINGERPRINT_LEN, HashAlgo, PacketTag, PubkeyAlgo, SigType, Subpacket

_HASHLIB: dict[int, str] = {HashAlgo.SHA256: "sha256", HashAlgo.SHA384: "sha384", HashAlgo.SHA512: "sha512"}

#: ECDSA curves as gpg --with-colons names them, and the hash gpg pairs with each (the digest must be at
#: least as long as the curve order, so gpg moves up from SHA-256 for the larger NIST curves).
ECDSA_CURVE_HASH = {"nistp256": HashAlgo.SHA256, "nistp384": HashAlgo.SHA384, "nistp521": HashAlgo.SHA512}
EDDSA_CURVES = frozenset({"ed25519"})


class UnsupportedKey(InputError):
    """A key algorithm this module cannot frame; the caller signs through gpg instead."""


def hash_for(pubkey_algo: int, curve: str) -> int:
    """The OpenPGP hash algorithm id to sign with, or UnsupportedKey."""
    if pubkey_algo == PubkeyAlgo.RSA:
        return HashAlgo.SHA256
    if pubkey_algo == PubkeyAlgo.EDDSA and curve.lower() in EDDSA_CURVES:
        return HashAlgo.SHA256
    if pubkey_algo == PubkeyAlgo.ECDSA and curve.lower() in ECDSA_CURVE_HASH:
        return ECDSA_CURVE_HASH[curve.lower()]
    what = f"algorithm {pubkey_algo}" + (f" on curve {curve}" if curve else "")
    raise UnsupportedKey(f"the agent signer cannot sign with public-key {what}")


@dataclass(frozen=True)
class Issuer:
    """The (sub)key that makes the signature: its v4 fingerprint and algorithms."""

    fingerprint: bytes  # 20 bytes, v4
    pubkey_algo: int
    hash_algo: int

    @property
    def keyid(self) -> bytes:
        return self.fingerprint[-8:]


@dataclass(frozen=True)
class Pending:
    """A message whose signature value is still to be computed over ``digest``."""

    issuer: Issuer
    head: bytes  # one-pass packet + literal packet
    hashed_part: bytes  # signature packet body from the version byte through the hashed subpackets
    digest: bytes


def _old_packet(tag: int, body: bytes) -> bytes:
    """An old-format packet with the shortest definite length (gpg's choice for these packets)."""
    n = len(body)
    if n < 0x100:
        return bytes([0x80 | tag << 2 | 0, n]) + body
    if n < 0x10000:
        return bytes([0x80 | tag << 2 | 1]) + n.to_bytes(2, "big") + body
    return bytes([0x80 | tag << 2 | 2]) + n.to_bytes(4, "big") + body


def _subpacket(kind: int, data: bytes) -> bytes:
    n = len(data) + 1
    if n >= 192:  # never for the subpackets written here
        raise ValueError("subpacket too long")
    return bytes([n, kind]) + data


# Built once: the fixed parts of every message (per-signature work stays at the bytes that change).
_V4_FPR_LEN = FINGERPRINT_LEN[4]
_ISSUER_FPR_HEAD = _subpacket(Subpacket.ISSUER_FPR, b"\x04" + bytes(_V4_FPR_LEN))[:3]  # length, type, version 4
_CREATED_HEAD = _subpacket(Subpacket.CREATED, bytes(4))[:2]
_ISSUER_HEAD = _subpacket(Subpacket.ISSUER, bytes(8))[:2]
_ONE_PASS, _LITERAL, _SIGNATURE = PacketTag.ONE_PASS, PacketTag.LITERAL, PacketTag.SIGNATURE
_BINARY, _RSA, _EDDSA = SigType.BINARY, PubkeyAlgo.RSA, PubkeyAlgo.EDDSA


def prepare(data: bytes, issuer: Issuer, created: int) -> Pending:
    """Frame ``data`` and compute the digest the private key must sign."""
    if len(issuer.fingerprint) != _V4_FPR_LEN:
        raise ValueError("only v4 (20-byte) fingerprints are supported")
    # One-pass v3 (RFC 9580 §5.4): version, type, hash, pubkey, key ID, "last" flag 1 (no nested signature).
    one_pass = _old_packet(_ONE_PASS, bytes([3, _BINARY, issuer.hash_algo, issuer.pubkey_algo])
                           + issuer.keyid + b"\x01")
    literal = _old_packet(_LITERAL, b"b\x00" + created.to_bytes(4, "big") + data)
    # Hashed subpackets: issuer fingerprint (04 + 20 octets), creation time.
    hashed = _ISSUER_FPR_HEAD + issuer.fingerprint + _CREATED_HEAD + created.to_bytes(4, "big")
    hashed_part = bytes([4, _BINARY, issuer.pubkey_algo, issuer.hash_algo]) + len(hashed).to_bytes(2, "big") \
        + hashed
    h = hashlib.new(_HASHLIB[issuer.hash_algo])
    h.update(data)
    h.update(hashed_part)
    h.update(b"\x04\xff" + len(hashed_part).to_bytes(4, "big"))
    return Pending(issuer, one_pass + literal, hashed_part, h.digest())


def mpi(value: bytes) -> bytes:
    """An OpenPGP MPI: bit count of the value without leading zeros, then its minimal big-endian bytes."""
    v = value.lstrip(b"\x00")
    bits = (len(v) - 1) * 8 + v[0].bit_length() if v else 0
    return bits.to_bytes(2, "big") + v


def eddsa_component(value: bytes) -> bytes:
    """Normalize an Ed25519 r or s as gpg 2.2 writes it: a plain MPI of the 32-byte big-endian value.

    libgcrypt may hand back the value with a 0x40 "native" prefix (33 bytes) or with leading zeros dropped
    (fewer than 32 bytes); both denote the same number, which ``mpi`` then encodes minimally.
    """
    if len(value) == 33 and value[0] == 0x40:
        value = value[1:]
    if len(value) > 32:
        raise GPGError(f"gpg-agent returned a {len(value)}-byte Ed25519 signature component")
    return value


def finish(pending: Pending, components: list[bytes]) -> bytes:
    """Complete the message with the signature value's components (RSA: [s]; ECDSA/EdDSA: [r, s])."""
    want = 1 if pending.issuer.pubkey_algo == _RSA else 2
    if len(components) != want:
        raise GPGError(f"expected {want} signature component(s), got {len(components)}")
    if pending.issuer.pubkey_algo == _EDDSA:
        components = [eddsa_component(c) for c in components]
    unhashed = _ISSUER_HEAD + pending.issuer.keyid  # issuer key ID subpacket
    body = pending.hashed_part + len(unhashed).to_bytes(2, "big") + unhashed + pending.digest[:2] \
        + b"".join(mpi(c) for c in components)
    return pending.head + _old_packet(_SIGNATURE, body)
