"""Make OpenPGP v6 (RFC 9580) and post-quantum keys and sign with them, through Sequoia (``pysequoia``).

Bytes in, bytes out: no files, no environment. Where the keys are kept (a Sequoia home) is
:mod:`atomicsig.keystore.sequoia_home`; the ``Signer`` is :mod:`atomicsig.signers.sequoia`.

Why Sequoia and not more hand-written packet code (issue 16 #2): Sequoia is the engine behind containers/image's
``simplesequoia`` signer and Sequoia verifier, so a key made and a message signed here are made by the same
implementation the nodes verify with. One thing pysequoia 0.1.35 does not offer is done here, small and checked
against Sequoia itself in tests/test_v6keys.py: protecting a secret key with a passphrase (:func:`protect`):
RFC 9580 §5.5.3 S2K usage 254 (CFB with a SHA-1 integrity hash) under an iterated+salted SHA-256 S2K (§3.7.1.3)
and AES-256; Sequoia reads it back with ``Tsk.signer(password)``.

Reading a certificate or key (fingerprint, version, algorithm, expiry, whether it holds a secret part) is not done
here: :func:`atomicsig.openpgp.sequoia.read_certs` is the one reader, for the verify and the key side alike.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field

import pysequoia
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from atomicsig.errors import InputError, PassphraseError
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp.constants import HashAlgo, PacketTag, S2KType, S2KUsage, SymmetricAlgo
from atomicsig.openpgp.secret import _public_length, _s2k_key
from atomicsig.openpgp.sequoia import first_line

try:  # CFB moved to the "decrepit" namespace (cryptography >= 47); OpenPGP key protection still needs it
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment]

__all__ = [
    "ALGORITHMS",
    "PQ_ALGORITHMS",
    "PROFILES",
    "GeneratedKey",
    "KeyPart",
    "UnlockedKey",
    "armor",
    "dearmor",
    "generate",
    "merge_certs",
    "merge_secret",
    "protect",
    "public_part",
    "revoke",
    "set_expiry",
    "sign_message",
    "split_keys",
    "unlock",
]

#: ``profile:`` of a signers file -> the key version it makes (RFC 4880 keys are v4, RFC 9580 keys v6).
PROFILES: dict[str, int] = {"rfc4880": 4, "rfc9580": 6}

#: ``algorithm:`` of a signers file -> Sequoia's cipher suite (primary and signing subkey of that algorithm).
ALGORITHMS: dict[str, str] = {
    "ed25519": "Cv25519",
    "ed448": "Cv448",
    "mldsa65-ed25519": "MLDSA65_Ed25519",  # composite ML-DSA-65 + Ed25519 (draft-ietf-openpgp-pqc), v6 only
    "mldsa87-ed448": "MLDSA87_Ed448",  # composite ML-DSA-87 + Ed448, v6 only
    "nistp256": "P256",
    "nistp384": "P384",
    "nistp521": "P521",
    "rsa2048": "RSA2k",
    "rsa3072": "RSA3k",
    "rsa4096": "RSA4k",
}

#: Post-quantum composites: draft-ietf-openpgp-pqc defines them for v6 keys only (Sequoia refuses v4).
PQ_ALGORITHMS = frozenset({"mldsa65-ed25519", "mldsa87-ed448"})

#: The S2K ``protect`` writes: iterated+salted SHA-256, count octet 0xFF (65,011,712 octets: the strongest
#: coding RFC 9580 §3.7.1.3 allows, about 0.1 s to derive once), AES-256 (§9.3).
_S2K_COUNT_OCTET = 0xFF
_AES256_KEY = 32


@dataclass(frozen=True)
class GeneratedKey:
    """A new key: its primary fingerprint (upper-case hex, 40 for v4, 64 for v6), version and both parts."""

    fingerprint: str
    version: int
    secret: bytes = field(repr=False)  # binary transferable secret key (RFC 9580 §10.2)
    public: bytes  # binary transferable public key (the certificate)


def generate(user_id: str, *, profile: str, algorithm: str, validity_seconds: int | None) -> GeneratedKey:
    """A certification primary key with a signing and an encryption subkey, as Sequoia's CertBuilder makes it.

    ``validity_seconds`` None means the key never expires. The secret part is unprotected; :func:`protect` it
    before it is written anywhere when the signer has a passphrase.
    """
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
    if algorithm in PQ_ALGORITHMS and PROFILES[profile] != 6:
        raise InputError(f"algorithm {algorithm} exists for OpenPGP v6 keys only: use profile rfc9580")
    try:
        tsk = pysequoia.Tsk.generate(user_id, profile=getattr(pysequoia.Profile, profile.upper()),
                                     cipher_suite=getattr(pysequoia.CipherSuite, ALGORITHMS[algorithm]),
                                     validity_seconds=validity_seconds or None)
    except Exception as exc:  # pysequoia raises plain exceptions carrying Sequoia's error text
        raise InputError(f"Sequoia could not generate a {profile} {algorithm} key: {first_line(exc)}") from None
    secret = bytes(tsk)
    public = bytes(tsk.extract_certificate())
    return GeneratedKey(tsk.extract_certificate().fingerprint.upper(), PROFILES[profile], secret, public)


def _new_packet(tag: int, body: bytes) -> bytes:
    """A new-format packet (RFC 9580 §4.2.1) with a definite length; what Sequoia writes for keys."""
    n = len(body)
    if n < 192:
        head = bytes([n])
    elif n < 8384:
        n -= 192
        head = bytes([(n >> 8) + 192, n & 0xFF])
    else:
        head = b"\xff" + len(body).to_bytes(4, "big")
    return bytes([0xC0 | tag]) + head + body


def _split_key_packet(body: bytes) -> tuple[bytes, bytes]:
    """(public part, cleartext secret key material) of an unprotected v4 or v6 secret key packet body.

    v6 (RFC 9580 §5.5.2.3) states the public material's length in four octets after the algorithm; v4 does not,
    so its end is found by walking the algorithm's fields (:func:`atomicsig.openpgp.secret._public_length`).
    An unprotected v4 body ends in a two-octet checksum (§5.5.3), a v6 one has none.
    """
    if body and body[0] == 6:
        if len(body) < 10:
            raise InputError("truncated v6 secret key packet")
        end = 10 + int.from_bytes(body[6:10], "big")
        if end >= len(body) or body[end] != S2KUsage.CLEAR:
            raise InputError("the v6 secret key is already protected or truncated")
        return body[:end], body[end + 1 :]
    try:
        end = _public_length(body)
    except Exception as exc:
        raise InputError(f"cannot protect this key packet: {exc}") from None
    if end >= len(body) or body[end] != S2KUsage.CLEAR:
        raise InputError("the v4 secret key is already protected or truncated")
    return body[:end], body[end + 1 : -2]


def protect(secret: bytes, passphrase: str) -> bytes:
    """``secret`` (an unprotected transferable secret key) with every secret (sub)key packet encrypted.

    RFC 9580 §5.5.3: S2K usage 254, AES-256, an iterated+salted SHA-256 S2K specifier (§3.7.1.3), a random IV,
    and the cleartext key material followed by its SHA-1 hash, CFB-encrypted. For v6 packets the specifier and
    the parameter fields are preceded by the one-octet counts §5.5.3 requires. A fresh salt and IV per packet.
    Other packets (user IDs, signatures) are kept as they are: they sign the public part only.
    """
    if not passphrase:
        raise InputError("an empty passphrase does not protect a key; leave passphrase-file/-env out instead")
    out = bytearray()
    for p in openpgp.packets(secret):
        if p.tag not in (PacketTag.SECRET_KEY, PacketTag.SECRET_SUBKEY):
            out += _new_packet(p.tag, p.body)
            continue
        public, material = _split_key_packet(p.body)
        salt, iv = os.urandom(8), os.urandom(16)
        s2k = bytes([S2KType.ITERATED, HashAlgo.SHA256]) + salt + bytes([_S2K_COUNT_OCTET])
        count = (16 + (_S2K_COUNT_OCTET & 15)) << ((_S2K_COUNT_OCTET >> 4) + 6)
        key = _s2k_key("sha256", S2KType.ITERATED, salt, count, passphrase.encode(), _AES256_KEY)
        enc = Cipher(algorithms.AES(key), CFB(iv)).encryptor()
        encrypted = enc.update(material + hashlib.sha1(material).digest()) + enc.finalize()  # noqa: S324 - §5.5.3
        if public[0] == 6:
            params = bytes([SymmetricAlgo.AES256, len(s2k)]) + s2k + iv
            body = public + bytes([S2KUsage.SHA1_CHECKED, len(params)]) + params + encrypted
        else:
            body = public + bytes([S2KUsage.SHA1_CHECKED, SymmetricAlgo.AES256]) + s2k + iv + encrypted
        out += _new_packet(p.tag, body)
    return bytes(out)


def merge_certs(old: bytes, new: bytes) -> bytes:
    """One certificate from two copies of it (new signatures, subkeys, user IDs kept), as a cert store merges."""
    try:
        return bytes(pysequoia.Cert.from_bytes(old).merge(pysequoia.Cert.from_bytes(new)))
    except Exception as exc:
        raise InputError(f"cannot merge the certificates: {first_line(exc)}") from None


def dearmor(data: bytes) -> bytes:
    """Binary OpenPGP key data from ``data``, which may be ASCII-armored (secret parts kept)."""
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        return data
    for kind in (pysequoia.Tsk, pysequoia.Cert):
        try:
            return bytes(kind.from_bytes(data))
        except Exception:  # noqa: S112 - not this kind; the next one or the error below
            continue
    raise InputError("unreadable ASCII-armored OpenPGP data")


def armor(data: bytes, *, secret: bool) -> bytes:
    """ASCII armor (RFC 9580 §6) for a certificate or, with ``secret``, a secret key."""
    kind = pysequoia.ArmorKind.SecretKey if secret else pysequoia.ArmorKind.PublicKey
    return pysequoia.armor(data, kind).encode()


class UnlockedKey:
    """A secret key opened once (the S2K derivation costs ~0.1-0.3 s), then signing many payloads in ~0.3 ms
    (Ed25519) to ~3 ms (ML-DSA-65+Ed25519) each; usable from several threads (measured: 4 threads x 50
    signatures, each verified by Sequoia)."""

    def __init__(self, signer: pysequoia.PySigner, fingerprint: str) -> None:
        self._signer = signer
        self.fingerprint = fingerprint

    def __repr__(self) -> str:  # never the key
        return f"UnlockedKey(fingerprint={self.fingerprint!r})"

    def sign(self, data: bytes) -> bytes:
        """``data`` as one binary inline-signed message (one-pass signature, literal data, signature).

        The layout containers/image's Sequoia signer writes (``Message`` -> ``Signer`` -> ``LiteralWriter`` in
        podman-sequoia's ``sign``): no compression, a binary literal packet, signed by the key's
        signing-capable (sub)key valid now under Sequoia's standard policy.
        """
        try:
            return bytes(pysequoia.sign(self._signer, data, mode=pysequoia.SignatureMode.INLINE,
                                        armor=False))
        except Exception as exc:
            raise InputError(f"Sequoia could not sign with key {self.fingerprint}: {first_line(exc)}") from None


def unlock(secret: bytes, passphrase: str | None) -> UnlockedKey:
    """Open ``secret`` (a transferable secret key) for signing; PassphraseError if the passphrase is missing or
    wrong. A passphrase given for an unprotected key is ignored, as gpg's loopback passphrase is (one
    ``--passphrase-file`` may serve several ``--key``)."""
    try:
        tsk = pysequoia.Tsk.from_bytes(secret)
    except Exception as exc:
        raise InputError(f"unreadable secret key: {first_line(exc)}") from None
    fpr = tsk.extract_certificate().fingerprint.upper()
    try:
        try:
            signer = tsk.signer(passphrase)
        except Exception as exc:
            if passphrase is None or "not encrypted" not in first_line(exc):
                raise
            signer = tsk.signer(None)
    except Exception as exc:
        # Sequoia names a wrong passphrase by its symptom (a failed checksum, a short read after decryption).
        reason = first_line(exc)
        if passphrase is not None:
            raise PassphraseError(f"key {fpr} does not open with the given passphrase ({reason})") from None
        if any(w in reason.lower() for w in ("password", "decrypt", "encrypted")):
            raise PassphraseError(f"key {fpr} needs a passphrase (give it with --passphrase-file or "
                                  "--passphrase-env)") from None
        raise InputError(f"key {fpr} cannot sign: {reason}") from None
    return UnlockedKey(signer, fpr)


def sign_message(secret: bytes, passphrase: str | None, data: bytes) -> bytes:
    """:func:`unlock` then :meth:`UnlockedKey.sign`, for one message."""
    return unlock(secret, passphrase).sign(data)


# ---- the key lifecycle: import, revoke, change expiry (keys import/retire/rotate on a Sequoia home) ------------


@dataclass(frozen=True)
class KeyPart:
    """One key of an input file: its primary fingerprint (upper case), version, and binary data — a transferable
    secret key (secret parts as given: protected stays protected) if ``secret``, else the certificate."""

    fingerprint: str
    version: int
    secret: bool
    data: bytes = field(repr=False)


def _secret_bytes(cert: pysequoia.Cert) -> bytes | None:
    """The transferable secret key of ``cert``, None if it has no secret part.

    pysequoia 0.1.35 marks ``Cert.secrets``/``has_secret_keys`` deprecated in favour of ``Tsk``, but its Tsk has no
    ``merge``: a secret key is updated as a Cert (whose merge keeps the receiving side's secret parts, measured),
    so these two calls are made with that warning silenced.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tsk = cert.secrets if cert.has_secret_keys else None
    return bytes(tsk) if tsk is not None else None


def split_keys(data: bytes) -> list[KeyPart]:
    """Every key in ``data`` (binary or armored, one or many, public or secret), one :class:`KeyPart` each.

    InputError when Sequoia reads no key at all, so ``keys import`` of a file that is no key says so.
    """
    try:
        certs = list(pysequoia.Cert.split_bytes(data))
    except Exception as exc:
        raise InputError(f"no OpenPGP key found in the input ({first_line(exc)})") from None
    if not certs:
        raise InputError("no OpenPGP key found in the input")
    out = []
    for c in certs:
        public = bytes(c)
        secret = _secret_bytes(c)
        version = next(iter(openpgp.packets(public))).body[0]
        out.append(KeyPart(c.fingerprint.upper(), version, secret is not None, secret or public))
    return out


def public_part(data: bytes) -> bytes:
    """The certificate (public packets only, binary) of one key, secret or not."""
    try:
        return bytes(pysequoia.Cert.from_bytes(data))
    except Exception as exc:
        raise InputError(f"unreadable OpenPGP key: {first_line(exc)}") from None


def merge_secret(secret: bytes, update: bytes) -> bytes:
    """``secret`` (a transferable secret key) with the public packets of ``update`` (the same key's certificate or
    secret key) merged in; ``secret``'s own secret parts are kept as they are (Sequoia's public merge keeps the
    receiving side's secrets), so a key stored protected stays protected whatever is imported over it."""
    try:
        merged = pysequoia.Cert.from_bytes(secret).merge(pysequoia.Cert.from_bytes(update))
    except Exception as exc:
        raise InputError(f"cannot merge the keys: {first_line(exc)}") from None
    out = _secret_bytes(merged)
    if out is None:
        raise InputError("the merged key lost its secret part")
    return out


def _certifier(secret: bytes, passphrase: str | None) -> pysequoia.PySigner:
    """The key's certification-capable primary key, opened: PassphraseError if a passphrase is missing or wrong."""
    try:
        tsk = pysequoia.Tsk.from_bytes(secret)
    except Exception as exc:
        raise InputError(f"unreadable secret key: {first_line(exc)}") from None
    fpr = tsk.extract_certificate().fingerprint.upper()
    try:
        try:
            return tsk.certifier(passphrase)
        except Exception as exc:
            if passphrase is None or "not encrypted" not in first_line(exc):
                raise
            return tsk.certifier(None)  # a passphrase given for an unprotected key is ignored, as in unlock
    except Exception as exc:
        reason = first_line(exc)
        if passphrase is not None:
            raise PassphraseError(f"key {fpr} does not open with the given passphrase ({reason})") from None
        if "encrypted" in reason.lower() or "password" in reason.lower():
            raise PassphraseError(f"key {fpr} needs a passphrase (give it with --passphrase-file or "
                                  "--passphrase-env)") from None
        raise InputError(f"key {fpr} cannot certify: {reason}") from None


def revoke(secret: bytes, public: bytes, passphrase: str | None) -> bytes:
    """``public`` (the key's certificate) with a key revocation signature (RFC 9580 §5.2.1.21, type 0x20) made by
    its primary key. pysequoia 0.1.35's ``Cert.revoke`` takes no reason for revocation; Sequoia treats what it
    writes as a hard revocation: signatures the key made *before* it are refused too (tests/test_v6life.py), as
    after gpg's revocation with reason "no reason specified" — what ``keys retire --revoke`` means."""
    certifier = _certifier(secret, passphrase)
    cert = pysequoia.Cert.from_bytes(public)
    try:
        sig = cert.revoke(certifier)
        # A bare revocation signature after the certificate: Sequoia's canonicalization files it under the
        # primary key; the merge then keeps everything the stored copy had.
        revoked = cert.merge(pysequoia.Cert.from_bytes(public + bytes(sig)))
    except Exception as exc:
        raise InputError(f"Sequoia could not revoke key {cert.fingerprint.upper()}: {first_line(exc)}") from None
    if not revoked.is_revoked:
        raise InputError(f"Sequoia did not apply the revocation of key {cert.fingerprint.upper()}")
    return bytes(revoked)


def set_expiry(secret: bytes, public: bytes, seconds: int, passphrase: str | None) -> bytes:
    """``public`` with new self-signatures making the key expire ``seconds`` from now (Sequoia's
    ``set_expiration``: a new direct-key signature and user ID bindings with a Key Expiration Time,
    RFC 9580 §5.2.3.13)."""
    import datetime

    certifier = _certifier(secret, passphrase)
    cert = pysequoia.Cert.from_bytes(public)
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    try:
        return bytes(cert.merge(cert.set_expiration(when, certifier)))
    except Exception as exc:
        raise InputError(f"Sequoia could not change the expiry of key {cert.fingerprint.upper()}: "
                         f"{first_line(exc)}") from None
