"""Secret-key packets (RFC 4880 §5.5.3): parse them and decrypt their key material (S2K, CFB).

Used only by the memory signer, which holds an exported secret key in process. Understood: v4, S2K usage 0
(clear, two-octet checksum) and 254 (AES, S2K simple/salted/iterated+salted, SHA-1 integrity hash), which is what
``gpg --export-secret-keys`` writes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from atomicsig.errors import InputError, PassphraseError, SignatureFormatError
from atomicsig.openpgp import build
from atomicsig.openpgp import keys as pgpkeys
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp.constants import PacketTag, PubkeyAlgo, S2KType, S2KUsage, SymmetricAlgo

try:  # CFB moved to the "decrepit" namespace (cryptography >= 47); OpenPGP key protection still needs it
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment]


#: OpenPGP symmetric cipher ids we decrypt, with their key sizes in bytes.
_AES_KEY_BYTES: dict[int, int] = {SymmetricAlgo.AES128: 16, SymmetricAlgo.AES192: 24, SymmetricAlgo.AES256: 32}

#: MPIs of a v4 key packet's public material (RFC 9580 §5.5.5): RSA (n, e), Elgamal (p, g, y), DSA (p, q, g, y).
_PUBLIC_MPIS: dict[int, int] = {PubkeyAlgo.RSA: 2, PubkeyAlgo.RSA_ENCRYPT: 2, PubkeyAlgo.RSA_SIGN: 2,
                                 PubkeyAlgo.ELGAMAL: 3, PubkeyAlgo.DSA: 4}


PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SecretKeyPacket:
    """One secret (sub)key packet split at the end of its public part; the secret part is still as exported."""

    public: pgpkeys.PublicKey
    secret: bytes  # from the S2K usage octet to the end of the packet

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def __repr__(self) -> str:  # never the secret bytes
        return f"SecretKeyPacket(fingerprint={self.fingerprint!r})"


def _public_length(body: bytes) -> int:
    """Where a v4 key packet's public material ends (RFC 4880 §5.5.2, RFC 6637 §9); Unsupported if unknown."""
    if len(body) < 6 or body[0] != 4:
        raise pgpkeys.Unsupported("not a v4 key packet")
    algo, i = body[5], 6
    if algo in _PUBLIC_MPIS:
        for _ in range(_PUBLIC_MPIS[algo]):
            _, i = pgpkeys.read_mpi(body, i)
        return i
    if algo in (PubkeyAlgo.ECDH, PubkeyAlgo.ECDSA, PubkeyAlgo.EDDSA):  # curve OID, point; ECDH adds KDF params
        if i >= len(body):
            raise pgpkeys.Unsupported("truncated curve OID")
        i += 1 + body[i]
        _, i = pgpkeys.read_mpi(body, i)
        if algo == PubkeyAlgo.ECDH:
            if i >= len(body):
                raise pgpkeys.Unsupported("truncated ECDH parameters")
            i += 1 + body[i]
        if i > len(body):
            raise pgpkeys.Unsupported("truncated key packet")
        return i
    raise pgpkeys.Unsupported(f"public-key algorithm {algo}")


def secret_key_packets(exported: bytes) -> dict[str, SecretKeyPacket]:
    """Every v4 secret key and subkey packet in a binary transferable secret key, by fingerprint.

    Packets of algorithms we cannot even frame (or other versions) are skipped rather than refused: a key may
    well carry, say, an encryption subkey we never sign with. Whether the *signing* key is usable is decided
    when it is chosen.
    """
    try:
        pkts = openpgp.packets(exported)
    except SignatureFormatError as exc:
        raise InputError(f"gpg exported an unreadable secret key: {exc.message}") from None
    out: dict[str, SecretKeyPacket] = {}
    for p in pkts:
        if p.tag not in (PacketTag.SECRET_KEY, PacketTag.SECRET_SUBKEY):
            continue
        try:
            end = _public_length(p.body)
            public = pgpkeys.parse_public_key(p.body[:end])
        except pgpkeys.Unsupported:
            continue
        out[public.fingerprint] = SecretKeyPacket(public, p.body[end:])
    return out


