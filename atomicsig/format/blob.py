"""Recognize a stored signature blob the way containers/image does before it verifies anything (SPEC §1.3).

c/image ``internal/signature.FromBlob`` looks only at the first byte. Anything it does not recognize — ASCII
armor, a cleartext signature, an HTML error page, an empty file — makes the *whole pull* fail, not just that one
signature. So we refuse to write such blobs, and report them as store corruption when reading.
"""

from __future__ import annotations

from atomicsig.errors import SignatureFormatError

#: First bytes accepted as a raw OpenPGP simple-signing blob (compressed, one-pass, or signature packet).
#: 0x93 is deliberately absent: c/image lists 0x3d instead (apparently a typo), so 0x93 fails there.
SIMPLE_SIGNING_FIRST_BYTES = frozenset({0xA0, 0xA1, 0xA2, 0xA3, 0xC8, 0x90, 0x91, 0x92, 0xC4, 0x3D,
                                        0x88, 0x89, 0x8A, 0x8B, 0xC2})
FRAMED_PREFIX = 0x00
SIMPLE_SIGNING_FORMAT = b"simple-signing"
SIGSTORE_FORMAT = b"sigstore-json"

#: containers/image's bound on one HTTP lookaside signature (iolimits.MaxSignatureBodySize).
MAX_SIGNATURE_SIZE = 4 * 1024 * 1024


def simple_signing_body(blob: bytes) -> bytes:
    """Return the OpenPGP message inside ``blob`` if c/image would read it as simple signing; else raise."""
    if not blob:
        raise SignatureFormatError("empty signature blob")
    first = blob[0]
    if first == FRAMED_PREFIX:
        nl = blob.find(b"\n", 1)
        if nl == -1:
            raise SignatureFormatError("framed signature blob without a format name")
        fmt = blob[1:nl]
        if fmt == SIMPLE_SIGNING_FORMAT:
            return blob[nl + 1 :]
        if fmt == SIGSTORE_FORMAT:
            raise SignatureFormatError("sigstore (cosign) signature, not a simple signature")
        raise SignatureFormatError(f"unrecognized signature format {fmt[:32]!r}")
    if first in SIMPLE_SIGNING_FIRST_BYTES:
        return blob
    if blob.startswith(b"-----BEGIN PGP"):
        raise SignatureFormatError("ASCII-armored or clear-signed signature; containers/image needs binary")
    raise SignatureFormatError(f"unrecognized signature format, starting with binary 0x{first:02x}")
