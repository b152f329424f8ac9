"""The only module that runs gpg. Key management, signing and (reference-path) verification.

Built on python-gnupg, with the settings simple signing needs made explicit on every call, because a user's
``gpg.conf`` (``armor``, ``textmode``) or python-gnupg's own defaults (clear-signing) would otherwise produce
blobs that containers/image refuses. Passphrases travel on gpg's stdin (loopback pinentry), never in argv.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomicsig.errors import GPGError, InputError, KeyNotFound, PassphraseError, SignatureFormatError
from atomicsig.format.blob import simple_signing_body
from atomicsig.gnupg import colons, gpgconf
from atomicsig.gnupg.agent import check_home_passphrase, choose_signing_key
from atomicsig.gnupg.colons import SecretKeyPart
from atomicsig.gnupg.passphrase import child_env
from atomicsig.openpgp import packets as openpgp
from atomicsig.openpgp.constants import PUBKEY_NAMES, PubkeyAlgo

#: Options that make signing output exactly one binary, inline, SHA-256 signed message regardless of gpg.conf.
SIGN_OPTIONS = ["--no-armor", "--no-textmode", "--digest-algo", "SHA256", "--no-auto-key-locate",
                "--no-auto-key-retrieve"]

_FPR_RE = re.compile(r"^(0x)?[0-9A-Fa-f]{40}$|^(0x)?[0-9A-Fa-f]{16}$")

#: Algorithm names accepted in key specs, mapped to gpg --gen-key parameters.
KEY_ALGORITHMS: dict[str, dict[str, str]] = {
    "rsa2048": {"Key-Type": "RSA", "Key-Length": "2048"},
    "rsa3072": {"Key-Type": "RSA", "Key-Length": "3072"},
    "rsa4096": {"Key-Type": "RSA", "Key-Length": "4096"},
    "ed25519": {"Key-Type": "EDDSA", "Key-Curve": "ed25519"},
}


# python-gnupg logs gpg's raw stderr and the first bytes of imported key data (secret keys included) at DEBUG.
# An application that turns on DEBUG for everything must not get key material or an echoed passphrase in its
# logs, so that logger starts at WARNING; whoever needs its debug output can lower it explicitly.
logging.getLogger("gnupg").setLevel(logging.WARNING)


def gpg_binary() -> str:
    """Path to gpg (``$ATOMICSIG_GPG`` overrides), or GPGError with an install hint."""
    candidate = os.environ.get("ATOMICSIG_GPG") or shutil.which("gpg") or shutil.which("gpg2")
    if not candidate or not os.access(candidate, os.X_OK):
        raise GPGError("gpg not found", hint="install GnuPG 2.2 or newer (Debian: apt-get install gnupg)")
    return candidate


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed by gpg, in the vocabulary atomicsig prints."""

    fingerprint: str
    keyid: str
    uids: tuple[str, ...]
    algorithm: str
    created: int
    expires: int | None
    validity: str  # gpg's validity letter: "r" revoked, "e" expired, "-"/"u"/… otherwise
    secret: bool = False
    subkeys: tuple[str, ...] = ()
    can_sign: bool = True

    @property
    def revoked(self) -> bool:
        return self.validity == "r"

    @property
    def expired(self) -> bool:
        return self.validity == "e"

    def as_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "keyid": self.keyid,
            "uids": list(self.uids),
            "algorithm": self.algorithm,
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
            "expired": self.expired,
            "secret": self.secret,
            "subkeys": list(self.subkeys),
        }


def _rotation_successor(keys: list[KeyInfo]) -> list[KeyInfo]:
    """Of several usable keys for one e-mail, the one a rotation made, if that is what they are.

    ``keys rotate`` leaves the old key valid for an overlap period (expiring soon) next to the new one, so that
    images signed before the rotation keep verifying. An e-mail then names the newest key, but only when every
    other key expires before it: anything else is a genuine ambiguity the user must settle with a fingerprint.
    """
    newest = max(keys, key=lambda k: k.created)
    horizon = newest.expires if newest.expires else float("inf")
    others = [k for k in keys if k is not newest]
    if all(k.created < newest.created and k.expires is not None and k.expires < horizon for k in others):
        return [newest]
    return keys


