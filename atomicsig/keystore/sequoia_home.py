"""A Sequoia home on disk: certificates in ``pgp.cert.d``, secret keys in the soft-key store.

This is where skopeo's and podman's Sequoia signer (``--sign-by-sq-fingerprint``, containers/image
``signature/simplesequoia``) finds a key, so ``keys generate`` writes v6 and post-quantum keys here and ``sign``
reads them back. The layout, with its sources (docs/keys-sequoia.md has the long form):

* the home is ``--sequoia-home DIR``, else ``$SEQUOIA_HOME``; its data then lives in ``<home>/data/``:
  ``<home>/data/pgp.cert.d`` and ``<home>/data/keystore`` (sequoia-directories ``Home::data_dir``, which
  podman-sequoia's ``SequoiaMechanism::from_directory`` calls for ``Component::CertD`` and ``Keystore``);
* with neither, the XDG defaults: ``$XDG_DATA_HOME/pgp.cert.d`` (``~/.local/share/pgp.cert.d``) and
  ``$XDG_DATA_HOME/sequoia/keystore`` (Sequoia user documentation, "Files");
* ``pgp.cert.d`` (draft-nwjw-openpgp-cert-d): one binary certificate per file named by the primary fingerprint
  in lower-case hex, the first two digits a directory: ``ab/cdef…`` (38 digits after the directory for v4, 62
  for v6); writers lock ``pgp.cert.d/writelock`` and replace files atomically;
* the soft-key store: ``keystore/softkeys/*.pgp`` (or ``.asc``), each a transferable secret key, binary or
  armored; files with other names are ignored (sequoia-keystore-softkeys README). containers/image's test
  fixtures name them ``<FINGERPRINT>.pgp`` in upper case, and so do we.

Every file is written temp + fsync + rename; secret keys 0600 in 0700 directories.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from atomicsig.errors import InputError, KeyNotFound
from atomicsig.fsutil import atomic_write, flocked, fsync_dir, makedirs
from atomicsig.openpgp import sequoia, sqgen

__all__ = ["SequoiaHome", "StoredKey", "truncated_hint"]

_HEX = re.compile(r"(?:0[xX])?([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})")
#: Bound on one key file read from the home (a post-quantum TSK is ~20 KB; certificates with many signatures more).
_MAX_KEY_FILE = 4 * 1024 * 1024


@dataclass(frozen=True)
class StoredKey:
    """One key in the home: its description, and whether its secret part is in the soft-key store."""

    info: sequoia.CertInfo
    secret_path: Path | None


class SequoiaHome:
    """The certificate store and soft-key store of one Sequoia home (see the module docstring for the layout)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        chosen = str(home) if home else os.environ.get("SEQUOIA_HOME") or None
        if chosen == "none":
            raise InputError("SEQUOIA_HOME is 'none' (no key store); give --sequoia-home DIR")
        if chosen:
            data = Path(chosen).expanduser() / "data"
            self.certd, self.keystore = data / "pgp.cert.d", data / "keystore"
            self.root = Path(chosen).expanduser()
        else:
            xdg = os.environ.get("XDG_DATA_HOME") or ""
            base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
            self.certd, self.keystore = base / "pgp.cert.d", base / "sequoia" / "keystore"
            self.root = base / "sequoia"
        self.softkeys = self.keystore / "softkeys"

    def describe(self) -> str:
        return f"the Sequoia home {self.root}"

    def cert_path(self, fingerprint: str) -> Path:
        """``pgp.cert.d/<2 hex>/<rest>``, lower case (draft-nwjw-openpgp-cert-d §3.1)."""
        fpr = fingerprint.lower()
        return self.certd / fpr[:2] / fpr[2:]

    def softkey_path(self, fingerprint: str) -> Path:
        return self.softkeys / f"{fingerprint.upper()}.pgp"

    def store(self, key: sqgen.GeneratedKey) -> None:
        """Write ``key``'s certificate into ``pgp.cert.d`` and its secret key into the soft-key store.

        The secret key goes first: a certificate without its secret would make the key look present to
        ``keys generate`` on the next run, while the secret alone is found again by its file name.
        """
        self.store_secret(key.fingerprint, key.secret)
        self.store_cert(key.fingerprint, key.public)

    def store_secret(self, fingerprint: str, secret: bytes, path: Path | None = None) -> None:
        """A transferable secret key into the soft-key store (0600 in 0700 directories), at ``path`` (a file the
        store already has for this key) or ``<FINGERPRINT>.pgp``."""
        makedirs(self.softkeys, 0o700)
        os.chmod(self.keystore, 0o700)
        os.chmod(self.softkeys, 0o700)
        atomic_write(path or self.softkey_path(fingerprint), secret, 0o600)

    def update(self, stored: StoredKey, public: bytes) -> None:
        """New public packets of a stored key (a revocation, new self-signatures): merged into its certificate
        in ``pgp.cert.d`` and into its secret key, so both stores tell the same; the secret parts stay as they
        are. The certificate first: it is what nodes and ``keys export`` read."""
        self.store_cert(stored.info.fingerprint, public)
        if stored.secret_path is not None:
            merged = sqgen.merge_secret(self.secret_key(stored), public)
            self.store_secret(stored.info.fingerprint, merged, stored.secret_path)

    def import_key(self, part: sqgen.KeyPart) -> str:
        """One key of an input file into the home; returns ``imported`` (new), ``updated`` or ``unchanged``.

        The certificate is merged into ``pgp.cert.d`` as the draft's insert does (new signatures, user IDs and
        subkeys added, nothing removed). A secret key goes into the soft-key store; a secret key the store already
        has is kept as it is (its protection included: importing an unprotected copy never strips a passphrase)
        and only gains the new public packets. So a second import of the same file changes nothing.
        """
        fpr = part.fingerprint
        cert_path = self.cert_path(fpr)
        before = cert_path.read_bytes() if cert_path.is_file() else None
        existing = [k for k in self.list_keys(secret=True) if k.info.fingerprint == fpr]
        old_secret = self.secret_key(existing[0]) if existing else None
        public = sqgen.public_part(part.data) if part.secret else part.data
        new_secret = old_secret
        if old_secret is not None:  # the stored secret key gains the new public packets (a revocation, say)
            new_secret = sqgen.merge_secret(old_secret, public)
            if new_secret != old_secret:
                self.store_secret(fpr, new_secret, existing[0].secret_path)
        elif part.secret:
            new_secret = part.data if before is None else sqgen.merge_secret(part.data, before)
            self.store_secret(fpr, new_secret)
        self.store_cert(fpr, public)
        if before is None and old_secret is None:
            return "imported"
        return "updated" if cert_path.read_bytes() != before or new_secret != old_secret else "unchanged"

    def delete(self, stored: StoredKey) -> None:
        """Remove a key: its secret key file, then its certificate (under the store's write lock).

        A soft-key file holding other keys besides this one is refused rather than rewritten: it was put there by
        someone else, and deleting one key must not touch another.
        """
        fpr = stored.info.fingerprint
        if stored.secret_path is not None:
            others = [i.fingerprint for i in _infos(stored.secret_path) if i.fingerprint != fpr]
            if others:
                raise InputError(f"{stored.secret_path} holds other keys too ({', '.join(others)}); "
                                 "remove it by hand")
            _remove(stored.secret_path)
        path = self.cert_path(fpr)
        if path.is_file():
            with flocked(self.certd / "writelock", os.O_RDWR | os.O_CREAT, f"{self.certd}/writelock"):
                _remove(path)

    def store_cert(self, fingerprint: str, public: bytes) -> None:
        """One certificate into ``pgp.cert.d``, merged with a copy already there, under the store's write lock."""
        makedirs(self.certd, 0o755)
        path = self.cert_path(fingerprint)
        with flocked(self.certd / "writelock", os.O_RDWR | os.O_CREAT, f"{self.certd}/writelock"):
            if path.is_file():
                public = sqgen.merge_certs(path.read_bytes(), public)
            makedirs(path.parent, 0o755)
            atomic_write(path, public, 0o644)

    def list_keys(self, *, secret: bool = False) -> list[StoredKey]:
        """Every key of the home: the certificates of ``pgp.cert.d``, and keys only in the soft-key store."""
        secrets: dict[str, Path] = {}
        if self.softkeys.is_dir():
            for p in sorted(self.softkeys.iterdir()):
                if p.suffix in (".pgp", ".asc") and p.is_file() and not p.is_symlink():
                    for info in _infos(p):
                        secrets.setdefault(info.fingerprint, p)
        out: dict[str, StoredKey] = {}
        if self.certd.is_dir():
            for d in sorted(self.certd.iterdir()):
                if not (d.is_dir() and re.fullmatch(r"[0-9a-f]{2}", d.name)):
                    continue  # trust-root, writelock, Sequoia's caches and indexes
                for f in sorted(d.iterdir()):
                    if not re.fullmatch(r"[0-9a-f]{38}|[0-9a-f]{62}", f.name) or not f.is_file():
                        continue
                    for info in _infos(f):
                        out[info.fingerprint] = StoredKey(info, secrets.get(info.fingerprint))
        for fpr, p in secrets.items():
            if fpr not in out:
                out[fpr] = StoredKey(next(i for i in _infos(p) if i.fingerprint == fpr), p)
        found = sorted(out.values(), key=lambda k: (k.info.created, k.info.fingerprint))
        return [k for k in found if k.secret_path is not None] if secret else found

    def resolve(self, spec: str, *, secret: bool = False) -> StoredKey:
        """The one usable key ``spec`` names: a 40/64-hex fingerprint (primary or subkey) or an e-mail.

        An e-mail names the newest usable (not revoked, not expired) key with it, as GnuPG's lookup does; a
        fingerprint names its key whatever its state (the caller asked for exactly that one).
        """
        import time

        m = _HEX.fullmatch(spec)
        candidates = self.list_keys(secret=secret)
        if m:
            fpr = m.group(1).upper()
            hit = [k for k in candidates if fpr in k.info.key_fingerprints]
        else:
            email, now = spec.strip("<>").lower(), time.time()
            hit = [k for k in candidates if not k.info.revoked and (k.info.expires is None or k.info.expires > now)
                   and any(_email(u) == email for u in k.info.uids)]
        kind = "secret key" if secret else "key"
        if not hit and m:
            hint = truncated_hint(m.group(1).upper(), [k.info.fingerprint for k in candidates])
            raise KeyNotFound(f"no {kind} {spec} in {self.describe()}{hint}")
        if not hit:  # keys with that e-mail that are there but retired: say so rather than "no key"
            gone = [k.info for k in candidates if any(_email(u) == email for u in k.info.uids)]
            if not gone:
                raise KeyNotFound(f"no {kind} {spec} in {self.describe()}")
            newest = max(gone, key=lambda i: i.created)
            state = "revoked" if newest.revoked else "expired"  # an invalid certificate has no readable user ID
            raise KeyNotFound(f"no usable {kind} {spec} in {self.describe()} (key {newest.fingerprint} is {state})")
        return max(hit, key=lambda k: k.info.created)

    def secret_key(self, stored: StoredKey) -> bytes:
        if stored.secret_path is None:
            raise KeyNotFound(f"{self.describe()} has no secret key {stored.info.fingerprint}")
        return _read(stored.secret_path)

    def public_key(self, stored: StoredKey) -> bytes:
        path = self.cert_path(stored.info.fingerprint)
        if path.is_file():
            return _read(path)
        # Only the secret key is there (put into softkeys by hand or by another tool): its public part.
        fpr = stored.info.fingerprint
        found = [c.data for c in sequoia.read_certs(self.secret_key(stored)) if c.fingerprint == fpr]
        if not found:
            raise KeyNotFound(f"{self.describe()} has no readable key {fpr}")
        return found[0]


