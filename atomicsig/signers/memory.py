"""An opt-in Signer that holds the secret key in this process for the run (``--signer memory``, issue #6).

Why: gpg-agent performs RSA private-key operations one at a time, which caps a signing run at a few hundred
signatures per second however many threads ask. A user who accepts that the secret key lives in atomicsig's
memory for the run (a CI job with a key from a Kubernetes Secret, say) can have `cryptography` sign on every
core instead. The key is exported by gpg into memory (never to disk), decrypted here with the passphrase the
user gave, and never logged. Smartcard keys cannot be exported, so they keep the agent path (the default).

Only the signature value is computed here; the message around it is framed by :mod:`atomicsig.openpgp.build`
exactly as the agent signer frames it, and the (sub)key is chosen with
:func:`atomicsig.gnupg.agent.choose_signing_key`, so both signers produce the same layout by the same key.

The secret-key packets themselves are parsed and decrypted in :mod:`atomicsig.openpgp.secret`.
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from atomicsig.errors import InputError
from atomicsig.gnupg.agent import check_home_passphrase, choose_signing_key
from atomicsig.gnupg.colons import SecretKeyPart
from atomicsig.gnupg.keyring import Keyring
from atomicsig.openpgp import build as pgpsign
from atomicsig.openpgp import keys as pgpkeys
from atomicsig.openpgp.secret import PrivateKey, private_key, secret_key_packets


class MemorySigner:
    """Signs with one (sub)key whose private half is held in this process; thread-safe (immutable key objects,
    and `cryptography` releases the GIL during the private-key operation)."""

    def __init__(self, primary_fingerprint: str, part: SecretKeyPart, key: PrivateKey) -> None:
        self.fingerprint = primary_fingerprint
        self.signing_key = part.fingerprint
        self.key_fingerprints = frozenset({primary_fingerprint.upper(), part.fingerprint.upper()})
        self._issuer = pgpsign.Issuer(bytes.fromhex(part.fingerprint), part.pubkey_algo,
                                      pgpsign.hash_for(part.pubkey_algo, part.curve))
        self._hash = pgpkeys.HASHES[self._issuer.hash_algo][1]
        self._key = key

    def __repr__(self) -> str:  # never the key
        return f"MemorySigner(fingerprint={self.fingerprint!r}, signing_key={self.signing_key!r})"

    def sign(self, data: bytes) -> bytes:
        pending = pgpsign.prepare(data, self._issuer, int(time.time()))
        return pgpsign.finish(pending, self._components(pending.digest))

    def _components(self, digest: bytes) -> list[bytes]:
        key = self._key
        if isinstance(key, rsa.RSAPrivateKey):
            return [key.sign(digest, padding.PKCS1v15(), Prehashed(self._hash()))]
        if isinstance(key, ed25519.Ed25519PrivateKey):
            sig = key.sign(digest)  # legacy OpenPGP EdDSA signs the hash value itself
            return [sig[:32], sig[32:]]
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(self._hash()))))
        return [r.to_bytes((r.bit_length() + 7) // 8 or 1, "big"), s.to_bytes((s.bit_length() + 7) // 8 or 1, "big")]


def build_signer(exported: bytes, primary_fingerprint: str, parts: list[SecretKeyPart],
                 passphrase: str | None, now: int) -> MemorySigner:
    """A MemorySigner from an exported transferable secret key and gpg's listing of the key's parts."""
    part = choose_signing_key(parts, now)
    if part is None:
        raise InputError(f"secret key {primary_fingerprint} has no usable signing (sub)key")
    pgpsign.hash_for(part.pubkey_algo, part.curve)  # UnsupportedKey before any decryption work
    packet = secret_key_packets(exported).get(part.fingerprint.upper())
    if packet is None:
        raise pgpsign.UnsupportedKey(f"the exported secret key {primary_fingerprint} lacks a readable packet "
                                     f"for its signing key {part.fingerprint}")
    return MemorySigner(primary_fingerprint, part, private_key(packet, passphrase))


def memory_signer(keyring: Keyring, fingerprint: str, passphrase: str | None, *,
                  agent_cache: bool = False) -> MemorySigner:
    """Export ``fingerprint``'s secret key from gpg into memory (passphrase via loopback on stdin) and build."""
    parts = keyring.secret_key_parts(fingerprint)
    part = choose_signing_key(parts, int(time.time()))
    if part is not None:  # the same up-front check as the other signers, with the same messages (issue 11 #7)
        check_home_passphrase(keyring.home, part.keygrip, fingerprint, passphrase, agent_cache=agent_cache)
    exported = keyring.export_secret([fingerprint], armor=False, passphrase=passphrase)
    try:
        return build_signer(exported, fingerprint, parts, passphrase, int(time.time()))
    finally:
        del exported  # the packet bytes cannot be wiped (immutable), but no reference outlives this call
