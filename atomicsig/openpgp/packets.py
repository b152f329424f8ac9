"""A small, read-only OpenPGP packet reader (RFC 4880 / RFC 9580 framing) for signed messages.

Used to look inside a signature blob *without* trusting it: which key claims to have signed it, and what the
payload says. That is enough to skip re-signing an image the same key already signed, to print
``untrusted`` dumps, and to give precise reasons for rejects. Cryptographic verification is done elsewhere.

:func:`parse_message` is also the structural gate every verification path passes first (native verifier, gpg
fallback, serve, sync intake): a simple-signing blob is exactly one signed message with exactly one signature
packet and nothing after it (SPEC §1.3 and "What changed upstream by 2026"; c-libs
``docs/containers-signature.5.md``). skopeo 1.9.3 refuses trailing bytes after an uncompressed message ("No
data"), while gpg — and so a verifier that only reads gpg's GOODSIG — accepts them; refusing every extra byte
here keeps atomicsig from ever saying yes where a node says no.
"""

from __future__ import annotations

import bz2
import zlib
from dataclasses import dataclass, field

from atomicsig.errors import SignatureFormatError
from atomicsig.openpgp.constants import (
    FINGERPRINT_LEN,
    SUBPACKET_CRITICAL,
    CompressionAlgo,
    PacketTag,
    Subpacket,
)

_TYPE_MASK = SUBPACKET_CRITICAL - 1  # the subpacket type: the type octet without its critical bit

# Compared for every packet and subpacket of every signature read (serve, sync, verify): bound to module names
# once, as a global lookup is cheaper than a class attribute one. The values are the constants module's.
_SIGNATURE, _ONE_PASS, _COMPRESSED, _LITERAL = (PacketTag.SIGNATURE, PacketTag.ONE_PASS, PacketTag.COMPRESSED,
                                                PacketTag.LITERAL)
_CREATED, _SIG_EXPIRES, _ISSUER, _ISSUER_FPR = (Subpacket.CREATED, Subpacket.SIG_EXPIRES, Subpacket.ISSUER,
                                                Subpacket.ISSUER_FPR)

#: Bound on decompressed size: a 4 MiB blob must not expand into gigabytes (zip bomb).
MAX_DECOMPRESSED = 16 * 1024 * 1024


@dataclass
class Packet:
    tag: int
    body: bytes


@dataclass
class SignatureInfo:
    """Fields of a v4/v5/v6 signature packet that matter to us."""

    version: int
    sig_type: int
    pubkey_algo: int
    hash_algo: int
    hashed: bytes  # the hashed subpacket area, as needed to recompute the hash
    unhashed: bytes
    hash_prefix: bytes
    mpis: bytes
    issuer_keyid: str | None = None
    issuer_fingerprint: str | None = None
    created: int | None = None
    expires_after: int | None = None  # signature expiration time, seconds after creation
    raw_header: bytes = b""


@dataclass
class SignedMessage:
    """A parsed inline signed message: its literal data and its signature packets."""

    literal: bytes
    literal_format: int
    signatures: list[SignatureInfo] = field(default_factory=list)
    one_pass_count: int = 0
    #: Packet tags in order (inside the compressed packet if there was one): one of ``_LAYOUTS``; lets a
    #: strict consumer (nativeverify) compute only the one layout it fully understands.
    structure: tuple[int, ...] = ()
    one_pass_bodies: list[bytes] = field(default_factory=list)


def _read_length_new(data: bytes, i: int) -> tuple[int, int, bool]:
    """New-format length at data[i]; returns (length, new offset, partial)."""
    if i >= len(data):
        raise SignatureFormatError("truncated OpenPGP packet length")
    o = data[i]
    if o < 192:
        return o, i + 1, False
    if o < 224:
        if i + 1 >= len(data):
            raise SignatureFormatError("truncated OpenPGP packet length")
        return ((o - 192) << 8) + data[i + 1] + 192, i + 2, False
    if o == 255:
        if i + 5 > len(data):
            raise SignatureFormatError("truncated OpenPGP packet length")
        return int.from_bytes(data[i + 1 : i + 5], "big"), i + 5, False
    return 1 << (o & 0x1F), i + 1, True


def packets(data: bytes) -> list[Packet]:
    """Split ``data`` into packets, joining partial-length bodies."""
    out: list[Packet] = []
    i = 0
    n = len(data)
    while i < n:
        ctb = data[i]
        i += 1
        if not ctb & 0x80:
            if out:
                raise SignatureFormatError(f"{n - i + 1} bytes of trailing data after the OpenPGP message")
            raise SignatureFormatError(f"not an OpenPGP packet (byte 0x{ctb:02x})")
        if ctb & 0x40:  # new format
            tag = ctb & 0x3F
            body = bytearray()
            while True:
                length, i, partial = _read_length_new(data, i)
                if i + length > n:
                    raise SignatureFormatError("truncated OpenPGP packet")
                body += data[i : i + length]
                i += length
                if not partial:
                    break
            out.append(Packet(tag, bytes(body)))
        else:
            tag = (ctb >> 2) & 0x0F
            ltype = ctb & 0x03
            if ltype == 3:  # indeterminate: to end of data
                out.append(Packet(tag, data[i:]))
                i = n
                continue
            size = 1 << ltype
            if i + size > n:
                raise SignatureFormatError("truncated OpenPGP packet length")
            length = int.from_bytes(data[i : i + size], "big")
            i += size
            if i + length > n:
                raise SignatureFormatError("truncated OpenPGP packet")
            out.append(Packet(tag, data[i : i + length]))
            i += length
    return out