def _infos(path: Path) -> list[sequoia.CertInfo]:
    """The keys in one file of the home; [] for a file that is not an OpenPGP key.

    Why skip rather than fail: the store is shared with sq and other tools (draft-nwjw-openpgp-cert-d), so a
    file atomicsig cannot read must not stop ``sign`` or ``keys list`` from finding the keys it can.
    """
    try:
        return sequoia.read_certs(_read(path))
    except InputError:  # unreadable or too large; read_certs itself gives [] for a file that is no key
        return []


def _read(path: Path) -> bytes:
    """A key file of the home, bounded (a stray huge file must not be read into memory)."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > _MAX_KEY_FILE:
        raise InputError(f"{path} is larger than {_MAX_KEY_FILE} bytes; not a key")
    return data


def truncated_hint(fpr: str, fingerprints: Iterable[str]) -> str:
    """``; X is the first 40 hex digits of the OpenPGP v6 key Y`` when a v4-length fingerprint that names no key
    is the start of a v6 one (64 hex digits, RFC 9580 §5.5.4): a copy cut at the length v4 users are used to."""
    if len(fpr) != 40:
        return ""
    whole = [f for f in fingerprints if len(f) == 64 and f.startswith(fpr)]
    return f"; {fpr} is the first 40 hex digits of the OpenPGP v6 key {whole[0]} (64 hex digits)" if whole else ""


def _remove(path: Path) -> None:
    """Unlink ``path`` and make the removal durable (the directory's entry is gone after a crash too)."""
    os.unlink(path)
    fsync_dir(path.parent)


def _email(uid: str) -> str:
    m = re.search(r"<([^<>]*)>\s*$", uid)
    return (m.group(1) if m else uid).lower()