def _algorithm_name(key: colons.KeyRecord) -> str:
    """How ``keys list`` names a key's algorithm: "rsa<bits>", else the curve, else the algorithm's name."""
    algo = PUBKEY_NAMES.get(key.algorithm, f"algo{key.algorithm}")
    if key.algorithm in (PubkeyAlgo.RSA, PubkeyAlgo.RSA_ENCRYPT, PubkeyAlgo.RSA_SIGN):
        return f"rsa{key.length}"
    return key.curve or algo


def _key_info(listed: colons.ListedKey, secret: bool) -> KeyInfo:
    pub = listed.primary
    return KeyInfo(fingerprint=pub.fingerprint, keyid=pub.keyid, uids=listed.uids, algorithm=_algorithm_name(pub),
                   created=pub.created, expires=pub.expires, validity=pub.validity, secret=secret,
                   subkeys=tuple(s.fingerprint or s.keyid for s in listed.subkeys),
                   can_sign="s" in pub.capabilities.lower())


def _email_of(uid: str) -> str:
    """The e-mail of a user ID: the last ``<…>`` (keys made elsewhere may have a ``<`` in the name)."""
    m = re.search(r"<([^<>]*)>\s*$", uid)
    return (m.group(1) if m else uid).lower()


@dataclass
class Keyring:
    """A GnuPG home directory (``--gnupghome``, else ``$GNUPGHOME``, else gpg's default ``~/.gnupg``)."""

    home: str | None = None
    #: False for verification-only homes: gpg would otherwise start a gpg-agent on the first import, one idle
    #: daemon per ephemeral home that outlives a killed atomicsig. Public-key work never needs the agent.
    autostart: bool = True
    _gpg: Any = field(default=None, init=False, repr=False)
    #: Keys whose passphrase (or lack of one) gpg-agent has confirmed in this process, see :meth:`sign`.
    _checked: dict[tuple[str, bool], str | None] = field(default_factory=dict, init=False, repr=False)
    _check_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.home is None:
            self.home = os.environ.get("GNUPGHOME") or None
        if self.home is not None:
            try:
                Path(self.home).mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot use GnuPG home {self.home}: {exc.strerror}") from exc

    @property
    def gpg(self) -> Any:
        if self._gpg is None:
            import gnupg

            binary = gpg_binary()
            try:
                # Passphrase variables stay out of gpg's environment, and so out of the gpg-agent it starts.
                g = gnupg.GPG(gpgbinary=binary, gnupghome=self.home, env=child_env(),
                              options=None if self.autostart else ["--no-autostart"])
            except (OSError, ValueError, RuntimeError) as exc:
                raise GPGError(f"cannot run gpg: {exc}") from exc
            g.encoding = "utf-8"
            self._gpg = g
        # Recomputed on every use: a passphrase variable may be named after this object was created.
        self._gpg.env = child_env()
        return self._gpg

    # ---- listing and lookup -------------------------------------------------------------------------------

    def list_keys(self, secret: bool = False) -> list[KeyInfo]:
        """The keys of this home (``--list-keys``, or ``--list-secret-keys``), each marked if its secret is here."""
        listed = self.listing(secret=secret)
        secret_fprs = {k.primary.fingerprint for k in self.listing(secret=True)} if not secret else set()
        return [_key_info(k, secret or k.primary.fingerprint in secret_fprs) for k in listed if k.primary.fingerprint]

    def listing(self, *, secret: bool = False) -> list[colons.ListedKey]:
        """gpg's colon listing of this home, parsed (:mod:`atomicsig.gnupg.colons`).

        Like python-gnupg's ``list_keys``, which this replaced, a failing gpg yields what it listed (usually
        nothing) rather than an error: an unreadable home then reads as one without keys, and the lookup that
        follows says which key is missing.
        """
        import subprocess

        args = ["--with-colons", "--fixed-list-mode", "--list-secret-keys" if secret else "--list-keys"]
        cmd, _ = self._command(None, status_fd=2)
        try:
            proc = subprocess.run(cmd + args, input=b"", capture_output=True, check=False, timeout=120,
                                  env=child_env())
        except (OSError, subprocess.SubprocessError) as exc:
            raise GPGError(f"cannot run gpg: {exc}") from exc
        return colons.parse(proc.stdout.decode("utf-8", errors="replace"))

    def resolve(self, spec: str, *, secret: bool) -> KeyInfo:
        """Find exactly one key by fingerprint, key ID or e-mail/uid substring."""
        keys = self.list_keys(secret=secret)
        wanted = spec[2:] if spec.lower().startswith("0x") else spec
        if _FPR_RE.match(spec):
            w = wanted.upper()
            matches = [k for k in keys if k.fingerprint.upper().endswith(w) or w in (s.upper() for s in k.subkeys)]
        else:
            email = spec.strip("<>").lower()
            matches = [k for k in keys if any(_email_of(u) == email or u == spec for u in k.uids)]
        kind = "secret key" if secret else "key"
        if not matches:
            raise KeyNotFound(f"no {kind} matching {spec!r} in {self.describe()}")
        usable = [k for k in matches if not (k.revoked or k.expired)]
        if len(usable) > 1 and not _FPR_RE.match(spec):
            usable = _rotation_successor(usable)
        if len(usable) > 1:
            fprs = ", ".join(k.fingerprint for k in usable)
            raise InputError(f"{spec!r} matches several keys ({fprs}); give a fingerprint")
        if not usable:
            raise KeyNotFound(f"{kind} {matches[0].fingerprint} for {spec!r} is expired or revoked")
        return usable[0]

    def describe(self) -> str:
        return f"GnuPG home {self.home}" if self.home else "the default GnuPG home"

    def secret_key_parts(self, fingerprint: str) -> list[SecretKeyPart]:
        """The primary key and subkeys of secret key ``fingerprint`` with keygrips (``--with-keygrip``).

        What the agent signer needs to choose the (sub)key ``gpg --local-user`` would, and to address it in
        gpg-agent, which knows keys only by keygrip.
        """
        try:
            listing = self._run(["--with-colons", "--fixed-list-mode", "--with-keygrip", "--list-secret-keys",
                                 fingerprint], None)
        except GPGError:
            return []
        return colons.secret_key_parts(listing.decode("utf-8", errors="replace"), fingerprint)

    # ---- generation ---------------------------------------------------------------------------------------

    def generate(self, *, name: str, email: str, comment: str | None, algorithm: str, expire: str,
                 passphrase: str | None) -> KeyInfo:
        """Create a signing-only primary key.

        The parameter block goes to gpg as a file and holds no secret; the passphrase travels on gpg's stdin
        (``--passphrase-fd 0``, loopback). Not as a ``Passphrase:`` parameter: gpg's batch parser trims leading
        and trailing spaces from every value, so the key would be protected by a different passphrase than the
        one configured, and every later signature would fail (issue 12 #12).
        """
        import subprocess

        if algorithm not in KEY_ALGORITHMS:
            raise InputError(f"unknown algorithm {algorithm!r}; use one of {', '.join(KEY_ALGORITHMS)}")
        lines = [f"{k}: {v}" for k, v in KEY_ALGORITHMS[algorithm].items()]
        lines += ["Key-Usage: sign", f"Name-Real: {name}", f"Name-Email: {email}", f"Expire-Date: {expire}"]
        if comment:
            lines.append(f"Name-Comment: {comment}")
        for line in lines:
            if "\n" in line or "\r" in line:
                raise InputError("key parameters must not contain newlines")
        if passphrase is None:
            lines.append("%no-protection")
        lines.append("%commit")
        cmd, stdin = self._command(passphrase, status_fd=1)
        with tempfile.TemporaryDirectory(prefix="atomicsig-genkey-") as tmp:
            params = Path(tmp) / "params"
            params.write_text("\n".join(lines) + "\n", encoding="utf-8")
            proc = subprocess.run([*cmd, "--gen-key", str(params)], input=stdin, capture_output=True, check=False,
                                  timeout=300, env=child_env())
            if proc.returncode != 0 and b"No agent running" in proc.stderr:
                # gpg gives a freshly autostarted agent a few seconds to answer; on a loaded machine (a CI
                # runner) that is not always enough. Start it and wait for it explicitly, then try once more.
                from atomicsig.gnupg.assuan import launch_agent

                _check_socket_room(self.home)
                launch_agent(self.home)
                proc = subprocess.run([*cmd, "--gen-key", str(params)], input=stdin, capture_output=True,
                                      check=False, timeout=300, env=child_env())
        created = [ln.split()[3] for ln in proc.stdout.decode(errors="replace").splitlines()
                   if ln.startswith("[GNUPG:] KEY_CREATED ") and len(ln.split()) > 3]
        if proc.returncode != 0 or not created:
            raise GPGError(f"gpg could not generate a key for {email}: "
                           f"{_redact(_last_line(proc.stderr), passphrase)}")
        return self.resolve(created[-1], secret=True)

    # ---- import / export / delete -------------------------------------------------------------------------

    def import_keys(self, data: bytes, passphrase: str | None = None) -> list[str]:
        result = self.gpg.import_keys(data, passphrase=passphrase) if passphrase else self.gpg.import_keys(data)
        fprs = sorted({f for f in (result.fingerprints or []) if f})
        if not fprs:
            raise InputError(f"no OpenPGP key found in the input ({_stderr_tail(result)})")
        return fprs

    def export_public(self, fingerprints: Iterable[str], *, armor: bool) -> bytes:
        fprs = list(fingerprints)
        data = self.gpg.export_keys(fprs, armor=armor)
        raw = data if isinstance(data, bytes) else data.encode()
        if not raw:
            raise KeyNotFound(f"nothing exported for {', '.join(fprs)}")
        return raw

    def export_secret(self, fingerprints: Iterable[str], *, armor: bool, passphrase: str | None) -> bytes:
        fprs = list(fingerprints)
        for fpr in fprs:
            self.check_given_passphrase(fpr, passphrase)
        if passphrase is None:
            data = self.gpg.export_keys(fprs, secret=True, armor=armor, expect_passphrase=False)
        else:
            data = self.gpg.export_keys(fprs, secret=True, armor=armor, passphrase=passphrase)
        raw = data if isinstance(data, bytes) else data.encode()
        if not raw:
            raise PassphraseError(f"could not export the secret key of {', '.join(fprs)} (wrong passphrase?)")
        return raw

    def delete(self, fingerprint: str, *, passphrase: str | None) -> None:
        """Delete the secret key (if any) and then the public key."""
        secret_fprs = {k.fingerprint for k in self.list_keys(secret=True)}
        if fingerprint in secret_fprs:
            self.check_given_passphrase(fingerprint, passphrase)
            if passphrase is None:
                res = self.gpg.delete_keys(fingerprint, secret=True, expect_passphrase=False)
            else:
                res = self.gpg.delete_keys(fingerprint, secret=True, passphrase=passphrase)
            if str(res) != "ok":
                raise GPGError(f"could not delete secret key {fingerprint}: {res}")
        res = self.gpg.delete_keys(fingerprint)
        if str(res) != "ok":
            raise GPGError(f"could not delete key {fingerprint}: {res}")

    def set_expiry(self, fingerprint: str, expire: str, *, passphrase: str | None) -> None:
        """Change the primary key's expiry (``--quick-set-expire``); used to retire a key gracefully."""
        self.check_given_passphrase(fingerprint, passphrase)
        args = ["--quick-set-expire", fingerprint, expire]
        self._run(args, passphrase)

    def revoke(self, fingerprint: str, *, passphrase: str | None, reason: str = "key retired") -> bytes:
        """Generate and import a revocation certificate; returns the certificate (armored)."""
        self.check_given_passphrase(fingerprint, passphrase)
        # gpg --gen-revoke is interactive; --command-fd answers its questions deterministically.
        answers = "y\n0\n" + reason.replace("\n", " ") + "\n\ny\n"
        # gpg refuses --gen-revoke under --batch ("can't do this in batch mode"); --no-tty still keeps it
        # from ever prompting on a terminal.
        out = self._run(["--command-fd", "0", "--armor", "--gen-revoke", fingerprint], passphrase,
                        stdin_prefix=answers, batch=False)
        if b"BEGIN PGP PUBLIC KEY BLOCK" not in out:
            raise GPGError(f"gpg did not produce a revocation certificate for {fingerprint}")
        # Importing a bare revocation reports no IMPORT_OK fingerprint, only a revocation count.
        res = self.gpg.import_keys(out)
        if not int(getattr(res, "n_revoc", 0) or 0) and not any(k.revoked for k in self.list_keys()
                                                               if k.fingerprint == fingerprint):
            raise GPGError(f"gpg did not apply the revocation of {fingerprint}: {_stderr_tail(res)}")
        return out

    def _command(self, passphrase: str | None, *, status_fd: int, batch: bool = True) -> tuple[list[str], bytes]:
        """The gpg argv for this home and the stdin that carries the passphrase (never argv, never env)."""
        cmd = [gpg_binary(), *(["--batch"] if batch else []), "--no-tty", "--status-fd", str(status_fd)]
        if not self.autostart:
            cmd.append("--no-autostart")
        if self.home:
            cmd += ["--homedir", self.home]
        stdin = b""
        if passphrase is not None:
            cmd += ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
            stdin = passphrase.encode() + b"\n"
        return cmd, stdin

    def _run(self, args: list[str], passphrase: str | None, stdin_prefix: str = "", *, batch: bool = True) -> bytes:
        """Run gpg for operations python-gnupg does not wrap; passphrase on fd 0 after any scripted answers."""
        import subprocess

        cmd, stdin = self._command(passphrase, status_fd=2, batch=batch)
        stdin += stdin_prefix.encode()
        proc = subprocess.run(cmd + args, input=stdin, capture_output=True, check=False, timeout=120,
                              env=child_env())
        if proc.returncode != 0:
            raise GPGError(f"gpg {args[0]} failed: {_redact(_last_line(proc.stderr), passphrase)}")
        return proc.stdout

    # ---- signing ------------------------------------------------------------------------------------------

    def sign(self, payload: bytes, fingerprint: str, passphrase: str | None, *, agent_cache: bool = False) -> bytes:
        """Sign ``payload`` as one binary, inline OpenPGP message with the key ``fingerprint``.

        ``agent_cache`` (``--use-agent-cache``) lets a protected key sign with no passphrase given (gnupg.agent).
        """
        self._check_passphrase(fingerprint, passphrase, agent_cache)
        kwargs: dict[str, Any] = {"keyid": fingerprint, "clearsign": False, "detach": False, "binary": True,
                                  "extra_args": [*SIGN_OPTIONS, "--local-user", fingerprint]}
        if passphrase is not None:
            kwargs["passphrase"] = passphrase
        result = self.gpg.sign(payload, **kwargs)
        blob = result.data if isinstance(result.data, bytes) else bytes(result.data or b"")
        # A failed gpg --sign (wrong passphrase) may still have written the one-pass and literal packets to
        # stdout; only SIG_CREATED with exit 0 means a complete signature.
        if not blob or result.returncode != 0 or not getattr(result, "fingerprint", None):
            stderr = _redact(_stderr_tail(result), passphrase)
            if "BAD_PASSPHRASE" in (result.stderr or "") or "Bad passphrase" in stderr:
                raise PassphraseError(f"wrong passphrase for key {fingerprint}")
            if "MISSING_PASSPHRASE" in (result.stderr or "") or "No passphrase" in stderr \
                    or "PINENTRY_LAUNCHED" in (result.stderr or ""):
                raise PassphraseError(f"key {fingerprint} needs a passphrase (--passphrase-file or --passphrase-env)")
            raise GPGError(f"gpg could not sign with {fingerprint}: {stderr}")
        try:
            openpgp.parse_message(simple_signing_body(blob))
        except SignatureFormatError as exc:  # would only happen if gpg ignored our options
            raise GPGError(f"gpg produced an unusable signature: {exc}") from exc
        return blob


    def _check_passphrase(self, fingerprint: str, passphrase: str | None, agent_cache: bool = False) -> None:
        """Once per key and passphrase: gpg itself signs with a cached passphrase whatever ``--passphrase-fd``
        says, so the agent checks the given one first (agentsign.check_passphrase, issue 11 #7)."""
        with self._check_lock:
            if (fingerprint, agent_cache) in self._checked and self._checked[fingerprint, agent_cache] == passphrase:
                return
            key = choose_signing_key(self.secret_key_parts(fingerprint), int(time.time()))
            if key is not None:  # no usable signing key: gpg's own error says why
                check_home_passphrase(self.home, key.keygrip, fingerprint, passphrase, agent_cache=agent_cache)
            self._checked[fingerprint, agent_cache] = passphrase


    def check_given_passphrase(self, fingerprint: str, passphrase: str | None) -> None:
        """A passphrase given for a key operation (export, delete, expiry, revocation) is checked against the
        primary key by gpg-agent, which gpg skips while the agent has it cached (issue 11 #7)."""
        if passphrase is None:
            return
        primary = next((p for p in self.secret_key_parts(fingerprint) if p.primary and p.keygrip), None)
        if primary is not None and "#" not in primary.token:
            check_home_passphrase(self.home, primary.keygrip, fingerprint, passphrase)


