"""The one place that picks a Signer for ``--signer auto|agent|gpg|memory`` (and for a Sequoia-home key), and
releases it."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from atomicsig.errors import AtomicsigError, InputError, PassphraseError
from atomicsig.gnupg.keyring import Keyring
from atomicsig.openpgp import build
from atomicsig.signers.agent import CheckedAgentSigner, agent_signer
from atomicsig.signers.base import Signer
from atomicsig.signers.gpg import GPGSigner
from atomicsig.signers.sequoia import SequoiaSigner

if TYPE_CHECKING:
    from atomicsig.keystore.sequoia_home import StoredKey

SIGNER_MODES = ("auto", "agent", "gpg", "memory")


def make_signer(keyring: Keyring, fingerprint: str, passphrase: str | None, mode: str = "auto", *,
                agent_cache: bool = False) -> Signer:
    """The Signer for ``--signer MODE``: ``gpg`` (one gpg per signature), ``agent``, ``memory`` or ``auto``.

    ``agent_cache`` is ``--use-agent-cache``: with no passphrase given, a protected key may sign using the
    passphrase gpg-agent has cached; without it that is refused (issue 11 #7, gnupg.agent.check_passphrase).

    ``auto`` uses the agent when the key's algorithm is supported and the agent answers, unless
    ``$ATOMICSIG_GPG`` names a specific gpg (then that gpg is what the user wants to run).
    """
    if mode not in SIGNER_MODES:
        raise InputError(f"unknown signer {mode!r}; use one of {', '.join(SIGNER_MODES)}")
    gpg_signer = GPGSigner(keyring, fingerprint, passphrase, agent_cache)
    if mode == "gpg":
        return gpg_signer
    if mode == "memory":  # explicit only: it moves the secret key into this process, auto never chooses that
        from atomicsig.signers.memory import memory_signer

        try:
            return memory_signer(keyring, fingerprint, passphrase, agent_cache=agent_cache)
        except build.UnsupportedKey as exc:
            raise InputError(f"--signer memory cannot use key {fingerprint}: {exc.message}",
                             hint="use --signer agent (or auto) for this key") from exc
    if mode == "agent":
        try:
            return agent_signer(keyring, fingerprint, passphrase, agent_cache=agent_cache)
        except build.UnsupportedKey as exc:
            raise InputError(f"--signer agent cannot use key {fingerprint}: {exc.message}",
                             hint="use --signer gpg (or auto) for this key") from exc
    if os.environ.get("ATOMICSIG_GPG"):
        return gpg_signer
    try:
        agent = agent_signer(keyring, fingerprint, passphrase, agent_cache=agent_cache)
    except PassphraseError:
        raise  # gpg would refuse the same passphrase (agentsign.check_passphrase runs for both signers)
    except AtomicsigError:
        return gpg_signer
    return CheckedAgentSigner(agent, gpg_signer,
                              lambda: keyring.export_public([fingerprint], armor=False))


def make_sequoia_signer(stored: StoredKey, secret: bytes, passphrase: str | None, mode: str = "auto") -> Signer:
    """The Signer for a key of a Sequoia home (v6, post-quantum): only Sequoia can sign with it, so ``--signer``
    must be ``auto`` (``gpg``/``agent``/``memory`` name GnuPG signers). Unlocks the key now (PassphraseError)."""
    if mode not in SIGNER_MODES:
        raise InputError(f"unknown signer {mode!r}; use one of {', '.join(SIGNER_MODES)}")
    if mode != "auto":
        raise InputError(f"key {stored.info.fingerprint} is a Sequoia key; --signer {mode} signs with GnuPG keys only",
                         hint="leave --signer at auto")
    return SequoiaSigner(stored, secret, passphrase)


def close_signer(signer: object) -> None:
    """Release an agent signer's connections (a no-op for other signers)."""
    close = getattr(signer, "close", None)
    if callable(close):
        with contextlib.suppress(OSError, AtomicsigError):
            close()


def signing_subkey(signer: object) -> str | None:
    """The subkey fingerprint ``signer`` signs with, or None when it signs with its primary key.

    Why callers ask: containers/image releases before subkey support (skopeo 1.9.3 in Debian 12) compare the
    issuer with the policy keyring's primary fingerprints and reject subkey signatures (STYLE "Traps").
    ``auto`` mode wraps the agent signer (``CheckedAgentSigner.agent``), so that one is looked through.
    """
    inner = getattr(signer, "agent", None) or signer
    sub = getattr(inner, "signing_key", None)
    primary = str(getattr(signer, "fingerprint", ""))
    return str(sub) if sub and str(sub).upper() != primary.upper() else None
