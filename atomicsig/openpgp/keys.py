"""OpenPGP v4 public-key packets to `cryptography` key objects, and raw signature checks against them.

Only the algorithms containers signing keys use in practice are understood: RSA, legacy EdDSA over Ed25519 and
ECDSA on the NIST curves. Everything else raises :class:`Unsupported`, which callers turn into "let gpg decide"
rather than into a verdict: this module never says "bad" about something it does not fully understand.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from atomicsig.errors import SignatureFormatError
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp.constants import HashAlgo, PacketTag, PubkeyAlgo, SigType, Subpacket

#: OpenPGP hash ids (RFC 9580 §9.5) we compute in process, with their digest sizes in bits. MD5 and
#: RIPEMD-160 are absent on purpose: gpg treats them specially (MD5 is rejected as weak), so it decides.
HASHES: dict[int, tuple[str, type[hashes.HashAlgorithm], int]] = {
    HashAlgo.SHA1: ("sha1", hashes.SHA1, 160),
    HashAlgo.SHA256: ("sha256", hashes.SHA256, 256),
    HashAlgo.SHA384: ("sha384", hashes.SHA384, 384),
    HashAlgo.SHA512: ("sha512", hashes.SHA512, 512),
    HashAlgo.SHA224: ("sha224", hashes.SHA224, 224),
}

_ED25519_OID = bytes.fromhex("2B06010401DA470F01")
_EC_CURVES: dict[bytes, tuple[ec.EllipticCurve, int]] = {
    bytes.fromhex("2A8648CE3D030107"): (ec.SECP256R1(), 256),
    bytes.fromhex("2B81040022"): (ec.SECP384R1(), 384),
    bytes.fromhex("2B81040023"): (ec.SECP521R1(), 521),
}


class Unsupported(Exception):
    """Something outside what we verify in process; the caller must let gpg decide."""


@dataclass(frozen=True)
class PublicKey:
    """One v4 (sub)key packet: identity always, `cryptography` key object only if we support the algorithm."""

    fingerprint: str  # 40 hex, uppercase
    algorithm: int
    created: int
    packet: bytes  # the packet body, hashed into binding signatures
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | None
    bits: int  # RSA modulus size or curve size; 0 if unsupported

    @property
    def keyid(self) -> str:
        return self.fingerprint[-16:]

    def hash_prefix(self) -> bytes:
        """How a key is fed into signature hashes (RFC 4880 §5.2.4): 0x99, two-octet length, body."""
        return b"\x99" + len(self.packet).to_bytes(2, "big") + self.packet


@dataclass(frozen=True)
class Subkey:
    key: PublicKey
    cross_certified: bool | None  # True: one binding with a back signature we verified; None: let gpg decide


@dataclass(frozen=True)
class Certificate:
    primary: PublicKey
    subkeys: tuple[Subkey, ...]


def read_mpi(data: bytes, i: int) -> tuple[bytes, int]:
    """One multiprecision integer at data[i]: (its big-endian bytes, offset after it)."""
    if i + 2 > len(data):
        raise Unsupported("truncated MPI")
    bits = int.from_bytes(data[i : i + 2], "big")
    end = i + 2 + (bits + 7) // 8
    if end > len(data):
        raise Unsupported("truncated MPI")
    return data[i + 2 : end], end


def v4_fingerprint(body: bytes) -> str:
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()  # noqa: S324 - RFC 4880


def parse_public_key(body: bytes) -> PublicKey:
    """A v4 public (sub)key packet body; Unsupported for other versions or malformed material."""
    if len(body) < 6 or body[0] != 4 or len(body) > 0xFFFF:
        raise Unsupported("not a v4 key packet")
    created, algo, rest = int.from_bytes(body[1:5], "big"), body[5], body[6:]
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | None = None
    bits = 0
    try:
        if algo in (PubkeyAlgo.RSA, PubkeyAlgo.RSA_SIGN):
            n, i = read_mpi(rest, 0)
            e, i = read_mpi(rest, i)
            if i == len(rest):
                key = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
                bits = key.key_size
        elif algo in (PubkeyAlgo.EDDSA, PubkeyAlgo.ECDSA) and rest:
            oid = rest[1 : 1 + rest[0]]
            point, i = read_mpi(rest, 1 + rest[0])
            if i == len(rest) and len(oid) == rest[0]:
                if algo == PubkeyAlgo.EDDSA and oid == _ED25519_OID and len(point) == 33 and point[0] == 0x40:
                    key, bits = ed25519.Ed25519PublicKey.from_public_bytes(point[1:]), 256
                elif algo == PubkeyAlgo.ECDSA and oid in _EC_CURVES:
                    curve, bits = _EC_CURVES[oid]
                    key = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except (Unsupported, ValueError):
        key, bits = None, 0
    return PublicKey(v4_fingerprint(body), algo, created, body, key, bits if key is not None else 0)


def certificates(exported: bytes) -> Iterator[Certificate]:
    """Walk gpg's ``--export`` output: each primary key with its subkeys and whether each is cross-certified."""
    primary: PublicKey | None = None
    subs: list[Subkey] = []
    current: PublicKey | None = None
    bindings: list[bytes] = []

    def close_subkey() -> None:
        if current is not None and primary is not None:
            subs.append(Subkey(current, _cross_certified(primary, current, bindings)))

    for p in openpgp.packets(exported):
        if p.tag == PacketTag.PUBLIC_KEY:
            close_subkey()
            if primary is not None:
                yield Certificate(primary, tuple(subs))
            primary, subs, current, bindings = _maybe_key(p.body), [], None, []
        elif p.tag == PacketTag.PUBLIC_SUBKEY:
            close_subkey()
            current, bindings = _maybe_key(p.body), []
        elif p.tag == PacketTag.SIGNATURE and current is not None:
            bindings.append(p.body)
        elif p.tag != PacketTag.SIGNATURE:
            close_subkey()  # a user ID or attribute ends the subkey's signatures
            current, bindings = None, []
    close_subkey()
    if primary is not None:
        yield Certificate(primary, tuple(subs))