def _redact(text: str, secret: str | None) -> str:
    """gpg's stderr goes into our error messages; a gpg that echoes its input must not carry the passphrase."""
    return text.replace(secret, "[passphrase]") if secret else text


#: A Unix socket address holds 107 path bytes (sun_path); gpg-agent's longest socket name under a GnuPG home.
_SUN_PATH_MAX = 107
_LONGEST_AGENT_SOCKET = "S.gpg-agent.browser"


def _check_socket_room(home: str | None) -> None:
    """Say why no agent can run for ``home``: without /run/user/<uid> (systemd's runtime dir) gpg-agent puts its
    sockets inside the home, and a home whose path leaves no room for them in a socket address gets "No agent
    running" from gpg, which tells a user nothing."""
    if home is None or os.path.isdir(f"/run/user/{os.getuid()}"):
        return
    path = os.path.join(os.path.abspath(home), _LONGEST_AGENT_SOCKET)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise InputError(f"GnuPG home {home} is too deep for gpg-agent: its socket {path} is {len(os.fsencode(path))} "
                         f"bytes, a Unix socket address holds {_SUN_PATH_MAX}; use a shorter GNUPGHOME")


def _stderr_tail(result: Any) -> str:
    return _last_line((getattr(result, "stderr", "") or "").encode())