def _decompress(body: bytes) -> bytes:
    return _decompress_checked(body)[0]


def _decompress_checked(body: bytes) -> tuple[bytes, bool]:
    """Decompressed data, and whether the stream ended exactly at the end of the packet."""
    if not body:
        raise SignatureFormatError("empty compressed packet")
    algo, rest = body[0], body[1:]
    try:
        if algo == CompressionAlgo.UNCOMPRESSED:
            return rest, True
        if algo == CompressionAlgo.ZIP:
            d = zlib.decompressobj(-15)
        elif algo == CompressionAlgo.ZLIB:
            d = zlib.decompressobj()
        elif algo == CompressionAlgo.BZIP2:
            b = bz2.BZ2Decompressor()
            out = b.decompress(rest, MAX_DECOMPRESSED + 1)
            if len(out) > MAX_DECOMPRESSED:
                raise SignatureFormatError("compressed signature expands beyond the limit")
            return out, b.eof and not b.unused_data
        else:
            raise SignatureFormatError(f"unknown compression algorithm {algo}")
        out = d.decompress(rest, MAX_DECOMPRESSED + 1)
    except (zlib.error, OSError, EOFError) as exc:
        raise SignatureFormatError(f"corrupt compressed data: {exc}") from exc
    if len(out) > MAX_DECOMPRESSED:
        raise SignatureFormatError("compressed signature expands beyond the limit")
    return out, d.eof and not d.unused_data


def subpackets(area: bytes) -> list[tuple[int, bool, bytes]]:
    """(type, critical, data) for each subpacket of a hashed or unhashed area (RFC 9580 §5.2.3.7).

    The one subpacket walker: the packet reader, the in-process verifier and the cross-certification check all
    read subpackets through it. SignatureFormatError if the area is malformed (a zero or partial length, or a
    subpacket running past the end of its area). A list, not a generator: it runs for every signature read,
    and an area holds a handful of subpackets.
    """
    out = []
    i = 0
    n = len(area)
    while i < n:
        length = area[i]
        if length < 192:  # the one-octet length every subpacket gpg writes has (RFC 9580 §5.2.3.7)
            i += 1
            partial = False
        else:
            length, i, partial = _read_length_new(area, i)
        if partial or length == 0 or i + length > n:
            raise SignatureFormatError("malformed signature subpacket")
        t = area[i]
        out.append((t & _TYPE_MASK, t > _TYPE_MASK, area[i + 1 : i + length]))
        i += length
    return out


def issuer_fingerprint(data: bytes, sig_version: int) -> str | None:
    """The fingerprint an issuer fingerprint subpacket names, or None if it is not a valid one.

    The one rule (RFC 9580 §5.2.3.35): the subpacket is a key version octet that matches the signature's
    version, then a fingerprint of that key version's length — ``04`` + 20 octets in a v4 signature, ``06`` +
    32 in a v6 one (LibrePGP v5: ``05`` + 32). RFC 9580 calls a mismatch malformed; here it simply names no key,
    and the issuer key ID (if any) still may. Before this rule had one home, the packet reader took any
    subpacket of 21 or more octets while the verifier wanted exactly ``04`` + 20 octets, so the two could
    disagree about who signed the same blob.
    """
    if data and data[0] == sig_version and len(data) == 1 + FINGERPRINT_LEN.get(sig_version, -1):
        return data[1:].hex().upper()
    return None


def _subpackets(area: bytes, info: SignatureInfo) -> None:
    for stype, _critical, sdata in subpackets(area):
        if stype == _CREATED and len(sdata) == 4:
            info.created = int.from_bytes(sdata, "big")
        elif stype == _SIG_EXPIRES and len(sdata) == 4:
            info.expires_after = int.from_bytes(sdata, "big")
        elif stype == _ISSUER and len(sdata) == 8:
            info.issuer_keyid = info.issuer_keyid or sdata.hex().upper()
        elif stype == _ISSUER_FPR:
            info.issuer_fingerprint = issuer_fingerprint(sdata, info.version) or info.issuer_fingerprint



