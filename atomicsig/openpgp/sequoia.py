"""OpenPGP verification by Sequoia (the ``pysequoia`` binding): v6 (RFC 9580) and post-quantum signatures, and
Sequoia's second opinion on v4 ones; and the one certificate reader (:func:`read_certs`) of the whole program.

With its sibling :mod:`atomicsig.openpgp.sqgen` (key generation and signing; it reads no certificate itself)
the only module that imports pysequoia (tests/test_layers.py keeps it in openpgp/). Sequoia is the engine behind
containers/image's Sequoia backend (``signature/internal/sequoia``, skopeo ``--sign-by-sq-fingerprint``, podman
5.7): what it accepts under its standard policy is what such a node accepts, so key validity — expiry,
revocation, binding signatures — and the algorithm and hash rules are Sequoia's, never re-implemented here.

Sequoia says only "no valid signatures" when it refuses; :meth:`SequoiaKeys.verify` then names the most precise
reason it can read from the packets (untrusted issuer, revoked or expired key, expired signature, SHA-1, short
RSA key) so a refusal tells the user what to fix. Those readings only explain a refusal: they never turn one into
an acceptance.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import pysequoia
from pysequoia.packet import PacketPile, Tag

from atomicsig.errors import SignatureFormatError
from atomicsig.openpgp import keys as pgpkeys
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp.constants import HashAlgo, PubkeyAlgo

# Sequoia's errors (Rust ``anyhow``) capture a stack backtrace when RUST_BACKTRACE is set, as it is in some
# developer and CI shells: 2.7 ms instead of 0.05 ms per refused signature, measured. Only the first line of an
# error is ever used here; RUST_LIB_BACKTRACE (read first by anyhow) turns the capture off unless a user set it.
os.environ.setdefault("RUST_LIB_BACKTRACE", "0")

__all__ = ["ALGORITHM_NAMES", "V6_SIGNING", "CertInfo", "SequoiaKeys", "Verified", "algorithm_name", "first_line",
           "read_certs", "split_v6", "unsupported"]

#: Public-key algorithm names (RFC 9580 §9.1, draft-ietf-openpgp-pqc), as reasons print them.
ALGORITHM_NAMES: dict[int, str] = {
    PubkeyAlgo.RSA: "RSA", PubkeyAlgo.RSA_SIGN: "RSA", PubkeyAlgo.DSA: "DSA", PubkeyAlgo.ECDSA: "ECDSA",
    PubkeyAlgo.EDDSA: "EdDSALegacy", 27: "Ed25519", 28: "Ed448", 30: "ML-DSA-65+Ed25519", 31: "ML-DSA-87+Ed448",
    32: "SLH-DSA-SHAKE-128s", 33: "SLH-DSA-SHAKE-128f", 34: "SLH-DSA-SHAKE-256s",
}
#: Algorithms a v6 signature may use that atomicsig verifies (through Sequoia). RFC 9580 §9.1 forbids DSA and
#: EdDSALegacy with v6 keys; anything else (or unknown) is "not supported" — one refused signature, no more.
V6_SIGNING = frozenset({PubkeyAlgo.RSA, PubkeyAlgo.RSA_SIGN, PubkeyAlgo.ECDSA, 27, 28, 30, 31, 32, 33, 34})
#: Octets of the algorithm-specific signature fields that are fixed in size (RFC 9580 §5.2.3: Ed25519 64,
#: Ed448 114; draft-ietf-openpgp-pqc §5.2: the EdDSA signature then ML-DSA-65's 3309 or ML-DSA-87's 4627 octets).
#: Checked before Sequoia, which (as bound by pysequoia 0.1.35) ignores bytes after them: found by
#: tests/test_v6verify.py; such a packet is not the signature its signer made, so it is refused here.
V6_SIGNATURE_SIZE: dict[int, int] = {27: 64, 28: 114, 30: 64 + 3309, 31: 114 + 4627}
#: Sequoia's standard policy refuses RSA keys below this size (and SHA-1 data signatures) — GPGME does not.
MIN_RSA_BITS = 2048
_KEY_TAGS = (Tag.PublicKey, Tag.PublicSubkey)


def algorithm_name(algo: int) -> str:
    return ALGORITHM_NAMES.get(algo, str(algo))


def unsupported(sig: openpgp.SignatureInfo) -> str | None:
    """Why a signature packet's version or algorithm is outside what atomicsig verifies, or None.

    The exact wording issue 16 #1 asks for ("OpenPGP v6 signature, algorithm X: not supported"), so a user can
    tell "we cannot check this kind" from "this signature is bad".
    """
    if sig.version in (3, 4):
        return None
    if sig.version != 6:
        return f"OpenPGP v{sig.version} signature: not supported"
    if sig.pubkey_algo not in V6_SIGNING:
        return f"OpenPGP v6 signature, algorithm {algorithm_name(sig.pubkey_algo)}: not supported"
    want = V6_SIGNATURE_SIZE.get(sig.pubkey_algo)
    # After the two-octet hash prefix: one octet of salt size, the salt, then the signature fields.
    got = len(sig.mpis) - 1 - sig.mpis[0] if sig.mpis else -1
    if want is not None and got != want:
        return f"malformed OpenPGP v6 signature: {algorithm_name(sig.pubkey_algo)} signature of {max(got, 0)} " \
               f"octets, not {want}"
    return None


@dataclass(frozen=True)
class CertInfo:
    """One certificate (or key) as Sequoia reads it: the one description of a certificate, for verification
    (validity facts that explain a refusal), policy key material (version, expiry, user IDs, the binary
    certificate a node's keyPath holds) and the Sequoia home (``keys list``: algorithm, creation, subkeys)."""

    fingerprint: str  # uppercase: 40 hex for v4, 64 for v6
    version: int  # of the primary key packet (RFC 9580 §5.5.2): 4, or 6 for RFC 9580 keys
    data: bytes  # the certificate, binary, public parts only (even when read from a secret key)
    algorithm: str  # the primary key's algorithm, Sequoia's name ("Ed25519", "MLDSA65_Ed25519", "RSAEncryptSign")
    created: int  # primary key creation (epoch seconds)
    expires: int | None  # primary key expiry (epoch seconds) under the standard policy, now
    revoked: bool
    secret: bool  # the input held secret key material for this certificate (``data`` never does)
    uids: tuple[str, ...] = ()
    key_fingerprints: frozenset[str] = frozenset()  # primary and subkeys, uppercase
    valid: bool = True  # False: no valid binding signature under Sequoia's standard policy (now)


def _epoch(t: datetime.datetime | None) -> int | None:
    return int(t.timestamp()) if t is not None else None


def first_line(exc: BaseException) -> str:
    """Sequoia's error text without the Rust context or backtrace it may carry (the first line is the reason)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _cert_info(cert: pysequoia.Cert, secret_keys: frozenset[str] = frozenset()) -> CertInfo:
    """Facts about a certificate. A certificate Sequoia finds invalid under its policy (no valid binding
    signature) raises on some of these questions: its expiry and user IDs are then unknown and it is marked
    not ``valid`` (that explains refusals only; Sequoia's verifier refuses its signatures anyway).
    ``secret_keys``: fingerprints of the (sub)keys whose secret part the input held."""
    data = bytes(cert)
    pile = list(PacketPile.from_bytes(data))
    primary = pile[0]
    keys = frozenset(p.fingerprint.upper() for p in pile if p.tag in _KEY_TAGS and p.fingerprint)
    info = CertInfo(
        fingerprint=cert.fingerprint.upper(),
        version=primary.body[0] if primary.body else 0,
        data=data,
        algorithm=str(primary.key_algorithm).rsplit(".", 1)[-1],
        created=_epoch(primary.key_created) or 0,
        expires=None,
        revoked=False,
        secret=bool(keys & secret_keys),
        key_fingerprints=keys,
        valid=False,
    )
    try:
        expires, revoked = _epoch(cert.expiration), bool(cert.is_revoked)
        uids = tuple(str(u) for u in cert.user_ids)
    except Exception:
        return info
    return dataclasses.replace(info, expires=expires, revoked=revoked, uids=uids, valid=True)


def _split(blob: bytes) -> list[pysequoia.Cert]:
    try:
        return list(pysequoia.Cert.split_bytes(blob))
    except Exception:
        return []


def read_certs(blob: bytes) -> list[CertInfo]:
    """Every certificate (or secret key) Sequoia reads in ``blob``, binary or armored, described; [] if none.

    THE certificate reader of atomicsig: how v6 keys are recognized (``version``) wherever a key file is read —
    verification, policy ``keys:``, ``policy show/explain``, ``sign --key FILE``, the Sequoia home. Unreadable
    input is [] rather than an error: each caller knows what a file that is no key means where it is read (a
    foreign file in a shared ``pgp.cert.d`` is skipped, a ``keys:`` file then goes to gpg for its verdict).
    """
    certs = _split(blob)
    try:  # secret parts are seen on the packets: a Cert's own bytes leave them out
        secret = frozenset(p.fingerprint.upper() for p in PacketPile.from_bytes(blob)
                           if p.tag in (Tag.SecretKey, Tag.SecretSubkey) and p.fingerprint)
    except Exception:
        secret = frozenset()
    out: list[CertInfo] = []
    for cert in certs:
        try:
            out.append(_cert_info(cert, secret))
        except Exception:  # noqa: S112 - a certificate Sequoia split but cannot re-read: not one we can use
            continue
    return out


def split_v6(blob: bytes) -> tuple[bytes, list[CertInfo]]:
    """(the part of ``blob`` GnuPG can import, every certificate Sequoia read in it): the one place a keyring is
    split by key version. The first is ``blob`` unchanged if it holds no v6 certificate, else only its other
    certificates (binary, public parts: a caller refusing secret keys checks ``secret`` on the second).

    gpg 2.2 refuses a whole keyring that holds one v6 packet ("Invalid keyring": it imports nothing, not even the
    v4 keys before it), so the v4 keys of a mixed file must be handed to it apart; the v6 ones (RFC 9580) are for
    Sequoia alone (verification, policy ``keys:``, ``policy show``).
    """
    certs = read_certs(blob)
    if not any(c.version == 6 for c in certs):
        return blob, certs
    return b"".join(c.data for c in certs if c.version != 6), certs


@dataclass(frozen=True)
class _KeyFacts:
    cert: pysequoia.Cert
    primary: str  # uppercase fingerprint of the certificate
    fingerprint: str  # uppercase fingerprint of this (sub)key
    rsa_bits: int  # for v4 RSA keys, the modulus size; else 0


@dataclass(frozen=True)
class Verified:
    payload: bytes
    signer: str  # primary fingerprint, uppercase
    signing_key: str


class SequoiaKeys:
    """The trusted certificates, as Sequoia's verifier gets them: looked up by every key handle a signature may
    name (fingerprint or key ID of the primary and of each subkey)."""

    def __init__(self, blobs: Iterable[bytes]) -> None:
        certs: dict[str, pysequoia.Cert] = {}
        for blob in blobs:
            for cert in _split(blob):
                fpr = cert.fingerprint.upper()
                certs[fpr] = certs[fpr].merge(cert) if fpr in certs else cert
        self.certs: dict[str, CertInfo] = {f: _cert_info(c) for f, c in certs.items()}
        self._by_handle: dict[str, _KeyFacts] = {}
        for fpr, cert in certs.items():
            for p in PacketPile.from_bytes(bytes(cert)):
                if p.tag not in _KEY_TAGS or p.fingerprint is None or p.key_id is None:
                    continue
                body = p.body
                bits = 0
                if body[:1] == b"\x04" and len(body) > 5 and body[5] in (PubkeyAlgo.RSA, PubkeyAlgo.RSA_SIGN):
                    bits = pgpkeys.parse_public_key(body).bits
                facts = _KeyFacts(cert, fpr, p.fingerprint.upper(), bits)
                self._by_handle.setdefault(p.fingerprint.upper(), facts)
                self._by_handle.setdefault(p.key_id.upper(), facts)

    @property
    def v6_fingerprints(self) -> frozenset[str]:
        return frozenset(f for f, c in self.certs.items() if c.version == 6)

    def _lookup(self, handles: list[str]) -> list[pysequoia.Cert]:
        found = [self._by_handle[h.upper()] for h in handles if h.upper() in self._by_handle]
        return list({f.primary: f.cert for f in found}.values())

    def verify(self, body: bytes, sig: openpgp.SignatureInfo, now: int) -> Verified:
        """Sequoia's verdict on one signed message (already parsed by :func:`openpgp.parse_message` as exactly
        one message with one signature); SignatureFormatError with the most precise reason otherwise."""
        try:
            result = pysequoia.verify(bytes=body, store=self._lookup)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            raise SignatureFormatError(self._why(exc, sig, now)) from None
        valid = list(result.valid_sigs)
        if len(valid) != 1 or result.bytes is None:
            raise SignatureFormatError(f"unexpected signature count {len(valid)} (Sequoia)")
        return Verified(bytes(result.bytes), valid[0].certificate.upper(), valid[0].signing_key.upper())

    def refusal(self, body: bytes, sig: openpgp.SignatureInfo, now: int) -> str | None:
        """None if Sequoia accepts the message, else why not (for the "backends" comparison)."""
        try:
            self.verify(body, sig, now)
        except SignatureFormatError as exc:
            return exc.message
        return None

    def _why(self, exc: BaseException, sig: openpgp.SignatureInfo, now: int) -> str:
        first = first_line(exc)
        if "no valid signatures" not in first:
            return f"malformed OpenPGP message (Sequoia: {first})"
        issuer = sig.issuer_fingerprint or sig.issuer_keyid
        facts = self._by_handle.get(issuer or "")
        if facts is None:
            who = f"signed by an untrusted key {issuer}" if sig.issuer_fingerprint else \
                f"signed by an untrusted key (key ID {issuer})"
            # A v6 signature under a keyring of v4 keys only: the case of a v6 rollout that has not reached this
            # policy yet (docs/policy.md "v4 and v6 keys"), so the reason says so rather than leave it to the
            # length of a fingerprint.
            if sig.version == 6 and not self.v6_fingerprints:
                who += " (an OpenPGP v6 signature, and every trusted key is v4)"
            return who
        info = self.certs[facts.primary]
        if facts.rsa_bits and facts.rsa_bits < MIN_RSA_BITS:
            return f"RSA key of {facts.rsa_bits} bits (Sequoia's standard policy wants {MIN_RSA_BITS} or more)"
        if not info.valid:
            return f"key {facts.primary} has no valid binding signature under Sequoia's standard policy"
        if info.revoked:
            return f"key {facts.primary} is revoked"
        created = sig.created or 0
        if sig.expires_after and created + sig.expires_after <= now:
            return "signature expired"
        if created > now:
            return "signature was made in the future"
        if info.expires is not None and info.expires <= created:
            return f"key {facts.primary} had expired when the signature was made"
        if sig.hash_algo in (HashAlgo.SHA1, HashAlgo.MD5, HashAlgo.RIPEMD160):
            name = {HashAlgo.SHA1: "SHA-1", HashAlgo.MD5: "MD5", HashAlgo.RIPEMD160: "RIPEMD-160"}[sig.hash_algo]
            return f"{name} data signature (Sequoia's standard policy refuses it)"
        return f"bad signature, or key {facts.fingerprint} is not a valid signing key under Sequoia's standard " \
               "policy (binding signature, key flags, expiry)"