def _last_line(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines()
             if ln.strip() and not ln.startswith("[GNUPG:]")]
    return lines[-1].strip() if lines else "no error output"


# ---- verification (reference path) -------------------------------------------------------------------------


@dataclass(frozen=True)
class GPGVerification:
    """What gpg says about one signed message, before any policy decision."""

    payload: bytes
    signer: str  # primary key fingerprint, uppercase
    signing_key: str  # the (sub)key that made the signature
    #: Set when containers/image's two backends would decide differently (issue 16 #5): backend name
    #: ("gpgme", "sequoia") -> "accept" or "refuse: <why>".
    backends: dict[str, str] | None = None


class BackendsDisagree(SignatureFormatError):
    """A refused signature that the other containers/image backend would accept; ``backends`` says which."""

    def __init__(self, message: str, backends: dict[str, str]) -> None:
        super().__init__(message)
        self.backends = backends


#: Why the gpg verifier (``ATOMICSIG_VERIFIER=gpg``) refuses v6 keys and signatures: GnuPG 2.2 reads OpenPGP v4 only.
GPG_VERIFIER_V4_ONLY = ("not supported by the gpg verifier (ATOMICSIG_VERIFIER=gpg: GnuPG 2.2 reads OpenPGP v4 "
                        "only; the default verifier checks v6 through Sequoia)")


