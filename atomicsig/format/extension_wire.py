"""The registry signature extension API's wire format (SPEC §6.2), shared by client and server."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from atomicsig.errors import RegistryError
from atomicsig.format.reference import validate_digest

#: c/image reads the signature list with ``MaxSignatureListBodySize`` (SPEC §6.2, §8).
MAX_SIGNATURE_LIST_SIZE = 4 * 1024 * 1024


SIGNATURE_TYPE = "atomic"


SCHEMA_VERSION = 2


def extension_path(repo_path: str, digest: str) -> str:
    """``/extensions/v2/<name>/signatures/<digest>``; the digest keeps its ``:`` (SPEC §6.2)."""
    return f"/extensions/v2/{repo_path}/signatures/{validate_digest(digest)}"


def new_signature_name(digest: str, taken: set[str] | None = None) -> str:
    """``<digest>@<32 hex>`` from 16 random bytes; regenerated on a (very unlikely) collision, as c/image does."""
    while True:
        name = f"{digest}@{secrets.token_hex(16)}"
        if not taken or name not in taken:
            return name


def encode_entry(name: str, blob: bytes) -> dict[str, Any]:
    """One signature object, field order as c/image's ``json.Marshal`` writes it."""
    return {"schemaVersion": SCHEMA_VERSION, "name": name, "type": SIGNATURE_TYPE,
            "content": base64.b64encode(blob).decode("ascii")}


def decode_list(body: bytes, where: str) -> list[tuple[str, bytes]]:
    """(name, blob) of every usable entry: only ``schemaVersion 2`` + ``type atomic`` count (SPEC §6.2)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise RegistryError(f"{where}: signature list is not JSON") from exc
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if sigs is None:
        return []
    if not isinstance(sigs, list):
        raise RegistryError(f"{where}: \"signatures\" is not a list")
    out: list[tuple[str, bytes]] = []
    for entry in sigs:
        if not isinstance(entry, dict) or entry.get("schemaVersion") != SCHEMA_VERSION \
                or entry.get("type") != SIGNATURE_TYPE:
            continue
        content = entry.get("content")
        if not isinstance(content, str):
            continue
        try:
            blob = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RegistryError(f"{where}: signature {entry.get('name')!r} has invalid base64 content") from exc
        out.append((str(entry.get("name", "")), blob))
    return out
