"""The OpenPGP numbers atomicsig reads or writes, in one place, each with the section that defines it.

Sections are RFC 9580 (which obsoletes RFC 4880; the numbers below are the same in both, RFC 4880's section is
given where it differs) and RFC 6637 for the elliptic-curve algorithms. Every module that compares a packet tag,
an algorithm id, a signature type or a subpacket type imports it from here, so a reader finds the meaning of a
number without knowing which module happened to define it first.

Plain ``int`` class attributes, not ``IntEnum``: values read from the wire compare and hash equal to them, an
unknown value is simply kept as the raw ``int``, and reading one costs a fifth of an ``IntEnum`` member access
on CPython 3.11, which counts in the per-signature parse and verify paths.
"""

from __future__ import annotations

from typing import Final


class PacketTag:
    """Packet type IDs (RFC 9580 §5, table "Packet Type registry"; RFC 4880 §4.3)."""

    SIGNATURE: Final = 2  # §5.2
    SECRET_KEY: Final = 5  # §5.5.1.3
    PUBLIC_KEY: Final = 6  # §5.5.1.1
    SECRET_SUBKEY: Final = 7  # §5.5.1.4
    ONE_PASS: Final = 4  # §5.4
    COMPRESSED: Final = 8  # §5.6
    MARKER: Final = 10  # §5.8
    LITERAL: Final = 11  # §5.9
    PUBLIC_SUBKEY: Final = 14  # §5.5.1.2


class PubkeyAlgo:
    """Public-key algorithm IDs (RFC 9580 §9.1; RFC 4880 §9.1; ECDH/ECDSA RFC 6637 §5)."""

    RSA: Final = 1  # RSA (encrypt or sign)
    RSA_ENCRYPT: Final = 2  # RSA encrypt-only (deprecated)
    RSA_SIGN: Final = 3  # RSA sign-only (deprecated)
    ELGAMAL: Final = 16
    DSA: Final = 17
    ECDH: Final = 18
    ECDSA: Final = 19
    EDDSA: Final = 22  # "EdDSALegacy" in RFC 9580: the Ed25519 keys gpg 2.2 makes


class HashAlgo:
    """Hash algorithm IDs (RFC 9580 §9.5; RFC 4880 §9.4)."""

    MD5: Final = 1
    SHA1: Final = 2
    RIPEMD160: Final = 3
    SHA256: Final = 8
    SHA384: Final = 9
    SHA512: Final = 10
    SHA224: Final = 11


class SymmetricAlgo:
    """Symmetric-key algorithm IDs (RFC 9580 §9.3; RFC 4880 §9.2): the ones secret keys are read with."""

    AES128: Final = 7
    AES192: Final = 8
    AES256: Final = 9


class CompressionAlgo:
    """Compression algorithm IDs (RFC 9580 §9.4; RFC 4880 §9.3)."""

    UNCOMPRESSED: Final = 0
    ZIP: Final = 1  # raw deflate (RFC 1951)
    ZLIB: Final = 2  # RFC 1950
    BZIP2: Final = 3


class SigType:
    """Signature types (RFC 9580 §5.2.1; RFC 4880 §5.2.1)."""

    BINARY: Final = 0x00  # signature of a binary document: what simple signing makes
    TEXT: Final = 0x01
    SUBKEY_BINDING: Final = 0x18
    PRIMARY_BINDING: Final = 0x19  # the "back signature" a signing subkey makes over its primary


class Subpacket:
    """Signature subpacket types (RFC 9580 §5.2.3.7; RFC 4880 §5.2.3.1). Bit 7 of the type octet is "critical"."""

    CREATED: Final = 2  # §5.2.3.11: four-octet creation time
    SIG_EXPIRES: Final = 3  # §5.2.3.18: four-octet seconds after creation
    ISSUER: Final = 16  # §5.2.3.12: eight-octet key ID
    EMBEDDED_SIGNATURE: Final = 32  # §5.2.3.34
    ISSUER_FPR: Final = 33  # §5.2.3.35: one version octet, then the fingerprint (20 octets for v4, 32 for v6)


#: Bit 7 of a subpacket's type octet (RFC 9580 §5.2.3.7).
SUBPACKET_CRITICAL = 0x80


class S2KUsage:
    """The first octet of a secret key's secret part (RFC 9580 §5.5.3; RFC 4880 §5.5.3)."""

    CLEAR: Final = 0  # not encrypted, two-octet checksum
    SHA1_CHECKED: Final = 254  # encrypted, SHA-1 integrity hash (what gpg writes)


class S2KType:
    """String-to-key specifier types (RFC 9580 §3.7.1; RFC 4880 §3.7.1), plus GnuPG's private extension."""

    SIMPLE: Final = 0
    SALTED: Final = 1
    ITERATED: Final = 3
    GNU: Final = 101  # GnuPG extension: a stub without the secret (gnu-dummy, divert-to-card)


#: Fingerprint length in octets by key version (RFC 9580 §5.5.4: v4 SHA-1, v6 SHA-256; LibrePGP v5 SHA-256).
#: An issuer fingerprint subpacket is the version octet followed by exactly this many octets (§5.2.3.35).
FINGERPRINT_LEN: dict[int, int] = {4: 20, 5: 32, 6: 32}

#: Names for public-key algorithms as atomicsig prints them (``keys list``); RSA gets its size appended.
PUBKEY_NAMES: dict[int, str] = {
    PubkeyAlgo.RSA: "rsa", PubkeyAlgo.RSA_ENCRYPT: "rsa", PubkeyAlgo.RSA_SIGN: "rsa", PubkeyAlgo.ELGAMAL: "elg",
    PubkeyAlgo.DSA: "dsa", PubkeyAlgo.ECDH: "ecdh", PubkeyAlgo.ECDSA: "ecdsa", PubkeyAlgo.EDDSA: "eddsa",
}