class TrustedKeys:
    """An ephemeral GnuPG home holding only the trusted public keys, like c/image's ``containers-ephemeral-gpg-*``.

    Verification must not depend on the user's keyring or owner trust, so keys are imported into a throwaway
    home that is removed on :meth:`close`. The set of trusted identities is the primary fingerprints imported.
    """

    def __init__(self, keyring_blobs: Iterable[bytes]) -> None:
        self._dir = tempfile.mkdtemp(prefix="atomicsig-ephemeral-gpg-")
        self._lock = threading.Lock()
        self.fingerprints: frozenset[str] = frozenset()
        try:
            self._keyring = Keyring(self._dir, autostart=False)
            # gpg echoes a message's literal file name byte for byte in its status lines; a non-UTF-8 name
            # killed python-gnupg's reader thread (AttributeError on .stderr). latin-1 decodes any byte, and
            # nothing here reads text beyond fingerprints and status keywords.
            self._keyring.gpg.encoding = "latin-1"
            for data in keyring_blobs:
                with contextlib.suppress(InputError):
                    self._keyring.import_keys(data)
            # One listing (public keys only: this home has no secrets and no agent) for the trusted
            # fingerprints, the subkey map and the in-process verifier's key table.
            self._listed = [k for k in self._keyring.listing() if k.primary.fingerprint]
            self.fingerprints = frozenset(k.primary.fingerprint for k in self._listed)
            self._subkey_to_primary = {s.fingerprint or s.keyid: k.primary.fingerprint
                                       for k in self._listed for s in k.subkeys}
        except BaseException:
            self.close()
            raise

    @property
    def digest(self) -> str:
        return hashlib.sha256(",".join(sorted(self.fingerprints)).encode()).hexdigest()

    def close(self) -> None:
        # No agent to stop: this home runs gpg with --no-autostart (see Keyring.autostart).
        shutil.rmtree(self._dir, ignore_errors=True)

    def listing_and_export(self) -> tuple[list[colons.ListedKey], bytes]:
        """gpg's own verdict on the imported keys (colon listing) and their binary export, for nativeverify.

        gpg stays the authority on certificates (self-signatures, revocations, expiry); the in-process verifier
        only takes key material and these verdicts from here.
        """
        exported = self._keyring._run(["--export"], None) if self.fingerprints else b""
        return self._listed, exported

    def __enter__(self) -> TrustedKeys:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def verify(self, blob: bytes) -> GPGVerification:
        """Verify one signed message. Raises SignatureFormatError with the reason on any failure.

        Mirrors GPGME's checks in c/image ``mechanism_gpgme.go``: exactly one signature, no BADSIG/ERRSIG,
        no expired signature, no expired or revoked key; owner trust ignored.
        """
        if not self.fingerprints:
            raise SignatureFormatError("no public keys imported")
        body = simple_signing_body(blob)
        # Exactly one message with one signature packet, nothing after it (SPEC §1.3): gpg prints GOODSIG for a
        # message followed by garbage and only complains in its exit status, which skopeo treats as a failure.
        msg = openpgp.parse_message(body)
        version = msg.signatures[0].version if msg.signatures else 4
        if version not in (3, 4):
            # gpg 2.2 skips such a packet and says only "no data was provided" (issue 16): name it instead.
            raise SignatureFormatError(f"OpenPGP v{version} signature: {GPG_VERIFIER_V4_ONLY}")
        g = self._keyring.gpg
        result = g.decrypt(body, extra_args=["--trust-model", "always", "--no-auto-key-retrieve"])
        problems = list(getattr(result, "problems", None) or [])
        sig_count = len(getattr(result, "sig_info", {}) or {})
        if sig_count > 1:
            raise SignatureFormatError(f"unexpected GPG signature count {sig_count}")
        if "NO_PUBKEY" in (result.stderr or "") or any("no public key" in str(p.get("status", "")) for p in problems):
            keyid = getattr(result, "key_id", None) or (problems[0].get("keyid") if problems else None) or "?"
            raise SignatureFormatError(f"signed by an untrusted key (key ID {keyid})")
        if problems:
            raise SignatureFormatError(f"signature rejected by gpg: {problems[0].get('status', 'error')}")
        if not result.valid or not result.fingerprint:
            raise SignatureFormatError(f"invalid signature: {result.status or _stderr_tail(result)}")
        _check_gpg_verdict(result)
        signing = str(result.fingerprint).upper()
        primary = str(getattr(result, "pubkey_fingerprint", "") or signing).upper()
        primary = self._subkey_to_primary.get(signing, primary)
        if primary not in self.fingerprints:
            raise SignatureFormatError(f"signed by an untrusted key {primary}")
        data = result.data if isinstance(result.data, bytes) else bytes(result.data or b"")
        return GPGVerification(payload=data, signer=primary, signing_key=signing)


