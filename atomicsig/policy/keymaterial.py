"""Turn the YAML's named keys into the bytes a node needs, with their fingerprints and expiry.

Each OpenPGP key (file or fingerprint in ``--gnupghome``) is imported once into a throwaway GnuPG home and
exported from there as a *binary* public keyring: that both proves the file is an OpenPGP public key and gives
c/image a canonical keyring to import (SPEC §2.1 step 2). gpg runs O(number of keys), never per scope, so a
500-scope policy costs the same as a one-scope policy. Cosign keys are PEM public keys, checked with
``cryptography``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from atomicsig.errors import AtomicsigError, PolicyError
from atomicsig.gnupg import keyring as gpg
from atomicsig.openpgp import sequoia
from atomicsig.policy.schema import KeyDecl, PolicySpec

EXPIRY_WARNING_SECONDS = 30 * 86400


@dataclass(frozen=True)
class KeyMaterial:
    name: str
    kind: str  # file | fingerprint | cosign
    data: bytes  # binary OpenPGP keyring, or the PEM file as given
    fingerprints: tuple[str, ...] = ()
    uids: tuple[str, ...] = ()
    expires: int | None = None  # earliest primary-key expiry (epoch seconds) among the fingerprints
    versions: tuple[int, ...] = ()  # OpenPGP version of each primary key (4, or 6 for RFC 9580 keys); () for cosign

    def warnings(self, now: float | None = None) -> list[str]:
        if self.expires is None:
            return []
        left = self.expires - (time.time() if now is None else now)
        when = time.strftime("%Y-%m-%d", time.gmtime(self.expires))
        if left <= 0:
            return [f"key {self.name!r} ({', '.join(self.fingerprints)}) expired on {when}: nodes reject its "
                    f"signatures"]
        if left < EXPIRY_WARNING_SECONDS:
            return [f"key {self.name!r} ({', '.join(self.fingerprints)}) expires on {when} (in {int(left // 86400)}"
                    f" days)"]
        return []


def _where(spec: PolicySpec, decl: KeyDecl) -> str:
    return f"{spec.source}:{decl.line}: key {decl.name!r}"


def resolve(spec: PolicySpec, gnupghome: str | None, only: set[str] | None = None) -> dict[str, KeyMaterial]:
    """Load every declared key (or those in ``only``). Raises PolicyError naming the YAML line."""
    decls = [d for d in spec.keys.values() if only is None or d.name in only]
    out: dict[str, KeyMaterial] = {}
    openpgp = [d for d in decls if d.openpgp]
    for d in decls:
        if not d.openpgp:
            out[d.name] = _cosign(spec, d)
    if not openpgp:
        return out
    user = gpg.Keyring(gnupghome) if any(d.kind == "fingerprint" for d in openpgp) else None
    with gpg.temporary_home() as tmp:
        fprs_of: dict[str, list[str]] = {}
        v6_of: dict[str, list[sequoia.CertInfo]] = {}
        for d in openpgp:
            if d.kind == "file":
                try:
                    blob = Path(d.value).read_bytes()
                except OSError as exc:
                    raise PolicyError(f"{_where(spec, d)}: cannot read {d.value}: {exc.strerror or exc}") from exc
            else:
                assert user is not None
                try:
                    blob = user.export_public([d.value], armor=False)
                except AtomicsigError as exc:
                    raise PolicyError(f"{_where(spec, d)}: fingerprint {d.value} not found in "
                                      f"{user.describe()} ({exc.message})") from exc
            # v6 certificates (RFC 9580) are kept as Sequoia read them: GnuPG cannot import them, and c/image's
            # Sequoia backend reads them from the same keyPath file (issue 16 #1). The rest goes through gpg.
            blob, certs = sequoia.split_v6(blob) if d.kind == "file" else (blob, [])
            v6_of[d.name] = [c for c in certs if c.version == 6]
            if any(c.secret for c in certs):  # any one: the v4 part of a mixed file reaches gpg public only
                raise PolicyError(f"{_where(spec, d)}: {d.value} holds a SECRET key; give the public key only")
            try:
                fprs = [f.upper() for f in tmp.import_keys(blob)] if blob or not v6_of[d.name] else []
            except AtomicsigError as exc:
                raise PolicyError(f"{_where(spec, d)}: {d.value} is not an OpenPGP public key") from exc
            if d.kind == "fingerprint":
                fprs = [d.value] if d.value in fprs else fprs
            fprs_of[d.name] = fprs
        listed = {k.fingerprint.upper(): k for k in tmp.list_keys()}
        secret = {k.fingerprint.upper() for k in tmp.list_keys(secret=True)}
        for d in openpgp:
            fprs = fprs_of[d.name]
            if secret & set(fprs) and d.kind == "file":
                raise PolicyError(f"{_where(spec, d)}: {d.value} holds a SECRET key; give the public key only")
            infos = [listed[f] for f in fprs if f in listed]
            v6 = v6_of[d.name]
            expiries = [k.expires for k in infos if k.expires] + [c.expires for c in v6 if c.expires]
            data = (tmp.export_public(fprs, armor=False) if fprs else b"") + b"".join(c.data for c in v6)
            out[d.name] = KeyMaterial(d.name, d.kind, data, tuple(fprs) + tuple(c.fingerprint for c in v6),
                                      tuple(u for k in infos for u in k.uids) + tuple(u for c in v6 for u in c.uids),
                                      min(expiries) if expiries else None, (4,) * len(fprs) + (6,) * len(v6))
    return out


def _cosign(spec: PolicySpec, d: KeyDecl) -> KeyMaterial:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        data = Path(d.value).read_bytes()
    except OSError as exc:
        raise PolicyError(f"{_where(spec, d)}: cannot read {d.value}: {exc.strerror or exc}") from exc
    try:
        load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"{_where(spec, d)}: {d.value} is not a PEM public key (cosign.pub)") from exc
    return KeyMaterial(d.name, d.kind, data)
