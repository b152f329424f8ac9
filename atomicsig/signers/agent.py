"""A Signer that asks gpg-agent for the private-key operation and frames the OpenPGP message itself.

Why: one ``gpg`` process per signature is ~70 % of a signing run (docs/performance.md, issue #6). The keys stay
where they are — in the user's gpg-agent, passphrase-protected or on a smartcard — and the agent does exactly
what it does for ``gpg --sign``: ``SIGKEY``/``SETHASH``/``PKSIGN`` on a digest we computed (build.py).

The key is chosen the way ``gpg --local-user FPR`` chooses it, so both signers produce signatures by the same
(sub)key. ``make_signer`` picks between this signer and the gpg-process one (``--signer auto|agent|gpg``); in
``auto`` mode anything unexpected on the agent path falls back to gpg, and the first agent signature is
verified by gpg before it is handed out, so a framing bug can never reach a sigstore.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from atomicsig.errors import AtomicsigError, InputError, PassphraseError, SignatureFormatError
from atomicsig.gnupg import assuan, csexp
from atomicsig.gnupg.agent import (
    _NEEDS_PASSPHRASE,
    _SOURCE_HINT,
    _WRONG_PASSPHRASE,
    AgentSignError,
    check_passphrase,
    choose_signing_key,
)
from atomicsig.gnupg.colons import SecretKeyPart
from atomicsig.gnupg.keyring import Keyring, TrustedKeys
from atomicsig.openpgp import build
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp.constants import PubkeyAlgo
from atomicsig.signers.base import Signer

#: The S-expression gpg-agent's PKSIGN returns per public-key algorithm: ``(sig-val (NAME (PARAM VALUE)…))``
#: (libgcrypt's sig-val format), and the parameters that become the OpenPGP signature MPIs, in order.
_SIGVAL_NAMES: dict[int, tuple[bytes, list[bytes]]] = {
    PubkeyAlgo.RSA: (b"rsa", [b"s"]), PubkeyAlgo.EDDSA: (b"eddsa", [b"r", b"s"]),
    PubkeyAlgo.ECDSA: (b"ecdsa", [b"r", b"s"])}


class AgentSigner:
    """Signs with one (sub)key held by a gpg-agent; thread-safe (one Assuan connection per thread)."""

    def __init__(self, home: str | None, primary_fingerprint: str, key: SecretKeyPart,
                 passphrase: str | None = None, *, clock: Callable[[], float] = time.time,
                 agent_cache: bool = False) -> None:
        self.fingerprint = primary_fingerprint
        self.signing_key = key.fingerprint
        self.key_fingerprints = frozenset({primary_fingerprint.upper(), key.fingerprint.upper()})
        self.home = home
        self._issuer = build.Issuer(bytes.fromhex(key.fingerprint), key.pubkey_algo,
                                      build.hash_for(key.pubkey_algo, key.curve))
        self._keygrip = key.keygrip
        self._passphrase = passphrase
        self._agent_cache = agent_cache
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
        check_passphrase(self._connection(), self._keygrip, self.fingerprint, self._passphrase,
                         agent_cache=self._agent_cache)

    def sign(self, data: bytes) -> bytes:
        pending = build.prepare(data, self._issuer, int(self._clock()))
        for attempt in (1, 2):
            try:
                sigval = self._pksign(pending.digest)
                break
            except assuan.AssuanConnectionError:
                self._drop_connection()
                if attempt == 2:
                    raise
        return build.finish(pending, self._components(sigval))

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


def agent_signer(keyring: Keyring, fingerprint: str, passphrase: str | None, *,
                 agent_cache: bool = False) -> AgentSigner:
    """An AgentSigner for the key ``gpg --local-user fingerprint`` would use; connects to the agent once."""
    parts = keyring.secret_key_parts(fingerprint)
    key = choose_signing_key(parts, int(time.time()))
    if key is None:
        raise InputError(f"secret key {fingerprint} has no usable signing (sub)key in {keyring.describe()}")
    signer = AgentSigner(keyring.home, fingerprint, key, passphrase, agent_cache=agent_cache)
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
