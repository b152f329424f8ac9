"""In-process verification of simple-signing blobs, with gpg as the authority on keys and on anything unusual.

One gpg process per signature caps a verifier at ~150 signatures/s (issue #6). Here the trusted keys are still
imported by gpg into an ephemeral home (:class:`gpg.TrustedKeys`), and gpg's listing supplies each key's
validity, capabilities and expiry; only the per-signature work — hash, compare, one public-key operation — runs
in process. The checks are GPGME's as containers/image applies them (SPEC §2.1): one signature per message,
subkeys map to their primary, revoked or expired keys and expired signatures fail, wrong key usage fails,
owner trust is ignored.

Anything outside the common shape (gpg's own ``--sign`` output: one-pass, binary literal, one v4 binary
signature with an issuer, SHA-1/SHA-2, RSA/Ed25519/ECDSA) is handed to the gpg process unchanged rather than
judged here, and counted in :attr:`NativeTrustedKeys.fallbacks`, so the fast path can never be more lenient
than gpg about inputs it was not written for. What is not exactly one signed message with one signature packet
(trailing bytes, a second message, a second signature) is refused before either path runs: gpg accepts some of
those, skopeo does not (SPEC §1.3, :func:`openpgp.parse_message`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from atomicsig.errors import SignatureFormatError, Undecided
from atomicsig.format.blob import simple_signing_body
from atomicsig.gnupg import colons
from atomicsig.gnupg.keyring import GPG_VERIFIER_V4_ONLY, BackendsDisagree, GPGVerification, TrustedKeys
from atomicsig.openpgp import keys as pgpkeys
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp import sequoia
from atomicsig.openpgp.constants import PacketTag, PubkeyAlgo, SigType, Subpacket
from atomicsig.openpgp.keys import PublicKey, Unsupported

#: Why a GPGME node refuses every v6 signature: GnuPG 2.2 and 2.4 do not read RFC 9580 v6 packets.
_GNUPG_V6 = "GnuPG cannot read OpenPGP v6 signatures"
#: Subpackets whose meaning for a data signature we implement; a critical one of any other type goes to gpg.
_UNDERSTOOD_SUBPACKETS = frozenset({Subpacket.CREATED, Subpacket.SIG_EXPIRES, Subpacket.ISSUER,
                                    Subpacket.ISSUER_FPR})
# Compared for every subpacket of every signature verified: module names, cheaper to read than class attributes.
_CREATED, _SIG_EXPIRES, _ISSUER, _ISSUER_FPR = (Subpacket.CREATED, Subpacket.SIG_EXPIRES, Subpacket.ISSUER,
                                                Subpacket.ISSUER_FPR)
#: gpg's standard layout of a signed message, the only one hashed in process.
_ONE_PASS_LAYOUT = (PacketTag.ONE_PASS, PacketTag.LITERAL, PacketTag.SIGNATURE)
#: gpg listing validity letters that say nothing about revocation/expiry (owner trust is ignored, as GPGME does).
_NEUTRAL_VALIDITY = frozenset("-oqmfu")


class _Delegate(Exception):
    """Not for us to decide: run the gpg process. The message names the reason (for the fallback counter)."""


@dataclass(frozen=True)
class _SigningKey:
    """One (sub)key as gpg lists it, joined with its packet material."""

    material: PublicKey | None
    primary: str  # fingerprint of the primary key: the identity c/image compares
    validity: str
    can_sign: bool
    expires: int | None
    primary_validity: str
    primary_expires: int | None
    is_primary: bool
    cross_certified: bool | None
    has_revoker: bool


def _key_table(listing: list[colons.ListedKey], exported: bytes) -> tuple[dict[str, _SigningKey], frozenset[str]]:
    """Signing keys by fingerprint, and every key ID gpg knows (so an issuer gpg knows is never "untrusted")."""
    material: dict[str, PublicKey] = {}
    cross: dict[str, bool | None] = {}
    try:
        for cert in pgpkeys.certificates(exported):
            material[cert.primary.fingerprint] = cert.primary
            for sub in cert.subkeys:
                material[sub.key.fingerprint] = sub.key
                cross[sub.key.fingerprint] = sub.cross_certified
    except SignatureFormatError:
        material, cross = {}, {}  # unreadable export: every signature goes to gpg
    table: dict[str, _SigningKey] = {}
    keyids: set[str] = set()
    for listed in listing:
        pub = listed.primary
        for entry in listed.records:
            keyids.add(entry.keyid)
            m = material.get(entry.fingerprint)
            # Use the packet only if it is the key gpg listed (same fingerprint and creation time).
            if m is not None and m.created != entry.created:
                m = None
            table[entry.fingerprint] = _SigningKey(
                material=m, primary=pub.fingerprint, validity=entry.validity, can_sign="s" in entry.capabilities,
                expires=entry.expires, primary_validity=pub.validity, primary_expires=pub.expires,
                is_primary=entry is pub, cross_certified=True if entry is pub else cross.get(entry.fingerprint),
                has_revoker=listed.has_revoker)
    return table, frozenset(keyids)


class NativeTrustedKeys:
    """Drop-in for :class:`gpg.TrustedKeys` that verifies common signatures in process (see module docstring)."""

    def __init__(self, keyring_blobs: Iterable[bytes], *, clock: Callable[[], float] = time.time,
                 backends: bool = False) -> None:
        blobs = list(keyring_blobs)
        #: Ask Sequoia's opinion on v4 signatures too, to report where c/image's backends disagree (``verify``).
        #: Off by default: it about halves the v4 rate (docs/performance.md), and serve/sync report no backends.
        self.backends = backends
        self._gpg = TrustedKeys([sequoia.split_v6(b)[0] for b in blobs])
        # Every certificate Sequoia reads: the v6 ones (GnuPG cannot hold them) are trusted through it alone; the
        # v4 ones only give Sequoia's second opinion, gpg stays their authority (issue 16, docs/architecture.md).
        self._sequoia = sequoia.SequoiaKeys(blobs)
        self.fingerprints: frozenset[str] = self._gpg.fingerprints | self._sequoia.v6_fingerprints
        self._clock = clock
        self._lock = threading.Lock()
        self.fallbacks = 0
        self.fallback_reasons: Counter[str] = Counter()
        self.native = 0
        try:
            listing, exported = self._gpg.listing_and_export()
            self._keys, self._keyids = _key_table(listing, exported)
        except BaseException:
            self._gpg.close()
            raise
        self._by_keyid: dict[str, list[str]] = {}
        for fpr in self._keys:
            self._by_keyid.setdefault(fpr[-16:], []).append(fpr)

    @property
    def digest(self) -> str:
        return hashlib.sha256(",".join(sorted(self.fingerprints)).encode()).hexdigest()

    def close(self) -> None:
        self._gpg.close()

    def __enter__(self) -> NativeTrustedKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify(self, blob: bytes) -> GPGVerification:
        """Same contract as :meth:`gpg.TrustedKeys.verify`: the verified payload and signer, or SignatureFormatError.

        v4 (and v3) signatures: GPGME's verdict (in process or by gpg), with Sequoia's second opinion attached
        when it differs. v6 signatures: Sequoia's verdict alone — GnuPG cannot read them, so a GPGME node refuses
        every one, and the result says so. Another version or algorithm is one refused signature, named.
        """
        if not self.fingerprints:
            raise SignatureFormatError("no public keys imported")
        body = simple_signing_body(blob)
        try:
            # Not one message with one signature (trailing bytes, a second message or signature): refused here,
            # never handed to gpg, which would accept some of these (SPEC §1.3, openpgp.parse_message).
            msg = openpgp.parse_message(body)
            sig = msg.signatures[0]
            not_supported = sequoia.unsupported(sig)
            if not_supported:
                raise SignatureFormatError(not_supported)
        except SignatureFormatError:
            with self._lock:
                self.native += 1
            raise
        if sig.version == 6:
            return self._verify_v6(body, sig)
        try:
            result = self._verify_gpgme(blob, msg)
        except SignatureFormatError as exc:
            if self.backends and self._sequoia.refusal(body, sig, int(self._clock())) is None:
                raise BackendsDisagree(f"{exc.message}; nodes on containers/image's Sequoia backend accept it",
                                       {"gpgme": f"refuse: {exc.message}", "sequoia": "accept"}) from exc
            raise
        why = self._sequoia.refusal(body, sig, int(self._clock())) if self.backends else None
        if why is not None:
            result = dataclasses.replace(result, backends={"gpgme": "accept", "sequoia": f"refuse: {why}"})
        return result

    def _verify_v6(self, body: bytes, sig: openpgp.SignatureInfo) -> GPGVerification:
        """Sequoia decides (issue 16 #1); the signer must be one of the trusted v6 certificates."""
        with self._lock:
            self.native += 1
        done = self._sequoia.verify(body, sig, int(self._clock()))
        if done.signer not in self._sequoia.v6_fingerprints:
            raise SignatureFormatError(f"signed by an untrusted key {done.signer}")
        return GPGVerification(payload=done.payload, signer=done.signer, signing_key=done.signing_key,
                               backends={"gpgme": f"refuse: {_GNUPG_V6}", "sequoia": "accept"})

    def _verify_gpgme(self, blob: bytes, msg: openpgp.SignedMessage) -> GPGVerification:
        """GPGME's verdict: in process when the shape is the common one, else by the gpg process."""
        try:
            result = self._verify_native(msg)
        except (_Delegate, ValueError, IndexError, Unsupported) as why:
            # Anything this path did not expect (ValueError etc. from odd key or signature values) is gpg's
            # to judge, exactly like the shapes it deliberately leaves to gpg.
            reason = str(why) if isinstance(why, _Delegate) else f"unexpected {type(why).__name__}"
            with self._lock:
                self.fallbacks += 1
                self.fallback_reasons[reason] += 1
            return self._gpg.verify(blob)
        except SignatureFormatError:
            with self._lock:
                self.native += 1
            raise
        with self._lock:
            self.native += 1
        return result

    # ---- the in-process path ------------------------------------------------------------------------------

    def _verify_native(self, msg: openpgp.SignedMessage) -> GPGVerification:
        sig = msg.signatures[0]
        self._check_shape(msg, sig)
        created, expires_after, issuer_fpr, issuer_keyid = _signature_subpackets(sig)
        key = self._signing_key(issuer_fpr, issuer_keyid)
        m = key.material
        if m is None or m.key is None or m.algorithm != sig.pubkey_algo:
            raise _Delegate("key algorithm")
        _check_hash_strength(m, sig.hash_algo)
        if key.has_revoker:
            raise _Delegate("designated revoker")
        if key.validity not in _NEUTRAL_VALIDITY | {"r", "e"} or \
                key.primary_validity not in _NEUTRAL_VALIDITY | {"r", "e"}:
            raise _Delegate("key validity")
        if not key.can_sign:
            # gpg checks usage before the signature itself: ERRSIG "Wrong key usage" (GPGME wrong_key_usage).
            raise SignatureFormatError(f"signature rejected by gpg: key {m.fingerprint} is not a signing key "
                                       "(wrong key usage)")
        if not key.is_primary and key.cross_certified is not True:
            raise _Delegate("cross-certification")
        now = int(self._clock())
        if created > now:
            raise _Delegate("signature from the future")
        trailer_src = sig.raw_header
        digest = pgpkeys.hash_data(sig.hash_algo, msg.literal, trailer_src, b"\x04\xff",
                                   len(trailer_src).to_bytes(4, "big"))
        # gpg reports BADSIG before any key-state problem, so the cryptographic check comes first.
        if digest[:2] != sig.hash_prefix or not pgpkeys.verify_digest(m, sig.hash_algo, digest, sig.mpis):
            raise SignatureFormatError(f"signature rejected by gpg: bad signature (key {m.fingerprint})")
        if m.created > created:
            raise SignatureFormatError(f"signature rejected by gpg: key {m.fingerprint} is {m.created - created} "
                                       "seconds newer than the signature")
        if key.primary_validity == "r" or key.validity == "r":
            raise SignatureFormatError(f"signature rejected by gpg: key {m.fingerprint} is revoked")
        if _expired(key.primary_validity, key.primary_expires, now) or _expired(key.validity, key.expires, now):
            raise SignatureFormatError(f"signature rejected by gpg: key {m.fingerprint} has expired")
        if expires_after and created + expires_after <= now:
            raise SignatureFormatError("signature rejected by gpg: signature expired")
        if key.primary not in self.fingerprints:
            raise SignatureFormatError(f"signed by an untrusted key {key.primary}")
        return GPGVerification(payload=msg.literal, signer=key.primary, signing_key=m.fingerprint)

    def _check_shape(self, msg: openpgp.SignedMessage, sig: openpgp.SignatureInfo) -> None:
        """Only gpg's standard layout ``one-pass, literal 'b', signature`` is hashed here: gpg chooses the hash
        from the one-pass packet, and other layouts or mismatches are corner cases gpg should judge."""
        if msg.structure != _ONE_PASS_LAYOUT:
            raise _Delegate("message layout")
        if msg.literal_format != ord("b"):
            raise _Delegate("literal format")
        if sig.version != 4:
            raise _Delegate("signature version")
        if sig.sig_type != SigType.BINARY:
            raise _Delegate("signature type")
        if sig.hash_algo not in pgpkeys.HASHES:
            raise _Delegate("hash algorithm")
        op = msg.one_pass_bodies[0]
        if len(op) != 13 or op[0] != 3 or op[1] != sig.sig_type or op[2] != sig.hash_algo or \
                op[3] != sig.pubkey_algo or op[12] != 1:
            raise _Delegate("one-pass packet")

    def _signing_key(self, issuer_fpr: str | None, issuer_keyid: str | None) -> _SigningKey:
        """gpg looks the key up by issuer fingerprint, else by issuer key ID."""
        if issuer_fpr is None and issuer_keyid is None:
            raise _Delegate("no issuer")
        if issuer_fpr is not None and issuer_keyid is not None and issuer_fpr[-16:] != issuer_keyid:
            raise _Delegate("issuer mismatch")
        if issuer_fpr is not None and issuer_fpr in self._keys:
            return self._keys[issuer_fpr]
        keyid = issuer_keyid or (issuer_fpr or "")[-16:]
        if keyid in self._keyids:
            # gpg knows a key with this ID: by key ID alone that is the key (if unambiguous); an issuer
            # fingerprint that is not one of ours but whose key ID is would make gpg retry by key ID.
            candidates = self._by_keyid.get(keyid, [])
            if issuer_fpr is None and len(candidates) == 1:
                return self._keys[candidates[0]]
            raise _Delegate("issuer lookup")
        raise SignatureFormatError(f"signed by an untrusted key (key ID {keyid})")


def _signature_subpackets(sig: openpgp.SignatureInfo) -> tuple[int, int, str | None, str | None]:
    """Creation time, expiry, issuer fingerprint and key ID as gpg reads them: time fields and the issuer
    fingerprint only from the hashed area, the key ID from either. Duplicates or unknown critical ones: gpg.

    Subpackets are walked and the issuer fingerprint judged by :mod:`atomicsig.openpgp.packets`, the same code
    that gives :func:`openpgp.untrusted_signer` its answer, so the two never name different signers.
    """
    seen: Counter[int] = Counter()
    created = expires_after = None
    issuer_fpr = issuer_keyid = None
    try:
        for hashed, area in ((True, sig.hashed), (False, sig.unhashed)):
            for stype, critical, data in openpgp.subpackets(area):
                if critical and (stype not in _UNDERSTOOD_SUBPACKETS or not hashed):
                    raise _Delegate("critical subpacket")
                if stype in _UNDERSTOOD_SUBPACKETS:
                    seen[stype] += 1
                if hashed and stype == _CREATED and len(data) == 4:
                    created = int.from_bytes(data, "big")
                elif hashed and stype == _SIG_EXPIRES and len(data) == 4:
                    expires_after = int.from_bytes(data, "big")
                elif hashed and stype == _ISSUER_FPR and (named := openpgp.issuer_fingerprint(data, sig.version)):
                    issuer_fpr = named
                elif stype == _ISSUER and len(data) == 8:
                    issuer_keyid = data.hex().upper()
                elif stype in _UNDERSTOOD_SUBPACKETS:
                    raise _Delegate("unusual subpacket")
    except SignatureFormatError as exc:
        raise _Delegate("malformed subpackets") from exc
    if any(n > 1 for n in seen.values()):
        raise _Delegate("repeated subpacket")
    if created is None:
        raise _Delegate("no creation time")
    return created, expires_after or 0, issuer_fpr, issuer_keyid


def _check_hash_strength(key: PublicKey, hash_algo: int) -> None:
    """(EC)DSA-style keys with a digest shorter than the curve are unusual; gpg's rules there decide."""
    bits = pgpkeys.HASHES[hash_algo][2]
    if key.algorithm == PubkeyAlgo.EDDSA and bits < 256:
        raise _Delegate("short hash for EdDSA")
    if key.algorithm == PubkeyAlgo.ECDSA and bits < min(key.bits, 512):
        raise _Delegate("short hash for ECDSA")


def _expired(validity: str, expires: int | None, now: int) -> bool:
    """By gpg's listing *and* by the clock, so a long-running verifier notices keys that expire later."""
    return validity == "e" or (expires is not None and expires <= now)


def trusted_keys(keyring_blobs: Iterable[bytes], *, backends: bool = False) -> NativeTrustedKeys | TrustedKeys:
    """The verifier for trusted keys: in process, unless ``ATOMICSIG_VERIFIER=gpg`` asks for one gpg per signature
    (that reference path knows v4 keys only). ``backends``: see :attr:`NativeTrustedKeys.backends`."""
    if os.environ.get("ATOMICSIG_VERIFIER", "").strip().lower() == "gpg":
        return _gpg_trusted_keys(list(keyring_blobs))
    return NativeTrustedKeys(keyring_blobs, backends=backends)


def _gpg_trusted_keys(blobs: list[bytes]) -> TrustedKeys:
    """The gpg verifier, given only what gpg can read: gpg 2.2 refuses a whole keyring holding one v6 key (it
    would drop the v4 keys beside it), so v6 certificates are left out and their signatures refused by
    :meth:`TrustedKeys.verify` as not supported. When v6 certificates are all that was given, this verifier
    cannot decide anything: Undecided (exit 3), saying so, rather than "no public keys found"."""
    split = [sequoia.split_v6(b) for b in blobs]
    v6 = sorted({c.fingerprint for _, certs in split for c in certs if c.version == 6})
    keys = TrustedKeys([gpg_part for gpg_part, _ in split])
    if v6 and not keys.fingerprints:
        keys.close()
        raise Undecided(f"OpenPGP v6 key {v6[0]}{f' and {len(v6) - 1} more' if len(v6) > 1 else ''}: "
                        f"{GPG_VERIFIER_V4_ONLY}")
    return keys
