"""gpg's ``--with-colons`` key listings, parsed once into typed records (GnuPG ``doc/DETAILS``).

Every listing atomicsig reads — ``keys list`` and key lookup (:meth:`Keyring.list_keys`), the keygrips and
capabilities the agent and memory signers choose a (sub)key from (:meth:`Keyring.secret_key_parts`), and gpg's
verdict on trusted keys that the in-process verifier joins with key material (:mod:`atomicsig.gnupg.trusted`) —
goes through :func:`parse`, so a field means the same thing everywhere. Always listed with ``--fixed-list-mode``
(times as seconds since the epoch). Pure: no gpg here, only its output.

Fields used, 1-based as DETAILS numbers them::

    1 record type   pub/sub (public key, subkey), sec/ssb (the same with a secret part), fpr, grp, uid, rvk
    2 validity      "r" revoked, "e" expired, "i" invalid, "-"/"o"/"q"/"m"/"f"/"u" (not about revocation/expiry)
    3 key length    in bits
    4 algorithm     the OpenPGP public-key algorithm id (RFC 9580 §9.1, atomicsig.openpgp.constants.PubkeyAlgo)
    5 key ID        16 hex digits
    6 creation      seconds since the epoch
    7 expiration    seconds since the epoch, empty if none
   10 user ID       (uid) with ``:``, ``\\`` and control characters as ``\\xNN``; the fingerprint (fpr) or
                    keygrip (grp) on those records
   12 capabilities  lowercase: this key's own (e encrypt, s sign, c certify, a authenticate); uppercase (primary
                    only): the whole key's
   15 token         (sec/ssb) "+" secret present, "#" stub without secret, else a smartcard serial number
   17 curve name    for ECC keys, e.g. "ed25519", "nistp256"

An ``fpr`` or ``grp`` record belongs to the key record right before it; only the first of each counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

#: Record types that start a key (primary) or a subkey.
_PRIMARY = frozenset({"pub", "sec"})
_SUBKEY = frozenset({"sub", "ssb"})
_FIELDS = 17  # records are padded to this many fields so that every index above exists
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


@dataclass(frozen=True)
class KeyRecord:
    """One ``pub``/``sub``/``sec``/``ssb`` record, joined with the ``fpr`` and ``grp`` records after it."""

    kind: str  # "pub", "sub", "sec" or "ssb"
    validity: str  # field 2, "-" if empty
    length: int  # field 3
    algorithm: int  # field 4
    keyid: str  # field 5, uppercase
    created: int  # field 6
    expires: int | None  # field 7
    capabilities: str  # field 12 as listed (lower- and uppercase letters)
    token: str  # field 15
    curve: str  # field 17
    fingerprint: str = ""  # uppercase, from the fpr record
    keygrip: str = ""  # uppercase, from the grp record (only with --with-keygrip)

    @property
    def primary(self) -> bool:
        return self.kind in _PRIMARY

    @property
    def usage(self) -> str:
        """This key's own capabilities (the lowercase letters of field 12; "s" = can sign)."""
        return "".join(c for c in self.capabilities if c.islower())


@dataclass(frozen=True)
class ListedKey:
    """A primary key with its subkeys and user IDs, in listing order."""

    primary: KeyRecord
    subkeys: tuple[KeyRecord, ...] = ()
    uids: tuple[str, ...] = ()
    #: An ``rvk`` record: the key names a designated revoker (who may revoke it without its secret key).
    has_revoker: bool = False

    @property
    def records(self) -> tuple[KeyRecord, ...]:
        """The primary key, then every subkey."""
        return (self.primary, *self.subkeys)


@dataclass
class _Building:
    primary: KeyRecord
    subkeys: list[KeyRecord] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    has_revoker: bool = False

    def freeze(self) -> ListedKey:
        return ListedKey(self.primary, tuple(self.subkeys), tuple(self.uids), self.has_revoker)


def _record(f: list[str]) -> KeyRecord:
    return KeyRecord(kind=f[0], validity=f[1] or "-", length=int(f[2] or 0), algorithm=int(f[3] or 0),
                     keyid=f[4].upper(), created=int(f[5] or 0), expires=int(f[6]) if f[6] else None,
                     capabilities=f[11], token=f[14], curve=f[16])


def unescape(value: str) -> str:
    """Undo gpg's ``\\xNN`` escaping of a colon field (DETAILS: user IDs, "C-style escaped")."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value) if "\\" in value else value


def parse(listing: str) -> list[ListedKey]:
    """Every key in a ``--with-colons --fixed-list-mode`` listing, primary records first, in listing order.

    Records of other types (``tru``, ``sig``, ``uat``, …) are skipped, as are subkeys or ``fpr`` records
    that do not follow a key.
    """
    keys: list[_Building] = []
    last: KeyRecord | None = None  # the key record an fpr/grp record belongs to

    def update(rec: KeyRecord) -> None:
        cur = keys[-1]
        if rec.primary:
            cur.primary = rec
        else:
            cur.subkeys[-1] = rec

    for line in listing.splitlines():
        kind, _, _ = line.partition(":")
        if kind in _PRIMARY:
            last = _record(_pad(line))
            keys.append(_Building(last))
        elif kind in _SUBKEY:
            if not keys:
                last = None
                continue
            last = _record(_pad(line))
            keys[-1].subkeys.append(last)
        elif kind == "fpr" and last is not None and not last.fingerprint:
            last = replace(last, fingerprint=_pad(line)[9].upper())
            update(last)
        elif kind == "grp" and last is not None and not last.keygrip:
            last = replace(last, keygrip=_pad(line)[9].upper())
            update(last)
        elif kind == "uid" and keys:
            keys[-1].uids.append(unescape(_pad(line)[9]))
        elif kind == "rvk" and keys:
            keys[-1].has_revoker = True
    return [k.freeze() for k in keys]


def _pad(line: str) -> list[str]:
    f = line.split(":")
    return f + [""] * (_FIELDS - len(f)) if len(f) < _FIELDS else f


@dataclass(frozen=True)
class SecretKeyPart:
    """The primary key or one subkey of a secret key, as ``gpg --with-colons --with-keygrip`` lists it: what the
    agent and memory signers choose a signing (sub)key from and address gpg-agent with (it knows keygrips)."""

    fingerprint: str
    keygrip: str
    pubkey_algo: int
    curve: str
    created: int
    expires: int | None
    validity: str  # "r" revoked, "e" expired, "i" invalid, …
    usage: str  # this key's own capabilities, lowercase letters ("s" = can sign)
    token: str  # colon field 15: "+" secret here, "#" stub without secret, else a smartcard serial number
    primary: bool


def secret_key_parts(listing: str, fingerprint: str) -> list[SecretKeyPart]:
    """The parts of secret key ``fingerprint`` in ``--with-colons --with-keygrip --list-secret-keys`` output.

    Read from gpg's listing directly rather than through python-gnupg: how (and whether) python-gnupg exposes
    subkey keygrips and capabilities differs between its releases, and the agent signer must address exactly
    the right (sub)key. A (sub)key without an fpr record is left out.
    """
    want = fingerprint.upper()
    return [SecretKeyPart(fingerprint=r.fingerprint, keygrip=r.keygrip, pubkey_algo=r.algorithm, curve=r.curve,
                          created=r.created, expires=r.expires, validity=r.validity, usage=r.usage, token=r.token,
                          primary=r.primary)
            for key in parse(listing) if key.primary.fingerprint == want
            for r in key.records if r.fingerprint]
