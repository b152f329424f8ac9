"""Batch key management: a YAML list of signers turned into GnuPG keys, idempotently.

Schema (also in README "Signers file")::

    keys:                               # or a bare list at top level
      - name: Release Signing           # required
        email: security@example.com     # required, the identity used to find the key again
        comment: production             # optional
        algorithm: ed25519              # rsa2048 | rsa3072 | rsa4096 | ed25519 (default ed25519)
        expire: 2y                      # 0 (never), 365 (days), 52w, 6m (months), 2y, 36h, 2027-01-01 (default 2y)
        passphrase-file: /run/secrets/p # or passphrase-env: VAR; neither = no passphrase

Re-running with the same file reports existing identities instead of creating duplicates.

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
from atomicsig.ops.verify import AllOf, RequiredSigner
from atomicsig.signers.base import Signer
from atomicsig.signers.factory import close_signer, make_signer

__all__ = [
    "GenerateResult",
    "KeySpec",
    "RotateResult",
    "check_uid_field",
    "current_key",
    "deletion_targets",
    "export_rotated",
    "generate",
    "key_file",
    "load_specs",
    "load_specs_file",
    "open_signers",
    "retire",
    "retired_key_fingerprints",
    "rotate",
    "secret_key_fingerprints",
    "trusted_key_blobs",
    "trusted_verifier",
]

_EMAIL = re.compile(r"^[^@\s<>()]+@[^@\s<>()]+$")

#: Lengths that keep gpg's parameter lines (1024 bytes) and the user ID far from any limit.
MAX_NAME, MAX_COMMENT, MAX_EMAIL = 128, 128, 254
_FIELDS = {"name", "email", "comment", "algorithm", "expire", "passphrase-file", "passphrase-env"}


@dataclass(frozen=True)
class KeySpec:
    name: str
    email: str
    comment: str | None
    algorithm: str
    expire: str
    passphrase: PassphraseSource
    line: int


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
        algorithm = str(item.get("algorithm", "ed25519"))
        if algorithm not in KEY_ALGORITHMS:
            raise InputError(f"{where}: algorithm {algorithm!r} is not one of {', '.join(KEY_ALGORITHMS)}")
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
                             line))
    return specs


@dataclass
class GenerateResult:
    spec: KeySpec
    status: str  # created | exists
    key: KeyInfo

    def as_dict(self) -> dict[str, Any]:
        return {"email": self.spec.email, "status": self.status, **self.key.as_dict()}


def generate(keyring: Keyring, specs: list[KeySpec]) -> list[GenerateResult]:
    """Create each key whose e-mail has no usable secret key yet; report the others as existing."""
    out = []
    # Read all passphrases first so a missing one fails before any key is created.
    passphrases = [read_cached(s.passphrase) for s in specs]
    for spec, pw in zip(specs, passphrases, strict=True):
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


def rotate(keyring: Keyring, specs: list[KeySpec], *, overlap: str, min_age_seconds: int,
           dry_run: bool = False, now: float | None = None) -> list[RotateResult]:
    """Give every signer a new key; the old one expires after ``overlap`` instead of at once.

    Why an overlap: nodes verify at pull time, so images signed with the old key must keep passing until they are
    re-signed and the new public key is on every node (export both keys into the policy's key file: "any of these
    keys"). Keys younger than ``min_age_seconds`` are left alone, so re-running a rotation is harmless. The old
    key's passphrase is the spec's (a rotation keeps the secret source). Passphrases are read before any change.
    """
    now = time.time() if now is None else now
    passphrases = [read_cached(s.passphrase) for s in specs]
    out: list[RotateResult] = []
    for spec, pw in zip(specs, passphrases, strict=True):
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
        elif validate.V6_FINGERPRINT.fullmatch(k):
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


def secret_key_fingerprints(keys: Sequence[str], gnupghome: str | None) -> list[frozenset[str]]:
    """Per ``--key``, the primary and subkey fingerprints of its secret key, without unlocking it.

    What ``sign --dry-run`` compares stored signatures with: a signature by a signing subkey names the subkey.
    """
    out: list[frozenset[str]] = []
    for k in keys:
        with contextlib.ExitStack() as stack:
            home, fpr = _secret_key(stack, k, gnupghome, None)
            info = home.resolve(fpr, secret=False)
        out.append(frozenset({info.fingerprint.upper(), *(s.upper() for s in info.subkeys)}))
    return out


@contextlib.contextmanager
def open_signers(keys: Sequence[str], gnupghome: str | None, passphrase: str | None, mode: str = "auto", *,
                 agent_cache: bool = False) -> Iterator[list[Signer]]:
    """One :class:`Signer` per ``--key FPR|EMAIL|FILE``, released (and throwaway homes removed) on exit.

    ``mode`` is ``--signer`` (:func:`atomicsig.signers.factory.make_signer`); ``agent_cache`` is
    ``--use-agent-cache``: allow a protected key without a given passphrase to sign with the one gpg-agent has
    cached (issue 11 #7). A failing ``--key`` releases what was opened before it.
    """
    with contextlib.ExitStack() as stack:
        signers: list[Signer] = []
        for k in keys:
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


def export_rotated(keyring: Keyring, results: list[RotateResult], export_dir: str | Path) -> list[Path]:
    """Write ``<email>.gpg`` per signer holding its new *and* old public key: what nodes must trust during the
    overlap (``keys rotate --export-dir``, then ``policy apply``)."""
    from atomicsig.fsutil import atomic_write, makedirs

    makedirs(export_dir)
    written = []
    for r in results:
        fprs = [k.fingerprint for k in (r.new, r.old) if k is not None]
        path = Path(export_dir) / f"{r.spec.email}.gpg"
        atomic_write(path, keyring.export_public(fprs, armor=False), 0o644)
        written.append(path)
    return written


def deletion_targets(keyring: Keyring, keys: Sequence[str]) -> list[KeyInfo]:
    """The keys ``keys delete`` removes: full 40-hex fingerprints only (an e-mail is too easy to get wrong), each
    present in the keyring, expired and revoked keys included (a retired key is what one usually deletes;
    ``resolve`` skips unusable keys). Every check runs before anything is deleted or confirmed."""
    for k in keys:
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