#: Status keywords that make a verification fail whatever else gpg printed (gpg's doc/DETAILS): a bad or
#: unverifiable signature, a signature by an expired/revoked key, missing or unexpected data, a failed operation.
_FAILING_STATUS = frozenset({"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NODATA", "UNEXPECTED",
                             "FAILURE", "ERROR", "DECRYPTION_FAILED", "BADARMOR"})


def _check_gpg_verdict(result: Any) -> None:
    """gpg's whole verdict, not only its GOODSIG: exit status 0, exactly one GOODSIG and one VALIDSIG, and no
    status line that means failure. GPGME (and so skopeo) fails on any of these; python-gnupg's ``valid`` is
    set by the GOODSIG alone, even when gpg then reports trailing data and exits 2 (issue 12 #10)."""
    statuses = [ln.split()[1] for ln in (getattr(result, "stderr", "") or "").splitlines()
                if ln.startswith("[GNUPG:] ") and len(ln.split()) > 1]
    bad = sorted(_FAILING_STATUS.intersection(statuses))
    if bad:
        raise SignatureFormatError(f"signature rejected by gpg: {bad[0]}")
    if statuses.count("GOODSIG") != 1 or statuses.count("VALIDSIG") != 1:
        raise SignatureFormatError(f"unexpected GPG signature count {statuses.count('GOODSIG')}")
    if getattr(result, "returncode", None) != 0:
        raise SignatureFormatError(f"gpg exited with status {getattr(result, 'returncode', None)}: "
                                   f"{_stderr_tail(result)}")


@contextlib.contextmanager
def temporary_home() -> Iterator[Keyring]:
    """A throwaway GnuPG home (e.g. to sign with a key file from a Kubernetes Secret), removed afterwards."""
    d = tempfile.mkdtemp(prefix="atomicsig-gpg-")
    try:
        yield Keyring(d)
    finally:
        remove_home(d)


def remove_home(d: str) -> None:
    """Stop the gpg-agent a throwaway home may have started (gpg launches one on import), then delete the home.

    Deleting the directory alone leaves the agent running with nothing to serve: one stray process per
    verification run or temporary signing home.
    """
    gpgconf.kill_agents(d)
    shutil.rmtree(d, ignore_errors=True)
