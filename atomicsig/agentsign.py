"""A Signer that asks gpg-agent for the private-key operation and frames the OpenPGP message itself.

Why: one ``gpg`` process per signature is ~70 % of a signing run (docs/performance.md, issue #6). The keys stay
where they are — in the user's gpg-agent, passphrase-protected or on a smartcard — and the agent does exactly
what it does for ``gpg --sign``: ``SIGKEY``/``SETHASH``/``PKSIGN`` on a digest we computed (pgpsign.py).

The key is chosen the way ``gpg --local-user FPR`` chooses it, so both signers produce signatures by the same
(sub)key. ``make_signer`` picks between this signer and the gpg-process one (``--signer auto|agent|gpg``); in
``auto`` mode anything unexpected on the agent path falls back to gpg, and the first agent signature is
verified by gpg before it is handed out, so a framing bug can never reach a sigstore.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable

from . import assuan, csexp, openpgp, pgpsign
from .errors import AtomicsigError, GPGError, InputError, PassphraseError, SignatureFormatError
from .gpg import Keyring, SecretKeyPart, TrustedKeys
from .signing import GPGSigner, Signer

SIGNER_MODES = ("auto", "agent", "gpg", "memory")
_SOURCE_HINT = "give it with --passphrase-file or --passphrase-env"
_NEEDS_PASSPHRASE = {assuan.GPG_ERR_NO_PASSPHRASE, assuan.GPG_ERR_NO_PIN, assuan.GPG_ERR_CANCELED,
                     assuan.GPG_ERR_ASS_CANCELED, assuan.GPG_ERR_FULLY_CANCELED}
_WRONG_PASSPHRASE = {assuan.GPG_ERR_BAD_PASSPHRASE, assuan.GPG_ERR_BAD_PIN}
_SIGVAL_NAMES = {pgpsign.PUBKEY_RSA: (b"rsa", [b"s"]), pgpsign.PUBKEY_EDDSA: (b"eddsa", [b"r", b"s"]),
                 pgpsign.PUBKEY_ECDSA: (b"ecdsa", [b"r", b"s"])}


class AgentSignError(GPGError):
    """The agent path failed in a way gpg itself might not (auto mode falls back on this)."""


_CACHE_HINT = ("give it with --passphrase-file, --passphrase-env or --passphrase-stdin, or pass --use-agent-cache "
               "to sign with a passphrase gpg-agent has cached")


def check_passphrase(conn: assuan.AssuanClient, keygrip: str, fingerprint: str, passphrase: str | None) -> None:
    """Make a given passphrase count, whatever gpg-agent has cached (issue 11 #7).

    After one correct use gpg-agent caches a key's passphrase, and from then on signs for anyone asking on its
    socket without an ``INQUIRE PASSPHRASE``: a wrong ``--passphrase-file`` would sign with exit 0. So:

    * a passphrase given is checked with ``PASSWD --verify <keygrip>``, which unlocks the key with exactly that
      passphrase and ignores the cache (a wrong one: ``Bad passphrase``). Checking once per run is enough: the
      agent only ever caches the correct passphrase, so later signatures cannot be made with a wrong one.
    * no passphrase for a protected key (``KEYINFO`` protection ``P``) is refused, cached or not, unless the user
      opted into the agent's cache (``--use-agent-cache``, :func:`passphrase.agent_cache_allowed`).

    Smartcard keys (``KEYINFO`` type ``T``) are left to the card, which checks its own PIN. ``conn`` must already
    be in loopback pinentry mode, so that nothing ever prompts.
    """
    from .passphrase import agent_cache_allowed

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
        if protection == "P" and not agent_cache_allowed():
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


def check_home_passphrase(home: str | None, keygrip: str, fingerprint: str, passphrase: str | None) -> None:
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
        check_passphrase(conn, keygrip, fingerprint, passphrase)
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


class AgentSigner:
    """Signs with one (sub)key held by a gpg-agent; thread-safe (one Assuan connection per thread)."""

    def __init__(self, home: str | None, primary_fingerprint: str, key: SecretKeyPart,
                 passphrase: str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.fingerprint = primary_fingerprint
        self.signing_key = key.fingerprint
        self.key_fingerprints = frozenset({primary_fingerprint.upper(), key.fingerprint.upper()})
        self.home = home
        self._issuer = pgpsign.Issuer(bytes.fromhex(key.fingerprint), key.pubkey_algo,
                                      pgpsign.hash_for(key.pubkey_algo, key.curve))
        self._keygrip = key.keygrip
        self._passphrase = passphrase
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[assuan.AssuanClient] = []
        self._socket = assuan.agent_socket(home)

    def __repr__(self) -> str:  # never the passphrase
        return f"AgentSigner(fingerprint={self.fingerprint!r}, signing_key={self.signing_key!r})"

    def probe(self) -> None:
        """Connect (launching the agent if needed) and check it holds the key; raise AgentSignError if not."""
        try:
            self._connection().transact(f"HAVEKEY {self._keygrip}")
        except assuan.AssuanError as exc:
            raise AgentSignError(f"gpg-agent does not hold the secret key {self.signing_key}: {exc.text}") from exc
        check_passphrase(self._connection(), self._keygrip, self.fingerprint, self._passphrase)

    def sign(self, data: bytes) -> bytes:
        pending = pgpsign.prepare(data, self._issuer, int(self._clock()))
        for attempt in (1, 2):
            try:
                sigval = self._pksign(pending.digest)
                break
            except assuan.AssuanConnectionError:
                self._drop_connection()
                if attempt == 2:
                    raise
        return pgpsign.finish(pending, self._components(sigval))

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
        for c in conns:
            c.close()

    # ---- internals ----------------------------------------------------------------------------------------

    def _connection(self) -> assuan.AssuanClient:
        conn: assuan.AssuanClient | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = assuan.connect(self.home, self._socket)
            try:
                # Loopback even without a passphrase: a needed passphrase then fails here instead of popping
                # up a pinentry on some desktop, which a batch signer must never do.
                conn.transact("OPTION pinentry-mode=loopback")
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
            with self._lock:
                self._open.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)
            conn.close()

    def _pksign(self, digest: bytes) -> bytes:
        conn = self._connection()
        asked = []

        def inquire(keyword: str, _args: bytes) -> bytes | None:
            if keyword == "PASSPHRASE":
                asked.append(keyword)
                return None if self._passphrase is None else self._passphrase.encode()
            if keyword == "PINENTRY_LAUNCHED":
                return b""
            return None  # an inquiry we do not understand is cancelled, never guessed at

        try:
            return conn.pipeline([f"SIGKEY {self._keygrip}",
                                  f"SETHASH {self._issuer.hash_algo} {digest.hex().upper()}", "PKSIGN"], inquire).data
        except assuan.AssuanError as exc:
            if exc.code in _WRONG_PASSPHRASE:
                raise PassphraseError(f"wrong passphrase for key {self.fingerprint}") from None
            if exc.code in _NEEDS_PASSPHRASE and self._passphrase is None:
                # The hint goes into the message: batch signing reports only messages, one line per image.
                raise PassphraseError(f"key {self.fingerprint} needs a passphrase ({_SOURCE_HINT})",
                                      hint=_SOURCE_HINT) from None
            raise AgentSignError(f"gpg-agent could not sign with {self.signing_key}: {exc.text} "
                                 f"(gpg-error {exc.code})") from None

    def _components(self, sigval: bytes) -> list[bytes]:
        name, params = _SIGVAL_NAMES[self._issuer.pubkey_algo]
        try:
            tree = csexp.parse(sigval)
        except csexp.SexpError as exc:
            raise AgentSignError(f"gpg-agent returned an unreadable signature: {exc.message}") from exc
        body = csexp.find(tree, name)
        values = [csexp.value(body, p) if body is not None else None for p in params]
        if body is None or any(v is None for v in values):
            raise AgentSignError(f"gpg-agent returned a signature that is not {name.decode()} "
                                 f"({', '.join(p.decode() for p in params)})")
        return [v for v in values if v is not None]


def agent_signer(keyring: Keyring, fingerprint: str, passphrase: str | None) -> AgentSigner:
    """An AgentSigner for the key ``gpg --local-user fingerprint`` would use; connects to the agent once."""
    parts = keyring.secret_key_parts(fingerprint)
    key = choose_signing_key(parts, int(time.time()))
    if key is None:
        raise InputError(f"secret key {fingerprint} has no usable signing (sub)key in {keyring.describe()}")
    signer = AgentSigner(keyring.home, fingerprint, key, passphrase)
    try:
        signer.probe()
    except BaseException:
        signer.close()
        raise
    return signer


class CheckedAgentSigner:
    """``auto`` mode: the agent signer, its first signature verified by gpg, with gpg as the fallback.

    A passphrase error is final (gpg would fail the same way); any other failure of the agent path — an
    unexpected agent answer, a signature gpg does not accept — switches to the gpg-process signer for good.
    """

    def __init__(self, agent: AgentSigner, fallback: Signer, public_key: Callable[[], bytes]) -> None:
        self.fingerprint = agent.fingerprint
        self.key_fingerprints = agent.key_fingerprints | getattr(fallback, "key_fingerprints", frozenset())
        self.agent: AgentSigner | None = agent
        self.fallback = fallback
        self._public_key = public_key
        self._verified = False
        self._lock = threading.Lock()

    def sign(self, data: bytes) -> bytes:
        if not self._verified:
            with self._lock:
                if not self._verified and self.agent is not None:
                    blob = self._try_agent(data)
                    if blob is not None and self._check(blob, data):
                        self._verified = True
                        return blob
                    self._switch_to_fallback()
                    self._verified = True
        agent = self.agent
        if agent is not None:
            blob = self._try_agent(data, agent)
            if blob is not None:
                return blob
            self._switch_to_fallback()
        return self.fallback.sign(data)

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()

    def _try_agent(self, data: bytes, agent: AgentSigner | None = None) -> bytes | None:
        agent = agent or self.agent
        if agent is None:
            return None
        try:
            return agent.sign(data)
        except PassphraseError:
            raise
        except AtomicsigError:
            return None

    def _check(self, blob: bytes, data: bytes) -> bool:
        try:
            with TrustedKeys([self._public_key()]) as keys:
                result = keys.verify(blob)
            return (result.payload == data and result.signer == self.fingerprint.upper()
                    and openpgp.parse_message(blob).literal == data)
        except (AtomicsigError, SignatureFormatError):
            return False

    def _switch_to_fallback(self) -> None:
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.close()


def make_signer(keyring: Keyring, fingerprint: str, passphrase: str | None, mode: str = "auto") -> Signer:
    """The Signer for ``--signer MODE``: ``gpg`` (one gpg per signature), ``agent``, ``memory`` or ``auto``.

    ``auto`` uses the agent when the key's algorithm is supported and the agent answers, unless
    ``$ATOMICSIG_GPG`` names a specific gpg (then that gpg is what the user wants to run).
    """
    if mode not in SIGNER_MODES:
        raise InputError(f"unknown signer {mode!r}; use one of {', '.join(SIGNER_MODES)}")
    gpg_signer = GPGSigner(keyring, fingerprint, passphrase)
    if mode == "gpg":
        return gpg_signer
    if mode == "memory":  # explicit only: it moves the secret key into this process, auto never chooses that
        from .memsign import memory_signer

        try:
            return memory_signer(keyring, fingerprint, passphrase)
        except pgpsign.UnsupportedKey as exc:
            raise InputError(f"--signer memory cannot use key {fingerprint}: {exc.message}",
                             hint="use --signer agent (or auto) for this key") from exc
    if mode == "agent":
        try:
            return agent_signer(keyring, fingerprint, passphrase)
        except pgpsign.UnsupportedKey as exc:
            raise InputError(f"--signer agent cannot use key {fingerprint}: {exc.message}",
                             hint="use --signer gpg (or auto) for this key") from exc
    if os.environ.get("ATOMICSIG_GPG"):
        return gpg_signer
    try:
        agent = agent_signer(keyring, fingerprint, passphrase)
    except PassphraseError:
        raise  # gpg would refuse the same passphrase (agentsign.check_passphrase runs for both signers)
    except AtomicsigError:
        return gpg_signer
    return CheckedAgentSigner(agent, gpg_signer,
                              lambda: keyring.export_public([fingerprint], armor=False))


def close_signer(signer: object) -> None:
    """Release an agent signer's connections (a no-op for other signers)."""
    close = getattr(signer, "close", None)
    if callable(close):
        with contextlib.suppress(OSError, AtomicsigError):
            close()