def _maybe_key(body: bytes) -> PublicKey | None:
    try:
        return parse_public_key(body)
    except Unsupported:
        return None


def _cross_certified(primary: PublicKey, sub: PublicKey, bindings: list[bytes]) -> bool | None:
    """gpg (require-cross-certification, the default) refuses data signatures by a signing subkey unless its
    binding signature embeds a valid 0x19 back signature. gpg checks the binding it selected; with exactly one
    binding (what import leaves) that is unambiguous, anything else is left to gpg (None)."""
    binding_sigs = []
    for body in bindings:
        try:
            info = openpgp.parse_signature(body)
        except SignatureFormatError:
            return None
        if info.sig_type == SigType.SUBKEY_BINDING:
            binding_sigs.append(info)
    if len(binding_sigs) != 1 or binding_sigs[0].version != 4:
        return None
    info = binding_sigs[0]
    try:
        embedded = [d for area in (info.hashed, info.unhashed) for t, _, d in openpgp.subpackets(area)
                    if t == Subpacket.EMBEDDED_SIGNATURE]
        if len(embedded) != 1:
            return None
        back = openpgp.parse_signature(embedded[0])
        if back.version != 4 or back.sig_type != SigType.PRIMARY_BINDING or back.pubkey_algo != sub.algorithm:
            return None
        data = primary.hash_prefix() + sub.hash_prefix() + back.raw_header + b"\x04\xff" + \
            len(back.raw_header).to_bytes(4, "big")
        digest = hash_data(back.hash_algo, data)
        return digest[:2] == back.hash_prefix and verify_digest(sub, back.hash_algo, digest, back.mpis)
    except (Unsupported, SignatureFormatError):
        return None


def hash_data(hash_algo: int, *parts: bytes) -> bytes:
    if hash_algo not in HASHES:
        raise Unsupported(f"hash algorithm {hash_algo}")
    h = hashlib.new(HASHES[hash_algo][0])
    for part in parts:
        h.update(part)
    return h.digest()


def verify_digest(key: PublicKey, hash_algo: int, digest: bytes, mpis: bytes) -> bool:
    """Check the signature MPIs over an already computed OpenPGP hash. False = cryptographically bad;
    Unsupported = malformed in a way gpg might read differently."""
    if key.key is None or hash_algo not in HASHES:
        raise Unsupported("key or hash algorithm not verified in process")
    _, hash_cls, _ = HASHES[hash_algo]
    values: list[bytes] = []
    i = 0
    while i < len(mpis):
        v, i = read_mpi(mpis, i)
        values.append(v)
    try:
        if isinstance(key.key, rsa.RSAPublicKey):
            if len(values) != 1:
                raise Unsupported("RSA signature must have one MPI")
            size = (key.key.key_size + 7) // 8
            sig = values[0].lstrip(b"\x00")
            if len(sig) > size:
                return False
            # OpenSSL wants exactly modulus-sized input; OpenPGP strips leading zeros (1 signature in 256).
            key.key.verify(sig.rjust(size, b"\x00"), digest, padding.PKCS1v15(), Prehashed(hash_cls()))
        elif isinstance(key.key, ed25519.Ed25519PublicKey):
            if len(values) != 2:
                raise Unsupported("EdDSA signature must have two MPIs")
            r, s = (v.lstrip(b"\x00") for v in values)
            if len(r) > 32 or len(s) > 32:
                return False
            # Legacy OpenPGP EdDSA signs the hash value itself, not the message.
            key.key.verify(r.rjust(32, b"\x00") + s.rjust(32, b"\x00"), digest)
        else:
            if len(values) != 2:
                raise Unsupported("ECDSA signature must have two MPIs")
            r_int, s_int = (int.from_bytes(v, "big") for v in values)
            if not (r_int and s_int):
                return False
            key.key.verify(encode_dss_signature(r_int, s_int), digest, ec.ECDSA(Prehashed(hash_cls())))
    except InvalidSignature:
        return False
    return True