def _s2k_key(hash_name: str, kind: int, salt: bytes, count: int, passphrase: bytes, size: int) -> bytes:
    """RFC 4880 §3.7.1: as many hash contexts as the key needs, the n-th preloaded with n zero octets, each fed
    salt+passphrase (repeated up to ``count`` octets for the iterated kind, at least once)."""
    data = salt + passphrase
    total = max(count, len(data)) if kind == S2KType.ITERATED else len(data)
    # Feed the repetition in large slices that are whole multiples of the pattern, so the stream continues
    # seamlessly from one slice to the next: ~65 MB for gpg's default count in a fraction of a second.
    block = data * max(1, (1 << 20) // max(1, len(data)))
    out = b""
    ctx_index = 0
    while len(out) < size:
        h = hashlib.new(hash_name)
        h.update(b"\x00" * ctx_index)
        left = total
        while left >= len(block):
            h.update(block)
            left -= len(block)
        if left:
            h.update(block[:left])
        out += h.digest()
        ctx_index += 1
    return out[:size]


def _decrypt_secret(packet: SecretKeyPacket, passphrase: str | None) -> bytes:
    """The plaintext secret MPIs of ``packet``; PassphraseError if the passphrase is missing or wrong."""
    s = packet.secret
    fpr = packet.fingerprint
    if not s:
        raise InputError(f"the exported key {fpr} has no secret part")
    usage = s[0]
    if usage == S2KUsage.CLEAR:
        mpis, check = s[1:-2], s[-2:]
        if len(s) < 3 or (sum(mpis) & 0xFFFF).to_bytes(2, "big") != check:
            raise InputError(f"the exported secret key {fpr} fails its checksum")
        return mpis
    if usage != S2KUsage.SHA1_CHECKED or len(s) < 3:
        raise build.UnsupportedKey(f"secret key {fpr} uses S2K usage {usage}, which the memory signer "
                                     "does not read")
    cipher_id, kind, i = s[1], s[2], 3
    if cipher_id not in _AES_KEY_BYTES:
        raise build.UnsupportedKey(f"secret key {fpr} is protected with cipher {cipher_id} (only AES is read)")
    if kind == S2KType.GNU:  # a stub (gnu-dummy / divert-to-card) without the secret
        raise build.UnsupportedKey(f"secret key {fpr} is not present (a stub or a smartcard key)")
    if kind not in (S2KType.SIMPLE, S2KType.SALTED, S2KType.ITERATED) or i >= len(s):
        raise build.UnsupportedKey(f"secret key {fpr} uses S2K specifier {kind}")
    hash_id = s[i]
    i += 1
    if hash_id not in pgpkeys.HASHES:
        raise build.UnsupportedKey(f"secret key {fpr} uses S2K hash {hash_id}")
    salt, count = b"", 0
    if kind in (S2KType.SALTED, S2KType.ITERATED):
        salt = s[i : i + 8]
        i += 8
    if kind == S2KType.ITERATED:
        if i >= len(s):
            raise InputError(f"the exported secret key {fpr} is truncated")
        c = s[i]
        count = (16 + (c & 15)) << ((c >> 4) + 6)
        i += 1
    iv, encrypted = s[i : i + 16], s[i + 16 :]
    if len(salt) != (8 if kind else 0) or len(iv) != 16 or len(encrypted) < 21:
        raise InputError(f"the exported secret key {fpr} is truncated")
    if passphrase is None:
        raise PassphraseError(f"key {fpr} needs a passphrase (give it with --passphrase-file or --passphrase-env)")
    key = _s2k_key(pgpkeys.HASHES[hash_id][0], kind, salt, count, passphrase.encode(), _AES_KEY_BYTES[cipher_id])
    dec = Cipher(algorithms.AES(key), CFB(iv)).decryptor()
    plain = dec.update(encrypted) + dec.finalize()
    mpis, check = plain[:-20], plain[-20:]
    if not hmac.compare_digest(hashlib.sha1(mpis).digest(), check):  # noqa: S324 - RFC 4880 §5.5.3
        raise PassphraseError(f"wrong passphrase for key {fpr}")
    return mpis


def _read_mpis(data: bytes, n: int) -> list[int]:
    values, i = [], 0
    try:
        for _ in range(n):
            v, i = pgpkeys.read_mpi(data, i)
            values.append(int.from_bytes(v, "big"))
    except pgpkeys.Unsupported:
        raise InputError("the exported secret key has malformed secret values") from None
    return values


def private_key(packet: SecretKeyPacket, passphrase: str | None) -> PrivateKey:
    """The `cryptography` private key of ``packet``, checked against its public half."""
    pub = packet.public.key
    mpis = _decrypt_secret(packet, passphrase)
    mismatch = InputError(f"the secret key {packet.fingerprint} does not match its public key")
    if isinstance(pub, rsa.RSAPublicKey):
        d, p, q, _u = _read_mpis(mpis, 4)  # OpenPGP's u is p^-1 mod q; cryptography wants q^-1 mod p
        numbers = pub.public_numbers()
        if p * q != numbers.n:
            raise mismatch
        try:
            return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), numbers).private_key()
        except ValueError:
            raise mismatch from None
    if isinstance(pub, ed25519.Ed25519PublicKey):
        (seed,) = _read_mpis(mpis, 1)
        if seed.bit_length() > 256:
            raise mismatch
        ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))
        if ed.public_key() != pub:
            raise mismatch
        return ed
    if isinstance(pub, ec.EllipticCurvePublicKey):
        (d,) = _read_mpis(mpis, 1)
        try:
            key = ec.derive_private_key(d, pub.curve)
        except ValueError:
            raise mismatch from None
        if key.public_key() != pub:
            raise mismatch
        return key
    raise build.UnsupportedKey(f"the memory signer cannot sign with public-key algorithm "
                                 f"{packet.public.algorithm} (key {packet.fingerprint})")
