"""The OpenPGP numbers atomicsig reads or writes, in one place, each with the section that defines it.

Sections are RFC 9580 (which obsoletes RFC 4880; the numbers below are the same in both, RFC 4880's section is
given where it differs) and RFC 6637 for the elliptic-curve algorithms. Every module that compares a packet tag,
an algorithm id, a signature type or a subpacket type imports it from here, so a reader finds the meaning of a
number without knowing which module happened to define it first.

``IntEnum`` so that values read from the wire (plain ``int``) compare and hash equal to the members, and an
unknown value is simply not a member (parsers keep the raw ``int``; nothing here raises on unknown ids).
"""

from __future__ import annotations

from enum import IntEnum


class PacketTag(IntEnum):
    """Packet type IDs (RFC 9580 §5, table "Packet Type registry"; RFC 4880 §4.3)."""

    SIGNATURE = 2  # §5.2
    SECRET_KEY = 5  # §5.5.1.3
    PUBLIC_KEY = 6  # §5.5.1.1
    SECRET_SUBKEY = 7  # §5.5.1.4
    ONE_PASS = 4  # §5.4
    COMPRESSED = 8  # §5.6
    MARKER = 10  # §5.8
    LITERAL = 11  # §5.9
    PUBLIC_SUBKEY = 14  # §5.5.1.2


class PubkeyAlgo(IntEnum):
    """Public-key algorithm IDs (RFC 9580 §9.1; RFC 4880 §9.1; ECDH/ECDSA RFC 6637 §5)."""

    RSA = 1  # RSA (encrypt or sign)
    RSA_ENCRYPT = 2  # RSA encrypt-only (deprecated)
    RSA_SIGN = 3  # RSA sign-only (deprecated)
    ELGAMAL = 16
    DSA = 17
    ECDH = 18
    ECDSA = 19
    EDDSA = 22  # "EdDSALegacy" in RFC 9580: the Ed25519 keys gpg 2.2 makes


class HashAlgo(IntEnum):
    """Hash algorithm IDs (RFC 9580 §9.5; RFC 4880 §9.4)."""

    MD5 = 1
    SHA1 = 2
    RIPEMD160 = 3
    SHA256 = 8
    SHA384 = 9
    SHA512 = 10
    SHA224 = 11


class SymmetricAlgo(IntEnum):
    """Symmetric-key algorithm IDs (RFC 9580 §9.3; RFC 4880 §9.2): the ones secret keys are read with."""

    AES128 = 7
    AES192 = 8
    AES256 = 9


class CompressionAlgo(IntEnum):
    """Compression algorithm IDs (RFC 9580 §9.4; RFC 4880 §9.3)."""

    UNCOMPRESSED = 0
    ZIP = 1  # raw deflate (RFC 1951)
    ZLIB = 2  # RFC 1950
    BZIP2 = 3


class SigType(IntEnum):
    """Signature types (RFC 9580 §5.2.1; RFC 4880 §5.2.1)."""

    BINARY = 0x00  # signature of a binary document: what simple signing makes
    TEXT = 0x01
    SUBKEY_BINDING = 0x18
    PRIMARY_BINDING = 0x19  # the "back signature" a signing subkey makes over its primary


class Subpacket(IntEnum):
    """Signature subpacket types (RFC 9580 §5.2.3.7; RFC 4880 §5.2.3.1). Bit 7 of the type octet is "critical"."""

    CREATED = 2  # §5.2.3.11: four-octet creation time
    SIG_EXPIRES = 3  # §5.2.3.18: four-octet seconds after creation
    ISSUER = 16  # §5.2.3.12: eight-octet key ID
    EMBEDDED_SIGNATURE = 32  # §5.2.3.34
    ISSUER_FPR = 33  # §5.2.3.35: one version octet, then the fingerprint (20 octets for v4, 32 for v6)


#: Bit 7 of a subpacket's type octet (RFC 9580 §5.2.3.7).
SUBPACKET_CRITICAL = 0x80


class S2KUsage(IntEnum):
    """The first octet of a secret key's secret part (RFC 9580 §5.5.3; RFC 4880 §5.5.3)."""

    CLEAR = 0  # not encrypted, two-octet checksum
    SHA1_CHECKED = 254  # encrypted, SHA-1 integrity hash (what gpg writes)


class S2KType(IntEnum):
    """String-to-key specifier types (RFC 9580 §3.7.1; RFC 4880 §3.7.1), plus GnuPG's private extension."""

    SIMPLE = 0
    SALTED = 1
    ITERATED = 3
    GNU = 101  # GnuPG extension: a stub without the secret (gnu-dummy, divert-to-card)


#: Fingerprint length in octets by key version (RFC 9580 §5.5.4: v4 SHA-1, v6 SHA-256; LibrePGP v5 SHA-256).
#: An issuer fingerprint subpacket is the version octet followed by exactly this many octets (§5.2.3.35).
FINGERPRINT_LEN: dict[int, int] = {4: 20, 5: 32, 6: 32}

#: Names for public-key algorithms as atomicsig prints them (``keys list``); RSA gets its size appended.
PUBKEY_NAMES: dict[int, str] = {
    PubkeyAlgo.RSA: "rsa", PubkeyAlgo.RSA_ENCRYPT: "rsa", PubkeyAlgo.RSA_SIGN: "rsa", PubkeyAlgo.ELGAMAL: "elg",
    PubkeyAlgo.DSA: "dsa", PubkeyAlgo.ECDH: "ecdh", PubkeyAlgo.ECDSA: "ecdsa", PubkeyAlgo.EDDSA: "eddsa",
}
