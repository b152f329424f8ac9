"""Batch key management: a YAML list of signers turned into GnuPG keys, idempotently.

Schema (also in README "Signers file")::

    keys:                               # or a bare list at top level
      - name: Release Signing           # required
        email: security@example.com     # required, the identity used to find the key again
        comment: production             # optional
        algorithm: ed25519              # rsa2048 | rsa3072 | rsa4096 | ed25519 (default ed25519)
        expire: 2y                      # gpg expiry: 0 (never), 365, 52w, 2y, 2027-01-01 (default 2y)
        passphrase-file: /run/secrets/p # or passphrase-env: VAR; neither = no passphrase

Re-running with the same file reports existing identities instead of creating duplicates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import InputError, KeyNotFound
from .gpg import KEY_ALGORITHMS, KeyInfo, Keyring
from .passphrase import PassphraseSource, read_cached

_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
_EXPIRE = re.compile(r"^(0|[1-9][0-9]*[dwmy]?|\d{4}-\d{2}-\d{2}|never)$")
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


def load_specs(text: str, source: str = "<input>") -> list[KeySpec]:
    """Parse and validate a signers file; errors name the file and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: invalid YAML: {str(exc).splitlines()[0]}") from exc
    items_node = node
    if isinstance(data, dict):
        if set(data) - {"keys"}:
            raise InputError(f"{source}: unknown top-level key {sorted(set(data) - {'keys'})[0]!r} (expected 'keys')")
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
            raise InputError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        name, email = item.get("name"), item.get("email")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}: 'name' is required")
        if not isinstance(email, str) or not _EMAIL.match(email):
            raise InputError(f"{where}: 'email' must be an e-mail address")
        if email.lower() in seen:
            raise InputError(f"{where}: {email} appears twice")
        seen.add(email.lower())
        algorithm = str(item.get("algorithm", "ed25519"))
        if algorithm not in KEY_ALGORITHMS:
            raise InputError(f"{where}: algorithm {algorithm!r} is not one of {', '.join(KEY_ALGORITHMS)}")
        expire = str(item.get("expire", "2y"))
        if not _EXPIRE.match(expire):
            raise InputError(f"{where}: expire {expire!r} is not 0, N[dwmy] or YYYY-MM-DD")
        if expire == "never":
            expire = "0"
        if item.get("passphrase-file") and item.get("passphrase-env"):
            raise InputError(f"{where}: give passphrase-file or passphrase-env, not both")
        comment = item.get("comment")
        specs.append(KeySpec(name.strip(), email, str(comment) if comment is not None else None, algorithm, expire,
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
