"""Batch key management: a YAML list of signers turned into GnuPG keys, idempotently.

Schema (also in README "Signers file")::

    keys:                               # or a bare list at top level
      - name: Release Signing           # required
        email: security@example.com     # required, the identity used to find the key again
        comment: production             # optional
        algorithm: ed25519              # rsa2048 | rsa3072 | rsa4096 | ed25519 (default ed25519); with
                                        # profile rfc9580 also ed448, mldsa65-ed25519, mldsa87-ed448, nistp256…
        profile: rfc4880                # rfc4880 (OpenPGP v4, default) | rfc9580 (OpenPGP v6)
        keystore: gnupg                 # gnupg (default for rfc4880) | sequoia (default for rfc9580)
        expire: 2y                      # 0 (never), 365 (days), 52w, 6m (months), 2y, 36h, 2027-01-01 (default 2y)
        passphrase-file: /run/secrets/p # or passphrase-env: VAR; neither = no passphrase

Re-running with the same file reports existing identities instead of creating duplicates.

A ``rfc9580`` (v6) key, and every post-quantum key, lives in a Sequoia home (``--sequoia-home``), where skopeo's
and podman's Sequoia signer find it: GnuPG 2.2 cannot hold v6 keys (``keystore: gnupg`` with ``rfc9580`` is an
input error saying so).

``rotate`` uses the same file: each signer gets a new key, and its previous key stays valid for an overlap
period (then expires) so that nodes can trust both while signatures are re-made; see :func:`rotate`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomicsig.errors import InputError, KeyNotFound
from atomicsig.format import durations, validate, yamlstrict
from atomicsig.gnupg.keyring import KEY_ALGORITHMS, KeyInfo, Keyring, TrustedKeys
from atomicsig.gnupg.passphrase import PassphraseSource, read_cached
from atomicsig.gnupg.trusted import NativeTrustedKeys, trusted_keys
from atomicsig.keystore.sequoia_home import SequoiaHome, truncated_hint
from atomicsig.openpgp import sequoia, sqgen
from atomicsig.ops.verify import AllOf, RequiredSigner
from atomicsig.signers.base import Signer
from atomicsig.signers.factory import close_signer, make_signer

__all__ = [
    "GenerateResult",
    "KeySpec",
    "RotateResult",
    "check_key_name",
    "check_uid_field",
    "current_key",
    "deletion_targets",
    "export_keys",
    "export_rotated",
    "generate",
    "import_keys",
    "key_file",
    "load_specs",
    "load_specs_file",
    "open_signers",
    "retire",
    "retire_key",
    "retire_sequoia",
    "retired_key_fingerprints",
    "rotate",
    "secret_key_fingerprints",
    "sequoia_deletion_targets",
    "sequoia_keys",
    "trusted_key_blobs",
    "trusted_verifier",
]

_EMAIL = re.compile(r"^[^@\s<>()]+@[^@\s<>()]+$")

#: Lengths that keep gpg's parameter lines (1024 bytes) and the user ID far from any limit.
MAX_NAME, MAX_COMMENT, MAX_EMAIL = 128, 128, 254
_FIELDS = {"name", "email", "comment", "algorithm", "expire", "passphrase-file", "passphrase-env", "profile",
           "keystore"}
KEYSTORES = ("gnupg", "sequoia")


@dataclass(frozen=True)
class KeySpec:
    name: str
    email: str
    comment: str | None
    algorithm: str
    expire: str
    passphrase: PassphraseSource
    line: int
    profile: str = "rfc4880"
    keystore: str = "gnupg"


def check_uid_field(field: str, value: str, where: str) -> str:
    """One user-ID field (name, comment, e-mail) that gpg stores exactly as given, or InputError saying why.

    Why each rule (issue 12 #12/#13, measured with gpg 2.2): gpg's batch parser trims leading and trailing
    whitespace, so the stored user ID would differ from the file; a ``<`` or ``>`` in the name or comment
    breaks finding the key again by e-mail (the ``<e-mail>`` part is what idempotent ``keys generate`` and
    ``sign --key EMAIL`` look for), so every run would create another key; parentheses in the name, or in the
    comment, make ``Name (comment) <e-mail>`` ambiguous to read back; control and bidirectional-override
    characters end up in listings and terminals; over-long values hit gpg's 1024-byte parameter lines.
    """
    limit = {"name": MAX_NAME, "comment": MAX_COMMENT, "email": MAX_EMAIL}[field]
    if value != value.strip():
        raise InputError(f"{where}: {field} {value!r} begins or ends with whitespace, which gpg would drop")
    if len(value) > limit:
        raise InputError(f"{where}: {field} is {len(value)} characters long; at most {limit} are allowed")
    bad = validate.unsafe_char(value)  # the one definition of "unsafe character" (atomicsig/validate.py)
    if bad is not None:
        raise InputError(f"{where}: {field} contains the control or invisible character U+{ord(bad):04X}")
    if field != "email":
        odd = next((c for c in value if c in "<>()"), None)
        if odd is not None:
            raise InputError(f"{where}: {field} must not contain {odd!r}: gpg's user ID is "
                             "'name (comment) <e-mail>', and the key could not be found again by its e-mail")
    elif not _EMAIL.match(value):
        raise InputError(f"{where}: 'email' must be an e-mail address (no spaces, '<', '>', '(' or ')')")
    return value


def load_specs(text: str, source: str = "<input>") -> list[KeySpec]:
    """Parse and validate a signers file; errors name the file and line."""
    data, node = yamlstrict.load(text, source)  # duplicate keys refused with file:line
    items_node = node
    if isinstance(data, dict):
        if set(data) - {"keys"}:
            bad = sorted(str(k) for k in set(data) - {"keys"})[0]  # str: YAML keys may be numbers or null
            raise InputError(f"{source}: unknown top-level key {bad!r}{yamlstrict.did_you_mean(bad, ['keys'])}")
        data = data.get("keys")
        items_node = next((v for k, v in node.value if k.value == "keys"), None) if node is not None else None
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: expected a non-empty list of keys")
    specs: list[KeySpec] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        line = (items_node.value[i].start_mark.line + 1) if items_node is not None else 0
        where = f"{source}:{line}"
        if not isinstance(item, dict):
            raise InputError(f"{where}: each key must be a mapping")
        unknown = set(item) - _FIELDS
        if unknown:
            bad = sorted(str(k) for k in unknown)[0]
            raise InputError(f"{where}: unknown field {bad!r}{yamlstrict.did_you_mean(bad, sorted(_FIELDS))}")
        name, email = item.get("name"), item.get("email")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}: 'name' is required")
        check_uid_field("name", name, where)
        if not isinstance(email, str):
            raise InputError(f"{where}: 'email' must be an e-mail address")
        check_uid_field("email", email, where)
        if email.lower() in seen:
            raise InputError(f"{where}: {email} appears twice")
        seen.add(email.lower())
        profile, keystore = _profile_and_keystore(item, where)
        algorithm = str(item.get("algorithm", "ed25519"))
        if algorithm in sqgen.PQ_ALGORITHMS and profile != "rfc9580":
            raise InputError(f"{where}: algorithm {algorithm} exists for OpenPGP v6 keys only: add 'profile: rfc9580'")
        known = KEY_ALGORITHMS if keystore == "gnupg" else sqgen.ALGORITHMS
        if algorithm not in known:
            extra = (f" (with keystore sequoia also {', '.join(a for a in sqgen.ALGORITHMS if a not in known)})"
                     if keystore == "gnupg" else "")
            raise InputError(f"{where}: algorithm {algorithm!r} is not one of {', '.join(known)}{extra}")
        expire = durations.gpg_expire(str(item.get("expire", "2y")), f"{where}: expire")
        if item.get("passphrase-file") and item.get("passphrase-env"):
            raise InputError(f"{where}: give passphrase-file or passphrase-env, not both")
        comment = item.get("comment")
        if comment is not None:
            if not isinstance(comment, str | int | float) or isinstance(comment, bool):
                raise InputError(f"{where}: 'comment' must be text")
            comment = check_uid_field("comment", str(comment), where) or None
        for key in ("passphrase-file", "passphrase-env"):
            if item.get(key) is not None and (not isinstance(item[key], str) or not item[key]):
                raise InputError(f"{where}: {key!r} must be a non-empty string")
        specs.append(KeySpec(name, email, comment, algorithm, expire,
                             PassphraseSource(file=item.get("passphrase-file"), env=item.get("passphrase-env")),
                             line, profile, keystore))
    return specs


def _profile_and_keystore(item: dict[str, Any], where: str) -> tuple[str, str]:
    """``profile`` and ``keystore`` of one signer, defaulted and checked together.

    Why v6 is refused for GnuPG (issue 16 #3): GnuPG 2.2 (Debian 12, RHEL 9) reads and writes v4 keys only; a v6
    key "generated" there would silently be a v4 key. A v6 key is kept where containers/image's Sequoia signer
    reads it instead.
    """
    profile = item.get("profile", "rfc4880")
    if not isinstance(profile, str) or profile not in sqgen.PROFILES:
        raise InputError(f"{where}: profile {profile!r} is not one of {', '.join(sqgen.PROFILES)} "
                         "(rfc4880: OpenPGP v4 keys; rfc9580: OpenPGP v6 keys)")
    keystore = item.get("keystore", "sequoia" if profile == "rfc9580" else "gnupg")
    if not isinstance(keystore, str) or keystore not in KEYSTORES:
        raise InputError(f"{where}: keystore {keystore!r} is not one of {', '.join(KEYSTORES)}")
    if keystore == "gnupg" and profile == "rfc9580":
        raise InputError(f"{where}: GnuPG 2.2 cannot hold OpenPGP v6 (rfc9580) keys; use 'keystore: sequoia' "
                         "(the Sequoia home skopeo --sign-by-sq-fingerprint reads) or 'profile: rfc4880'")
    return profile, keystore


def validity_seconds(expire: str, now: float | None = None) -> int | None:
    """A checked ``expire`` (:func:`durations.gpg_expire`'s result) as seconds from now; None: never expires."""
    import datetime

    if expire == "0":
        return None
    if expire.startswith("seconds="):
        return int(expire.removeprefix("seconds="))
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", expire):
        when = datetime.datetime.fromisoformat(expire).replace(tzinfo=datetime.UTC).timestamp()
        left = int(when - (time.time() if now is None else now))
        if left <= 0:
            raise InputError(f"expire {expire} is in the past")
        return left
    return round(durations.parse_duration(expire, "expire", bare_unit="d", minimum=1))


@dataclass
class GenerateResult:
    spec: KeySpec
    status: str  # created | exists
    key: KeyInfo
    version: int = 4  # OpenPGP key version: 4, or 6 for rfc9580 keys

    def as_dict(self) -> dict[str, Any]:
        return {"email": self.spec.email, "status": self.status, **self.key.as_dict(), "version": self.version,
                "keystore": self.spec.keystore}


def sequoia_key_info(stored: Any, now: float | None = None) -> KeyInfo:
    """A key of a Sequoia home (:class:`atomicsig.keystore.sequoia_home.StoredKey`) in the vocabulary of gpg's
    listings, so ``keys generate``/``keys list`` print both kinds alike. The key ID of a v6 key is the first 64
    bits of its fingerprint, of a v4 key the last (RFC 9580 §5.5.4)."""
    info = stored.info
    now = time.time() if now is None else now
    # gpg's letters: "i" invalid (no valid binding signature under Sequoia's standard policy), "r", "e", "-".
    validity = ("i" if not info.valid else "r" if info.revoked
                else "e" if info.expires is not None and info.expires <= now else "-")
    keyid = info.fingerprint[:16] if info.version == 6 else info.fingerprint[-16:]
    return KeyInfo(info.fingerprint, keyid, tuple(info.uids), info.algorithm, info.created, info.expires, validity,
                   secret=stored.secret_path is not None,
                   subkeys=tuple(sorted(info.key_fingerprints - {info.fingerprint})))


def _user_id(spec: KeySpec) -> str:
    return f"{spec.name} ({spec.comment}) <{spec.email}>" if spec.comment else f"{spec.name} <{spec.email}>"


def generate(keyring: Keyring | None, specs: list[KeySpec], sequoia: SequoiaHome | None = None) -> list[GenerateResult]:
    """Create each key whose e-mail has no usable secret key yet; report the others as existing.

    ``keystore: gnupg`` signers go to ``keyring``, ``keystore: sequoia`` ones to the Sequoia home ``sequoia``
    (made by Sequoia, protected with the signer's passphrase, written where skopeo's Sequoia signer reads them).
    Every passphrase is read, and every store opened, before the first key is made.
    """
    out = []
    passphrases = [read_cached(s.passphrase) for s in specs]
    _check_stores(specs, keyring, sequoia)
    validity = [validity_seconds(s.expire) if s.keystore == "sequoia" else None for s in specs]
    for spec, pw, seconds in zip(specs, passphrases, validity, strict=True):
        if spec.keystore == "sequoia":
            assert sequoia is not None
            out.append(_generate_sequoia(sequoia, spec, pw, seconds))
            continue
        assert keyring is not None
        try:
            existing = keyring.resolve(spec.email, secret=True)
        except KeyNotFound:
            existing = None
        if existing is not None:
            out.append(GenerateResult(spec, "exists", existing))
            continue
        key = keyring.generate(name=spec.name, email=spec.email, comment=spec.comment, algorithm=spec.algorithm,
                               expire=spec.expire, passphrase=pw)
        out.append(GenerateResult(spec, "created", key))
    return out


def _generate_sequoia(home: SequoiaHome, spec: KeySpec, passphrase: str | None,
                      seconds: int | None) -> GenerateResult:
    """One signer into the Sequoia home, unless a usable secret key with its e-mail is there already."""
    try:
        existing = home.resolve(spec.email, secret=True)
    except KeyNotFound:
        existing = None
    if existing is not None and existing.info.version == sqgen.PROFILES[spec.profile]:
        return GenerateResult(spec, "exists", sequoia_key_info(existing), existing.info.version)
    key = sqgen.generate(_user_id(spec), profile=spec.profile, algorithm=spec.algorithm, validity_seconds=seconds)
    if passphrase is not None:
        key = sqgen.GeneratedKey(key.fingerprint, key.version, sqgen.protect(key.secret, passphrase), key.public)
    home.store(key)
    stored = home.resolve(key.fingerprint, secret=True)
    return GenerateResult(spec, "created", sequoia_key_info(stored), key.version)


@dataclass
class RotateResult:
    spec: KeySpec
    status: str  # rotated | created | recent (current key younger than min_age) | planned (dry run)
    new: KeyInfo | None
    old: KeyInfo | None
    old_expires: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"email": self.spec.email, "status": self.status,
                "new": self.new.fingerprint if self.new else None, "old": self.old.fingerprint if self.old else None,
                "old_expires": self.old_expires}


def current_key(keyring: Keyring, email: str) -> KeyInfo | None:
    """The newest usable (not expired, not revoked) secret key whose user ID has ``email``."""
    usable = [k for k in keyring.list_keys(secret=True)
              if not (k.revoked or k.expired) and any(_uid_email(u) == email.lower() for u in k.uids)]
    return max(usable, key=lambda k: k.created) if usable else None


def _uid_email(uid: str) -> str:
    """The e-mail of a user ID: the *last* ``<…>``, as gpg writes it at the end (a name may contain ``<``)."""
    m = re.search(r"<([^<>]*)>\s*$", uid)
    return (m.group(1) if m else uid).lower()


def rotate(keyring: Keyring | None, specs: list[KeySpec], *, overlap: str, min_age_seconds: int,
           dry_run: bool = False, now: float | None = None, sequoia: SequoiaHome | None = None) -> list[RotateResult]:
    """Give every signer a new key; the old one expires after ``overlap`` instead of at once.

    Why an overlap: nodes verify at pull time, so images signed with the old key must keep passing until they are
    re-signed and the new public key is on every node (export both keys into the policy's key file: "any of these
    keys"). Keys younger than ``min_age_seconds`` are left alone, so re-running a rotation is harmless. The old
    key's passphrase is the spec's (a rotation keeps the secret source). Passphrases are read before any change.

    ``keystore: sequoia`` signers rotate in the Sequoia home ``sequoia`` the same way (:func:`_rotate_sequoia`).
    """
    now = time.time() if now is None else now
    passphrases = [read_cached(s.passphrase) for s in specs]
    _check_stores(specs, keyring, sequoia)
    out: list[RotateResult] = []
    for spec, pw in zip(specs, passphrases, strict=True):
        if spec.keystore == "sequoia":
            assert sequoia is not None
            out.append(_rotate_sequoia(sequoia, spec, pw, overlap=overlap, min_age_seconds=min_age_seconds,
                                       dry_run=dry_run, now=now))
            continue
        assert keyring is not None
        old = current_key(keyring, spec.email)
        if old is not None and old.created > now - min_age_seconds:
            out.append(RotateResult(spec, "recent", old, None))
            continue
        if dry_run:
            out.append(RotateResult(spec, "planned", None, old))
            continue
        new = keyring.generate(name=spec.name, email=spec.email, comment=spec.comment, algorithm=spec.algorithm,
                               expire=spec.expire, passphrase=pw)
        if old is None:
            out.append(RotateResult(spec, "created", new, None))
            continue
        keyring.set_expiry(old.fingerprint, overlap, passphrase=pw)
        refreshed = next((k for k in keyring.list_keys(secret=True) if k.fingerprint == old.fingerprint), old)
        out.append(RotateResult(spec, "rotated", new, refreshed, refreshed.expires))
    return out


def _check_stores(specs: list[KeySpec], keyring: Keyring | None, sequoia: SequoiaHome | None) -> None:
    if any(s.keystore == "gnupg" for s in specs) and keyring is None:
        raise InputError("the signers file has GnuPG keys but no GnuPG home was given")
    if any(s.keystore == "sequoia" for s in specs) and sequoia is None:
        raise InputError("the signers file has Sequoia keys (keystore: sequoia) but no Sequoia home was given")


def _current_sequoia(home: SequoiaHome, spec: KeySpec) -> Any:
    """The signer's current key in the Sequoia home (newest usable secret key with its e-mail), or None."""
    try:
        return home.resolve(spec.email, secret=True)
    except KeyNotFound:
        return None


def _rotate_sequoia(home: SequoiaHome, spec: KeySpec, passphrase: str | None, *, overlap: str,
                    min_age_seconds: int, dry_run: bool, now: float) -> RotateResult:
    """:func:`rotate` for one signer of a Sequoia home: a new key made as ``keys generate`` makes it, and the old
    one given new self-signatures (Sequoia's ``set_expiration``) that make it expire after ``overlap``.

    The old key's expiry is computed before the new key is stored, so a wrong passphrase changes nothing.
    """
    old = _current_sequoia(home, spec)
    if old is not None and old.info.created > now - min_age_seconds:
        return RotateResult(spec, "recent", sequoia_key_info(old), None)
    if dry_run:
        return RotateResult(spec, "planned", None, sequoia_key_info(old) if old is not None else None)
    expiring = None
    if old is not None:
        expiring = sqgen.set_expiry(home.secret_key(old), home.public_key(old),
                                    validity_seconds(overlap) or 0, passphrase)
    key = sqgen.generate(_user_id(spec), profile=spec.profile, algorithm=spec.algorithm,
                         validity_seconds=validity_seconds(spec.expire))
    if passphrase is not None:
        key = sqgen.GeneratedKey(key.fingerprint, key.version, sqgen.protect(key.secret, passphrase), key.public)
    home.store(key)
    new = sequoia_key_info(home.resolve(key.fingerprint, secret=True))
    if old is None or expiring is None:
        return RotateResult(spec, "created", new, None)
    home.update(old, expiring)
    refreshed = sequoia_key_info(home.resolve(old.info.fingerprint, secret=True))
    return RotateResult(spec, "rotated", new, refreshed, refreshed.expires)


# ---- --key values: one meaning for FPR|EMAIL|FILE on every command ---------------------------------------------

_KEY_FILE_SUFFIXES = (".gpg", ".asc", ".pub")


def _is_fingerprint(spec: str) -> bool:
    return bool(re.fullmatch(r"(0[xX])?([0-9A-Fa-f]{64}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{16})", spec))


def key_file(spec: str) -> Path | None:
    """``spec`` as a key file, None if it names a key in the keyring; a path-looking spec must exist.

    The one reading of ``--key FPR|EMAIL|FILE`` for sign, verify and prune (issue 11, issue 13 #4): an existing
    file is a key file; something that looks like a path (a ``/`` or a key-file suffix) but is missing is an
    input error rather than a keyring search that would report a confusing "no key".
    """
    p = Path(spec)
    if p.is_file():
        return p
    if "/" in spec or spec.endswith(_KEY_FILE_SUFFIXES):
        raise InputError(f"key file {spec} does not exist")
    return None


def trusted_key_blobs(keys: Sequence[str], gnupghome: str | None) -> list[bytes]:
    """Public keyrings from --key values: files as they are, fingerprints/e-mails exported from the keyring.

    Shared by ``verify`` and ``prune`` so that ``--key`` means the same everywhere (issue 11).
    """
    blobs: list[bytes] = []
    names: list[str] = []
    for k in keys:
        p = key_file(k)
        if p is not None:
            blobs.append(p.read_bytes())
            continue
        check_key_name(k, "--key")
        if validate.V6_FINGERPRINT.fullmatch(k):
            raise InputError(f"--key {k}: a 64-hex OpenPGP v6 fingerprint cannot name a key in a GnuPG keyring "
                             "(GnuPG cannot hold v6 keys); give the v6 certificate file")
        else:
            names.append(k)
    if names:
        kr = Keyring(gnupghome)
        fprs = [kr.resolve(n, secret=False).fingerprint for n in names]
        blobs.append(kr.export_public(fprs, armor=False))
    return blobs


def retired_key_fingerprints(keys: Sequence[str], gnupghome: str | None) -> set[str]:
    """Fingerprints whose signatures ``prune`` removes, from --key FPR|EMAIL|FILE.

    A fingerprint or key ID is taken as given (the key may be gone from every keyring). An e-mail or a file stands
    for its key's primary and subkey fingerprints, and must name exactly one key, expired or revoked ones
    included: after ``keys rotate`` an e-mail (or the exported ``<email>.gpg``) names the new key as well, and
    pruning both would delete the signatures that are still meant to verify.
    """
    from atomicsig.gnupg.keyring import temporary_home

    out: set[str] = set()
    for k in keys:
        if key_file(k) is None:
            check_key_name(k, "--key")
        if _is_fingerprint(k):
            out.add(k.upper().removeprefix("0X"))
            continue
        p = key_file(k)
        if p is not None:
            with temporary_home() as tmp:
                tmp.import_keys(p.read_bytes())
                found = tmp.list_keys()
            where = str(p)
        else:
            email = k.strip("<>").lower()
            found = [x for x in Keyring(gnupghome).list_keys() if any(_uid_email(u) == email or u == k
                                                                      for u in x.uids)]
            where = "the keyring"
        if not found:
            raise KeyNotFound(f"--key {k}: no key found in {where}")
        if len(found) > 1:
            fprs = ", ".join(x.fingerprint for x in found)
            raise InputError(f"--key {k} names {len(found)} keys ({fprs}); give the retired key's fingerprint")
        out |= {found[0].fingerprint.upper(), *(s.upper() for s in found[0].subkeys)}
    return out


def _secret_key(stack: contextlib.ExitStack[Any], spec: str, gnupghome: str | None,
                passphrase: str | None) -> tuple[Keyring, str]:
    """The keyring holding ``spec``'s secret key and its primary fingerprint.

    A key FILE is imported into a throwaway GnuPG home that ``stack`` removes again (the user's keyring is never
    changed by ``sign --key FILE``); FPR|EMAIL must name a secret key in ``gnupghome``.
    """
    from atomicsig.gnupg.keyring import temporary_home

    p = key_file(spec)
    if p is None:
        keyring = Keyring(gnupghome)
        return keyring, keyring.resolve(spec, secret=True).fingerprint
    tmp = stack.enter_context(temporary_home())
    fprs = tmp.import_keys(p.read_bytes(), passphrase)
    secret = [x for x in tmp.list_keys(secret=True) if x.fingerprint in fprs]
    if not secret:
        raise InputError(f"{spec} holds no secret key")
    return tmp, secret[0].fingerprint


def _sequoia_key(spec: str, gnupghome: str | None, sequoia_home: str | None) -> tuple[Any, bytes] | None:
    """(StoredKey, secret key bytes) when ``--key spec`` names a key of a Sequoia home or a v6 key file; else None
    (then the GnuPG path decides, with its own errors).

    Which store answers (issue 16 #3): a 64-hex (v6) fingerprint and a key file holding a v6 key can only be
    Sequoia's, since GnuPG 2.2 cannot hold them. With ``--sequoia-home`` given, that home is asked first; without
    it, a fingerprint or e-mail GnuPG does not know is looked up in the default Sequoia home (if there is one).
    """
    from atomicsig.keystore.sequoia_home import StoredKey

    p = key_file(spec)
    if p is not None:
        data = p.read_bytes()
        certs = sequoia.read_certs(data)
        if not any(c.version == 6 for c in certs):
            return None
        infos = [i for i in certs if i.secret]
        if not infos:
            raise InputError(f"{spec} holds no secret key")
        return StoredKey(infos[0], p), data
    home = SequoiaHome(sequoia_home)
    stored = _sequoia_lookup(home, spec, gnupghome, sequoia_home, secret=True)
    return None if stored is None else (stored, home.secret_key(stored))


def secret_key_fingerprints(keys: Sequence[str], gnupghome: str | None,
                            sequoia_home: str | None = None) -> list[frozenset[str]]:
    """Per ``--key``, the primary and subkey fingerprints of its secret key, without unlocking it.

    What ``sign --dry-run`` compares stored signatures with: a signature by a signing subkey names the subkey.
    """
    out: list[frozenset[str]] = []
    for k in keys:
        sq = _sequoia_key(k, gnupghome, sequoia_home)
        if sq is not None:
            out.append(frozenset(sq[0].info.key_fingerprints))
            continue
        with contextlib.ExitStack() as stack:
            home, fpr = _secret_key(stack, k, gnupghome, None)
            info = home.resolve(fpr, secret=False)
        out.append(frozenset({info.fingerprint.upper(), *(s.upper() for s in info.subkeys)}))
    return out


@contextlib.contextmanager
def open_signers(keys: Sequence[str], gnupghome: str | None, passphrase: str | None, mode: str = "auto", *,
                 agent_cache: bool = False, sequoia_home: str | None = None) -> Iterator[list[Signer]]:
    """One :class:`Signer` per ``--key FPR|EMAIL|FILE``, released (and throwaway homes removed) on exit.

    ``mode`` is ``--signer`` (:func:`atomicsig.signers.factory.make_signer`); ``agent_cache`` is
    ``--use-agent-cache``: allow a protected key without a given passphrase to sign with the one gpg-agent has
    cached (issue 11 #7). A failing ``--key`` releases what was opened before it.

    A key of a Sequoia home (``sequoia_home``, see :func:`_sequoia_key`) signs through Sequoia
    (:mod:`atomicsig.signers.sequoia`); ``--signer`` other than ``auto`` names a GnuPG signer and is refused for it.
    """
    from atomicsig.signers.factory import make_sequoia_signer

    with contextlib.ExitStack() as stack:
        signers: list[Signer] = []
        for k in keys:
            sq = _sequoia_key(k, gnupghome, sequoia_home)
            if sq is not None:
                signers.append(make_sequoia_signer(sq[0], sq[1], passphrase, mode))  # unlocks now
                continue
            home, fpr = _secret_key(stack, k, gnupghome, passphrase)
            signer = make_signer(home, fpr, passphrase, mode, agent_cache=agent_cache)
            stack.callback(close_signer, signer)
            signers.append(signer)
        yield signers


@contextlib.contextmanager
def trusted_verifier(keys: Sequence[str], gnupghome: str | None) -> Iterator[NativeTrustedKeys | TrustedKeys]:
    """A verifier trusting the public keys ``--key FPR|EMAIL|FILE`` names (``verify``); at least one is required,
    since a verifier trusting nothing would report every image "rejected" instead of the mistake."""
    with trusted_keys(trusted_key_blobs(keys, gnupghome), backends=True) as trusted:
        if not trusted.fingerprints:
            raise InputError("no public keys found in the given --key values")
        yield trusted


@contextlib.contextmanager
def required_signers(keys: Sequence[str], gnupghome: str | None) -> Iterator[AllOf]:
    """``verify --require-all``: every ``--key`` is one required signer with a verifier of its own, as a policy with
    one ``signedBy`` per key set (issue 14 #5). Two ``--key`` values trusting the same key are refused (exit 2):
    one signature by it would count for both signers, and "a AND b" would quietly mean "either"."""
    owner: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        signers = []
        for k in keys:
            verifier = stack.enter_context(trusted_verifier([k], gnupghome))
            for fpr in sorted(verifier.fingerprints):
                if fpr in owner:
                    raise InputError(f"--key {owner[fpr]!r} and --key {k!r} both trust key {fpr}: with --require-all "
                                     "one signature by it would count for both signers; give each signer its own key")
                owner[fpr] = k
            signers.append(RequiredSigner(k, verifier))
        yield AllOf(tuple(signers))


# ---- the rest of `keys`: signers files, rotation export, deletion and retirement -------------------------------


def load_specs_file(path: str) -> list[KeySpec]:
    """:func:`load_specs` of the signers file at ``path`` (``-``: standard input); errors name the file."""
    import sys

    if path == "-":
        return load_specs(sys.stdin.read(), "<stdin>")
    return load_specs(yamlstrict.read_file(path), path)


def export_rotated(keyring: Keyring | None, results: list[RotateResult], export_dir: str | Path,
                   sequoia: SequoiaHome | None = None) -> list[Path]:
    """Write ``<email>.gpg`` per signer holding its new *and* old public key: what nodes must trust during the
    overlap (``keys rotate --export-dir``, then ``policy apply``). A Sequoia-home signer's file holds its
    certificates as ``pgp.cert.d`` has them (v6 ones are read by Sequoia on the node side, docs/policy.md)."""
    from atomicsig.fsutil import atomic_write, makedirs

    makedirs(export_dir)
    written = []
    for r in results:
        fprs = [k.fingerprint for k in (r.new, r.old) if k is not None]
        path = Path(export_dir) / f"{r.spec.email}.gpg"
        if r.spec.keystore == "sequoia":
            assert sequoia is not None
            data = b"".join(sqgen.dearmor(sequoia.public_key(sequoia.resolve(f))) for f in fprs)
        else:
            assert keyring is not None
            data = keyring.export_public(fprs, armor=False)
        atomic_write(path, data, 0o644)
        written.append(path)
    return written


def sequoia_keys(sequoia_home: str | None, *, secret: bool = False) -> list[tuple[KeyInfo, int]]:
    """``keys list`` of a Sequoia home: each key as gpg's listing would show it, with its OpenPGP version."""
    home = SequoiaHome(sequoia_home)
    return [(sequoia_key_info(k), k.info.version) for k in home.list_keys(secret=secret)]


def export_keys(keys: Sequence[str], gnupghome: str | None, sequoia_home: str | None, *, secret: bool,
                armor: bool, passphrase: str | None) -> tuple[bytes, int]:
    """``keys export``: the public (or secret) keys ``keys`` name, from GnuPG or the Sequoia home; (data, count).

    A key of the Sequoia home is exported as stored: its secret part stays protected by the passphrase it was
    generated with (``--secret`` then needs no passphrase). Which store answers is the rule of ``sign --key``
    (:func:`_sequoia_key`): v6 fingerprints and ``--sequoia-home`` ask the Sequoia home first.
    """
    gpg_fprs: list[str] = []
    parts: list[bytes] = []
    home = SequoiaHome(sequoia_home)
    for k in keys:
        stored = _sequoia_lookup(home, k, gnupghome, sequoia_home, secret=secret)
        if stored is None:
            gpg_fprs.append(Keyring(gnupghome).resolve(k, secret=secret).fingerprint)
            continue
        data = home.secret_key(stored) if secret else home.public_key(stored)
        data = sqgen.dearmor(data)
        parts.append(sqgen.armor(data, secret=secret) if armor else data)
    if gpg_fprs:
        kr = Keyring(gnupghome)
        parts.insert(0, kr.export_secret(gpg_fprs, armor=armor, passphrase=passphrase) if secret
                     else kr.export_public(gpg_fprs, armor=armor))
    return b"".join(parts), len(gpg_fprs) + len(parts) - (1 if gpg_fprs else 0)


def _sequoia_lookup(home: SequoiaHome, spec: str, gnupghome: str | None, sequoia_home: str | None, *,
                    secret: bool) -> Any:
    """The StoredKey ``spec`` names in ``home``, or None when GnuPG should answer (see :func:`_sequoia_key`)."""
    check_key_name(spec, "key")
    v6_fpr = bool(re.fullmatch(r"(0[xX])?[0-9A-Fa-f]{64}", spec))
    gpg_miss: KeyNotFound | None = None
    if sequoia_home is None and not v6_fpr:
        try:
            Keyring(gnupghome).resolve(spec, secret=secret)
            return None
        except KeyNotFound as exc:
            if not (home.softkeys.is_dir() or home.certd.is_dir()):
                raise
            gpg_miss = exc
    try:
        return home.resolve(spec, secret=secret)
    except KeyNotFound as exc:
        if gpg_miss is not None:  # asked both stores: say so
            raise KeyNotFound(f"{gpg_miss.message}; nor in {home.describe()}") from None
        if v6_fpr or sequoia_home is None or truncated_hint(spec.upper().removeprefix("0X"),
                                                           (k.info.fingerprint for k in home.list_keys())):
            raise exc from None  # a cut-off v6 fingerprint: the home's error names the whole one
        try:  # GnuPG answers; if it does not know the key either, both stores say why
            Keyring(gnupghome).resolve(spec, secret=secret)
        except KeyNotFound as gpg_exc:
            raise KeyNotFound(f"{gpg_exc.message}; {exc.message}") from None
        return None


def deletion_targets(keyring: Keyring, keys: Sequence[str]) -> list[KeyInfo]:
    """The keys ``keys delete`` removes: full 40-hex fingerprints only (an e-mail is too easy to get wrong), each
    present in the keyring, expired and revoked keys included (a retired key is what one usually deletes;
    ``resolve`` skips unusable keys). Every check runs before anything is deleted or confirmed."""
    for k in keys:
        check_key_name(k, "keys delete")
        if re.fullmatch(r"(0[xX])?[0-9A-Fa-f]{64}", k):
            raise InputError(f"{k} is an OpenPGP v6 fingerprint: GnuPG homes cannot hold v6 keys; delete it from its "
                             "Sequoia home with --sequoia-home DIR")
        if not re.fullmatch(r"(0x)?[0-9A-Fa-f]{40}", k):
            raise InputError(f"delete needs a full 40-hex fingerprint, not {k!r}")
    listed = {k.fingerprint.upper(): k for k in keyring.list_keys()}
    targets = []
    for k in keys:
        fpr = k.upper().removeprefix("0X")
        if fpr not in listed:
            raise KeyNotFound(f"no key {fpr} in {keyring.describe()}")
        targets.append(listed[fpr])
    return targets


def retire(keyring: Keyring, key: str, *, revoke: bool, passphrase: str | None,
           certificate: str | None = None) -> dict[str, Any]:
    """Stop ``key`` (FPR|EMAIL of a secret key) from being used: revoke it (the certificate written to
    ``certificate`` if given), or make it expire in one day. containers/image rejects signatures by expired or
    revoked keys once nodes have the re-exported public key."""
    from atomicsig.fsutil import atomic_write

    info = keyring.resolve(key, secret=True)
    if revoke:
        cert = keyring.revoke(info.fingerprint, passphrase=passphrase)
        if certificate:
            atomic_write(certificate, cert, 0o644)
        return {"fingerprint": info.fingerprint, "action": "revoked", "expires": None,
                "revocation_certificate": certificate}
    keyring.set_expiry(info.fingerprint, "1d", passphrase=passphrase)
    expires = keyring.resolve(info.fingerprint, secret=False).expires
    return {"fingerprint": info.fingerprint, "action": "expires", "expires": expires, "revocation_certificate": None}


def retire_key(key: str, gnupghome: str | None, sequoia_home: str | None, *, revoke: bool, passphrase: str | None,
               certificate: str | None = None) -> dict[str, Any]:
    """``keys retire KEY``: a key of the Sequoia home (v6 fingerprints, or any key with ``--sequoia-home``: the
    rule of ``sign --key``, :func:`_sequoia_lookup`) through :func:`retire_sequoia`, else GnuPG's :func:`retire`."""
    check_key_name(key, "keys retire")
    home = SequoiaHome(sequoia_home)
    stored = _sequoia_lookup(home, key, gnupghome, sequoia_home, secret=True)
    if stored is None:
        return retire(Keyring(gnupghome), key, revoke=revoke, passphrase=passphrase, certificate=certificate)
    return retire_sequoia(home, stored, revoke=revoke, passphrase=passphrase, certificate=certificate)


def retire_sequoia(home: SequoiaHome, stored: Any, *, revoke: bool, passphrase: str | None,
                   certificate: str | None = None) -> dict[str, Any]:
    """:func:`retire` for a key of a Sequoia home, with the same two outcomes, made by Sequoia:

    * ``revoke``: a key revocation signature by the primary key, merged into the certificate in ``pgp.cert.d``
      and into the secret key; ``certificate`` receives the revoked certificate, armored (what a node imports:
      a bare revocation signature cannot be filed in a cert store without its key). Sequoia then refuses every
      signature of the key, those made before the revocation included.
    * otherwise new self-signatures that make the key expire in one day. Unlike GPGME, Sequoia judges a key at
      the time a signature was made: signatures made before the expiry keep verifying on Sequoia-backend nodes
      (tests/test_v6verify.py), only newer ones are refused. ``--revoke`` is what stops the old ones too.

    Nodes learn of either only from the re-exported certificate (``keys export``, then ``policy apply``).
    """
    from atomicsig.fsutil import atomic_write

    fpr = stored.info.fingerprint
    secret, public = home.secret_key(stored), sqgen.dearmor(home.public_key(stored))
    if revoke:
        revoked = sqgen.revoke(secret, public, passphrase)
        home.update(stored, revoked)
        if certificate:
            atomic_write(certificate, sqgen.armor(revoked, secret=False), 0o644)
        return {"fingerprint": fpr, "action": "revoked", "expires": None, "revocation_certificate": certificate}
    home.update(stored, sqgen.set_expiry(secret, public, 86400, passphrase))
    expires = home.resolve(fpr).info.expires
    return {"fingerprint": fpr, "action": "expires", "expires": expires, "revocation_certificate": None}


def sequoia_deletion_targets(home: SequoiaHome, keys: Sequence[str]) -> list[Any]:
    """The keys ``keys delete --sequoia-home`` removes: full fingerprints only (40 hex for v4, 64 for v6), each in
    the home, any state. Every check runs before anything is deleted."""
    for k in keys:
        check_key_name(k, "keys delete")
        if not re.fullmatch(r"(0[xX])?([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})", k):
            raise InputError(f"delete needs a full fingerprint (40 hex digits for v4, 64 for v6), not {k!r}")
    listed = {s.info.fingerprint: s for s in home.list_keys()}
    targets = []
    for k in keys:
        fpr = k.upper().removeprefix("0X")
        if fpr not in listed:
            raise KeyNotFound(f"no key {fpr} in {home.describe()}{truncated_hint(fpr, listed)}")
        targets.append(listed[fpr])
    return targets


#: Hex digits a key name may have: a key ID (16), a v4 fingerprint (40), a v6 fingerprint (64).
_KEY_HEX_LENGTHS = (16, 40, 64)


def check_key_name(spec: str, where: str) -> None:
    """Refuse a hex string that is no key ID or fingerprint (issue 16 "Bad input"): a v4 fingerprint has 40 hex
    digits, a v6 one 64 (RFC 9580 §5.5.4); anything else of 16 or more hex digits is a typo or a truncated copy,
    and searching keyrings for it would only say "no key". Names that are not all hex are left to the lookup."""
    digits = spec[2:] if spec[:2] in ("0x", "0X") else spec
    if len(digits) > 16 and re.fullmatch(r"[0-9A-Fa-f]+", digits) and len(digits) not in _KEY_HEX_LENGTHS:
        raise InputError(f"{where}: {spec} has {len(digits)} hex digits: an OpenPGP fingerprint has 40 (v4) or "
                         "64 (v6), a key ID 16")


def import_keys(inputs: Sequence[tuple[str, bytes]], gnupghome: str | None, sequoia_home: str | None, *,
                keystore: str = "auto", passphrase: str | None = None) -> list[dict[str, Any]]:
    """``keys import``: each key of each ``(name, data)`` into the GnuPG or the Sequoia home.

    Where a key goes (``keystore``): ``gnupg`` all into GnuPG; ``sequoia`` all into the Sequoia home; ``auto``
    v4 keys into GnuPG and v6 keys into the Sequoia home, which must then be named (``--sequoia-home`` or
    ``$SEQUOIA_HOME``: a v6 key never lands in a default home nobody asked for). GnuPG 2.2 cannot hold v6 keys:
    a v6 key bound for GnuPG is refused with the message ``keys generate`` gives. Every input is read and
    routed before the first key is written. An input holding only v4 keys reaches gpg unchanged (its verdict,
    as before); a Sequoia home merges (:meth:`SequoiaHome.import_key`), so importing twice changes nothing.
    """
    import os

    sequoia_named = bool(sequoia_home or os.environ.get("SEQUOIA_HOME"))
    plan: list[tuple[str, str, bytes | sqgen.KeyPart]] = []  # (input name, store, raw gpg data | one key)
    for name, data in inputs:
        try:
            parts = sqgen.split_keys(data)
        except InputError:
            if keystore == "sequoia":
                raise InputError(f"{name}: no OpenPGP key found in the input") from None
            plan.append((name, "gnupg", data))  # gpg's own verdict on what Sequoia cannot read
            continue
        for p in parts:
            if p.version != 6 or keystore == "sequoia":
                continue
            if keystore == "gnupg" or not sequoia_named:
                raise InputError(f"{name}: key {p.fingerprint} is an OpenPGP v6 key: GnuPG 2.2 cannot hold OpenPGP "
                                 "v6 (rfc9580) keys; import it into a Sequoia home with --sequoia-home DIR")
        if keystore == "sequoia":
            plan += [(name, "sequoia", p) for p in parts]
        elif all(p.version != 6 for p in parts):
            plan.append((name, "gnupg", data))
        else:
            v4 = b"".join(p.data for p in parts if p.version != 6)
            if v4:
                plan.append((name, "gnupg", v4))
            plan += [(name, "sequoia", p) for p in parts if p.version == 6]
    out: list[dict[str, Any]] = []
    home = SequoiaHome(sequoia_home) if any(store == "sequoia" for _, store, _ in plan) else None
    kr = Keyring(gnupghome) if any(store == "gnupg" for _, store, _ in plan) else None
    for name, _store, item in plan:
        if isinstance(item, sqgen.KeyPart):
            assert home is not None
            status = home.import_key(item)
            out.append({"fingerprint": item.fingerprint, "keystore": "sequoia", "status": status,
                        "version": item.version, "secret": item.secret})
            continue
        assert kr is not None
        try:
            fprs = kr.import_keys(item, passphrase)
        except InputError as exc:
            raise InputError(f"{name}: {exc.message}") from exc
        out += [{"fingerprint": f, "keystore": "gnupg", "status": "imported", "version": 4} for f in fprs]
    return out
