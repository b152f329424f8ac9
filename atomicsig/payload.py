"""The "atomic container signature" JSON payload: build it, and parse it as strictly as containers/image.

Pure: no I/O, no crypto. Parsing happens only on bytes that came out of a verified OpenPGP message; the rules
are c/image's ``strictUnmarshalJSON`` / ``ParanoidUnmarshalJSONObjectExactFields`` (SPEC §1.2): exact key sets
in ``critical``, no duplicate keys anywhere, strict JSON types, integral timestamps, nothing after the object.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from . import CREATOR
from .errors import SignatureFormatError
from .jsonstrict import DuplicateKeyError, no_duplicate_keys
from .reference import validate_digest

SIGNATURE_TYPE = "atomic container signature"


@dataclass(frozen=True)
class Payload:
    """The content of one simple signature (what it claims, before any policy decision)."""

    docker_reference: str
    manifest_digest: str
    creator: str | None = None
    timestamp: int | None = None


def build(docker_reference: str, manifest_digest: str, *, creator: str = CREATOR,
          timestamp: int | None = None) -> bytes:
    """Serialize a payload: compact, keys sorted at every level (the layout Go's json.Marshal produces)."""
    if not docker_reference or not manifest_digest:
        raise SignatureFormatError("unexpected empty signature content")
    validate_digest(manifest_digest)
    obj = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": {"creator": creator, "timestamp": int(time.time()) if timestamp is None else int(timestamp)},
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()



def _reject_constant(name: str) -> Any:
    raise SignatureFormatError(f"invalid JSON value {name} in signature")


def _exact(obj: Any, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SignatureFormatError(f"{where} is not a JSON object")
    for k in obj:
        if k not in fields:
            raise SignatureFormatError(f"unknown key {k!r} in {where}")
    for k in fields:
        if k not in obj:
            raise SignatureFormatError(f"key {k!r} missing in {where}")
    return obj


def _string(value: Any, where: str) -> str:
    # Go decodes JSON null into a string as a no-op, leaving "" (SPEC §1.2); the checks below then reject it.
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SignatureFormatError(f"{where} is not a string")
    return value


def parse(data: bytes) -> Payload:
    """Strictly parse payload bytes. Raises SignatureFormatError with the first violation found."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SignatureFormatError("signature payload is not UTF-8") from exc
    try:
        obj = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_reject_constant)
    except SignatureFormatError:
        raise
    except DuplicateKeyError as exc:
        raise SignatureFormatError(f"{exc} in signature JSON") from exc
    except ValueError as exc:
        raise SignatureFormatError(f"signature payload is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # json recurses per nesting level: "[[[[…" escaped as RecursionError (fuzz)
        raise SignatureFormatError("signature payload is nested too deeply") from exc
    top = _exact(obj, "signature", ("critical", "optional"))
    crit = _exact(top["critical"], "critical", ("type", "image", "identity"))
    image = _exact(crit["image"], "critical.image", ("docker-manifest-digest",))
    ident = _exact(crit["identity"], "critical.identity", ("docker-reference",))
    opt = top["optional"]
    if not isinstance(opt, dict):
        raise SignatureFormatError("optional is not a JSON object")

    sig_type = _string(crit["type"], "critical.type")
    if sig_type != SIGNATURE_TYPE:
        raise SignatureFormatError(f"unrecognized signature type {sig_type!r}")
    digest = _string(image["docker-manifest-digest"], "critical.image.docker-manifest-digest")
    try:
        validate_digest(digest)
    except Exception as exc:
        raise SignatureFormatError(f"invalid docker-manifest-digest {digest!r}") from exc
    ref = _string(ident["docker-reference"], "critical.identity.docker-reference")

    creator: str | None = None
    if "creator" in opt:
        creator = _string(opt["creator"], "optional.creator")
    timestamp: int | None = None
    if "timestamp" in opt and opt["timestamp"] is not None:
        ts = opt["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            raise SignatureFormatError("optional.timestamp is not a number")
        if isinstance(ts, float) and (not math.isfinite(ts) or ts != int(ts)):
            raise SignatureFormatError(f"optional.timestamp {ts!r} is not an integer")
        if not -(2**63) <= int(ts) < 2**63:
            raise SignatureFormatError(f"optional.timestamp {ts!r} is out of range")
        timestamp = int(ts)
    return Payload(ref, digest, creator, timestamp)
