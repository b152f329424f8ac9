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
from atomicsig.openpgp import sqgen
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
        elif d.kind == "file":
            v6 = _v6_file(spec, d)
            if v6 is not None:
                out[d.name] = v6
    openpgp = [d for d in openpgp if d.name not in out]
    if not openpgp:
        return out
    user = gpg.Keyring(gnupghome) if any(d.kind == "fingerprint" for d in openpgp) else None
    with gpg.temporary_home() as tmp:
        fprs_of: dict[str, list[str]] = {}
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
            try:
                fprs = [f.upper() for f in tmp.import_keys(blob)]
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
            expiries = [k.expires for k in infos if k.expires]
            data = tmp.export_public(fprs, armor=False)
            out[d.name] = KeyMaterial(d.name, d.kind, data, tuple(fprs),
                                      tuple(u for k in infos for u in k.uids), min(expiries) if expiries else None,
                                      (4,) * len(fprs))
    return out


def _v6_file(spec: PolicySpec, d: KeyDecl) -> KeyMaterial | None:
    """A key file holding an OpenPGP v6 (RFC 9580) key, read with Sequoia; None for a v4-only file (gpg reads it).

    Why not gpg: GnuPG 2.2 refuses the whole file as soon as one key in it is v6 ("packet(6) with unknown
    version 6 ... import failed: Invalid keyring", measured with gpg 2.2.40), v4 keys in the same file included;
    that is also what GPGME-based skopeo/podman do with such a keyring (docs/policy.md, "v4 and v6 keys").
    """
    try:
        blob = Path(d.value).read_bytes()
    except OSError as exc:
        raise PolicyError(f"{_where(spec, d)}: cannot read {d.value}: {exc.strerror or exc}") from exc
    try:
        versions = sqgen.primary_key_versions(sqgen.dearmor(blob))
    except AtomicsigError:
        return None  # not even packets: the gpg path reports it as "not an OpenPGP public key"
    if 6 not in versions.values():
        return None
    try:
        infos = sqgen.cert_info(blob)
    except AtomicsigError as exc:
        raise PolicyError(f"{_where(spec, d)}: {d.value} is not an OpenPGP public key ({exc.message})") from exc
    if any(i.secret for i in infos):
        raise PolicyError(f"{_where(spec, d)}: {d.value} holds a SECRET key; give the public key only")
    expiries = [i.expires for i in infos if i.expires]
    return KeyMaterial(d.name, d.kind, sqgen.public_keyring(blob), tuple(i.fingerprint for i in infos),
                       tuple(u for i in infos for u in i.uids), min(expiries) if expiries else None,
                       tuple(i.version for i in infos))


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
