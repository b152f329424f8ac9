"""gpg-agent as a passphrase and key authority: which (sub)key gpg would sign with, and making a given
passphrase count whatever the agent has cached (issue 11 #7). Used by the keyring and by every signer.
"""

from __future__ import annotations

from collections.abc import Iterable

from atomicsig.errors import GPGError, PassphraseError
from atomicsig.gnupg import assuan
from atomicsig.gnupg.colons import SecretKeyPart

_SOURCE_HINT = "give it with --passphrase-file or --passphrase-env"


_NEEDS_PASSPHRASE = {assuan.GPG_ERR_NO_PASSPHRASE, assuan.GPG_ERR_NO_PIN, assuan.GPG_ERR_CANCELED,
                     assuan.GPG_ERR_ASS_CANCELED, assuan.GPG_ERR_FULLY_CANCELED}


_WRONG_PASSPHRASE = {assuan.GPG_ERR_BAD_PASSPHRASE, assuan.GPG_ERR_BAD_PIN}


class AgentSignError(GPGError):
    """The agent path failed in a way gpg itself might not (auto mode falls back on this)."""


_CACHE_HINT = ("give it with --passphrase-file, --passphrase-env or --passphrase-stdin, or pass --use-agent-cache "
               "to sign with a passphrase gpg-agent has cached")


def check_passphrase(conn: assuan.AssuanClient, keygrip: str, fingerprint: str, passphrase: str | None, *,
                     agent_cache: bool = False) -> None:
    """Make a given passphrase count, whatever gpg-agent has cached (issue 11 #7).

    After one correct use gpg-agent caches a key's passphrase, and from then on signs for anyone asking on its
    socket without an ``INQUIRE PASSPHRASE``: a wrong ``--passphrase-file`` would sign with exit 0. So:

    * a passphrase given is checked with ``PASSWD --verify <keygrip>``, which unlocks the key with exactly that
      passphrase and ignores the cache (a wrong one: ``Bad passphrase``). Checking once per run is enough: the
      agent only ever caches the correct passphrase, so later signatures cannot be made with a wrong one.
    * no passphrase for a protected key (``KEYINFO`` protection ``P``) is refused, cached or not, unless the user
      opted into the agent's cache (``agent_cache``: ``--use-agent-cache``, passed down by the caller; off by
      default, so a pipeline that gives no passphrase cannot sign because someone else unlocked the key).

    Smartcard keys (``KEYINFO`` type ``T``) are left to the card, which checks its own PIN. ``conn`` must already
    be in loopback pinentry mode, so that nothing ever prompts.
    """
    try:
        fields = conn.transact(f"KEYINFO {keygrip}").status
    except assuan.AssuanError as exc:
        raise AgentSignError(f"gpg-agent does not hold the secret key of {fingerprint}: {exc.text}") from None
    info = next((rest.split() for kw, rest in fields if kw == "KEYINFO"), [])
    kind = info[1].decode() if len(info) > 1 else "-"
    protection = info[5].decode() if len(info) > 5 else "-"
    if kind == "T":
        return
    if passphrase is None:
        if protection == "P" and not agent_cache:
            raise PassphraseError(f"key {fingerprint} needs a passphrase: it is protected ({_CACHE_HINT})",
                                  hint=_CACHE_HINT)
        return

    def inquire(keyword: str, _args: bytes) -> bytes | None:
        return passphrase.encode() if keyword == "PASSPHRASE" else None

    try:
        conn.transact(f"PASSWD --verify {keygrip}", inquire)
    except assuan.AssuanError as exc:
        if exc.code in _WRONG_PASSPHRASE or exc.code in _NEEDS_PASSPHRASE:
            raise PassphraseError(f"wrong passphrase for key {fingerprint}") from None
        raise GPGError(f"gpg-agent could not check the passphrase of key {fingerprint}: {exc.text} "
                       f"(gpg-error {exc.code})") from None


def check_home_passphrase(home: str | None, keygrip: str, fingerprint: str, passphrase: str | None, *,
                          agent_cache: bool = False) -> None:
    """:func:`check_passphrase` on a connection of its own (the gpg-process signer, which has none).

    Without a passphrase an unreachable agent is gpg's to report when it signs; with one, the check must happen,
    so a connection failure is an error (fail closed).
    """
    try:
        conn = assuan.connect(home)
    except assuan.AssuanConnectionError:
        if passphrase is None:
            return
        raise
    try:
        conn.transact("OPTION pinentry-mode=loopback")
        check_passphrase(conn, keygrip, fingerprint, passphrase, agent_cache=agent_cache)
    finally:
        conn.close()


def choose_signing_key(parts: Iterable[SecretKeyPart], now: int) -> SecretKeyPart | None:
    """The (sub)key ``gpg --local-user <primary FPR>`` signs with (gpg 2.2 getkey.c ``finish_lookup``).

    The newest (by creation time; the first listed wins a tie) subkey that can sign, is neither revoked,
    expired (gpg: expiry *before* now) nor invalid, is not created in the future and whose secret is present
    (a ``#`` stub has none); else the primary key if it can sign itself.
    """
    def usable(p: SecretKeyPart) -> bool:
        return ("s" in p.usage and p.validity not in ("r", "e", "i") and (p.expires is None or p.expires >= now)
                and p.created <= now and "#" not in p.token and bool(p.keygrip))

    parts = list(parts)
    best: SecretKeyPart | None = None
    for p in parts:
        if not p.primary and usable(p) and (best is None or p.created > best.created):
            best = p
    if best is not None:
        return best
    primary = next((p for p in parts if p.primary), None)
    return primary if primary is not None and usable(primary) else None
