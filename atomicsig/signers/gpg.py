"""The portable signer: one ``gpg --sign`` per signature, through the user's keyring and agent (smartcards work)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atomicsig.errors import AtomicsigError


@dataclass
class GPGSigner:
    """Signs through the user's GnuPG keyring/agent (smartcards work), one gpg process per signature."""

    keyring: Any
    fingerprint: str
    passphrase: str | None = field(default=None, repr=False)  # never in a repr or traceback
    agent_cache: bool = False  # --use-agent-cache: a protected key may sign with the agent's cached passphrase

    def sign(self, data: bytes) -> bytes:
        blob: bytes = self.keyring.sign(data, self.fingerprint, self.passphrase, agent_cache=self.agent_cache)
        return blob

    @property
    def key_fingerprints(self) -> frozenset[str]:
        """The primary and every subkey: gpg may sign with any signing subkey, and the issuer names that one."""
        try:
            info = self.keyring.resolve(self.fingerprint, secret=False)
        except AtomicsigError:
            return frozenset({self.fingerprint.upper()})
        return frozenset({self.fingerprint.upper(), *(s.upper() for s in info.subkeys)})
