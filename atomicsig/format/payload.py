"""The "atomic container signature" JSON payload: build it, and parse it as strictly as containers/image.

Pure: no I/O, no crypto. Parsing happens only on bytes that came out of a verified OpenPGP message; the rules
are c/image's ``strictUnmarshalJSON`` / ``ParanoidUnmarshalJSONObjectExactFields`` (SPEC §1.2): exact key sets
in ``critical``, strict JSON types, integral timestamps, nothing after the object.

Where exactly c/image looks (``signature/internal/json.go``, identical in container-libs ``image/``, checked
against skopeo 1.9.3 on real signatures, tests/test_payload.py): duplicate keys are refused in the objects it
decodes key by key — the top level, ``critical``, ``critical.image``, ``critical.identity`` and ``optional``
itself — but a value *inside* ``optional`` (an unknown member holding an object) is decoded by Go's plain
``json.Decode`` into ``any``, which keeps the last of two equal keys. So ``"optional":{"x":{"a":1,"a":2}}`` is
accepted, as skopeo accepts it, while ``"optional":{"a":1,"a":2}`` is refused. The same plain decoding turns
invalid UTF-8 inside strings into U+FFFD (accepted) and refuses any number that overflows a float64, even in a
member nobody reads; both are mirrored here. One deliberate divergence remains: Python's parser gives up on
nesting deeper than its recursion limit (~1000 levels) where Go allows 10000, so such a payload is refused
here and accepted by c/image (refusing is the safe side; no signer writes it).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from atomicsig.errors import SignatureFormatError
from atomicsig.format.reference import validate_digest
from atomicsig.version import CREATOR

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


def _go_number(text: str) -> float:
    """Every JSON number as Go decodes it into ``any`` or ``float64``: a float64; overflow is an error there."""
    value = float(text)
    if math.isinf(value):
        raise SignatureFormatError(f"JSON number {text[:32]} is out of range")
    return value


def _go_int(text: str) -> int:
    """An integer literal: refused where Go's float64 overflows, kept exact here (only the range matters)."""
    _go_number(text)
    return int(text)


class _Object(dict[str, Any]):
    """A JSON object that remembers its first repeated key instead of refusing it on sight: whether a duplicate
    matters depends on where the object is (module docstring). Like Go's ``any`` decoding, the last value wins."""

    duplicate: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    for k, v in pairs:
        if k in obj and obj.duplicate is None:
            obj.duplicate = k
        obj[k] = v
    return obj


def _paranoid(obj: Any, where: str) -> None:
    """c/image's ``ParanoidUnmarshalJSONObject`` refuses a repeated key in the object it walks."""
    if isinstance(obj, _Object) and obj.duplicate is not None:
        raise SignatureFormatError(f"duplicate key {obj.duplicate!r} in {where} in signature JSON")


def _exact(obj: Any, where: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SignatureFormatError(f"{where} is not a JSON object")
    _paranoid(obj, where)
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
    # A lone surrogate escape ("\\ud800") becomes U+FFFD in Go; in Python it would stay and break printing.
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def parse(data: bytes) -> Payload:
    """Strictly parse payload bytes. Raises SignatureFormatError with the first violation found."""
    # Go's decoder replaces invalid UTF-8 in strings with U+FFFD; outside strings the replacement character is
    # a syntax error in both parsers.
    text = data.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text, object_pairs_hook=_object, parse_constant=_reject_constant,
                         parse_float=_go_number, parse_int=_go_int)
    except SignatureFormatError:
        raise
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
    _paranoid(opt, "optional")

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
        # c/image decodes into float64 and needs float64(int64(x)) == x: 2**63 - 1 becomes 2**63 and fails.
        if not -(2**63) <= float(ts) < 2**63:
            raise SignatureFormatError(f"optional.timestamp {ts!r} is out of range")
        timestamp = int(ts)
    return Payload(ref, digest, creator, timestamp)
