"""Manifest media types and the manifest digest exactly as containers/image computes it (SPEC §7.1).

Pure: no I/O. The digest is sha256 over the exact bytes, except for schema-1 *signed* manifests where the JWS
payload is reconstructed from ``formatLength``/``formatTail`` (libtrust). Signing a digest computed any other
way would produce a signature that no client ever matches.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import InputError

DOCKER_V2S1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_V2S1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_V2S2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: Accept header values, most preferred first; the registry answers with what it stores for a digest.
ACCEPT_TYPES = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_V2S2, DOCKER_V2S1_SIGNED, DOCKER_V2S1)
LIST_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})

#: containers/image reads manifests with this bound (iolimits.MaxManifestBodySize).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def _b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _load(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InputError("manifest is not a JSON object")
    return obj


def guess_media_type(data: bytes) -> str:
    """``GuessMIMEType``: the declared mediaType, or a schema-1 / OCI guess for manifests without one."""
    obj = _load(data)
    mt = obj.get("mediaType")
    if isinstance(mt, str) and mt in (DOCKER_V2S2, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX):
        return mt
    if obj.get("schemaVersion") == 1:
        return DOCKER_V2S1_SIGNED if obj.get("signatures") is not None else DOCKER_V2S1
    if obj.get("schemaVersion") == 2:
        if "manifests" in obj:
            return OCI_INDEX
        if "config" in obj:
            return OCI_MANIFEST
    return mt if isinstance(mt, str) else ""


def _schema1_payload(data: bytes) -> bytes:
    """The JWS payload of a signed schema-1 manifest (libtrust ``ParsePrettySignature``)."""
    obj = _load(data)
    sigs = obj.get("signatures")
    if not isinstance(sigs, list):
        raise InputError("schema-1 manifest: signatures is not a list")
    fmt_length: int | None = None
    fmt_tail: bytes | None = None
    for sig in sigs:
        try:
            protected = json.loads(_b64url_decode(sig["protected"]))
            length, tail = int(protected["formatLength"]), _b64url_decode(protected["formatTail"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"schema-1 manifest: malformed protected header: {exc}") from exc
        if fmt_length is None:
            fmt_length, fmt_tail = length, tail
        elif (fmt_length, fmt_tail) != (length, tail):
            raise InputError("schema-1 manifest: signatures disagree on the signed payload")
    if fmt_length is None or fmt_tail is None:
        # libtrust would produce an empty payload here (SPEC §10.5); refuse rather than guess.
        raise InputError("schema-1 manifest has an empty signatures list")
    if fmt_length > len(data):
        raise InputError("schema-1 manifest: formatLength beyond the end of the manifest")
    return data[:fmt_length] + fmt_tail


def digest(data: bytes) -> str:
    """The manifest digest containers/image matches signatures against (always sha256)."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise InputError(f"manifest is larger than {MAX_MANIFEST_SIZE} bytes")
    body = data
    try:
        is_signed_v1 = guess_media_type(data) == DOCKER_V2S1_SIGNED
    except InputError:
        is_signed_v1 = False  # not JSON: c/image still hashes the raw bytes
    if is_signed_v1:
        body = _schema1_payload(data)
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class Instance:
    """One per-platform entry of a manifest list / OCI index."""

    digest: str
    media_type: str
    platform: str  # "os/arch[/variant]" or "" if absent


def list_instances(data: bytes) -> list[Instance]:
    """The instances of a manifest list or OCI index, in order; [] for a single-image manifest."""
    obj = _load(data)
    if guess_media_type(data) not in LIST_TYPES:
        return []
    out: list[Instance] = []
    for m in obj.get("manifests") or []:
        if not isinstance(m, dict) or not isinstance(m.get("digest"), str):
            raise InputError("manifest list entry without a digest")
        p = m.get("platform") or {}
        plat = "/".join(x for x in (p.get("os", ""), p.get("architecture", ""), p.get("variant", "")) if x)
        out.append(Instance(m["digest"], str(m.get("mediaType", "")), plat))
    return out
