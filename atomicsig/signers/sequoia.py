"""A Signer for keys in a Sequoia home: OpenPGP v6 and post-quantum keys, which GnuPG 2.2 cannot hold.

It signs the simple signing payload the way containers/image's ``simplesequoia`` signer does (issue 16 #3): one
inline-signed binary message (one-pass signature, literal data, signature), made by Sequoia
(:func:`atomicsig.openpgp.sqgen.sign_message`) with the key's signing-capable (sub)key.

The secret key is read from the soft-key store and unlocked once, when the signer is made; the unlocked Sequoia
signer is shared by the signing threads (:class:`atomicsig.openpgp.sqgen.UnlockedKey`).
"""

from __future__ import annotations

from atomicsig.keystore.sequoia_home import StoredKey
from atomicsig.openpgp import packets, sqgen


class SequoiaSigner:
    """Signs with one key from a Sequoia home."""

    def __init__(self, stored: StoredKey, secret: bytes, passphrase: str | None) -> None:
        self.fingerprint = stored.info.fingerprint
        self.key_fingerprints = stored.info.key_fingerprints
        self.version = stored.info.version
        # Unlocked once, now: a missing or wrong passphrase fails before any image is touched (as with the gpg
        # signers), and the S2K derivation (~0.1-0.3 s) is paid once per run, not per signature. The first
        # signature names the (sub)key Sequoia chose, which ``sign`` warns about for old skopeo.
        self._key = sqgen.unlock(secret, passphrase)
        # Read by the one signed-message parser (openpgp.packets), the one every verification goes through.
        first = packets.parse_message(self.sign(b"")).signatures[0]
        self.signing_key = first.issuer_fingerprint or self.fingerprint

    def __repr__(self) -> str:  # never the key or the passphrase
        return f"SequoiaSigner(fingerprint={self.fingerprint!r})"

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)