def parse_signature(body: bytes) -> SignatureInfo:
    if len(body) < 1:
        raise SignatureFormatError("empty signature packet")
    version = body[0]
    if version == 3:
        if len(body) < 19:
            raise SignatureFormatError("truncated v3 signature")
        info = SignatureInfo(3, body[2], body[15], body[16], body[2:7], b"", body[17:19], body[19:])
        info.created = int.from_bytes(body[3:7], "big")
        info.issuer_keyid = body[7:15].hex().upper()
        return info
    if version not in (4, 5, 6):
        raise SignatureFormatError(f"unsupported signature version {version}")
    wide = version == 6
    hl_size = 4 if wide else 2
    if len(body) < 4 + hl_size:
        raise SignatureFormatError("truncated signature packet")
    sig_type, pk_algo, h_algo = body[1], body[2], body[3]
    i = 4
    hlen = int.from_bytes(body[i : i + hl_size], "big")
    i += hl_size
    hashed = body[i : i + hlen]
    i += hlen
    ulen = int.from_bytes(body[i : i + hl_size], "big")
    i += hl_size
    unhashed = body[i : i + ulen]
    i += ulen
    if i + 2 > len(body) or len(hashed) != hlen or len(unhashed) != ulen:
        raise SignatureFormatError("truncated signature packet")
    info = SignatureInfo(version, sig_type, pk_algo, h_algo, hashed, unhashed, body[i : i + 2], body[i + 2 :],
                         raw_header=body[: 4 + hl_size + hlen])
    _subpackets(hashed, info)
    created, expires = info.created, info.expires_after
    # Issuer in the unhashed area is informational only, but it is where gpg puts the key ID.
    _subpackets(unhashed, info)
    info.created, info.expires_after = created, expires
    return info


#: The packet layouts of one signed message with one signature (RFC 4880 §11.3, RFC 9580 §10.3): gpg's
#: one-pass form, and the older signature-first form. Anything else (a second message, a second signature, a
#: marker or any other packet) is not one simple signature.
_LAYOUTS = ((_ONE_PASS, _LITERAL, _SIGNATURE), (_SIGNATURE, _LITERAL))


def parse_message(blob: bytes) -> SignedMessage:
    """Parse exactly one inline signed message (optionally compressed); raise SignatureFormatError otherwise.

    Refused, each with its own reason: bytes after the last packet, a second message or any packet besides the
    one message, more than one signature packet (c/image: "Unexpected GPG signature count"), and a compressed
    packet whose stream is truncated or followed by data inside the packet. gpg writes its compressed packet
    with an indeterminate length (CTB 0xA3), so bytes appended to such a blob land *inside* the packet, after
    the deflate stream: that is the same "trailing data" and refused the same way.
    """
    pk = packets(blob)
    tags = [p.tag for p in pk]
    # Unwrap a single compressed packet (gpg's default), but only one level: nested compression is unusual
    # and a cheap way to amplify decompression work.
    if _COMPRESSED in tags:
        if len(pk) != 1:
            raise SignatureFormatError("data after the compressed packet: a signature blob is exactly one "
                                       "OpenPGP message")
        inner, clean = _decompress_checked(pk[0].body)
        if not clean:
            raise SignatureFormatError("truncated compressed data, or trailing data after the compressed stream")
        pk = packets(inner)
        tags = [p.tag for p in pk]
        if _COMPRESSED in tags:
            raise SignatureFormatError("nested compressed packets in the OpenPGP message")
    literal: bytes | None = None
    fmt = 0
    sigs: list[SignatureInfo] = []
    one_pass_bodies: list[bytes] = []
    for p in pk:
        if p.tag == _ONE_PASS:
            one_pass_bodies.append(p.body)
        elif p.tag == _LITERAL:
            if literal is not None:
                raise SignatureFormatError("more than one literal data packet: a signature blob is exactly one "
                                           "OpenPGP message")
            b = p.body
            if len(b) < 6:
                raise SignatureFormatError("truncated literal data packet")
            fmt = b[0]
            nlen = b[1]
            literal = b[2 + nlen + 4 :]
        elif p.tag == _SIGNATURE:
            sigs.append(parse_signature(p.body))
        else:
            raise SignatureFormatError(f"unexpected OpenPGP packet type {p.tag} in a signed message")
    if literal is None:
        raise SignatureFormatError("no signed data in the OpenPGP message")
    if not sigs:
        raise SignatureFormatError("no signature packet in the OpenPGP message")
    if len(sigs) != 1:
        raise SignatureFormatError(f"unexpected GPG signature count {len(sigs)}: a simple signature has exactly "
                                   "one signature packet")
    structure = tuple(tags)
    if structure not in _LAYOUTS:
        raise SignatureFormatError("packets after the signed message: a signature blob is exactly one OpenPGP "
                                   "message")
    return SignedMessage(literal, fmt, sigs, len(one_pass_bodies), structure, one_pass_bodies)


def untrusted_signer(blob: bytes) -> str | None:
    """The issuer fingerprint (or key ID) a blob *claims*, without verifying anything."""
    msg = parse_message(blob)
    sig = msg.signatures[0]
    return sig.issuer_fingerprint or sig.issuer_keyid
